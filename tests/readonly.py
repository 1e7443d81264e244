"""Delivering into a directory that is read-only, even for root (shared by the
Maildir and mbox tests)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import fetchpop

_DELIVER_SCRIPT = """
import sys
from fetchpop.deliver import open_target, parse_deliver
from fetchpop.errors import FetchpopError
try:
    target = open_target(parse_deliver(sys.argv[1]))
    delivery = target.begin("uidl-1")
    delivery.write(b"x")
    delivery.finish()
except FetchpopError as exc:
    print(type(exc).__name__, exc.exit_code, exc)
"""


def deliver_read_only(directory: Path, spec: str) -> str:
    """Deliver to *spec* in a child to which *directory* is read-only; returns its output.

    Root ignores file modes, so as root *directory* is bind-mounted read-only
    in a private mount namespace; otherwise its tree is made mode 0555.
    """
    repo = str(Path(fetchpop.__file__).resolve().parent.parent)
    command = [sys.executable, "-c", _DELIVER_SCRIPT, spec]
    env = {**os.environ, "PYTHONPATH": repo}
    if os.geteuid() == 0:
        remount = 'mount --bind "$1" "$1" && mount -o remount,ro,bind "$1" && shift && exec "$@"'
        command = ["unshare", "--mount", "sh", "-c", remount, "sh", str(directory), *command]
        try:
            done = subprocess.run(command, env=env, capture_output=True)
        except OSError as exc:
            pytest.skip(f"cannot make a read-only bind mount: {exc}")
        if done.returncode != 0 and not done.stdout:
            pytest.skip(f"cannot make a read-only bind mount: {done.stderr!r}")
    else:
        modes = {path: path.stat().st_mode for path in [directory, *directory.rglob("*")]}
        for path in modes:
            path.chmod(0o555)
        try:
            done = subprocess.run(command, env=env, capture_output=True)
        finally:
            for path, mode in modes.items():
                path.chmod(mode)
    assert done.returncode == 0, done.stderr
    return done.stdout.decode()


READ_ONLY = "(Permission denied|Read-only file system)"
