"""getmail's getmailrc and its oldmail files.

Strategy: a getmailrc is an INI file read with ``RawConfigParser`` (getmail's
own ``/usr/bin/getmail``): ``[retriever]``, ``[destination]``, ``[options]``
and optional ``[filter-*]`` sections. Tuple values (``password_command``,
``arguments``) are Python tuple literals, which getmail ``eval``\\ s; we read
them with :func:`ast.literal_eval` and never run anything.

getmail keeps the UIDLs it delivered in ``<getmaildir>/oldmail-SERVER-PORT-USER``
(characters ``/\\:;<>|`` replaced by ``-``), one ``UIDL\\0TIMESTAMP`` line each
(``write_oldmailfile`` in getmailcore/_retrieverbases.py). getmail stores a
``/`` in a UIDL as ``-``.
"""

from __future__ import annotations

import ast
import configparser
import re
import shlex
from collections.abc import Mapping
from pathlib import Path

from fetchpop.errors import ConfigError, sanitize
from fetchpop.importers.common import (
    ImportedAccount,
    ImportResult,
    account_name,
    ca_file,
    password_warning,
    read_text,
    sha256_fingerprint,
    unencrypted,
    valid_uidl,
)
from fetchpop.importers.fetchmail import not_copied

TOOL = "getmail"

_RETRIEVERS = {"SimplePOP3Retriever": False, "SimplePOP3SSLRetriever": True}
_NOT_SUPPORTED = {
    "retriever": {
        "delete_dup_msgids": "fetchpop stops at duplicate UIDLs",
        "keyfile": "TLS client certificates are not supported",
        "certfile": "TLS client certificates are not supported",
        "ssl_version": "fetchpop negotiates TLS itself",
        "ssl_ciphers": "fetchpop negotiates TLS itself",
        "ssl_cert_hostname": "the certificate must match server",
        "getmaildir": "use --oldmail-dir to say where the oldmail files are",
    },
    "destination": {
        "user": "fetchpop delivers as the user running it",
        "group": "fetchpop delivers as the user running it",
        "filemode": "fetchpop's Maildir files are private (0600)",
        "locktype": "fetchpop locks mbox files with dot-lock and fcntl",
        "unixfrom": "not supported",
        "ignore_stderr": "fetchpop reports MDA errors",
        "allow_root_commands": "not needed",
        "pipe_stdout": "fetchpop discards the MDA's output",
        "fallback": "fetchpop delivers to one recipient (a 5xx counts towards skipping)",
    },
    "options": {
        "delete_bigger_than": "fetchpop leaves larger messages on the server (see max_size)",
        "max_bytes_per_session": "see max_messages",
        "delivered_to": "fetchpop delivers messages unchanged (no Delivered-To header)",
        "received": "fetchpop delivers messages unchanged (no Received header)",
        "message_log": "use fetchpop -v and fetchpop status",
        "message_log_verbose": "use fetchpop -v",
        "message_log_syslog": "use fetchpop -v",
        "fingerprint": "see fetchpop serverinfo",
        "use_netrc": "use password_command or the keyring",
        "netrc_file": "use password_command or the keyring",
        "skip_imap_fetch_size": "IMAP only",
        "to_oldmail_on_each_mail": "fetchpop records every message as it is delivered",
    },
}
_SILENT = {"options": {"verbose"}, "retriever": {"type"}, "destination": {"type"}}
#: Keys :func:`parse_getmailrc` copies, or explains itself; other sections are filters.
_COPIED = {
    "retriever": {"server", "username", "port", "ca_certs", "ssl_fingerprints",
                  "use_apop", "password", "password_command", "timeout"},
    "destination": {"path", "arguments", "host", "port", "override"},
    "options": {"delete", "read_all", "delete_after", "max_message_size",
                "max_messages_per_session"},
}  # fmt: skip


def _tuple(value: str, what: str, path: Path) -> tuple[str, ...]:
    """A getmail tuple-of-strings value, read without running it."""
    try:
        parsed = ast.literal_eval(value.strip() or "()")
    except (ValueError, SyntaxError):
        raise ConfigError(f"{path}: {what}: not a tuple of strings: {sanitize(value)}") from None
    if not isinstance(parsed, tuple):
        raise ConfigError(f"{path}: {what}: not a tuple of strings: {sanitize(value)}")
    return tuple(str(item) for item in parsed)


def _bool(value: str) -> bool:
    return value.strip().lower() in ("1", "yes", "true", "on")


def _int(section: configparser.SectionProxy, key: str, path: Path) -> int | None:
    if key not in section:
        return None
    try:
        return int(section[key])
    except ValueError:
        raise ConfigError(f"{path}: [{section.name}] {key}: not an integer") from None


