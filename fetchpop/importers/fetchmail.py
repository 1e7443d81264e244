"""fetchmail's accounts and seen UIDLs taken over: each POP3 user of each
server entry of a parsed ~/.fetchmailrc (:mod:`fetchpop.importers.fetchmailrc`)
becomes one fetchpop account; options without an equivalent are reported,
never dropped silently.
"""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Iterable, Mapping
from pathlib import Path

from fetchpop.importers.common import (
    ImportedAccount,
    ImportResult,
    account_name,
    as_command,
    ca_file,
    local_user,
    password_warning,
    read_text,
    unencrypted,
    unique_names,
    valid_uidl,
)
from fetchpop.importers.fetchmailrc import (
    Entry,
    FetchmailRc,
    User,
    parse_fetchids,
    parse_fetchmailrc,
)

TOOL = "fetchmail"

_NOT_SUPPORTED = {
    "flush": "fetchpop never deletes messages it has not fetched",
    "limitflush": "oversized messages are left on the server",
    "fetchall": "fetchpop fetches only messages it has not delivered before",
    "idle": "IDLE is IMAP only",
    "folder": "POP3 has no folders",
    "antispam": "fetchpop does not forward by SMTP",
    "preconnect": "run the command before fetchpop instead",
    "postconnect": "run the command after fetchpop instead",
    "plugin": "fetchpop connects directly",
    "plugout": "fetchpop does not forward by SMTP",
    "interval": "schedule fetchpop per account (cron, systemd timer)",
    "sslcert": "TLS client certificates are not supported",
    "sslkey": "TLS client certificates are not supported",
    "sslcertpath": "use ca_file with a PEM file instead",
    "warnings": "oversized messages are reported at every sync",
    "batchlimit": "fetchpop does not forward by SMTP",
    "fetchsizelimit": "fetchpop lists sizes once per session",
    "expunge": "fetchpop deletes at the end of the session",
    "interface": "not supported",
    "monitor": "not supported",
    "principal": "Kerberos is not supported",
    "qvirtual": "multidrop mailboxes are not supported",
    "aka": "multidrop mailboxes are not supported",
    "local": "multidrop mailboxes are not supported",
    "fetchdomains": "multidrop mailboxes are not supported",
    "envelope": "multidrop mailboxes are not supported",
    "dns": "multidrop mailboxes are not supported",
    "checkalias": "multidrop mailboxes are not supported",
    "tracepolls": "fetchpop delivers messages unchanged",
    "rewrite": "fetchpop delivers messages unchanged",
    "forcecr": "fetchpop delivers messages with LF line ends",
    "pass8bits": "fetchpop delivers messages unchanged",
    "dropstatus": "fetchpop delivers messages unchanged",
    "dropdelivered": "fetchpop delivers messages unchanged",
    "mimedecode": "fetchpop delivers messages unchanged",
    "bad-header": "fetchpop delivers messages unchanged",
    "properties": "ignored",
}
#: Options fetchpop needs no word about: it already behaves that way.
_SILENT = {"uidl", "stripcr", "sslcertck", "fastuidl"}
#: fetchmail's ``auth`` values fetchpop can honour.
_AUTH = {"any": "auto", "password": "auto"}
#: The ``proto`` values that are POP3 (``auto`` tries IMAP first, then POP3).
_POP3 = {"auto", "apop", "pop3", "rpop", "sdps"}
#: Options :func:`_convert` copies, or explains itself.
_COPIED = {
    "via", "proto", "port", "service", "ssl", "sslproto", "sslcertfile", "sslfingerprint",
    "auth", "pass", "mda", "bsmtp", "keep", "limit", "fetchlimit", "timeout", "smtphost",
    "smtpaddress", "smtpname", "lmtp", "esmtpname", "esmtppassword", "unknown", "is", "to",
}  # fmt: skip


# -- tokens ----------------------------------------------------------------------------


def _path(text: str, environ: Mapping[str, str]) -> str:
    """A file name as fetchmail reads it: relative to $FETCHMAILHOME or $HOME; no ``~``."""
    home = environ.get("FETCHMAILHOME") or environ.get("HOME") or str(Path.home())
    return os.path.join(home, text)


def default_idfile(rc: FetchmailRc, environ: Mapping[str, str]) -> Path:
    """Where fetchmail kept its UIDLs: ``set idfile``, else ``$FETCHMAILHOME/.fetchids``
    or ``~/.fetchids``."""
    return Path(_path(rc.idfile or ".fetchids", environ))


# -- to fetchpop accounts ---------------------------------------------------------------


def _service_port(value: str) -> int | None:
    if value.isdigit():
        return int(value)
    try:
        return socket.getservbyname(value, "tcp")
    except OSError:
        return {"pop3": 110, "pop3s": 995}.get(value.lower())


def _convert(
    entry: Entry,
    user: User,
    options: dict[str, object],
    environ: Mapping[str, str],
) -> ImportedAccount | None:
    """One user of one entry as a fetchpop account (None: not a POP3 account)."""
    account = _new_account(entry, user, options, environ)
    if not _protocol(account, options):
        return None
    _server(account, options)
    _certificates(account, options, environ)
    _login(account, options)
    _delivery(account, user, options, environ)
    _keep_and_limits(account, options)
    _not_copied(account, options)
    return account


