"""What commands show besides their results: the progress bar, sizes, the
``-vv`` transcript, the ``-v`` line per message."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from fetchpop.cli.env import Environment
from fetchpop.errors import sanitize

if TYPE_CHECKING:
    from fetchpop.sync import ServerMessage


class Progress:
    """A one-line progress display on a terminal's stderr; nothing elsewhere."""

    def __init__(self, env: Environment, account: str) -> None:
        self.enabled = env.stderr_isatty and not env.quiet
        self.env = env
        self.account = account
        self.octets = 0
        self._last = 0.0

    def __call__(self, uidl: str, octets: int) -> None:
        self.octets += octets
        now = time.monotonic()
        if self.enabled and now - self._last > 0.1:
            self._last = now
            text = f"\r{self.account}: {size(self.octets)} received"
            self.env.stderr.write(text.ljust(60))
            self.env.stderr.flush()

    def clear(self) -> None:
        """Wipe the bar so a line of text can be printed; it comes back on the next chunk."""
        if self.enabled and self._last:
            self.env.stderr.write("\r" + " " * 60 + "\r")
            self.env.stderr.flush()
            self._last = 0.0

    def done(self) -> None:
        if self.enabled and self._last:
            self.env.stderr.write("\r" + " " * 60 + "\r")
            self.env.stderr.flush()


def size(octets: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if octets < 1024 or unit == "GiB":
            return f"{octets:.0f} {unit}" if unit == "B" else f"{octets:.1f} {unit}"
        octets /= 1024
    return f"{octets} B"


def transcript(env: Environment, account: str) -> Callable[[str], None] | None:
    """``-vv``: the protocol transcript, a line at a time, on stderr."""
    if env.verbose < 2 or env.quiet:
        return None
    return lambda line: print(f"{account}: {line}", file=env.stderr, flush=True)


def message_line(
    env: Environment, account: str, progress: Progress
) -> Callable[[ServerMessage, int], None] | None:
    """``-v``: one line per message fetched (above the progress bar, if any)."""
    if env.verbose < 1 or env.quiet:
        return None

    def show(msg: ServerMessage, octets: int) -> None:
        progress.clear()
        env.info(
            f"{account}: fetched message {msg.number} ({size(octets)}), "
            f"UIDL {sanitize(msg.uidl, 80)}"
        )

    return show
