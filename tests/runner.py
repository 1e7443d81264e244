"""Run the real ``fetchpop`` command in a subprocess with its own home.

Each :class:`Home` is a temporary $HOME with XDG config and state dirs, so a
test sees exactly what a user would: the exit status, stderr, stdout, the
files delivered and the seen-store on disk.
"""

from __future__ import annotations

import dataclasses
import os
import sqlite3
import subprocess
import sys
from pathlib import Path


@dataclasses.dataclass
class Result:
    """What one fetchpop run did."""

    code: int
    stdout: str
    stderr: str

    def __str__(self) -> str:
        return f"exit {self.code}\n--- stdout\n{self.stdout}\n--- stderr\n{self.stderr}"


class Home:
    """A user's home for fetchpop: config file, state dir, mail dirs."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.config_dir = root / "config" / "fetchpop"
        self.state_dir = root / "state" / "fetchpop"
        self.config_dir.mkdir(parents=True, exist_ok=True)
        self.config_path = self.config_dir / "config.toml"

    def write_config(self, text: str, mode: int = 0o600) -> Path:
        """Write the TOML config (private by default)."""
        self.config_path.write_text(text)
        self.config_path.chmod(mode)
        return self.config_path

    @property
    def store_path(self) -> Path:
        return self.state_dir / "fetchpop.sqlite3"

    def env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("XDG_", "FETCHPOP_")) and k != "PYTEST_CURRENT_TEST"
        }
        env.update(
            HOME=str(self.root),
            XDG_CONFIG_HOME=str(self.root / "config"),
            XDG_STATE_HOME=str(self.root / "state"),
            XDG_DATA_HOME=str(self.root / "data"),
            # No keyring backend for tests unless one asks for it.
            PYTHON_KEYRING_BACKEND="keyring.backends.fail.Keyring",
        )
        env.update(extra or {})
        return env

    def run(
        self,
        *args: str,
        env: dict[str, str] | None = None,
        timeout: float = 120,
        stdin: str | None = None,
    ) -> Result:
        """Run ``python -m fetchpop ARGS`` and wait for it."""
        proc = subprocess.run(
            [sys.executable, "-m", "fetchpop", *args],
            env=self.env(env),
            input=stdin if stdin is not None else "",
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        return Result(proc.returncode, proc.stdout, proc.stderr)

    def popen(self, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
        """Start ``python -m fetchpop ARGS`` without waiting (for kill tests)."""
        return subprocess.Popen(
            [sys.executable, "-m", "fetchpop", *args],
            env=self.env(env),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def seen_uidls(self) -> set[str]:
        """Every UIDL in the seen-store (any mailbox)."""
        if not self.store_path.exists():
            return set()
        db = sqlite3.connect(self.store_path)
        try:
            return {row[0] for row in db.execute("SELECT uidl FROM seen")}
        finally:
            db.close()


def maildir_messages(path: Path) -> list[bytes]:
    """Contents of every message in a Maildir's new/ and cur/, sorted."""
    out = []
    for sub in ("new", "cur"):
        folder = path / sub
        if folder.is_dir():
            out.extend(p.read_bytes() for p in folder.iterdir())
    return sorted(out)


def account_toml(name: str, **keys: object) -> str:
    """A ``[accounts.NAME]`` table from keyword arguments."""
    lines = [f"[accounts.{name}]"]
    for key, value in keys.items():
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, int | float):
            text = str(value)
        else:
            text = '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'
        lines.append(f"{key} = {text}")
    return "\n".join(lines) + "\n"
