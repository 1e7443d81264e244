"""The commands about accounts and what is kept of them: ``accounts``,
``password``, ``seen``, ``oauth``, ``serverinfo``."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from fetchpop.cli.app import current_env, guard, json_option, main
from fetchpop.cli.env import Environment
from fetchpop.cli.output import transcript

if TYPE_CHECKING:
    from fetchpop.config import Account
    from fetchpop.oauth import DeviceCode


@main.command(name="accounts")
@json_option
def accounts_cmd(as_json: bool) -> None:
    """List the configured accounts, as resolved (secrets never shown)."""
    env = current_env()

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


@main.group()
def seen() -> None:
    """Change what the seen-store knows about a mailbox."""


@seen.command(name="mark")
@click.argument("account")
@click.option("--dry-run", is_flag=True, help="Only count what would be marked.")
def seen_mark(account: str, dry_run: bool) -> None:
    """Record every message now on ACCOUNT's server as seen, without downloading."""
    env = current_env()

    def run() -> int:
        from fetchpop.locks import MailboxLock
        from fetchpop.sync import mark_seen

        (acct,) = env.load_config().select([account])
        log = transcript(env, acct.name)
        with MailboxLock(env.state_dir(), acct.mailbox) as lock:
            lock.acquire()
            if dry_run:
                total, new = mark_seen(acct, None, env.password_source(acct), log=log)
                verb = "would be"
            else:
                with env.open_store() as store:
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
    env = current_env()

    def run() -> int:
        (acct,) = env.load_config().select([account])
        with env.open_store() as store:
            mailbox = store.mailbox_id(*acct.mailbox, create=False)
            count = retried = 0
            if mailbox is not None:
                count = store.forget(mailbox, list(uidls) if uidls else None)
                retried = store.clear_problems(mailbox, list(uidls) if uidls else None)
                store.sync()
        again = f"; {retried} message(s) that failed delivery will be tried again"
        again = again if retried else ""
        print(f"{acct.name}: {count} UIDL(s) forgotten{again}", file=env.stdout)
        return 0

    guard(env, run)


@main.group()
def password() -> None:
    """Store or remove an account's password in the system keyring."""


_IMAP_OPTION = click.option(
    "--imap", is_flag=True, help="The password of the account's imap:// target."
)


def _keyring_user(acct: Account, imap: bool) -> str:
    from fetchpop.errors import UsageError
    from fetchpop.secrets import imap_keyring_username, keyring_username

    if not imap:
        return keyring_username(acct)
    if acct.deliver.kind != "imap":
        raise UsageError(f'account "{acct.name}" delivers to no imap:// mailbox')
    return imap_keyring_username(acct)


@password.command(name="set")
@click.argument("account")
@_IMAP_OPTION
def password_set(account: str, imap: bool) -> None:
    """Ask for ACCOUNT's password (without echo) and store it in the keyring."""
    env = current_env()

    def run() -> int:
        from fetchpop.errors import UsageError
        from fetchpop.secrets import check_keyring, set_password

        (acct,) = env.load_config().select([account])
        who = _keyring_user(acct, imap)
        if not env.stdin_isatty:
            raise UsageError("password set needs a terminal to ask for the password")
        check_keyring()  # before asking for a password that could not be kept
        import getpass

        secret = getpass.getpass(f"Password for {who}: ")
        if not secret:
            raise UsageError("no password entered; nothing stored")
        if getpass.getpass("Again: ") != secret:
            raise UsageError("the two passwords differ; nothing stored")
        set_password(acct, secret, imap=imap)
        what = f"password for {who}" if imap else "password"
        env.info(f"{acct.name}: {what} stored in the system keyring", level=0)
        return 0

    guard(env, run)


@password.command(name="delete")
@click.argument("account")
@_IMAP_OPTION
def password_delete(account: str, imap: bool) -> None:
    """Remove ACCOUNT's password from the system keyring."""
    env = current_env()

    def run() -> int:
        from fetchpop.secrets import delete_password

        (acct,) = env.load_config().select([account])
        _keyring_user(acct, imap)
        if delete_password(acct, imap=imap):
            env.info(f"{acct.name}: password removed from the system keyring", level=0)
        else:
            env.info(f"{acct.name}: no password was stored in the system keyring", level=0)
        return 0

    guard(env, run)


@main.command()
@click.argument("account", required=False)
@click.option("--host", metavar="HOST", help="Ask this server; no configuration needed.")
@click.option(
    "--port", type=click.IntRange(1, 65535), metavar="PORT", help="With --host (995 or 110)."
)
@click.option(
    "--tls",
    "tls_mode",
    type=click.Choice(["implicit", "starttls", "off"]),
    default="implicit",
    show_default=True,
    help="With --host.",
)
@click.option(
    "--ca-file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    metavar="FILE",
    help="With --host: also trust this CA certificate.",
)
@json_option
def serverinfo(
    account: str | None,
    host: str | None,
    port: int | None,
    tls_mode: str,
    ca_file: Path | None,
    as_json: bool,
) -> None:
    """Show the server's greeting, capabilities, TLS version and certificate.

    ACCOUNT may be left out when the configuration has one account; with
    --host, no configuration is needed (and no login is tried). A certificate
    that does not verify is shown all the same, with the line that would
    trust it (status 69)."""
    env = current_env()

    def run() -> int:
        from fetchpop.sync import probe

        acct = _serverinfo_account(env, account, host, port, tls_mode, ca_file)
        password = env.password_source(acct) if acct.user else _no_password
        info = probe(acct, password, log=transcript(env, acct.name))
        if info["tls"]:
            from fetchpop.errors import sanitize

            # A certificate's names are the server's text too (an escape in
            # its subject must not reach the terminal).
            info["tls"] = {
                k: sanitize(v) if isinstance(v, str) else v for k, v in info["tls"].items()
            }
        from fetchpop.errors import ExitCode

        code = int(ExitCode.UNAVAILABLE) if info["tls_error"] else 0
        if as_json:
            env.print_json(info)
            return code
        _print_serverinfo(env, acct, info)
        return code

    guard(env, run)


