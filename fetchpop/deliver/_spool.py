"""A message spooled while it arrives, for the targets that need it whole first.

An MDA reads its standard input from the start, an LMTP or SMTP transaction
should not begin before the message is complete (a run stopped mid-download
must not leave the server half a message), and an IMAP APPEND needs the size
up front. So those targets write each chunk to an unlinked temporary file in
``$TMPDIR`` and read it back in chunks: memory stays bounded whatever the
message's size.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator
from typing import IO

from fetchpop.deliver._oserror import os_error

CHUNK = 64 * 1024


class Spool:
    """An unlinked temporary file holding one message; *what* names the
    target in errors (``cannot spool a message for WHAT``)."""

    def __init__(self, what: str, prefix: str) -> None:
        self.what = what
        self.size = 0
        try:
            self.file: IO[bytes] = tempfile.TemporaryFile(prefix=prefix)  # noqa: SIM115
        except OSError as exc:
            raise os_error(exc, f"cannot spool a message for {what}") from exc

    def write(self, data: bytes) -> None:
        """Append *data*; raises LocalIOError or DeliveryError (not OSError)."""
        try:
            self.file.write(data)
        except OSError as exc:
            raise os_error(exc, f"cannot spool a message for {self.what}") from exc
        self.size += len(data)

    def rewind(self) -> IO[bytes]:
        """The file, flushed and at its start (an MDA's standard input)."""
        try:
            self.file.flush()
            self.file.seek(0)
        except OSError as exc:
            raise self._unreadable(exc) from exc
        return self.file

    def chunks(self, size: int = CHUNK) -> Iterator[bytes]:
        """The message again, from its start, *size* bytes at a time."""
        self.rewind()
        while True:
            try:
                chunk = self.file.read(size)
            except OSError as exc:
                raise self._unreadable(exc) from exc
            if not chunk:
                return
            yield chunk

    def close(self) -> None:
        """Drop the file (it has no name: closing frees it)."""
        with contextlib.suppress(OSError):
            self.file.close()

    def _unreadable(self, exc: OSError) -> Exception:
        return os_error(exc, f"cannot read back the spooled message for {self.what}")
