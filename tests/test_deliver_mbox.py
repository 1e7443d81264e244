"""mbox delivery: mboxrd bytes, truncation, locking against real other processes."""

from __future__ import annotations

import calendar
import itertools
import mailbox
import os
import re
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from readonly import READ_ONLY, deliver_read_only

from fetchpop.deliver import open_target, parse_deliver
from fetchpop.deliver.mbox import MboxTarget, _Quoter, _sender, split_mboxrd
from fetchpop.errors import DeliveryError, LocalProtocolError, LockedError

TRICKY = (
    b"Return-Path: <bounce@example.org>\n"
    b"From: alice@example.org\n"
    b"Subject: From lines\n"
    b"\n"
    b"From the start\n"
    b">From once quoted\n"
    b">>From twice\n"
    b"From\n"
    b" From indented\n"
    b">>>Fro not quite\n"
    b">Fro"
)
TRICKY_MBOX = (
    b"From bounce@example.org DATE\n"
    b"Return-Path: <bounce@example.org>\n"
    b"From: alice@example.org\n"
    b"Subject: From lines\n"
    b"\n"
    b">From the start\n"
    b">>From once quoted\n"
    b">>>From twice\n"
    b"From\n"
    b" From indented\n"
    b">>>Fro not quite\n"
    b">Fro\n"
    b"\n"
)
_DATE = re.compile(rb"(?m)^(From \S+) [A-Z][a-z]{2} [A-Z][a-z]{2} [ 1-3]\d \d\d:\d\d:\d\d \d{4}$")


def undated(data: bytes) -> bytes:
    """The mbox with each separator's asctime date replaced by DATE."""
    return _DATE.sub(rb"\1 DATE", data)


def deliver(target: MboxTarget, chunks: list[bytes]) -> str:
    delivery = target.begin("uidl-1")
    for chunk in chunks:
        delivery.write(chunk)
    delivery.finish()
    target.flush()
    return delivery.intent


@pytest.fixture
def mbox(tmp_path: Path) -> Iterator[MboxTarget]:
    target = MboxTarget(tmp_path / "mbox", lock_timeout=0.5)
    yield target
    target.close()


def test_tricky_message_in_mboxrd(mbox: MboxTarget) -> None:
    assert deliver(mbox, [TRICKY]) == "0"
    assert undated(mbox.path.read_bytes()) == TRICKY_MBOX


def test_separator_date_is_utc_asctime(mbox: MboxTarget) -> None:
    before = time.time()
    deliver(mbox, [b"x\n"])
    first_line = mbox.path.read_bytes().split(b"\n", 1)[0].decode()
    stamp = calendar.timegm(time.strptime(first_line[len("From MAILER-DAEMON ") :]))
    assert before - 2 <= stamp <= time.time() + 2


@pytest.mark.parametrize("split", range(len(TRICKY) + 1))
def test_any_split_point_gives_the_same_bytes(mbox: MboxTarget, split: int) -> None:
    deliver(mbox, [TRICKY[:split], TRICKY[split:]])
    assert undated(mbox.path.read_bytes()) == TRICKY_MBOX


def test_any_two_split_points_quote_the_same() -> None:
    whole = _Quoter()
    expected = whole.feed(TRICKY) + whole.end()
    for i in range(len(TRICKY) + 1):
        for j in range(i, len(TRICKY) + 1):
            quoter = _Quoter()
            parts = [quoter.feed(part) for part in (TRICKY[:i], TRICKY[i:j], TRICKY[j:])]
            assert b"".join(parts) + quoter.end() == expected, (i, j)


def test_one_byte_chunks(mbox: MboxTarget) -> None:
    deliver(mbox, [TRICKY[i : i + 1] for i in range(len(TRICKY))])
    assert undated(mbox.path.read_bytes()) == TRICKY_MBOX


