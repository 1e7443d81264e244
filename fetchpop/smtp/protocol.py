"""SMTP and LMTP client protocol, sans-IO: bytes in, replies out; commands out.

What fetchpop needs of RFC 5321 (SMTP) and RFC 2033 (LMTP), and no more:

* :class:`ReplyParser` turns the server's bytes into :class:`Reply` values: a
  three-digit code, then ``-`` on every line but the last of a multi-line
  reply (``250-PIPELINING`` ... ``250 SMTPUTF8``), all lines with the same
  code. An RFC 3463 enhanced status code (``5.1.1``) leading the text is
  kept apart. Text is made safe to show once, here (:func:`~fetchpop.errors.sanitize`).
  A bare LF ends a line too; anything else that does not parse is a
  :class:`~fetchpop.errors.ProtocolError`. Every buffer is bounded: a line
  (MAX_LINE), the lines of one reply (MAX_LINES).
* :func:`command` builds one command line, refusing CR, LF and NUL in it
  (a recipient or sender with a line end would smuggle a second command).
* :class:`DataEncoder` turns a message with LF line ends into DATA's wire
  form, a chunk at a time: every LF becomes CRLF (a lone CR stays as it
  is), a dot at the start of a line is doubled (RFC 5321 section 4.5.2),
  across chunk boundaries too; :meth:`DataEncoder.end` closes the message
  with a line end if it lacks one, and the ``.`` line.
* :class:`MessageScan` looks at a message as it is spooled: whether it has
  8-bit bytes (``BODY=8BITMIME``, RFC 6152), UTF-8 in its header
  (``SMTPUTF8``, RFC 6531), and its ``Return-Path`` (the envelope sender).
"""

from __future__ import annotations

import re
from typing import NamedTuple

from fetchpop.errors import LocalProtocolError, ProtocolError, sanitize

#: RFC 5321 section 4.5.3.1.5 allows 512 octets for a reply line; we take more.
MAX_LINE = 4096
#: Lines of one reply (an EHLO reply has a line per extension).
MAX_LINES = 256
#: RFC 5321 section 4.5.3.1.4: a command line is at most 512 octets.
MAX_COMMAND = 512
#: How much of a message's header :class:`MessageScan` reads for Return-Path.
MAX_HEADER_SCAN = 256 * 1024
#: An envelope address longer than this is not taken from a header.
MAX_ADDRESS = 256

_REPLY_LINE = re.compile(rb"([2-5][0-9][0-9])([ -]?)(.*)", re.DOTALL)
_ENHANCED = re.compile(r"([245]\.[0-9]{1,3}\.[0-9]{1,3})(?:\s+|$)")


class Reply(NamedTuple):
    """One reply: its code, its lines' texts (safe to show), the enhanced code."""

    code: int
    lines: tuple[str, ...]
    enhanced: str | None = None

    @property
    def kind(self) -> int:
        """2 (done), 3 (go on), 4 (try later) or 5 (refused)."""
        return self.code // 100

    @property
    def text(self) -> str:
        """The reply as a user may see it, on one line: ``550 5.1.1 no such user``."""
        words = " ".join(line for line in self.lines if line)
        head = f"{self.code} {self.enhanced}" if self.enhanced else str(self.code)
        return sanitize(f"{head} {words}".strip(), limit=300)


def _reply(code: int, texts: list[str]) -> Reply:
    enhanced = None
    match = _ENHANCED.match(texts[0]) if texts else None
    if match and match.group(1)[0] == str(code)[0]:
        enhanced = match.group(1)
        texts = [_ENHANCED.sub("", text, count=1) for text in texts]
    return Reply(code, tuple(texts), enhanced)