def oldmail_name(server: str, port: int, username: str) -> str:
    """The oldmail file's name for a POP3 retriever, as getmail forms it."""
    return re.sub(r"[/\\:;<>|]+", "-", f"oldmail-{server}-{port}-{username}")


def parse_oldmail(text: str) -> dict[str, float]:
    """UIDL -> the time getmail first delivered it, from an oldmail file."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        uidl, nul, stamp = line.strip().partition("\0")
        if nul and stamp.strip().isdigit():
            out[uidl] = float(stamp.strip())
    return out


def parse_getmailrc(
    text: str, path: Path, *, name: str | None, environ: Mapping[str, str]
) -> ImportedAccount:
    """The POP3 account a getmailrc describes."""
    parser = _read_ini(text, path)
    r = parser["retriever"]
    kind = _retriever_type(r, path)
    ssl = _RETRIEVERS[kind]
    port = _int(r, "port", path) or (995 if ssl else 110)
    stem = re.sub(r"^getmailrc[-_.]?|[-_.]?getmailrc$", "", path.name)
    account = ImportedAccount(
        account_name(name or stem or r["server"]),
        {"host": r["server"], "user": r["username"], "port": port},
    )
    account.origin = f"{path.name} [retriever] {kind}"
    _tls(account, r, ssl, path, environ)
    _login(account, r, path)
    if r.get("timeout", "").isdigit() and int(r["timeout"]) > 0:
        account.keys["timeout"] = int(r["timeout"])
    _destination(account, parser["destination"], path)
    _options(account, parser["options"] if parser.has_section("options") else None, path)
    _not_copied(account, parser)
    return account


def _read_ini(text: str, path: Path) -> configparser.RawConfigParser:
    """The getmailrc as getmail reads it, with its [retriever] and [destination]."""
    parser = configparser.RawConfigParser(strict=False)
    try:
        parser.read_string(text, source=str(path))
    except configparser.MissingSectionHeaderError as exc:
        # Never the lines themselves: one of them could hold a password.
        raise ConfigError(f"{path}: line {exc.lineno}: a key before any [section]") from None
    except configparser.ParsingError as exc:
        lines = ", ".join(str(number) for number, _line in exc.errors)
        raise ConfigError(f"{path}: line {lines}: not a section, key = value or comment") from None
    except configparser.Error as exc:
        raise ConfigError(f"{path}: {sanitize(' '.join(exc.message.split()))}") from None
    for section in ("retriever", "destination"):
        if not parser.has_section(section):
            raise ConfigError(f"{path}: no [{section}] section")
    return parser


def _retriever_type(r: configparser.SectionProxy, path: Path) -> str:
    """The retriever's type, once it is a POP3 one with a server and a username."""
    kind = r.get("type", "")
    if kind not in _RETRIEVERS:
        raise ConfigError(
            f"{path}: [retriever] type {sanitize(kind)}: fetchpop imports only "
            "SimplePOP3Retriever and SimplePOP3SSLRetriever"
        )
    for key in ("server", "username"):
        if not r.get(key):
            raise ConfigError(f"{path}: [retriever] {key} is missing")
    return kind


def _tls(
    account: ImportedAccount,
    r: configparser.SectionProxy,
    ssl: bool,
    path: Path,
    environ: Mapping[str, str],
) -> None:
    """``tls``, ``ca_file`` and ``tls_fingerprint`` from the retriever."""
    if ssl:
        account.keys["tls"] = "implicit"
        if not r.get("ca_certs") and not r.get("ssl_fingerprints"):
            account.warn(
                "getmail did not verify the server certificate (no ca_certs); fetchpop "
                "verifies it against the system's CAs"
            )
    else:
        unencrypted(account, TOOL)
    if r.get("ca_certs"):
        ca_file(account, r["ca_certs"], "ca_certs", environ)
    if r.get("ssl_fingerprints"):
        pins = _tuple(r["ssl_fingerprints"], "ssl_fingerprints", path)
        pin = sha256_fingerprint(pins[0]) if pins else None
        if pin:
            account.keys["tls_fingerprint"] = pin
        if len(pins) > 1:
            account.warn("ssl_fingerprints: fetchpop pins one certificate; the first is used")


def _login(account: ImportedAccount, r: configparser.SectionProxy, path: Path) -> None:
    """``auth`` and ``password_command``, and a word about a password in the file."""
    if _bool(r.get("use_apop", "false")):
        account.keys["auth"] = "apop"
    if r.get("password_command"):
        words = _tuple(r["password_command"], "password_command", path)
        if words:
            account.keys["password_command"] = shlex.join(words)
    elif r.get("password"):
        password_warning(account, TOOL)


