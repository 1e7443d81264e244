"""mpop's ~/.mpoprc and its UIDLS files.

Strategy: the configuration is one command per line (mpop(1), "USAGE";
``read_conffile`` in mpop's conf.c): the first word is the command, the rest
of the line its argument, with one pair of enclosing double quotes removed.
``defaults`` starts a block of settings that every later ``account`` starts
from; ``account NAME : A, B`` also takes every setting made in A and B.
Settings before any ``account`` belong to an account named ``default``.

A UIDLS file (``uidls_read`` in mpop's uidls.c) starts with ``#`` comment
lines; then each list opens with a line `` COUNT HOST USER`` (note the leading
space) and is followed by COUNT lines of one UIDL each. The HOST and USER are
the account's ``host`` and ``user`` as written in the configuration.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from fetchpop.errors import ConfigError, sanitize
from fetchpop.importers.common import (
    ImportedAccount,
    ImportResult,
    account_name,
    as_command,
    ca_file,
    password_warning,
    read_text,
    sha256_fingerprint,
    unencrypted,
    unique_names,
    valid_uidl,
)
from fetchpop.paths import expand_path

TOOL = "mpop"
DEFAULT_UIDLS_FILE = "~/.mpop_uidls/%U_at_%H"

_AUTH = {
    "": "auto", "on": "auto", "user": "user", "plain": "plain", "login": "login",
    "apop": "apop", "scram-sha-1": "scram-sha-1", "scram-sha-256": "scram-sha-256",
    "xoauth2": "xoauth2", "oauthbearer": "oauthbearer",
}  # fmt: skip
_NOT_SUPPORTED = {
    "filter": "fetchpop has no header filters",
    "source_ip": "not supported",
    "proxy_host": "SOCKS proxies are not supported",
    "proxy_port": "SOCKS proxies are not supported",
    "socket": "fetchpop connects by TCP",
    "ntlmdomain": "NTLM is not supported",
    "tls_key_file": "TLS client certificates are not supported",
    "tls_cert_file": "TLS client certificates are not supported",
    "tls_crl_file": "not supported",
    "tls_priorities": "fetchpop negotiates TLS itself",
    "tls_min_dh_prime_bits": "fetchpop negotiates TLS itself",
    "tls_force_sslv3": "SSLv3 is never used",
    "tls_host_override": "the certificate must match host",
    "received_header": "fetchpop delivers messages unchanged (no Received header)",
}
#: Commands fetchpop needs no word about.
_SILENT = {"pipelining"}
_KNOWN = {
    "host", "port", "timeout", "connect_timeout", "pipelining", "auth", "user", "password",
    "passwordeval", "ntlmdomain", "tls", "tls_starttls", "tls_trust_file", "tls_crl_file",
    "tls_fingerprint", "tls_key_file", "tls_cert_file", "tls_certcheck", "tls_priorities",
    "tls_host_override", "tls_min_dh_prime_bits", "tls_force_sslv3", "delivery",
    "uidls_file", "only_new", "keep", "killsize", "skipsize", "filter", "received_header",
    "source_ip", "proxy_host", "proxy_port", "socket",
}  # fmt: skip


@dataclass
class MpopAccount:
    """One ``account`` block: every setting that applies to it, and where it starts."""

    name: str
    line: int
    settings: dict[str, str] = field(default_factory=dict)
    #: The settings written in this block (and in the accounts it inherits from).
    own: dict[str, str] = field(default_factory=dict)


@dataclass
class MpopRc:
    """The parsed configuration file."""

    accounts: list[MpopAccount]
    warnings: list[str]


def _trim(text: str) -> str:
    text = text.strip(" \t")
    if len(text) >= 2 and text[0] == '"' and text[-1] == '"':
        return text[1:-1]
    return text


def parse_mpoprc(text: str, path: Path) -> MpopRc:
    """Parse an mpop configuration; raises ConfigError where mpop itself would fail."""
    defaults: dict[str, str] = {}
    accounts: list[MpopAccount] = []
    by_name: dict[str, MpopAccount] = {}
    current: dict[str, str] | None = None
    warnings: list[str] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.rstrip("\r").lstrip(" \t")
        if not line or line.startswith("#"):
            continue
        cmd, rest = re.match(r"([^ \t]*)(.*)", line).groups()  # type: ignore[union-attr]
        arg = _trim(rest)
        if cmd not in ("account", "defaults") and current is None:
            # Settings before any "account" make an account named "default".
            current = _new_block("default", number, defaults, accounts, by_name).own
        if cmd == "defaults":
            current = defaults
        elif cmd == "account":
            current = _account_line(arg, number, path, defaults, accounts, by_name).own
        elif cmd == "eval":
            warnings.append(
                f"line {number}: eval lines are not run by fetchpop import; "
                "the setting it makes is missing"
            )
        elif cmd in _KNOWN:
            assert current is not None
            current[cmd] = arg
        else:
            warnings.append(f"line {number}: unknown command {sanitize(cmd)!r} ignored")
    for block in accounts:
        block.settings.update(block.own)
    return MpopRc(accounts, warnings)


def _new_block(
    name: str,
    number: int,
    defaults: dict[str, str],
    accounts: list[MpopAccount],
    by_name: dict[str, MpopAccount],
) -> MpopAccount:
    block = MpopAccount(name, number, dict(defaults))
    accounts.append(block)
    by_name[name] = block
    return block


def _account_line(
    arg: str,
    number: int,
    path: Path,
    defaults: dict[str, str],
    accounts: list[MpopAccount],
    by_name: dict[str, MpopAccount],
) -> MpopAccount:
    """``account NAME[ : PARENT[, PARENT...]]``: a new block, with its parents' settings."""
    name, colon, parents = arg.partition(":")
    name = _trim(name)
    if not name:
        raise ConfigError(f"{path}: line {number}: missing account name")
    if name in by_name:
        raise ConfigError(f"{path}: line {number}: account {name} was already defined")
    inherited: dict[str, str] = {}
    for parent in (_trim(p) for p in parents.split(",")) if colon else ():
        if parent not in by_name:
            raise ConfigError(f"{path}: line {number}: account {parent} not (yet) defined")
        inherited.update(by_name[parent].own)
    block = _new_block(name, number, defaults, accounts, by_name)
    block.own.update(inherited)
    return block


