"""What identifies a message besides its UIDL (fetchpop/sync/ident.py), on bytes."""

from __future__ import annotations

import itertools

from hypothesis import given
from hypothesis import strategies as st

from fetchpop.sync.ident import MAX_HEADER, HeaderReader, ident_of

HEADER = b"From: a@example.org\nMessage-ID:\n <1.x@example.org>\nSubject: hi\n"
MESSAGE = HEADER + b"\nbody\n\nmore\n"


def read(chunks: list[bytes]) -> str:
    reader = HeaderReader()
    for chunk in chunks:
        reader.feed(chunk)
    return reader.ident()


def test_the_message_id_identifies_even_when_folded() -> None:
    assert ident_of(HEADER) == "mid:<1.x@example.org>"


@given(st.lists(st.integers(0, len(MESSAGE)), max_size=8))
def test_any_split_of_the_stream_gives_the_same_identity(cuts: list[int]) -> None:
    bounds = [0, *sorted(cuts), len(MESSAGE)]
    chunks = [MESSAGE[a:b] for a, b in itertools.pairwise(bounds)]
    assert read(chunks) == read([MESSAGE]) == ident_of(HEADER)


def test_top_0_and_the_whole_message_agree() -> None:
    plain = b"Subject: no id\nDate: Mon, 1 Jan 2024 10:00:00 +0000\n"
    assert read([plain + b"\n"]) == read([plain + b"\nthe body\n"])
    assert read([plain + b"\n"]).startswith("hdr:")


def test_fields_a_server_or_reader_adds_later_do_not_count() -> None:
    plain = b"Subject: no id\nDate: Mon, 1 Jan 2024 10:00:00 +0000\n"
    later = b"Status: RO\nX-UIDL: abc\n" + plain + b"X-Status: A\nContent-Length: 12\n"
    assert ident_of(plain) == ident_of(later)
    assert ident_of(plain) != ident_of(plain.replace(b"Mon, 1", b"Tue, 2"))


def test_an_endless_header_is_cut_the_same_way_every_time() -> None:
    endless = b"X-Junk: " + b"j" * (3 * MAX_HEADER)
    assert read([endless]) == read([endless[: MAX_HEADER + 10], endless[MAX_HEADER + 10 :]])
    assert read([b"\nonly a body\n"]) == ident_of(b"")
