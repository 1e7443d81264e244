"""Power loss at every durability point of the write path: every message exactly once.

The method. Everything ``fetchpop sync`` writes (its $HOME, the XDG config,
state and runtime dirs -- seen-store, lock files, run record --, $TMPDIR and
the target: a Maildir, an mbox, or the files an MDA stores) lives on an ext4
in a file, mounted through a loop device. The POP3 server is the real Dovecot
(tests/dovecot.py), its state off that file system: it is another machine,
and it does not lose power. A mailbox of seven small, awkward messages and
one of about 200 KB is synced (``keep = false``), by a first run (no
seen-store yet, an empty target) or a later one (a seen-store and three
messages from a completed sync), by a ``fetchpop -vv sync`` under ``strace -f``,
which follows every durability syscall (fsync, fdatasync, sync_file_range,
syncfs, msync: SQLite's on its journal, WAL and database, fetchpop's on
files and directories, the MDA's own) with an injected SIGSTOP
(tests/powerloss.py). At each one, once every thread of the process that
made it is stopped -- the syscall has returned, the program has not yet
seen its result --, the loop device's backing file is copied: the block
device as it stood at that instant. So is the Dovecot user's Maildir, the
server's state then (it deletes only at QUIT, and fetchpop makes nothing
durable while it waits for QUIT's answer, so that state is the start state
or what the QUIT left). Then the run goes on (SIGCONT) to the next point: a
power cut at one point ends the story there, so one run serves all points.

For each copy, in turn: the server's state of its instant is put back, the
copy is mounted where the original was (the journal is replayed), and a
normal ``fetchpop -v sync`` runs to completion. It must exit 0 and leave
every message the server had in the target exactly once (Maildir: the files
of new/ and cur/; mbox: split with mboxrd; MDA: the files it stored), no
intent in the seen-store, and nothing on the server. For the MDA, exactly
once cannot be promised when the power fails between the MDA's acceptance
and fetchpop's record (an MDA cannot be asked what it delivered): there a
message must never be lost, and each one delivered twice must have been
announced ("is delivered again: an interrupted run may have handed it to
the MDA already"). A failure names the point, its class, the syscall and
path, and what was wrong (which messages are missing or duplicated, the
recovery's exit status and stderr, intents left).

The points are classified by the path of the syscall's fd and their order
(:meth:`Layout.classify`): the seen-store's creation ("store setup"), an
intent commit (the WAL's fsyncs just before a message's first), the message
file's fsync, the directory's, the record commit (the WAL's fsyncs just
after the target's last), the dot-lock's, the MDA's file and directory
fsyncs, SQLite's checkpoint ("checkpoint", "store db"). Calls that return
together in several threads (the Maildir target's fsync threads) make one
point. Against the tree before "Every intent durable before the first byte"
(9e79fd1) the mbox cases fail (a dot-lock a power cut left empty blocks the
recovery: exit 75, messages left on the server, intents left) and the MDA
cases fail (an intent not yet durable when the MDA took the message: a
duplicate nobody announced); the Maildir cases pass there too.

What this proves. The image copied at a point holds a state that a power
cut at that instant could leave: every write the kernel had sent to the
device (fetchpop's durable writes, and whatever else had reached it), and
nothing it had not sent. Recovery from each such state is correct: nothing
lost, nothing twice (or, for an MDA, announced). The state after syscall N
returned is also one a power cut just before syscall N+1 could leave:
nothing fetchpop does between them is made durable by fetchpop.

What it does not prove. The image can hold MORE than was made durable: the
kernel writes dirty pages back on its own, and one fsync's journal commit
carries other files' metadata along; the states a real power cut could
leave with less on disk are not all tried. To keep that gap small the file
system is mounted with ``commit=3600`` (no periodic journal commit: one
only when an fsync forces it) and ``noauto_da_alloc`` (no data flushed
behind the program's back on a rename over a file), is made without lazy
inode-table and journal initialisation (no kernel thread writes to it
later), and keeps ext4's delayed allocation with data=ordered (data not yet
allocated does not ride along with another file's journal commit). The
flusher writes back only pages older than ``vm.dirty_expire_centisecs``
(30 s by default; printed, not changed, as it is the whole machine's), and
a traced run takes a few seconds. A device's volatile cache reordering
writes, torn sectors, and a device that lies about flushes are not
emulated: the copy holds exactly what the loop device had written, in
order. And the power fails at one point per syscall, after it returned --
not at every instant, not within a syscall --, and only along the path this
mailbox takes (a first run, one batch, no failures); the killed-process
cases in between are tests/test_crash.py's.
"""

