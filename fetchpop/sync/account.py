"""A whole account's sync as a command runs it: the mailbox lock, the
:class:`~fetchpop.sync.session.Session`, and the run record ``status`` shows.
The CLI only turns the outcome into lines, JSON and an exit status."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from pathlib import Path

from fetchpop.config import Account
from fetchpop.errors import FetchpopError, Interrupted, one_line
from fetchpop.locks import MailboxLock
from fetchpop.pop3.client import Log
from fetchpop.seenstore import RunRecord, SeenStore
from fetchpop.sync.connect import PasswordSource
from fetchpop.sync.hook import run_after_sync
from fetchpop.sync.plan import ServerMessage
from fetchpop.sync.session import Progress, Session, SyncResult


@dataclasses.dataclass
class AccountRun:
    """How an account's sync ended: what was done, and the failure, if any."""

    account: str
    #: What the session did (also when it failed part-way); None when it
    #: never began (the mailbox was locked, say).
    result: SyncResult | None
    error: FetchpopError | None = None

    @property
    def code(self) -> int:
        """The account's exit status: 0, or the failure's."""
        return 0 if self.error is None else int(self.error.exit_code)

    @property
    def message(self) -> str:
        """``ok``, or the failure in one line."""
        return "ok" if self.error is None else one_line(self.error)


def run_account(
    account: Account,
    store: SeenStore,
    state_dir: Path,
    password: PasswordSource,
    *,
    wait: float = 0.0,
    log: Log | None = None,
    progress: Progress | None = None,
    checkpoint: Callable[[], None] | None = None,
    accept_new_uidls: bool = False,
    on_message: Callable[[ServerMessage, int], None] | None = None,
    on_plan: Callable[[list[ServerMessage]], None] | None = None,
    target_secret: PasswordSource | None = None,
    now: Callable[[], float] = time.time,
) -> AccountRun:
    """Sync *account* under its mailbox lock (waiting up to *wait* seconds for
    another run's), and record the outcome in *store* for ``fetchpop status``.

    A failure is returned, not raised; what is not a FetchpopError (a bug,
    KeyboardInterrupt) propagates.
    """
    started = time.time()
    session: Session | None = None
    outcome = AccountRun(account.name, None)
    try:
        with MailboxLock(state_dir, account.mailbox) as lock:
            lock.acquire(wait)
            session = Session(
                account,
                store,
                password,
                log=log,
                progress=progress,
                checkpoint=checkpoint,
                accept_new_uidls=accept_new_uidls,
                on_message=on_message,
                on_plan=on_plan,
                target_secret=target_secret,
                now=now,
            )
            outcome.result = session.run()
    except FetchpopError as exc:
        outcome.error = exc
        outcome.result = session.result if session else None
    result = outcome.result
    if result is not None and result.fetched and not isinstance(outcome.error, Interrupted):
        # Outside the lock: a long `notmuch new` holds up no other run.
        failed = run_after_sync(account, result.fetched, result.octets)
        if failed:
            result.problems.append(failed)  # said even with -q; the status stands
    _record(store, account, outcome, started)
    return outcome


def _record(store: SeenStore, account: Account, outcome: AccountRun, started: float) -> None:
    mailbox = store.mailbox_id(*account.mailbox)
    if mailbox is None:
        return
    result = outcome.result
    store.record_run(
        mailbox,
        RunRecord(
            account.name,
            started,
            time.time(),
            outcome.code,
            outcome.message,
            result.fetched if result else 0,
            result.octets if result else 0,
            result.deleted if result else 0,
            len(result.skipped) if result else 0,
        ),
    )
