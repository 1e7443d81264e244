"""Planning, pure: what to fetch, skip and delete, from the server's listing and
what the seen-store knows. No I/O here but :func:`server_messages` (which
reads the listing from a logged-in client) and :func:`read_known` (a few
queries).

A maildrop of 100,000 messages is held without an object per message
(:class:`Maildrop`, :class:`Seen`): a run that finds nothing new compares
the listing's UIDLs with the store's keys as two strings, and makes a
:class:`ServerMessage` only for what it fetches, skips or deletes.
"""

from __future__ import annotations

import dataclasses
import re
from array import array
from collections.abc import Collection, Iterator, Mapping, Sequence
from typing import overload

from fetchpop.config import Account
from fetchpop.errors import ProtocolError, TempFailError
from fetchpop.pop3.client import Client, Refusal
from fetchpop.pop3.listings import Numbers, Sizes, UIDLs, same_numbers
from fetchpop.seenstore import NO_PIPELINING, SeenStore

DAY = 86400.0
#: A message that fails delivery this many times is skipped (and reported).
MAX_ATTEMPTS = 3
#: The UIDL-reset brake: this many unknown messages at least ...
RESET_MIN_UNKNOWN = 20
#: A server found to lose pipelined commands is served in lock-step this
#: long, then tried with pipelining again (it may have been upgraded).
QUIRK_DAYS = 30

#: How servers say that RETR's message is gone (deleted by another client
#: since the listing): Dovecot "Message 1 expunged.", "There's no message 9.",
#: Courier "Can't open the message file - it's gone!"
_GONE = re.compile(
    rb"expunged|no such message|no message|deleted|does ?n[o']t exist|not found|gone",
    re.IGNORECASE,
)


def message_gone(refusal: Refusal) -> bool:
    """Whether a RETR's ``-ERR`` says the message is gone (not "cannot now")."""
    return refusal.code is None and bool(_GONE.search(refusal.text))


@dataclasses.dataclass(slots=True)  # not frozen: a mailbox makes 100,000 of them
class ServerMessage:
    """A message as this session's UIDL and LIST describe it."""

    number: int
    uidl: str  # the store key: the UIDL, or "UIDL\n#n" for the n-th repeat
    size: int | None
    shared: str | None = None  # the server's UIDL, when several messages carry it


@dataclasses.dataclass
class Plan:
    """What a sync would do now (``fetchpop check``) and why."""

    messages: Sequence[ServerMessage]
    fetch: list[ServerMessage] = dataclasses.field(default_factory=list)
    delete: list[tuple[ServerMessage, str]] = dataclasses.field(default_factory=list)
    skip: list[tuple[ServerMessage, str]] = dataclasses.field(default_factory=list)
    repeated_uidls: int = 0


def server_messages(client: Client) -> Maildrop:
    """The logged-in *client*'s maildrop (UIDL and LIST), compact."""
    return maildrop(*client.maildrop())


def maildrop(uidls: UIDLs, sizes: Sizes) -> Maildrop:
    """UIDL and LIST merged (see :class:`Maildrop`)."""
    if same_numbers(uidls.numbers, sizes.numbers):  # the usual case: listed alike
        return Maildrop(uidls.numbers, uidls.text, sizes.octets)
    by_number = sizes.mapping()
    missing = next((n for n in uidls.numbers if n not in by_number), None)
    if missing is not None:
        # LIST's size is what bounds the RETR (SPEC promise 4: bounded).
        raise ProtocolError(f"LIST does not list message {missing}, which UIDL lists")
    octets = array("q", (by_number[n] for n in uidls.numbers))
    return Maildrop(uidls.numbers, uidls.text, octets)


def merge_listings(
    listing: list[tuple[int, str]], sizes: dict[int, int]
) -> tuple[list[ServerMessage], int]:
    """UIDL and LIST merged, as (number, uid) pairs and number -> size; repeated
    UIDLs get distinct keys. Returns (messages, repeats)."""
    drop = maildrop(UIDLs.of(listing), Sizes.of(sizes))
    return list(drop), drop.repeats


