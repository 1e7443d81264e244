"""OAuth2 for XOAUTH2/OAUTHBEARER logins: sign-in, refresh, and the token cache.

Strategy: fetchpop is an OAuth2 *public native client* (RFC 8252). Sign-in is
either the authorization-code grant with PKCE (RFC 7636, S256) and a redirect
to a listener on the loopback interface (RFC 8252 sections 7.3 and 8.3), or
the device authorization grant (RFC 8628) for machines without a browser.
Either yields a refresh token, kept only in the system keyring; each run
trades it for an access token unless the cached one is still good. No token
ever appears in a repr, an exception message or a log line. Nothing here
prints or imports click: the caller shows URLs and codes through the
callables it passes in.

The package, in the order its modules import each other:

- :mod:`~fetchpop.oauth.errors`: :class:`OAuthError` and the wording of
  OAuth2 error responses.
- :mod:`~fetchpop.oauth.providers`: the Google and Microsoft presets,
  :class:`Provider` and :func:`provider_for`.
- :mod:`~fetchpop.oauth.http`: :class:`HttpClient`, the only module here that
  connects anywhere (urllib over verified TLS; the second module of fetchpop
  allowed sockets and ssl, after :mod:`fetchpop.pop3.transport`).
- :mod:`~fetchpop.oauth.tokens`: :class:`Tokens`, the keyring record,
  token responses, :func:`refresh` and :class:`AccessTokens`, which is what a
  sync asks for an access token.
- :mod:`~fetchpop.oauth.browser`: PKCE, the authorization URL, the loopback
  receiver (an ``http.server`` on 127.0.0.1, the package's only listening
  socket) and :func:`login_code`.
- :mod:`~fetchpop.oauth.device`: :func:`start_device` and :func:`login_device`.

fetchpop imports this package only when an account uses OAuth2; the names
below are those code outside it uses, so ``from fetchpop.oauth import X``
needs no knowledge of the layout.
"""

from fetchpop.oauth.browser import (
    LOGIN_TIMEOUT,
    authorization_url,
    browser_available,
    code_challenge,
    login_code,
    make_verifier,
)
from fetchpop.oauth.device import (
    DEFAULT_INTERVAL,
    DEVICE_CODE_GRANT,
    SLOW_DOWN_STEP,
    DeviceCode,
    login_device,
    start_device,
)
from fetchpop.oauth.errors import OAuthError
from fetchpop.oauth.errors import _oauth_error as _oauth_error
from fetchpop.oauth.http import MAX_RESPONSE, HttpClient
from fetchpop.oauth.providers import PRESETS, Preset, Provider, imap_provider_for, provider_for
from fetchpop.oauth.tokens import (
    REFRESH_MARGIN,
    AccessTokens,
    Tokens,
    TokenStore,
    parse_record,
    parse_token_response,
    refresh,
)

__all__ = [
    "DEFAULT_INTERVAL",
    "DEVICE_CODE_GRANT",
    "LOGIN_TIMEOUT",
    "MAX_RESPONSE",
    "PRESETS",
    "REFRESH_MARGIN",
    "SLOW_DOWN_STEP",
    "AccessTokens",
    "DeviceCode",
    "HttpClient",
    "OAuthError",
    "Preset",
    "Provider",
    "TokenStore",
    "Tokens",
    "authorization_url",
    "browser_available",
    "code_challenge",
    "imap_provider_for",
    "login_code",
    "login_device",
    "make_verifier",
    "parse_record",
    "parse_token_response",
    "provider_for",
    "refresh",
    "start_device",
]
