"""Nothing lost, nothing twice: ``fetchpop sync`` SIGKILLed at random moments.

Against the real Dovecot with ``keep = false``, a mailbox of 300 messages of
mixed sizes (some ~100 KB, so kills land mid-message; dot lines, ``From``
lines, no final newline, NUL bytes ...) is synced by a real ``fetchpop sync``
that is SIGKILLed after a seeded random delay, and restarted, again and
again. When a run completes before its kill (exit 0, server empty), a new
round of 300 messages is added, until enough kills have landed; then a last
run must complete. Afterwards every message the server ever held is in the
target exactly once, the target is clean (mbox parses, no live dot-lock left;
Maildir ``tmp/`` empty), the seen-store holds no intent and the server is
empty.

The moments are seeded random delays, measured from the server's greeting
or the first RETR (from the start for one kill in five) so that the start-up
time of Python does not swallow them; they are tuned so that kills land in
every phase:
start-up and connect, login, UIDL/LIST, mid-RETR, between messages
(delivered, not yet recorded), DELE and QUIT. The phase of each kill is read
from the ``-vv`` transcript the killed run left behind. Run with ``-s`` to
see the figures.
"""

from __future__ import annotations

import collections
import dataclasses
import os
import random
import signal
import sqlite3
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest
from corpus import hard_messages
from dovecot import DovecotUser
from runner import Home, maildir_messages
from test_sync_dovecot import config

from fetchpop.deliver.mbox import split_mboxrd

pytestmark = [pytest.mark.dovecot, pytest.mark.slow]

KILLS = 60  # per target
ROUND = 300  # messages added each time a run gets through before its kill
SEED = 20250214
BUDGET = 150.0  # seconds per target before the test gives up
SPAN = 0.5  # seconds after the first RETR within which most kills land

PHASES = (
    "start-up/connect",
    "login",
    "UIDL/LIST",
    "mid-RETR",
    "between messages",
    "DELE",
    "QUIT",
)

_PADDING = b"".join(
    [
        b"x" * 75 + b"\n",
        b".\n",
        b"..two dots\n",
        b"From padding line, quoted in an mbox\n",
        b">From already quoted\n",
        b"y" * 75 + b"\n",
    ]
)


def _round_messages(kind: str, number: int) -> list[bytes]:
    """300 awkward messages, about one in seven padded to ~100 KB; all unique."""
    rng = random.Random(f"{SEED}-{kind}-{number}")
    msgs = hard_messages(ROUND, big_size=0, seed=number + 1)
    out = []
    for i, msg in enumerate(msgs):
        if msg.endswith(b"\n") and rng.random() < 0.15:
            msg += _PADDING * rng.randrange(400, 500)
        # A unique first header: a duplicate cannot hide behind an equal copy.
        out.append(b"X-Crash-Test: %s round %d message %d\n" % (kind.encode(), number, i) + msg)
    return out


def _phase(transcript: str) -> str:
    """Where a run was when it died, from its ``-vv`` transcript."""
    commands = []
    last_reply = ""
    for line in transcript.splitlines():
        _, _, text = line.partition(": ")
        if text.startswith("C: "):
            commands.append(text[3:].split(" ", 1)[0])
        elif text.startswith("S: "):
            last_reply = text[3:]
    if "QUIT" in commands:
        return "QUIT"
    if "DELE" in commands:
        return "DELE"
    if "RETR" in commands:
        # After RETR the transcript shows "+OK ..." when a message starts and
        # "[N octets]" when it ends.
        return "mid-RETR" if last_reply.startswith("+OK") else "between messages"
    if "UIDL" in commands or "LIST" in commands:
        return "UIDL/LIST"
    return "login" if last_reply or commands else "start-up/connect"


def _intents(home: Home) -> dict[int, str]:
    """id -> detail of every intent in the seen-store."""
    if not home.store_path.exists():
        return {}
    db = sqlite3.connect(home.store_path)
    try:
        return {int(i): str(d) for i, d in db.execute("SELECT id, detail FROM intent")}
    finally:
        db.close()


