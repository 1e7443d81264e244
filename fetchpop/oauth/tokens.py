"""Tokens: the keyring record, token responses, refresh, and what a sync asks for.

A sign-in yields a refresh token, kept only in the system keyring (through
:mod:`fetchpop.secrets`, behind the small :class:`TokenStore` protocol); each
run trades it for an access token (RFC 6749 section 6) unless the cached one
is good for :data:`REFRESH_MARGIN` more seconds. :class:`AccessTokens` is that
rule as a password source for one account. No token ever appears in a repr,
an exception message or a log line. The network is reached only through the
:class:`~fetchpop.oauth.http.HttpClient` passed in.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from fetchpop.errors import AuthError, ProtocolError, UnavailableError, sanitize
from fetchpop.oauth.errors import _no_hint, _relogin_hint
from fetchpop.oauth.http import HttpClient
from fetchpop.oauth.providers import Provider

#: Refresh an access token this many seconds before it expires.
REFRESH_MARGIN = 60.0


@dataclasses.dataclass(frozen=True)
class Tokens:
    """What a token endpoint granted; ``expires_at`` is wall-clock seconds or None."""

    access_token: str = dataclasses.field(repr=False)
    refresh_token: str | None = dataclasses.field(repr=False)
    expires_at: float | None

    def fresh(self, now: float, margin: float = REFRESH_MARGIN) -> bool:
        """Whether the access token is good for *margin* more seconds.

        A token of unknown lifetime is used for one run only, never cached.
        """
        return self.expires_at is not None and now + margin < self.expires_at

    def to_record(self, provider: Provider) -> str:
        """The keyring record: the tokens, and the client and endpoint they belong to."""
        return json.dumps(
            {
                "version": 1,
                "token_url": provider.token_url,
                "client_id": provider.client_id,
                "refresh_token": self.refresh_token,
                "access_token": self.access_token,
                "expires_at": self.expires_at,
            },
            separators=(",", ":"),
        )


class TokenStore(Protocol):
    """Where the keyring record lives (``fetchpop.secrets.OAuthTokenStore``)."""

    def load(self) -> str | None:
        """The record, or None when none is stored. Raises AuthError if unreadable."""
        ...

    def save(self, record: str) -> None:
        """Store *record*, replacing any other. Raises UnavailableError on failure."""
        ...


def parse_record(text: str, provider: Provider) -> Tokens | None:
    """The tokens in a keyring record, or None when it is unreadable or belongs to
    another client or token endpoint (then a new sign-in is needed)."""
    try:
        data = json.loads(text)
    except (ValueError, RecursionError):
        return None
    if not isinstance(data, dict) or data.get("version") != 1:
        return None
    if data.get("token_url") != provider.token_url or data.get("client_id") != provider.client_id:
        return None
    access, refresh, expires = (
        data.get(k) for k in ("access_token", "refresh_token", "expires_at")
    )
    if not isinstance(access, str) or not isinstance(refresh, str | None):
        return None
    if not isinstance(expires, int | float | None) or isinstance(expires, bool):
        return None
    return Tokens(access, refresh, None if expires is None else float(expires))


# -- token responses (RFC 6749 section 5.1) -------------------------------------


def _token_text(value: object, lowest: int) -> bool:
    # Access tokens are b64token-like (RFC 6750 section 2.1): visible ASCII.
    # Refresh tokens are VSCHAR (RFC 6749 appendix A.17), spaces allowed.
    return isinstance(value, str) and bool(value) and all(lowest <= ord(c) <= 0x7E for c in value)


def _number(value: object) -> float | None:
    # Some servers send expires_in as a string ("3599").
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str) and value.isascii() and value.isdigit():
        return float(value)
    return None


def parse_token_response(
    data: Mapping[str, Any], *, now: float, what: str, refresh_token: str | None = None
) -> Tokens:
    """Check a successful token response and turn it into Tokens.

    *refresh_token* is kept when a refresh response brings no new one
    (RFC 6749 section 6). Raises ProtocolError for a response that breaks
    section 5.1 or is not a Bearer token.
    """
    access = data.get("access_token")
    if not _token_text(access, 0x21):
        raise ProtocolError(f"{what} failed: the token response has no usable access_token")
    token_type = data.get("token_type")
    if not isinstance(token_type, str) or token_type.lower() != "bearer":
        shown = sanitize(str(token_type), 40)
        raise ProtocolError(f"{what} failed: token_type is {shown}, not Bearer (RFC 6750)")
    new_refresh = data.get("refresh_token", refresh_token)
    if new_refresh is not None and not _token_text(new_refresh, 0x20):
        raise ProtocolError(f"{what} failed: the token response has an unusable refresh_token")
    expires_in = _number(data.get("expires_in"))
    expires_at = now + expires_in if expires_in is not None and expires_in > 0 else None
    assert isinstance(access, str)
    return Tokens(access, new_refresh, expires_at)


def _with_refresh(tokens: Tokens, provider: Provider, what: str) -> Tokens:
    # A sign-in (either flow) is worth nothing without a refresh token.
    if tokens.refresh_token is None:
        advice = (
            " (Microsoft: add offline_access to oauth_scopes)"
            if provider.name == "microsoft"
            else ""
        )
        raise AuthError(f"{what} failed: the provider issued no refresh token{advice}")
    return tokens


# -- refresh (RFC 6749 section 6) -------------------------------------------------


def refresh(
    provider: Provider,
    refresh_token: str,
    *,
    http: HttpClient,
    clock: Callable[[], float] = time.time,
    what: str = "OAuth2 refresh",
    hint: Callable[[str], str] = _no_hint,
) -> Tokens:
    """Trade *refresh_token* for a new access token (and perhaps a new refresh token)."""
    form = {"grant_type": "refresh_token", "refresh_token": refresh_token}
    if provider.scopes:
        # The same scopes as granted; Microsoft's v2 endpoint requires them.
        form["scope"] = provider.scope
    form.update(provider.client_form())
    data = http.post_form(provider.token_url, form, what=what, hint=hint)
    return parse_token_response(data, now=clock(), what=what, refresh_token=refresh_token)


class AccessTokens:
    """An account's password source: a current access token on each call.

    The token comes from memory, else from the keyring record when it is good
    for ``margin`` more seconds, else from a refresh, whose result goes back to
    the keyring (a rotated refresh token must not be lost). Never prompts.
    """

    def __init__(
        self,
        provider: Provider,
        store: TokenStore,
        *,
        account_name: str,
        http: HttpClient,
        clock: Callable[[], float] = time.time,
        margin: float = REFRESH_MARGIN,
    ) -> None:
        self.provider = provider
        self.store = store
        self.account_name = account_name
        self.http = http
        self.clock = clock
        self.margin = margin
        self._tokens: Tokens | None = None

    def __repr__(self) -> str:
        return f"AccessTokens({self.provider.name!r}, account={self.account_name!r})"

    def __call__(self) -> str:
        """The access token; raises AuthError (77) when a new sign-in is needed."""
        if self._tokens is None:
            self._tokens = self._load()
        if not self._tokens.fresh(self.clock(), self.margin):
            self._tokens = self._refresh(self._tokens)
        return self._tokens.access_token

    def _relogin(self) -> str:
        return f"run `fetchpop oauth login {self.account_name}`"

    def _load(self) -> Tokens:
        record = self.store.load()
        if record is None:
            raise AuthError(f"no OAuth2 sign-in is stored; {self._relogin()}")
        tokens = parse_record(record, self.provider)
        if tokens is None:
            raise AuthError(
                "the stored OAuth2 sign-in is unreadable or for another client; "
                f"{self._relogin()} again"
            )
        return tokens

    def _refresh(self, old: Tokens) -> Tokens:
        if old.refresh_token is None:
            raise AuthError(f"OAuth2 access token expired and no refresh token; {self._relogin()}")
        new = refresh(
            self.provider,
            old.refresh_token,
            http=self.http,
            clock=self.clock,
            hint=_relogin_hint(self.account_name),
        )
        try:
            self.store.save(new.to_record(self.provider))
        except (AuthError, UnavailableError):
            # The cache is optional, a rotated refresh token is not.
            if new.refresh_token != old.refresh_token:
                raise
        return new
