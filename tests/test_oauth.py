"""OAuth2 built in (issue 7): sign-in, refresh and sync, against a real local server.

The provider is tests/fakeoauth.FakeOAuth (HTTPS with a trustme certificate,
RFC 6749, 7636 and 8628 checked to the letter); the "browser" is urllib
fetching the authorization URL, which redirects to fetchpop's loopback
listener. Sections:

1. Building blocks: PKCE (RFC 7636 appendix B), the authorization URL, presets.
2. Sign-in by code with PKCE, in-process: success, forged state, refusal, timeout.
3. Sign-in by device code: authorization_pending, slow_down, access_denied, expiry.
4. Refresh: before expiry (and not earlier), rotation, revocation, HTTP faults.
5. Configuration keys and their rules.
6. The real command: ``oauth login`` (browser and --device), then ``sync``
   against tests/fakepop.FakePOP3 accepting only the current access token,
   with a file-based keyring backend; exit codes and the lines on stderr.
7. Leaks: no access or refresh token in output (-vv), the seen-store, state
   files, or a child's argv and environment.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import ssl
import stat
import sys
import textwrap
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import trustme
from fakeoauth import DEVICE_PATH, TOKEN_PATH, Client, FakeOAuth
from fakepop import Accounts, FakePOP3, make_server_context
from runner import Home, Result

from fetchpop.config import load_config
from fetchpop.errors import (
    AuthError,
    ConfigError,
    ExitCode,
    ProtocolError,
    TempFailError,
    TLSError,
    UnavailableError,
)
from fetchpop.oauth import (
    PRESETS,
    AccessTokens,
    DeviceCode,
    HttpClient,
    OAuthError,
    Provider,
    Tokens,
    authorization_url,
    code_challenge,
    login_code,
    login_device,
    parse_record,
    provider_for,
)
from fetchpop.oauth.browser import MAX_CONNECTIONS, MAX_HEAD

CLIENT_ID = "fetchpop-test"
CLIENT_SECRET = "s3cret-client"
USER = "alice"
SCOPES = ("mail", "offline_access")
MESSAGE = b"Subject: oauth\n\nhello\n"


@pytest.fixture(autouse=True)
def no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.setenv(name, "127.0.0.1,localhost")


@contextmanager
def serving(ca: trustme.CA, **kwargs: Any) -> Iterator[FakeOAuth]:
    """A started provider; it must end without bugs."""
    with FakeOAuth(ca, **kwargs) as server:
        yield server
    assert server.errors == []


def provider_of(server: FakeOAuth, **changes: Any) -> Provider:
    fields: dict[str, Any] = {
        "name": "custom",
        "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET,
        "token_url": server.token_url,
        "auth_url": server.auth_url,
        "device_url": server.device_url,
        "scopes": SCOPES,
    }
    fields.update(changes)
    return Provider(**fields)


def http(ca_file: Path) -> HttpClient:
    return HttpClient(ca_file=ca_file, timeout=5)


class Browser:
    """The user's browser: opens the URL and follows the redirect to the listener."""

    def __init__(self, ca: trustme.CA) -> None:
        context = ssl.create_default_context()
        ca.configure_trust(context)
        self.opener = urllib.request.build_opener(
            urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=context)
        )
        self.visits: list[tuple[int, str, str]] = []
        self.errors: list[BaseException] = []

    def get(self, url: str) -> tuple[int, str, str]:
        try:
            with self.opener.open(url, timeout=10) as response:
                return response.status, response.geturl(), response.read().decode()
        except urllib.error.HTTPError as exc:
            with exc:
                return exc.code, exc.geturl(), exc.read().decode()

    def __call__(self, url: str) -> None:
        try:
            self.visits.append(self.get(url))
        except BaseException as exc:  # runs in fetchpop's thread: keep it for the test
            self.errors.append(exc)


class MemoryStore:
    """A TokenStore in memory."""

    def __init__(self, record: str | None = None) -> None:
        self.record = record
        self.loads = 0
        self.saves = 0

    def load(self) -> str | None:
        self.loads += 1
        return self.record

    def save(self, record: str) -> None:
        self.saves += 1
        self.record = record


