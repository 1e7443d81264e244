"""A run killed between "delivered" and "recorded" leaves an intent; the next
run must recognise the delivery instead of delivering again (SPEC section 1).

These tests build that state exactly (a delivered copy plus an unfinished
intent in the seen-store) and check what the next real sync does.
"""

from __future__ import annotations

import contextlib
import mailbox
import os
import shutil
import subprocess
import sys
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


STRACE = shutil.which("strace")
needs_strace = pytest.mark.skipif(
    STRACE is None and os.environ.get("FETCHPOP_REQUIRE_SERVERS") != "1",
    reason="strace not installed (apt-get install strace)",
)


def _killed_at_write(home: Home, path: Path, when: int) -> None:
    """``fetchpop sync`` SIGKILLed at its *when*-th write(2) to *path* (strace)."""
    assert STRACE is not None
    subprocess.run(
        [
            STRACE,
            "-f",
            "-qq",
            "-o",
            "/dev/null",
            "-P",
            str(path),
            "-e",
            "trace=write",
            "-e",
            f"inject=write:signal=SIGKILL:when={when}",
            sys.executable,
            "-m",
            "fetchpop",
            "sync",
        ],
        env=home.env(),
        capture_output=True,
        timeout=120,
        check=False,
    )


def _append_as_an_mta(path: Path, message: bytes) -> None:
    """What a local MTA does after a crash: the dead run's dot-lock removed (its
    pid is gone, as liblockfile decides), then Python's mailbox appends under
    its fcntl lock and dot-lock."""
    lock = Path(f"{path}.lock")
    if lock.exists():
        pid = int(lock.read_text().strip())
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, 0)
            raise AssertionError(f"the dot-lock's pid {pid} is alive")
        lock.unlink()
    box = mailbox.mbox(path)
    box.lock()
    try:
        box.add(message)
        box.flush()
    finally:
        box.unlock()
        box.close()


@needs_strace
def test_mbox_recovery_never_cuts_out_mail_another_program_appended(
    mailbox: DovecotUser, home: Home, tmp_path: Path
) -> None:
    # Issue 14, item 2: killed while appending a 586 KB message; an MTA then
    # appends its own; the next sync must not truncate the MTA's message away.
    mbox = tmp_path / "inbox"
    big = b"Subject: big\n\n" + b"".join(b"line %06d of the big one\n" % i for i in range(23000))
    mailbox.dovecot.add_messages(mailbox.user, [big])
    home.write_config(config(mailbox, f"mbox:{mbox}", keep=False))
    served = mailbox.dovecot.server_messages(mailbox.user)
    _killed_at_write(home, mbox, 3)  # 64 KB writes: well inside the message
    partial = mbox.stat().st_size
    assert 0 < partial < len(big)
    local = b"From: cron@localhost\nSubject: local mail\n\ndelivered by the MTA\n"
    _append_as_an_mta(mbox, local)
    after_mta = mbox.read_bytes()

    result = home.run("sync")
    assert result.code == 0, result
    data = mbox.read_bytes()
    assert data.startswith(after_mta)  # nothing of the MTA's (or anyone's) removed
    assert f"left {partial} bytes at offset 0 as they are" in result.stderr
    messages = split_mboxrd(data)
    assert messages.count(served[0]) == 1  # delivered again, whole, after them
    assert split_mboxrd(data[len(after_mta) :]) == served
    assert any(m.endswith(b"delivered by the MTA\n") for m in messages)
    assert mailbox.dovecot.count(mailbox.user) == 0
    assert home.run("sync").code == 0
    assert mbox.read_bytes() == data  # said once, done once


@needs_strace
def test_mbox_batch_killed_midway_is_recovered_message_by_message(
    mailbox: DovecotUser, home: Home, tmp_path: Path
) -> None:
    # One batch's intents share its start offset: recovery walks its messages
    # in order, records the whole ones, cuts only the partial last one.
    mbox = tmp_path / "inbox"
    raws = [b"Subject: m%d\n\n" % i + b"x" * 100000 + b"\n" for i in range(6)]
    mailbox.dovecot.add_messages(mailbox.user, raws)
    home.write_config(config(mailbox, f"mbox:{mbox}", keep=False))
    served = mailbox.dovecot.server_messages(mailbox.user)
    _killed_at_write(home, mbox, 8)  # two writes a message: inside the fourth
    assert len(split_mboxrd(mbox.read_bytes())) == 4
    result = home.run("sync")
    assert result.code == 0, result
    assert "3 message(s) delivered by an interrupted run were recorded" in result.stderr
    assert "as they are" not in result.stderr
    assert split_mboxrd(mbox.read_bytes()) == served  # each once, in order
    assert mailbox.dovecot.count(mailbox.user) == 0


def test_a_dot_lock_the_journal_proves_a_dead_runs_is_removed_at_once(
    mailbox: DovecotUser, home: Home, tmp_path: Path
) -> None:
    # Issue 14, item 4: after a power cut the dead run's pid may belong to a
    # live process; the intent names the dot-lock (inode and pid), so it is
    # removed at once instead of blocking every sync until it is 5 minutes old.
    mbox = tmp_path / "inbox"
    served = _prepare(mailbox, home, f"mbox:{mbox}")
    home.write_config(config(mailbox, f"mbox:{mbox}", keep=False, mbox_lock_timeout=2))
    _mbox_write(mbox, b"Subject: older mail\n\nkept\n", "other")
    offset = mbox.stat().st_size
    alive = subprocess.Popen(["sleep", "60"])  # the pid "reused" after the reboot
    try:
        lock = Path(f"{mbox}.lock")
        lock.write_text(f"{alive.pid}\n")
        proof = f"{lock.stat().st_ino}:{alive.pid}"
        uidl = mailbox.dovecot.uidls(mailbox.user)[0]
        _journal(home, mailbox, uidl, f"mbox:{mbox}", f"{offset} lock={proof}")
        result = home.run("sync")
        assert result.code == 0, result
        assert split_mboxrd(mbox.read_bytes()) == [b"Subject: older mail\n\nkept\n", *served]
        assert not lock.exists()

        # A dot-lock the journal does not name, of a live process: left alone.
        lock.write_text(f"{alive.pid}\n")
        mailbox.dovecot.add_messages(mailbox.user, [b"Subject: later\n\nx\n"])
        blocked = home.run("sync")
        assert blocked.code == 75, blocked
        assert lock.read_text() == f"{alive.pid}\n"
    finally:
        alive.kill()
        alive.wait()
