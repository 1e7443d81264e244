"""Hostile byte streams at every step of a session, fed to the blocking Client.

The server's side is a script of replies; at one protocol state the reply is
replaced by arbitrary bytes (random, built from POP3-ish tokens, or a mutated
correct reply), split at arbitrary points. Whatever comes, the client gives a
correct result or a clean FetchpopError: 75 (the stream ended or went silent)
or 76 (the server broke the protocol), or -- only when the bytes hold an -ERR
-- the code that -ERR's meaning calls for. Never another exception, never a
read after the end of the stream (which, on a socket, would be a hang).

The transport is a duck-typed in-memory object: the only mock in the suite.
"""

from __future__ import annotations

import collections
from typing import Any, cast

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fetchpop.errors import (
    AuthError,
    CapabilityError,
    FetchpopError,
    ServerError,
    ServerTimeoutError,
)
from fetchpop.pop3.client import Client, Refusal, retr_limit
from fetchpop.pop3.transport import Transport

MESSAGE_1 = b"Subject: one\r\n\r\nhello\r\n..dot\r\n.\r\n"  # ends at the terminator
MESSAGE_2 = b"Subject: two\r\n\r\n\r\n...\r\nlast line\r\n.\r\n"
BODY_1 = b"Subject: one\n\nhello\n.dot\n"
BODY_2 = b"Subject: two\n\n\n..\nlast line\n"
SIZE_1 = len(MESSAGE_1) - 3
SIZE_2 = len(MESSAGE_2) - 3

#: Each step's correct reply, in the order the session sends the commands.
CORRECT: dict[str, bytes] = {
    "greeting": b"+OK fuzz ready <1.2@fuzz.example>\r\n",
    "CAPA": b"+OK capability list follows\r\nUIDL\r\nUSER\r\nPIPELINING\r\n.\r\n",
    "USER": b"+OK send PASS\r\n",
    "PASS": b"+OK logged in\r\n",
    "UIDL": b"+OK\r\n1 uid-a\r\n2 uid-b\r\n.\r\n",
    "LIST": b"+OK 2 messages\r\n1 %d\r\n2 %d\r\n.\r\n" % (SIZE_1, SIZE_2),
    "RETR": b"+OK\r\n" + MESSAGE_1 + b"+OK\r\n" + MESSAGE_2,
    "DELE": b"+OK deleted\r\n+OK deleted\r\n",
    "QUIT": b"+OK bye\r\n",
}
STATES = list(CORRECT)
EXPECTED = {
    "uidl": [(1, "uid-a"), (2, "uid-b")],
    "sizes": {1: SIZE_1, 2: SIZE_2},
    "messages": [(1, BODY_1), (2, BODY_2)],
    "refused": [],
    "quit": True,  # two DELEs were sent
}


class MemoryTransport:
    """Plays a byte stream back in pieces; records what the client sends."""

    host = "fuzz.example"
    timeout = 5.0

    def __init__(self, pieces: list[bytes], *, hang: bool) -> None:
        self._pieces = collections.deque(p for p in pieces if p)
        self._hang = hang
        self._past_end = 0
        self.sent = bytearray()
        self.closed = False

    @property
    def is_tls(self) -> bool:
        return False

    def start_tls(self, context: Any, pinned: str | None = None) -> None:
        raise AssertionError("no STLS in this session")

    def send(self, data: bytes) -> None:
        assert not self.closed, "send after close"
        self.sent += data

    def recv(self, wait: float | None = None) -> bytes:
        if self._pieces:
            return self._pieces.popleft()
        self._past_end += 1
        # On a socket, reading again after EOF or a timeout would wait forever.
        assert self._past_end == 1, "client read on past the end of the stream"
        if self._hang:
            raise ServerTimeoutError(f"no reply from {self.host} for {self.timeout:g} s")
        return b""

    def close(self) -> None:
        self.closed = True


