"""Delivery to an LMTP or SMTP server: ``lmtp:SOCKET``, ``lmtp:HOST:PORT``, ``smtp:HOST:PORT``.

Strategy: as for an MDA, each message is first spooled to an unlinked
temporary file while it streams from the POP3 server (bounded memory, and a
fetchpop killed mid-RETR never opens a transaction at all). ``finish()``
then sends it: MAIL FROM the message's Return-Path (or ``<>``), RCPT TO the
account's ``recipient`` (default: the local user name), DATA -- pipelined
where the server offers PIPELINING -- then the spool, a chunk at a time,
dot-stuffed with CRLF line ends (:class:`fetchpop.smtp.protocol.DataEncoder`),
and the final dot. ``BODY=8BITMIME`` goes with a message that has 8-bit
bytes, ``SMTPUTF8`` with one whose header is UTF-8, where offered (and the
message as it is where not: the bytes are never rewritten), ``SIZE`` where
offered.

The reply for the recipient after the final dot (LMTP gives one per
recipient, RFC 2033 section 4.2) decides, as any refusal before it does:

* 2xx: delivered; the server owns durability from then on (``flush()`` has
  nothing left to do), so the session may record the message and DELE it;
* 4xx, a closed connection, a timeout: :class:`TempFailError` (75), the
  message stays on the server, unrecorded;
* 5xx to MAIL, RCPT, DATA or the message: :class:`MessageRejectedError`,
  counted towards skipping that message, as an MDA's refusal is;
* a server that will not talk to us at all (5xx to the greeting, to
  LHLO/EHLO, to STARTTLS): :class:`DeliveryError`, the account fails, no
  message counts; AUTH refused: :class:`AuthError`.

The connection is made at the first message (recovery opens a target and
asks it nothing), kept for the next ones, and made again when the server
closed it meanwhile. Like an MDA, a server leaves nothing fetchpop could
look for later: after a crash between the server's 2xx and the record, or
an error after the final dot went out (``outcome_unknown``: the intent
stays), the next run delivers the message again and says so (at least
once, never lost; ``delivered()`` is None and ``confirm()`` False).

TLS (``smtp_tls``): ``auto`` does STARTTLS where offered, verified as POP3's
TLS is (the same transport and policy: CA or ``smtp_ca_file``, TLS >= 1.2,
``smtp_tls_fingerprint``), and no TLS where not offered; ``starttls``
requires it; ``implicit`` is TLS from the first byte (port 465); ``off``
never. AUTH is never sent in clear text except to a loopback address or
with ``smtp_tls = "off"``.
"""

from __future__ import annotations

import ipaddress
import os
import re
import time
from collections.abc import Callable, Iterable

from fetchpop.deliver import DeliverySpec, ServerOptions
from fetchpop.deliver._spool import Spool
from fetchpop.errors import (
    AuthError,
    ConnectError,
    ConnectionLostError,
    DeliveryError,
    FetchpopError,
    InsecureError,
    LocalProtocolError,
    MessageRejectedError,
    ProtocolError,
    ServerTimeoutError,
    TempFailError,
    TLSError,
    sanitize,
)
from fetchpop.smtp.client import SMTPClient, SMTPReplyError, open_client
from fetchpop.smtp.protocol import MessageScan, Reply

#: The spool is read back and sent in chunks of this size.
SEND_CHUNK = 256 * 1024
#: A connection idle this long is asked (NOOP) whether it still stands
#: before the next message (Postfix closes idle ones after 300 s).
IDLE_CHECK = 30.0

#: Errors said with the target's name in front (else "connection to 127.0.0.1
#: closed" could be the POP3 server's as well).
_NAMED = (
    TLSError,
    InsecureError,
    ConnectError,
    ServerTimeoutError,
    ConnectionLostError,
    ProtocolError,
)

_HOSTNAME_BAD = re.compile(r"[^A-Za-z0-9.-]")


def local_user() -> str:
    """The name of the user fetchpop runs as (the default recipient)."""
    import pwd

    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        name = os.environ.get("LOGNAME") or os.environ.get("USER")
        if not name:
            raise DeliveryError(
                "cannot tell the local user name (no passwd entry): set recipient"
            ) from None
        return name


def _client_name() -> str:
    """What LHLO/EHLO says fetchpop's machine is called."""
    name = _HOSTNAME_BAD.sub("", os.uname().nodename).strip(".-")
    return name or "localhost"


