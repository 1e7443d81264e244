"""Browser sign-in: the authorization-code grant with PKCE and a loopback redirect.

RFC 6749 section 4.1 with PKCE (RFC 7636, S256) and a redirect to a
listener on 127.0.0.1 (RFC 8252 sections 7.3 and 8.3). That listener, an
``http.server.ThreadingHTTPServer``, is the one socket of the package outside
:mod:`fetchpop.oauth.http`: it only accepts the browser's redirect on the
loopback interface and answers it with a short page; urllib.parse here only
builds and reads URLs.

Other local users can reach the listener, and read the authorization URL,
state included, on the browser's command line. So nothing but a redirect
with the state and a code the token endpoint accepts ends the sign-in; a
redirect with an error is shown and waited past; each connection is read in
its own thread, within a few seconds and a few KiB, and only so many at once.

The token request goes through the HttpClient passed in. Nothing here
prints: the caller shows the URL through *show_url* (and refusals through
*show_error*).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import http.server
import io
import queue
import secrets
import threading
import time
import urllib.parse
from collections.abc import Callable, Mapping
from typing import Any

from fetchpop.errors import AuthError, ConfigError, UnavailableError
from fetchpop.oauth.errors import OAuthError, _no_hint, _oauth_error
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

#: A connection must send its whole request head within this many seconds.
READ_TIMEOUT = 5.0
#: At most this many connections are read at once; a new one pushes out the oldest.
MAX_CONNECTIONS = 16
#: The longest request head (request line and headers) read, in bytes.
MAX_HEAD = 32 * 1024
#: How long the browser's page waits for the token request's outcome.
EXCHANGE_WAIT = 60.0
_POLL = 0.2  # how often a reading connection looks at its deadline and eviction
#: The token endpoint's answers to a code that let the sign-in go on: the code
#: was made up (by anyone who read the state in the URL) or is stale.
_BAD_CODE = frozenset({"invalid_grant", "invalid_request"})

_PAGE = (
    "<!DOCTYPE html><html><head><meta charset='utf-8'><title>fetchpop</title></head>"
    "<body><p>{}</p></body></html>"
)
_TOO_LARGE = (
    b"HTTP/1.0 431 Request Header Fields Too Large\r\n"
    b"Content-Length: 0\r\nConnection: close\r\n\r\n"
)
_KEEP_WAITING = "fetchpop keeps waiting: open its sign-in link again, or stop it with Ctrl-C."


class _Slot:
    """One connection being read; *evicted* tells its thread to give up."""

    __slots__ = ("evicted",)

    def __init__(self) -> None:
        self.evicted = False


class _Pending:
    """An authorization code waiting for the token request's outcome."""

    def __init__(self, code: str) -> None:
        self.code = code
        self.done = threading.Event()
        self.status, self.text = 200, "Authorization received; see fetchpop."
        self.sent = threading.Event()  # the page is on its way to the browser

    def finish(self, status: int, text: str) -> None:
        self.status, self.text = status, text
        self.done.set()


