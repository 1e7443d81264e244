"""What every importer shares: the imported account, names, commands, TLS keys.

An importer turns a peer's configuration into :class:`ImportedAccount` values:
fetchpop account keys that are plain TOML values (str, int, bool, float),
plus the warnings that explain what could not be carried over, plus the
UIDLs the peer had already delivered. Nothing here touches the seen-store
or fetchpop's own configuration file (see :mod:`fetchpop.importers.output`).
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from fetchpop.config import POP3_PORT, POP3S_PORT
from fetchpop.errors import ConfigError, sanitize
from fetchpop.paths import expand_path

#: Characters that mean a command needs a shell (the peers ran theirs with
#: ``sh -c``; fetchpop runs commands without one).
_SHELL_CHARS = re.compile(r"[|&;<>()$`*?\[\]{}\n]")
#: RFC 1939 section 7: a unique-id is 1 to 70 characters in 0x21..0x7E.
_UIDL_RE = re.compile(r"[\x21-\x7e]{1,70}")
_NAME_BAD = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass
class ImportedAccount:
    """One fetchpop account made from a peer's account definition."""

    name: str
    #: fetchpop account keys (see ``fetchpop.config.ACCOUNT_KEYS``), TOML-ready.
    keys: dict[str, object]
    #: Where in the peer's file it came from, for comments and messages.
    origin: str = ""
    warnings: list[str] = field(default_factory=list)
    #: UIDL -> the peer's first-fetched time (Unix seconds), or None when unknown.
    uidls: dict[str, float | None] = field(default_factory=dict)
    #: The file the UIDLs were read from (None: none was found).
    seen_file: Path | None = None

    @property
    def mailbox(self) -> tuple[str, int, str]:
        """The seen-store key, exactly as ``Account.mailbox`` computes it."""
        port = self.keys.get("port")
        if not isinstance(port, int):
            port = POP3S_PORT if self.keys.get("tls", "implicit") == "implicit" else POP3_PORT
        return (str(self.keys["host"]).lower(), port, str(self.keys["user"]))

    def rename(self, name: str) -> None:
        """Change the account's name, and the commands the warnings suggest with it."""
        command = re.compile(r"(`fetchpop [a-z ]+ )" + re.escape(self.name) + "`")
        self.warnings = [command.sub(lambda m: m.group(1) + name + "`", w) for w in self.warnings]
        self.name = name

    def warn(self, text: str) -> None:
        """Add a warning (one line, control characters made harmless)."""
        line = sanitize(" ".join(text.split()), limit=400)
        if line not in self.warnings:
            self.warnings.append(line)


@dataclass
class ImportResult:
    """Everything one ``fetchpop import`` read from a peer."""

    tool: str
    source: Path
    accounts: list[ImportedAccount]
    #: Warnings that concern the whole file rather than one account.
    warnings: list[str] = field(default_factory=list)


def account_name(text: str) -> str:
    """*text* made into a valid fetchpop account name (letters, digits, ``._-``)."""
    name = _NAME_BAD.sub("_", text).strip("_")
    return name or "imported"


def unique_names(accounts: list[ImportedAccount]) -> None:
    """Give accounts sharing a name the suffixes ``-2``, ``-3``, ... in order."""
    used: set[str] = set()
    for account in accounts:
        base, name, n = account.name, account.name, 1
        while name in used:
            n += 1
            name = f"{base}-{n}"
        account.rename(name)
        used.add(name)


def needs_shell(command: str) -> bool:
    """Whether *command* uses shell syntax (pipes, ``$VAR``, redirections ...)."""
    try:
        shlex.split(command)
    except ValueError:
        return True
    return bool(_SHELL_CHARS.search(command))


def as_command(command: str) -> str:
    """A peer's shell command in the form fetchpop runs (split into words, no shell).

    Commands with shell syntax are wrapped in ``sh -c '...'`` so they mean what
    they meant to the peer, which ran them through ``/bin/sh``.
    """
    command = command.strip()
    if needs_shell(command):
        return "sh -c " + shlex.quote(command)
    return command


def valid_uidl(text: str) -> bool:
    """Whether *text* can be a POP3 unique-id (RFC 1939 section 7)."""
    return bool(_UIDL_RE.fullmatch(text))


def password_warning(account: ImportedAccount, tool: str) -> None:
    """Explain that a clear-text password in the peer's file was not copied."""
    account.warn(
        f"the {tool} password was not copied; run `fetchpop password set {account.name}` "
        "to keep it in the system keyring, or set password_command"
    )


def ca_file(account: ImportedAccount, text: str, what: str, environ: Mapping[str, str]) -> None:
    """Set ``ca_file`` when *text* names an existing file, else warn."""
    try:
        path = expand_path(text, environ)
    except ValueError as exc:
        account.warn(f"{what} {text}: {exc}; not copied")
        return
    if not path.is_file():
        account.warn(f"{what} {text} is not a file; not copied (set ca_file)")
        return
    account.keys["ca_file"] = text


def sha256_fingerprint(text: str) -> str | None:
    """``sha256:..`` for a colon-separated (or plain) hex SHA-256 digest, else None."""
    digits = text.strip().lower()
    if digits.startswith("sha256:"):
        digits = digits[len("sha256:") :]
    digits = digits.replace(":", "")
    if re.fullmatch(r"[0-9a-f]{64}", digits):
        return "sha256:" + ":".join(digits[i : i + 2] for i in range(0, 64, 2)).upper()
    return None


def unencrypted(account: ImportedAccount, tool: str) -> None:
    """The peer talked in clear text: fetchpop requires STARTTLS instead."""
    account.keys["tls"] = "starttls"
    account.warn(
        f"{tool} did not use TLS for this account; fetchpop will require STARTTLS "
        '(set tls = "off" only if the server offers no TLS at all)'
    )


def local_user(environ: Mapping[str, str]) -> str:
    """The name of the user running fetchpop."""
    for key in ("USER", "LOGNAME"):
        if environ.get(key):
            return environ[key]
    import getpass

    return getpass.getuser()


def read_text(path: Path) -> str:
    """A peer's file as text (bytes that are not UTF-8 kept as surrogates)."""
    try:
        return path.read_text(encoding="utf-8", errors="surrogateescape")
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from None
