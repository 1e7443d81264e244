"""Where an account's password comes from, and the only user of keyring.

Strategy: the sources are tried in the order fetchpop-config(5) documents —
``password_command``, ``password`` in the (private) file, the system keyring
(service ``fetchpop``, username ``USER@HOST``), then a prompt, which the CLI
passes only when stdin is a terminal. keyring is imported inside the functions
that need it, so ``fetchpop --version`` and password_command users never load
it (or its D-Bus backends).

A secret never appears in an exception message, a log line or a repr: errors
from a password command quote its stderr only, never its stdout.
"""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType
from typing import TYPE_CHECKING, Any

from fetchpop.config import Account
from fetchpop.config.keys import has_control
from fetchpop.errors import AuthError, ConfigError, UnavailableError, sanitize

if TYPE_CHECKING:
    import subprocess

#: The keyring service name; the username is ``keyring_username(account)``.
KEYRING_SERVICE = "fetchpop"

Prompt = Callable[[str], str]
Runner = Callable[..., "subprocess.CompletedProcess[bytes]"]


def keyring_username(account: Account) -> str:
    """The keyring entry's username: ``USER@HOST``."""
    return f"{account.user}@{account.host}"


def get_password(
    account: Account,
    *,
    prompt: Prompt | None = None,
    run: Runner | None = None,
) -> str:
    """The account's password, from the first source that has one.

    Raises AuthError when the password command fails or no source has a
    password, ConfigError when the password holds a control character (CR or
    LF would end the PASS command early and start another: the class of
    CVE-2025-15367 in Python's poplib).
    """
    who = keyring_username(account)
    return _first_source(
        account,
        (account.password_argv, "password_command"),
        (account.password, "password"),
        who=who,
        what="password",
        prompt=prompt,
        run=run,
        missing=f"no password available for {who}: set password_command, store one with "
        f"`fetchpop password set {account.name}`, or run on a terminal",
    )


def _first_source(
    account: Account,
    command: tuple[tuple[str, ...] | None, str],
    value: tuple[str | None, str],
    *,
    who: str | None,
    what: str,
    prompt: Prompt | None,
    run: Runner | None,
    missing: str,
) -> str:
    """A secret from the first source that has one: the command (*command*:
    its argv and key), the file's value (*value*), the keyring entry *who*
    and a prompt (none of those two when *who* is None); *missing* is the
    error when none has it."""
    argv, argv_key = command
    if argv is not None:
        return _checked(_from_command(argv, account.timeout, run), account, argv_key)
    if value[0] is not None:
        return _checked(value[0], account, value[1])
    keyring_problem = None
    if who is not None:
        secret, keyring_problem = _from_keyring(who)
        if secret:
            return _checked(secret, account, "the system keyring")
        if prompt is not None:
            try:
                secret = prompt(f"{what[0].upper()}{what[1:]} for {who}: ")
            except EOFError:
                secret = ""
            if not secret:
                raise AuthError(f"no {what} entered for {who}")
            return _checked(secret, account, "the prompt")
    if keyring_problem:
        missing += f" (the system keyring could not be used: {keyring_problem})"
    raise AuthError(missing)


def get_smtp_password(account: Account, *, run: Runner | None = None) -> str:
    """The password for ``smtp_user`` (an smtp: or lmtp: target's AUTH):
    ``smtp_password_command``, then ``smtp_password`` in the (private) file.

    Raises AuthError when the command fails or neither is set, ConfigError
    when the password holds a control character.
    """
    return _first_source(
        account,
        (account.smtp_password_argv, "smtp_password_command"),
        (account.smtp_password, "smtp_password"),
        who=None,
        what="SMTP password",
        prompt=None,
        run=run,
        missing=f"no password for smtp_user {sanitize(account.smtp_user or '', limit=80)}: "
        "set smtp_password_command (or smtp_password in a private config file)",
    )


def imap_keyring_username(account: Account) -> str:
    """The keyring entry's username for an imap:// target: ``USER@HOST`` of the IMAP side."""
    spec = account.deliver
    return f"{spec.user}@{spec.host}"


def get_imap_password(
    account: Account, *, prompt: Prompt | None = None, run: Runner | None = None
) -> str:
    """The password for an ``imap://USER@HOST/...`` target, from the first
    source that has one: ``imap_password_command``, ``imap_password`` in the
    (private) file, the system keyring (``USER@HOST`` of the IMAP side), a
    prompt. The session hands this to the target as its ``secret``
    (for an OAuth2 ``imap_auth`` the source is the IMAP side's access tokens).

    Raises AuthError when the command fails or no source has a password,
    ConfigError when the password holds a control character.
    """
    who = imap_keyring_username(account)
    return _first_source(
        account,
        (account.imap_password_argv, "imap_password_command"),
        (account.imap_password, "imap_password"),
        who=who,
        what="IMAP password",
        prompt=prompt,
        run=run,
        missing=f"no IMAP password available for {who}: set imap_password_command",
    )


