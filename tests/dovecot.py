"""Run a real, throw-away Dovecot POP3 server for integration tests.

Usage::

    with Dovecot() as server:                 # or server.start() / server.stop()
        maildir = server.add_user("bob", "secret")
        server.add_message("bob", b"Subject: hi\\n\\nbody\\n")
        assert server.server_messages("bob") == [b"Subject: hi\\n\\nbody\\n"]

Everything lives in one temporary directory (config, sockets, state, TLS
material, user homes, log); nothing under /etc or /var is read or written.
The master runs in the foreground (``dovecot -F -c CONFIG``) as our child in
its own process group, so :meth:`Dovecot.stop` can reap every process it
spawned (it is also registered with :mod:`atexit` and the master gets SIGTERM
via ``PR_SET_PDEATHSIG`` if the test process dies).

Privileges:

* As root, Dovecot refuses to run login processes as root ("This process must
  not be run as root") and pop3 refuses mail access as UID 0 ("Mail access not
  allowed for root").  So login processes run as ``dovenull`` (or ``nobody``),
  mail processes as ``nobody`` (``mail_uid``/``mail_gid``), auth and the other
  internal services as root, and the user homes are chowned to the mail UID.
* As an ordinary user, every service runs as that user (no setuid, no chroot).

Environment: ``FETCHPOP_DOVECOT_TMPDIR`` (parent of the temp dir; default
/dev/shm if it has >= 1 GiB free, else the system temp dir),
``FETCHPOP_KEEP_DOVECOT=1`` (keep the temp dir for debugging).  Temp dirs
of killed runs are removed by the next run.

Test-friendly settings: per-user passwd-files (new users can log in at
once), no auth-failure penalty, ``auth_failure_delay = 0`` (a failed login
is still answered after up to 0.5 s), high-performance login process,
``pop3_uidl_format = %08Xu%08Xv``, ``mail_location = maildir:~/Maildir``.

Byte-level behaviour of Dovecot 2.3 (pinned by ``test_dovecot_harness.py``):
LF becomes CRLF and lines are dot-stuffed on the wire; NUL, lone CR, 8-bit
bytes, long lines and "From " lines pass unchanged.  Alterations: a missing
final newline gets CRLF appended (so a client stores an extra LF); a 0-byte
file is served as one empty line; "CR LF" in the file is just a line end.
LIST sizes count LF as 2 octets but not the appended CRLF.
:meth:`Dovecot.server_messages` returns what a correct client must store, so
integration tests should compare against it rather than against the input.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import grp
import os
import poplib
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
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import NamedTuple

import servers
import trustme

__all__ = [
    "DEFAULT_PASSWORD",
    "DEFAULT_USER",
    "Dovecot",
    "DovecotError",
    "DovecotUser",
    "dovecot_binary",
    "require_dovecot",
    "to_maildir_bytes",
]

DEFAULT_USER = "alice"
DEFAULT_PASSWORD = "wonderland"

DOVECOT_MISSING = "dovecot not installed (apt-get install dovecot-pop3d)"
_STARTUP_TIMEOUT = 20.0
_USER_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+@-]{0,63}")
_STOP_TIMEOUT = 10.0


class DovecotError(RuntimeError):
    """Dovecot could not be started or misbehaved."""


class DovecotUser(NamedTuple):
    """A POP3 account on a running :class:`Dovecot`; unpacks as a 4-tuple."""

    dovecot: Dovecot
    user: str
    password: str
    maildir: Path


def dovecot_binary() -> str | None:
    """Path of the ``dovecot`` master binary, or None if not installed."""
    path = os.environ.get("PATH", os.defpath) + os.pathsep + "/usr/sbin:/usr/local/sbin:/sbin"
    return shutil.which("dovecot", path=path)


def to_maildir_bytes(wire_lines: Iterable[bytes]) -> bytes:
    """Turn the CRLF-terminated, dot-stuffed lines of a RETR into stored bytes.

    The terminating ``.`` line must not be included.  Each line loses its CRLF
    (a bare LF is accepted too), one leading dot is removed from dot-stuffed
    lines, and lines are joined with LF; the result ends with LF.
    """
    out = bytearray()
    for line in wire_lines:
        if line.endswith(b"\r\n"):
            line = line[:-2]
        elif line.endswith(b"\n"):
            line = line[:-1]
        if line.startswith(b"."):
            line = line[1:]
        out += line
        out += b"\n"
    return bytes(out)


def _pick_tmpdir() -> str | None:
    """Prefer tmpfs (/dev/shm) when it has room: creating thousands of small
    Maildir files there is ~50x faster than on a disk-backed /tmp."""
    override = os.environ.get("FETCHPOP_DOVECOT_TMPDIR")
    if override:
        return override
    shm = "/dev/shm"
    try:
        st = os.statvfs(shm)
    except OSError:
        return None
    if st.f_bavail * st.f_frsize >= 1 << 30 and os.access(shm, os.W_OK | os.X_OK):
        return shm
    return None


def _reap_stale_dirs(parent: str | None) -> None:
    """Remove fpdc-* dirs left by killed test runs (their owner pid is gone)."""
    parent = parent or tempfile.gettempdir()
    with contextlib.suppress(OSError):
        for entry in os.scandir(parent):
            if not entry.name.startswith("fpdc-") or not entry.is_dir(follow_symlinks=False):
                continue
            try:
                if entry.stat(follow_symlinks=False).st_uid != os.geteuid():
                    continue
                pid = int((Path(entry.path) / "owner.pid").read_text())
            except (OSError, ValueError):
                continue
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                shutil.rmtree(entry.path, ignore_errors=True)
            except PermissionError:
                pass


def require_dovecot() -> None:
    """Skip the calling test if dovecot is missing (fail if FETCHPOP_REQUIRE_DOVECOT=1)."""
    if dovecot_binary() is not None:
        return
    import pytest

    if os.environ.get("FETCHPOP_REQUIRE_DOVECOT") == "1":
        pytest.fail(f"{DOVECOT_MISSING}, but FETCHPOP_REQUIRE_DOVECOT=1", pytrace=False)
    pytest.skip(DOVECOT_MISSING)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _set_pdeathsig() -> None:  # pragma: no cover - runs in the child
    """preexec_fn: have the kernel SIGTERM dovecot if our thread dies."""
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG



def _user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


class Dovecot:
    """A private Dovecot POP3 server on loopback.

    :param auth_mechanisms: Dovecot ``auth_mechanisms`` (e.g. ``"plain login
        cram-md5 scram-sha-1 scram-sha-256 apop"``).  ``apop`` makes the
        greeting carry an APOP timestamp and enables the APOP command.
    :param disable_plaintext_auth: Dovecot ``disable_plaintext_auth``.  Only
        affects clients connecting from :attr:`insecure_source`; connections
        from 127.0.0.1 count as secure.
    :param ssl_mode: Dovecot ``ssl`` setting: ``"yes"`` (STLS offered) or
        ``"required"``.
    :param auth_penalty: keep Dovecot's anvil auth penalty (after a failed
        login, the next ones from that IP wait 2, 4, 8, 15 s).  Off by
        default.  (A failed login itself is always answered after ~0.5 s.)
    :param extra_config: appended verbatim to the generated dovecot.conf
        (later settings win).
    :param lmtp: also run Dovecot's LMTP server (``dovecot-lmtpd``) on
        ``lmtp_port`` (loopback) and the unix socket ``lmtp_socket``,
        delivering into the users' Maildirs, with the Sieve plugin
        (``dovecot-sieve``) where installed: a user's ``~/.dovecot.sieve``
        (see :meth:`set_sieve`) runs on each delivery.
    :param root_dir: directory to use instead of a fresh temporary one (it is
        not deleted on stop).
    :param keep_dir: keep the temporary directory after stop (for debugging;
        also enabled by env ``FETCHPOP_KEEP_DOVECOT=1``).

    Attributes: ``host``, ``port`` (plain POP3, STLS offered), ``tls_port``
    (implicit TLS), ``ca`` (:class:`trustme.CA`), ``ca_file``, ``cert_file``,
    ``key_file``, ``log_path``, ``config_path``, ``root``, ``users``
    (name -> password).
    """

    host = "127.0.0.1"
    #: Bind a client socket to this source address to be treated as a
    #: non-secured remote client.  Dovecot considers a connection whose local
    #: and remote IPs are equal (127.0.0.1 -> 127.0.0.1) secure, so
    #: ``disable_plaintext_auth``/``ssl = required`` never bite those.
    insecure_source = "127.0.0.2"

    def __init__(
        self,
        *,
        auth_mechanisms: str = "plain login",
        disable_plaintext_auth: bool = False,
        ssl_mode: str = "yes",
        auth_penalty: bool = False,
        extra_config: str = "",
        lmtp: bool = False,
        imap: bool = False,
        root_dir: Path | None = None,
        keep_dir: bool = False,
    ) -> None:
        binary = dovecot_binary()
        if binary is None:
            raise DovecotError(DOVECOT_MISSING)
        self.binary = binary
        self.auth_mechanisms = auth_mechanisms
        self.disable_plaintext_auth = disable_plaintext_auth
        self.ssl_mode = ssl_mode
        self.auth_penalty = auth_penalty
        self.extra_config = extra_config
        self.lmtp = lmtp
        #: With ``imap=True``: IMAP (STARTTLS offered) and IMAPS ports on loopback.
        self.imap = imap
        self.imap_port = self.imaps_port = 0
        self.lmtp_port = 0
        self.ca = trustme.CA()
        self.keep_dir = keep_dir or os.environ.get("FETCHPOP_KEEP_DOVECOT") == "1"
        self._owns_root = root_dir is None
        if root_dir is None:
            tmpdir = _pick_tmpdir()
            _reap_stale_dirs(tmpdir)
            root_dir = Path(tempfile.mkdtemp(prefix="fpdc-", dir=tmpdir))
            if not self.keep_dir:  # kept dirs are for debugging: never reaped
                (root_dir / "owner.pid").write_text(str(os.getpid()))
        self.root = root_dir.resolve()
        atexit.register(self.stop)  # removes the directory even if never started
        self.config_path = self.root / "dovecot.conf"
        #: LMTP's unix socket (with ``lmtp=True``).
        self.lmtp_socket = self.root / "run" / "lmtp"
        self.log_path = self.root / "dovecot.log"
        self.passwd_dir = self.root / "passwd.d"
        self.home_root = self.root / "home"
        self.ca_file = self.root / "ca.pem"
        self.cert_file = self.root / "cert.pem"
        self.key_file = self.root / "key.pem"
        self.port = 0
        self.tls_port = 0
        self.users: dict[str, str] = {}
        self._proc: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()
        self._last_name: tuple[int, int] = (0, 0)
        self._seq = 0
        self._user_seq = 0

        self.is_root = os.geteuid() == 0
        if self.is_root:
            nobody = pwd.getpwnam("nobody") if _user_exists("nobody") else None
            self.mail_uid = nobody.pw_uid if nobody else 65534
            self.mail_gid = nobody.pw_gid if nobody else 65534
            self.login_user = "dovenull" if _user_exists("dovenull") else "nobody"
            self.internal_user = "root"
            self.internal_group = grp.getgrgid(0).gr_name
        else:
            self.mail_uid = os.getuid()
            self.mail_gid = os.getgid()
            self.login_user = pwd.getpwuid(self.mail_uid).pw_name
            self.internal_user = self.login_user
            self.internal_group = grp.getgrgid(self.mail_gid).gr_name

    # ------------------------------------------------------------------ life
    def __enter__(self) -> Dovecot:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> Dovecot:
        """Write config, TLS material and the default user; start; wait until ready."""
        if self._proc is not None:
            raise DovecotError("already started")
        for sub in ("run", "state", "home", "passwd.d"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        if self.is_root:
            # login (dovenull) and mail (nobody) processes must traverse root/.
            self.root.chmod(0o755)
        self._write_tls()
        if DEFAULT_USER not in self.users:
            self.add_user(DEFAULT_USER, DEFAULT_PASSWORD)

        last_error = ""
        for _attempt in range(3):
            self._pick_ports()
            if self.imap:
                taken = {self.port, self.tls_port, self.lmtp_port}
                while self.imap_port in taken or self.imaps_port in taken | {self.imap_port}:
                    self.imap_port, self.imaps_port = _free_port(), _free_port()
            self.config_path.write_text(self._config())
            try:
                self._spawn_and_wait()
            except DovecotError as e:
                last_error = str(e)
                if "in use" not in last_error:
                    break
            except BaseException:
                self.stop()
                raise
            else:
                atexit.register(self.stop)
                return self
        self.stop()
        raise DovecotError(last_error)

    def _pick_ports(self) -> None:
        self.port, self.tls_port = _free_port(), _free_port()
        while self.tls_port == self.port:
            self.tls_port = _free_port()
        if self.lmtp:
            self.lmtp_port = _free_port()
            while self.lmtp_port in (self.port, self.tls_port):
                self.lmtp_port = _free_port()

    def _spawn_and_wait(self) -> None:
        stderr_path = self.root / "master.stderr"
        with open(stderr_path, "wb") as err:
            self._proc = subprocess.Popen(
                [self.binary, "-F", "-c", str(self.config_path)],
                stdin=subprocess.DEVNULL,
                stdout=err,
                stderr=err,
                start_new_session=True,
                preexec_fn=_set_pdeathsig,
                close_fds=True,
            )
        deadline = time.monotonic() + _STARTUP_TIMEOUT
        while True:
            if self._proc.poll() is not None or time.monotonic() > deadline:
                rc = self._proc.poll()
                self._kill_group()
                self._proc = None
                msg = (
                    f"dovecot failed to start (exit status {rc}).\n"
                    f"--- {stderr_path} ---\n{self._read(stderr_path)}"
                    f"--- {self.log_path} ---\n{self._read(self.log_path)}"
                )
                raise DovecotError(msg)
            if self._probe():
                return
            time.sleep(0.01)

    def _probe(self) -> bool:
        """True once both ports answer with a POP3 greeting (TLS verified)."""
        ctx = ssl.create_default_context(cafile=str(self.ca_file))
        try:
            with socket.create_connection((self.host, self.port), timeout=2) as s:
                if not s.recv(512).startswith(b"+OK"):
                    return False
            with (
                socket.create_connection((self.host, self.tls_port), timeout=2) as raw,
                ctx.wrap_socket(raw, server_hostname="localhost") as s,
            ):
                if not s.recv(512).startswith(b"+OK"):
                    return False
            if self.imap:
                with socket.create_connection((self.host, self.imap_port), timeout=2) as s:
                    if not s.recv(512).startswith(b"* OK"):
                        return False
            if self.lmtp:
                with socket.create_connection((self.host, self.lmtp_port), timeout=2) as s:
                    if not s.recv(512).startswith(b"220"):
                        return False
                with socket.socket(socket.AF_UNIX) as u:
                    u.settimeout(2)
                    u.connect(str(self.lmtp_socket))
                    return u.recv(512).startswith(b"220")
            return True
        except OSError:
            return False

    @staticmethod
    def _read(path: Path) -> str:
        try:
            return path.read_text(errors="replace")
        except OSError:
            return "(missing)\n"

    def stop(self) -> None:
        """Stop the server and every process it started; remove the temp dir.

        Idempotent; safe to call from fixture finalizers and atexit.
        """
        atexit.unregister(self.stop)
        if self._proc is not None:
            self._kill_group()
            self._proc = None
        if self._owns_root and not self.keep_dir:
            shutil.rmtree(self.root, ignore_errors=True)

    def _kill_group(self) -> None:
        """Stop every process in the master's process group; reap the master.

        SIGTERM to the whole group makes every process exit at once (SIGTERM
        to the master alone takes >1 s, and longer during startup); whatever
        survives ``_STOP_TIMEOUT`` gets SIGKILL.
        """
        assert self._proc is not None
        servers.kill_group(self._proc, _STOP_TIMEOUT)

    # ---------------------------------------------------------------- config
    def _write_tls(self) -> None:
        if self.cert_file.exists():
            return
        cert = self.ca.issue_cert("localhost", "127.0.0.1")
        cert.private_key_pem.write_to_path(str(self.key_file))
        self.key_file.chmod(0o600)
        chain = b"".join(blob.bytes() for blob in cert.cert_chain_pems)
        self.cert_file.write_bytes(chain)
        self.ca.cert_pem.write_to_path(str(self.ca_file))

    def _config(self) -> str:
        r = self.root
        plain = "yes" if self.disable_plaintext_auth else "no"
        # Without the anvil-auth-penalty socket (a unix listener with mode 0
        # is not created) auth silently disables the auth-failure penalty,
        # which would otherwise delay every login from an IP by 2..15 s for
        # ~30 s after a failed one - leaking from test to test.
        penalty = (
            "" if self.auth_penalty else "unix_listener anvil-auth-penalty {\n    mode = 0\n  }"
        )
        return f"""\