class FakeClock:
    """Wall and monotonic time in one, moved only by sleep() and advance()."""

    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now
        self.sleeps: list[float] = []

    def time(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


# -- 1. building blocks ------------------------------------------------------------


def test_pkce_challenge_matches_rfc7636_appendix_b() -> None:
    verifier = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"
    assert code_challenge(verifier) == "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"


def test_authorization_url_keeps_the_endpoint_query_and_adds_every_parameter() -> None:
    provider = Provider(
        name="custom",
        client_id="cid",
        token_url="https://example.org/token",
        auth_url="https://example.org/auth?tenant=x",
        scopes=("a", "b"),
    )
    url = authorization_url(
        provider, redirect_uri="http://127.0.0.1:5555/", state="st", challenge="ch"
    )
    parts = urllib.parse.urlsplit(url)
    assert parts.netloc == "example.org" and parts.path == "/auth"
    assert urllib.parse.parse_qsl(parts.query) == [
        ("tenant", "x"),
        ("response_type", "code"),
        ("client_id", "cid"),
        ("redirect_uri", "http://127.0.0.1:5555/"),
        ("scope", "a b"),
        ("state", "st"),
        ("code_challenge", "ch"),
        ("code_challenge_method", "S256"),
    ]
    assert "+" not in parts.query  # spaces as %20


def test_presets() -> None:
    google, microsoft = PRESETS["google"], PRESETS["microsoft"]
    assert google.token_url == "https://oauth2.googleapis.com/token"
    assert google.scopes == ("https://mail.google.com/",)
    assert ("access_type", "offline") in google.auth_params
    assert microsoft.auth_url.endswith("/common/oauth2/v2.0/authorize")
    assert microsoft.device_url.endswith("/common/oauth2/v2.0/devicecode")
    assert microsoft.scopes == ("https://outlook.office.com/POP.AccessAsUser.All", "offline_access")


def test_secrets_stay_out_of_reprs() -> None:
    provider = Provider(name="x", client_id="c", token_url="https://t/", client_secret="CS-1")
    tokens = Tokens("AT-1", "RT-1", 5.0)
    device = DeviceCode("UC", "https://v/", None, 60, 5, device_code="DC-1")
    text = repr(provider) + repr(tokens) + repr(device)
    for secret in ("CS-1", "AT-1", "RT-1", "DC-1"):
        assert secret not in text


# -- 2. sign-in by code with PKCE ----------------------------------------------------


def test_login_by_code_with_pkce(ca: trustme.CA, ca_file: Path) -> None:
    browser = Browser(ca)
    shown: list[str] = []
    clock = FakeClock()
    with serving(ca) as server:
        tokens = login_code(
            provider_of(server),
            http=http(ca_file),
            show_url=shown.append,
            open_browser=browser,
            timeout=20,
            clock=clock.time,
        )
    assert browser.errors == []
    assert [status for status, _, _ in browser.visits] == [200]
    _, landed, page = browser.visits[0]
    assert landed.startswith("http://127.0.0.1:") and "Signed in" in page
    # The server checked client, redirect_uri (any loopback port), S256 and the verifier.
    assert server.answers("/authorize") == ["redirect"]
    assert server.answers(TOKEN_PATH) == ["ok"]
    authorize, exchange = server.requests
    assert len(shown) == 1 and shown[0].startswith(server.auth_url + "?")
    assert authorize.params["code_challenge_method"] == "S256"
    assert exchange.params["redirect_uri"] == authorize.params["redirect_uri"]
    assert exchange.params["grant_type"] == "authorization_code"
    assert code_challenge(exchange.params["code_verifier"]) == authorize.params["code_challenge"]
    assert tokens.access_token == server.current_access_token
    assert tokens.refresh_token in server.refresh_tokens
    assert tokens.expires_at == clock.now + 3600


def test_login_by_code_ignores_a_redirect_with_the_wrong_state(
    ca: trustme.CA, ca_file: Path
) -> None:
    browser = Browser(ca)
    forged: list[tuple[int, str, str]] = []

    def attacker_then_user(url: str) -> None:
        redirect_uri = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(url).query))[
            "redirect_uri"
        ]
        forged.append(browser.get(redirect_uri + "?code=evil&state=wrong"))
        forged.append(browser.get(redirect_uri + "?code=evil"))
        browser(url)

    with serving(ca) as server:
        tokens = login_code(
            provider_of(server),
            http=http(ca_file),
            show_url=lambda url: None,
            open_browser=attacker_then_user,
            timeout=20,
        )
    assert [status for status, _, _ in forged] == [400, 400]
    assert browser.errors == [] and browser.visits[0][0] == 200
    assert server.answers(TOKEN_PATH) == ["ok"]  # "evil" never reached the token endpoint
    assert tokens.access_token == server.current_access_token


def test_login_by_code_declined(ca: trustme.CA, ca_file: Path) -> None:
    """A refusal is shown and waited past (anyone who read the URL can send one);
    at the timeout the provider's refusal is the error."""
    browser = Browser(ca)
    shown: list[str] = []
    with serving(ca, deny=True) as server, pytest.raises(OAuthError) as info:
        login_code(
            provider_of(server),
            http=http(ca_file),
            show_url=lambda url: None,
            open_browser=browser,
            show_error=shown.append,
            timeout=2,
        )
    assert str(info.value) == "OAuth2 sign-in failed (access_denied: The user declined.)"
    assert info.value.exit_code == ExitCode.NOPERM
    assert shown == [
        "OAuth2 sign-in failed (access_denied: The user declined.);"
        " still waiting for a sign-in (Ctrl-C to stop)"
    ]
    assert browser.errors == []
    ((status, _, page),) = browser.visits
    assert status == 200
    assert "fetchpop keeps waiting: open its sign-in link again, or stop it with Ctrl-C." in page
    assert server.answers(TOKEN_PATH) == []


def redirect_uri_of(url: str) -> str:
    return dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(url).query))["redirect_uri"]


def state_of(url: str) -> str:
    return dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(url).query))["state"]


def test_login_by_code_survives_a_forged_refusal_and_a_made_up_code(
    ca: trustme.CA, ca_file: Path
) -> None:
    """Another local user reads the URL, state included, in /proc: a redirect
    with that state and an error, or with a made-up code, does not end the sign-in."""
    browser = Browser(ca)
    forged: list[tuple[int, str, str]] = []
    shown: list[str] = []

    def attacker_then_user(url: str) -> None:
        base, state = redirect_uri_of(url), state_of(url)
        forged.append(browser.get(f"{base}?error=access_denied&state={state}"))
        forged.append(browser.get(f"{base}?error=access_denied&state={state}"))  # shown once
        forged.append(browser.get(f"{base}?code=evil&state={state}"))
        forged.append(browser.get(f"{base}favicon.ico?code=evil&state={state}"))
        browser(url)

    with serving(ca) as server:
        tokens = login_code(
            provider_of(server),
            http=http(ca_file),
            show_url=lambda url: None,
            open_browser=attacker_then_user,
            show_error=shown.append,
            timeout=20,
        )
    assert [status for status, _, _ in forged] == [200, 200, 400, 404]
    assert "keeps waiting" in forged[0][2] and "keeps waiting" in forged[2][2]
    assert shown == [
        "OAuth2 sign-in failed (access_denied: the sign-in was declined);"
        " still waiting for a sign-in (Ctrl-C to stop)",
        "OAuth2 sign-in failed (invalid_grant: unknown or expired code);"
        " still waiting for a sign-in (Ctrl-C to stop)",
    ]
    assert browser.errors == []
    assert browser.visits[0][0] == 200 and "Signed in" in browser.visits[0][2]
    assert server.answers(TOKEN_PATH) == ["invalid_grant", "ok"]
    assert tokens.access_token == server.current_access_token


