"""A local OAuth2 authorization and token server for fetchpop's tests.

Strategy: a real HTTPS server (trustme certificate) on 127.0.0.1:0 in a
thread, following the RFCs to the letter so that a client passing against it
passes for the right reasons:

- RFC 6749: the authorization endpoint (section 4.1.1; errors by redirect,
  section 4.1.2.1, except for a bad client or redirect URI, which are never
  redirected to, section 3.1.2.4), the token endpoint (sections 3.2, 4.1.3,
  6), client authentication by HTTP Basic or body but never both (section
  2.3), single-use codes bound to client and redirect URI (section 4.1.3;
  a reused code revokes what it issued, section 4.1.2), success and error
  responses with their status codes and ``Cache-Control: no-store``
  (sections 5.1 and 5.2), no repeated parameters (section 3.1, 3.2).
- RFC 7636: ``code_challenge`` required, only S256 accepted, the verifier's
  syntax (section 4.1) and its hash (section 4.6) checked.
- RFC 8252 section 7.3: loopback redirect URIs match with any port.
- RFC 8628: device authorization (section 3.2) and polling (section 3.5):
  ``authorization_pending``, ``slow_down`` (the interval grows by 5 s for
  this and every later request), ``access_denied``, ``expired_token``.

Knobs for faults: ``fault = "http500" | "malformed" | "html400"`` for the
token endpoint, ``deny`` (the user declines), ``approve_after`` (device polls
before the user has finished), ``force_slow_down`` (polls answered slow_down
regardless), ``rotate_refresh`` (each refresh issues a new refresh token and
revokes the old). Every request is recorded in ``requests``.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import re
import secrets
import socket
import ssl
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

import trustme

AUTH_PATH = "/authorize"
TOKEN_PATH = "/token"
DEVICE_PATH = "/device"
VERIFY_PATH = "/activate"
DEVICE_CODE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
CODE_LIFETIME = 600.0
_VERIFIER_RE = re.compile(r"[A-Za-z0-9\-._~]{43,128}")  # RFC 7636 section 4.1
_CHALLENGE_RE = re.compile(r"[A-Za-z0-9\-_]{43}")  # BASE64URL of 32 bytes, no padding


@dataclasses.dataclass(frozen=True)
class Client:
    """A registered client; ``secret`` None makes it public (RFC 6749 section 2.1)."""

    client_id: str
    secret: str | None = None
    #: Registered redirect URI; loopback, so any port matches (RFC 8252 section 7.3).
    redirect_uri: str = "http://127.0.0.1/"


@dataclasses.dataclass
class _Code:
    client_id: str
    redirect_uri: str
    challenge: str
    scope: tuple[str, ...]
    expires: float
    used: bool = False
    issued: list[str] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class _Device:
    client_id: str
    user_code: str
    scope: tuple[str, ...]
    expires: float
    interval: float
    status: str = "pending"  # pending | approved | denied | used
    last_poll: float | None = None
    polls: int = 0


@dataclasses.dataclass
class _Refresh:
    client_id: str
    scope: tuple[str, ...]
    revoked: bool = False


@dataclasses.dataclass
class Request:
    """One request as the server saw it."""

    method: str
    path: str
    params: dict[str, str]
    answer: str  # "ok", an OAuth error code, "redirect", or a fault name


class _OAuthError(Exception):
    def __init__(self, error: str, description: str, status: int = 400) -> None:
        super().__init__(error)
        self.error, self.description, self.status = error, description, status


class FakeOAuth:
    """The server. Use as a context manager; URLs in ``auth_url``, ``token_url``,
    ``device_url``; tokens issued in ``access_tokens`` / ``refresh_tokens``."""

    def __init__(
        self,
        ca: trustme.CA,
        *,
        clients: Iterable[Client] = (Client("fetchpop-test", "s3cret-client"),),
        scopes: Iterable[str] = ("mail", "offline_access"),
        access_lifetime: int | None = 3600,
        rotate_refresh: bool = False,
        deny: bool = False,
        approve_after: int = 0,
        force_slow_down: int = 0,
        device_interval: int = 5,
        device_lifetime: int = 600,
        clock: Callable[[], float] = time.monotonic,
        on_access_token: Callable[[str], None] | None = None,
    ) -> None:
        self.clients = {c.client_id: c for c in clients}
        self.scopes = frozenset(scopes)
        self.access_lifetime = access_lifetime
        self.rotate_refresh = rotate_refresh
        self.deny = deny
        self.approve_after = approve_after
        self.force_slow_down = force_slow_down
        self.device_interval = device_interval
        self.device_lifetime = device_lifetime
        self.clock = clock
        self.on_access_token = on_access_token
        self.fault: str | None = None
        self.requests: list[Request] = []
        self.errors: list[BaseException] = []
        self.tls_errors: list[BaseException] = []
        self.access_tokens: list[str] = []
        self.refresh_tokens: dict[str, _Refresh] = {}
        self._codes: dict[str, _Code] = {}
        self._devices: dict[str, _Device] = {}
        self._lock = threading.Lock()
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ca.issue_cert("127.0.0.1").configure_cert(context)
        self._server = _Server(self, context)
        self.port = self._server.server_address[1]
        self.base_url = f"https://127.0.0.1:{self.port}"
        self.auth_url = self.base_url + AUTH_PATH
        self.token_url = self.base_url + TOKEN_PATH
        self.device_url = self.base_url + DEVICE_PATH
        self._thread: threading.Thread | None = None

    # -- lifecycle

    def __enter__(self) -> FakeOAuth:
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,))
        self._thread.daemon = True
        self._thread.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(5)

    # -- for tests

    @property
    def current_access_token(self) -> str:
        """The access token issued last."""
        return self.access_tokens[-1]

    def grant(
        self, client_id: str = "fetchpop-test", scope: Iterable[str] = ("mail",)
    ) -> dict[str, Any]:
        """Issue tokens directly, as if a sign-in had just finished."""
        with self._lock:
            return self._issue(client_id, tuple(scope))

    def revoke_all(self) -> None:
        """Revoke every refresh token (the user removed the app's access)."""
        with self._lock:
            for refresh in self.refresh_tokens.values():
                refresh.revoked = True

    def answers(self, path: str) -> list[str]:
        """The answers given on *path*, in order."""
        return [r.answer for r in self.requests if r.path == path]

    def grants(self) -> list[str]:
        """The grant_type of each token request."""
        return [r.params.get("grant_type", "") for r in self.requests if r.path == TOKEN_PATH]

    # -- issuing

    def _issue(
        self, client_id: str, scope: tuple[str, ...], refresh: str | None = None
    ) -> dict[str, Any]:
        access = "at-" + secrets.token_urlsafe(24)
        self.access_tokens.append(access)
        if self.on_access_token is not None:
            self.on_access_token(access)
        body: dict[str, Any] = {
            "access_token": access,
            "token_type": "Bearer",
            "scope": " ".join(scope),
        }
        if self.access_lifetime is not None:
            body["expires_in"] = self.access_lifetime
        if refresh is None or self.rotate_refresh:
            if refresh is not None:
                self.refresh_tokens[refresh].revoked = True
            refresh = "rt-" + secrets.token_urlsafe(24)
            self.refresh_tokens[refresh] = _Refresh(client_id, scope)
            body["refresh_token"] = refresh
        return body

    # -- the authorization endpoint (RFC 6749 section 4.1.1)

    def authorize(self, query: str) -> tuple[int, dict[str, str], str]:
        """(status, headers, text) for a GET of the authorization endpoint."""
        pairs = urllib.parse.parse_qsl(query, keep_blank_values=True)
        params = dict(pairs)
        client = self.clients.get(params.get("client_id", ""))
        redirect_uri = params.get("redirect_uri", "")
        # Section 3.1.2.4: never redirect to an unverified URI.
        if client is None or len(params) != len(pairs):
            return 400, {}, "unknown client or repeated parameters"
        if not _redirect_matches(client.redirect_uri, redirect_uri):
            return 400, {}, "redirect_uri does not match the registration"
        state = params.get("state")

        def redirect(**result: str) -> tuple[int, dict[str, str], str]:
            if state is not None:
                result["state"] = state
            sep = "&" if "?" in redirect_uri else "?"
            return 302, {"Location": redirect_uri + sep + urllib.parse.urlencode(result)}, ""

        if params.get("response_type") != "code":
            return redirect(error="unsupported_response_type", error_description="only code")
        challenge = params.get("code_challenge")
        if not challenge:  # RFC 7636 section 4.4.1
            return redirect(error="invalid_request", error_description="code challenge required")
        if params.get("code_challenge_method") != "S256":
            return redirect(
                error="invalid_request", error_description="transform algorithm not supported"
            )
        if not _CHALLENGE_RE.fullmatch(challenge):
            return redirect(error="invalid_request", error_description="malformed code_challenge")
        scope = tuple(params.get("scope", "mail").split())
        if not set(scope) <= self.scopes:
            return redirect(error="invalid_scope", error_description="unknown scope")
        if self.deny:
            return redirect(error="access_denied", error_description="The user declined.")
        code = "code-" + secrets.token_urlsafe(16)
        with self._lock:
            self._codes[code] = _Code(
                client.client_id, redirect_uri, challenge, scope, time.monotonic() + CODE_LIFETIME
            )
        return redirect(code=code)

    # -- the token and device endpoints (POST)

    def post(
        self, path: str, headers: Mapping[str, str], body: bytes
    ) -> tuple[int, dict[str, Any]]:
        """(status, JSON object) for a POST; raises _OAuthError for error responses."""
        if (
            headers.get("Content-Type", "").split(";")[0].strip()
            != "application/x-www-form-urlencoded"
        ):
            raise _OAuthError("invalid_request", "expected a form")
        pairs = urllib.parse.parse_qsl(body.decode("ascii"), keep_blank_values=True)
        params = dict(pairs)
        if len(params) != len(pairs):
            raise _OAuthError("invalid_request", "repeated parameter")
        client = self._authenticate(headers.get("Authorization"), params)
        with self._lock:
            if path == DEVICE_PATH:
                return 200, self._device_authorization(client, params)
            if path != TOKEN_PATH:
                raise _OAuthError("invalid_request", "no such endpoint", 404)
            grant_type = params.get("grant_type")
            if grant_type == "authorization_code":
                return 200, self._code_grant(client, params)
            if grant_type == "refresh_token":
                return 200, self._refresh_grant(client, params)
            if grant_type == DEVICE_CODE_GRANT:
                return 200, self._device_grant(client, params)
            if grant_type is None:
                raise _OAuthError("invalid_request", "grant_type missing")
            raise _OAuthError("unsupported_grant_type", "unknown grant_type")

    def _authenticate(self, authorization: str | None, params: dict[str, str]) -> Client:
        # Section 2.3: one authentication method per request.
        secret: str | None
        if authorization is not None:
            if "client_secret" in params or not authorization.startswith("Basic "):
                raise _OAuthError("invalid_request", "more than one authentication method")
            raw = base64.b64decode(authorization[6:]).decode()
            client_id, _, secret = (urllib.parse.unquote_plus(p) for p in raw.partition(":"))
            if params.get("client_id", client_id) != client_id:
                raise _OAuthError("invalid_request", "client_id differs")
        else:
            client_id = params.get("client_id", "")
            secret = params.get("client_secret")
        client = self.clients.get(client_id)
        if client is None or client.secret != secret:
            raise _OAuthError("invalid_client", "client authentication failed", 401)
        return client

    def _code_grant(self, client: Client, params: dict[str, str]) -> dict[str, Any]:
        for name in ("code", "redirect_uri", "code_verifier"):
            if name not in params:
                raise _OAuthError("invalid_request", f"{name} missing")
        grant = self._codes.get(params["code"])
        if grant is None or grant.expires < time.monotonic():
            raise _OAuthError("invalid_grant", "unknown or expired code")
        if grant.used:  # Section 4.1.2: revoke what the code gave.
            for token in grant.issued:
                self.refresh_tokens[token].revoked = True
            raise _OAuthError("invalid_grant", "code already used")
        grant.used = True
        if grant.client_id != client.client_id:
            raise _OAuthError("invalid_grant", "code issued to another client")
        if grant.redirect_uri != params["redirect_uri"]:
            raise _OAuthError(
                "invalid_grant", "redirect_uri differs from the authorization request"
            )
        verifier = params["code_verifier"]
        if not _VERIFIER_RE.fullmatch(verifier):
            raise _OAuthError("invalid_request", "malformed code_verifier")
        computed = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=")
        if computed.decode() != grant.challenge:
            raise _OAuthError("invalid_grant", "PKCE verification failed")
        body = self._issue(client.client_id, grant.scope)
        grant.issued.append(body["refresh_token"])
        return body

    def _refresh_grant(self, client: Client, params: dict[str, str]) -> dict[str, Any]:
        token = params.get("refresh_token")
        if token is None:
            raise _OAuthError("invalid_request", "refresh_token missing")
        refresh = self.refresh_tokens.get(token)
        if refresh is None or refresh.revoked or refresh.client_id != client.client_id:
            raise _OAuthError("invalid_grant", "Token has been expired or revoked.")
        scope = tuple(params["scope"].split()) if "scope" in params else refresh.scope
        if not set(scope) <= set(refresh.scope):  # Section 6: no scope not granted
            raise _OAuthError("invalid_scope", "scope exceeds the grant")
        return self._issue(client.client_id, refresh.scope, token)

    def _device_authorization(self, client: Client, params: dict[str, str]) -> dict[str, Any]:
        scope = tuple(params.get("scope", "mail").split())
        if not set(scope) <= self.scopes:
            raise _OAuthError("invalid_scope", "unknown scope")
        device_code = "dc-" + secrets.token_urlsafe(16)
        user_code = "WDJB-MJHT"
        self._devices[device_code] = _Device(
            client.client_id,
            user_code,
            scope,
            self.clock() + self.device_lifetime,
            self.device_interval,
        )
        return {
            "device_code": device_code,
            "user_code": user_code,
            "verification_uri": self.base_url + VERIFY_PATH,
            "verification_uri_complete": f"{self.base_url}{VERIFY_PATH}?user_code={user_code}",
            "expires_in": self.device_lifetime,
            "interval": self.device_interval,
        }

    def _device_grant(self, client: Client, params: dict[str, str]) -> dict[str, Any]:
        device = self._devices.get(params.get("device_code", ""))
        if device is None or device.client_id != client.client_id or device.status == "used":
            raise _OAuthError("invalid_grant", "unknown device_code")
        now = self.clock()
        if now >= device.expires:
            raise _OAuthError("expired_token", "the device_code has expired")
        too_soon = device.last_poll is not None and now - device.last_poll < device.interval - 0.01
        device.last_poll = now
        device.polls += 1
        if too_soon or self.force_slow_down > 0:
            self.force_slow_down = max(0, self.force_slow_down - 1)
            device.interval += 5  # RFC 8628 section 3.5: for this and all later requests
            raise _OAuthError("slow_down", "polling too fast")
        if self.deny:
            raise _OAuthError("access_denied", "The user declined.")
        if device.status == "pending" and device.polls > self.approve_after:
            device.status = "approved"
        if device.status == "pending":
            raise _OAuthError("authorization_pending", "waiting for the user")
        device.status = "used"
        return self._issue(client.client_id, device.scope)


def _redirect_matches(registered: str, requested: str) -> bool:
    """Exact match, except the port of a loopback IP redirect URI (RFC 8252 section 7.3)."""
    if registered == requested:
        return True
    reg, req = urllib.parse.urlsplit(registered), urllib.parse.urlsplit(requested)
    return (
        reg.scheme == req.scheme == "http"
        and reg.hostname == req.hostname == "127.0.0.1"
        and reg.path == req.path
        and reg.query == req.query
        and not req.fragment
    )


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.0"

    def do_GET(self) -> None:
        oauth = self.server.oauth
        parts = urllib.parse.urlsplit(self.path)
        if parts.path != AUTH_PATH:
            self._send(404, {"Content-Type": "text/plain"}, b"not found")
            return
        status, headers, text = oauth.authorize(parts.query)
        params = dict(urllib.parse.parse_qsl(parts.query))
        oauth.requests.append(
            Request("GET", parts.path, params, "redirect" if status == 302 else text)
        )
        self._send(status, {"Content-Type": "text/plain", **headers}, text.encode())

    def do_POST(self) -> None:
        oauth = self.server.oauth
        length = int(self.headers.get("Content-Length", "0"))
        body = self.rfile.read(length)
        path = urllib.parse.urlsplit(self.path).path
        params = dict(urllib.parse.parse_qsl(body.decode("ascii", "replace")))
        fault = oauth.fault if path == TOKEN_PATH else None
        if fault == "http500":
            oauth.requests.append(Request("POST", path, params, fault))
            page = b"<html><body>Internal Server Error</body></html>"
            self._send(500, {"Content-Type": "text/html"}, page)
            return
        if fault == "malformed":
            oauth.requests.append(Request("POST", path, params, fault))
            self._send(200, _NO_STORE, b'{"access_token": "at-cut-short", "token_')
            return
        if fault == "html400":
            oauth.requests.append(Request("POST", path, params, fault))
            self._send(400, {"Content-Type": "text/html"}, b"<html>Bad Request</html>")
            return
        try:
            status, answer = oauth.post(path, dict(self.headers.items()), body)
        except _OAuthError as exc:
            oauth.requests.append(Request("POST", path, params, exc.error))
            headers = dict(_NO_STORE)
            if exc.status == 401:
                headers["WWW-Authenticate"] = 'Basic realm="fakeoauth"'
            payload = {"error": exc.error, "error_description": exc.description}
            self._send(exc.status, headers, json.dumps(payload).encode())
            return
        oauth.requests.append(Request("POST", path, params, "ok"))
        self._send(status, _NO_STORE, json.dumps(answer).encode())

    def _send(self, status: int, headers: Mapping[str, str], body: bytes) -> None:
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


_NO_STORE = {"Content-Type": "application/json", "Cache-Control": "no-store", "Pragma": "no-cache"}


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, oauth: FakeOAuth, context: ssl.SSLContext) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.oauth = oauth
        self.context = context

    def finish_request(self, request: Any, client_address: Any) -> None:
        # The handshake runs in the request's own thread, never the accept loop.
        request.settimeout(10)
        try:
            tls = self.context.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError) as exc:
            self.oauth.tls_errors.append(exc)
            return
        with tls:
            self.RequestHandlerClass(tls, client_address, self)

    def handle_error(self, request: Any, client_address: Any) -> None:
        import sys

        exc = sys.exc_info()[1]
        if isinstance(exc, ConnectionError | ssl.SSLError | socket.timeout):
            self.oauth.tls_errors.append(exc)
        elif exc is not None:
            self.oauth.errors.append(exc)