def parse_uidls(text: str, path: Path) -> dict[tuple[str, str], list[str]]:
    """UIDLs per (host, user), exactly as written, from an mpop UIDLS file."""
    out: dict[tuple[str, str], list[str]] = {}
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    i = 0
    while i < len(lines) and lines[i].startswith("#"):
        i += 1
    while i < len(lines):
        header = re.fullmatch(r" ([0-9]+) ([^ ]+) ([^ ]+)", lines[i])
        if not header or int(header.group(1)) < 1:
            raise ConfigError(f"{path}: line {i + 1}: not an mpop UIDLS list header")
        count, host, user = int(header.group(1)), header.group(2), header.group(3)
        uidls = lines[i + 1 : i + 1 + count]
        if len(uidls) < count or any(u.startswith(" ") for u in uidls):
            raise ConfigError(f"{path}: line {i + 1}: too few UIDLs for {user} at {host}")
        out.setdefault((host, user), []).extend(uidls)
        i += 1 + count
    return out


def _on(value: str) -> bool:
    return value.lower() in ("", "on")


def _size(value: str) -> int | None:
    """mpop's killsize/skipsize: bytes, or with k / m (KiB, MiB); off: None."""
    match = re.fullmatch(r"([0-9]+)\s*([kKmM]?)", value.strip())
    if value.strip().lower() == "off" or not match:
        return None
    factor = {"": 1, "k": 1024, "m": 1024 * 1024}[match.group(2).lower()]
    return int(match.group(1)) * factor


def _convert(block: MpopAccount, environ: Mapping[str, str]) -> ImportedAccount:
    s = block.settings
    where = f"account {block.name} (line {block.line})"
    if not s.get("host"):
        raise ConfigError(f"mpop {where}: no host")
    if not s.get("user"):
        raise ConfigError(f"mpop {where}: no user; fetchpop needs one")
    account = ImportedAccount(account_name(block.name), {"host": s["host"], "user": s["user"]})
    account.origin = where
    _tls(account, s, environ)
    _login(account, s)
    _delivery(account, s.get("delivery", ""), where)
    _keep_and_limits(account, block)
    for cmd in block.own:
        if cmd in _NOT_SUPPORTED and block.own[cmd] not in ("", "off"):
            account.warn(f"{cmd} not copied: {_NOT_SUPPORTED[cmd]}")
    return account


def _tls(account: ImportedAccount, s: Mapping[str, str], environ: Mapping[str, str]) -> None:
    """``tls``, ``tls_starttls``, ``port``, and what mpop trusted."""
    keys = account.keys
    tls = _on(s["tls"]) if "tls" in s else False
    starttls = _on(s.get("tls_starttls", "on"))
    if not tls:
        unencrypted(account, TOOL)
    else:
        keys["tls"] = "starttls" if starttls else "implicit"
    implicit = tls and not starttls
    keys["port"] = int(s["port"]) if s.get("port", "").isdigit() else (995 if implicit else 110)
    if tls:
        _trust(account, s, environ)


