"""IMAP4rev1 (RFC 3501) as far as APPEND needs it, sans-IO: bytes in, responses out.

Strategy: :class:`Parser` cuts what the server sends into :class:`Response`
objects -- tagged completions, untagged data and ``+`` continuations --
reading the literals inside a response (``{n}`` then n octets) by their
announced size, within bounds: a line may be at most MAX_LINE octets and a
response's literals MAX_LITERALS in all (what fetchpop asks for is small:
capabilities, a search's UIDs, message sizes). Every text meant for a person
is sanitised here, once, so no server escape reaches a terminal.

Commands go out as :class:`Command` objects: a list of pieces, each ending in
CRLF or in a literal's announcement; :func:`astring` chooses an atom, a
quoted string or a literal for an argument, :func:`mailbox_name` encodes a
mailbox in modified UTF-7 (RFC 3501 section 5.1.3). The client decides, by
the server's capabilities, whether a literal waits for the server's ``+``
(synchronising) or goes at once (LITERAL+, RFC 7888).
"""

from __future__ import annotations

import base64
import dataclasses
import datetime
import re
from collections.abc import Iterable
from typing import Literal as TypingLiteral

from fetchpop.errors import LocalProtocolError, ProtocolError, sanitize

#: The longest response line fetchpop takes (literals not counted).
MAX_LINE = 64 * 1024
#: The most octets of literals in one response.
MAX_LITERALS = 1024 * 1024
#: A literal's size fetchpop itself announces at most (RFC 3501 has no limit;
#: 2^32 - 1 is what servers parse).
MAX_APPEND = 2**32 - 1

Kind = TypingLiteral["tagged", "untagged", "continue"]

_STATUS = frozenset({"OK", "NO", "BAD", "BYE", "PREAUTH"})
_LITERAL_END = re.compile(rb"~?\{(\d{1,10})\+?\}$")
# RFC 3501 atom-specials: ( ) { SP CTL list-wildcards quoted-specials resp-specials.
_ATOM = re.compile(rb"[!#$&'*+,\-./0-9:;<=>?@A-Z\[^_`a-z|}~]+")


@dataclasses.dataclass(frozen=True)
class Response:
    """One server response.

    *status* is OK, NO, BAD, BYE or PREAUTH for a status response, else the
    data's keyword in capitals (CAPABILITY, SEARCH, FETCH, EXISTS, STATUS ...);
    *number* the number before it (``* 3 EXISTS``); *code* the response code
    in brackets (``APPENDUID 38505 3955``), sanitised; *text* the human text,
    sanitised; *data* the raw bytes after the keyword, literals inline.
    """

    kind: Kind
    tag: str = ""
    status: str = ""
    number: int | None = None
    code: str | None = None
    text: str = ""
    data: bytes = b""

    @property
    def code_name(self) -> str:
        """The response code's keyword in capitals (``TRYCREATE``), or ""."""
        return (self.code or "").split(" ", 1)[0].upper()

    @property
    def words(self) -> str:
        """The response as shown to a user: ``NO [OVERQUOTA] Quota exceeded``."""
        code = f"[{self.code}] " if self.code else ""
        return f"{self.status} {code}{self.text}".strip()


