"""Intents left by an interrupted run, resolved (SPEC section 1, promise 2).

A Maildir answers from its directories. An mbox whose file grew past the
intent's offset is compared with the server's copy, the messages of a batch
in order (a partial tail is cut off only when it is certainly fetchpop's
own; anything else is left, and said). An MDA cannot be asked: the message
is delivered again, at least once, never lost; fetchpop(1) says so. When the
server's copy is needed but cannot be read now (RETR refused, and not because
the message is gone), nothing is decided: the intent stays, and the message is
not fetched this run.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from fetchpop.config import Account
from fetchpop.deliver import format_deliver, open_target, parse_deliver
from fetchpop.deliver.base import Target
from fetchpop.pop3.client import Client, Refusal
from fetchpop.seenstore import Intent, SeenStore
from fetchpop.sync.plan import ServerMessage, message_gone


@dataclasses.dataclass
class Reconciled:
    """What became of the intents of an interrupted run."""

    had_intents: bool = False
    #: How many were found delivered, and recorded.
    recorded: int = 0
    #: UIDL -> the server's refusal, for those that could not be checked now.
    undecided: dict[str, str] = dataclasses.field(default_factory=dict)
    #: UIDLs an MDA may have delivered already: they are delivered again
    #: (an MDA cannot be asked; at least once, never lost).
    again: list[str] = dataclasses.field(default_factory=list)
    #: Lines naming what the target found and left alone (see Target.damaged).
    damaged: list[str] = dataclasses.field(default_factory=list)


def reconcile(
    store: SeenStore,
    mailbox: int,
    account: Account,
    client: Client,
    target: Target,
    messages: Sequence[ServerMessage],
) -> Reconciled:
    """Record what an interrupted run delivered, drop what it did not."""
    intents = store.intents(mailbox)
    outcome = Reconciled(had_intents=bool(intents))
    if not intents:
        return outcome
    on_server = {m.uidl: m for m in messages}
    current = format_deliver(account.deliver)
    recorded: list[Intent] = []
    dropped: list[Intent] = []
    for intent in intents:
        if intent.target != current:
            other = open_target(
                parse_deliver(intent.target),
                mbox_lock_timeout=account.mbox_lock_timeout,
                mda_timeout=account.mda_timeout,
            )
            try:
                found: bool | None = other.delivered(intent.detail)
            finally:
                other.close()
        else:
            found = target.delivered(intent.detail)
            if found is None and intent.uidl in on_server:
                found = _confirm(client, target, intent, on_server[intent.uidl], outcome)
                if found is False and account.deliver.kind in ("mda", "lmtp", "smtp"):
                    outcome.again.append(intent.uidl)
        if found is None and intent.uidl in outcome.undecided:
            continue  # kept for a later run
        (recorded if found else dropped).append(intent)
    outcome.damaged = target.damaged()
    if recorded:
        store.record(mailbox, [i.uidl for i in recorded], done=[i.id for i in recorded])
        store.sync()
        outcome.recorded = len(recorded)
    if dropped:
        store.drop_intents([i.id for i in dropped])
    return outcome


def _confirm(
    client: Client, target: Target, intent: Intent, msg: ServerMessage, outcome: Reconciled
) -> bool | None:
    """Compare the target's copy with the server's; None when the server
    cannot serve it now (then *outcome* says why)."""
    for _, body in client.retrieve([(msg.number, msg.size)]):
        if isinstance(body, Refusal):
            if message_gone(body):
                return False
            outcome.undecided[intent.uidl] = body.words
            return None
        return target.confirm(intent.detail, body)
    return False
