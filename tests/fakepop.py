"""A scripted, fault-injecting POP3 server for fetchpop's tests.

Strategy: a real server on 127.0.0.1:0 in one background thread (the aiosmtpd
harness habit), serving connections one after another. Each connection reads
raw bytes into its own buffer and splits lines itself, so commands pipelined
in one packet (RFC 2449 PIPELINING) are answered one at a time and recorded
exactly. The semantics are the RFCs': states, dot-stuffing and UPDATE only
after QUIT (RFC 1939), CAPA (RFC 2449), STLS (RFC 2595), AUTH (RFC 5034) with
SASL mechanisms as small generators (RFC 4616, 5802, 7628, Google's XOAUTH2).

Faults are data, not subclasses: ``Fault(on="RETR 2", action=drop(after=100))``.
The first rule matching a command (or the greeting) replaces its normal
handling. An action is any callable ``(conn, command) -> None`` that writes,
waits or hangs up through ``Conn``, usually after asking ``conn.real(command)``
what the server would have said (which also performs its side effects).

Nothing raises into the test thread: exceptions that are bugs land in
``FakePOP3.errors``; network trouble caused by the client lands in
``Session.error``. Every wait looks at the stop flag every ``_TICK`` seconds,
so ``close()`` is prompt even while an action stalls.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import hashlib
import hmac
import json
import os
import re
import secrets
import socket
import ssl
import struct
import threading
import time
import warnings
from collections.abc import Callable, Generator, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType

import trustme

CRLF = b"\r\n"
DOT = b".\r\n"
MAX_LINE = 8192  # RFC 2449 caps commands at 255 octets; we tolerate more, but bounded.
SAFETY_BYTES = 200 * 2**20  # endless() never sends more than this ...
SAFETY_SECONDS = 60.0  # ... or for longer than this.
HANDSHAKE_SECONDS = 10.0
_TICK = 0.05  # how often blocked I/O looks at the stop flag
_CHUNK = 65536

# -- replies -----------------------------------------------------------------

OK_GREETING = b"+OK fakepop ready %s\r\n"  # %s: the APOP timestamp
OK_GREETING_NO_APOP = b"+OK fakepop ready\r\n"
OK = b"+OK\r\n"
OK_USER = b"+OK send PASS\r\n"
OK_LOGGED_IN = b"+OK logged in\r\n"
OK_CAPA = b"+OK capability list follows\r\n"
OK_STAT = b"+OK %d %d\r\n"
OK_SCAN = b"+OK %d %d\r\n"
OK_LIST = b"+OK scan listing follows\r\n"
OK_UID = b"+OK %d %s\r\n"
OK_UIDL = b"+OK unique-id listing follows\r\n"
OK_RETR = b"+OK %d octets\r\n"
OK_TOP = b"+OK top of message follows\r\n"
OK_DELETED = b"+OK message deleted\r\n"
OK_RSET = b"+OK maildrop has %d messages\r\n"
OK_BEGIN_TLS = b"+OK Begin TLS negotiation\r\n"
OK_BYE = b"+OK bye\r\n"
OK_ENDLESS = b"+OK endless message follows\r\n"
SASL_CHALLENGE = b"+ %s\r\n"
ERR_AUTH = b"-ERR [AUTH] authentication failed\r\n"
ERR_NO_USER = b"-ERR USER first\r\n"
ERR_NO_APOP = b"-ERR APOP not available\r\n"
ERR_NO_SUCH_MESSAGE = b"-ERR no such message\r\n"
ERR_DELETED = b"-ERR message already deleted\r\n"
ERR_UNKNOWN = b"-ERR unknown command\r\n"
ERR_STATE = b"-ERR command not valid in this state\r\n"
ERR_SYNTAX = b"-ERR syntax error\r\n"
ERR_NO_TLS = b"-ERR STLS not available\r\n"
ERR_MECHANISM = b"-ERR unsupported SASL mechanism\r\n"
ERR_CANCELLED = b"-ERR authentication cancelled\r\n"
ERR_LINE_TOO_LONG = b"-ERR line too long\r\n"
ERR_IN_USE = b"-ERR [IN-USE] mailbox locked\r\n"

# Google's XOAUTH2 failure, sent base64'd as a "+ " challenge before -ERR.
XOAUTH2_ERROR = {"status": "401", "schemes": "bearer", "scope": "https://mail.google.com/"}
OAUTHBEARER_ERROR = {"status": "invalid_token", "scope": "mail"}

DEFAULT_USERS: Mapping[str, str] = {"alice": "secret"}
DEFAULT_TOKENS: Mapping[str, str] = {"alice": "tok123"}
DEFAULT_CAPA: Sequence[str] = ("TOP", "UIDL", "USER", "RESP-CODES", "AUTH-RESP-CODE", "PIPELINING")
"""Passed as ``capa`` (the default): this list, plus SASL and STLS as configured."""

_AUTHORIZATION, _TRANSACTION, _UPDATE = "AUTHORIZATION", "TRANSACTION", "UPDATE"
_AUTH_ONLY = frozenset({"USER", "PASS", "APOP", "AUTH", "STLS"})
_ANY_STATE = frozenset({"CAPA", "QUIT"})


# -- the maildrop --------------------------------------------------------------


def to_crlf(message: bytes) -> bytes:
    """*message* with CRLF line ends, ending in CRLF unless empty."""
    out = re.sub(rb"\r?\n", CRLF, message)
    return out if not out or out.endswith(CRLF) else out + CRLF


def dot_stuff(data: bytes) -> bytes:
    """RFC 1939 section 3: a line starting with "." gets one more."""
    return re.sub(rb"(?m)^\.", b"..", data)


class Mailbox:
    """The maildrop: messages (stored with CRLF ends) and their unique ids.

    Only UPDATE (a QUIT answered normally) changes it, so a later session sees
    what an earlier one deleted. Tests may read or change it between sessions.
    """

    def __init__(self, messages: Iterable[bytes] = (), uidls: Sequence[str] | None = None) -> None:
        self.messages = [to_crlf(m) for m in messages]
        if uidls is not None and len(uidls) != len(self.messages):
            raise ValueError("need one uidl per message")
        count = len(self.messages)
        self.uidls = list(uidls) if uidls is not None else [f"uid-{n}" for n in range(1, count + 1)]
        self._next = count + 1

    def add(self, message: bytes, uidl: str | None = None) -> None:
        """Append a message (a fresh uidl unless given)."""
        self.messages.append(to_crlf(message))
        self.uidls.append(uidl if uidl is not None else f"uid-{self._next}")
        self._next += 1

    def expunge(self, numbers: Iterable[int]) -> None:
        """Remove messages by 1-based number (RFC 1939 section 6, UPDATE)."""
        gone = set(numbers)
        kept = [i for i in range(len(self.messages)) if i + 1 not in gone]
        self.messages = [self.messages[i] for i in kept]
        self.uidls = [self.uidls[i] for i in kept]


# -- records and rules ---------------------------------------------------------------


@dataclass
class Session:
    """What one connection did, as the server saw it."""

    commands: list[bytes] = field(default_factory=list)
    """Every line the client sent (SASL responses included), without its line end."""
    quit_answered: bool = False
    """QUIT was handled normally (in TRANSACTION state: deletions applied)."""
    tls: bool = False
    closed_by_client: bool = False
    """The client closed or reset the connection before the server hung up."""
    user: str | None = None
    error: str | None = None
    """Network trouble that ended the session (a failed handshake, a reset)."""
    received: bytearray = field(default_factory=bytearray)
    """Every byte the client sent, as plaintext."""
    chunks: list[bytes] = field(default_factory=list)
    """``received`` as it arrived, read by read: under TLS one client write
    (one record) is one chunk, so commands sharing a chunk were pipelined."""
    discarded: bytes = b""
    """Plaintext the client sent after STLS, before the handshake, thrown away
    (and what ``discard_after`` threw away)."""
    done: threading.Event = field(default_factory=threading.Event, repr=False, compare=False)


@dataclass(frozen=True)
class Command:
    """One client command line; the greeting is the pseudo-command ``GREETING``."""

    line: bytes
    greeting: bool = False

    @property
    def name(self) -> str:
        """The keyword, upper-cased ("" for the greeting)."""
        return self.line.split(b" ", 1)[0].decode("latin-1").upper()

    @property
    def arg(self) -> str:
        """Everything after the first space, exactly."""
        return self.line.partition(b" ")[2].decode("latin-1")


GREETING = Command(b"", greeting=True)

Action = Callable[["Conn", Command], None]


@dataclass
class Fault:
    """Replace the handling of matching commands with *action*.

    *on* is ``"greeting"``, ``"*"`` (any command), a keyword (``"RETR"``,
    case-insensitive) or a keyword and exact argument (``"RETR 2"``). *nth*
    fires only on the nth match (1-based, counted over the server's life),
    *session* only in that session (0-based), *times* at most that often.
    SASL response lines are never matched. ``conn.real()`` does the side
    effects, so ``drop(after=5)`` on QUIT still applies the deletions (a server
    that died after UPDATE), while ``drop()`` or ``err()`` does not.
    """

    on: str
    action: Action
    nth: int | None = None
    session: int | None = None
    times: int | None = None
    seen: int = field(default=0, init=False)
    fired: int = field(default=0, init=False)

    def matches(self, cmd: Command, session: int) -> bool:
        """Whether *cmd* matches (counting it towards *nth*)."""
        if self.session is not None and self.session != session:
            return False
        if cmd.greeting or self.on.lower() == "greeting":
            hit = cmd.greeting and self.on.lower() == "greeting"
        else:
            name, _, arg = self.on.partition(" ")
            hit = self.on == "*" or (name.upper() == cmd.name and (not arg or arg == cmd.arg))
        self.seen += hit
        return hit

    def ready(self) -> bool:
        """Whether a match now should fire."""
        return (self.nth is None or self.seen == self.nth) and (
            self.times is None or self.fired < self.times
        )


# -- actions ---------------------------------------------------------------------


def answer() -> Action:
    """The normal handling (what happens when no fault matches)."""

    def act(conn: Conn, cmd: Command) -> None:
        conn.send(conn.real(cmd))

    return act


def reply(data: bytes, *, apply: bool = False) -> Action:
    """Send *data* verbatim instead of the reply; with *apply*, still do the side effects."""

    def act(conn: Conn, cmd: Command) -> None:
        if apply:
            conn.real(cmd)
        conn.send(data)

    return act


def err(text: str | bytes = ERR_IN_USE) -> Action:
    """Answer with an error line (CRLF added if missing); after the greeting, hang up."""
    line = text.encode() if isinstance(text, str) else text
    line = line if line.endswith(b"\n") else line + CRLF

    def act(conn: Conn, cmd: Command) -> None:
        conn.send(line)
        if cmd.greeting:
            conn.hangup()

    return act


def vanish() -> Action:
    """The message has gone (another client expunged it): ``-ERR no such message``."""
    return reply(ERR_NO_SUCH_MESSAGE)


def drop(after: int = 0) -> Action:
    """Close the connection (FIN) after the first *after* bytes of the real reply."""

    def act(conn: Conn, cmd: Command) -> None:
        if after:
            conn.send(conn.real(cmd)[:after])
        conn.hangup()

    return act


def reset(after: int = 0) -> Action:
    """Like ``drop`` but with a TCP RST (SO_LINGER 0)."""

    def act(conn: Conn, cmd: Command) -> None:
        if after:
            conn.send(conn.real(cmd)[:after])
        conn.reset()

    return act


def no_quit_reply() -> Action:
    """QUIT is read, then the server closes without answering or applying deletions."""
    return drop()


def stall(seconds: float | None = None) -> Action:
    """Send nothing for *seconds* (None: until the client or the server closes), then hang up."""

    def act(conn: Conn, cmd: Command) -> None:
        conn.wait(seconds)
        conn.hangup()

    return act


def delay(seconds: float) -> Action:
    """Answer normally, *seconds* late."""

    def act(conn: Conn, cmd: Command) -> None:
        if conn.wait(seconds):
            conn.send(conn.real(cmd))

    return act


def drip(bytes_per_second: float = 1000.0, chunk: int = 1) -> Action:
    """Send the real reply *chunk* bytes at a time, at *bytes_per_second*."""
    pause = chunk / bytes_per_second

    def act(conn: Conn, cmd: Command) -> None:
        data = conn.real(cmd)
        for start in range(0, len(data), chunk):
            conn.send(data[start : start + chunk])
            if not conn.wait(pause):
                return

    return act


def truncate_multiline(hang: bool = False) -> Action:
    """Send the real reply without its final ".\\r\\n", then close (or, with *hang*, wait)."""

    def act(conn: Conn, cmd: Command) -> None:
        data = conn.real(cmd)
        conn.send(data[: -len(DOT)] if data.endswith(CRLF + DOT) else data)
        if hang:
            conn.wait(None)
        conn.hangup()

    return act


def endless(
    line: bytes = b"X" * 76, *, max_bytes: int = SAFETY_BYTES, max_seconds: float = SAFETY_SECONDS
) -> Action:
    """Answer +OK, then send *line* forever: until the client closes, or a safety cap."""
    block = (line + CRLF) * max(1, _CHUNK // (len(line) + 2))

    def act(conn: Conn, cmd: Command) -> None:
        conn.send(OK_ENDLESS)
        sent, deadline = 0, time.monotonic() + max_seconds
        while conn.open and sent < max_bytes and time.monotonic() < deadline:
            conn.send(block)
            sent += len(block)
        conn.hangup()

    return act


def inject_after_stls(data: bytes) -> Action:
    """Answer STLS, then send *data* in plaintext before the handshake (RFC 2595 section 4)."""

    def act(conn: Conn, cmd: Command) -> None:
        conn.send(conn.real(cmd))
        conn.send(data)

    return act


def no_handshake() -> Action:
    """Answer STLS +OK, then never start TLS (wait until someone closes)."""

    def act(conn: Conn, cmd: Command) -> None:
        conn.send(conn.real(cmd))
        conn.pending_tls = False
        conn.wait(None)
        conn.hangup()

    return act


def chain(*actions: Action) -> Action:
    """Run *actions* in turn while the connection is open."""

    def act(conn: Conn, cmd: Command) -> None:
        for action in actions:
            if conn.open:
                action(conn, cmd)

    return act


# -- SASL ----------------------------------------------------------------------------

SASLExchange = Generator[bytes, bytes, str | None]
"""Yields raw challenges, is sent raw responses, returns the user or None (failure)."""


@dataclass(frozen=True)
class Accounts:
    """Credentials the server accepts."""

    users: Mapping[str, str]
    tokens: Mapping[str, str]

    def password_ok(self, user: str, password: str) -> bool:
        """Whether *password* is *user*'s."""
        return user in self.users and self.users[user] == password

    def bearer_ok(self, user: str, auth: str | None) -> bool:
        """Whether *auth* is ``Bearer <user's token>``."""
        return user in self.tokens and auth == f"Bearer {self.tokens[user]}"


Mechanism = Callable[[Accounts, bytes | None], SASLExchange]
"""(accounts, initial response or None) -> exchange. ValueError/KeyError mean failure."""


def sasl_plain(accounts: Accounts, initial: bytes | None) -> SASLExchange:
    """PLAIN (RFC 4616): ``authzid NUL authcid NUL password``."""
    message = initial if initial is not None else (yield b"")
    authz, user, password = message.decode().split("\0")
    return user if authz in ("", user) and accounts.password_ok(user, password) else None


def sasl_login(accounts: Accounts, initial: bytes | None) -> SASLExchange:
    """LOGIN (draft-murchison-sasl-login): prompts for user name, then password."""
    user = (initial if initial is not None else (yield b"Username:")).decode()
    password = (yield b"Password:").decode()
    return user if accounts.password_ok(user, password) else None


def _kv(text: str) -> dict[str, str]:
    return dict(pair.split("=", 1) for pair in text.split("\x01") if pair)


def sasl_xoauth2(accounts: Accounts, initial: bytes | None) -> SASLExchange:
    """XOAUTH2: ``user=U ^A auth=Bearer T ^A ^A``; failure is a JSON challenge, then -ERR."""
    fields = _kv((initial if initial is not None else (yield b"")).decode())
    user = fields.get("user", "")
    if accounts.bearer_ok(user, fields.get("auth")):
        return user
    yield json.dumps(XOAUTH2_ERROR).encode()  # Google expects an empty response to this
    return None


def sasl_oauthbearer(accounts: Accounts, initial: bytes | None) -> SASLExchange:
    """OAUTHBEARER (RFC 7628): GS2 header with ``a=user``, then ^A-separated key=value."""
    gs2, _, rest = (initial if initial is not None else (yield b"")).decode().partition("\x01")
    names = [p[2:] for p in gs2.split(",") if p.startswith("a=")]
    user = names[0].replace("=2C", ",").replace("=3D", "=") if names else ""
    if accounts.bearer_ok(user, _kv(rest).get("auth")):
        return user
    yield json.dumps(OAUTHBEARER_ERROR).encode()  # RFC 7628 section 3.2.3: client sends ^A
    return None


def sasl_scram(hash_name: str) -> Mechanism:
    """SCRAM-SHA-* (RFC 5802) without channel binding; the server signature is sent as
    a final challenge (RFC 5034 section 4), answered by an empty response."""

    def mac(key: bytes, msg: bytes) -> bytes:
        return hmac.new(key, msg, hash_name).digest()

    def mechanism(accounts: Accounts, initial: bytes | None) -> SASLExchange:
        first = (initial if initial is not None else (yield b"")).decode()
        cbind, authz, bare = first.split(",", 2)
        attrs = dict(a.split("=", 1) for a in bare.split(","))
        user = attrs["n"].replace("=2C", ",").replace("=3D", "=")
        nonce = attrs["r"] + secrets.token_hex(12)
        salt = hashlib.sha256(user.encode()).digest()[:16]
        server_first = f"r={nonce},s={base64.b64encode(salt).decode()},i=4096"
        final = (yield server_first.encode()).decode()
        without_proof, _, proof = final.rpartition(",p=")
        fattrs = dict(a.split("=", 1) for a in without_proof.split(","))
        gs2 = base64.b64encode(f"{cbind},{authz},".encode()).decode()
        if user not in accounts.users or fattrs.get("r") != nonce or fattrs.get("c") != gs2:
            return None
        salted = hashlib.pbkdf2_hmac(hash_name, accounts.users[user].encode(), salt, 4096)
        stored = hashlib.new(hash_name, mac(salted, b"Client Key")).digest()
        auth_message = f"{bare},{server_first},{without_proof}".encode()
        signature = mac(stored, auth_message)
        key = bytes(a ^ b for a, b in zip(base64.b64decode(proof), signature, strict=True))
        if hashlib.new(hash_name, key).digest() != stored:
            return None
        yield b"v=" + base64.b64encode(mac(mac(salted, b"Server Key"), auth_message))
        return user

    return mechanism


DEFAULT_MECHANISMS: Mapping[str, Mechanism] = {
    "PLAIN": sasl_plain,
    "LOGIN": sasl_login,
    "XOAUTH2": sasl_xoauth2,
    "OAUTHBEARER": sasl_oauthbearer,
    "SCRAM-SHA-1": sasl_scram("sha1"),
    "SCRAM-SHA-256": sasl_scram("sha256"),
}


# -- one connection ----------------------------------------------------------------


class _Refuse(Exception):
    def __init__(self, reply: bytes) -> None:
        super().__init__(reply)
        self.reply = reply


class Conn:
    """One client connection: the POP3 state machine, and the I/O actions use."""

    def __init__(self, server: FakePOP3, sock: socket.socket, session: Session, index: int) -> None:
        self.server = server
        self.sock: socket.socket = sock
        self.session = session
        self.index = index
        self.open = True
        self.state = _AUTHORIZATION
        self.pending_tls = False
        self.quitting = False
        self.sasl: SASLExchange | None = None
        self._buf = bytearray()
        self._user: str | None = None
        self.deleted: set[int] = set()
        self.stamp = b"<%d.%s@fakepop>" % (os.getpid(), secrets.token_hex(6).encode())
        sock.settimeout(_TICK)

    # -- I/O for actions

    @property
    def stopping(self) -> bool:
        """Whether the server is shutting down."""
        return self.server.stopping

    def send(self, data: bytes) -> None:
        """Send all of *data* (unless the connection closes or the server stops)."""
        view, offset = memoryview(data), 0
        while offset < len(view) and self.open:
            if self.stopping:
                self.hangup()
                return
            try:
                # On a timeout, TLS needs the same chunk again (SSL_write retry rule).
                offset += self.sock.send(view[offset : offset + _CHUNK])
            except TimeoutError:
                continue

    def _fill(self, timeout: float = _TICK) -> None:
        self.sock.settimeout(max(timeout, 0.001))
        try:
            data = self.sock.recv(_CHUNK)
        except TimeoutError:
            return
        if not data:
            self.session.closed_by_client = True
            self.hangup()
        self._buf += data
        self.session.received += data
        self.session.chunks.append(data)

    def readline(self) -> bytes | None:
        """The next line without its end (CRLF or bare LF), or None once closed."""
        while self.open:
            end = self._buf.find(b"\n")
            if end >= 0:
                line = bytes(self._buf[:end])
                del self._buf[: end + 1]
                return line.removesuffix(b"\r")
            if len(self._buf) > MAX_LINE:
                self.session.error = "line too long"
                self.send(ERR_LINE_TOO_LONG)
                self.hangup()
            elif self.stopping:
                self.hangup()
            else:
                self._fill()
        return None

    def wait(self, seconds: float | None) -> bool:
        """Send nothing for *seconds* (None: forever), still reading what the client sends.

        False if the client closed or the server stopped meanwhile (then we hung up).
        """
        deadline = None if seconds is None else time.monotonic() + seconds
        while self.open:
            if self.stopping:
                self.hangup()
                break
            left = _TICK if deadline is None else deadline - time.monotonic()
            if left <= 0:
                return True
            self._fill(min(left, _TICK))
        return False

    def discard_buffered(self) -> None:
        """Throw away what has arrived and not been read (see ``discard_after``)."""
        self.session.discarded += bytes(self._buf)
        self._buf.clear()

    def hangup(self) -> None:
        """Close the connection (a FIN; no TLS close_notify)."""
        if self.open:
            self.open = False
            self.sock.close()

    def reset(self) -> None:
        """Abort the connection with a TCP RST."""
        if self.open:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.hangup()

    def start_tls(self) -> None:
        """Run the server side of a TLS handshake on this connection."""
        self.pending_tls = False
        context = self.server.tls_context
        if context is None:
            raise RuntimeError("no tls_context")
        # RFC 2595 section 4: nothing sent before the handshake may count after it.
        self.session.discarded += bytes(self._buf)
        self._buf.clear()
        self.sock.settimeout(_TICK)
        tls = context.wrap_socket(self.sock, server_side=True, do_handshake_on_connect=False)
        self.sock = tls
        deadline = time.monotonic() + HANDSHAKE_SECONDS
        while True:
            try:
                tls.do_handshake()
                break
            except TimeoutError:
                if self.stopping or time.monotonic() > deadline:
                    self.session.error = "TLS handshake did not finish"
                    self.hangup()
                    return
        self.session.tls = True

    # -- dispatch

    def dispatch(self, cmd: Command) -> None:
        """Handle *cmd*: through the first ready matching fault, else normally."""
        (self.server.fault_for(cmd, self.index) or answer())(self, cmd)
        if self.open and self.pending_tls:
            self.start_tls()
        if self.open and self.quitting:
            self.hangup()

    def real(self, cmd: Command) -> bytes:
        """The reply the server would send to *cmd*, after doing its side effects."""
        if cmd.greeting:
            if self.server.greeting is not None:
                return self.server.greeting
            return OK_GREETING % self.stamp if self.server.apop else OK_GREETING_NO_APOP
        name = cmd.name
        handler = getattr(self, "_cmd_" + name.lower(), None) if name.isalpha() else None
        if handler is None:
            return ERR_UNKNOWN
        wanted = {_AUTHORIZATION} if name in _AUTH_ONLY else {_TRANSACTION}
        if name not in _ANY_STATE and self.state not in wanted:
            return ERR_STATE
        try:
            result: bytes = handler(cmd.arg)
        except _Refuse as refused:
            return refused.reply
        return result

    def continue_sasl(self, line: bytes) -> bytes:
        """Feed a client's SASL response line to the running exchange."""
        gen, self.sasl = self.sasl, None
        if gen is None:
            return ERR_STATE
        if line == b"*":
            gen.close()
            return ERR_CANCELLED
        try:
            data = base64.b64decode(line, validate=True)
        except binascii.Error:
            gen.close()
            return ERR_SYNTAX
        return self._sasl_step(gen, data)

    def _sasl_step(self, gen: SASLExchange, response: bytes | None) -> bytes:
        try:
            challenge = next(gen) if response is None else gen.send(response)
        except StopIteration as finished:
            return self._login(finished.value) if finished.value else ERR_AUTH
        except (ValueError, KeyError):  # a malformed client message is a failed login
            return ERR_AUTH
        self.sasl = gen
        return SASL_CHALLENGE % base64.b64encode(challenge)

    def _login(self, user: str) -> bytes:
        self.state = _TRANSACTION
        self.session.user = user
        begin = getattr(self.server.mailbox, "begin_session", None)
        if begin is not None:  # a mailbox that shows each session a part (Gmail)
            begin()
        return OK_LOGGED_IN

    def _pick(self, arg: str) -> int:
        if not (arg.isascii() and arg.isdigit()):
            raise _Refuse(ERR_SYNTAX)
        number = int(arg)
        if not 1 <= number <= len(self.server.mailbox.messages):
            raise _Refuse(ERR_NO_SUCH_MESSAGE)
        if number in self.deleted:
            raise _Refuse(ERR_DELETED)
        return number

    def _live(self) -> list[tuple[int, bytes, str]]:
        box = self.server.mailbox
        pairs = enumerate(zip(box.messages, box.uidls, strict=True), 1)
        return [(n, msg, uid) for n, (msg, uid) in pairs if n not in self.deleted]

    # -- commands (RFC 1939 sections 5-7, RFC 2449, RFC 2595, RFC 5034)

    def _cmd_capa(self, arg: str) -> bytes:
        caps = self.server.capabilities(self.session.tls)
        if caps is None:
            return ERR_UNKNOWN
        return OK_CAPA + b"".join(c.encode() + CRLF for c in caps) + DOT

    def _cmd_stls(self, arg: str) -> bytes:
        if self.server.tls_context is None or self.session.tls:
            return ERR_NO_TLS
        self.pending_tls = True
        return OK_BEGIN_TLS

    def _cmd_user(self, arg: str) -> bytes:
        if not arg:
            return ERR_SYNTAX
        self._user = arg
        return OK_USER

    def _cmd_pass(self, arg: str) -> bytes:
        user, self._user = self._user, None
        if user is None:
            return ERR_NO_USER
        return self._login(user) if self.server.accounts.password_ok(user, arg) else ERR_AUTH

    def _cmd_apop(self, arg: str) -> bytes:
        if not self.server.apop:
            return ERR_NO_APOP
        user, _, digest = arg.rpartition(" ")
        secret = self.server.accounts.users.get(user)
        if secret is None or hashlib.md5(self.stamp + secret.encode()).hexdigest() != digest:
            return ERR_AUTH
        return self._login(user)

    def _cmd_auth(self, arg: str) -> bytes:
        name, _, initial = arg.partition(" ")
        mechanism = self.server.mechanisms.get(name.upper())
        if mechanism is None:
            return ERR_MECHANISM
        try:
            data = (
                None
                if not initial
                else b""
                if initial == "="
                else base64.b64decode(initial, validate=True)
            )
        except binascii.Error:
            return ERR_SYNTAX
        return self._sasl_step(mechanism(self.server.accounts, data), None)

    def _cmd_stat(self, arg: str) -> bytes:
        live = self._live()
        return OK_STAT % (len(live), sum(len(msg) for _, msg, _ in live))

    def _cmd_list(self, arg: str) -> bytes:
        if arg:
            number = self._pick(arg)
            return OK_SCAN % (number, len(self.server.mailbox.messages[number - 1]))
        return OK_LIST + b"".join(b"%d %d\r\n" % (n, len(m)) for n, m, _ in self._live()) + DOT

    def _cmd_uidl(self, arg: str) -> bytes:
        if arg:
            number = self._pick(arg)
            return OK_UID % (number, self.server.mailbox.uidls[number - 1].encode())
        return OK_UIDL + b"".join(b"%d %s\r\n" % (n, u.encode()) for n, _, u in self._live()) + DOT

    def _cmd_retr(self, arg: str) -> bytes:
        number = self._pick(arg)
        message = self.server.mailbox.messages[number - 1]
        retrieved = getattr(self.server.mailbox, "retrieved", None)
        if retrieved is not None:
            retrieved(number)
        return OK_RETR % len(message) + dot_stuff(message) + DOT

    def _cmd_top(self, arg: str) -> bytes:
        which, _, lines = arg.partition(" ")
        message = self.server.mailbox.messages[self._pick(which) - 1]
        if not (lines.isascii() and lines.isdigit()):
            return ERR_SYNTAX
        head, blank, body = message.partition(b"\r\n\r\n")
        kept = body.split(CRLF)[: int(lines)] if body else []
        return OK_TOP + dot_stuff(head + blank + b"".join(x + CRLF for x in kept)) + DOT

    def _cmd_dele(self, arg: str) -> bytes:
        self.deleted.add(self._pick(arg))
        return OK_DELETED

    def _cmd_rset(self, arg: str) -> bytes:
        self.deleted.clear()
        return OK_RSET % len(self.server.mailbox.messages)

    def _cmd_noop(self, arg: str) -> bytes:
        return OK

    def _cmd_quit(self, arg: str) -> bytes:
        if self.state == _TRANSACTION:
            self.state = _UPDATE
            self.server.mailbox.expunge(self.deleted)
        self.session.quit_answered = True
        self.quitting = True
        return OK_BYE


# -- the server --------------------------------------------------------------------

_CLIENT_GONE = (ConnectionResetError, ConnectionAbortedError, BrokenPipeError, ssl.SSLEOFError)


class FakePOP3:
    """A POP3 server in a thread on 127.0.0.1:0, serving connections one at a time.

    Use as a context manager; ``close()`` stops the thread and closes every
    socket. *mailbox* may be a ``Mailbox`` or a list of messages. *capa* None
    makes CAPA answer -ERR. *tls_context* enables STLS, or TLS from the first
    byte with *implicit_tls*. Exceptions that are bugs go to ``errors``.
    *greeting* replaces the greeting line (CRLF included).

    *discard_after* names commands after which whatever else had already
    arrived is thrown away unread, as real servers do: Courier's login
    process execs the mail process after PASS, Cyrus drops what came behind
    an AUTH exchange; ``"*"`` is every command (a server that reads a
    command at a time and forgets the rest of the packet).
    """

    host = "127.0.0.1"

    def __init__(
        self,
        mailbox: Mailbox | Iterable[bytes] = (),
        *,
        users: Mapping[str, str] = DEFAULT_USERS,
        tokens: Mapping[str, str] = DEFAULT_TOKENS,
        faults: Iterable[Fault] = (),
        capa: Sequence[str] | None = DEFAULT_CAPA,
        apop: bool = True,
        mechanisms: Mapping[str, Mechanism] = DEFAULT_MECHANISMS,
        tls_context: ssl.SSLContext | None = None,
        implicit_tls: bool = False,
        discard_after: Iterable[str] = (),
        greeting: bytes | None = None,
    ) -> None:
        if implicit_tls and tls_context is None:
            raise ValueError("implicit_tls needs a tls_context")
        self.mailbox = mailbox if isinstance(mailbox, Mailbox) else Mailbox(mailbox)
        self.accounts = Accounts(dict(users), dict(tokens))
        self.faults = list(faults)
        self.capa = capa
        self.apop = apop
        self.mechanisms = dict(mechanisms)
        self.tls_context = tls_context
        self.implicit_tls = implicit_tls
        self.discard_after = frozenset(c.upper() for c in discard_after)
        self.greeting = greeting
        self.sessions: list[Session] = []
        self.errors: list[BaseException] = []
        self.port = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- lifecycle

    def start(self) -> FakePOP3:
        """Listen and start serving."""
        listener = socket.create_server((self.host, 0))
        listener.settimeout(_TICK)
        self.port = listener.getsockname()[1]
        self._thread = threading.Thread(target=self._run, args=(listener,), name="fakepop")
        self._thread.daemon = True
        self._thread.start()
        return self

    def close(self, timeout: float = 5.0) -> None:
        """Stop serving: end the current session, close all sockets, join the thread."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                self.errors.append(RuntimeError("fakepop thread did not stop"))
            self._thread = None

    def __enter__(self) -> FakePOP3:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    @property
    def stopping(self) -> bool:
        """Whether ``close()`` has been called."""
        return self._stop.is_set()

    def wait_sessions(self, count: int = 1, timeout: float = 5.0) -> bool:
        """Wait until *count* sessions have ended (their records are then final)."""
        deadline = time.monotonic() + timeout
        while len(self.sessions) < count or not self.sessions[count - 1].done.is_set():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.005)
        return True

    # -- queries

    def all_commands(self) -> list[bytes]:
        """Every line received, over all sessions."""
        return [line for session in self.sessions for line in session.commands]

    def commands_named(self, name: str) -> list[str]:
        """The arguments of every *name* command (case-insensitive), over all sessions."""
        return [c.arg for c in map(Command, self.all_commands()) if c.name == name.upper()]

    def capabilities(self, tls: bool) -> list[str] | None:
        """What CAPA lists (RFC 2595 section 4: no STLS once under TLS)."""
        if self.capa is None:
            return None
        caps = list(self.capa)
        if self.capa is DEFAULT_CAPA:
            caps.append("SASL " + " ".join(self.mechanisms))
            if self.tls_context is not None and not self.implicit_tls:
                caps.append("STLS")
        return [c for c in caps if not (tls and c.upper() == "STLS")]

    def fault_for(self, cmd: Command, session: int) -> Action | None:
        """The action of the first ready fault matching *cmd* (every match is counted)."""
        chosen = None
        for fault in list(self.faults):
            if fault.matches(cmd, session) and chosen is None and fault.ready():
                chosen = fault
        if chosen is None:
            return None
        chosen.fired += 1
        return chosen.action

    # -- the thread

    def _run(self, listener: socket.socket) -> None:
        try:
            with listener:
                while not self._stop.is_set():
                    try:
                        sock, _ = listener.accept()
                    except TimeoutError:
                        continue
                    self._serve(sock)
        except BaseException as exc:  # the thread must not die silently
            self.errors.append(exc)

    def _serve(self, sock: socket.socket) -> None:
        session = Session()
        self.sessions.append(session)
        conn = Conn(self, sock, session, len(self.sessions) - 1)
        try:
            if self.implicit_tls:
                conn.start_tls()
            if conn.open:
                conn.dispatch(GREETING)
            while (line := conn.readline()) is not None:
                session.commands.append(line)
                if conn.sasl is not None:
                    conn.send(conn.continue_sasl(line))
                    name = "AUTH" if conn.sasl is None else ""
                else:
                    cmd = Command(line)
                    conn.dispatch(cmd)
                    name = cmd.name if conn.sasl is None else ""
                if name and ({name, "*"} & self.discard_after):
                    conn.discard_buffered()
        except _CLIENT_GONE as exc:
            session.closed_by_client = True
            session.error = f"{type(exc).__name__}: {exc}"
        except OSError as exc:  # ssl.SSLError included: e.g. the client refused our cert
            session.error = f"{type(exc).__name__}: {exc}"
        except Exception as exc:
            self.errors.append(exc)
        finally:
            if conn.sasl is not None:
                conn.sasl.close()
            conn.hangup()
            session.done.set()


# -- TLS helpers ---------------------------------------------------------------------


def make_server_context(
    ca: trustme.CA,
    hostname: str = "localhost",
    *,
    expired: bool = False,
    tls_max_version: ssl.TLSVersion | None = None,
) -> ssl.SSLContext:
    """A server context with a certificate for *hostname* from *ca*.

    *expired* issues a certificate that expired yesterday. A *tls_max_version*
    below TLS 1.2 also lowers the minimum and the OpenSSL security level to 0
    (``@SECLEVEL=0``) so that a TLS 1.0/1.1-only server can be simulated.
    """
    if expired:
        now = datetime.datetime.now(datetime.UTC)
        day = datetime.timedelta(days=1)
        cert = ca.issue_cert(hostname, not_before=now - 30 * day, not_after=now - day)
    else:
        cert = ca.issue_cert(hostname)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    cert.configure_cert(context)
    _limit_version(context, tls_max_version)
    return context


def make_client_context(
    ca: trustme.CA, *, tls_max_version: ssl.TLSVersion | None = None
) -> ssl.SSLContext:
    """A verifying client context that trusts *ca* (for self-tests and poplib)."""
    context = ssl.create_default_context()
    ca.configure_trust(context)
    _limit_version(context, tls_max_version)
    return context


def _limit_version(context: ssl.SSLContext, version: ssl.TLSVersion | None) -> None:
    if version is None:
        return
    with warnings.catch_warnings():  # TLSVersion.TLSv1 is deprecated; that is the point
        warnings.simplefilter("ignore", DeprecationWarning)
        if version < ssl.TLSVersion.TLSv1_2:
            context.minimum_version = ssl.TLSVersion.TLSv1
            context.set_ciphers("DEFAULT:@SECLEVEL=0")
        context.maximum_version = version
