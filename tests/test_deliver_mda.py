"""MDA delivery: real subprocesses that read, refuse, hang and die."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from fetchpop.deliver import open_target, parse_deliver
from fetchpop.deliver.mda import MdaTarget
from fetchpop.errors import (
    DeliveryError,
    LocalProtocolError,
    MessageRejectedError,
    TempFailError,
)

MESSAGE = b"Subject: hi\n\nFrom here\n.\nno final newline"


def python(code: str, *args: str) -> tuple[str, ...]:
    return (sys.executable, "-c", code, *args)


SAVE = python("import sys; open(sys.argv[1], 'wb').write(sys.stdin.buffer.read())", "{out}")


def target_for(command: tuple[str, ...], tmp_path: Path, timeout: float = 30.0) -> MdaTarget:
    return MdaTarget(tuple(word.format(out=tmp_path / "out") for word in command), timeout=timeout)


@pytest.fixture
def save(tmp_path: Path) -> Iterator[MdaTarget]:
    target = target_for(SAVE, tmp_path)
    yield target
    target.close()


def deliver(target: MdaTarget, chunks: list[bytes]) -> None:
    delivery = target.begin("uidl-1")
    assert delivery.intent == ""
    for chunk in chunks:
        delivery.write(chunk)
    delivery.finish()
    target.flush()


def test_exit_0_delivers_the_exact_bytes(save: MdaTarget, tmp_path: Path) -> None:
    deliver(save, [MESSAGE[:5], MESSAGE[5:]])
    assert (tmp_path / "out").read_bytes() == MESSAGE
    assert save.delivered("") is None


def test_big_message_streams_through(save: MdaTarget, tmp_path: Path) -> None:
    chunk = bytes(range(256)) * 256
    deliver(save, [chunk] * 100)
    assert (tmp_path / "out").read_bytes() == chunk * 100


def test_exit_75_is_try_again_later(tmp_path: Path) -> None:
    target = target_for(python("import sys; sys.stdin.read(); sys.exit(75)"), tmp_path)
    with pytest.raises(TempFailError) as info:
        deliver(target, [MESSAGE])
    assert info.value.exit_code == 75
    assert str(info.value) == f"mda {os.path.basename(sys.executable)} exited 75 (try again later)"


def test_exit_1_names_program_status_and_sanitised_stderr(tmp_path: Path) -> None:
    code = (
        "import sys; sys.stdin.read()\n"
        "print('no such user\\n\\x1b[31mbob', file=sys.stderr); sys.exit(1)"
    )
    target = target_for(python(code), tmp_path)
    with pytest.raises(MessageRejectedError) as info:  # it read this message and said no
        deliver(target, [MESSAGE])
    assert info.value.exit_code == 73
    name = os.path.basename(sys.executable)
    assert str(info.value) == f"mda {name} exited with status 1: no such user ?[31mbob"


def test_stderr_flood_does_not_block_and_only_its_tail_is_kept(tmp_path: Path) -> None:
    code = "import sys; sys.stderr.write('x' * 10_000_000 + ' the end'); sys.exit(2)"
    target = target_for(python(code), tmp_path)
    with pytest.raises(DeliveryError) as info:
        deliver(target, [MESSAGE])
    message = str(info.value)
    assert message.endswith("x the end") and len(message) < 2200


def test_killed_by_a_signal(tmp_path: Path) -> None:
    target = target_for(python("import os, signal; os.kill(os.getpid(), signal.SIGTERM)"), tmp_path)
    with pytest.raises(DeliveryError, match=r"was killed by signal SIGTERM$"):
        deliver(target, [MESSAGE])


def test_mda_that_exits_0_without_reading_has_not_delivered(tmp_path: Path) -> None:
    target = target_for(("true",), tmp_path)
    with pytest.raises(DeliveryError, match=r"^mda true exited without reading the whole message$"):
        deliver(target, [b"x" * 65536] * 64)  # more than any pipe holds


def test_mda_that_fails_without_reading_reports_its_status(tmp_path: Path) -> None:
    target = target_for(("false",), tmp_path)
    with pytest.raises(DeliveryError, match=r"^mda false exited with status 1$"):
        deliver(target, [b"x" * 65536] * 64)


def test_mda_that_neither_reads_nor_exits_is_killed(tmp_path: Path) -> None:
    target = target_for(("sleep", "60"), tmp_path, timeout=0.5)
    started = time.monotonic()
    with pytest.raises(DeliveryError, match=r"^mda sleep did not finish within 0.5 s$"):
        deliver(target, [b"x" * 65536] * 64)
    assert time.monotonic() - started < 5


def test_mda_starts_only_with_the_whole_message(tmp_path: Path) -> None:
    # A fetchpop killed mid-message must never hand an MDA half of it.
    target = target_for(SAVE, tmp_path)
    delivery = target.begin("uidl-1")
    delivery.write(MESSAGE[:10])
    time.sleep(0.3)
    assert not (tmp_path / "out").exists()
    delivery.abort()
    delivery.abort()  # twice is harmless
    assert not (tmp_path / "out").exists()
    with pytest.raises(LocalProtocolError):
        delivery.write(b"more")
    target.close()


def test_mda_that_never_exits_is_killed(tmp_path: Path) -> None:
    code = "import sys, time; sys.stdin.read(); time.sleep(60)"
    target = target_for(python(code), tmp_path, timeout=0.5)
    with pytest.raises(DeliveryError, match=r"did not finish within 0.5 s$"):
        deliver(target, [MESSAGE])


def _gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except FileNotFoundError:
        return True


def test_a_killed_mda_takes_its_children_along(tmp_path: Path) -> None:
    code = (
        "import subprocess, sys, time\n"
        "sys.stdin.buffer.read()\n"
        "child = subprocess.Popen(['sleep', '60'])\n"
        "open(sys.argv[1], 'w').write(str(child.pid))\n"
        "time.sleep(60)\n"
    )
    target = target_for(python(code, "{out}"), tmp_path, timeout=1.0)
    with pytest.raises(DeliveryError, match="did not finish within 1 s"):
        deliver(target, [MESSAGE])
    grandchild = int((tmp_path / "out").read_text())
    deadline = time.monotonic() + 5
    while not _gone(grandchild):
        assert time.monotonic() < deadline, "the MDA's child survived"
        time.sleep(0.01)


def test_close_aborts_running_mdas(tmp_path: Path) -> None:
    target = target_for(("sleep", "60"), tmp_path)
    started = time.monotonic()
    target.begin("uidl-1")
    target.begin("uidl-2")
    target.close()
    assert time.monotonic() - started < 5


def test_environment_is_passed_on(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FETCHPOP_TEST_VALUE", "passed on")
    code = (
        "import os, sys; sys.stdin.read()\n"
        "open(sys.argv[1], 'w').write(os.environ['FETCHPOP_TEST_VALUE'])"
    )
    deliver(target_for(python(code, "{out}"), tmp_path), [MESSAGE])
    assert (tmp_path / "out").read_text() == "passed on"


def test_command_is_split_like_a_shell_without_one(tmp_path: Path) -> None:
    out = tmp_path / "o u t"
    spec = parse_deliver(f"mda:sh -c 'cat > \"$1\"' sh '{out}'")
    assert spec.command == ("sh", "-c", 'cat > "$1"', "sh", str(out))
    target = open_target(spec)
    delivery = target.begin("uidl-1")
    delivery.write(MESSAGE)
    delivery.finish()
    target.close()
    assert out.read_bytes() == MESSAGE


def test_missing_program_is_a_delivery_error(tmp_path: Path) -> None:
    target = MdaTarget((str(tmp_path / "no-such-mda"),))
    with pytest.raises(DeliveryError) as info:
        deliver(target, [MESSAGE])
    assert str(info.value) == f"cannot run mda {tmp_path}/no-such-mda: No such file or directory"
    assert info.value.exit_code == 73
    assert not isinstance(info.value, MessageRejectedError)  # the MDA's fault, not the message's


@pytest.mark.parametrize("status", [126, 127])
def test_a_wrapper_that_cannot_run_its_program_is_the_mdas_fault(
    status: int, tmp_path: Path
) -> None:
    target = target_for(python(f"import sys; sys.stdin.read(); sys.exit({status})"), tmp_path)
    with pytest.raises(DeliveryError) as info:
        deliver(target, [MESSAGE])
    assert not isinstance(info.value, MessageRejectedError)


def test_killed_or_hung_is_the_mdas_fault(tmp_path: Path) -> None:
    target = target_for(python("import os, signal; os.kill(os.getpid(), signal.SIGKILL)"), tmp_path)
    with pytest.raises(DeliveryError) as info:
        deliver(target, [MESSAGE])
    assert not isinstance(info.value, MessageRejectedError)
