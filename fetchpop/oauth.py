"""OAuth2 for XOAUTH2/OAUTHBEARER logins: sign-in, refresh, and the token cache.

Strategy: fetchpop is an OAuth2 *public native client* (RFC 8252). Sign-in is
either the authorization-code grant with PKCE (RFC 7636, S256) and a redirect
to a listener on the loopback interface (RFC 8252 sections 7.3 and 8.3), or
the device authorization grant (RFC 8628) for machines without a browser.
Either yields a refresh token, kept only in the system keyring (through
:mod:`fetchpop.secrets`, behind the small :class:`TokenStore` protocol); each
run trades it for an access token (RFC 6749 section 6) unless the cached one
is good for :data:`REFRESH_MARGIN` more seconds.

This is the only module that speaks HTTP: urllib from the standard library,
TLS verified (``ssl.create_default_context``, which honours ``SSL_CERT_FILE``),
TLS 1.2 or later, a timeout on every request, no redirects followed from a
token endpoint, responses capped at :data:`MAX_RESPONSE` bytes. Every OAuth
error response (RFC 6749 section 5.2, RFC 8628 section 3.5) becomes an
:class:`OAuthError` with the server's words sanitised; HTTP failures and
malformed JSON get their own typed errors. No token ever appears in a repr,
an exception message or a log line. Nothing here prints or imports click:
the caller shows URLs and codes through the callables it passes in.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
import http.client
import http.server
import json
import secrets
import socket
import ssl
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

from fetchpop import __version__
from fetchpop.config import Account
from fetchpop.errors import (
    AuthError,
    ConfigError,
    ConnectError,
    ConnectionLostError,
    ExitCode,
    NoHostError,
    ProtocolError,
    ServerTimeoutError,
    TempFailError,
    TLSError,
    UnavailableError,
    sanitize,
)

#: Refresh an access token this many seconds before it expires.
REFRESH_MARGIN = 60.0
#: Largest HTTP response body read from an OAuth2 endpoint.
MAX_RESPONSE = 1024 * 1024
#: RFC 8628 section 3.2: the polling interval when the server names none.
DEFAULT_INTERVAL = 5
#: RFC 8628 section 3.5: ``slow_down`` adds this many seconds to the interval.
SLOW_DOWN_STEP = 5
#: How long ``login_code`` waits for the browser to come back.
LOGIN_TIMEOUT = 300.0
DEVICE_CODE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"


# -- providers -------------------------------------------------------------------


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


# -- tokens ------------------------------------------------------------------------


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


# -- errors ------------------------------------------------------------------------

# RFC 6749 sections 4.1.2.1 and 5.2, RFC 8628 section 3.5: each code in words,
# for when the server sends no error_description.
_EXPLAIN: Mapping[str, str] = {
    "invalid_request": "the request was malformed or incomplete",
    "invalid_client": "the client was not recognised",
    "invalid_grant": "the authorization has expired or was revoked",
    "unauthorized_client": "this client may not use this kind of sign-in",
    "unsupported_grant_type": "the server does not offer this kind of sign-in",
    "unsupported_response_type": "the server does not offer this kind of sign-in",
    "invalid_scope": "the requested scope is invalid or not allowed",
    "access_denied": "the sign-in was declined",
    "server_error": "the server failed",
    "temporarily_unavailable": "the server is busy",
    "authorization_pending": "the sign-in is not finished yet",
    "slow_down": "polling too fast",
    "expired_token": "the code expired before the sign-in was finished",
}
_TRANSIENT = frozenset({"server_error", "temporarily_unavailable"})


class OAuthError(AuthError):
    """An OAuth2 error response; ``error`` is its code (``invalid_grant`` ...).

    Exit 77 (NOPERM), except ``server_error`` and ``temporarily_unavailable``: 75.
    """

    def __init__(self, message: str, error: str, description: str | None = None) -> None:
        super().__init__(message)
        self.error = error
        self.description = description
        if error in _TRANSIENT:
            self.exit_code = ExitCode.TEMPFAIL


def _oauth_error(what: str, data: Mapping[str, Any], hint: Callable[[str], str]) -> OAuthError:
    # RFC 6749 section 5.2 limits both fields to printable ASCII; a server
    # that sends more gets it shown with control characters replaced.
    code = sanitize(str(data.get("error")), limit=60)
    raw_description = data.get("error_description")
    description = sanitize(raw_description, 200) if isinstance(raw_description, str) else None
    detail = description or _EXPLAIN.get(code)
    text = f"{what} failed ({code}: {detail})" if detail else f"{what} failed ({code})"
    return OAuthError(text + hint(code), code, description)


def _no_hint(_code: str) -> str:
    return ""


def _relogin_hint(account_name: str) -> Callable[[str], str]:
    def hint(code: str) -> str:
        if code == "invalid_client":
            return "; check oauth_client_id and oauth_client_secret"
        if code in _TRANSIENT:
            return "; try again later"
        return f"; run `fetchpop oauth login {account_name}` again"

    return hint


# -- HTTP --------------------------------------------------------------------------


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    # A token endpoint that redirects is misconfigured; following would send
    # the grant somewhere else (or, after a 303, drop it). Let it fail.
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


class HttpClient:
    """POSTs forms to OAuth2 endpoints and returns their JSON objects.

    *ca_file* trusts that CA only (for tests); by default the system store,
    and ``SSL_CERT_FILE`` / ``SSL_CERT_DIR`` when set. *timeout* bounds each
    connect and read.
    """

    def __init__(self, *, ca_file: Path | str | None = None, timeout: float = 30.0) -> None:
        context = ssl.create_default_context(cafile=None if ca_file is None else str(ca_file))
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        self.timeout = timeout
        self._opener = urllib.request.build_opener(
            urllib.request.HTTPSHandler(context=context), _NoRedirect()
        )

    def post_form(
        self,
        url: str,
        form: Mapping[str, str],
        *,
        what: str,
        hint: Callable[[str], str] = _no_hint,
    ) -> dict[str, Any]:
        """POST *form* (``application/x-www-form-urlencoded``) and return the JSON object.

        *what* names the step in messages ("OAuth2 refresh"); *hint* adds
        advice to an OAuth error by its code. Raises OAuthError for an OAuth
        error response, TempFailError for HTTP 5xx and 429, ProtocolError for
        malformed JSON, and the transport errors (NoHostError, ConnectError,
        ServerTimeoutError, TLSError) for the network.
        """
        host = _host_of(url)
        if not url.lower().startswith("https://"):
            raise UnavailableError(f"{what} failed: {sanitize(url, 100)} is not an https URL")
        request = urllib.request.Request(  # noqa: S310 -- https only, checked above
            url,
            data=urllib.parse.urlencode(form).encode("ascii"),
            headers={
                "Content-Type": "application/x-www-form-urlencoded",
                "Accept": "application/json",
                "User-Agent": f"fetchpop/{__version__}",
            },
            method="POST",
        )
        status, reason, body = self._send(request, what, host)
        data = _json_object(body)
        if data is not None and isinstance(data.get("error"), str):
            raise _oauth_error(what, data, hint)
        if 200 <= status < 300:
            if data is None:
                raise ProtocolError(f"{what} failed: {host} sent malformed JSON (HTTP {status})")
            return data
        said = f"{what} failed: {host} answered HTTP {status} {sanitize(reason, 60)}".rstrip()
        if status >= 500 or status == 429:
            raise TempFailError(said + "; try again later")
        if status in (401, 403):
            raise AuthError(said)
        raise UnavailableError(said)

    def _send(
        self, request: urllib.request.Request, what: str, host: str
    ) -> tuple[int, str, bytes]:
        try:
            with self._opener.open(request, timeout=self.timeout) as response:
                return response.status, response.reason, _read_bounded(response, what, host)
        except urllib.error.HTTPError as exc:
            with exc:
                return exc.code, str(exc.reason), _read_bounded(exc, what, host)
        except urllib.error.URLError as exc:
            raise _network_error(exc.reason, what, host) from None
        except (OSError, http.client.HTTPException) as exc:
            raise _network_error(exc, what, host) from None


def _host_of(url: str) -> str:
    try:
        host = urllib.parse.urlsplit(url).netloc
    except ValueError:
        host = ""
    return sanitize(host or url, 100)


def _read_bounded(response: Any, what: str, host: str) -> bytes:
    body: bytes = response.read(MAX_RESPONSE + 1)
    if len(body) > MAX_RESPONSE:
        raise ProtocolError(f"{what} failed: {host} sent more than {MAX_RESPONSE} bytes")
    return body


def _network_error(reason: object, what: str, host: str) -> Exception:
    if isinstance(reason, ssl.SSLCertVerificationError):
        detail = reason.verify_message or str(reason)
        return TLSError(f"{what} failed: TLS certificate of {host} not verified: {detail}")
    if isinstance(reason, ssl.SSLError):
        return TLSError(f"{what} failed: TLS with {host} failed: {reason.reason or reason}")
    if isinstance(reason, socket.gaierror):
        return NoHostError(f"{what} failed: cannot resolve {host}")
    if isinstance(reason, TimeoutError):
        return ServerTimeoutError(f"{what} failed: {host} timed out")
    if isinstance(reason, http.client.HTTPException | ConnectionResetError):
        return ConnectionLostError(f"{what} failed: {host} closed the connection")
    if isinstance(reason, OSError):
        return ConnectError(f"{what} failed: cannot connect to {host}: {reason.strerror or reason}")
    return ConnectError(f"{what} failed: cannot connect to {host}: {sanitize(str(reason))}")


def _json_object(body: bytes) -> dict[str, Any] | None:
    try:
        data = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None
    return data if isinstance(data, dict) else None


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


# -- authorization code with PKCE (RFC 7636) and a loopback redirect (RFC 8252) ---


def make_verifier() -> str:
    """A PKCE code_verifier: 64 characters from the unreserved set (RFC 7636 section 4.1)."""
    return secrets.token_urlsafe(48)


def code_challenge(verifier: str) -> str:
    """``BASE64URL(SHA256(ASCII(code_verifier)))`` without padding (RFC 7636 section 4.2)."""
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def authorization_url(provider: Provider, *, redirect_uri: str, state: str, challenge: str) -> str:
    """The URL the user opens (RFC 6749 section 4.1.1 plus RFC 7636 section 4.3).

    A query already in the endpoint URL is kept (RFC 6749 section 3.1).
    """
    if provider.auth_url is None:
        raise ConfigError("the provider has no authorization endpoint; set oauth_auth_url")
    params = [
        ("response_type", "code"),
        ("client_id", provider.client_id),
        ("redirect_uri", redirect_uri),
        ("state", state),
        ("code_challenge", challenge),
        ("code_challenge_method", "S256"),
    ]
    if provider.scopes:
        params.insert(3, ("scope", provider.scope))
    params.extend(provider.auth_params)
    parts = urllib.parse.urlsplit(provider.auth_url)
    query = urllib.parse.parse_qsl(parts.query, keep_blank_values=True) + params
    encoded = urllib.parse.urlencode(query, quote_via=urllib.parse.quote)
    return urllib.parse.urlunsplit(parts._replace(query=encoded))


_PAGE = (
    "<!DOCTYPE html><html><head><meta charset='utf-8'><title>fetchpop</title></head>"
    "<body><p>{}</p></body></html>"
)


class _Redirect(http.server.BaseHTTPRequestHandler):
    """Answers the browser's redirect to ``http://127.0.0.1:PORT/``."""

    server: _Receiver
    timeout = 10  # an idle connection (a browser's preconnect) must not block us
    protocol_version = "HTTP/1.0"

    def do_GET(self) -> None:
        status, text = self.server.receive(self.path)
        page = _PAGE.format(text).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(page)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(page)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # The request line holds the authorization code: never log it.