def run_session(transport: MemoryTransport) -> dict[str, Any]:
    """What fetchpop's sync does with a server, step by step, as far as it gets."""
    out: dict[str, Any] = {}
    client = Client(cast(Transport, transport))
    client.capa()
    client.user_pass("alice", "secret")
    out["uidl"] = client.uidl()
    out["sizes"] = sizes = client.sizes()
    window = 2 if client.has("PIPELINING") else 1
    todo = [(number, sizes.get(number)) for number, _ in out["uidl"]]
    out["messages"] = messages = []
    for number, body in client.retrieve(todo, window=window):
        if isinstance(body, Refusal):
            assert body.words.startswith("-ERR")
            messages.append((number, body))
            continue
        data = b"".join(body)
        limit = retr_limit(sizes.get(number))
        # Unstuffing and CRLF -> LF only shrink: the bound holds for the data too.
        assert limit is None or len(data) <= limit
        messages.append((number, data))
    out["refused"] = client.delete([number for number, _ in todo], window=window)
    out["quit"] = client.quit()
    return out


def check_result(out: dict[str, Any]) -> None:
    """A session that completed on odd input still gives well-formed results."""
    numbers = [number for number, _ in out["uidl"]]
    assert len(set(numbers)) == len(numbers)
    for number, uid in out["uidl"]:
        raw = uid.encode("latin-1")  # the server's bytes, kept as they came
        assert number >= 1 and raw and raw == raw.strip() and b"\n" not in raw
    assert all(n >= 1 and size >= 0 for n, size in out["sizes"].items())
    assert [n for n, _ in out["messages"]] == numbers
    # QUIT is confirmed when deletions hang on it, else not waited for.
    assert out["quit"] is bool(numbers)


# -- strategies --------------------------------------------------------------------

TOKENS = [
    b"+OK",
    b"+OK ",
    b"-ERR",
    b"-ERR [IN-USE] busy",
    b"-ERR [AUTH] wrong",
    b"-ERR [SYS/PERM] no",
    b"-ERR [SYS/TEMP] later",
    b"+ ",
    b"+OKAY",
    b".",
    b"..",
    b". ",
    b"1 uid-a",
    b"2 uid-b",
    b"1 uid-a x",
    b"1 ",
    b"0 zero",
    b"4294967296 huge",
    b"9" * 600 + b" long",
    b"1 20",
    b"2 -5",
    b"1 99999999999999999999",
    b"x" * 5000,
    b"\x00\xff\xfe",
    b"\x1b[2J",
    b"\xc3\xa9",
]
LINE_ENDS = [b"\r\n", b"\n", b"\r", b"", b"\r\r\n"]

structured = st.lists(
    st.tuples(
        st.one_of(st.sampled_from(TOKENS), st.binary(max_size=12)), st.sampled_from(LINE_ENDS)
    ),
    max_size=12,
).map(lambda parts: b"".join(token + end for token, end in parts))


@st.composite
def mutated(draw: st.DrawFn, correct: bytes) -> bytes:
    """The correct reply with a few cuts, insertions and replacements."""
    data = correct
    for _ in range(draw(st.integers(1, 3))):
        start = draw(st.integers(0, len(data)))
        end = draw(st.integers(start, min(len(data), start + 8)))
        data = (
            data[:start]
            + draw(st.one_of(st.binary(max_size=4), st.sampled_from(TOKENS[:12])))
            + data[end:]
        )
    return data


#: A status line, token lines and a terminator: shaped like a listing or message.
shaped = st.tuples(
    st.sampled_from([b"+OK\r\n", b"+OK 2 messages\r\n", b"+OK\n", b"-ERR no\r\n"]),
    st.lists(st.sampled_from(TOKENS), max_size=6),
    st.sampled_from([b".\r\n", b".\r\n", b".\r\n", b".\n", b"", b"\r\n.\r\n"]),
).map(lambda parts: parts[0] + b"".join(line + b"\r\n" for line in parts[1]) + parts[2])


def reply_for(state: str) -> st.SearchStrategy[bytes]:
    return st.one_of(
        st.just(CORRECT[state]),
        st.binary(max_size=200),
        structured,
        shaped,
        shaped,
        shaped.map(lambda reply: reply * 2),  # for the two RETRs and DELEs
        mutated(CORRECT[state]),
        structured.map(lambda extra: CORRECT[state] + extra),  # trailing garbage
    )


