"""POP3 authentication as pure functions: str in, bytes out, no I/O.

Strategy: USER/PASS and APOP (RFC 1939 section 7) are argument encoders. Each
SASL mechanism (RFC 4422, profiled for POP3 by RFC 5034) is a small state
machine that turns a decoded server challenge into a raw response; the client
base64-encodes what goes out (``encode_b64``), decodes what comes in
(``decode_b64``) and owns the socket. This module refuses what a server must
not send -- a SCRAM nonce that is not ours, a signature that does not verify --
and never puts a secret into a repr or an exception message. Each mechanism
keeps, in ``secrets`` (a :class:`~fetchpop.pop3.masking.Secrets`), every form of
what it must never let be shown: its password or token, the base64 of each
response it gives, and what it derives and sends (SCRAM's proof); the
client hides them all, and so does the mechanism in the server text its
errors quote.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import hmac
from collections.abc import Iterable
from typing import Literal, Protocol

from fetchpop.errors import AuthError, LocalProtocolError, ProtocolError, sanitize
from fetchpop.pop3.masking import Secrets

MECHANISM_PREFERENCE: tuple[str, ...] = ("SCRAM-SHA-256", "SCRAM-SHA-1", "PLAIN", "LOGIN")

# Mechanisms that never show the password to the server or the wire.
_NO_CLEARTEXT = frozenset({"SCRAM-SHA-256", "SCRAM-SHA-1"})

# A hostile server could ask for any PBKDF2 cost; this is ~1000x RFC 7677's 4096.
MAX_SCRAM_ITERATIONS = 4_096_000


def encode_b64(raw: bytes) -> bytes:
    """Base64-encode a raw SASL response (RFC 4648 section 4, padded).

    An empty initial response must go on the AUTH line as ``=`` (RFC 5034
    section 4); that is the caller's job, since ``encode_b64(b"")`` is ``b""``.
    """
    return base64.b64encode(raw)


def decode_b64(data: bytes) -> bytes:
    """Decode a server challenge strictly; anything but canonical base64 is a ProtocolError."""
    try:
        raw = base64.b64decode(data, validate=True)
    except binascii.Error:
        raw = None
    # Re-encoding catches what b64decode lets through (non-zero padding bits).
    if raw is None or base64.b64encode(raw) != data:
        raise ProtocolError("server sent invalid base64: " + sanitize(data, 80))
    return raw


def _utf8(value: str, what: str, forbidden: str = "\r\n\0") -> bytes:
    # Line breaks would smuggle extra POP3 commands; NUL splits PLAIN's fields.
    if any(ch in forbidden for ch in value):
        raise AuthError(f"the {what} contains a character that cannot be sent")
    try:
        return value.encode("utf-8")
    except UnicodeEncodeError:
        # `from None`: the UnicodeEncodeError would carry the whole string.
        raise AuthError(f"the {what} is not valid Unicode") from None


def apop_digest(timestamp: bytes, secret: str) -> str:
    """Return the APOP digest: lowercase hex MD5 of the greeting's timestamp + secret.

    *timestamp* includes its angle brackets, e.g. ``b"<1896.697170952@dbc.mtview.ca.us>"``.
    """
    if (
        len(timestamp) < 3
        or timestamp[:1] != b"<"
        or timestamp[-1:] != b">"
        or any(c < 0x20 or c == 0x7F for c in timestamp)
    ):
        raise ProtocolError("server sent a malformed APOP timestamp: " + sanitize(timestamp, 80))
    # RFC 1939 section 7 fixes MD5; APOP is only ever used when configured.
    digest = hashlib.md5(timestamp + _utf8(secret, "password"))  # noqa: S324
    return digest.hexdigest()


def saslprep(text: str, what: str = "password") -> str:
    """Prepare *text* with SASLprep (RFC 4013) as a query string.

    Unassigned code points are allowed, as RFC 5802 section 5.1 asks of SCRAM
    clients. *what* names the value in the AuthError raised for a prohibited
    character; the value itself is never shown.
    """
    # Only SCRAM needs these (a few ms of start-up for every other login).
    import stringprep
    import unicodedata

    prohibited = (
        stringprep.in_table_c12,
        stringprep.in_table_c21_c22,
        stringprep.in_table_c3,
        stringprep.in_table_c4,
        stringprep.in_table_c5,
        stringprep.in_table_c6,
        stringprep.in_table_c7,
        stringprep.in_table_c8,
        stringprep.in_table_c9,
    )
    # RFC 4013 section 2.1: non-ASCII spaces become SPACE, table B.1 vanishes.
    mapped = "".join(
        " " if stringprep.in_table_c12(ch) else ch for ch in text if not stringprep.in_table_b1(ch)
    )
    # Section 2.2: NFKC as of Unicode 3.2, the version of the stringprep tables.
    prepared = unicodedata.ucd_3_2_0.normalize("NFKC", mapped)
    if any(check(ch) for ch in prepared for check in prohibited):
        raise AuthError(f"the {what} contains a character SASLprep prohibits (RFC 4013)")
    # Section 2.4 / RFC 3454 section 6: right-to-left text must be wholly so.
    if any(stringprep.in_table_d1(ch) for ch in prepared) and (
        any(stringprep.in_table_d2(ch) for ch in prepared)
        or not stringprep.in_table_d1(prepared[0])
        or not stringprep.in_table_d1(prepared[-1])
    ):
        raise AuthError(f"the {what} mixes text directions in a way SASLprep prohibits")
    return prepared


class SASLMechanism(Protocol):
    """The client side of one SASL exchange (RFC 4422 section 3, RFC 5034 section 4).

    A client sends ``AUTH <name> <encode_b64(initial_response())>`` (or just
    ``AUTH <name>`` when there is none, or when the line would pass 255 octets:
    the server then sends an empty challenge and ``respond(b"")`` yields the
    initial response). Each ``+ <data>`` is answered with
    ``encode_b64(respond(decode_b64(data)))``. On ``+OK``, data after it goes to
    ``verify_final``, and then ``finished()`` must be true: SCRAM's server
    signature (RFC 5802 section 3) arrives either as a last challenge -- Dovecot
    sends ``+ <v=...>`` and wants an empty line -- or with the success reply.
    On ``-ERR``, ``error_detail()`` holds any error the server sent as a
    challenge (XOAUTH2, OAUTHBEARER), sanitised for printing. ``secrets``
    grows with each response: read it after each call, before sending.
    """

    @property
    def name(self) -> str:
        """The mechanism's registered name, as sent after AUTH."""
        ...

    @property
    def secrets(self) -> Secrets:
        """Every form of what this mechanism sent or will send that no one may see."""
        ...

    def initial_response(self) -> bytes | None:
        """The raw initial response, or None when the mechanism has none."""
        ...

    def respond(self, challenge: bytes) -> bytes:
        """Answer a raw (decoded) server challenge with a raw response."""
        ...

    def verify_final(self, server_final: bytes) -> None:
        """Check additional data the server sent with ``+OK``."""
        ...

    def finished(self) -> bool:
        """True when the exchange is complete and, where possible, the server verified."""
        ...

    def error_detail(self) -> str | None:
        """The server's error report sent as a challenge, sanitised; None if none came."""
        ...


