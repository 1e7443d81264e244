"""Writing an import: ``[accounts.NAME]`` tables into the config file, UIDLs into
the seen-store.

Strategy: nothing is changed until everything has been checked; the config
file is written as :mod:`fetchpop.config.writer` writes every change to it
(the whole new text loaded first, then renamed over the original). The UIDLs
are recorded before the rename: should the rename fail, a later import
records them again (recording is idempotent), whereas a config without its
UIDLs would fetch everything again.
"""

from __future__ import annotations

import time
from pathlib import Path

from fetchpop.config.writer import (
    account_table,
    comment,
    existing_names,
    merged_text,
    validate,
    write_config,
)
from fetchpop.errors import ConfigError, sanitize
from fetchpop.importers.common import ImportedAccount, ImportResult
from fetchpop.seenstore import SeenStore

__all__ = [
    "check_names",
    "existing_names",
    "merged_text",
    "record_seen",
    "render",
    "validate",
    "write_config",
]


def render(result: ImportResult, *, stamp: str | None = None) -> str:
    """The ``[accounts.NAME]`` tables for *result*, with the warnings as comments."""
    when = stamp or time.strftime("%Y-%m-%d %H:%M")
    parts = [f"# Imported from {result.tool} {comment(str(result.source))} on {when}.\n"]
    for account in result.accounts:
        origin = [f"{result.tool}: {account.origin}"] if account.origin else []
        notes = [f"note: {w}" for w in account.warnings]
        parts.append("\n" + account_table(account.name, account.keys, comments=origin + notes))
    return "".join(parts)


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
