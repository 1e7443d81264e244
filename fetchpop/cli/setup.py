"""The commands that set fetchpop up: ``init``, ``demo``, ``import``."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import click

from fetchpop.cli.app import current_env, guard, main
from fetchpop.cli.env import Environment, Signals
from fetchpop.cli.output import transcript
from fetchpop.cli.syncing import sync_one
from fetchpop.errors import FetchpopError, one_line

if TYPE_CHECKING:
    from fetchpop.config import Account


@main.command()
@click.option(
    "--dir",
    "directory",
    type=click.Path(file_okay=False, path_type=Path),
    help="Where to put the demo's config, state and Maildir (default: a new temporary one).",
)
def demo(directory: Path | None) -> None:
    """Try fetchpop with no mail server: a local server with sample mail, and a real sync."""
    env = current_env()

    def run() -> int:
        import tempfile

        from fetchpop.demo import DemoServer, write_demo_config

        where = directory or Path(tempfile.mkdtemp(prefix="fetchpop-demo-"))
        where = where.resolve()
        from fetchpop.paths import make_private_dirs

        make_private_dirs(where)
        config_path = where / "config.toml"
        mail = where / "Mail"
        out = env.stdout
        with DemoServer() as server:
            write_demo_config(config_path, server.port, mail, env.environ)
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
            with demo_env.open_store() as store:
                code, _ = sync_one(demo_env, account, store, 0.0, signals, False)
                if code:
                    return code
                print("Running it again: nothing new, so nothing is fetched.", file=out, flush=True)
                code, _ = sync_one(demo_env, account, store, 0.0, signals, False)
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
    env = current_env()

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
        with env.open_store() as store:
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

#: Where init looks for the server when no port is given: (tls, port).
USUAL_PORTS: tuple[tuple[str, int], ...] = (("implicit", 995), ("starttls", 110))
SERVER = "POP3 server (host, or host:port)"
#: How many times init asks again for what failed (the server, the password).
ROUNDS = 3


@main.command()
@click.option("--name", help="The new account's name (default: from the address).")
@click.option("--port", type=click.IntRange(1, 65535), help="Try only this port.")
@click.option(
    "--ca-file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Also trust this CA (or self-signed certificate) while probing, and keep it.",
)
def init(name: str | None, port: int | None, ca_file: Path | None) -> None:
    """Set up a first account: find the server, try the login, write the config."""
    env = current_env()

    def run() -> int:
        from fetchpop.config import find_config_path
        from fetchpop.config.writer import existing_names
        from fetchpop.errors import ConfigError

        out = env.stdout
        config_path = find_config_path(env.config_option, env.environ)
        address = _ask("Your e-mail address").strip()
        domain = address.rpartition("@")[2] or address
        acct_name = name or _account_name(domain)
        if acct_name in existing_names(config_path):
            raise ConfigError(f"{config_path}: account {acct_name!r} already exists; use --name")
        answer = _ask(SERVER, default=f"pop.{domain}")
        user = _ask("User name", default=address).strip()
        account, found = _find_server(env, acct_name, answer, user, port, ca_file)
        print(f"{account.host}: {found} on port {account.port}", file=out)
        account = _login_interactively(env, account)
        deliver = _ask_deliver(env, acct_name)
        keep = _confirm("Leave messages on the server (for other devices)?", default=True)
        keys: dict[str, object] = {
            "host": account.host,
            "user": account.user,
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


def _ask(question: str, default: str | None = None, show_default: bool = True) -> str:
    """The answer to *question* (click's prompt); the input ending is a usage error."""
    from fetchpop.errors import UsageError

    try:
        return str(click.prompt(question, default=default, show_default=show_default))
    except click.Abort:
        raise UsageError(f"init stopped: no answer to {question!r}") from None


def _confirm(question: str, default: bool) -> bool:
    from fetchpop.errors import UsageError

    try:
        return click.confirm(question, default=default)
    except click.Abort:
        raise UsageError(f"init stopped: no answer to {question!r}") from None


def _account_name(domain: str) -> str:
    import re

    return re.sub(r"[^A-Za-z0-9._-]+", "_", domain.split(".")[0]).strip("_") or "mail"


def _host_port(answer: str) -> tuple[str, int | None]:
    """``pop.example.org:1995`` -> (host, 1995); a bare host (or IPv6 address) -> (host, None)."""
    from fetchpop.errors import UsageError

    text = answer.strip()
    host, colon, port = text.rpartition(":")
    if not colon or not port.isdigit() or ":" in host.strip("[]"):
        return text.strip("[]"), None
    if not 1 <= int(port) <= 65535:
        raise UsageError(f"{answer!r}: the port must be 1 to 65535")
    return host.strip("[]"), int(port)


def _find_server(
    env: Environment, name: str, answer: str, user: str, port: int | None, ca_file: Path | None
) -> tuple[Account, str]:
    """Probe the server the user named; when nothing answers, ask again for
    the server only (up to ROUNDS times; at the end of the input, the
    failure stands)."""
    from fetchpop.errors import UsageError

    for attempt in range(1, ROUNDS + 1):
        try:
            host, given = _host_port(answer)
            return _probe_server(env, name, host, user, given or port, ca_file)
        except (_NotFound, UsageError) as exc:
            failure: FetchpopError = exc.error if isinstance(exc, _NotFound) else exc
            env.error(one_line(failure))
            if attempt == ROUNDS:
                raise failure from None
            how = "fetchpop init --port N tries only port N" if port is None else ""
            print(
                "Give the server again: its name, or host:port for another port"
                + (f" ({how})" if how else "")
                + ".",
                file=env.stdout,
            )
            try:
                answer = str(click.prompt(SERVER, default=answer))
            except click.Abort:  # no more input: the failure is the answer
                raise failure from None
    raise AssertionError("unreachable")


class _NotFound(Exception):
    """No POP3 server with TLS where the user said: ask again (init only)."""

    def __init__(self, error: FetchpopError) -> None:
        super().__init__(str(error))
        self.error = error


def _probe_server(
    env: Environment, name: str, host: str, user: str, port: int | None, ca_file: Path | None
) -> tuple[Account, str]:
    """The first way in that the server speaks: with *port*, implicit TLS then
    STARTTLS on it; else the usual ports (USUAL_PORTS). Raises TLSError at
    once (a certificate that does not verify is not a wrong guess), and
    _NotFound when no try worked."""
    from fetchpop.config import Account
    from fetchpop.deliver import DeliverySpec
    from fetchpop.errors import NoHostError, TLSError, UnavailableError
    from fetchpop.sync import open_connection

    tries = [("implicit", port), ("starttls", port)] if port else list(USUAL_PORTS)
    failures = []
    for tls, number in tries:
        what = "implicit TLS" if tls == "implicit" else "STARTTLS"
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
            client = open_connection(account, log=transcript(env, name))
        except TLSError as exc:
            raise TLSError(
                f"{exc}; if the server uses a self-signed certificate, give it with --ca-file"
            ) from None
        except NoHostError as exc:
            raise _NotFound(exc) from None  # no port will do better
        except FetchpopError as exc:
            failures.append(f"{what} on port {number}: {one_line(exc)}")
            continue
        info = client.transport.tls_info()
        sasl = " ".join((client.capabilities or {}).get("SASL", [])) or "none"
        client.quit()
        return account, f"{what} ({info.version if info else '?'}), SASL mechanisms: {sasl}"
    raise _NotFound(
        UnavailableError(f"found no POP3 server with TLS at {host}: " + "; ".join(failures))
    )


def _ask_secret(env: Environment, prompt: str) -> str:
    if env.stdin_isatty:
        import getpass

        return getpass.getpass(prompt)
    return _ask(prompt.rstrip(": "), default="", show_default=False)


def _login_interactively(env: Environment, account: Account) -> Account:
    """Ask for the password until the login works (ROUNDS tries); after the
    second failure, ask for the user name again too (it may be what is wrong)."""
    import dataclasses as dc

    from fetchpop.errors import AuthError
    from fetchpop.sync import connect

    for attempt in range(1, ROUNDS + 1):
        secret = _ask_secret(env, f"Password for {account.user}@{account.host}: ")

        def password(secret: str = secret) -> str:
            return secret

        try:
            client = connect(account, password, log=transcript(env, account.name))
            client.quit()
            print("Login works.", file=env.stdout)
            return dc.replace(account, password=secret)
        except AuthError as exc:
            env.error(one_line(exc))
            if attempt == ROUNDS:
                raise
        if attempt == ROUNDS - 1:
            user = _ask("User name", default=account.user).strip()
            account = dc.replace(account, user=user)
    raise AssertionError("unreachable")


def _ask_deliver(env: Environment, name: str) -> str:
    """Where to deliver, asked again until it is a valid ``deliver`` value."""
    from fetchpop.deliver import parse_deliver

    default = f"maildir:~/Mail/{name}"
    while True:
        answer = _ask("Deliver mail to", default=default).strip()
        try:
            parse_deliver(answer, env.environ)
        except ValueError as exc:
            env.error(f"deliver: {exc}")
            default = default if ":" in answer else f"maildir:{answer}"
            continue
        return answer


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
        env.error(one_line(exc))
    if _confirm("Put the password in the config file (readable by you only)?", default=False):
        return {"password": account.password}
    print(
        "No password stored: add password_command to the account "
        '(e.g. password_command = "pass show mail/ACCOUNT").',
        file=env.stdout,
    )
    return {}


def _append_account(env: Environment, path: Path, name: str, keys: dict[str, object]) -> None:
    from fetchpop.config.writer import (
        account_table,
        merged_text,
        validate,
        with_header,
        write_config,
    )

    table = account_table(name, keys)
    text = merged_text(path, with_header("fetchpop init", table))
    validate(path, text, env.environ)
    # A password makes the file private from its first byte (fetchpop also
    # refuses a password in a file others can read).
    write_config(path, text, mode=0o600 if "password" in keys else None)
