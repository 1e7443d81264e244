"""Planning (fetchpop/sync/plan.py), directly: pure functions, no server, no files."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from fetchpop.config import Account
from fetchpop.deliver import DeliverySpec
from fetchpop.errors import ProtocolError
from fetchpop.sync.plan import (
    DAY,
    MAX_ATTEMPTS,
    RESET_MIN_UNKNOWN,
    Known,
    Seen,
    ServerMessage,
    make_plan,
    merge_listings,
    uidl_reset,
)

NOW = 1_800_000_000.0


def account(**keys: object) -> Account:
    base = Account(
        name="home",
        host="pop.example.org",
        user="alice",
        port=995,
        tls="implicit",
        deliver=DeliverySpec("maildir", Path("/nonexistent")),
    )
    return dataclasses.replace(base, **keys)  # type: ignore[arg-type]


def messages(*uidls: str, size: int = 100) -> list[ServerMessage]:
    return [ServerMessage(n, u, size) for n, u in enumerate(uidls, 1)]


def uidls(items: list[ServerMessage] | list[tuple[ServerMessage, str]]) -> list[str]:
    return [i[0].uidl if isinstance(i, tuple) else i.uidl for i in items]


# -- merge_listings ---------------------------------------------------------------


def test_merge_without_repeats() -> None:
    merged, repeats = merge_listings([(1, "a"), (2, "b")], {1: 10, 2: 20})
    assert merged == [ServerMessage(1, "a", 10), ServerMessage(2, "b", 20)]
    assert repeats == 0


def test_repeated_uidls_get_keys_that_no_real_uidl_can_have() -> None:
    merged, repeats = merge_listings(
        [(1, "x"), (2, "y"), (3, "x"), (4, "x")], {1: 1, 2: 2, 3: 3, 4: 4}
    )
    assert [m.uidl for m in merged] == ["x", "y", "x\n#2", "x\n#3"]
    assert [m.shared for m in merged] == ["x", None, "x", "x"]
    assert repeats == 2


def test_a_message_without_a_size_is_a_protocol_error() -> None:
    with pytest.raises(ProtocolError, match="LIST does not list message 2"):
        merge_listings([(1, "a"), (2, "b")], {1: 10})


# -- make_plan ---------------------------------------------------------------------


def test_new_messages_are_fetched_and_known_ones_left_with_keep() -> None:
    plan = make_plan(account(), messages("a", "b", "c"), Known(seen=Seen.of({"b": NOW})), now=NOW)
    assert uidls(plan.fetch) == ["a", "c"]
    assert plan.delete == [] and plan.skip == []


def test_keep_false_deletes_what_is_recorded_and_only_that() -> None:
    known = Known(seen=Seen.of({"a": NOW, "b": NOW}), undelivered={"b"})
    plan = make_plan(account(keep=False), messages("a", "b", "c"), known, now=NOW)
    assert uidls(plan.fetch) == ["c"]
    # "b" was marked seen (seen mark), never delivered here: never deleted.
    assert [(m.uidl, why) for m, why in plan.delete] == [("a", "keep = false")]
    fresh = make_plan(account(keep=False), messages("a", "b", "c"), known, now=NOW, fresh={"c"})
    assert uidls(fresh.delete) == ["a", "c"]


def test_delete_after_days_counts_from_the_first_fetch() -> None:
    known = Known(seen=Seen.of({"old": NOW - 31 * DAY, "young": NOW - 29 * DAY}))
    plan = make_plan(account(delete_after_days=30), messages("old", "young"), known, now=NOW)
    assert [(m.uidl, why) for m, why in plan.delete] == [("old", "first fetched 31 days ago")]


def test_copies_of_a_repeated_uidl_are_deleted_together() -> None:
    merged, _ = merge_listings([(1, "x"), (2, "x")], {1: 1, 2: 2})
    one_recorded = Known(seen=Seen.of({"x": NOW}))
    plan = make_plan(account(keep=False), merged, one_recorded, now=NOW)
    assert uidls(plan.fetch) == ["x\n#2"] and plan.delete == []
    both = Known(seen=Seen.of({"x": NOW, "x\n#2": NOW}))
    assert uidls(make_plan(account(keep=False), merged, both, now=NOW).delete) == ["x", "x\n#2"]


def test_skips_max_size_poison_and_max_messages() -> None:
    msgs = [ServerMessage(1, "big", 5000), *messages("p", "a", "b", size=10)]
    msgs[1:] = [ServerMessage(n + 2, m.uidl, m.size) for n, m in enumerate(msgs[1:])]
    known = Known(problems={"p": (MAX_ATTEMPTS, "MDA said no")})
    plan = make_plan(account(max_size=1000, max_messages=1), msgs, known, now=NOW)
    reasons = {m.uidl: why for m, why in plan.skip}
    assert reasons["big"] == "larger than max_size (5000 > 1000 octets)"
    assert reasons["p"].startswith(f"failed to deliver {MAX_ATTEMPTS} times (MDA said no)")
    assert uidls(plan.fetch) == ["a"]
    assert reasons["b"] == "max_messages reached for this run"


# -- uidl_reset --------------------------------------------------------------------


def test_the_brake_fires_when_the_known_uidls_all_went_and_new_ones_came() -> None:
    seen = {f"old-{n}": NOW for n in range(100)}
    new = messages(*(f"new-{n}" for n in range(100)))
    plan = make_plan(account(), new, Known(seen=Seen.of(seen)), now=NOW)
    reason = uidl_reset(plan, seen)
    assert reason is not None and reason.startswith("100 of the 100 messages on the server")


def test_the_brake_stays_off_for_new_mail_beside_old() -> None:
    seen = {f"old-{n}": NOW for n in range(100)}
    listing = messages(*(f"old-{n}" for n in range(100)), *(f"new-{n}" for n in range(150)))
    plan = make_plan(account(), listing, Known(seen=Seen.of(seen)), now=NOW)
    assert uidl_reset(plan, seen) is None


def test_the_brake_needs_a_store_that_knows_the_mailbox() -> None:
    seen = {f"old-{n}": NOW for n in range(RESET_MIN_UNKNOWN - 1)}
    plan = make_plan(
        account(), messages(*(f"n{n}" for n in range(50))), Known(seen=Seen.of(seen)), now=NOW
    )
    assert uidl_reset(plan, seen) is None