def _delivered_unrecorded(kind: str, dest: Path, intents: dict[int, str], new: set[int]) -> int:
    """How many of the intents *new* name a message that is complete in the target."""
    if kind == "maildir":
        names = [p.name for p in (dest / "new").iterdir()]
        return sum(any(n.startswith(intents[i] + ",") for n in names) for i in new)
    if not new:
        return 0
    data = dest.read_bytes() if dest.exists() else b""
    # A batch's intents name the offset it starts at ("OFFSET lock=..."), and
    # its messages follow each other from there; the last one is complete
    # when the file ends a message.
    tail = data[min(int(intents[i].split()[0]) for i in new) :]
    whole = len(split_mboxrd(tail)) - (0 if tail.endswith(b"\n\n") else 1)
    return min(len(new), max(0, whole))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@dataclasses.dataclass
class Tally:
    kills: int = 0
    phases: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)
    unrecorded: int = 0  # kills that left a delivered but unrecorded message
    completed: int = 0  # runs that finished before their kill
    rounds: int = 0

    def report(self) -> str:
        phases = ", ".join(f"{p} {self.phases[p]}" for p in PHASES)
        return (
            f"{self.kills} kills ({phases}); {self.unrecorded} left a message delivered "
            f"but not recorded; {self.rounds} round(s), {self.completed} run(s) completed"
        )


