"""Delivery by IMAP APPEND into a remote mailbox (``deliver = "imap://USER@HOST/MAILBOX"``).

Strategy: an APPEND literal must announce its exact size in octets, with
CRLF line ends, before its first byte, and the POP3 LIST size is not
reliable. So each message is spooled, as it streams in, to an unlinked
temporary file in CRLF form (its size counted, its Message-ID and Date
picked out of the header), and ``finish()`` APPENDs it from the spool in
chunks: a message is never whole in memory. The tagged OK is the server's
acceptance; ``flush()`` has nothing left to do.

Exactly once: the intent journalled before a message is the mailbox's
UIDVALIDITY and UIDNEXT at that moment (``V:N``). After a crash between the
APPEND and the record, ``delivered()`` cannot tell alone (None); ``confirm()``
gets the server's copy again, computes its Message-ID and CRLF size, and
looks with ``UID SEARCH UID N:* HEADER Message-ID ...`` and the sizes
(RFC822.SIZE) of what it finds: found means delivered. A connection lost
after the whole literal went out, before the tagged answer, is settled at
once the same way on a new connection. A message without a Message-ID, or a
server that cannot search, cannot be looked for: it is appended again (at
least once, never lost), and :meth:`ImapTarget.damaged` says so.

NUL octets cannot travel in an IMAP literal (RFC 3501 section 4.3) except as
a literal8 (BINARY, RFC 3516): where the server offers BINARY, such a message
goes as one; elsewhere it is refused (MessageRejectedError: it stays on the
POP3 server and counts towards skipping it). Nothing else is changed.
"""

from __future__ import annotations

import datetime
import os
import re
from collections.abc import Callable, Iterable, Iterator

from fetchpop.deliver import DeliverySpec, ImapSettings
from fetchpop.deliver._spool import Spool
from fetchpop.deliver.base import Delivery
from fetchpop.errors import (
    AuthError,
    ConfigError,
    DeliveryError,
    FetchpopError,
    Interrupted,
    LocalProtocolError,
    MessageRejectedError,
    TempFailError,
    sanitize,
)
from fetchpop.imap.client import ImapClient, ImapRefusal, connect
from fetchpop.imap.protocol import (
    Argument,
    Literal,
    appenduid,
    date_time,
    flag_list,
    mailbox_name,
    quoted,
)

SecretSource = Callable[[], str]

#: The header is read for Message-ID and Date up to this many octets.
_HEADER_LIMIT = 256 * 1024
_CHUNK = 64 * 1024
#: Refusals that mean "try again later", not "this message is refused".
_TEMPORARY = frozenset({"OVERQUOTA", "UNAVAILABLE", "INUSE", "SERVERBUG", "LIMIT", "CONTACTADMIN"})
_OAUTH = ("xoauth2", "oauthbearer")
_MESSAGE_ID = re.compile(rb"^message-id:[ \t]*(.*?)\s*$", re.IGNORECASE | re.MULTILINE)
_DATE = re.compile(rb"^date:[ \t]*(.*?)\s*$", re.IGNORECASE | re.MULTILINE)
#: What the wait for APPEND's answer may end with when the connection fails
#: (lost, silent, a trickle): TempFailError and its kinds.
_LOST = (TempFailError,)


