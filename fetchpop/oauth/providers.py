"""Who an account signs in with: the Google and Microsoft presets, or a custom provider.

A :class:`Provider` is a preset's endpoints and scopes with the account's own
``oauth_*`` keys laid over them (:func:`provider_for`), plus the client
credentials. Plain data: no network, no tokens.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from fetchpop.config import Account
from fetchpop.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class Preset:
    """A known provider's endpoints and the scopes a POP3 login needs."""

    auth_url: str
    token_url: str
    device_url: str
    scopes: tuple[str, ...]
    #: Extra authorization-request parameters.
    auth_params: tuple[tuple[str, str], ...] = ()


PRESETS: Mapping[str, Preset] = {
    "google": Preset(
        auth_url="https://accounts.google.com/o/oauth2/v2/auth",
        token_url="https://oauth2.googleapis.com/token",  # noqa: S106 -- a URL
        device_url="https://oauth2.googleapis.com/device/code",
        scopes=("https://mail.google.com/",),
        # Google issues a refresh token only for offline access, and only on
        # the first consent unless asked again.
        auth_params=(("access_type", "offline"), ("prompt", "consent")),
    ),
    "microsoft": Preset(
        auth_url="https://login.microsoftonline.com/common/oauth2/v2.0/authorize",
        token_url="https://login.microsoftonline.com/common/oauth2/v2.0/token",  # noqa: S106
        device_url="https://login.microsoftonline.com/common/oauth2/v2.0/devicecode",
        scopes=("https://outlook.office.com/POP.AccessAsUser.All", "offline_access"),
    ),
}


@dataclasses.dataclass(frozen=True)
class Provider:
    """The endpoints and client credentials one account signs in with."""

    name: str
    client_id: str
    token_url: str
    auth_url: str | None = None
    device_url: str | None = None
    scopes: tuple[str, ...] = ()
    client_secret: str | None = dataclasses.field(default=None, repr=False)
    auth_params: tuple[tuple[str, str], ...] = ()

    @property
    def scope(self) -> str:
        """The ``scope`` parameter: scope tokens joined by spaces (RFC 6749 section 3.3)."""
        return " ".join(self.scopes)

    def client_form(self) -> dict[str, str]:
        """Client authentication in the request body (RFC 6749 section 2.3.1).

        Google and Microsoft both take ``client_secret`` in the body; public
        clients (no secret) send only ``client_id`` (section 3.2.1).
        """
        form = {"client_id": self.client_id}
        if self.client_secret is not None:
            form["client_secret"] = self.client_secret
        return form


#: The scopes an IMAP APPEND target's own sign-in asks for (imap_oauth_provider).
IMAP_SCOPES: Mapping[str, tuple[str, ...]] = {
    "google": ("https://mail.google.com/",),
    "microsoft": ("https://outlook.office.com/IMAP.AccessAsUser.All", "offline_access"),
}


def imap_provider_for(account: Account) -> Provider:
    """The provider an imap:// target signs in with: ``imap_oauth_provider``'s
    preset and the ``imap_oauth_*`` keys, or else the account's own
    (:func:`provider_for`: one sign-in serves both sides). The client
    credentials default to the account's when the provider is the same."""
    name = account.imap_oauth_provider
    if name is None:
        return provider_for(account)
    same = name == account.oauth_provider
    client_id = account.imap_oauth_client_id or (account.oauth_client_id if same else None)
    if client_id is None:
        raise ConfigError(f'account "{account.name}": imap_oauth_client_id is not set')
    preset = PRESETS[name]
    return Provider(
        name=name,
        client_id=client_id,
        client_secret=account.imap_oauth_client_secret
        or (account.oauth_client_secret if same else None),
        token_url=preset.token_url,
        auth_url=preset.auth_url,
        device_url=preset.device_url,
        scopes=account.imap_oauth_scopes or IMAP_SCOPES[name],
        auth_params=preset.auth_params,
    )


def provider_for(account: Account) -> Provider:
    """The provider of *account*: its preset, with any endpoint or scope keys overriding.

    Raises ConfigError when the account has no ``oauth_provider`` (the loader
    has already checked everything else).
    """
    if account.oauth_provider is None or account.oauth_client_id is None:
        raise ConfigError(
            f'account "{account.name}": oauth_provider and oauth_client_id are not set'
        )
    preset = PRESETS.get(account.oauth_provider)
    token_url = account.oauth_token_url or (preset.token_url if preset else None)
    if token_url is None:
        raise ConfigError(f'account "{account.name}": oauth_token_url is not set')
    return Provider(
        name=account.oauth_provider,
        client_id=account.oauth_client_id,
        client_secret=account.oauth_client_secret,
        token_url=token_url,
        auth_url=account.oauth_auth_url or (preset.auth_url if preset else None),
        device_url=account.oauth_device_url or (preset.device_url if preset else None),
        scopes=account.oauth_scopes or (preset.scopes if preset else ()),
        auth_params=preset.auth_params if preset else (),
    )