def _popen(home: Home, log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as err:
        return subprocess.Popen(
            [sys.executable, "-m", "fetchpop", "-vv", "sync"],
            env=home.env(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=err,
        )


def _wait_for(proc: subprocess.Popen[bytes], log: Path, marker: bytes = b"") -> None:
    """Until the transcript shows *marker* (by default: anything, the greeting), or the end."""
    deadline = time.monotonic() + 60
    while proc.poll() is None:
        if marker in log.read_bytes() if marker else log.stat().st_size:
            return
        assert time.monotonic() < deadline, f"no {marker!r} in 60 s"
        time.sleep(0.002)


def _calibrate(home: Home, log: Path) -> tuple[list[float], float]:
    """Seconds from start to the greeting, and (median) from the greeting to the exit.

    Three syncs of the empty mailbox; the machine may be busy with other work.
    """
    to_greeting, after_greeting = [], []
    for _ in range(3):
        start = time.monotonic()
        proc = _popen(home, log)
        _wait_for(proc, log)
        greeting = time.monotonic()
        code = proc.wait(timeout=60)
        assert code == 0, log.read_text()
        to_greeting.append(greeting - start)
        after_greeting.append(time.monotonic() - greeting)
    return to_greeting, statistics.median(after_greeting)


def _unrecorded_on_server(mailbox: DovecotUser, home: Home) -> int:
    return len(set(mailbox.dovecot.uidls(mailbox.user)) - home.seen_uidls())


def _crash_loop(
    kind: str, mailbox: DovecotUser, home: Home, dest: Path, log: Path
) -> tuple[list[bytes], Tally]:
    """Kill and restart syncs until KILLS kills landed; returns what the server held.

    Each run is killed at a seeded random moment: one in five in the second
    half of the time to the greeting (seen-store, locks, TCP and TLS; the
    median of the last runs that got there); of the others, one in four
    within what an empty sync spends after its greeting (login, UIDL/LIST),
    and the rest within SPAN (or what a whole transfer took lately, if less)
    of the first RETR, while messages stream in. A run that has only
    DELE and QUIT left is killed after its first DELE, within 1.5 times what
    an empty sync spends after its greeting, so that those short phases are
    hit too.
    """
    dc = mailbox.dovecot
    rng = random.Random(f"{SEED}-{kind}")
    tally = Tally()
    # An empty mailbox: start-up, TLS, login, UIDL, QUIT.
    greetings, after_greeting = _calibrate(home, log)
    expected: list[bytes] = []
    transfers: list[float] = []  # seconds from the first RETR to the end, of runs not killed
    deadline = time.monotonic() + BUDGET
    need_round = True
    while tally.kills < KILLS:
        assert time.monotonic() < deadline, f"{kind}: out of time; {tally.report()}"
        if need_round:
            dc.add_messages(mailbox.user, _round_messages(kind, tally.rounds))
            expected += dc.server_messages(mailbox.user)
            tally.rounds += 1
            need_round = False
        before = _intents(home)
        only_dele = _unrecorded_on_server(mailbox, home) == 0
        early = rng.random() < 0.2
        retr = None
        proc = _popen(home, log)
        start = time.monotonic()
        if early and not only_dele:
            to_greeting = statistics.median(greetings[-9:])
            when = start + rng.uniform(0.5 * to_greeting, to_greeting)
        else:
            _wait_for(proc, log)
            greetings.append(time.monotonic() - start)
            if only_dele:
                _wait_for(proc, log, b"C: DELE")
                when = time.monotonic() + rng.uniform(0, 1.5 * after_greeting)
            elif rng.random() < 0.25:  # login, UIDL/LIST
                when = time.monotonic() + rng.uniform(0, after_greeting)
            else:
                # Measured from the first RETR, however fast the start-up got,
                # and within what a whole transfer took lately.
                _wait_for(proc, log, b"C: RETR")
                retr = time.monotonic()
                span = min(SPAN, statistics.median(transfers[-5:])) if transfers else SPAN
                when = retr + rng.uniform(0, span)
        try:
            code = proc.wait(timeout=max(0.0, when - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()  # SIGKILL
            code = proc.wait(timeout=60)
        if code == -signal.SIGKILL:
            tally.kills += 1
            tally.phases[_phase(log.read_text(errors="replace"))] += 1
            after = _intents(home)
            if _delivered_unrecorded(kind, dest, after, set(after) - set(before)):
                tally.unrecorded += 1
            continue
        # The run finished before its kill: it must have succeeded.
        assert code == 0, f"{kind}: a run failed on its own (exit {code}):\n{log.read_text()}"
        tally.completed += 1
        if retr is not None:
            transfers.append(time.monotonic() - retr)
        need_round = dc.count(mailbox.user) == 0
    # The last run is not killed: it must complete and empty the server.
    final = home.run("sync", timeout=60)
    assert final.code == 0, f"{kind}: the final run failed: {final}"
    return expected, tally


@pytest.mark.timeout(220)
@pytest.mark.parametrize("kind", ["maildir", "mbox"])
def test_sigkill_at_random_moments(kind: str, mailbox: DovecotUser, tmp_path: Path) -> None:
    home = Home(tmp_path / "home")
    dest = tmp_path / ("Mail" if kind == "maildir" else "inbox.mbox")
    # A dot-lock left behind would make the next run wait this long, then fail.
    extra = {"mbox_lock_timeout": 5} if kind == "mbox" else {}
    home.write_config(config(mailbox, f"{kind}:{dest}", keep=False, **extra))
    log = tmp_path / "stderr.txt"
    started = time.monotonic()

    expected, tally = _crash_loop(kind, mailbox, home, dest, log)

    if kind == "maildir":
        got = maildir_messages(dest)
        leftovers = sorted(p.name for p in (dest / "tmp").iterdir())
    else:
        got = split_mboxrd(dest.read_bytes())
        # mboxrd gives a message without a final newline one.
        expected = [m if m.endswith(b"\n") else m + b"\n" for m in expected]
        # A killed run cannot remove its dot-lock; when the final run had
        # nothing to deliver it never looked at it. It must be seen as stale:
        # it names a process that is gone.
        lock = Path(f"{dest}.lock")
        leftovers = [lock.name] if lock.exists() and _alive(int(lock.read_bytes())) else []
    want, have = collections.Counter(expected), collections.Counter(got)
    surplus = have - want
    duplicates = sum(n for m, n in surplus.items() if m in want)
    strangers = sum(n for m, n in surplus.items() if m not in want)  # partial or mangled
    missing = sum((want - have).values())
    intents = _intents(home)
    on_server = mailbox.dovecot.count(mailbox.user)
    print(
        f"\n{kind}: {tally.kills} kills, {len(expected)} messages, {duplicates} duplicates, "
        f"{missing} missing, {strangers} unexpected; {len(intents)} intents left, "
        f"{on_server} on the server, leftovers {leftovers or 'none'}; "
        f"{time.monotonic() - started:.1f} s\n{kind}: {tally.report()}"
    )
    assert tally.kills >= KILLS
    # Most kills must have hit the transfer, or this test proves little.
    assert tally.phases["mid-RETR"] + tally.phases["between messages"] >= KILLS // 3
    assert len(expected) == ROUND * tally.rounds and len(set(expected)) == len(expected)
    assert duplicates == 0 and missing == 0 and strangers == 0
    assert len(got) == len(expected)
    assert intents == {}
    assert leftovers == []
    assert on_server == 0
    if kind == "mbox":
        data = dest.read_bytes()
        assert data.startswith(b"From ") and data.endswith(b"\n\n")
    else:
        assert list((dest / "cur").iterdir()) == []  # nothing but fetchpop wrote here
