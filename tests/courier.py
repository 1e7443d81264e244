"""Run a real, throw-away Courier POP3 server (courier-pop 1.0.16) for integration tests.

Usage::

    with Courier() as server:                    # or server.start() / server.stop()
        server.add_user("bob", "secret")
        server.add_message("bob", b"Subject: hi\\n\\nbody\\n")
        server.raw_messages("bob", "secret")  # [("UID1-1796300000", b"Subject: hi\\n...")]

The binaries are those ``.ci/servers`` unpacked (:func:`servers.server_root`);
everything else (authdaemonrc, userdb, the authdaemon socket, TLS material,
log, user homes with their Maildirs) is in one temporary directory.  Ports:
``starttls`` (couriertcpd -> courierpop3login, which runs couriertls on STLS)
and ``implicit`` (couriertcpd -> ``couriertls -server -tcpd courierpop3login``
with POP3_TLS=1), both on 127.0.0.1.  Mail is accessed as ``nobody``.

Compiled-in paths: authdaemond and libcourierauth insist on
/etc/courier/authdaemonrc, /etc/courier/userdb*.dat and
/run/courier/authdaemon/socket, and courierpop3login starts couriertls as
the user ``courier``.  Nothing is created on the host for that: the servers
run in private mount and PID namespaces (``unshare --mount --pid --fork``, so
root is needed) in which /etc is an overlay of the real one (upper layer in
the temp dir, gets a ``courier`` passwd line if the host has none), the temp
dir's ``etc`` is bind-mounted on /etc/courier and its ``run`` on /run.  The
rest is set by variables (LD_LIBRARY_PATH, LTDL_LIBRARY_PATH, COURIERTLS,
TLS_*, POP3_*).  :meth:`Courier.stop` SIGKILLs the namespace's init, which
ends every process in it; the kernel does the same if the test process dies.

Courier's behaviour (pinned, byte for byte, by test_courier_harness.py):

* Greeting ``+OK Hello there.``.  CAPA is ``+OK Here's what I can do:`` then
  STLS (only before TLS), TOP, USER, LOGIN-DELAY 10, PIPELINING, UIDL,
  ``UTF8 USER``, ``IMPLEMENTATION Courier Mail Server``; the same after login.
  No SASL is listed (POP3AUTH="", as in Debian), yet AUTH PLAIN, LOGIN and
  CRAM-MD5 are answered; no APOP or LANG.  UIDLs are ``UID<n>-<uidvalidity>``,
  kept in the Maildir's courierpop3dsizelist.
* A wrong password: ``-ERR Login failed.`` after a ``sleep(5)`` compiled into
  courierpop3login (no setting shortens it); the connection stays open, the
  next PASS is tried (5 s again).  The login phase ends after 60 s (alarm).
* Login moves new/ to cur/ (``name:2,``); RETR renames to ``name:2,S`` just
  after the reply, QUIT or not.
* LF is sent as CRLF, lines are dot-stuffed; a missing final newline gets
  CRLF appended.  LIST sizes (and "+OK N octets follow.") count LF as 2 but
  not the appended CRLF nor the stuffing.
* 8-bit bytes in a header (8-bit bodies are served as they are): without
  ``UTF8``, RETR serves a generated multipart/mixed (``Subject: Cannot display
  Unicode content``, the original as a ``message/global`` part, boundary
  ``=_<pid>-<time>``), while LIST still gives the original's size and "octets
  follow" counts the wrapper's LFs as 1.  After ``UTF8`` (``+OK UTF8
  enabled``; accepted before login, even before STLS, and after it) RETR
  serves the original.
* USER+PASS in one packet work, but courierpop3login execs courierpop3d on a
  good PASS, so commands sent along after it are never answered.  After
  login, any batch is.  (Commands behind a failed PASS are kept.)
* RETR of a bad number: ``-ERR Invalid message number.``; of a message whose
  file went away after the listing: ``-ERR Can't open the message file -
  it's gone!`` (LIST and DELE still take it).

``FETCHPOP_KEEP_COURIER=1`` keeps the temp dir for debugging; dirs of killed
runs are removed by the next run.
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import ctypes
import hashlib
import os
import pwd
import re
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import servers
import trustme

__all__ = ["Courier", "CourierError", "courier_available", "require_courier"]

_USER_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+@-]{0,63}")
_STARTUP_TIMEOUT = 10.0
_UNSHARE = ("unshare", "--mount", "--pid", "--fork", "--kill-child", "--propagation=private")
_NEEDED = (
    "usr/lib/courier/courier/courierpop3login",
    "usr/lib/courier/courier/courierpop3d",
    "usr/sbin/couriertcpd",
    "usr/bin/couriertls",
    "usr/lib/courier/courier-authlib/authdaemond",
    "usr/lib/courier/courier-authlib/makedatprog",
    "usr/lib/courier-authlib/libauthuserdb.so.0",
)

_LAUNCH = """\
set -e
mount -t overlay overlay -o lowerdir=/etc,upperdir="$R/ovl/upper",workdir="$R/ovl/work" /etc
mount --bind "$R/etc" /etc/courier
mount --bind "$R/run" /run
# courierpop3login runs couriertls for STLS as the compiled-in user "courier".
grep -q '^courier:' /etc/passwd || echo "courier:x:$TLS_UID:$TLS_GID::/:/bin/false" >>/etc/passwd
exec 2>>"$R/courier.log"
"$S/usr/lib/courier/courier-authlib/authdaemond" &
TCPD="$S/usr/sbin/couriertcpd -address=127.0.0.1 -nodnslookup -noidentlookup -maxprocs=200 \
-maxperip=200"
POP3="$S/usr/lib/courier/courier/courierpop3login $S/usr/lib/courier/courier/courierpop3d Maildir"
$TCPD "$STLS_PORT" $POP3 &
POP3_TLS=1 POP3_STARTTLS=NO $TCPD "$TLS_PORT" "$S/usr/bin/couriertls" -server -tcpd $POP3 &
wait
"""


class CourierError(RuntimeError):
    """Courier could not be started or misbehaved."""


def courier_available() -> tuple[bool, str]:
    """(whether the harness can run here, why not)."""
    root = servers.server_root()
    missing = [p for p in _NEEDED if not (root / p).exists()]
    if missing:
        return False, f"{root / missing[0]} missing"
    if os.geteuid() != 0:
        return False, "needs root (mount namespace, setuid to the mail user)"
    if shutil.which("unshare") is None:
        return False, "unshare (util-linux) missing"
    return True, ""


def require_courier() -> None:
    """Skip the calling test if Courier cannot run (fail with FETCHPOP_REQUIRE_SERVERS=1)."""
    available, why = courier_available()
    servers.require("Courier", available, why)


def _pdeathsig() -> None:  # pragma: no cover - runs in the child
    with contextlib.suppress(Exception):
        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _session_members(sid: int) -> list[int]:
    """Live processes of session *sid* (couriertcpd leaves our process group)."""
    return servers.members(sid, field=3)


def _reap_stale_dirs(parent: str) -> None:
    """Remove the temp dirs of killed runs (their owner pid is gone)."""
    for path in Path(parent).glob("fpcourier-*"):
        try:
            os.kill(int((path / "owner.pid").read_text()), 0)
        except ProcessLookupError:
            shutil.rmtree(path, ignore_errors=True)
        except (OSError, ValueError):
            pass


class Courier:
    """A private Courier POP3 server on 127.0.0.1 (see the module docstring)."""

    name = "courier"
    host = "127.0.0.1"

    def __init__(self) -> None:
        self.root_tree = servers.server_root()
        shm = "/dev/shm"  # tmpfs: fast, and fit for an overlay's upper layer
        parent = shm if os.access(shm, os.W_OK) else tempfile.gettempdir()
        _reap_stale_dirs(parent)
        self.root = Path(tempfile.mkdtemp(prefix="fpcourier-", dir=parent)).resolve()
        self.keep_dir = os.environ.get("FETCHPOP_KEEP_COURIER") == "1"
        if not self.keep_dir:
            (self.root / "owner.pid").write_text(str(os.getpid()))
        self.etc = self.root / "etc"
        self.log_path = self.root / "courier.log"
        self.ca_file: Path | None = self.root / "ca.pem"
        self.cert_file = self.root / "pop3d.pem"
        self.socket_path = self.root / "run/courier/authdaemon/socket"
        self.ports: dict[str, int] = {}
        self.startup_seconds = 0.0
        self.users: dict[str, str] = {}
        nobody = pwd.getpwnam("nobody")
        self.mail_uid, self.mail_gid = nobody.pw_uid, nobody.pw_gid
        self._proc: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()
        self._seq = self._last = 0
        atexit.register(self.stop)

    # ------------------------------------------------------------------ life
    def __enter__(self) -> Courier:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> Courier:
        """Write config and TLS material, start the servers, wait until they answer."""
        if self._proc is not None:
            raise CourierError("already started")
        self.root.chmod(0o755)  # the mail user must reach the homes
        for sub in ("etc", "run/courier/authdaemon", "ovl/upper/courier", "ovl/work", "home"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        (self.etc / "authdaemonrc").write_text('authmodulelist="authuserdb"\ndaemons=3\n')
        self._write_userdb()
        ca = trustme.CA()
        cert = ca.issue_cert("127.0.0.1", "localhost")
        chain = b"".join(blob.bytes() for blob in cert.cert_chain_pems)
        self.cert_file.write_bytes(cert.private_key_pem.bytes() + chain)
        self.cert_file.chmod(0o600)
        os.chown(self.cert_file, *self._tls_ids())
        ca.cert_pem.write_to_path(str(self.ca_file))
        error, started = "", time.monotonic()
        for _attempt in range(3):
            self.ports = {"starttls": servers.free_port(), "implicit": servers.free_port()}
            try:
                self._spawn_and_wait()
                self.startup_seconds = time.monotonic() - started
                return self
            except CourierError as e:
                error = str(e)
                self._kill()
                if "in use" not in error:
                    break
        self.stop()
        raise CourierError(error)

    def _spawn_and_wait(self) -> None:
        s = self.root_tree
        env = {
            "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
            "R": str(self.root),
            "S": str(s),
            "STLS_PORT": str(self.ports["starttls"]),
            "TLS_PORT": str(self.ports["implicit"]),
            "TLS_UID": str(self._tls_ids()[0]),
            "TLS_GID": str(self._tls_ids()[1]),
            "LD_LIBRARY_PATH": str(s / "usr/lib"),
            "LTDL_LIBRARY_PATH": str(s / "usr/lib/courier-authlib"),
            "COURIERTLS": str(s / "usr/bin/couriertls"),
            "TLS_CERTFILE": str(self.cert_file),
            "TLS_VERIFYPEER": "NONE",
            "POP3_STARTTLS": "YES",
            "POP3_TLS_REQUIRED": "0",
            "POP3AUTH": "",
            "POP3AUTH_TLS": "",
            "MIME_UNICODE_MESSAGE_TYPE": "message/global",  # as Debian's /etc/courier/pop3d
        }
        self.log_path.write_bytes(b"")
        with open(self.root / "launch.log", "wb") as err:
            self._proc = subprocess.Popen(
                [*_UNSHARE, "/bin/sh", "-c", _LAUNCH],
                env=env,
                cwd=self.root,
                stdin=subprocess.DEVNULL,
                stdout=err,
                stderr=err,
                start_new_session=True,
                preexec_fn=_pdeathsig,
            )
        deadline = time.monotonic() + _STARTUP_TIMEOUT
        while not self._probe():
            log = self.log_path.read_text(errors="replace")
            failed = self._proc.poll() is not None or "Address already in use" in log
            if failed or time.monotonic() > deadline:
                launch = (self.root / "launch.log").read_text(errors="replace")
                raise CourierError(f"Courier did not start:\n{launch}{log}")
            time.sleep(0.02)

    def _tls_ids(self) -> tuple[int, int]:
        """uid/gid of "courier": the host's, else (only in our namespace) the mail user's."""
        try:
            entry = pwd.getpwnam("courier")
        except KeyError:
            return self.mail_uid, self.mail_gid
        return entry.pw_uid, entry.pw_gid

    def _probe(self) -> bool:
        """Whether the authdaemon socket exists and both ports greet (TLS verified)."""
        if not self.socket_path.is_socket():
            return False
        context = ssl.create_default_context(cafile=str(self.ca_file))
        try:
            with socket.create_connection((self.host, self.ports["starttls"]), 2) as plain:
                if not plain.recv(64).startswith(b"+OK"):
                    return False
            with (
                socket.create_connection((self.host, self.ports["implicit"]), 2) as raw,
                context.wrap_socket(raw, server_hostname=self.host) as tls,
            ):
                return tls.recv(64).startswith(b"+OK")
        except OSError:
            return False

    def stop(self) -> None:
        """Kill every process we started, wait for them, remove the temp dir (idempotent)."""
        atexit.unregister(self.stop)
        self._kill()
        if not self.keep_dir:
            shutil.rmtree(self.root, ignore_errors=True)

    def _kill(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        # SIGKILL to the namespace's init (unshare's child) ends the namespace;
        # unshare then reaps it and exits, so nothing is left as a zombie.
        with contextlib.suppress(OSError, ValueError):
            children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text()
            for init in children.split():
                os.kill(int(init), signal.SIGKILL)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(OSError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        deadline = time.monotonic() + 10
        while (left := _session_members(proc.pid)) and time.monotonic() < deadline:
            for pid in left:
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.02)

    # ----------------------------------------------------------------- users
    def home(self, user: str) -> Path:
        return self.root / "home" / user

    def maildir(self, user: str) -> Path:
        return self.home(user) / "Maildir"

    def add_user(self, user: str, password: str) -> Path:
        """Create a userdb user (mail as ``nobody``); it can log in at once. Returns its Maildir."""
        if not _USER_RE.fullmatch(user) or user in self.users:
            raise ValueError(f"bad or existing user name {user!r}")
        if not password or any(c in password for c in "|\t\r\n\0"):
            raise ValueError("password must be non-empty, without | or control characters")
        with self._lock:
            for sub in ("", "/Maildir", "/Maildir/cur", "/Maildir/new", "/Maildir/tmp"):
                path = Path(f"{self.home(user)}{sub}")
                path.mkdir(mode=0o700)
                os.chown(path, self.mail_uid, self.mail_gid)
            self.users[user] = password
            self._write_userdb()
        return self.maildir(user)

    def _write_userdb(self) -> None:
        """(Re)build userdb.dat and userdbshadow.dat; authuserdb reopens them when changed."""
        db, shadow = [], []
        for user, password in self.users.items():
            digest = base64.b64encode(hashlib.sha1(password.encode()).digest()).decode()
            home = self.home(user)
            db.append(
                f"{user}\tuid={self.mail_uid}|gid={self.mail_gid}|home={home}|mail={home}/Maildir\n"
            )
            shadow.append(f"{user}\tsystempw={{SHA}}{digest}\n")
        makedat = str(self.root_tree / "usr/lib/courier/courier-authlib/makedatprog")
        env = {"LD_LIBRARY_PATH": str(self.root_tree / "usr/lib")}
        for name, lines in (("userdb", db), ("userdbshadow", shadow)):
            subprocess.run(
                [makedat, "-", str(self.etc / f"{name}.tmp"), str(self.etc / f"{name}.dat")],
                input="".join(lines).encode() + b".\n",
                env=env,
                check=True,
            )

    # -------------------------------------------------------------- messages
    def add_message(self, user: str, raw: bytes) -> Path:
        """Deliver *raw* unchanged into *user*'s Maildir/new (via tmp/, as an MDA does)."""
        if user not in self.users:
            raise KeyError(f"no such user {user!r}")
        with self._lock:  # Courier orders by the leading seconds, then by name
            self._seq += 1
            self._last = max(time.time_ns() // 1000, self._last + 1)
            sec, usec = divmod(self._last, 1_000_000)
            name = f"{sec}.M{usec:06d}P{os.getpid()}Q{self._seq}.fetchpop"
        tmp = self.maildir(user) / "tmp" / name
        with open(tmp, "xb") as f:
            f.write(raw)
            os.fchown(f.fileno(), self.mail_uid, self.mail_gid)
        dest = self.maildir(user) / "new" / name
        tmp.rename(dest)
        return dest

    def messages(self, user: str) -> list[Path]:
        """The message files now in new/ and cur/."""
        maildir = self.maildir(user)
        files = [p for sub in ("new", "cur") for p in (maildir / sub).iterdir()]
        return sorted((p for p in files if not p.name.startswith(".")), key=lambda p: p.name)

    def count(self, user: str) -> int:
        """Messages in the Maildir now (new/ + cur/)."""
        return len(self.messages(user))

    def raw_messages(self, user: str, password: str) -> list[tuple[str, bytes]]:
        """(UIDL, message) as poplib retrieves them over STARTTLS."""
        port = self.ports["starttls"]
        return servers.poplib_messages(
            self.host, port, user, password, mode="starttls", ca_file=self.ca_file
        )

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""
