"""The package's HTTP client: the only module of ``fetchpop.oauth`` that opens connections.

After :mod:`fetchpop.pop3.transport`, this is the second module of fetchpop
allowed to use sockets and ssl (through urllib and http.client of the
standard library). It sends HTTPS POSTs to OAuth2 endpoints: TLS verified
(``ssl.create_default_context``, which honours ``SSL_CERT_FILE``), TLS 1.2 or
later, a timeout on every connect and read, and one for the whole request
(REQUEST_TIMEOUTS times the timeout: a server that drips its answer a byte
at a time cannot hold fetchpop), no redirects followed, responses capped at
:data:`MAX_RESPONSE` bytes. An OAuth error response becomes an
:class:`~fetchpop.oauth.errors.OAuthError`, other HTTP failures and malformed
JSON their own typed errors, and network failures fetchpop's transport errors
(NoHostError, ConnectError, ServerTimeoutError, TLSError ...).

The only other socket in the package is the loopback listener of the browser
sign-in (:mod:`fetchpop.oauth.browser`, through ``http.server``), which takes
the browser's redirect on 127.0.0.1 and sends nothing anywhere.
"""

from __future__ import annotations

import contextlib
import functools
import http.client
import json
import socket
import ssl
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from fetchpop import __version__
from fetchpop.errors import (
    AuthError,
    ConnectError,
    ConnectionLostError,
    NoHostError,
    ProtocolError,
    ServerTimeoutError,
    TempFailError,
    TLSError,
    UnavailableError,
    sanitize,
)
from fetchpop.oauth.errors import _no_hint, _oauth_error

#: Largest HTTP response body read from an OAuth2 endpoint.
MAX_RESPONSE = 1024 * 1024
#: A whole request (connect, TLS, the answer) may take this many timeouts.
REQUEST_TIMEOUTS = 2
#: Seconds between two looks at the deadline and the stop check.
TICK = 0.2

#: Asked while a request is under way: an exception to end it with (a
#: signal's), or None.
StopCheck = Callable[[], BaseException | None]


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    # A token endpoint that redirects is misconfigured; following would send
    # the grant somewhere else (or, after a 303, drop it). Let it fail.
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


class HttpClient:
    """POSTs forms to OAuth2 endpoints and returns their JSON objects.

    *ca_file* trusts that CA only (for tests); by default the system store,
    and ``SSL_CERT_FILE`` / ``SSL_CERT_DIR`` when set. *timeout* bounds each
    connect and read, and REQUEST_TIMEOUTS times it the whole request.
    *stop*, asked every TICK seconds, ends a request with what it returns.
    """

    def __init__(
        self,
        *,
        ca_file: Path | str | None = None,
        timeout: float = 30.0,
        stop: StopCheck | None = None,
    ) -> None:
        context = ssl.create_default_context(cafile=None if ca_file is None else str(ca_file))
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        self.timeout = timeout
        self._context = context
        self._stop = stop

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
        limit = REQUEST_TIMEOUTS * self.timeout
        late = ServerTimeoutError(f"{what} failed: {host} took more than {limit:g} s to answer")
        watch = _Watch(limit, late, self._stop)
        opener = urllib.request.build_opener(_WatchedHTTPS(self._context, watch), _NoRedirect())
        with watch:  # past the deadline, or told to stop: its reason, whatever happened
            return self._exchange(opener, request, what, host)

    def _exchange(
        self,
        opener: urllib.request.OpenerDirector,
        request: urllib.request.Request,
        what: str,
        host: str,
    ) -> tuple[int, str, bytes]:
        try:
            with opener.open(request, timeout=self.timeout) as response:
                return response.status, response.reason, _read_bounded(response, what, host)
        except urllib.error.HTTPError as exc:
            with exc:
                return exc.code, str(exc.reason), _read_bounded(exc, what, host)
        except urllib.error.URLError as exc:
            raise _network_error(exc.reason, what, host) from None
        except (OSError, http.client.HTTPException) as exc:
            raise _network_error(exc, what, host) from None


class _Watch:
    """A thread that ends a request past its deadline, or when *stop* says so:
    it shuts the connection's socket down, so that whatever read or write
    waits on it returns at once, and keeps the reason, which the request
    raises instead of what the shut socket made of it."""

    def __init__(self, limit: float, late: BaseException, stop: StopCheck | None) -> None:
        self.reason: BaseException | None = None
        self._deadline = time.monotonic() + limit
        self._late = late
        self._stop = stop
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fetchpop-http-watch", daemon=True)

    def __enter__(self) -> _Watch:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._done.set()
        self._thread.join()
        if self.reason is not None:
            raise self.reason from None

    def watch(self, sock: socket.socket) -> None:
        """The request's socket, now connected (shut at once if it is too late)."""
        with self._lock:
            self._sock = sock
            if self.reason is not None:
                _shut(sock)

    def _run(self) -> None:
        while not self._done.wait(min(TICK, max(0.0, self._deadline - time.monotonic()))):
            reason = self._stop() if self._stop is not None else None
            if reason is None and time.monotonic() >= self._deadline:
                reason = self._late
            if reason is not None:
                with self._lock:
                    self.reason = reason
                    if self._sock is not None:
                        _shut(self._sock)
                return


def _shut(sock: socket.socket) -> None:
    # The plain socket's shutdown, on the descriptor: an SSLSocket's own
    # would drop its TLS state under the thread that is reading.
    with contextlib.suppress(OSError):
        socket.socket.shutdown(sock, socket.SHUT_RDWR)


class _WatchedConnection(http.client.HTTPSConnection):
    def __init__(self, *args: Any, watch: _Watch, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._watch = watch

    def connect(self) -> None:
        super().connect()
        self._watch.watch(self.sock)


class _WatchedHTTPS(urllib.request.HTTPSHandler):
    def __init__(self, context: ssl.SSLContext, watch: _Watch) -> None:
        super().__init__(context=context)
        self._watched_context = context
        self._watch = watch

    def https_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        factory = functools.partial(_WatchedConnection, watch=self._watch)
        return self.do_open(factory, req, context=self._watched_context)


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
