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
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, TYPE_CHECKING

if TYPE_CHECKING:
    from fetchpop.config import Account, Config
    from fetchpop.seenstore import SeenStore


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
        print(f"fetchpop: {text}", file=self.stderr, flush=True)

    def info(self, text: str, level: int = 1) -> None:
        """Print when -v was given *level* times (and not -q)."""
        if self.verbose >= level and not self.quiet:
            print(text, file=self.stderr, flush=True)

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
        """Find and load the configuration file."""
        from fetchpop.config import find_config_path, load_config

        return load_config(find_config_path(self.config_option, self.environ), environ=self.environ)

    def password_source(self, account: Account) -> Callable[[], str]:
        """A callable that fetches the account's password only when the login needs it.

        With ``oauth_provider`` set, the "password" is an OAuth2 access token,
        refreshed when needed and never prompted for.
        """
        if account.oauth_provider is not None:
            return self._access_tokens(account)

        def get() -> str:
            from fetchpop.secrets import get_password

            prompt = None
            if self.stdin_isatty:
                import getpass

                prompt = getpass.getpass
            return get_password(account, prompt=prompt)

        return get

    def _access_tokens(self, account: Account) -> Callable[[], str]:
        tokens: list[Callable[[], str]] = []  # built on first use, then kept for the run

        def get() -> str:
            if not tokens:
                from fetchpop.oauth import AccessTokens, HttpClient, provider_for
                from fetchpop.secrets import OAuthTokenStore

                tokens.append(
                    AccessTokens(
                        provider_for(account),
                        OAuthTokenStore(account),
                        account_name=account.name,
                        http=HttpClient(timeout=account.timeout),
                    )
                )
            return tokens[0]()

        return get


class Signals:
    """SIGINT and SIGTERM during a sync: stop at the next safe point.

    The first signal lets the message in flight finish and be recorded (the
    session calls :meth:`check` between messages); a second one stops at once,
    and the delivery in flight is abandoned cleanly (its tmp file removed, its
    intent left for the next run to resolve).
    """

    def __init__(self) -> None:
        self.received: int | None = None

    def install(self) -> None:
        import signal

        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, self._handle)

    def _handle(self, signum: int, _frame: object) -> None:
        from fetchpop.errors import Interrupted

        if self.received is not None:
            raise Interrupted(signum)
        self.received = signum

    def sleep(self, seconds: float) -> bool:
        """Sleep, waking early for a signal; True when one arrived."""
        deadline = time.monotonic() + seconds
        while self.received is None and time.monotonic() < deadline:
            time.sleep(min(0.2, max(0.0, deadline - time.monotonic())))
        return self.received is not None

    def check(self) -> None:
        """Raise Interrupted if a signal has arrived."""
        from fetchpop.errors import Interrupted

        if self.received is not None:
            raise Interrupted(self.received)
