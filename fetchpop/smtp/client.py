"""A blocking SMTP/LMTP client: the sans-IO protocol driven over POP3's Transport.

It knows SMTP and LMTP and nothing of files, config or the seen-store. The
socket, TLS (verification, TLS >= 1.2, pinning, ``ca_file``), timeouts and
the bounds on waiting are :mod:`fetchpop.pop3.transport`'s, as for POP3: one
TLS policy, one set of timeouts.

A failed step raises :class:`SMTPReplyError`, which carries the reply and
the step; the caller (``deliver/smtp.py``) decides what it means for the
message. What may go on the wire together (RFC 2920 PIPELINING): MAIL, RCPT
and DATA, and nothing after DATA until its 354; nothing after STARTTLS until
its 220 and the handshake (RFC 3207), nor after an AUTH line until its reply.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from fetchpop.errors import ConnectionLostError, FetchpopError, InsecureError, sanitize
from fetchpop.pop3.transport import (
    LOGIN_TIMEOUTS,
    Transport,
    make_ssl_context,
    trying_whole_store,
)
from fetchpop.smtp.protocol import DataEncoder, Reply, ReplyParser, command, extensions

if TYPE_CHECKING:
    import ssl

Log = Callable[[str], None]


class SMTPReplyError(FetchpopError):
    """The server answered *step* with a reply that is not the one hoped for."""

    def __init__(self, step: str, reply: Reply) -> None:
        super().__init__(f"{step}: {reply.text}")
        self.step = step
        self.reply = reply


def _nolog(_: str) -> None:
    pass


#: The commands a transcript shows as they are; AUTH shows its mechanism only.
_SHOWN = frozenset(
    {"LHLO", "EHLO", "HELO", "STARTTLS", "MAIL", "RCPT", "DATA", "RSET", "NOOP", "QUIT"}
)


def _shown(line: bytes) -> str:
    """A command line as the transcript shows it: no credential in any form."""
    words = line.decode("utf-8", "replace").split()
    verb = words[0].upper() if words else ""
    if verb == "AUTH":
        return " ".join(words[:2]) + " ***"
    return sanitize(" ".join(words)) if verb in _SHOWN else "***"


class SMTPClient:
    """One connection to an SMTP or LMTP server (*lmtp*: LHLO, a reply per recipient)."""

    def __init__(self, transport: Transport, *, lmtp: bool, log: Log | None = None) -> None:
        self.transport = transport
        self.lmtp = lmtp
        self.log = log or _nolog
        self._parser = ReplyParser()
        self._replies: list[Reply] = []
        self.extensions: dict[str, tuple[str, ...]] = {}
        #: Whether the last transaction's final dot went out (its fate is the server's).
        self.dot_sent = False
        self.greeting = self.read("greeting")
        if self.greeting.code != 220:
            raise SMTPReplyError("greeting", self.greeting)

    # -- reading and writing ----------------------------------------------------

    def read(self, step: str, wait: float | None = None) -> Reply:
        """The next reply (waiting at most the timeout, or *wait* seconds, for each piece)."""
        while not self._replies:
            data = self.transport.recv(wait)
            if not data:
                raise ConnectionLostError(
                    f"connection to {self.transport.host} closed by the server "
                    f"(waiting for the reply to {step})"
                )
            self._replies.extend(self._parser.feed(data))
        reply = self._replies.pop(0)
        self.log(f"S: {reply.text}")
        return reply

    def send(self, *lines: bytes) -> None:
        """Write command lines (several at once only where pipelining allows)."""
        for line in lines:
            self.log(f"C: {_shown(line)}")
        self.transport.send(b"".join(lines))

    def call(self, step: str, line: bytes, expect: int = 250) -> Reply:
        """Send *line*, read its reply; SMTPReplyError unless the code is *expect*."""
        self.send(line)
        reply = self.read(step)
        if reply.code != expect:
            raise SMTPReplyError(step, reply)
        return reply

    @property
    def secure(self) -> bool:
        """Whether the connection is on TLS (or a unix socket, which never leaves the machine)."""
        return self.transport.is_tls or self.local

    local = False  # set by open_client for a unix socket

    def logged_in(self) -> None:
        """The bound on waiting for the greeting and login (see open_client) is over."""
        self.transport.limit_waiting(None)

    def has(self, name: str) -> bool:
        """Whether the server offered the extension *name* (in its last EHLO reply)."""
        return name.upper() in self.extensions

    # -- the session ------------------------------------------------------------

    def hello(self, name: str) -> None:
        """LHLO (LMTP) or EHLO (SMTP, HELO where EHLO is not known); learn the extensions."""
        verb = "LHLO" if self.lmtp else "EHLO"
        self.send(command(verb, name))
        reply = self.read(verb)
        if reply.code == 250:
            self.extensions = extensions(reply)
            return
        if self.lmtp or reply.code not in (500, 502):
            raise SMTPReplyError(verb, reply)
        self.call("HELO", command("HELO", name))
        self.extensions = {}

    def starttls(self, context: ssl.SSLContext, pinned: str | None, name: str) -> None:
        """STARTTLS, the handshake (verified by the transport's policy), then hello again."""
        self.call("STARTTLS", command("STARTTLS"), expect=220)
        if self._replies or self._parser.partial:
            # RFC 3207 section 5 (CVE-2011-0411): nothing said before TLS counts after it.
            raise SMTPReplyError(
                "STARTTLS", Reply(554, ("the server sent more than its 220 before TLS",))
            )
        self.transport.start_tls(context, pinned)
        self.extensions = {}
        self.hello(name)

    def auth(self, user: str, password: str) -> None:
        """AUTH PLAIN (RFC 4616) where offered, else LOGIN; SMTPReplyError if refused."""
        offered = {m.upper() for m in self.extensions.get("AUTH", ())}
        if "PLAIN" in offered or "LOGIN" not in offered:
            token = base64.b64encode(f"\0{user}\0{password}".encode()).decode("ascii")
            self.call("AUTH PLAIN", command("AUTH", "PLAIN", token), expect=235)
            return
        self.call("AUTH LOGIN", command("AUTH", "LOGIN"), expect=334)
        self.call("AUTH LOGIN", base64.b64encode(user.encode()) + b"\r\n", expect=334)
        self.call("AUTH LOGIN", base64.b64encode(password.encode()) + b"\r\n", expect=235)

    def transaction(
        self,
        sender: str,
        recipient: str,
        chunks: Iterable[bytes],
        *,
        mail_params: tuple[str, ...] = (),
        final_wait: float | None = None,
    ) -> Reply:
        """MAIL, RCPT, DATA, the message (LF line ends), the final dot: the reply
        for the (one) recipient after it, whatever its code.

        Raises SMTPReplyError when MAIL, RCPT or DATA is refused (the
        transaction is reset with RSET then). *final_wait* bounds the wait
        for the reply after the dot (a Sieve script or a filter may run).
        """
        self.dot_sent = False
        mail = command("MAIL", f"FROM:<{sender}>", *mail_params)
        rcpt = command("RCPT", f"TO:<{recipient}>")
        data = command("DATA")
        if self.has("PIPELINING"):
            self.send(mail, rcpt, data)
            replies = [self.read("MAIL FROM"), self.read("RCPT TO"), self.read("DATA")]
        else:
            replies = [self.call_any("MAIL FROM", mail)]
            if replies[0].code == 250:
                replies.append(self.call_any("RCPT TO", rcpt))
                if replies[1].kind == 2:
                    replies.append(self.call_any("DATA", data))
        steps = ("MAIL FROM", "RCPT TO", "DATA")
        failed = next(
            (
                (step, reply)
                for step, reply, good in zip(steps, replies, (250, 2, 354), strict=False)
                if (reply.code if good != 2 else reply.kind) != good
            ),
            None,
        )
        if failed is not None:
            if len(replies) == 3 and replies[2].code == 354:
                # DATA was taken although MAIL or RCPT was not: an empty message ends it.
                self.send(b".\r\n")
                self.read("the end of an empty message")
            if failed[1].code != 421:  # (421: the server is closing the connection)
                self._reset()
            raise SMTPReplyError(*failed)
        encoder = DataEncoder()
        for chunk in chunks:
            wire = encoder.encode(chunk)
            if wire:
                self.transport.send(wire)
        self.transport.send(encoder.end())
        self.dot_sent = True  # from here, the server may have kept the message
        return self.read("the message", wait=final_wait)

    def call_any(self, step: str, line: bytes) -> Reply:
        """Send *line* and return its reply, whatever its code."""
        self.send(line)
        return self.read(step)

    def _reset(self) -> None:
        try:
            self.send(command("RSET"))
            self.read("RSET")
        except FetchpopError:
            self.close()
            raise

    def quit(self) -> None:
        """QUIT, and close whatever the server says."""
        try:
            self.send(command("QUIT"))
            self.read("QUIT")
        except FetchpopError:
            pass
        finally:
            self.close()

    def close(self) -> None:
        """Close the connection at once."""
        self.transport.close()


def open_client(
    *,
    lmtp: bool,
    name: str,
    timeout: float,
    host: str | None = None,
    port: int | None = None,
    path: Path | None = None,
    tls: str = "auto",
    ca_file: Path | None = None,
    pinned: str | None = None,
    log: Log | None = None,
) -> SMTPClient:
    """Connect (unix socket *path*, or *host*:*port*), read the greeting, say
    LHLO/EHLO *name*, and secure the connection as *tls* says: ``auto``
    STARTTLS where offered, ``starttls`` required (InsecureError where not
    offered), ``implicit`` TLS from the first byte, ``off`` never.

    TLS is the transport's (verification against the system CAs and
    *ca_file*, or *pinned*; TLS >= 1.2); a certificate whose issuer the CA
    directory lacks is tried again against the whole store. Raises
    SMTPReplyError when the server refuses the greeting, hello or STARTTLS.
    From the connection to :meth:`SMTPClient.logged_in`, waiting on the
    server is bounded to LOGIN_TIMEOUTS times *timeout* in all.
    """
    return trying_whole_store(
        lambda whole: _open(lmtp, name, timeout, host, port, path, tls, ca_file, pinned, log, whole)
    )


def _open(
    lmtp: bool,
    name: str,
    timeout: float,
    host: str | None,
    port: int | None,
    path: Path | None,
    tls: str,
    ca_file: Path | None,
    pinned: str | None,
    log: Log | None,
    whole_store: bool,
) -> SMTPClient:
    context = None
    if path is not None:
        from fetchpop.smtp.unix import connect_unix

        transport = connect_unix(path, timeout=timeout)
    else:
        assert host is not None and port is not None
        if tls != "off":
            context = make_ssl_context(ca_file, pinned, whole_store=whole_store)
        transport = Transport.connect(
            host,
            port,
            timeout=timeout,
            tls=context if tls == "implicit" else None,
            pinned=pinned,
            login_within=LOGIN_TIMEOUTS * timeout,
        )
    try:
        client = SMTPClient(transport, lmtp=lmtp, log=log)
        client.local = path is not None
        client.hello(name)
        if context is not None and not client.secure:
            if client.has("STARTTLS"):
                client.starttls(context, pinned, name)
            elif tls == "starttls":
                raise InsecureError(
                    f"{transport.host} does not offer STARTTLS, and smtp_tls = "
                    '"starttls" requires it'
                )
    except BaseException:
        transport.close()
        raise
    return client
