"""One account's session: the order that keeps SPEC section 1's promises.

The ordering invariant, for every message:

    1. journal an intent in the seen-store        (so a crash can be recognised)
    2. RETR, streaming into the delivery target   (never whole in memory)
    3. finish, then flush: data and directory fsynced (or the MDA exited 0)
    4. record the UIDL and drop the intent, in one committed transaction,
       made durable (checkpoint) before step 5
    5. only then may DELE be sent, and only QUIT makes it happen.

Any failure before 4 leaves the message on the server and unrecorded; a crash
between 3 and 4 leaves an intent that the next run resolves by looking in the
target instead of delivering again. Steps 1, 3 and 4 are batched (group
commit): where the target can name its deliveries ahead (a Maildir), one
transaction journals the intents of a whole batch before its first message is
written; after several finished messages, one round of fsyncs and one
transaction record them — never recording or deleting anything that is not
yet durable.
"""

from __future__ import annotations

import contextlib
import dataclasses
import re
import time
from collections.abc import Callable, Collection, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from fetchpop.config import Account, format_deliver
from fetchpop.deliver import DeliverySpec, open_target, parse_deliver
from fetchpop.deliver.base import Target
from fetchpop.errors import (
    CapabilityError,
    DeliveryError,
    FetchpopError,
    NotPOP3Error,
    PipeliningLostError,
    ProtocolError,
    TempFailError,
    WrongServiceError,
    sanitize,
)
from fetchpop.pop3 import auth
from fetchpop.pop3.client import PIPELINE_WINDOW, Client, Log, Refusal
from fetchpop.pop3.listings import Capabilities
from fetchpop.pop3.protocol import identify_service
from fetchpop.pop3.transport import (
    NotTLSError,
    Transport,
    UnknownIssuerError,
    first_words,
    make_ssl_context,
)
from fetchpop.seenstore import NO_PIPELINING, Intent, SeenStore

#: Group commit: flush after this many messages or bytes, whichever first.
BATCH_MESSAGES = 64
BATCH_OCTETS = 16 * 1024 * 1024
DAY = 86400.0
#: A message that fails delivery this many times is skipped (and reported).
MAX_ATTEMPTS = 3
#: The UIDL-reset brake: this many unknown messages at least ...
RESET_MIN_UNKNOWN = 20
#: Gmail ("+OK Gpop ready ...") lists about 250 messages a session; a listing
#: this long from it may be one batch of many (the next session lists the next).
GMAIL_BATCH = 200
#: Sessions one sync may open for such a server (250 messages each).
MAX_SESSIONS = 40
#: Seconds without a greeting after which fetchpop looks (on a second
#: connection) whether the port speaks TLS or another protocol, so a wrong
#: port or TLS mode is said in seconds instead of after the whole timeout.
GREETING_PROBE = 2.0

#: How servers say that RETR's message is gone (deleted by another client
#: since the listing): Dovecot "Message 1 expunged.", "There's no message 9.",
#: Courier "Can't open the message file - it's gone!"
_GONE = re.compile(
    rb"expunged|no such message|no message|deleted|does ?n[o']t exist|not found|gone",
    re.IGNORECASE,
)

PasswordSource = Callable[[], str]
Progress = Callable[[str, int], None]


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
    server_messages: int = 0


# -- the session ---------------------------------------------------------------


def open_connection(
    account: Account,
    *,
    log: Log | None = None,
    seen_caps: dict[str, object] | None = None,
    whole_store: bool = False,
    known: Capabilities | None = None,
    pipelining: bool = True,
) -> Client:
    """Connect and secure the channel (implicit TLS or STLS), up to the login.

    *seen_caps*, when given, receives the capabilities at each stage. A
    certificate whose issuer the system's CA directory lacks is tried once
    more against the whole CA store (see :func:`make_ssl_context`).

    *known* are the capabilities the server gave before the login last time
    (over TLS): then no CAPA is waited for. STLS goes out at once, and CAPA
    goes out with the login (see :meth:`Client.assume_capabilities`).

    *pipelining* False: lock-step, whatever the server advertises.
    """
    try:
        return _open_connection(account, log, seen_caps, whole_store, known, pipelining)
    except UnknownIssuerError:
        if whole_store:
            raise
        return _open_connection(account, log, seen_caps, True, known, pipelining)


