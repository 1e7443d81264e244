"""Writing account tables into a configuration file (``init``, ``import``, ``demo``).

Strategy: nothing is changed until everything has been checked. The new
``[accounts.NAME]`` tables (:func:`account_table`) are appended to the
existing file's text (:func:`merged_text`) and the whole result is loaded
with :func:`~fetchpop.config.load_config` from a private temporary file
beside the real one (:func:`validate`); only when it loads cleanly is it
renamed over the original (:func:`write_config`: atomic, fsynced; the
file's mode is kept, a new file is 0600).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path

from fetchpop.config.keys import ACCOUNT_KEYS
from fetchpop.config.loader import load_config
from fetchpop.errors import ConfigError, LocalIOError, sanitize
from fetchpop.paths import make_private_dirs

_BARE_KEY = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")
#: The temporary files beside the config file start so (and end in .toml).
_TEMP_PREFIX = ".fetchpop-"


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


def comment(text: str) -> str:
    """*text* made fit for a TOML comment: one line, no control characters."""
    return sanitize(text.encode("utf-8", "replace").decode("utf-8"), limit=400)


def account_table(
    name: str,
    keys: Mapping[str, object],
    *,
    comments: Sequence[str] = (),
    notes: Mapping[str, str] | None = None,
) -> str:
    """The ``[accounts.NAME]`` table for *keys* (plain TOML values), keys in man-page order.

    *comments* become comment lines above the table, *notes* (key -> text)
    comments at the end of a key's line. Keys that are not account keys are
    left out.
    """
    lines = [f"# {comment(text)}" for text in comments]
    lines.append(f"[accounts.{_table_key(name)}]")
    for key in ACCOUNT_KEYS:
        if key in keys:
            note = (notes or {}).get(key)
            line = f"{key} = {_toml_value(keys[key])}"
            lines.append(f"{line}  # {comment(note)}" if note else line)
    return "\n".join(lines) + "\n"


def with_header(tool: str, tables: str, *, stamp: str | None = None) -> str:
    """*tables* under one comment line saying what wrote them, and when:
    ``# Added by fetchpop init on 2026-12-03 17:45.``"""
    when = stamp or time.strftime("%Y-%m-%d %H:%M")
    return f"# Added by {comment(tool)} on {when}.\n{tables}"


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
    fd, tmp = tempfile.mkstemp(prefix=_TEMP_PREFIX, suffix=".toml", dir=folder)
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


def write_config(config_path: Path, text: str, *, mode: int | None = None) -> None:
    """Replace *config_path* with *text* atomically.

    The file gets *mode*, or when None the old file's mode (0600 for a new file).
    """
    if mode is None:
        try:
            mode = config_path.stat().st_mode & 0o7777
        except FileNotFoundError:
            mode = 0o600
    try:
        make_private_dirs(config_path.parent)
        fd, tmp = tempfile.mkstemp(prefix=_TEMP_PREFIX, suffix=".toml", dir=config_path.parent)
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
