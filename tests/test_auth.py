"""Tests for fetchpop.pop3.auth: RFC test vectors, hostile servers, secrets kept out of sight."""

from __future__ import annotations

import inspect
from collections.abc import Callable

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from fetchpop.errors import AuthError, ExitCode, FetchpopError, LocalProtocolError, ProtocolError
from fetchpop.pop3 import auth
from fetchpop.pop3.auth import (
    MECHANISM_PREFERENCE,
    SASLMechanism,
    apop_digest,
    choose_mechanism,
    decode_b64,
    encode_b64,
    login,
    mechanism_for,
    oauthbearer,
    plain,
    saslprep,
    scram,
    xoauth2,
)

# RFC 5802 section 5.
SHA1_NONCE = "fyko+d2lbbFgONRv9qkxdawL"
SHA1_CLIENT_FIRST = b"n,,n=user,r=fyko+d2lbbFgONRv9qkxdawL"
SHA1_SERVER_FIRST = b"r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,s=QSXCR+Q6sek8bf92,i=4096"
SHA1_CLIENT_FINAL = (
    b"c=biws,r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,p=v0X8v3Bz2T0CJGbJQyF0X+HI4Ts="
)
SHA1_SERVER_FINAL = b"v=rmF9pqV8S7suAoZWja4dJRkFsKQ="

# RFC 7677 section 3.
SHA256_NONCE = "rOprNGfwEbeRWgbNEkqO"
SHA256_CLIENT_FIRST = b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO"
SHA256_SERVER_FIRST = (
    b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"
)
SHA256_CLIENT_FINAL = (
    b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
    b"p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
)
SHA256_SERVER_FINAL = b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="

VECTORS = [
    pytest.param(
        "sha1",
        SHA1_NONCE,
        SHA1_CLIENT_FIRST,
        SHA1_SERVER_FIRST,
        SHA1_CLIENT_FINAL,
        SHA1_SERVER_FINAL,
        id="rfc5802",
    ),
    pytest.param(
        "sha256",
        SHA256_NONCE,
        SHA256_CLIENT_FIRST,
        SHA256_SERVER_FIRST,
        SHA256_CLIENT_FINAL,
        SHA256_SERVER_FINAL,
        id="rfc7677",
    ),
]


def _scram_after_first(hash_name: str = "sha256") -> SASLMechanism:
    if hash_name == "sha1":
        mech = scram("sha1", "user", "pencil", nonce=SHA1_NONCE)
        mech.initial_response()
        mech.respond(SHA1_SERVER_FIRST)
    else:
        mech = scram("sha256", "user", "pencil", nonce=SHA256_NONCE)
        mech.initial_response()
        mech.respond(SHA256_SERVER_FIRST)
    return mech


# --- SCRAM ---------------------------------------------------------------


@pytest.mark.parametrize(("hash_name", "nonce", "c1", "s1", "c2", "s2"), VECTORS)
def test_scram_vector_final_as_challenge(
    hash_name: str, nonce: str, c1: bytes, s1: bytes, c2: bytes, s2: bytes
) -> None:
    # Dovecot: "+ <v=...>", an empty line from us, then +OK.
    mech = scram("sha1" if hash_name == "sha1" else "sha256", "user", "pencil", nonce=nonce)
    assert mech.name == ("SCRAM-SHA-1" if hash_name == "sha1" else "SCRAM-SHA-256")
    assert mech.initial_response() == c1
    assert mech.respond(s1) == c2
    assert not mech.finished()
    assert mech.respond(s2) == b""
    assert mech.finished()
    mech.verify_final(b"")  # +OK with nothing after it
    assert mech.finished()


@pytest.mark.parametrize(("hash_name", "nonce", "c1", "s1", "c2", "s2"), VECTORS)
def test_scram_vector_final_with_success(
    hash_name: str, nonce: str, c1: bytes, s1: bytes, c2: bytes, s2: bytes
) -> None:
    mech = scram("sha1" if hash_name == "sha1" else "sha256", "user", "pencil", nonce=nonce)
    assert mech.initial_response() == c1
    assert mech.respond(s1) == c2
    mech.verify_final(s2)
    assert mech.finished()


def test_scram_without_initial_response_waits_for_empty_challenge() -> None:
    # RFC 5034 section 4: AUTH without an initial response gets "+ " first.
    mech = scram("sha1", "user", "pencil", nonce=SHA1_NONCE)
    assert mech.respond(b"") == SHA1_CLIENT_FIRST
    assert mech.respond(SHA1_SERVER_FIRST) == SHA1_CLIENT_FINAL


