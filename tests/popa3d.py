"""Run a real, throw-away popa3d POP3 server (popa3d 1.0.3, Debian bookworm).

Usage::

    with Popa3d() as server:                  # or server.start() / server.stop()
        user, password = server.new_user()
        server.add_message(user, b"Subject: hi\\n\\nbody\\n")
        assert server.raw_messages(user, password)[0][1] == b"Subject: hi\\n\\nbody\\n"

popa3d runs inetd-style: ``socat TCP-LISTEN:PORT,bind=127.0.0.1,reuseaddr,fork
EXEC:popa3d`` starts one popa3d (as root, on stdin/stdout) per connection,
which drops to the user ``popa3d`` chrooted in /var/lib/popa3d before login
and to the mail user after it.  socat is our child in its own process group;
every popa3d stays in that group, so :meth:`Popa3d.stop` kills the group.

What it compiles in, so this harness must be root and touch the system:
users are system users (PAM service ``popa3d``; with no /etc/pam.d/popa3d
Linux-PAM uses /etc/pam.d/other, which on Debian includes common-auth and
common-account exactly like the package's file, so no PAM file is added);
mailboxes are /var/mail/USER (mbox, fcntl-locked).  :meth:`start` creates,
if missing, the system user ``popa3d`` and the empty root-owned chroot dir
/var/lib/popa3d, and leaves both (what the package's postinst would create).
Test users (``useradd``, password via ``chpasswd``, GECOS marked with our
pid) and their /var/mail files are removed by :meth:`stop`; the users and
temp dir of a killed run are removed by the next :meth:`start`.  popa3d
logs only to syslog (/dev/log); socat's errors go to ``socat.log`` in the
temp dir.

popa3d's behaviour (pinned by ``test_popa3d_harness.py``):

* Every status line is bare: greeting ``+OK\\r\\n`` (no APOP timestamp),
  USER and PASS ``+OK\\r\\n``, ``+OK 2 40\\r\\n`` to STAT, multi-line
  ``+OK\\r\\n1 20\\r\\n.\\r\\n``.  CAPA, APOP, AUTH and STLS: ``-ERR\\r\\n``.
  It knows USER PASS QUIT STAT LIST RETR DELE RSET NOOP TOP UIDL LAST and
  answers commands pipelined in one packet in order.  Any error, e.g. RETR of
  a missing number, is ``-ERR\\r\\n``; only a failed PASS has text:
  ``-ERR Authentication failed (bad password?)\\r\\n`` (also for unknown
  users), sent after PAM's 2 s fail delay (1.2-2.6 s), then it closes.
* UIDL is 16 hex digits hashed from the Received, Delivered-To, Date,
  Message-ID and X-Delivery-ID headers only: messages without them, or with
  equal ones (identical messages), get the same UIDL; Status:, Subject and
  body do not count.
* A message is everything after a ``From `` line that follows a blank line
  (or starts the file), up to the blank line before the next such line;
  neither is sent.  ``>From `` is sent as stored (mboxo: nothing unquoted);
  a ``From `` line not after a blank line is body.  Nothing is added or
  removed (Status:, X-UIDL: pass), except: a message without a body (no
  blank line after the header) gets an empty line, and a last line without
  LF gets CRLF.  LIST size = stored size + one per line: the wire size
  without dot-stuffing, 1 short for an unterminated last line.  3,000-octet
  lines and a header folded over 300 lines pass unchanged.
* The mailbox is fcntl-locked only while it is loaded (PASS) and rewritten
  (QUIT): PASS waits for another holder of the lock; dot-locks are ignored.
  Mail appended during a session survives its QUIT; if the file shrank, RETR
  or QUIT closes the connection without a reply and nothing is deleted.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import fcntl
import grp
import os
import poplib
import pwd
import re
import secrets
import shutil
import signal
import socket
import string
import subprocess
import tempfile
import time
from pathlib import Path

import servers

SPOOL = Path("/var/mail")
CHROOT = Path("/var/lib/popa3d")
POP_USER = "popa3d"
_MARK = "fetchpop popa3d test pid "
_NAME_RE = re.compile(r"[a-z_][a-z0-9_-]{0,31}")


class Popa3dError(RuntimeError):
    """popa3d could not be started or a system user could not be managed."""


def popa3d_binary() -> Path:
    return servers.server_root() / "usr/sbin/popa3d"


def _which(tool: str) -> str | None:
    return shutil.which(tool, path=os.environ.get("PATH", os.defpath) + ":/usr/sbin:/sbin")


def popa3d_available() -> tuple[bool, str]:
    """Whether the harness can run here, and if not, why."""
    if not os.access(popa3d_binary(), os.X_OK):
        return False, f"{popa3d_binary()} missing"
    for tool in ("socat", "useradd", "userdel", "chpasswd"):
        if _which(tool) is None:
            return False, f"{tool} not installed"
    if os.geteuid() != 0:
        return False, "must run as root (system users, /var/mail)"
    return True, ""


def require_popa3d() -> None:
    """Skip the calling test if popa3d cannot run here (fail with FETCHPOP_REQUIRE_SERVERS=1)."""
    servers.require("popa3d", *popa3d_available())


def _pdeathsig() -> None:  # pragma: no cover - runs in the child
    """preexec_fn: the kernel SIGTERMs socat if the thread that started it dies."""
    with contextlib.suppress(Exception):
        ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _tool(*argv: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run a shadow tool, retrying while another one holds /etc/passwd's lock."""
    argv = (_which(argv[0]) or argv[0], *argv[1:])
    for _ in range(50):
        proc = subprocess.run(argv, input=stdin, capture_output=True, text=True)
        if proc.returncode == 0 or "try again" not in proc.stderr:
            return proc
        time.sleep(0.1)
    return proc


