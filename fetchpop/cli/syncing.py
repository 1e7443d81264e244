"""The commands that sync and report: ``sync``, ``check``, ``status``."""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import click

from fetchpop.cli.app import combine, current_env, failure, guard, json_option, main
from fetchpop.cli.env import Environment, Signals
from fetchpop.cli.output import SUMMARY, StatusLine, message_hook, size, transcript
from fetchpop.errors import ExitCode, FetchpopError, one_line, sanitize

#: Accounts synced at the same time unless ``--jobs`` says otherwise. Each
#: mostly waits on its server (the login, the listing, round trips), so a
#: few side by side finish in the time of the slowest; fetchpop's own work
#: runs on one core (threads), and more than a few connections at once from
#: one address is what some providers take for abuse.
DEFAULT_JOBS = 4

#: One account's sync: its exit status and its ``--json`` report.
_Outcome = tuple[int, dict[str, Any]]

if TYPE_CHECKING:
    from fetchpop.config import Account
    from fetchpop.seenstore import SeenStore
    from fetchpop.sync import Known, Plan
    from fetchpop.sync.account import AccountRun


@main.command()
@click.argument("accounts", nargs=-1)
@json_option
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
    default=DEFAULT_JOBS,
    metavar="N",
    help=f"Sync up to N accounts at the same time (default {DEFAULT_JOBS}).",
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
    env = current_env()
    interval = _interval(every) if every is not None else None

    opened: list[SeenStore] = []  # the seen-store, once open: every round's

    def once(signals: Signals) -> int:
        selected = env.load_config().select(accounts)
        line = StatusLine(env)  # one for the round: with --jobs, the bars share it
        # One seen-store connection serves every account in every job, and
        # with --every every round, as one TLS cache does (see run).
        if not opened:
            opened.append(env.open_store())
        store = opened[0]

        def one(account: Account) -> tuple[int, dict[str, Any]]:
            signals.check()
            return sync_one(env, account, store, wait, signals, accept_new_uidls, line)

        if jobs > 1 and len(selected) > 1:
            results = _in_jobs(selected, one, jobs)
        else:
            results = [one(account) for account in selected]
        if as_json:
            env.print_json({"accounts": [r for _, r in results]})
        if signals.received is not None:
            return ExitCode.INTERRUPTED if signals.received == 2 else ExitCode.TERMINATED
        return combine([c for c, _ in results])

    def run() -> int:
        from fetchpop.pop3.transport import reusing_tls

        signals = Signals(env)
        signals.install()
        try:
            # SSL contexts (CAs read once, again when their files change) and
            # each server's last TLS session, resumed by the next connection.
            with reusing_tls():
                if interval is None:
                    return once(signals)
                return _every(env, interval, signals, once)
        finally:
            for store in opened:
                store.close()

    guard(env, run)


