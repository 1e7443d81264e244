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


# -- a signal while nothing is in flight, and the grace of a message in flight ----------

#: A timeout far above what the signal tests wait: a run that ends long
#: before it was ended by the signal, not by a timeout.
LONG_TIMEOUT = 30
#: Seconds the first signal lets a message in flight take (fetchpop.cli.env).
GRACE = 5.0


def _long_config(server: FakePOP3, mail: Path) -> str:
    return account_toml(
        "slow",
        host=server.host,
        port=server.port,
        tls="off",
        user="alice",
        password="secret",
        deliver=f"maildir:{mail}",
        keep=False,
        timeout=LONG_TIMEOUT,
    )


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
@pytest.mark.parametrize("after", [0.5, 6.0], ids=["probing", "reading"])
def test_signal_during_a_greeting_that_never_comes_ends_the_run_at_once(
    tmp_path: Path, signum: int, code: int, after: float
) -> None:
    """Nothing in flight: the run ends at once, not when the read times out.
    (0.5 s: while fetchpop looks whether the port speaks something else;
    6 s: while it reads the greeting.)"""
    from fakepop import stall

    home = Home(tmp_path / "home")
    mail = tmp_path / "Mail"
    with FakePOP3(MESSAGES, faults=[Fault("greeting", stall())]) as server:
        home.write_config(_long_config(server, mail))
        proc = home.popen("sync")
        _wait_for(lambda: len(server.sessions) >= 1)
        time.sleep(after)
        sent = time.monotonic()
        proc.send_signal(signum)
        _, stderr = proc.communicate(timeout=LONG_TIMEOUT + 30)
        took = time.monotonic() - sent
    assert proc.returncode == code, stderr
    assert took < 10, f"{took:.1f} s after the signal\n{stderr}"
    assert f"slow: interrupted by signal {int(signum)}" in stderr
    assert "internal error" not in stderr
    assert "finishing the message" not in stderr  # none was in flight
    assert home.seen_uidls() == set()


@pytest.mark.parametrize(
    ("signum", "code", "again"),
    [(signal.SIGTERM, 143, "a second signal 15"), (signal.SIGINT, 130, "a second Ctrl-C")],
)
def test_first_signal_abandons_a_slow_message_after_the_grace(
    tmp_path: Path, signum: int, code: int, again: str
) -> None:
    """A message far slower than the grace: said at once, abandoned after the
    grace, left on the server unrecorded; what came before it is recorded."""
    home = Home(tmp_path / "home")
    mail = tmp_path / "Mail"
    big = b"Subject: big\n\n" + b"a line of a big slow message\n" * 7000  # ~200 KB
    messages = [MESSAGES[0], big]
    # 10 KB/s: far above any minimum rate, some 20 s in all.
    faults = [Fault(on="RETR 2", action=drip(bytes_per_second=10_000, chunk=500), times=1)]
    with FakePOP3(messages, faults=faults) as server:
        home.write_config(_long_config(server, mail))
        proc = home.popen("sync")
        _wait_for(lambda: _count(mail / "tmp") == 2)
        sent = time.monotonic()
        proc.send_signal(signum)
        _, stderr = proc.communicate(timeout=60)
        took = time.monotonic() - sent
        assert proc.returncode == code, stderr
        lines = [line for line in stderr.splitlines() if "warning" not in line]
        assert lines == [
            f"fetchpop: finishing the message in flight (at most {GRACE:g} s); "
            f"{again} abandons it (it stays on the server, unrecorded)",
            f"fetchpop: slow: interrupted by signal {int(signum)}; the message in flight "
            f"was abandoned after {GRACE:g} s (it stays on the server)",
        ], stderr
        assert "internal error" not in stderr
        assert GRACE - 1 < took < GRACE + 10, f"{took:.1f} s after the signal"
        assert maildir_messages(mail) == [MESSAGES[0]]
        assert list((mail / "tmp").iterdir()) == []
        assert home.seen_uidls() == {"uid-1"}
        assert server.commands_named("DELE") == []
        assert len(server.mailbox.messages) == 2

        rerun = home.run("sync")
        assert rerun.code == 0, rerun
    assert maildir_messages(mail) == sorted(messages)
    assert server.mailbox.messages == []


def test_quiet_says_nothing_at_the_first_signal(tmp_path: Path) -> None:
    home = Home(tmp_path / "home")
    mail = tmp_path / "Mail"
    faults = [Fault(on="RETR 2", action=drip(bytes_per_second=3000, chunk=100), times=1)]
    with FakePOP3(MESSAGES, faults=faults) as server:
        home.write_config(_long_config(server, mail))
        proc = home.popen("-q", "sync")
        _wait_for(lambda: _count(mail / "tmp") == 2)
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 143, stderr
    assert stderr.splitlines() == ["fetchpop: slow: interrupted by signal 15"]


def test_on_a_terminal_the_acknowledgement_wipes_the_progress_line(tmp_path: Path) -> None:
    """With stderr a terminal (a progress line may be showing), the line said
    at the first Ctrl-C starts on a wiped line of its own."""
    import os
    import pty
    import subprocess
    import sys
    import threading

    home = Home(tmp_path / "home")
    mail = tmp_path / "Mail"
    faults = [Fault(on="RETR 2", action=drip(bytes_per_second=3000, chunk=100), times=1)]
    with FakePOP3(MESSAGES, faults=faults) as server:
        home.write_config(_long_config(server, mail))
        leader, follower = pty.openpty()
        proc = subprocess.Popen(
            [sys.executable, "-m", "fetchpop", "sync"],
            env=home.env(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=follower,
        )
        os.close(follower)
        seen = bytearray()

        def read() -> None:
            while True:
                try:
                    data = os.read(leader, 4096)
                except OSError:
                    return
                if not data:
                    return
                seen.extend(data)

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        try:
            _wait_for(lambda: _count(mail / "tmp") == 2)
            proc.send_signal(signal.SIGINT)
            assert proc.wait(timeout=30) == 130
            reader.join(5)
        finally:
            os.close(leader)
    text = bytes(seen).replace(b"\r\n", b"\n")  # the terminal's own line ends
    ack = b"fetchpop: finishing the message in flight (at most 5 s); a second Ctrl-C abandons it"
    assert b"\r" + b" " * 60 + b"\r" + ack in text, text


def test_stop_reason_at_once_unless_in_flight_then_after_the_grace() -> None:
    """Signals' answer to the transport, step by step (no process, no signal sent)."""
    from fetchpop.cli.env import GRACE as grace
    from fetchpop.cli.env import Abandoned, Signals
    from fetchpop.errors import ExitCode, Interrupted

    signals = Signals()
    assert signals.stop_reason(False) is None and signals.stop_reason(True) is None
    signals._handle(signal.SIGTERM, None)
    now = signals.stop_reason(False)
    assert isinstance(now, Interrupted) and not isinstance(now, Abandoned)
    assert now.exit_code == ExitCode.TERMINATED
    assert signals.stop_reason(True) is None  # the message in flight may finish
    signals._first -= grace  # the grace is over
    late = signals.stop_reason(True)
    assert isinstance(late, Abandoned) and late.exit_code == ExitCode.TERMINATED
    assert str(late) == (
        f"interrupted by signal 15; the message in flight was abandoned after {grace:g} s "
        "(it stays on the server)"
    )
    signals._first += grace
    with pytest.raises(Interrupted):
        signals._handle(signal.SIGINT, None)  # a second signal: at once, everywhere
    assert isinstance(signals.stop_reason(True), Interrupted)
