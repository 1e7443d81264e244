"""The server matrix: fetchpop against real Courier, Cyrus and popa3d.

Dovecot is tested throughout the suite; these are the other servers people
meet, each run by its harness (tests/courier.py, tests/cyrus.py,
tests/popa3d.py) on free loopback ports with its own state, in every TLS mode
it offers (popa3d has no TLS). For each:

* an edge-case corpus arrives byte-identical (CRLF -> LF) to what an
  independent client (the stdlib's poplib) retrieves from the same server --
  so every alteration the server makes (Cyrus's added headers, a CRLF added
  to a message without a final newline) is delivered as served, and nothing
  of fetchpop's own;
* a second sync fetches nothing; ``keep = false`` empties the mailbox; a
  wrong password exits 77.

Without a server's unpacked package the tests skip, or fail under
FETCHPOP_REQUIRE_SERVERS=1 (CI).
"""

from __future__ import annotations

import secrets
import string
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from runner import Home, account_toml, maildir_messages

pytestmark = pytest.mark.servers

SERVERS = ("courier", "cyrus", "popa3d")
#: The TLS modes each serves (popa3d: clear text only).
MODES = {"courier": ("starttls", "implicit"), "cyrus": ("starttls", "implicit"), "popa3d": ("off",)}
CASES = [(name, mode) for name in SERVERS for mode in MODES[name]]


def _start(name: str) -> Any:
    if name == "courier":
        import courier

        courier.require_courier()
        return courier.Courier().start()
    if name == "cyrus":
        import cyrus

        cyrus.require_cyrus()
        return cyrus.Cyrus().start()
    import popa3d

    popa3d.require_popa3d()
    return popa3d.Popa3d(backdate=True).start()


@pytest.fixture(scope="module")
def servers() -> Iterator[Callable[[str], Any]]:
    """Start each server once per module, the first time a test asks for it."""
    running: dict[str, Any] = {}

    def get(name: str) -> Any:
        if name not in running:
            running[name] = _start(name)
        return running[name]

    try:
        yield get
    finally:
        for server in running.values():
            server.stop()


def new_user(server: Any) -> tuple[str, str]:
    user = "fpt" + "".join(secrets.choice(string.ascii_lowercase) for _ in range(6))
    password = "pw-" + secrets.token_urlsafe(10)
    server.add_user(user, password)
    return user, password


def corpus() -> list[bytes]:
    """The awkward messages of the matrix, each with its own Message-ID (and Date,
    so that popa3d's header-hash UIDLs differ)."""

    def msg(n: int, subject: bytes, rest: bytes, *, crlf: bool = False) -> bytes:
        head = (
            b"From: Sender <sender@example.org>\n"
            b"To: Alice <alice@example.net>\n"
            b"Date: Tue, %02d Feb 2025 10:00:00 +0100\n"
            b"Message-ID: <matrix-%d@fetchpop.test>\n"
            b"Subject: %s\n" % (n, n, subject)
        )
        data = head + rest
        return data.replace(b"\n", b"\r\n") if crlf else data

    long_line = b"".join(bytes([97 + (i % 26)]) for i in range(3000))
    filler = b"".join(b"line %05d of a long message\n" % i for i in range(6500))  # ~190 KB
    return [
        msg(1, b"plain", b"\nhello\n"),
        msg(2, b"stored with CRLF", b"\nline one\nline two\n", crlf=True),
        msg(3, b"dot lines", b"\n.\nbefore\n..\n.x\n...\n. \nafter\n.\n"),
        msg(4, b"From lines", b"\nFrom here on\nFrom sender@example.org Tue Feb 4 2025\n>From x\n"),
        msg(5, b"8-bit \xc3\xa9t\xc3\xa9 in a header", b"\nplain body\n"),
        msg(6, b"8-bit body", b"\ncaf\xc3\xa9 \xe2\x82\xac \xff\xfe\n"),
        msg(7, b"no final newline", b"\nthe last line has no end"),
        msg(8, b"long line", b"\n" + filler[:100_000] + long_line + b"\n" + filler[100_000:]),
        msg(9, b"header only", b""),
        msg(10, b"trailing blank lines", b"\nbody\n\n\n\n"),
    ]


def config(server: Any, mode: str, user: str, password: str, mail: Path, **keys: object) -> str:
    base: dict[str, object] = {
        "host": server.host,
        "port": server.ports[mode],
        "user": user,
        "password": password,
        "tls": mode,
        "deliver": f"maildir:{mail}",
        "timeout": 30,
    }
    if mode != "off":
        base["ca_file"] = str(server.ca_file)
    base.update(keys)
    return account_toml("matrix", **base)


def sync(home: Home, *args: str) -> Any:
    result = home.run(*args, "sync", timeout=180)
    lines = [line for line in result.stderr.splitlines() if 'tls = "off"' not in line]
    return result, lines


