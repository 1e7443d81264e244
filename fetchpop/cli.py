"""The command line: the only module that imports click, prints, or picks an exit code.

Everything below raises typed errors (fetchpop.errors); :func:`run_accounts`
turns each account's failure into one line naming the account, and the exit
status is that failure's code, or 75 (TEMPFAIL) when several accounts failed.
Heavy modules are imported inside the commands so ``fetchpop --version``
stays fast.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, NoReturn

import click

from fetchpop import __version__
from fetchpop.errors import ExitCode, FetchpopError, sanitize

if TYPE_CHECKING:
    from fetchpop.config import Account, Config
    from fetchpop.oauth import DeviceCode
    from fetchpop.seenstore import SeenStore
    from fetchpop.sync import Known, ServerMessage


@dataclasses.dataclass
class Environment:
    """Streams, terminal flags and directories of one run; tests may replace it."""

    stdout: IO[str] = dataclasses.field(default_factory=lambda: sys.stdout)
    stderr: IO[str] = dataclasses.field(default_factory=lambda: sys.stderr)
    stdin_isatty: bool = dataclasses.field(default_factory=lambda: sys.stdin.isatty())
    stderr_isatty: bool = dataclasses.field(default_factory=lambda: sys.stderr.isatty())
    environ: dict[str, str] = dataclasses.field(default_factory=lambda: dict(os.environ))
    config_option: str | None = None
    verbose: int = 0
    quiet: bool = False
    state_override: Path | None = None
    #: Off only for `fetchpop demo`, whose server is on this machine.
    warn_clear_text: bool = True

    def state_dir(self) -> Path:
        """``<user state dir>/fetchpop`` (Linux: $XDG_STATE_HOME/fetchpop)."""
        if self.state_override is not None:
            return self.state_override
        from fetchpop.config import user_dir

        return user_dir("state", self.environ)

    def store_path(self) -> Path:
        """Where the seen-store lives."""
        return self.state_dir() / "fetchpop.sqlite3"

    def error(self, text: str) -> None:
        """One line on stderr, prefixed ``fetchpop:``."""
        print(f"fetchpop: {text}", file=self.stderr, flush=True)

    def info(self, text: str, level: int = 1) -> None:
        """Print when -v was given *level* times (and not -q)."""
        if self.verbose >= level and not self.quiet:
            print(text, file=self.stderr, flush=True)

    def warn(self, text: str) -> None:
        """A warning: shown unless -q."""
        if not self.quiet:
            self.error(text)

    def print_json(self, data: object) -> None:
        """``--json`` output: *data* indented, on stdout."""
        import json  # (lazily: a plain sync has no use for it)

        json.dump(data, self.stdout, indent=2)
        self.stdout.write("\n")
        self.stdout.flush()

    def load_config(self) -> Config:
        """Find and load the configuration file."""
        from fetchpop.config import find_config_path, load_config

        return load_config(find_config_path(self.config_option, self.environ), environ=self.environ)

    def password_source(self, account: Account) -> Callable[[], str]:
        """A callable that fetches the account's password only when the login needs it.

        With ``oauth_provider`` set, the "password" is an OAuth2 access token,
        refreshed when needed and never prompted for.
        """
        if account.oauth_provider is not None:
            return self._access_tokens(account)

        def get() -> str:
            from fetchpop.secrets import get_password

            prompt = None
            if self.stdin_isatty:
                import getpass

                prompt = getpass.getpass
            return get_password(account, prompt=prompt)

        return get

    def _access_tokens(self, account: Account) -> Callable[[], str]:
        tokens: list[Callable[[], str]] = []  # built on first use, then kept for the run

        def get() -> str:
            if not tokens:
                from fetchpop.oauth import AccessTokens, HttpClient, provider_for
                from fetchpop.secrets import OAuthTokenStore

                tokens.append(
                    AccessTokens(
                        provider_for(account),
                        OAuthTokenStore(account),
                        account_name=account.name,
                        http=HttpClient(timeout=account.timeout),
                    )
                )
            return tokens[0]()

        return get


class Signals:
    """SIGINT and SIGTERM during a sync: stop at the next safe point.

    The first signal lets the message in flight finish and be recorded (the
    session calls :meth:`check` between messages); a second one stops at once,
    and the delivery in flight is abandoned cleanly (its tmp file removed, its
    intent left for the next run to resolve).
    """

    def __init__(self) -> None:
        self.received: int | None = None

    def install(self) -> None:
        import signal

        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, self._handle)

    def _handle(self, signum: int, _frame: object) -> None:
        from fetchpop.errors import Interrupted

        if self.received is not None:
            raise Interrupted(signum)
        self.received = signum

    def sleep(self, seconds: float) -> bool:
        """Sleep, waking early for a signal; True when one arrived."""
        deadline = time.monotonic() + seconds
        while self.received is None and time.monotonic() < deadline:
            time.sleep(min(0.2, max(0.0, deadline - time.monotonic())))
        return self.received is not None

    def check(self) -> None:
        """Raise Interrupted if a signal has arrived."""
        from fetchpop.errors import Interrupted

        if self.received is not None:
            raise Interrupted(self.received)


def _exit(code: int) -> NoReturn:
    sys.exit(code)


def guard(env: Environment, func: Callable[[], int]) -> NoReturn:
    """Run a command; the single place that turns errors into exit statuses."""
    try:
        code = func()
    except FetchpopError as exc:
        for line in str(exc).splitlines() or [type(exc).__name__]:
            env.error(line)
        code = int(exc.exit_code)
    except KeyboardInterrupt:
        env.error("interrupted")
        code = ExitCode.INTERRUPTED
    except Exception as exc:  # a bug: say so, briefly, with the type
        env.error(f"internal error ({type(exc).__name__}): {sanitize(str(exc))}")
        if env.verbose:
            import traceback

            traceback.print_exc(file=env.stderr)
        code = ExitCode.SOFTWARE
    _exit(code)


def combine(codes: Sequence[int]) -> int:
    """One failure: its code. Several: TEMPFAIL (SPEC section 6)."""
    failed = [c for c in codes if c != 0]
    if not failed:
        return ExitCode.OK
    return failed[0] if len(failed) == 1 else ExitCode.TEMPFAIL


class Progress:
    """A one-line progress display on a terminal's stderr; nothing elsewhere."""

    def __init__(self, env: Environment, account: str) -> None:
        self.enabled = env.stderr_isatty and not env.quiet
        self.env = env
        self.account = account
        self.octets = 0
        self._last = 0.0

    def __call__(self, uidl: str, octets: int) -> None:
        self.octets += octets
        now = time.monotonic()
        if self.enabled and now - self._last > 0.1:
            self._last = now
            text = f"\r{self.account}: {_size(self.octets)} received"
            self.env.stderr.write(text.ljust(60))
            self.env.stderr.flush()

    def clear(self) -> None:
        """Wipe the bar so a line of text can be printed; it comes back on the next chunk."""
        if self.enabled and self._last:
            self.env.stderr.write("\r" + " " * 60 + "\r")
            self.env.stderr.flush()
            self._last = 0.0

    def done(self) -> None:
        if self.enabled and self._last:
            self.env.stderr.write("\r" + " " * 60 + "\r")
            self.env.stderr.flush()