def test_login_by_code_is_not_stalled_by_idle_or_oversized_connections(
    ca: trustme.CA, ca_file: Path
) -> None:
    """Idle connections (more than are read at once), one that trickles and one
    with an oversized head, all open before the browser comes back: the sign-in
    still ends (each connection is read in a thread of its own, for a few
    seconds, and a new one pushes out the oldest)."""
    browser = Browser(ca)
    idle: list[socket.socket] = []
    oversized: list[bytes] = []

    def attacker_then_user(url: str) -> None:
        port = urllib.parse.urlsplit(redirect_uri_of(url)).port
        assert port is not None
        for _ in range(MAX_CONNECTIONS + 4):
            idle.append(socket.create_connection(("127.0.0.1", port)))
        idle[0].sendall(b"GET /?state=")  # trickles, then goes quiet
        big = socket.create_connection(("127.0.0.1", port), timeout=10)
        idle.append(big)
        big.sendall(b"GET /?" + b"x" * (MAX_HEAD + 10))
        oversized.append(big.recv(200))
        browser(url)

    try:
        with serving(ca) as server:
            tokens = login_code(
                provider_of(server),
                http=http(ca_file),
                show_url=lambda url: None,
                open_browser=attacker_then_user,
                timeout=20,
            )
    finally:
        for conn in idle:
            conn.close()
    assert oversized == [
        b"HTTP/1.0 431 Request Header Fields Too Large\r\n"
        b"Content-Length: 0\r\nConnection: close\r\n\r\n"
    ]
    assert browser.errors == [] and browser.visits[0][0] == 200
    assert tokens.access_token == server.current_access_token


def test_login_by_code_times_out(ca: trustme.CA, ca_file: Path) -> None:
    with serving(ca) as server, pytest.raises(AuthError, match="no answer from the browser"):
        login_code(provider_of(server), http=http(ca_file), show_url=lambda u: None, timeout=0.3)


def test_the_fake_server_checks_the_verifier(ca: trustme.CA, ca_file: Path) -> None:
    """A wrong code_verifier is refused: the PKCE test above means something."""
    redirect_uri = "http://127.0.0.1:4242/"
    with serving(ca) as server:
        url = authorization_url(
            provider_of(server),
            redirect_uri=redirect_uri,
            state="s",
            challenge=code_challenge("b" * 43),
        )
        status, headers, _ = server.authorize(urllib.parse.urlsplit(url).query)
        assert status == 302 and headers["Location"].startswith(redirect_uri + "?")
        code = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(headers["Location"]).query))
        assert code["state"] == "s"
        form = {"grant_type": "authorization_code", "code": code["code"]}
        form.update(redirect_uri=redirect_uri, code_verifier="a" * 43)
        form.update(client_id=CLIENT_ID, client_secret=CLIENT_SECRET)
        with pytest.raises(OAuthError) as info:
            http(ca_file).post_form(server.token_url, form, what="exchange")
    assert info.value.error == "invalid_grant"
    assert str(info.value) == "exchange failed (invalid_grant: PKCE verification failed)"


# -- 3. sign-in by device code (RFC 8628) --------------------------------------------


def test_login_by_device_code_with_pending(ca: trustme.CA, ca_file: Path) -> None:
    clock = FakeClock()
    shown: list[DeviceCode] = []
    with serving(ca, approve_after=2, clock=clock.time) as server:
        tokens = login_device(
            provider_of(server),
            http=http(ca_file),
            show=shown.append,
            sleep=clock.sleep,
            monotonic=clock.time,
            clock=clock.time,
        )
    assert [(c.user_code, c.verification_uri) for c in shown] == [
        ("WDJB-MJHT", server.base_url + "/activate")
    ]
    assert server.answers(TOKEN_PATH) == ["authorization_pending", "authorization_pending", "ok"]
    assert clock.sleeps == [5, 5, 5]
    assert tokens.access_token == server.current_access_token


def test_login_by_device_code_slows_down(ca: trustme.CA, ca_file: Path) -> None:
    clock = FakeClock()
    with serving(ca, approve_after=3, force_slow_down=1, clock=clock.time) as server:
        login_device(
            provider_of(server),
            http=http(ca_file),
            show=lambda code: None,
            sleep=clock.sleep,
            monotonic=clock.time,
        )
    # The first poll is told slow_down: every later wait is 5 s longer, and the
    # server (which now insists on 10 s) never has to say it again.
    assert server.answers(TOKEN_PATH) == [
        "slow_down",
        "authorization_pending",
        "authorization_pending",
        "ok",
    ]
    assert clock.sleeps == [5, 10, 10, 10]


def test_polling_too_fast_is_told_slow_down(ca: trustme.CA, ca_file: Path) -> None:
    clock = FakeClock()
    with serving(ca, approve_after=1, device_interval=5, clock=clock.time) as server:
        login_device(
            provider_of(server),
            http=http(ca_file),
            show=lambda code: None,
            # The second wait is cut short (a suspended laptop's clock, say).
            sleep=lambda s: clock.sleep(s / 2 if len(clock.sleeps) == 1 else s),
            monotonic=clock.time,
        )
    assert server.answers(TOKEN_PATH) == ["authorization_pending", "slow_down", "ok"]
    assert clock.sleeps == [5, 2.5, 10]


@pytest.mark.parametrize(
    ("kwargs", "error", "text"),
    [
        ({"deny": True}, "access_denied", "The user declined."),
        ({"approve_after": 1000, "device_lifetime": 12}, "expired_token", None),
    ],
)
def test_login_by_device_code_fails(
    ca: trustme.CA, ca_file: Path, kwargs: dict[str, Any], error: str, text: str | None
) -> None:
    clock = FakeClock()
    with serving(ca, clock=clock.time, **kwargs) as server, pytest.raises(OAuthError) as info:
        login_device(
            provider_of(server),
            http=http(ca_file),
            show=lambda code: None,
            sleep=clock.sleep,
            monotonic=clock.time,
        )
    assert info.value.error == error and info.value.exit_code == ExitCode.NOPERM
    assert str(info.value).startswith(f"OAuth2 sign-in failed ({error}: ")
    if text:
        assert text in str(info.value)