def test_final_newline_is_added_once_and_a_blank_line_follows(mbox: MboxTarget) -> None:
    deliver(mbox, [b"A: b\n\nno newline"])
    deliver(mbox, [b"A: b\n\nnewline\n"])
    deliver(mbox, [b"A: b\n\ntwo newlines\n\n"])
    deliver(mbox, [])
    assert undated(mbox.path.read_bytes()) == (
        b"From MAILER-DAEMON DATE\nA: b\n\nno newline\n\n"
        b"From MAILER-DAEMON DATE\nA: b\n\nnewline\n\n"
        b"From MAILER-DAEMON DATE\nA: b\n\ntwo newlines\n\n\n"
        b"From MAILER-DAEMON DATE\n\n\n"
    )


@pytest.mark.parametrize(
    ("header", "sender"),
    [
        (b"Return-Path: <a@example.org>\n", b"a@example.org"),
        (b"return-path:a@example.org\n", b"a@example.org"),
        (b"Return-Path:\n\t<folded@example.org>\n", b"folded@example.org"),
        (b"Return-Path: <>\n", b"MAILER-DAEMON"),
        (b"Return-Path: <a b@example.org>\n", b"MAILER-DAEMON"),
        (b"Return-Path: <a\x1b@example.org>\n", b"MAILER-DAEMON"),
        (b"X-Return-Path: <a@example.org>\n", b"MAILER-DAEMON"),
        (b"Return-Path: <first@x>\nReturn-Path: <second@x>\n", b"first@x"),
        (b"", b"MAILER-DAEMON"),
    ],
)
def test_sender_from_return_path(header: bytes, sender: bytes) -> None:
    assert _sender(header) == sender


def test_return_path_in_the_body_is_not_the_sender(mbox: MboxTarget) -> None:
    deliver(mbox, [b"Subject: x\n\nReturn-Path: <body@example.org>\n"])
    deliver(mbox, [b"\nReturn-Path: <body@example.org>\n"])  # empty header block
    assert mbox.path.read_bytes().count(b"From MAILER-DAEMON ") == 2


def test_huge_header_is_streamed_not_held(mbox: MboxTarget) -> None:
    message = b"X-Filler: " + b"y" * 100_000 + b"\nReturn-Path: <late@x>\n\nFrom body\n"
    deliver(mbox, [message[i : i + 1000] for i in range(0, len(message), 1000)])
    data = mbox.path.read_bytes()
    assert data.startswith(b"From MAILER-DAEMON ")
    assert split_mboxrd(data) == [message]


def test_big_message_round_trips(mbox: MboxTarget) -> None:
    body = b"".join(b"From line %d\n>From quoted\n" % i for i in range(100_000))
    message = b"Return-Path: <big@x>\n\n" + body
    deliver(mbox, [message[i : i + 8192] for i in range(0, len(message), 8192)])
    assert split_mboxrd(mbox.path.read_bytes()) == [message]


_PIECES = st.sampled_from(
    [b"From ", b"From", b">", b"\n", b"Fro", b"m ", b"Return-Path: <x@y>\n", b"a", b" "]
)
_MESSAGES = st.lists(_PIECES | st.binary(max_size=8), max_size=30).map(b"".join)


@settings(max_examples=300, deadline=None)
@given(messages=st.lists(_MESSAGES, min_size=1, max_size=4), data=st.data())
def test_round_trip_through_split_mboxrd(messages: list[bytes], data: st.DataObject) -> None:
    """What goes in comes out, with a final newline added where it was missing."""
    with tempfile.TemporaryDirectory() as base:
        target = MboxTarget(Path(base) / "mbox")
        try:
            for message in messages:
                cuts = sorted(data.draw(st.lists(st.integers(0, len(message)), max_size=6)))
                bounds = [0, *cuts, len(message)]
                deliver(target, [message[a:b] for a, b in itertools.pairwise(bounds)])
        finally:
            target.close()
        written = (Path(base) / "mbox").read_bytes()
    expected = [m if m.endswith(b"\n") else m + b"\n" for m in messages]
    assert split_mboxrd(written) == expected