class _Mechanism:
    """Shared bookkeeping: initial response sent lazily, repr without secrets."""

    name = ""

    def __init__(self, user: str, secret: str) -> None:
        self.secrets = Secrets()
        self.secrets.add(secret)
        self._user = user
        self._started = False
        self._done = False
        self._error: str | None = None

    def __repr__(self) -> str:
        return f"<{self.name} mechanism for user {sanitize(self._user, 80)!r}>"

    def _first(self) -> bytes | None:
        return None

    def _step(self, challenge: bytes) -> bytes:
        raise AuthError(f"server sent an unexpected {self.name} challenge")

    def initial_response(self) -> bytes | None:
        if self._started:
            raise LocalProtocolError("initial_response() called after the exchange began")
        self._started = True
        first = self._first()
        return None if first is None else self._sent(first)

    def respond(self, challenge: bytes) -> bytes:
        if not self._started:
            self._started = True
            first = self._first()
            if first is not None:
                # RFC 4422 section 5: a client-first mechanism awaits an empty challenge.
                if challenge:
                    raise AuthError(f"server sent a {self.name} challenge before our first message")
                return self._sent(first)
        return self._sent(self._step(challenge))

    def _sent(self, response: bytes) -> bytes:
        """*response*, its base64 (as the client sends it) hidden from now on."""
        self.secrets.add_sent(encode_b64(response))
        return response

    def _show(self, data: str | bytes, limit: int = 300) -> str:
        """Server text for an error: sanitised, with this mechanism's secrets hidden."""
        return self.secrets.show(data, limit)

    def verify_final(self, server_final: bytes) -> None:
        if server_final:
            raise ProtocolError(f"server sent unexpected data with {self.name} success")

    def finished(self) -> bool:
        return self._done

    def error_detail(self) -> str | None:
        return self._error