def test_device_flow_needs_a_device_endpoint(ca: trustme.CA, ca_file: Path) -> None:
    with serving(ca) as server, pytest.raises(ConfigError, match="oauth_device_url"):
        login_device(provider_of(server, device_url=None), http=http(ca_file), show=print)


# -- 4. refresh ----------------------------------------------------------------------


def signed_in(server: FakeOAuth, clock: FakeClock, lifetime: float = 3600) -> MemoryStore:
    granted = server.grant(scope=SCOPES)
    tokens = Tokens(granted["access_token"], granted["refresh_token"], clock.now + lifetime)
    return MemoryStore(tokens.to_record(provider_of(server)))


def test_refresh_before_expiry_and_not_earlier(ca: trustme.CA, ca_file: Path) -> None:
    clock = FakeClock()
    with serving(ca) as server:
        store = signed_in(server, clock)
        first = server.current_access_token
        source = AccessTokens(
            provider_of(server), store, account_name="acct", http=http(ca_file), clock=clock.time
        )
        clock.now += 3600 - 61
        assert source() == first  # 61 s left: still good
        assert server.grants() == [] and store.saves == 0
        clock.now += 2
        second = source()  # 59 s left: refreshed
        assert second != first and second == server.current_access_token
        assert server.grants() == ["refresh_token"]
        assert server.requests[0].params["scope"] == "mail offline_access"
        assert source() == second and server.grants() == ["refresh_token"]  # in memory
        assert store.loads == 1 and store.saves == 1
        saved = parse_record(store.record or "", provider_of(server))
        assert saved is not None and saved.access_token == second
        assert saved.expires_at == clock.now + 3600


def test_rotated_refresh_token_is_kept(ca: trustme.CA, ca_file: Path) -> None:
    clock = FakeClock()
    with serving(ca, rotate_refresh=True) as server:
        store = signed_in(server, clock, lifetime=10)
        old = parse_record(store.record or "", provider_of(server))
        source = AccessTokens(
            provider_of(server), store, account_name="acct", http=http(ca_file), clock=clock.time
        )
        source()
    new = parse_record(store.record or "", provider_of(server))
    assert old is not None and new is not None
    assert new.refresh_token != old.refresh_token
    assert server.refresh_tokens[old.refresh_token or ""].revoked
    assert not server.refresh_tokens[new.refresh_token or ""].revoked


def test_revoked_refresh_token(ca: trustme.CA, ca_file: Path) -> None:
    clock = FakeClock()
    with serving(ca) as server:
        store = signed_in(server, clock, lifetime=30)
        server.revoke_all()
        source = AccessTokens(
            provider_of(server), store, account_name="home", http=http(ca_file), clock=clock.time
        )
        with pytest.raises(OAuthError) as info:
            source()
    assert str(info.value) == (
        "OAuth2 refresh failed (invalid_grant: Token has been expired or revoked.); "
        "run `fetchpop oauth login home` again"
    )
    assert info.value.exit_code == ExitCode.NOPERM == 77
    assert store.saves == 0


@pytest.mark.parametrize(
    ("fault", "kind", "code", "text"),
    [
        ("http500", TempFailError, 75, "answered HTTP 500 Internal Server Error; try again later"),
        ("malformed", ProtocolError, 76, "sent malformed JSON (HTTP 200)"),
        ("html400", UnavailableError, 69, "answered HTTP 400 Bad Request"),
    ],
)
def test_refresh_http_faults(
    ca: trustme.CA, ca_file: Path, fault: str, kind: type[Exception], code: int, text: str
) -> None:
    clock = FakeClock()
    with serving(ca) as server:
        store = signed_in(server, clock, lifetime=0)
        server.fault = fault
        source = AccessTokens(
            provider_of(server), store, account_name="a", http=http(ca_file), clock=clock.time
        )
        with pytest.raises(kind) as info:
            source()
    assert str(info.value) == f"OAuth2 refresh failed: 127.0.0.1:{server.port} {text}"
    assert getattr(info.value, "exit_code", None) == code
    assert "at-cut-short" not in str(info.value)


def test_unverified_tls_is_refused(ca: trustme.CA, ca_file: Path) -> None:
    clock = FakeClock()
    with serving(ca) as server:
        store = signed_in(server, clock, lifetime=0)
        source = AccessTokens(
            provider_of(server),
            store,
            account_name="a",
            http=HttpClient(timeout=5),  # the system store does not know the test CA
            clock=clock.time,
        )
        with pytest.raises(TLSError, match="not verified") as info:
            source()
    assert info.value.exit_code == ExitCode.UNAVAILABLE
    assert server.grants() == []


def test_hostile_error_description_is_sanitised(ca: trustme.CA, ca_file: Path) -> None:
    with (
        serving(ca, clients=[Client(CLIENT_ID, "other")]) as server,
        pytest.raises(OAuthError) as info,
    ):
        http(ca_file).post_form(
            server.token_url,
            {"grant_type": "refresh_token", "refresh_token": "x", "client_id": CLIENT_ID},
            what="OAuth2 refresh",
        )
    assert str(info.value) == "OAuth2 refresh failed (invalid_client: client authentication failed)"
    assert info.value.exit_code == 77
    from fetchpop.oauth import _oauth_error

    error = _oauth_error(
        "OAuth2 refresh",
        {"error": "invalid_grant\x1b[2J", "error_description": "bad\x1b]0;pwned\x07 token"},
        lambda code: "",
    )
    assert "\x1b" not in str(error) and "\x07" not in str(error)
    assert str(error) == "OAuth2 refresh failed (invalid_grant?[2J: bad?]0;pwned? token)"