def test_split_mboxrd_of_a_hand_written_file() -> None:
    data = (
        b"junk before\n"
        b"From a@x Sun Nov 22 04:06:12 2026\n"
        b"Subject: 1\n\n>From quoted\n>>From twice\n\n"
        b"From b@x Sun Nov 22 04:06:13 2026\n"
        b"no blank line at the end\n"
    )
    assert split_mboxrd(data) == [
        b"Subject: 1\n\nFrom quoted\n>From twice\n",
        b"no blank line at the end",
    ]
    assert split_mboxrd(b"") == []


def test_python_mailbox_reads_what_we_write(mbox: MboxTarget) -> None:
    deliver(mbox, [TRICKY])
    deliver(mbox, [b"Subject: second\n\nbody\n"])
    box = mailbox.mbox(mbox.path, create=False)
    try:
        assert [m["Subject"] for m in box] == ["From lines", "second"]
    finally:
        box.close()


def test_appends_after_foreign_mail_with_a_blank_line(mbox: MboxTarget) -> None:
    mbox.path.write_bytes(b"From old@x Sat Jan  1 00:00:00 2000\nold without end")
    intent = deliver(mbox, [b"new\n"])
    assert intent == str(len(b"From old@x Sat Jan  1 00:00:00 2000\nold without end"))
    data = mbox.path.read_bytes()
    assert undated(data).endswith(b"old without end\n\nFrom MAILER-DAEMON DATE\nnew\n\n")
    assert split_mboxrd(data) == [b"old without end\n", b"new\n"]


def test_file_and_parents_are_created_private(tmp_path: Path) -> None:
    target = MboxTarget(tmp_path / "a" / "b" / "mbox")
    assert not (tmp_path / "a").exists()  # nothing happens before the first message
    deliver(target, [b"x\n"])
    target.close()
    assert stat.S_IMODE((tmp_path / "a" / "b" / "mbox").stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "a").stat().st_mode) == 0o700
    assert stat.S_IMODE((tmp_path / "a" / "b").stat().st_mode) == 0o700


def test_abort_truncates_back(mbox: MboxTarget) -> None:
    deliver(mbox, [TRICKY])
    before = mbox.path.read_bytes()
    delivery = mbox.begin("uidl-2")
    assert delivery.intent == str(len(before))
    delivery.write(b"Subject: big\n\n" + b"z" * 300_000)
    assert mbox.path.stat().st_size > len(before)  # some of it reached the file
    delivery.abort()
    assert mbox.path.read_bytes() == before
    assert mbox.delivered(delivery.intent) is False
    with pytest.raises(LocalProtocolError):
        delivery.write(b"more")


def test_close_aborts_an_unfinished_message(tmp_path: Path) -> None:
    target = MboxTarget(tmp_path / "mbox")
    deliver(target, [b"kept\n"])
    before = target.path.read_bytes()
    target.begin("uidl-2").write(b"y" * 200_000)
    target.close()
    assert target.path.read_bytes() == before
    assert not Path(f"{target.path}.lock").exists()


def test_one_message_at_a_time(mbox: MboxTarget) -> None:
    mbox.begin("uidl-1")
    with pytest.raises(LocalProtocolError):
        mbox.begin("uidl-2")


def test_delivered_can_only_say_no(mbox: MboxTarget) -> None:
    assert mbox.delivered("0") is False  # no file yet
    intent = deliver(mbox, [b"x\n"])
    assert mbox.delivered(intent) is None  # the sync layer compares the tail
    assert mbox.delivered(str(mbox.path.stat().st_size)) is False
    assert mbox.delivered("garbage") is None


_HOLD_FCNTL = """
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o600)
fcntl.lockf(fd, fcntl.LOCK_EX)
print("locked", flush=True)
sys.stdin.read()
"""

_TRY_FCNTL = """
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDWR)
try:
    fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
except OSError:
    print("busy")
else:
    print("free")
"""


