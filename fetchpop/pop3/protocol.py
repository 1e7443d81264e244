"""POP3 client protocol, sans-IO: bytes in, events out; commands in, bytes out.

Strategy (RFC 1939 section 3, RFC 2449 sections 6.6 and 8):

* Every command we send queues one *expectation*; replies are matched to
  expectations first-in, first-out. That is all PIPELINING needs: the caller
  may send several commands before reading, and the replies come back as a
  stream of events in the same order.
* A reply's status line starts with ``+OK`` or ``-ERR``. ``-ERR`` may carry an
  RFC 2449 response code in brackets (``[IN-USE]``), which becomes data.
* Multi-line replies end with a line holding a single ``.``; lines that start
  with ``.`` were "byte-stuffed" by the server and lose that dot here.
  Listings (CAPA, LIST, UIDL) are collected as lines under a size limit.
  Messages (RETR, TOP) are never collected: they come out as
  :class:`MessageData` chunks with CRLF turned into LF, worked on a buffer at a
  time with ``bytes.replace``, not a Python object per line.
* The session state (RFC 1939 section 3) is data: AUTHORIZATION until a
  login command (PASS, APOP, AUTH) is answered ``+OK``, then TRANSACTION,
  then UPDATE once QUIT is sent. STLS and the login commands are barriers:
  nothing may be sent behind one before its reply has arrived (RFC 2595
  section 4; and Courier and Cyrus drop what follows a login), so
  :meth:`POP3Protocol.send` refuses to, as it refuses anything after QUIT.
* Every text a server sends for people (the greeting's, each ``+OK`` and
  ``-ERR`` line's, response codes included) is made safe here, once, as it
  is parsed: sanitised (:func:`~fetchpop.errors.sanitize`: no escapes, C0 or
  C1 controls, DEL, bidirectional controls or invalid UTF-8) and with every
  credential this connection sent hidden (:class:`~fetchpop.pop3.masking.Secrets`:
  the protocol registers the arguments of PASS, APOP and AUTH and each SASL
  response as it sends them). An event's ``text`` is that safe text, as
  UTF-8 bytes; a SASL challenge must be base64, nothing else. What is data
  (listing lines, messages, challenges) stays exact.
* A server that ends lines with a bare LF is tolerated; anything else that
  does not parse is a :class:`~fetchpop.errors.ProtocolError`, after which the
  connection is in a terminal error state. No input makes this module hang:
  every buffer it keeps is bounded.
"""

from __future__ import annotations

import collections
import enum
import re
from typing import NamedTuple, TypeVar

from fetchpop.errors import (
    ConnectionLostError,
    LocalProtocolError,
    NotPOP3Error,
    ProtocolError,
    sanitize,
)
from fetchpop.pop3 import listings
from fetchpop.pop3.listings import Lines
from fetchpop.pop3.masking import Secrets

#: RFC 2449 section 4 allows 512 octets for a status line; real servers send
#: longer texts, so we accept more, but not without bound.
MAX_STATUS_LINE = 4096
#: A SASL challenge line: XOAUTH2 and OAUTHBEARER errors are JSON in base64,
#: and Microsoft's are long.
MAX_SASL_LINE = 64 * 1024
#: Lines of CAPA/LIST/UIDL listings (a UIDL is at most 70 characters).
MAX_LISTING_LINE = 4096
#: A UIDL listing of 100,000 messages is about 8 MB.
MAX_LISTING_SIZE = 64 * 1024 * 1024
#: How much of a message line we buffer before streaming part of it.
MESSAGE_CHUNK = 256 * 1024


class State(enum.Enum):
    """The session state of RFC 1939 section 3, as the client sees it."""

    AUTHORIZATION = "authorization"
    TRANSACTION = "transaction"
    UPDATE = "update"  # QUIT sent: nothing more may be


#: Commands behind which nothing may be sent before their reply.
_BARRIERS = frozenset({"STLS", "PASS", "APOP", "AUTH"})
_LOGINS = frozenset({"PASS", "APOP", "AUTH"})