@pytest.mark.parametrize(("name", "mode"), CASES)
def test_the_corpus_arrives_as_served_and_only_once(
    name: str, mode: str, servers: Callable[[str], Any], home: Home, tmp_path: Path
) -> None:
    server = servers(name)
    user, password = new_user(server)
    for message in corpus():
        server.add_message(user, message)
    mail = tmp_path / "Mail"
    home.write_config(config(server, mode, user, password, mail))
    result, problems = sync(home)
    assert result.code == 0 and problems == [], result
    served = server.raw_messages(user, password)
    assert len(served) == len(corpus())
    delivered = maildir_messages(mail)
    assert delivered == sorted(body for _, body in served)
    # UTF8 (RFC 6856) was sent where offered: Courier serves the message
    # itself, not its "Cannot display Unicode content" wrapper. Cyrus stores
    # 8-bit header bytes as "X" (munge8bit): delivered as it serves them.
    subject = b"8-bit XXtXX" if name == "cyrus" else b"8-bit \xc3\xa9t\xc3\xa9"
    assert any(b"Subject: " + subject + b" in a header\n" in m for m in delivered)
    assert not any(b"Cannot display Unicode content" in m for m in delivered)

    again, problems = sync(home)
    assert again.code == 0 and problems == [], again
    assert len(maildir_messages(mail)) == len(corpus())
    assert server.count(user) == len(corpus())


@pytest.mark.parametrize(("name", "mode"), CASES)
def test_keep_false_empties_the_mailbox(
    name: str, mode: str, servers: Callable[[str], Any], home: Home, tmp_path: Path
) -> None:
    server = servers(name)
    user, password = new_user(server)
    messages = corpus()[:4]
    for message in messages:
        server.add_message(user, message)
    served = sorted(body for _, body in server.raw_messages(user, password))
    mail = tmp_path / "Mail"
    home.write_config(config(server, mode, user, password, mail, keep=False))
    result, problems = sync(home, "-v")
    assert result.code == 0, result
    assert "matrix: 4 new message(s)" in problems[-1] and "4 deleted" in problems[-1], result
    assert server.count(user) == 0
    assert maildir_messages(mail) == served


@pytest.mark.parametrize(("name", "mode"), CASES)
def test_a_wrong_password_exits_77(
    name: str, mode: str, servers: Callable[[str], Any], home: Home, tmp_path: Path
) -> None:
    server = servers(name)
    user, password = new_user(server)
    server.add_message(user, corpus()[0])
    mail = tmp_path / "Mail"
    home.write_config(config(server, mode, user, password + "-wrong", mail))
    result, problems = sync(home)
    assert result.code == 77, result
    assert len(problems) == 1 and problems[0].startswith(
        "fetchpop: matrix: authentication failed: "
    ), result
    assert maildir_messages(mail) == []
    assert server.count(user) == 1


@pytest.mark.parametrize("keep", [True, False])
def test_popa3d_identical_messages_share_a_uidl_and_each_arrives_once(
    keep: bool, servers: Callable[[str], Any], home: Home, tmp_path: Path
) -> None:
    """popa3d's UIDL hashes a few headers only: two copies of one message (a
    mailing list and a direct copy) get the same UIDL."""
    server = servers("popa3d")
    user, password = new_user(server)
    same = b"Subject: twice\n\nthe same bytes\n"
    for message in (same, same, corpus()[0]):
        server.add_message(user, message)
    uidls = [uidl for uidl, _ in server.raw_messages(user, password)]
    assert uidls[0] == uidls[1] != uidls[2]
    mail = tmp_path / "Mail"
    home.write_config(config(server, "off", user, password, mail, keep=keep))
    result, problems = sync(home)
    assert result.code == 0, result
    assert problems == [], result  # handled: only -v mentions the repeat
    assert maildir_messages(mail) == sorted([same, same, corpus()[0]])
    again, _ = sync(home)
    assert again.code == 0, again
    assert len(maildir_messages(mail)) == 3
    assert server.count(user) == (3 if keep else 0)


@pytest.mark.parametrize("mode", MODES["cyrus"])
def test_cyrus_auto_logs_in_with_auth_plain_and_its_headers_are_delivered(
    mode: str, servers: Callable[[str], Any], home: Home, tmp_path: Path
) -> None:
    """Cyrus offers SASL PLAIN under TLS, which auth = "auto" takes; it drops
    whatever is pipelined behind AUTH, so the listing must wait for its reply.
    lmtpd prepends Return-Path, Received, X-Cyrus-Session-Id and X-Sieve."""
    server = servers("cyrus")
    user, password = new_user(server)
    server.add_message(user, corpus()[0])
    mail = tmp_path / "Mail"
    home.write_config(config(server, mode, user, password, mail, auth="auto"))
    result, _ = sync(home, "-vv")
    assert result.code == 0, result
    sent = [line for line in result.stderr.splitlines() if ": C: " in line]
    at = next(i for i, line in enumerate(sent) if line.endswith("C: AUTH PLAIN ***"))
    assert sent[at + 1 :][:3] == [f"matrix: C: {c}" for c in ("CAPA", "UIDL", "LIST")]
    [message] = maildir_messages(mail)
    head = message.split(b"\n\n", 1)[0]
    for name in (b"Return-Path:", b"Received:", b"X-Cyrus-Session-Id:", b"X-Sieve:"):
        assert name in head
    assert message.endswith(corpus()[0].split(b"\n", 1)[1])