from __future__ import annotations

import collections
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from dovecot import DovecotUser
from powerloss import (
    Point,
    copy_image,
    make_image,
    mounted,
    require_powerloss,
    step_through,
)
from runner import Home, maildir_messages
from test_sync_dovecot import config

from fetchpop.deliver.mbox import split_mboxrd

pytestmark = [pytest.mark.dovecot, pytest.mark.slow, pytest.mark.powerloss]

IMAGE_MB = 64

#: A small MDA: stores its stdin Maildir-style (tmp/, fsync, rename into
#: new/, fsync new/) in the directory it is given, and exits 0 only then.
MDA_SCRIPT = """\
import os, sys, time
out = sys.argv[1]
data = sys.stdin.buffer.read()
name = "%d.%d" % (time.time_ns(), os.getpid())
tmp = os.path.join(out, "tmp", name)
fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
view = memoryview(data)
while view:
    view = view[os.write(fd, view):]
os.fsync(fd)
os.close(fd)
os.rename(tmp, os.path.join(out, "new", name))
fd = os.open(os.path.join(out, "new"), os.O_RDONLY)
os.fsync(fd)
os.close(fd)
"""

AGAIN = "is delivered again: an interrupted run may have handed it to the MDA already, which"


def _messages(kind: str) -> list[bytes]:
    """Seven small awkward messages and one of about 200 KB; all unique."""
    bodies = [
        b"Subject: plain\n\nhello\n",
        b"Subject: dots\n\n.\n..two\n.\n",
        b"Subject: from lines\n\nFrom the start\n>From quoted\n>>From twice\n",
        b"Subject: no final newline\n\nthe end",
        b"Subject: empty body\n\n",
        b"Subject: blank lines\n\n\n\n\nFrom \n\n",
        b"Subject: long line\n\n" + b"z" * 5000 + b"\n",
        b"Subject: big\n\n" + b"".join(b"line %06d " % i + b"y" * 60 + b"\n" for i in range(2900)),
    ]
    return [
        b"X-Powerloss: %s message %d\nMessage-ID: <%s.%d@powerloss.test>\n%s"
        % (kind.encode(), i, kind.encode(), i, body)
        for i, body in enumerate(bodies)
    ]


def _as_stored(kind: str, messages: list[bytes]) -> list[bytes]:
    """What the target holds of *messages*: mboxrd gives each a final newline."""
    return [m if m.endswith(b"\n") or kind != "mbox" else m + b"\n" for m in messages]


def _mark(message: bytes) -> str:
    """A message's X-Powerloss header value, to name it in a failure."""
    return message.split(b"\n", 1)[0].split(b": ", 1)[1].decode()


