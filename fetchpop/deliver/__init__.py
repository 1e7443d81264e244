"""Where fetched mail goes: a Maildir, an mbox file, an MDA command, an
LMTP or SMTP server, or an IMAP mailbox (``imap://USER@HOST[:PORT]/MAILBOX``).

``parse_deliver`` turns the config value (``maildir:DIR``, ``mbox:FILE``,
``mda:COMMAND``, ``lmtp:SOCKET``, ``lmtp:HOST:PORT``, ``smtp:HOST:PORT``)
into a :class:`DeliverySpec`, and ``format_deliver`` writes one back;
``open_target`` makes the :class:`~fetchpop.deliver.base.Target` that a sync
session writes to. This package is the only code that writes mail.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from fetchpop.deliver.base import Delivery, Target
from fetchpop.paths import expand_path, expand_user

# The targets are imported by open_target(), each only when it is used: a
# sync into a Maildir has no use for the mbox and MDA code (start-up time).
__all__ = [
    "Delivery",
    "DeliverySpec",
    "ImapSettings",
    "ServerOptions",
    "Target",
    "format_deliver",
    "open_target",
    "parse_deliver",
]

Kind = Literal["maildir", "mbox", "mda", "lmtp", "smtp", "imap"]

_FORMS = (
    "maildir:DIR, mbox:FILE, mda:COMMAND, lmtp:SOCKET, lmtp:HOST:PORT, smtp:HOST[:PORT] "
    "or imap://USER@HOST/MAILBOX"
)

#: The kinds that hand the message to a server (an SMTP or LMTP one).
SERVER_KINDS = ("lmtp", "smtp")
SMTP_PORT = 25
SmtpTls = Literal["auto", "starttls", "implicit", "off"]


@dataclass(frozen=True)
class ServerOptions:
    """What an lmtp: or smtp: target needs besides its address (the account's
    ``recipient`` and ``smtp_*`` keys, its timeouts); the config attaches them."""

    #: The envelope recipient; None: the local user name.
    recipient: str | None = None
    tls: SmtpTls = "auto"
    ca_file: Path | None = None
    #: Lowercase hex SHA-256 of the server certificate, as ``tls_fingerprint``.
    tls_fingerprint: str | None = None
    #: AUTH as this user (the password comes from the password source).
    user: str | None = None
    timeout: float = 60.0
    #: Seconds the reply after a message's final dot may take (Sieve, filters).
    reply_timeout: float = 300.0


@dataclass(frozen=True)
class ImapSettings:
    """The ``imap_*`` keys of an account, for an ``imap://`` target (the config attaches them)."""

    tls: Literal["implicit", "starttls", "off"] = "implicit"
    ca_file: Path | None = None
    #: Lowercase hex SHA-256 of the IMAP server's certificate.
    fingerprint: str | None = None
    auth: str = "auto"
    password: str | None = field(default=None, repr=False)
    password_argv: tuple[str, ...] | None = None
    flags: tuple[str, ...] = ()
    keep_date: bool = False
    timeout: float = 60.0


@dataclass(frozen=True)
class DeliverySpec:
    """A parsed ``deliver`` value: *path* for maildir and mbox, *command* for mda;
    for lmtp *path* (a unix socket) or *host* and *port*, for smtp *host* and *port*."""

    kind: Kind
    path: Path | None = None
    command: tuple[str, ...] | None = None
    host: str | None = None
    port: int | None = None
    #: lmtp and smtp: the account's options for the server (not part of the value).
    server: ServerOptions | None = field(default=None, compare=False, repr=False)
    #: imap: the user and the mailbox (with *host*, and *port*, None: by imap_tls).
    user: str | None = None
    mailbox: str | None = None
    #: imap: the account's imap_* keys (not part of the value).
    imap: ImapSettings | None = field(default=None, compare=False, repr=False)


def _absolute_path(text: str, env: Mapping[str, str]) -> Path:
    path = expand_path(text, env)
    # A cron job's working directory is arbitrary: relative paths would wander.
    if not path.is_absolute():
        raise ValueError(f"path {text!r} must be absolute (or start with ~ or $VAR)")
    return path


