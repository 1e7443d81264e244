"""A server that trickles cannot hold fetchpop: bounds that a drip cannot defeat.

``timeout`` bounds each silence. Beyond it (fetchpop/pop3/transport.py): once
an answer has begun, each ``timeout`` seconds of waiting must bring MIN_RATE
bytes a second; the login may wait LOGIN_TIMEOUTS times the timeout in all;
and an OAuth2 request REQUEST_TIMEOUTS times it (fetchpop/oauth/http.py).

Each drip here sends a byte every ``timeout / 3`` seconds: never a silence
as long as the timeout, and, unbounded, a run of many minutes. The safety
bounds (``UNBOUNDED``) only say that the run ended at all, long before the
drip would have.
"""

from __future__ import annotations

import socket
import ssl
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import trustme
from fakepop import FakePOP3, Fault, drip
from runner import Home, Result, account_toml, maildir_messages

from fetchpop.errors import ExitCode, Interrupted, ServerTimeoutError
from fetchpop.oauth.http import REQUEST_TIMEOUTS, HttpClient
from fetchpop.pop3.transport import LOGIN_TIMEOUTS, MIN_RATE, TooSlowError, Transport

#: The account's timeout in these tests (seconds).
TIMEOUT = 1
#: One byte every TIMEOUT / 3 seconds.
DRIP = 3.0 / TIMEOUT
#: A run that ends before this has been bounded (each drip below would take
#: several minutes); a subprocess still running then fails the test.
UNBOUNDED = 60.0

FIRST = b"Subject: first\n\nquick\n"
#: About 2 KB: some eleven minutes at DRIP.
SLOW = b"Subject: slow\n\n" + b"a line of a message that trickles\n" * 60


def _run(home: Home, server: FakePOP3, mail: Path, **keys: object) -> Result:
    config: dict[str, object] = {
        "host": server.host,
        "port": server.port,
        "tls": "off",
        "user": "alice",
        "password": "secret",
        "auth": "user",
        "deliver": f"maildir:{mail}",
        "keep": False,
        "timeout": TIMEOUT,
    }
    config.update(keys)
    home.write_config(account_toml("drip", **config))
    return home.run("sync", timeout=UNBOUNDED)


def _error_lines(result: Result) -> list[str]:
    return [line for line in result.stderr.splitlines() if "warning" not in line]


def _tmp_empty(mail: Path) -> bool:
    return not (mail / "tmp").is_dir() or list((mail / "tmp").iterdir()) == []


@pytest.mark.parametrize(
    ("stage", "fault", "greeting"),
    [
        # A greeting of 200 bytes: over a minute at DRIP.
        ("greeting", Fault("greeting", drip(DRIP)), b"+OK " + b"slowly " * 28 + b"\r\n"),
        ("pass", Fault("PASS", drip(DRIP)), None),
        ("uidl", Fault("UIDL", drip(DRIP)), None),
    ],
)
def test_dripped_reply_gives_up(
    tmp_path: Path, stage: str, fault: Fault, greeting: bytes | None
) -> None:
    home, mail = Home(tmp_path / "home"), tmp_path / "Mail"
    with FakePOP3([FIRST, SLOW], faults=[fault], greeting=greeting) as server:
        result = _run(home, server, mail)
        assert result.code == ExitCode.TEMPFAIL, result
        assert _error_lines(result) == [
            f"fetchpop: drip: {server.host} sends too slowly: "
            + _bytes_in_window(result)
            + f" (fetchpop needs {MIN_RATE} bytes a second)"
        ], result
        assert maildir_messages(mail) == []
        assert home.seen_uidls() == set()
        assert server.commands_named("RETR") == []
        assert server.commands_named("DELE") == []
        server.faults.clear()
        again = _run(home, server, mail)
    assert again.code == 0, again
    assert maildir_messages(mail) == sorted([FIRST, SLOW])


def _bytes_in_window(result: Result) -> str:
    """The "N bytes in M s" of the error line: a few bytes, about one timeout."""
    line = _error_lines(result)[-1]
    words = line.split("sends too slowly: ", 1)[-1].split(" (", 1)[0]
    count, _, seconds = words.partition(" bytes in ")
    assert int(count) < MIN_RATE * TIMEOUT, line
    assert seconds.endswith(" s") and float(seconds[:-2]) >= TIMEOUT - 0.5, line
    return words


def test_dripped_message_is_abandoned_unrecorded(tmp_path: Path) -> None:
    """A message body dripped: 75, that message neither delivered nor recorded
    nor deleted; the one before it is delivered and recorded."""
    home, mail = Home(tmp_path / "home"), tmp_path / "Mail"
    with FakePOP3([FIRST, SLOW], faults=[Fault("RETR 2", drip(DRIP))]) as server:
        result = _run(home, server, mail)
        assert result.code == ExitCode.TEMPFAIL, result
        (line,) = _error_lines(result)
        assert line.startswith(f"fetchpop: drip: {server.host} sends too slowly: "), result
        assert maildir_messages(mail) == [FIRST]
        assert _tmp_empty(mail)
        assert home.seen_uidls() == {"uid-1"}
        # No QUIT was confirmed, so nothing was deleted (not even message 1).
        assert server.mailbox.messages and len(server.mailbox.messages) == 2
        assert server.commands_named("DELE") == []
        server.faults.clear()
        again = _run(home, server, mail)
    assert again.code == 0, again
    assert maildir_messages(mail) == sorted([FIRST, SLOW])
    assert server.mailbox.messages == []


