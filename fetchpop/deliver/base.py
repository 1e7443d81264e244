"""The small interface every delivery target implements.

A session asks a target for one :class:`Delivery` per message, streams the
message into it chunk by chunk, then calls ``finish()``; after one or more
finished deliveries it calls ``target.flush()``. Only after ``flush()`` returns
is a finished message durable, and only then may the caller record it in the
seen-store (and later DELE it). ``abort()`` removes every trace of an
unfinished message.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol


class Delivery(Protocol):
    """One message on its way into a target."""

    #: What crash recovery needs to find this message again later (for a
    #: Maildir the unique file name, for an mbox the starting offset); set by
    #: ``Target.begin`` before any byte is written.
    intent: str

    def write(self, chunk: bytes) -> None:
        """Append *chunk* (LF line ends, already dot-unstuffed) to the message."""

    def finish(self) -> None:
        """Complete the message; durable after the target's next ``flush()``."""

    def abort(self) -> None:
        """Undo the message: nothing of it may remain where a mail reader looks."""


class Target(Protocol):
    """A Maildir, an mbox file or an MDA command."""

    def reserve(self, count: int) -> list[str]:
        """Intents for the next *count* deliveries, chosen before anything is written.

        The caller journals them together (one durable transaction for a
        batch) and passes each to ``begin()`` in order. An empty list means
        this target leaves nothing an intent could name ahead (an MDA): the
        caller journals one durably as each message begins.
        """

    def begin(self, uidl: str, intent: str | None = None) -> Delivery:
        """Start delivering one message (*uidl* is for error messages only).

        *intent* is one that ``reserve()`` returned, or None to choose one now.
        """

    def flush(self) -> None:
        """Make every finished delivery durable (fsync files and directories)."""

    def close(self) -> None:
        """Release locks and resources. Unfinished deliveries are aborted."""

    def delivered(self, intent: str) -> bool | None:
        """Crash recovery: is the message begun with *intent* durably here?

        ``None`` means the target cannot tell (an MDA; an mbox whose tail
        needs comparing with the server's copy, see ``confirm``).
        """

    def confirm(self, intent: str, message: Iterable[bytes]) -> bool:
        """After ``delivered()`` said ``None``: compare with the server's copy.

        True when *message* is durably here; False when it is not (and a
        partial copy that is certainly its own has been removed), or the
        target cannot tell (an MDA).
        """

    def damaged(self) -> list[str]:
        """After recovery: lines naming what it found and left alone (an mbox
        region it could not account for), each said once."""