def _no_password() -> str:
    raise AssertionError("serverinfo --host never logs in")


def _serverinfo_account(
    env: Environment,
    account: str | None,
    host: str | None,
    port: int | None,
    tls_mode: str,
    ca_file: Path | None,
) -> Account:
    """The account ``serverinfo`` asks about: named, the only one, or --host's."""
    from fetchpop.config import Account
    from fetchpop.deliver import DeliverySpec
    from fetchpop.errors import UsageError

    if host is not None:
        if account is not None:
            raise UsageError("serverinfo takes an account or --host, not both")
        return Account(
            name=host,
            host=host,
            user="",
            port=port or (995 if tls_mode == "implicit" else 110),
            tls=tls_mode,  # type: ignore[arg-type]
            ca_file=ca_file,
            deliver=DeliverySpec("maildir", Path("/nonexistent")),
        )
    if port is not None or ca_file is not None or tls_mode != "implicit":
        raise UsageError("--port, --tls and --ca-file go with --host")
    config = env.load_config()
    if account is None:
        if len(config.accounts) != 1:
            raise UsageError(
                f"name an account (the configuration has {len(config.accounts)}), "
                "or ask a server with --host"
            )
        return next(iter(config.accounts.values()))
    (acct,) = config.select([account])
    return acct


def _print_serverinfo(env: Environment, acct: Account, info: dict[str, Any]) -> None:
    out = env.stdout
    print(f"{acct.name}: {acct.host} port {acct.port}, tls = {acct.tls}", file=out)
    if info["greeting"] is not None:
        print(f"greeting: {info['greeting']}", file=out)
    tls = info["tls"]
    if tls:
        print(f"TLS: {tls['version']}, cipher {tls['cipher']}", file=out)
        print(f"certificate fingerprint: {tls['fingerprint']}", file=out)
        print(f"  subject: {tls['subject']}", file=out)
        print(f"  issuer:  {tls['issuer']}", file=out)
        print(f"  expires: {tls['not_after']}", file=out)
    elif info["tls_error"] is None:
        print("TLS: none (clear text)", file=out)
    if info["tls_error"]:
        print(f"certificate: {info['tls_error']}", file=out)
        if tls:
            print(
                "If this is the right server (compare the fingerprint with what its "
                "operator publishes), add to the account:",
                file=out,
            )
            print(f'  tls_fingerprint = "{tls["fingerprint"]}"', file=out)
            print(
                "or, for a certificate your own CA signed, ca_file = \"/path/to/ca.pem\".",
                file=out,
            )
    for stage in ("before_tls", "before_login", "after_login"):
        caps = info["capabilities"].get(stage)
        if stage in info["capabilities"]:
            text = "CAPA not supported" if caps is None else " ".join(caps) or "(none)"
            print(f"capabilities {stage.replace('_', ' ')}: {text}", file=out)
    if info.get("login_error"):
        print(f"login: {info['login_error']}", file=out)


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
@click.option(
    "--imap",
    is_flag=True,
    help="Sign in the imap:// target's own provider (imap_oauth_provider).",
)
def oauth_login(account: str, device: bool, no_browser: bool, port: int, imap: bool) -> None:
    """Sign ACCOUNT in with OAuth2; the refresh token goes to the system keyring.

    An account whose only OAuth2 provider is its imap:// target's
    (imap_oauth_provider) signs that in without --imap."""
    env = current_env()

    def run() -> int:
        from fetchpop import oauth as oa
        from fetchpop.errors import ConfigError
        from fetchpop.secrets import (
            OAUTH_KEYRING_SERVICE,
            OAuthTokenStore,
            imap_keyring_username,
            keyring_username,
            require_keyring,
        )

        (acct,) = env.load_config().select([account])
        side = imap or (acct.oauth_provider is None and acct.imap_oauth_provider is not None)
        if side and acct.imap_oauth_provider is None:
            raise ConfigError(
                f'account "{acct.name}": imap_oauth_provider is not set (see fetchpop-config(5))'
            )
        if acct.oauth_provider is None and not side:
            raise ConfigError(
                f'account "{acct.name}": oauth_provider is not set (see fetchpop-config(5))'
            )
        provider = oa.imap_provider_for(acct) if side else oa.provider_for(acct)
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
                show_error=lambda line: env.error(f"{acct.name}: {line}"),
                port=port,
            )
        OAuthTokenStore(acct, imap=side).save(tokens.to_record(provider))
        username = imap_keyring_username(acct) if side else keyring_username(acct)
        env.info(
            f"{acct.name}: signed in; the refresh token is in the system keyring "
            f"(service {OAUTH_KEYRING_SERVICE}, username {username})",
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
    env = current_env()

    def run() -> int:
        from fetchpop.secrets import OAuthTokenStore

        (acct,) = env.load_config().select([account])
        if OAuthTokenStore(acct).delete():
            env.info(f"{acct.name}: OAuth2 tokens removed from the system keyring", level=0)
        else:
            env.info(f"{acct.name}: no OAuth2 tokens were stored in the system keyring", level=0)
        return 0

    guard(env, run)