class Layout:
    """Where everything lives on the mounted file system (the same at every mount)."""

    def __init__(self, mnt: Path, kind: str, script: Path) -> None:
        self.mnt = mnt
        self.kind = kind
        self._home: Home | None = None  # made on the mounted file system
        self.tmp = mnt / "tmp"
        self.run_dir = mnt / "run"
        self.mail = mnt / "mail"
        self.dest = {
            "maildir": self.mail / "Maildir",
            "mbox": self.mail / "inbox.mbox",
            "mda": self.mail / "mda",
        }[kind]
        self.script = script

    @property
    def home(self) -> Home:
        if self._home is None:
            self._home = Home(self.mnt / "home")
        return self._home

    def target(self) -> str:
        if self.kind == "mda":
            return f"mda:{sys.executable} -I -S {self.script} {self.dest}"
        return f"{self.kind}:{self.dest}"

    def prepare(self, mailbox: DovecotUser) -> None:
        """The start state: a config, empty dirs; no seen-store yet."""
        for d in (self.home.config_dir, self.tmp, self.run_dir, self.mail):
            d.mkdir(parents=True, exist_ok=True)
        self.run_dir.chmod(0o700)
        if self.kind == "mda":
            for sub in ("tmp", "new"):
                (self.dest / sub).mkdir(parents=True)
        if self.kind == "mbox":  # a dot-lock left behind would make a run wait 30 s
            text = config(mailbox, self.target(), keep=False, mbox_lock_timeout=5)
        else:
            text = config(mailbox, self.target(), keep=False)
        self.home.write_config(text)

    def env(self) -> dict[str, str]:
        return self.home.env({"TMPDIR": str(self.tmp), "XDG_RUNTIME_DIR": str(self.run_dir)})

    def delivered(self) -> list[bytes]:
        """Every message in the target."""
        if self.kind == "maildir":
            return maildir_messages(self.dest)
        if self.kind == "mbox":
            return split_mboxrd(self.dest.read_bytes()) if self.dest.exists() else []
        return sorted(p.read_bytes() for p in (self.dest / "new").iterdir())

    def intents(self) -> list[str]:
        if not self.home.store_path.exists():
            return []
        db = sqlite3.connect(self.home.store_path)
        try:
            return [f"{u} -> {d}" for u, d in db.execute("SELECT uidl, detail FROM intent")]
        finally:
            db.close()

    def classify(self, points: list[Point]) -> list[str]:
        """Each point's class, from its calls' paths and their order.

        SQLite's durable commit is one or more fsyncs: of the WAL, and of its
        directory (and the WAL again) when the WAL is new. The run of these
        just before the message's first fsync is its intent commit; the run
        just after the target's last fsync is the record commit, up to the
        checkpoint (the WAL's fsync before the database's).
        """
        flat = [self._where(c.path) for p in points for c in p.calls]
        store = ("wal", "state dir")
        for i, kind in enumerate(flat):
            if kind in ("target file fsync", "target MDA file fsync"):
                j = i - 1
                while j >= 0 and flat[j] in store:
                    flat[j] = "intent commit"
                    j -= 1
        last = max((i for i, k in enumerate(flat) if k.startswith("target")), default=len(flat))
        j = last + 1
        while j < len(flat) and flat[j] in store:
            checkpoint = j + 1 < len(flat) and flat[j + 1] == "store db"
            flat[j] = "checkpoint" if checkpoint else "record commit"
            j += 1
        rest = {"wal": "store commit", "state dir": "store setup"}
        flat = [rest.get(k, k) for k in flat]
        out = []
        for p in points:
            names, flat = flat[: len(p.calls)], flat[len(p.calls) :]
            out.append(" + ".join(dict.fromkeys(names)))
        return out

    def _where(self, path: str) -> str:
        """What an fsync'd fd was, by its path."""
        if not path:
            return "unknown"
        p = Path(path)
        state = self.home.state_dir
        if p.name.endswith("-wal"):
            return "wal"
        if p == self.home.store_path:
            return "store db"
        if p == state:
            return "state dir"
        if p.parent == state:
            return "store setup"
        return self._target_where(p) or f"other ({path})"

    def _target_where(self, p: Path) -> str | None:
        dest = self.dest
        if self.kind == "maildir":
            if p.parent == dest / "tmp":
                return "target file fsync"
            if p.parent == dest or p == dest:
                return "target dir fsync"
        elif self.kind == "mbox":
            if p == dest:
                return "target file fsync"
            if p == dest.parent:
                return "target dir fsync"
            if p.parent == dest.parent:
                return "target dot-lock fsync"
        elif p.parent.parent == dest:
            return "target MDA file fsync"
        elif p.parent == dest:
            return "target MDA dir fsync"
        return None