class _Receiver(http.server.HTTPServer):
    """A one-shot listener on the loopback interface (RFC 8252 section 8.3)."""

    def __init__(self, port: int, state: str) -> None:
        super().__init__(("127.0.0.1", port), _Redirect)
        self.state = state
        #: ("code", code) or ("error", {"error": ..., "error_description": ...})
        self.result: tuple[str, Any] | None = None

    @property
    def redirect_uri(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/"

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # A browser hanging up early is no reason to print a traceback.

    def receive(self, path: str) -> tuple[int, str]:
        parts = urllib.parse.urlsplit(path)
        if parts.path != "/":
            return 404, "Not found."
        pairs = urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
        params = dict(pairs)
        if len(params) != len(pairs):  # RFC 6749 section 3.1: no repeated parameters
            return 400, "Repeated parameters; sign-in not accepted."
        # RFC 6749 section 10.12: a redirect without our state is forged or stale.
        if not hmac.compare_digest(params.get("state", "").encode(), self.state.encode()):
            return 400, "This sign-in was not started by this fetchpop; ignored."
        if self.result is not None:
            return 400, "Sign-in already received."
        if "error" in params:
            self.result = ("error", params)
            return 200, "Sign-in failed; see fetchpop for details. You can close this window."
        code = params.get("code")
        if not code:
            return 400, "No authorization code received."
        self.result = ("code", code)
        return 200, "Signed in to fetchpop. You can close this window."


def login_code(
    provider: Provider,
    *,
    http: HttpClient,
    show_url: Callable[[str], None],
    open_browser: Callable[[str], object] | None = None,
    port: int = 0,
    timeout: float = LOGIN_TIMEOUT,
    clock: Callable[[], float] = time.time,
) -> Tokens:
    """Sign in with the authorization-code grant, PKCE and a loopback redirect.

    *show_url* is called with the authorization URL (always); *open_browser*,
    when given, too, in a background thread, since ``webbrowser.open`` may wait
    for the browser to exit while only this thread can answer its redirect.
    Waits up to *timeout* seconds. Raises OAuthError for a refusal, AuthError
    for a timeout, and HttpClient's errors for the token request.
    """
    what = "OAuth2 sign-in"
    state = secrets.token_urlsafe(24)
    verifier = make_verifier()
    try:
        receiver = _Receiver(port, state)
    except OSError as exc:
        raise UnavailableError(
            f"cannot listen on 127.0.0.1 port {port}: {exc.strerror or exc}"
        ) from None
    with receiver:
        redirect_uri = receiver.redirect_uri
        url = authorization_url(
            provider, redirect_uri=redirect_uri, state=state, challenge=code_challenge(verifier)
        )
        show_url(url)
        if open_browser is not None:
            threading.Thread(target=open_browser, args=(url,), daemon=True).start()
        deadline = time.monotonic() + timeout
        while receiver.result is None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AuthError(f"{what} failed: no answer from the browser within {timeout:g} s")
            receiver.timeout = min(remaining, 1.0)
            receiver.handle_request()
    kind, value = receiver.result
    if kind == "error":
        raise _oauth_error(what, value, _no_hint)
    form = {
        "grant_type": "authorization_code",
        "code": value,
        "redirect_uri": redirect_uri,
        "code_verifier": verifier,
    }
    form.update(provider.client_form())
    data = http.post_form(provider.token_url, form, what=what)
    return _with_refresh(parse_token_response(data, now=clock(), what=what), provider, what)


def _with_refresh(tokens: Tokens, provider: Provider, what: str) -> Tokens:
    if tokens.refresh_token is None:
        advice = (
            " (Microsoft: add offline_access to oauth_scopes)"
            if provider.name == "microsoft"
            else ""
        )
        raise AuthError(f"{what} failed: the provider issued no refresh token{advice}")
    return tokens


# -- device authorization grant (RFC 8628) ----------------------------------------


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


def browser_available(environ: Mapping[str, str], platform: str) -> bool:
    """Whether ``webbrowser.open`` can show a graphical browser (or $BROWSER is set).

    On X11/Wayland systems without a display it would start a console browser
    in this very terminal, where the sign-in pages do not work.
    """
    if environ.get("BROWSER"):
        return True
    if platform.startswith(("win", "darwin")):
        return True
    return bool(environ.get("DISPLAY") or environ.get("WAYLAND_DISPLAY"))
