"""SIGINT/SIGTERM during a sync: the message in flight is completed durably or
abandoned cleanly, the exit status is 130/143, and the next run fetches the rest."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest
from fakepop import FakePOP3, Fault, drip
from runner import Home, account_toml, maildir_messages

MESSAGES = [b"Subject: s%d\n\n" % i + b"line of text\n" * 200 for i in range(5)]


def _config(server: FakePOP3, mail: Path) -> str:
    return account_toml(
        "slow",
        host=server.host,
        port=server.port,
        tls="off",
        user="alice",
        password="secret",
        deliver=f"maildir:{mail}",
        keep=False,
        timeout=10,
    )


def _count(folder: Path) -> int:
    return len(list(folder.iterdir())) if folder.is_dir() else 0


def _wait_for(predicate: object, seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.02)
    raise AssertionError("condition not reached")


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_first_signal_finishes_message_in_flight(tmp_path: Path, signum: int, code: int) -> None:
    home = Home(tmp_path / "home")
    mail = tmp_path / "Mail"
    # Message 2 trickles in over about a second: the signal lands mid-message.
    faults = [Fault(on="RETR 2", action=drip(bytes_per_second=3000, chunk=100), times=1)]
    with FakePOP3(MESSAGES, faults=faults) as server:
        home.write_config(_config(server, mail))
        proc = home.popen("sync")
        # Message 1 is complete in tmp/ (published with its batch) and message
        # 2 is on its way there.
        _wait_for(lambda: _count(mail / "tmp") == 2)
        proc.send_signal(signum)
        _, stderr = proc.communicate(timeout=30)
        assert proc.returncode == code, stderr
        assert f"slow: interrupted by signal {int(signum)}" in stderr
        got = maildir_messages(mail)
        # Message 1 and the one in flight are complete; nothing half-written.
        assert got == sorted(m for m in MESSAGES[:2])
        assert list((mail / "tmp").iterdir()) == []
        assert len(home.seen_uidls()) == 2
        assert server.commands_named("DELE") == []

        again = home.run("sync")
        assert again.code == 0, again
    assert maildir_messages(mail) == sorted(MESSAGES)
    assert server.mailbox.messages == []
    assert server.errors == []


def test_second_signal_abandons_message_cleanly(tmp_path: Path) -> None:
    home = Home(tmp_path / "home")
    mail = tmp_path / "Mail"
    faults = [Fault(on="RETR 1", action=drip(bytes_per_second=1000, chunk=50), times=1)]
    with FakePOP3(MESSAGES, faults=faults) as server:
        home.write_config(_config(server, mail))
        proc = home.popen("sync")
        _wait_for(lambda: any((mail / "tmp").glob("*")) if (mail / "tmp").is_dir() else False)
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=30)
        assert proc.returncode == 143, stderr
        assert maildir_messages(mail) == []
        assert list((mail / "tmp").iterdir()) == []
        assert home.seen_uidls() == set()
        assert home.run("sync").code == 0
    assert maildir_messages(mail) == sorted(MESSAGES)