def test_scram_nonempty_challenge_before_first_message() -> None:
    mech = scram("sha1", "user", "pencil", nonce=SHA1_NONCE)
    with pytest.raises(AuthError):
        mech.respond(SHA1_SERVER_FIRST)


@pytest.mark.parametrize("hash_name", ["sha1", "sha256"])
def test_scram_forged_server_signature(hash_name: str) -> None:
    mech = _scram_after_first(hash_name)
    forged = b"v=" + encode_b64(b"\0" * (20 if hash_name == "sha1" else 32))
    with pytest.raises(AuthError, match="server signature did not verify") as info:
        mech.respond(forged)
    assert info.value.exit_code == ExitCode.NOPERM
    assert not mech.finished()


def test_scram_wrong_length_signature() -> None:
    mech = _scram_after_first("sha256")
    with pytest.raises(AuthError, match="server signature did not verify"):
        mech.verify_final(SHA1_SERVER_FINAL)


def test_scram_success_without_signature_is_refused() -> None:
    mech = _scram_after_first()
    with pytest.raises(AuthError, match="signature"):
        mech.verify_final(b"")
    assert not mech.finished()


@pytest.mark.parametrize(
    "server_first",
    [
        b"r=somebodyElsesNonce123,s=QSXCR+Q6sek8bf92,i=4096",
        b"r=fyko+d2lbbFgONRv9qkxdawL,s=QSXCR+Q6sek8bf92,i=4096",  # not extended
        b"r=Xfyko+d2lbbFgONRv9qkxdawL3rfc,s=QSXCR+Q6sek8bf92,i=4096",
    ],
)
def test_scram_nonce_must_extend_ours(server_first: bytes) -> None:
    mech = scram("sha1", "user", "pencil", nonce=SHA1_NONCE)
    mech.initial_response()
    with pytest.raises(AuthError, match="nonce"):
        mech.respond(server_first)


@pytest.mark.parametrize("count", [b"0", b"99999999999"])
def test_scram_iteration_count_bounds(count: bytes) -> None:
    mech = scram("sha1", "user", "pencil", nonce=SHA1_NONCE)
    mech.initial_response()
    with pytest.raises(AuthError, match="iteration count"):
        mech.respond(SHA1_SERVER_FIRST.replace(b"i=4096", b"i=" + count))


def test_scram_small_iteration_count_is_tolerated() -> None:
    mech = scram("sha1", "user", "pencil", nonce=SHA1_NONCE)
    mech.initial_response()
    assert mech.respond(SHA1_SERVER_FIRST.replace(b"i=4096", b"i=1")).startswith(b"c=biws,")


@pytest.mark.parametrize(
    "server_first",
    [
        b"",
        b"garbage",
        b"s=QSXCR+Q6sek8bf92,r=fyko+d2lbbFgONRv9qkxdawL3rfc,i=4096",
        b"r=fyko+d2lbbFgONRv9qkxdawL3rfc,s=not*base64,i=4096",
        b"r=fyko+d2lbbFgONRv9qkxdawL3rfc,s=QSXCR+Q6sek8bf92,i=-1",
        b"r=fyko+d2lbbFgONRv9qkxdawL3rfc,s=QSXCR+Q6sek8bf92,i=4e3",
        b"r=fyko+d2lbbFgONRv9qkxdawL3r\x7f,s=QSXCR+Q6sek8bf92,i=4096",
        b"\xff\xfe",
    ],
)
def test_scram_malformed_server_first(server_first: bytes) -> None:
    mech = scram("sha1", "user", "pencil", nonce=SHA1_NONCE)
    mech.initial_response()
    with pytest.raises(ProtocolError):
        mech.respond(server_first)


def test_scram_mandatory_extension_refused() -> None:
    mech = scram("sha1", "user", "pencil", nonce=SHA1_NONCE)
    mech.initial_response()
    with pytest.raises(AuthError, match="extension"):
        mech.respond(b"m=foo," + SHA1_SERVER_FIRST)


def test_scram_server_error_is_reported_sanitised() -> None:
    mech = _scram_after_first()
    with pytest.raises(AuthError, match=r"invalid-proof\?\[2J") as info:
        mech.respond(b"e=invalid-proof\x1b[2J")
    assert "\x1b" not in str(info.value)


def test_scram_challenge_after_completion() -> None:
    mech = _scram_after_first("sha1")
    mech.respond(SHA1_SERVER_FINAL)
    with pytest.raises(AuthError):
        mech.respond(SHA1_SERVER_FINAL)
    with pytest.raises(ProtocolError):
        mech.verify_final(SHA1_SERVER_FINAL)


