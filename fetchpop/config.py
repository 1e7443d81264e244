"""The configuration file: TOML in, frozen and validated dataclasses out.

Strategy: parse the whole file, check every table and key against one table of
key specifications (``ACCOUNT_KEYS``), and collect every problem as one line
naming the file, the account (or ``[defaults]``) and the key. Only when there is
no problem at all is a :class:`Config` returned; otherwise a single
:class:`~fetchpop.errors.ConfigError` carries them all, as fetchpop-config(5)
promises. After loading, nothing downstream re-validates: the values are final.
"""

from __future__ import annotations

import math
import os
import re
import sys
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, cast

from fetchpop.deliver import DeliverySpec, parse_deliver
from fetchpop.errors import ConfigError, sanitize

Tls = Literal["implicit", "starttls", "off"]
AuthMethod = Literal[
    "auto", "user", "apop", "plain", "login",
    "scram-sha-1", "scram-sha-256", "xoauth2", "oauthbearer",
]  # fmt: skip

OAuthProvider = Literal["google", "microsoft", "custom"]

TLS_MODES: tuple[Tls, ...] = ("implicit", "starttls", "off")
OAUTH_PROVIDERS: tuple[OAuthProvider, ...] = ("google", "microsoft", "custom")
#: The SASL mechanisms that carry an OAuth2 access token.
OAUTH_AUTH_METHODS: tuple[AuthMethod, ...] = ("xoauth2", "oauthbearer")
AUTH_METHODS: tuple[AuthMethod, ...] = (
    "auto", "user", "apop", "plain", "login",
    "scram-sha-1", "scram-sha-256", "xoauth2", "oauthbearer",
)  # fmt: skip

#: The POP3 ports: RFC 8314 section 7.2 (implicit TLS), RFC 1939 section 3.
POP3S_PORT = 995
POP3_PORT = 110

_NAME_RE = re.compile(r"[A-Za-z0-9._-]+")
_FINGERPRINT_PREFIX = "sha256:"


# -- the account --------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Account:
    """One POP3 account, every key resolved (defaults applied, paths expanded)."""

    name: str
    host: str
    user: str
    deliver: DeliverySpec
    #: The loader sets 995 for tls="implicit" and 110 otherwise; 995 here only
    #: for accounts built directly (in tests).
    port: int = POP3S_PORT
    tls: Tls = "implicit"
    ca_file: Path | None = None
    #: Lowercase hex SHA-256 of the server certificate (DER), no colons, no prefix.
    tls_fingerprint: str | None = None
    auth: AuthMethod = "auto"
    password_command: str | None = None
    password: str | None = field(default=None, repr=False)
    oauth_provider: OAuthProvider | None = None
    oauth_client_id: str | None = None
    oauth_client_secret: str | None = field(default=None, repr=False)
    oauth_auth_url: str | None = None
    oauth_token_url: str | None = None
    oauth_device_url: str | None = None
    oauth_scopes: tuple[str, ...] | None = None
    keep: bool = True
    delete_after_days: int | None = None
    max_size: int | None = None
    max_messages: int | None = None
    timeout: float = 60.0
    mbox_lock_timeout: float = 30.0

    @property
    def mailbox(self) -> tuple[str, int, str]:
        """The seen-store key (host, port, user): renaming an account keeps its state."""
        return (self.host.lower(), self.port, self.user)

    def to_public_dict(self) -> dict[str, object]:
        """Every key as resolved, JSON-ready, for ``fetchpop accounts --json``.

        Secrets (password, oauth_client_secret) are never shown: ``"***"``
        when one is set, else ``None``.
        """
        out: dict[str, object] = {"name": self.name}
        for key, spec in ACCOUNT_KEYS.items():
            value: object = getattr(self, key)
            if spec.secret:
                value = None if value is None else "***"
            elif isinstance(value, tuple):
                value = list(value)
            elif key == "deliver":
                value = format_deliver(self.deliver)
            elif key == "tls_fingerprint" and value is not None:
                value = _FINGERPRINT_PREFIX + str(value)
            elif isinstance(value, Path):
                value = str(value)
            out[key] = value
        return out


