"""UIDL, LIST and CAPA listings parsed, sans-IO: lines of bytes in, values out.

Strategy (RFC 1939 section 7, RFC 2449 section 5): a listing comes out of
:class:`~fetchpop.pop3.protocol.POP3Protocol` as its lines, unstuffed and
without line ends. UIDL lines are "number unique-id", LIST lines "number
octets", CAPA lines "NAME [argument ...]". Message numbers are 1 to
MAX_MESSAGE_NUMBER (a number we could not send back in a command line is a
hostile listing); a message listed twice is a protocol error.

A listing of 10,000 messages is parsed in a few whole-list passes (split,
map, min/max, set) when every line has the usual shape "number word".
Anything else goes line by line, which tells what is wrong with the first
bad line; the fast path accepts nothing that the line-by-line one refuses,
and gives the same result.
"""

from __future__ import annotations

import operator
from collections.abc import Iterator

from fetchpop.errors import ProtocolError, sanitize

#: Message numbers beyond this are a hostile listing, not a maildrop.
MAX_MESSAGE_NUMBER = 2**31 - 1
#: A message size beyond this (a terabyte) is a hostile listing: the RETR
#: bound derives from it, and a server could fill the disk.
MAX_OCTETS = 2**40

#: CAPA as a mapping: capability name (upper case) -> its arguments.
Capabilities = dict[str, list[str]]


#: A listing of more messages than this is refused. The biggest maildrops met
#: in practice are archives of a few hundred thousand messages (Gmail lists
#: at most a few hundred per session); a million costs fetchpop about 200 MB.
MAX_MESSAGES = 1_000_000

_OCTET_DIGITS = len(str(MAX_OCTETS))
#: Lines parsed at a time on the fast path.
_CHUNK = 8192


def parse_capa(lines: list[bytes]) -> Capabilities:
    """CAPA's lines as name -> arguments (RFC 2449 section 5); names upper-cased.

    Sanitised here, once: capabilities reach error lines (``it offers: ...``),
    ``serverinfo`` and the seen-store, and a hostile server's terminal
    escapes must reach none of them.
    """
    caps: Capabilities = {}
    for line in lines:
        words = sanitize(line, limit=len(line)).split()
        if words:
            caps[words[0].upper()] = words[1:]
    return caps


def parse_uidl(lines: list[bytes]) -> list[tuple[int, str]]:
    """UIDL's lines as (message number, unique id), in listing order."""
    _check_count(lines, "UIDL")
    fast = _uidl_fast(lines)
    return fast if fast is not None else _uidl_by_line(lines)


def parse_list(lines: list[bytes]) -> dict[int, int]:
    """LIST's lines as message number -> size in octets."""
    _check_count(lines, "LIST")
    fast = _sizes_fast(lines)
    return fast if fast is not None else _sizes_by_line(lines)


def _check_count(lines: list[bytes], what: str) -> None:
    if len(lines) > MAX_MESSAGES:
        raise ProtocolError(
            f"the server's {what} lists {len(lines):,} messages; fetchpop takes at most "
            f"{MAX_MESSAGES:,} in one mailbox (move or delete some with another client)"
        )


def _chunks(lines: list[bytes]) -> Iterator[list[bytes]]:
    for start in range(0, len(lines), _CHUNK):
        yield lines[start : start + _CHUNK]


def _message_number(digits: bytes, line: bytes, what: str) -> int:
    # RFC 1939 section 5: messages are numbered from 1; a number we could not
    # even send back in a command line is a hostile listing.
    number = int(digits) if len(digits) <= 10 else 0
    if not 1 <= number <= MAX_MESSAGE_NUMBER:
        raise ProtocolError(f"malformed {what} line (bad message number): " + sanitize(line, 80))
    return number


#: Bytes that str.split() does not take for whitespace in latin-1 text (a
#: superset of bytes.split()'s whitespace): deleted, they leave the separators.
_NOT_SPACE = bytes(c for c in range(256) if not chr(c).isspace())