class _Header:
    """Size in CRLF form, NUL seen, and the header's Message-ID and Date."""

    def __init__(self) -> None:
        self.size = 0
        self.nul = False
        self._head = bytearray()
        self._done = False

    def feed(self, chunk: bytes) -> bytes:
        """Take an LF chunk; return it in CRLF form."""
        crlf = chunk.replace(b"\n", b"\r\n")
        self.size += len(crlf)
        self.nul = self.nul or b"\0" in chunk
        if not self._done:
            self._head += chunk
            end = self._head.find(b"\n\n")
            if self._head.startswith(b"\n"):
                end = 0
            if end >= 0 or len(self._head) > _HEADER_LIMIT:
                del self._head[max(end, 0) if end >= 0 else _HEADER_LIMIT :]
                self._done = True
        return crlf

    def _field(self, pattern: re.Pattern[bytes]) -> bytes | None:
        unfolded = re.sub(rb"\n[ \t]+", b" ", bytes(self._head))
        match = pattern.search(unfolded)
        return match.group(1) if match else None

    def message_id(self) -> str | None:
        """The Message-ID, if it is one fetchpop can search for (printable ASCII)."""
        value = self._field(_MESSAGE_ID)
        if not value or len(value) > 900 or not all(0x21 <= b < 0x7F for b in value):
            return None
        return value.decode("ascii")

    def date(self) -> datetime.datetime | None:
        value = self._field(_DATE)
        if not value:
            return None
        import email.utils  # (only imap_keep_date needs it)

        try:
            moment = email.utils.parsedate_to_datetime(value.decode("ascii", "replace"))
        except (TypeError, ValueError, IndexError):
            return None
        if moment.tzinfo is None or not 1970 <= moment.year <= 9999:
            return None
        return moment


class ImapDelivery:
    """One message spooled, then APPENDed; see :class:`fetchpop.deliver.base.Delivery`."""

    def __init__(self, target: ImapTarget, intent: str, uidl: str, spool: Spool) -> None:
        self.intent = intent
        self.uidl = uidl
        #: (UIDVALIDITY, UID) from APPENDUID (RFC 4315), when the server said.
        self.receipt: tuple[int, int] | None = None
        self._target = target
        self._spool: Spool | None = spool
        self._header = _Header()
        self._state = "open"

    def write(self, chunk: bytes) -> None:
        if self._state != "open":
            raise LocalProtocolError(f"imap delivery used after being {self._state}")
        assert self._spool is not None
        try:
            self._spool.write(self._header.feed(chunk))
        except FetchpopError:
            self.abort()
            raise

    def finish(self) -> None:
        """APPEND the spooled message; raises MessageRejectedError when the
        server refuses this message, TempFailError when it cannot take it now."""
        if self._state != "open":
            raise LocalProtocolError(f"imap delivery used after being {self._state}")
        self._state = "finished"
        spool = self._spool
        assert spool is not None
        try:
            spool.rewind()  # a file that cannot be read back fails before any command
            self.receipt = self._target.append(self.intent, spool, self._header)
        finally:
            self._close()

    def abort(self) -> None:
        """Drop the spool; a message the server accepted cannot be taken back."""
        if self._state != "finished":
            self._state = "aborted"
        self._close()

    def _close(self) -> None:
        if self._spool is not None:
            spool, self._spool = self._spool, None
            spool.close()


def _chunks(spool: Spool, sent: list[bool]) -> Iterator[bytes]:
    yield from spool.chunks(_CHUNK)
    sent.append(True)


