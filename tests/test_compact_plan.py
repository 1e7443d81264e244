"""The compact listing and its diff against the seen-store (issue 18) decide
exactly what the per-message plan of before did, on hypothesis-generated
mailboxes: repeated UIDLs, LIST lines missing or extra, UIDLs reused after a
deletion, numbers out of order, records gone from the server, old records for
delete_after_days, marked-but-undelivered records and problem notes.

The oracle is the plan as fetchpop made it before the listings went compact
(merge_listings and make_plan of commit 007314c, below, with the store read
whole into a dict); the code under test reads a real SQLite seen-store.
"""

from __future__ import annotations

import dataclasses
import tempfile
from collections.abc import Collection
from pathlib import Path

import test_plan
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fetchpop.config import Account
from fetchpop.errors import ProtocolError
from fetchpop.pop3.listings import parse_sizes, parse_uidls
from fetchpop.seenstore import SeenStore
from fetchpop.sync.plan import (
    DAY,
    MAX_ATTEMPTS,
    Maildrop,
    ServerMessage,
    maildrop,
    make_plan,
    read_known,
    uidl_reset,
    vanished,
)

NOW = 1_800_000_000.0
ACCOUNT = test_plan.account()


# -- the oracle: the plan of before, message by message ---------------------------


@dataclasses.dataclass
class OldPlan:
    fetch: list[ServerMessage] = dataclasses.field(default_factory=list)
    delete: list[tuple[ServerMessage, str]] = dataclasses.field(default_factory=list)
    skip: list[tuple[ServerMessage, str]] = dataclasses.field(default_factory=list)


def old_merge(
    listing: list[tuple[int, str]], sizes: dict[int, int]
) -> tuple[list[ServerMessage], int]:
    missing = next((n for n, _ in listing if n not in sizes), None)
    if missing is not None:
        raise ProtocolError(f"LIST does not list message {missing}, which UIDL lists")
    counts: dict[str, int] = {}
    out = []
    repeats = 0
    for number, uidl in listing:
        n = counts.get(uidl, 0) + 1
        counts[uidl] = n
        key = uidl if n == 1 else f"{uidl}\n#{n}"
        repeats += n > 1
        out.append(ServerMessage(number, key, sizes[number]))
    pairs = zip(out, listing, strict=True)
    out = [dataclasses.replace(m, shared=u) if counts[u] > 1 else m for m, (_, u) in pairs]
    return out, repeats