class Maildrop(Sequence[ServerMessage]):
    """A session's maildrop as UIDL and LIST gave it, without an object per
    message: the numbers (a range, usually), the sizes in an array, the
    UIDLs in one string. A :class:`ServerMessage` is made for a message
    only when it is looked at; the list of store keys (repeated UIDLs get
    distinct ones), only when the listing is not simply what the store knows.
    """

    def __init__(self, numbers: Numbers, text: str, octets: Sequence[int]) -> None:
        self.numbers = numbers
        self.octets = octets
        #: The server's UIDLs in listing order, joined by line feeds.
        self.text = text
        self._keys: list[str] | None = None
        self._shared: dict[int, str] = {}  # position -> UIDL, for repeated UIDLs
        self._repeats = 0
        self._padded: str | None = None
        self._keyset: frozenset[str] | None = None

    def __len__(self) -> int:
        return len(self.numbers)

    @overload
    def __getitem__(self, index: int) -> ServerMessage: ...

    @overload
    def __getitem__(self, index: slice) -> list[ServerMessage]: ...

    def __getitem__(self, index: int | slice) -> ServerMessage | list[ServerMessage]:
        if isinstance(index, slice):
            return [self[i] for i in range(len(self))[index]]
        index = range(len(self))[index]  # (a negative one counted from the end)
        keys = self.store_keys()
        return ServerMessage(
            self.numbers[index], keys[index], self.octets[index], self._shared.get(index)
        )

    def __iter__(self) -> Iterator[ServerMessage]:
        keys, shared = self.store_keys(), self._shared
        for i, (number, key, size) in enumerate(zip(self.numbers, keys, self.octets, strict=True)):
            yield ServerMessage(number, key, size, shared.get(i) if shared else None)

    @property
    def repeats(self) -> int:
        """How many messages carry a UIDL an earlier one has."""
        self.store_keys()
        return self._repeats

    def ids(self) -> list[str]:
        """The server's UIDLs, in listing order."""
        return self.text.split("\n") if self.numbers else []

    def store_keys(self) -> list[str]:
        """The store keys, in listing order: the UIDL, or "UIDL\\n#n" for the
        n-th message carrying it (a UIDL comes from one line of the listing,
        so it can never hold a line feed: such a key cannot collide with a
        real one, even from a server that puts spaces in its UIDLs)."""
        if self._keys is not None:
            return self._keys
        ids = self.ids()
        if len(set(ids)) == len(ids):  # the usual case: no repeats
            self._keys = ids
            return ids
        counts: dict[str, int] = {}
        keys = []
        for uidl in ids:
            n = counts.get(uidl, 0) + 1
            counts[uidl] = n
            keys.append(uidl if n == 1 else f"{uidl}\n#{n}")
        self._repeats = len(ids) - len(counts)
        self._shared = {i: u for i, u in enumerate(ids) if counts[u] > 1}
        self._keys = keys
        return keys

    def has(self, key: str) -> bool:
        """Whether a message of this maildrop has store key *key*."""
        if "\n" not in key:
            # A key without a line feed is a UIDL, the key of the first (or
            # only) message listed with it: found in the text alone.
            if self._padded is None:
                self._padded = f"\n{self.text}\n"
            return f"\n{key}\n" in self._padded
        if self._keyset is None:
            self._keyset = frozenset(self.store_keys())
        return key in self._keyset


