"""The configuration as loaded: frozen dataclasses whose values are final.

An :class:`Account` holds every key resolved (defaults applied, paths
expanded, ``password_command`` split into words); nothing downstream
re-validates it. :class:`Config` is the whole file.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from fetchpop.config.keys import (
    ACCOUNT_KEYS,
    FINGERPRINT_PREFIX,
    AuthMethod,
    OAuthProvider,
    Tls,
    quote,
    split_command,
)
from fetchpop.deliver import DeliverySpec, format_deliver
from fetchpop.errors import ConfigError

#: The POP3 ports: RFC 8314 section 7.2 (implicit TLS), RFC 1939 section 3.
POP3S_PORT = 995
POP3_PORT = 110


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
    #: The command as written (``fetchpop accounts`` shows it so).
    password_command: str | None = None
    #: The same split into words once, when the Account is made: what runs.
    password_argv: tuple[str, ...] | None = field(default=None, init=False, repr=False)
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
    mda_timeout: float = 300.0

    def __post_init__(self) -> None:
        if self.password_command is not None:
            object.__setattr__(self, "password_argv", split_command(self.password_command))

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
                value = FINGERPRINT_PREFIX + str(value)
            elif isinstance(value, Path):
                value = str(value)
            out[key] = value
        return out


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
            raise ConfigError([f"unknown account {quote(n)} (known: {known})" for n in unknown])
        return [self.accounts[n] for n in dict.fromkeys(names)]