class _Redirect(http.server.BaseHTTPRequestHandler):
    """Answers the browser's redirect to ``http://127.0.0.1:PORT/``.

    The request head is read here, in the connection's own thread, within
    READ_TIMEOUT seconds in all and MAX_HEAD bytes: a connection that sends
    nothing (a browser's preconnect, or another local user) or trickles
    costs one thread for a few seconds and blocks no one.
    """

    server: _Receiver
    protocol_version = "HTTP/1.0"

    def setup(self) -> None:
        self.connection = self.request
        self.rfile = io.BytesIO()
        self.wfile = self.connection.makefile("wb")
        self.slot = self.server.admit()
        self.head = self._read_head()
        self.server.release(self.slot)  # read: no longer one of those pushed out

    def _read_head(self) -> bytes | None:
        """The request head; None if it did not come in time, b"" if too large."""
        deadline = time.monotonic() + READ_TIMEOUT
        data = b""
        seen = 0  # what is before this holds no end of the head
        while b"\r\n\r\n" not in data[seen:] and b"\n\n" not in data[seen:]:
            seen = max(0, len(data) - 3)
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self.slot.evicted:
                return None
            try:
                self.connection.settimeout(min(remaining, _POLL))
                chunk = self.connection.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return None
            if not chunk:
                return None
            data += chunk
            if len(data) > MAX_HEAD:
                return b""
        return data

    def handle(self) -> None:
        if self.head is None:
            return
        self.connection.settimeout(READ_TIMEOUT)
        if not self.head:
            self.wfile.write(_TOO_LARGE)
            return
        self.rfile = io.BytesIO(self.head)
        super().handle()

    def do_GET(self) -> None:
        status, text, pending = self.server.receive(self.path)
        page = _PAGE.format(text).encode("utf-8")
        try:
            self.send_response(status)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(page)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(page)
            self.wfile.flush()
        finally:
            if pending is not None:
                pending.sent.set()

    def log_message(self, format: str, *args: Any) -> None:
        pass  # The request line holds the authorization code: never log it.


class _Receiver(http.server.ThreadingHTTPServer):
    """The listener on the loopback interface (RFC 8252 section 8.3).

    Each connection is read in a thread of its own, at most MAX_CONNECTIONS
    at once (a new one pushes out the oldest still reading, and twice as
    many threads in all are never exceeded). What a redirect with our state
    brings goes into *events*: ("code", _Pending) or ("error", params). The
    main thread, in :meth:`next_event`, accepts connections and takes them.
    """

    daemon_threads = True
    block_on_close = False

    def __init__(self, port: int, state: str) -> None:
        super().__init__(("127.0.0.1", port), _Redirect)
        self.state = state
        self.events: queue.Queue[tuple[str, Any]] = queue.Queue()
        self.closed = False
        self._lock = threading.Lock()
        self._reading: list[_Slot] = []
        self._running = 0

    @property
    def redirect_uri(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/"

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # A browser hanging up early is no reason to print a traceback.

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._lock:
            full = self._running >= 2 * MAX_CONNECTIONS
            if not full:
                self._running += 1
        if full:
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            with self._lock:
                self._running -= 1

    def admit(self) -> _Slot:
        slot = _Slot()
        with self._lock:
            if len(self._reading) >= MAX_CONNECTIONS:
                self._reading.pop(0).evicted = True
            self._reading.append(slot)
        return slot

    def release(self, slot: _Slot) -> None:
        with self._lock:
            if slot in self._reading:
                self._reading.remove(slot)

    def receive(self, path: str) -> tuple[int, str, _Pending | None]:
        """The answer to one GET; runs in the connection's thread."""
        parts = urllib.parse.urlsplit(path)
        if parts.path != "/":
            return 404, "Not found.", None
        pairs = urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
        params = dict(pairs)
        if len(params) != len(pairs):  # RFC 6749 section 3.1: no repeated parameters
            return 400, "Repeated parameters; sign-in not accepted.", None
        # RFC 6749 section 10.12: a redirect without our state is forged or stale.
        if not hmac.compare_digest(params.get("state", "").encode(), self.state.encode()):
            return 400, "This sign-in was not started by this fetchpop; ignored.", None
        if self.closed:
            return 400, "Sign-in already received.", None
        if "error" in params:
            # Anyone who read the URL (it is on the browser's command line)
            # can send this: it is shown, and the sign-in goes on.
            self.events.put(("error", params))
            return 200, "The sign-in did not finish. " + _KEEP_WAITING, None
        code = params.get("code")
        if not code:
            return 400, "No authorization code received.", None
        pending = _Pending(code)
        self.events.put(("code", pending))
        pending.done.wait(EXCHANGE_WAIT)
        return pending.status, pending.text, pending

    def close(self) -> None:
        """Answer every code still waiting: the sign-in is over."""
        self.closed = True
        while True:
            try:
                kind, value = self.events.get_nowait()
            except queue.Empty:
                return
            if kind == "code":
                value.finish(400, "Sign-in already received.")

    def next_event(self, deadline: float) -> tuple[str, Any] | None:
        """Serve connections until a redirect brings an event; None at *deadline*."""
        while True:
            try:
                return self.events.get_nowait()
            except queue.Empty:
                pass
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            self.timeout = min(remaining, _POLL)
            self.handle_request()


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
    show_error: Callable[[str], None] | None = None,
    port: int = 0,
    timeout: float = LOGIN_TIMEOUT,
    clock: Callable[[], float] = time.time,
) -> Tokens:
    """Sign in with the authorization-code grant, PKCE and a loopback redirect.

    *show_url* is called with the authorization URL (always); *open_browser*,
    when given, too, in a background thread, since ``webbrowser.open`` may wait
    for the browser to exit while only this thread can answer its redirect.

    Only a redirect with our state *and* a code that the token endpoint
    accepts ends the sign-in: the state is on the browser's command line,
    readable by every local user, so a redirect with an error, or a code the
    token endpoint refuses as invalid, is passed to *show_error* (a line) and
    the listener goes on waiting, up to *timeout* seconds in all. Then the
    last such refusal is raised as OAuthError (or AuthError when there was
    none); a token endpoint that fails otherwise raises at once
    (HttpClient's errors).
    """
    what = "OAuth2 sign-in"
    state = secrets.token_urlsafe(24)
    verifier = make_verifier()
    deadline = time.monotonic() + timeout
    refusal: OAuthError | None = None
    shown = ""
    with _listen(port, state) as receiver:
        redirect_uri = receiver.redirect_uri
        url = authorization_url(
            provider, redirect_uri=redirect_uri, state=state, challenge=code_challenge(verifier)
        )
        show_url(url)
        if open_browser is not None:
            threading.Thread(target=open_browser, args=(url,), daemon=True).start()
        try:
            while (event := receiver.next_event(deadline)) is not None:
                kind, value = event
                if kind == "error":
                    refusal = _oauth_error(what, value, _no_hint)
                else:
                    tokens, refusal = _exchange(
                        provider, http, value, redirect_uri, verifier, clock
                    )
                    if tokens is not None:
                        value.sent.wait(READ_TIMEOUT)  # before this process may exit
                        return tokens
                line = f"{refusal}; still waiting for a sign-in (Ctrl-C to stop)"
                if show_error is not None and line != shown:  # a flood shows once
                    show_error(line)
                shown = line
        finally:
            receiver.close()
    if refusal is not None:
        raise refusal
    raise AuthError(f"{what} failed: no answer from the browser within {timeout:g} s")