def _open_connection(
    account: Account,
    log: Log | None,
    seen_caps: dict[str, object] | None,
    whole_store: bool,
    known: Capabilities | None,
    pipelining: bool,
) -> Client:
    caps = seen_caps if seen_caps is not None else {}
    context = None
    if account.tls != "off":
        context = make_ssl_context(
            account.ca_file, account.tls_fingerprint, whole_store=whole_store
        )
    else:
        known = None  # only what an authenticated server said may save a round trip
    if known is not None and ("PIPELINING" not in known or not pipelining):
        known = None  # RFC 2449 section 6.6: no pipelining unless the server offers it
    try:
        transport = Transport.connect(
            account.host,
            account.port,
            timeout=account.timeout,
            tls=context if account.tls == "implicit" else None,
            pinned=account.tls_fingerprint,
        )
    except NotTLSError as exc:
        service = identify_service(first_words(account.host, account.port))
        raise (exc if service in (None, "TLS") else wrong_port(account, service)) from exc
    try:
        if account.tls != "implicit" and not transport.wait_readable(GREETING_PROBE):
            service = identify_service(first_words(account.host, account.port))
            if service not in (None, "pop3"):
                raise wrong_port(account, service)
        try:
            client = Client(transport, log=log, pipelining=pipelining)
        except NotPOP3Error as exc:
            raise wrong_port(account, exc.service) from exc
        if account.tls == "starttls":
            assert context is not None
            if known is None:
                caps["before_tls"] = client.capa()
            client.stls(context, account.tls_fingerprint)
        if known is None:
            caps["before_login"] = client.capa()
        else:
            client.assume_capabilities(known)
    except BaseException:
        transport.close()
        raise
    return client


def wrong_port(account: Account, service: str) -> WrongServiceError:
    """The error for a port that answers in *service* ("TLS", "pop3", "SSH" ...)."""
    port = account.port
    if service == "TLS":
        return WrongServiceError(
            f'port {port} expects TLS from the first byte: set tls = "implicit"'
        )
    if service == "pop3":
        return WrongServiceError(
            f"port {port} speaks POP3 in clear text, not TLS from the first byte: "
            'set tls = "starttls" (or use port 995 with tls = "implicit")'
        )
    return WrongServiceError(
        f"port {port} of {account.host} speaks {service}, not POP3: check the port "
        '(POP3 uses 110, or 995 with tls = "implicit")'
    )


def connect(
    account: Account,
    password: PasswordSource,
    *,
    log: Log | None = None,
    known: Capabilities | None = None,
    meanwhile: Callable[[], None] | None = None,
    pipelining: bool = True,
) -> Client:
    """Open, secure and log in to *account*'s server. The caller QUITs or closes.

    *meanwhile* runs while the server checks the login (:meth:`Client.when_waiting`).

    CAPA is asked again after login by :meth:`Client.maildrop`, pipelined with
    UIDL and LIST where the server allows it. With *known* capabilities (see
    :func:`open_connection`) the first CAPA goes out with the login.
    """
    client = open_connection(account, log=log, known=known, pipelining=pipelining)
    try:
        if meanwhile is not None:
            client.when_waiting(meanwhile)
        login(client, account, password)
    except BaseException:
        client.close()
        raise
    return client


def probe(account: Account, password: PasswordSource, *, log: Log | None = None) -> dict[str, Any]:
    """What ``fetchpop serverinfo`` shows: greeting, TLS details, CAPA at each stage.

    A failed login is reported in the result, not raised: the rest is still useful.
    """
    caps: dict[str, object] = {}
    client = open_connection(account, log=log, seen_caps=caps)
    info: dict[str, Any] = {
        "greeting": sanitize(client.greeting.text),
        "apop": client.greeting.timestamp is not None,
        "tls": None,
        "capabilities": caps,
        "login_error": None,
    }
    tls = client.transport.tls_info()
    if tls is not None:
        info["tls"] = dataclasses.asdict(tls)
    try:
        login(client, account, password)
        caps["after_login"] = client.capa()
        client.quit()
    except FetchpopError as exc:
        info["login_error"] = str(exc)
        client.close()
    except BaseException:
        client.close()
        raise
    return info


