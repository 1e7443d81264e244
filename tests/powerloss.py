"""A power-loss harness: a loop-mounted ext4, a process frozen at each fsync,
and the block device's image copied at that instant.

* :func:`require_powerloss` skips the calling test (or fails it, with
  ``FETCHPOP_REQUIRE_POWERLOSS=1``) where root, loop devices, ``mkfs.ext4``,
  ``losetup``, ``mount`` or ``strace`` are missing.
* :func:`make_image` makes an empty ext4 image file; :func:`mounted` mounts
  one at a directory through its own loop device, and always unmounts it and
  detaches the device (``losetup -d``) afterwards.
* :func:`step_through` runs a command under ``strace -f`` with every
  durability syscall (fsync, fdatasync, sync_file_range, syncfs, msync)
  followed by an injected SIGSTOP. After each one it waits until every thread
  of the process that made it is stopped (the syscall has returned; the
  process has not yet seen the result), calls ``at_point`` (which copies the
  image), and lets the process go on with SIGCONT. One run thus yields the
  device's state at every durability point, each as if the power had failed
  at that instant.

See tests/test_powerloss.py for what this proves and what it does not.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

#: Syscalls that make something durable; each is a point the power may fail after.
SYNC_CALLS = ("fsync", "fdatasync", "sync_file_range", "syncfs", "msync")
#: ext4 options for a stricter emulation: no periodic journal commit (one
#: only when an fsync forces it), and no flush of a file's data behind the
#: program's back when it is renamed over another (auto_da_alloc).
MOUNT_OPTIONS = "commit=3600,noauto_da_alloc"
STRACE = shutil.which("strace")
_TOOLS = ("mkfs.ext4", "losetup", "mount", "umount", "cp", "cmp")
_PATH = os.environ.get("PATH", os.defpath) + os.pathsep + "/usr/sbin:/sbin"


def _which(tool: str) -> str | None:
    return shutil.which(tool, path=_PATH)


def _tool(tool: str) -> str:
    path = _which(tool)
    assert path is not None, tool
    return path


def _run(*args: str) -> str:
    proc = subprocess.run(
        [_tool(args[0]), *args[1:]], capture_output=True, text=True, timeout=60, check=False
    )
    if proc.returncode != 0:
        raise OSError(f"{' '.join(args)}: exit {proc.returncode}: {proc.stderr.strip()}")
    return proc.stdout


def _missing(scratch: Path) -> str | None:
    """Why this machine cannot run the test, or None."""
    if os.geteuid() != 0:
        return "not root (loop devices and mount need it)"
    tools = [t for t in _TOOLS if _which(t) is None]
    if tools:
        packages = "e2fsprogs util-linux mount coreutils diffutils"
        return f"{', '.join(tools)} not installed (apt-get install {packages})"
    if STRACE is None:
        return "strace not installed (apt-get install strace)"
    image = scratch / "probe.img"
    try:
        make_image(image, 8)
        with mounted(image, scratch / "probe"):
            pass
    except OSError as exc:
        return f"cannot mount an ext4 image through a loop device here ({exc})"
    finally:
        image.unlink(missing_ok=True)
    return None


def require_powerloss(scratch: Path) -> None:
    """Skip the calling test if it cannot run here (fail if FETCHPOP_REQUIRE_POWERLOSS=1)."""
    why = _missing(scratch)
    if why is None:
        return
    import pytest

    if os.environ.get("FETCHPOP_REQUIRE_POWERLOSS") == "1":
        pytest.fail(f"power-loss test: {why}, but FETCHPOP_REQUIRE_POWERLOSS=1", pytrace=False)
    pytest.skip(f"power-loss test: {why}")


def make_image(path: Path, megabytes: int) -> None:
    """An empty ext4 in a sparse file. Its inode tables and journal are
    written now (no lazy init), so no kernel thread writes to it later."""
    with path.open("wb") as f:
        f.truncate(megabytes * 1024 * 1024)
    _run(
        "mkfs.ext4",
        "-q",
        "-F",
        "-E",
        "lazy_itable_init=0,lazy_journal_init=0",
        str(path),
    )


@contextlib.contextmanager
def mounted(image: Path, mountpoint: Path) -> Iterator[Path]:
    """*image* mounted at *mountpoint* through a loop device of its own."""
    mountpoint.mkdir(parents=True, exist_ok=True)
    device = _run("losetup", "--find", "--show", str(image)).strip()
    try:
        _run("mount", "-t", "ext4", "-o", MOUNT_OPTIONS, device, str(mountpoint))
        try:
            yield mountpoint
        finally:
            _unmount(mountpoint)
    finally:
        _run("losetup", "-d", device)


def _unmount(mountpoint: Path) -> None:
    # A process of ours may still be exiting (its files open): retry briefly.
    for attempt in range(50):
        try:
            _run("umount", str(mountpoint))
            return
        except OSError:
            if attempt == 49:
                raise
            time.sleep(0.1)


def copy_image(source: Path, dest: Path, *, check: bool = False) -> None:
    """The image as the loop device has written it so far (sparse, no sync).

    *check*: compare the copy with the source byte for byte afterwards; they
    differ if something wrote to the device while it was copied (the copy
    could then be torn), or if the copy skipped data it took for a hole.
    """
    _run("cp", "--sparse=always", str(source), str(dest))
    if check:
        same = subprocess.run(["cmp", "-s", str(source), str(dest)], timeout=60, check=False)
        assert same.returncode == 0, f"{source} changed while it was copied to {dest}"


@dataclasses.dataclass(frozen=True)
class SyncCall:
    """One durability syscall strace saw: who, which, on what, with what result."""

    tid: int
    name: str
    path: str  # the fd's path (strace -y), or "" for msync
    result: str

    def __str__(self) -> str:
        return f"{self.name}({self.path or '?'}) = {self.result} [tid {self.tid}]"


@dataclasses.dataclass(frozen=True)
class Point:
    """A durability point: the run frozen after *calls* (usually one) had returned."""

    index: int
    calls: tuple[SyncCall, ...]


_LINE = re.compile(r"^(\d+)\s+(.*)$")
_CALL = re.compile(r"^(\w+)\((?:(\d+)<([^>]*)>)?.*?\)\s+=\s+(.+)$")
_UNFINISHED = re.compile(r"^(\w+)\((?:(\d+)<([^>]*)>)?.*<unfinished \.\.\.>$")
_RESUMED = re.compile(r"^<\.\.\. (\w+) resumed>.*\)\s+=\s+(.+)$")


def _tgid(tid: int) -> int | None:
    try:
        for line in Path(f"/proc/{tid}/status").read_text().splitlines():
            if line.startswith("Tgid:"):
                return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        return None
    return None


def _descends_from(pid: int, ancestor: int) -> bool:
    """Whether *ancestor* is *pid*'s parent, or its parent's, and so on."""
    for _ in range(64):
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except (FileNotFoundError, ProcessLookupError):
            return False
        ppid = next(int(x.split()[1]) for x in status.splitlines() if x.startswith("PPid:"))
        if ppid == ancestor:
            return True
        if ppid <= 1:
            return False
        pid = ppid
    return False


def _tasks(tgid: int) -> set[int]:
    try:
        return {int(t) for t in os.listdir(f"/proc/{tgid}/task")}
    except FileNotFoundError:
        return set()


class _Log:
    """strace's output, read as it grows (strace writes each line at once)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._offset = 0
        self._rest = b""
        self._unfinished: dict[int, tuple[str, str]] = {}
        #: Every thread strace reported on: the processes it traced (ours).
        self.tids: set[int] = set()

    def lines(self) -> Iterator[tuple[int, str]]:
        with self.path.open("rb") as f:
            f.seek(self._offset)
            data = f.read()
        self._offset += len(data)
        data = self._rest + data
        *complete, self._rest = data.split(b"\n")
        for raw in complete:
            m = _LINE.match(raw.decode("utf-8", "replace"))
            if m:
                self.tids.add(int(m.group(1)))
                yield int(m.group(1)), m.group(2)

    def call(self, tid: int, text: str) -> SyncCall | None:
        """The durability call *text* completes, if it does."""
        if m := _UNFINISHED.match(text):
            if m.group(1) in SYNC_CALLS:
                self._unfinished[tid] = (m.group(1), m.group(3) or "")
            return None
        if m := _RESUMED.match(text):
            name, path = self._unfinished.pop(tid, (m.group(1), ""))
            return SyncCall(tid, name, path, m.group(2).strip()) if name in SYNC_CALLS else None
        if (m := _CALL.match(text)) and m.group(1) in SYNC_CALLS:
            return SyncCall(tid, m.group(1), m.group(3) or "", m.group(4).strip())
        return None