def _exchange(
    provider: Provider,
    http: HttpClient,
    pending: _Pending,
    redirect_uri: str,
    verifier: str,
    clock: Callable[[], float],
) -> tuple[Tokens | None, OAuthError | None]:
    """The token request for *pending*'s code (RFC 6749 section 4.1.3).

    (tokens, None), or (None, the refusal) when the token endpoint calls the
    code invalid; any other failure is raised. The browser's page says which.
    """
    what = "OAuth2 sign-in"
    form = {
        "grant_type": "authorization_code",
        "code": pending.code,
        "redirect_uri": redirect_uri,
        "code_verifier": verifier,
    }
    form.update(provider.client_form())
    try:
        data = http.post_form(provider.token_url, form, what=what)
        tokens = _with_refresh(parse_token_response(data, now=clock(), what=what), provider, what)
    except OAuthError as exc:
        if exc.error not in _BAD_CODE:
            pending.finish(502, "Sign-in failed; see fetchpop.")
            raise
        pending.finish(400, "The sign-in did not finish. " + _KEEP_WAITING)
        return None, exc
    except BaseException:
        pending.finish(502, "Sign-in failed; see fetchpop.")
        raise
    pending.finish(200, "Signed in to fetchpop. You can close this window.")
    return tokens, None


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