class ReplyParser:
    """Bytes from the server in (:meth:`feed`), whole replies out."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self._code: bytes | None = None
        self._texts: list[str] = []

    @property
    def partial(self) -> bool:
        """Whether part of a reply has arrived and the rest not yet."""
        return bool(self._buf) or self._code is not None

    def feed(self, data: bytes) -> list[Reply]:
        """The replies *data* completes (with what came before). Raises ProtocolError."""
        self._buf += data
        replies: list[Reply] = []
        while True:
            end = self._buf.find(b"\n")
            if end < 0:
                if len(self._buf) > MAX_LINE:
                    raise ProtocolError("the server sent a reply line that is too long")
                return replies
            line = bytes(self._buf[:end]).removesuffix(b"\r")
            del self._buf[: end + 1]
            if len(line) > MAX_LINE:
                raise ProtocolError("the server sent a reply line that is too long")
            reply = self._line(line)
            if reply is not None:
                replies.append(reply)

    def _line(self, line: bytes) -> Reply | None:
        match = _REPLY_LINE.fullmatch(line)
        if not match or (match.group(2) == b"" and match.group(3)):
            raise ProtocolError(f"the server sent a line that is no reply: {sanitize(line, 80)}")
        code, more, text = match.groups()
        if self._code is not None and code != self._code:
            raise ProtocolError(
                f"the server changed the code within one reply ({self._code.decode()} "
                f"then {code.decode()})"
            )
        self._code = code
        self._texts.append(sanitize(text, limit=MAX_LINE))
        if more == b"-":
            if len(self._texts) >= MAX_LINES:
                raise ProtocolError("the server sent a reply of too many lines")
            return None
        texts, self._texts, self._code = self._texts, [], None
        return _reply(int(code), texts)


def command(verb: str, *args: str) -> bytes:
    """One command line (``MAIL FROM:<a@b> BODY=8BITMIME``) with its CRLF.

    Raises LocalProtocolError for a CR, LF or NUL in it, or a line too long.
    """
    line = " ".join((verb, *args)).encode("utf-8")
    if any(c in line for c in b"\r\n\0") or len(line) + 2 > MAX_COMMAND:
        raise LocalProtocolError(f"refusing to send a malformed {verb} command")
    return line + b"\r\n"


def extensions(reply: Reply) -> dict[str, tuple[str, ...]]:
    """An EHLO (or LHLO) reply's extensions: ``{"SIZE": ("10240000",), "PIPELINING": ()}``.

    The first line is the server's name and greeting, not an extension.
    """
    out: dict[str, tuple[str, ...]] = {}
    for line in reply.lines[1:]:
        words = line.split()
        if words:
            out[words[0].upper()] = tuple(words[1:])
    return out


class DataEncoder:
    """A message (LF line ends, as fetchpop holds it) to DATA's wire bytes."""

    def __init__(self) -> None:
        self._line_start = True
        self._empty = True

    def encode(self, chunk: bytes) -> bytes:
        """*chunk*'s wire form: CRLF line ends, leading dots doubled."""
        if not chunk:
            return b""
        data = chunk.replace(b"\n", b"\r\n").replace(b"\n.", b"\n..")
        if self._line_start and data.startswith(b"."):
            data = b"." + data
        self._line_start = chunk.endswith(b"\n")
        self._empty = False
        return data

    def end(self) -> bytes:
        """What closes the message: a line end if it lacks one, then ``.``."""
        return (b"" if self._line_start else b"\r\n") + b".\r\n"


class MessageScan:
    """What the envelope needs to know of a message, learnt as it streams by.

    ``eight_bit``: some byte is 8-bit. ``utf8_header``: the header holds
    non-ASCII bytes that are valid UTF-8. ``sender``: the address of the
    first ``Return-Path`` field (``""`` for ``<>`` or none, or one that is
    no plain address). ``lines``: the line ends seen (for SIZE).
    """

    def __init__(self) -> None:
        self.eight_bit = False
        self.utf8_header = False
        self.lines = 0
        self._header = bytearray()
        self._in_header = True

    def feed(self, chunk: bytes) -> None:
        """Look at the next *chunk* of the message."""
        self.lines += chunk.count(b"\n")
        if not self.eight_bit and not chunk.isascii():
            self.eight_bit = True
        if not self._in_header:
            return
        self._header += chunk
        end = self._header.find(b"\n\n")
        if self._header.startswith(b"\n"):
            end = 0
        if end >= 0 or len(self._header) > MAX_HEADER_SCAN:
            if end >= 0:
                del self._header[end + 1 :]
            self._in_header = False

    @property
    def header(self) -> bytes:
        """The header as far as it was kept."""
        return bytes(self._header[:MAX_HEADER_SCAN])

    def finish(self) -> None:
        """The message is whole: decide what the header says."""
        self._in_header = False
        header = self.header
        if not header.isascii():
            try:
                header.decode("utf-8")
            except UnicodeDecodeError:
                pass
            else:
                self.utf8_header = True

    @property
    def sender(self) -> str:
        """The envelope sender from the first Return-Path field, or ``""``."""
        return return_path(self.header)


_RETURN_PATH = re.compile(rb"(?im)^return-path:[ \t]*(.*(?:\n[ \t].*)*)")
_ADDRESS = re.compile(r"[^\s<>()\[\]\\,;:\"@]+@[^\s<>()\[\]\\,;:\"@]+")


def return_path(header: bytes) -> str:
    """The address of the first ``Return-Path:`` in *header*, or ``""`` for
    ``<>``, none, or anything that is not one plain ``local@domain``."""
    match = _RETURN_PATH.search(header)
    if not match:
        return ""
    value = b" ".join(match.group(1).split()).decode("utf-8", "replace")
    value = value.strip()
    if value.startswith("<") and ">" in value:
        value = value[1 : value.index(">")]
    if len(value) > MAX_ADDRESS or not _ADDRESS.fullmatch(value) or "\ufffd" in value:
        return ""
    return value
