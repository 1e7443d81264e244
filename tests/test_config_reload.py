"""``sync --every`` reads its configuration once, and again only when the
file changed (fetchpop/cli/env.py Environment.load_config)."""

from __future__ import annotations

import os
from pathlib import Path

from runner import account_toml

from fetchpop.cli.env import Environment


def toml(name: str, tmp_path: Path) -> str:
    return account_toml(
        name, host="pop.example.org", user="u", deliver=f"maildir:{tmp_path / name}"
    )


def test_an_unchanged_file_is_not_parsed_again(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text(toml("home", tmp_path))
    path.chmod(0o600)
    env = Environment(environ={"FETCHPOP_CONFIG": str(path)})
    first = env.load_config()
    assert env.load_config() is first
    # Changed (a new account), even within the same second and at the same size:
    # read again.
    stat = path.stat()
    path.write_text(toml("wrk2", tmp_path))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    second = env.load_config()
    assert second is not first and list(second.accounts) == ["wrk2"]
    # Replaced by another file (an editor's save), or made readable by others: read again.
    new = tmp_path / "new.toml"
    new.write_text(toml("work", tmp_path))
    new.chmod(0o600)
    new.replace(path)
    third = env.load_config()
    assert third is not second
    path.chmod(0o644)
    assert env.load_config() is not third
