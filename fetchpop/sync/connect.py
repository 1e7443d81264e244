"""Connecting and logging in: TLS (implicit or STARTTLS), the wrong-port
diagnosis, and the login with the mechanism the account asks for.

What may go on the wire together, and why no more, is stated at the top of
fetchpop/pop3/client.py.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from fetchpop.config import Account
from fetchpop.errors import (
    CapabilityError,
    FetchpopError,
    NotPOP3Error,
    WrongServiceError,
    sanitize,
)
from fetchpop.pop3 import auth
from fetchpop.pop3.client import Client, Log
from fetchpop.pop3.listings import Capabilities
from fetchpop.pop3.protocol import identify_service
from fetchpop.pop3.transport import (
    LOGIN_TIMEOUTS,
    NotTLSError,
    TLSInfo,
    Transport,
    UnverifiedError,
    first_words,
    make_ssl_context,
    make_unverified_context,
    trying_whole_store,
)

#: Seconds without a greeting after which fetchpop looks (on a second
#: connection) whether the port speaks TLS or another protocol, so a wrong
#: port or TLS mode is said in seconds instead of after the whole timeout.
GREETING_PROBE = 2.0

PasswordSource = Callable[[], str]


def open_connection(
    account: Account,
    *,
    log: Log | None = None,
    seen_caps: dict[str, object] | None = None,
    whole_store: bool = False,
    known: Capabilities | None = None,
    pipelining: bool = True,
) -> Client:
    """Connect and secure the channel (implicit TLS or STLS), up to the login.

    *seen_caps*, when given, receives the capabilities at each stage. A
    certificate whose issuer the system's CA directory lacks is tried once
    more against the whole CA store (see :func:`make_ssl_context`).

    *known* are the capabilities the server gave before the login last time
    (over TLS): then no CAPA is waited for. STLS goes out at once, and CAPA
    goes out with the login (see :meth:`Client.assume_capabilities`).

    *pipelining* False: lock-step, whatever the server advertises.

    From the TCP connection on, the login may wait on the server at most
    LOGIN_TIMEOUTS times the timeout in all (see fetchpop/pop3/transport.py),
    until :func:`connect` (or :func:`probe`) has logged in.
    """
    try:
        if whole_store:
            return _open_connection(account, log, seen_caps, True, known, pipelining)
        return trying_whole_store(
            lambda whole: _open_connection(account, log, seen_caps, whole, known, pipelining)
        )
    except UnverifiedError as exc:
        raise UnverifiedError(f"{exc}; {trust_hint(account)}") from exc


def trust_hint(account: Account) -> str:
    """The two ways on from a certificate that does not verify."""
    return (
        "if it is the right server, trust its certificate with tls_fingerprint "
        f"(`fetchpop serverinfo {account.name}` shows the line to add), or its CA "
        "with ca_file"
    )


def peek_certificate(account: Account) -> TLSInfo | None:
    """The certificate the server presents, taken without verifying it, so
    that ``serverinfo`` can show one that does not verify. Nothing is sent but
    STLS and CAPA: the connection never logs in."""
    client = _open_connection(account, None, {}, True, None, True, verify=False)
    try:
        return client.transport.tls_info()
    finally:
        client.close()


def _open_connection(
    account: Account,
    log: Log | None,
    seen_caps: dict[str, object] | None,
    whole_store: bool,
    known: Capabilities | None,
    pipelining: bool,
    *,
    verify: bool = True,
) -> Client:
    caps = seen_caps if seen_caps is not None else {}
    context = None
    pinned = account.tls_fingerprint if verify else None
    if account.tls != "off":
        context = (
            make_ssl_context(account.ca_file, pinned, whole_store=whole_store)
            if verify
            else make_unverified_context()
        )
    else:
        known = None  # only what an authenticated server said may save a round trip
    if known is not None and ("PIPELINING" not in known or not pipelining):
        known = None  # RFC 2449 section 6.6: no pipelining unless the server offers it
    try:
        transport = Transport.connect(
            account.host,
            account.port,
            timeout=account.timeout,
            tls=context if account.tls == "implicit" else None,
            pinned=pinned,
            # Greeting to logged in, however the server drips its replies.
            login_within=LOGIN_TIMEOUTS * account.timeout,
        )
    except NotTLSError as exc:
        service = identify_service(first_words(account.host, account.port))
        if service in (None, "TLS"):
            raise
        raise wrong_port(account, service) from exc
    try:
        if account.tls != "implicit" and not transport.wait_readable(GREETING_PROBE):
            service = identify_service(first_words(account.host, account.port))
            # The greeting may have come while the probe looked: then the
            # probe's answer (a multiplexer routes by what a client sends
            # first) does not speak for this connection.
            if service not in (None, "pop3") and not transport.wait_readable(0):
                raise wrong_port(account, service)
        try:
            client = Client(transport, log=log, pipelining=pipelining)
        except NotPOP3Error as exc:
            raise wrong_port(account, exc.service) from exc
        if account.tls == "starttls":
            assert context is not None
            if known is None:
                caps["before_tls"] = client.capa()
            client.stls(context, pinned)
        if known is None:
            caps["before_login"] = client.capa()
        else:
            client.assume_capabilities(known)
    except BaseException:
        transport.close()
        raise
    return client


def wrong_port(account: Account, service: str) -> WrongServiceError:
    """The error for a port that answers in *service* ("TLS", "pop3", "SSH" ...)."""
    port = account.port
    if service == "TLS":
        return WrongServiceError(
            f'port {port} expects TLS from the first byte: set tls = "implicit"'
        )
    if service == "pop3":
        return WrongServiceError(
            f"port {port} speaks POP3 in clear text, not TLS from the first byte: "
            'set tls = "starttls" (or use port 995 with tls = "implicit")'
        )
    return WrongServiceError(
        f"port {port} of {account.host} speaks {service}, not POP3: check the port "
        '(POP3 uses 110, or 995 with tls = "implicit")'
    )


def connect(
    account: Account,
    password: PasswordSource,
    *,
    log: Log | None = None,
    known: Capabilities | None = None,
    meanwhile: Callable[[], None] | None = None,
    pipelining: bool = True,
) -> Client:
    """Open, secure and log in to *account*'s server. The caller QUITs or closes.

    *meanwhile* runs the first time the client waits after the login
    (:meth:`Client.when_waiting`): while the server lists the maildrop, which
    for a big one takes longer than the login (Dovecot: about 0.1 s for
    100,000 messages, when reading the store's 100,000 keys takes 0.02 s).

    CAPA is asked again after login by :meth:`Client.maildrop`, pipelined with
    UIDL and LIST where the server allows it. With *known* capabilities (see
    :func:`open_connection`) the first CAPA goes out with the login.
    """
    client = open_connection(account, log=log, known=known, pipelining=pipelining)
    try:
        login(client, account, password)
        _logged_in(client)
        if meanwhile is not None:
            client.when_waiting(meanwhile)
    except BaseException:
        client.close()
        raise
    return client


def _logged_in(client: Client) -> None:
    """The login's bound on waiting (see :func:`open_connection`) is over."""
    limit = getattr(client.transport, "limit_waiting", None)  # tests' transports may lack it
    if limit is not None:
        limit(None)


def probe(account: Account, password: PasswordSource, *, log: Log | None = None) -> dict[str, Any]:
    """What ``fetchpop serverinfo`` shows: greeting, TLS details, CAPA at each stage.

    A failed login is reported in the result, not raised: the rest is still useful.
    """
    caps: dict[str, object] = {}
    try:
        client = open_connection(account, log=log, seen_caps=caps)
    except UnverifiedError as exc:
        # Shown all the same (fingerprint, names, dates), with why it fails.
        seen = peek_certificate(account)
        return {
            "greeting": None,
            "apop": False,
            "tls": dataclasses.asdict(seen) if seen else None,
            "tls_error": str(exc.__cause__ or exc),
            "capabilities": {},
            "login_error": None,
        }
    info: dict[str, Any] = {
        "greeting": sanitize(client.greeting.text),
        "apop": client.greeting.timestamp is not None,
        "tls": None,
        "tls_error": None,
        "capabilities": caps,
        "login_error": None,
    }
    tls = client.transport.tls_info()
    if tls is not None:
        info["tls"] = dataclasses.asdict(tls)
    if not account.user:  # serverinfo --host: nobody to log in as
        client.quit()
        return info
    try:
        login(client, account, password)
        _logged_in(client)
        caps["after_login"] = client.capa()
        client.quit()
    except FetchpopError as exc:
        info["login_error"] = str(exc)
        client.close()
    except BaseException:
        client.close()
        raise
    return info


def login(client: Client, account: Account, password: PasswordSource) -> None:
    """Authenticate with the mechanism the account asks for (or the best offered)."""
    if client.has("UTF8"):
        client.utf8()
    method: str = account.auth
    sasl_offered = (client.capabilities or {}).get("SASL", [])
    if method == "auto":
        chosen = auth.choose_mechanism(sasl_offered, tls=client.transport.is_tls)
        method = chosen.lower() if chosen else "user"
    if method == "user":
        client.user_pass(account.user, password())
    elif method == "apop":
        client.require_apop()  # before the password is fetched (or asked for)
        client.apop(account.user, password())
    else:
        name = method.upper()
        if client.capabilities is not None and name not in (m.upper() for m in sasl_offered):
            raise CapabilityError(
                f"server does not offer SASL {name} (it offers: "
                + (", ".join(sasl_offered) or "none")
                + ")"
            )
        mechanism = auth.mechanism_for(
            method, account.user, password(), host=account.host, port=account.port
        )
        client.sasl(mechanism)
