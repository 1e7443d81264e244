"""The one module of the POP3 side that touches sockets and ssl (the other is
fetchpop/oauth/http.py, for OAuth2 endpoints).

TLS policy (RFC 8314 section 5, RFC 2595 section 2.4): certificates are
verified against the system store plus an optional ``ca_file``, the host name
is checked, and TLS 1.2 is the minimum. A pinned SHA-256 fingerprint replaces
CA trust; it is compared right after the handshake, before a single command,
let alone a credential, is sent.

Bounds on waiting (RFC 1939 section 3 leaves them to the client). The
account's ``timeout`` bounds each silence. A server that keeps a connection
alive with a trickle (a byte every few seconds) is bounded too: once the
bytes answering a command have begun, every ``timeout`` seconds of waiting
must bring at least MIN_RATE bytes a second (:class:`TooSlowError`), so a
reply or a message takes at most its size at that rate; and the login, from
the TCP connection to the server's last ``+OK`` of it, may wait on the server
LOGIN_TIMEOUTS times the timeout in all (:meth:`Transport.limit_waiting`).
Time fetchpop spends elsewhere (a password prompt, writing a message) does
not count.

Signals (SIGINT, SIGTERM): every wait looks, every TICK seconds, at the stop
check the program registered (:func:`set_stop_check`), telling it whether
a message is in flight: a RETR or TOP reply on this connection, or on
another one of the same thread (then this one is a delivery target's, an
IMAP or SMTP server taking that message). What the check returns is raised.
The socket is non-blocking underneath, and every wait is a poll().
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import errno
import hashlib
import hmac
import os
import select
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar, cast

from fetchpop.errors import (
    ConnectError,
    ConnectionLostError,
    LocalIOError,
    NoHostError,
    ServerTimeoutError,
    TempFailError,
    TLSError,
)

READ_SIZE = 256 * 1024
#: Bytes handed to one send() call (one TLS record at most is 16 KB anyway).
SEND_SIZE = 64 * 1024
#: Seconds between two looks at the stop check while waiting.
TICK = 0.2
#: Bytes a second a server must keep up, over each ``timeout`` seconds of
#: waiting once its answer has begun. A 2G modem line does 1 KB/s; a server
#: answering pipelined DELEs sends 20-odd bytes each, so 6 a second pass.
MIN_RATE = 128
#: The login may wait on the server this many timeouts in all.
LOGIN_TIMEOUTS = 3

#: Asked while fetchpop waits on a server, with whether a message is in
#: flight on that connection: an exception to raise (to stop), or None.
StopCheck = Callable[[bool], BaseException | None]

_stop_check: StopCheck | None = None
# The transports (by id) that are reading a message now, with their threads.
_streaming: dict[int, int] = {}
_streaming_lock = threading.Lock()
# X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT and ..._LOCALLY: no trusted issuer found.
_UNKNOWN_ISSUER = frozenset({2, 20})


#: errnos that are this machine's trouble, whatever the peer does.
_LOCAL_ERRNOS = frozenset({errno.EIO, errno.ENOSPC, errno.ENOMEM, errno.EROFS, errno.EDQUOT})

#: OpenSSL's reasons for a handshake answered by something that is not TLS.
_NOT_TLS = frozenset(
    {"WRONG_VERSION_NUMBER", "HTTP_REQUEST", "PACKET_LENGTH_TOO_LONG", "RECORD_LAYER_FAILURE"}
)


class NotTLSError(TLSError):
    """The server did not answer the TLS handshake in TLS (a clear-text port?)."""


class TooSlowError(TempFailError):
    """The server keeps sending, but too slowly, or the login takes too long in all.

    Not a ServerTimeoutError (a silence): a pipelining client takes a silence
    between replies for commands the server lost, and a trickle is not that.
    """


def set_stop_check(check: StopCheck | None) -> StopCheck | None:
    """Register the process's stop check (a program's signal handling); returns
    the one before. Every transport asks it while it waits."""
    global _stop_check
    before, _stop_check = _stop_check, check
    return before


def message_in_flight() -> bool:
    """Whether some connection of this process is reading a message (RETR, TOP) now."""
    return bool(_streaming)


def _in_flight_here() -> bool:
    """Whether a connection of this thread is reading a message: then a delivery
    target's connection (IMAP, SMTP) is part of that message's flight."""
    here = threading.get_ident()
    with _streaming_lock:
        return here in _streaming.values()


def _ask(check: StopCheck | None, in_flight: bool) -> None:
    if check is not None:
        reason = check(in_flight)
        if reason is not None:
            raise reason


class UnverifiedError(TLSError):
    """The server's certificate did not verify (issuer, name, dates)."""