class Seen(Collection[str]):
    """The store keys recorded for a mailbox, as :func:`make_plan` needs them.

    Read from the store as their count and one string (every key, in key
    order, joined by line feeds): a listing that is just these keys (nothing
    new, nothing gone: the usual run) is found so with one comparison, and
    no set of keys is made. First-seen times are kept for the records old
    enough that ``delete_after_days`` may take them.
    """

    def __init__(
        self,
        count: int,
        text: str | None,
        first: Mapping[str, float],
        keys: Collection[str] | None = None,
    ) -> None:
        self._count = count
        self._text = text  # None when a key holds a line feed (a repeated UIDL's)
        self._first = first
        self._keys = keys
        self._matched: tuple[Maildrop, bool] | None = None
        if text is None and keys is None:
            raise ValueError("Seen needs its keys, as text or as a set")

    @classmethod
    def of(cls, times: Mapping[str, float]) -> Seen:
        """Records given as key -> first-seen time."""
        return cls._of_keys(times, dict(times))

    @classmethod
    def _of_keys(cls, keys: Collection[str], first: Mapping[str, float]) -> Seen:
        text = None if any("\n" in key for key in keys) else "\n".join(sorted(keys))
        return cls(len(keys), text, first, frozenset(keys))

    @classmethod
    def read(
        cls, store: SeenStore, mailbox: int, *, older_than: float | None = None, now: float = 0.0
    ) -> Seen:
        """What *store* has recorded for *mailbox*; with the first-seen times
        of the records at least *older_than* seconds old at *now* (and, since
        a plan is made a little later, of those up to a day younger)."""
        count, text = store.seen_text(mailbox)
        keys: str | None = text
        if text.count("\n") + 1 != max(count, 1):
            keys = None  # a repeated UIDL's key: its line feed
        first: Mapping[str, float] = {}
        if older_than is not None:
            first = store.seen_before(mailbox, now - older_than + DAY)
        if keys is None:
            return cls(count, None, first, frozenset(store.seen(mailbox)))
        return cls(count, keys, first)

    def _set(self) -> Collection[str]:
        if self._keys is None:
            assert self._text is not None
            self._keys = frozenset(self._text.split("\n")) if self._count else frozenset()
        return self._keys

    def __len__(self) -> int:
        return self._count

    def __contains__(self, key: object) -> bool:
        return key in self._set()

    def __iter__(self) -> Iterator[str]:
        return iter(self._set())

    def first_seen(self, key: str) -> float | None:
        """When *key* was first recorded, if its record is one of the old ones."""
        return self._first.get(key)

    def old(self) -> Mapping[str, float]:
        """The records whose first-seen time is known: key -> time."""
        return self._first

    def matches(self, drop: Maildrop) -> bool:
        """Whether *drop* lists exactly the recorded keys (so no UIDL repeats)."""
        if self._matched is None or self._matched[0] is not drop:
            self._matched = (drop, self._match(drop))
        return self._matched[1]

    def _match(self, drop: Maildrop) -> bool:
        text = self._text
        if text is None or len(drop) != self._count or len(drop.text) != len(text):
            return False
        # Listed in key order (Dovecot's UIDLs are), or else sorted.
        return drop.text == text or "\n".join(sorted(drop.ids())) == text

    def without(self, keys: Collection[str]) -> Seen:
        """These records but *keys*."""
        first = {key: t for key, t in self._first.items() if key not in keys}
        return Seen._of_keys([key for key in self if key not in keys], first)


@dataclasses.dataclass(frozen=True)
class Known:
    """What the seen-store knows of one mailbox, as :func:`make_plan` needs it."""

    #: The keys recorded (and first-seen times of the old ones).
    seen: Seen = dataclasses.field(default_factory=lambda: Seen.of({}))
    #: Marked as seen (``seen mark``) without being delivered here: never deleted.
    undelivered: set[str] = dataclasses.field(default_factory=set)
    #: UIDL -> (failed delivery attempts, last reason); skips noted.
    problems: dict[str, tuple[int, str]] = dataclasses.field(default_factory=dict)
    #: False: the server lost pipelined commands lately (lock-step with it).
    pipelining: bool = True


def read_known(store: SeenStore, mailbox: int, account: Account, *, now: float) -> Known:
    """Everything :func:`make_plan` needs from the store for *account*, in a
    few queries (first-seen times only as its ``delete_after_days`` needs at
    *now*, the clock make_plan will be given)."""
    days = account.delete_after_days
    return Known(
        Seen.read(store, mailbox, older_than=None if days is None else days * DAY, now=now),
        store.undelivered(mailbox),
        store.problems(mailbox),
        pipelining=not lock_step_lately(store, mailbox),
    )


def lock_step_lately(store: SeenStore, mailbox: int) -> bool:
    """Whether *mailbox*'s server lost pipelined commands in the last QUIRK_DAYS."""
    return NO_PIPELINING in store.quirks(mailbox, max_age=QUIRK_DAYS * DAY)