def _checked(secret: str, account: Account, source: str) -> str:
    """*secret*, if no control character is in it (the secret itself never shown)."""
    if has_control(secret):
        raise ConfigError(
            f'account "{account.name}": the password from {source} contains a control '
            "character; refusing to send it"
        )
    return secret


def _from_command(argv: tuple[str, ...], timeout: float, run: Runner | None) -> str:
    # (Imported here: most runs read no password command.) The config split
    # the command into words once, when it was loaded.
    import subprocess

    name = sanitize(argv[0], limit=80)
    try:
        result = (run or subprocess.run)(
            list(argv),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise AuthError(f"password_command timed out after {timeout:g} s ({name})") from None
    except FileNotFoundError:
        raise AuthError(f"password_command failed: {name}: command not found") from None
    except OSError as exc:
        raise AuthError(f"password_command failed: {name}: {exc.strerror or exc}") from None
    if result.returncode != 0:
        how = (
            f"killed by signal {-result.returncode}"
            if result.returncode < 0
            else f"exit {result.returncode}"
        )
        tail = _stderr_tail(result.stderr)
        raise AuthError(f"password_command failed ({how})" + (f": {tail}" if tail else ""))
    stdout: bytes = result.stdout or b""
    first = stdout.split(b"\n", 1)[0].removesuffix(b"\r")
    if not first:
        raise AuthError(f"password_command printed no password ({name}: empty first line)")
    try:
        return first.decode("utf-8")
    except UnicodeDecodeError:
        raise AuthError(f"password_command printed a password that is not UTF-8 ({name})") from None


def _stderr_tail(stderr: bytes | None, lines: int = 3) -> str:
    """The last few non-empty lines of *stderr*, safe to print."""
    text = (stderr or b"").decode("utf-8", "replace")
    tail = [line.strip() for line in text.splitlines() if line.strip()][-lines:]
    return sanitize(" | ".join(tail), limit=200)


def _import_keyring() -> ModuleType:
    import keyring  # Lazy: see the module docstring.

    return keyring


def _unusable_reason(keyring: ModuleType) -> str | None:
    """Why the configured keyring backend cannot hold a password, or None if it can."""
    from keyring.backends import chainer, fail, null

    backend = keyring.get_keyring()
    if isinstance(backend, fail.Keyring | null.Keyring):
        return "no keyring backend is available"
    if isinstance(backend, chainer.ChainerBackend) and not backend.backends:
        return "no keyring backend is available"
    return None


def _from_keyring(username: str) -> tuple[str | None, str | None]:
    """(password or None, why the keyring could not be asked or None)."""
    try:
        keyring = _import_keyring()
        reason = _unusable_reason(keyring)
        if reason:
            return None, reason
        secret: Any = keyring.get_password(KEYRING_SERVICE, username)
    except Exception as exc:  # Any backend failure means "no password here".
        return None, _exception_text(exc)
    return (secret if isinstance(secret, str) and secret else None), None


def _exception_text(exc: BaseException, secret: str | None = None) -> str:
    text = str(exc) or type(exc).__name__
    if secret:
        text = text.replace(secret, "***")
    return sanitize(text, limit=200)


def _no_keyring_error(reason: str) -> UnavailableError:
    return UnavailableError(
        f"cannot use the system keyring: {reason}. Instead, set password_command "
        '(for example "pass show mail/ACCOUNT" or "secret-tool lookup service fetchpop '
        'username USER@HOST"), or put password in a config file only you can read (chmod 600)'
    )


def set_password(account: Account, secret: str, *, imap: bool = False) -> None:
    """Store *secret* in the system keyring for *account* (with *imap*, for
    its imap:// target: under the IMAP side's USER@HOST).

    Raises UnavailableError when no usable keyring backend exists or storing fails.
    """
    keyring = _usable_keyring()
    username = imap_keyring_username(account) if imap else keyring_username(account)
    try:
        keyring.set_password(KEYRING_SERVICE, username, secret)
    except Exception as exc:  # Any backend failure: say what to do instead.
        raise _no_keyring_error(_exception_text(exc, secret)) from None


def delete_password(account: Account, *, imap: bool = False) -> bool:
    """Remove the account's password (with *imap*, its imap:// target's) from
    the keyring; False if none was stored.

    Raises UnavailableError when no usable keyring backend exists or deleting fails.
    """
    keyring = _usable_keyring()
    from keyring.errors import PasswordDeleteError

    username = imap_keyring_username(account) if imap else keyring_username(account)
    try:
        if keyring.get_password(KEYRING_SERVICE, username) is None:
            return False
        keyring.delete_password(KEYRING_SERVICE, username)
    except PasswordDeleteError:
        return False  # Gone between the two calls, or never there.
    except Exception as exc:  # Any backend failure: say what to do instead.
        raise _no_keyring_error(_exception_text(exc)) from None
    return True


def _usable_keyring(
    error: Callable[[str], UnavailableError] = _no_keyring_error,
) -> ModuleType:
    """The keyring module with a usable backend, or *error(reason)* raised."""
    try:
        keyring = _import_keyring()
        reason = _unusable_reason(keyring)
    except Exception as exc:  # A broken install or backend is as good as none.
        reason = _exception_text(exc)
    if reason:
        raise error(reason)
    return keyring


# -- OAuth2 sign-ins ----------------------------------------------------------------

#: The keyring service of OAuth2 sign-ins (refresh and access token, as one JSON
#: record); the username is ``keyring_username(account)``, as for passwords.
OAUTH_KEYRING_SERVICE = "fetchpop-oauth"


class OAuthTokenStore:
    """An account's OAuth2 record in the system keyring (a ``fetchpop.oauth.TokenStore``).

    The record is a secret: it appears in no message, whatever the backend says.
    """

    def __init__(self, account: Account, *, imap: bool = False) -> None:
        # imap: the sign-in of an imap:// target's own OAuth2 provider
        # (imap_oauth_provider), kept under the IMAP side's USER@HOST.
        self.username = imap_keyring_username(account) if imap else keyring_username(account)

    def __repr__(self) -> str:
        return f"OAuthTokenStore({self.username!r})"

    def load(self) -> str | None:
        """The stored record, or None. Raises AuthError when the keyring cannot be read."""
        record: Any = None
        try:
            keyring = _import_keyring()
            reason = _unusable_reason(keyring)
            if reason is None:
                record = keyring.get_password(OAUTH_KEYRING_SERVICE, self.username)
        except Exception as exc:  # Any backend failure: nothing can be read.
            reason = _exception_text(exc)
        if reason is not None:
            raise AuthError(
                f"cannot read the OAuth2 sign-in of {self.username} from the system keyring: "
                f"{reason}"
            )
        return record if isinstance(record, str) and record else None

    def save(self, record: str) -> None:
        """Store *record*. Raises UnavailableError when the keyring cannot take it."""
        keyring = require_keyring()
        try:
            keyring.set_password(OAUTH_KEYRING_SERVICE, self.username, record)
        except Exception as exc:  # Any backend failure: say so, without the record.
            raise UnavailableError(
                f"cannot store the OAuth2 sign-in of {self.username} in the system keyring: "
                f"{_exception_text(exc, record)}"
            ) from None

    def delete(self) -> bool:
        """Remove the record; False if none was stored. Raises UnavailableError on failure."""
        keyring = require_keyring()
        from keyring.errors import PasswordDeleteError

        try:
            if keyring.get_password(OAUTH_KEYRING_SERVICE, self.username) is None:
                return False
            keyring.delete_password(OAUTH_KEYRING_SERVICE, self.username)
        except PasswordDeleteError:
            return False
        except Exception as exc:  # Any backend failure.
            raise UnavailableError(
                f"cannot remove the OAuth2 sign-in of {self.username} from the system keyring: "
                f"{_exception_text(exc)}"
            ) from None
        return True


def check_keyring() -> None:
    """Raise UnavailableError (with what to do instead) when no keyring is usable."""
    _usable_keyring()


def require_keyring() -> ModuleType:
    """The keyring module, if a usable backend exists (checked before an OAuth2 sign-in,
    whose refresh token can be kept nowhere else). Raises UnavailableError."""

    def error(reason: str) -> UnavailableError:
        return UnavailableError(
            f"cannot use the system keyring: {reason}. OAuth2 refresh tokens are kept "
            "only there: start a Secret Service (GNOME Keyring, KeePassXC) or choose a "
            "backend with PYTHON_KEYRING_BACKEND (see keyring's documentation)"
        )

    return _usable_keyring(error)