def _size(octets: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if octets < 1024 or unit == "GiB":
            return f"{octets:.0f} {unit}" if unit == "B" else f"{octets:.1f} {unit}"
        octets /= 1024
    return f"{octets} B"


# -- the commands ----------------------------------------------------------------


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-c", "--config", "config", metavar="FILE", help="Configuration file to use.")
@click.option("-v", "--verbose", count=True, help="More output; twice for a protocol transcript.")
@click.option("-q", "--quiet", is_flag=True, help="Print only errors.")
@click.version_option(__version__, "--version", prog_name="fetchpop")
@click.pass_context
def main(ctx: click.Context, config: str | None, verbose: int, quiet: bool) -> None:
    """Fetch mail from POP3 accounts into Maildir, mbox or a delivery program.

    A message is deleted from the server only after it has been durably
    delivered and recorded, and is never delivered twice.
    """
    ctx.obj = Environment(config_option=config, verbose=verbose, quiet=quiet)


def _env() -> Environment:
    env = click.get_current_context().obj
    assert isinstance(env, Environment)
    return env


def _transcript(env: Environment, account: str) -> Callable[[str], None] | None:
    if env.verbose < 2 or env.quiet:
        return None
    return lambda line: print(f"{account}: {line}", file=env.stderr, flush=True)


def _open_store(env: Environment) -> SeenStore:
    from fetchpop.seenstore import SeenStore

    return SeenStore(env.store_path())


@main.command()
@click.argument("accounts", nargs=-1)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON report on stdout.")
@click.option(
    "--wait",
    "wait",
    type=click.FloatRange(min=0),
    default=0.0,
    metavar="SECONDS",
    help="Wait this long for another run's lock on a mailbox.",
)
@click.option(
    "--accept-new-uidls",
    is_flag=True,
    help="Fetch even when the server seems to have reset its UIDLs.",
)
@click.option(
    "-j",
    "--jobs",
    type=click.IntRange(min=1, max=32),
    default=1,
    metavar="N",
    help="Sync up to N accounts at the same time.",
)
@click.option(
    "--every",
    metavar="INTERVAL",
    help="Keep running: sync every INTERVAL (e.g. 300, 5m, 1h), backing off after failures.",
)
def sync(
    accounts: tuple[str, ...],
    as_json: bool,
    wait: float,
    accept_new_uidls: bool,
    jobs: int,
    every: str | None,
) -> None:
    """Fetch new mail for the named accounts (all when none named)."""
    env = _env()
    interval = _interval(every) if every is not None else None

    def once(signals: Signals) -> int:
        selected = env.load_config().select(accounts)

        def one(account: Account) -> tuple[int, dict[str, Any]]:
            signals.check()
            return _sync_one(env, account, wait, signals, accept_new_uidls)

        if jobs > 1 and len(selected) > 1:
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(max_workers=jobs) as pool:
                results = list(pool.map(one, selected))
        else:
            results = [one(account) for account in selected]
        if as_json:
            env.print_json({"accounts": [r for _, r in results]})
        if signals.received is not None:
            return ExitCode.INTERRUPTED if signals.received == 2 else ExitCode.TERMINATED
        return combine([c for c, _ in results])

    def run() -> int:
        signals = Signals()
        signals.install()
        if interval is None:
            return once(signals)
        failures = 0
        while True:
            code = once(signals)
            if signals.received is not None:
                return code
            failures = failures + 1 if code else 0
            # Back off after failures: double the pause each time, up to an hour.
            pause = min(interval * 2**failures, max(interval, 3600.0))
            if failures:
                env.info(f"next try in {pause:.0f} s", level=1)
            if signals.sleep(pause):
                return ExitCode.OK  # asked to stop between runs: a clean exit

    guard(env, run)


def _interval(text: str) -> float:
    """Parse ``300``, ``30s``, ``5m``, ``1h``, ``1d`` into seconds (at least 1)."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    value = text.strip().lower()
    scale = units.get(value[-1:], 0)
    number = value[:-1] if scale else value
    if not scale:
        scale = 1
    try:
        seconds = float(number) * scale
    except ValueError:
        raise click.BadParameter(f"{text!r} is not an interval like 300, 30s, 5m or 1h") from None
    if not seconds >= 1:
        raise click.BadParameter("the interval must be at least one second")
    return seconds


def _sync_one(
    env: Environment, account: Account, wait: float, signals: Signals, accept_new_uidls: bool
) -> tuple[int, dict[str, Any]]:
    """Sync one account with its own seen-store connection (so jobs can run in threads)."""
    with _open_store(env) as store:
        return _sync_account(env, store, account, wait, signals, accept_new_uidls)


def _sync_account(
    env: Environment,
    store: SeenStore,
    account: Account,
    wait: float,
    signals: Signals,
    accept_new_uidls: bool,
) -> tuple[int, dict[str, Any]]:
    from fetchpop.locks import MailboxLock
    from fetchpop.seenstore import RunRecord
    from fetchpop.sync import Session, SyncResult

    started = time.time()
    progress = Progress(env, account.name)
    report: dict[str, Any] = {"account": account.name}
    if account.tls == "off" and env.warn_clear_text:
        env.warn(
            f'{account.name}: warning: tls = "off": password and mail cross '
            "the network in clear text"
        )
    session = None
    result: SyncResult | None = None
    try:
        with MailboxLock(env.state_dir(), account.mailbox) as lock:
            lock.acquire(wait)
            session = Session(
                account,
                store,
                env.password_source(account),
                log=_transcript(env, account.name),
                progress=progress if progress.enabled else None,
                checkpoint=signals.check,
                accept_new_uidls=accept_new_uidls,
                on_message=_message_line(env, account.name, progress),
            )
            result = session.run()
        code, message = 0, "ok"
    except FetchpopError as exc:
        progress.done()
        code, message = int(exc.exit_code), _one_line(exc)
        env.error(f"{account.name}: {message}")
        result = session.result if session else None
    else:
        progress.done()
    if result is not None:
        for warning in result.warnings:
            env.warn(f"{account.name}: {warning}")
        for note in result.notes:
            env.info(f"{account.name}: {note}")
        for uidl, why in result.skipped:
            env.info(f"{account.name}: skipped {sanitize(uidl)}: {why}")
        env.info(
            f"{account.name}: {result.fetched} new message(s), {_size(result.octets)}, "
            f"{result.deleted} deleted, {len(result.skipped)} skipped"
        )
        report.update(
            fetched=result.fetched,
            octets=result.octets,
            deleted=result.deleted,
            skipped=[{"uidl": u, "reason": r} for u, r in result.skipped],
            warnings=result.warnings,
            server_messages=result.server_messages,
        )
    report.update(ok=code == 0, exit_code=code, error=None if code == 0 else message)
    mailbox = store.mailbox_id(*account.mailbox)
    if mailbox is not None:
        store.record_run(
            mailbox,
            RunRecord(
                account.name,
                started,
                time.time(),
                code,
                message,
                result.fetched if result else 0,
                result.octets if result else 0,
                result.deleted if result else 0,
                len(result.skipped) if result else 0,
            ),
        )
    return code, report


def _message_line(
    env: Environment, account: str, progress: Progress
) -> Callable[[ServerMessage, int], None] | None:
    """``-v``: one line per message fetched (above the progress bar, if any)."""
    if env.verbose < 1 or env.quiet:
        return None

    def show(msg: ServerMessage, octets: int) -> None:
        progress.clear()
        env.info(
            f"{account}: fetched message {msg.number} ({_size(octets)}), "
            f"UIDL {sanitize(msg.uidl, 80)}"
        )

    return show


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


@main.command()
@click.argument("accounts", nargs=-1)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON report on stdout.")
def check(accounts: tuple[str, ...], as_json: bool) -> None:
    """Show what sync would fetch and delete now; change nothing anywhere."""
    env = _env()

    def run() -> int:
        from fetchpop.sync import Known, check_account

        config = env.load_config()
        codes, reports = [], []
        known_by_mailbox = _read_known(env, config.select(accounts))
        for account in config.select(accounts):
            try:
                plan = check_account(
                    account,
                    known_by_mailbox.get(account.mailbox, Known()),
                    env.password_source(account),
                    log=_transcript(env, account.name),
                )
            except FetchpopError as exc:
                env.error(f"{account.name}: {_one_line(exc)}")
                codes.append(int(exc.exit_code))
                reports.append({"account": account.name, "ok": False, "error": _one_line(exc)})
                continue
            codes.append(0)
            fetch: list[dict[str, Any]] = [
                {"uidl": m.uidl, "number": m.number, "size": m.size} for m in plan.fetch
            ]
            delete: list[dict[str, Any]] = [
                {"uidl": m.uidl, "number": m.number, "reason": r} for m, r in plan.delete
            ]
            skip: list[dict[str, Any]] = [
                {"uidl": m.uidl, "number": m.number, "reason": r} for m, r in plan.skip
            ]
            reports.append(
                {
                    "account": account.name,
                    "ok": True,
                    "server_messages": len(plan.messages),
                    "fetch": fetch,
                    "delete": delete,
                    "skip": skip,
                }
            )
            if not as_json:
                octets = sum(m.size or 0 for m in plan.fetch)
                print(
                    f"{account.name}: {len(plan.messages)} on server, {len(plan.fetch)} to fetch "
                    f"({_size(octets)}), {len(plan.delete)} to delete, {len(plan.skip)} to skip",
                    file=env.stdout,
                )
                for verb, items in (("delete", delete), ("skip", skip)):
                    for item in items:
                        print(
                            f"  {verb} {sanitize(str(item['uidl']))}: {item['reason']}",
                            file=env.stdout,
                        )
                if env.verbose:
                    for item in fetch:
                        print(
                            f"  fetch {sanitize(str(item['uidl']))} ({item['size']} octets)",
                            file=env.stdout,
                        )
        if as_json:
            env.print_json({"accounts": reports})
        return combine(codes)

    guard(env, run)


def _read_known(env: Environment, accounts: list[Account]) -> dict[tuple[str, int, str], Known]:
    """What the store knows per mailbox, read without creating or changing it."""
    from fetchpop.seenstore import SeenStore
    from fetchpop.sync import read_known

    path = env.store_path()
    if not path.exists():
        return {}
    out = {}
    with SeenStore(path, readonly=True) as store:
        for account in accounts:
            mailbox = store.mailbox_id(*account.mailbox, create=False)
            if mailbox is not None:
                out[account.mailbox] = read_known(store, mailbox)
    return out


@main.command(name="accounts")
@click.option("--json", "as_json", is_flag=True, help="Print JSON on stdout.")
def accounts_cmd(as_json: bool) -> None:
    """List the configured accounts, as resolved (secrets never shown)."""
    env = _env()

    def run() -> int:
        config = env.load_config()
        data = [a.to_public_dict() for a in config.accounts.values()]
        if as_json:
            env.print_json({"config": str(config.path), "accounts": data})
            return 0
        print(f"# {config.path}", file=env.stdout)
        for account in data:
            print(f"[{account['name']}]", file=env.stdout)
            for key, value in account.items():
                if key != "name" and value is not None:
                    print(f"  {key} = {value}", file=env.stdout)
        return 0

    guard(env, run)


@main.command()
@click.argument("accounts", nargs=-1)
@click.option("--json", "as_json", is_flag=True, help="Print JSON on stdout.")
def status(accounts: tuple[str, ...], as_json: bool) -> None:
    """Show local state: last sync, its result, messages known."""
    env = _env()

    def run() -> int:
        from fetchpop.seenstore import SeenStore

        config = env.load_config()
        selected = config.select(accounts)
        path = env.store_path()
        rows = []
        store = SeenStore(path, readonly=True) if path.exists() else None
        try:
            for account in selected:
                row: dict[str, Any] = {"account": account.name, "known": 0, "last_run": None}
                mailbox = store.mailbox_id(*account.mailbox, create=False) if store else None
                if store and mailbox is not None:
                    row["known"] = store.count(mailbox)
                    last = store.last_run(account.name)
                    if last:
                        row["last_run"] = dataclasses.asdict(last)
                rows.append(row)
        finally:
            if store:
                store.close()
        if as_json:
            env.print_json({"store": str(path), "accounts": rows})
            return 0
        for row in rows:
            last = row["last_run"]
            if last is None:
                when = "never synced"
            else:
                stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(last["finished"]))
                result = (
                    "ok"
                    if last["exit_code"] == 0
                    else f"failed ({last['exit_code']}): {last['message']}"
                )
                when = (
                    f"last sync {stamp}: {result}; "
                    f"{last['fetched']} fetched, {last['deleted']} deleted"
                )
            print(f"{row['account']}: {row['known']} messages known; {when}", file=env.stdout)
        return 0

    guard(env, run)


@main.group()
def seen() -> None:
    """Change what the seen-store knows about a mailbox."""


@seen.command(name="mark")
@click.argument("account")
@click.option("--dry-run", is_flag=True, help="Only count what would be marked.")
def seen_mark(account: str, dry_run: bool) -> None:
    """Record every message now on ACCOUNT's server as seen, without downloading."""
    env = _env()

    def run() -> int:
        from fetchpop.locks import MailboxLock
        from fetchpop.sync import mark_seen

        (acct,) = env.load_config().select([account])
        log = _transcript(env, acct.name)
        with MailboxLock(env.state_dir(), acct.mailbox) as lock:
            lock.acquire()
            if dry_run:
                total, new = mark_seen(acct, None, env.password_source(acct), log=log)
                verb = "would be"
            else:
                with _open_store(env) as store:
                    total, new = mark_seen(acct, store, env.password_source(acct), log=log)
                verb = "were"
        print(
            f"{acct.name}: {total} message(s) on the server; {len(new)} {verb} marked as seen",
            file=env.stdout,
        )
        return 0

    guard(env, run)


@seen.command(name="forget")
@click.argument("account")
@click.argument("uidls", nargs=-1)
def seen_forget(account: str, uidls: tuple[str, ...]) -> None:
    """Make messages fetchable again: the UIDLs given, or all of ACCOUNT's."""
    env = _env()

    def run() -> int:
        (acct,) = env.load_config().select([account])
        with _open_store(env) as store:
            mailbox = store.mailbox_id(*acct.mailbox, create=False)
            count = 0
            if mailbox is not None:
                count = store.forget(mailbox, list(uidls) if uidls else None)
                store.clear_problems(mailbox, list(uidls) if uidls else None)
                store.sync()
        print(f"{acct.name}: {count} UIDL(s) forgotten", file=env.stdout)
        return 0

    guard(env, run)


@main.group()
def password() -> None:
    """Store or remove an account's password in the system keyring."""


@password.command(name="set")
@click.argument("account")
def password_set(account: str) -> None:
    """Ask for ACCOUNT's password (without echo) and store it in the keyring."""
    env = _env()

    def run() -> int:
        from fetchpop.errors import UsageError
        from fetchpop.secrets import check_keyring, keyring_username, set_password

        (acct,) = env.load_config().select([account])
        if not env.stdin_isatty:
            raise UsageError("password set needs a terminal to ask for the password")
        check_keyring()  # before asking for a password that could not be kept
        import getpass

        secret = getpass.getpass(f"Password for {keyring_username(acct)}: ")
        if not secret:
            raise UsageError("no password entered; nothing stored")
        if getpass.getpass("Again: ") != secret:
            raise UsageError("the two passwords differ; nothing stored")
        set_password(acct, secret)
        env.info(f"{acct.name}: password stored in the system keyring", level=0)
        return 0

    guard(env, run)


@password.command(name="delete")
@click.argument("account")
def password_delete(account: str) -> None:
    """Remove ACCOUNT's password from the system keyring."""
    env = _env()

    def run() -> int:
        from fetchpop.secrets import delete_password

        (acct,) = env.load_config().select([account])
        if delete_password(acct):
            env.info(f"{acct.name}: password removed from the system keyring", level=0)
        else:
            env.info(f"{acct.name}: no password was stored in the system keyring", level=0)
        return 0

    guard(env, run)


@main.command()
@click.argument("account")
@click.option("--json", "as_json", is_flag=True, help="Print JSON on stdout.")
def serverinfo(account: str, as_json: bool) -> None:
    """Show the server's greeting, capabilities, TLS version and certificate."""
    env = _env()

    def run() -> int:
        from fetchpop.sync import probe

        (acct,) = env.load_config().select([account])
        info = probe(acct, env.password_source(acct), log=_transcript(env, acct.name))
        if as_json:
            env.print_json(info)
            return 0
        out = env.stdout
        print(f"{acct.name}: {acct.host} port {acct.port}, tls = {acct.tls}", file=out)
        print(f"greeting: {info['greeting']}", file=out)
        tls = info["tls"]
        if tls:
            print(f"TLS: {tls['version']}, cipher {tls['cipher']}", file=out)
            print(f"certificate fingerprint: {tls['fingerprint']}", file=out)
            print(f"  subject: {tls['subject']}", file=out)
            print(f"  issuer:  {tls['issuer']}", file=out)
            print(f"  expires: {tls['not_after']}", file=out)
        else:
            print("TLS: none (clear text)", file=out)
        for stage in ("before_tls", "before_login", "after_login"):
            caps = info["capabilities"].get(stage)
            if stage in info["capabilities"]:
                text = "CAPA not supported" if caps is None else " ".join(caps) or "(none)"
                print(f"capabilities {stage.replace('_', ' ')}: {text}", file=out)
        if info.get("login_error"):
            print(f"login: {info['login_error']}", file=out)
        return 0

    guard(env, run)


def run(argv: Sequence[str] | None = None) -> NoReturn:
    """The console-script entry: click's usage errors exit 64 (EX_USAGE), not 2."""
    try:
        code = main.main(args=argv, prog_name="fetchpop", standalone_mode=False)
    except click.UsageError as exc:
        exc.show()
        _exit(ExitCode.USAGE)
    except click.Abort:
        _exit(ExitCode.INTERRUPTED)
    except click.ClickException as exc:
        exc.show()
        _exit(ExitCode.USAGE)
    _exit(code if isinstance(code, int) else 0)


def entry() -> NoReturn:
    """The process's entry point (the console script, ``python -m fetchpop``).

    Runs :func:`run`, then ends the process without tearing the interpreter
    down: every file, lock and database fetchpop used is closed (and what
    must be durable is fsynced) before a command returns, and freeing
    thousands of objects and modules one by one only delays the exit status
    (20 to 30 ms a run). Under a tracer or profiler (coverage, cProfile),
    which write their results at exit, the exit is the ordinary one.
    """
    try:
        run()
    except SystemExit as exc:
        code = exc.code
    if code is None:
        status = 0
    elif isinstance(code, int):
        status = code
    else:  # sys.exit("message"), as Python itself treats it
        print(code, file=sys.stderr)
        status = 1
    if sys.gettrace() is not None or sys.getprofile() is not None:
        sys.exit(status)
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):  # a closed pipe: nothing to say anyway
            stream.flush()
    os._exit(status)


