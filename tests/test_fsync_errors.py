"""After an fsync error nothing is trusted (SPEC section 1, promise 1).

Real faults, injected into the real ``fetchpop`` with ``strace -e inject``
(fsync is what the Maildir target calls; SQLite calls fdatasync, so the
seen-store is not touched by the injection). A run whose fsync of
``Maildir/new`` fails leaves files there and intents in the store; the next
run may record them only after fsyncing them again, and when that fails
too, it records and deletes nothing.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from fakepop import FakePOP3, Mailbox
from runner import Home, maildir_messages
from test_faults import configure

MESSAGES = [b"Subject: %d\n\nbody %d\n" % (n, n) for n in range(1, 4)]
STRACE = shutil.which("strace")

pytestmark = pytest.mark.skipif(
    STRACE is None and os.environ.get("FETCHPOP_REQUIRE_SERVERS") != "1",
    reason="strace not installed (apt-get install strace)",
)


def traced(home: Home, inject: str, *args: str) -> subprocess.CompletedProcess[str]:
    """``fetchpop ARGS`` under strace, with fsync failing as *inject* says."""
    assert STRACE is not None
    return subprocess.run(
        [
            STRACE,
            "-f",
            "-qq",
            "-o",
            "/dev/null",
            "-e",
            "trace=fsync",
            "-e",
            f"inject=fsync:{inject}",
            sys.executable,
            "-m",
            "fetchpop",
            *args,
        ],
        env=home.env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def intents(home: Home) -> int:
    import sqlite3

    db = sqlite3.connect(home.store_path)
    try:
        return int(db.execute("SELECT count(*) FROM intent").fetchone()[0])
    finally:
        db.close()


def test_files_seen_after_a_failed_fsync_are_fsynced_before_they_count(
    home: Home, tmp_path: Path
) -> None:
    mail = tmp_path / "Mail"
    with FakePOP3(Mailbox(MESSAGES)) as server:
        configure(home, server, mail, keep=False)
        # strace counts each thread's calls: the main thread's first two fsyncs
        # make the new seen-store, its third is new/'s, after the three files
        # (fsynced in it and in the fsync threads, two at most each) were
        # renamed into it.
        first = traced(home, "error=EIO:when=3", "sync")
        assert first.returncode == 74, first.stderr
        assert len(maildir_messages(mail)) == 3  # visible, but not known durable
        assert intents(home) == 3 and home.seen_uidls() == set()
        assert server.commands_named("DELE") == []
        # Every fsync fails now: nothing may be recorded, nothing deleted.
        second = traced(home, "error=EIO", "sync")
        assert second.returncode == 74, second.stderr
        assert intents(home) == 3 and home.seen_uidls() == set()
        assert server.commands_named("DELE") == []
        assert len(server.mailbox.messages) == 3
        # The disk is well again: fsynced, recorded, deleted, each once.
        third = home.run("sync")
        assert third.code == 0, third
        assert "3 message(s) delivered by an interrupted run were recorded" in third.stderr
        assert server.mailbox.messages == []
        assert maildir_messages(mail) == sorted(MESSAGES)
