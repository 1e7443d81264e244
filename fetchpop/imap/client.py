"""A blocking IMAP client over fetchpop's one transport (fetchpop/pop3/transport.py).

The same TLS policy (verification, TLS >= 1.2, a pinned fingerprint,
``ca_file``) and the same bounds on waiting as POP3: the transport is the
only code here that touches a socket. Commands go in lock-step, one at a
time (an APPEND target has nothing to pipeline), except that a literal goes
at once where the server offers LITERAL+ (RFC 7888) and otherwise waits for
the server's ``+``. APPEND streams its literal from chunks the caller gives,
so a message is never whole in memory.

Errors: a tagged NO is an :class:`ImapRefusal` (it keeps the response, for
the caller to map to "try later" or "rejected"); BAD and anything malformed
is a ProtocolError; a lost connection is the transport's ConnectionLostError.
No password or token appears in any error: the login's arguments are never
quoted, and server text is sanitised by the parser.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING
from typing import Literal as TypingLiteral

from fetchpop.errors import (
    AuthError,
    CapabilityError,
    ConnectionLostError,
    ProtocolError,
    ServerError,
    TempFailError,
    UnavailableError,
    sanitize,
)
from fetchpop.imap import auth
from fetchpop.imap.protocol import (
    Argument,
    Command,
    Literal,
    Parser,
    Response,
    Tags,
    astring,
    capabilities,
    fetch_items,
    numbers,
    status_items,
)
from fetchpop.pop3.auth import SASLMechanism, decode_b64, encode_b64
from fetchpop.pop3.transport import (
    LOGIN_TIMEOUTS,
    Transport,
    make_ssl_context,
    trying_whole_store,
)

if TYPE_CHECKING:
    import ssl

Log = Callable[[str], None]


class ImapRefusal(ServerError):
    """The server answered a command with NO; *response* is its answer."""

    def __init__(self, command: str, response: Response) -> None:
        super().__init__(f"IMAP {command} refused: {response.words}", words=response.words)
        self.response = response


class ImapClient:
    """One IMAP connection; the caller logs out (or closes)."""

    def __init__(self, transport: Transport, *, log: Log | None = None) -> None:
        self.transport = transport
        self.log = log
        self._parser = Parser()
        self._tags = Tags()
        self.capabilities: frozenset[str] = frozenset()
        self.closed_by_server = False
        greeting = self._read()
        if greeting.kind != "untagged" or greeting.status not in ("OK", "PREAUTH", "BYE"):
            raise ProtocolError(f"{transport.host} does not greet as an IMAP server")
        if greeting.status == "BYE":
            raise UnavailableError(
                f"IMAP server {transport.host} refused the connection: {greeting.words}"
            )
        self.preauth = greeting.status == "PREAUTH"
        self._learn(greeting)

    # -- reading ---------------------------------------------------------------------

    def _read(self) -> Response:
        while True:
            response = self._parser.next()
            if response is not None:
                if self.log:
                    self.log(
                        "S: "
                        + sanitize(
                            response.words
                            if response.kind != "untagged"
                            or response.status in ("OK", "NO", "BAD", "BYE")
                            else f"* {response.status} ...",
                            200,
                        )
                    )
                return response
            data = self.transport.recv()
            if not data:
                raise ConnectionLostError(f"connection to {self.transport.host} closed by server")
            self._parser.feed(data)

    def _learn(self, response: Response) -> None:
        """Capabilities from a CAPABILITY response or response code."""
        if response.kind == "untagged" and response.status == "CAPABILITY":
            self.capabilities = capabilities(response.data)
        elif response.code_name == "CAPABILITY":
            self.capabilities = capabilities(response.code or "")

    def _complete(self, command: Command, untagged: list[Response]) -> Response:
        """Read to the tagged completion of *command*; NO raises ImapRefusal."""
        while True:
            response = self._read()
            if response.kind == "continue":
                raise ProtocolError(
                    f"IMAP server sent an unexpected continuation during {command.name}"
                )
            self._learn(response)
            if response.kind == "untagged":
                if response.status == "BYE":
                    self.closed_by_server = True
                untagged.append(response)
                continue
            if response.tag != command.tag:
                raise ProtocolError(
                    f"IMAP server answered a command it was not sent ({command.name})"
                )
            return self._checked(command, response)

    def _checked(self, command: Command, response: Response) -> Response:
        if response.status == "NO":
            raise ImapRefusal(command.name, response)
        if response.status == "BAD":
            raise ProtocolError(f"IMAP server said {command.name} is bad: {response.words}")
        return response

    # -- sending ---------------------------------------------------------------------

    def _send(self, data: bytes, shown: str | None = None) -> None:
        if self.log and shown is not None:
            self.log("C: " + shown)
        self.transport.send(data)

    def run(
        self,
        name: str,
        *arguments: Argument,
        stream: Iterable[bytes] | None = None,
        secret: bool = False,
    ) -> tuple[Response, list[Response]]:
        """Send a command and read to its completion: (tagged OK, untagged).

        A literal without data is sent from *stream*. With *secret* the
        command's arguments are never logged.
        """
        command = Command(self._tags.next(), name, arguments)
        nonsync = self.capabilities & {"LITERAL+", "LITERAL-"}
        untagged: list[Response] = []
        shown: str | None = f"{command.tag} {name}" + ("" if secret else " ...")
        for text, literal in command.pieces(frozenset(nonsync)):
            self._send(text, shown)
            shown = None
            if literal is None:
                break
            if not text.endswith(b"+}\r\n"):
                early = self._wait_continue(command, untagged)
                if early is not None:
                    return early, untagged
            self._send_literal(literal, stream)
        return self._complete(command, untagged), untagged

    def _wait_continue(self, command: Command, untagged: list[Response]) -> Response | None:
        """Wait for ``+``; a tagged answer instead (NO for an APPEND) is returned."""
        while True:
            response = self._read()
            if response.kind == "continue":
                return None
            self._learn(response)
            if response.kind == "untagged":
                untagged.append(response)
                continue
            if response.tag == command.tag:
                return self._checked(command, response)
            raise ProtocolError(f"IMAP server answered a command it was not sent ({command.name})")

    def _send_literal(self, literal: Literal, stream: Iterable[bytes] | None) -> None:
        if literal.data is not None:
            self.transport.send(literal.data)
            return
        if stream is None:
            raise ProtocolError("a literal without data needs a stream")
        sent = 0
        for chunk in stream:
            sent += len(chunk)
            if sent > literal.size:
                raise ProtocolError("the message grew while it was sent")
            self.transport.send(chunk)
        if sent != literal.size:
            raise ProtocolError("the message shrank while it was sent")

    # -- commands --------------------------------------------------------------------

    def capability(self) -> frozenset[str]:
        self.run("CAPABILITY")
        return self.capabilities

    def has(self, name: str) -> bool:
        return name.upper() in self.capabilities

    def starttls(self, context: ssl.SSLContext, pinned: str | None) -> None:
        """STARTTLS (RFC 3501 section 6.2.1), then the capabilities anew."""
        if not self.has("STARTTLS"):
            raise CapabilityError(f"IMAP server {self.transport.host} does not offer STARTTLS")
        self.run("STARTTLS")
        if self._parser.pending():
            # Bytes sent before the handshake would be read as if protected.
            raise ProtocolError(f"IMAP server {self.transport.host} sent data behind STARTTLS")
        self.transport.start_tls(context, pinned)
        self.capabilities = frozenset()
        self.capability()

    def login(self, user: str, password: str) -> None:
        """LOGIN (quoted strings or literals); the capabilities anew after it."""
        if self.has("LOGINDISABLED"):
            raise CapabilityError(
                f"IMAP server {self.transport.host} does not allow LOGIN here (LOGINDISABLED)"
            )
        try:
            response, _ = self.run("LOGIN", astring(user), astring(password), secret=True)
        except ImapRefusal as exc:
            raise _login_error(exc.response) from None
        self._after_login(response)

    def authenticate(self, mechanism: SASLMechanism) -> None:
        """AUTHENTICATE with a SASL mechanism (with SASL-IR where offered)."""
        name = mechanism.name
        if not self.has(f"AUTH={name}"):
            offered = sorted(c[5:] for c in self.capabilities if c.startswith("AUTH="))
            raise CapabilityError(
                f"IMAP server does not offer AUTHENTICATE {name} (it offers: "
                + (", ".join(offered) or "none")
                + ")"
            )
        command = Command(self._tags.next(), "AUTHENTICATE", (name.encode("ascii"),))
        text = f"{command.tag} AUTHENTICATE {name}".encode("ascii")
        initial = mechanism.initial_response() if self.has("SASL-IR") else None
        if initial is not None:
            text += b" " + (encode_b64(initial) or b"=")
        self._send(text + b"\r\n", f"{command.tag} AUTHENTICATE {name}")
        while True:
            response = self._read()
            if response.kind == "continue":
                answer = mechanism.respond(decode_b64(response.data.strip()))
                self._send(encode_b64(answer) + b"\r\n")
                continue
            self._learn(response)
            if response.kind == "untagged":
                continue
            if response.tag != command.tag:
                raise ProtocolError("IMAP server answered a command it was not sent (AUTHENTICATE)")
            break
        if response.status != "OK":
            detail = mechanism.error_detail()
            error = _login_error(response)
            if detail:
                error = type(error)(f"{error} ({detail})")
            raise error
        self._after_login(response)

    def sign_in(self, method: str, user: str, secret: Callable[[], str], *, port: int) -> None:
        """Log in with *method* (an ``imap_auth`` value); a server that echoes
        the secret in its refusal does not get it shown."""
        chosen = auth.choose(method, self.capabilities, tls=self.transport.is_tls)
        password = secret()
        try:
            if chosen == "login":
                self.login(user, password)
            else:
                host = self.transport.host
                self.authenticate(auth.mechanism(chosen, user, password, host=host, port=port))
        except (AuthError, TempFailError, ProtocolError, CapabilityError) as exc:
            text = str(exc)
            if password and password in text:
                raise type(exc)(text.replace(password, "***")) from None
            raise

    def _after_login(self, response: Response) -> None:
        limit = getattr(self.transport, "limit_waiting", None)
        if limit is not None:
            limit(None)
        if response.code_name != "CAPABILITY":
            self.capability()

    def status(self, mailbox: Argument) -> dict[str, int]:
        """STATUS mailbox (UIDNEXT UIDVALIDITY)."""
        _, untagged = self.run("STATUS", mailbox, b"(UIDNEXT UIDVALIDITY)")
        items: dict[str, int] = {}
        for response in untagged:
            if response.status == "STATUS":
                items.update(status_items(response.data))
        return items

    def examine(self, mailbox: Argument) -> dict[str, int]:
        """EXAMINE (read-only): the mailbox's UIDVALIDITY and UIDNEXT, where said."""
        _, untagged = self.run("EXAMINE", mailbox)
        out: dict[str, int] = {}
        for response in untagged:
            words = (response.code or "").split()
            known = len(words) == 2 and words[0].upper() in ("UIDVALIDITY", "UIDNEXT")
            if known and words[1].isdigit():
                out[words[0].upper()] = int(words[1])
        return out

    def create(self, mailbox: Argument) -> None:
        self.run("CREATE", mailbox)

    def append(
        self, mailbox: Argument, options: list[bytes], literal: Literal, stream: Iterable[bytes]
    ) -> Response:
        """APPEND (flags, date), the message streamed as *literal*; the tagged OK."""
        response, _ = self.run("APPEND", mailbox, *options, literal, stream=stream)
        return response

    def uid_search(self, criteria: list[Argument]) -> list[int]:
        _, untagged = self.run("UID SEARCH", *criteria)
        found: list[int] = []
        for response in untagged:
            if response.status in ("SEARCH", "ESEARCH"):
                found.extend(numbers(response.data))
        return found

    def uid_sizes(self, uids: list[int]) -> dict[int, int]:
        """UID -> RFC822.SIZE of the messages with *uids*."""
        if not uids:
            return {}
        ids = ",".join(str(u) for u in uids).encode("ascii")
        _, untagged = self.run("UID FETCH", ids, b"(UID RFC822.SIZE)")
        sizes: dict[int, int] = {}
        for response in untagged:
            if response.status == "FETCH":
                items = fetch_items(response.data)
                if "UID" in items and "RFC822.SIZE" in items:
                    sizes[items["UID"]] = items["RFC822.SIZE"]
        return sizes

    def logout(self) -> None:
        """LOGOUT and close; a server that hangs up first is fine."""
        try:
            if not self.closed_by_server:
                self.run("LOGOUT")
        except (ConnectionLostError, ProtocolError, ServerError):
            pass
        finally:
            self.close()

    def close(self) -> None:
        self.transport.close()


