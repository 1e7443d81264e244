"""fetchmail's ~/.fetchmailrc and ~/.fetchids.

Strategy: the run control file is free-format tokens (fetchmail(1), "THE RUN
CONTROL FILE"): quoted strings with fetchmail's own escapes, numbers, bare
words; ``,`` ``;`` ``:`` and the noise words (and, with, has, wants, options)
are ignored. A server entry is ``poll|skip|defaults NAME`` followed by server
options, user descriptions (``user NAME [there|here] [is LOCAL... [here]]``)
and user options. Like fetchmail we accept any option anywhere and apply it to
the user being described (or, before the first user, to the whole entry).
Every POP3 user of every entry becomes one fetchpop account; options without
an equivalent are reported, never dropped silently.

The ids file (written by ``write_saved_lists`` in fetchmail's uid.c) has one
line per UIDL: ``REMOTEUSER@QUERYNAME UIDL``, where QUERYNAME is the ``via``
name or else the poll name, both compared without regard to case.
"""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from fetchpop.errors import ConfigError, sanitize
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

TOOL = "fetchmail"

_NOISE = {"and", "with", "has", "wants", "options"}
_ALIASES = {
    "protocol": "proto",
    "username": "user",
    "password": "pass",
    "authenticate": "auth",
    "localdomains": "local",
    "server": "poll",
}
#: Options that are on or off (``no X`` turns them off).
_FLAGS = {
    "uidl", "dns", "checkalias", "ssl", "sslcertck", "keep", "flush", "limitflush",
    "fetchall", "rewrite", "stripcr", "forcecr", "pass8bits", "dropstatus",
    "dropdelivered", "mimedecode", "idle", "tracepolls", "lmtp", "envelope",
}  # fmt: skip
#: Options that take one value.
_VALUES = {
    "via", "proto", "port", "service", "auth", "timeout", "qvirtual", "interface",
    "monitor", "plugin", "plugout", "interval", "principal", "esmtpname",
    "esmtppassword", "bad-header", "pass", "sslcert", "sslkey", "sslcertfile",
    "sslcertpath", "sslfingerprint", "sslproto", "mda", "bsmtp", "preconnect",
    "postconnect", "limit", "warnings", "batchlimit", "fetchlimit", "fetchsizelimit",
    "fastuidl", "expunge", "properties", "smtpaddress", "smtpname",
}  # fmt: skip
#: Options that take a list of values.
_LISTS = {"aka", "local", "folder", "smtphost", "fetchdomains", "antispam", "is", "to"}
_ENTRY = {"poll", "skip", "defaults"}
_KEYWORDS = (
    _FLAGS | _VALUES | _LISTS | _ENTRY | _NOISE | {"user", "set", "no", "here", "there"}
    | {"no" + flag for flag in _FLAGS}  # "nokeep" is "no keep"
)  # fmt: skip

#: What fetchpop does instead, for options it has no key for.
_NOT_SUPPORTED = {
    "flush": "fetchpop never deletes messages it has not fetched",
    "limitflush": "oversized messages are left on the server",
    "fetchall": "fetchpop fetches only messages it has not delivered before",
    "idle": "IDLE is IMAP only",
    "folder": "POP3 has no folders",
    "smtphost": "fetchpop does not forward by SMTP",
    "smtpaddress": "fetchpop does not forward by SMTP",
    "smtpname": "fetchpop does not forward by SMTP",
    "lmtp": "fetchpop does not forward by SMTP or LMTP",
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
    "esmtpname": "fetchpop does not forward by SMTP",
    "esmtppassword": "fetchpop does not forward by SMTP",
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
    "unknown", "is", "to",
}  # fmt: skip


# -- tokens ----------------------------------------------------------------------------


@dataclass(frozen=True)
class _Token:
    text: str
    quoted: bool
    line: int

    @property
    def word(self) -> str | None:
        """The keyword this token is, or None for quoted strings and numbers."""
        if self.quoted:
            return None
        low = self.text.lower()
        return _ALIASES.get(low, low)


_ESCAPES = {"n": "\n", "t": "\t", "b": "\b", "r": "\r"}


def _tokens(text: str, path: Path) -> Iterator[_Token]:
    i, line, n = 0, 1, len(text)
    while i < n:
        c = text[i]
        if c == "\n":
            line += 1
            i += 1
        elif c.isspace() or c in ",;:":
            i += 1
        elif c == "#":
            while i < n and text[i] != "\n":
                i += 1
        elif c == "=":
            yield _Token("=", False, line)
            i += 1
        elif c == '"':
            start = line
            i, value, line = _quoted(text, i + 1, line, path)
            yield _Token(value, True, start)
        else:
            j = i
            while j < n and not text[j].isspace() and text[j] not in ',;:="':
                j += 1
            yield _Token(text[i:j], False, line)
            i = j


