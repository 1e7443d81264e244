"""Delivery into a Maildir.

Strategy (https://cr.yp.to/proto/maildir.html): write the message to
``tmp/<unique>``, fsync it, rename it to ``new/<unique>,S=<size>``, and fsync
``new/`` in :meth:`MaildirTarget.flush`. A mail reader never sees a partial
message, and after ``flush()`` a power cut cannot lose the directory entry.
The unique name is the delivery's intent, so crash recovery can look for it in
``new/`` and ``cur/`` (where a reader may have moved it and added ``:2,S``).
``begin()`` only chooses the name; the file is created at the first write,
after the caller has journalled the intent, so a run killed in between leaves
no orphan in ``tmp/`` that no intent names.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import os
import socket
import time
from collections.abc import Iterable
from pathlib import Path
from typing import BinaryIO

from fetchpop.deliver._oserror import fsync_dir, make_dirs, os_error
from fetchpop.errors import FetchpopError, LocalProtocolError

# Maildir's "Q<counter>": deliveries made by this process. Process-wide on
# purpose: two targets on one Maildir in one process must not collide.
_counter = itertools.count(1)


def _hostname() -> str:
    # "/" and ":" have meaning in Maildir names; the convention escapes them.
    return socket.gethostname().replace("/", "\\057").replace(":", "\\072")


def unique_name() -> str:
    """A Maildir unique name: ``<time>.M<usec>P<pid>Q<counter>.<hostname>``."""
    seconds, usec = divmod(time.time_ns() // 1000, 1_000_000)
    return f"{seconds}.M{usec}P{os.getpid()}Q{next(_counter)}.{_hostname()}"


def _is_plain_name(name: str) -> bool:
    return bool(name) and "/" not in name and "\0" not in name and not name.startswith(".")


class MaildirDelivery:
    """One message being written to ``tmp/``; see :class:`fetchpop.deliver.base.Delivery`."""

    def __init__(self, target: MaildirTarget, name: str) -> None:
        self.intent = name
        self._target = target
        self._file: BinaryIO | None = None  # tmp/<name>, created at the first write
        self._created = False
        self._size = 0
        self._state = "open"  # -> "finished" | "aborted"

    def _live_file(self) -> BinaryIO:
        if self._state != "open":
            raise LocalProtocolError("Maildir delivery used after finish() or abort()")
        if self._file is None:
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
            try:
                fd = os.open(self._target.tmp / self.intent, flags, 0o600)
            except OSError as exc:
                # Not ours to remove, if it exists: give up this name, and the message.
                self._state = "aborted"
                self._target.done(self, renamed=False)
                raise self._target.error(exc) from exc
            self._created = True
            self._file = open(fd, "wb")  # noqa: SIM115 (closed by finish or abort)
        return self._file

    def write(self, chunk: bytes) -> None:
        """Append *chunk*; on failure the temporary file is removed and the error raised."""
        file = self._live_file()
        try:
            file.write(chunk)
        except OSError as exc:
            self.abort()
            raise self._target.error(exc) from exc
        self._size += len(chunk)

    def finish(self) -> None:
        """fsync the file and move it into ``new/``; durable after ``target.flush()``."""
        file = self._live_file()
        tmp = self._target.tmp / self.intent
        try:
            file.flush()
            os.fsync(file.fileno())
            file.close()
            self._file = None
            os.rename(tmp, self._target.new / f"{self.intent},S={self._size}")
        except OSError as exc:
            self.abort()
            raise self._target.error(exc) from exc
        self._state = "finished"
        self._target.done(self, renamed=True)

    def abort(self) -> None:
        """Close and remove the temporary file. Does nothing after ``finish()``."""
        if self._state != "open":
            return
        self._state = "aborted"
        if self._file is not None:
            file, self._file = self._file, None
            # Buffered bytes that cannot be written are being discarded anyway.
            with contextlib.suppress(OSError):
                file.close()
        if not self._created:  # nothing to remove (a same-named file is not ours)
            self._target.done(self, renamed=False)
            return
        try:
            os.unlink(self._target.tmp / self.intent)
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise self._target.error(exc) from exc
        self._target.done(self, renamed=False)


class MaildirTarget:
    """A Maildir; ``cur/``, ``new/`` and ``tmp/`` are created (mode 0700) if missing."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.tmp = path / "tmp"
        self.new = path / "new"
        self.cur = path / "cur"
        self._active: set[MaildirDelivery] = set()
        self._unflushed = False
        for sub in (self.tmp, self.new, self.cur):
            try:
                make_dirs(str(sub))
            except OSError as exc:
                raise os_error(exc, f"cannot create Maildir {path}") from exc

    def error(self, exc: OSError) -> FetchpopError:
        """The fetchpop error for *exc* met while writing to this Maildir."""
        return os_error(exc, f"cannot write to Maildir {self.path}")

    def begin(self, uidl: str) -> MaildirDelivery:
        """Choose a unique name free in ``tmp/``: the intent.

        The file (O_EXCL, mode 0600) is created at the first write, so that
        nothing is left in ``tmp/`` by a crash before the caller journals the
        intent.
        """
        for _attempt in range(10):
            name = unique_name()
            try:
                os.lstat(self.tmp / name)
            except FileNotFoundError:
                # ENOENT from a missing tmp/ too: say so now, not at the first write.
                if not self.tmp.is_dir():
                    raise self.error(
                        FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT))
                    ) from None
                delivery = MaildirDelivery(self, name)
                self._active.add(delivery)
                return delivery
            except OSError as exc:
                raise self.error(exc) from exc
            # Only a clock step back or a pid reused within a microsecond gets
            # here; a fresh name (the counter moved on) fixes it.
        raise self.error(FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST)))

    def done(self, delivery: MaildirDelivery, *, renamed: bool) -> None:
        """Called by a delivery when it is finished (*renamed* into new/) or aborted."""
        self._active.discard(delivery)
        self._unflushed = self._unflushed or renamed

    def flush(self) -> None:
        """fsync ``new/`` once for every delivery finished since the last flush."""
        if not self._unflushed:
            return
        try:
            fsync_dir(self.new)
        except OSError as exc:
            raise self.error(exc) from exc
        self._unflushed = False

    def close(self) -> None:
        """Abort unfinished deliveries."""
        for delivery in list(self._active):
            delivery.abort()

    def confirm(self, intent: str, message: Iterable[bytes]) -> bool:
        """``delivered()`` always knows for a Maildir; this only agrees with it."""
        for _ in message:
            pass
        return self.delivered(intent)

    def delivered(self, intent: str) -> bool:
        """Is a message named *intent* in ``new/`` or ``cur/``? Removes a stale ``tmp/`` file.

        A name matches when it is *intent* followed by ``,`` (our ``,S=``), ``:``
        (a reader's flags) or nothing.
        """
        if not _is_plain_name(intent):
            return False
        try:
            for sub in (self.new, self.cur):
                with os.scandir(sub) as entries:
                    for entry in entries:
                        rest = entry.name[len(intent) :]
                        if entry.name.startswith(intent) and rest[:1] in ("", ",", ":"):
                            return True
            # A crash between open and rename leaves the partial file in tmp/.
            (self.tmp / intent).unlink(missing_ok=True)
        except OSError as exc:
            raise self.error(exc) from exc
        return False
