"""Delivery through a mail delivery agent: a command that reads the message on stdin.

Strategy: the message is first spooled to an unlinked temporary file, and the
MDA starts only once the whole message is there, with that file as its stdin.
So a fetchpop killed mid-RETR never hands an MDA half a message (a pipe's
early end of file looks like a complete message to procmail and friends).
One process per message, run without a shell, in its own process group (a
Ctrl-C meant for fetchpop does not cut a delivery short; ``abort()`` kills the
MDA's children too). Exit status 0 means delivered -- the MDA owns durability
from then on -- 75 (EX_TEMPFAIL) means try again later, anything else means
not delivered. An MDA that exits 0 without reading the whole message (the
shared file offset tells) has not delivered it. Nothing blocks for ever:
stderr is drained by a thread that keeps only its tail, and waiting for the
MDA gives up after ``timeout`` seconds.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
from collections.abc import Iterable
from typing import IO

from fetchpop.deliver._oserror import os_error
from fetchpop.deliver._spool import Spool
from fetchpop.errors import (
    DeliveryError,
    FetchpopError,
    LocalProtocolError,
    MessageRejectedError,
    TempFailError,
    sanitize,
)

_EX_TEMPFAIL = 75
_STDERR_TAIL = 2048


class _Tail(threading.Thread):
    """Reads a stream to its end, keeping only its last bytes."""

    def __init__(self, stream: IO[bytes]) -> None:
        super().__init__(name="mda-stderr", daemon=True)
        self._stream = stream
        self._tail = bytearray()

    def run(self) -> None:
        try:
            fd = self._stream.fileno()
            while chunk := os.read(fd, 65536):
                self._tail += chunk
                del self._tail[:-_STDERR_TAIL]
        except OSError:
            pass  # The tail is only for the error message.
        finally:
            self._stream.close()

    def text(self) -> str:
        """The tail, as one printable line (waits briefly for the stream's end)."""
        # A grandchild may hold the pipe open; the tail so far will do then.
        self.join(timeout=5.0)
        words = bytes(self._tail).decode("utf-8", "replace").split()
        return sanitize(" ".join(words), limit=_STDERR_TAIL)


#: What a shell (or env) exits with when the program cannot be run or found.
_CANNOT_RUN = frozenset({126, 127})


class MdaDelivery:
    """One message spooled, then one MDA process; see :class:`fetchpop.deliver.base.Delivery`."""

    def __init__(self, target: MdaTarget, spool: Spool) -> None:
        self.intent = ""  # an MDA leaves no trace we could look for
        self._target = target
        self._spool: Spool | None = spool
        self._proc: subprocess.Popen[bytes] | None = None
        self._state = "open"  # -> "finished" | "aborted"

    def write(self, chunk: bytes) -> None:
        """Spool *chunk*; the MDA sees nothing until ``finish()``."""
        self._check_open()
        assert self._spool is not None
        try:
            self._spool.write(chunk)
        except FetchpopError:
            self.abort()
            raise

    def finish(self) -> None:
        """Run the MDA on the whole message and wait for its verdict.

        Raises :class:`MessageRejectedError` when the MDA read the message and
        failed, :class:`TempFailError` for status 75, and :class:`DeliveryError`
        when the MDA itself did not work (not found, not executable, exit 126
        or 127, killed, timed out).
        """
        self._check_open()
        self._state = "finished"
        spool = self._spool
        assert spool is not None
        target = self._target
        try:
            stdin = spool.rewind()
        except FetchpopError:
            self._close()
            raise
        try:
            self._proc = proc = subprocess.Popen(
                target.command,
                stdin=stdin,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                process_group=0,
            )
        except OSError as exc:
            self._close()
            raise os_error(exc, f"cannot run mda {target.command[0]}") from exc
        assert proc.stderr is not None
        tail = _Tail(proc.stderr)
        tail.start()
        failure = ""
        try:
            status = proc.wait(target.timeout)
        except subprocess.TimeoutExpired:
            failure = f"did not finish within {target.timeout:g} s"
            self._kill()
            status = proc.wait()
        # The MDA shares the spool's file offset: short means it stopped reading.
        read_all = os.lseek(stdin.fileno(), 0, os.SEEK_CUR) >= spool.size
        self._close()
        text = tail.text()
        if failure:
            message = f"mda {target.name} {failure}"
        elif status == 0 and read_all:
            return
        elif status == _EX_TEMPFAIL:
            message = f"mda {target.name} exited 75 (try again later)"
        elif status == 0:
            message = f"mda {target.name} exited without reading the whole message"
        elif status < 0:
            message = f"mda {target.name} was killed by signal {_signal_name(-status)}"
        else:
            message = f"mda {target.name} exited with status {status}"
        if text:
            message += f": {text}"
        if status == _EX_TEMPFAIL and not failure:
            raise TempFailError(message)
        if failure or status < 0 or status in _CANNOT_RUN:
            # Hung, killed, or its program could not be run (a shell or env
            # wrapper's 126/127): the MDA's fault, not this message's.
            raise DeliveryError(message)
        raise MessageRejectedError(message)

    def abort(self) -> None:
        """Drop the spooled message; kill the MDA (and its group) if it runs."""
        if self._state == "aborted":
            return
        self._state = "aborted"
        self._kill()
        if self._proc is not None:
            self._proc.wait()
        self._close()

    def _check_open(self) -> None:
        if self._state != "open":
            raise LocalProtocolError(f"mda delivery used after being {self._state}")

    def _close(self) -> None:
        if self._spool is not None:
            spool, self._spool = self._spool, None
            spool.close()
            self._target.done(self)

    def _kill(self) -> None:
        # Only while not yet reaped: the pid (= group id) cannot have been reused.
        if self._proc is not None and self._proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._proc.pid, signal.SIGKILL)


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return str(number)


class MdaTarget:
    """An MDA command (argv, no shell); each ``begin()`` starts one process."""

    def __init__(self, command: tuple[str, ...], *, timeout: float = 300.0) -> None:
        if not command:
            raise ValueError("the mda command is empty")
        self.command = command
        self.name = os.path.basename(command[0])
        self.timeout = timeout
        self._active: set[MdaDelivery] = set()

    def reserve(self, count: int) -> list[str]:
        """Nothing ahead: an MDA leaves nothing an intent could name."""
        return []

    def begin(self, uidl: str, intent: str | None = None) -> MdaDelivery:
        """Open the spool file ($TMPDIR, unlinked at once) for one message."""
        delivery = MdaDelivery(self, Spool("the mda", "fetchpop-mda-"))
        self._active.add(delivery)
        return delivery

    def done(self, delivery: MdaDelivery) -> None:
        """Called by a delivery when it is finished or aborted."""
        self._active.discard(delivery)

    def flush(self) -> None:
        """Nothing to do: an MDA that exited 0 has delivered durably."""

    def close(self) -> None:
        """Kill any MDA still running."""
        for delivery in list(self._active):
            delivery.abort()

    def delivered(self, intent: str) -> bool | None:
        """An MDA leaves nothing to look for: always ``None``."""
        return None

    def damaged(self) -> list[str]:
        """Recovery leaves nothing behind here to report."""
        return []

    def confirm(self, intent: str, message: Iterable[bytes]) -> bool:
        """An MDA's deliveries cannot be checked: deliver again (at least once)."""
        for _ in message:
            pass
        return False
