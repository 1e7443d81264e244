"""UIDL and LIST parsing (fetchpop/pop3/listings.py): the whole-list fast path
against the line-by-line one.

parse_uidl and parse_list take the fast path when every line looks usual and
fall back to the line-by-line parsers otherwise. For any lines,
the answer must be what the line-by-line parser gives: the same result, or
the same error with the same message.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from fakepop import FakePOP3
from hypothesis import example, given, settings
from hypothesis import strategies as st
from runner import Home, account_toml, maildir_messages

from fetchpop.errors import ExitCode, ProtocolError
from fetchpop.pop3 import listings as parsers
from fetchpop.pop3.listings import MAX_MESSAGE_NUMBER, parse_capa, parse_list, parse_uidl


def outcome(parse: Callable[[list[bytes]], Any], lines: list[bytes]) -> object:
    try:
        return parse(lines)
    except Exception as exc:
        return type(exc), str(exc)


def uidl_fast(lines: list[bytes]) -> list[tuple[int, str]] | None:
    """The compact fast path's result as the line-by-line one gives it."""
    fast = parsers._uidl_fast(lines)
    return None if fast is None else list(zip(fast.numbers, fast.ids(), strict=True))


def sizes_fast(lines: list[bytes]) -> dict[int, int] | None:
    fast = parsers._sizes_fast(lines)
    return None if fast is None else fast.mapping()


def as_blocks(lines: list[bytes]) -> parsers.Lines | None:
    """The lines as the protocol hands them over: in blocks (two here)."""
    if any(b"\n" in line for line in lines):
        return None  # (no line from the protocol holds one)
    blocks = parsers.Lines()
    half = len(lines) // 2
    blocks.add(lines[:half])
    blocks.add(lines[half:])
    assert blocks == lines
    return blocks


def check_uidl(lines: list[bytes]) -> None:
    expected = outcome(parsers._uidl_by_line, lines)
    fast = uidl_fast(lines)
    assert fast is None or fast == expected
    assert outcome(parse_uidl, lines) == expected
    blocks = as_blocks(lines)
    if blocks is not None:
        assert outcome(parse_uidl, blocks) == expected
    compact = outcome(parsers.parse_uidls, lines)
    if isinstance(compact, parsers.UIDLs):  # the numbers compact, the same ids
        assert list(zip(compact.numbers, compact.ids(), strict=True)) == expected
        assert isinstance(compact.numbers, range) == (
            [n for n, _ in expected] == list(range(1, len(expected) + 1))
        )
    else:
        assert compact == expected


def check_sizes(lines: list[bytes]) -> None:
    expected = outcome(parsers._sizes_by_line, lines)
    fast = sizes_fast(lines)
    assert fast is None or fast == expected
    assert outcome(parse_list, lines) == expected
    blocks = as_blocks(lines)
    if blocks is not None:
        assert outcome(parse_list, blocks) == expected


NUMBERS = [b"1", b"2", b"7", b"0", b"00", b"01", b"0000000007", b"00000000007", b"2147483647"]
NUMBERS += [b"2147483648", b"9999999999", b"4294967296", b"99999999999999999999", b"+1", b"-1"]
NUMBERS += [b"1_0", b"\xb2", b"\xd9\xa1", b""]
SPACES = [b" ", b" ", b" ", b"  ", b"\t", b"\x0b", b"\x0c", b"\r", b"\xa0", b"\x85", b"\x1c", b""]
WORDS = [b"uid-a", b"uid-b", b"20", b"0", b"a b", b"\xe9t\xe9", b"\x00", b".", b"", b"\n", b"1 2"]
text = st.binary(max_size=10)
line = st.one_of(
    st.tuples(
        st.sampled_from(SPACES[-2:]),  # leading: mostly none
        st.one_of(st.sampled_from(NUMBERS), text),
        st.sampled_from(SPACES),
        st.one_of(st.sampled_from(WORDS), text),
        st.sampled_from([b"", b"", b"", b" ", b"\t", b" x", b" 5", b"\r", b"\xa0"]),
    ).map(b"".join),
    text,
)
# Mostly well-formed listings (the fast path), with a few odd lines mixed in.
usual = st.lists(st.integers(1, 40), max_size=30).map(
    lambda ns: [b"%d uid-%d" % (n, n) for n in ns]
)
listings = st.one_of(
    st.lists(line, max_size=8),
    st.tuples(usual, st.lists(st.tuples(st.integers(0, 30), line), max_size=2)).map(
        lambda p: _insert(p[0], p[1])
    ),
)


