"""The account keys: one table of what each accepts, and the converters.

``ACCOUNT_KEYS`` names every key valid in ``[defaults]`` and
``[accounts.NAME]``, in man-page order, with its converter: a function that
turns the TOML value into the :class:`~fetchpop.config.model.Account` field's
value or raises ValueError saying what is wrong (the loader adds the file,
account and key). The value vocabularies (``TLS_MODES`` ...) live here too,
and the helpers that describe a wrong value in a message.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from fetchpop.deliver import DeliverySpec, SmtpTls, parse_deliver
from fetchpop.errors import sanitize
from fetchpop.paths import expand_path

Tls = Literal["implicit", "starttls", "off"]
AuthMethod = Literal[
    "auto", "user", "apop", "plain", "login",
    "scram-sha-1", "scram-sha-256", "xoauth2", "oauthbearer",
]  # fmt: skip

OAuthProvider = Literal["google", "microsoft", "custom"]

TLS_MODES: tuple[Tls, ...] = ("implicit", "starttls", "off")
#: smtp_tls: the lmtp: and smtp: targets' TLS (fetchpop.deliver.smtp).
SMTP_TLS_MODES: tuple[SmtpTls, ...] = ("auto", "starttls", "implicit", "off")
OAUTH_PROVIDERS: tuple[OAuthProvider, ...] = ("google", "microsoft", "custom")
#: imap_auth: LOGIN, the SASL mechanisms of AUTHENTICATE, or the best offered.
ImapAuth = Literal[
    "auto", "login", "plain", "scram-sha-1", "scram-sha-256", "xoauth2", "oauthbearer",
]  # fmt: skip
IMAP_AUTH_METHODS: tuple[ImapAuth, ...] = (
    "auto", "login", "plain", "scram-sha-1", "scram-sha-256", "xoauth2", "oauthbearer",
)  # fmt: skip
#: imap_oauth_provider: the presets only (a custom provider has no imap_* endpoints).
IMAP_OAUTH_PROVIDERS: tuple[OAuthProvider, ...] = ("google", "microsoft")
#: The SASL mechanisms that carry an OAuth2 access token.
OAUTH_AUTH_METHODS: tuple[AuthMethod, ...] = ("xoauth2", "oauthbearer")
AUTH_METHODS: tuple[AuthMethod, ...] = (
    "auto", "user", "apop", "plain", "login",
    "scram-sha-1", "scram-sha-256", "xoauth2", "oauthbearer",
)  # fmt: skip

FINGERPRINT_PREFIX = "sha256:"

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


# -- describing a value in a message --------------------------------------------


def describe(value: object, *, secret: bool = False) -> str:
    """*value* as a message shows it: quoted and cut short; a secret by its type only."""
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


def quote(text: str) -> str:
    """*text* (a name) in double quotes, made safe to print."""
    return '"' + sanitize(text, limit=80) + '"'


def _expect(value: object, kind: type | tuple[type, ...], what: str, secret: bool = False) -> Any:
    # TOML booleans are Python bools, which are also ints: keep them apart.
    if isinstance(value, bool) and bool not in (kind if isinstance(kind, tuple) else (kind,)):
        raise ValueError(f"expected {what}, got {describe(value, secret=secret)}")
    if not isinstance(value, kind):
        raise ValueError(f"expected {what}, got {describe(value, secret=secret)}")
    return value


def suggest(word: str, choices: Sequence[str]) -> str:
    """`` (did you mean "X"?)`` for the choice closest to *word*, or nothing."""
    import difflib  # (lazily: only an error message needs it)

    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return f" (did you mean {quote(close[0])}?)" if close else ""


def has_control(text: str) -> bool:
    """Whether *text* holds a C0 control character or DEL."""
    return any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in text)


# -- the converters -------------------------------------------------------------


def _word(value: object, _env: Mapping[str, str]) -> str:
    """A non-empty string without spaces or control characters (a host, a client id)."""
    text: str = _expect(value, str, "a string")
    if not text:
        raise ValueError("must not be empty")
    if any(ch.isspace() for ch in text) or has_control(text):
        raise ValueError(f"must not contain spaces or control characters, got {describe(text)}")
    return text


def _argument(value: object, *, secret: bool = False) -> str:
    """A non-empty command argument without control characters: CR or LF
    would end the USER or PASS command early (RFC 1939 section 3)."""
    text: str = _expect(value, str, "a string", secret=secret)
    if not text:
        raise ValueError("must not be empty")
    if has_control(text):
        raise ValueError("must not contain control characters")
    return text


def _user(value: object, _env: Mapping[str, str]) -> str:
    return _argument(value)


def _port(value: object, _env: Mapping[str, str]) -> int:
    number: int = _expect(value, int, "an integer")
    if not 1 <= number <= 65535:
        raise ValueError(f"must be between 1 and 65535, got {number}")
    return number


def _choice(choices: Sequence[str]) -> Converter:
    def convert(value: object, _env: Mapping[str, str]) -> str:
        text: str = _expect(value, str, "a string")
        if text not in choices:
            listed = ", ".join(quote(c) for c in choices)
            raise ValueError(
                f"must be one of {listed}; got {describe(text)}{suggest(text, choices)}"
            )
        return text

    return convert


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
    if not text.lower().startswith(FINGERPRINT_PREFIX):
        raise ValueError(f"{hint}, got {describe(text)}")
    digits = text[len(FINGERPRINT_PREFIX) :].replace(":", "").lower()
    if not re.fullmatch(r"[0-9a-f]{64}", digits):
        raise ValueError(f"{hint}, got {describe(text)}")
    return digits


def split_command(text: str) -> tuple[str, ...]:
    """*text* split into words as a POSIX shell would, for running without one.

    Raises ValueError when the words cannot be told apart or there are none.
    """
    import shlex  # (lazily: only command settings need it)

    try:
        words = shlex.split(text)
    except ValueError as exc:
        raise ValueError(f"cannot be split into words: {exc}") from None
    if not words:
        raise ValueError("must not be empty")
    return tuple(words)


def _command(value: object, _env: Mapping[str, str]) -> str:
    text: str = _expect(value, str, "a string")
    split_command(text)  # (the Account keeps the words; here only the problems)
    return text


def _password(value: object, _env: Mapping[str, str]) -> str:
    return _argument(value, secret=True)


def _https_url(value: object, _env: Mapping[str, str]) -> str:
    text: str = _expect(value, str, "a string")
    hint = f"expected an https:// URL, got {describe(text)}"
    if any(ch.isspace() for ch in text) or has_control(text):
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
        raise ValueError(f"must not have a #fragment, got {describe(text)}")
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
            raise ValueError(f"{describe(scope)} is not a valid OAuth2 scope (RFC 6749 3.3)")
        scopes.append(scope)
    if not scopes:
        raise ValueError("must name at least one scope")
    return tuple(dict.fromkeys(scopes))


def _deliver(value: object, env: Mapping[str, str]) -> DeliverySpec:
    text: str = _expect(value, str, "a string")
    return parse_deliver(text, env)


def _address(value: object, _env: Mapping[str, str]) -> str:
    """An envelope address (``alice`` or ``alice@example.org``): no spaces,
    brackets or control characters, which would break RCPT TO:<...>."""
    text: str = _expect(value, str, "a string")
    if not text:
        raise ValueError("must not be empty")
    if any(ch.isspace() or ch in '<>"\\' for ch in text) or has_control(text):
        raise ValueError(
            f"must be a plain address (alice or alice@example.org), got {describe(text)}"
        )
    return text


# RFC 3501: flag = "\\" atom (a system flag) / atom (a keyword); no "\\*" or "\\Recent".
_FLAG_RE = re.compile(r"\\?[!#$&'+,\-./0-9:;<=>?@A-Z^_`a-z|}~]+")


def _imap_flags(value: object, _env: Mapping[str, str]) -> tuple[str, ...]:
    what = "an array of strings or a space-separated string"
    raw: list[object] | str = _expect(value, (list, str), what)
    items: list[object] = list(raw.split()) if isinstance(raw, str) else raw
    flags: list[str] = []
    for item in items:
        flag: str = _expect(item, str, what)
        if not _FLAG_RE.fullmatch(flag) or flag.lower() == "\\recent":
            raise ValueError(f"{describe(flag)} is not an IMAP flag (\\Seen, $Label ...)")
        flags.append(flag)
    return tuple(dict.fromkeys(flags))


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
        raise ValueError(f"expected a size like 25MB, 500k or 1GiB, got {describe(text)}")
    number, unit, binary = match.groups()
    base = 1024 if binary else 1000
    from decimal import Decimal  # (lazily: only a size setting needs it)

    size = int(Decimal(number) * base ** _SIZE_POWER[unit.lower()] if unit else Decimal(number))
    if size < 1:
        raise ValueError(f"must be at least 1 byte, got {describe(text)}")
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
        "deliver",
        '"maildir:DIR" | "mbox:FILE" | "mda:COMMAND" | "imap://USER@HOST/MAILBOX"',
        _deliver,
        "where the mail goes", required=True,
    ),
    KeySpec(
        "recipient", "string", _address,
        "lmtp: and smtp: the envelope recipient; default: the local user name",
    ),
    KeySpec(
        "smtp_tls", " | ".join(f'"{m}"' for m in SMTP_TLS_MODES), _choice(SMTP_TLS_MODES),
        "lmtp: (over TCP) and smtp: STARTTLS where offered, required, TLS from the first "
        "byte, or never",
        default="auto",
    ),
    KeySpec(
        "smtp_ca_file", "path", _existing_file,
        "lmtp: and smtp: also trust this CA (or self-signed) certificate, in PEM",
    ),
    KeySpec(
        "smtp_tls_fingerprint", '"sha256:" and 64 hex digits', _fingerprint,
        "lmtp: and smtp: pin the server certificate's SHA-256 fingerprint instead of CA trust",
    ),
    KeySpec("smtp_user", "string", _user, "smtp: log in (AUTH PLAIN or LOGIN) as this user"),
    KeySpec(
        "smtp_password_command", "string", _command,
        "smtp: a command (no shell) whose first line of output is smtp_user's password",
    ),
    KeySpec(
        "smtp_password", "string", _password,
        "smtp: smtp_user's password; only accepted when the file is private (chmod 600)",
        secret=True,
    ),
    KeySpec(
        "imap_tls", '"implicit" | "starttls" | "off"', _choice(TLS_MODES),
        "imap: TLS from the first byte (port 993), STARTTLS required (143), or clear text",
        default="implicit",
    ),
    KeySpec(
        "imap_ca_file", "path", _existing_file,
        "imap: also trust this CA (or self-signed) certificate, in PEM",
    ),
    KeySpec(
        "imap_tls_fingerprint", '"sha256:" and 64 hex digits', _fingerprint,
        "imap: pin the IMAP server certificate's SHA-256 fingerprint instead of CA trust",
    ),
    KeySpec(
        "imap_auth", " | ".join(f'"{a}"' for a in IMAP_AUTH_METHODS), _choice(IMAP_AUTH_METHODS),
        "imap: LOGIN, an AUTHENTICATE mechanism, or auto (the strongest offered)",
        default="auto",
    ),
    KeySpec(
        "imap_password_command", "string", _command,
        "imap: a command (no shell) whose first line of output is the IMAP password",
    ),
    KeySpec(
        "imap_password", "string", _password,
        "imap: the IMAP password; only accepted when the file is private (chmod 600)",
        secret=True,
    ),
    KeySpec(
        "imap_oauth_provider", " | ".join(f'"{p}"' for p in IMAP_OAUTH_PROVIDERS),
        _choice(IMAP_OAUTH_PROVIDERS),
        'imap: sign in to the IMAP side with OAuth2; needs imap_auth = "xoauth2" or "oauthbearer"',
    ),
    KeySpec(
        "imap_oauth_client_id", "string", _word,
        "imap: the OAuth2 client ID (default: oauth_client_id, for the same provider)",
    ),
    KeySpec(
        "imap_oauth_client_secret", "string", _password,
        "imap: the OAuth2 client secret, if any; only in a private file (chmod 600)",
        secret=True,
    ),
    KeySpec(
        "imap_oauth_scopes", "array of strings, or a space-separated string", _scopes,
        "imap: the OAuth2 scopes to ask for (overrides the provider's IMAP scopes)",
    ),
    KeySpec(
        "imap_flags", "array of strings, or a space-separated string", _imap_flags,
        "imap: flags for each appended message (\\Seen, \\Flagged, keywords)",
    ),
    KeySpec(
        "imap_keep_date", "boolean", _bool,
        "imap: the internal date from the message's Date: header, not the time of the APPEND",
        default=False,
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
    KeySpec(
        "mda_timeout", "number > 0", _positive_number,
        "seconds an MDA may take for a message", default=300.0,
    ),
    KeySpec(
        "after_sync", "string", _command,
        "a command (no shell) run after a sync that delivered mail, such as notmuch new",
    ),
]  # fmt: skip

#: Every account key, in man-page order; valid in ``[defaults]`` and ``[accounts.NAME]``.
ACCOUNT_KEYS: Mapping[str, KeySpec] = {spec.name: spec for spec in _KEY_LIST}