def test_no_sign_in_stored(ca: trustme.CA, ca_file: Path) -> None:
    with serving(ca) as server:
        source = AccessTokens(
            provider_of(server), MemoryStore(), account_name="a", http=http(ca_file)
        )
        with pytest.raises(AuthError, match=r"run `fetchpop oauth login a`$"):
            source()
        other = Tokens("at", "rt", None).to_record(provider_of(server, client_id="another"))
        source = AccessTokens(
            provider_of(server), MemoryStore(other), account_name="a", http=http(ca_file)
        )
        with pytest.raises(AuthError, match="for another client"):
            source()


# -- 5. configuration --------------------------------------------------------------

BASE = """
[accounts.gmail]
host = "pop.gmail.com"
user = "alice@gmail.com"
deliver = "maildir:~/Mail"
"""


def load(tmp_path: Path, extra: str, mode: int = 0o600) -> Any:
    path = tmp_path / "config.toml"
    path.write_text(BASE + textwrap.dedent(extra))
    path.chmod(mode)
    return load_config(path, environ={"HOME": str(tmp_path)})


def problems(tmp_path: Path, extra: str, mode: int = 0o600) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, extra, mode)
    prefix = f"{tmp_path / 'config.toml'}: "
    return [p.removeprefix(prefix) for p in info.value.problems]


def test_config_google_preset(tmp_path: Path) -> None:
    config = load(
        tmp_path,
        """
        auth = "xoauth2"
        oauth_provider = "google"
        oauth_client_id = "123.apps.googleusercontent.com"
        oauth_client_secret = "GOCSPX-abc"
        """,
    )
    account = config.accounts["gmail"]
    assert "GOCSPX-abc" not in repr(account)
    public = account.to_public_dict()
    assert public["oauth_client_secret"] == "***" and public["oauth_scopes"] is None
    provider = provider_for(account)
    assert provider.token_url == "https://oauth2.googleapis.com/token"
    assert provider.scopes == ("https://mail.google.com/",)
    assert provider.client_secret == "GOCSPX-abc"


def test_config_microsoft_with_tenant_and_scopes(tmp_path: Path) -> None:
    config = load(
        tmp_path,
        """
        auth = "oauthbearer"
        oauth_provider = "microsoft"
        oauth_client_id = "0d9b-4a"
        oauth_auth_url = "https://login.microsoftonline.com/contoso/oauth2/v2.0/authorize"
        oauth_scopes = "https://outlook.office.com/POP.AccessAsUser.All  offline_access"
        """,
        mode=0o644,  # no client secret: the file need not be private
    )
    provider = provider_for(config.accounts["gmail"])
    assert provider.auth_url == "https://login.microsoftonline.com/contoso/oauth2/v2.0/authorize"
    assert provider.token_url == PRESETS["microsoft"].token_url
    assert provider.scopes == ("https://outlook.office.com/POP.AccessAsUser.All", "offline_access")
    assert provider.client_secret is None


def test_config_custom_provider(tmp_path: Path) -> None:
    config = load(
        tmp_path,
        """
        auth = "xoauth2"
        oauth_provider = "custom"
        oauth_client_id = "cid"
        oauth_token_url = "https://id.example.org/token"
        oauth_device_url = "https://id.example.org/device"
        oauth_scopes = ["mail", "offline"]
        """,
    )
    provider = provider_for(config.accounts["gmail"])
    assert (provider.auth_url, provider.device_url) == (None, "https://id.example.org/device")
    assert provider.scopes == ("mail", "offline")


def test_config_oauth_rules(tmp_path: Path) -> None:
    assert problems(tmp_path, 'oauth_provider = "custom"\n') == [
        'account "gmail": key "oauth_provider": needs auth = "xoauth2" or "oauthbearer" '
        '(auth is "auto")',
        'account "gmail": key "oauth_client_id": missing; oauth_provider needs it',
        'account "gmail": key "oauth_token_url": missing; oauth_provider = "custom" needs it',
        'account "gmail": key "oauth_auth_url": missing; oauth_provider = "custom" needs it '
        "or oauth_device_url",
    ]
    assert problems(tmp_path, 'oauth_client_id = "x"\nauth = "xoauth2"\n') == [
        'account "gmail": key "oauth_client_id": has no effect without oauth_provider'
    ]
    found = problems(
        tmp_path,
        """
        auth = "xoauth2"
        oauth_provider = "gogle"
        oauth_client_id = "has space"
        oauth_token_url = "http://id.example.org/token"
        oauth_auth_url = "https://id.example.org/auth#frag"
        oauth_scopes = ["ok", "bad\\"quote"]
        """,
    )
    assert found[0].startswith('account "gmail": key "oauth_provider": must be one of')
    assert 'did you mean "google"' in found[0]
    assert "must not contain spaces" in found[1]
    assert 'expected an https:// URL, got "http://id.example.org/token"' in found[2]
    assert "must not have a #fragment" in found[3]
    assert "is not a valid OAuth2 scope" in found[4]
    assert len(found) == 5


def test_config_client_secret_needs_a_private_file(tmp_path: Path) -> None:
    found = problems(
        tmp_path,
        """
        auth = "xoauth2"
        oauth_provider = "google"
        oauth_client_id = "cid"
        oauth_client_secret = "GOCSPX-abc"
        """,
        mode=0o644,
    )
    assert (
        len(found) == 1 and 'key "oauth_client_secret": the file is readable by others' in found[0]
    )
    assert "GOCSPX-abc" not in found[0]


def test_config_password_command_and_oauth_conflict(tmp_path: Path) -> None:
    found = problems(
        tmp_path,
        """
        auth = "xoauth2"
        oauth_provider = "google"
        oauth_client_id = "cid"
        password_command = "pass show gmail"
        """,
    )
    assert found == [
        'account "gmail": key "password_command": not used with oauth_provider '
        "(the OAuth2 token is); remove one"
    ]