class Kind(enum.Enum):
    """What shape of reply a command gets."""

    SINGLE = "single"  # one status line
    LISTING = "listing"  # status line, then lines collected until "."
    MESSAGE = "message"  # status line, then streamed data until "."
    SASL = "sasl"  # "+ challenge" lines until a final status line


_T = TypeVar("_T", bound=tuple[object, ...])


def _event(cls: type[_T]) -> type[_T]:
    """An event type: a NamedTuple (cheap to define, unlike a dataclass) that
    equals only events of its own type, never a tuple or another event with
    the same fields (``MessageData(b"x")`` is not ``Continuation(b"x")``)."""

    def eq(self: tuple[object, ...], other: object) -> bool:
        return type(other) is type(self) and tuple.__eq__(self, other)

    def ne(self: tuple[object, ...], other: object) -> bool:
        return not eq(self, other)

    for name, method in (("__eq__", eq), ("__ne__", ne), ("__hash__", tuple.__hash__)):
        setattr(cls, name, method)
    return cls


@_event
class Greeting(NamedTuple):
    """The server's first line. ``timestamp`` is the APOP challenge, if any.

    The ``text`` of this and every other event is safe to show (see the top).
    """

    ok: bool
    text: bytes
    timestamp: bytes | None
    code: str | None = None  # an RFC 2449 response code of a -ERR greeting


@_event
class Reply(NamedTuple):
    """A status line: the whole reply to a single-line command, or a failed
    multi-line one. ``code`` is the RFC 2449 response code (``"IN-USE"``)."""

    command: str
    ok: bool
    text: bytes
    code: str | None = None


@_event
class Listing(NamedTuple):
    """A successful CAPA, LIST or UIDL: its lines, unstuffed, without line ends."""

    command: str
    text: bytes
    lines: Lines


@_event
class MessageStart(NamedTuple):
    """The ``+OK`` of a RETR or TOP; data events follow."""

    command: str
    text: bytes


@_event
class MessageData(NamedTuple):
    """A piece of a message: dot-unstuffed, LF line ends."""

    data: bytes


@_event
class MessageEnd(NamedTuple):
    """The terminating ``.`` of a message; ``octets`` counts the wire bytes."""

    octets: int


@_event
class Continuation(NamedTuple):
    """A SASL challenge line (``+ base64``), RFC 5034 section 4."""

    payload: bytes


Event = Greeting | Reply | Listing | MessageStart | MessageData | MessageEnd | Continuation


class _NeedData(enum.Enum):
    NEED_DATA = "NEED_DATA"


NEED_DATA = _NeedData.NEED_DATA

#: Commands whose reply is multi-line (when given no argument, for LIST/UIDL).
_LISTINGS = frozenset({"CAPA", "LIST", "UIDL"})
_MESSAGES = frozenset({"RETR", "TOP"})

_CODE = re.compile(rb"^\[([^\]\r\n]{1,64})\]\s*")
# RFC 5034 section 4: a challenge is base64 (RFC 4648 section 4), or empty.
_BASE64 = re.compile(rb"[A-Za-z0-9+/]*={0,2}")
#: Credential commands: which argument is the secret.
_CREDENTIAL_ARGUMENT = {"PASS": 0, "APOP": 1}
# RFC 1939 section 7: the APOP timestamp is an RFC 822 msg-id in the greeting.
_TIMESTAMP = re.compile(rb"<[\x21-\x3b\x3d\x3f-\x7e]+@[\x21-\x3b\x3d\x3f-\x7e]+>")


class _Expect(NamedTuple):
    command: str
    kind: Kind
    max_octets: int | None = None


