"""A scripted, fault-injecting SMTP/LMTP server for fetchpop's delivery tests.

Strategy: a real server on 127.0.0.1:0 (or a unix socket) in one background
thread, serving connections one after another, reading lines from its own
buffer so pipelined commands (RFC 2920) are answered one at a time and
recorded exactly. Semantics are RFC 5321's and RFC 2033's: greeting,
EHLO/HELO or LHLO, STARTTLS (RFC 3207), AUTH PLAIN and LOGIN (RFC 4954),
MAIL, RCPT, DATA with dot-unstuffing, RSET, NOOP, QUIT.

Faults are data: ``faults["RCPT"] = b"550 5.1.1 no such user"`` answers that
step so (until the test changes the dict); the steps are ``greeting``,
``EHLO`` (EHLO or LHLO), ``MAIL``, ``RCPT``, ``DATA`` and ``message`` (the
reply after the final dot). :data:`DROP` closes the connection instead of
answering; after ``message`` it does so with the message *kept* (a server
that delivered and crashed before its reply). :data:`KILL` (``message``
only) keeps the message, then calls ``on_kill`` (a test's SIGKILL of
fetchpop) before it would answer.

*close_after* closes each connection after that many messages (the next
message needs a new one). ``messages`` holds what was delivered: :class:`Envelope` (sender,
recipients, MAIL parameters, the data unstuffed, CRLF as LF). Nothing
raises into the test thread: harness bugs land in ``errors``.
"""

from __future__ import annotations

import base64
import os
import socket
import ssl
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

DROP = b"<drop>"
KILL = b"<kill>"
_TICK = 0.05
MAX_LINE = 8192
DEFAULT_EXTENSIONS = (
    "PIPELINING",
    "8BITMIME",
    "SMTPUTF8",
    "ENHANCEDSTATUSCODES",
    "SIZE 1000000000",
)


@dataclass
class Envelope:
    """One message the server took."""

    sender: str
    recipients: list[str]
    params: list[str]
    data: bytes  # dot-unstuffed, CRLF turned into LF


@dataclass
class Session:
    """One connection: the command lines received (DATA's content not included)."""

    commands: list[bytes] = field(default_factory=list)
    tls: bool = False
    authenticated: str | None = None


