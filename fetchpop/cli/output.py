"""What commands show besides their results: the progress bar, sizes, the
``-vv`` transcript and line per message.

The output levels (fetchpop(1), OPTIONS):

* none: problems only (one line each), and the progress bar on a terminal;
* ``-v``: also a summary line per account, notes and skipped messages;
* ``-vv``: also a line per message fetched and the protocol transcript;
* ``-q``: problems only, no warnings and no progress bar.
"""

from __future__ import annotations

import collections
import contextlib
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING

from fetchpop.cli.env import Environment
from fetchpop.errors import sanitize

if TYPE_CHECKING:
    from fetchpop.sync import ServerMessage

#: Levels of ``-v``.
SUMMARY = 1
PER_MESSAGE = 2
TRANSCRIPT = 2

#: Redraw at most this often (seconds).
REDRAW = 0.1
#: A message at least this large shows its own progress.
BIG_MESSAGE = 1024 * 1024
#: The rate is measured over about this many seconds.
RATE_WINDOW = 5.0
#: Erase from the cursor to the end of the line (ECMA-48 EL).
ERASE = "\x1b[K"


class StatusLine:
    """The one line at the foot of a terminal's stderr that the progress bars
    share (one bar per account; with ``--jobs`` several, side by side).

    Nothing is written when stderr is not a terminal, or with ``-q``. The line
    is drawn as ``\\r`` + text (never wider than the terminal, so it never
    wraps) + ESC[K, and wiped as ``\\r`` ESC[K, so nothing is left of it: not
    a longer earlier text, nor a ``^C`` the terminal echoed after it. Lines
    printed meanwhile go above it (:meth:`above`).
    """

    def __init__(self, env: Environment, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.env = env
        self.enabled = env.stderr_isatty and not env.quiet
        self.clock = clock
        self.bars: list[ProgressBar] = []
        self._lock = threading.RLock()
        self._shown = False
        self._drawn_at: float | None = None
        self._dumb = env.environ.get("TERM", "") in ("", "dumb")

    def bar(self, account: str) -> ProgressBar:
        """A new bar for *account* on this line."""
        bar = ProgressBar(self, account)
        with self._lock:
            self.bars.append(bar)
        return bar

    def width(self) -> int:
        """The terminal's width (80 when it cannot be told)."""
        try:
            columns = os.get_terminal_size(self.env.stderr.fileno()).columns
        except (AttributeError, ValueError, OSError):
            columns = 0
        return columns if columns >= 20 else 80

    def render(self, width: int) -> str:
        """The text of the line: every active bar, in the order they started."""
        active = [b for b in self.bars if b.active]
        if not active:
            return ""
        if len(active) == 1:
            return active[0].render(width)
        each = max(10, (width - 3 * (len(active) - 1)) // len(active))
        return fit(" | ".join(b.render(each, compact=True) for b in active), width)

    def update(self, *, force: bool = False) -> None:
        """Redraw, at most every :data:`REDRAW` seconds unless *force*."""
        if not self.enabled:
            return
        with self._lock:
            now = self.clock()
            if not force and self._drawn_at is not None and now - self._drawn_at < REDRAW:
                return
            self._drawn_at = now
            width = self.width()
            text = self.render(width - 1)  # the last column would wrap on some terminals
            if not text:
                self._wipe()
                return
            if self._dumb:
                self._write("\r" + text.ljust(width - 1))
            else:
                self._write("\r" + text + ERASE)
            self._shown = True

    def clear(self) -> None:
        """Wipe the line (it comes back with the next update)."""
        with self._lock:
            self._wipe()
            self._drawn_at = None

    @contextlib.contextmanager
    def above(self) -> Iterator[None]:
        """Print lines above the bar: wiped first, drawn again after. Held
        by one thread at a time, bar or not: an account's lines stay together,
        and never run into another's (``--jobs`` under cron)."""
        if not self.enabled:
            with self._lock:
                yield
            return
        with self._lock:
            self._wipe()
            try:
                yield
            finally:
                self.update(force=True)

    def _wipe(self) -> None:
        if self._shown:
            self._write("\r" + " " * (self.width() - 1) + "\r" if self._dumb else "\r" + ERASE)
            self._shown = False

    def _write(self, text: str) -> None:
        self.env.stderr.write(text)
        self.env.stderr.flush()


class ProgressBar:
    """One account's progress: messages and octets done out of the totals
    (once :meth:`start` has been told them), the rate, the time left, and
    the progress of a large message.

    The Session calls it per chunk (``bar(uidl, nbytes)``); :meth:`finished`
    is told of each message delivered, :meth:`start` (or :meth:`plan`) of
    what the session is about to fetch. Without the totals the bar shows
    what it knows: messages and octets so far, and the rate.
    """

    def __init__(self, line: StatusLine, account: str) -> None:
        self.line = line
        self.account = account
        self.active = False
        self.messages = 0  # done
        self.octets = 0  # done: LIST sizes of the finished messages, plus the current one's part
        self.total_messages: int | None = None
        self.total_octets: int | None = None
        self.sizes: dict[str, int] = {}
        self.current: str | None = None
        self.current_octets = 0  # received of the message in flight
        self._finished_octets = 0
        self._received = 0  # every chunk's octets, for the rate
        self._samples: collections.deque[tuple[float, int]] = collections.deque()

    @property
    def enabled(self) -> bool:
        return self.line.enabled

    def start(
        self,
        total_messages: int,
        total_octets: int,
        sizes: Mapping[str, int | None] | None = None,
    ) -> None:
        """The session is about to fetch *total_messages* messages of
        *total_octets* octets (their LIST sizes; *sizes* per UIDL). Said
        again by a later session of the same sync (Gmail's batches), it adds
        to what is done."""
        self.total_messages = self.messages + total_messages
        self.total_octets = self._finished_octets + total_octets
        self.sizes.update({u: s for u, s in (sizes or {}).items() if s is not None})
        self.active = True
        self.line.update(force=True)

    def plan(self, messages: Sequence[ServerMessage]) -> None:
        """:meth:`start` for the messages a session is about to fetch."""
        self.start(
            len(messages),
            sum(m.size or 0 for m in messages),
            {m.uidl: m.size for m in messages},
        )

    def __call__(self, uidl: str, nbytes: int) -> None:
        """*nbytes* more of message *uidl* arrived."""
        first = not self.active
        self.active = True
        if uidl != self.current:
            self.current, self.current_octets = uidl, 0
        self.current_octets += nbytes
        self._received += nbytes
        known = self.sizes.get(uidl)
        part = min(self.current_octets, known) if known is not None else self.current_octets
        self.octets = self._finished_octets + part
        self._sample()
        self.line.update(force=first)

    def finished(self, msg: ServerMessage, octets: int) -> None:
        """Message *msg* was delivered (*octets* written)."""
        self.messages += 1
        size = msg.size if msg.size is not None else octets
        self._finished_octets += size
        self.octets = self._finished_octets
        self.current, self.current_octets = None, 0
        self.line.update()

    def done(self) -> None:
        """The account's sync ended: the bar goes (the line is wiped when it was the last)."""
        with self.line._lock:
            self.active = False
            if self in self.line.bars:
                self.line.bars.remove(self)
            if any(b.active for b in self.line.bars):
                self.line.update(force=True)
            else:
                self.line.clear()

    # -- what it shows

    def rate(self) -> float | None:
        """Octets per second over the last few seconds; None until measurable."""
        if len(self._samples) < 2:
            return None
        (t0, r0), (t1, r1) = self._samples[0], self._samples[-1]
        if t1 - t0 < 0.2:
            return None
        return (r1 - r0) / (t1 - t0)

    def eta(self) -> float | None:
        """Seconds left, from the rate and the octets still to come."""
        rate = self.rate()
        if rate is None or rate <= 0 or self.total_octets is None:
            return None
        return max(0.0, self.total_octets - self.octets) / rate

    def render(self, width: int, *, compact: bool = False) -> str:
        """The bar's text, at most *width* characters: the least useful parts
        go first when the terminal is narrow."""
        if self.total_messages is not None:
            count = f"{self.messages}/{self.total_messages}" + ("" if compact else " messages")
        else:
            plural = "" if self.messages == 1 else "s"
            count = f"{self.messages}" + ("" if compact else f" message{plural}")
        octets = (
            pair(self.octets, self.total_octets)
            if self.total_octets is not None
            else size(self.octets)
        )
        rate, eta = self.rate(), self.eta()
        parts = [count, octets]
        if rate is not None:
            parts.append(f"{size(rate)}/s")
        if eta is not None:
            parts.append(f"ETA {duration(eta)}")
        big = self._big_message()
        optional = [big] if big else []
        graphic = self._graphic(20) if self.total_octets else ""
        # A large message's own progress matters more than the gauge.
        for extra, gauge in ((optional, graphic), (optional, ""), ([], graphic), ([], "")):
            head = f"{self.account} {gauge}" if gauge else f"{self.account}:"
            text = f"{head} {', '.join(parts + extra)}"
            if len(text) <= width:
                return text
        return fit(text, width)

    def _big_message(self) -> str:
        if self.current is None:
            return ""
        known = self.sizes.get(self.current)
        if known is not None and known >= BIG_MESSAGE:
            percent = min(100, 100 * self.current_octets // max(known, 1))
            return f"this message {pair(min(self.current_octets, known), known)} ({percent}%)"
        if known is None and self.current_octets >= BIG_MESSAGE:
            return f"this message {size(self.current_octets)}"
        return ""

    def _graphic(self, cells: int) -> str:
        total = self.total_octets or 0
        done = cells if total <= 0 else min(cells, cells * self.octets // total)
        return "[" + "#" * done + "-" * (cells - done) + "]"

    def _sample(self) -> None:
        now = self.line.clock()
        samples = self._samples
        if len(samples) >= 2 and now - samples[-2][0] < REDRAW / 2:
            samples[-1] = (now, self._received)  # too close to the one before: merged
        else:
            samples.append((now, self._received))
        while len(samples) > 2 and now - samples[1][0] > RATE_WINDOW:
            samples.popleft()


def fit(text: str, width: int) -> str:
    """*text* cut to *width* characters, with an ellipsis when cut."""
    return text if len(text) <= width else text[: max(0, width - 1)] + "\u2026"


def size(octets: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if octets < 1024 or unit == "GiB":
            return f"{octets:.0f} {unit}" if unit == "B" else f"{octets:.1f} {unit}"
        octets /= 1024
    return f"{octets} B"


def pair(done: float, total: float) -> str:
    """``3.4/48.5 MiB``: two sizes in the unit of the larger."""
    unit, scale = "B", 1.0
    for name in ("KiB", "MiB", "GiB"):
        if total < 1024 * scale:
            break
        unit, scale = name, scale * 1024
    if unit == "B":
        return f"{done:.0f}/{total:.0f} B"
    return f"{done / scale:.1f}/{total / scale:.1f} {unit}"


def duration(seconds: float) -> str:
    """``0:07``, ``12:30``, ``1:02:03``."""
    whole = round(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def transcript(
    env: Environment, account: str, line: StatusLine | None = None
) -> Callable[[str], None] | None:
    """``-vv``: the protocol transcript, a line at a time, on stderr (above the bar)."""
    if env.verbose < TRANSCRIPT or env.quiet:
        return None

    def show(text: str) -> None:
        if line is not None:
            line.clear()
        print(f"{account}: {text}", file=env.stderr, flush=True)

    return show


def message_hook(
    env: Environment, account: str, bar: ProgressBar | None
) -> Callable[[ServerMessage, int], None] | None:
    """What the Session tells of each message delivered: the bar counts it,
    and ``-vv`` prints a line for it (above the bar)."""
    counting = bar is not None and bar.enabled
    printing = env.verbose >= PER_MESSAGE and not env.quiet
    if not counting and not printing:
        return None

    def show(msg: ServerMessage, octets: int) -> None:
        if bar is not None and counting:
            bar.finished(msg, octets)
        if printing:
            text = (
                f"{account}: fetched message {msg.number} ({size(octets)}), "
                f"UIDL {sanitize(msg.uidl, 80)}"
            )
            if bar is not None:
                with bar.line.above():
                    env.info(text, level=PER_MESSAGE)
            else:
                env.info(text, level=PER_MESSAGE)

    return show