class Parser:
    """Feed it bytes; take :class:`Response` objects out with :meth:`next`."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._parts: list[bytes] = []  # of the response being read, literals inline
        self._literal: int | None = None  # octets of a literal still to come
        self._literals = 0

    def feed(self, data: bytes) -> None:
        self._buffer += data

    def pending(self) -> bool:
        """Whether bytes wait that no response took yet."""
        return bool(self._buffer) or bool(self._parts)

    def next(self) -> Response | None:
        """The next complete response, or None until more bytes come."""
        while True:
            if self._literal is not None:
                if len(self._buffer) < self._literal:
                    return None
                self._parts.append(bytes(self._buffer[: self._literal]))
                del self._buffer[: self._literal]
                self._literal = None
            end = self._buffer.find(b"\r\n")
            if end < 0:
                if len(self._buffer) > MAX_LINE:
                    raise ProtocolError(f"server sent a line longer than {MAX_LINE} octets")
                return None
            if end > MAX_LINE:
                raise ProtocolError(f"server sent a line longer than {MAX_LINE} octets")
            line = bytes(self._buffer[:end])
            del self._buffer[: end + 2]
            self._parts.append(line)
            match = _LITERAL_END.search(line)
            if match and not line.startswith(b"+"):
                self._literal = int(match.group(1))
                self._literals += self._literal
                if self._literals > MAX_LITERALS:
                    raise ProtocolError(
                        f"server sent more than {MAX_LITERALS} octets of literals in one response"
                    )
                self._parts.append(b"\r\n")
                continue  # the response goes on after the literal (even an empty one)
            parts, self._parts, self._literals = self._parts, [], 0
            return parse_response(b"".join(parts))


def parse_response(raw: bytes) -> Response:
    """One whole response (literals inline, no final CRLF)."""
    if raw.startswith(b"+"):
        return Response("continue", text=sanitize(raw[1:].strip()), data=raw[2:])
    head, _, rest = raw.partition(b" ")
    if not head or (not rest and head != b"*"):
        raise ProtocolError(f"server sent a malformed response: {sanitize(raw, 80)}")
    word, _, tail = rest.partition(b" ")
    if head == b"*":
        number = None
        if word.isdigit():
            number = int(word)
            word, _, tail = tail.partition(b" ")
        status = word.decode("ascii", "replace").upper()
        if status in _STATUS:
            return _status("untagged", "", status, tail, number)
        return Response("untagged", status=status, number=number, data=tail)
    tag = head.decode("ascii", "replace")
    status = word.decode("ascii", "replace").upper()
    if status not in ("OK", "NO", "BAD"):
        raise ProtocolError(f"server sent a malformed response: {sanitize(raw, 80)}")
    return _status("tagged", tag, status, tail, None)


def _status(kind: Kind, tag: str, status: str, tail: bytes, number: int | None) -> Response:
    code = None
    if tail.startswith(b"["):
        end = tail.find(b"]")
        if end > 0:
            code = sanitize(tail[1:end], MAX_LINE)
            tail = tail[end + 1 :].lstrip(b" ")
    return Response(kind, tag, status, number, code, sanitize(tail.strip()), tail)


def capabilities(words: bytes | str) -> frozenset[str]:
    """The capability names in a CAPABILITY response or code, in capitals."""
    text = words.decode("ascii", "replace") if isinstance(words, bytes) else words
    names = frozenset(w.upper() for w in text.split())
    return names - {"CAPABILITY"}


def appenduid(code: str | None) -> tuple[int, int] | None:
    """``APPENDUID uidvalidity uid`` (RFC 4315) as two numbers, else None."""
    words = (code or "").split()
    if len(words) != 3 or words[0].upper() != "APPENDUID":
        return None
    return (int(words[1]), int(words[2])) if words[1].isdigit() and words[2].isdigit() else None


def status_items(data: bytes) -> dict[str, int]:
    """``(UIDNEXT 5 UIDVALIDITY 7)`` at the end of a STATUS response."""
    start, end = data.rfind(b"("), data.rfind(b")")
    if start < 0 or end < start:
        raise ProtocolError(f"server sent a malformed STATUS: {sanitize(data, 80)}")
    words = data[start + 1 : end].split()
    out: dict[str, int] = {}
    for name, value in zip(words[::2], words[1::2], strict=False):
        if value.isdigit():
            out[name.decode("ascii", "replace").upper()] = int(value)
    return out


def numbers(data: bytes) -> list[int]:
    """The numbers of a SEARCH response (``* SEARCH 3 5 9``); a MODSEQ part is ignored."""
    head = data.split(b"(", 1)[0]
    return [int(w) for w in head.split() if w.isdigit()]


_FETCH_ITEM = re.compile(rb"\b(UID|RFC822\.SIZE)\s+(\d+)", re.IGNORECASE)


def fetch_items(data: bytes) -> dict[str, int]:
    """UID and RFC822.SIZE of a FETCH response's ``(UID 5 RFC822.SIZE 1234)``."""
    return {m.group(1).decode().upper(): int(m.group(2)) for m in _FETCH_ITEM.finditer(data)}


# -- commands ---------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Literal:
    """A literal argument: *size* octets, from *data* or streamed by the caller.

    *binary* is a literal8 (``~{n}``, RFC 3516), which may hold NUL octets.
    """

    size: int
    data: bytes | None = None
    binary: bool = False


Argument = bytes | Literal