def _in_jobs(
    selected: list[Account], one: Callable[[Account], _Outcome], jobs: int
) -> list[_Outcome]:
    """*one* for each account, up to *jobs* at a time, the results in order.

    Accounts that share a mailbox, or an mbox file to deliver to, go one
    after the other, in one job. A mailbox's lock is taken in turn, where
    side by side all but one would find it taken; an mbox's locks (fcntl,
    and a dot-lock that names the process) do not keep two threads of one
    process apart, so two jobs appending to it at once could interleave
    their messages, or one cut back what the other wrote.
    """
    from concurrent.futures import ThreadPoolExecutor

    # Accounts joined by what they share (union-find over the shared things).
    parent = list(range(len(selected)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    first: dict[object, int] = {}
    for i, account in enumerate(selected):
        shared: list[object] = [("mailbox", account.mailbox)]
        if account.deliver.kind == "mbox" and account.deliver.path is not None:
            shared.append(("mbox", os.path.realpath(account.deliver.path)))
        for thing in shared:
            j = first.setdefault(thing, i)
            parent[root(i)] = root(j)
    groups: dict[int, list[int]] = {}
    for i in range(len(selected)):
        groups.setdefault(root(i), []).append(i)
    results: dict[int, _Outcome] = {}

    def run(indices: list[int]) -> None:
        for i in indices:
            results[i] = one(selected[i])

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        for _ in pool.map(run, groups.values()):
            pass  # (re-raises what a job raised)
    return [results[i] for i in range(len(selected))]


def _every(
    env: Environment, interval: float, signals: Signals, once: Callable[[Signals], int]
) -> int:
    """``sync --every``: a round every *interval* seconds until a signal."""
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


def sync_one(
    env: Environment,
    account: Account,
    store: SeenStore,
    wait: float,
    signals: Signals,
    accept_new_uidls: bool,
    line: StatusLine | None = None,
) -> tuple[int, dict[str, Any]]:
    """Sync one account, recording in *store* (which may serve other jobs at
    the same time), and say how it went: its status, and its ``--json`` report."""
    from fetchpop.sync import run_account

    line = line or StatusLine(env)
    bar = line.bar(account.name)
    if account.tls == "off" and env.warn_clear_text:
        with line.above():
            env.warn(
                f'{account.name}: warning: tls = "off": password and mail cross '
                "the network in clear text"
            )
    password = env.password_source(account)

    def asked() -> str:
        line.clear()  # a prompt must not land in the bar (with --jobs, another's)
        return password()

    try:
        outcome = run_account(
            account,
            store,
            env.state_dir(),
            asked,
            wait=wait,
            log=transcript(env, account.name, line),
            progress=bar if line.enabled else None,
            checkpoint=signals.check,
            accept_new_uidls=accept_new_uidls,
            on_message=message_hook(env, account.name, bar),
            # the totals: what each session is about to fetch
            on_plan=bar.plan if line.enabled else None,
            target_secret=env.target_secret(account),
            now=env.clock,
        )
    finally:
        bar.done()  # wiped before any line is printed, even on a second Ctrl-C
    with line.above():
        return outcome.code, _report(env, account, outcome)


def _report(env: Environment, account: Account, outcome: AccountRun) -> dict[str, Any]:
    """Print how one account's sync went; its ``--json`` report.

    The summary line (``-v``) is for an account that synced: never after a
    failure, which has its own line instead.
    """
    if outcome.error is not None:
        env.error(f"{account.name}: {outcome.message}")
    report: dict[str, Any] = {"account": account.name}
    result = outcome.result
    if result is not None:
        for warning in result.warnings:
            env.warn(f"{account.name}: {warning}")
        for problem in result.problems:
            env.error(f"{account.name}: {problem}")
        for note in result.notes:
            env.info(f"{account.name}: {note}", level=SUMMARY)
        for uidl, why in result.skipped:
            env.info(f"{account.name}: skipped {sanitize(uidl)}: {why}", level=SUMMARY)
        if outcome.error is None:
            env.info(
                f"{account.name}: {result.fetched} new message(s), {size(result.octets)}, "
                f"{result.deleted} deleted, {len(result.skipped)} skipped",
                level=SUMMARY,
            )
        report.update(
            fetched=result.fetched,
            octets=result.octets,
            deleted=result.deleted,
            skipped=[{"uidl": u, "reason": r} for u, r in result.skipped],
            warnings=result.warnings,
            notes=result.notes,
            problems=result.problems,
            server_messages=result.server_messages,
        )
    ok = outcome.error is None
    report.update(ok=ok, exit_code=outcome.code, error=None if ok else outcome.message)
    return report


@main.command()
@click.argument("accounts", nargs=-1)
@json_option
def check(accounts: tuple[str, ...], as_json: bool) -> None:
    """Show what sync would fetch and delete now; change nothing anywhere."""
    env = current_env()

    def run() -> int:
        from fetchpop.sync import Known, check_account

        config = env.load_config()
        codes, reports = [], []
        known_by_account = _read_known(env, config.select(accounts))
        for account in config.select(accounts):
            try:
                plan = check_account(
                    account,
                    known_by_account.get(account.name, Known()),
                    env.password_source(account),
                    log=transcript(env, account.name),
                    now=env.clock(),
                )
            except FetchpopError as exc:
                env.error(f"{account.name}: {one_line(exc)}")
                codes.append(failure(exc)[0])
                reports.append({"account": account.name, "ok": False, "error": one_line(exc)})
                continue
            codes.append(0)
            report = _plan_report(account.name, plan)
            reports.append(report)
            if not as_json:
                _show_plan(env, report, plan)
        if as_json:
            env.print_json({"accounts": reports})
        return combine(codes)

    guard(env, run)


def _plan_report(name: str, plan: Plan) -> dict[str, Any]:
    """``check --json``'s report of one account."""
    return {
        "account": name,
        "ok": True,
        "server_messages": len(plan.messages),
        "fetch": [{"uidl": m.uidl, "number": m.number, "size": m.size} for m in plan.fetch],
        "delete": [{"uidl": m.uidl, "number": m.number, "reason": r} for m, r in plan.delete],
        "skip": [{"uidl": m.uidl, "number": m.number, "reason": r} for m, r in plan.skip],
    }


def _show_plan(env: Environment, report: dict[str, Any], plan: Plan) -> None:
    """``check``'s lines for one account (with ``-v``, what it would fetch too)."""
    octets = sum(m.size or 0 for m in plan.fetch)
    print(
        f"{report['account']}: {len(plan.messages)} on server, {len(plan.fetch)} to fetch "
        f"({size(octets)}), {len(plan.delete)} to delete, {len(plan.skip)} to skip",
        file=env.stdout,
    )
    for verb in ("delete", "skip"):
        for item in report[verb]:
            print(f"  {verb} {sanitize(str(item['uidl']))}: {item['reason']}", file=env.stdout)
    if env.verbose:
        for item in report["fetch"]:
            print(
                f"  fetch {sanitize(str(item['uidl']))} ({item['size']} octets)", file=env.stdout
            )


def _skipped(problems: dict[str, tuple[int, str]]) -> list[dict[str, Any]]:
    """The messages sync skips for failing delivery again and again."""
    from fetchpop.sync import MAX_ATTEMPTS

    return [
        {"uidl": uidl, "attempts": attempts, "reason": reason}
        for uidl, (attempts, reason) in sorted(problems.items())
        if attempts >= MAX_ATTEMPTS
    ]


def _read_known(env: Environment, accounts: list[Account]) -> dict[str, Known]:
    """What the store knows per account, read without creating or changing it."""
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
                out[account.name] = read_known(store, mailbox, account, now=env.clock())
    return out


@main.command()
@click.argument("accounts", nargs=-1)
@json_option
def status(accounts: tuple[str, ...], as_json: bool) -> None:
    """Show local state: last sync, its result, messages known."""
    env = current_env()

    def run() -> int:
        from fetchpop.seenstore import SeenStore

        config = env.load_config()
        selected = config.select(accounts)
        path = env.store_path()
        rows = []
        store = SeenStore(path, readonly=True) if path.exists() else None
        try:
            for account in selected:
                row: dict[str, Any] = {
                    "account": account.name,
                    "known": 0,
                    "last_run": None,
                    "skipped": [],
                }
                mailbox = store.mailbox_id(*account.mailbox, create=False) if store else None
                if store and mailbox is not None:
                    row["known"] = store.count(mailbox)
                    row["skipped"] = _skipped(store.problems(mailbox))
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
            for item in row["skipped"]:
                print(f"  skipped {sanitize(item['uidl'])}: {item['reason']}", file=env.stdout)
        return 0

    guard(env, run)