def old_plan(
    account: Account,
    messages: list[ServerMessage],
    seen: dict[str, float],
    undelivered: set[str],
    failing: dict[str, tuple[int, str]],
    now: float,
    fresh: Collection[str],
) -> OldPlan:
    plan = OldPlan()
    unrecorded = {
        m.shared for m in messages if m.shared and m.uidl not in seen and m.uidl not in fresh
    }
    for msg in messages:
        if msg.uidl in seen or msg.uidl in fresh:
            if msg.shared in unrecorded or msg.uidl in undelivered:
                continue
            if not account.keep:
                plan.delete.append((msg, "keep = false"))
            elif account.delete_after_days is not None:
                first = seen.get(msg.uidl, now)
                if now - first >= account.delete_after_days * DAY:
                    age = int((now - first) // DAY)
                    plan.delete.append((msg, f"first fetched {age} days ago"))
            continue
        if account.max_size is not None and msg.size is not None and msg.size > account.max_size:
            plan.skip.append(
                (msg, f"larger than max_size ({msg.size} > {account.max_size} octets)")
            )
            continue
        attempts, reason = failing.get(msg.uidl, (0, ""))
        if attempts >= MAX_ATTEMPTS:
            plan.skip.append(
                (msg, f"failed to deliver {attempts} times ({reason}); left on the server")
            )
            continue
        if account.max_messages is not None and len(plan.fetch) >= account.max_messages:
            plan.skip.append((msg, "max_messages reached for this run"))
            continue
        plan.fetch.append(msg)
    return plan


def old_prune(
    messages: list[ServerMessage],
    seen: dict[str, float],
    problems: dict[str, tuple[int, str]],
    deleted: set[str],
) -> tuple[list[str], list[str]]:
    present = {m.uidl for m in messages if m.uidl not in deleted}
    recorded = [u for u in seen if u not in deleted]
    return [u for u in recorded if u not in present], [u for u in problems if u not in present]


# -- mailboxes ----------------------------------------------------------------------

uid = st.sampled_from([f"u{i}" for i in range(12)] + ["Z", "a", "0", "u1 x", "\xe9t\xe9"])


@st.composite
def mailboxes(draw: st.DrawFn) -> dict[str, object]:
    n = draw(st.integers(0, 14))
    numbers = list(range(1, n + 1))
    if draw(st.booleans()):  # numbers with gaps, or out of order
        numbers = draw(st.permutations(draw(st.lists(st.integers(1, 40), unique=True))))
    uidls = draw(st.lists(uid, min_size=len(numbers), max_size=len(numbers)))
    sizes = {m: draw(st.integers(0, 5000)) for m in numbers}
    for m in draw(st.lists(st.sampled_from(numbers), max_size=1)) if numbers else []:
        del sizes[m]  # a LIST line missing
    for m in draw(st.lists(st.integers(41, 50), max_size=2)):
        sizes[m] = 1  # LIST lists a message UIDL does not
    # The store: some of the listed keys (repeats' keys too), some keys long gone.
    keys = sorted({u for u in uidls} | {f"{u}\n#2" for u in uidls})
    if draw(st.booleans()):  # the usual run: the store knows just what is listed
        recorded = list(dict.fromkeys(_listed_keys(uidls)))
    else:
        recorded = draw(st.lists(st.sampled_from(keys), unique=True)) if keys else []
        recorded += draw(st.lists(st.sampled_from(["gone1", "gone2", "u11\n#3"]), unique=True))
    ages = {k: draw(st.sampled_from([0.0, 1.0, 29.5, 30.0, 31.0, 400.0])) for k in recorded}
    undelivered = set(draw(st.lists(st.sampled_from(recorded), unique=True))) if recorded else set()
    problem_keys = draw(st.lists(st.sampled_from([*keys, "gone3"]), unique=True, max_size=3))
    problems = {k: draw(st.integers(0, 4)) for k in problem_keys}
    account = dataclasses.replace(
        ACCOUNT,
        keep=draw(st.booleans()),
        delete_after_days=draw(st.sampled_from([None, None, 0, 30])),
        max_size=draw(st.sampled_from([None, 2000])),
        max_messages=draw(st.sampled_from([None, 2])),
    )
    fresh = draw(st.lists(st.sampled_from(keys), unique=True, max_size=3)) if keys else []
    return {
        "listing": list(zip(numbers, uidls, strict=True)),
        "sizes": sizes,
        "ages": ages,
        "undelivered": undelivered,
        "problems": problems,
        "account": account,
        "fresh": set(draw(st.sampled_from([[], fresh]))),
    }


def _listed_keys(uidls: list[str]) -> list[str]:
    counts: dict[str, int] = {}
    keys = []
    for u in uidls:
        counts[u] = counts.get(u, 0) + 1
        keys.append(u if counts[u] == 1 else f"{u}\n#{counts[u]}")
    return keys


def stored(path: Path, box: dict[str, object]) -> tuple[SeenStore, int]:
    store = SeenStore(path)
    mailbox = store.mailbox_id("pop.example.org", 995, "alice")
    assert mailbox is not None
    ages: dict[str, float] = box["ages"]  # type: ignore[assignment]
    undelivered: set[str] = box["undelivered"]  # type: ignore[assignment]
    for key, age in ages.items():
        store.record(mailbox, [key], now=NOW - age * DAY, delivered=key not in undelivered)
    problems: dict[str, int] = box["problems"]  # type: ignore[assignment]
    for key, attempts in problems.items():
        store.note_problem(mailbox, key, "larger than max_size", attempt=False)
        for _ in range(attempts):
            store.note_problem(mailbox, key, "MDA said no", attempt=True)
    return store, mailbox


def wire(listing: list[tuple[int, str]], sizes: dict[int, int]) -> Maildrop:
    """The compact maildrop, through the parsers, from the listings' lines."""
    uidl_lines = [b"%d %s" % (n, u.encode("latin-1")) for n, u in listing]
    list_lines = [b"%d %d" % (n, s) for n, s in sizes.items()]
    return maildrop(parse_uidls(uidl_lines), parse_sizes(list_lines))


def triples(items: list[ServerMessage] | list[tuple[ServerMessage, str]]) -> list[object]:
    return [dataclasses.astuple(i) if isinstance(i, ServerMessage) else i for i in items]


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mailboxes())
def test_the_compact_plan_is_the_plan_of_before(box: dict[str, object]) -> None:
    listing: list[tuple[int, str]] = box["listing"]  # type: ignore[assignment]
    sizes: dict[int, int] = box["sizes"]  # type: ignore[assignment]
    account: Account = box["account"]  # type: ignore[assignment]
    fresh: set[str] = box["fresh"]  # type: ignore[assignment]
    try:
        expected, repeats = old_merge(listing, sizes)
    except ProtocolError as exc:
        try:
            wire(listing, sizes)
        except ProtocolError as got:
            assert str(got) == str(exc)
            return
        raise AssertionError("the compact merge took a LIST that lacks a message") from exc
    drop = wire(listing, sizes)
    assert [dataclasses.astuple(m) for m in drop] == [dataclasses.astuple(m) for m in expected]
    assert drop.repeats == repeats
    with tempfile.TemporaryDirectory() as tmp:
        store, mailbox = stored(Path(tmp) / "seen.sqlite3", box)
        with store:
            known = read_known(store, mailbox, account, now=NOW)
            seen = store.seen(mailbox)
            problems = store.problems(mailbox)
            undelivered = store.undelivered(mailbox)
        # A fresh Maildrop each time: what a key lookup made stays out of the next.
        drop = wire(listing, sizes)
        plan = make_plan(account, drop, known, now=NOW, fresh=fresh)
        old = old_plan(account, expected, seen, undelivered, problems, NOW, fresh)
        assert triples(plan.fetch) == triples(old.fetch)
        assert [(dataclasses.astuple(m), r) for m, r in plan.delete] == [
            (dataclasses.astuple(m), r) for m, r in old.delete
        ]
        assert [(dataclasses.astuple(m), r) for m, r in plan.skip] == [
            (dataclasses.astuple(m), r) for m, r in old.skip
        ]
        assert len(known.seen) == len(seen) and set(known.seen) == set(seen)
        assert uidl_reset(plan, known.seen) == uidl_reset(plan, seen)
        # What the store forgets after the session: the same records and notes.
        deleted = {m.uidl for m, _ in plan.delete[:2]}
        drop = wire(listing, sizes)
        records, stale = vanished(drop, known, deleted)
        old_records, old_stale = old_prune(expected, seen, problems, deleted)
        assert sorted(records) == sorted(old_records)
        assert sorted(stale) == sorted(old_stale)


