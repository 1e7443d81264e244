"""UIDLs handed out again by a real server: Dovecot with ``pop3_uidl_format = %u``.

With that format a message's UIDL is its IMAP UID alone. When the index is
rebuilt (``dovecot-uidlist`` lost: a restore from backup, a migration, an
administrator's ``doveadm force-resync``), Dovecot numbers the messages from
1 again, so the UIDLs of messages fetchpop delivered (and deleted, or keeps)
now name other messages. A reused UIDL must never make fetchpop skip a new
message nor delete one it did not deliver (SPEC section 1, promise 1).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest
from dovecot import Dovecot, DovecotUser
from runner import Home, maildir_messages
from test_sync_dovecot import config

pytestmark = pytest.mark.dovecot


@pytest.fixture
def box(dovecot_factory: Callable[..., Dovecot]) -> DovecotUser:
    server = dovecot_factory(extra_config="pop3_uidl_format = %u\n")
    return server.new_mailbox()


def message(n: int, text: str) -> bytes:
    return b"Message-ID: <%d.%s@example.org>\nSubject: %s %d\n\n%s\n" % (
        n,
        text.encode(),
        text.encode(),
        n,
        text.encode(),
    )


def rebuild_index(box: DovecotUser, replace_with: list[bytes] | None = None) -> None:
    """Lose Dovecot's UID list (and indexes): its next session numbers from 1.

    With *replace_with*, the Maildir's messages are first replaced by those
    (a restore, or a migration, that put other mail under the old numbers).
    """
    maildir = box.dovecot.maildir(box.user)
    if replace_with is not None:
        for sub in ("new", "cur"):
            for path in (maildir / sub).iterdir():
                path.unlink()
        box.dovecot.add_messages(box.user, replace_with)
    for path in maildir.iterdir():
        if path.name.startswith("dovecot"):
            path.unlink()


def backdate(home: Home, days: float) -> None:
    db = sqlite3.connect(home.store_path)
    try:
        db.execute("UPDATE seen SET first_seen = first_seen - ?", (days * 86400,))
        db.commit()
    finally:
        db.close()


def test_reused_uidls_after_deletion_are_new_mail(
    box: DovecotUser, home: Home, tmp_path: Path
) -> None:
    mail = tmp_path / "Mail"
    first = [message(n, "first") for n in range(1, 11)]
    box.dovecot.add_messages(box.user, first)
    home.write_config(config(box, f"maildir:{mail}", keep=False))
    assert box.dovecot.uidls(box.user) == [str(n) for n in range(1, 11)]
    assert home.run("sync").code == 0
    assert box.dovecot.count(box.user) == 0

    second = [message(n, "second") for n in range(1, 11)]
    box.dovecot.add_messages(box.user, second)
    rebuild_index(box)
    assert box.dovecot.uidls(box.user) == [str(n) for n in range(1, 11)]  # the same ten

    result = home.run("-v", "sync")
    assert result.code == 0, result
    assert "10 new message(s)" in result.stderr
    assert maildir_messages(mail) == sorted(first + second)
    assert box.dovecot.count(box.user) == 0  # delivered in this session, then deleted


def test_reused_uidls_of_kept_mail_are_checked_before_any_delete(
    box: DovecotUser, home: Home, tmp_path: Path
) -> None:
    mail = tmp_path / "Mail"
    first = [message(n, "first") for n in range(1, 6)]
    box.dovecot.add_messages(box.user, first)
    home.write_config(config(box, f"maildir:{mail}", keep=True, delete_after_days=2))
    assert home.run("sync").code == 0
    backdate(home, 3)  # old enough to delete, if they were the same messages

    # A restore put other mail under the same numbers; message 3 is the same.
    others = [message(n, "other") if n != 3 else first[2] for n in range(1, 6)]
    rebuild_index(box, replace_with=others)
    assert box.dovecot.uidls(box.user) == [str(n) for n in range(1, 6)]

    result = home.run("sync")
    assert result.code == 0, result
    assert (
        "4 message(s) carry the UIDL of another message delivered before: "
        "fetched as new, not deleted" in result.stderr
    )
    assert maildir_messages(mail) == sorted(first + [m for m in others if m != first[2]])
    served = box.dovecot.server_messages(box.user)
    assert sorted(served) == sorted(m for m in others if m != first[2])  # only 3 deleted