def _words(lines: list[bytes]) -> list[str] | None:
    """The two words of every line, in one list, if each line is exactly
    "word SP word" (no other whitespace anywhere); else None."""
    count = len(lines)
    text = b"\n".join(lines)
    # What whitespace is left must be one space per line and the LFs between lines.
    if not count or text.translate(None, _NOT_SPACE) != b" \n" * (count - 1) + b" ":
        return None
    words = text.decode("latin-1").split()
    return words if len(words) == 2 * count else None  # fewer: a word was empty


def _digits(words: list[str]) -> bool:
    """Whether *words* are all ASCII digits (str.isdigit() alone takes "\xb2" too)."""
    joined = "".join(words)
    return joined.isascii() and joined.isdigit()


def _message_numbers(words: list[str]) -> list[int] | None:
    """*words* as message numbers, or None if one of them is not a good one."""
    if not _digits(words) or max(map(len, words)) > 10:
        return None
    numbers = list(map(int, words))
    return numbers if min(numbers) >= 1 and max(numbers) <= MAX_MESSAGE_NUMBER else None


def _uidl_fast(lines: list[bytes]) -> list[tuple[int, str]] | None:
    """What _uidl_by_line gives, when every line is "number uid"; else None.

    A chunk of lines at a time: only the pairs stay, and the temporaries (the
    chunk's text and words) are a chunk's worth, not the listing's.
    """
    out: list[tuple[int, str]] = []
    ascending = True  # the usual order: 1, 2, 3 ... needs no set to rule out repeats
    last = 0
    for chunk in _chunks(lines):
        words = _words(chunk)
        if words is None:
            return None
        numbers = _message_numbers(words[0::2])
        if numbers is None:
            return None
        if ascending:
            ascending = numbers[0] > last and all(map(operator.lt, numbers, numbers[1:]))
            last = numbers[-1]
        out += zip(numbers, words[1::2], strict=True)
    if not ascending and len({number for number, _ in out}) != len(out):
        return None
    return out or None


def _uidl_by_line(lines: list[bytes]) -> list[tuple[int, str]]:
    out = []
    numbers: set[int] = set()
    for line in lines:
        parts = line.split(None, 1)
        if len(parts) != 2 or not parts[0].isdigit():
            raise ProtocolError("malformed UIDL line: " + sanitize(line, 80))
        # RFC 1939: unique-ids are 1-70 characters in 0x21..0x7E; latin-1
        # keeps whatever a quirky server sends, byte for byte.
        uid = parts[1].strip()
        if not uid:
            raise ProtocolError("empty unique id in UIDL listing")
        number = _message_number(parts[0], line, "UIDL")
        if number in numbers:
            # Two ids for one message: which one would we record?
            raise ProtocolError(f"UIDL lists message {number} twice")
        numbers.add(number)
        out.append((number, uid.decode("latin-1")))
    return out


def _sizes_fast(lines: list[bytes]) -> dict[int, int] | None:
    """What _sizes_by_line gives, when every line is "number size"; else None."""
    sizes: dict[int, int] = {}
    for chunk in _chunks(lines):
        words = _words(chunk)
        if words is None:
            return None
        numbers, digits = _message_numbers(words[0::2]), words[1::2]
        if numbers is None or not _digits(digits) or max(map(len, digits)) > _OCTET_DIGITS:
            return None
        octets = list(map(int, digits))
        if max(octets) > MAX_OCTETS:
            return None
        sizes.update(zip(numbers, octets, strict=True))
    return sizes or None


def _sizes_by_line(lines: list[bytes]) -> dict[int, int]:
    sizes = {}
    for line in lines:
        parts = line.split()
        if len(parts) < 2 or not parts[0].isdigit() or not parts[1].isdigit():
            raise ProtocolError("malformed LIST line: " + sanitize(line, 80))
        octets = int(parts[1]) if len(parts[1]) <= _OCTET_DIGITS else MAX_OCTETS + 1
        if octets > MAX_OCTETS:
            raise ProtocolError("LIST gives an absurd size: " + sanitize(line, 80))
        sizes[_message_number(parts[0], line, "LIST")] = octets
    return sizes
