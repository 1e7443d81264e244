"""The block-at-a-time readers of listings and messages against a per-line model.

POP3Protocol collects listings and unstuffs messages a buffer at a time with
bytes methods. PerLineProtocol below does the same work the plain way, a line
at a time (it is how the protocol module used to do it); for any bytes, split
into receive_data() calls anywhere, both must give the same events and the
same errors. The limits are made small so that the errors come up too.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Iterator

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from fetchpop.errors import ConnectionLostError, ProtocolError
from fetchpop.pop3 import protocol
from fetchpop.pop3.protocol import (
    NEED_DATA,
    Event,
    Listing,
    MessageData,
    MessageEnd,
    POP3Protocol,
    _Expect,
    _NeedData,
)


class PerLineProtocol(POP3Protocol):
    """Listings and messages read the straightforward way, as a reference."""

    def _listing(self, exp: _Expect) -> Event | _NeedData:
        buf = self._buf
        end = buf.rfind(b"\n") + 1
        if len(buf) - end > protocol.MAX_LISTING_LINE:
            raise ProtocolError(
                f"reply to {exp.command} is longer than {protocol.MAX_LISTING_LINE} bytes"
            )
        consumed = 0
        for raw in bytes(buf[:end]).split(b"\n")[:-1]:
            consumed += len(raw) + 1
            line = raw[:-1] if raw.endswith(b"\r") else raw
            if len(line) > protocol.MAX_LISTING_LINE:
                raise ProtocolError(
                    f"reply to {exp.command} is longer than {protocol.MAX_LISTING_LINE} bytes"
                )
            if line == b".":
                del buf[:consumed]
                self._in_body = False
                self._expect.popleft()
                lines, self._lines = self._lines, []
                return Listing(exp.command, self._listing_text, lines)
            if line.startswith(b"."):
                line = line[1:]
            self._listing_size += len(line) + 2
            if self._listing_size > protocol.MAX_LISTING_SIZE:
                raise ProtocolError(
                    f"reply to {exp.command} exceeds {protocol.MAX_LISTING_SIZE} bytes"
                )
            self._lines.add([line])
        del buf[:consumed]
        return NEED_DATA

    def _message(self, exp: _Expect) -> Event | _NeedData:
        # The previous version: two searches for a terminator, and every
        # chunk unstuffed. Same chunks as now, so the very same events.
        buf = self._buf
        if not buf:
            return NEED_DATA
        if self._bol and buf[:1] == b".":
            if buf[:3] == b".\r\n" or buf[:2] == b".\n":
                size = 3 if buf[:3] == b".\r\n" else 2
                del buf[:size]
                self._octets += size
                self._in_body = False
                self._expect.popleft()
                return MessageEnd(self._octets)
            if len(buf) < 3 and (buf == b"." or buf == b".\r"):
                return NEED_DATA
        crlf = buf.find(b"\n.\r\n")
        lf = buf.find(b"\n.\n", 0, crlf + 4 if crlf >= 0 else len(buf))
        found = [i for i in (crlf, lf) if i >= 0]
        stop = min(found) + 1 if found else buf.rfind(b"\n") + 1
        if stop == 0:
            if len(buf) < protocol.MESSAGE_CHUNK:
                return NEED_DATA
            stop = len(buf) - 1 if buf.endswith(b"\r") else len(buf)
        chunk = bytes(buf[:stop])
        del buf[:stop]
        self._octets += len(chunk)
        if exp.max_octets is not None and self._octets > exp.max_octets:
            raise ProtocolError(
                f"reply to {exp.command} is larger than the {exp.max_octets} octets announced"
            )
        data = chunk[1:] if self._bol and chunk.startswith(b".") else chunk
        data = data.replace(b"\n.", b"\n").replace(b"\r\n", b"\n")
        self._bol = chunk.endswith(b"\n")
        return MessageData(data)


def run(
    cls: type[POP3Protocol], commands: list[tuple[str, ...]], data: bytes, cuts: list[int]
) -> list[object]:
    """Events (data merged) and the error, if any, for *data* fed in pieces."""
    proto = cls()
    for command in commands:
        proto.send(*command, max_octets=60 if command[0] == "TOP" else None)
    out: list[object] = []
    bounds = [0, *sorted({c for c in cuts if 0 < c < len(data)}), len(data)]
    try:
        for start, end in itertools.pairwise(bounds):
            proto.receive_data(data[start:end])
            out.extend(events(proto))
        proto.receive_data(b"")
        out.extend(events(proto))
    except (ProtocolError, ConnectionLostError) as exc:
        out.append((type(exc).__name__, str(exc)))
    return merged(out)


def events(proto: POP3Protocol) -> Iterator[Event]:
    while (event := proto.next_event()) is not NEED_DATA:
        assert not isinstance(event, _NeedData)
        yield event


def merged(events: list[object]) -> list[object]:
    out: list[object] = []
    for event in events:
        if isinstance(event, MessageData) and out and isinstance(out[-1], MessageData):
            out[-1] = MessageData(out[-1].data + event.data)
        else:
            out.append(event)
    return out


@contextlib.contextmanager
def small_limits() -> Iterator[None]:
    """Listing limits small enough for random input to reach them."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(protocol, "MAX_LISTING_LINE", 24)
        patch.setattr(protocol, "MAX_LISTING_SIZE", 300)
        yield