def step_through(
    argv: list[str],
    env: dict[str, str],
    log: Path,
    at_point: Callable[[Point], None],
    *,
    stall: float = 120.0,
) -> tuple[int, list[Point], str]:
    """Run *argv* under strace, frozen after each durability syscall while
    *at_point* runs; returns (exit status, the points, the command's stderr)."""
    assert STRACE is not None
    calls = ",".join(SYNC_CALLS)
    stderr_path = log.with_suffix(".stderr")
    log.write_bytes(b"")
    with stderr_path.open("wb") as err:
        proc = subprocess.Popen(
            [
                STRACE,
                "-f",
                "-qq",
                "-y",
                "-o",
                str(log),
                "-e",
                f"trace={calls}",
                "-e",
                f"inject={calls}:signal=SIGSTOP",
                *argv,
            ],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
    points: list[Point] = []
    reader = _Log(log)
    try:
        _step(proc, reader, at_point, points, stall)
        code = proc.wait(timeout=stall)
    finally:
        if proc.poll() is None:
            # Something went wrong: end the traced processes (ours: strace
            # started them; by their pids), which may be stopped, then strace.
            for tid in reader.tids:
                tgid = _tgid(tid)
                if tgid is not None and _descends_from(tgid, proc.pid):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(tgid, signal.SIGKILL)
            proc.kill()
            proc.wait(timeout=60)
    return code, points, stderr_path.read_text(errors="replace")


def _step(
    proc: subprocess.Popen[bytes],
    log: _Log,
    at_point: Callable[[Point], None],
    points: list[Point],
    stall: float,
) -> None:
    pending: list[SyncCall] = []
    stopped: set[int] = set()
    deadline = time.monotonic() + stall
    while True:
        ended = proc.poll() is not None
        for tid, text in log.lines():
            deadline = time.monotonic() + stall
            call = log.call(tid, text)
            if call is not None:
                pending.append(call)
            elif text == "--- stopped by SIGSTOP ---":
                stopped.add(tid)
        frozen = _frozen(stopped)
        if frozen is not None and pending:
            point = Point(len(points) + 1, tuple(pending))
            at_point(point)
            points.append(point)
            pending, stopped = [], set()
            os.kill(frozen, signal.SIGCONT)
        elif frozen is not None:  # a stop with no call (cannot happen): go on
            stopped = set()
            os.kill(frozen, signal.SIGCONT)
        if ended:
            return
        assert time.monotonic() < deadline, f"the traced run made no progress for {stall} s"
        time.sleep(0.001)


def _frozen(stopped: set[int]) -> int | None:
    """The process all of whose threads are stopped, if there is one."""
    for tid in stopped:
        tgid = _tgid(tid)
        if tgid is None:
            continue
        tasks = _tasks(tgid)
        if tasks and tasks <= stopped:
            return tgid
    return None