def login(client: Client, account: Account, password: PasswordSource) -> None:
    """Authenticate with the mechanism the account asks for (or the best offered)."""
    if client.has("UTF8"):
        client.utf8()
    method: str = account.auth
    sasl_offered = (client.capabilities or {}).get("SASL", [])
    if method == "auto":
        chosen = auth.choose_mechanism(sasl_offered, tls=client.transport.is_tls)
        method = chosen.lower() if chosen else "user"
    if method == "user":
        client.user_pass(account.user, password())
    elif method == "apop":
        client.require_apop()  # before the password is fetched (or asked for)
        client.apop(account.user, password())
    else:
        name = method.upper()
        if client.capabilities is not None and name not in (m.upper() for m in sasl_offered):
            raise CapabilityError(
                f"server does not offer SASL {name} (it offers: "
                + (", ".join(sasl_offered) or "none")
                + ")"
            )
        mechanism = auth.mechanism_for(
            method, account.user, password(), host=account.host, port=account.port
        )
        client.sasl(mechanism)


def server_messages(client: Client) -> tuple[list[ServerMessage], int]:
    """UIDL and LIST merged; repeated UIDLs get distinct keys. Returns (messages, repeats)."""
    listing, sizes = client.maildrop()
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


def read_known(store: SeenStore, mailbox: int) -> Known:
    """Everything :func:`make_plan` needs from the store, in three queries."""
    return Known(store.seen(mailbox), store.undelivered(mailbox), store.problems(mailbox))


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