class UnknownIssuerError(UnverifiedError):
    """No trusted CA issued the server's certificate (or its chain's top).

    With a context made from the system's CA directory alone, the bundle may
    still know the issuer: try again with ``make_ssl_context(whole_store=True)``.
    """


@dataclasses.dataclass(frozen=True)
class TLSInfo:
    """What ``serverinfo`` shows about an established TLS session."""

    version: str
    cipher: str
    fingerprint: str  # "sha256:AB:CD:..."
    subject: str
    issuer: str
    not_after: str


class TLSReuse:
    """What the connections of one run share (:func:`reusing_tls`): a context
    per trust setting, so the CAs are read once, and per server the last TLS
    session, which the next connection resumes (RFC 8446 section 2.2, RFC
    5077): no certificate chain, no signature, on either side. Only a
    session whose handshake verified (CA and host name, or the pin) is kept,
    and only for the same context, host, port and pin; the pin is compared
    again on every connection, resumed or not. A context is made anew when
    the files it trusts have changed (their stat), and the sessions of the
    old one go with it: a CA added or removed counts from the next
    connection on."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._contexts: dict[tuple[object, ...], tuple[object, ssl.SSLContext]] = {}
        self._sessions: dict[tuple[object, ...], ssl.SSLSession] = {}

    def context(
        self, key: tuple[object, ...], stamp: object, make: Callable[[], ssl.SSLContext]
    ) -> ssl.SSLContext:
        """The context for *key*, made by *make* the first time and whenever
        *stamp* (what its CA files' stat said) has changed since."""
        with self._lock:
            known = self._contexts.get(key)
        if known is not None and known[0] == stamp:
            return known[1]
        context = make()  # outside the lock: reading CAs takes a while
        with self._lock:
            old = self._contexts.get(key)
            if old is not None and old[0] == stamp:
                return old[1]  # (another thread made it meanwhile)
            self._contexts[key] = (stamp, context)
            if old is not None:
                gone = id(old[1])
                self._sessions = {k: v for k, v in self._sessions.items() if k[0] != gone}
        return context

    def session(self, key: tuple[object, ...]) -> ssl.SSLSession | None:
        """The last session kept for *key* (see :meth:`Transport.start_tls`)."""
        with self._lock:
            return self._sessions.get(key)

    def keep(self, key: tuple[object, ...], session: ssl.SSLSession) -> None:
        """Keep *session* for the next connection with *key*."""
        with self._lock:
            self._sessions[key] = session

    def __len__(self) -> int:
        """How many sessions are kept."""
        return len(self._sessions)


_reuse: TLSReuse | None = None


@contextlib.contextmanager
def reusing_tls() -> Iterator[TLSReuse]:
    """Within this, TLS contexts and sessions are shared (:class:`TLSReuse`),
    by every thread: one run's connections, every round of ``sync --every``."""
    global _reuse
    outer, _reuse = _reuse, TLSReuse()
    try:
        yield _reuse
    finally:
        _reuse = outer


def _trust_stamp(ca_file: Path | None) -> tuple[object, ...]:
    """What says whether the CA files a context read have changed: the stat
    of *ca_file* and of the system's CA file and directory."""
    paths = ssl.get_default_verify_paths()
    stamp: list[object] = []
    for path in (ca_file, paths.cafile, paths.capath):
        try:
            st = os.stat(path) if path else None
        except OSError:
            st = None
        stamp.append(None if st is None else (st.st_ino, st.st_size, st.st_mtime_ns))
    return tuple(stamp)


def make_ssl_context(
    ca_file: Path | None = None, pinned: str | None = None, *, whole_store: bool = False
) -> ssl.SSLContext:
    """A client context: verified against system CAs plus *ca_file*, TLS >= 1.2;
    within :func:`reusing_tls`, one per setting is made and shared.

    With *pinned* (64 hex digits), CA trust and host name checks are replaced by
    comparing the certificate's SHA-256 digest after the handshake.

    Parsing the system's whole CA bundle costs about 25 ms, a good part of a
    sync that finds nothing new. Where the system keeps its CAs one per file
    under hashed names as well (Debian, Ubuntu, Alpine, Arch), only that
    directory is given, and OpenSSL reads just the certificate a handshake
    needs. That directory is never more than the bundle, so nothing is trusted
    that would not be; if a certificate's issuer is not found there, the caller
    retries with *whole_store* (see :class:`UnknownIssuerError`).
    """
    reuse = _reuse
    if reuse is not None:
        key = (str(ca_file) if ca_file else None, bool(pinned), whole_store)
        stamp = () if pinned else _trust_stamp(ca_file)  # (a pin reads no CA)
        return reuse.context(key, stamp, lambda: _new_context(ca_file, pinned, whole_store))
    return _new_context(ca_file, pinned, whole_store)


def _new_context(ca_file: Path | None, pinned: str | None, whole_store: bool) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # CERT_REQUIRED, host names checked
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if pinned:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        return ctx
    capath = None if whole_store else _hashed_ca_directory()
    if capath is not None:
        ctx.load_verify_locations(capath=capath)
    else:
        ctx.set_default_verify_paths()
    if ca_file is not None:
        try:
            ctx.load_verify_locations(cafile=str(ca_file))
        except (OSError, ssl.SSLError) as exc:
            raise TLSError(f"cannot load ca_file {ca_file}: {exc}") from exc
    return ctx


T = TypeVar("T")


def trying_whole_store(connect: Callable[[bool], T]) -> T:
    """``connect(whole_store)``: first with the system's CA directory, then,
    for a certificate whose issuer that directory lacks, once more against
    the whole CA store (see :func:`make_ssl_context`)."""
    try:
        return connect(False)
    except UnknownIssuerError:
        return connect(True)


def make_unverified_context() -> ssl.SSLContext:
    """A context that takes any certificate: only to *show* one that does not
    verify (``serverinfo``), on a connection that never logs in."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def _hashed_ca_directory() -> str | None:
    """The system's CA directory (or $SSL_CERT_DIR) if it holds hashed names."""
    capath = ssl.get_default_verify_paths().capath
    if not capath:
        return None
    with contextlib.suppress(OSError), os.scandir(capath) as entries:
        for entry in entries:
            stem, dot, number = entry.name.partition(".")
            if dot and len(stem) == 8 and number.isdigit() and _is_hex(stem):
                return capath
    return None


def _ascii_host(host: str) -> bytes:
    """*host* as the resolver and TLS want it: IDNA (RFC 3490) for a name
    with non-ASCII letters, as socket and ssl would do; ASCII as it is,
    without loading the IDNA codec and its stringprep tables on every run."""
    try:
        return host.encode("ascii")
    except UnicodeEncodeError:
        return host.encode("idna")


def _is_hex(text: str) -> bool:
    return all(c in "0123456789abcdef" for c in text)


def format_fingerprint(der: bytes) -> str:
    """``sha256:AB:CD:...`` for a DER certificate, as ``tls_fingerprint`` takes it."""
    digest = hashlib.sha256(der).hexdigest().upper()
    return "sha256:" + ":".join(digest[i : i + 2] for i in range(0, len(digest), 2))


class Transport:
    """A connected socket (plain or TLS) with the bounds on waiting at the top.

    *stop* replaces the process's stop check (:func:`set_stop_check`) for
    this connection. *port* (0: none, a unix socket) tells TLS sessions of
    one host apart (see TLSReuse).
    """

    def __init__(
        self,
        sock: socket.socket,
        host: str,
        timeout: float,
        *,
        stop: StopCheck | None = None,
        port: int = 0,
    ) -> None:
        self._sock = sock
        self.host = host
        self.port = port
        self.timeout = timeout
        self._eof = False
        self._stop = stop
        # Seconds spent waiting on the server, in all (the clock of the bounds).
        self._waited = 0.0
        # (waited, seconds, what): the waiting budget's end, its size, what it bounds.
        self._budget: tuple[float, float, str] | None = None
        self._asked = 0.0  # when the stop check was last asked (monotonic)
        # The rate window: its start (on the waited clock) and the bytes in it;
        # no window until the answer to the last command sent has begun.
        self._window: float | None = None
        self._window_bytes = 0
        self._message = False  # a RETR or TOP reply is on its way
        # Where this connection's verified TLS session is kept for the next
        # one (see TLSReuse), once it has one.
        self._resume: tuple[TLSReuse, tuple[object, ...]] | None = None
        sock.settimeout(0.0)

    @classmethod
    def connect(
        cls,
        host: str,
        port: int,
        *,
        timeout: float,
        tls: ssl.SSLContext | None = None,
        pinned: str | None = None,
        login_within: float | None = None,
    ) -> Transport:
        """Connect over TCP, then (with *tls*) do an implicit-TLS handshake.

        *login_within*: the seconds of waiting the login may take once the TCP
        connection stands, handshake included (see :meth:`limit_waiting`).
        """
        try:
            infos = socket.getaddrinfo(_ascii_host(host), port, type=socket.SOCK_STREAM)
        except socket.gaierror as exc:
            if exc.errno in (socket.EAI_AGAIN,):
                raise ConnectError(f"cannot resolve {host} now: {exc.strerror}") from exc
            raise NoHostError(f"host name {host} does not resolve") from exc
        last: OSError | None = None
        for family, kind, proto, _, addr in infos:
            transport = cls(socket.socket(family, kind, proto), host, timeout, port=port)
            try:
                transport._connect(addr)
            except OSError as exc:
                transport.close()
                last = exc
                continue
            except BaseException:
                transport.close()
                raise
            if login_within is not None:
                transport.limit_waiting(login_within, "the login")
            if tls is not None:
                transport.start_tls(tls, pinned)
            return transport
        reason = _reason(last) if last else "no address"
        raise ConnectError(f"cannot connect to {host} port {port}: {reason}")

    def _connect(self, addr: Any) -> None:
        sock = self._sock
        code = sock.connect_ex(addr)
        if code in (errno.EINPROGRESS, errno.EAGAIN, errno.EWOULDBLOCK):
            if not self._ready(select.POLLOUT, time.monotonic() + self.timeout):
                raise TimeoutError(errno.ETIMEDOUT, "timed out")
            code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if code:
            raise OSError(code, os.strerror(code))
        # Pipelined commands go out in whole batches already; Nagle's
        # algorithm would only hold small ones back for an ACK.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def limit_waiting(self, seconds: float | None, what: str = "") -> None:
        """From now, wait on the server at most *seconds* in all (None: no
        limit); past that, TooSlowError says that *what* took too long."""
        self._budget = None if seconds is None else (self._waited + seconds, seconds, what)

    def start_tls(self, context: ssl.SSLContext, pinned: str | None = None) -> None:
        """Wrap the socket in TLS and verify the peer (by CA or by pin); within
        :func:`reusing_tls`, resume the last session with this server."""
        reuse = _reuse
        key = (id(context), self.host, self.port, pinned)
        session = reuse.session(key) if reuse is not None else None
        try:
            self._sock = context.wrap_socket(
                self._sock,
                server_hostname=_ascii_host(self.host),
                do_handshake_on_connect=False,
                session=session,
            )
            self._sock.settimeout(0.0)
            self._handshake()
        except ssl.SSLCertVerificationError as exc:
            self.close()
            cls = UnknownIssuerError if exc.verify_code in _UNKNOWN_ISSUER else UnverifiedError
            raise cls(
                f"TLS certificate of {self.host} did not verify: {exc.verify_message}"
            ) from exc
        except (ssl.SSLError, TimeoutError, OSError) as exc:
            self.close()
            if not isinstance(exc, ssl.SSLError) and exc.errno in _LOCAL_ERRNOS:
                # This machine's fault (a disk, memory), not the server's TLS.
                raise LocalIOError(
                    f"TLS handshake with {self.host} failed: {_reason(exc)}"
                ) from exc
            what = "timed out" if isinstance(exc, TimeoutError) else _reason(exc)
            not_tls = isinstance(exc, ssl.SSLError) and exc.reason in _NOT_TLS
            raise (NotTLSError if not_tls else TLSError)(
                f"TLS handshake with {self.host} failed: {what}"
            ) from exc
        except BaseException:
            self.close()
            raise
        if pinned:
            der = self.peer_certificate()
            if der is None or not hmac.compare_digest(
                hashlib.sha256(der).hexdigest(), pinned.lower()
            ):
                got = format_fingerprint(der) if der else "none"
                self.close()
                raise TLSError(
                    f"TLS certificate of {self.host} does not match tls_fingerprint (got {got})"
                )
        if reuse is not None:
            self._resume = (reuse, key)

    def _handshake(self) -> None:
        sock = cast(ssl.SSLSocket, self._sock)  # (or a test's stand-in)
        while True:
            try:
                sock.do_handshake()
                return
            except ssl.SSLWantReadError:
                events = select.POLLIN
            except ssl.SSLWantWriteError:
                events = select.POLLOUT
            if not self._ready(events, time.monotonic() + self.timeout):
                raise TimeoutError(errno.ETIMEDOUT, "timed out")

    @property
    def is_tls(self) -> bool:
        """Whether the connection is encrypted now."""
        return isinstance(self._sock, ssl.SSLSocket)

    @property
    def tls_resumed(self) -> bool:
        """Whether the TLS handshake resumed an earlier session (:class:`TLSReuse`)."""
        return isinstance(self._sock, ssl.SSLSocket) and bool(self._sock.session_reused)

    def peer_certificate(self) -> bytes | None:
        """The server's certificate in DER form, when on TLS."""
        if isinstance(self._sock, ssl.SSLSocket):
            return self._sock.getpeercert(binary_form=True)
        return None

    def tls_info(self) -> TLSInfo | None:
        """Version, cipher and certificate details of the TLS session."""
        sock = self._sock
        if not isinstance(sock, ssl.SSLSocket):
            return None
        der = sock.getpeercert(binary_form=True) or b""
        details = _decode_cert(der)
        cipher = sock.cipher()
        return TLSInfo(
            version=sock.version() or "?",
            cipher=cipher[0] if cipher else "?",
            fingerprint=format_fingerprint(der),
            subject=details.get("subject", "?"),
            issuer=details.get("issuer", "?"),
            not_after=details.get("notAfter", "?"),
        )

    def wait_readable(self, seconds: float) -> bool:
        """Whether the server has sent something (or closed) within *seconds*
        (before TLS: what TLS has buffered is not looked at)."""
        return self._ready(select.POLLIN, time.monotonic() + seconds)

    def _ready(self, events: int, deadline: float) -> bool:
        """Wait until the socket is ready for *events* (True) or *deadline*
        (monotonic) has passed (False), looking at the stop check every TICK;
        TooSlowError past the waiting budget."""
        check = self._check()
        poller = select.poll()
        poller.register(self._sock, events)
        while True:
            self._asked = time.monotonic()
            _ask(check, self._message or _in_flight_here())
            now = time.monotonic()
            left = deadline - now
            if left <= 0:
                return False
            if self._budget is not None:
                end, seconds, what = self._budget
                if end <= self._waited:
                    raise TooSlowError(
                        f"{what or 'waiting'} took too long: {self.host} kept fetchpop "
                        f"waiting {seconds:g} s in all"
                    )
                left = min(left, end - self._waited)
            if check is not None:
                left = min(left, TICK)
            # poll, not select: select fails for descriptors beyond 1023
            # (--jobs in a process with many files open).
            ready = poller.poll(max(left, 0.0) * 1000)
            self._waited += time.monotonic() - now
            if ready:
                return True

    def _check(self) -> StopCheck | None:
        return self._stop if self._stop is not None else _stop_check

    def send(self, data: bytes) -> None:
        """Write all of *data*: a new command (or a batch of them).

        A stop check that says stop is obeyed before anything goes out: no
        answer to these commands is in flight yet.
        """
        self._streaming(False)
        _ask(self._check(), _in_flight_here())
        self._streaming(data.startswith((b"RETR ", b"TOP ")))
        self._window = None  # the answer's thinking time is not a trickle
        view, offset = memoryview(data), 0
        deadline = time.monotonic() + self.timeout
        while offset < len(view):
            try:
                # On a would-block, TLS needs the same bytes again (SSL_write).
                offset += self._sock.send(view[offset : offset + SEND_SIZE])
                deadline = time.monotonic() + self.timeout
                continue
            except (BlockingIOError, ssl.SSLWantWriteError):
                events = select.POLLOUT
            except ssl.SSLWantReadError:
                events = select.POLLIN
            except OSError as exc:
                raise ConnectionLostError(
                    f"connection to {self.host} lost: {_reason(exc)}"
                ) from exc
            if not self._ready(events, deadline):
                raise ServerTimeoutError(
                    f"server {self.host} stopped reading for {self.timeout:g} s"
                )

    def recv(self, wait: float | None = None) -> bytes:
        """Read what is there (``b""`` at end of file), waiting at most the timeout
        (or *wait* seconds) for a first byte.

        After the first read, whatever else has already arrived is taken too
        (up to READ_SIZE): a TLS socket hands out one record (about 16 KB) a
        call, and each call costs a pass through the protocol parser.
        """
        if self._eof:
            return b""
        waited = self.timeout if wait is None else wait
        deadline = time.monotonic() + waited
        while True:
            try:
                data = self._sock.recv(READ_SIZE)
                parts = [data]
                if data and len(data) < READ_SIZE:
                    self._drain(parts, len(data))
                break
            except (BlockingIOError, ssl.SSLWantReadError):
                events = select.POLLIN
            except ssl.SSLWantWriteError:
                events = select.POLLOUT
            except ssl.SSLError as exc:
                raise ConnectionLostError(f"TLS error from {self.host}: {_reason(exc)}") from exc
            except OSError as exc:
                raise ConnectionLostError(
                    f"connection to {self.host} lost: {_reason(exc)}"
                ) from exc
            if not self._ready(events, deadline):
                raise ServerTimeoutError(f"no reply from {self.host} for {waited:g} s")
        if not data:
            self._eof = True
            return data
        if len(parts) > 1:
            data = b"".join(parts)
        self._arrived(len(data))
        if time.monotonic() - self._asked >= TICK:  # a fast stream is asked too
            self._asked = time.monotonic()
            _ask(self._check(), self._message or _in_flight_here())
        return data

    def _drain(self, parts: list[bytes], size: int) -> None:
        """Append to *parts* what has arrived already, without waiting for more."""
        sock = self._sock
        try:
            while size < READ_SIZE:
                more = sock.recv(READ_SIZE - size)
                if not more:
                    self._eof = True  # give what we have; b"" on the next call
                    break
                parts.append(more)
                size += len(more)
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError):
            pass  # nothing more for now (the next read waits, and finishes any TLS business)

    def _arrived(self, size: int) -> None:
        """Count *size* bytes in the rate window; TooSlowError for a trickle."""
        now = self._waited
        if self._window is None:
            self._window, self._window_bytes = now, size
            return
        self._window_bytes += size
        span = now - self._window
        if span < self.timeout:
            return
        if self._window_bytes < MIN_RATE * self.timeout:
            raise TooSlowError(
                f"{self.host} sends too slowly: {self._window_bytes} bytes in {span:.0f} s "
                f"(fetchpop needs {MIN_RATE} bytes a second)"
            )
        self._window, self._window_bytes = now, 0

    def close(self) -> None:
        """Close the connection (without a TLS close_notify wait)."""
        self._streaming(False)
        if self._resume is not None:
            self._keep_session(*self._resume)
            self._resume = None
        with contextlib.suppress(OSError):
            self._sock.close()

    def _keep_session(self, reuse: TLSReuse, key: tuple[object, ...]) -> None:
        """Keep this connection's TLS session for the next one (see TLSReuse).

        Taken at the end: a TLS 1.3 server sends its tickets after the
        handshake, so the session is resumable only once they are read. A
        resumed connection leaves the session it resumed in place (taking one
        copies it, certificates and all: a fifth of a millisecond).
        """
        sock = self._sock
        if not isinstance(sock, ssl.SSLSocket):
            return
        with contextlib.suppress(ValueError, OSError):
            if sock.session_reused and reuse.session(key) is not None:
                return
            session = sock.session
            if session is not None and (session.has_ticket or sock.version() != "TLSv1.3"):
                reuse.keep(key, session)

    def _streaming(self, on: bool) -> None:
        self._message = on
        with _streaming_lock:
            if on:
                _streaming[id(self)] = threading.get_ident()
            else:
                _streaming.pop(id(self), None)