def _insert(lines: list[bytes], extra: list[tuple[int, bytes]]) -> list[bytes]:
    out = list(lines)
    for at, odd in extra:
        out.insert(min(at, len(out)), odd)
    return out


@given(listings)
@example([])
@example([b"1 a", b"01 b"])  # a number twice, written two ways
@example([b"00000000001 a"])  # 11 digits: refused even though it is 1
@example([b"1 a b"])  # a UID with a space in it: kept
@example([b"1\ta"])
@example([b"1 \xa0a"])  # not whitespace to bytes.split()
@example([b"1 a\n2 b"])
@example([b"1 a", b"2"])
@example([b"1 ", b" a"])  # one space per line, but in the wrong places
@example([b"\xb2 a"])  # a digit to str.isdigit(), not to bytes.isdigit()
@example([b"%d a" % MAX_MESSAGE_NUMBER, b"%d b" % (MAX_MESSAGE_NUMBER + 1)])
@settings(max_examples=1000, deadline=None)
def test_uidl_fast_path_agrees_with_line_by_line(lines: list[bytes]) -> None:
    check_uidl(lines)


@given(listings.map(lambda lines: [ln.replace(b"uid-", b"") for ln in lines]))
@example([b"1 20", b"1 30"])  # the last size wins, both ways
@example([b"1 20 extra"])
@example([b"1 ", b" 20"])
@example([b"1 2" + b"0" * 30])
@example([b"1 -20"])
@example([b"1 \xb2"])
@example([b"0 20"])
@settings(max_examples=1000, deadline=None)
def test_sizes_fast_path_agrees_with_line_by_line(lines: list[bytes]) -> None:
    check_sizes(lines)


@given(listings)
@example([b"1 a", b"2 b", b"3 c", b"2 d"])  # a repeat in another chunk
@example([b"4 a", b"5 b", b"6 c", b"1 d", b"2 e"])  # out of order, no repeat
@example([b"1 a", b"2 b", b"3 c", b"3 d"])  # a repeat in the same chunk
@example([b"1 a", b"2 b", b"3 c", b"4 d", b"x"])  # a bad line in the second chunk
@settings(max_examples=500, deadline=None)
def test_fast_paths_agree_across_chunks(lines: list[bytes]) -> None:
    """The fast paths take a chunk of lines at a time; three here, not thousands."""
    saved, parsers._CHUNK = parsers._CHUNK, 3
    try:
        check_uidl(lines)
        check_sizes([ln.replace(b"uid-", b"") for ln in lines])
    finally:
        parsers._CHUNK = saved


def test_a_repeat_across_chunks_is_still_named() -> None:
    lines = [b"%d uid-%d" % (n, n) for n in range(1, 20_001)] + [b"7 again"]
    with pytest.raises(ProtocolError, match=r"^UIDL lists message 7 twice$"):
        parse_uidl(lines)


@pytest.mark.parametrize(("parse", "what"), [(parse_uidl, "UIDL"), (parse_list, "LIST")])
def test_a_maildrop_of_too_many_messages_is_refused(
    monkeypatch: pytest.MonkeyPatch, parse: Callable[[list[bytes]], Any], what: str
) -> None:
    """Past MAX_MESSAGES a listing is refused with one line saying so (status 76)."""
    monkeypatch.setattr(parsers, "MAX_MESSAGES", 1000)
    assert len(parse([b"%d %d" % (n, n) for n in range(1, 1001)])) == 1000
    with pytest.raises(ProtocolError) as info:
        parse([b"%d %d" % (n, n) for n in range(1, 1002)])
    assert str(info.value) == (
        f"the server's {what} lists 1,001 messages; fetchpop takes at most 1,000 "
        "in one mailbox (move or delete some with another client)"
    )
    assert info.value.exit_code == ExitCode.PROTOCOL


CAPPED_FETCHPOP = """\
import runpy, sys
import fetchpop.pop3.listings
fetchpop.pop3.listings.MAX_MESSAGES = 3
sys.argv = ["fetchpop", *sys.argv[1:]]
runpy.run_module("fetchpop", run_name="__main__", alter_sys=True)
"""


