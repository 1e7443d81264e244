"""The configuration as loaded: frozen dataclasses whose values are final.

An :class:`Account` holds every key resolved (defaults applied, paths
expanded, ``password_command`` split into words); nothing downstream
re-validates it. :class:`Config` is the whole file.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from fetchpop.config.keys import (
    ACCOUNT_KEYS,
    FINGERPRINT_PREFIX,
    AuthMethod,
    ImapAuth,
    OAuthProvider,
    Tls,
    quote,
    split_command,
)
from fetchpop.deliver import DeliverySpec, ImapSettings, ServerOptions, SmtpTls, format_deliver
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
    #: Run after a sync that delivered mail (``notmuch new``); split once, as
    #: password_command is.
    after_sync: str | None = None
    after_sync_argv: tuple[str, ...] | None = field(default=None, init=False, repr=False)
    #: lmtp: and smtp: targets (see fetchpop.deliver.smtp): the envelope
    #: recipient (None: the local user name), TLS and the login.
    recipient: str | None = None
    smtp_tls: SmtpTls = "auto"
    smtp_ca_file: Path | None = None
    smtp_tls_fingerprint: str | None = None
    smtp_user: str | None = None
    smtp_password_command: str | None = None
    smtp_password_argv: tuple[str, ...] | None = field(default=None, init=False, repr=False)
    smtp_password: str | None = field(default=None, repr=False)
    #: imap:// targets (see fetchpop.deliver.imap): TLS, the login, and how to append.
    imap_tls: Tls = "implicit"
    imap_ca_file: Path | None = None
    imap_tls_fingerprint: str | None = None
    imap_auth: ImapAuth = "auto"
    imap_password_command: str | None = None
    imap_password_argv: tuple[str, ...] | None = field(default=None, init=False, repr=False)
    imap_password: str | None = field(default=None, repr=False)
    imap_oauth_provider: OAuthProvider | None = None
    imap_oauth_client_id: str | None = None
    imap_oauth_client_secret: str | None = field(default=None, repr=False)
    imap_oauth_scopes: tuple[str, ...] | None = None
    imap_flags: tuple[str, ...] | None = None
    imap_keep_date: bool = False

    def __post_init__(self) -> None:
        if self.deliver.kind == "imap":
            self._attach_imap()
        if self.password_command is not None:
            object.__setattr__(self, "password_argv", split_command(self.password_command))
        if self.after_sync is not None:
            object.__setattr__(self, "after_sync_argv", split_command(self.after_sync))
        if self.smtp_password_command is not None:
            argv = split_command(self.smtp_password_command)
            object.__setattr__(self, "smtp_password_argv", argv)
        if self.deliver.kind in ("lmtp", "smtp"):
            # What the target needs besides its address travels with it.
            options = ServerOptions(
                recipient=self.recipient,
                tls=self.smtp_tls,
                ca_file=self.smtp_ca_file,
                tls_fingerprint=self.smtp_tls_fingerprint,
                user=self.smtp_user,
                timeout=self.timeout,
                reply_timeout=self.mda_timeout,
            )
            object.__setattr__(self, "deliver", replace(self.deliver, server=options))

    def _attach_imap(self) -> None:
        """What an imap:// target needs besides its address travels with it."""
        argv = None
        if self.imap_password_command is not None:
            argv = split_command(self.imap_password_command)
            object.__setattr__(self, "imap_password_argv", argv)
        oauth = self.imap_auth in ("xoauth2", "oauthbearer")
        if oauth and self.imap_oauth_provider is None and self.oauth_provider is None:
            raise ConfigError(
                f"account {quote(self.name)}: imap_auth = {quote(self.imap_auth)} needs "
                "imap_oauth_provider (or the account's own oauth_provider, shared)"
            )
        if self.imap_oauth_provider is not None and not oauth:
            raise ConfigError(
                f'account {quote(self.name)}: imap_oauth_provider needs imap_auth = "xoauth2" '
                'or "oauthbearer"'
            )
        settings = ImapSettings(
            tls=self.imap_tls,
            ca_file=self.imap_ca_file,
            fingerprint=self.imap_tls_fingerprint,
            auth=self.imap_auth,
            password=self.imap_password,
            password_argv=argv,
            flags=self.imap_flags or (),
            keep_date=self.imap_keep_date,
            timeout=self.timeout,
        )
        object.__setattr__(self, "deliver", replace(self.deliver, imap=settings))

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
            elif key == "imap_tls_fingerprint" and value is not None:
                value = FINGERPRINT_PREFIX + str(value)
            elif key == "deliver":
                value = format_deliver(self.deliver)
            elif key in ("tls_fingerprint", "smtp_tls_fingerprint") and value is not None:
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