@contextmanager
def _target(spec: DeliverySpec, account: Account) -> Iterator[Target]:
    target = open_target(spec, mbox_lock_timeout=account.mbox_lock_timeout)
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
    ) -> None:
        self.account = account
        self.store = store
        self.password = password
        self.log = log
        self.progress = progress
        self.now = now
        self.accept_new_uidls = accept_new_uidls
        #: Told of each message delivered (not yet recorded), for ``-v``.
        self.on_message = on_message
        #: The first per-message delivery failure; raised after the session.
        self.failure: FetchpopError | None = None
        # Called between messages; raises (Interrupted) to stop at a safe point.
        self.checkpoint = checkpoint or (lambda: None)
        self.result = SyncResult(account.name)
        self._mailbox = 0
        self._batch: list[tuple[int, str, int]] = []  # (intent id, uidl, octets)
        self._fresh: set[str] = set()
        # Intents journalled ahead, a batch per transaction: number -> (id, intent).
        self._ahead: dict[int, tuple[int, str]] = {}
        self._target_reserves = True  # until the target says it cannot
        self._known: Known | None = None  # read while the server works (see run)
        self._pipelining = True  # until the server is known to lose commands
        self._batched = False  # the last session's listing may have been a batch (Gmail)
        self._listed = 0

    def run(self) -> SyncResult:
        """Sync the account; raises a FetchpopError subclass on failure."""
        account = self.account
        mailbox = self.store.mailbox_id(*account.mailbox)
        assert mailbox is not None
        self._mailbox = mailbox
        self._pipelining = NO_PIPELINING not in self.store.quirks(mailbox)
        with _target(account.deliver, account) as target:
            sessions = 1
            before = self.result.fetched
            self._connection(target)
            # Gmail lists at most about 250 messages a session, the next ones
            # the next session: go on while each session brings new mail.
            while self._batched and self.result.fetched > before and self.failure is None:
                if sessions == MAX_SESSIONS:
                    self.result.notes.append(
                        f"the server lists at most {self._listed} messages a session; "
                        f"more may be waiting after {sessions} sessions, for the next run"
                    )
                    break
                sessions += 1
                before = self.result.fetched
                self._known = None
                self._connection(target)
            if sessions > 1:
                self.result.notes.append(
                    f"{sessions} sessions: the server lists at most {self._listed} messages at once"
                )
        if self.failure is not None:
            raise self.failure
        return self.result

    def _connection(self, target: Target) -> None:
        """One session, and once more in lock-step if the server lost pipelined commands."""
        try:
            self._session(target, self._pipelining)
        except PipeliningLostError as exc:
            if not self._pipelining:
                raise
            # What was delivered is recorded, nothing was deleted (no QUIT was
            # confirmed): the next session goes on from there.
            self.store.note_quirk(self._mailbox, NO_PIPELINING)
            self.result.notes.append(f"{exc}; going on without pipelining, now and in later runs")
            self._pipelining = False
            self._known = None
            self._session(target, pipelining=False)

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
        self._known = read_known(self.store, self._mailbox)

    def _reconcile(self, client: Client, target: Target, messages: list[ServerMessage]) -> bool:
        """Resolve intents left by a run that was killed (SPEC section 1, promise 2).

        A Maildir answers from its directories. An mbox whose file grew past
        the intent's offset is compared with the server's copy (a partial tail
        is cut off). An MDA cannot be asked: the message is delivered again,
        at least once, never lost; fetchpop(1) says so. True when there were
        intents (then the store has changed).
        """
        intents = self.store.intents(self._mailbox)
        if not intents:
            return False
        on_server = {m.uidl: m for m in messages}
        current = format_deliver(self.account.deliver)
        recorded: list[Intent] = []
        dropped: list[Intent] = []
        for intent in intents:
            if intent.target == current:
                found = target.delivered(intent.detail)
                if found is None and intent.uidl in on_server:
                    msg = on_server[intent.uidl]
                    found = self._confirm(client, target, intent.detail, msg)
            else:
                with _target(parse_deliver(intent.target), self.account) as other:
                    found = other.delivered(intent.detail)
            (recorded if found else dropped).append(intent)
        if recorded:
            self.store.record(
                self._mailbox, [i.uidl for i in recorded], done=[i.id for i in recorded]
            )
            self.store.sync()
            self.result.warnings.append(
                f"{len(recorded)} message(s) delivered by an interrupted run were recorded"
            )
        if dropped:
            self.store.drop_intents([i.id for i in dropped])
        return True

    @staticmethod
    def _confirm(client: Client, target: Target, detail: str, msg: ServerMessage) -> bool:
        for _, body in client.retrieve([(msg.number, msg.size)]):
            if isinstance(body, Refusal):
                return False
            return target.confirm(detail, body)
        return False

    def _transact(self, client: Client, target: Target) -> None:
        account = self.account
        messages, repeats = server_messages(client)
        self.result.server_messages = len(messages)
        self._listed = max(self._listed, len(messages))
        # Gmail's normal mode lists no message a session has retrieved (and
        # about 250 at a time): old UIDLs gone and new ones there is its
        # daily way, not a reset.
        gmail = b"Gpop" in client.greeting.text
        self._batched = gmail and len(messages) >= GMAIL_BATCH
        # Read while the server was busy with the login, unless intents were
        # resolved since (or the client never had to wait).
        if self._reconcile(client, target, messages) or self._known is None:
            self._read_known()
        known = self._known
        assert known is not None
        if repeats:
            # popa3d's header-hash UIDLs repeat for identical messages every
            # run: handled, so only -v says so (cron stays quiet).
            self.result.notes.append(f"server lists {repeats} repeated UIDL(s)")
        plan = make_plan(account, messages, known, now=self.now())
        # With keep = false our own deletions empty the server; only a
        # leave-on-server mailbox can tell a UIDL reset from new mail.
        if account.keep and not self.accept_new_uidls and not gmail:
            reason = uidl_reset(plan, known.seen)
            if reason:
                name = account.name
                raise UIDLResetError(
                    f"{reason}; run `fetchpop seen mark {name}` to take them as seen, "
                    f"or `fetchpop sync --accept-new-uidls {name}` to download them all"
                )
        self._note_skips(plan, known.problems)
        window = PIPELINE_WINDOW if client.pipelining else 1
        try:
            self._fetch(client, target, plan.fetch, window)
        finally:
            self._commit(target)
            self._drop_unused_intents()
        # Only what is recorded (and synced) is considered for deletion.
        if self._fresh:
            plan = make_plan(account, messages, known, now=self.now(), fresh=self._fresh)
        numbers = [m.number for m, _ in plan.delete]
        refused = client.delete_and_quit(numbers, window=window)
        for number, reply in refused:
            self.result.warnings.append(f"server refused DELE {number}: {reply.words}")
        self.result.deleted = len(numbers) - len(refused)
        # The session completed: UIDLs gone from the server can go from the store
        # (recorded before this session, or by it: those are on the server).
        self.store.prune(
            self._mailbox,
            {m.uidl for m in messages},
            recorded=known.seen,
            problems=known.problems,
        )

    def _note_skips(self, plan: Plan, problems: Mapping[str, tuple[int, str]]) -> None:
        """Skipped messages: a warning the first time (max_size), every time (poison)."""
        self.result.skipped = [(m.uidl, why) for m, why in plan.skip]
        for msg, why in plan.skip:
            if msg.uidl in problems and problems[msg.uidl][0] >= MAX_ATTEMPTS:
                self.result.warnings.append(f"skipped {sanitize(msg.uidl)}: {why}")
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
        if reply.code is None and _GONE.search(reply.text):
            # Deleted since the listing (another device): nothing to fetch.
            self.result.warnings.append(
                f"message {uidl} vanished before it could be fetched: {words}"
            )
            return
        # [SYS/TEMP] and the like: it stays on the server, unrecorded, and the
        # run says "try again later" (75) instead of passing over it.
        line = f"message {uidl} could not be fetched: {words}; it stays on the server"
        if self.failure is None:
            self.failure = TempFailError(line)
        else:
            self.result.warnings.append(line)

    def _poison(self, msg: ServerMessage, exc: DeliveryError) -> bool:
        """Count a failed delivery; True when the session may go on without it."""
        if self.account.deliver.kind != "mda":
            return False  # a Maildir or mbox that cannot be written fails for all
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
                intent = self.store.begin_intent(
                    self._mailbox, msg.uidl, format_deliver(self.account.deliver), delivery.intent
                )
            except BaseException:
                delivery.abort()
                raise
        octets = 0
        try:
            for chunk in body:
                delivery.write(chunk)
                octets += len(chunk)
                if self.progress:
                    self.progress(msg.uidl, len(chunk))
            delivery.finish()
        except BaseException:
            delivery.abort()
            # If this fails, the next run finds the message absent and drops it.
            with contextlib.suppress(FetchpopError):
                self.store.drop_intents([intent])
            raise
        self._batch.append((intent, msg.uidl, octets))
        return octets

    def _commit(self, target: Target) -> None:
        """Group commit: make finished deliveries durable, then record them."""
        if not self._batch:
            return
        batch, self._batch = self._batch, []
        self.store.sync()  # intents durable before the messages are
        target.flush()
        uidls = [uidl for _, uidl, _ in batch]
        done = [i for i, _, _ in batch]
        # Recorded durably before any DELE.
        self.store.record(self._mailbox, uidls, done=done, now=self.now(), durable=True)
        self._fresh.update(uidls)
        self.result.fetched += len(batch)
        self.result.octets += sum(o for _, _, o in batch)