def test_fcntl_lock_held_elsewhere_times_out(mbox: MboxTarget) -> None:
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLD_FCNTL, str(mbox.path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    assert holder.stdin is not None and holder.stdout is not None
    try:
        assert holder.stdout.readline() == b"locked\n"
        started = time.monotonic()
        with pytest.raises(LockedError) as info:
            mbox.begin("uidl-1")
        assert 0.5 <= time.monotonic() - started < 2.0
        assert str(info.value) == f"mbox {mbox.path} is locked by another program"
        assert info.value.exit_code == 75
        assert not Path(f"{mbox.path}.lock").exists()  # our dot-lock was given back
    finally:
        holder.stdin.close()
        holder.stdout.close()
        holder.wait()
    deliver(mbox, [b"after the holder left\n"])
    assert split_mboxrd(mbox.path.read_bytes()) == [b"after the holder left\n"]


def test_both_locks_are_held_until_close(tmp_path: Path) -> None:
    target = MboxTarget(tmp_path / "mbox")
    deliver(target, [b"x\n"])
    lock = tmp_path / "mbox.lock"
    probe = [sys.executable, "-c", _TRY_FCNTL, str(target.path)]
    assert lock.read_bytes() == b"%d\n" % os.getpid()
    assert subprocess.run(probe, capture_output=True).stdout == b"busy\n"
    target.close()
    assert not lock.exists()
    assert subprocess.run(probe, capture_output=True).stdout == b"free\n"


def test_fresh_dot_lock_of_a_live_process_times_out_and_is_left_alone(mbox: MboxTarget) -> None:
    lock = Path(f"{mbox.path}.lock")
    with subprocess.Popen([sys.executable, "-c", "input()"], stdin=subprocess.PIPE) as holder:
        try:
            lock.write_bytes(b"%d\n" % holder.pid)
            with pytest.raises(LockedError):
                mbox.begin("uidl-1")
            assert lock.read_bytes() == b"%d\n" % holder.pid
        finally:
            holder.communicate(b"\n")
    # Without a pid in it, only its age tells.
    lock.write_bytes(b"")
    with pytest.raises(LockedError):
        mbox.begin("uidl-1")
    assert lock.read_bytes() == b""


def test_dot_lock_of_a_dead_process_is_removed_at_once(mbox: MboxTarget) -> None:
    # As a run killed with SIGKILL leaves it: fresh, holding the pid of a process now gone.
    child = [sys.executable, "-c", "import os; print(os.getpid())"]
    dead = subprocess.run(child, capture_output=True, check=True).stdout
    lock = Path(f"{mbox.path}.lock")
    lock.write_bytes(dead)
    deliver(mbox, [b"x\n"])  # not LockedError after lock_timeout
    assert lock.read_bytes() == b"%d\n" % os.getpid()


def test_stale_dot_lock_is_removed(mbox: MboxTarget) -> None:
    lock = Path(f"{mbox.path}.lock")
    lock.write_bytes(b"12345\n")
    old = time.time() - 600
    os.utime(lock, (old, old))
    deliver(mbox, [b"x\n"])
    assert lock.read_bytes() == b"%d\n" % os.getpid()


@pytest.mark.timeout(20)
def test_a_fifo_as_the_dot_lock_cannot_hang_delivery(mbox: MboxTarget) -> None:
    """`mkfifo spool/alice.lock` made the stale-lock check's open() block for ever."""
    lock = Path(f"{mbox.path}.lock")
    os.mkfifo(lock)
    started = time.monotonic()
    with pytest.raises(DeliveryError, match="is not a regular file"):
        deliver(mbox, [b"x\n"])
    assert time.monotonic() - started < 5
    assert stat.S_ISFIFO(os.lstat(lock).st_mode)  # left as it was


def test_a_symlink_as_the_dot_lock_is_refused(mbox: MboxTarget, tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.write_bytes(b"1\n")
    Path(f"{mbox.path}.lock").symlink_to(target)
    with pytest.raises(DeliveryError, match="is a symbolic link"):
        deliver(mbox, [b"x\n"])
    assert target.read_bytes() == b"1\n"


def test_a_directory_is_not_an_mbox(tmp_path: Path) -> None:
    (tmp_path / "mbox").mkdir()
    target = open_target(parse_deliver(f"mbox:{tmp_path}/mbox"))
    with pytest.raises(DeliveryError) as info:
        target.begin("uidl-1")
    assert str(info.value) == f"cannot open mbox {tmp_path}/mbox: Is a directory"
    assert info.value.exit_code == 73
    target.close()


def test_read_only_directory_is_a_delivery_error(tmp_path: Path) -> None:
    (tmp_path / "ro").mkdir()
    out = deliver_read_only(tmp_path / "ro", f"mbox:{tmp_path}/ro/mbox")
    expected = f"DeliveryError 73 cannot open mbox {tmp_path}/ro/mbox: {READ_ONLY}\\n"
    assert re.fullmatch(expected, out), out


def test_a_symlink_planted_in_a_shared_spool_is_refused(tmp_path: Path) -> None:
    """spool/alice -> ~alice/.ssh/authorized_keys, planted by another member of
    the spool's group: the attacker's message must not land in that file."""
    spool = tmp_path / "spool"
    spool.mkdir()
    spool.chmod(0o2775)  # /var/mail: root:mail, group-writable
    keys = tmp_path / "authorized_keys"
    keys.write_bytes(b"ssh-ed25519 AAAA alice\n")
    (spool / "alice").symlink_to(keys)
    target = MboxTarget(spool / "alice", lock_timeout=0.5)
    try:
        with pytest.raises(DeliveryError, match="a symbolic link in a directory others can write"):
            deliver(target, [b"ssh-ed25519 EVIL attacker\n"])
    finally:
        target.close()
    assert keys.read_bytes() == b"ssh-ed25519 AAAA alice\n"


def test_a_symlink_in_a_private_directory_is_followed(tmp_path: Path) -> None:
    real = tmp_path / "real.mbox"
    (tmp_path / "link.mbox").symlink_to(real)
    target = MboxTarget(tmp_path / "link.mbox", lock_timeout=0.5)
    try:
        deliver(target, [b"Subject: x\n\nbody\n"])
    finally:
        target.close()
    assert b"body" in real.read_bytes()


def test_an_mbox_with_a_second_hard_link_is_refused(tmp_path: Path) -> None:
    mbox = tmp_path / "mbox"
    mbox.write_bytes(b"")
    os.link(mbox, tmp_path / "elsewhere")
    target = MboxTarget(mbox, lock_timeout=0.5)
    try:
        with pytest.raises(DeliveryError, match="it has 2 hard links; refusing it"):
            deliver(target, [b"x\n"])
    finally:
        target.close()
    assert mbox.read_bytes() == b""


def test_the_dot_lock_is_never_empty_and_leaves_no_litter(mbox: MboxTarget) -> None:
    """Made whole under a name of our own and linked into place: a run killed
    between create and write can no longer leave an empty FILE.lock (which
    only its age, 5 minutes, could tell stale)."""
    parent = mbox.path.parent
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, check=True
    ).stdout.strip()
    litter = parent / f"{mbox.path.name}.lock.fetchpop-{dead.decode()}"
    litter.write_bytes(dead + b"\n")  # a dead run's, killed between link and unlink
    delivery = mbox.begin("uidl-1")
    lock = Path(f"{mbox.path}.lock")
    assert lock.read_bytes() == b"%d\n" % os.getpid()
    assert os.stat(lock).st_nlink == 1
    delivery.write(b"x\n")
    delivery.finish()
    mbox.flush()
    names = sorted(p.name for p in parent.iterdir())
    assert not litter.exists() and not any(".fetchpop-" in n for n in names), names