class POP3Protocol:
    """The client side of one POP3 connection, without any I/O.

    Feed the server's bytes to :meth:`receive_data` (``b""`` at end of file) and
    take events from :meth:`next_event` until it returns :data:`NEED_DATA`.
    :meth:`send` returns the bytes of a command to write to the server.
    """

    def __init__(self) -> None:
        #: What this connection sent as credentials; hidden in every text parsed.
        self.secrets = Secrets()
        self._buf = bytearray()
        self._eof = False
        self._expect: collections.deque[_Expect] = collections.deque(
            [_Expect("greeting", Kind.SINGLE)]
        )
        self._errored = False
        # Per-reply state for multi-line replies.
        self._in_body = False
        self._bol = True
        self._octets = 0
        self._lines = Lines()
        self._listing_size = 0
        self._listing_text = b""
        self._queued = 1  # the greeting is expected like a reply
        self._state = State.AUTHORIZATION
        self._barrier: str | None = None  # a pending STLS or login command

    @property
    def state(self) -> State:
        """The session state (RFC 1939 section 3)."""
        return self._state

    @property
    def queued(self) -> int:
        """How many replies were ever expected (the greeting included)."""
        return self._queued

    @property
    def answered(self) -> int:
        """How many of them have been received whole."""
        return self._queued - len(self._expect)

    @property
    def next_command(self) -> str | None:
        """The command whose reply comes next (``"greeting"`` first), or None."""
        return self._expect[0].command if self._expect else None

    @property
    def between_replies(self) -> bool:
        """Whether no byte of the next reply has arrived yet."""
        return not self._in_body and not self._buf

    # -- sending ---------------------------------------------------------------

    @property
    def pending(self) -> int:
        """How many replies are still expected (the pipelining depth)."""
        return len(self._expect)

    def send(self, command: str, *args: str, max_octets: int | None = None) -> bytes:
        """Queue the reply expectation for *command* and return its wire bytes.

        *max_octets* bounds a RETR/TOP reply: a server that sends more is
        lying about the size (or endless) and gets a ProtocolError.
        """
        self._check_usable()
        name = command.upper()
        if self._barrier is not None:
            raise LocalProtocolError(
                f"refusing to send {name} behind {self._barrier} before its reply"
            )
        if self._state is State.UPDATE:
            raise LocalProtocolError(f"refusing to send {name} after QUIT")
        if name == "AUTH":
            kind = Kind.SASL
        elif name in _MESSAGES:
            kind = Kind.MESSAGE
        elif name in _LISTINGS and not (name != "CAPA" and args):
            kind = Kind.LISTING
        else:
            kind = Kind.SINGLE
        line = " ".join((name, *args)).encode("utf-8")
        if b"\r" in line or b"\n" in line or len(line) > 255 * 2:
            raise LocalProtocolError("refusing to send a malformed command line")
        self._remember(name, args)
        self._expect.append(_Expect(name, kind, max_octets))
        self._queued += 1
        if name in _BARRIERS:
            self._barrier = name
        elif name == "QUIT":
            self._state = State.UPDATE
        return line + b"\r\n"

    def _remember(self, name: str, args: tuple[str, ...]) -> None:
        """Register the credential in a command, so no reply can show it."""
        if name == "AUTH":
            if len(args) > 1:
                self.secrets.add_sent(args[1].encode("ascii", "replace"))
        elif name in _CREDENTIAL_ARGUMENT and len(args) > _CREDENTIAL_ARGUMENT[name]:
            self.secrets.add(args[_CREDENTIAL_ARGUMENT[name]])

    def send_sasl(self, payload: bytes) -> bytes:
        """Bytes answering a SASL challenge (already base64, or ``*`` to cancel)."""
        self._check_usable()
        if not self._expect or self._expect[0].kind is not Kind.SASL:
            raise LocalProtocolError("no SASL exchange in progress")
        self.secrets.add_sent(payload)
        return payload + b"\r\n"

    # -- receiving -------------------------------------------------------------

    def receive_data(self, data: bytes) -> None:
        """Add bytes from the server; ``b""`` means the server closed the connection."""
        if data:
            if self._eof:
                raise LocalProtocolError("data after end of file")
            self._buf += data
        else:
            self._eof = True

    def next_event(self) -> Event | _NeedData:
        """The next complete event, or NEED_DATA. Raises ProtocolError on bad input."""
        self._check_usable()
        try:
            event = self._next()
        except ProtocolError:
            self._errored = True
            raise
        if event is NEED_DATA and self._eof and self._expect:
            self._errored = True
            raise ConnectionLostError(
                "connection closed by server while waiting for reply to " + self._expect[0].command
            )
        return event

    def _check_usable(self) -> None:
        if self._errored:
            raise LocalProtocolError("connection is in an error state")

    def _next(self) -> Event | _NeedData:
        if not self._expect:
            if self._buf:
                raise ProtocolError(
                    "server sent data nobody asked for: " + self._show(bytes(self._buf[:4096]))
                )
            return NEED_DATA
        exp = self._expect[0]
        if self._in_body:
            return self._body(exp)
        limit = MAX_SASL_LINE if exp.kind is Kind.SASL else MAX_STATUS_LINE
        line = self._take_line(limit, exp.command)
        if line is None:
            return NEED_DATA
        if exp.kind is Kind.SASL and line[:1] == b"+" and line[:3].upper() != b"+OK":
            # RFC 5034 section 4: "+" SP base64 (some servers omit the space).
            payload = line[1:].strip()
            if not _BASE64.fullmatch(payload):
                raise ProtocolError("server sent invalid base64: " + self._show(payload, 80))
            return Continuation(payload)
        if exp.command == "greeting":
            return self._greeting(line)
        ok, text, code = self._status(line, exp.command)
        if ok and exp.kind in (Kind.LISTING, Kind.MESSAGE):
            return self._begin_body(exp, text)
        return self._reply(exp, ok, text, code)

    def _greeting(self, line: bytes) -> Greeting:
        service = identify_service(line)
        if service is not None and service != "pop3":
            raise NotPOP3Error(f"the server greeted in {service}: {self._show(line)}", service)
        ok, text, code = self._status(line, "greeting")
        self._expect.popleft()
        match = _TIMESTAMP.search(line, 4) if ok else None
        return Greeting(ok, text, match.group(0) if match else None, code)

    def _begin_body(self, exp: _Expect, text: bytes) -> Event | _NeedData:
        """The ``+OK`` of a multi-line reply: a message starts, or a listing's lines."""
        self._in_body = True
        self._bol = True
        self._octets = 0
        if exp.kind is Kind.MESSAGE:
            return MessageStart(exp.command, text)
        self._lines = Lines()
        self._listing_size = 0
        self._listing_text = text
        return self._body(exp)

    def _reply(self, exp: _Expect, ok: bool, text: bytes, code: str | None) -> Reply:
        """A whole reply in one status line; it may end a barrier (STLS, a login)."""
        self._expect.popleft()
        if exp.command == self._barrier:
            self._barrier = None
            if ok and exp.command in _LOGINS:
                self._state = State.TRANSACTION
        if ok and exp.command == "STLS" and self._buf:
            # RFC 2595 section 3.1 / CVE-2021-39272 class: nothing may come
            # between the STLS reply and the TLS handshake.
            raise ProtocolError("server sent data after STLS +OK, before TLS (injection attempt?)")
        return Reply(exp.command, ok, text, code)

    def _take_line(self, limit: int, what: str) -> bytes | None:
        end = self._buf.find(b"\n", 0, limit + 1)
        if end < 0:
            if len(self._buf) > limit:
                raise ProtocolError(f"reply to {what} is longer than {limit} bytes")
            return None
        line = bytes(self._buf[:end])
        del self._buf[: end + 1]
        return line[:-1] if line.endswith(b"\r") else line

    def _status(self, line: bytes, what: str) -> tuple[bool, bytes, str | None]:
        head = line[:4].upper()
        if head[:3] == b"+OK" and line[3:4] in (b"", b" ", b"\t"):
            return True, self._text(line[4:]), None
        if head == b"-ERR" and line[4:5] in (b"", b" ", b"\t"):
            text = self._text(line[5:])
            match = _CODE.match(text)
            code = match.group(1).decode("utf-8", "replace") if match else None
            return False, text, code
        raise ProtocolError(f"unexpected reply to {what}: {self._show(line)}")

    def _text(self, raw: bytes) -> bytes:
        """A reply's text made safe, here and only here (see the top)."""
        return self.secrets.hide(sanitize(raw, len(raw))).encode("utf-8")

    def _show(self, line: bytes, limit: int = 120) -> str:
        """A line quoted in an error: made safe, then cut."""
        return repr(self.secrets.show(line, limit))

    def _body(self, exp: _Expect) -> Event | _NeedData:
        if exp.kind is Kind.LISTING:
            return self._listing(exp)
        return self._message(exp)

    def _listing(self, exp: _Expect) -> Event | _NeedData:
        # Every complete line in the buffer as one block, worked on with bytes
        # methods (loops in C), not a Python step per line: a UIDL listing of
        # 10,000 messages is a few passes over a few buffers.
        buf = self._buf
        end = buf.rfind(b"\n") + 1
        if len(buf) - end > MAX_LISTING_LINE:
            raise ProtocolError(f"reply to {exp.command} is longer than {MAX_LISTING_LINE} bytes")
        # The buffer always starts at the start of a line.
        if buf[:3] == b".\r\n" or buf[:2] == b".\n":
            stop, dotted = 0, False
        else:
            stop, dotted = _find_dot_lines(buf)
            dotted = dotted or buf.startswith(b".")
        block_end = end if stop < 0 else stop
        if block_end:
            self._add_lines(bytes(buf[:block_end]), exp.command, dotted)
        if stop < 0:
            del buf[:end]
            return NEED_DATA
        del buf[: stop + (2 if buf[stop + 1 : stop + 2] == b"\n" else 3)]
        self._in_body = False
        self._expect.popleft()
        lines, self._lines = self._lines, Lines()
        return Listing(exp.command, self._listing_text, lines)

    def _add_lines(self, block: bytes, what: str, dotted: bool) -> None:
        """Collect the lines of *block*: whole lines, none of them the terminator.

        *dotted* False promises that no line of *block* starts with ".".
        """
        # One CR before each LF goes ("a\r\r\n" is the line "a\r"); the last
        # split item is the empty rest after the final LF.
        lines = block.split(b"\r\n")
        bare_lfs = block.count(b"\n") + 1 - len(lines)
        if bare_lfs:
            lines = block.replace(b"\r\n", b"\n").split(b"\n")
        lines.pop()
        if max(map(len, lines)) <= MAX_LISTING_LINE:
            # Lines start at the start of the block and after each LF.
            dots = block.startswith(b".") + block.count(b"\n.") if dotted else 0
            if dots:
                lines = [line[1:] if line.startswith(b".") else line for line in lines]
            # Each line counts as if it ended in CRLF: the wire bytes, one more
            # per bare LF, less the stuffed dots.
            size = self._listing_size + len(block) + bare_lfs - dots
            if size <= MAX_LISTING_SIZE:
                self._listing_size = size
                self._lines.add(lines)
                self._check_count(what)
                return
        # Some limit is crossed: line by line, for the error the first bad line gives.
        checked = []
        for raw in block.split(b"\n")[:-1]:
            line = raw[:-1] if raw.endswith(b"\r") else raw
            if len(line) > MAX_LISTING_LINE:
                raise ProtocolError(f"reply to {what} is longer than {MAX_LISTING_LINE} bytes")
            if line.startswith(b"."):
                line = line[1:]
            self._listing_size += len(line) + 2
            if self._listing_size > MAX_LISTING_SIZE:
                raise ProtocolError(f"reply to {what} exceeds {MAX_LISTING_SIZE} bytes")
            checked.append(line)
        self._lines.add(checked)
        self._check_count(what)

    def _check_count(self, what: str) -> None:
        """A maildrop of millions of messages is refused while it is read, not
        after all of it was collected (listings.MAX_MESSAGES)."""
        cap = listings.MAX_MESSAGES
        if len(self._lines) > cap and what in ("UIDL", "LIST"):
            raise ProtocolError(
                f"the server's {what} lists more than {cap:,} messages; fetchpop takes at "
                f"most {cap:,} in one mailbox (move or delete some with another client)"
            )

    def _message(self, exp: _Expect) -> Event | _NeedData:
        buf = self._buf
        if not buf:
            return NEED_DATA
        if self._bol and buf[:1] == b".":
            # A line starting with "." is either the terminator or stuffed.
            if buf[:3] == b".\r\n" or buf[:2] == b".\n":
                size = 3 if buf[:3] == b".\r\n" else 2
                del buf[:size]
                self._octets += size
                self._in_body = False
                self._expect.popleft()
                return MessageEnd(self._octets)
            if len(buf) < 3 and (buf == b"." or buf == b".\r"):
                return NEED_DATA
        # The earliest terminator inside the buffer bounds this chunk.
        stop, stuffed = _find_dot_lines(buf)
        if stop < 0:
            stop = buf.rfind(b"\n") + 1
        if stop == 0:
            if len(buf) < MESSAGE_CHUNK:
                return NEED_DATA
            # An overlong line: stream all of it we can, keeping a trailing CR
            # that may start a CRLF.
            stop = len(buf) - 1 if buf.endswith(b"\r") else len(buf)
        chunk = bytes(buf[:stop])
        del buf[:stop]
        self._octets += len(chunk)
        if exp.max_octets is not None and self._octets > exp.max_octets:
            raise ProtocolError(
                f"reply to {exp.command} is larger than the {exp.max_octets} octets announced"
            )
        data = _unstuff(chunk, self._bol, stuffed)
        self._bol = chunk.endswith(b"\n")
        return MessageData(data)