def _loopback(host: str) -> bool:
    if host.lower() in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class ServerDelivery:
    """One message spooled, then one transaction; see :class:`fetchpop.deliver.base.Delivery`."""

    def __init__(self, target: ServerTarget, spool: Spool) -> None:
        self.intent = ""  # a server leaves nothing fetchpop could look for later
        self._target = target
        self._spool: Spool | None = spool
        self._scan = MessageScan()
        self._state = "open"  # -> "finished" | "aborted"

    def write(self, chunk: bytes) -> None:
        """Spool *chunk*; the server sees nothing until ``finish()``."""
        self._check_open()
        assert self._spool is not None
        try:
            self._spool.write(chunk)
        except FetchpopError:
            self.abort()
            raise
        self._scan.feed(chunk)

    def finish(self) -> None:
        """Send the message; return once the server has taken it (2xx).

        Raises MessageRejectedError, TempFailError, DeliveryError or AuthError
        as the module's docstring says.
        """
        self._check_open()
        self._state = "finished"
        spool = self._spool
        assert spool is not None
        self._scan.finish()
        try:
            spool.rewind()  # a file that cannot be read back fails before any command
            self._target.send(lambda: spool.chunks(SEND_CHUNK), self._scan, spool.size)
        finally:
            self._close()

    def abort(self) -> None:
        """Drop the spooled message (nothing of it has reached the server)."""
        if self._state == "aborted":
            return
        self._state = "aborted"
        self._close()

    def _check_open(self) -> None:
        if self._state != "open":
            raise LocalProtocolError(f"{self._target.kind} delivery used after being {self._state}")

    def _close(self) -> None:
        if self._spool is not None:
            spool, self._spool = self._spool, None
            spool.close()


