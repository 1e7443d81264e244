"""The package's HTTP client: the only module of ``fetchpop.oauth`` that opens connections.

After :mod:`fetchpop.pop3.transport`, this is the second module of fetchpop
allowed to use sockets and ssl (through urllib and http.client of the
standard library). It sends HTTPS POSTs to OAuth2 endpoints: TLS verified
(``ssl.create_default_context``, which honours ``SSL_CERT_FILE``), TLS 1.2 or
later, a timeout on every connect and read, no redirects followed, responses
capped at :data:`MAX_RESPONSE` bytes. An OAuth error response becomes an
:class:`~fetchpop.oauth.errors.OAuthError`, other HTTP failures and malformed
JSON their own typed errors, and network failures fetchpop's transport errors
(NoHostError, ConnectError, ServerTimeoutError, TLSError ...).

The only other socket in the package is the loopback listener of the browser
sign-in (:mod:`fetchpop.oauth.browser`, through ``http.server``), which takes
the browser's redirect on 127.0.0.1 and sends nothing anywhere.
"""

from __future__ import annotations

import http.client
import json
import socket
import ssl
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