def test_scram_escapes_user_name() -> None:
    mech = scram("sha256", "a,b=c", "pencil", nonce="abc")
    assert mech.initial_response() == b"n,,n=a=2Cb=3Dc,r=abc"


def test_scram_default_nonce_is_random_and_printable() -> None:
    first = {scram("sha256", "user", "pencil").initial_response() for _ in range(5)}
    assert len(first) == 5
    for message in first:
        assert message is not None
        nonce = message.split(b",r=", 1)[1]
        assert len(nonce) >= 24
        assert all(0x21 <= c <= 0x7E and c != ord(",") for c in nonce)


@pytest.mark.parametrize("nonce", ["", "a,b", "caf\u00e9", "sp ace"])
def test_scram_rejects_bad_test_nonce(nonce: str) -> None:
    with pytest.raises(LocalProtocolError):
        scram("sha256", "user", "pencil", nonce=nonce)


def test_scram_password_is_saslprepped() -> None:
    # U+00AD SOFT HYPHEN maps to nothing (RFC 4013 section 3, example 1).
    soft = scram("sha1", "user", "pen\u00adcil", nonce=SHA1_NONCE)
    soft.initial_response()
    assert soft.respond(SHA1_SERVER_FIRST) == SHA1_CLIENT_FINAL


def test_initial_response_twice_is_a_bug() -> None:
    mech = plain("user", "pencil")
    mech.initial_response()
    with pytest.raises(LocalProtocolError):
        mech.initial_response()


# --- SASLprep (RFC 4013 section 3) ----------------------------------------


@pytest.mark.parametrize(
    ("text", "prepared"),
    [
        ("I\u00adX", "IX"),
        ("user", "user"),
        ("USER", "USER"),
        ("\u00aa", "a"),
        ("\u2168", "IX"),
        ("a\u00a0b", "a b"),  # non-ASCII space maps to SPACE
        ("\u0627\u0628", "\u0627\u0628"),  # all right-to-left is fine
    ],
)
def test_saslprep_examples(text: str, prepared: str) -> None:
    assert saslprep(text) == prepared


@pytest.mark.parametrize("text", ["\u0007", "a\u0627", "\u06271", "a\ue000"])
def test_saslprep_prohibited(text: str) -> None:
    with pytest.raises(AuthError) as info:
        saslprep(text)
    assert text not in str(info.value)


# --- PLAIN, LOGIN ------------------------------------------------------------


def test_plain_format() -> None:
    mech = plain("tim", "tanstaaftanstaaf")
    assert mech.name == "PLAIN"
    assert not mech.finished()
    assert mech.initial_response() == b"\0tim\0tanstaaftanstaaf"
    assert mech.finished()
    assert mech.error_detail() is None
    with pytest.raises(AuthError):
        mech.respond(b"what?")


def test_plain_without_initial_response() -> None:
    mech = plain("tim", "pw")
    assert mech.respond(b"") == b"\0tim\0pw"
    assert mech.finished()


def test_plain_utf8_and_nul() -> None:
    assert plain("j\u00f6rg", "p\u00e4ss").initial_response() == (b"\0j\xc3\xb6rg\0p\xc3\xa4ss")
    with pytest.raises(AuthError):
        plain("user", "a\0b")


def test_plain_unexpected_success_data() -> None:
    mech = plain("tim", "pw")
    mech.initial_response()
    mech.verify_final(b"")
    with pytest.raises(ProtocolError):
        mech.verify_final(b"surprise")


def test_login_sequence() -> None:
    mech = login("tim", "tanstaaf")
    assert mech.name == "LOGIN"
    assert mech.initial_response() is None
    assert mech.respond(b"Username:") == b"tim"
    assert not mech.finished()
    assert mech.respond(b"Password:") == b"tanstaaf"
    assert mech.finished()
    with pytest.raises(AuthError):
        mech.respond(b"Again:")


def test_login_without_initial_response_call() -> None:
    mech = login("tim", "tanstaaf")
    assert mech.respond(b"User Name\0") == b"tim"
    assert mech.respond(b"Password\0") == b"tanstaaf"


# --- XOAUTH2, OAUTHBEARER ----------------------------------------------------

GOOGLE_ERROR = b'{"status":"401","schemes":"bearer","scope":"https://mail.google.com/"}'


def test_xoauth2_format() -> None:
    mech = xoauth2("someuser@example.com", "ya29.vF9dft4qmTc2Nvb3RlckBhdHRhdmlzdGEuY29tCg")
    assert mech.name == "XOAUTH2"
    assert mech.initial_response() == (
        b"user=someuser@example.com\x01"
        b"auth=Bearer ya29.vF9dft4qmTc2Nvb3RlckBhdHRhdmlzdGEuY29tCg\x01\x01"
    )
    assert mech.finished()
    assert mech.error_detail() is None