def _exists(name: str) -> bool:
    with contextlib.suppress(KeyError):
        return bool(pwd.getpwnam(name))
    with contextlib.suppress(KeyError):
        return bool(grp.getgrnam(name))
    return False


def _ensure_system() -> None:
    """The unprivileged user and the chroot dir popa3d has compiled in."""
    if not _exists(POP_USER):
        home = ("--home-dir", str(CHROOT), "--shell", "/usr/sbin/nologin")
        _tool("useradd", "--system", "--user-group", "--no-create-home", *home, POP_USER)
        if not _exists(POP_USER):
            raise Popa3dError(f"cannot create the system user {POP_USER}")
    CHROOT.mkdir(mode=0o755, parents=True, exist_ok=True)


def _remove_user(name: str) -> str:
    """Delete a test user and its spool; return an error text or ""."""
    for path in (SPOOL / name, SPOOL / f"{name}.lock"):
        path.unlink(missing_ok=True)
    proc = _tool("userdel", name)
    return "" if proc.returncode == 0 or not _exists(name) else proc.stderr.strip()


def _dead(pid: str) -> bool:
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except (ValueError, OSError):
        pass
    return False


def _reap_stale() -> None:
    """Remove the test users and temp dirs of runs that were killed."""
    for entry in pwd.getpwall():
        pid = entry.pw_gecos.removeprefix(_MARK)
        if pid != entry.pw_gecos and pid.isdigit() and _dead(pid):
            _remove_user(entry.pw_name)
    for path in Path(tempfile.gettempdir()).glob("fpp3-*-*"):
        if _dead(path.name.split("-")[1]):
            shutil.rmtree(path, ignore_errors=True)


def _live_members(pgid: int) -> list[int]:
    """PIDs of non-zombie processes in process group *pgid*."""
    return servers.members(pgid)


def mbox_entry(raw: bytes, sender: str = "MAILER-DAEMON", when: float | None = None) -> bytes:
    """*raw* as a Debian MTA appends it to an mbox (exim4 appendfile, Postfix local).

    A ``From sender asctime`` line, then the message with mboxo quoting (a
    line starting with ``From `` gets ``>``; ``>From `` lines stay as they
    are), a final LF if it had none, and one blank line.
    """
    body = re.sub(rb"(?m)^From ", b">From ", raw)
    if body and not body.endswith(b"\n"):
        body += b"\n"
    head = f"From {sender} {time.asctime(time.localtime(when))}\n".encode()
    return head + body + b"\n"