def _split_command(text: str, env: Mapping[str, str]) -> tuple[str, ...]:
    import shlex  # (only an MDA needs it)

    try:
        words = shlex.split(text)
    except ValueError as exc:  # "No closing quotation" and the like
        raise ValueError(f"mda command {text!r}: {exc}") from None
    if not words or not words[0]:
        raise ValueError("mda command is empty")
    if any("\0" in word for word in words):
        raise ValueError(f"mda command {text!r} contains a NUL character")
    # No shell runs the command, so do the one expansion people rely on.
    return tuple(expand_user(word, env) for word in words)


def _server(kind: Literal["lmtp", "smtp"], text: str, env: Mapping[str, str]) -> DeliverySpec:
    """``lmtp:SOCKET``, ``lmtp:HOST:PORT``, ``smtp:HOST[:PORT]`` (``[v6]:PORT``)."""
    value = repr(f"{kind}:{text}")
    if kind == "lmtp" and text.startswith(("/", "~", "$")):
        return DeliverySpec("lmtp", path=_absolute_path(text, env))
    host, port = text, ""
    if text.startswith("["):
        host, bracket, rest = text[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            raise ValueError(f"{value}: expected [ADDRESS]:PORT")
        port = rest[1:]
    elif text.count(":") == 1:
        host, port = text.split(":")
    elif ":" in text:
        raise ValueError(f"{value}: write an IPv6 address in brackets: [ADDRESS]:PORT")
    if not host or any(ch.isspace() or ch in "/@" or ord(ch) < 0x20 for ch in host):
        also = " or an absolute socket path" if kind == "lmtp" else ""
        raise ValueError(f"{value}: expected HOST:PORT{also}")
    if not port and kind == "lmtp":
        raise ValueError(f"{value}: LMTP over TCP has no default port: write HOST:PORT")
    number = int(port) if port.isdigit() else SMTP_PORT if not port else 0
    if not 1 <= number <= 65535:
        raise ValueError(f"{value}: the port must be a number from 1 to 65535")
    return DeliverySpec(kind, host=host, port=number)


def parse_deliver(value: str, env: Mapping[str, str] | None = None) -> DeliverySpec:
    """Parse ``maildir:DIR``, ``mbox:FILE``, ``mda:COMMAND``, ``lmtp:SOCKET``,
    ``lmtp:HOST:PORT`` or ``smtp:HOST[:PORT]`` (port 25 by default).

    ``~`` and ``$VAR``/``${VAR}`` are expanded in DIR and FILE, which must then
    be absolute. COMMAND is split into words as a POSIX shell would (quotes,
    backslashes), but no shell runs it: no ``$VAR``, globs, pipes or
    redirections; a word starting with ``~`` is expanded. *env* (default
    ``os.environ``) supplies ``$HOME`` and the variables. Raises
    :class:`ValueError` with a message fit for a config error.
    """
    env = os.environ if env is None else env
    if value.strip().lower().startswith("imap://"):
        return _parse_imap(value.strip())
    kind, colon, rest = value.partition(":")
    kind = kind.strip().lower()
    rest = rest.strip()
    if not colon or kind not in ("maildir", "mbox", "mda", *SERVER_KINDS):
        raise ValueError(f"{value!r} is not one of {_FORMS}")
    if not rest:
        what = {"mda": "command", "lmtp": "socket or HOST:PORT", "smtp": "HOST:PORT"}
        raise ValueError(f"{value!r} lacks the {what.get(kind, 'path')} after {kind}:")
    if kind == "lmtp":
        return _server("lmtp", rest, env)
    if kind == "smtp":
        return _server("smtp", rest, env)
    if kind == "mda":
        return DeliverySpec("mda", command=_split_command(rest, env))
    path = _absolute_path(rest, env)
    return DeliverySpec("maildir" if kind == "maildir" else "mbox", path=path)


def _parse_imap(value: str) -> DeliverySpec:
    """``imap://USER@HOST[:PORT][/MAILBOX]``: USER may hold ``@`` (the last one
    ends it) and %XX escapes; MAILBOX (default INBOX) may hold ``/`` and spaces."""
    from urllib.parse import unquote

    authority, slash, mailbox = value[len("imap://") :].partition("/")
    user, at, hostport = authority.rpartition("@")
    user = unquote(user)
    if not at or not user:
        raise ValueError(f"{value!r} lacks the user: imap://USER@HOST/MAILBOX")
    host, port, digits = hostport, None, ""
    if hostport.startswith("["):  # [IPv6]:port
        host, bracket, tail = hostport[1:].partition("]")
        if not bracket or (tail and not tail.startswith(":")):
            raise ValueError(f"{value!r}: expected [ADDRESS]:PORT")
        digits = tail[1:]
    elif hostport.count(":") == 1:
        host, _, digits = hostport.partition(":")
    if digits or hostport.endswith(":"):
        if not digits.isdigit() or not 1 <= int(digits) <= 65535:
            raise ValueError(f"{value!r}: the port must be a number from 1 to 65535")
        port = int(digits)
    if not host or any(ch.isspace() or ch in "/@" or ord(ch) < 0x20 for ch in host):
        raise ValueError(f"{value!r} lacks the host: imap://USER@HOST/MAILBOX")
    mailbox = unquote(mailbox) if slash else ""
    for what, text in (("user", user), ("mailbox", mailbox)):
        if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in text):
            raise ValueError(f"the IMAP {what} in {value!r} contains a control character")
    return DeliverySpec("imap", user=user, host=host, port=port, mailbox=mailbox or "INBOX")


