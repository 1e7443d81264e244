"""``deliver = "lmtp:..."`` into a real Dovecot LMTP server (``dovecot-lmtpd``),
started privately on loopback (a TCP port and a unix socket) and delivering
into Maildirs, with Sieve (``dovecot-sieve``) filing mail into a folder.

The POP3 side is fakepop, which serves each message exactly (CRLF on the
wire, so what fetchpop receives is :func:`stored`). What Dovecot keeps of
the bytes: everything, 8-bit, NUL, lone CR, long lines and dot lines
included, with two header lines put in front (``Return-Path:`` with the
envelope sender, ``Delivered-To:`` with the recipient; the Received: line
is switched off in the harness). Each test asserts what a user would notice:
the exit status, the stderr line, the mail in the Maildir, and whether the
POP3 server was told DELE.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from corpus import hard_messages
from dovecot import Dovecot
from fakepop import FakePOP3, Mailbox, to_crlf
from runner import Home, Result, account_toml

pytestmark = pytest.mark.dovecot

MESSAGES = [
    b"Return-Path: <bob@example.org>\nFrom: bob@example.org\nSubject: one\n\nfirst\n",
    b"From: list@example.org\nSubject: [list] news\n\n.a dot line\nlist mail\n",
    b"From: c@example.org\nSubject: three\n\nthird\n",
]
CLEARTEXT = re.compile(r'^fetchpop: home: warning: tls = "off"')
_ADDED = re.compile(rb"\AReturn-Path: [^\n]*\nDelivered-To: [^\n]*\n")


def stored(message: bytes) -> bytes:
    """What fetchpop receives of *message* from fakepop (and a Maildir would hold)."""
    return to_crlf(message).replace(b"\r\n", b"\n")


def received(folder: Path) -> list[bytes]:
    """The messages Dovecot stored in *folder* (a Maildir), without the two
    header lines LMTP puts in front (each message must have them), sorted."""
    out = []
    for sub in ("new", "cur"):
        if (folder / sub).is_dir():
            for path in (folder / sub).iterdir():
                data = path.read_bytes()
                assert _ADDED.match(data), data[:200]
                out.append(_ADDED.sub(b"", data, count=1))
    return sorted(out)


def envelope_senders(folder: Path) -> list[bytes]:
    return sorted(
        p.read_bytes().split(b"\n", 1)[0]
        for sub in ("new", "cur")
        for p in (folder / sub).iterdir()
    )


@contextmanager
def pop(messages: list[bytes]) -> Iterator[FakePOP3]:
    server = FakePOP3(Mailbox(messages))
    server.start()
    try:
        yield server
    finally:
        server.close()
    assert not server.errors, server.errors


def configure(home: Home, server: FakePOP3, deliver: str, **keys: object) -> None:
    base: dict[str, object] = {
        "host": "127.0.0.1",
        "port": server.port,
        "tls": "off",
        "user": "alice",
        "password": "secret",
        "auth": "user",
        "deliver": deliver,
        "keep": False,
        "timeout": 10,
    }
    base.update(keys)
    home.write_config(account_toml("home", **base))


def sync(home: Home) -> Result:
    return home.run("sync", timeout=300)


def problems(result: Result) -> list[str]:
    """stderr lines, without the warning every clear-text POP3 run prints."""
    return [line for line in result.stderr.splitlines() if not CLEARTEXT.match(line)]


def deles(server: FakePOP3) -> list[bytes]:
    return [c for s in server.sessions for c in s.commands if c.upper().startswith(b"DELE")]


def tcp(dovecot: Dovecot) -> str:
    return f"lmtp:127.0.0.1:{dovecot.lmtp_port}"


def test_the_hard_corpus_arrives_byte_identical_over_tcp_with_starttls(
    lmtp_dovecot: Dovecot, home: Home
) -> None:
    box = lmtp_dovecot.new_mailbox("corpus")
    corpus = hard_messages(60, big_size=4 * 1024 * 1024)
    with pop(corpus) as server:
        # Dovecot offers STARTTLS: taken, and verified against the test CA.
        configure(
            home, server, tcp(lmtp_dovecot), recipient=box.user,
            smtp_ca_file=str(lmtp_dovecot.ca_file),
        )  # fmt: skip
        result = sync(home)
        assert result.code == 0, result
        assert problems(result) == [], result
        assert server.mailbox.messages == []  # keep = false: all delivered, all DELE'd
    assert received(box.maildir) == sorted(stored(m) for m in corpus)


def test_the_unix_socket_delivers_and_the_return_path_is_the_envelope_sender(
    lmtp_dovecot: Dovecot, home: Home
) -> None:
    box = lmtp_dovecot.new_mailbox("unix")
    with pop(MESSAGES) as server:
        configure(home, server, f"lmtp:{lmtp_dovecot.lmtp_socket}", recipient=box.user)
        result = sync(home)
        assert result.code == 0, result
        assert problems(result) == [], result
        assert server.mailbox.messages == []
    assert received(box.maildir) == sorted(stored(m) for m in MESSAGES)
    # The first message's Return-Path was the envelope sender; the others had none.
    assert envelope_senders(box.maildir) == sorted(
        [b"Return-Path: <bob@example.org>", b"Return-Path: <>", b"Return-Path: <>"]
    )
    with pop(MESSAGES) as server:  # a second run: nothing new in the server's eyes
        configure(home, server, f"lmtp:{lmtp_dovecot.lmtp_socket}", recipient=box.user)
        assert sync(home).code == 0


def test_sieve_files_list_mail_into_a_folder(lmtp_dovecot: Dovecot, home: Home) -> None:
    box = lmtp_dovecot.new_mailbox("sieve")
    # The example in contrib/, as a user would install it.
    contrib = Path(__file__).resolve().parent.parent / "contrib" / "dovecot-lmtp"
    lmtp_dovecot.set_sieve(box.user, (contrib / "sieve.sieve").read_text())
    with pop(MESSAGES) as server:
        configure(home, server, f"lmtp:{lmtp_dovecot.lmtp_socket}", recipient=box.user)
        result = sync(home)
        assert result.code == 0, result
    assert received(lmtp_dovecot.folder(box.user, "Lists")) == [stored(MESSAGES[1])]
    assert received(box.maildir) == sorted(stored(m) for m in (MESSAGES[0], MESSAGES[2]))


def test_an_unknown_recipient_is_refused_per_message_and_nothing_is_deleted(
    lmtp_dovecot: Dovecot, home: Home
) -> None:
    with pop(MESSAGES[:1]) as server:
        configure(home, server, tcp(lmtp_dovecot), recipient="nosuchuser", smtp_tls="off")
        for attempt in (1, 2, 3):
            result = sync(home)
            assert result.code == 73, result
            lines = problems(result)
            assert f"message uid-1 not delivered (attempt {attempt} of 3)" in result.stderr
            assert re.search(r"refused RCPT TO: 550 5\.1\.1", lines[-1]), result
        result = sync(home)  # skipped from now on, and said on every run
        assert result.code == 65, result
        assert "skipped uid-1" in result.stderr
        assert deles(server) == []
        assert len(server.mailbox.messages) == 1


def test_starttls_offered_but_not_verified_fails_and_deletes_nothing(
    lmtp_dovecot: Dovecot, home: Home
) -> None:
    box = lmtp_dovecot.new_mailbox("tls")
    with pop(MESSAGES) as server:
        configure(home, server, tcp(lmtp_dovecot), recipient=box.user)
        result = sync(home)
        assert result.code == 69, result
        (line,) = problems(result)
        assert re.match(
            rf"fetchpop: home: lmtp 127\.0\.0\.1:{lmtp_dovecot.lmtp_port}: TLS certificate "
            r"of 127\.0\.0\.1 did not verify",
            line,
        ), result
        assert deles(server) == []
        assert received(box.maildir) == []
        # Told otherwise (smtp_tls = "off"), it delivers in clear text.
        configure(home, server, tcp(lmtp_dovecot), recipient=box.user, smtp_tls="off")
        result = sync(home)
        assert result.code == 0, result
        assert server.mailbox.messages == []
    assert received(box.maildir) == sorted(stored(m) for m in MESSAGES)


def test_a_server_that_is_not_there_is_try_again_later(tmp_path: Path, home: Home) -> None:
    with pop(MESSAGES) as server:
        configure(home, server, f"lmtp:{tmp_path / 'no-socket'}", recipient="alice")
        result = sync(home)
        assert result.code == 75, result
        (line,) = problems(result)
        assert line.startswith(f"fetchpop: home: lmtp {tmp_path / 'no-socket'}: cannot connect")
        assert deles(server) == []