@main.command()
@click.option(
    "--dir",
    "directory",
    type=click.Path(file_okay=False, path_type=Path),
    help="Where to put the demo's config, state and Maildir (default: a new temporary one).",
)
def demo(directory: Path | None) -> None:
    """Try fetchpop with no mail server: a local server with sample mail, and a real sync."""
    env = _env()

    def run() -> int:
        import tempfile

        from fetchpop.demo import PASSWORD, USER, DemoServer

        where = directory or Path(tempfile.mkdtemp(prefix="fetchpop-demo-"))
        where = where.resolve()
        where.mkdir(parents=True, exist_ok=True, mode=0o700)
        config_path = where / "config.toml"
        mail = where / "Mail"
        out = env.stdout
        with DemoServer() as server:
            config_path.write_text(
                "# Written by `fetchpop demo`: a POP3 server on this machine with sample mail.\n"  # noqa: S608
                "[accounts.demo]\n"
                'host = "127.0.0.1"\n'
                f"port = {server.port}\n"
                'tls = "off"  # the demo server is on this machine; never for a real one\n'
                f'user = "{USER}"\n'
                f'password = "{PASSWORD}"\n'
                f'deliver = "maildir:{mail}"\n'
                "keep = false           # delete from the server once safely delivered\n"
            )
            config_path.chmod(0o600)
            print(
                f"A demo POP3 server with {len(server.messages)} messages is listening on "
                f"127.0.0.1 port {server.port}.",
                file=out,
            )
            print(f"Config: {config_path}", file=out)
            print("Running: fetchpop -v sync", file=out, flush=True)
            demo_env = dataclasses.replace(
                env,
                config_option=str(config_path),
                state_override=where / "state",
                verbose=max(env.verbose, 1),
                warn_clear_text=False,
            )
            signals = Signals()
            signals.install()
            (account,) = demo_env.load_config().select(["demo"])
            code, _ = _sync_one(demo_env, account, 0.0, signals, False)
            if code:
                return code
            print("Running it again: nothing new, so nothing is fetched.", file=out, flush=True)
            code, _ = _sync_one(demo_env, account, 0.0, signals, False)
        files = sorted((mail / "new").iterdir())
        print(f"\n{len(files)} messages are now in the Maildir {mail}:", file=out)
        for path in files:
            subject = next(
                (
                    ln[9:]
                    for ln in path.read_text(errors="replace").splitlines()
                    if ln.startswith("Subject: ")
                ),
                "?",
            )
            print(f"  {path.name[:40]}...  {subject}", file=out)
        print(
            "\nNext: write ~/.config/fetchpop/config.toml for your own account "
            "(see `man fetchpop-config`), then run `fetchpop check` and `fetchpop sync`.",
            file=out,
        )
        return code

    guard(env, run)


