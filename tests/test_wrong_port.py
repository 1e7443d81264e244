"""A wrong port or TLS mode is said within seconds, with the fix, and exit 69.

Against the real Dovecot (its clear-text and implicit-TLS ports), and small
banner servers for the other protocols people point fetchpop at by mistake.
Every case runs with ``timeout = 60``: waiting that out would retry a
permanent mistake from cron every five minutes.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from dovecot import DovecotUser
from runner import Home, account_toml

LIMIT = 10.0  # seconds


class Banner:
    """A TCP server on 127.0.0.1 that sends *banner* on every connection, then
    reads until the client goes (SSH and SMTP speak first)."""

    def __init__(self, banner: bytes) -> None:
        self.banner = banner
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.1)
        self.port = self.listener.getsockname()[1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Banner:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        self.listener.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                continue
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            conn.sendall(self.banner)
            conn.settimeout(0.1)
            while not self._stop.is_set():
                try:
                    if not conn.recv(4096):
                        return
                except TimeoutError:
                    continue
                except OSError:
                    return


class _Quiet(BaseHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def http_port() -> Iterator[int]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def run(home: Home, tmp_path: Path, port: int, tls: str, **keys: object) -> tuple[int, str, float]:
    toml = account_toml(
        "acct",
        host="127.0.0.1",
        port=port,
        user="alice",
        password="secret",
        tls=tls,
        timeout=60,
        deliver=f"maildir:{tmp_path / 'Mail'}",
        **keys,
    )
    home.write_config(toml)
    start = time.monotonic()
    result = home.run("sync", timeout=90)
    return result.code, result.stderr, time.monotonic() - start


def only_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if "clear text" not in line or "port" in line]
    lines = [line for line in lines if not line.startswith("fetchpop: acct: warning")]
    assert len(lines) == 1, stderr
    return lines[0]


IMPLICIT = 'expects TLS from the first byte: set tls = "implicit"'


@pytest.mark.dovecot
@pytest.mark.parametrize("tls", ["off", "starttls"])
def test_no_tls_against_an_implicit_tls_port(
    tls: str, mailbox: DovecotUser, home: Home, tmp_path: Path
) -> None:
    port = mailbox.dovecot.tls_port
    keys = {"ca_file": str(mailbox.dovecot.ca_file)} if tls == "starttls" else {}
    code, stderr, took = run(home, tmp_path, port, tls, **keys)
    assert code == 69, stderr
    assert only_line(stderr) == f"fetchpop: acct: port {port} {IMPLICIT}"
    assert took < LIMIT


@pytest.mark.dovecot
def test_implicit_tls_against_a_clear_text_port(
    mailbox: DovecotUser, home: Home, tmp_path: Path
) -> None:
    port = mailbox.dovecot.port
    code, stderr, took = run(home, tmp_path, port, "implicit", ca_file=str(mailbox.dovecot.ca_file))
    assert code == 69, stderr
    assert only_line(stderr) == (
        f"fetchpop: acct: port {port} speaks POP3 in clear text, not TLS from the first byte: "
        'set tls = "starttls" (or use port 995 with tls = "implicit")'
    )
    assert took < LIMIT


OTHER = "not POP3: check the port (POP3 uses 110, or 995 with tls = \"implicit\")"


@pytest.mark.parametrize("tls", ["off", "implicit"])
def test_an_http_port(tls: str, http_port: int, home: Home, tmp_path: Path) -> None:
    code, stderr, took = run(home, tmp_path, http_port, tls)
    assert code == 69, stderr
    expected = f"fetchpop: acct: port {http_port} of 127.0.0.1 speaks HTTP, {OTHER}"
    assert only_line(stderr) == expected
    assert took < LIMIT


@pytest.mark.parametrize(
    ("banner", "name"),
    [
        (b"SSH-2.0-OpenSSH_9.2p1 Debian-2+deb12u3\r\n", "SSH"),
        (b"220 mail.example.org ESMTP Postfix (Debian/GNU)\r\n", "SMTP"),
        (b"* OK [CAPABILITY IMAP4rev1 STARTTLS] Dovecot ready.\r\n", "IMAP"),
        (b"HTTP/1.1 400 Bad Request\r\n", "HTTP"),
    ],
)
@pytest.mark.parametrize("tls", ["off", "starttls", "implicit"])
def test_a_port_of_another_protocol(
    banner: bytes, name: str, tls: str, home: Home, tmp_path: Path
) -> None:
    with Banner(banner) as server:
        code, stderr, took = run(home, tmp_path, server.port, tls)
    assert code == 69, stderr
    expected = f"fetchpop: acct: port {server.port} of 127.0.0.1 speaks {name}, {OTHER}"
    assert only_line(stderr) == expected
    assert took < LIMIT


def test_a_slow_greeting_is_no_wrong_port(home: Home, tmp_path: Path) -> None:
    """A correct server that greets after 3 s (a busy one, a greet-pause): the
    look at the port finds POP3, or nothing, and the sync goes on."""
    from fakepop import FakePOP3, Fault, delay

    with FakePOP3([b"Subject: hi\n\nslow\n"], faults=[Fault("greeting", delay(3.0))]) as server:
        code, stderr, took = run(home, tmp_path, server.port, "off", auth="user")
    assert code == 0, stderr
    assert took < LIMIT