class ImapTarget:
    """A mailbox on an IMAP server; one connection for the run, opened when first needed.

    *secret* gives the password (or OAuth2 access token) when the login
    needs it; without one, ``imap_password`` and ``imap_password_command``
    are used.
    """

    def __init__(self, spec: DeliverySpec, *, secret: SecretSource | None = None) -> None:
        if spec.kind != "imap" or spec.host is None or spec.user is None:
            raise ValueError("an imap delivery needs a user and a host")
        self.spec = spec
        self.settings = spec.imap or ImapSettings()
        self.host: str = spec.host
        self.user: str = spec.user
        self.mailbox = spec.mailbox or "INBOX"
        self._mailbox: Argument = mailbox_name(self.mailbox)
        self._secret = secret
        self._secret_value: str | None = None
        self._client: ImapClient | None = None
        self._created = False
        self._damaged: list[str] = []

    # -- the connection ----------------------------------------------------------------

    @property
    def port(self) -> int:
        if self.spec.port is not None:
            return self.spec.port
        return 993 if self.settings.tls == "implicit" else 143

    def _connection(self) -> ImapClient:
        if self._client is None:
            settings = self.settings
            self._client = connect(
                self.host,
                self.port,
                tls=settings.tls,
                ca_file=settings.ca_file,
                fingerprint=settings.fingerprint,
                timeout=settings.timeout,
                method=settings.auth,
                user=self.user,
                secret=self._password,
            )
        return self._client

    def _password(self) -> str:
        if self._secret_value is None:
            if self._secret is not None:
                self._secret_value = self._secret()
            else:
                self._secret_value = _default_secret(self.settings, self.user, self.host)
        return self._secret_value

    # -- the Target interface --------------------------------------------------------------

    def reserve(self, count: int) -> list[str]:
        """The mailbox's ``UIDVALIDITY:UIDNEXT`` now, for each of the next *count*."""
        return [self._base()] * count

    def _base(self) -> str:
        client = self._connection()
        try:
            items = client.status(self._mailbox)
        except ImapRefusal as exc:
            # Dovecot says "NO Mailbox doesn't exist" without a code: any
            # refusal but a temporary one is worth one CREATE.
            if exc.response.code_name in _TEMPORARY or self._created:
                raise TempFailError(f"IMAP mailbox {sanitize(self.mailbox)}: {exc.words}") from None
            self._create(client, exc)
            items = client.status(self._mailbox)
        return f"{items.get('UIDVALIDITY', 0)}:{items.get('UIDNEXT', 0)}"

    def _create(self, client: ImapClient, why: ImapRefusal) -> None:
        """CREATE the mailbox (once a run), as a Maildir is created when missing."""
        self._created = True
        try:
            client.create(self._mailbox)
        except ImapRefusal as exc:
            if exc.response.code_name == "ALREADYEXISTS":
                raise DeliveryError(
                    f"IMAP mailbox {sanitize(self.mailbox)} cannot be used: {why.words}"
                ) from None
            raise DeliveryError(
                f"IMAP mailbox {sanitize(self.mailbox)} cannot be created: {exc.words}"
            ) from None

    def begin(self, uidl: str, intent: str | None = None) -> Delivery:
        if intent is None:
            intent = self._base()
        return ImapDelivery(self, intent, uidl, Spool("IMAP", "fetchpop-imap-"))

    def append(self, intent: str, spool: Spool, header: _Header) -> tuple[int, int] | None:
        """APPEND one spooled message: after [TRYCREATE] once more, after the
        mailbox's CREATE; on a connection that failed before the whole
        message went out, once more on a new one (an idle connection a server
        or a NAT let go); after the whole message, settled by :meth:`_settle`.
        Returns the APPENDUID, where the server gave one."""
        client = self._connection()
        if header.nul and not client.has("BINARY"):
            raise MessageRejectedError(
                f"the message holds NUL bytes, which IMAP carries only with BINARY "
                f"(RFC 3516), and {self.host} does not offer it"
            )
        options = self._options(header)
        literal = Literal(header.size, binary=header.nul)
        reconnected = False
        while True:
            sent: list[bool] = []
            try:
                response = client.append(self._mailbox, options, literal, _chunks(spool, sent))
                return appenduid(response.code)
            except ImapRefusal as exc:
                if exc.response.code_name != "TRYCREATE" or self._created:
                    raise self._refused(exc) from None
                self._create(client, exc)
            except _LOST as exc:
                self._client = None
                client.close()
                if sent:
                    self._settle(intent, header, exc)
                    return None
                if reconnected:
                    raise  # the server cannot have taken a message it did not get whole
                reconnected = True
                client = self._connection()
            except Interrupted as exc:
                # A signal between the literal and the answer: the server may
                # have the message.
                if sent:
                    exc.outcome_unknown = True
                raise

    def _options(self, header: _Header) -> list[bytes]:
        """APPEND's flag list and date-time, as configured."""
        options: list[bytes] = []
        if self.settings.flags:
            options.append(flag_list(self.settings.flags))
        moment = header.date() if self.settings.keep_date else None
        if moment is not None:
            options.append(date_time(moment))
        return options

    def _refused(self, exc: ImapRefusal) -> FetchpopError:
        where = f"IMAP server {self.host} refused the message ({exc.words})"
        if exc.response.code_name in _TEMPORARY:
            return TempFailError(where + "; it stays on the server, to be tried again")
        return MessageRejectedError(where)

    def _settle(self, intent: str, header: _Header, lost: FetchpopError) -> None:
        """The connection went after the whole message, before the answer: look.

        An error raised from here with ``outcome_unknown`` set means the
        message may be in the mailbox: its intent is worth keeping, for the
        next run's recovery to look again (see :meth:`confirm`).
        """
        mid = header.message_id()
        if mid is None:
            raise _unknown(lost, "the message (without Message-ID) may have been appended, "
                           "and is appended again next time (at least once)")
        try:
            found = self._find(intent, mid, header.size)
        except FetchpopError:
            raise _unknown(lost, "whether the message was appended cannot be checked now") from None
        if not found:
            raise lost

    def flush(self) -> None:
        """Nothing to do: a message is the server's once APPEND said OK."""

    def close(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            client.logout()

    def delivered(self, intent: str) -> bool | None:
        """The mailbox must be searched with the server's copy: always None."""
        return None

    def confirm(self, intent: str, message: Iterable[bytes]) -> bool:
        """Whether the message the POP3 server sends again is in the mailbox
        already (appended since *intent*'s UIDNEXT), by Message-ID and size."""
        header = _Header()
        for chunk in message:
            header.feed(chunk)
        mid = header.message_id()
        if mid is None:
            self._damaged.append(
                f"a message without Message-ID may have been appended to {sanitize(self.mailbox)} "
                "by an interrupted run; it is appended again (at least once)"
            )
            return False
        try:
            return self._find(intent, mid, header.size)
        except ImapRefusal as exc:
            self._damaged.append(
                f"IMAP server {self.host} cannot search {sanitize(self.mailbox)} ({exc.words}); "
                "a message an interrupted run appended is appended again (at least once)"
            )
            return False

    def _find(self, intent: str, mid: str, size: int) -> bool:
        client = self._connection()
        try:
            items = client.examine(self._mailbox)
        except ImapRefusal as exc:
            if exc.response.code_name in ("TRYCREATE", "NONEXISTENT"):
                return False
            raise
        validity, _, uidnext = intent.partition(":")
        start = uidnext if validity == str(items.get("UIDVALIDITY")) and uidnext.isdigit() else "1"
        criteria: list[Argument] = [
            b"UID", f"{max(int(start), 1)}:*".encode(), b"HEADER", b"Message-ID", quoted(mid)
        ]
        # "N:*" also matches the last message when N is past it (RFC 3501
        # section 6.4.8): only what came at or after N counts.
        uids = [uid for uid in client.uid_search(criteria) if uid >= int(start)]
        return size in client.uid_sizes(uids).values()

    def damaged(self) -> list[str]:
        lines, self._damaged = list(dict.fromkeys(self._damaged)), []
        return lines


def _unknown(lost: FetchpopError, why: str) -> FetchpopError:
    error = type(lost)(f"{lost}; {why}")
    error.outcome_unknown = True
    return error


def _default_secret(settings: ImapSettings, user: str, host: str) -> str:
    """``imap_password``, else the first line ``imap_password_command`` prints."""
    if settings.auth in _OAUTH:
        raise AuthError(
            f"no OAuth2 access token for IMAP {user}@{host}: this run was given no token source"
        )
    if settings.password is not None:
        return settings.password
    if settings.password_argv is None:
        raise AuthError(
            f"no IMAP password for {user}@{host}: set imap_password_command "
            "(or imap_password in a private file)"
        )
    import subprocess

    name = sanitize(os.path.basename(settings.password_argv[0]), 80)
    try:
        result = subprocess.run(
            list(settings.password_argv),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=settings.timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise AuthError(f"imap_password_command timed out ({name})") from None
    except OSError as exc:
        raise AuthError(f"imap_password_command failed: {name}: {exc.strerror or exc}") from None
    first = (result.stdout or b"").split(b"\n", 1)[0].removesuffix(b"\r")
    if result.returncode != 0 or not first:
        raise AuthError(f"imap_password_command failed ({name}, exit {result.returncode})")
    try:
        secret = first.decode("utf-8")
    except UnicodeDecodeError:
        raise AuthError("imap_password_command printed a password that is not UTF-8") from None
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in secret):
        raise ConfigError("the password from imap_password_command contains a control character")
    return secret