class ServerTarget:
    """An LMTP or SMTP server; each ``begin()`` spools one message, ``finish()`` sends it."""

    def __init__(
        self,
        spec: DeliverySpec,
        options: ServerOptions,
        *,
        password: Callable[[], str] | None = None,
        log: Callable[[str], None] | None = None,
    ) -> None:
        if spec.kind not in ("lmtp", "smtp"):
            raise ValueError(f"not a server target: {spec.kind}")
        self.spec = spec
        self.kind = spec.kind
        self.options = options
        self._password = password
        self._log = log
        where = str(spec.path) if spec.path is not None else f"{spec.host}:{spec.port}"
        #: How messages name this target: "lmtp /run/dovecot/lmtp", "smtp localhost:25".
        self.label = f"{spec.kind} {sanitize(where, limit=120)}"
        self._client: SMTPClient | None = None
        self._used = 0.0  # when the connection last answered (monotonic)

    # -- the Target interface -------------------------------------------------

    def reserve(self, count: int) -> list[str]:
        """Nothing ahead: a server leaves nothing an intent could name."""
        return []

    def begin(self, uidl: str, intent: str | None = None) -> ServerDelivery:
        """Open the spool file ($TMPDIR, unlinked at once) for one message."""
        return ServerDelivery(self, Spool(self.label, "fetchpop-smtp-"))

    def flush(self) -> None:
        """Nothing to do: a message the server answered 2xx is its to keep."""

    def close(self) -> None:
        """QUIT the connection, if one stands."""
        client, self._client = self._client, None
        if client is not None:
            client.quit()

    def delivered(self, intent: str) -> bool | None:
        """A server cannot be asked: always ``None``."""
        return None

    def confirm(self, intent: str, message: Iterable[bytes]) -> bool:
        """A server's deliveries cannot be checked: deliver again (at least once)."""
        for _ in message:
            pass
        return False

    def damaged(self) -> list[str]:
        """Recovery leaves nothing behind here to report."""
        return []

    # -- sending --------------------------------------------------------------

    def send(self, chunks: Callable[[], Iterable[bytes]], scan: MessageScan, size: int) -> None:
        """One transaction for one spooled message (*chunks* reads it from the
        start); raises unless the server took it.

        A connection kept from an earlier message that turns out closed
        before the final dot went out (the server ended an idle one) is made
        anew and the message sent again: nothing of it was delivered.
        """
        while True:
            reused = self._client is not None
            client = self._connection()
            try:
                self._transaction(client, chunks(), scan, size)
                return
            except ConnectionLostError:
                if reused and not client.dot_sent and self._client is None:
                    continue  # (dropped by _transaction: the next round connects)
                raise

    def _transaction(
        self, client: SMTPClient, chunks: Iterable[bytes], scan: MessageScan, size: int
    ) -> None:
        params = self._mail_params(client, scan, size)
        sender = scan.sender
        if not sender.isascii() and "SMTPUTF8" not in params:
            sender = ""  # a UTF-8 address needs SMTPUTF8: bounces go nowhere instead
        recipient = self.options.recipient or local_user()
        try:
            reply = client.transaction(
                sender,
                recipient,
                chunks,
                mail_params=params,
                final_wait=max(self.options.reply_timeout, self.options.timeout),
            )
        except SMTPReplyError as exc:
            self._used = time.monotonic()
            raise self._refused(exc.step, exc.reply) from None
        except _NAMED as exc:
            self._drop()
            named = self._named(exc)
            # After the final dot the server may have kept the message: its
            # intent stays, and the next run says it is delivered again.
            named.outcome_unknown = client.dot_sent
            raise named from exc
        except BaseException as exc:
            self._drop()
            if isinstance(exc, FetchpopError) and client.dot_sent:
                exc.outcome_unknown = True  # (a signal while the reply was awaited)
            raise
        self._used = time.monotonic()
        if reply.kind != 2:
            raise self._refused("the message", reply)

    def _mail_params(self, client: SMTPClient, scan: MessageScan, size: int) -> tuple[str, ...]:
        params = []
        if scan.eight_bit and client.has("8BITMIME"):
            params.append("BODY=8BITMIME")
        if (scan.utf8_header or not scan.sender.isascii()) and client.has("SMTPUTF8"):
            params.append("SMTPUTF8")
        if client.has("SIZE"):
            params.append(f"SIZE={size + scan.lines}")
        return tuple(params)

    def _refused(self, step: str, reply: Reply) -> FetchpopError:
        """The error for *reply* to *step*; the connection goes if the server ends it."""
        if reply.code == 421:
            self._drop()
        if reply.kind == 4:
            return TempFailError(
                f"{self.label} deferred {step}: {reply.text} (the message stays on the server)"
            )
        if reply.kind == 5:
            return MessageRejectedError(f"{self.label} refused {step}: {reply.text}")
        self._drop()
        return DeliveryError(f"{self.label} answered {step} with {reply.text}")

    def _drop(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            client.close()

    # -- connecting -----------------------------------------------------------

    def _connection(self) -> SMTPClient:
        """The connection: the standing one if it still answers, else a new one."""
        client = self._client
        if client is not None and self._still_there(client):
            return client
        self._drop()
        try:
            self._client = self._open()
        except (
            TLSError,
            InsecureError,
            ConnectError,
            ServerTimeoutError,
            ConnectionLostError,
        ) as exc:
            raise self._named(exc) from exc
        self._used = time.monotonic()
        return self._client

    def _named(self, exc: FetchpopError) -> FetchpopError:
        """*exc* with this target's name in front (the user sees which server)."""
        text = str(exc)
        if isinstance(exc, TLSError) and "did not verify" in text:
            text += ' (smtp_ca_file or smtp_tls_fingerprint trusts it; smtp_tls = "off" skips TLS)'
        try:
            named = type(exc)(f"{self.label}: {text}")
        except TypeError:  # an error class that takes more than its message
            return exc
        named.exit_code = exc.exit_code
        return named

    def _still_there(self, client: SMTPClient) -> bool:
        try:
            if client.transport.wait_readable(0):
                return False  # closed, or a 421 said unasked: start again
            if time.monotonic() - self._used > IDLE_CHECK:
                return client.call_any("NOOP", b"NOOP\r\n").code == 250
        except FetchpopError:
            return False
        return True

    def _open(self) -> SMTPClient:
        """A new connection: greeting, LHLO/EHLO, STARTTLS and AUTH as the options say."""
        options, spec = self.options, self.spec
        try:
            client = open_client(
                lmtp=self.kind == "lmtp",
                name=_client_name(),
                timeout=options.timeout,
                host=spec.host,
                port=spec.port,
                path=spec.path,
                tls=options.tls,
                ca_file=options.ca_file,
                pinned=options.tls_fingerprint,
                log=self._log,
            )
        except SMTPReplyError as exc:
            raise self._unwilling(exc.step, exc.reply) from None
        try:
            if options.user is not None:
                self._auth(client, client.secure)
            client.logged_in()
        except BaseException:
            client.close()
            raise
        return client

    def _auth(self, client: SMTPClient, secure: bool) -> None:
        user = self.options.user
        assert user is not None
        host = self.spec.host or ""
        if not secure and not _loopback(host) and self.options.tls != "off":
            raise InsecureError(
                f"{self.label} offers no STARTTLS: refusing to send smtp_user's password "
                'in clear text (smtp_tls = "off" allows it)'
            )
        if self._password is None:
            raise AuthError(
                f"{self.label}: smtp_user is set, but no password source was given "
                "(smtp_password_command or smtp_password)"
            )
        try:
            client.auth(user, self._password())
        except SMTPReplyError as exc:
            if exc.reply.kind == 4:
                raise TempFailError(f"{self.label} deferred AUTH: {exc.reply.text}") from None
            raise AuthError(
                f"{self.label} refused AUTH as {sanitize(user)}: {exc.reply.text}"
            ) from None

    def _unwilling(self, step: str, reply: Reply) -> FetchpopError:
        """A server refusing the connection itself (greeting, LHLO/EHLO, STARTTLS)."""
        if reply.kind == 4:
            return TempFailError(f"{self.label} deferred {step}: {reply.text}")
        return DeliveryError(f"{self.label} refused {step}: {reply.text}")