def test_a_login_that_takes_too_long_in_all_gives_up(tmp_path: Path) -> None:
    """A greeting sent fast enough for the rate (4 times MIN_RATE) but taking
    twice the login's budget: 75 when the budget is spent."""
    home, mail = Home(tmp_path / "home"), tmp_path / "Mail"
    budget = LOGIN_TIMEOUTS * TIMEOUT
    rate = 4 * MIN_RATE
    greeting = b"+OK " + b"g" * (2 * budget * rate) + b"\r\n"
    action = drip(rate, chunk=MIN_RATE // 4)
    with FakePOP3([FIRST], faults=[Fault("greeting", action)], greeting=greeting) as server:
        result = _run(home, server, mail)
        assert result.code == ExitCode.TEMPFAIL, result
        assert _error_lines(result) == [
            f"fetchpop: drip: the login took too long: {server.host} kept fetchpop "
            f"waiting {budget:g} s in all"
        ], result
        assert server.commands_named("PASS") == []
    assert maildir_messages(mail) == []


def test_a_slow_but_steady_message_is_fetched(tmp_path: Path) -> None:
    """Several timeouts in all at twice MIN_RATE: no trickle, so it arrives."""
    home, mail = Home(tmp_path / "home"), tmp_path / "Mail"
    body = b"Subject: steady\n\n" + b"x" * 60 + b"\n"
    steady = body * (3 * TIMEOUT * 2 * MIN_RATE // len(body))
    action = drip(2 * MIN_RATE, chunk=MIN_RATE // 8)
    with FakePOP3([steady], faults=[Fault("RETR 1", action)]) as server:
        started = time.monotonic()
        result = _run(home, server, mail)
        assert time.monotonic() - started > 2 * TIMEOUT  # it took more than one window
    assert result.code == 0, result
    assert maildir_messages(mail) == [steady]


# -- the transport on its own -------------------------------------------------------


@contextmanager
def _sender(chunks: Iterator[bytes], pause: float) -> Iterator[socket.socket]:
    """A socket pair: the test's end, and a thread writing *chunks* every *pause* s."""
    ours, theirs = socket.socketpair()
    stop = threading.Event()

    def send() -> None:
        for chunk in chunks:
            if stop.wait(pause):
                return
            try:
                theirs.sendall(chunk)
            except OSError:
                return

    thread = threading.Thread(target=send, daemon=True)
    thread.start()
    try:
        yield ours
    finally:
        stop.set()
        thread.join(5)
        ours.close()
        theirs.close()


def _forever(chunk: bytes) -> Iterator[bytes]:
    while True:
        yield chunk


def _read_until_error(transport: Transport) -> tuple[BaseException, int]:
    got = 0
    while True:
        try:
            got += len(transport.recv())
        except BaseException as exc:
            return exc, got


def test_transport_trickle_is_too_slow() -> None:
    with _sender(_forever(b"x"), 0.25) as sock:
        transport = Transport(sock, "drip.example", 1.0)
        exc, got = _read_until_error(transport)
    assert isinstance(exc, TooSlowError), exc
    assert str(exc).startswith("drip.example sends too slowly: ")
    assert got < 20


def test_transport_waiting_budget() -> None:
    """A steady 256 bytes a second, with two seconds of waiting allowed."""
    with _sender(_forever(b"y" * 64), 0.25) as sock:
        transport = Transport(sock, "slow.example", 1.0)
        transport.limit_waiting(2.0, "the login")
        exc, got = _read_until_error(transport)
        assert isinstance(exc, TooSlowError), exc
        assert str(exc) == "the login took too long: slow.example kept fetchpop waiting 2 s in all"
        assert got < 64 * 20
        transport.limit_waiting(None)


def test_transport_stop_check_ends_a_silent_wait_at_once() -> None:
    """The stop check is asked while the server says nothing, and raised."""
    asked: list[bool] = []
    stop_at = time.monotonic() + 0.5

    def check(in_flight: bool) -> BaseException | None:
        asked.append(in_flight)
        return Interrupted(15) if time.monotonic() >= stop_at else None

    with _sender(iter(()), 0) as sock:
        transport = Transport(sock, "quiet.example", 30.0, stop=check)
        started = time.monotonic()
        with pytest.raises(Interrupted):
            transport.recv()
        assert time.monotonic() - started < 10  # far below the timeout
        assert asked and not any(asked)  # no RETR was sent: nothing in flight


def test_transport_tells_the_stop_check_a_message_is_in_flight() -> None:
    asked: list[bool] = []

    def check(in_flight: bool) -> BaseException | None:
        asked.append(in_flight)
        return Interrupted(2) if len(asked) > 3 else None

    ours, theirs = socket.socketpair()
    with ours, theirs:
        transport = Transport(ours, "quiet.example", 30.0, stop=check)
        transport.send(b"RETR 1\r\n")
        with pytest.raises(Interrupted):
            transport.recv()
        assert asked[0] is False  # asked before the RETR went out
        assert all(asked[1:])
        transport.close()


# -- the OAuth2 HTTP client ----------------------------------------------------------

_BODY = b'{"access_token": "at-1", "expires_in": 1}'
_RESPONSE = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
    b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(_BODY)
) + _BODY


def _read_request(tls: ssl.SSLSocket) -> None:
    data = b""
    while b"\r\n\r\n" not in data:
        more = tls.recv(65536)
        if not more:
            return
        data += more
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    while len(body) < length and (more := tls.recv(65536)):
        body += more


@contextmanager
def _dripping_https(ca: trustme.CA, *, answer_from: int | None, pause: float) -> Iterator[str]:
    """An HTTPS server on 127.0.0.1 that reads a request, then sends the
    response from byte *answer_from* on, a byte every *pause* s, the bytes
    before at once (None: never answers)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.1)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            conn.settimeout(5)
            try:
                with context.wrap_socket(conn, server_side=True) as tls:
                    _read_request(tls)
                    if answer_from is None:
                        stop.wait(60)
                        continue
                    tls.sendall(_RESPONSE[:answer_from])
                    for i in range(answer_from, len(_RESPONSE)):
                        if stop.wait(pause):
                            break
                        tls.sendall(_RESPONSE[i : i + 1])
                    while tls.recv(4096):  # until the client closes (no RST for it)
                        pass
            except OSError:
                pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"https://127.0.0.1:{listener.getsockname()[1]}/token"
    finally:
        stop.set()
        thread.join(5)
        listener.close()


@pytest.mark.parametrize(
    "answer_from", [pytest.param(0, id="headers"), pytest.param(_RESPONSE.index(b"{"), id="body")]
)
def test_oauth_http_client_gives_up_on_a_drip(
    ca: trustme.CA, ca_file: Path, answer_from: int
) -> None:
    timeout = 1.0
    with _dripping_https(ca, answer_from=answer_from, pause=timeout / 3) as url:
        client = HttpClient(ca_file=ca_file, timeout=timeout)
        started = time.monotonic()
        with pytest.raises(ServerTimeoutError) as info:
            client.post_form(url, {"grant_type": "refresh_token"}, what="OAuth2 refresh")
        assert time.monotonic() - started < UNBOUNDED
    limit = REQUEST_TIMEOUTS * timeout
    host = url.split("/")[2]  # with its port
    assert str(info.value) == f"OAuth2 refresh failed: {host} took more than {limit:g} s to answer"


def test_oauth_http_client_stops_when_told(ca: trustme.CA, ca_file: Path) -> None:
    """A signal while a token endpoint says nothing ends the request at once."""
    stop_at = time.monotonic() + 0.5

    def stop() -> BaseException | None:
        return Interrupted(15) if time.monotonic() >= stop_at else None

    with _dripping_https(ca, answer_from=None, pause=0) as url:
        client = HttpClient(ca_file=ca_file, timeout=30.0, stop=stop)
        started = time.monotonic()
        with pytest.raises(Interrupted):
            client.post_form(url, {"grant_type": "refresh_token"}, what="OAuth2 refresh")
        assert time.monotonic() - started < 10  # far below the timeout


def test_oauth_http_client_still_answers(ca: trustme.CA, ca_file: Path) -> None:
    """The watch does not get in the way of an answer that comes."""
    with _dripping_https(ca, answer_from=len(_RESPONSE), pause=0) as url:
        client = HttpClient(ca_file=ca_file, timeout=5.0, stop=lambda: None)
        data = client.post_form(url, {"grant_type": "refresh_token"}, what="OAuth2 refresh")
    assert data == {"access_token": "at-1", "expires_in": 1}


def test_a_delivery_targets_connection_shares_the_flight_of_its_thread() -> None:
    """While a connection of this thread reads a message, another connection
    of the thread (an IMAP or SMTP target's, taking that message) is told a
    message is in flight; once the reading connection is closed, no more."""
    asked: list[bool] = []

    def check(in_flight: bool) -> BaseException | None:
        asked.append(in_flight)
        return Interrupted(15) if len(asked) > 2 else None

    pop_ours, pop_theirs = socket.socketpair()
    target_ours, target_theirs = socket.socketpair()
    with pop_ours, pop_theirs, target_ours, target_theirs:
        pop = Transport(pop_ours, "pop.example", 30.0)
        pop.send(b"RETR 1\r\n")
        target = Transport(target_ours, "imap.example", 30.0, stop=check)
        target.send(b"A1 APPEND INBOX {5}\r\n")
        with pytest.raises(Interrupted):
            target.recv()
        assert all(asked), asked
        pop.close()
        asked[:] = [False, False]  # the next ask says stop
        with pytest.raises(Interrupted):
            target.send(b"A2 NOOP\r\n")
        assert asked == [False, False, False]
        target.close()