def _new_account(
    entry: Entry, user: User, options: dict[str, object], environ: Mapping[str, str]
) -> ImportedAccount:
    """The account with its host and user, and what fetchmail assumed about them."""
    remote = user.remote or local_user(environ)
    host = str(options.get("via") or entry.label)
    account = ImportedAccount(account_name(entry.label), {"host": host, "user": remote})
    account.origin = f'{entry.kind} {entry.label} user "{remote}" (line {user.line})'
    if user.remote is None:
        account.warn(f"no user name given; fetchmail's default, {remote}, is used")
    if entry.kind == "skip":
        account.warn("a 'skip' entry: fetchmail polled it only when named on its command line")
    return account


def _protocol(account: ImportedAccount, options: dict[str, object]) -> bool:
    """Whether ``proto`` is POP3 (APOP sets ``auth``)."""
    proto = str(options.get("proto", "auto")).lower()
    if proto == "apop":
        account.keys["auth"] = "apop"
    elif proto == "auto":
        account.warn("proto auto (fetchmail's default) tries IMAP first; imported as POP3")
    return proto in _POP3


def _server(account: ImportedAccount, options: dict[str, object]) -> None:
    """``tls`` from ``ssl``, and ``port`` from ``service`` or ``port``."""
    keys = account.keys
    port = options.get("service") or options.get("port")
    ssl = options.get("ssl") is True
    if ssl:
        keys["tls"] = "implicit"
    else:
        unencrypted(account, TOOL)
    if port is not None:
        number = _service_port(str(port))
        if number is None or not 1 <= number <= 65535:
            account.warn(f"service {port} is not a known port; the default port is used")
        else:
            keys["port"] = number
    keys.setdefault("port", 995 if ssl else 110)


def _certificates(
    account: ImportedAccount, options: dict[str, object], environ: Mapping[str, str]
) -> None:
    """The TLS version and certificate options: ``ca_file``, or why not copied."""
    sslproto = options.get("sslproto")
    exact = str(sslproto).lower() not in ("", "auto", "ssl23") and not str(sslproto).endswith("+")
    if sslproto is not None and exact:
        account.warn(f"sslproto {sslproto} not copied: fetchpop negotiates the TLS version")
    if options.get("sslcertck") is False:
        account.warn(
            "fetchmail did not insist on a valid certificate (no sslcertck); fetchpop "
            "always verifies it; pin a self-signed one with tls_fingerprint"
        )
    if "sslcertfile" in options:
        ca_file(account, _path(str(options["sslcertfile"]), environ), "sslcertfile", environ)
    if "sslfingerprint" in options:
        account.warn(
            "sslfingerprint is an MD5 fingerprint, which fetchpop does not accept; "
            f"see `fetchpop serverinfo {account.name}` for the SHA-256 one (tls_fingerprint)"
        )


def _login(account: ImportedAccount, options: dict[str, object]) -> None:
    """``auth``, and a word about a password in the file."""
    auth = options.get("auth")
    if auth is not None:
        value = _AUTH.get(str(auth).lower())
        if value is None:
            account.warn(f"auth {auth} is not supported; fetchpop chooses the method")
        elif "auth" not in account.keys:
            account.keys["auth"] = value
    if "pass" in options:
        password_warning(account, TOOL)


def _delivery(
    account: ImportedAccount, user: User, options: dict[str, object], environ: Mapping[str, str]
) -> None:
    """``deliver``: the ``mda``; else SMTP or LMTP as fetchmail forwarded (to
    ``smtphost``, by default localhost port 25), to the local name."""
    if "mda" in options:
        command = str(options["mda"])
        if re.search(r"%[TFs]", command):
            account.warn(
                "the mda command uses %T/%F/%s, which fetchpop does not fill in; edit deliver"
            )
        account.keys["deliver"] = "mda:" + as_command(command)
        return
    if len(user.locals) > 1:
        account.warn("multidrop (several local names) is not supported; the first is used")
    local = user.locals[0] if user.locals else local_user(environ)
    if "bsmtp" in options:
        account.warn("bsmtp delivery is not supported; mail goes to sendmail instead")
        account.keys["deliver"] = "mda:/usr/sbin/sendmail -oi -- " + as_command(local)
        return
    _forwarding(account, local, options)