class _Plain(_Mechanism):
    name = "PLAIN"

    def __init__(self, user: str, secret: str) -> None:
        super().__init__(user, secret)
        # RFC 4616 section 2: [authzid] NUL authcid NUL passwd; authzid left empty.
        self._message = b"\0" + _utf8(user, "user name") + b"\0" + _utf8(secret, "password")

    def _first(self) -> bytes:
        self._done = True
        return self._message


class _Login(_Mechanism):
    name = "LOGIN"

    def __init__(self, user: str, secret: str) -> None:
        super().__init__(user, secret)
        # draft-murchison-sasl-login: the prompts' wording varies, only their order counts.
        self._answers = [_utf8(user, "user name"), _utf8(secret, "password")]

    def _step(self, challenge: bytes) -> bytes:
        if not self._answers:
            return super()._step(challenge)
        answer = self._answers.pop(0)
        self._done = not self._answers
        return answer


def _saslname(name: str) -> str:
    # RFC 5802 section 5.1: "," and "=" are escaped inside a SCRAM/GS2 name.
    return name.replace("=", "=3D").replace(",", "=2C")


_ALPHA = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")


_MALFORMED = "server sent a malformed SCRAM message: "


def _attributes(message: bytes) -> list[tuple[str, str]] | None:
    """Split a SCRAM message into (letter, value) pairs (RFC 5802 section 7);
    None when it is malformed."""
    try:
        parts = message.decode("utf-8").split(",")
    except UnicodeDecodeError:
        parts = []
    if not parts or any(len(p) < 2 or p[1] != "=" or p[0] not in _ALPHA for p in parts):
        return None
    return [(p[0], p[2:]) for p in parts]


def _printable_nonce(nonce: str) -> bool:
    # RFC 5802 section 7: printable = %x21-2B / %x2D-7E (no comma).
    return bool(nonce) and all(0x21 <= ord(c) <= 0x7E and c != "," for c in nonce)