def connect(
    host: str,
    port: int,
    *,
    tls: TypingLiteral["implicit", "starttls", "off"],
    ca_file: Path | None,
    fingerprint: str | None,
    timeout: float,
    method: str,
    user: str,
    secret: Callable[[], str],
) -> ImapClient:
    """Connect (implicit TLS or STARTTLS, by POP3's TLS policy), log in, and
    return the client; *secret* is asked only when the login needs it.

    A certificate whose issuer the system's CA directory lacks is tried once
    more against the whole CA store, as for POP3.
    """
    return trying_whole_store(
        lambda whole: _connect(
            host, port, tls, ca_file, fingerprint, timeout, method, user, secret, whole
        )
    )


def _connect(
    host: str,
    port: int,
    tls: str,
    ca_file: Path | None,
    fingerprint: str | None,
    timeout: float,
    method: str,
    user: str,
    secret: Callable[[], str],
    whole_store: bool,
) -> ImapClient:
    context = None
    if tls != "off":
        context = make_ssl_context(ca_file, fingerprint, whole_store=whole_store)
    transport = Transport.connect(
        host,
        port,
        timeout=timeout,
        tls=context if tls == "implicit" else None,
        pinned=fingerprint,
        # Greeting to logged in, however the server drips its replies.
        login_within=LOGIN_TIMEOUTS * timeout,
    )
    try:
        client = ImapClient(transport)
        if not client.capabilities:
            client.capability()
        if tls == "starttls":
            assert context is not None
            client.starttls(context, fingerprint)
        if not client.preauth:
            client.sign_in(method, user, secret, port=port)
    except BaseException:
        transport.close()
        raise
    return client


def _login_error(response: Response) -> AuthError | TempFailError:
    """A refused login: UNAVAILABLE is the server's trouble, the rest the credentials'."""
    if response.code_name in ("UNAVAILABLE", "INUSE", "SERVERBUG"):
        return TempFailError(f"IMAP login refused for now: {response.words}")
    return AuthError(f"IMAP login refused: {response.words}")
