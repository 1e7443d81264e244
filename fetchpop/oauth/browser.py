"""Browser sign-in: the authorization-code grant with PKCE and a loopback redirect.

RFC 6749 section 4.1 with PKCE (RFC 7636, S256) and a redirect to a one-shot
listener on 127.0.0.1 (RFC 8252 sections 7.3 and 8.3). That listener, an
``http.server.HTTPServer``, is the one socket of the package outside
:mod:`fetchpop.oauth.http`: it only accepts the browser's redirect on the
loopback interface and answers it with a short page; urllib.parse here only
builds and reads URLs. The token request goes through the HttpClient passed
in. Nothing here prints: the caller shows the URL through *show_url*.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import http.server
import secrets
import threading
import time
import urllib.parse
from collections.abc import Callable, Mapping
from typing import Any

from fetchpop.errors import AuthError, ConfigError, UnavailableError
from fetchpop.oauth.errors import _no_hint, _oauth_error
from fetchpop.oauth.http import HttpClient
from fetchpop.oauth.providers import Provider
from fetchpop.oauth.tokens import Tokens, _with_refresh, parse_token_response

#: How long ``login_code`` waits for the browser to come back.
LOGIN_TIMEOUT = 300.0


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


# -- the loopback receiver (RFC 8252 section 8.3) ---------------------------------

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

    def wait(self, timeout: float, what: str) -> tuple[str, Any]:
        """Serve requests until a redirect brings a result; AuthError after *timeout* s."""
        deadline = time.monotonic() + timeout
        while self.result is None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AuthError(f"{what} failed: no answer from the browser within {timeout:g} s")
            self.timeout = min(remaining, 1.0)
            self.handle_request()
        return self.result


def _listen(port: int, state: str) -> _Receiver:
    try:
        return _Receiver(port, state)
    except OSError as exc:
        raise UnavailableError(
            f"cannot listen on 127.0.0.1 port {port}: {exc.strerror or exc}"
        ) from None


# -- the sign-in ------------------------------------------------------------------


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
    with _listen(port, state) as receiver:
        redirect_uri = receiver.redirect_uri
        url = authorization_url(
            provider, redirect_uri=redirect_uri, state=state, challenge=code_challenge(verifier)
        )
        show_url(url)
        if open_browser is not None:
            threading.Thread(target=open_browser, args=(url,), daemon=True).start()
        kind, value = receiver.wait(timeout, what)
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
