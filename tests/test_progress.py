"""The progress bar of `fetchpop sync` on a terminal: what it shows (count,
octets, rate, ETA, a large message's own progress), that it never leaves
debris (not even after Ctrl-C), and that nothing of it reaches a pipe.

The terminal tests run the real `fetchpop sync` with its stderr on a pty and
replay what it wrote on a small screen model (:class:`Screen`); the others
draw the bar in-process with a clock of their own, so no assertion depends
on how fast the machine is.
"""

from __future__ import annotations

import fcntl
import io
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
from fakepop import FakePOP3, Fault, drip
from runner import Home, account_toml

from fetchpop.cli.env import Environment
from fetchpop.cli.output import StatusLine
from fetchpop.sync import ServerMessage

COLUMNS = 100
LINE = b"line of text\n"
#: Three messages of 26 KiB; the second trickles in over about two seconds.
MESSAGES = [b"Subject: s%d\n\n" % i + LINE * 2000 for i in range(3)]
SUMMARY = "slow: 3 new message(s), 76.2 KiB, 0 deleted, 0 skipped"
#: The bar once the first message is done (without the totals, or with them).
ONE_DONE = r"slow(: 1 message| \[[#-]{20}\] 1/3 messages), "
WARNING = 'fetchpop: slow: warning: tls = "off": password and mail cross the network in clear text'


# -- a terminal, as far as a progress line needs one -----------------------------------


class Screen:
    """What a terminal shows after *output*: carriage return, newline, ESC[K
    (erase to the end of the line), other escape sequences ignored, printable
    characters written at the cursor and wrapped at the right margin."""

    def __init__(self, output: str, columns: int = COLUMNS) -> None:
        self.rows: list[list[str]] = [[]]
        row = col = 0
        i = 0
        while i < len(output):
            ch = output[i]
            if ch == "\x1b":
                match = re.match(r"\x1b\[([0-9;]*)([A-Za-z])", output[i:])
                assert match, repr(output[i : i + 10])
                if match.group(2) == "K":
                    del self.rows[row][col:]
                i += match.end()
                continue
            if ch == "\r":
                col = 0
            elif ch == "\n":
                row += 1
                if row == len(self.rows):
                    self.rows.append([])
            elif ch >= " ":
                if col == columns:
                    row, col = row + 1, 0
                    if row == len(self.rows):
                        self.rows.append([])
                cells = self.rows[row]
                cells.extend(" " * (col + 1 - len(cells)))
                cells[col] = ch
                col += 1
            i += 1

    @property
    def lines(self) -> list[str]:
        """The screen's lines, trailing blanks and the empty last line dropped."""
        out = ["".join(r).rstrip() for r in self.rows]
        while out and not out[-1]:
            out.pop()
        return out


def frames(output: str) -> list[str]:
    """Each text the progress line was drawn with (what follows a carriage return)."""
    texts = (
        re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", part).split("\n")[0].strip()
        for part in output.split("\r")[1:]
    )
    return [t for t in texts if t]


# -- the real command with its stderr on a pty -----------------------------------------

#: Run fetchpop in a session of its own with the pty as its controlling
#: terminal (stdin and stderr), as a shell would: Ctrl-C typed on the pty then
#: sends SIGINT to it, and the terminal echoes ^C where the cursor is.
_BOOT = (
    "import fcntl, os, sys, termios\n"
    "fd = int(sys.argv[1])\n"
    "os.setsid()\n"
    "fcntl.ioctl(fd, termios.TIOCSCTTY, 0)\n"
    "os.dup2(fd, 0); os.dup2(fd, 2); os.close(fd)\n"
    "os.execv(sys.executable, [sys.executable, '-m', 'fetchpop', *sys.argv[2:]])\n"
)


