"""Bytes-level tests of the sans-IO POP3 protocol: every reader is fed the whole
buffer, one byte at a time, and in random splits, and must give the same events."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fetchpop.errors import ConnectionLostError, LocalProtocolError, ProtocolError
from fetchpop.pop3.protocol import (
    MESSAGE_CHUNK,
    NEED_DATA,
    Continuation,
    Event,
    Greeting,
    Listing,
    MessageData,
    MessageEnd,
    MessageStart,
    POP3Protocol,
    Reply,
    State,
)

GREETING = b"+OK POP3 ready <1896.697170952@dbc.mtview.ca.us>\r\n"


def feed(proto: POP3Protocol, data: bytes, splits: list[int] | None = None) -> list[Event]:
    """Feed *data* in pieces (at *splits*, or whole) and collect events, merging data."""
    events: list[Event] = []
    cuts = [0, *(splits or []), len(data)]
    for start, end in itertools.pairwise(cuts):
        if end > start:
            proto.receive_data(data[start:end])
        while (event := proto.next_event()) is not NEED_DATA:
            assert not isinstance(event, type(NEED_DATA))
            events.append(event)
    return _merge(events)


def _merge(events: list[Event]) -> list[Event]:
    out: list[Event] = []
    for event in events:
        if isinstance(event, MessageData) and out and isinstance(out[-1], MessageData):
            out[-1] = MessageData(out[-1].data + event.data)
        else:
            out.append(event)
    return out


def session(*commands: tuple[str, ...]) -> POP3Protocol:
    proto = POP3Protocol()
    for cmd in commands:
        proto.send(*cmd)
    return proto


def all_ways(data: bytes, *commands: tuple[str, ...]) -> list[Event]:
    """Events for *data* fed whole, byte by byte; asserts they agree."""
    whole = feed(session(*commands), data)
    bytewise = feed(session(*commands), data, list(range(1, len(data))))
    assert whole == bytewise
    return whole


def test_greeting_with_apop_timestamp() -> None:
    events = all_ways(GREETING)
    assert events == [
        Greeting(
            True,
            b"POP3 ready <1896.697170952@dbc.mtview.ca.us>",
            b"<1896.697170952@dbc.mtview.ca.us>",
        )
    ]


def test_greeting_without_timestamp_and_err_greeting() -> None:
    assert all_ways(b"+OK hi\r\n") == [Greeting(True, b"hi", None)]
    assert all_ways(b"-ERR [SYS/TEMP] busy\r\n") == [
        Greeting(False, b"[SYS/TEMP] busy", None, "SYS/TEMP")
    ]


def test_err_reply_carries_response_code() -> None:
    data = GREETING + b"-ERR [IN-USE] mailbox locked\r\n"
    events = all_ways(data, ("PASS", "x"))
    assert events[1] == Reply("PASS", False, b"[IN-USE] mailbox locked", "IN-USE")


def test_auth_subcode() -> None:
    data = GREETING + b"-ERR [AUTH] Invalid credentials\r\n"
    assert all_ways(data, ("PASS", "x"))[1].code == "AUTH"  # type: ignore[union-attr]


def test_listing_unstuffs_and_collects_lines() -> None:
    data = GREETING + b"+OK\r\n1 abc\r\n..2 def\r\n.\r\n"
    events = all_ways(data, ("UIDL",))
    assert events[1] == Listing("UIDL", b"", [b"1 abc", b".2 def"])


def test_single_message_list_is_single_line() -> None:
    data = GREETING + b"+OK 1 120\r\n"
    assert all_ways(data, ("LIST", "1"))[1] == Reply("LIST", True, b"1 120")


def test_capa_error_is_a_reply() -> None:
    data = GREETING + b"-ERR unknown command\r\n"
    assert all_ways(data, ("CAPA",))[1] == Reply("CAPA", False, b"unknown command")


MESSAGE_WIRE = (
    b"+OK 99 octets\r\n"
    b"Subject: dots\r\n\r\n"
    b"..\r\n"  # a line holding one "."
    b"...\r\n"  # ".."
    b".x\r\n"  # a stuffed-or-not ".x" stays ".x" when the server sent it unstuffed
    b"..x\r\n"
    b"bare\rCR\r\n"
    b"From here\r\n"
    b".\r\n"
)
MESSAGE_LOCAL = b"Subject: dots\n\n.\n..\nx\n.x\nbare\rCR\nFrom here\n"


def test_message_is_unstuffed_and_lf_terminated() -> None:
    events = all_ways(GREETING + MESSAGE_WIRE, ("RETR", "1"))
    assert events[1] == MessageStart("RETR", b"99 octets")
    assert events[2] == MessageData(MESSAGE_LOCAL)
    assert events[3] == MessageEnd(len(MESSAGE_WIRE) - len(b"+OK 99 octets\r\n"))


def test_empty_message() -> None:
    events = all_ways(GREETING + b"+OK\r\n.\r\n", ("RETR", "1"))
    assert events[1:] == [MessageStart("RETR", b""), MessageEnd(3)]


def test_bare_lf_server() -> None:
    wire = GREETING + b"+OK\nline one\n..dot\n.\n+OK bye\n"
    events = all_ways(wire, ("RETR", "1"), ("QUIT",))
    assert events[2] == MessageData(b"line one\n.dot\n")
    assert events[4] == Reply("QUIT", True, b"bye")


def test_pipelined_replies_come_in_order() -> None:
    wire = (
        GREETING
        + b"+OK\r\na\r\n.\r\n"
        + b"-ERR [SYS/TEMP] no such message\r\n"
        + b"+OK\r\nb\r\n.\r\n"
        + b"+OK deleted\r\n"
    )
    events = all_ways(wire, ("RETR", "1"), ("RETR", "2"), ("RETR", "3"), ("DELE", "1"))
    kinds = [type(e).__name__ for e in events]
    assert kinds == [
        "Greeting",
        "MessageStart",
        "MessageData",
        "MessageEnd",
        "Reply",
        "MessageStart",
        "MessageData",
        "MessageEnd",
        "Reply",
    ]
    assert events[4] == Reply("RETR", False, b"[SYS/TEMP] no such message", "SYS/TEMP")


def test_overlong_message_line_is_streamed_not_buffered() -> None:
    line = b"x" * (MESSAGE_CHUNK * 3 + 7)
    wire = GREETING + b"+OK\r\n." + line + b"\r\n.\r\n"
    proto = session(("RETR", "1"))
    events = feed(proto, wire, list(range(0, len(wire), 65536))[1:])
    assert events[2] == MessageData(line + b"\n")


def test_sasl_continuations() -> None:
    wire = GREETING + b"+ \r\n+ dGVzdA==\r\n+OK logged in\r\n"
    events = all_ways(wire, ("AUTH", "PLAIN"))
    assert events[1:] == [
        Continuation(b""),
        Continuation(b"dGVzdA=="),
        Reply("AUTH", True, b"logged in"),
    ]


def test_garbage_status_line_is_protocol_error() -> None:
    proto = session(("STAT",))
    with pytest.raises(ProtocolError, match="unexpected reply to STAT"):
        feed(proto, GREETING + b"HELLO THERE\r\n")
    with pytest.raises(LocalProtocolError):
        proto.next_event()


def test_overlong_status_line_is_protocol_error_without_newline() -> None:
    proto = session(("STAT",))
    with pytest.raises(ProtocolError, match="longer than"):
        feed(proto, GREETING + b"+OK " + b"a" * 10000)


def test_data_after_stls_ok_is_injection() -> None:
    proto = session(("STLS",))
    with pytest.raises(ProtocolError, match="after STLS"):
        feed(proto, GREETING + b"+OK begin TLS\r\n+OK injected\r\n")


def test_unsolicited_data_is_protocol_error() -> None:
    proto = POP3Protocol()
    with pytest.raises(ProtocolError, match="nobody asked for"):
        feed(proto, GREETING + b"+OK surprise\r\n")


def test_eof_mid_message_is_connection_lost() -> None:
    proto = session(("RETR", "1"))
    feed(proto, GREETING + b"+OK\r\nhalf a mess")
    proto.receive_data(b"")
    with pytest.raises(ConnectionLostError, match="RETR"):
        while proto.next_event() is not NEED_DATA:
            pass


def test_eof_when_idle_is_not_an_error() -> None:
    proto = POP3Protocol()
    feed(proto, GREETING)
    proto.receive_data(b"")
    assert proto.next_event() is NEED_DATA


def test_retr_larger_than_announced_is_refused() -> None:
    proto = POP3Protocol()
    proto.send("RETR", "1", max_octets=100)
    with pytest.raises(ProtocolError, match="larger than"):
        feed(proto, GREETING + b"+OK\r\n" + b"y" * 50 + b"\r\n" + b"z" * 80 + b"\r\n.\r\n")


def test_command_with_newline_is_refused() -> None:
    with pytest.raises(LocalProtocolError):
        POP3Protocol().send("USER", "a\r\nDELE 1")


# -- properties -------------------------------------------------------------------


def stuff(message: bytes) -> bytes:
    """What a server sends for a message with LF line ends (RFC 1939 section 3)."""
    lines = message.split(b"\n")
    if lines[-1] == b"":
        lines.pop()
    out = b"".join((b"." + ln if ln.startswith(b".") else ln) + b"\r\n" for ln in lines)
    return b"+OK\r\n" + out + b".\r\n"


line_text = st.binary(max_size=40).map(lambda b: b.replace(b"\n", b"").replace(b"\r", b""))
messages = st.lists(
    st.one_of(line_text, st.sampled_from([b".", b"..", b".x", b"From x", b""])), max_size=30
).map(lambda lines: b"".join(ln + b"\n" for ln in lines))


@given(messages, st.lists(st.integers(min_value=1, max_value=400), max_size=10))
@settings(max_examples=300, deadline=None)
def test_any_message_any_split_round_trips(message: bytes, cuts: list[int]) -> None:
    wire = GREETING + stuff(message) + b"+OK bye\r\n"
    splits = sorted({c for c in cuts if c < len(wire)})
    events = feed(session(("RETR", "1"), ("QUIT",)), wire, splits)
    body = b"".join(e.data for e in events if isinstance(e, MessageData))
    assert body == message
    assert isinstance(events[-1], Reply) and events[-1].command == "QUIT"


@given(st.binary(max_size=600), st.sampled_from(["STAT", "UIDL", "RETR", "AUTH", "CAPA", "STLS"]))
@settings(max_examples=400, deadline=None)
def test_arbitrary_bytes_give_events_or_protocol_error(garbage: bytes, command: str) -> None:
    proto = session((command,) if command not in ("RETR",) else (command, "1"))
    try:
        feed(proto, GREETING + garbage)
        proto.receive_data(b"")
        while proto.next_event() is not NEED_DATA:
            pass
    except (ProtocolError, ConnectionLostError):
        pass


def test_an_event_equals_only_an_event_of_its_own_type() -> None:
    # Events are tuples underneath; a test comparing them must still tell
    # a message's data from a SASL challenge with the same bytes.
    assert MessageData(b"x") == MessageData(b"x")
    assert MessageData(b"x") != Continuation(b"x")
    assert MessageData(b"x") != (b"x",)
    assert MessageStart("RETR", b"") != ("RETR", b"")
    assert len({MessageData(b"x"), MessageData(b"x"), MessageEnd(3)}) == 2


# --- the session state and its barriers -------------------------------------------


@pytest.mark.parametrize(
    "barrier", [("STLS",), ("PASS", "x"), ("APOP", "u", "d" * 32), ("AUTH", "PLAIN")]
)
def test_nothing_goes_behind_stls_or_a_login_before_its_reply(barrier: tuple[str, ...]) -> None:
    proto = session(("CAPA",), ("USER", "u"), barrier)  # before it: allowed
    for command in [("CAPA",), ("UIDL",), ("QUIT",)]:
        with pytest.raises(LocalProtocolError, match=f"behind {barrier[0]} before its reply"):
            proto.send(*command)
    feed(proto, GREETING + b"+OK\r\n.\r\n+OK\r\n-ERR no\r\n")
    assert proto.state is State.AUTHORIZATION  # refused: still logging in
    proto.send("QUIT")  # the reply came: anything may follow


@pytest.mark.parametrize("login", [("PASS", "x"), ("APOP", "u", "d" * 32)])
def test_a_login_answered_ok_starts_the_transaction_state(login: tuple[str, ...]) -> None:
    proto = session(("USER", "u"), login)
    assert proto.state is State.AUTHORIZATION
    feed(proto, GREETING + b"+OK\r\n+OK logged in\r\n")
    assert proto.state is State.TRANSACTION
    proto.send("UIDL")
    proto.send("QUIT")
    assert proto.state is State.UPDATE
    with pytest.raises(LocalProtocolError, match="after QUIT"):
        proto.send("NOOP")


def test_a_sasl_exchange_is_answered_through_its_barrier() -> None:
    proto = session(("AUTH", "PLAIN"))
    events = feed(proto, GREETING + b"+ \r\n")
    assert events[-1] == Continuation(b"")
    assert proto.send_sasl(b"AGEAYg==") == b"AGEAYg==\r\n"
    feed(proto, b"+OK welcome\r\n")
    assert proto.state is State.TRANSACTION