def test_nothing_new_takes_no_message_objects() -> None:
    """The usual run: the store knows every UIDL listed. The plan is made
    from two strings compared, and no list of keys is split out."""
    listing = [(n, f"{n:08x}abcd") for n in range(1, 2001)]
    with tempfile.TemporaryDirectory() as tmp, SeenStore(Path(tmp) / "s.sqlite3") as store:
        mailbox = store.mailbox_id("pop.example.org", 995, "alice")
        assert mailbox is not None
        store.record(mailbox, [u for _, u in listing], now=NOW - DAY)
        base = ACCOUNT
        for account in (base, dataclasses.replace(base, delete_after_days=30)):
            known = read_known(store, mailbox, account, now=NOW)
            drop = wire(listing, {n: 10 for n, _ in listing})
            plan = make_plan(account, drop, known, now=NOW)
            assert plan.fetch == plan.delete == plan.skip == []
            assert vanished(drop, known, set()) == ([], [])
            assert drop._keys is None  # never split into 2,000 strings
        # One message new, in the middle: found, and only it is fetched.
        drop = wire(
            [*listing[:1000], (5000, "new"), *listing[1000:]],
            {5000: 7} | {n: 10 for n, _ in listing},
        )
        plan = make_plan(base, drop, read_known(store, mailbox, base, now=NOW), now=NOW)
        assert [(m.number, m.uidl, m.size) for m in plan.fetch] == [(5000, "new", 7)]