@dataclasses.dataclass(frozen=True)
class Command:
    """A tagged command: its name (for errors and logs) and its arguments."""

    tag: str
    name: str
    arguments: tuple[Argument, ...] = ()

    def pieces(self, nonsync: frozenset[str] = frozenset()) -> list[tuple[bytes, Literal | None]]:
        """The command as (text, literal) pieces: send the text; then, if a
        literal follows, wait for ``+`` unless the text ends with ``+}``, send
        the literal, and go on with the next piece.

        *nonsync*: the server's LITERAL+ or LITERAL- (RFC 7888; LITERAL-
        only up to 4096 octets).
        """
        out: list[tuple[bytes, Literal | None]] = []
        text = bytearray(f"{self.tag} {self.name}".encode("ascii"))
        for arg in self.arguments:
            text += b" "
            if isinstance(arg, bytes):
                text += arg
                continue
            if arg.size > MAX_APPEND:
                raise LocalProtocolError(f"a literal of {arg.size} octets is too large for IMAP")
            plus = "LITERAL+" in nonsync or ("LITERAL-" in nonsync and arg.size <= 4096)
            text += b"%s{%d%s}\r\n" % (b"~" if arg.binary else b"", arg.size, b"+" if plus else b"")
            out.append((bytes(text), arg))
            text = bytearray()
        text += b"\r\n"
        out.append((bytes(text), None))
        return out


def astring(value: str | bytes) -> Argument:
    """*value* as an atom, a quoted string, or (8-bit, CR, LF, long) a literal.

    Raises LocalProtocolError for a NUL, which no IMAP string can hold.
    """
    raw = value.encode("utf-8") if isinstance(value, str) else value
    if b"\0" in raw:
        raise LocalProtocolError("an IMAP string cannot hold a NUL character")
    if raw and _ATOM.fullmatch(raw) and not raw.startswith(b"[") and b"]" not in raw:
        return raw
    if len(raw) <= 1000 and all(0x20 <= b < 0x7F for b in raw):
        return b'"' + raw.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'
    return Literal(len(raw), raw)


def quoted(value: str) -> bytes:
    """*value* (printable ASCII) as a quoted string."""
    raw = value.encode("ascii")
    return b'"' + raw.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'


def mailbox_name(name: str) -> Argument:
    """A mailbox name in modified UTF-7 (RFC 3501 section 5.1.3), as an astring.

    ``INBOX`` is case-insensitive on every server and sent as it is.
    """
    return astring(encode_mutf7(name))


def encode_mutf7(name: str) -> bytes:
    """Modified UTF-7: printable ASCII as itself (``&`` as ``&-``), the rest
    as ``&`` + modified base64 of UTF-16BE + ``-``."""
    out = bytearray()
    pending: list[str] = []

    def flush() -> None:
        if pending:
            data = "".join(pending).encode("utf-16-be")
            out.extend(b"&" + base64.b64encode(data).rstrip(b"=").replace(b"/", b",") + b"-")
            pending.clear()

    for ch in name:
        if 0x20 <= ord(ch) < 0x7F:
            flush()
            out.extend(b"&-" if ch == "&" else ch.encode("ascii"))
        else:
            pending.append(ch)
    flush()
    return bytes(out)


def flag_list(flags: Iterable[str]) -> bytes:
    """``(\\Seen \\Flagged $Label)``; each flag an atom (the config checked them)."""
    return b"(" + b" ".join(f.encode("ascii") for f in flags) + b")"


_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def date_time(moment: datetime.datetime) -> bytes:
    """An IMAP date-time, ``"04-Feb-2025 10:00:00 +0100"``, for APPEND (an
    aware *moment*; its own offset is kept)."""
    offset = moment.utcoffset() or datetime.timedelta(0)
    minutes = int(offset.total_seconds()) // 60
    sign = "-" if minutes < 0 else "+"
    hours, mins = divmod(abs(minutes), 60)
    month = _MONTHS[moment.month - 1]
    text = (
        f'"{moment.day:2d}-{month}-{moment.year:04d} {moment.hour:02d}:{moment.minute:02d}:'
        f'{moment.second:02d} {sign}{hours:02d}{mins:02d}"'
    )
    return text.encode("ascii")


class Tags:
    """Command tags: F1, F2, ..."""

    def __init__(self, prefix: str = "F") -> None:
        self._prefix = prefix
        self._count = 0

    def next(self) -> str:
        self._count += 1
        return f"{self._prefix}{self._count}"
