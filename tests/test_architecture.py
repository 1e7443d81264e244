"""The import direction and the owners of side effects (ARCHITECTURE.md), read
from the source's imports (every import statement, lazy ones included).

If this fails, either the change put work in the wrong place, or the map
changed: then change ARCHITECTURE.md and the tables here together.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "fetchpop"

#: What each part of fetchpop may import of fetchpop (besides itself).
MAY_IMPORT: dict[str, set[str]] = {
    "errors": set(),
    "paths": {"errors"},
    "pop3": {"errors"},
    # SMTP and LMTP over POP3's transport: one TLS policy, one set of timeouts.
    "smtp": {"errors", "pop3"},
    # IMAP (the imap:// target's APPEND) over POP3's transport, with its SASL mechanisms.
    "imap": {"errors", "pop3"},
    "seenstore": {"errors", "paths"},
    "locks": {"errors", "paths"},
    "deliver": {"errors", "paths", "smtp", "imap"},
    "config": {"errors", "paths", "deliver"},
    "secrets": {"errors", "config"},
    "oauth": {"errors", "config"},
    "importers": {"errors", "paths", "config", "deliver", "seenstore"},
    "sync": {"errors", "config", "deliver", "pop3", "seenstore", "locks"},
    "demo": {"errors", "config"},
    "cli": {"*"},
    "__init__": set(),
    "__main__": {"cli"},
}

#: Modules (or packages) that alone may import these: one owner per side effect.
OWNERS: dict[str, set[str]] = {
    "click": {"fetchpop.cli"},
    "sqlite3": {"fetchpop.seenstore"},
    "keyring": {"fetchpop.secrets"},
    # The network: POP3's transport, the OAuth2 endpoints' client and its
    # loopback listener for the browser's redirect, and the demo's own server.
    "ssl": {"fetchpop.pop3.transport", "fetchpop.oauth.http"},
    "select": {"fetchpop.pop3.transport"},
    "http.client": {"fetchpop.oauth.http"},
    "urllib.request": {"fetchpop.oauth.http"},
    "http.server": {"fetchpop.oauth.browser"},
    "socketserver": {"fetchpop.demo"},
    # gethostname() for Maildir names and fetchmail's "localhost" rule, too.
    "socket": {
        "fetchpop.pop3.transport",
        "fetchpop.oauth.http",
        "fetchpop.demo",
        "fetchpop.deliver.maildir",
        # An LMTP server's unix socket, handed to pop3.transport's Transport.
        "fetchpop.smtp.unix",
        "fetchpop.importers.fetchmail",
    },
}

#: The sans-IO side of POP3: bytes in, events out, no I/O at all.
SANS_IO = {
    "fetchpop.pop3.protocol",
    "fetchpop.pop3.listings",
    "fetchpop.pop3.auth",
    "fetchpop.smtp.protocol",
    "fetchpop.imap.protocol",
    "fetchpop.imap.auth",
}
IO_MODULES = {"socket", "ssl", "select", "os", "io", "subprocess", "sqlite3", "time"}


def modules() -> dict[str, ast.Module]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = ast.parse(path.read_text(), str(path))
    return out


def _run(tree: ast.AST) -> list[ast.AST]:
    """The nodes of *tree* that run: all but what is under ``if TYPE_CHECKING:``."""
    out: list[ast.AST] = []
    todo = [tree]
    while todo:
        node = todo.pop()
        out.append(node)
        if isinstance(node, ast.If) and ast.unparse(node.test).endswith("TYPE_CHECKING"):
            todo.extend(node.orelse)
            continue
        todo.extend(ast.iter_child_nodes(node))
    return out


def imports(tree: ast.Module) -> set[str]:
    """Every module an import statement that runs names (``from a import b``:
    a, and a.b); type annotations' imports under TYPE_CHECKING do not run."""
    names: set[str] = set()
    for node in _run(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def part(module: str) -> str:
    """``fetchpop.sync.session`` -> ``sync``; ``fetchpop`` -> ``__init__``."""
    pieces = module.split(".")
    return pieces[1] if len(pieces) > 1 else "__init__"


MODULES = modules()


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_go_one_way(module: str) -> None:
    own = part(module)
    allowed = MAY_IMPORT[own]
    for name in imports(MODULES[module]):
        if not name.startswith("fetchpop.") or "*" in allowed:
            continue
        other = part(name)
        if other not in MODULES and f"fetchpop.{other}" not in MODULES:
            continue  # "from fetchpop import __version__" and the like
        assert other == own or other in allowed, f"{module} imports {name}"


@pytest.mark.parametrize("library", sorted(OWNERS))
def test_each_side_effect_has_its_owners(library: str) -> None:
    users = {m for m, tree in MODULES.items() if library in imports(tree)}
    owners = OWNERS[library]
    strays = {m for m in users if not any(m == o or m.startswith(o + ".") for o in owners)}
    assert not strays, f"{library} imported by {sorted(strays)}; owners: {sorted(owners)}"


def test_only_the_cli_prints() -> None:
    printing = set()
    for module, tree in MODULES.items():
        for node in ast.walk(tree):
            call = isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
            if call and node.func.id == "print" and not module.startswith("fetchpop.cli"):  # type: ignore[union-attr]
                printing.add(module)
    assert not printing


@pytest.mark.parametrize("module", sorted(SANS_IO))
def test_the_pop3_core_is_sans_io(module: str) -> None:
    used = {name.split(".")[0] for name in imports(MODULES[module])}
    assert not used & IO_MODULES, f"{module} imports {sorted(used & IO_MODULES)}"


def test_the_map_knows_every_part() -> None:
    assert {part(m) for m in MODULES} <= set(MAY_IMPORT)
