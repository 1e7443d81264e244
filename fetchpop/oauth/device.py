"""Device sign-in: the device authorization grant (RFC 8628), for machines without a browser.

The user is shown a code to enter on another device; meanwhile the token
endpoint is polled. Every request goes through the HttpClient passed in; no
socket of its own. Nothing here prints: the caller shows the code through
*show*.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable

from fetchpop.errors import ConfigError, ProtocolError, sanitize
from fetchpop.oauth.errors import _EXPLAIN, OAuthError
from fetchpop.oauth.http import HttpClient
from fetchpop.oauth.providers import Provider
from fetchpop.oauth.tokens import Tokens, _number, _with_refresh, parse_token_response

#: RFC 8628 section 3.2: the polling interval when the server names none.
DEFAULT_INTERVAL = 5
#: RFC 8628 section 3.5: ``slow_down`` adds this many seconds to the interval.
SLOW_DOWN_STEP = 5
DEVICE_CODE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"


@dataclasses.dataclass(frozen=True)
class DeviceCode:
    """What the user is shown (RFC 8628 section 3.3); text already sanitised."""

    user_code: str
    verification_uri: str
    verification_uri_complete: str | None
    expires_in: float
    interval: float
    device_code: str = dataclasses.field(repr=False)


def start_device(provider: Provider, *, http: HttpClient) -> DeviceCode:
    """The device authorization request (RFC 8628 section 3.1)."""
    what = "OAuth2 device authorization"
    if provider.device_url is None:
        raise ConfigError(
            "the provider has no device authorization endpoint; set oauth_device_url "
            "or sign in without --device"
        )
    form = dict(provider.client_form())
    if provider.scopes:
        form["scope"] = provider.scope
    data = http.post_form(provider.device_url, form, what=what)
    device_code, user_code = data.get("device_code"), data.get("user_code")
    # Google's endpoint says verification_url, as drafts of RFC 8628 did.
    uri = data.get("verification_uri", data.get("verification_url"))
    complete = data.get("verification_uri_complete")
    expires_in, interval = _number(data.get("expires_in")), _number(data.get("interval"))
    if not (isinstance(device_code, str) and device_code and isinstance(user_code, str)):
        raise ProtocolError(f"{what} failed: the response has no device_code or user_code")
    if not isinstance(uri, str) or not uri:
        raise ProtocolError(f"{what} failed: the response has no verification_uri")
    if expires_in is None or expires_in <= 0:
        raise ProtocolError(f"{what} failed: the response has no valid expires_in")
    return DeviceCode(
        user_code=sanitize(user_code, 40),
        verification_uri=sanitize(uri, 200),
        verification_uri_complete=sanitize(complete, 300) if isinstance(complete, str) else None,
        expires_in=expires_in,
        interval=max(interval, 1.0) if interval is not None else float(DEFAULT_INTERVAL),
        device_code=device_code,
    )


def login_device(
    provider: Provider,
    *,
    http: HttpClient,
    show: Callable[[DeviceCode], None],
    sleep: Callable[[float], None] = time.sleep,
    monotonic: Callable[[], float] = time.monotonic,
    clock: Callable[[], float] = time.time,
) -> Tokens:
    """Sign in with the device authorization grant (RFC 8628).

    *show* gets the code to display; then the token endpoint is polled every
    ``interval`` seconds, five more after each ``slow_down`` (section 3.5),
    until the user has finished, declined (``access_denied``) or the code has
    expired (``expired_token``, or ``expires_in`` passed).
    """
    what = "OAuth2 sign-in"
    device = start_device(provider, http=http)
    show(device)
    form = {"grant_type": DEVICE_CODE_GRANT, "device_code": device.device_code}
    form.update(provider.client_form())
    interval = device.interval
    deadline = monotonic() + device.expires_in
    while True:
        sleep(interval)
        if monotonic() >= deadline:
            raise OAuthError(
                f"{what} failed (expired_token: {_EXPLAIN['expired_token']})", "expired_token"
            )
        try:
            data = http.post_form(provider.token_url, form, what=what)
        except OAuthError as exc:
            if exc.error == "authorization_pending":
                continue
            if exc.error == "slow_down":
                interval += SLOW_DOWN_STEP
                continue
            raise
        tokens = parse_token_response(data, now=clock(), what=what)
        return _with_refresh(tokens, provider, what)
