"""``after_sync``: a command after a sync that delivered mail (notmuch new).

A real ``fetchpop sync`` against the scripted server; the hook is a real
program that writes what it was given into a file.
"""

from __future__ import annotations

import sys
from pathlib import Path

from fakepop import Mailbox
from runner import Home, maildir_messages
from test_faults import configure, problems, serving, sync

MESSAGES = [b"Subject: %d\n\nbody %d\n" % (n, n) for n in range(1, 4)]

HOOK = """\
import os, sys
with open(sys.argv[1], "a") as out:
    names = ("FETCHPOP_ACCOUNT", "FETCHPOP_NEW", "FETCHPOP_BYTES")
    out.write(" ".join(os.environ[k] for k in names) + "\\n")
print("indexing noise on stdout")
sys.exit(int(sys.argv[2]))
"""


def hooked(home: Home, tmp_path: Path, status: int = 0) -> tuple[str, Path]:
    script = tmp_path / "hook.py"
    script.write_text(HOOK)
    calls = tmp_path / "calls"
    return f"{sys.executable} {script} {calls} {status}", calls


def test_it_runs_once_after_a_sync_that_delivered_with_what_it_delivered(
    home: Home, tmp_path: Path
) -> None:
    mail = tmp_path / "Mail"
    command, calls = hooked(home, tmp_path)
    with serving(Mailbox(MESSAGES, None)) as server:
        configure(home, server, mail, keep=True, after_sync=command)
        first = sync(home, server)
        assert first.code == 0 and problems(first) == [], first
        assert first.stdout == ""  # its output goes nowhere (cron stays quiet)
        size = sum(len(m) for m in maildir_messages(mail))
        assert calls.read_text() == f"home 3 {size}\n"
        again = sync(home, server)  # nothing new: not run
        assert again.code == 0, again
        assert calls.read_text() == f"home 3 {size}\n"


def test_its_failure_is_one_line_even_with_q_and_changes_nothing(
    home: Home, tmp_path: Path
) -> None:
    mail = tmp_path / "Mail"
    command, calls = hooked(home, tmp_path, status=3)
    with serving(Mailbox(MESSAGES, None)) as server:
        configure(home, server, mail, keep=False, after_sync=command)
        result = sync(home, server, "-q")
        assert result.code == 0, result
        (line,) = problems(result)
        assert line.startswith("fetchpop: home: after_sync ") and line.endswith("failed (exit 3)")
        assert len(maildir_messages(mail)) == 3 and server.mailbox.messages == []
        assert calls.read_text().startswith("home 3 ")


def test_a_missing_command_is_said(home: Home, tmp_path: Path) -> None:
    mail = tmp_path / "Mail"
    with serving(Mailbox(MESSAGES, None)) as server:
        configure(home, server, mail, keep=True, after_sync="/nonexistent/notmuch new")
        result = sync(home, server)
        assert result.code == 0, result
        assert problems(result) == [
            "fetchpop: home: after_sync /nonexistent/notmuch could not run: "
            "No such file or directory"
        ]
        assert len(maildir_messages(mail)) == 3