def _format_imap(spec: DeliverySpec) -> str:
    from urllib.parse import quote

    host = f"[{spec.host}]" if ":" in (spec.host or "") else spec.host
    port = "" if spec.port is None else f":{spec.port}"
    user = quote(spec.user or "", safe="@!$&'()*+,;=")
    return f"imap://{user}@{host}{port}/{quote(spec.mailbox or 'INBOX', safe='/[]&')}"


def format_deliver(spec: DeliverySpec) -> str:
    """*spec* written back in the ``deliver`` key's syntax."""
    if spec.kind == "imap":
        return _format_imap(spec)
    if spec.kind == "mda":
        import shlex  # (only an MDA needs it)

        return "mda:" + shlex.join(spec.command or ())
    if spec.kind in SERVER_KINDS and spec.path is None:
        host = f"[{spec.host}]" if ":" in (spec.host or "") else spec.host
        return f"{spec.kind}:{host}:{spec.port}"
    return f"{spec.kind}:{spec.path}"


def open_target(
    spec: DeliverySpec,
    *,
    mbox_lock_timeout: float = 30.0,
    mda_timeout: float = 300.0,
    secret: Callable[[], str] | None = None,
    log: Callable[[str], None] | None = None,
) -> Target:
    """Open the target *spec* describes.

    A Maildir is created at once (``cur``, ``new``, ``tmp``, parents, mode
    0700). An mbox is created and locked at the first ``begin()``, waiting up
    to *mbox_lock_timeout* seconds for the locks. An MDA gets *mda_timeout*
    seconds to read each chunk and to exit. An LMTP or SMTP target connects
    at its first message (:mod:`fetchpop.deliver.smtp`); *secret* (its
    password) is asked only if it logs in (``smtp_user``), and *log* gets its
    transcript (``-vv``). An IMAP mailbox is connected to when first needed;
    *secret* gives its password or OAuth2 access token (without it,
    ``imap_password`` or ``imap_password_command``). Raises
    ``DeliveryError`` or ``LocalIOError`` when a Maildir cannot be created.
    """
    if spec.kind == "imap":
        from fetchpop.deliver.imap import ImapTarget

        return ImapTarget(spec, secret=secret)
    if spec.kind in SERVER_KINDS:
        from fetchpop.deliver.smtp import ServerTarget

        return ServerTarget(spec, spec.server or ServerOptions(), password=secret, log=log)
    if spec.kind == "mda":
        if not spec.command:
            raise ValueError("an mda delivery needs a command")
        from fetchpop.deliver.mda import MdaTarget

        return MdaTarget(spec.command, timeout=mda_timeout)
    if spec.path is None:
        raise ValueError(f"a {spec.kind} delivery needs a path")
    if spec.kind == "maildir":
        from fetchpop.deliver.maildir import MaildirTarget

        return MaildirTarget(spec.path)
    from fetchpop.deliver.mbox import MboxTarget

    return MboxTarget(spec.path, lock_timeout=mbox_lock_timeout)
