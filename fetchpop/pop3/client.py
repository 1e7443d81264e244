"""A blocking POP3 client: the sans-IO protocol driven over a Transport.

It knows POP3 and nothing of files, config or terminals. Messages are
streamed to the caller chunk by chunk.

What may be pipelined (RFC 2449 section 6.6), and why no more:

* Nothing is written after ``STLS`` until its ``+OK`` has arrived and the
  TLS handshake is done (RFC 2595 section 4): bytes sent before the
  handshake would be read as clear text, or dropped.
* Nothing is written after the last command of a login (``PASS``, ``APOP``,
  the final line of an ``AUTH`` exchange) until its reply has arrived.
  Courier's ``courierpop3login`` checks the password and then execs
  ``courierpop3d``: whatever it had read beyond PASS is gone. Cyrus discards
  input buffered during a SASL exchange, since a security layer may start at
  its end. Both advertise PIPELINING; a client that pipelines across the
  login gets no answer to the listing, ever.
* Within the AUTHORIZATION state, commands before the last one of the login
  may go together (CAPA with USER and PASS) where the server advertises
  PIPELINING. Capabilities remembered from an earlier session
  (:meth:`Client.assume_capabilities`) hold back CAPA to go out with the
  login's first line, never more than this.
* In the TRANSACTION state, CAPA, UIDL and LIST go out together, and RETR and
  DELE in windows of up to PIPELINE_WINDOW commands.

A server may advertise PIPELINING and lose commands anyway. When commands
written before a reply arrived stay unanswered (for PIPELINE_GRACE seconds
after the connection fell silent between replies; for the whole timeout
where a reply may be slow for good reason, as to PASS), the client raises
PipeliningLostError, and the caller starts again on a new connection in
lock-step (``Client(pipelining=False)``).

What the server says is made safe once, where the protocol parses it
(sanitised, and every credential sent hidden: see ``protocol`` and
``masking``). The client adds to the same :class:`~fetchpop.pop3.masking.Secrets`
the password it is given and what a SASL mechanism derives, hides every
transcript line with it, and scrubs the errors of what it parses itself
(listings, SASL challenges): no reply, transcript line or error from here
shows a secret in any form.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING

from fetchpop.errors import (
    AuthError,
    CapabilityError,
    ExitCode,
    FetchpopError,
    InsecureError,
    PipeliningLostError,
    ProtocolError,
    ServerError,
    ServerTimeoutError,
    TLSError,
    cut,
)
from fetchpop.pop3 import auth
from fetchpop.pop3.listings import (
    Capabilities,
    Sizes,
    UIDLs,
    parse_capa,
    parse_sizes,
    parse_uidls,
)
from fetchpop.pop3.protocol import (
    NEED_DATA,
    Continuation,
    Event,
    Greeting,
    Listing,
    MessageData,
    MessageEnd,
    MessageStart,
    POP3Protocol,
    Reply,
)
from fetchpop.pop3.transport import Transport

if TYPE_CHECKING:
    import ssl

#: Outstanding commands at most, when the server allows pipelining. Small
#: messages must keep more than a round trip's worth of data on the way: with
#: 100 outstanding RETRs of 4 KB, a 50 ms round trip drained the pipe at
#: every refill. A full window is 12 to 17 KB of command lines, which the
#: default socket buffers of the two ends hold together (Linux: 16 KB to send,
#: 128 KB to receive) while the server answers in turn, so the client does
#: not block writing while the server blocks writing to it; if a server
#: stops reading for longer than the timeout, the write fails with a timeout.
PIPELINE_WINDOW = 1000
#: Seconds a pipelining server may stay silent between two replies of a batch
#: before the commands still unanswered are taken as lost (see the top).
PIPELINE_GRACE = 10.0
#: Replies that may take long for good reason (a password check, a failed
#: login's delay, the UPDATE state's expunges): these get the whole timeout.
_SLOW_REPLIES = frozenset({"PASS", "APOP", "AUTH", "QUIT"})
#: RFC 5034 section 4: an AUTH command line must fit 255 octets, initial response included.
MAX_AUTH_LINE = 255

Log = Callable[[str], None]


def _nolog(_: str) -> None:
    pass


class Refusal:
    """A command the server answered with ``-ERR``: ``code`` is its RFC 2449
    response code ("SYS/TEMP"), if any, and ``text`` the reply's text, made
    safe where it was parsed (sanitised, secrets hidden)."""

    __slots__ = ("_reply", "code", "text")

    def __init__(self, reply: Reply) -> None:
        self.code = reply.code
        self.text = reply.text
        self._reply = reply

    @property
    def words(self) -> str:
        """``-ERR [CODE] text`` as a user may see it."""
        return describe(self._reply)


def describe(reply: Reply | Greeting) -> str:
    """``-ERR [CODE] text`` as a user may see it."""
    return said(reply.ok, reply.text)


def said(ok: bool, text: bytes) -> str:
    """A status line as a user may see it: its *text* is safe already (the
    protocol made it so), and here only cut to 300 characters."""
    return cut(("+OK " if ok else "-ERR ") + text.decode("utf-8", "replace"))


def retr_limit(size: int | None) -> int | None:
    """How many wire octets a RETR of a message of LIST size *size* may take.

    Byte-stuffing can at most double a message; anything beyond that is a
    server lying about sizes or sending an endless reply.
    """
    return None if size is None else 2 * size + 64 * 1024


class Client:
    """One POP3 session. Methods raise typed errors; ``-ERR`` becomes ServerError."""

    def __init__(
        self, transport: Transport, *, log: Log | None = None, pipelining: bool = True
    ) -> None:
        self._t = transport
        self._p = POP3Protocol()
        #: False: lock-step whatever the server advertises (it lost commands before).
        self.pipelining_allowed = pipelining
        self._sink = log or _nolog
        # Without a sink, log lines are not even built (a RETR loop of
        # thousands of messages would format them all for nothing).
        self._logging = log is not None
        # Secrets this session sent: a server that echoes one ("-ERR bad
        # password ...") must not get it into a transcript or an error line.
        self._secrets = self._p.secrets
        self.capabilities: Capabilities | None = None
        # Commands written at the next read, not before (one write, one round
        # trip), while not None; see assume_capabilities().
        self._held: list[bytes] | None = None
        # Replies that arrive before the one a caller asks for (a CAPA sent
        # ahead): each is handed to its handler, in order.
        self._ahead: list[Callable[[Event], None]] = []
        # How many commands had been queued when the last complete reply
        # arrived: those still unanswered were on their way then (see _receive).
        self._queued_at_reply = 0
        self._dele_sent = False  # then QUIT must be confirmed
        self._idle: Callable[[], None] | None = None  # see when_waiting()
        event = self._event()
        assert isinstance(event, Greeting)
        self.greeting = event
        if self._logging:
            self._log("S: " + describe(event))
        if not event.ok:
            raise ServerError("server refused the connection: " + describe(event), event.code)

    @property
    def transport(self) -> Transport:
        """The underlying connection (for TLS details)."""
        return self._t

    # -- plumbing --------------------------------------------------------------

    def _log(self, line: str) -> None:
        self._sink(self._hide(line))

    def _hide(self, text: str) -> str:
        return self._secrets.hide(text)

    def _flush(self) -> None:
        """Write what is held back (see assume_capabilities), and stop holding."""
        if self._held is not None:
            held, self._held = self._held, None
            if held:
                self._t.send(b"".join(held))

    def _event(self) -> Event:
        self._flush()
        while True:
            event = self._p.next_event()
            if event is NEED_DATA:
                if self._idle is not None:
                    task, self._idle = self._idle, None
                    task()
                self._p.receive_data(self._receive())
                continue
            if isinstance(event, (Reply, Listing, MessageEnd)):
                self._queued_at_reply = self._p.queued
            if self._ahead:
                self._ahead.pop(0)(event)
            else:
                return event

    def _receive(self) -> bytes:
        """The next bytes from the server; PipeliningLostError when a batch stalls.

        Commands are taken as lost when the server is silent between replies
        while the next command to answer was already on its way when the
        last reply arrived: a server that pipelines answers it at once.
        """
        p = self._p
        next_up = p.next_command
        if next_up is None or not p.between_replies or p.answered >= self._queued_at_reply:
            return self._t.recv()
        slow = next_up in _SLOW_REPLIES
        try:
            return self._t.recv(None if slow else min(PIPELINE_GRACE, self._t.timeout))
        except ServerTimeoutError:
            if next_up == "QUIT":
                raise
            raise PipeliningLostError(
                f"{self._t.host} advertises PIPELINING but did not answer {next_up} "
                "sent with other commands"
            ) from None

    def when_waiting(self, task: Callable[[], None]) -> None:
        """Run *task* once, the next time this client has to wait for the server.

        Local work done then (reading the seen-store while the server lists
        the maildrop) takes no time of its own. What
        *task* raises comes out of the command that was waiting.
        """
        self._idle = task

    def _send(self, data: bytes, shown: str | None = None) -> None:
        if self._logging:
            text = shown if shown is not None else data.decode("utf-8", "replace")
            for line in text.splitlines():
                self._log("C: " + line)
        if self._held is not None:
            self._held.append(data)
        else:
            self._t.send(data)

    def _reply(self) -> Reply:
        return self._as_reply(self._event())

    def _as_reply(self, event: Event, what: str = "from server") -> Reply:
        """*event*, which must be a single-line reply, logged."""
        if not isinstance(event, Reply):
            raise ProtocolError(f"unexpected {type(event).__name__} {what}")
        if self._logging:
            self._log("S: " + describe(event))
        return event

    def command(self, name: str, *args: str, shown: str | None = None) -> Reply:
        """Send a single-line command and return its ``+OK`` reply (or raise)."""
        self._send(self._p.send(name, *args), shown)
        reply = self._reply()
        if not reply.ok:
            raise ServerError(f"{name} failed: {describe(reply)}", reply.code, describe(reply))
        return reply

    def _listing(self, name: str) -> Listing | Reply:
        self._send(self._p.send(name))
        return self._read_listing()

    def _read_listing(self) -> Listing | Reply:
        return self._listing_event(self._event())

    def _listing_event(self, event: Event) -> Listing | Reply:
        if isinstance(event, Listing):
            if self._logging:
                self._log(f"S: {said(True, event.text)} [{len(event.lines)} lines]")
            return event
        if isinstance(event, Reply):
            if self._logging:
                self._log("S: " + describe(event))
            return event
        raise ProtocolError(f"unexpected {type(event).__name__} from server")

    # -- session set-up --------------------------------------------------------

    def capa(self) -> dict[str, list[str]] | None:
        """Ask CAPA (RFC 2449); None when the server does not know the command."""
        return self._parse_capa(self._listing("CAPA"))

    def _parse_capa(self, result: Listing | Reply) -> dict[str, list[str]] | None:
        if isinstance(result, Reply):
            self.capabilities = None
            return None
        caps = parse_capa(result.lines)
        if self._secrets:  # a CAPA after the login could echo a secret, too
            hide = self._hide
            caps = {hide(name): [hide(arg) for arg in args] for name, args in caps.items()}
        self.capabilities = caps
        return caps

    def has(self, capability: str) -> bool:
        """Whether the last CAPA listed *capability*."""
        return self.capabilities is not None and capability.upper() in self.capabilities

    @property
    def pipelining(self) -> bool:
        """Whether commands may go out together: the server offers it and never lost any."""
        return self.pipelining_allowed and self.has("PIPELINING")

    def assume_capabilities(self, known: Capabilities) -> None:
        """Go on as if CAPA had answered *known* (what it said last session).

        CAPA is sent all the same, but held back and written together with
        the next command (the login); its reply, read before that command's,
        replaces *known*. Pipelining this way is what RFC 2449 section 6.6
        allows when the server advertises PIPELINING; if it has stopped doing
        so, it has still been sent its commands in order.
        """
        self.capabilities = dict(known)
        self._held = []
        self._send(self._p.send("CAPA"))
        self._ahead.append(self._capa_arrived)

    def _capa_arrived(self, event: Event) -> None:
        self._parse_capa(self._listing_event(event))

    def utf8(self) -> None:
        """Send UTF8 (RFC 6856 section 2), in the AUTHORIZATION state.

        Without it Courier serves a message with 8-bit bytes in its header as
        a generated wrapper ("Cannot display Unicode content"). With
        PIPELINING its reply is not waited for (it goes out with the login);
        else it is read before the login goes out. A refusal changes nothing.
        """
        self._send(self._p.send("UTF8"))
        if self.pipelining:
            self._ahead.append(self._utf8_arrived)
        else:
            self._utf8_arrived(self._event())

    def _utf8_arrived(self, event: Event) -> None:
        self._as_reply(event, "in reply to UTF8")

    def stls(self, context: ssl.SSLContext, pinned: str | None = None) -> None:
        """Upgrade with STLS (RFC 2595 section 4). Never falls back to clear text."""
        if self.capabilities is not None and not self.has("STLS"):
            raise InsecureError("server does not offer STLS; refusing to go on without TLS")
        self._send(self._p.send("STLS"))
        try:
            reply = self._reply()
        except ProtocolError as exc:
            raise TLSError(f"STARTTLS failed: {exc}") from exc
        if not reply.ok:
            raise InsecureError(f"server refused STLS ({describe(reply)}); refusing to go on")
        self._t.start_tls(context, pinned)
        # RFC 2595 section 4: forget what was learnt before TLS.
        self.capabilities = None

    def user_pass(self, user: str, password: str) -> None:
        """USER/PASS login (RFC 1939 section 7); one round trip with PIPELINING."""
        self._secrets.add(password)
        try:
            if not self.pipelining:
                self.command("USER", user)
                self.command("PASS", password, shown="PASS ***")
                return
            self._send(
                self._p.send("USER", user) + self._p.send("PASS", password),
                f"USER {user}\nPASS ***",
            )
            for reply in (self._reply(), self._reply()):  # both, in order
                if not reply.ok:
                    words = describe(reply)
                    raise ServerError(f"{reply.command} failed: {words}", reply.code, words)
        except ServerError as exc:
            raise login_error(exc.words, exc.code) from exc

    def require_apop(self) -> bytes:
        """The greeting's APOP timestamp, or CapabilityError.

        Callers check this before fetching a password, so none is asked for in vain.
        """
        stamp = self.greeting.timestamp
        if stamp is None:
            raise CapabilityError("server does not offer APOP (no timestamp in its greeting)")
        return stamp

    def apop(self, user: str, password: str) -> None:
        """APOP login with the greeting's timestamp (RFC 1939 section 7)."""
        digest = auth.apop_digest(self.require_apop(), password)
        self._secrets.add(password, digest)
        self._send(self._p.send("APOP", user, digest), f"APOP {user} ***")
        reply = self._reply()
        if not reply.ok:
            raise login_error(describe(reply), reply.code)

    def sasl(self, mech: auth.SASLMechanism) -> None:
        """Run an AUTH exchange (RFC 5034) with *mech*.

        Whatever *mech* sends or derives is hidden before it is sent, and its
        errors (which may quote a challenge) are scrubbed.
        """
        with self._secrets.scrubbing():
            self._sasl(mech)

    def _sasl(self, mech: auth.SASLMechanism) -> None:
        initial = mech.initial_response()
        self._secrets.update(mech.secrets)
        args = [mech.name]
        if initial is not None:
            encoded = auth.encode_b64(initial).decode("ascii") if initial else "="
            if len("AUTH ") + len(mech.name) + 1 + len(encoded) + 2 <= MAX_AUTH_LINE:
                args.append(encoded)
                initial = None
        self._send(self._p.send("AUTH", *args), f"AUTH {mech.name}" + (" ***" if args[1:] else ""))
        while True:
            event = self._event()
            if isinstance(event, Continuation):
                if self._logging:  # (base64 only: the protocol checked)
                    self._log("S: + " + event.payload.decode("ascii"))
                if initial is not None:
                    # The initial response did not fit the AUTH line: send it now.
                    answer, initial = initial, None
                else:
                    answer = mech.respond(auth.decode_b64(event.payload))
                    self._secrets.update(mech.secrets)
                self._send(self._p.send_sasl(auth.encode_b64(answer)), "***")
                continue
            if not isinstance(event, Reply):
                raise ProtocolError(f"unexpected {type(event).__name__} during AUTH")
            if self._logging:
                self._log("S: " + describe(event))
            if not event.ok:
                detail = mech.error_detail()
                words = describe(event) + (f" ({detail})" if detail else "")
                raise login_error(words, event.code)
            # RFC 5034 section 4: success carries no SASL data in POP3 (the
            # text is for humans); SCRAM must have verified the server by now.
            mech.verify_final(b"")
            return

    # -- transactions ----------------------------------------------------------

    def uidl(self) -> list[tuple[int, str]]:
        """UIDL listing as (message number, unique id); CapabilityError without UIDL.

        The unique ids are data, exact (a match must be exact): whoever shows
        one sanitises it.
        """
        return self._parse_uidl(self._listing("UIDL")).pairs()

    def _parse_uidl(self, result: Listing | Reply) -> UIDLs:
        if isinstance(result, Reply):
            raise CapabilityError(
                "server does not support UIDL, so fetchpop cannot tell new mail from old: "
                + describe(result)
            )
        with self._secrets.scrubbing():  # its errors quote a line
            return parse_uidls(result.lines)

    def sizes(self) -> dict[int, int]:
        """LIST listing: message number -> size in octets."""
        return self._parse_sizes(self._listing("LIST")).mapping()

    def _parse_sizes(self, result: Listing | Reply) -> Sizes:
        if isinstance(result, Reply):
            raise ServerError("LIST failed: " + describe(result), result.code)
        with self._secrets.scrubbing():
            return parse_sizes(result.lines)

    def maildrop(self) -> tuple[UIDLs, Sizes]:
        """After login: CAPA again (RFC 2449 section 5), UIDL and LIST, compact.

        With PIPELINING (as CAPA before login said) the three go out together,
        one round trip instead of three.
        """
        if not self.pipelining:
            if self.capabilities is not None:
                self.capa()
            listing = self._parse_uidl(self._listing("UIDL"))
            if not listing:
                return listing, Sizes.none()
            return listing, self._parse_sizes(self._listing("LIST"))
        self._send(self._p.send("CAPA") + self._p.send("UIDL") + self._p.send("LIST"))
        # Each parsed as soon as it is read: UIDL's lines are gone before
        # LIST's arrive (a maildrop of a million messages).
        self._parse_capa(self._read_listing())
        uidl = self._parse_uidl(self._read_listing())
        return uidl, self._parse_sizes(self._read_listing())

    def retrieve(
        self,
        messages: Sequence[tuple[int, int | None]],
        *,
        window: int = 1,
        header_only: bool = False,
    ) -> Iterator[tuple[int, Iterator[bytes] | Refusal]]:
        """RETR each (number, size) in turn, at most *window* outstanding; with
        *header_only*, ``TOP n 0`` instead (RFC 1939 section 7): the header and
        the blank line after it.

        Yields (number, chunks) where *chunks* must be read to the end before
        the next item, or (number, refusal) when the server answered ``-ERR``.
        """
        sent = 0
        top = ("0",) if header_only else ()

        def fill() -> None:
            nonlocal sent
            # Top the window up only once half of it has drained: one write
            # (and one TLS record) carries many RETRs instead of one each.
            if sent and self._p.pending > window // 2:
                return
            out = []
            while sent < len(messages) and self._p.pending < window:
                num, size = messages[sent]
                command = "TOP" if header_only else "RETR"
                out.append(self._p.send(command, str(num), *top, max_octets=retr_limit(size)))
                sent += 1
            if out:
                self._send(b"".join(out))

        for num, _ in messages:
            fill()
            event = self._event()
            if isinstance(event, Reply):
                if self._logging:
                    self._log("S: " + describe(event))
                yield num, Refusal(event)
                continue
            if not isinstance(event, MessageStart):
                raise ProtocolError(f"unexpected {type(event).__name__} in reply to RETR")
            if self._logging:
                self._log("S: " + said(True, event.text))
            chunks = self._chunks()
            yield num, chunks
            for _ in chunks:  # the caller stopped early: skip the rest
                pass

    def _chunks(self) -> Iterator[bytes]:
        while True:
            event = self._event()
            if isinstance(event, MessageData):
                yield event.data
            elif isinstance(event, MessageEnd):
                if self._logging:
                    self._log(f"S: [{event.octets} octets]")
                return
            else:
                raise ProtocolError(f"unexpected {type(event).__name__} inside a message")

    def delete(self, numbers: Sequence[int], *, window: int = 1) -> list[tuple[int, Refusal]]:
        """DELE each message, pipelined; returns the ones the server refused."""
        return self._dele(numbers, window, quit=False)

    def delete_and_quit(
        self, numbers: Sequence[int], *, window: int = 1
    ) -> list[tuple[int, Refusal]]:
        """DELE each message and QUIT, pipelined; returns the DELEs the server refused.

        Raises when QUIT is not confirmed: then no deletion has happened
        (RFC 1939 section 6, the UPDATE state). With nothing to delete, the
        reply would confirm nothing: QUIT is sent and the connection closed
        without waiting for it (a round trip less).
        """
        try:
            if not numbers and not self._dele_sent:
                self._send(self._p.send("QUIT"))
                self._flush()
                return []
            return self._dele(numbers, window, quit=True)
        finally:
            self.close()

    def _dele(
        self, numbers: Sequence[int], window: int, *, quit: bool
    ) -> list[tuple[int, Refusal]]:
        self._dele_sent = self._dele_sent or bool(numbers)
        refused = []
        commands = [("DELE", str(n)) for n in numbers] + ([("QUIT",)] if quit else [])
        pos = 0
        for i in range(len(commands)):
            out = []
            while pos < len(commands) and self._p.pending < window:
                out.append(self._p.send(*commands[pos]))
                pos += 1
            if out:
                self._send(b"".join(out))
            reply = self._reply()
            if i < len(numbers):
                if not reply.ok:
                    refused.append((numbers[i], Refusal(reply)))
            elif not reply.ok:
                raise ServerError("QUIT failed, deletions not done: " + describe(reply), reply.code)
        return refused

    def quit(self) -> bool:
        """QUIT and close; True when the server confirmed it.

        Only deletions (:meth:`delete`) need confirming; without them the
        reply is not waited for, and this is False.
        """
        confirm = self._dele_sent
        self.delete_and_quit(())
        return confirm

    def close(self) -> None:
        """Drop the connection."""
        self._t.close()


def login_error(words: str, code: str | None) -> FetchpopError:
    """The error for a refused login: *words* are the server's, *code* its response code.

    RFC 2449 section 8 and RFC 3206: [IN-USE], [LOGIN-DELAY] and [SYS/TEMP] say
    "try again later" and [SYS/PERM] "this will not work", whatever the
    credentials; only [AUTH] or no code at all means they were wrong.
    """
    refused = ServerError(f"login refused: {words}", code)
    if refused.exit_code in (ExitCode.TEMPFAIL, ExitCode.UNAVAILABLE):
        return refused
    return AuthError(f"authentication failed: {words}")