class FakeSMTP:
    """The server; ``with FakeSMTP(...) as server:`` or ``start()``/``close()``."""

    host = "127.0.0.1"

    def __init__(
        self,
        *,
        lmtp: bool = False,
        extensions: Sequence[str] = DEFAULT_EXTENSIONS,
        faults: Mapping[str, bytes] | None = None,
        tls_context: ssl.SSLContext | None = None,
        users: Mapping[str, str] | None = None,
        unix_path: Path | None = None,
        close_after: int | None = None,
    ) -> None:
        self.lmtp = lmtp
        self.extensions = list(extensions)
        self.faults: dict[str, bytes] = dict(faults or {})
        self.tls_context = tls_context
        self.users = dict(users or {})
        self.unix_path = unix_path
        #: Close each connection after this many messages (an MTA ending a session).
        self.close_after = close_after
        self.messages: list[Envelope] = []
        self.sessions: list[Session] = []
        self.errors: list[BaseException] = []
        self.on_kill: Callable[[], None] | None = None
        self.port = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._done = threading.Condition()
        self._ended = 0

    def __enter__(self) -> FakeSMTP:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def address(self) -> str:
        """The ``deliver`` value's address part: ``127.0.0.1:PORT`` or the socket path."""
        return str(self.unix_path) if self.unix_path else f"{self.host}:{self.port}"

    def start(self) -> FakeSMTP:
        if self.unix_path is not None:
            listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            listener.bind(str(self.unix_path))
            listener.listen()
        else:
            listener = socket.create_server((self.host, 0))
            self.port = listener.getsockname()[1]
        listener.settimeout(_TICK)
        self._thread = threading.Thread(target=self._run, args=(listener,), daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
        if self.unix_path is not None:
            self.unix_path.unlink(missing_ok=True)

    def wait_sessions(self, count: int, timeout: float = 10.0) -> bool:
        """Wait until *count* connections have ended."""
        with self._done:
            return self._done.wait_for(lambda: self._ended >= count, timeout)

    def _run(self, listener: socket.socket) -> None:
        with listener:
            while not self._stop.is_set():
                try:
                    sock, _ = listener.accept()
                except TimeoutError:
                    continue
                except OSError as exc:  # pragma: no cover - a harness problem
                    self.errors.append(exc)
                    return
                session = Session()
                self.sessions.append(session)
                try:
                    _Conn(self, sock, session).serve()
                except (OSError, ssl.SSLError):
                    pass  # the client went away: its business
                except Exception as exc:  # pragma: no cover - a harness bug
                    self.errors.append(exc)
                finally:
                    sock.close()
                    with self._done:
                        self._ended += 1
                        self._done.notify_all()


class _Hangup(Exception):
    pass


class _Conn:
    def __init__(self, server: FakeSMTP, sock: socket.socket, session: Session) -> None:
        self.server = server
        self.sock: socket.socket = sock
        self.session = session
        self.buf = bytearray()
        self.sender: str | None = None
        self.params: list[str] = []
        self.recipients: list[str] = []
        self.taken = 0
        sock.settimeout(_TICK)

    # -- I/O

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def line(self) -> bytes:
        while True:
            end = self.buf.find(b"\n")
            if end >= 0:
                line = bytes(self.buf[:end]).removesuffix(b"\r")
                del self.buf[: end + 1]
                return line
            if len(self.buf) > MAX_LINE and not self.in_data:
                raise _Hangup
            if self.server._stop.is_set():
                raise _Hangup
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                continue
            if not data:
                raise _Hangup
            self.buf += data

    in_data = False

    def reply(self, step: str, normal: bytes) -> bool:
        """Answer *step*: its fault, or *normal*; False when it was not a 2xx/3xx."""
        answer = self.server.faults.get(step, normal)
        if answer == DROP:
            raise _Hangup
        self.send(answer + b"\r\n")
        return answer[:1] in (b"2", b"3")

    # -- the session

    def serve(self) -> None:
        try:
            if not self.reply("greeting", b"220 fakesmtp ready"):
                self.commands(greeted=False)
                return
            self.commands(greeted=True)
        except _Hangup:
            return
        finally:
            self.sock.close()  # (the TLS socket, after STARTTLS)

    def commands(self, *, greeted: bool) -> None:
        while True:
            line = self.line()
            self.session.commands.append(line)
            verb, _, arg = line.decode("utf-8", "replace").partition(" ")
            verb = verb.upper()
            if verb == "QUIT":
                self.send(b"221 bye\r\n")
                return
            if not greeted:
                self.send(b"503 5.5.1 not now\r\n")
                continue
            handler = getattr(self, f"do_{verb.lower()}", None)
            if handler is None:
                self.send(b"502 5.5.2 unknown command\r\n")
            else:
                handler(verb, arg)

    def do_lhlo(self, verb: str, arg: str) -> None:
        if not self.server.lmtp:
            self.send(b"502 5.5.2 this is SMTP\r\n")
            return
        self._hello()

    def do_ehlo(self, verb: str, arg: str) -> None:
        if self.server.lmtp:
            self.send(b"502 5.5.2 this is LMTP\r\n")
            return
        self._hello()

    def do_helo(self, verb: str, arg: str) -> None:
        self.reply("EHLO", b"250 fakesmtp")

    def _hello(self) -> None:
        exts = list(self.server.extensions)
        if self.server.tls_context is not None and not self.session.tls:
            exts.append("STARTTLS")
        if self.server.users:
            exts.append("AUTH PLAIN LOGIN")
        lines = [b"fakesmtp"] + [e.encode() for e in exts]
        fault = self.server.faults.get("EHLO")
        if fault is not None:
            self.reply("EHLO", b"")
            return
        text = b"".join(
            b"250" + (b" " if i == len(lines) - 1 else b"-") + ln + b"\r\n"
            for i, ln in enumerate(lines)
        )
        self.send(text)

    def do_starttls(self, verb: str, arg: str) -> None:
        context = self.server.tls_context
        if context is None or self.session.tls:
            self.send(b"502 5.5.1 no TLS here\r\n")
            return
        self.send(b"220 2.0.0 go ahead\r\n")
        self.buf.clear()
        self.sock.settimeout(10)
        self.sock = context.wrap_socket(self.sock, server_side=True)
        self.sock.settimeout(_TICK)
        self.session.tls = True

    def do_auth(self, verb: str, arg: str) -> None:
        mechanism, _, initial = arg.partition(" ")
        if mechanism.upper() == "PLAIN":
            token = initial or self._challenge(b"")
            _, user, password = base64.b64decode(token).decode().split("\0")
        elif mechanism.upper() == "LOGIN":
            user = base64.b64decode(self._challenge(b"VXNlcm5hbWU6")).decode()
            password = base64.b64decode(self._challenge(b"UGFzc3dvcmQ6")).decode()
        else:
            self.send(b"504 5.5.4 unknown mechanism\r\n")
            return
        if self.server.users.get(user) == password:
            self.session.authenticated = user
            self.reply("AUTH", b"235 2.7.0 ok")
        else:
            self.send(b"535 5.7.8 bad credentials\r\n")

    def _challenge(self, text: bytes) -> str:
        self.send(b"334 " + text + b"\r\n")
        return self.line().decode()

    def do_mail(self, verb: str, arg: str) -> None:
        words = arg.split()
        if not words or not words[0].upper().startswith("FROM:<") or not words[0].endswith(">"):
            self.send(b"501 5.5.4 syntax: MAIL FROM:<address>\r\n")
            return
        if self.server.users and self.session.authenticated is None:
            self.send(b"530 5.7.0 authentication required\r\n")
            return
        if self.reply("MAIL", b"250 2.1.0 ok"):
            self.sender = words[0][6:-1]
            self.params = words[1:]
            self.recipients = []

    def do_rcpt(self, verb: str, arg: str) -> None:
        if self.sender is None:
            self.send(b"503 5.5.1 MAIL first\r\n")
            return
        if not arg.upper().startswith("TO:<") or not arg.endswith(">"):
            self.send(b"501 5.5.4 syntax: RCPT TO:<address>\r\n")
            return
        if self.reply("RCPT", b"250 2.1.5 ok"):
            self.recipients.append(arg[4:-1])

    def do_data(self, verb: str, arg: str) -> None:
        if self.sender is None or not self.recipients:
            self.send(b"503 5.5.1 no valid recipients\r\n")
            return
        if not self.reply("DATA", b"354 go ahead"):
            return
        body = bytearray()
        self.in_data = True
        while True:
            line = self.line()
            if line == b".":
                break
            body += (line[1:] if line.startswith(b".") else line) + b"\n"
        self.in_data = False
        envelope = Envelope(self.sender, self.recipients, self.params, bytes(body))
        fault = self.server.faults.get("message")
        self.sender, self.recipients = None, []
        if fault in (DROP, KILL):
            self.server.messages.append(envelope)  # delivered, but the reply is lost
            if fault == KILL and self.server.on_kill is not None:
                self.server.on_kill()
            raise _Hangup
        ok = fault is None or fault[:1] == b"2"
        if ok:
            self.server.messages.append(envelope)
        count = len(envelope.recipients) if self.server.lmtp else 1
        for _ in range(count):
            self.reply("message", b"250 2.0.0 ok: queued")
        self.taken += 1
        if self.server.close_after is not None and self.taken >= self.server.close_after:
            raise _Hangup

    def do_rset(self, verb: str, arg: str) -> None:
        self.sender, self.recipients = None, []
        self.send(b"250 2.0.0 ok\r\n")

    def do_noop(self, verb: str, arg: str) -> None:
        self.send(b"250 2.0.0 ok\r\n")


def unix_socket_path(directory: Path) -> Path:
    """A socket path in *directory* short enough for AF_UNIX (108 bytes)."""
    path = directory / "lmtp.sock"
    if len(os.fsencode(path)) < 100:
        return path
    import tempfile

    return Path(tempfile.mkdtemp(prefix="fsmtp-")) / "lmtp.sock"
