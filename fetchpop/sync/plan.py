"""Planning, pure: what to fetch, skip and delete, from the server's listing and
what the seen-store knows. No I/O here but :func:`server_messages` (which
reads the listing from a logged-in client) and :func:`read_known` (three
queries)."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Collection, Mapping

from fetchpop.config import Account
from fetchpop.errors import ProtocolError, TempFailError
from fetchpop.pop3.client import Client, Refusal
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

    messages: list[ServerMessage]
    fetch: list[ServerMessage] = dataclasses.field(default_factory=list)
    delete: list[tuple[ServerMessage, str]] = dataclasses.field(default_factory=list)
    skip: list[tuple[ServerMessage, str]] = dataclasses.field(default_factory=list)
    repeated_uidls: int = 0


def server_messages(client: Client) -> tuple[list[ServerMessage], int]:
    """The logged-in *client*'s maildrop, as :func:`merge_listings` gives it."""
    return merge_listings(*client.maildrop())


def merge_listings(
    listing: list[tuple[int, str]], sizes: dict[int, int]
) -> tuple[list[ServerMessage], int]:
    """UIDL and LIST merged; repeated UIDLs get distinct keys. Returns (messages, repeats)."""
    missing = next((n for n, _ in listing if n not in sizes), None)
    if missing is not None:
        # LIST's size is what bounds the RETR (SPEC promise 4: bounded).
        raise ProtocolError(f"LIST does not list message {missing}, which UIDL lists")
    if len({uidl for _, uidl in listing}) == len(listing):  # the usual case: no repeats
        return [ServerMessage(number, uidl, sizes[number]) for number, uidl in listing], 0
    counts: dict[str, int] = {}
    out = []
    repeats = 0
    for number, uidl in listing:
        n = counts.get(uidl, 0) + 1
        counts[uidl] = n
        key = uidl
        if n > 1:
            # A UIDL comes from one line of the listing, so it can never hold
            # a line feed: this key cannot collide with a real one, even from
            # a server that puts spaces in its UIDLs (RFC 1939 forbids them).
            key = f"{uidl}\n#{n}"
            repeats += 1
        out.append(ServerMessage(number, key, sizes[number]))
    pairs = zip(out, listing, strict=True)
    out = [dataclasses.replace(m, shared=u) if counts[u] > 1 else m for m, (_, u) in pairs]
    return out, repeats


@dataclasses.dataclass(frozen=True)
class Known:
    """What the seen-store knows of one mailbox, as :func:`make_plan` needs it."""

    #: UIDL -> first-seen time.
    seen: dict[str, float] = dataclasses.field(default_factory=dict)
    #: Marked as seen (``seen mark``) without being delivered here: never deleted.
    undelivered: set[str] = dataclasses.field(default_factory=set)
    #: UIDL -> (failed delivery attempts, last reason); skips noted.
    problems: dict[str, tuple[int, str]] = dataclasses.field(default_factory=dict)
    #: False: the server lost pipelined commands lately (lock-step with it).
    pipelining: bool = True


def read_known(store: SeenStore, mailbox: int) -> Known:
    """Everything :func:`make_plan` needs from the store, in four queries."""
    return Known(
        store.seen(mailbox),
        store.undelivered(mailbox),
        store.problems(mailbox),
        pipelining=not lock_step_lately(store, mailbox),
    )


def lock_step_lately(store: SeenStore, mailbox: int) -> bool:
    """Whether *mailbox*'s server lost pipelined commands in the last QUIRK_DAYS."""
    return NO_PIPELINING in store.quirks(mailbox, max_age=QUIRK_DAYS * DAY)


def make_plan(
    account: Account,
    messages: list[ServerMessage],
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
    # Copies of a repeated UIDL are told apart only by their order, which
    # shifts when one goes: delete them together, once every copy is recorded.
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
            why = f"failed to deliver {attempts} times ({reason}); left on the server"
            plan.skip.append((msg, why))
            continue
        if account.max_messages is not None and len(plan.fetch) >= account.max_messages:
            plan.skip.append((msg, "max_messages reached for this run"))
            continue
        plan.fetch.append(msg)
    return plan


class UIDLResetError(TempFailError):
    """Most messages look new although the store knows this mailbox well."""


def uidl_reset(plan: Plan, seen: Mapping[str, float]) -> str | None:
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
