"""Turn an ``OSError`` met while delivering into the error fetchpop reports.

A full disk or a failing device is a local I/O problem (exit 74) that goes away
by itself or by freeing space; everything else (no permission, read-only file
system, a path component that is not a directory) means the target cannot be
created or written (exit 73) until the user fixes it.
"""

from __future__ import annotations

import errno
import os

from fetchpop.errors import DeliveryError, FetchpopError, LocalIOError

_IO_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EFBIG})


def os_error(exc: OSError, what: str) -> FetchpopError:
    """Return the error to raise for *exc*; *what* says what failed, naming the path.

    For example ``os_error(e, "cannot write to Maildir /x/y")`` gives
    ``LocalIOError("cannot write to Maildir /x/y: No space left on device")``.
    """
    reason = exc.strerror or (os.strerror(exc.errno) if exc.errno else str(exc))
    cls = LocalIOError if exc.errno in _IO_ERRNOS else DeliveryError
    return cls(f"{what}: {reason}")


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """fsync a directory, so the entries made or renamed in it are durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
