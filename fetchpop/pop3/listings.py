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

import dataclasses
import operator
from array import array
from collections.abc import Iterator, Mapping, Sequence
from typing import TypeAlias, overload

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


class Lines(Sequence[bytes]):
    """A listing's lines, kept as the blocks they came in: each block the
    lines of one read, unstuffed, each ended by a line feed. A listing of
    100,000 messages is a few dozen bytes objects, not 100,000 (the parsers
    in fetchpop/pop3/listings.py take the blocks whole); a line is made only
    for whoever asks for one."""

    __slots__ = ("_count", "blocks")

    def __init__(self, blocks: list[bytes] | None = None, count: int = 0) -> None:
        self.blocks = blocks if blocks is not None else []
        self._count = count

    @classmethod
    def of(cls, lines: Sequence[bytes]) -> Lines:
        """The lines given (none of them may hold a line feed)."""
        if any(b"\n" in line for line in lines):
            raise ValueError("a line of a listing holds a line feed")
        return cls([b"".join(line + b"\n" for line in lines)] if lines else [], len(lines))

    def add(self, lines: Sequence[bytes]) -> None:
        """Append *lines*, none of which holds a line feed (the protocol split them there)."""
        if lines:
            self.blocks.append(b"\n".join(lines) + b"\n")
            self._count += len(lines)

    def __len__(self) -> int:
        return self._count

    def __iter__(self) -> Iterator[bytes]:
        for block in self.blocks:
            yield from block.split(b"\n")[:-1]

    @overload
    def __getitem__(self, index: int) -> bytes: ...

    @overload
    def __getitem__(self, index: slice) -> list[bytes]: ...

    def __getitem__(self, index: int | slice) -> bytes | list[bytes]:
        return list(self)[index]

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Lines | list):
            return list(self) == list(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Lines({list(self)!r})"


def parse_capa(lines: Sequence[bytes]) -> Capabilities:
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


def parse_uidl(lines: Sequence[bytes]) -> list[tuple[int, str]]:
    """UIDL's lines as (message number, unique id), in listing order."""
    return parse_uidls(lines).pairs()


def parse_list(lines: Sequence[bytes]) -> dict[int, int]:
    """LIST's lines as message number -> size in octets."""
    return parse_sizes(lines).mapping()


def parse_uidls(lines: Sequence[bytes]) -> UIDLs:
    """UIDL's lines, compact (see :class:`UIDLs`)."""
    _check_count(lines, "UIDL")
    fast = _uidl_fast(lines)
    return fast if fast is not None else UIDLs.of(_uidl_by_line(lines))


def parse_sizes(lines: Sequence[bytes]) -> Sizes:
    """LIST's lines, compact (see :class:`Sizes`)."""
    _check_count(lines, "LIST")
    fast = _sizes_fast(lines)
    return fast if fast is not None else Sizes.of(_sizes_by_line(lines))


#: Message numbers in listing order: the usual 1, 2, ... n as a range (no
#: memory at all), else an array of 8-byte integers.
Numbers: TypeAlias = "range | array[int]"


@dataclasses.dataclass(frozen=True, slots=True)
class UIDLs:
    """A UIDL listing without an object per message: the numbers, and the
    unique ids joined by line feeds (which no id can hold: each comes from
    one line) in one string."""

    numbers: Numbers
    text: str

    @classmethod
    def of(cls, pairs: Sequence[tuple[int, str]]) -> UIDLs:
        """(number, unique id) pairs, in listing order (no id holding a line feed)."""
        return cls(_compact([n for n, _ in pairs]), "\n".join(u for _, u in pairs))

    def __len__(self) -> int:
        return len(self.numbers)

    def ids(self) -> list[str]:
        """The unique ids, in listing order."""
        return self.text.split("\n") if self.numbers else []

    def pairs(self) -> list[tuple[int, str]]:
        """(message number, unique id), in listing order."""
        return list(zip(self.numbers, self.ids(), strict=True))


@dataclasses.dataclass(frozen=True, slots=True)
class Sizes:
    """A LIST listing without an object per message: numbers and sizes."""

    numbers: Numbers
    octets: array[int]

    @classmethod
    def of(cls, sizes: Mapping[int, int]) -> Sizes:
        """Message number -> size, in listing order."""
        return cls(_compact(list(sizes)), array("q", sizes.values()))

    @classmethod
    def none(cls) -> Sizes:
        """The sizes of an empty maildrop."""
        return cls.of({})

    def mapping(self) -> dict[int, int]:
        """Message number -> size (a number listed twice: its last size)."""
        return dict(zip(self.numbers, self.octets, strict=True))


def same_numbers(a: Numbers, b: Numbers) -> bool:
    """Whether two listings number their messages alike, in the same order."""
    if isinstance(a, range) and isinstance(b, range):
        return a == b
    return len(a) == len(b) and array("q", a) == array("q", b)


def _compact(numbers: Sequence[int], ascending: bool | None = None) -> Numbers:
    """*numbers* as a range when they are 1..n (*ascending*: whether they are
    known to be strictly ascending), else as an array."""
    n = len(numbers)
    if ascending is None:
        ascending = _ascending(numbers)
    if not n or (ascending and numbers[0] == 1 and numbers[-1] == n):
        return range(1, n + 1)  # strictly ascending from 1 to n, n of them: 1..n
    return numbers if isinstance(numbers, array) else array("q", numbers)


def _ascending(numbers: Sequence[int]) -> bool:
    return all(map(operator.lt, numbers, numbers[1:]))


def _check_count(lines: Sequence[bytes], what: str) -> None:
    if len(lines) > MAX_MESSAGES:
        raise ProtocolError(
            f"the server's {what} lists {len(lines):,} messages; fetchpop takes at most "
            f"{MAX_MESSAGES:,} in one mailbox (move or delete some with another client)"
        )


def _chunks(lines: Sequence[bytes]) -> Iterator[tuple[bytes, int]]:
    """The lines a chunk at a time: (text, number of lines), each line in the
    text ended by a line feed. The protocol's :class:`Lines` are such chunks
    already (a line holding a line feed makes a chunk the fast path refuses)."""
    if isinstance(lines, Lines):
        for block in lines.blocks:
            yield block, block.count(b"\n")
        return
    for start in range(0, len(lines), _CHUNK):
        chunk = lines[start : start + _CHUNK]
        yield b"".join(line + b"\n" for line in chunk), len(chunk)


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


def _words(text: bytes, count: int) -> list[str] | None:
    """The two words of each of the *count* lines of *text*, in one list, if
    each line is exactly "word SP word" (no other whitespace anywhere); else None."""
    # What whitespace is left must be one space and the line feed of each line.
    if not count or text.translate(None, _NOT_SPACE) != b" \n" * count:
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


def _uidl_fast(lines: Sequence[bytes]) -> UIDLs | None:
    """What _uidl_by_line gives, when every line is "number uid"; else None.

    A chunk of lines at a time: only the numbers (in an array) and the ids
    (in one string) stay, and the temporaries (the chunk's text and words)
    are a chunk's worth, not the listing's.
    """
    numbers = array("q")
    pieces: list[str] = []
    ascending = True  # the usual order: 1, 2, 3 ... needs no set to rule out repeats
    for text, count in _chunks(lines):
        words = _words(text, count)
        if words is None:
            return None
        chunk_numbers = _message_numbers(words[0::2])
        if chunk_numbers is None:
            return None
        if ascending:
            last = numbers[-1] if numbers else 0
            ascending = chunk_numbers[0] > last and _ascending(chunk_numbers)
        numbers.extend(chunk_numbers)
        pieces.append("\n".join(words[1::2]))
    if not numbers or (not ascending and len(set(numbers)) != len(numbers)):
        return None
    return UIDLs(_compact(numbers, ascending), "\n".join(pieces))


def _uidl_by_line(lines: Sequence[bytes]) -> list[tuple[int, str]]:
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
        if b"\n" in uid:  # (never from the protocol, which splits lines there)
            raise ProtocolError("malformed UIDL line: " + sanitize(line, 80))
        number = _message_number(parts[0], line, "UIDL")
        if number in numbers:
            # Two ids for one message: which one would we record?
            raise ProtocolError(f"UIDL lists message {number} twice")
        numbers.add(number)
        out.append((number, uid.decode("latin-1")))
    return out


def _sizes_fast(lines: Sequence[bytes]) -> Sizes | None:
    """What _sizes_by_line gives, when every line is "number size"; else None."""
    numbers, octets = array("q"), array("q")
    for text, count in _chunks(lines):
        words = _words(text, count)
        if words is None:
            return None
        chunk_numbers, digits = _message_numbers(words[0::2]), words[1::2]
        if chunk_numbers is None or not _digits(digits) or max(map(len, digits)) > _OCTET_DIGITS:
            return None
        chunk_octets = list(map(int, digits))
        if max(chunk_octets) > MAX_OCTETS:
            return None
        numbers.extend(chunk_numbers)
        octets.extend(chunk_octets)
    return Sizes(_compact(numbers), octets) if numbers else None


def _sizes_by_line(lines: Sequence[bytes]) -> dict[int, int]:
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