def _not_copied(account: ImportedAccount, parser: configparser.RawConfigParser) -> None:
    """A warning for every section and key that has no fetchpop equivalent."""
    for section in parser.sections():
        if section not in _COPIED:
            account.warn(f"[{sanitize(section)}] not copied: fetchpop has no filters")
            continue
        skip = _COPIED[section] | _SILENT.get(section, set())
        left = (key for key in parser[section] if key not in skip)
        not_copied(account, left, _NOT_SUPPORTED[section], f"[{section}] ")


def _destination(account: ImportedAccount, d: configparser.SectionProxy, path: Path) -> None:
    kind, target = d.get("type", ""), d.get("path", "")
    if kind in ("Maildir", "Mboxrd") and target:
        prefix = "maildir" if kind == "Maildir" else "mbox"
        if kind == "Maildir":
            target = target.rstrip("/") or "/"
        account.keys["deliver"] = f"{prefix}:{target}"
    elif kind == "MDA_external" and target:
        args = _tuple(d.get("arguments", "()"), "arguments", path)
        if any("%(" in a for a in args):
            account.warn(
                "the MDA arguments use %(...) substitutions, which fetchpop does not fill in; "
                "edit deliver"
            )
        account.keys["deliver"] = "mda:" + shlex.join((target, *args))
    elif kind == "MDA_lmtp" and d.get("host", "").strip():
        _lmtp(account, d, path)
    else:
        raise ConfigError(
            f"{path}: [destination] type {sanitize(kind)}: fetchpop delivers only to "
            "Maildir, Mboxrd, MDA_external or MDA_lmtp"
        )


def _lmtp(account: ImportedAccount, d: configparser.SectionProxy, path: Path) -> None:
    """MDA_lmtp: ``host`` is a unix socket's path or a host name, ``port``
    (Python's smtplib.LMTP default, 2003) goes with a host; ``override`` is
    the recipient (without it getmail took the message's own)."""
    host = d.get("host", "").strip()
    if host.startswith("/"):
        account.keys["deliver"] = f"lmtp:{host}"
    else:
        port = _int(d, "port", path) or 2003
        shown = f"[{host}]" if ":" in host else host
        account.keys["deliver"] = f"lmtp:{shown}:{port}"
    override = d.get("override", "").strip()
    if override:
        account.keys["recipient"] = override
    else:
        account.warn(
            "getmail gave LMTP the recipient the message names; fetchpop gives the one "
            "in recipient (default: your user name): check it"
        )


def _options(account: ImportedAccount, o: configparser.SectionProxy | None, path: Path) -> None:
    keys = account.keys
    delete = _bool(o.get("delete", "false")) if o is not None else False
    keys["keep"] = not delete
    if o is None:
        account.warn(
            "read_all is on by default: getmail fetched every message on each run; "
            "fetchpop fetches only new ones"
        )
        return
    days = _int(o, "delete_after", path)
    if days and not delete:
        keys["delete_after_days"] = days
    size = _int(o, "max_message_size", path)
    if size:
        keys["max_size"] = size
    count = _int(o, "max_messages_per_session", path)
    if count:
        keys["max_messages"] = count
    if _bool(o.get("read_all", "true")):
        account.warn(
            "read_all is on (getmail's default): getmail fetched every message on each "
            "run; fetchpop fetches only new ones"
        )


def import_getmail(
    rc_path: Path,
    *,
    oldmail_dir: Path | None = None,
    name: str | None = None,
    environ: Mapping[str, str],
) -> ImportResult:
    """Read a getmailrc and its oldmail file into a fetchpop account."""
    account = parse_getmailrc(read_text(rc_path), rc_path, name=name, environ=environ)
    result = ImportResult(TOOL, rc_path, [account])
    folder = oldmail_dir or rc_path.parent
    keys = account.keys
    oldmail = folder / oldmail_name(str(keys["host"]), int(str(keys["port"])), str(keys["user"]))
    if not oldmail.is_file():
        account.warn(f"no oldmail file at {oldmail}; everything on the server counts as new")
        return result
    stamps = parse_oldmail(read_text(oldmail))
    bad = sum(1 for u in stamps if not valid_uidl(u))
    if bad:
        account.warn(f"{bad} malformed UIDL(s) in {oldmail} skipped")
    account.uidls = {u: t for u, t in stamps.items() if valid_uidl(u)}
    account.seen_file = oldmail
    if not account.uidls and keys["keep"]:
        account.warn(f"no UIDLs in {oldmail}; everything on the server counts as new")
    if any("-" in u for u in account.uidls):
        account.warn(
            "getmail stored any '/' in a UIDL as '-'; if this server's UIDLs contain '/', "
            "those messages will be fetched once more"
        )
    return result
