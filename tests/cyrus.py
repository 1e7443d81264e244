"""Run a real, throw-away Cyrus POP3 server (cyrus-pop3d 3.6.1) for integration tests.

Usage::

    with Cyrus() as server:                    # or server.start() / server.stop()
        server.add_user("bob", "secret")
        server.add_message("bob", b"Subject: hi\\n\\nbody\\n")
        assert server.count("bob") == 1
        [(uidl, message)] = server.raw_messages("bob", "secret")

The binaries come from the tree ``.ci/servers`` unpacked (tests/servers.py):
cyrmaster, pop3d, lmtpd, ctl_cyrusdb (cyrus-pop3d, cyrus-common) and, if
present, imapd (cyrus-imapd, only for :meth:`Cyrus.append`).  ``saslpasswd2``
(package sasl2-bin) creates the users.

Everything lives in one temporary directory: imapd.conf, cyrus.conf, the
databases (configdirectory), the spool (partition-default), the sasldb, the
LMTP socket, TLS material (trustme; the certificate names 127.0.0.1 and
localhost) and two logs; directories of killed runs are removed by the next
run.  The master runs in the foreground (``cyrmaster -D``) as our child in
its own process group; :meth:`Cyrus.stop` SIGTERMs that group (SIGKILL after
1 s), reaps it and removes the directory; it is registered with
:mod:`atexit`.  Cyrus refuses to serve as root, so as root the master is
started directly as ``cyrus`` if that user exists, else as ``nobody``
(``cyrus_user``; the directory is chowned to it); starting it as root would
let it setuid itself, which clears ``PR_SET_PDEATHSIG`` (the kernel's
SIGTERM to the master if the test process dies).  As an ordinary user it
runs as that user.  Starting takes ~0.2-0.4 s.

Logs: Cyrus logs only through syslog(3) and there is no /dev/log here, so a
small LD_PRELOAD shim (compiled with ``cc`` into the temp dir when a compiler
exists) appends every syslog line to ``syslog.log``; the master's stderr goes
to ``master.log``.  :meth:`Cyrus.log_text` shows both (config errors, bad
logins, deliveries).

Settings: services on 127.0.0.1 only (pop3 with STLS, pop3s = ``pop3d -s``,
imap if imapd exists, lmtpd on a unix socket); ``sasl_pwcheck_method:
auxprop`` with the sasldb plugin and ``sasl_mech_list: PLAIN LOGIN`` (without
it Cyrus offers SCRAM-SHA-*(-PLUS), DIGEST-MD5, CRAM-MD5, NTLM, PLAIN,
LOGIN); ``allowplaintext: no`` (Cyrus's default: USER/PASS and AUTH PLAIN only
after STLS or on pop3s; before, ``-ERR [AUTH] USER command only available
under a layer`` and ``-ERR [AUTH] authenticating: encryption needed to use
mechanism``); ``failedloginpause: 0`` (Cyrus's default sleeps 3 s before
every failed-login reply); ``autocreate_quota: 0`` (the INBOX is created at
the first login, which :meth:`Cyrus.add_user` does).  Pass
``options={"key": "value"}`` to override or add imapd.conf settings.

Cyrus 3.6.1 facts the product must live with (pinned by
tests/test_cyrus_harness.py):

* Greeting ``+OK localhost Cyrus POP3 3.6.1-Debian-3.6.1-4+deb12u5 server
  ready <digits.unixtime@localhost>``: an APOP timestamp (``allowapop`` is on
  by default, and APOP works with sasldb even in clear text).
* CAPA before STLS: STLS, EXPIRE NEVER, LOGIN-DELAY 0, TOP, UIDL, PIPELINING,
  RESP-CODES, AUTH-RESP-CODE, IMPLEMENTATION Cyrus POP3 <version> (no SASL,
  no USER).  After STLS and on pop3s: ``SASL PLAIN LOGIN`` first, USER before
  IMPLEMENTATION, no STLS.  After USER/PASS: as after STLS without USER;
  after AUTH the SASL line goes too.  No UTF8 (RFC 6856): ``UTF8`` gets
  ``-ERR Unrecognized command``.
* Bad password: ``-ERR [AUTH] Invalid login`` (USER answers ``+OK Name is a
  valid mailbox`` even for unknown users), AUTH: ``-ERR [AUTH]
  authenticating: authentication failure``; the connection stays usable.
* UIDL is ``uidvalidity.uid`` (``uidl_format: cyrus``), e.g. ``1796304343.1``.
* lmtpd prepends ``Return-Path: <sender>``, a 3-line ``Received: from
  localhost ([unix socket])`` ... ``with LMTPA; <date>``,
  ``X-Cyrus-Session-Id:`` and ``X-Sieve: CMU Sieve 3.0``, and appends
  ``Message-ID: <cmu-lmtpd-...@localhost>`` and ``Date:`` to a header that
  has none.  With ``munge8bit`` (default on) every 8-bit byte in the header
  becomes ``X`` (``caf\xc3\xa9`` -> ``cafXX``; the body is untouched);
  ``munge8bit: no`` keeps them.  LMTP cannot store a message without a final
  newline; IMAP APPEND can, and then RETR appends CRLF while LIST counts the
  stored octets only (2 fewer than the wire).  Otherwise LIST is the stored
  size with CRLF line ends, the RETR octets before dot-stuffing.
* Pipelining: USER/PASS and everything after a login may be pipelined
  (CAPA, UIDL, LIST, many RETRs in one packet are all answered), but the
  bytes pipelined after ``AUTH PLAIN <b64>`` are never executed: Cyrus
  replaces them with as many bytes from the start of the AUTH line
  (prot_setsasl decodes from the buffer start), so the client's next command
  is glued to that prefix and gets ``-ERR Unrecognized command``.  Bytes
  pipelined after STLS are discarded.
* ``RETR 9`` / ``RETR 0`` / a DELEd number: ``-ERR No such message``;
  ``RETR x``: ``-ERR Not a number``.  Sessions do not lock each other out (no
  ``[IN-USE]``); a message expunged by another session (POP3 DELE+QUIT or
  IMAP EXPUNGE) is still listed and served by an already open session
  (default ``expunge_mode: delayed``).
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import imaplib
import os
import poplib
import pwd
import re
import shutil
import signal
import smtplib
import socket
import ssl
import subprocess
import tempfile
import time
from pathlib import Path

import servers
import trustme

__all__ = ["SENDER", "Cyrus", "CyrusError", "cyrus_available", "require_cyrus"]

SENDER = "sender@example.org"
_STARTUP_TIMEOUT = 20.0
_TERM_GRACE = 1.0  # then SIGKILL: nothing in the temp dir needs a clean shutdown
_USER_RE = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
_SHIM = r"""
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <fcntl.h>
#include <unistd.h>
static const char *ident = "cyrus";
void openlog(const char *id, int o, int f) { (void)o; (void)f; if (id) ident = id; }
void closelog(void) {}
void vsyslog(int pri, const char *fmt, va_list ap) {
    char b[8192]; const char *p = getenv("FETCHPOP_CYRUS_LOG"); int n, fd;
    if (!p) return;
    n = snprintf(b, sizeof b, "%s[%d] <%d>: ", ident, (int)getpid(), pri & 7);
    n += vsnprintf(b + n, sizeof b - n - 1, fmt, ap);
    if (n > (int)sizeof b - 2) n = sizeof b - 2;
    b[n++] = '\n';
    if ((fd = open(p, O_WRONLY | O_APPEND | O_CLOEXEC)) >= 0) { (void)!write(fd, b, n); close(fd); }
}
void syslog(int p, const char *f, ...) { va_list a; va_start(a, f); vsyslog(p, f, a); va_end(a); }
void __syslog_chk(int p, int x, const char *f, ...)
{ va_list a; (void)x; va_start(a, f); vsyslog(p, f, a); va_end(a); }
void __vsyslog_chk(int p, int x, const char *f, va_list a) { (void)x; vsyslog(p, f, a); }
"""


class CyrusError(RuntimeError):
    """Cyrus could not be started or misbehaved."""


def _paths() -> dict[str, Path]:
    root = servers.server_root()
    return {
        "master": root / "usr/sbin/cyrmaster",
        "bin": root / "usr/lib/cyrus/bin",
        "lib": root / "usr/lib/x86_64-linux-gnu",
    }


def _saslpasswd() -> str | None:
    path = os.environ.get("PATH", os.defpath) + os.pathsep + "/usr/sbin:/sbin"
    return shutil.which("saslpasswd2", path=path)


def cyrus_available() -> tuple[bool, str]:
    """Whether Cyrus can run here, and if not, why."""
    p = _paths()
    for need in (p["master"], p["bin"] / "pop3d", p["bin"] / "lmtpd"):
        if not os.access(need, os.X_OK):
            return False, f"{need} missing"
    if _saslpasswd() is None:
        return False, "saslpasswd2 missing (apt-get install sasl2-bin)"
    return True, ""


def require_cyrus() -> None:
    """Skip the calling test if Cyrus cannot run (fail with FETCHPOP_REQUIRE_SERVERS=1)."""
    available, why = cyrus_available()
    servers.require("Cyrus", available, why)


def _set_pdeathsig() -> None:  # pragma: no cover - runs in the child
    with contextlib.suppress(Exception):
        ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _group_members(pgid: int) -> list[int]:
    """PIDs of live (non-zombie) processes in process group *pgid*."""
    return servers.members(pgid)


class Cyrus:
    """A private Cyrus POP3 server on loopback (see the module docstring).

    :param options: imapd.conf settings that override or extend the defaults.
    :param sasl_mechs: ``sasl_mech_list`` (None: every mechanism libsasl2 offers).
    Attributes: ``host``, ``ports`` (``{"starttls": P, "implicit": Q}``),
    ``imap_port`` (None without imapd), ``ca_file``, ``root``, ``users``.
    """

    name = "cyrus"
    host = "127.0.0.1"
    servername = "localhost"  # also the SASL realm of every user

    def __init__(
        self, *, options: dict[str, str] | None = None, sasl_mechs: str | None = "PLAIN LOGIN"
    ) -> None:
        self._p = _paths()
        self.options = {
            **({"sasl_mech_list": sasl_mechs} if sasl_mechs else {}),
            "failedloginpause": "0",
            "autocreate_quota": "0",
            "allowplaintext": "no",
            **(options or {}),
        }
        if os.geteuid() == 0:
            self.run_user = "cyrus" if _user_exists("cyrus") else "nobody"
        else:
            self.run_user = pwd.getpwuid(os.geteuid()).pw_name
        _reap_stale_dirs()
        self.root = Path(tempfile.mkdtemp(prefix="fpcy-"))
        (self.root / "owner.pid").write_text(str(os.getpid()))
        self.ca_file = self.root / "ca.pem"
        self.conf = self.root / "imapd.conf"
        self.syslog_path = self.root / "syslog.log"
        self.master_log = self.root / "master.log"
        self.ports: dict[str, int] = {}
        self.imap_port: int | None = None
        self.users: dict[str, str] = {}
        self._proc: subprocess.Popen[bytes] | None = None
        atexit.register(self.stop)

    # ------------------------------------------------------------------ life
    def __enter__(self) -> Cyrus:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> Cyrus:
        """Write config and TLS material, start cyrmaster, wait until it serves."""
        if self._proc is not None:
            raise CyrusError("already started")
        r = self.root
        for sub in ("conf/socket", "spool", "socket", "lock", "proc"):
            (r / sub).mkdir(parents=True, exist_ok=True)
        ca = trustme.CA()
        cert = ca.issue_cert("127.0.0.1", "localhost")
        cert.private_key_pem.write_to_path(str(r / "key.pem"))
        (r / "cert.pem").write_bytes(b"".join(b.bytes() for b in cert.cert_chain_pems))
        ca.cert_pem.write_to_path(str(self.ca_file))
        self.syslog_path.touch()
        env = {**os.environ, "LD_LIBRARY_PATH": str(self._p["lib"])}
        cc = shutil.which("cc") or shutil.which("gcc")
        if cc:
            (r / "syslog.c").write_text(_SHIM)
            built = subprocess.run(
                [cc, "-shared", "-fPIC", "-O", "-o", str(r / "syslog.so"), str(r / "syslog.c")],
                capture_output=True,
            )
            if built.returncode == 0:
                env["LD_PRELOAD"] = str(r / "syslog.so")
                env["FETCHPOP_CYRUS_LOG"] = str(self.syslog_path)
        error = ""
        for _attempt in range(3):
            self._write_config()
            r.chmod(0o755)
            if os.geteuid() == 0:
                pw = pwd.getpwnam(self.run_user)
                for path in [r, *r.rglob("*")]:
                    os.chown(path, pw.pw_uid, pw.pw_gid, follow_symlinks=False)
            try:
                self._spawn_and_wait(env)
                return self
            except CyrusError as e:
                error = str(e)
                if "listener socket" not in error:  # retry only lost port races
                    break
        self.stop()
        raise CyrusError(error)

    def _write_config(self) -> None:
        r, b = self.root, self._p["bin"]
        imapd = b / "imapd"
        picked: list[int] = []
        while len(picked) < (3 if os.access(imapd, os.X_OK) else 2):
            if (port := servers.free_port()) not in picked:
                picked.append(port)
        self.ports = {"starttls": picked[0], "implicit": picked[1]}
        self.imap_port = picked[2] if len(picked) > 2 else None
        settings = {
            "configdirectory": f"{r}/conf",
            "defaultpartition": "default",
            "partition-default": f"{r}/spool",
            "servername": self.servername,
            "cyrus_user": self.run_user,
            "sasl_pwcheck_method": "auxprop",
            "sasl_auxprop_plugin": "sasldb",
            "sasl_sasldb_path": f"{r}/sasldb2",
            "tls_server_cert": f"{r}/cert.pem",
            "tls_server_key": f"{r}/key.pem",
            "tls_client_certs": "off",
            "lmtpsocket": f"{r}/socket/lmtp",
            "idlesocket": f"{r}/socket/idle",
            "notifysocket": f"{r}/socket/notify",
            "mboxname_lockpath": f"{r}/lock",
            "proc_path": f"{r}/proc",
            **self.options,
        }
        self.conf.write_text("".join(f"{k}: {v}\n" for k, v in settings.items()))
        c = f"-C {self.conf}"
        services = [
            f'pop3 cmd="{b}/pop3d {c}" listen="{self.host}:{self.ports["starttls"]}" prefork=1',
            f'pop3s cmd="{b}/pop3d -s {c}" listen="{self.host}:{self.ports["implicit"]}" prefork=1',
            f'lmtpunix cmd="{b}/lmtpd {c}" listen="{r}/socket/lmtp" prefork=0',
        ]
        if self.imap_port:
            listen = f"{self.host}:{self.imap_port}"
            services.append(f'imap cmd="{imapd} {c}" listen="{listen}" prefork=0')
        (r / "cyrus.conf").write_text(
            f'START {{\n  recover cmd="{b}/ctl_cyrusdb {c} -r"\n}}\n'
            "SERVICES {\n" + "".join(f"  {s}\n" for s in services) + "}\nEVENTS {\n}\n"
        )

    def _spawn_and_wait(self, env: dict[str, str]) -> None:
        r = self.root
        cmd = [str(self._p["master"]), "-D", "-C", str(self.conf), "-M", str(r / "cyrus.conf")]
        cmd += ["-p", str(r / "master.pid")]
        # Start it as the run user: PR_SET_PDEATHSIG is cleared when a process
        # changes its uid, as cyrmaster started as root would.
        uid: int | None = None
        gid: int | None = None
        groups: list[int] | None = None
        if os.geteuid() == 0:
            pw = pwd.getpwnam(self.run_user)
            uid, gid, groups = pw.pw_uid, pw.pw_gid, []
        self.syslog_path.write_bytes(b"")  # a retry must not see the last attempt's errors
        with open(self.master_log, "ab") as log:
            self._proc = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env,
                start_new_session=True, preexec_fn=_set_pdeathsig,
                user=uid, group=gid, extra_groups=groups,
            )  # fmt: skip
        deadline = time.monotonic() + _STARTUP_TIMEOUT
        ports = [*self.ports.values(), *([self.imap_port] if self.imap_port else [])]
        while True:
            rc = self._proc.poll()
            failed = "unable to create" in self._read(self.syslog_path)
            if rc is not None or failed or time.monotonic() > deadline:
                self._kill_group()
                raise CyrusError(f"cyrmaster failed to start (exit status {rc})\n{self.log_text()}")
            if all(servers.wait_for_port(p, 0.05) for p in ports) and self._greets(deadline):
                return
            time.sleep(0.02)

    def _greets(self, deadline: float) -> bool:
        """Whether pop3d greets on the STLS port and lmtpd's socket exists."""
        try:
            timeout = max(deadline - time.monotonic(), 0.1)
            with socket.create_connection((self.host, self.ports["starttls"]), timeout) as sock:
                if not sock.recv(64).startswith(b"+OK "):
                    return False
        except OSError:
            return False
        return (self.root / "socket/lmtp").exists()

    def stop(self) -> None:
        """Kill our process group, reap the master, remove the temp dir (idempotent)."""
        atexit.unregister(self.stop)
        if self._proc is not None:
            self._kill_group()
        shutil.rmtree(self.root, ignore_errors=True)

    def _kill_group(self) -> None:
        """SIGTERM our process group (SIGKILL after a second) until it is empty."""
        assert self._proc is not None
        servers.kill_group(self._proc, _TERM_GRACE)
        self._proc = None

    @staticmethod
    def _read(path: Path) -> str:
        try:
            return path.read_text(errors="replace")
        except OSError:
            return ""

    def log_text(self) -> str:
        """The syslog lines of every Cyrus process, then the master's stderr."""
        return f"--- syslog ---\n{self._read(self.syslog_path)}--- master ---\n" + self._read(
            self.master_log
        )

    # ----------------------------------------------------------- accounts
    def add_user(self, user: str, password: str) -> None:
        """Create the sasldb user; log in once so that Cyrus creates its INBOX."""
        if not _USER_RE.fullmatch(user) or not password or "\n" in password:
            raise ValueError(f"bad user name {user!r} or password")
        sasldb = self.root / "sasldb2"
        cmd = [_saslpasswd() or "saslpasswd2", "-p", "-c", "-f", str(sasldb)]
        cmd += ["-u", self.servername, user]
        subprocess.run(cmd, input=password.encode(), check=True, capture_output=True)
        if os.geteuid() == 0:
            pw = pwd.getpwnam(self.run_user)
            os.chown(sasldb, pw.pw_uid, pw.pw_gid)
        self.users[user] = password
        if self.count(user) != 0:
            raise CyrusError(f"new user {user} has mail")

    def pop3(self, user: str, password: str | None = None) -> poplib.POP3:
        """A logged-in poplib client (STLS, USER/PASS); the caller QUITs."""
        client = poplib.POP3(self.host, self.ports["starttls"], timeout=30)
        try:
            client.stls(self.ssl_context())
            client.user(user)
            client.pass_(self.users[user] if password is None else password)
        except BaseException:
            client.close()
            raise
        return client

    def ssl_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca_file))

    def count(self, user: str) -> int:
        """Messages in the INBOX now (POP3 STAT in a new session)."""
        client = self.pop3(user)
        try:
            return client.stat()[0]
        finally:
            client.quit()

    def raw_messages(self, user: str, password: str) -> list[tuple[str, bytes]]:
        """(UIDL, message) as poplib retrieves them over STARTTLS."""
        return servers.poplib_messages(
            self.host, self.ports["starttls"], user, password, mode="starttls", ca_file=self.ca_file
        )

    # ----------------------------------------------------------- messages
    def add_message(self, user: str, raw: bytes, sender: str = SENDER) -> None:
        """Deliver *raw* (LF line ends) into *user*'s INBOX through lmtpd."""
        data = re.sub(rb"(?<!\r)\n", b"\r\n", raw)
        with smtplib.LMTP(str(self.root / "socket/lmtp"), local_hostname="localhost") as lmtp:
            lmtp.sendmail(sender, [user], data)

    def append(self, user: str, raw_crlf: bytes) -> None:
        """Store *raw_crlf* byte for byte with IMAP APPEND (needs imapd)."""
        if self.imap_port is None:
            raise CyrusError("imapd not unpacked (cyrus-imapd)")
        with imaplib.IMAP4(self.host, self.imap_port, timeout=30) as imap:
            imap.starttls(self.ssl_context())
            imap.login(user, self.users[user])
            typ, data = imap.append("INBOX", None, None, raw_crlf)
            if typ != "OK":
                raise CyrusError(f"APPEND: {data!r}")
            imap.logout()


def _reap_stale_dirs() -> None:
    """Remove the fpcy-* dirs of killed test runs (their owner pid is gone)."""
    for entry in Path(tempfile.gettempdir()).glob("fpcy-*"):
        try:
            os.kill(int((entry / "owner.pid").read_text()), 0)
        except ProcessLookupError:
            shutil.rmtree(entry, ignore_errors=True)
        except (OSError, ValueError):
            pass


def _user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True