def _trust(account: ImportedAccount, s: Mapping[str, str], environ: Mapping[str, str]) -> None:
    trust = s.get("tls_trust_file", "system")
    if trust not in ("", "system"):
        ca_file(account, trust, "tls_trust_file", environ)
    if s.get("tls_fingerprint"):
        pin = sha256_fingerprint(s["tls_fingerprint"])
        if pin is None:
            account.warn(
                "tls_fingerprint is not SHA-256; not copied; see "
                f"`fetchpop serverinfo {account.name}` for the SHA-256 one"
            )
        else:
            account.keys["tls_fingerprint"] = pin
    if "tls_certcheck" in s and not _on(s["tls_certcheck"]):
        account.warn(
            "mpop did not check the server certificate (tls_certcheck off); fetchpop "
            "always does; pin a self-signed one with tls_fingerprint"
        )


def _login(account: ImportedAccount, s: Mapping[str, str]) -> None:
    auth = s.get("auth", "on").lower()
    if auth in _AUTH:
        if _AUTH[auth] != "auto":
            account.keys["auth"] = _AUTH[auth]
    else:
        account.warn(f"auth {auth} is not supported; fetchpop chooses the method")
    if s.get("passwordeval"):
        account.keys["password_command"] = as_command(s["passwordeval"])
    elif s.get("password"):
        password_warning(account, TOOL)


def _keep_and_limits(account: ImportedAccount, block: MpopAccount) -> None:
    s, keys = block.settings, account.keys
    keys["keep"] = _on(s["keep"]) if "keep" in s else False
    sizes = [n for n in (_size(s.get("killsize", "off")), _size(s.get("skipsize", "off"))) if n]
    if sizes:
        keys["max_size"] = min(sizes)
        if "killsize" in block.own and _size(s["killsize"]) and not keys["keep"]:
            account.warn("killsize: fetchpop leaves larger messages on the server (skips them)")
    if s.get("timeout", "off").isdigit():
        keys["timeout"] = int(s["timeout"])
    if "only_new" in s and not _on(s["only_new"]):
        account.warn("only_new off not copied: fetchpop fetches only new messages")


def _delivery(account: ImportedAccount, value: str, where: str) -> None:
    method, _, arg = re.sub(r"[ \t]", " ", value.strip(), count=1).partition(" ")
    arg = _trim(arg)  # mpop strips the quotes around the method's argument too
    if method in ("maildir", "mbox") and arg:
        account.keys["deliver"] = f"{method}:{arg}"
    elif method == "mda" and arg:
        if "%F" in arg:
            account.warn("the mda command uses %F, which fetchpop does not fill in; edit deliver")
        account.keys["deliver"] = "mda:" + as_command(arg)
    elif method:
        raise ConfigError(f"mpop {where}: delivery {sanitize(method)} is not supported")
    else:
        raise ConfigError(f"mpop {where}: no delivery")


def uidls_path(block: MpopAccount, environ: Mapping[str, str]) -> Path:
    """The account's UIDLS file, ``%U`` and ``%H`` filled in as mpop does."""
    try:
        template = block.settings.get("uidls_file")
        if not template:
            # Before mpop 1.0 every account shared one file, ~/.mpop_uidls.
            old = expand_path("~/.mpop_uidls", environ)
            template = str(old) if old.is_file() else DEFAULT_UIDLS_FILE
        name = template.replace("%U", block.settings.get("user", "")).replace(
            "%H", block.settings.get("host", "")
        )
        return expand_path(name, environ)
    except ValueError as exc:  # an unset $VAR, HOME unset or empty
        raise ConfigError(f"mpop account {block.name}: uidls_file: {exc}") from None


def import_mpop(
    rc_path: Path, *, uidls_file: Path | None = None, environ: Mapping[str, str]
) -> ImportResult:
    """Read an mpop configuration and its UIDLS files into fetchpop accounts."""
    rc = parse_mpoprc(read_text(rc_path), rc_path)
    result = ImportResult(TOOL, rc_path, [], [f"{rc_path}: {w}" for w in rc.warnings])
    cache: dict[Path, dict[tuple[str, str], list[str]] | None] = {}
    for block in rc.accounts:
        account = _convert(block, environ)
        path = uidls_file or uidls_path(block, environ)
        if path not in cache:
            cache[path] = parse_uidls(read_text(path), path) if path.is_file() else None
        lists = cache[path]
        if lists is None:
            account.warn(f"no UIDLS file at {path}; everything on the server counts as new")
        else:
            account.seen_file = path
            key = (block.settings["host"], block.settings["user"])
            uidls = lists.get(key, [])
            bad = sum(1 for u in uidls if not valid_uidl(u))
            if bad:
                account.warn(f"{bad} malformed UIDL(s) in {path} skipped")
            account.uidls = {u: None for u in uidls if valid_uidl(u)}
            if not uidls and account.keys["keep"]:
                account.warn(f"no UIDLs for this account in {path}")
        result.accounts.append(account)
    unique_names(result.accounts)
    return result