def on_a_terminal(
    home: Home,
    *args: str,
    when: Callable[[bytes], bytes | None] | None = None,
    env: dict[str, str] | None = None,
) -> tuple[int, str, str]:
    """Run ``fetchpop ARGS`` with stdin and stderr on a pty of COLUMNS
    columns: (exit status, what the terminal received, stdout). *when* is
    shown the output so far after each read and may return bytes to type."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, COLUMNS, 0, 0))
    proc = subprocess.Popen(
        [sys.executable, "-c", _BOOT, str(slave), *args],
        env=home.env({"TERM": "xterm", **(env or {})}),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        pass_fds=(slave,),
    )
    os.close(slave)  # the child has its own
    received = b""
    try:
        while True:
            ready, _, _ = select.select([master], [], [], 60)
            assert ready, f"no output for 60 s; so far {received!r}"
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: every copy of the slave side is closed
                break
            if not data:
                break
            received += data
            typed = when(received) if when else None
            if typed:
                os.write(master, typed)
                when = None
    finally:
        os.close(master)
        stdout, _ = proc.communicate(timeout=60)
    return proc.returncode, received.decode("utf-8", "replace"), stdout.decode()


def _config(server: FakePOP3, mail: Path) -> str:
    return account_toml(
        "slow",
        host=server.host,
        port=server.port,
        tls="off",
        user="alice",
        password="secret",
        deliver=f"maildir:{mail}",
        timeout=10,
    )


def _slow_second() -> list[Fault]:
    return [Fault(on="RETR 2", action=drip(bytes_per_second=20000, chunk=1000), times=1)]


def test_the_bar_counts_and_leaves_only_the_summary(tmp_path: Path) -> None:
    home = Home(tmp_path / "home")
    with FakePOP3(MESSAGES, faults=_slow_second()) as server:
        home.write_config(_config(server, tmp_path / "Mail"))
        code, output, stdout = on_a_terminal(home, "-v", "sync")
    assert code == 0, output
    assert stdout == ""
    drawn = frames(output)
    # Messages done, octets, and (while the second message trickles) the rate;
    # the totals too once the Session says them (test_the_bar_shows_totals...).
    assert any(re.fullmatch(ONE_DONE + r".*[\d.]+ KiB/s.*", f) for f in drawn), drawn
    assert all(len(f) < COLUMNS for f in drawn)
    # Wiped before the summary: on the screen, only the lines printed.
    assert Screen(output).lines == [WARNING, SUMMARY]


def test_a_large_message_shows_its_own_progress_on_a_terminal(tmp_path: Path) -> None:
    home = Home(tmp_path / "home")
    big = b"Subject: big\n\n" + LINE * (2 * 1024 * 1024 // len(LINE))  # 2 MiB
    faults = [Fault(on="RETR 1", action=drip(bytes_per_second=4 * 2**20, chunk=2**16), times=1)]
    with FakePOP3([big], faults=faults) as server:
        home.write_config(_config(server, tmp_path / "Mail"))
        code, output, _ = on_a_terminal(home, "sync")
    assert code == 0, output
    drawn = frames(output)
    own = [f for f in drawn if re.search(r", this message [\d.]+(/[\d.]+)? MiB( \(\d+%\))?$", f)]
    assert own, drawn
    assert Screen(output).lines == [WARNING]


def test_ctrl_c_leaves_no_debris(tmp_path: Path) -> None:
    """The terminal echoes ^C after the bar; the line is wiped to its end
    (ESC[K) before anything is printed, so nothing of either is left."""
    home = Home(tmp_path / "home")

    def ctrl_c(received: bytes) -> bytes | None:
        return b"\x03" if re.search(ONE_DONE.encode(), received) else None

    with FakePOP3(MESSAGES, faults=_slow_second()) as server:
        home.write_config(_config(server, tmp_path / "Mail"))
        code, output, _ = on_a_terminal(home, "sync", when=ctrl_c)
    assert code == 130, output
    assert "^C" in output  # the terminal did echo it
    lines = Screen(output).lines
    assert lines[0] == WARNING and lines[-1] == "fetchpop: slow: interrupted by signal 2", lines
    for line in lines:  # (what Ctrl-C is answered with may take two rows of the screen)
        assert "^C" not in line and "KiB" not in line and "[#" not in line, lines


def test_quiet_shows_no_bar_on_a_terminal(tmp_path: Path) -> None:
    home = Home(tmp_path / "home")
    with FakePOP3(MESSAGES) as server:
        home.write_config(_config(server, tmp_path / "Mail"))
        code, output, _ = on_a_terminal(home, "-q", "sync")
    assert code == 0 and output == "", repr(output)


def test_nothing_of_it_reaches_a_pipe(tmp_path: Path) -> None:
    home = Home(tmp_path / "home")
    with FakePOP3(MESSAGES, faults=_slow_second()) as server:
        home.write_config(_config(server, tmp_path / "Mail"))
        result = home.run("-v", "sync")
    assert result.code == 0, result
    assert "\r" not in result.stderr and "\x1b" not in result.stderr
    assert result.stderr.splitlines() == [WARNING, SUMMARY]


def _session_reports_totals() -> bool:
    import inspect

    from fetchpop.sync import run_account

    return "on_plan" in inspect.signature(run_account).parameters


@pytest.mark.skipif(
    not _session_reports_totals(),
    reason="the Session does not yet tell the CLI what it is about to fetch (on_plan)",
)
def test_the_bar_shows_totals_rate_and_eta(tmp_path: Path) -> None:
    home = Home(tmp_path / "home")
    with FakePOP3(MESSAGES, faults=_slow_second()) as server:
        home.write_config(_config(server, tmp_path / "Mail"))
        code, output, _ = on_a_terminal(home, "sync")
    assert code == 0, output
    drawn = frames(output)
    total = sum(len(m) + m.count(b"\n") for m in MESSAGES) / 1024  # LIST counts CRLF
    pattern = (
        rf"slow \[[#-]{{20}}\] 1/3 messages, [\d.]+/{total:.1f} KiB, [\d.]+ KiB/s, ETA 0:0\d"
    )
    assert any(re.fullmatch(pattern, f) for f in drawn), drawn
    assert Screen(output).lines == [WARNING]


# -- the bar drawn in-process, with a clock of our own -----------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _line() -> tuple[StatusLine, Clock, io.StringIO]:
    """A status line on a terminal of 80 columns (a StringIO has no size)."""
    clock = Clock()
    stderr = io.StringIO()
    environment = Environment(stderr=stderr, stderr_isatty=True, environ={"TERM": "xterm"})
    return StatusLine(environment, clock=clock), clock, stderr


def _messages(sizes: Sequence[int]) -> list[ServerMessage]:
    return [ServerMessage(n, f"u{n}", s) for n, s in enumerate(sizes, 1)]


MiB = 1024 * 1024


def test_the_man_page_example_line() -> None:
    """fetchpop(1), DESCRIPTION: 12 messages done, the 13th (40 MiB) on its
    way at 2.1 MiB/s, 48.5 MiB in all."""
    line, clock, _ = _line()
    bar = line.bar("home")
    small = [100 * 1024] * 12
    rest = int(48.5 * MiB) - sum(small) - 40 * MiB
    messages = _messages([*small, 40 * MiB, *[rest // 487] * 486, rest - rest // 487 * 486])
    bar.plan(messages)
    assert bar.total_octets == int(48.5 * MiB)
    for msg in messages[:12]:
        bar(msg.uidl, msg.size or 0)
        bar.finished(msg, msg.size or 0)
    for _ in range(64):  # 2.1 MiB a second, in tenths of a second
        clock.now += 0.1
        bar("u13", int(2.1 * MiB / 10))
    assert bar.render(79) == (
        "home [######--------------] 12/500 messages, 14.6/48.5 MiB, 2.1 MiB/s, ETA 0:16"
    )
    # A wider terminal shows the large message's own progress too.
    assert bar.render(120).endswith(", ETA 0:16, this message 13.4/40.0 MiB (33%)")


def test_a_large_message_shows_its_own_progress() -> None:
    line, clock, _ = _line()
    bar = line.bar("big")
    bar.plan(_messages([50 * MiB - 1000, 1000]))
    for _ in range(10):
        clock.now += 1
        bar("u1", 2 * MiB)
    assert bar.render(200) == (
        "big [########------------] 0/2 messages, 20.0/50.0 MiB, 2.0 MiB/s, ETA 0:15, "
        "this message 20.0/50.0 MiB (40%)"
    )
    # On a narrow terminal the least useful parts go first, and it never wraps.
    assert bar.render(79) == (
        "big [########------------] 0/2 messages, 20.0/50.0 MiB, 2.0 MiB/s, ETA 0:15"
    )
    assert bar.render(60) == "big: 0/2 messages, 20.0/50.0 MiB, 2.0 MiB/s, ETA 0:15"
    assert len(bar.render(30)) == 30


def test_without_totals_it_shows_what_it_knows() -> None:
    line, clock, _ = _line()
    bar = line.bar("home")
    bar("u1", 3000)
    bar.finished(ServerMessage(1, "u1", 3100), 3000)
    clock.now += 1
    bar("u2", 2048)
    assert bar.render(79) == "home: 1 message, 5.0 KiB, 2.0 KiB/s"


def test_lines_go_above_the_bar_and_the_end_wipes_it() -> None:
    line, _, stderr = _line()
    bar = line.bar("home")
    bar.plan(_messages([1000, 1000]))
    bar("u1", 1000)
    with line.above():
        print("home: a line", file=stderr)
    bar.done()
    assert Screen(stderr.getvalue()).lines == ["home: a line"]
    assert stderr.getvalue().endswith("\r\x1b[K")


def test_jobs_share_the_line() -> None:
    line, clock, stderr = _line()
    one, two = line.bar("one"), line.bar("two")
    one.plan(_messages([1000, 1000]))
    two.plan(_messages([4000]))
    clock.now += 1
    two("u1", 2000)
    assert line.render(79) == "one: 0/2, 0.0/2.0 KiB | two: 0/1, 2.0/3.9 KiB"
    one.done()
    assert frames(stderr.getvalue())[-1] == "two [##########----------] 0/1 messages, 2.0/3.9 KiB"
    two.done()
    assert Screen(stderr.getvalue()).lines == []


def test_not_on_a_terminal_nothing_is_written() -> None:
    stderr = io.StringIO()
    line = StatusLine(Environment(stderr=stderr, stderr_isatty=False))
    bar = line.bar("home")
    bar.plan(_messages([1000]))
    bar("u1", 1000)
    bar.done()
    assert not line.enabled and stderr.getvalue() == ""


def test_a_dumb_terminal_gets_spaces_not_escapes() -> None:
    line, _, stderr = _line()
    line._dumb = True
    bar = line.bar("home")
    bar("u1", 100)
    bar.done()
    assert "\x1b" not in stderr.getvalue()
    assert Screen(stderr.getvalue()).lines == []