def format_deliver(spec: DeliverySpec) -> str:
    """*spec* written back in the ``deliver`` key's syntax."""
    if spec.kind == "mda":
        import shlex

        return "mda:" + shlex.join(spec.command or ())
    return f"{spec.kind}:{spec.path}"


@dataclass(frozen=True)
class Config:
    """The loaded configuration file; ``accounts`` keeps the file's order."""

    path: Path
    accounts: dict[str, Account]

    def select(self, names: Sequence[str]) -> list[Account]:
        """The named accounts in the order given (all of them when *names* is empty).

        Raises ConfigError listing every unknown name.
        """
        if not names:
            return list(self.accounts.values())
        known = ", ".join(self.accounts)
        unknown = [n for n in dict.fromkeys(names) if n not in self.accounts]
        if unknown:
            raise ConfigError([f"unknown account {_quote(n)} (known: {known})" for n in unknown])
        return [self.accounts[n] for n in dict.fromkeys(names)]


# -- key specifications --------------------------------------------------------

Converter = Callable[[object, Mapping[str, str]], object]


@dataclass(frozen=True)
class KeySpec:
    """What one account key accepts; the man-page test iterates these."""

    name: str
    #: The accepted values, as the man page says it ("integer 1..65535").
    type_doc: str
    #: Turns the TOML value into the Account field's value, or raises ValueError
    #: with the problem (no file/account/key prefix). Gets the environment for
    #: ``$VAR`` expansion.
    convert: Converter
    #: One line for the man page and ``--help``.
    doc: str
    required: bool = False
    #: The value when the key is absent (None: no value). Port is computed.
    default: object = None
    #: Describe wrong values by their type only, never by their content.
    secret: bool = False


def _describe(value: object, *, secret: bool = False) -> str:
    if isinstance(value, bool):
        return "a boolean" if secret else ("true" if value else "false")
    if isinstance(value, int | float):
        return ("an integer" if isinstance(value, int) else "a number") if secret else str(value)
    if isinstance(value, str):
        if secret:
            return "a string"
        import json  # (lazily: only an error message needs it)

        return json.dumps(sanitize(value, limit=60), ensure_ascii=False)
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "an array"
    return "a date or time"


def _quote(text: str) -> str:
    return '"' + sanitize(text, limit=80) + '"'


def _expect(value: object, kind: type | tuple[type, ...], what: str, secret: bool = False) -> Any:
    # TOML booleans are Python bools, which are also ints: keep them apart.
    if isinstance(value, bool) and bool not in (kind if isinstance(kind, tuple) else (kind,)):
        raise ValueError(f"expected {what}, got {_describe(value, secret=secret)}")
    if not isinstance(value, kind):
        raise ValueError(f"expected {what}, got {_describe(value, secret=secret)}")
    return value


def _suggest(word: str, choices: Sequence[str]) -> str:
    import difflib  # (lazily: only an error message needs it)

    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return f" (did you mean {_quote(close[0])}?)" if close else ""


def _has_control(text: str) -> bool:
    return any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in text)


def _word(value: object, _env: Mapping[str, str]) -> str:
    """A non-empty string without spaces or control characters (a host, a client id)."""
    text: str = _expect(value, str, "a string")
    if not text:
        raise ValueError("must not be empty")
    if any(ch.isspace() for ch in text) or _has_control(text):
        raise ValueError(f"must not contain spaces or control characters, got {_describe(text)}")
    return text


def _user(value: object, _env: Mapping[str, str]) -> str:
    text: str = _expect(value, str, "a string")
    if not text:
        raise ValueError("must not be empty")
    # CR or LF would end the USER command early (RFC 1939 section 3).
    if _has_control(text):
        raise ValueError("must not contain control characters")
    return text


def _port(value: object, _env: Mapping[str, str]) -> int:
    number: int = _expect(value, int, "an integer")
    if not 1 <= number <= 65535:
        raise ValueError(f"must be between 1 and 65535, got {number}")
    return number