def list_server(
    account: Account, password: PasswordSource, *, log: Log | None = None
) -> tuple[list[ServerMessage], int]:
    """Log in, list the maildrop (see :func:`server_messages`), QUIT. Changes nothing."""
    try:
        return _list_server(account, password, log, pipelining=True)
    except PipeliningLostError:
        return _list_server(account, password, log, pipelining=False)


def _list_server(
    account: Account, password: PasswordSource, log: Log | None, *, pipelining: bool
) -> tuple[list[ServerMessage], int]:
    client = connect(account, password, log=log, pipelining=pipelining)
    try:
        listing = server_messages(client)
        client.quit()
    except BaseException:
        client.close()
        raise
    return listing


def check_account(
    account: Account,
    known: Known,
    password: PasswordSource,
    *,
    log: Log | None = None,
    now: float | None = None,
) -> Plan:
    """What a sync would fetch and delete now. Changes nothing anywhere."""
    messages, repeats = list_server(account, password, log=log)
    plan = make_plan(account, messages, known, now=time.time() if now is None else now)
    plan.repeated_uidls = repeats
    return plan


def mark_seen(
    account: Account,
    store: SeenStore | None,
    password: PasswordSource,
    *,
    log: Log | None = None,
) -> tuple[int, list[str]]:
    """Record every message now on the server as seen, downloading nothing.

    Returns (messages on the server, UIDLs newly recorded). With *store* None
    (a dry run) nothing is written; the second item lists what would be.
    """
    messages, _ = list_server(account, password, log=log)
    seen: dict[str, float] = {}
    mailbox = None
    if store is not None:
        mailbox = store.mailbox_id(*account.mailbox)
        assert mailbox is not None
        seen = store.seen(mailbox)
    new = [m.uidl for m in messages if m.uidl not in seen]
    if store is not None and mailbox is not None:
        store.record(mailbox, new, delivered=False)
        store.sync()
    return len(messages), new