class _Scram(_Mechanism):
    def __init__(self, hash_name: str, user: str, secret: str, nonce: str | None) -> None:
        super().__init__(user, secret)
        self.name = "SCRAM-SHA-1" if hash_name == "sha1" else "SCRAM-SHA-256"
        self._hash = hash_name
        self._password = _utf8(saslprep(secret, "password"), "password", "")
        # RFC 5802 section 5.1: the user name SHOULD be SASLprepped, then escaped.
        name = _saslname(saslprep(user, "user name"))
        if nonce is None:
            import secrets

            nonce = secrets.token_urlsafe(18)
        self._nonce = nonce
        if not _printable_nonce(self._nonce):
            raise LocalProtocolError("a SCRAM nonce must be printable ASCII without commas")
        self._client_first_bare = _utf8(f"n={name},r={self._nonce}", "user name", "")
        self._server_signature: bytes | None = None

    def _hmac(self, key: bytes, msg: bytes) -> bytes:
        return hmac.new(key, msg, self._hash).digest()

    def _first(self) -> bytes:
        # RFC 5802 section 7: gs2-header "n,," -- no channel binding, no authzid.
        return b"n,," + self._client_first_bare

    def _step(self, challenge: bytes) -> bytes:
        if self._server_signature is None:
            return self._client_final(challenge)
        if self._server_signature is not None and not self._done:
            self._verify(challenge)
            return b""  # RFC 4422 section 5: final data as a challenge gets an empty response.
        return super()._step(challenge)

    def _attributes(self, message: bytes) -> list[tuple[str, str]]:
        pairs = _attributes(message)
        if pairs is None:
            raise ProtocolError(_MALFORMED + self._show(message, 120))
        if pairs[0][0] == "e":
            raise AuthError("server refused SCRAM: " + self._show(pairs[0][1], 100))
        return pairs

    def _client_final(self, server_first: bytes) -> bytes:
        pairs = self._attributes(server_first)
        if pairs[0][0] == "m":
            raise AuthError("server requires a SCRAM extension fetchpop does not support")
        if [k for k, _ in pairs[:3]] != ["r", "s", "i"]:
            raise ProtocolError(_MALFORMED + self._show(server_first))
        nonce, salt_b64, count = (v for _, v in pairs[:3])
        # RFC 5802 section 5.1: the server's nonce must extend ours, or this is a replay.
        if not nonce.startswith(self._nonce) or len(nonce) == len(self._nonce):
            raise AuthError("server's SCRAM nonce does not extend ours")
        if not _printable_nonce(nonce):
            raise ProtocolError("server sent a SCRAM nonce with invalid characters")
        salt = decode_b64(salt_b64.encode("ascii", "replace"))
        if not (count.isascii() and count.isdigit()):
            raise ProtocolError("server sent a malformed SCRAM iteration count")
        iterations = int(count)
        if not 1 <= iterations <= MAX_SCRAM_ITERATIONS:
            raise AuthError(f"server asked for an unacceptable SCRAM iteration count {iterations}")

        # RFC 5802 section 3, with SaltedPassword := Hi(Normalize(password), salt, i).
        salted = hashlib.pbkdf2_hmac(self._hash, self._password, salt, iterations)
        self._password = b""
        client_key = self._hmac(salted, b"Client Key")
        stored_key = hashlib.new(self._hash, client_key).digest()
        without_proof = b"c=" + encode_b64(b"n,,") + b",r=" + nonce.encode("ascii")
        auth_message = self._client_first_bare + b"," + server_first + b"," + without_proof
        signature = self._hmac(stored_key, auth_message)
        proof = bytes(a ^ b for a, b in zip(client_key, signature, strict=True))
        self._server_signature = self._hmac(self._hmac(salted, b"Server Key"), auth_message)
        # What the password gives and goes on the wire: a server may echo it.
        self.secrets.add(encode_b64(proof).decode("ascii"))
        return without_proof + b",p=" + encode_b64(proof)

    def _verify(self, server_final: bytes) -> None:
        if not server_final:
            raise AuthError("server did not send its SCRAM signature")
        key, value = self._attributes(server_final)[0]
        if key != "v":
            raise ProtocolError(_MALFORMED + self._show(server_final))
        expected = self._server_signature or b""
        if not hmac.compare_digest(decode_b64(value.encode("ascii", "replace")), expected):
            raise AuthError("server signature did not verify")
        self._done = True

    def verify_final(self, server_final: bytes) -> None:
        if self._server_signature is not None and not self._done:
            self._verify(server_final)
        else:
            super().verify_final(server_final)


def _oauth_error(challenge: bytes) -> str:
    """The server's JSON error report, compacted (not yet safe to print)."""
    import json  # (only a failed OAuth2 login needs it)

    text = challenge.decode("utf-8", "replace")
    with contextlib.suppress(ValueError, RecursionError):  # not JSON: show it as text
        text = json.dumps(json.loads(text), separators=(",", ":"), ensure_ascii=False)
    return text


def _bearer(token: str) -> bytes:
    # RFC 6750 section 2.1: a b64token has no spaces or controls; they would break framing.
    if not token or any(ord(c) <= 0x20 or ord(c) == 0x7F for c in token):
        raise AuthError("the OAuth2 token contains characters a bearer token cannot have")
    return b"auth=Bearer " + _utf8(token, "OAuth2 token")