@pytest.mark.parametrize(("name", "provider"), [("gmail", "google"), ("microsoft365", "microsoft")])
def test_contrib_examples_load(tmp_path: Path, name: str, provider: str) -> None:
    source = Path(__file__).parent.parent / "contrib" / f"{name}.toml"
    path = tmp_path / "config.toml"
    path.write_text(source.read_text())
    path.chmod(0o600)
    (account,) = load_config(path, environ={"HOME": str(tmp_path)}).accounts.values()
    assert account.auth == "xoauth2" and account.oauth_provider == provider
    assert provider_for(account).token_url == PRESETS[provider].token_url


# -- 6. the real command -------------------------------------------------------------

KEYRING_BACKEND = (Path(__file__).parent / "filekeyring.py").read_text()

FAKE_BROWSER = """#!{python}
import json, os, ssl, sys, urllib.error, urllib.request
url = sys.argv[1]
opener = urllib.request.build_opener(
    urllib.request.ProxyHandler({{}}),
    urllib.request.HTTPSHandler(context=ssl.create_default_context()),  # SSL_CERT_FILE
)
try:
    with opener.open(url, timeout=10) as response:
        status, body = response.status, response.read().decode()
except urllib.error.HTTPError as exc:
    status, body = exc.code, exc.read().decode()
with open(os.environ["FAKE_BROWSER_LOG"], "a") as log:
    log.write(json.dumps({{"argv": sys.argv, "env": dict(os.environ), "status": status,
                          "body": body}}) + "\\n")
"""

RECORDING_MDA = """#!{python}
import json, os, sys, uuid
out = sys.argv[1]
message = sys.stdin.buffer.read()
ppid = os.getppid()
with open(f"/proc/{{ppid}}/cmdline", "rb") as f:
    parent_argv = f.read().decode(errors="replace")
with open(f"/proc/{{ppid}}/environ", "rb") as f:
    parent_env = f.read().decode(errors="replace")
name = uuid.uuid4().hex
with open(os.path.join(out, name + ".json"), "w") as f:
    json.dump({{"argv": sys.argv, "env": dict(os.environ), "parent_argv": parent_argv,
               "parent_env": parent_env}}, f)
with open(os.path.join(out, name + ".eml"), "wb") as f:
    f.write(message)
"""


class OAuthHome:
    """A user's home with a file keyring, a scripted browser and an MDA that records."""

    def __init__(self, root: Path, ca_file: Path) -> None:
        self.home = Home(root / "home")
        self.tools = root / "tools"
        self.tools.mkdir()
        (self.tools / "filekeyring.py").write_text(KEYRING_BACKEND)
        self.keyring_file = root / "keyring.json"
        self.browser_log = root / "browser.log"
        self.browser = self._script("browser", FAKE_BROWSER)
        self.mda = self._script("mda", RECORDING_MDA)
        self.mda_out = root / "mda"
        self.mda_out.mkdir()
        self.ca_file = ca_file
        self.results: list[Result] = []

    def _script(self, name: str, text: str) -> Path:
        path = self.tools / name
        path.write_text(text.format(python=sys.executable))
        path.chmod(path.stat().st_mode | stat.S_IXUSR)
        return path

    def env(self) -> dict[str, str]:
        paths = [str(self.tools), os.environ.get("PYTHONPATH", "")]
        return {
            "PYTHONPATH": os.pathsep.join(p for p in paths if p),
            "PYTHON_KEYRING_BACKEND": "filekeyring.FileKeyring",
            "TEST_KEYRING_FILE": str(self.keyring_file),
            "SSL_CERT_FILE": str(self.ca_file),
            "NO_PROXY": "127.0.0.1,localhost",
            "no_proxy": "127.0.0.1,localhost",
            "BROWSER": str(self.browser),
            "FAKE_BROWSER_LOG": str(self.browser_log),
        }

    def run(self, *args: str, keyring: bool = True, timeout: float = 60) -> Result:
        env = self.env()
        if not keyring:
            env["PYTHON_KEYRING_BACKEND"] = "keyring.backends.fail.Keyring"
        result = self.home.run(*args, env=env, timeout=timeout)
        self.results.append(result)
        return result

    def write_config(self, server: FakeOAuth, *, port: int = 995, auth: str = "xoauth2") -> None:
        self.home.write_config(
            textwrap.dedent(
                f"""\
                [accounts.acct]
                host = "localhost"
                port = {port}
                user = "{USER}"
                ca_file = "{self.ca_file}"
                auth = "{auth}"
                oauth_provider = "custom"
                oauth_client_id = "{CLIENT_ID}"
                oauth_client_secret = "{CLIENT_SECRET}"
                oauth_auth_url = "{server.auth_url}"
                oauth_token_url = "{server.token_url}"
                oauth_device_url = "{server.device_url}"
                oauth_scopes = "mail offline_access"
                deliver = "mda:{sys.executable} {self.mda} {self.mda_out}"
                timeout = 5
                """
            )
        )

    def keyring(self) -> dict[str, dict[str, str]]:
        if not self.keyring_file.exists():
            return {}
        data: dict[str, dict[str, str]] = json.loads(self.keyring_file.read_text())
        return data

    def record(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.keyring()["fetchpop-oauth"][f"{USER}@localhost"])
        return data

    def seed(self, server: FakeOAuth, *, expires_in: float, revoked: bool = False) -> None:
        """Store a sign-in as `oauth login` would have."""
        granted = server.grant(scope=SCOPES)
        if revoked:
            server.revoke_all()
        tokens = Tokens(granted["access_token"], granted["refresh_token"], time.time() + expires_in)
        provider = Provider(name="custom", client_id=CLIENT_ID, token_url=server.token_url)
        record = tokens.to_record(provider)
        self.keyring_file.write_text(json.dumps({"fetchpop-oauth": {f"{USER}@localhost": record}}))

    def delivered(self) -> list[bytes]:
        return sorted(p.read_bytes() for p in self.mda_out.glob("*.eml"))

    def browser_visits(self, wait_for: int = 0) -> list[dict[str, Any]]:
        """The visits logged, after waiting (up to 30 s) for *wait_for* of them."""
        deadline = time.monotonic() + 30
        while True:
            text = self.browser_log.read_text() if self.browser_log.exists() else ""
            lines = [line for line in text.splitlines() if line.endswith("}")]
            if len(lines) >= wait_for or time.monotonic() > deadline:
                return [json.loads(line) for line in lines]
            time.sleep(0.05)


