"""A full disk: the message stays on the server, nothing half-written, nothing recorded.

One account delivers into a 1 MB tmpfs and gets a message larger than that;
a second account (another user, a roomy Maildir) in the same run still
syncs. The run exits 74 (IOERR: one account failed) with a line naming the
account and the reason; once there is room, the next run delivers the
message exactly once.

Mounting needs root (or CAP_SYS_ADMIN); elsewhere the test is skipped.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from corpus import big_attachment_message
from dovecot import Dovecot, DovecotUser
from runner import Home, maildir_messages
from test_sync_dovecot import config

from fetchpop.deliver.mbox import split_mboxrd

pytestmark = pytest.mark.dovecot

BIG = big_attachment_message(2 * 1024 * 1024)  # twice the file system


@pytest.fixture
def tiny_fs(tmp_path: Path) -> Iterator[Path]:
    """A 1 MB tmpfs mounted on a fresh directory; unmounted afterwards."""
    mount_point = tmp_path / "tiny"
    mount_point.mkdir()
    try:
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=1m,mode=0700", "tmpfs", str(mount_point)],
            capture_output=True,
            text=True,
            check=False,
        )
    except FileNotFoundError:
        pytest.skip("no mount command: cannot make a small file system")
    if done.returncode != 0:
        pytest.skip(f"cannot mount a 1 MB tmpfs (needs root): {done.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", str(mount_point)], check=True)


@pytest.fixture
def second(dovecot: Dovecot) -> Iterator[DovecotUser]:
    box = dovecot.new_mailbox("roomy")
    try:
        yield box
    finally:
        dovecot.remove_user(box.user)


def _store_rows(home: Home, user: str) -> tuple[list[str], int]:
    """(recorded UIDLs of *user*'s mailbox, intents of any mailbox)."""
    db = sqlite3.connect(home.store_path)
    try:
        seen = [
            row[0]
            for row in db.execute(
                "SELECT uidl FROM seen JOIN mailbox ON mailbox.id = seen.mailbox"
                " WHERE mailbox.user = ?",
                (user,),
            )
        ]
        (intents,) = db.execute("SELECT count(*) FROM intent").fetchone()
        return seen, int(intents)
    finally:
        db.close()


@pytest.mark.parametrize("kind", ["maildir", "mbox"])
def test_disk_full_leaves_the_message_on_the_server(
    kind: str, tiny_fs: Path, mailbox: DovecotUser, second: DovecotUser, tmp_path: Path
) -> None:
    dc = mailbox.dovecot
    free = os.statvfs(tiny_fs)
    assert len(BIG) > free.f_bavail * free.f_frsize
    dc.add_message(mailbox.user, BIG)
    small = [b"Subject: roomy %d\n\nfits anywhere\n" % i for i in range(3)]
    dc.add_messages(second.user, small)
    served = dc.server_messages(mailbox.user)

    home = Home(tmp_path / "home")
    dest = tiny_fs / ("Mail" if kind == "maildir" else "inbox.mbox")
    roomy_mail = tmp_path / "Roomy"
    home.write_config(
        config(mailbox, f"{kind}:{dest}", name="tiny", keep=False)
        + config(second, f"maildir:{roomy_mail}", name="roomy", keep=False)
    )

    result = home.run("sync")
    print(f"\n{kind}: {result}")
    assert result.code == 74, result  # one account failed: its code
    lines = [line for line in result.stderr.splitlines() if "No space left on device" in line]
    assert len(lines) == 1 and lines[0].startswith("fetchpop: tiny: "), result
    # Nothing half-written where a mail reader looks, nor left in tmp/.
    if kind == "maildir":
        for sub in ("new", "cur", "tmp"):
            assert list((dest / sub).iterdir()) == [], sub
    else:
        assert not dest.exists() or dest.stat().st_size == 0
        assert not Path(f"{dest}.lock").exists()
    # Nothing recorded, nothing deleted.
    assert _store_rows(home, mailbox.user) == ([], 0)
    assert dc.server_messages(mailbox.user) == served
    # The other account was not held up.
    assert maildir_messages(roomy_mail) == sorted(small)
    assert dc.count(second.user) == 0

    # With room again, the next run delivers the message, once.
    subprocess.run(["mount", "-o", "remount,size=8m", str(tiny_fs)], check=True)
    again = home.run("sync")
    assert again.code == 0, again
    if kind == "maildir":
        assert maildir_messages(dest) == served
        assert list((dest / "tmp").iterdir()) == []
    else:
        assert split_mboxrd(dest.read_bytes()) == served
    assert dc.count(mailbox.user) == 0
    assert _store_rows(home, mailbox.user)[1] == 0
