"""One lock per mailbox, so two runs never download from it at once.

The lock file sits beside the seen-store; its name is a digest of the mailbox
(host, port, user), so nothing from the config or the server becomes a path.
flock(2) locks vanish with the process, so a killed run never leaves a stale lock.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import time
from pathlib import Path

from fetchpop.errors import LocalIOError, LockedError
from fetchpop.paths import make_private_dirs


class MailboxLock:
    """An exclusive lock on one mailbox; a context manager."""

    def __init__(self, directory: Path, mailbox: tuple[str, int, str]) -> None:
        digest = hashlib.sha256("\0".join(map(str, mailbox)).encode()).hexdigest()[:24]
        self.path = directory / f"lock-{digest}"
        self._fd: int | None = None

    def acquire(self, wait: float = 0.0) -> None:
        """Take the lock, waiting up to *wait* seconds; LockedError otherwise."""
        try:
            make_private_dirs(self.path.parent)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise LocalIOError(f"cannot create lock file {self.path}: {exc.strerror}") from exc
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    os.close(fd)
                    raise LockedError("mailbox is being synced by another fetchpop run") from None
                time.sleep(0.1)
        self._fd = fd

    def release(self) -> None:
        """Let go of the lock."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> MailboxLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