@pytest.fixture
def user(tmp_path: Path, ca_file: Path) -> OAuthHome:
    return OAuthHome(tmp_path, ca_file)


@contextmanager
def pop_server(ca: trustme.CA, messages: list[bytes]) -> Iterator[FakePOP3]:
    """A POP3 server that accepts no token until told (see accept_only)."""
    server = FakePOP3(
        messages,
        users={},
        tokens={},
        tls_context=make_server_context(ca, "localhost"),
        implicit_tls=True,
    )
    with server:
        yield server
    assert server.errors == []


def accept_only(pop: FakePOP3, token: str) -> None:
    pop.accounts = Accounts({}, {USER: token})


def tokens_sent(pop: FakePOP3) -> list[str]:
    """The bearer token in each AUTH (initial response) or SASL response line."""
    found = []
    for line in pop.all_commands():
        for part in line.split(b" "):
            try:
                raw = base64.b64decode(part, validate=True)
            except ValueError:
                continue
            for field in raw.split(b"\x01"):
                if field.startswith(b"auth=Bearer "):
                    found.append(field[12:].decode())
    return found


def stderr_line(result: Result, prefix: str = "fetchpop: acct: ") -> str:
    lines = [ln for ln in result.stderr.splitlines() if ln.startswith(prefix)]
    assert len(lines) == 1, result
    return lines[0]


@pytest.mark.parametrize("auth", ["xoauth2", "oauthbearer"])
def test_cli_login_by_code_then_sync_refreshing_before_expiry(
    ca: trustme.CA, user: OAuthHome, auth: str
) -> None:
    pop_holder: list[FakePOP3] = []

    def new_token(token: str) -> None:
        if pop_holder:
            accept_only(pop_holder[0], token)  # the old token stops working at once

    with (
        serving(ca, on_access_token=new_token) as server,
        pop_server(ca, [MESSAGE]) as pop,
    ):
        user.write_config(server, port=pop.port, auth=auth)
        result = user.run("oauth", "login", "acct")
        assert result.code == 0, result
        assert "sign in acct" in result.stderr and server.auth_url + "?" in result.stderr
        assert "acct: signed in; the refresh token is in the system keyring" in result.stderr
        # The browser writes its log after fetchpop has answered it (and may have exited).
        assert [v["status"] for v in user.browser_visits(wait_for=1)] == [200]
        assert "Signed in to fetchpop" in user.browser_visits()[0]["body"]
        assert server.grants() == ["authorization_code"]
        record = user.record()
        assert record["refresh_token"] in server.refresh_tokens
        assert record["access_token"] == server.current_access_token

        # First sync: the stored access token is good for an hour: no refresh.
        pop_holder.append(pop)
        accept_only(pop, server.current_access_token)
        result = user.run("-vv", "sync", "acct")
        assert result.code == 0, result
        assert server.grants() == ["authorization_code"]
        (delivered,) = user.delivered()
        assert b"Subject: oauth" in delivered
        assert tokens_sent(pop) == [server.current_access_token]

        # Second sync: 30 s left, inside the 60 s margin: refreshed first, and
        # the server now accepts only the new token.
        stale = server.current_access_token
        record = user.record()
        record["expires_at"] = time.time() + 30
        user.keyring_file.write_text(
            json.dumps({"fetchpop-oauth": {f"{USER}@localhost": json.dumps(record)}})
        )
        pop.mailbox.add(b"Subject: second\n\nagain\n")
        result = user.run("-vv", "sync", "acct")
        assert result.code == 0, result
        assert server.grants() == ["authorization_code", "refresh_token"]
        assert server.current_access_token != stale
        assert tokens_sent(pop)[-1] == server.current_access_token
        assert len(user.delivered()) == 2
        assert user.record()["access_token"] == server.current_access_token
        assert user.record()["expires_at"] > time.time() + 3000
        assert_nothing_leaked(user, server)


def test_cli_login_by_device_code(ca: trustme.CA, user: OAuthHome) -> None:
    with serving(ca, approve_after=2, device_interval=1) as server:
        user.write_config(server)
        result = user.run("oauth", "login", "--device", "acct")
    assert result.code == 0, result
    assert f"open {server.base_url}/activate on any device and enter the code WDJB-MJHT" in (
        result.stderr
    )
    assert server.answers(DEVICE_PATH) == ["ok"]
    assert server.answers(TOKEN_PATH) == ["authorization_pending", "authorization_pending", "ok"]
    assert user.record()["access_token"] == server.current_access_token
    assert user.browser_visits() == []
    assert_nothing_leaked(user, server)


def test_cli_login_declined(ca: trustme.CA, user: OAuthHome) -> None:
    """The browser's page says fetchpop keeps waiting; Ctrl-C stops it (status 130)."""
    with serving(ca, deny=True) as server:
        user.write_config(server)
        proc = user.home.popen("oauth", "login", "acct", env=user.env())
        try:
            user.browser_visits(wait_for=1)
            proc.send_signal(signal.SIGINT)
            _, stderr = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()  # (and its pipes closed)
    (visit,) = user.browser_visits()
    assert visit["status"] == 200 and "fetchpop keeps waiting" in visit["body"], visit
    assert proc.returncode == 130, stderr
    assert "fetchpop: interrupted" in stderr
    # The refusal is said at once (unless the Ctrl-C came first).
    for refusal in [line for line in stderr.splitlines() if "still waiting" in line]:
        assert refusal.startswith("fetchpop: acct: "), stderr
        assert refusal.endswith("; still waiting for a sign-in (Ctrl-C to stop)"), stderr
    assert server.answers(TOKEN_PATH) == []
    assert user.keyring() == {}


