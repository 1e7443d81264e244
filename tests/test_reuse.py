"""A UIDL the server hands out again never authorises deleting a message
fetchpop did not deliver (SPEC section 1, promise 1).

Servers do reuse UIDLs: Dovecot with ``pop3_uidl_format = %u`` after its
index is rebuilt, popa3d's header hashes for a message sent twice, a
provider's migration. Two defences, both tested here through the scripted
server (the mailbox's contents are changed between sessions, keeping the
UIDLs):

* the records of messages whose deletion QUIT confirmed are forgotten at
  once, so a UIDL that comes back later is a new message;
* a message delivered in an earlier session is deleted (``keep = false``
  clean-up, ``delete_after_days``) only when ``TOP n 0`` shows the header
  recorded with it (its Message-ID, or a digest of its header).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from fakepop import FakePOP3, Fault, Mailbox, err
from runner import Home, maildir_messages
from test_faults import configure, problems, serving, sync


def message(n: int, text: str = "first") -> bytes:
    return b"Message-ID: <%d.%s@example.org>\nSubject: %s %d\n\n%s\n" % (
        n,
        text.encode(),
        text.encode(),
        n,
        text.encode(),
    )


UIDLS = [f"uid-{n}" for n in range(1, 11)]
FIRST = [message(n) for n in range(1, 11)]
SECOND = [message(n, "second") for n in range(1, 11)]


@pytest.fixture
def mail(tmp_path: Path) -> Path:
    return tmp_path / "Mail"


def backdate(home: Home, days: float) -> None:
    """Make every record *days* older (as if fetched that long ago)."""
    db = sqlite3.connect(home.store_path)
    try:
        db.execute("UPDATE seen SET first_seen = first_seen - ?", (days * 86400,))
        db.commit()
    finally:
        db.close()


def test_keep_false_reused_uidls_are_new_messages(home: Home, mail: Path) -> None:
    with serving(Mailbox(FIRST, UIDLS)) as server:
        configure(home, server, mail, keep=False)
        assert sync(home, server).code == 0
        assert server.mailbox.messages == []
        # Ten other messages under the same ten UIDLs (an index rebuild).
        server.mailbox = Mailbox(SECOND, UIDLS)
        result = sync(home, server, "-v")
        assert result.code == 0, result
        assert "10 new message(s)" in result.stderr
        assert sorted(maildir_messages(mail)) == sorted(FIRST + SECOND)
        assert server.mailbox.messages == []  # delivered in this session, then deleted


def test_delete_after_days_checks_each_old_message_first(home: Home, mail: Path) -> None:
    with serving(Mailbox(FIRST[:3], UIDLS[:3])) as server:
        configure(home, server, mail, keep=True, delete_after_days=2)
        assert sync(home, server).code == 0
        backdate(home, 3)
        # Message 2 was replaced by another under its UIDL (a migration).
        server.mailbox = Mailbox([FIRST[0], SECOND[1], FIRST[2]], UIDLS[:3])
        result = sync(home, server)
        assert result.code == 0, result
        assert problems(result) == [
            "fetchpop: home: 1 message(s) carry the UIDL of another message delivered "
            "before: fetched as new, not deleted"
        ]
        assert server.commands_named("TOP") == ["1 0", "2 0", "3 0"]
        # 1 and 3 are the messages delivered 3 days ago: deleted. 2 is new.
        assert server.mailbox.messages == [SECOND[1].replace(b"\n", b"\r\n")]
        assert sorted(maildir_messages(mail)) == sorted([*FIRST[:3], SECOND[1]])
        again = sync(home, server)
        assert again.code == 0 and problems(again) == [], again  # 2 is young now
        assert len(server.mailbox.messages) == 1


def test_a_header_the_server_rewrote_still_proves_the_message(home: Home, mail: Path) -> None:
    """One real server writes X-UIDL into every message at QUIT: the LIST size
    and the header change, the Message-ID does not."""
    with serving(Mailbox(FIRST[:2], UIDLS[:2])) as server:
        configure(home, server, mail, keep=True, delete_after_days=1)
        assert sync(home, server).code == 0
        backdate(home, 2)
        rewritten = [
            b"X-UIDL: %s\n" % u.encode() + m for u, m in zip(UIDLS[:2], FIRST[:2], strict=True)
        ]
        server.mailbox = Mailbox(rewritten, UIDLS[:2])
        result = sync(home, server)
        assert result.code == 0 and problems(result) == [], result
        assert server.mailbox.messages == []
        assert len(maildir_messages(mail)) == 2  # nothing fetched again


def test_without_message_id_the_header_digest_decides(home: Home, mail: Path) -> None:
    plain = [b"Subject: a\nDate: Mon, 1 Jan 2024 10:00:00 +0000\n\nA\n"]
    other = [b"Subject: b\nDate: Tue, 2 Jan 2024 10:00:00 +0000\n\nB\n"]
    with serving(Mailbox(plain, ["u"])) as server:
        configure(home, server, mail, keep=True, delete_after_days=1)
        assert sync(home, server).code == 0
        backdate(home, 2)
        server.mailbox = Mailbox([b"Status: RO\n" + plain[0]], ["u"])  # read elsewhere
        assert sync(home, server).code == 0
        assert server.mailbox.messages == []
        server.mailbox = Mailbox(other, ["u"])  # the UIDL again, another message
        result = sync(home, server, "-v")
        assert result.code == 0, result
        assert "1 new message(s)" in result.stderr and "0 deleted" in result.stderr
        assert len(server.mailbox.messages) == 1


def test_a_message_that_cannot_be_checked_stays_and_is_said(home: Home, mail: Path) -> None:
    with serving(Mailbox(FIRST[:2], UIDLS[:2]), [Fault("TOP", err(b"-ERR no TOP here\r\n"))]) as s:
        configure(home, s, mail, keep=True, delete_after_days=1)
        assert sync(home, s).code == 0
        backdate(home, 2)
        result = sync(home, s)
        assert result.code == 0, result
        assert problems(result) == [
            f"fetchpop: home: left {u} on the server: cannot check that it is the message "
            "delivered before (TOP: -ERR no TOP here)"
            for u in UIDLS[:2]
        ]
        assert s.commands_named("DELE") == []
        assert len(s.mailbox.messages) == 2


def test_records_from_before_identities_adopt_the_message(home: Home, mail: Path) -> None:
    with serving(Mailbox(FIRST[:2], UIDLS[:2])) as server:
        configure(home, server, mail, keep=True, delete_after_days=1)
        assert sync(home, server).code == 0
        db = sqlite3.connect(home.store_path)
        db.execute("UPDATE seen SET ident = NULL")  # as a store of schema 5 left them
        db.commit()
        db.close()
        backdate(home, 2)
        result = sync(home, server)
        assert result.code == 0 and problems(result) == [], result
        assert server.mailbox.messages == []


@pytest.fixture
def idents(home: Home) -> Iterator[None]:
    yield
    if home.store_path.exists():
        db = sqlite3.connect(home.store_path)
        try:
            assert db.execute("SELECT count(*) FROM seen WHERE ident IS NULL").fetchone()[0] == 0
        finally:
            db.close()


def test_every_delivery_records_an_identity(home: Home, mail: Path, idents: None) -> None:
    server: FakePOP3
    with serving(Mailbox(FIRST[:3], UIDLS[:3])) as server:
        configure(home, server, mail, keep=True)
        assert sync(home, server).code == 0


MANY = [message(n) for n in range(1, 31)]
MANY_UIDLS = [f"uid-{n}" for n in range(1, 31)]


def test_uidls_handed_out_again_for_most_messages_stop_the_run(home: Home, mail: Path) -> None:
    # The brake counts proven reuse: 30 records old enough to delete, and the
    # server now serves 30 other messages under their UIDLs (an index rebuild
    # on a server that numbers from 1, or a migration that kept the UIDLs).
    with serving(Mailbox(MANY, MANY_UIDLS)) as server:
        configure(home, server, mail, keep=True, delete_after_days=1)
        assert sync(home, server).code == 0
        backdate(home, 2)
        retrs = server.commands_named("RETR")
        others = [message(n, "other") for n in range(1, 31)]
        server.mailbox = Mailbox(others, MANY_UIDLS)
        result = sync(home, server)
        assert result.code == 75, result
        assert problems(result) == [
            "fetchpop: home: 30 of the 30 messages delivered before and checked now are "
            "other messages under the same UIDLs: the server may have reset its UIDLs and "
            "handed them out again. Nothing was fetched or deleted; run `fetchpop sync "
            "--accept-new-uidls home` to download them as new"
        ]
        assert server.commands_named("RETR") == retrs and server.commands_named("DELE") == []
        assert len(maildir_messages(mail)) == 30
        accepted = home.run("sync", "--accept-new-uidls")
        assert accepted.code == 0, accepted
        assert sorted(maildir_messages(mail)) == sorted(MANY + others)
        assert len(server.mailbox.messages) == 30  # new now: not deleted


def test_the_brake_works_with_keep_false(home: Home, mail: Path) -> None:
    # keep = false: records live only until QUIT deletes their messages, so
    # many records mean an interrupted run; if the server then lists only
    # UIDLs never seen, it has renumbered, and the same mail would come twice.
    quit_fails = Fault("QUIT", err(b"-ERR not now\r\n"), session=0)
    with serving(Mailbox(MANY, MANY_UIDLS), [quit_fails]) as server:
        configure(home, server, mail, keep=False)
        sync(home, server)  # delivered and recorded, but QUIT deleted nothing
        assert len(maildir_messages(mail)) == 30 and len(server.mailbox.messages) == 30
        retrs, deles = server.commands_named("RETR"), server.commands_named("DELE")
        server.mailbox = Mailbox(MANY, [f"new-{n}" for n in range(1, 31)])
        result = sync(home, server)
        assert result.code == 75, result
        assert "the server may have reset its UIDLs. Nothing was fetched" in result.stderr
        assert server.commands_named("RETR") == retrs
        assert server.commands_named("DELE") == deles
        assert len(maildir_messages(mail)) == 30
