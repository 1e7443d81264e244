"""fetchmail's run control file (~/.fetchmailrc) and ids file (~/.fetchids), parsed.

Strategy: the run control file is free-format tokens (fetchmail(1), "THE RUN
CONTROL FILE"): quoted strings with fetchmail's own escapes, numbers, bare
words; ``,`` ``;`` ``:`` and the noise words (and, with, has, wants, options)
are ignored. A server entry is ``poll|skip|defaults NAME`` followed by server
options, user descriptions (``user NAME [there|here] [is LOCAL... [here]]``)
and user options. Like fetchmail we accept any option anywhere and apply it to
the user being described (or, before the first user, to the whole entry).

The ids file (written by ``write_saved_lists`` in fetchmail's uid.c) has one
line per UIDL: ``REMOTEUSER@QUERYNAME UIDL``, where QUERYNAME is the ``via``
name or else the poll name, both compared without regard to case.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from fetchpop.errors import ConfigError, sanitize

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
class User:
    line: int
    remote: str | None = None
    locals: list[str] = field(default_factory=list)
    options: dict[str, object] = field(default_factory=dict)


@dataclass
class Entry:
    kind: str
    label: str
    line: int
    options: dict[str, object] = field(default_factory=dict)
    users: list[User] = field(default_factory=list)


@dataclass
class FetchmailRc:
    """The parsed run control file."""

    entries: list[Entry]
    #: ``set idfile``, if given.
    idfile: str | None
    warnings: list[str]


class _Parser:
    def __init__(self, tokens: list[_Token], path: Path) -> None:
        self.tokens = tokens
        self.pos = 0
        self.path = path
        self.entries: list[Entry] = []
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
        entry: Entry | None = None
        user: User | None = None
        while (token := self.take()) is not None:
            word = token.word
            if word in _NOISE:
                continue
            if word == "set":
                self.set_statement(token)
            elif word in _ENTRY:
                label = "" if word == "defaults" else self.value(token).text
                entry, user = Entry(word, label, token.line), None
                self.entries.append(entry)
            elif entry is None:
                self.warn(token, f"{token.text!r} outside a poll entry; ignored")
            elif word == "user":
                user = User(token.line)
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
