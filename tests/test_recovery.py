"""A run killed between "delivered" and "recorded" leaves an intent; the next
run must recognise the delivery instead of delivering again (SPEC section 1).

These tests build that state exactly (a delivered copy plus an unfinished
intent in the seen-store) and check what the next real sync does.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from dovecot import DovecotUser
from runner import Home, maildir_messages
from test_sync_dovecot import config

from fetchpop.deliver import DeliverySpec, open_target
from fetchpop.deliver.mbox import split_mboxrd
from fetchpop.seenstore import SeenStore

pytestmark = pytest.mark.dovecot


def _prepare(mailbox: DovecotUser, home: Home, target: str, n: int = 3) -> list[bytes]:
    dc = mailbox.dovecot
    dc.add_messages(
        mailbox.user, [b"Subject: r%d\n\nbody %d\nFrom me\n" % (i, i) for i in range(n)]
    )
    home.write_config(config(mailbox, target, keep=False))
    return dc.server_messages(mailbox.user)


def _journal(home: Home, mailbox: DovecotUser, uidl: str, target: str, detail: str) -> None:
    with SeenStore(home.store_path) as store:
        box = store.mailbox_id("localhost", mailbox.dovecot.tls_port, mailbox.user)
        assert box is not None
        store.begin_intent(box, uidl, target, detail)


def test_maildir_copy_found_after_crash(mailbox: DovecotUser, home: Home, tmp_path: Path) -> None:
    mail = tmp_path / "Mail"
    served = _prepare(mailbox, home, f"maildir:{mail}")
    uidl = mailbox.dovecot.uidls(mailbox.user)[0]
    # The killed run had delivered message 1, and a mail reader then moved it
    # to cur/ with flags.
    target = open_target(DeliverySpec("maildir", mail))
    delivery = target.begin(uidl)
    delivery.write(served[0])
    delivery.finish()
    target.flush()
    target.close()
    (new,) = (mail / "new").iterdir()
    new.rename(mail / "cur" / (new.name + ":2,S"))
    _journal(home, mailbox, uidl, f"maildir:{mail}", delivery.intent)

    result = home.run("sync")
    assert result.code == 0, result
    assert "1 message(s) delivered by an interrupted run were recorded" in result.stderr
    assert maildir_messages(mail) == sorted(served)  # each exactly once
    assert mailbox.dovecot.count(mailbox.user) == 0


def test_maildir_tmp_leftover_is_not_a_delivery(
    mailbox: DovecotUser, home: Home, tmp_path: Path
) -> None:
    mail = tmp_path / "Mail"
    served = _prepare(mailbox, home, f"maildir:{mail}")
    uidl = mailbox.dovecot.uidls(mailbox.user)[1]
    (mail / "tmp").mkdir(parents=True)
    (mail / "tmp" / "1.M1P1Q1.host").write_bytes(served[1][:5])
    _journal(home, mailbox, uidl, f"maildir:{mail}", "1.M1P1Q1.host")
    result = home.run("sync")
    assert result.code == 0, result
    assert maildir_messages(mail) == sorted(served)
    assert list((mail / "tmp").iterdir()) == []


def _mbox_write(path: Path, message: bytes, uidl: str) -> str:
    target = open_target(DeliverySpec("mbox", path))
    delivery = target.begin(uidl)
    delivery.write(message)
    delivery.finish()
    target.flush()
    target.close()
    return delivery.intent


def test_mbox_complete_copy_found_after_crash(
    mailbox: DovecotUser, home: Home, tmp_path: Path
) -> None:
    mbox = tmp_path / "inbox"
    served = _prepare(mailbox, home, f"mbox:{mbox}")
    uidls = mailbox.dovecot.uidls(mailbox.user)
    _mbox_write(mbox, b"Subject: older mail\n\nkept\n", "other")
    intent = _mbox_write(mbox, served[2], uidls[2])
    _journal(home, mailbox, uidls[2], f"mbox:{mbox}", intent)
    result = home.run("sync")
    assert result.code == 0, result
    got = split_mboxrd(mbox.read_bytes())
    assert sorted(got) == sorted([b"Subject: older mail\n\nkept\n", *served])


def test_mbox_partial_tail_is_cut_and_delivered_again(
    mailbox: DovecotUser, home: Home, tmp_path: Path
) -> None:
    mbox = tmp_path / "inbox"
    served = _prepare(mailbox, home, f"mbox:{mbox}")
    uidls = mailbox.dovecot.uidls(mailbox.user)
    _mbox_write(mbox, b"Subject: older mail\n\nkept\n", "other")
    offset = mbox.stat().st_size
    with open(mbox, "ab") as f:  # killed half-way through the message
        f.write(b"From MAILER-DAEMON Sun Nov 22 04:06:12 2026\n" + served[0][:10])
    _journal(home, mailbox, uidls[0], f"mbox:{mbox}", str(offset))
    result = home.run("sync")
    assert result.code == 0, result
    got = split_mboxrd(mbox.read_bytes())
    assert sorted(got) == sorted([b"Subject: older mail\n\nkept\n", *served])
    assert mailbox.dovecot.count(mailbox.user) == 0