class _OAuth(_Mechanism):
    """XOAUTH2 and OAUTHBEARER: one message; a challenge after it is an error report."""

    def __init__(
        self, name: str, user: str, token: str, message: bytes, error_reply: bytes
    ) -> None:
        super().__init__(user, token)
        self.name = name
        self._message = message
        self._error_reply = error_reply
        self._challenged = False

    def _first(self) -> bytes:
        self._done = True
        return self._message

    def _step(self, challenge: bytes) -> bytes:
        if self._challenged:
            return super()._step(challenge)
        # RFC 7628 section 3.2.3 (and Google's XOAUTH2): the challenge is a JSON
        # error; we answer so the server can finish with -ERR.
        self._challenged = True
        self._done = False
        self._error = self._show(_oauth_error(challenge)) or None
        return self._error_reply


def plain(user: str, secret: str) -> SASLMechanism:
    """PLAIN (RFC 4616) with an empty authorisation identity."""
    return _Plain(user, secret)


def login(user: str, secret: str) -> SASLMechanism:
    """LOGIN (draft-murchison-sasl-login): user name, then password, as prompted."""
    return _Login(user, secret)


def scram(
    hash_name: Literal["sha1", "sha256"], user: str, secret: str, nonce: str | None = None
) -> SASLMechanism:
    """SCRAM-SHA-1 (RFC 5802) or SCRAM-SHA-256 (RFC 7677), without channel binding.

    *nonce* is for tests; by default 144 random bits are used.
    """
    if hash_name not in ("sha1", "sha256"):
        raise LocalProtocolError(f"unknown SCRAM hash {hash_name!r}")
    return _Scram(hash_name, user, secret, nonce)


def xoauth2(user: str, token: str) -> SASLMechanism:
    """XOAUTH2 (Google, Microsoft): ``user=U ^A auth=Bearer T ^A ^A``."""
    message = b"user=" + _utf8(user, "user name", "\r\n\0\x01") + b"\x01" + _bearer(token)
    return _OAuth("XOAUTH2", user, token, message + b"\x01\x01", b"")


def oauthbearer(user: str, token: str, host: str, port: int) -> SASLMechanism:
    """OAUTHBEARER (RFC 7628 section 3.1) with the user as the GS2 authzid."""
    if not 0 < port < 65536:
        raise LocalProtocolError(f"port {port} is out of range")
    gs2 = b"n,a=" + _utf8(_saslname(user), "user name", "\r\n\0\x01") + b","
    where = b"host=" + _utf8(host, "host name", "\r\n\0\x01") + b"\x01port=%d\x01" % port
    message = gs2 + b"\x01" + where + _bearer(token) + b"\x01\x01"
    # RFC 7628 section 3.2.3: after an error challenge the client sends a lone ^A.
    return _OAuth("OAUTHBEARER", user, token, message, b"\x01")


def mechanism_for(
    method: str, user: str, secret: str, *, host: str = "", port: int = 0
) -> SASLMechanism:
    """The SASL mechanism for an ``auth`` value or a SASL name (case-insensitive).

    *secret* is the password, or the OAuth2 access token for XOAUTH2 and
    OAUTHBEARER (which also needs *host* and *port*, RFC 7628 section 3.1).
    """
    upper = method.upper()
    if upper == "SCRAM-SHA-256":
        return scram("sha256", user, secret)
    if upper == "SCRAM-SHA-1":
        return scram("sha1", user, secret)
    if upper == "PLAIN":
        return plain(user, secret)
    if upper == "LOGIN":
        return login(user, secret)
    if upper == "XOAUTH2":
        return xoauth2(user, secret)
    if upper == "OAUTHBEARER":
        return oauthbearer(user, secret, host, port)
    raise LocalProtocolError(f"no SASL mechanism named {sanitize(method, 40)!r}")


def choose_mechanism(offered: Iterable[str], *, tls: bool) -> str | None:
    """Pick the strongest offered SASL mechanism for ``auth = "auto"``.

    Without TLS only SCRAM qualifies, since PLAIN and LOGIN would show the
    password on the wire. None means: fall back to USER/PASS (the client
    decides whether that is allowed). APOP is never chosen here.
    """
    available = {m.strip().upper() for m in offered}
    for name in MECHANISM_PREFERENCE:
        if name in available and (tls or name in _NO_CLEARTEXT):
            return name
    return None