def _choice(choices: Sequence[str]) -> Converter:
    def convert(value: object, _env: Mapping[str, str]) -> str:
        text: str = _expect(value, str, "a string")
        if text not in choices:
            listed = ", ".join(_quote(c) for c in choices)
            raise ValueError(
                f"must be one of {listed}; got {_describe(text)}{_suggest(text, choices)}"
            )
        return text

    return convert


_VAR_RE = re.compile(r"\$(?:(\w+)|\{(\w+)\})")


def expand_path(text: str, environ: Mapping[str, str]) -> Path:
    """Expand a leading ``~`` and every ``$VAR`` / ``${VAR}`` in *text*.

    Raises ValueError naming an unset variable, rather than leaving ``$VAR`` in
    a path where it would silently create a directory called ``$VAR``.
    """

    def var(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        if name not in environ:
            raise ValueError(f"${name} is not set (in {_describe(text)})")
        return environ[name]

    expanded = _VAR_RE.sub(var, text)
    if expanded == "~" or expanded.startswith("~/"):
        home = environ.get("HOME") or str(Path.home())
        expanded = home + expanded[1:]
    elif expanded.startswith("~"):
        expanded = os.path.expanduser(expanded)
    return Path(expanded)


def _existing_file(value: object, env: Mapping[str, str]) -> Path:
    text: str = _expect(value, str, "a string")
    if not text:
        raise ValueError("must not be empty")
    path = expand_path(text, env)
    if not path.exists():
        raise ValueError(f"no such file: {sanitize(str(path))}")
    return path


def _fingerprint(value: object, _env: Mapping[str, str]) -> str:
    text: str = _expect(value, str, "a string")
    hint = 'expected "sha256:" and 64 hex digits (colons optional)'
    if not text.lower().startswith(_FINGERPRINT_PREFIX):
        raise ValueError(f"{hint}, got {_describe(text)}")
    digits = text[len(_FINGERPRINT_PREFIX) :].replace(":", "").lower()
    if not re.fullmatch(r"[0-9a-f]{64}", digits):
        raise ValueError(f"{hint}, got {_describe(text)}")
    return digits


def _command(value: object, _env: Mapping[str, str]) -> str:
    text: str = _expect(value, str, "a string")
    import shlex  # (lazily: only command settings need it)

    try:
        words = shlex.split(text)
    except ValueError as exc:
        raise ValueError(f"cannot be split into words: {exc}") from None
    if not words:
        raise ValueError("must not be empty")
    return text


def _password(value: object, _env: Mapping[str, str]) -> str:
    text: str = _expect(value, str, "a string", secret=True)
    if not text:
        raise ValueError("must not be empty")
    if any(ch in text for ch in "\r\n\0"):
        raise ValueError("must not contain line breaks or NUL characters")
    return text


def _https_url(value: object, _env: Mapping[str, str]) -> str:
    text: str = _expect(value, str, "a string")
    hint = f"expected an https:// URL, got {_describe(text)}"
    if any(ch.isspace() for ch in text) or _has_control(text):
        raise ValueError(hint)
    import urllib.parse  # (lazily: only OAuth settings need it)

    try:
        parts = urllib.parse.urlsplit(text)
        parts.port  # noqa: B018 -- raises ValueError for a bad port
    except ValueError:
        raise ValueError(hint) from None
    if parts.scheme.lower() != "https" or not parts.hostname:
        raise ValueError(hint)
    # RFC 6749 sections 3.1 and 3.2: an endpoint URI has no fragment.
    if parts.fragment or text.endswith("#"):
        raise ValueError(f"must not have a #fragment, got {_describe(text)}")
    return text


# RFC 6749 section 3.3: scope-token = 1*( %x21 / %x23-5B / %x5D-7E )
_SCOPE_RE = re.compile(r"[\x21\x23-\x5B\x5D-\x7E]+")


def _scopes(value: object, _env: Mapping[str, str]) -> tuple[str, ...]:
    what = "an array of strings or a space-separated string"
    raw: list[object] | str = _expect(value, (list, str), what)
    if isinstance(raw, str):
        items: list[object] = list(raw.split())
    else:
        items = raw
    scopes: list[str] = []
    for item in items:
        scope: str = _expect(item, str, what)
        if not _SCOPE_RE.fullmatch(scope):
            raise ValueError(f"{_describe(scope)} is not a valid OAuth2 scope (RFC 6749 3.3)")
        scopes.append(scope)
    if not scopes:
        raise ValueError("must name at least one scope")
    return tuple(dict.fromkeys(scopes))


def _deliver(value: object, _env: Mapping[str, str]) -> DeliverySpec:
    text: str = _expect(value, str, "a string")
    return parse_deliver(text)


def _bool(value: object, _env: Mapping[str, str]) -> bool:
    flag: bool = _expect(value, bool, "a boolean")
    return flag


def _positive_int(value: object, _env: Mapping[str, str]) -> int:
    number: int = _expect(value, int, "an integer")
    if number < 1:
        raise ValueError(f"must be at least 1, got {number}")
    return number


def _positive_number(value: object, _env: Mapping[str, str]) -> float:
    number: int | float = _expect(value, (int, float), "a number")
    if not math.isfinite(number) or number <= 0:
        raise ValueError(f"must be a number greater than 0, got {number}")
    return float(number)


_SIZE_RE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*(?:([kmg])(i)?)?b?\s*", re.IGNORECASE)
_SIZE_POWER = {"k": 1, "m": 2, "g": 3}


def parse_size(text: str) -> int:
    """Bytes in "25MB", "500k", "1GiB" (K/M/G: 1000-based; KiB/MiB/GiB: 1024-based)."""
    match = _SIZE_RE.fullmatch(text)
    if not match:
        raise ValueError(f"expected a size like 25MB, 500k or 1GiB, got {_describe(text)}")
    number, unit, binary = match.groups()
    base = 1024 if binary else 1000
    from decimal import Decimal  # (lazily: only a size setting needs it)

    size = int(Decimal(number) * base ** _SIZE_POWER[unit.lower()] if unit else Decimal(number))
    if size < 1:
        raise ValueError(f"must be at least 1 byte, got {_describe(text)}")
    return size


def _size(value: object, env: Mapping[str, str]) -> int:
    size: int | str = _expect(value, (int, str), 'an integer or a size like "25MB"')
    if isinstance(size, int):
        return _positive_int(size, env)
    return parse_size(size)


_KEY_LIST = [
    KeySpec("host", "string", _word, "the POP3 server's host name", required=True),
    KeySpec("user", "string", _user, "the user name to log in as", required=True),
    KeySpec(
        "port", "integer 1..65535", _port,
        'the server port; default 995 with tls = "implicit", else 110',
    ),
    KeySpec(
        "tls", '"implicit" | "starttls" | "off"', _choice(TLS_MODES),
        'TLS from the first byte, STARTTLS (STLS) required, or clear text', default="implicit",
    ),
    KeySpec(
        "ca_file", "path", _existing_file,
        "also trust this CA (or self-signed) certificate, in PEM",
    ),
    KeySpec(
        "tls_fingerprint", '"sha256:" and 64 hex digits', _fingerprint,
        "pin the server certificate's SHA-256 fingerprint instead of CA trust",
    ),
    KeySpec(
        "auth", " | ".join(f'"{a}"' for a in AUTH_METHODS), _choice(AUTH_METHODS),
        "the authentication method; auto picks the strongest the server offers",
        default="auto",
    ),
    KeySpec(
        "password_command", "string", _command,
        "a command (no shell) whose first line of output is the password",
    ),
    KeySpec(
        "password", "string", _password,
        "the password; only accepted when the file is private (chmod 600)", secret=True,
    ),
    KeySpec(
        "oauth_provider", " | ".join(f'"{p}"' for p in OAUTH_PROVIDERS), _choice(OAUTH_PROVIDERS),
        'sign in with OAuth2 (`fetchpop oauth login`); needs auth = "xoauth2" or "oauthbearer"',
    ),
    KeySpec(
        "oauth_client_id", "string", _word,
        "the OAuth2 client ID of the application registered with the provider",
    ),
    KeySpec(
        "oauth_client_secret", "string", _password,
        "the OAuth2 client secret, if the provider gave one; only in a private file (chmod 600)",
        secret=True,
    ),
    KeySpec(
        "oauth_auth_url", "https URL", _https_url,
        "the OAuth2 authorization endpoint (overrides the provider's)",
    ),
    KeySpec(
        "oauth_token_url", "https URL", _https_url,
        "the OAuth2 token endpoint (overrides the provider's)",
    ),
    KeySpec(
        "oauth_device_url", "https URL", _https_url,
        "the OAuth2 device authorization endpoint, for `oauth login --device`",
    ),
    KeySpec(
        "oauth_scopes", "array of strings, or a space-separated string", _scopes,
        "the OAuth2 scopes to ask for (overrides the provider's)",
    ),
    KeySpec(
        "deliver", '"maildir:DIR" | "mbox:FILE" | "mda:COMMAND"', _deliver,
        "where the mail goes", required=True,
    ),
    KeySpec("keep", "boolean", _bool, "leave messages on the server", default=True),
    KeySpec(
        "delete_after_days", "integer >= 1", _positive_int,
        "with keep: delete a message this many days after it was first fetched",
    ),
    KeySpec(
        "max_size", 'integer (bytes) or size ("25MB", "500k", "1GiB")', _size,
        "skip larger messages, leaving them on the server",
    ),
    KeySpec(
        "max_messages", "integer >= 1", _positive_int,
        "fetch at most this many messages in one run",
    ),
    KeySpec(
        "timeout", "number > 0", _positive_number,
        "seconds of silence from the server before giving up", default=60.0,
    ),
    KeySpec(
        "mbox_lock_timeout", "number > 0", _positive_number,
        "seconds to wait for an mbox lock", default=30.0,
    ),
]  # fmt: skip

#: Every account key, in man-page order; valid in ``[defaults]`` and ``[accounts.NAME]``.
ACCOUNT_KEYS: Mapping[str, KeySpec] = {spec.name: spec for spec in _KEY_LIST}


# -- finding and loading -------------------------------------------------------


def find_config_path(explicit: str | None, environ: Mapping[str, str]) -> Path:
    """The configuration file to use: *explicit* (``--config``), then
    ``$FETCHPOP_CONFIG``, then ``<user config dir>/fetchpop/config.toml``."""
    if explicit:
        return Path(explicit).expanduser()
    if environ.get("FETCHPOP_CONFIG"):
        return Path(environ["FETCHPOP_CONFIG"]).expanduser()
    xdg = environ.get("XDG_CONFIG_HOME", "").strip()
    if sys.platform not in ("win32", "darwin") and xdg:
        # The environment we were given, taken at its word (as fetchpop always has).
        return Path(xdg) / "fetchpop" / "config.toml"
    return user_dir("config", environ) / "config.toml"


#: The XDG base directories fetchpop uses: kind -> (variable, default under $HOME).
_XDG = {"config": ("XDG_CONFIG_HOME", ".config"), "state": ("XDG_STATE_HOME", ".local/state")}


def user_dir(kind: Literal["config", "state"], environ: Mapping[str, str]) -> Path:
    """``<user config dir>/fetchpop`` or ``<user state dir>/fetchpop`` (platformdirs).

    On Linux that is the XDG base directory: ``$XDG_CONFIG_HOME`` (or
    ``$XDG_STATE_HOME``) when it is an absolute path, ``~/.config`` (or
    ``~/.local/state``) when it is unset, taken here from *environ* without
    importing platformdirs, whose Unix module pulls in tempfile, shutil,
    random and the compression modules (15 ms of every run). Everywhere else,
    and wherever platformdirs versions differ (a relative or padded value, no
    absolute $HOME), platformdirs decides, so the seen-store never moves.
    """
    var, default = _XDG[kind]
    if sys.platform == "linux" and not hasattr(sys, "getandroidapilevel"):
        value = environ.get(var, "")
        if os.path.isabs(value) and value == value.strip():
            return Path(value, "fetchpop")
        home = environ.get("HOME", "")
        if not value and os.path.isabs(home):
            return Path(home, default, "fetchpop")
    import platformdirs

    if kind == "config":
        return Path(platformdirs.user_config_path("fetchpop"))
    return Path(platformdirs.user_state_path("fetchpop"))


def load_config(path: Path, *, environ: Mapping[str, str] | None = None) -> Config:
    """Read and validate the file at *path*.

    Raises ConfigError carrying every problem found, one line each.
    *environ* (default ``os.environ``) is used for ``$VAR`` in paths.
    """
    env: Mapping[str, str] = os.environ if environ is None else environ
    data, private = _read(path)
    loader = _Loader(path, env, private)
    accounts = loader.load(data)
    if loader.problems:
        raise ConfigError(loader.problems)
    return Config(path=path, accounts=accounts)


def _read(path: Path) -> tuple[dict[str, Any], bool]:
    try:
        with open(path, "rb") as f:
            mode = os.fstat(f.fileno()).st_mode
            raw = f.read()
    except FileNotFoundError:
        raise ConfigError(
            f"{path}: no such file; create it (see fetchpop-config(5)) or run `fetchpop init`"
        ) from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise ConfigError(f"{path}: line {line}: not valid UTF-8") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: {_toml_problem(str(exc))}") from None
    return data, mode & 0o077 == 0


def _toml_problem(message: str) -> str:
    # tomllib says "Invalid value (at line 3, column 7)"; put the place first.
    match = re.fullmatch(r"(.*) \(at line (\d+), column (\d+)\)", message, re.DOTALL)
    if match:
        what, line, column = match.groups()
        return f"line {line}, column {column}: invalid TOML: {what}"
    return f"invalid TOML: {message}"


class _Loader:
    """Walks the parsed TOML, collecting problems instead of stopping at the first."""

    def __init__(self, path: Path, environ: Mapping[str, str], private: bool) -> None:
        self.path = path
        self.environ = environ
        self.private = private
        self.problems: list[str] = []

    def problem(self, where: str, message: str) -> None:
        self.problems.append(f"{self.path}: {where}{message}")

    def load(self, data: dict[str, Any]) -> dict[str, Account]:
        for key, value in data.items():
            if key in ("defaults", "accounts"):
                continue
            if key in ACCOUNT_KEYS:
                self.problem(
                    f"key {_quote(key)}: ",
                    "not in a table; account keys go in [defaults] or [accounts.NAME]",
                )
            elif isinstance(value, dict):
                hint = _suggest(key, ("defaults", "accounts"))
                self.problem("", f"[{sanitize(key)}]: unknown table{hint}")
            else:
                self.problem(f"key {_quote(key)}: ", "unknown top-level key")

        defaults_raw = data.get("defaults", {})
        defaults: dict[str, object] = {}
        defaults_seen: set[str] = set()
        if isinstance(defaults_raw, dict):
            defaults, defaults_seen = self.table(defaults_raw, "[defaults]: ")
            self.check_conflicts(defaults, defaults_seen, "[defaults]: ")
        else:
            self.problem("", f'"defaults" must be a table, got {_describe(defaults_raw)}')

        accounts_raw = data.get("accounts", {})
        if not isinstance(accounts_raw, dict):
            self.problem("", f'"accounts" must be a table, got {_describe(accounts_raw)}')
            return {}
        if not accounts_raw:
            self.problem("", "no accounts defined; add an [accounts.NAME] table")
            return {}
        accounts: dict[str, Account] = {}
        for name, raw in accounts_raw.items():
            account = self.account(name, raw, defaults, defaults_seen)
            if account is not None:
                accounts[name] = account
        return accounts

    def table(self, raw: dict[str, Any], where: str) -> tuple[dict[str, object], set[str]]:
        """Converted values of the valid keys, and the names of all known keys present."""
        values: dict[str, object] = {}
        seen: set[str] = set()
        for key, value in raw.items():
            spec = ACCOUNT_KEYS.get(key)
            if spec is None:
                self.problem(
                    f"{where}key {_quote(key)}: ", "unknown key" + _suggest(key, list(ACCOUNT_KEYS))
                )
                continue
            seen.add(key)
            if spec.secret and not self.private:
                instead = " or use password_command" if key == "password" else ""
                self.problem(
                    f"{where}key {_quote(key)}: ",
                    f"the file is readable by others; chmod 600 {self.path}{instead}",
                )
                continue
            try:
                values[key] = spec.convert(value, self.environ)
            except ValueError as exc:
                self.problem(f"{where}key {_quote(key)}: ", str(exc))
        return values, seen

    def check_conflicts(self, values: Mapping[str, object], own: set[str], where: str) -> None:
        # Only complain where delete_after_days is written: an account may turn
        # keep off under a [defaults] delete_after_days without being told off.
        if "delete_after_days" in own and values.get("keep") is False:
            self.problem(
                f'{where}key "delete_after_days": ',
                "has no effect with keep = false (the messages are deleted at once)",
            )

    def check_oauth(
        self, values: Mapping[str, object], seen: set[str], own: set[str], where: str
    ) -> bool:
        """The OAuth2 keys' rules across keys; False when a problem was reported."""
        problems_before = len(self.problems)

        def problem(key: str, message: str) -> None:
            self.problem(f"{where}key {_quote(key)}: ", message)

        provider = values.get("oauth_provider")
        if provider is None:
            if "oauth_provider" not in seen:  # else its bad value is already reported
                for key in sorted(k for k in own if k.startswith("oauth_")):
                    problem(key, "has no effect without oauth_provider")
            return len(self.problems) == problems_before
        auth = values.get("auth", "auto")
        if auth not in OAUTH_AUTH_METHODS and ("auth" in values or "auth" not in seen):
            problem("oauth_provider", f'needs auth = "xoauth2" or "oauthbearer" (auth is "{auth}")')
        if "oauth_client_id" not in seen:
            problem("oauth_client_id", "missing; oauth_provider needs it")
        if provider == "custom":
            if "oauth_token_url" not in seen:
                problem("oauth_token_url", 'missing; oauth_provider = "custom" needs it')
            if "oauth_auth_url" not in seen and "oauth_device_url" not in seen:
                problem(
                    "oauth_auth_url",
                    'missing; oauth_provider = "custom" needs it or oauth_device_url',
                )
        for key in ("password_command", "password"):
            if key in seen and (key in own or "oauth_provider" in own):
                problem(key, "not used with oauth_provider (the OAuth2 token is); remove one")
        return len(self.problems) == problems_before

    def account(
        self,
        name: str,
        raw: object,
        defaults: Mapping[str, object],
        defaults_seen: set[str],
    ) -> Account | None:
        where = f"account {_quote(name)}: "
        if not _NAME_RE.fullmatch(name):
            self.problem(where, 'invalid name; use letters, digits, ".", "_" and "-"')
        if not isinstance(raw, dict):
            self.problem(where, f"must be a table, got {_describe(raw)}")
            return None
        own, own_seen = self.table(raw, where)
        values = {**defaults, **own}
        self.check_conflicts(values, own_seen, where)
        seen = defaults_seen | own_seen
        oauth_ok = self.check_oauth(values, seen, own_seen, where)
        missing = [s.name for s in ACCOUNT_KEYS.values() if s.required and s.name not in seen]
        for key in missing:
            self.problem(f"{where}key {_quote(key)}: ", "missing; it is required")
        if missing or seen - values.keys() or not oauth_ok or not _NAME_RE.fullmatch(name):
            return None  # Already reported.
        for spec in ACCOUNT_KEYS.values():
            if spec.name not in values and spec.default is not None:
                values[spec.name] = spec.default
        if "port" not in values:
            values["port"] = POP3S_PORT if values["tls"] == "implicit" else POP3_PORT
        return Account(name=name, **cast(dict[str, Any], values))