def test_xoauth2_error_challenge_reply_and_detail() -> None:
    mech = xoauth2("someuser@example.com", "token")
    mech.initial_response()
    assert mech.respond(GOOGLE_ERROR) == b""
    assert mech.error_detail() == GOOGLE_ERROR.decode()
    assert not mech.finished()
    with pytest.raises(AuthError):
        mech.respond(GOOGLE_ERROR)


def test_xoauth2_error_detail_is_compacted_and_sanitised() -> None:
    mech = xoauth2("u", "t")
    mech.initial_response()
    mech.respond(b'{"status": "401",\n "x": "\x1b[31mred"}'.replace(b"\x1b", b"\\u001b"))
    # An escaped control stays escaped: printable, and no terminal escape.
    assert mech.error_detail() == '{"status":"401","x":"\\u001b[31mred"}'
    other = xoauth2("u", "t")
    other.initial_response()
    other.respond(b"not json \x1b[2J\xff")
    detail = other.error_detail()
    assert detail is not None
    assert "\x1b" not in detail
    assert detail.startswith("not json ?[2J")


@pytest.mark.parametrize("token", ["", "has space", "line\r\nbreak", "ctl\x01"])
def test_oauth_rejects_bad_tokens(token: str) -> None:
    with pytest.raises(AuthError):
        xoauth2("u", token)
    with pytest.raises(AuthError):
        oauthbearer("u", token, "h", 995)


def test_oauthbearer_format_rfc7628() -> None:
    # RFC 7628 section 4.1, with the port changed to POP3S.
    mech = oauthbearer(
        "user@example.com", "vF9dft4qmTc2Nvb3RlckBhbHRhdmlzdGEuY29tCg==", "server.example.com", 995
    )
    assert mech.name == "OAUTHBEARER"
    assert mech.initial_response() == (
        b"n,a=user@example.com,\x01host=server.example.com\x01port=995\x01"
        b"auth=Bearer vF9dft4qmTc2Nvb3RlckBhbHRhdmlzdGEuY29tCg==\x01\x01"
    )


def test_oauthbearer_escapes_authzid() -> None:
    mech = oauthbearer("a,b=c", "tok", "h", 110)
    first = mech.initial_response()
    assert first is not None
    assert first.startswith(b"n,a=a=2Cb=3Dc,\x01")


def test_oauthbearer_error_challenge() -> None:
    # RFC 7628 section 3.2.3: answer the error with a lone ^A, then -ERR follows.
    error = (
        b'{"status":"invalid_token","scope":"example_scope",'
        b'"openid-configuration":"https://example.com/.well-known/openid-configuration"}'
    )
    mech = oauthbearer("user@example.com", "tok", "server.example.com", 995)
    mech.initial_response()
    assert mech.respond(error) == b"\x01"
    assert mech.error_detail() == error.decode()
    assert not mech.finished()


def test_oauthbearer_port_range() -> None:
    with pytest.raises(LocalProtocolError):
        oauthbearer("u", "t", "h", 0)


# --- USER/PASS, APOP -----------------------------------------------------------


def test_apop_rfc1939_example() -> None:
    digest = apop_digest(b"<1896.697170952@dbc.mtview.ca.us>", "tanstaaf")
    assert digest == "c4c9334bac560ecc979e58001b3e22fb"


@pytest.mark.parametrize("timestamp", [b"", b"<>", b"1896.697170952@dbc", b"<a\r\nb>"])
def test_apop_malformed_timestamp(timestamp: bytes) -> None:
    with pytest.raises(ProtocolError):
        apop_digest(timestamp, "tanstaaf")


# --- base64 ----------------------------------------------------------------------


@given(st.binary(max_size=300))
def test_b64_roundtrip(raw: bytes) -> None:
    assert decode_b64(encode_b64(raw)) == raw


def test_b64_empty() -> None:
    assert encode_b64(b"") == b""
    assert decode_b64(b"") == b""


@pytest.mark.parametrize(
    "data",
    [
        b"dXNlcg",
        b"dXNlcg=",
        b"dXN lcg==",
        b"dXNlcg==\r\n",
        b"dXNl*g==",
        b"QR==",
        b"\xff\xff\xff\xff",
    ],
)
def test_b64_strict(data: bytes) -> None:
    with pytest.raises(ProtocolError) as info:
        decode_b64(data)
    assert info.value.exit_code == ExitCode.PROTOCOL


# --- choosing a mechanism ------------------------------------------------------