def _quoted(text: str, i: int, line: int, path: Path) -> tuple[int, str, int]:
    """Read a quoted string from just after its opening quote."""
    out: list[str] = []
    start, n = line, len(text)
    while i < n:
        c = text[i]
        if c == '"':
            return i + 1, "".join(out), line
        if c == "\n":
            line += 1
        if c != "\\" or i + 1 >= n:
            out.append(c)
            i += 1
            continue
        nxt = text[i + 1]
        if nxt == "\n":  # backslash at the end of a line joins the lines
            line += 1
            i += 2
        elif nxt in _ESCAPES:
            out.append(_ESCAPES[nxt])
            i += 2
        elif nxt == "x" and re.match(r"[0-9a-fA-F]{1,2}", text[i + 2 : i + 4]):
            digits = re.match(r"[0-9a-fA-F]{1,2}", text[i + 2 : i + 4])
            assert digits is not None
            out.append(chr(int(digits.group(), 16)))
            i += 2 + len(digits.group())
        elif nxt == "0":  # \0oo: octal, the 0 is one of the three digits
            digits = re.match(r"0[0-7]{0,2}", text[i + 1 : i + 4])
            assert digits is not None
            out.append(chr(int(digits.group(), 8)))
            i += 1 + len(digits.group())
        elif nxt in "123456789":
            digits = re.match(r"[0-9]{1,3}", text[i + 1 : i + 4])
            assert digits is not None
            out.append(chr(int(digits.group()) & 0xFF))
            i += 1 + len(digits.group())
        else:
            out.append(nxt)
            i += 2
    raise ConfigError(f"{path}: line {start}: unterminated quoted string")


# -- the run control file -------------------------------------------------------------


@dataclass
class _User:
    line: int
    remote: str | None = None
    locals: list[str] = field(default_factory=list)
    options: dict[str, object] = field(default_factory=dict)


@dataclass
class _Entry:
    kind: str
    label: str
    line: int
    options: dict[str, object] = field(default_factory=dict)
    users: list[_User] = field(default_factory=list)


@dataclass
class FetchmailRc:
    """The parsed run control file."""

    entries: list[_Entry]
    #: ``set idfile``, if given.
    idfile: str | None
    warnings: list[str]


class _Parser:
    def __init__(self, tokens: list[_Token], path: Path) -> None:
        self.tokens = tokens
        self.pos = 0
        self.path = path
        self.entries: list[_Entry] = []
        self.idfile: str | None = None
        self.warnings: list[str] = []

    def peek(self) -> _Token | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def take(self) -> _Token | None:
        token = self.peek()
        if token is not None:
            self.pos += 1
        return token

    def value(self, after: _Token) -> _Token:
        token = self.take()
        if token is None or (token.word in _KEYWORDS and token.word not in ("here", "there")):
            raise ConfigError(f"{self.path}: line {after.line}: {after.text!r} needs a value")
        return token

    def warn(self, token: _Token, text: str) -> None:
        self.warnings.append(f"line {token.line}: {sanitize(text)}")

    def parse(self) -> FetchmailRc:
        entry: _Entry | None = None
        user: _User | None = None
        while (token := self.take()) is not None:
            word = token.word
            if word in _NOISE:
                continue
            if word == "set":
                self.set_statement(token)
            elif word in _ENTRY:
                label = "" if word == "defaults" else self.value(token).text
                entry, user = _Entry(word, label, token.line), None
                self.entries.append(entry)
            elif entry is None:
                self.warn(token, f"{token.text!r} outside a poll entry; ignored")
            elif word == "user":
                user = _User(token.line)
                entry.users.append(user)
                name = self.value(token).text
                mode = self.peek()
                if mode is not None and mode.word == "here":
                    self.take()
                    user.locals.append(name)
                else:
                    if mode is not None and mode.word == "there":
                        self.take()
                    user.remote = name
            elif word in ("is", "to") and user is not None:
                names = self.names()
                if user.remote is None:  # "user LOCAL here is REMOTE there"
                    user.remote = names[0] if names else None
                    user.locals.extend(names[1:])
                else:
                    user.locals.extend(names)
            else:
                target = user.options if user is not None else entry.options
                self.option(token, target)
        return FetchmailRc(self.entries, self.idfile, self.warnings)

    def names(self) -> list[str]:
        """A list of names (``is``, ``to``): up to the next keyword; ``a=b`` maps."""
        names: list[str] = []
        while (token := self.peek()) is not None:
            if token.word in _KEYWORDS and token.word not in ("here", "there"):
                break
            self.take()
            if token.word in ("here", "there"):
                break
            if token.text == "=" and not token.quoted:
                self.take()  # server-name=client-name: keep the server name
                continue
            names.append(token.text)
        return names

    def option(self, token: _Token, target: dict[str, object]) -> None:
        word = token.word
        if word == "no":
            flag = self.take()
            if flag is None or flag.word not in _FLAGS:
                self.warn(token, f"'no' followed by {flag.text if flag else 'nothing'!r}")
                return
            target[flag.word] = False
        elif word is not None and word.startswith("no") and word[2:] in _FLAGS:
            target[word[2:]] = False
        elif word in _FLAGS:
            if word == "envelope":
                following = self.peek()
                if following is not None and following.word not in _KEYWORDS:
                    self.take()  # envelope [N] HEADER
                    nxt = self.peek()
                    if following.text.isdigit() and nxt is not None and nxt.word not in _KEYWORDS:
                        self.take()
            target[word] = True
        elif word in _VALUES:
            target[word] = self.value(token).text
        elif word in _LISTS:
            target[word] = self.names()
        else:
            target.setdefault("unknown", [])
            unknown = target["unknown"]
            assert isinstance(unknown, list)
            unknown.append(token.text)

    def set_statement(self, token: _Token) -> None:
        name = self.take()
        if name is None:
            return
        if name.word == "no":
            name = self.take()
            if name is not None and name.word != "syslog":  # fetchpop never uses syslog
                self.warn(name, f"'set no {name.text}' has no fetchpop equivalent; ignored")
            return
        if name.word == "idfile":
            self.idfile = self.value(name).text
        elif name.word == "daemon":
            self.value(name)
            self.warn(name, "'set daemon' ignored: run fetchpop from cron or a systemd timer")
        elif name.word in ("logfile", "pidfile", "postmaster", "properties"):
            self.value(name)
            self.warn(name, f"'set {name.text}' has no fetchpop equivalent; ignored")
        else:
            self.warn(name, f"'set {name.text}' has no fetchpop equivalent; ignored")