GREETING = b"+OK ready\r\n"
TOKENS = [b"", b".", b"..", b"...", b".x", b"x.", b"1 uid-a", b"2 \t uid b ", b"+OK", b"\r"]
ENDS = [b"\r\n", b"\r\n", b"\n", b"\r\r\n", b"\r", b""]
word = st.binary(max_size=30).filter(lambda b: b"\n" not in b)
lines = st.lists(
    st.tuples(st.one_of(st.sampled_from(TOKENS), word), st.sampled_from(ENDS)), max_size=25
).map(lambda parts: b"".join(token + end for token, end in parts))
bodies = st.one_of(
    # Well-formed: lines, a terminator, the next reply.
    st.tuples(
        lines, st.sampled_from([b".\r\n", b".\n", b"\r\n.\r\n", b""]), st.sampled_from(ENDS)
    ).map(lambda p: p[0] + p[1] + b"+OK bye" + p[2]),
    lines,
    st.binary(max_size=300),
)
cut_lists = st.lists(st.integers(min_value=1, max_value=400), max_size=12)


@given(
    st.sampled_from(["CAPA", "LIST", "UIDL"]),
    st.sampled_from([b"+OK\r\n", b"+OK 3 messages\n", b"-ERR no\r\n"]),
    bodies,
    cut_lists,
)
@example("UIDL", b"+OK\r\n", b"1 a\r\n..2 b\r\n.\r\r\n.x\n.\r\n+OK bye\r\n", [6, 7, 20, 21])
@example("UIDL", b"+OK\r\n", b"1 a\r\n" * 70 + b".\r\n+OK bye\r\n", [])  # over the size limit
@example("UIDL", b"+OK\r\n", b"xxxxxxxx\n" * 31 + b".\n", [])  # bare LFs count as CRLF
@example("UIDL", b"+OK\r\n", b"..xxxxxxx\r\n" * 30 + b".\r\n", [])  # stuffed dots do not
@example("UIDL", b"+OK\r\n", b"xxxxxxxx\r\n" * 30 + b".\r\n", [])  # at the size limit
@example("LIST", b"+OK\r\n", b"1 " + b"2" * 22 + b"\r\r\n.\r\n", [])  # at the line limit
@example("LIST", b"+OK\r\n", b"1 " + b"2" * 23 + b"\r\n.\r\n", [])  # over the line limit
@example("LIST", b"+OK\r\n", b".\r\n" + b"x" * 30, [3])  # a long line after the listing
@settings(max_examples=500, deadline=None)
def test_listing_blocks_match_lines(
    command: str, status: bytes, body: bytes, cuts: list[int]
) -> None:
    data = GREETING + status + body
    commands: list[tuple[str, ...]] = [(command,), ("QUIT",)]
    with small_limits():
        for splits in (cuts, list(range(1, len(data)))):
            expected = run(PerLineProtocol, commands, data, splits)
            assert run(POP3Protocol, commands, data, splits) == expected


@given(
    st.lists(
        st.tuples(st.one_of(st.sampled_from(TOKENS), word), st.sampled_from(ENDS[:4])),
        max_size=25,
    ),
    cut_lists,
)
@settings(max_examples=300, deadline=None)
def test_listing_is_the_same_however_split(
    parts: list[tuple[bytes, bytes]], cuts: list[int]
) -> None:
    # What a server sends for these lines: dot-stuffed, then the terminator.
    wire = b"".join((b"." if t.startswith(b".") else b"") + t + end for t, end in parts)
    data = GREETING + b"+OK\r\n" + wire + b".\r\n+OK bye\r\n"
    # The line end goes, and one CR before it.
    lines = [(t + end)[:-1] for t, end in parts]
    lines = [line[:-1] if line.endswith(b"\r") else line for line in lines]
    commands: list[tuple[str, ...]] = [("UIDL",), ("QUIT",)]
    whole = run(POP3Protocol, commands, data, [])
    assert whole[1] == Listing("UIDL", b"", lines)
    assert run(POP3Protocol, commands, data, cuts) == whole
    assert run(POP3Protocol, commands, data, list(range(1, len(data)))) == whole


@given(
    st.sampled_from([("RETR", "1"), ("TOP", "1", "0")]),
    st.sampled_from([b"+OK\r\n", b"+OK\n", b"-ERR no\r\n"]),
    bodies,
    cut_lists,
)
@example(("RETR", "1"), b"+OK\r\n", b"a\r\n..\r\n.\r\r\n..x\n.\n+OK bye\r\n", [5, 8, 9])
@example(("RETR", "1"), b"+OK\r\n", b"\r\n.\r", [4])
@settings(max_examples=500, deadline=None)
def test_message_blocks_match_lines(
    command: tuple[str, ...], status: bytes, body: bytes, cuts: list[int]
) -> None:
    data = GREETING + status + body
    commands = [command, ("QUIT",)]
    expected = run(PerLineProtocol, commands, data, cuts)
    assert run(POP3Protocol, commands, data, cuts) == expected


def test_big_listing_in_pieces() -> None:
    lines = [b"%d uid-%d" % (n, n * 7919) for n in range(1, 10_001)]
    lines[500] = b".." + lines[500]
    lines[7000] = b"7001 a\r"
    wire = GREETING + b"+OK\r\n" + b"".join(line + b"\r\n" for line in lines) + b".\r\n"
    expected = Listing("UIDL", b"", [line[1:] if line[:1] == b"." else line for line in lines])
    for size in (1, 7, 4096, 16384, len(wire)):
        got = run(POP3Protocol, [("UIDL",)], wire, list(range(size, len(wire), size)))
        assert got[1:] == [expected], size
