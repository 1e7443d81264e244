"""Delivery through a mail delivery agent: a command that reads the message on stdin.

Strategy: one process per message, run without a shell, in its own process
group (a Ctrl-C meant for fetchpop does not cut a delivery short; ``abort()``
kills the MDA's children too). Exit status 0 means delivered -- the MDA owns
durability from then on -- 75 (EX_TEMPFAIL) means try again later, anything
else means not delivered. An MDA that exits before reading the whole message
has not delivered it, whatever its status. Nothing can block for ever: stderr
is drained by a thread that keeps only its tail, and writing to or waiting for
the MDA gives up after ``timeout`` seconds.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import subprocess
import threading
from collections.abc import Iterable
from typing import IO

from fetchpop.deliver._oserror import os_error
from fetchpop.errors import DeliveryError, LocalProtocolError, TempFailError, sanitize

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


class MdaDelivery:
    """One MDA process; see :class:`fetchpop.deliver.base.Delivery`."""

    def __init__(self, target: MdaTarget, proc: subprocess.Popen[bytes], tail: _Tail) -> None:
        self.intent = ""  # an MDA leaves no trace we could look for
        self._target = target
        self._proc = proc
        self._tail = tail
        self._stdin = proc.stdin
        assert self._stdin is not None
        os.set_blocking(self._stdin.fileno(), False)
        self._broken = False  # the MDA closed its stdin early
        self._failure = ""  # why we gave up on the MDA, if we did
        self._state = "open"  # -> "finished" | "aborted"

    def write(self, chunk: bytes) -> None:
        """Pass *chunk* to the MDA; a failure is reported by ``finish()``."""
        self._check_open()
        if self._broken or self._failure or self._stdin is None:
            return
        fd = self._stdin.fileno()
        poller = select.poll()
        poller.register(fd, select.POLLOUT)
        view = memoryview(chunk)
        while view:
            try:
                view = view[os.write(fd, view) :]
            except BlockingIOError:
                if not poller.poll(self._target.timeout * 1000):
                    self._failure = f"did not read its input for {self._target.timeout:g} s"
                    self._kill()
                    return
            except BrokenPipeError:
                self._broken = True
                return

    def finish(self) -> None:
        """Close the MDA's stdin and wait for its verdict.

        Raises :class:`DeliveryError` (or :class:`TempFailError` for status 75)
        when the message was not delivered.
        """
        self._check_open()
        self._state = "finished"
        self._close_stdin()
        try:
            status = self._proc.wait(self._target.timeout)
        except subprocess.TimeoutExpired:
            self._failure = f"did not finish within {self._target.timeout:g} s"
            self._kill()
            status = self._proc.wait()
        tail = self._tail.text()
        self._target.done(self)
        name = self._target.name
        if self._failure:
            message = f"mda {name} {self._failure}"
        elif status == 0 and not self._broken:
            return
        elif status == _EX_TEMPFAIL:
            message = f"mda {name} exited 75 (try again later)"
        elif status == 0:
            message = f"mda {name} exited without reading the whole message"
        elif status < 0:
            message = f"mda {name} was killed by signal {_signal_name(-status)}"
        else:
            message = f"mda {name} exited with status {status}"
        if tail:
            message += f": {tail}"
        if status == _EX_TEMPFAIL and not self._failure:
            raise TempFailError(message)
        raise DeliveryError(message)

    def abort(self) -> None:
        """Kill the MDA (and its process group) and wait for it."""
        if self._state != "open":
            return
        self._state = "aborted"
        self._kill()
        self._close_stdin()
        self._proc.wait()
        self._tail.join(timeout=5.0)
        self._target.done(self)

    def _check_open(self) -> None:
        if self._state != "open":
            raise LocalProtocolError(f"mda delivery used after being {self._state}")

    def _close_stdin(self) -> None:
        if self._stdin is not None:
            stdin, self._stdin = self._stdin, None
            with contextlib.suppress(OSError):
                stdin.close()

    def _kill(self) -> None:
        # Only while not yet reaped: the pid (= group id) cannot have been reused.
        if self._proc.poll() is None:
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

    def begin(self, uidl: str) -> MdaDelivery:
        """Start the MDA with the parent's environment; stdout goes to /dev/null."""
        try:
            proc = subprocess.Popen(
                self.command,
                stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                process_group=0,
            )
        except OSError as exc:
            raise os_error(exc, f"cannot run mda {self.command[0]}") from exc
        assert proc.stderr is not None
        tail = _Tail(proc.stderr)
        tail.start()
        delivery = MdaDelivery(self, proc, tail)
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

    def confirm(self, intent: str, message: Iterable[bytes]) -> bool:
        """An MDA's deliveries cannot be checked: deliver again (at least once)."""
        for _ in message:
            pass
        return False