def test_sync_refuses_a_maildrop_over_the_cap(tmp_path: Path) -> None:
    """The real command, with the cap lowered to 3, against a maildrop of 4:
    one line, status 76, nothing delivered and nothing deleted."""
    home = Home(tmp_path / "home")
    mail = tmp_path / "Mail"
    messages = [b"Subject: %d\r\n\r\nbody\r\n" % n for n in range(4)]
    with FakePOP3(messages) as server:
        home.write_config(
            account_toml(
                "acct",
                host=server.host,
                port=server.port,
                tls="off",
                user="alice",
                password="secret",
                deliver=f"maildir:{mail}",
                keep=False,
                timeout=10,
            )
        )
        proc = subprocess.run(
            [sys.executable, "-c", CAPPED_FETCHPOP, "sync"],
            env=home.env(),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        commands = server.all_commands()
    assert proc.returncode == 76, proc
    assert proc.stderr.splitlines()[-1] == (
        "fetchpop: acct: the server's UIDL lists more than 3 messages; fetchpop takes at "
        "most 3 in one mailbox (move or delete some with another client)"
    ), proc.stderr
    assert not any(c.startswith((b"RETR", b"DELE")) for c in commands)
    assert maildir_messages(mail) == []


def test_the_message_cap_is_a_million() -> None:
    assert parsers.MAX_MESSAGES == 1_000_000


def test_usual_listings_take_the_fast_path() -> None:
    uidl = [b"%d %08x-%d" % (n, n * 7919, n) for n in range(1, 10_001)]
    sizes = [b"%d %d" % (n, 3000 + n) for n in range(1, 10_001)]
    expected_uidl = [(n, uid.split(b" ")[1].decode()) for n, uid in enumerate(uidl, 1)]
    assert uidl_fast(uidl) == expected_uidl == parsers._uidl_by_line(uidl)
    assert sizes_fast(sizes) == {n: 3000 + n for n in range(1, 10_001)}
    # The usual numbering costs no memory: a range.
    assert parsers.parse_uidls(uidl).numbers == range(1, 10_001)
    assert parsers.parse_sizes(sizes).numbers == range(1, 10_001)
    # Latin-1 UIDs stay byte for byte, and take the fast path too.
    assert uidl_fast([b"3 \xe9\x7f\xff"]) == [(3, "\xe9\x7f\xff")]


@pytest.mark.parametrize(
    ("lines", "error"),
    [
        ([b"1 a", b"x b"], "malformed UIDL line: x b"),
        ([b"1 a", b"1 b"], "UIDL lists message 1 twice"),
        ([b"1 a", b"0 b"], r"malformed UIDL line \(bad message number\): 0 b"),
        ([b"1 a", b"2"], "malformed UIDL line: 2"),
    ],
)
def test_uidl_errors_name_the_first_bad_line(lines: list[bytes], error: str) -> None:
    with pytest.raises(ProtocolError, match=error):
        parse_uidl(lines)


def test_capa_names_are_upper_case_and_keep_their_arguments() -> None:
    lines = [b"top", b"SASL PLAIN SCRAM-SHA-256", b"", b"  ", b"UTF8 USER", b"IMPLEMENTATION x y"]
    assert parse_capa(lines) == {
        "TOP": [],
        "SASL": ["PLAIN", "SCRAM-SHA-256"],
        "UTF8": ["USER"],
        "IMPLEMENTATION": ["x", "y"],
    }
    assert parse_capa([]) == {}


@pytest.mark.parametrize("size", [b"1099511627777", b"9" * 14, b"1" * 4000])
def test_an_absurd_size_is_a_protocol_error(size: bytes) -> None:
    """LIST's size bounds the RETR: a 4,000-digit one would let a server fill the disk."""
    with pytest.raises(ProtocolError, match="absurd size"):
        parse_list([b"1 10", b"2 " + size])


def test_a_terabyte_is_still_a_size() -> None:
    assert parse_list([b"1 1099511627776"]) == {1: 2**40}


def test_capa_is_sanitised_once_at_parse_time() -> None:
    caps = parse_capa([b"SASL X\x1b]0;PWNED\x07 \x1b[2J\x1b[31mEVIL", b"IMPLEMENTATION \x9b1m"])
    assert caps == {"SASL": ["X?]0;PWNED?", "?[2J?[31mEVIL"], "IMPLEMENTATION": ["\ufffd1m"]}
