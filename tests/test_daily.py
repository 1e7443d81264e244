"""Daily use against the real Dovecot: seen mark/forget, the UIDL-reset brake,
max_size and max_messages, poison messages, --every, --jobs."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from dovecot import DovecotUser
from runner import Home, maildir_messages
from test_sync_dovecot import config

from fetchpop.locks import MailboxLock

pytestmark = pytest.mark.dovecot


def _msgs(n: int, tag: str = "m") -> list[bytes]:
    return [b"Subject: %s %d\n\nbody %d\n" % (tag.encode(), i, i) for i in range(n)]


def test_seen_mark_then_only_new_mail(mailbox: DovecotUser, home: Home, tmp_path: Path) -> None:
    dc = mailbox.dovecot
    dc.add_messages(mailbox.user, _msgs(30))
    mail = tmp_path / "Mail"
    home.write_config(config(mailbox, f"maildir:{mail}"))
    dry = home.run("seen", "mark", "--dry-run", "home")
    assert dry.code == 0, dry
    assert "home: 30 message(s) on the server; 30 would be marked as seen" in dry.stdout
    assert home.seen_uidls() == set()
    mark = home.run("seen", "mark", "home")
    assert mark.code == 0, mark
    assert "30 were marked as seen" in mark.stdout
    dc.add_message(mailbox.user, b"Subject: fresh\n\nnew\n")
    assert home.run("sync").code == 0
    assert maildir_messages(mail) == [b"Subject: fresh\n\nnew\n"]
    assert dc.count(mailbox.user) == 31  # nothing deleted


def test_seen_forget_makes_messages_fetchable(
    mailbox: DovecotUser, home: Home, tmp_path: Path
) -> None:
    dc = mailbox.dovecot
    dc.add_messages(mailbox.user, _msgs(3))
    mail = tmp_path / "Mail"
    home.write_config(config(mailbox, f"maildir:{mail}"))
    assert home.run("sync").code == 0
    first = dc.uidls(mailbox.user)[0]
    forget = home.run("seen", "forget", "home", first)
    assert forget.code == 0 and "1 UIDL(s) forgotten" in forget.stdout
    assert home.run("sync").code == 0
    assert len(maildir_messages(mail)) == 4  # the forgotten one came again
    assert "3 UIDL(s) forgotten" in home.run("seen", "forget", "home").stdout


def test_uidl_reset_brake(mailbox: DovecotUser, home: Home, tmp_path: Path) -> None:
    dc = mailbox.dovecot
    dc.add_messages(mailbox.user, _msgs(40))
    mail = tmp_path / "Mail"
    home.write_config(config(mailbox, f"maildir:{mail}"))
    assert home.run("sync").code == 0
    # The provider rebuilds the maildrop: same mail, new UIDLs.
    for path in list((mailbox.maildir / "cur").iterdir()) + list(
        (mailbox.maildir / "new").iterdir()
    ):
        path.unlink()
    for name in ("dovecot-uidlist", "dovecot-uidvalidity"):
        for leftover in mailbox.maildir.glob(name + "*"):
            leftover.unlink()
    dc.add_messages(mailbox.user, _msgs(40, "again"))
    result = home.run("sync")
    assert result.code == 75, result
    assert "the server may have reset its UIDLs" in result.stderr
    assert "fetchpop seen mark home" in result.stderr
    assert "--accept-new-uidls" in result.stderr
    assert len(maildir_messages(mail)) == 40
    accepted = home.run("sync", "--accept-new-uidls")
    assert accepted.code == 0, accepted
    assert len(maildir_messages(mail)) == 80


def test_max_size_skips_and_reports_once(mailbox: DovecotUser, home: Home, tmp_path: Path) -> None:
    dc = mailbox.dovecot
    big = b"Subject: big\n\n" + b"x" * 5000 + b"\n"
    dc.add_messages(mailbox.user, [b"Subject: small\n\nok\n", big])
    mail = tmp_path / "Mail"
    home.write_config(config(mailbox, f"maildir:{mail}", max_size="2k", keep=False))
    first = home.run("sync")
    assert first.code == 0, first
    assert "larger than max_size" in first.stderr
    assert maildir_messages(mail) == [b"Subject: small\n\nok\n"]
    assert dc.count(mailbox.user) == 1  # the big one stays on the server
    second = home.run("sync")
    assert second.code == 0 and second.stderr == "", second  # reported once
    assert "skipped" in home.run("-v", "sync").stderr  # -v still says so


def test_max_messages_per_run(mailbox: DovecotUser, home: Home, tmp_path: Path) -> None:
    mailbox.dovecot.add_messages(mailbox.user, _msgs(7))
    mail = tmp_path / "Mail"
    home.write_config(config(mailbox, f"maildir:{mail}", max_messages=3))
    assert home.run("sync").code == 0
    assert len(maildir_messages(mail)) == 3
    assert home.run("sync").code == 0
    assert len(maildir_messages(mail)) == 6


def test_poison_message_does_not_block_the_rest(
    mailbox: DovecotUser, home: Home, tmp_path: Path
) -> None:
    dc = mailbox.dovecot
    dc.add_messages(mailbox.user, [b"Subject: good 1\n\n1\n", b"Subject: POISON\n\nx\n"])
    dc.add_messages(mailbox.user, [b"Subject: good 2\n\n2\n"])
    out = tmp_path / "out"
    out.mkdir()
    script = tmp_path / "mda.py"
    script.write_text(
        "import sys, os, uuid\n"
        "data = sys.stdin.buffer.read()\n"
        "if b'POISON' in data:\n"
        "    sys.stderr.write('rejected by filter\\n'); sys.exit(1)\n"
        f"open(os.path.join({str(out)!r}, uuid.uuid4().hex), 'wb').write(data)\n"
    )
    home.write_config(config(mailbox, f"mda:{sys.executable} {script}", keep=False))
    for attempt in (1, 2, 3):
        result = home.run("sync")
        assert result.code == 73, result
        assert f"not delivered (attempt {attempt} of 3)" in result.stderr
        assert "rejected by filter" in result.stderr
    assert len(list(out.iterdir())) == 2
    assert dc.count(mailbox.user) == 1  # only the poison message is left
    for _ in range(2):  # said on every run, even with -q, and the run ends with 65
        after = home.run("-q", "sync")
        assert after.code == 65, after
        error, skipped = after.stderr.splitlines()
        assert error == (
            "fetchpop: home: 1 message(s) skipped after failing delivery 3 times; they stay "
            "on the server (`fetchpop seen forget home UIDL...` tries them again)"
        )
        assert skipped.startswith("fetchpop: home: skipped ")
        assert "failed to deliver 3 times (mda " in skipped
    assert dc.count(mailbox.user) == 1
    status = home.run("status")
    assert status.code == 0 and "  skipped " in status.stdout, status
    uidl = status.stdout.split("  skipped ", 1)[1].split(":", 1)[0]
    forget = home.run("seen", "forget", "home", uidl)
    assert forget.stdout.strip().endswith("1 message(s) that failed delivery will be tried again")
    assert "not delivered (attempt 1 of 3)" in home.run("sync").stderr


def test_a_broken_mda_counts_against_no_message(
    mailbox: DovecotUser, home: Home, tmp_path: Path
) -> None:
    """A typo in the MDA's path fails the account, run after run, and never
    makes the messages "poison": once the config is fixed they arrive."""
    dc = mailbox.dovecot
    dc.add_messages(mailbox.user, [b"Subject: one\n\n1\n"])
    out = tmp_path / "out"
    out.mkdir()
    missing = tmp_path / "procmailx"
    home.write_config(config(mailbox, f"mda:{missing}", keep=False))
    for _ in range(4):
        result = home.run("-q", "sync")
        assert result.code == 73, result
        [line] = result.stderr.splitlines()
        assert line.startswith(f"fetchpop: home: cannot run mda {missing}")
    script = tmp_path / "mda.py"
    script.write_text(
        f"import sys\nopen({str(out / 'm')!r}, 'wb').write(sys.stdin.buffer.read())\n"
    )
    home.write_config(config(mailbox, f"mda:{sys.executable} {script}", keep=False))
    fixed = home.run("sync")
    assert fixed.code == 0 and fixed.stderr == "", fixed
    assert (out / "m").read_bytes() == b"Subject: one\n\n1\n"
    assert dc.count(mailbox.user) == 0


def test_jobs_sync_accounts_in_parallel(dovecot: object, home: Home, tmp_path: Path) -> None:
    from dovecot import Dovecot

    assert isinstance(dovecot, Dovecot)
    boxes = [dovecot.new_mailbox("jobs") for _ in range(3)]
    text = ""
    for i, box in enumerate(boxes):
        dovecot.add_messages(box.user, _msgs(5, f"acct{i}"))
        text += config(box, f"maildir:{tmp_path / f'Mail{i}'}", name=f"a{i}")
    home.write_config(text)
    result = home.run("sync", "--jobs", "3", "--json")
    assert result.code == 0, result
    report = json.loads(result.stdout)
    assert sorted(a["fetched"] for a in report["accounts"]) == [5, 5, 5]
    for i in range(3):
        assert len(maildir_messages(tmp_path / f"Mail{i}")) == 5


def test_every_runs_repeatedly_and_stops_on_sigterm(
    mailbox: DovecotUser, home: Home, tmp_path: Path
) -> None:
    dc = mailbox.dovecot
    dc.add_messages(mailbox.user, _msgs(2))
    mail = tmp_path / "Mail"
    home.write_config(config(mailbox, f"maildir:{mail}"))
    proc = home.popen("sync", "--every", "2s")
    try:
        deadline = time.monotonic() + 20
        while len(maildir_messages(mail)) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        dc.add_message(mailbox.user, b"Subject: later\n\nlater\n")
        while len(maildir_messages(mail)) < 3 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert len(maildir_messages(mail)) == 3
        # The mailbox lock is free only between rounds: once we hold it, the
        # process is asleep, and a SIGTERM then is a clean stop.
        lock = MailboxLock(home.state_dir, ("127.0.0.1", dc.port, mailbox.user))
        lock.acquire(wait=10)
    finally:
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=20)
    lock.release()
    assert proc.returncode == 0, stderr
    assert stderr == "", stderr


def test_every_rejects_a_bad_interval(home: Home) -> None:
    result = home.run("sync", "--every", "soon")
    assert result.code == 64
    assert "not an interval" in result.stderr


def test_marked_messages_are_never_deleted(
    mailbox: DovecotUser, home: Home, tmp_path: Path
) -> None:
    dc = mailbox.dovecot
    dc.add_messages(mailbox.user, _msgs(4))
    mail = tmp_path / "Mail"
    home.write_config(config(mailbox, f"maildir:{mail}", keep=False))
    assert home.run("seen", "mark", "home").code == 0
    dc.add_message(mailbox.user, b"Subject: fresh\n\nnew\n")
    check = home.run("check")
    assert "1 to fetch" in check.stdout and "0 to delete" in check.stdout, check
    result = home.run("sync")
    assert result.code == 0, result
    assert maildir_messages(mail) == [b"Subject: fresh\n\nnew\n"]
    # Only the message this store delivered went; the marked ones stay.
    assert dc.count(mailbox.user) == 4
    assert home.run("sync").code == 0
    assert dc.count(mailbox.user) == 4


def test_an_mda_that_hangs_is_bounded_by_mda_timeout(
    mailbox: DovecotUser, home: Home, tmp_path: Path
) -> None:
    dc = mailbox.dovecot
    dc.add_messages(mailbox.user, [b"Subject: one\n\n1\n"])
    script = tmp_path / "mda.py"
    script.write_text("import sys, time\nsys.stdin.buffer.read()\ntime.sleep(600)\n")
    home.write_config(
        config(mailbox, f"mda:{sys.executable} {script}", keep=False, mda_timeout=1)
    )
    started = time.monotonic()
    result = home.run("sync")
    assert time.monotonic() - started < 30
    assert result.code == 73, result
    [line] = result.stderr.splitlines()
    assert line.endswith("did not finish within 1 s")
    assert dc.count(mailbox.user) == 1 and home.seen_uidls() == set()
    again = home.run("-q", "sync")  # the MDA's fault: it counts against no message
    assert again.code == 73 and "skipped" not in again.stderr, again


def test_a_closed_stdout_ends_quietly(home: Home) -> None:
    """`fetchpop accounts | head -1`: no "internal error (BrokenPipeError)"."""
    home.write_config(
        "".join(
            f'[accounts.a{n}]\nhost = "pop{n}.example.org"\nuser = "u"\n'
            f'deliver = "maildir:/tmp/fetchpop-never-{n}"\n'
            for n in range(400)
        )
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "fetchpop", "accounts"],
        env=home.env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.readline()
    proc.stdout.close()  # as head -1 does
    stderr = proc.stderr.read()
    proc.stderr.close()
    assert proc.wait(timeout=60) == 141
    assert stderr == b""


def test_v_is_a_summary_line_not_a_line_per_message(
    mailbox: DovecotUser, home: Home, tmp_path: Path
) -> None:
    """A first sync of many messages: -v says one line for the account (as
    the README and fetchpop(1) promise), -vv a line per message besides."""
    dc = mailbox.dovecot
    dc.add_messages(mailbox.user, _msgs(60))
    home.write_config(config(mailbox, f"maildir:{tmp_path / 'Mail'}"))
    first = home.run("sync", "-v")
    assert first.code == 0, first
    [line] = first.stderr.splitlines()
    assert line.startswith("home: 60 new message(s), ") and line.endswith(" 0 deleted, 0 skipped")
    dc.add_messages(mailbox.user, _msgs(3, "late"))
    second = home.run("-v", "sync", "-v")
    assert second.code == 0, second
    lines = second.stderr.splitlines()
    assert [ln for ln in lines if ln.startswith("home: fetched message ")] == [
        f"home: fetched message {n} (24 B), UIDL {uidl}"
        for n, uidl in zip((61, 62, 63), dc.uidls(mailbox.user)[60:], strict=True)
    ]
    assert lines[-1].startswith("home: 3 new message(s), ")
