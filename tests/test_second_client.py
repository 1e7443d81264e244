"""Another device deletes messages while fetchpop's session is running.

Dovecot does not lock a POP3 maildrop by default (``pop3_lock_session =
no``), so a phone or a second fetchpop can expunge messages that
fetchpop's session has already listed. fetchpop must deliver every message
that is still there exactly once, say which ones vanished, never DELE what
it did not deliver, and leave the store right for the next run.

The moment is made exact with a real MDA that holds the first message
until the test says go: by then fetchpop has listed the maildrop, and the
second client (Python's poplib, a real POP3 session on the same Dovecot)
deletes two later messages and QUITs. The messages are large, so that the
server, which sends the pipelined RETRs only as fast as fetchpop reads, has
not read those two yet.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest
from dovecot import DovecotUser
from runner import Home
from test_sync_dovecot import config

pytestmark = pytest.mark.dovecot

MDA = """\
import os, sys, time
out, gate = sys.argv[1], sys.argv[2]
data = sys.stdin.buffer.read()
if not os.path.exists(gate + ".started"):
    open(gate + ".started", "w").close()
    while not os.path.exists(gate):
        time.sleep(0.02)
n = len(os.listdir(out))
with open(os.path.join(out, "%04d" % n), "wb") as f:
    f.write(data)
    f.flush()
    os.fsync(f.fileno())
"""


def _wait_for(path: Path, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.02)


@pytest.mark.parametrize("keep", [True, False])
def test_messages_deleted_by_another_client_mid_session(
    mailbox: DovecotUser, home: Home, tmp_path: Path, keep: bool
) -> None:
    dc, user = mailbox.dovecot, mailbox.user
    # 3 MB each: the server streams the pipelined RETRs only as fast as
    # fetchpop reads, so while message 1 is held, 5 and 6 are not yet read.
    big = b"".join(b"%07d a line of the body, long enough\n" % i for i in range(80000))
    raws = [b"Message-ID: <%d@example.org>\nSubject: m%d\n\n" % (n, n) + big for n in range(8)]
    dc.add_messages(user, raws)
    served = dc.server_messages(user)
    uidls = dc.uidls(user)
    out, gate = tmp_path / "out", tmp_path / "go"
    out.mkdir()
    script = tmp_path / "mda.py"
    script.write_text(MDA)
    home.write_config(config(mailbox, f"mda:{sys.executable} {script} {out} {gate}", keep=keep))

    run = home.popen("sync")
    _wait_for(Path(f"{gate}.started"))  # fetchpop listed all 8 and is in message 1
    with dc.pop3(user) as other:  # the other device: deletes messages 5 and 6
        other.dele(5)
        other.dele(6)
    gate.touch()
    stdout, stderr = run.communicate(timeout=120)

    assert run.returncode == 0, (stdout, stderr)
    for uidl in (uidls[4], uidls[5]):
        assert f"message {uidl} vanished before it could be fetched" in stderr
    got = sorted(p.read_bytes() for p in out.iterdir())
    expected = sorted(m for i, m in enumerate(served) if i not in (4, 5))
    assert got == expected  # every message still there, exactly once
    left = dc.uidls(user)
    if keep:
        assert left == [u for i, u in enumerate(uidls) if i not in (4, 5)]
    else:
        assert left == []  # the six delivered, deleted; nothing else was there

    again = home.run("sync")
    assert again.code == 0, again
    assert again.stderr == ""
    assert sorted(p.read_bytes() for p in out.iterdir()) == expected  # nothing twice