def test_cli_login_needs_a_keyring_before_the_browser(ca: trustme.CA, user: OAuthHome) -> None:
    with serving(ca) as server:
        user.write_config(server)
        result = user.run("oauth", "login", "acct", keyring=False)
    assert result.code == 69, result
    assert "cannot use the system keyring" in result.stderr
    assert user.browser_visits() == [] and server.requests == []


def test_cli_sync_with_a_revoked_refresh_token(ca: trustme.CA, user: OAuthHome) -> None:
    with serving(ca) as server, pop_server(ca, [MESSAGE]) as pop:
        user.write_config(server, port=pop.port)
        user.seed(server, expires_in=-10, revoked=True)
        result = user.run("sync")
        assert result.code == 77, result
        assert stderr_line(result) == (
            "fetchpop: acct: OAuth2 refresh failed (invalid_grant: Token has been expired or "
            "revoked.); run `fetchpop oauth login acct` again"
        )
        assert pop.wait_sessions(1)
        assert tokens_sent(pop) == [] and pop.commands_named("AUTH") == []
        assert user.delivered() == []
        assert_nothing_leaked(user, server)


@pytest.mark.parametrize(
    ("fault", "code", "text"),
    [
        ("http500", 75, "answered HTTP 500 Internal Server Error; try again later"),
        ("malformed", 76, "sent malformed JSON (HTTP 200)"),
    ],
)
def test_cli_sync_when_the_token_endpoint_fails(
    ca: trustme.CA, user: OAuthHome, fault: str, code: int, text: str
) -> None:
    with serving(ca) as server, pop_server(ca, [MESSAGE]) as pop:
        user.write_config(server, port=pop.port)
        user.seed(server, expires_in=10)
        server.fault = fault
        result = user.run("sync")
        assert result.code == code, result
        assert stderr_line(result) == (
            f"fetchpop: acct: OAuth2 refresh failed: 127.0.0.1:{server.port} {text}"
        )
        assert user.delivered() == []
        assert_nothing_leaked(user, server)


def test_cli_sync_without_a_sign_in(ca: trustme.CA, user: OAuthHome) -> None:
    with serving(ca) as server, pop_server(ca, [MESSAGE]) as pop:
        user.write_config(server, port=pop.port)
        result = user.run("sync")
    assert result.code == 77, result
    assert stderr_line(result) == (
        "fetchpop: acct: no OAuth2 sign-in is stored; run `fetchpop oauth login acct`"
    )


def test_cli_logout_and_accounts(ca: trustme.CA, user: OAuthHome) -> None:
    with serving(ca) as server:
        user.write_config(server)
        user.seed(server, expires_in=3600)
        result = user.run("accounts", "--json")
        assert result.code == 0, result
        (account,) = json.loads(result.stdout)["accounts"]
        assert account["oauth_client_secret"] == "***"
        assert account["oauth_scopes"] == ["mail", "offline_access"]
        assert user.run("oauth", "logout", "acct").code == 0
        assert user.keyring() == {"fetchpop-oauth": {}}
        result = user.run("oauth", "logout", "acct")
        assert result.code == 0 and "no OAuth2 tokens were stored" in result.stderr
        assert_nothing_leaked(user, server)


def test_password_command_still_gives_the_token_without_oauth_provider(
    ca: trustme.CA, user: OAuthHome
) -> None:
    with pop_server(ca, [MESSAGE]) as pop:
        accept_only(pop, "tok-from-command")
        user.home.write_config(
            textwrap.dedent(
                f"""\
                [accounts.acct]
                host = "localhost"
                port = {pop.port}
                user = "{USER}"
                ca_file = "{user.ca_file}"
                auth = "xoauth2"
                password_command = "printf tok-from-command"
                deliver = "mda:{sys.executable} {user.mda} {user.mda_out}"
                timeout = 5
                """
            )
        )
        result = user.run("sync")
    assert result.code == 0, result
    assert tokens_sent(pop) == ["tok-from-command"]
    assert len(user.delivered()) == 1


# -- 7. leaks --------------------------------------------------------------------------


def assert_nothing_leaked(user: OAuthHome, server: FakeOAuth) -> None:
    """No access or refresh token (nor the client secret) in anything but the keyring."""
    secrets = [*server.access_tokens, *server.refresh_tokens]
    assert secrets, "the test issued no tokens"
    forms = set(secrets)
    for token in secrets:  # the SASL messages, as base64 on the wire
        forms.add(base64.b64encode(f"user={USER}\x01auth=Bearer {token}\x01\x01".encode()).decode())
    places: dict[str, str] = {}
    for index, result in enumerate(user.results):
        places[f"run {index} stdout"] = result.stdout
        places[f"run {index} stderr"] = result.stderr
        forms_with_secret = forms | {CLIENT_SECRET}
        for form in forms_with_secret:
            assert form not in result.stdout + result.stderr, f"run {index} printed a secret"
    for path in user.home.root.rglob("*"):
        if path.is_file() and path != user.home.config_path:  # the config holds the client secret
            places[str(path)] = path.read_bytes().decode("latin-1")
    for path in user.mda_out.glob("*.json"):
        child = json.loads(path.read_text())
        places[f"MDA {path.name}"] = json.dumps(child)
        assert child["parent_argv"].split("\0")[1:3] == ["-m", "fetchpop"]
    for visit in user.browser_visits():
        places["browser"] = json.dumps({"argv": visit["argv"], "env": visit["env"]})
    for place, text in places.items():
        for form in forms:
            assert form not in text, f"a token in {place}"
    assert user.home.store_path.exists() or not user.delivered()