def parse_fetchmailrc(text: str, path: Path) -> FetchmailRc:
    """Parse a run control file; raises ConfigError for what cannot be read at all."""
    return _Parser(list(_tokens(text, path)), path).parse()


# -- the ids file ---------------------------------------------------------------------


def parse_fetchids(text: str) -> dict[tuple[str, str], list[str]]:
    """UIDLs per (remote user, query name), both lowercased, in file order.

    Mirrors ``initialize_saved_lists`` in fetchmail's uid.c: the user@host part
    ends at the first blank after the first ``@``; the host is after its last
    ``@``; the UIDL is the next word.
    """
    out: dict[tuple[str, str], list[str]] = {}
    for raw in text.splitlines():
        line = raw.lstrip(" \t")
        at = line.find("@")
        blank = line.find(" ", at) if at >= 0 else -1
        if blank < 0:
            continue
        userhost = line[:blank].rstrip(" \t")
        words = line[blank:].split()
        if not words:
            continue
        user, _, host = userhost.rpartition("@")
        out.setdefault((user.lower(), host.lower()), []).append(words[0])
    return out


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
    entry: _Entry,
    user: _User,
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
    entry: _Entry, user: _User, options: dict[str, object], environ: Mapping[str, str]
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
    account: ImportedAccount, user: _User, options: dict[str, object], environ: Mapping[str, str]
) -> None:
    """``deliver``: the ``mda``, else sendmail to the local name (fetchmail used SMTP)."""
    if "mda" in options:
        command = str(options["mda"])
        if re.search(r"%[TFs]", command):
            account.warn(
                "the mda command uses %T/%F/%s, which fetchpop does not fill in; edit deliver"
            )
        account.keys["deliver"] = "mda:" + as_command(command)
        return
    if "bsmtp" in options:
        account.warn("bsmtp delivery is not supported; mail goes to sendmail instead")
    elif options.get("smtphost"):
        account.warn("fetchpop does not forward by SMTP (smtphost); mail goes to sendmail instead")
    else:
        account.warn(
            "fetchmail forwarded mail by SMTP to localhost; fetchpop hands it to "
            "/usr/sbin/sendmail instead (edit deliver to use a Maildir)"
        )
    if len(user.locals) > 1:
        account.warn("multidrop (several local names) is not supported; the first is used")
    local = user.locals[0] if user.locals else local_user(environ)
    account.keys["deliver"] = "mda:/usr/sbin/sendmail -oi -- " + as_command(local)


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
    defaults = _Entry("defaults", "", 0)
    for entry in rc.entries:
        if entry.kind == "defaults":
            defaults = entry
            continue
        users = entry.users or [_User(entry.line)]
        base_user = defaults.users[0] if defaults.users else None
        made = []
        for user in users:
            if not entry.users and base_user is not None:
                user = _User(entry.line, base_user.remote, list(base_user.locals))
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