def make_plan(
    account: Account,
    messages: Sequence[ServerMessage],
    known: Known,
    *,
    now: float,
    fresh: Collection[str] = (),
) -> Plan:
    """Decide what to fetch, skip and delete. Pure: no I/O.

    *fresh* holds UIDLs recorded during this session (they count as seen).
    """
    plan = Plan(messages)
    seen, failing, undelivered = known.seen, known.problems, known.undelivered
    if not fresh and isinstance(messages, Maildrop) and seen.matches(messages):
        # Nothing new, nothing repeated (the usual run): only deletions to find.
        _deletions(account, messages, known, now, plan)
        return plan
    if isinstance(messages, Maildrop):
        plan.repeated_uidls = messages.repeats
    # Copies of a repeated UIDL are told apart only by their order, which
    # shifts when one goes: delete them together, once every copy is recorded.
    unrecorded = {
        m.shared for m in messages if m.shared and m.uidl not in seen and m.uidl not in fresh
    }
    limit = None if account.delete_after_days is None else account.delete_after_days * DAY
    for msg in messages:
        if msg.uidl in seen or msg.uidl in fresh:
            if msg.shared in unrecorded or msg.uidl in undelivered:
                continue
            if not account.keep:
                plan.delete.append((msg, "keep = false"))
            elif limit is not None:
                # (A record made in this session: first fetched now.)
                first = seen.first_seen(msg.uidl) if msg.uidl in seen else now
                if first is not None and now - first >= limit:
                    plan.delete.append((msg, _age(now, first)))
            continue
        if account.max_size is not None and msg.size is not None and msg.size > account.max_size:
            plan.skip.append(
                (msg, f"larger than max_size ({msg.size} > {account.max_size} octets)")
            )
            continue
        attempts, reason = failing.get(msg.uidl, (0, ""))
        if attempts >= MAX_ATTEMPTS:
            why = f"failed to deliver {attempts} times ({reason}); left on the server"
            plan.skip.append((msg, why))
            continue
        if account.max_messages is not None and len(plan.fetch) >= account.max_messages:
            plan.skip.append((msg, "max_messages reached for this run"))
            continue
        plan.fetch.append(msg)
    return plan


def _deletions(account: Account, drop: Maildrop, known: Known, now: float, plan: Plan) -> None:
    """What to delete of *drop*, every message of which is recorded (none
    repeated): the loop of make_plan, without a step for each message that
    stays."""
    undelivered = known.undelivered
    if not account.keep:
        plan.delete = [(m, "keep = false") for m in drop if m.uidl not in undelivered]
        return
    if account.delete_after_days is None:
        return
    limit = account.delete_after_days * DAY
    old = known.seen.old()
    due = {key for key, first in old.items() if now - first >= limit and key not in undelivered}
    if due:
        plan.delete = [(m, _age(now, old[m.uidl])) for m in drop if m.uidl in due]


def _age(now: float, first: float) -> str:
    return f"first fetched {int((now - first) // DAY)} days ago"


def vanished(
    messages: Sequence[ServerMessage], known: Known, deleted: Collection[str]
) -> tuple[list[str], list[str]]:
    """After a completed session: the records, and the problem notes, of
    messages no longer on the server (or *deleted* by its QUIT), which the
    store may forget: (records, problems). The records of *deleted* are not
    among them (those are forgotten as QUIT confirms)."""
    seen = known.seen
    if isinstance(messages, Maildrop):
        drop = messages

        def present(key: str) -> bool:
            return drop.has(key) and key not in deleted

        records = [] if seen.matches(drop) else [k for k in seen if not drop.has(k)]
    else:
        keys = {m.uidl for m in messages}

        def present(key: str) -> bool:
            return key in keys and key not in deleted

        records = [k for k in seen if k not in keys]
    records = [k for k in records if k not in deleted]
    return records, [k for k in known.problems if not present(k)]


class UIDLResetError(TempFailError):
    """Most messages look new although the store knows this mailbox well."""


def uidl_reset(plan: Plan, seen: Collection[str]) -> str | None:
    """Why this looks like a server that renumbered its UIDLs, or None.

    The brake fires when many messages are unknown, although the store knows
    many UIDLs for this mailbox and hardly any of them are still on the server:
    the provider migrated or rebuilt the maildrop, and every message looks new.
    """
    unknown = len(plan.fetch) + sum(1 for m, _ in plan.skip if m.uidl not in seen)
    if unknown < RESET_MIN_UNKNOWN or len(seen) < RESET_MIN_UNKNOWN:
        return None  # (the usual case, without counting 100,000 messages)
    still_there = sum(1 for m in plan.messages if m.uidl in seen)
    if unknown > len(plan.messages) // 2 and still_there < len(seen) // 10:
        return (
            f"{unknown} of the {len(plan.messages)} messages on the server have UIDLs "
            f"never seen here, and only {still_there} of the {len(seen)} known ones "
            "are still there: the server may have reset its UIDLs. Nothing was fetched"
        )
    return None