def _copy_tree(source: Path, dest: Path) -> None:
    """A copy of a Dovecot user's Maildir, owners, modes and times kept."""
    subprocess.run(["cp", "-a", str(source), str(dest)], check=True, timeout=60)


def _check(
    layout: Layout, expected: list[bytes], result_code: int, stderr: str, uidl_of: dict[bytes, str]
) -> tuple[list[str], int]:
    """What is wrong after a recovery run (nothing: []), and how many
    messages are there twice (for an MDA, announced)."""
    problems = []
    if result_code != 0:
        problems.append(f"the recovery sync exited {result_code}: {stderr.strip()[-2000:]}")
    want = collections.Counter(expected)
    have = collections.Counter(layout.delivered())
    missing = sorted(_mark(m) for m in want - have)
    surplus = have - want
    strangers = [m[:80] for m in surplus if m not in want]
    duplicated = sorted(m for m in surplus if m in want)
    if missing:
        problems.append(f"missing: {', '.join(missing)}")
    if strangers:
        problems.append(f"unexpected (partial or mangled) messages: {strangers}")
    if duplicated:
        announced = [
            m
            for m in duplicated
            if f"message {uidl_of.get(m, 'of the earlier sync')} {AGAIN}" in stderr
        ]
        silent = [m for m in duplicated if m not in announced]
        if layout.kind != "mda":
            problems.append(
                "duplicated: "
                + ", ".join(
                    f"{_mark(m)} x{have[m]} (UIDL {uidl_of.get(m, 'of the earlier sync')})"
                    for m in duplicated
                )
            )
        elif silent:
            problems.append(
                "duplicated without the 'delivered again' line: "
                + ", ".join(
                    f"{_mark(m)} x{have[m]} (UIDL {uidl_of.get(m, 'of the earlier sync')})"
                    for m in silent
                )
            )
    intents = layout.intents()
    if intents:
        problems.append(f"intents left in the seen-store: {intents}")
    return problems, len(duplicated)


@pytest.fixture
def scratch(tmp_path: Path) -> Iterator[Path]:
    """Where the images go: a tmpfs if there is room (an fsync on the loop
    device then costs nothing on the real disk), else *tmp_path*."""
    shm = Path("/dev/shm")
    try:
        room = shutil.disk_usage(shm).free if shm.is_dir() else 0
    except OSError:
        room = 0
    if room < 1024 * 1024 * 1024:
        yield tmp_path
        return
    path = Path(tempfile.mkdtemp(prefix="fetchpop-powerloss-", dir=shm))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.mark.timeout(170)
