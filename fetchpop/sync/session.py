"""One account's sync: the Session owns the order that keeps SPEC section 1's promises.

The ordering invariant, for every message:

    1. journal an intent in the seen-store        (so a crash can be recognised)
    2. RETR, streaming into the delivery target   (never whole in memory)
    3. finish, then flush: data and directory fsynced (or the MDA exited 0)
    4. record the UIDL and drop the intent, in one committed transaction,
       made durable (checkpoint) before step 5
    5. only then may DELE be sent, and only QUIT makes it happen.

Any failure before 4 leaves the message on the server and unrecorded; a crash
between 3 and 4 leaves an intent that the next run resolves by looking in the
target instead of delivering again. Every intent is durable before the first
byte of its message reaches the target (a power cut must not leave a message
there with no intent: it would be delivered twice). Steps 1, 3 and 4 are
batched (group commit): where the target can name its deliveries ahead (a
Maildir its file names, an mbox the offset its batch starts at), one durable
transaction journals the intents of a whole batch before its first message is
written (an MDA's is journalled durably as it begins); after several finished
messages, one round of fsyncs and one durable transaction record them and drop
the batch's unused intents — never recording or deleting anything that is not
yet durable.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager

from fetchpop.config import Account, format_deliver
from fetchpop.deliver import DeliverySpec, open_target
from fetchpop.deliver.base import Target
from fetchpop.errors import (
    DeliveryError,
    FetchpopError,
    MessageRejectedError,
    PipeliningLostError,
    SkippedError,
    TempFailError,
    sanitize,
)
from fetchpop.pop3.client import PIPELINE_WINDOW, Client, Log, Refusal
from fetchpop.seenstore import NO_PIPELINING, SeenStore
from fetchpop.sync.connect import PasswordSource, connect
from fetchpop.sync.ident import HeaderReader
from fetchpop.sync.plan import (
    MAX_ATTEMPTS,
    QUIRK_DAYS,
    RESET_MIN_UNKNOWN,
    Known,
    Maildrop,
    Plan,
    ServerMessage,
    UIDLResetError,
    lock_step_lately,
    make_plan,
    message_gone,
    read_known,
    server_messages,
    uidl_reset,
    vanished,
)
from fetchpop.sync.recovery import reconcile

#: Group commit: flush after this many messages or bytes, whichever first.
BATCH_MESSAGES = 64
BATCH_OCTETS = 16 * 1024 * 1024
#: Gmail ("+OK Gpop ready ...") lists about 250 messages a session; a listing
#: this long from it may be one batch of many (the next session lists the next).
GMAIL_BATCH = 200
#: Sessions one sync may open for such a server (250 messages each).
MAX_SESSIONS = 40

Progress = Callable[[str, int], None]


@dataclasses.dataclass
class SyncResult:
    """What a sync did, for the summary line and ``--json``."""

    account: str
    fetched: int = 0
    octets: int = 0
    deleted: int = 0
    skipped: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    warnings: list[str] = dataclasses.field(default_factory=list)
    #: What ``-v`` says besides the summary (a workaround for a server's quirk).
    notes: list[str] = dataclasses.field(default_factory=list)
    #: What is said even with ``-q`` (messages skipped for good).
    problems: list[str] = dataclasses.field(default_factory=list)
    server_messages: int = 0


def _asked_once(source: PasswordSource) -> PasswordSource:
    """*source*, asked at most once a run, however many sessions log in
    (Gmail's batches, the lock-step retry): no second prompt, no second
    password_command."""
    got: list[str] = []

    def password() -> str:
        if not got:
            got.append(source())
        return got[0]

    return password


@contextmanager
def _target(
    spec: DeliverySpec, account: Account, secret: PasswordSource | None, log: Log | None
) -> Iterator[Target]:
    target = open_target(
        spec,
        mbox_lock_timeout=account.mbox_lock_timeout,
        mda_timeout=account.mda_timeout,
        secret=secret,
        log=log,
    )
    try:
        yield target
    finally:
        target.close()


class Session:
    """A sync of one account: owns the deliver -> record -> DELE -> QUIT order."""

    def __init__(
        self,
        account: Account,
        store: SeenStore,
        password: PasswordSource,
        *,
        log: Log | None = None,
        progress: Progress | None = None,
        now: Callable[[], float] = time.time,
        checkpoint: Callable[[], None] | None = None,
        accept_new_uidls: bool = False,
        on_message: Callable[[ServerMessage, int], None] | None = None,
        on_plan: Callable[[list[ServerMessage]], None] | None = None,
        target_secret: PasswordSource | None = None,
    ) -> None:
        self.account = account
        self.store = store
        self.password = _asked_once(password)
        #: The delivery server's password or token (smtp_user, an imap:// target).
        self.target_secret = _asked_once(target_secret) if target_secret else None
        self.log = log
        self.progress = progress
        self.now = now
        self.accept_new_uidls = accept_new_uidls
        #: Told of each message delivered (not yet recorded), for ``-vv``.
        self.on_message = on_message
        #: Told what each session is about to fetch (the progress bar's totals).
        self.on_plan = on_plan
        #: The first per-message delivery failure; raised after the session.
        self.failure: FetchpopError | None = None
        # Called between messages; raises (Interrupted) to stop at a safe point.
        self.checkpoint = checkpoint or (lambda: None)
        self.result = SyncResult(account.name)
        self._mailbox = 0
        self._batch: list[tuple[int, str, int, str]] = []  # (intent id, uidl, octets, ident)
        self._fresh: set[str] = set()
        # Intents journalled ahead, a batch per transaction: number -> (id, intent).
        self._ahead: dict[int, tuple[int, str]] = {}
        self._target_reserves = True  # until the target says it cannot
        self._known: Known | None = None  # read while the server works (see run)
        self._pipelining = True  # until the server is known to lose commands
        # Planned for deletion, but could not be checked (TOP refused).
        self._unproven: set[str] = set()
        # Maybe delivered by an interrupted run, not checkable now: not fetched.
        self._undecided: set[str] = set()
        self._batched = False  # the last session's listing may have been a batch (Gmail)
        self._listed = 0

    def run(self) -> SyncResult:
        """Sync the account; raises a FetchpopError subclass on failure."""
        account = self.account
        mailbox = self.store.mailbox_id(*account.mailbox)
        assert mailbox is not None
        self._mailbox = mailbox
        self._pipelining = not lock_step_lately(self.store, mailbox)
        with _target(account.deliver, account, self.target_secret, self.log) as target:
            sessions = 1
            before = self.result.fetched
            self._connection(target)
            # Gmail lists at most about 250 messages a session, the next ones
            # the next session: go on while each session brings new mail.
            while self._batched and self.result.fetched > before and self._may_go_on():
                if sessions == MAX_SESSIONS:
                    self.result.notes.append(
                        f"more may be waiting after {sessions} sessions, for the next run"
                    )
                    break
                self.checkpoint()
                sessions += 1
                before = self.result.fetched
                self._known = None
                self._connection(target)
            if sessions > 1:
                self.result.notes.append(
                    f"{sessions} sessions: the server lists at most {self._listed} messages at once"
                )
        self._once_each()
        if self.failure is not None:
            raise self.failure
        if self.result.problems:
            name = account.name
            raise SkippedError(
                f"{len(self.result.problems)} message(s) skipped after failing delivery "
                f"{MAX_ATTEMPTS} times; they stay on the server "
                f"(`fetchpop seen forget {name} UIDL...` tries them again)"
            )
        return self.result

    def _may_go_on(self) -> bool:
        """Whether another session may follow: no failure, and max_messages not reached."""
        limit = self.account.max_messages
        return self.failure is None and (limit is None or self.result.fetched < limit)

    def _once_each(self) -> None:
        """Each line once, however many sessions said it."""
        for lines in (self.result.warnings, self.result.notes, self.result.problems):
            lines[:] = dict.fromkeys(lines)
        self.result.skipped = list(dict.fromkeys(self.result.skipped))

    def _connection(self, target: Target) -> None:
        """One session, and once more in lock-step if the server lost pipelined commands.

        The server is remembered as one that must not be pipelined only when
        the lock-step session then works: a network outage (both fail) or a
        slow login is not the server's quirk.
        """
        try:
            self._session(target, self._pipelining)
        except PipeliningLostError as exc:
            if not self._pipelining:
                raise
            # What was delivered is recorded, nothing was deleted (no QUIT was
            # confirmed): the next session goes on from there.
            self._pipelining = False
            self._known = None
            self._session(target, pipelining=False)
            self.store.note_quirk(self._mailbox, NO_PIPELINING)
            self.result.notes.append(
                f"{exc}; going on without pipelining, now and for {QUIRK_DAYS} days"
            )

    def _session(self, target: Target, pipelining: bool) -> None:
        """One connection: log in, then :meth:`_transact`."""
        account = self.account
        secure = account.tls != "off"
        known = self.store.capabilities(self._mailbox) if secure else None
        client = connect(
            account,
            self.password,
            log=self.log,
            known=known,
            meanwhile=self._read_known,
            pipelining=pipelining,
        )
        try:
            if secure:  # what the server said before the login, for next time
                self.store.remember_capabilities(self._mailbox, client.capabilities)
            self._transact(client, target)
        except BaseException:
            client.close()
            raise

    def _read_known(self) -> None:
        self._known = read_known(self.store, self._mailbox, self.account, now=self.now())

    def _reconcile(self, client: Client, target: Target, messages: Maildrop) -> bool:
        """Resolve intents left by an interrupted run (:mod:`fetchpop.sync.recovery`);
        True when there were any (then the store has changed)."""
        outcome = reconcile(self.store, self._mailbox, self.account, client, target, messages)
        if outcome.recorded:
            self.result.warnings.append(
                f"{outcome.recorded} message(s) delivered by an interrupted run were recorded"
            )
        self.result.warnings.extend(outcome.damaged)
        kind = self.account.deliver.kind
        handed = "the MDA" if kind == "mda" else f"the {kind.upper()} server"
        for uidl in outcome.again:
            self.result.warnings.append(
                f"message {sanitize(uidl)} is delivered again: an interrupted run may have "
                f"handed it to {handed} already, which cannot be asked"
            )
        for uidl, words in outcome.undecided.items():
            self._undecided.add(uidl)
            self.result.warnings.append(
                f"message {sanitize(uidl)} may have been delivered by an interrupted run, and "
                f"the server's copy cannot be read now to check ({words}); left for a later run"
            )
        return outcome.had_intents

    def _transact(self, client: Client, target: Target) -> None:
        account = self.account
        if account.max_messages is not None and self.result.fetched:
            # max_messages is per run: what earlier sessions fetched counts.
            left = max(0, account.max_messages - self.result.fetched)
            account = dataclasses.replace(account, max_messages=left)
        messages = server_messages(client)
        self.result.server_messages = len(messages)
        self._listed = max(self._listed, len(messages))
        # Gmail's normal mode lists no message a session has retrieved (and
        # about 250 at a time): old UIDLs gone and new ones there is its
        # daily way, not a reset.
        gmail = b"Gpop" in client.greeting.text
        self._batched = gmail and len(messages) >= GMAIL_BATCH
        # Read while the server was busy listing, unless intents were
        # resolved since (or the client never had to wait).
        if self._reconcile(client, target, messages) or self._known is None:
            self._read_known()
        known = self._known
        assert known is not None
        plan = make_plan(account, messages, known, now=self.now())
        if plan.repeated_uidls:
            # popa3d's header-hash UIDLs repeat for identical messages every
            # run: handled, so only -v says so (cron stays quiet).
            self.result.notes.append(f"server lists {plan.repeated_uidls} repeated UIDL(s)")
        # With keep = false the store holds only what QUIT has not deleted
        # yet (an interrupted run's), so the brake works for it too.
        brake = not self.accept_new_uidls and not gmail
        if brake:
            reason = uidl_reset(plan, known.seen)
            if reason:
                name = account.name
                raise UIDLResetError(
                    f"{reason}; run `fetchpop seen mark {name}` to take them as seen, "
                    f"or `fetchpop sync --accept-new-uidls {name}` to download them all"
                )
        window = PIPELINE_WINDOW if client.pipelining else 1
        if plan.delete:
            known = self._prove(client, plan, known, window, brake=brake)
            plan = make_plan(account, messages, known, now=self.now())
        self._note_skips(plan, known.problems)
        if self._undecided:
            plan.fetch = [m for m in plan.fetch if m.uidl not in self._undecided]
        if self.on_plan:
            self.on_plan(plan.fetch)
        try:
            self._fetch(client, target, plan.fetch, window)
        finally:
            self._commit(target)
            self._drop_unused_intents()
        # Only what is recorded (and synced) is considered for deletion.
        if self._fresh:
            plan = make_plan(account, messages, known, now=self.now(), fresh=self._fresh)
        self._delete_and_quit(client, messages, known, plan, window)

    def _prove(
        self, client: Client, plan: Plan, known: Known, window: int, *, brake: bool
    ) -> Known:
        """Check that each message an earlier session delivered, planned for
        deletion now, is still that message: its header, read with ``TOP n 0``,
        must give the identity recorded with it (:mod:`fetchpop.sync.ident`).

        A different message under the old UIDL (the server handed the UIDL
        out again) loses the record and is fetched as new; one that cannot be
        checked (TOP refused) stays on the server, and is said. A record made
        before identities were kept adopts the message's now. When most of
        many are different, the server has handed its UIDLs out anew: the
        UIDL-reset brake stops the run (with *brake*) before anything
        changes. Returns what the store knows after that.
        """
        recorded = self.store.idents(self._mailbox)
        todo = [m for m, _ in plan.delete]
        heads = client.retrieve([(m.number, m.size) for m in todo], window=window, header_only=True)
        different, adopted = [], {}
        for msg, (_, head) in zip(todo, heads, strict=True):
            if isinstance(head, Refusal):
                self._unproven.add(msg.uidl)
                self.result.warnings.append(
                    f"left {sanitize(msg.uidl)} on the server: cannot check that it is the "
                    f"message delivered before (TOP: {head.words})"
                )
                continue
            reader = HeaderReader()
            for chunk in head:
                reader.feed(chunk)
            ident = reader.ident()
            if msg.uidl not in recorded:
                adopted[msg.uidl] = ident
            elif recorded[msg.uidl] != ident:
                different.append(msg.uidl)
        if brake:
            self._reuse_brake(len(different), len(todo))
        if adopted:
            self.store.set_idents(self._mailbox, adopted)
        if not different:
            return known
        self.store.forget(self._mailbox, different)
        self.result.warnings.append(
            f"{len(different)} message(s) carry the UIDL of another message delivered "
            "before: fetched as new, not deleted"
        )
        return dataclasses.replace(known, seen=known.seen.without(set(different)))

    def _reuse_brake(self, different: int, checked: int) -> None:
        """The UIDL-reset brake for UIDLs handed out again (proven by ``_prove``)."""
        if different >= RESET_MIN_UNKNOWN and different > checked // 2:
            name = self.account.name
            raise UIDLResetError(
                f"{different} of the {checked} messages delivered before and checked now "
                "are other messages under the same UIDLs: the server may have reset its "
                "UIDLs and handed them out again. Nothing was fetched or deleted; run "
                f"`fetchpop sync --accept-new-uidls {name}` to download them as new"
            )

    def _delete_and_quit(
        self, client: Client, messages: Maildrop, known: Known, plan: Plan, window: int
    ) -> None:
        """DELE what the plan says (never a message that failed its check), QUIT,
        and forget the records of what QUIT deleted: a UIDL that comes back
        after that is a new message."""
        doomed = [m for m, _ in plan.delete if m.uidl not in self._unproven]
        refused = dict(client.delete_and_quit([m.number for m in doomed], window=window))
        for number, reply in refused.items():
            self.result.warnings.append(f"server refused DELE {number}: {reply.words}")
        deleted = [m.uidl for m in doomed if m.number not in refused]
        self.result.deleted += len(deleted)
        if deleted:
            self.store.forget(self._mailbox, deleted)
        # The session completed: UIDLs gone from the server can go from the store
        # (recorded before this session, or by it: those are on the server).
        self.store.prune(self._mailbox, *vanished(messages, known, set(deleted)))

    def _note_skips(self, plan: Plan, problems: Mapping[str, tuple[int, str]]) -> None:
        """Skipped messages: a warning the first time (max_size), every time (poison)."""
        self.result.skipped = [(m.uidl, why) for m, why in plan.skip]
        for msg, why in plan.skip:
            if msg.uidl in problems and problems[msg.uidl][0] >= MAX_ATTEMPTS:
                # Said on every run, even with -q (it ends the run with 65):
                # mail that never arrives must not go unnoticed under cron.
                self.result.problems.append(f"skipped {sanitize(msg.uidl)}: {why}")
            elif msg.uidl not in problems and why.startswith("larger than max_size"):
                self.store.note_problem(self._mailbox, msg.uidl, why, attempt=False)
                self.result.warnings.append(f"skipped {sanitize(msg.uidl)}: {why}")

    def _fetch(
        self, client: Client, target: Target, todo: list[ServerMessage], window: int
    ) -> None:
        pending_octets = 0
        retrieved = client.retrieve([(m.number, m.size) for m in todo], window=window)
        for i, (number, body) in enumerate(retrieved):
            msg = todo[i]
            assert msg.number == number
            if number not in self._ahead and self._target_reserves:
                self._journal_ahead(target, todo[i : i + BATCH_MESSAGES])
            if isinstance(body, Refusal):
                self._retr_refused(msg, body)
                continue
            try:
                octets = self._deliver_one(target, msg, body)
            except DeliveryError as exc:
                # This message's fault (an MDA refused it), not the target's:
                # count the attempt and go on with the others.
                if not self._poison(msg, exc):
                    raise
                continue
            if self.on_message:
                self.on_message(msg, octets)
            self.checkpoint()
            pending_octets += octets
            if len(self._batch) >= BATCH_MESSAGES or pending_octets >= BATCH_OCTETS:
                self._commit(target)
                pending_octets = 0

    def _retr_refused(self, msg: ServerMessage, reply: Refusal) -> None:
        """RETR got -ERR: the message is gone, or the server cannot serve it now."""
        uidl, words = sanitize(msg.uidl), reply.words
        if message_gone(reply):
            # Deleted since the listing (another device): nothing to fetch.
            self.result.warnings.append(
                f"message {uidl} vanished before it could be fetched: {words}"
            )
            return
        # [SYS/TEMP] and the like: it stays on the server, unrecorded, and the
        # run says "try again later" (75) instead of passing over it. Each
        # such run counts, as a refused delivery does: a message the server
        # never serves is skipped after MAX_ATTEMPTS runs (65), not retried
        # (and every other account's --every round slowed) for ever.
        self.store.note_problem(self._mailbox, msg.uidl, f"RETR: {words}", attempt=True)
        line = (
            f"message {uidl} could not be fetched: {words.rstrip('.')}; "
            "it stays on the server"
        )
        if self.failure is None:
            self.failure = TempFailError(line)
        else:
            self.result.warnings.append(line)

    def _poison(self, msg: ServerMessage, exc: DeliveryError) -> bool:
        """Count a failed delivery; True when the session may go on without it."""
        if not isinstance(exc, MessageRejectedError):
            return False  # the target cannot work at all: it fails for every message
        reason = " ".join(str(exc).split())
        attempts = self.store.note_problem(self._mailbox, msg.uidl, reason, attempt=True)
        self.result.warnings.append(
            f"message {sanitize(msg.uidl)} not delivered (attempt {attempts} of "
            f"{MAX_ATTEMPTS}): {reason}"
        )
        self.failure = self.failure or exc
        return True

    def _journal_ahead(self, target: Target, messages: list[ServerMessage]) -> None:
        """Journal the intents of the next *messages* in one transaction, if the target can."""
        names = target.reserve(len(messages))
        if not names:
            self._target_reserves = False
            return
        where = format_deliver(self.account.deliver)
        pairs = [(m.uidl, name) for m, name in zip(messages, names, strict=True)]
        # Durable now, so that the batch's flush needs no checkpoint first.
        ids = self.store.begin_intents(self._mailbox, where, pairs, durable=True)
        for msg, intent, name in zip(messages, ids, names, strict=True):
            self._ahead[msg.number] = (intent, name)

    def _drop_unused_intents(self) -> None:
        """Intents journalled ahead for messages never begun (vanished, or a stop)."""
        if self._ahead:
            unused, self._ahead = self._ahead, {}
            self.store.drop_intents([intent for intent, _ in unused.values()])

    def _deliver_one(self, target: Target, msg: ServerMessage, body: Iterator[bytes]) -> int:
        ahead = self._ahead.pop(msg.number, None)
        if ahead is not None:
            intent, name = ahead
            delivery = target.begin(msg.uidl, name)
        else:
            delivery = target.begin(msg.uidl)
            try:
                (intent,) = self.store.begin_intents(
                    self._mailbox,
                    format_deliver(self.account.deliver),
                    [(msg.uidl, delivery.intent)],
                    durable=True,
                )
            except BaseException:
                delivery.abort()
                raise
        octets = 0
        header = HeaderReader()
        try:
            for chunk in body:
                delivery.write(chunk)
                header.feed(chunk)
                octets += len(chunk)
                if self.progress:
                    self.progress(msg.uidl, len(chunk))
            delivery.finish()
        except BaseException as exc:
            delivery.abort()
            if isinstance(exc, FetchpopError) and exc.outcome_unknown:
                raise  # the target may have it: the intent stays for recovery
            # If this fails, the next run finds the message absent and drops it.
            with contextlib.suppress(FetchpopError):
                self.store.drop_intents([intent])
            raise
        self._batch.append((intent, msg.uidl, octets, header.ident()))
        return octets

    def _commit(self, target: Target) -> None:
        """Group commit: make finished deliveries durable, then record them."""
        if not self._batch:
            return
        batch, self._batch = self._batch, []
        target.flush()
        uidls = [uidl for _, uidl, _, _ in batch]
        # The batch ends here: intents journalled ahead and not used (a
        # message refused or vanished) go with it, and the next message
        # journals a new batch (an mbox's from where the file ends then).
        unused, self._ahead = self._ahead, {}
        done = [i for i, _, _, _ in batch] + [i for i, _ in unused.values()]
        idents = {uidl: ident for _, uidl, _, ident in batch}
        # Recorded durably before any DELE.
        self.store.record(
            self._mailbox, uidls, done=done, now=self.now(), durable=True, idents=idents
        )
        self._fresh.update(uidls)
        self.result.fetched += len(batch)
        self.result.octets += sum(o for _, _, o, _ in batch)