# Generated by tests/dovecot.py - do not edit.
protocols = pop3
listen = {self.host}
base_dir = {r}/run
state_dir = {r}/state
instance_name = fpdc-{os.getpid()}-{id(self):x}
log_path = {self.log_path}
info_log_path = {self.log_path}
debug_log_path = {self.log_path}
auth_verbose = yes
shutdown_clients = yes

default_login_user = {self.login_user}
default_internal_user = {self.internal_user}
default_internal_group = {self.internal_group}
first_valid_uid = 1
first_valid_gid = 0
mail_uid = {self.mail_uid}
mail_gid = {self.mail_gid}

ssl = {self.ssl_mode}
ssl_cert = <{self.cert_file}
ssl_key = <{self.key_file}
disable_plaintext_auth = {plain}
auth_mechanisms = {self.auth_mechanisms}
auth_failure_delay = 0
auth_cache_size = 0
login_greeting = fetchpop test dovecot ready.
mail_max_userip_connections = 200

mail_location = maildir:~/Maildir
pop3_uidl_format = %08Xu%08Xv

# One passwd-file per user: Dovecot re-stats a passwd-file at most once a
# second, so a user appended to a shared file could stay unknown for up to
# a second; a new per-user file is opened on its first lookup.
passdb {{
  driver = passwd-file
  args = scheme=PLAIN {self.passwd_dir}/%u
}}
userdb {{
  driver = passwd-file
  args = {self.passwd_dir}/%u
}}