class Popa3d:
    """A private popa3d on a free 127.0.0.1 port (``ports["off"]``, no TLS).

    :param backdate: after each append set the spool's mtime 1 s back, so that
        the next PASS does not wait 1 s (popa3d sleeps 1 s when the mailbox
        was modified in the current second).  Off by default: an MTA does not.
    """

    name = "popa3d"
    host = "127.0.0.1"
    ca_file: Path | None = None

    def __init__(self, *, backdate: bool = False) -> None:
        self.backdate = backdate
        self.ports: dict[str, int] = {}
        self.users: dict[str, str] = {}  # name -> password, only users we created
        self.root = Path(tempfile.mkdtemp(prefix=f"fpp3-{os.getpid()}-"))
        self.log_path = self.root / "socat.log"
        self._proc: subprocess.Popen[bytes] | None = None
        atexit.register(self.stop)

    def __enter__(self) -> Popa3d:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> Popa3d:
        """Create the system prerequisites, start socat, wait for a greeting."""
        if self._proc is not None:
            raise Popa3dError("already started")
        ok, why = popa3d_available()
        if not ok:
            raise Popa3dError(why)
        _ensure_system()
        _reap_stale()
        for _attempt in range(3):
            port = servers.free_port()
            listen = f"TCP-LISTEN:{port},bind={self.host},reuseaddr,fork"
            with open(self.log_path, "ab") as log:
                self._proc = subprocess.Popen(
                    [_which("socat") or "socat", listen, f"EXEC:{popa3d_binary()}"],
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=log,
                    start_new_session=True,
                    preexec_fn=_pdeathsig,
                    close_fds=True,
                )
            if servers.wait_for_port(port, 10) and self._greets(port):
                self.ports = {"off": port}
                atexit.register(self.stop)
                return self
            self._kill()
        log_text = self.log_path.read_text(errors="replace")
        self.stop()
        raise Popa3dError(f"popa3d did not start:\n{log_text}")

    def _greets(self, port: int) -> bool:
        """Our socat (not another listener) is up and popa3d greets."""
        if self._proc is None or self._proc.poll() is not None:
            return False
        with contextlib.suppress(OSError), socket.create_connection((self.host, port), 10) as s:
            return s.makefile("rb").readline() == b"+OK\r\n" and self._proc.poll() is None
        return False

    def _kill(self) -> None:
        """SIGTERM our process group (socat and every popa3d), SIGKILL after 5 s."""
        if self._proc is None:
            return
        servers.kill_group(self._proc, 5.0)
        self._proc = None

    def stop(self) -> None:
        """Kill our processes, remove our users, their spools and the temp dir (idempotent)."""
        atexit.unregister(self.stop)
        self._kill()
        self.ports = {}
        errors = [e for e in map(_remove_user, list(self.users)) if e]
        self.users.clear()
        shutil.rmtree(self.root, ignore_errors=True)
        if errors:
            raise Popa3dError("; ".join(errors))

    # ----------------------------------------------------------------- users
    def add_user(self, user: str, password: str) -> None:
        """Create system user *user* (refused if the name is taken) with *password*."""
        if not _NAME_RE.fullmatch(user):
            raise ValueError(f"bad user name {user!r}")
        if not password or any(c in password for c in "\n\r\0"):
            raise ValueError("password must be non-empty, without line breaks or NUL")
        if _exists(user) or (SPOOL / user).exists():
            raise ValueError(f"user {user!r} exists (or has a mailbox)")
        home = ("--home-dir", "/nonexistent", "--shell", "/usr/sbin/nologin")
        mark = ("--comment", f"{_MARK}{os.getpid()}")
        proc = _tool("useradd", "--user-group", "--no-create-home", *home, *mark, user)
        if proc.returncode != 0:
            raise Popa3dError(f"useradd {user}: {proc.stderr.strip()}")
        self.users[user] = password
        proc = _tool("chpasswd", stdin=f"{user}:{password}\n")
        if proc.returncode != 0:
            raise Popa3dError(f"chpasswd {user}: {proc.stderr.strip()}")

    def new_user(self, prefix: str = "fpt") -> tuple[str, str]:
        """Create a user with a free random name (``fpt`` + 6 letters); return (user, password)."""
        while True:
            user = prefix + "".join(secrets.choice(string.ascii_lowercase) for _ in range(6))
            if not _exists(user):
                break
        password = "pw " + secrets.token_urlsafe(12)
        self.add_user(user, password)
        return user, password

    # -------------------------------------------------------------- messages
    def spool(self, user: str) -> Path:
        return SPOOL / user

    def append_spool(self, user: str, data: bytes, backdate: bool | None = None) -> None:
        """Append *data* verbatim to the mbox under an fcntl lock; user:mail, 0660 (exim4).

        *backdate*: see :class:`Popa3d` (default: the server's setting).
        """
        if user not in self.users:
            raise KeyError(f"not our user {user!r}")
        fd = os.open(self.spool(user), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o660)
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX)
            os.fchown(fd, pwd.getpwnam(user).pw_uid, grp.getgrnam("mail").gr_gid)
            os.fchmod(fd, 0o660)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            if self.backdate if backdate is None else backdate:
                info = os.fstat(fd)
                os.utime(fd, ns=(info.st_atime_ns, info.st_mtime_ns - 1_000_000_000))
            os.fsync(fd)
        finally:
            os.close(fd)  # releases the lock

    def add_message(self, user: str, raw: bytes) -> None:
        """Deliver *raw* (LF line ends) as a local MTA does (:func:`mbox_entry`)."""
        self.append_spool(user, mbox_entry(raw))

    def count(self, user: str) -> int:
        """STAT's message count in a new session."""
        client = poplib.POP3(self.host, self.ports["off"], timeout=30)
        try:
            client.user(user)
            client.pass_(self.users[user])
            number = client.stat()[0]
            client.quit()
            return number
        finally:
            client.close()

    def raw_messages(self, user: str, password: str) -> list[tuple[str, bytes]]:
        """(UIDL, message) as poplib retrieves them: what fetchpop must deliver."""
        return servers.poplib_messages(self.host, self.ports["off"], user, password, mode="off")
