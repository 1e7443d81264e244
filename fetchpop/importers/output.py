"""Writing an import: ``[accounts.NAME]`` tables into the config file, UIDLs into
the seen-store.

Strategy: nothing is changed until everything has been checked. The new
tables are appended to the existing file's text and the whole result is
loaded with :func:`fetchpop.config.load_config` from a private temporary file
beside the real one; only when it loads cleanly is it renamed over the
original (atomic; the file's mode is kept, a new file is 0600). The UIDLs are
recorded before the rename: should the rename fail, a later import records
them again (recording is idempotent), whereas a config without its UIDLs
would fetch everything again.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
import tomllib
from collections.abc import Mapping
from pathlib import Path

from fetchpop.config import ACCOUNT_KEYS, load_config
from fetchpop.errors import ConfigError, LocalIOError, sanitize
from fetchpop.importers.common import ImportedAccount, ImportResult
from fetchpop.seenstore import SeenStore

_BARE_KEY = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")


def toml_string(text: str) -> str:
    """*text* as a TOML basic string."""
    out = ['"']
    for ch in text:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif ord(ch) < 0x20 or ord(ch) == 0x7F or 0xD800 <= ord(ch) <= 0xDFFF:
            out.append(f"\\u{ord(ch) if ord(ch) < 0xD800 else 0xFFFD:04X}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return toml_string(str(value))


def _table_key(name: str) -> str:
    return name if name and set(name) <= _BARE_KEY else toml_string(name)


def render(result: ImportResult, *, stamp: str | None = None) -> str:
    """The ``[accounts.NAME]`` tables for *result*, with the warnings as comments."""
    when = stamp or time.strftime("%Y-%m-%d %H:%M")
    lines = [f"# Imported from {result.tool} {_comment(str(result.source))} on {when}."]
    for account in result.accounts:
        lines.append("")
        if account.origin:
            lines.append(f"# {result.tool}: {_comment(account.origin)}")
        lines.extend(f"# note: {_comment(w)}" for w in account.warnings)
        lines.append(f"[accounts.{_table_key(account.name)}]")
        for key in ACCOUNT_KEYS:
            if key in account.keys:
                lines.append(f"{key} = {_toml_value(account.keys[key])}")
    return "\n".join(lines) + "\n"


def _comment(text: str) -> str:
    return sanitize(text.encode("utf-8", "replace").decode("utf-8"), limit=400)


def existing_names(config_path: Path) -> set[str]:
    """The account names already in *config_path* (empty when it does not exist)."""
    try:
        data = tomllib.loads(config_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return set()
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{config_path}: cannot read it to add accounts: {exc}") from None
    accounts = data.get("accounts", {})
    return set(accounts) if isinstance(accounts, dict) else set()


def check_names(config_path: Path, result: ImportResult) -> None:
    """Refuse to overwrite accounts that already exist (ConfigError naming each)."""
    taken = existing_names(config_path)
    clashes = [a.name for a in result.accounts if a.name in taken]
    if clashes:
        raise ConfigError(
            [
                f"{config_path}: account {sanitize(name)!r} already exists; not overwritten "
                "(rename or remove it, or the account in the peer's file, and import again)"
                for name in clashes
            ]
        )


def merged_text(config_path: Path, tables: str) -> str:
    """The config file's text with *tables* appended."""
    try:
        old = config_path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return tables
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{config_path}: cannot read: {exc}") from None
    if old and not old.endswith("\n"):
        old += "\n"
    return old + ("\n" if old.strip() else "") + tables


def validate(config_path: Path, text: str, environ: Mapping[str, str]) -> None:
    """Load *text* as the config at *config_path* would be loaded; ConfigError if not."""
    folder = config_path.parent if config_path.parent.is_dir() else None
    fd, tmp = tempfile.mkstemp(prefix=".import-", suffix=".toml", dir=folder)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        try:
            load_config(Path(tmp), environ=environ)
        except ConfigError as exc:
            raise ConfigError([p.replace(tmp, str(config_path)) for p in exc.problems]) from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def write_config(config_path: Path, text: str) -> None:
    """Replace *config_path* with *text* atomically (mode kept; a new file is 0600)."""
    try:
        mode = config_path.stat().st_mode & 0o7777
    except FileNotFoundError:
        mode = 0o600
    try:
        config_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd, tmp = tempfile.mkstemp(prefix=".import-", suffix=".toml", dir=config_path.parent)
    except OSError as exc:
        raise LocalIOError(f"cannot write {config_path}: {exc.strerror or exc}") from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            os.fchmod(f.fileno(), mode)
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, config_path)
        dir_fd = os.open(config_path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise LocalIOError(f"cannot write {config_path}: {exc.strerror or exc}") from None


def record_seen(store: SeenStore, account: ImportedAccount, *, now: float | None = None) -> int:
    """Record the account's UIDLs as seen for its mailbox; returns how many.

    Each keeps the peer's first-fetched time when it had one, else *now*.
    """
    if not account.uidls:
        return 0
    stamp = time.time() if now is None else now
    mailbox = store.mailbox_id(*account.mailbox)
    assert mailbox is not None
    by_time: dict[float, list[str]] = {}
    for uidl, first in account.uidls.items():
        by_time.setdefault(stamp if first is None else first, []).append(uidl)
    for first, uidls in sorted(by_time.items()):
        store.record(mailbox, uidls, now=first)
    store.sync()
    return len(account.uidls)
