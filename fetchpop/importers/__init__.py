"""Taking over accounts and seen state from fetchmail, mpop and getmail.

``fetchpop import TOOL PATH`` reads the peer's configuration into fetchpop
account definitions and the peer's record of delivered messages into the
seen-store, so nothing already fetched is fetched again. The three readers
(:mod:`.fetchmail`, :mod:`.mpop`, :mod:`.getmail`) return an
:class:`ImportResult`; :mod:`.output` writes it. Passwords are never copied:
a clear-text password in the peer's file becomes a warning that says how to
put it in the keyring instead. Whatever has no fetchpop equivalent becomes a
warning too. This package neither prints nor imports click.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from fetchpop.importers.common import ImportedAccount, ImportResult
from fetchpop.importers.fetchmail import import_fetchmail
from fetchpop.importers.getmail import import_getmail
from fetchpop.importers.mpop import import_mpop
from fetchpop.importers.output import (
    check_names,
    merged_text,
    record_seen,
    render,
    validate,
    write_config,
)

__all__ = [
    "ImportResult",
    "ImportedAccount",
    "check_names",
    "import_fetchmail",
    "import_getmail",
    "import_mpop",
    "merged_text",
    "read_peer",
    "record_seen",
    "render",
    "validate",
    "write_config",
]


#: The peers ``fetchpop import`` knows.
TOOLS = ("fetchmail", "mpop", "getmail")


def read_peer(
    tool: str,
    path: Path,
    *,
    environ: Mapping[str, str],
    seen: Path | None = None,
    name: str | None = None,
) -> ImportResult:
    """Read *tool*'s configuration at *path* and its seen state.

    *seen* is the peer's seen-state file (fetchmail's ids file, mpop's UIDLS
    file) or, for getmail, the directory of its oldmail files; None for the
    peer's default. *name* names the account (getmail only).
    """
    if tool == "fetchmail":
        return import_fetchmail(path, ids_path=seen, environ=environ)
    if tool == "mpop":
        return import_mpop(path, uidls_file=seen, environ=environ)
    if tool == "getmail":
        return import_getmail(path, oldmail_dir=seen, name=name, environ=environ)
    raise ValueError(f"unknown peer {tool!r}")
