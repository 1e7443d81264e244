"""The Environment of one command run (streams, terminal flags, clock,
directories, options) and the signal handling of a sync.

Commands take everything from the Environment, so tests can drive them
in-process (click's CliRunner, with ``obj=Environment(...)``) where a
subprocess is not needed.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, TYPE_CHECKING

from fetchpop.errors import Interrupted

if TYPE_CHECKING:
    from fetchpop.config import Account, Config
    from fetchpop.seenstore import SeenStore


#: Held while a password is asked for (``sync --jobs``: one prompt at a time).
_PROMPTING = threading.Lock()


@dataclasses.dataclass
class Environment:
    """Streams, terminal flags and directories of one run; tests may replace it."""

    stdout: IO[str] = dataclasses.field(default_factory=lambda: sys.stdout)
    stderr: IO[str] = dataclasses.field(default_factory=lambda: sys.stderr)
    stdin_isatty: bool = dataclasses.field(default_factory=lambda: sys.stdin.isatty())
    stderr_isatty: bool = dataclasses.field(default_factory=lambda: sys.stderr.isatty())
    environ: dict[str, str] = dataclasses.field(default_factory=lambda: dict(os.environ))
    config_option: str | None = None
    verbose: int = 0
    quiet: bool = False
    state_override: Path | None = None
    #: Off only for `fetchpop demo`, whose server is on this machine.
    warn_clear_text: bool = True
    #: Seconds since the epoch, now (replaced in tests).
    clock: Callable[[], float] = time.time
    #: The configuration as last read, and what its file's stat said then.
    _config: tuple[tuple[object, ...], Config] | None = dataclasses.field(default=None, repr=False)

    def state_dir(self) -> Path:
        """``<user state dir>/fetchpop`` (Linux: $XDG_STATE_HOME/fetchpop)."""
        if self.state_override is not None:
            return self.state_override
        from fetchpop.config import user_dir

        return user_dir("state", self.environ)

    def store_path(self) -> Path:
        """Where the seen-store lives."""
        return self.state_dir() / "fetchpop.sqlite3"

    def open_store(self) -> SeenStore:
        """The seen-store, opened for writing (created when missing)."""
        from fetchpop.seenstore import SeenStore

        return SeenStore(self.store_path())

    def error(self, text: str) -> None:
        """One line on stderr, prefixed ``fetchpop:``."""
        self._line(f"fetchpop: {text}")

    def info(self, text: str, level: int = 1) -> None:
        """Print when -v was given *level* times (and not -q)."""
        if self.verbose >= level and not self.quiet:
            self._line(text)

    def _line(self, text: str) -> None:
        # One write for the text and its line end: print() makes two, and
        # another thread's line could come between them.
        self.stderr.write(text + "\n")
        self.stderr.flush()

    def warn(self, text: str) -> None:
        """A warning: shown unless -q."""
        if not self.quiet:
            self.error(text)

    def print_json(self, data: object) -> None:
        """``--json`` output: *data* indented, on stdout."""
        import json  # (lazily: a plain sync has no use for it)

        json.dump(data, self.stdout, indent=2)
        self.stdout.write("\n")
        self.stdout.flush()

    def load_config(self) -> Config:
        """Find and load the configuration file; the same file unchanged since
        the last call (``sync --every``'s next round) is not parsed again."""
        from fetchpop.config import find_config_path, load_config

        path = find_config_path(self.config_option, self.environ)
        try:
            st = os.stat(path)
            stamp: tuple[object, ...] = (
                path,
                st.st_ino,
                st.st_dev,
                st.st_size,
                st.st_mtime_ns,
                st.st_ctime_ns,
            )
        except OSError:
            stamp = ()  # (load_config says what is wrong)
        if stamp and self._config is not None and self._config[0] == stamp:
            return self._config[1]
        config = load_config(path, environ=self.environ)
        self._config = (stamp, config) if stamp else None
        return config

    def password_source(self, account: Account) -> Callable[[], str]:
        """A callable that fetches the account's password only when the login needs it.

        With ``oauth_provider`` set, the "password" is an OAuth2 access token,
        refreshed when needed and never prompted for.
        """
        if account.oauth_provider is not None:
            return self._access_tokens(account)

        def get() -> str:
            from fetchpop.secrets import get_password

            return get_password(account, prompt=self._prompt())

        return get

    def target_secret(self, account: Account) -> Callable[[], str] | None:
        """The delivery server's secret, fetched only when it logs in: the
        ``smtp_user``'s password, or an imap:// target's password or OAuth2
        access token (its own sign-in, or the account's: one serves both)."""
        kind = account.deliver.kind
        if kind in ("lmtp", "smtp"):
            from fetchpop.secrets import get_smtp_password

            return lambda: get_smtp_password(account)
        if kind != "imap":
            return None
        if account.imap_auth in ("xoauth2", "oauthbearer"):
            return self._access_tokens(account, imap=account.imap_oauth_provider is not None)

        def password() -> str:
            from fetchpop.secrets import get_imap_password

            return get_imap_password(account, prompt=self._prompt())

        return password

    def _prompt(self) -> Callable[[str], str] | None:
        if not self.stdin_isatty:
            return None
        import getpass

        def ask(text: str) -> str:
            with _PROMPTING:  # one at a time, however many jobs want a password
                return getpass.getpass(text)

        return ask

    def _access_tokens(self, account: Account, *, imap: bool = False) -> Callable[[], str]:
        """Access tokens, refreshed as needed: the account's sign-in, or with
        *imap* its imap:// target's own (``oauth login --imap``)."""
        tokens: list[Callable[[], str]] = []  # built on first use, then kept for the run

        def get() -> str:
            if not tokens:
                from fetchpop.oauth import AccessTokens, HttpClient, imap_provider_for, provider_for
                from fetchpop.secrets import OAuthTokenStore

                tokens.append(
                    AccessTokens(
                        imap_provider_for(account) if imap else provider_for(account),
                        OAuthTokenStore(account, imap=imap),
                        account_name=account.name,
                        http=HttpClient(timeout=account.timeout, stop=Signals.reason_now),
                    )
                )
            return tokens[0]()

        return get


#: Seconds the first SIGINT or SIGTERM lets the message in flight take to
#: finish (and be recorded) before it is abandoned.
GRACE = 5.0


class Signals:
    """SIGINT and SIGTERM during a sync.

    The first signal ends the run at once where nothing is in flight (waiting
    for a greeting, the login, a listing: the transport asks
    :meth:`stop_reason` every few tenths of a second), and otherwise lets the
    message in flight finish and be recorded, for GRACE seconds at most (the
    session calls :meth:`check` between messages); a message still coming
    then is abandoned. A second signal stops at once. A message abandoned is
    abandoned cleanly: its tmp file removed, its intent dropped, the message
    left on the server, unrecorded. The first signal during a message says so
    on stderr at once (unless -q).
    """

    #: The installed instance (what the OAuth client asks; see Environment).
    active: Signals | None = None

    def __init__(self, env: Environment | None = None) -> None:
        self.received: int | None = None
        self._count = 0
        self._first = 0.0  # when the first signal came (monotonic)
        self._env = env
        self._note: str | None = None  # the acknowledgement, when it could not be written at once

    def install(self) -> None:
        import signal

        from fetchpop.pop3.transport import set_stop_check

        if self._env is None:
            self._env = _current_environment()
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, self._handle)
        set_stop_check(self.stop_reason)
        Signals.active = self

    def _handle(self, signum: int, _frame: object) -> None:
        from fetchpop.pop3.transport import message_in_flight

        self._count += 1
        if self.received is not None:
            raise Interrupted(signum)
        self._first = time.monotonic()
        self.received = signum
        if message_in_flight():
            self._acknowledge(signum)

    def _acknowledge(self, signum: int) -> None:
        """Say at once that the message in flight is being finished."""
        env = self._env
        if env is None or env.quiet:
            return
        again = "a second Ctrl-C" if signum == 2 else f"a second signal {signum}"
        text = (
            f"fetchpop: finishing the message in flight (at most {GRACE:g} s); "
            f"{again} abandons it (it stays on the server, unrecorded)"
        )
        wipe = "\r" + " " * 60 + "\r" if env.stderr_isatty else ""  # a progress line
        try:
            # Straight to the descriptor: a signal handler must not write
            # into the buffer of a stream it may have interrupted.
            fd = env.stderr.fileno()
            os.write(fd, (wipe + text + "\n").encode("utf-8", "replace"))
        except (OSError, ValueError, AttributeError):
            self._note = text  # written at the next stop_reason, outside the handler

    def stop_reason(self, in_flight: bool) -> BaseException | None:
        """What to stop with now, or None: asked while fetchpop waits on a
        server, *in_flight* saying whether a message is coming on that connection."""
        if self.received is None:
            return None
        if self._note is not None and self._env is not None:
            note, self._note = self._note, None
            print(note, file=self._env.stderr, flush=True)
        if self._count > 1 or not in_flight:
            return Interrupted(self.received)
        if time.monotonic() - self._first >= GRACE:
            return Abandoned(self.received)
        return None

    def sleep(self, seconds: float) -> bool:
        """Sleep, waking early for a signal; True when one arrived."""
        deadline = time.monotonic() + seconds
        while self.received is None and time.monotonic() < deadline:
            time.sleep(min(0.2, max(0.0, deadline - time.monotonic())))
        return self.received is not None

    def check(self) -> None:
        """Raise Interrupted if a signal has arrived."""
        if self.received is not None:
            raise Interrupted(self.received)

    @staticmethod
    def reason_now() -> BaseException | None:
        """The active instance's :meth:`stop_reason` with nothing in flight
        (for the OAuth client), or None."""
        active = Signals.active
        return None if active is None else active.stop_reason(False)


def _current_environment() -> Environment | None:
    """The Environment of the click command being run, if any."""
    import click

    ctx = click.get_current_context(silent=True)
    obj = ctx.find_object(Environment) if ctx is not None else None
    return obj if isinstance(obj, Environment) else None


class Abandoned(Interrupted):
    """The first signal's grace ran out with a message still coming: it was
    abandoned (it stays on the server, unrecorded)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.args = (
            f"interrupted by signal {signum}; the message in flight was abandoned "
            f"after {GRACE:g} s (it stays on the server)",
        )