# -- OAuth2 sign-in --------------------------------------------------------------


@main.group()
def oauth() -> None:
    """OAuth2 sign-in for accounts with oauth_provider (Gmail, Microsoft 365)."""


@oauth.command(name="login")
@click.argument("account")
@click.option("--device", is_flag=True, help="Sign in on another device with a code.")
@click.option("--no-browser", is_flag=True, help="Print the sign-in URL only; open no browser.")
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=0,
    metavar="PORT",
    help="Loopback port for the browser's redirect (default: any free one).",
)
def oauth_login(account: str, device: bool, no_browser: bool, port: int) -> None:
    """Sign ACCOUNT in with OAuth2; the refresh token goes to the system keyring."""
    env = _env()

    def run() -> int:
        from fetchpop import oauth as oa
        from fetchpop.errors import ConfigError
        from fetchpop.secrets import (
            OAUTH_KEYRING_SERVICE,
            OAuthTokenStore,
            keyring_username,
            require_keyring,
        )

        (acct,) = env.load_config().select([account])
        if acct.oauth_provider is None:
            raise ConfigError(
                f'account "{acct.name}": oauth_provider is not set (see fetchpop-config(5))'
            )
        provider = oa.provider_for(acct)
        require_keyring()  # before the user signs in: the refresh token goes nowhere else
        http = oa.HttpClient(timeout=acct.timeout)
        if device:
            tokens = oa.login_device(
                provider, http=http, show=lambda code: _show_device_code(env, acct.name, code)
            )
        else:
            browser = not no_browser and oa.browser_available(env.environ, sys.platform)
            tokens = oa.login_code(
                provider,
                http=http,
                show_url=lambda url: _show_sign_in_url(env, acct.name, url, browser),
                open_browser=_open_browser if browser else None,
                port=port,
            )
        OAuthTokenStore(acct).save(tokens.to_record(provider))
        env.info(
            f"{acct.name}: signed in; the refresh token is in the system keyring "
            f"(service {OAUTH_KEYRING_SERVICE}, username {keyring_username(acct)})",
            level=0,
        )
        return 0

    guard(env, run)