#: How other services open a conversation (or answer a TLS ClientHello).
_SERVICES = (
    (b"+OK", "pop3"),
    (b"-ERR", "pop3"),
    (b"HTTP/", "HTTP"),
    (b"<!DOCTYPE HTML", "HTTP"),  # an HTTP/0.9-style error page, without a status line
    (b"<HTML", "HTTP"),
    (b"SSH-", "SSH"),
    (b"* OK", "IMAP"),
    (b"* PREAUTH", "IMAP"),
    (b"* BYE", "IMAP"),
    (b"220 ", "SMTP"),
    (b"220-", "SMTP"),
    (b"554 ", "SMTP"),
)


def identify_service(data: bytes) -> str | None:
    """Which protocol the first bytes a server sent belong to: "pop3", "TLS",
    "HTTP", "SSH", "IMAP", "SMTP", or None when they tell nothing."""
    # A TLS record: handshake (22) or alert (21), protocol version 3.x.
    if len(data) >= 2 and data[0] in (0x15, 0x16) and data[1] == 0x03:
        return "TLS"
    head = data[:16].upper()
    for prefix, name in _SERVICES:
        if head.startswith(prefix):
            return name
    return None


def _find_dot_lines(buf: bytearray) -> tuple[int, bool]:
    """Lines that start with "." after an LF in *buf*: where the first one that
    is only "." (a terminator) starts, or -1; and whether any other comes
    before it (a byte-stuffed line, or maybe the start of a terminator)."""
    # Such lines are rare, so one search finds them all: the terminator is
    # usually the first, and with none before it there is nothing to unstuff.
    stuffed = False
    at = buf.find(b"\n.")
    while at >= 0:
        after = buf[at + 2 : at + 4]
        if after[:1] == b"\n" or after == b"\r\n":
            return at + 1, stuffed
        stuffed = True
        at = buf.find(b"\n.", at + 2)
    return -1, stuffed


def _unstuff(chunk: bytes, bol: bool, stuffed: bool) -> bytes:
    """*chunk* with LF line ends and without the stuffed dots; *stuffed* False
    promises that no line starts with "." after an LF."""
    # RFC 1939 section 3: a line starting with "." had one prepended.
    if bol and chunk.startswith(b"."):
        chunk = chunk[1:]
    if stuffed:
        chunk = chunk.replace(b"\n.", b"\n")
    return chunk.replace(b"\r\n", b"\n")