def _forwarding(account: ImportedAccount, local: str, options: dict[str, object]) -> None:
    """fetchmail's SMTP or LMTP forwarding: the first ``smtphost`` (``HOST``,
    ``HOST/PORT``, or for LMTP a socket's ``/PATH``), the envelope recipient
    (``smtpname``, or the local name with ``@smtpaddress``), ESMTP AUTH."""
    lmtp = options.get("lmtp") is True
    hosts = options.get("smtphost") or ["localhost"]
    assert isinstance(hosts, list)
    if len(hosts) > 1:
        account.warn(f"smtphost lists {len(hosts)} hosts; fetchpop forwards to the first only")
    first = str(hosts[0])
    if lmtp and first.startswith("/"):
        account.keys["deliver"] = f"lmtp:{first}"
    else:
        host, _, port = first.partition("/")
        if lmtp and not port:
            account.warn("lmtp without a port in smtphost: fetchpop uses port 24; check it")
        port = port or ("24" if lmtp else "25")
        shown = f"[{host}]" if ":" in host else host
        account.keys["deliver"] = f"{'lmtp' if lmtp else 'smtp'}:{shown}:{port}"
    if options.get("smtpname"):
        account.keys["recipient"] = str(options["smtpname"])
    elif options.get("smtpaddress"):
        account.keys["recipient"] = f"{local}@{options['smtpaddress']}"
    else:
        account.keys["recipient"] = local
    if options.get("esmtpname") and not lmtp:
        account.keys["smtp_user"] = str(options["esmtpname"])
    if options.get("esmtppassword"):
        account.warn(
            "the esmtppassword was not copied; put it in smtp_password_command (or "
            "smtp_password, in this private file)"
        )


def _keep_and_limits(account: ImportedAccount, options: dict[str, object]) -> None:
    """``keep``, ``max_size`` and ``max_messages`` (``limit``, ``fetchlimit``), ``timeout``."""
    keys = account.keys
    keys["keep"] = options.get("keep") is True
    for key, out in (("limit", "max_size"), ("fetchlimit", "max_messages")):
        if key in options:
            text = str(options[key])
            if not text.isdigit():
                account.warn(f"{key} {text} is not a number; not copied")
            elif int(text) > 0:
                keys[out] = int(text)
    if "timeout" in options:
        text = str(options["timeout"])
        if text.isdigit() and int(text) > 0:
            keys["timeout"] = int(text)


def _not_copied(account: ImportedAccount, options: dict[str, object]) -> None:
    """A warning for every option that is set and has no fetchpop equivalent."""
    left = (
        key
        for key, setting in options.items()
        if key not in _COPIED and key not in _SILENT and setting is not False
    )
    not_copied(account, left, _NOT_SUPPORTED)
    unknown = options.get("unknown")
    for word in unknown if isinstance(unknown, list) else []:
        account.warn(f"unknown keyword {word!r} ignored")


def not_copied(
    account: ImportedAccount, keys: Iterable[str], reasons: Mapping[str, str], prefix: str = ""
) -> None:
    """Warn that each of *keys* was not copied, and why: *reasons*, else "not supported".

    Shared with :mod:`.getmail`, which gives the ``[section] `` as *prefix*.
    """
    for key in keys:
        account.warn(f"{prefix}{key} not copied: {reasons.get(key, 'not supported')}")


def import_fetchmail(
    rc_path: Path, *, ids_path: Path | None = None, environ: Mapping[str, str]
) -> ImportResult:
    """Read a ~/.fetchmailrc and its ids file into fetchpop accounts."""
    rc = parse_fetchmailrc(read_text(rc_path), rc_path)
    result = ImportResult(TOOL, rc_path, [], [f"{rc_path}: {w}" for w in rc.warnings])
    defaults = Entry("defaults", "", 0)
    for entry in rc.entries:
        if entry.kind == "defaults":
            defaults = entry
            continue
        users = entry.users or [User(entry.line)]
        base_user = defaults.users[0] if defaults.users else None
        made = []
        for user in users:
            if not entry.users and base_user is not None:
                user = User(entry.line, base_user.remote, list(base_user.locals))
            inherited = base_user.options if base_user is not None else {}
            options = {**defaults.options, **inherited, **entry.options, **user.options}
            account = _convert(entry, user, options, environ)
            if account is None:
                proto = options.get("proto")
                result.warnings.append(
                    f"{rc_path}: line {entry.line}: {entry.label}: proto {proto} is not POP3; "
                    "not imported"
                )
                continue
            made.append(account)
        if len(made) > 1:
            for account in made:
                account.rename(account_name(f"{entry.label}-{account.keys['user']}"))
        result.accounts.extend(made)
    unique_names(result.accounts)

    ids = ids_path or default_idfile(rc, environ)
    seen: dict[tuple[str, str], list[str]] = {}
    if ids.exists():
        seen = parse_fetchids(read_text(ids))
    for account in result.accounts:
        _attach_seen(account, seen, ids, ids.exists())
    return result


def _attach_seen(
    account: ImportedAccount,
    seen: dict[tuple[str, str], list[str]],
    ids: Path,
    found: bool,
) -> None:
    # fetchmail's query name is the via name when given, else the poll name:
    # the host we wrote.
    uidls = seen.get((str(account.keys["user"]).lower(), str(account.keys["host"]).lower()), [])
    bad = [u for u in uidls if not valid_uidl(u)]
    if bad:
        account.warn(f"{len(bad)} malformed UIDL(s) in {ids} skipped")
    account.uidls = {u: None for u in uidls if valid_uidl(u)}
    account.seen_file = ids if found else None
    if not found:
        account.warn(f"no ids file at {ids}; everything on the server counts as new")
    elif not account.uidls and account.keys.get("keep"):
        account.warn(f"no UIDLs for this account in {ids}; everything on the server counts as new")
