"""Local faults end to end: a corrupt or locked seen-store, a target that cannot
be created. Each gives one clear line and the right exit status, downloads and
deletes nothing it should not, and other accounts in the run carry on."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest
from dovecot import DovecotUser
from runner import Home, maildir_messages
from test_sync_dovecot import config

pytestmark = pytest.mark.dovecot


def test_corrupt_seen_store(mailbox: DovecotUser, home: Home, tmp_path: Path) -> None:
    dc = mailbox.dovecot
    dc.add_messages(mailbox.user, [b"Subject: a\n\n1\n"])
    mail = tmp_path / "Mail"
    home.write_config(config(mailbox, f"maildir:{mail}", keep=False))
    home.state_dir.mkdir(parents=True)
    home.store_path.write_bytes(b"this is not an SQLite database, just garbage" * 100)
    result = home.run("sync")
    assert result.code == 74, result
    assert "is corrupt" in result.stderr and "nothing was fetched" in result.stderr
    assert "seen mark" in result.stderr  # the documented way out
    assert maildir_messages(mail) == []
    assert dc.count(mailbox.user) == 1  # nothing deleted
    # The way out works: move it aside and sync.
    home.store_path.rename(home.store_path.with_suffix(".broken"))
    assert home.run("sync").code == 0
    assert maildir_messages(mail) == [b"Subject: a\n\n1\n"]


def test_an_emptied_seen_store_is_not_a_fresh_start(
    mailbox: DovecotUser, home: Home, tmp_path: Path
) -> None:
    """Only a missing store is new: one truncated to 0 bytes (a disk fault, a
    careless `> file`) would make keep = true download everything again."""
    dc = mailbox.dovecot
    dc.add_messages(mailbox.user, [b"Subject: a\n\n1\n", b"Subject: b\n\n2\n"])
    mail = tmp_path / "Mail"
    home.write_config(config(mailbox, f"maildir:{mail}"))
    assert home.run("sync").code == 0
    assert len(maildir_messages(mail)) == 2
    home.store_path.write_bytes(b"")
    for path in home.state_dir.glob("fetchpop.sqlite3-*"):
        path.unlink()
    result = home.run("sync")
    assert result.code == 74, result
    [line] = result.stderr.splitlines()
    assert line.startswith(f"fetchpop: seen-store {home.store_path} is corrupt (it is empty)")
    assert "seen mark" in line
    assert len(maildir_messages(mail)) == 2  # nothing fetched again
    assert home.store_path.stat().st_size == 0  # and the file left as it was


def test_a_new_seen_store_is_put_in_place_whole(home: Home, tmp_path: Path) -> None:
    from fetchpop.seenstore import SeenStore

    path = tmp_path / "state" / "fetchpop.sqlite3"
    with SeenStore(path) as store:
        assert store.mailbox_id("h", 995, "u") == 1
    assert path.stat().st_size > 0 and path.stat().st_mode & 0o777 == 0o600
    assert [p.name for p in path.parent.iterdir() if ".new-" in p.name] == []
    with SeenStore(path) as again:  # an existing store opens as before
        assert again.mailbox_id("h", 995, "u", create=False) == 1


def test_locked_seen_store_is_tempfail(mailbox: DovecotUser, home: Home, tmp_path: Path) -> None:
    dc = mailbox.dovecot
    dc.add_messages(mailbox.user, [b"Subject: a\n\n1\n"])
    mail = tmp_path / "Mail"
    home.write_config(config(mailbox, f"maildir:{mail}", keep=False))
    assert home.run("status").code == 0
    assert home.run("seen", "forget", "home").code == 0  # creates the store
    holder = sqlite3.connect(home.store_path, isolation_level=None)
    try:
        holder.execute("BEGIN EXCLUSIVE")
        started = time.monotonic()
        result = home.run("sync")
        waited = time.monotonic() - started
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert result.code == 75, result
    assert "is locked by another process" in result.stderr
    assert waited < 60
    assert maildir_messages(mail) == []
    assert dc.count(mailbox.user) == 1
    assert home.run("sync").code == 0
    assert maildir_messages(mail) == [b"Subject: a\n\n1\n"]


def test_target_that_cannot_be_created_spares_other_accounts(
    dovecot: object, home: Home, tmp_path: Path
) -> None:
    from dovecot import Dovecot

    assert isinstance(dovecot, Dovecot)
    broken, fine = dovecot.new_mailbox("bad"), dovecot.new_mailbox("good")
    for box in (broken, fine):
        dovecot.add_messages(box.user, [b"Subject: x\n\ny\n"])
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where a directory should be")
    good_mail = tmp_path / "Good"
    home.write_config(
        config(broken, f"maildir:{blocker}/Mail", name="bad", keep=False)
        + config(fine, f"maildir:{good_mail}", name="good", keep=False)
    )
    result = home.run("sync")
    assert result.code == 73, result
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("fetchpop: bad: ")
    assert "Not a directory" in lines[0]
    assert dovecot.count(broken.user) == 1  # left on the server
    assert dovecot.count(fine.user) == 0
    assert maildir_messages(good_mail) == [b"Subject: x\n\ny\n"]


def test_every_directory_fetchpop_creates_is_private_under_umask_000(
    mailbox: DovecotUser, home: Home, tmp_path: Path
) -> None:
    """Path.mkdir(parents=True, mode=0o700) gives the mode to the last level
    only: ~/.local and ~/.local/state came out 0777 under umask 000, and
    anyone could swap the seen-store or the lock files."""
    import os
    import stat
    import subprocess
    import sys

    dc = mailbox.dovecot
    dc.add_messages(mailbox.user, [b"Subject: a\n\n1\n"])
    state = tmp_path / "deep" / "state"  # none of it exists yet
    mail = tmp_path / "mail" / "a" / "b" / "Maildir"
    home.write_config(config(mailbox, f"maildir:{mail}"))
    env = home.env({"XDG_STATE_HOME": str(state)})
    code = (
        "import os, runpy, sys; os.umask(0); sys.argv = ['fetchpop', 'sync']; "
        "runpy.run_module('fetchpop', run_name='__main__')"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    created = [tmp_path / "deep", state, state / "fetchpop"]
    created += [tmp_path / "mail", mail.parent.parent, mail.parent, mail]
    for directory in created:
        assert stat.S_IMODE(os.stat(directory).st_mode) == 0o700, directory