def first_words(host: str, port: int, *, quiet: float = 0.5, timeout: float = 3.0) -> bytes:
    """What a service on *host*:*port* says first, on a connection of its own.

    Most services speak first (POP3, SMTP, SSH, IMAP); those that wait for
    the client (TLS, HTTP) are sent a TLS ClientHello after *quiet* seconds
    of silence, which a TLS server answers in TLS and an HTTP server with an
    error page. At most a few hundred bytes, within about *quiet* + *timeout*
    seconds; ``b""`` when nothing came.
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ctx.wrap_bio(incoming, outgoing, server_hostname=_ascii_host(host).decode("ascii"))
    with contextlib.suppress(ssl.SSLWantReadError):
        tls.do_handshake()
    hello = outgoing.read()
    check = _stop_check
    try:
        with socket.create_connection((host, port), timeout) as sock:
            if not _readable(sock, quiet, check):
                sock.sendall(hello + b"\r\n\r\n")
            deadline = time.monotonic() + timeout
            data = b""
            while len(data) < 16 and (left := deadline - time.monotonic()) > 0:
                if not _readable(sock, left, check):
                    break
                more = sock.recv(512)
                if not more:
                    break
                data += more
            return data
    except OSError:
        return b""


def _readable(sock: socket.socket, seconds: float, check: StopCheck | None) -> bool:
    """Whether *sock* is readable within *seconds*, asking *check* every TICK."""
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    deadline = time.monotonic() + seconds
    while True:
        _ask(check, False)
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        if poller.poll((left if check is None else min(left, TICK)) * 1000):
            return True


# OpenSSL's reason codes a user meets most, said in words.
_TLS_VERSIONS = "the server offers no TLS version fetchpop accepts (1.2 or later)"
_TLS_REASONS = {
    "WRONG_VERSION_NUMBER": "the server did not answer in TLS",
    "UNSUPPORTED_PROTOCOL": _TLS_VERSIONS,
    "TLSV1_ALERT_PROTOCOL_VERSION": _TLS_VERSIONS,
    "NO_PROTOCOLS_AVAILABLE": _TLS_VERSIONS,
}


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLError):
        if exc.reason:
            return _TLS_REASONS.get(exc.reason, exc.reason.lower().replace("_", " "))
        return str(exc)
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc)


def _decode_cert(der: bytes) -> dict[str, str]:
    """Subject, issuer and expiry of a DER certificate, via the ssl module's decoder."""
    if not der:
        return {}
    import tempfile

    # ssl can only decode a certificate from a PEM file; this runs only for
    # `fetchpop serverinfo`, never on the sync path.
    with tempfile.NamedTemporaryFile("w", suffix=".pem") as pem:
        pem.write(ssl.DER_cert_to_PEM_cert(der))
        pem.flush()
        try:
            info = ssl._ssl._test_decode_cert(pem.name)  # type: ignore[attr-defined]
        except (ssl.SSLError, AttributeError):
            return {}

    def name(parts: tuple[tuple[tuple[str, str], ...], ...]) -> str:
        return ", ".join(f"{k}={v}" for rdn in parts for k, v in rdn)

    expiry = info.get("notAfter", "")
    try:
        stamp = ssl.cert_time_to_seconds(expiry)
        expiry = datetime.datetime.fromtimestamp(stamp, datetime.UTC).isoformat()
    except ValueError:
        pass
    return {
        "subject": name(info.get("subject", ())),
        "issuer": name(info.get("issuer", ())),
        "notAfter": expiry,
    }