@st.composite
def scripts(draw: st.DrawFn, state: str) -> tuple[bytes, bytes, list[bytes], bool]:
    """(whole stream, the fuzzed reply, the stream in pieces, hang at the end)."""
    at = STATES.index(state)
    fuzz = draw(reply_for(state))
    stream = b"".join(CORRECT[s] for s in STATES[:at]) + fuzz
    if draw(st.booleans()):
        stream += b"".join(CORRECT[s] for s in STATES[at + 1 :])
    cuts = sorted(set(draw(st.lists(st.integers(1, max(1, len(stream) - 1)), max_size=8))))
    pieces = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
    return stream, fuzz, pieces, draw(st.booleans())


# -- the property ------------------------------------------------------------------


@pytest.mark.parametrize("state", STATES)
@given(data=st.data())
@settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
def test_any_server_bytes_give_a_result_or_a_clean_error(state: str, data: st.DataObject) -> None:
    stream, fuzz, pieces, hang = data.draw(scripts(state))
    transport = MemoryTransport(pieces, hang=hang)
    try:
        out = run_session(transport)
    except FetchpopError as exc:
        code = int(exc.exit_code)
        if code in (69, 77):
            # Only an -ERR can mean wrong credentials (77), or no UIDL or a
            # permanent refusal (69), as its response code says (RFC 2449, 3206).
            assert b"-ERR" in fuzz.upper(), f"{type(exc).__name__} {code}: {exc}"
            assert isinstance(exc, ServerError | AuthError | CapabilityError)
        else:
            assert code in (75, 76), f"{type(exc).__name__} {code}: {exc}"
        assert str(exc), "an error must say what happened"
        return
    check_result(out)
    if stream == b"".join(CORRECT.values()):
        assert out == EXPECTED
        assert transport.closed


@pytest.mark.parametrize("state", STATES)
def test_correct_stream_one_byte_at_a_time(state: str) -> None:
    stream = b"".join(CORRECT.values())
    transport = MemoryTransport([stream[i : i + 1] for i in range(len(stream))], hang=False)
    assert run_session(transport) == EXPECTED
    assert transport.sent.startswith(b"CAPA\r\nUSER alice\r\nPASS secret\r\nUIDL\r\nLIST\r\n")
    # PIPELINING was offered: both RETRs went out before the first reply was read.
    assert b"RETR 1\r\nRETR 2\r\n" in transport.sent


@pytest.mark.parametrize(
    ("state", "reply", "code"),
    [
        ("greeting", b"-ERR [SYS/TEMP] too busy\r\n", 75),
        ("PASS", b"-ERR [IN-USE] locked\r\n", 75),
        ("PASS", b"-ERR [LOGIN-DELAY] wait\r\n", 75),
        ("PASS", b"-ERR [AUTH] wrong\r\n", 77),
        ("PASS", b"-ERR wrong\r\n", 77),
        ("PASS", b"-ERR [SYS/PERM] disabled\r\n", 69),
        ("UIDL", b"-ERR unknown command\r\n", 69),
        ("UIDL", b"+OK\r\n1 a\r\n1 b\r\n.\r\n", 76),
        ("UIDL", b"+OK\r\n0 a\r\n.\r\n", 76),
        ("UIDL", b"+OK\r\n" + b"9" * 600 + b" a\r\n.\r\n", 76),
        ("LIST", b"+OK\r\n4294967296 1\r\n.\r\n", 76),
        ("RETR", b"+OK\r\n" + b"x" * 70_000 + b"\r\n.\r\n", 76),
        ("QUIT", b"-ERR [SYS/TEMP] could not expunge\r\n", 75),
    ],
)
def test_known_bad_replies(state: str, reply: bytes, code: int) -> None:
    at = STATES.index(state)
    stream = b"".join(CORRECT[s] for s in STATES[:at]) + reply
    with pytest.raises(FetchpopError) as caught:
        run_session(MemoryTransport([stream], hang=False))
    assert caught.value.exit_code == code, caught.value