@pytest.mark.parametrize("start", ["first", "later"])
@pytest.mark.parametrize("kind", ["maildir", "mbox", "mda"])
def test_power_loss_at_every_durability_point(
    kind: str, start: str, mailbox: DovecotUser, tmp_path: Path, scratch: Path
) -> None:
    """*start*: the traced run is the first (no seen-store, an empty target), or
    a later one (a seen-store and three messages from a completed sync)."""
    require_powerloss(tmp_path)
    started = time.monotonic()
    dc = mailbox.dovecot
    script = tmp_path / "mda.py"
    script.write_text(MDA_SCRIPT)
    mnt = tmp_path / "mnt"
    layout = Layout(mnt, kind, script)

    pristine = scratch / "pristine.img"
    make_image(pristine, IMAGE_MB)
    earlier: list[bytes] = []
    with mounted(pristine, mnt):
        layout.prepare(mailbox)
        if start == "later":
            dc.add_messages(mailbox.user, _messages(f"{kind}-earlier")[:3])
            earlier = dc.server_messages(mailbox.user)
            first = subprocess.run(
                [sys.executable, "-m", "fetchpop", "sync"],
                env=layout.env(),
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
            assert first.returncode == 0, first.stderr
            assert dc.count(mailbox.user) == 0
            assert sorted(layout.delivered()) == sorted(_as_stored(kind, earlier))

    dc.add_messages(mailbox.user, _messages(kind))
    served = dc.server_messages(mailbox.user)  # also has Dovecot index them
    uidls = dc.uidls(mailbox.user)
    assert len(served) == len(set(served)) == 8
    expected = _as_stored(kind, earlier + served)
    uidl_of = dict(zip(expected[len(earlier) :], uidls, strict=True))

    # One traced run, frozen at every durability point; the image copied at each.
    work = scratch / "work.img"
    copy_image(pristine, work)
    snaps = scratch / "snaps"
    snaps.mkdir()

    def at_point(point: Point) -> None:
        copy_image(work, snaps / f"{point.index}.img", check=True)
        # And the server as it stood then: the start state, or, once the
        # run's QUIT was answered, what that QUIT left.
        _copy_tree(mailbox.maildir, snaps / f"{point.index}.server")

    argv = [sys.executable, "-m", "fetchpop", "-vv", "sync"]
    with mounted(work, mnt):
        code, points, stderr = step_through(argv, layout.env(), tmp_path / "strace.log", at_point)
        assert code == 0, f"the traced run failed: exit {code}\n{stderr}"
        # Frozen and let go at every point, it must still have done its work.
        assert collections.Counter(layout.delivered()) == collections.Counter(expected)
        assert layout.intents() == []
    traced_for = time.monotonic() - started
    assert dc.count(mailbox.user) == 0  # keep = false: the traced run deleted them

    classes = layout.classify(points)
    tally: collections.Counter[str] = collections.Counter()
    failed: collections.Counter[str] = collections.Counter()
    failures = []
    again = 0  # messages an MDA was given again, and it was said
    duplicates = 0  # messages in the target twice (an MDA's: announced)
    for point, cls in zip(points, classes, strict=True):
        server = snaps / f"{point.index}.server"
        shutil.rmtree(mailbox.maildir)
        _copy_tree(server, mailbox.maildir)
        shutil.rmtree(server)
        snap = snaps / f"{point.index}.img"
        with mounted(snap, mnt):
            done = subprocess.run(
                [sys.executable, "-m", "fetchpop", "-v", "sync"],
                env=layout.env(),
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
            problems, twice = _check(layout, expected, done.returncode, done.stderr, uidl_of)
            again += done.stderr.count(AGAIN)
            duplicates += twice
        if dc.count(mailbox.user) != 0:
            problems.append(f"{dc.count(mailbox.user)} message(s) left on the server")
        snap.unlink()
        tally[cls] += 1
        if problems:
            failed[cls] += 1
            calls = "; ".join(str(c) for c in point.calls)
            failures.append(
                f"point {point.index} [{cls}] after {calls}:\n    " + "\n    ".join(problems)
            )

    expire = Path("/proc/sys/vm/dirty_expire_centisecs").read_text().strip()
    summary = ", ".join(f"{c} {tally[c] - failed[c]}/{tally[c]}" for c in tally)
    print(
        f"\n{kind}, {start} run: {len(points)} durability points, passed per class: {summary}; "
        f"traced run and copies {traced_for:.1f} s, all {time.monotonic() - started:.1f} s "
        f"(vm.dirty_expire_centisecs {expire}); {again} announced re-deliveries, "
        f"{duplicates} duplicates in the target"
    )
    print(
        f"{kind}, {start} run: points "
        + ", ".join(f"{p.index} {c}" for p, c in zip(points, classes, strict=True))
    )
    for failure in failures:
        print(f"{kind}, {start} run: FAILED {failure}")
    target = "target MDA" if kind == "mda" else "target"
    for cls in ("intent commit", f"{target} file fsync", f"{target} dir fsync", "record commit"):
        assert any(cls in c for c in classes), f"{kind}: no {cls} point among {classes}"
    assert not failures, (
        f"{kind}, {start} run: a power cut at {len(failures)} of {len(points)} points "
        + ("went wrong:\n" + "\n".join(failures))
    )