def _show_sign_in_url(env: Environment, account: str, url: str, browser: bool) -> None:
    # Shown even with -q: signing in is impossible without it.
    from fetchpop.oauth import LOGIN_TIMEOUT

    intro = "Opening a browser to" if browser else "Open this page in a browser to"
    wait = f"waiting up to {LOGIN_TIMEOUT / 60:g} minutes"
    print(f"{intro} sign in {account} ({wait}):", file=env.stderr)
    print(f"\n    {url}\n", file=env.stderr, flush=True)


def _open_browser(url: str) -> None:
    import contextlib
    import webbrowser

    with contextlib.suppress(webbrowser.Error):  # The URL is on the screen.
        webbrowser.open(url)


def _show_device_code(env: Environment, account: str, code: DeviceCode) -> None:
    minutes = max(1, int(code.expires_in // 60))
    print(
        f"To sign in {account}, open {code.verification_uri} on any device and enter "
        f"the code {code.user_code} (within {minutes} minutes).",
        file=env.stderr,
    )
    if code.verification_uri_complete:
        print(f"Or open: {code.verification_uri_complete}", file=env.stderr)
    print("Waiting for the sign-in...", file=env.stderr, flush=True)


@oauth.command(name="logout")
@click.argument("account")
def oauth_logout(account: str) -> None:
    """Remove ACCOUNT's OAuth2 tokens from the system keyring."""
    env = _env()

    def run() -> int:
        from fetchpop.secrets import OAuthTokenStore

        (acct,) = env.load_config().select([account])
        if OAuthTokenStore(acct).delete():
            env.info(f"{acct.name}: OAuth2 tokens removed from the system keyring", level=0)
        else:
            env.info(f"{acct.name}: no OAuth2 tokens were stored in the system keyring", level=0)
        return 0

    guard(env, run)


# -- import: take over a peer's accounts and seen state -------------------------------


@main.group(name="import")
def import_group() -> None:
    """Take over fetchmail's, mpop's or getmail's accounts and seen state.

    The accounts are appended to fetchpop's config file (never replacing one
    of the same name) and every message the peer already delivered is
    recorded as seen, so nothing is fetched twice. Passwords are not copied.
    """


def _dry_run_option(func: Callable[..., None]) -> Callable[..., None]:
    return click.option(
        "--dry-run", is_flag=True, help="Print the TOML and the counts; change nothing."
    )(func)


@import_group.command(name="fetchmail")
@click.argument("path", type=click.Path(path_type=Path))
@click.option(
    "--ids",
    type=click.Path(path_type=Path),
    metavar="FILE",
    help="fetchmail's UIDL file (default: its set idfile, else ~/.fetchids).",
)
@_dry_run_option
def import_fetchmail(path: Path, ids: Path | None, dry_run: bool) -> None:
    """Import the POP3 accounts of a ~/.fetchmailrc and the UIDLs in ~/.fetchids."""
    _import_peer("fetchmail", path, ids, None, dry_run)


@import_group.command(name="mpop")
@click.argument("path", type=click.Path(path_type=Path))
@click.option(
    "--uidls",
    type=click.Path(path_type=Path),
    metavar="FILE",
    help="mpop's UIDLS file (default: each account's uidls_file, else ~/.mpop_uidls/%U_at_%H).",
)
@_dry_run_option
def import_mpop(path: Path, uidls: Path | None, dry_run: bool) -> None:
    """Import the accounts of a ~/.mpoprc and the UIDLs in their UIDLS files."""
    _import_peer("mpop", path, uidls, None, dry_run)


@import_group.command(name="getmail")
@click.argument("path", type=click.Path(path_type=Path))
@click.option(
    "--oldmail-dir",
    type=click.Path(path_type=Path, file_okay=False),
    metavar="DIR",
    help="Where getmail's oldmail-* files are (default: the getmailrc's directory).",
)
@click.option("--name", metavar="NAME", help="The account's name (default: from PATH).")
@_dry_run_option
def import_getmail(path: Path, oldmail_dir: Path | None, name: str | None, dry_run: bool) -> None:
    """Import the POP3 account of a getmailrc and the UIDLs in its oldmail file."""
    _import_peer("getmail", path, oldmail_dir, name, dry_run)


def _import_peer(tool: str, path: Path, seen: Path | None, name: str | None, dry_run: bool) -> None:
    env = _env()

    def run() -> int:
        from fetchpop import importers
        from fetchpop.config import find_config_path
        from fetchpop.errors import ConfigError, UsageError

        for given in (path, seen):
            if given is not None and not given.exists():
                raise UsageError(f"{given}: no such file or directory")
        config_path = find_config_path(env.config_option, env.environ)
        result = importers.read_peer(
            tool,
            path.absolute(),
            environ=env.environ,
            seen=seen.absolute() if seen else None,
            name=name,
        )
        if not result.accounts:
            raise ConfigError(
                [f"{path}: no POP3 account to import", *(f"{w}" for w in result.warnings)]
            )
        importers.check_names(config_path, result)
        tables = importers.render(result)
        text = importers.merged_text(config_path, tables)
        importers.validate(config_path, text, env.environ)
        for warning in result.warnings:
            env.warn(f"warning: {warning}")
        for account in result.accounts:
            for warning in account.warnings:
                env.warn(f"{account.name}: warning: {warning}")
        if dry_run:
            env.stdout.write(tables)
            print(f"\n# Dry run: {config_path} and the seen-store unchanged.", file=env.stdout)
            for account in result.accounts:
                print(
                    f"# {account.name}: {len(account.uidls)} UIDL(s) would be recorded as seen",
                    file=env.stdout,
                )
            return 0
        with _open_store(env) as store:
            counts = [importers.record_seen(store, account) for account in result.accounts]
        importers.write_config(config_path, text)
        if not env.quiet:
            names = ", ".join(a.name for a in result.accounts)
            print(
                f"{len(result.accounts)} account(s) from {tool} added to {config_path}: {names}",
                file=env.stdout,
            )
            for account, count in zip(result.accounts, counts, strict=True):
                source = f" (from {account.seen_file})" if account.seen_file else ""
                print(f"{account.name}: {count} UIDL(s) recorded as seen{source}", file=env.stdout)
        return 0

    guard(env, run)


# -- first run ---------------------------------------------------------------------


@main.command()
@click.option("--name", help="The new account's name (default: from the address).")
@click.option("--port", type=click.IntRange(1, 65535), help="Try only this port.")
@click.option(
    "--ca-file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Also trust this CA (or self-signed certificate) while probing, and keep it.",
)
def init(name: str | None, port: int | None, ca_file: Path | None) -> None:
    """Set up a first account: probe the server, try the login, write the config."""
    env = _env()

    def run() -> int:
        from fetchpop.config import find_config_path
        from fetchpop.errors import ConfigError

        out = env.stdout
        config_path = find_config_path(env.config_option, env.environ)
        address = click.prompt("Your e-mail address").strip()
        domain = address.rpartition("@")[2] or address
        host = click.prompt("POP3 server", default=f"pop.{domain}").strip()
        user = click.prompt("User name", default=address).strip()
        acct_name = name or _account_name(domain)
        from fetchpop.importers.output import existing_names

        if acct_name in existing_names(config_path):
            raise ConfigError(f"{config_path}: account {acct_name!r} already exists; use --name")
        found = _probe_server(env, acct_name, host, user, port, ca_file)
        print(f"{host}: {found[1]} on port {found[0].port}", file=out)
        account = _login_interactively(env, found[0])
        deliver = click.prompt("Deliver mail to", default=f"maildir:~/Mail/{acct_name}")
        keep = click.confirm("Leave messages on the server (for other devices)?", default=True)
        keys: dict[str, object] = {
            "host": host,
            "user": user,
            "port": account.port,
            "tls": account.tls,
            "deliver": deliver,
            "keep": keep,
        }
        if ca_file is not None:
            keys["ca_file"] = str(ca_file.resolve())
        keys.update(_store_password(env, account))
        _append_account(env, config_path, acct_name, keys)
        print(f"Wrote [accounts.{acct_name}] to {config_path}.", file=out)
        print(f"Next: fetchpop check {acct_name}   then   fetchpop sync {acct_name}", file=out)
        return 0

    guard(env, run)


def _account_name(domain: str) -> str:
    import re

    return re.sub(r"[^A-Za-z0-9._-]+", "_", domain.split(".")[0]).strip("_") or "mail"


def _probe_server(
    env: Environment, name: str, host: str, user: str, port: int | None, ca_file: Path | None
) -> tuple[Account, str]:
    """The first of implicit TLS (995) and STARTTLS (110) that the server speaks."""
    from fetchpop.config import POP3_PORT, POP3S_PORT, Account
    from fetchpop.deliver import DeliverySpec
    from fetchpop.errors import TLSError, UnavailableError
    from fetchpop.sync import open_connection

    tries: list[tuple[str, int]] = [
        ("implicit", port or POP3S_PORT),
        ("starttls", port or POP3_PORT),
    ]
    failures = []
    for tls, number in tries:
        account = Account(
            name=name,
            host=host,
            user=user,
            port=number,
            tls=tls,  # type: ignore[arg-type]
            ca_file=ca_file,
            deliver=DeliverySpec("maildir", Path("/nonexistent")),
            timeout=15.0,
        )
        try:
            client = open_connection(account, log=_transcript(env, name))
        except TLSError as exc:
            raise TLSError(
                f"{exc}; if the server uses a self-signed certificate, give it with --ca-file"
            ) from None
        except FetchpopError as exc:
            failures.append(f"{tls} TLS on port {number}: {_one_line(exc)}")
            continue
        info = client.transport.tls_info()
        sasl = " ".join((client.capabilities or {}).get("SASL", [])) or "none"
        client.quit()
        what = "implicit TLS" if tls == "implicit" else "STARTTLS"
        return account, f"{what} ({info.version if info else '?'}), SASL mechanisms: {sasl}"
    raise UnavailableError(f"found no POP3 server with TLS at {host}: " + "; ".join(failures))


def _ask_secret(env: Environment, prompt: str) -> str:
    if env.stdin_isatty:
        import getpass

        return getpass.getpass(prompt)
    return str(click.prompt(prompt, default="", show_default=False))


def _login_interactively(env: Environment, account: Account) -> Account:
    """Ask for the password until the login works (three tries)."""
    import dataclasses as dc

    from fetchpop.errors import AuthError
    from fetchpop.sync import connect

    for attempt in range(3):
        secret = _ask_secret(env, f"Password for {account.user}@{account.host}: ")

        def password(secret: str = secret) -> str:
            return secret

        try:
            client = connect(account, password, log=_transcript(env, account.name))
            client.quit()
            print("Login works.", file=env.stdout)
            return dc.replace(account, password=secret)
        except AuthError as exc:
            env.error(_one_line(exc))
            if attempt == 2:
                raise
    raise AssertionError("unreachable")


def _store_password(env: Environment, account: Account) -> dict[str, object]:
    """Keep the password in the keyring; else, if the user agrees, in the private file."""
    from fetchpop.errors import UnavailableError
    from fetchpop.secrets import set_password

    assert account.password is not None
    try:
        set_password(account, account.password)
        print("Password stored in the system keyring.", file=env.stdout)
        return {}
    except UnavailableError as exc:
        env.error(_one_line(exc))
    if click.confirm("Put the password in the config file (readable by you only)?", default=False):
        return {"password": account.password}
    print(
        "No password stored: add password_command to the account "
        '(e.g. password_command = "pass show mail/ACCOUNT").',
        file=env.stdout,
    )
    return {}


def _append_account(env: Environment, path: Path, name: str, keys: dict[str, object]) -> None:
    from fetchpop.importers.common import ImportedAccount, ImportResult
    from fetchpop.importers.output import check_names, merged_text, render, validate, write_config

    result = ImportResult("fetchpop init", path, [ImportedAccount(name, keys)])
    check_names(path, result)
    text = merged_text(path, render(result))
    validate(path, text, env.environ)
    write_config(path, text)
    if "password" in keys:
        path.chmod(0o600)  # fetchpop refuses a password in a file others can read