service pop3-login {{
  chroot =
  # high-performance mode: one long-lived login process (saves ~10 ms/login)
  service_count = 0
  process_min_avail = 1
  inet_listener pop3 {{
    address = {self.host}
    port = {self.port}
  }}
  inet_listener pop3s {{
    address = {self.host}
    port = {self.tls_port}
    ssl = yes
  }}
}}
service anvil {{
  chroot =
  {penalty}
}}
{self._lmtp_config()}
{self._imap_config()}
{self.extra_config}
"""

    def _imap_config(self) -> str:
        if not self.imap:
            return ""
        return f"""
protocols = $protocols imap
service imap-login {{
  chroot =
  service_count = 0
  inet_listener imap {{
    address = {self.host}
    port = {self.imap_port}
  }}
  inet_listener imaps {{
    address = {self.host}
    port = {self.imaps_port}
    ssl = yes
  }}
}}
"""

    def _lmtp_config(self) -> str:
        if not self.lmtp:
            return ""
        sieve = Path("/usr/lib/dovecot/modules/lib90_sieve_plugin.so").exists()
        plugins = "mail_plugins = $mail_plugins sieve" if sieve else ""
        return f"""
protocols = $protocols lmtp
postmaster_address = postmaster@localhost
lmtp_add_received_header = no
service lmtp {{
  chroot =
  inet_listener lmtp {{
    address = {self.host}
    port = {self.lmtp_port}
  }}
  unix_listener lmtp {{
    mode = 0666
  }}
}}
protocol lmtp {{
  {plugins}
}}
plugin {{
  sieve = file:~/sieve;active=~/.dovecot.sieve
}}
"""

    def set_sieve(self, user: str, script: str) -> Path:
        """Make *script* the user's active Sieve script (LMTP runs it on delivery)."""
        path = self.home_root / user / ".dovecot.sieve"
        path.write_text(script)
        if self.is_root:
            os.chown(path, self.mail_uid, self.mail_gid)
        return path

    def folder(self, user: str, name: str) -> Path:
        """The Maildir++ folder *name* of *user* (``~/Maildir/.NAME``)."""
        return self.maildir(user) / f".{name}"

    # ----------------------------------------------------------------- users
    def maildir(self, user: str) -> Path:
        """The Maildir of ``user`` (whether or not it exists)."""
        return self.home_root / user / "Maildir"

    def add_user(self, name: str, password: str) -> Path:
        """Create a passwd-file user with a {PLAIN} password; return its Maildir.

        Works while the server runs; the user can log in immediately.  Dovecot
        lower-cases login names (``auth_username_format = %Lu``), so names
        differing only in case are the same user.
        """
        if not _USER_RE.fullmatch(name):
            raise ValueError(f"bad user name {name!r}")
        if any(c in password for c in ":\n\r\0") or not password:
            raise ValueError("password must be non-empty without ':' or line breaks")
        key = name.lower()
        with self._lock:
            if any(u.lower() == key for u in self.users):
                raise ValueError(f"user {name!r} exists")
            home = self.home_root / name
            maildir = home / "Maildir"
            for sub in ("", "Maildir", "Maildir/cur", "Maildir/new", "Maildir/tmp"):
                d = home / sub
                d.mkdir(mode=0o700, parents=True, exist_ok=True)
                if self.is_root:
                    os.chown(d, self.mail_uid, self.mail_gid)
            self.users[name] = password
            # user:password:uid:gid:gecos:home:shell:extra (uid/gid: mail_uid/gid)
            entry = self.passwd_dir / key
            tmp = entry.with_name(f".{key}.tmp")
            tmp.write_text(f"{key}:{{PLAIN}}{password}::::{home}::\n", encoding="utf-8")
            tmp.chmod(0o644)
            tmp.rename(entry)
        return maildir

    def remove_user(self, name: str) -> None:
        """Delete the user and its home (frees space; used by the mailbox fixture)."""
        with self._lock:
            self.users.pop(name, None)
            (self.passwd_dir / name.lower()).unlink(missing_ok=True)
            shutil.rmtree(self.home_root / name, ignore_errors=True)

    def new_mailbox(self, prefix: str = "user") -> DovecotUser:
        """Create a fresh, uniquely named user and return its :class:`DovecotUser`."""
        with self._lock:
            self._user_seq += 1
            name = f"{prefix}{self._user_seq}"
        password = f"pw-{name}-S3cret!"
        maildir = self.add_user(name, password)
        return DovecotUser(self, name, password, maildir)

    # -------------------------------------------------------------- messages
    def _next_name(self) -> str:
        # Dovecot assigns UIDs to new files sorted by (seconds, M<usecs>,
        # name), so strictly increasing (sec, usec) keeps insertion order.
        now = time.time_ns() // 1000
        sec, usec = divmod(now, 1_000_000)
        if (sec, usec) <= self._last_name:
            sec, usec = self._last_name
            usec += 1
            if usec >= 1_000_000:
                sec, usec = sec + 1, 0
        self._last_name = (sec, usec)
        self._seq += 1
        return f"{sec}.M{usec}P{os.getpid()}Q{self._seq}.fetchpop-test"

    def add_message(self, user: str, raw: bytes) -> Path:
        """Deliver ``raw`` (LF line ends) verbatim into ``user``'s Maildir/new.

        Written to tmp/ and renamed into new/ like a real MDA; visible to the
        next POP3 session (not to one already open).  Returns the file path.
        """
        return self.add_messages(user, [raw])[0]

    def add_messages(self, user: str, raws: Iterable[bytes]) -> list[Path]:
        """Deliver several messages in order (fast: ~10 us per small message)."""
        if user not in self.users:
            raise KeyError(f"no such user {user!r}")
        maildir = self.maildir(user)
        tmp, new = maildir / "tmp", maildir / "new"
        paths = []
        with self._lock:
            for raw in raws:
                name = self._next_name()
                tmp_path = tmp / name
                fd = os.open(tmp_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                try:
                    view = memoryview(raw)
                    while view:
                        view = view[os.write(fd, view) :]
                    if self.is_root:
                        os.fchown(fd, self.mail_uid, self.mail_gid)
                finally:
                    os.close(fd)
                dest = new / name
                os.rename(tmp_path, dest)
                paths.append(dest)
        return paths

    # ------------------------------------------------------------ inspection
    @contextlib.contextmanager
    def pop3(self, user: str = DEFAULT_USER, password: str | None = None) -> Iterator[poplib.POP3]:
        """A logged-in :class:`poplib.POP3` (USER/PASS on the plain port); QUITs after."""
        client = poplib.POP3(self.host, self.port, timeout=30)
        try:
            client.user(user)
            client.pass_(self.users[user] if password is None else password)
            yield client
            client.quit()
        finally:
            client.close()

    def count(self, user: str = DEFAULT_USER) -> int:
        """Number of messages the server reports (STAT) in a new session."""
        with self.pop3(user) as client:
            return client.stat()[0]

    def uidls(self, user: str = DEFAULT_USER) -> list[str]:
        """UIDL strings of all messages, in message-number order."""
        with self.pop3(user) as client:
            _resp, lines, _octets = client.uidl()
            return [line.split(None, 1)[1].decode("ascii") for line in lines]

    def server_messages(self, user: str = DEFAULT_USER) -> list[bytes]:
        """RETR every message in a new session; return them as a client must store them.

        CRLF -> LF, dot-unstuffed, each message ending in LF.  Lines of any
        length are handled (unlike :meth:`poplib.POP3.retr`).  The session
        QUITs without DELE, so nothing is removed (Dovecot does mark the
        messages \\Seen, which renames the files into cur/).
        """
        with self.pop3(user) as client:
            count = client.stat()[0]
            sock, rfile = client.sock, client.file
            result: list[bytes] = []
            batch = 100  # pipeline RETRs (server offers PIPELINING)
            for start in range(1, count + 1, batch):
                nums = range(start, min(start + batch, count + 1))
                sock.sendall(b"".join(b"RETR %d\r\n" % n for n in nums))
                for n in nums:
                    status = rfile.readline()
                    if not status.startswith(b"+OK"):
                        raise DovecotError(f"RETR {n}: {status!r}")
                    lines = []
                    while True:
                        line = rfile.readline()
                        if not line:
                            raise DovecotError(f"EOF during RETR {n}")
                        if line == b".\r\n":
                            break
                        lines.append(line)
                    result.append(to_maildir_bytes(lines))
            return result

    def log_text(self) -> str:
        """The Dovecot log so far."""
        return self._read(self.log_path)

    def log_errors(self) -> list[str]:
        """Log lines at Error/Fatal/Panic level."""
        levels = (": Error:", ": Fatal:", ": Panic:")
        return [ln for ln in self.log_text().splitlines() if any(x in ln for x in levels)]