def test_choose_mechanism_order() -> None:
    assert MECHANISM_PREFERENCE == ("SCRAM-SHA-256", "SCRAM-SHA-1", "PLAIN", "LOGIN")
    every = ["login", "plain", "scram-sha-1", "Scram-Sha-256", "XOAUTH2"]
    assert choose_mechanism(every, tls=True) == "SCRAM-SHA-256"
    assert choose_mechanism(["LOGIN", "PLAIN", "SCRAM-SHA-1"], tls=True) == "SCRAM-SHA-1"
    assert choose_mechanism(["LOGIN", "PLAIN"], tls=True) == "PLAIN"
    assert choose_mechanism(["LOGIN"], tls=True) == "LOGIN"
    assert choose_mechanism(["APOP", "XOAUTH2", "CRAM-MD5"], tls=True) is None
    assert choose_mechanism([], tls=True) is None


def test_choose_mechanism_without_tls_keeps_password_off_the_wire() -> None:
    assert choose_mechanism(["PLAIN", "LOGIN"], tls=False) is None
    assert choose_mechanism(["PLAIN", "SCRAM-SHA-1"], tls=False) == "SCRAM-SHA-1"


@pytest.mark.parametrize("name", [*MECHANISM_PREFERENCE, "XOAUTH2", "OAUTHBEARER"])
def test_mechanism_for(name: str) -> None:
    mech = mechanism_for(name.lower(), "user", "pencil", host="pop.example.org", port=995)
    assert mech.name == name


def test_mechanism_for_unknown() -> None:
    with pytest.raises(LocalProtocolError):
        mechanism_for("CRAM-MD5", "user", "pencil")


# --- secrets never shown ----------------------------------------------------------

FACTORIES: dict[str, Callable[[str], SASLMechanism]] = {
    "plain": lambda s: plain("user", s),
    "login": lambda s: login("user", s),
    "scram-sha-1": lambda s: scram("sha1", "user", s, nonce=SHA1_NONCE),
    "scram-sha-256": lambda s: scram("sha256", "user", s, nonce=SHA256_NONCE),
    "xoauth2": lambda s: xoauth2("user", s),
    "oauthbearer": lambda s: oauthbearer("user", s, "pop.example.com", 995),
}

HOSTILE = [
    SHA1_SERVER_FIRST,
    SHA256_SERVER_FIRST,
    b"v=" + encode_b64(b"\0" * 32),
    b"e=other-error",
    b"garbage",
    b"r=x,s=y,i=z",
    GOOGLE_ERROR,
    b"",
]


def _errors_from(make: Callable[[str], SASLMechanism], secret: str) -> list[BaseException]:
    """Build a mechanism and drive it with hostile input, collecting every error."""
    errors: list[BaseException] = []
    try:
        mech = make(secret)
    except FetchpopError as exc:
        return [exc]
    for step in [mech.initial_response, *[lambda c=c: mech.respond(c) for c in HOSTILE]]:
        try:
            step()
        except FetchpopError as exc:
            errors.append(exc)
    for final in HOSTILE:
        try:
            mech.verify_final(final)
        except FetchpopError as exc:
            errors.append(exc)
    return errors


def _shown(exc: BaseException) -> str:
    chained = [exc, exc.__cause__, exc.__context__]
    return " ".join(f"{e!s} {e!r} {e.args!r}" for e in chained if e is not None)


def _fixed_text(make: Callable[[str], SASLMechanism]) -> str:
    """Everything shown when the secret is not involved: module text, benign and refused runs."""
    benign = "benign-Secret-1"
    shown = [inspect.getsource(auth), repr(make(benign))]
    shown += [_shown(e) for e in _errors_from(make, benign)]
    shown += [_shown(e) for e in _errors_from(make, "bad\0secret\x07 x")]
    return " ".join(shown)


@settings(max_examples=40, deadline=None)
@given(kind=st.sampled_from(sorted(FACTORIES)), secret=st.text(min_size=8, max_size=40))
def test_secrets_absent_from_repr_and_errors(kind: str, secret: str) -> None:
    make = FACTORIES[kind]
    # A "secret" that is already part of a fixed message proves nothing.
    assume(secret not in _fixed_text(make))
    try:
        mech = make(secret)
    except FetchpopError as refused:
        assert secret not in _shown(refused)
    else:
        assert secret not in repr(mech)
        assert repr(mech) == repr(make("an-other-Secret-123"))
        mech.initial_response()
        assert secret not in repr(mech)
        assert secret not in str(mech.error_detail())
    for error in _errors_from(make, secret):
        assert secret not in _shown(error)
