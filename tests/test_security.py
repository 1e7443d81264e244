"""Secure by default (SPEC section 1, promise 3), as a user notices it.

Every test runs the real ``fetchpop`` command (tests/runner.py) and asserts the
exit status, the line on stderr, and -- from the fake server's records -- whether
a credential ever reached the wire. Sections:

1. TLS certificates: refused unless verified (CA or pin); TLS < 1.2 refused.
2. STARTTLS, strictly: never skipped, never downgraded, no injection, no hang.
3. Authentication against a real Dovecot: every password mechanism, auto's choice.
4. OAuth2 (XOAUTH2, OAUTHBEARER) against the fake server.
5. Leaks: no secret in output, transcript, seen-store or a child's argv,
   from a server that says back what it was sent, too (more in test_echo.py).
6. The config file: a password needs chmod 600; tls = "off" warns.
7. ``serverinfo``: TLS details, and the fingerprint that pins.
8. The keyring: ``password set`` and a password found at sync time.
9. Hostile identifiers: UIDLs that look like paths or terminal escapes.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import json
import os
import re
import select
import shlex
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

import pytest
import trustme
from dovecot import Dovecot, DovecotUser
from fakepop import (
    DEFAULT_CAPA,
    ERR_NO_TLS,
    OK_BEGIN_TLS,
    XOAUTH2_ERROR,
    Action,
    Command,
    Conn,
    FakePOP3,
    Fault,
    Mailbox,
    inject_after_stls,
    make_server_context,
    no_handshake,
    reply,
    vanish,
)
from runner import Home, Result, account_toml, maildir_messages

SECRET = "Pw-7x!Qz9kL#t"  # appears nowhere in fetchpop's own words
TOKEN = "ya29.Tk-3f9c1e7d5b2a"
USER = "alice"
MESSAGE = b"Subject: secure\n\nhello\n"
CREDENTIAL_COMMANDS = frozenset({"USER", "PASS", "APOP", "AUTH"})


def b64(data: str | bytes) -> str:
    raw = data.encode() if isinstance(data, str) else data
    return base64.b64encode(raw).decode("ascii")


def plain_payload(secret: str = SECRET) -> str:
    """RFC 4616: authzid NUL authcid NUL password."""
    return f"\0{USER}\0{secret}"


def xoauth2_payload(token: str = TOKEN) -> str:
    return f"user={USER}\x01auth=Bearer {token}\x01\x01"


def oauthbearer_payload(port: int, token: str = TOKEN) -> str:
    """RFC 7628 section 3.1, as fetchpop sends it for host "localhost"."""
    return f"n,a={USER},\x01host=localhost\x01port={port}\x01auth=Bearer {token}\x01\x01"


# -- fixtures and helpers ------------------------------------------------------------


@contextmanager
def serving(messages: Mailbox | list[bytes] | None = None, **kwargs: Any) -> Iterator[FakePOP3]:
    """A started fake server with our credentials; it must end without bugs."""
    kwargs.setdefault("users", {USER: SECRET})
    kwargs.setdefault("tokens", {USER: TOKEN})
    server = FakePOP3([MESSAGE] if messages is None else messages, **kwargs)
    with server:
        yield server
    assert server.errors == []


def fake_account(
    server: FakePOP3,
    mail: Path,
    *,
    ca_file: Path | None = None,
    name: str = "acct",
    **keys: object,
) -> str:
    """An account on *server* delivering into *mail*; implicit TLS unless told."""
    base: dict[str, object] = {
        "host": "localhost",
        "port": server.port,
        "user": USER,
        "tls": "implicit",
        "password": SECRET,
        "deliver": f"maildir:{mail}",
        "timeout": 5,
    }
    if ca_file is not None:
        base["ca_file"] = str(ca_file)
    base.update(keys)
    return account_toml(name, **{k: v for k, v in base.items() if v is not None})


def sessions(server: FakePOP3, count: int = 1) -> list[bytes]:
    """Every line the client sent, once *count* sessions have ended."""
    assert server.wait_sessions(count), "fake server sessions did not end"
    return server.all_commands()


def credentials_sent(server: FakePOP3, count: int = 1) -> list[bytes]:
    """The USER/PASS/APOP/AUTH lines the server received."""
    lines = sessions(server, count)
    return [
        line for line in lines if line.split(b" ", 1)[0].upper().decode() in CREDENTIAL_COMMANDS
    ]


def assert_nothing_secret_on_wire(server: FakePOP3, count: int = 1) -> None:
    assert credentials_sent(server, count) == []
    for session in server.sessions:
        for form in (SECRET, b64(SECRET), TOKEN):
            assert form.encode() not in session.received


def error_line(result: Result, account: str = "acct") -> str:
    """The one stderr line about *account* (there must be exactly one)."""
    lines = [ln for ln in result.stderr.splitlines() if ln.startswith(f"fetchpop: {account}: ")]
    assert len(lines) == 1, result
    return lines[0]


def fingerprint_of(der: bytes) -> str:
    digest = hashlib.sha256(der).hexdigest().upper()
    return "sha256:" + ":".join(digest[i : i + 2] for i in range(0, len(digest), 2))


def self_signed(tmp_path: Path, hostname: str = "localhost") -> tuple[ssl.SSLContext, Path, bytes]:
    """A server context with a self-signed certificate: (context, PEM path, DER)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(hostname)]), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "self.pem", tmp_path / "self.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_path, key_path)
    return context, cert_path, cert.public_bytes(serialization.Encoding.DER)


def issued(ca: trustme.CA, hostname: str = "localhost") -> tuple[ssl.SSLContext, bytes]:
    """A server context with a certificate from *ca*, and that certificate (DER)."""
    cert = ca.issue_cert(hostname)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    cert.configure_cert(context)
    return context, ssl.PEM_cert_to_DER_cert(cert.cert_chain_pems[0].bytes().decode())


# -- 1. TLS certificates ---------------------------------------------------------------

BAD_CERTIFICATES = {
    "self-signed": r"self.signed certificate",
    "expired": r"certificate has expired",
    "wrong-host": r"[Hh]ostname mismatch",
    "unknown-ca": r"unable to get local issuer certificate",
}


# Every kind over implicit TLS; STARTTLS verifies in the same place, after STLS.
@pytest.mark.parametrize(
    ("tls", "kind"),
    [("implicit", kind) for kind in BAD_CERTIFICATES]
    + [("starttls", "self-signed"), ("starttls", "wrong-host")],
)
def test_unverifiable_certificate_is_refused_before_any_credential(
    kind: str, tls: str, ca: trustme.CA, ca_file: Path, home: Home, tmp_path: Path
) -> None:
    if kind == "self-signed":
        context = self_signed(tmp_path)[0]
    elif kind == "expired":
        context = make_server_context(ca, "localhost", expired=True)
    elif kind == "wrong-host":
        context = make_server_context(ca, "mail.example.org")
    else:
        context = make_server_context(trustme.CA(), "localhost")
    mail = tmp_path / "Mail"
    with serving(tls_context=context, implicit_tls=tls == "implicit") as server:
        home.write_config(fake_account(server, mail, ca_file=ca_file, tls=tls))
        result = home.run("sync")
        assert result.code == 69, result
        line = error_line(result)
        assert "fetchpop: acct: TLS certificate of localhost did not verify" in line
        assert re.search(BAD_CERTIFICATES[kind], line), line
        assert_nothing_secret_on_wire(server)
        assert server.sessions[0].tls is False
    assert maildir_messages(mail) == []


def test_self_signed_certificate_trusted_through_ca_file(home: Home, tmp_path: Path) -> None:
    """SPEC section 3: ca_file may name a self-signed certificate to trust."""
    context, cert_path, _ = self_signed(tmp_path)
    mail = tmp_path / "Mail"
    with serving(tls_context=context, implicit_tls=True) as server:
        home.write_config(fake_account(server, mail, ca_file=cert_path))
        result = home.run("sync")
    assert result.code == 0, result
    assert maildir_messages(mail) == [MESSAGE]


@pytest.mark.parametrize("tls", ["implicit", "starttls"])
def test_pinned_fingerprint_replaces_ca_trust(
    tls: str, ca_file: Path, home: Home, tmp_path: Path
) -> None:
    context, _, der = self_signed(tmp_path)  # no CA would vouch for it
    mail = tmp_path / "Mail"
    with serving(tls_context=context, implicit_tls=tls == "implicit") as server:
        home.write_config(
            fake_account(server, mail, tls=tls, tls_fingerprint=fingerprint_of(der).lower())
        )
        result = home.run("sync")
        assert result.code == 0, result
        assert server.sessions[0].tls and server.sessions[0].user == USER
    assert maildir_messages(mail) == [MESSAGE]


@pytest.mark.parametrize("tls", ["implicit", "starttls"])
def test_pinned_fingerprint_refuses_another_certificate(
    tls: str, ca: trustme.CA, ca_file: Path, home: Home, tmp_path: Path
) -> None:
    _, _, pinned = self_signed(tmp_path)
    # A certificate that even verifies against ca_file: the pin still wins.
    context, presented = issued(ca)
    with serving(tls_context=context, implicit_tls=tls == "implicit") as server:
        home.write_config(
            fake_account(
                server,
                tmp_path / "Mail",
                ca_file=ca_file,
                tls=tls,
                tls_fingerprint=fingerprint_of(pinned),
            )
        )
        result = home.run("sync")
        assert result.code == 69, result
        line = error_line(result)
        assert "TLS certificate of localhost does not match tls_fingerprint" in line
        assert fingerprint_of(presented) in line  # what to pin, if the change is expected
        assert_nothing_secret_on_wire(server)


def test_tls_1_0_only_server_is_refused(
    ca: trustme.CA, ca_file: Path, home: Home, tmp_path: Path
) -> None:
    context = make_server_context(ca, "localhost", tls_max_version=ssl.TLSVersion.TLSv1)
    with serving(tls_context=context, implicit_tls=True) as server:
        home.write_config(fake_account(server, tmp_path / "Mail", ca_file=ca_file))
        result = home.run("sync")
        assert result.code == 69, result
        line = error_line(result)
        assert "fetchpop: acct: TLS handshake with localhost failed: the server offers no " in line
        assert "(1.2 or later)" in line
        assert_nothing_secret_on_wire(server)


@pytest.mark.parametrize("tls", ["implicit", "starttls"])
def test_verified_tls_works(
    tls: str, ca: trustme.CA, ca_file: Path, home: Home, tmp_path: Path
) -> None:
    mail = tmp_path / "Mail"
    context = make_server_context(ca, "localhost")
    with serving(tls_context=context, implicit_tls=tls == "implicit") as server:
        home.write_config(fake_account(server, mail, ca_file=ca_file, tls=tls))
        result = home.run("sync")
        assert result.code == 0, result
        assert result.stderr == ""
        [session] = server.sessions
        assert session.tls and session.user == USER
        if tls == "starttls":
            # RFC 2595 section 4: capabilities asked again once encrypted, and
            # every credential after the handshake.
            assert session.commands[:3] == [b"CAPA", b"STLS", b"CAPA"]
    assert maildir_messages(mail) == [MESSAGE]


def subject_hash(pem: Path) -> str:
    """OpenSSL's name for a CA file in a hashed directory (``openssl rehash``)."""
    out = subprocess.run(
        ["openssl", "x509", "-hash", "-noout", "-in", str(pem)],
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.strip()


def test_system_ca_directory_is_used_without_loading_the_bundle(
    ca: trustme.CA, ca_file: Path, home: Home, tmp_path: Path
) -> None:
    """The system's CAs come from the hashed directory alone: one connection."""
    capath = tmp_path / "certs"
    capath.mkdir()
    (capath / f"{subject_hash(ca_file)}.0").write_bytes(ca_file.read_bytes())
    mail = tmp_path / "Mail"
    with serving(tls_context=make_server_context(ca, "localhost"), implicit_tls=True) as server:
        home.write_config(fake_account(server, mail))  # no ca_file: system trust only
        env = {"SSL_CERT_DIR": str(capath), "SSL_CERT_FILE": str(tmp_path / "absent.pem")}
        result = home.run("sync", env=env)
        assert result.code == 0, result
        assert len(server.sessions) == 1
    assert maildir_messages(mail) == [MESSAGE]


def test_issuer_missing_from_the_ca_directory_is_found_in_the_bundle(
    ca: trustme.CA, ca_file: Path, home: Home, tmp_path: Path
) -> None:
    """The directory alone does not vouch for the server: retried with the whole store."""
    capath = tmp_path / "certs"
    capath.mkdir()
    other = trustme.CA().cert_pem.bytes()
    (capath / "0123abcd.0").write_bytes(other)  # hashed names, but not our CA
    mail = tmp_path / "Mail"
    with serving(tls_context=make_server_context(ca, "localhost"), implicit_tls=True) as server:
        home.write_config(fake_account(server, mail))
        env = {"SSL_CERT_DIR": str(capath), "SSL_CERT_FILE": str(ca_file)}
        result = home.run("sync", env=env)
        assert result.code == 0, result
        assert result.stderr == ""
        assert server.wait_sessions(2)
        first, second = server.sessions
        assert first.tls is False and first.user is None  # refused at the handshake
        assert second.tls and second.user == USER
    assert maildir_messages(mail) == [MESSAGE]
    # Neither store knows the issuer: refused as before, after the one retry.
    with serving(
        tls_context=make_server_context(trustme.CA(), "localhost"), implicit_tls=True
    ) as server:
        home.write_config(fake_account(server, tmp_path / "Other"))
        result = home.run("sync", env=env)
        assert result.code == 69, result
        assert "unable to get local issuer certificate" in error_line(result)
        assert_nothing_secret_on_wire(server, 2)


# -- 2. STARTTLS, strictly -----------------------------------------------------------


def starttls_server(ca: trustme.CA, **kwargs: Any) -> AbstractContextManager[FakePOP3]:
    """``serving`` with STLS available (unless *tls_context* says otherwise)."""
    kwargs.setdefault("tls_context", make_server_context(ca, "localhost"))
    return serving(**kwargs)


def run_starttls(server: FakePOP3, home: Home, mail: Path, ca_file: Path, **keys: object) -> Result:
    home.write_config(fake_account(server, mail, ca_file=ca_file, tls="starttls", **keys))
    return home.run("sync")


def test_starttls_not_offered_is_refused(
    ca: trustme.CA, ca_file: Path, home: Home, tmp_path: Path
) -> None:
    # STLS would work, but CAPA does not list it: we must not try, nor go on.
    with starttls_server(ca, capa=[*DEFAULT_CAPA, "SASL PLAIN"]) as server:
        result = run_starttls(server, home, tmp_path / "Mail", ca_file)
        assert result.code == 69, result
        assert "server does not offer STLS; refusing to go on without TLS" in error_line(result)
        assert sessions(server) == [b"CAPA"]
        assert_nothing_secret_on_wire(server)


def test_starttls_refused_by_server(
    ca: trustme.CA, ca_file: Path, home: Home, tmp_path: Path
) -> None:
    with starttls_server(ca, faults=[Fault("STLS", reply(ERR_NO_TLS))]) as server:
        result = run_starttls(server, home, tmp_path / "Mail", ca_file)
        assert result.code == 69, result
        line = error_line(result)
        assert "server refused STLS (-ERR STLS not available); refusing to go on" in line
        assert sessions(server) == [b"CAPA", b"STLS"]
        assert_nothing_secret_on_wire(server)


# Plaintext after "+OK Begin TLS" would be read as the reply to our first
# command under TLS (CVE-2011-0411 class). Whether it shares a packet with the
# +OK (caught by the parser) or arrives after it (the TLS handshake reads it
# as garbage), it is a STARTTLS that cannot be completed safely: 69, like every
# other STARTTLS failure, and not 76 -- the exit code must not depend on how
# the attacker's bytes were split into packets.
INJECTIONS = {
    "same-packet": reply(OK_BEGIN_TLS + b"+OK injected\r\n.\r\n", apply=True),
    "next-packet": inject_after_stls(b"+OK capability list follows\r\nUSER\r\n.\r\n"),
}


@pytest.mark.parametrize("how", list(INJECTIONS))
def test_data_injected_after_stls_is_refused(
    how: str, ca: trustme.CA, ca_file: Path, home: Home, tmp_path: Path
) -> None:
    with starttls_server(ca, faults=[Fault("STLS", INJECTIONS[how])]) as server:
        result = run_starttls(server, home, tmp_path / "Mail", ca_file)
        assert result.code == 69, result
        line = error_line(result)
        assert "TLS" in line
        if how == "same-packet":
            assert "server sent data after STLS +OK, before TLS" in line
        assert sessions(server)[:2] == [b"CAPA", b"STLS"]
        assert_nothing_secret_on_wire(server)


def test_stls_ok_without_handshake_ends_within_timeout(
    ca: trustme.CA, ca_file: Path, home: Home, tmp_path: Path
) -> None:
    with starttls_server(ca, faults=[Fault("STLS", no_handshake())]) as server:
        started = time.monotonic()
        result = run_starttls(server, home, tmp_path / "Mail", ca_file, timeout=2)
        took = time.monotonic() - started
        assert result.code == 69, result
        assert "TLS handshake with localhost failed: timed out" in error_line(result)
        assert took < 2 + 5, took
        assert_nothing_secret_on_wire(server)


def test_starttls_attempted_without_capa(
    ca: trustme.CA, ca_file: Path, home: Home, tmp_path: Path
) -> None:
    """No CAPA (RFC 1939 server): STLS is still tried; refused means stop."""
    with starttls_server(ca, capa=None, tls_context=None) as server:
        result = run_starttls(server, home, tmp_path / "Mail", ca_file)
        assert result.code == 69, result
        assert "server refused STLS" in error_line(result)
        assert sessions(server) == [b"CAPA", b"STLS"]
        assert_nothing_secret_on_wire(server)
    # The same server with TLS: the upgrade happens, and then the login.
    mail = tmp_path / "Mail"
    with starttls_server(ca, capa=None) as server:
        result = run_starttls(server, home, mail, ca_file)
        assert result.code == 0, result
        assert server.sessions[0].tls and server.sessions[0].user == USER
    assert maildir_messages(mail) == [MESSAGE]


# -- 3. Authentication against a real Dovecot -------------------------------------------

ALL_MECHANISMS = "plain login scram-sha-1 scram-sha-256 apop"


def dovecot_account(mb: DovecotUser, mail: Path, **keys: object) -> str:
    """An account for *mb* over implicit TLS verified with the test CA."""
    dc = mb.dovecot
    base: dict[str, object] = {
        "host": "localhost",
        "port": dc.tls_port,
        "user": mb.user,
        "tls": "implicit",
        "ca_file": str(dc.ca_file),
        "password": mb.password,
        "deliver": f"maildir:{mail}",
        "timeout": 10,
    }
    base.update(keys)
    return account_toml("acct", **{k: v for k, v in base.items() if v is not None})


def transcript(result: Result) -> list[str]:
    """The -vv protocol lines ("C: ..." / "S: ..."), without the account prefix."""
    prefix = "acct: "
    return [ln.removeprefix(prefix) for ln in result.stderr.splitlines() if ln.startswith(prefix)]


def logins(lines: list[str]) -> list[str]:
    """Transcript lines where the client sent USER, PASS, APOP or AUTH."""
    return [
        ln for ln in lines if ln.startswith("C: ") and ln[3:].split(" ")[0] in CREDENTIAL_COMMANDS
    ]


@pytest.mark.dovecot
@pytest.mark.parametrize(
    ("method", "login_line"),
    [
        ("user", "C: PASS ***"),
        ("plain", "C: AUTH PLAIN ***"),
        ("login", "C: AUTH LOGIN"),
        ("scram-sha-1", "C: AUTH SCRAM-SHA-1 ***"),
        ("scram-sha-256", "C: AUTH SCRAM-SHA-256 ***"),
        ("apop", "C: APOP {user} ***"),
        ("auto", "C: AUTH SCRAM-SHA-256 ***"),  # the strongest on offer
    ],
)
def test_dovecot_login_with_each_method(
    method: str,
    login_line: str,
    dovecot_factory: Callable[..., Dovecot],
    home: Home,
    tmp_path: Path,
) -> None:
    dc: Dovecot = dovecot_factory(auth_mechanisms=ALL_MECHANISMS)
    mb = dc.new_mailbox()
    dc.add_message(mb.user, MESSAGE)
    mail = tmp_path / "Mail"
    home.write_config(dovecot_account(mb, mail, auth=method))
    result = home.run("-vv", "sync")
    assert result.code == 0, result
    lines = transcript(result)
    assert login_line.format(user=mb.user) in lines, result
    assert len(logins(lines)) == 1 + (method == "user")  # USER, then PASS
    assert mb.password not in result.stderr
    assert maildir_messages(mail) == [MESSAGE]


@pytest.mark.dovecot
@pytest.mark.parametrize(
    ("method", "words"),
    [
        ("scram-sha-256", "server does not offer SASL SCRAM-SHA-256 (it offers: PLAIN, LOGIN)"),
        ("apop", "server does not offer APOP"),
    ],
)
def test_dovecot_mechanism_not_offered_sends_no_password(
    method: str, words: str, mailbox: DovecotUser, home: Home, tmp_path: Path
) -> None:
    """The shared Dovecot offers PLAIN and LOGIN only, and no APOP timestamp."""
    asked = tmp_path / "password-asked"
    command = f"sh -c 'touch {asked}; printf %s {mailbox.password}'"
    home.write_config(
        dovecot_account(
            mailbox, tmp_path / "Mail", auth=method, password=None, password_command=command
        )
    )
    result = home.run("-vv", "sync")
    assert result.code == 69, result
    assert words in error_line(result)
    assert not asked.exists()  # the password was not even fetched
    assert logins(transcript(result)) == []


def test_mechanism_not_offered_on_the_wire(
    ca: trustme.CA, ca_file: Path, home: Home, tmp_path: Path
) -> None:
    """The same refusal, seen from the server: not a byte of credentials."""
    methods = ("plain", "scram-sha-256", "xoauth2", "apop")
    with serving(
        tls_context=make_server_context(ca, "localhost"),
        implicit_tls=True,
        apop=False,
        mechanisms={},
    ) as server:
        home.write_config(
            "".join(
                fake_account(server, tmp_path / "Mail", ca_file=ca_file, auth=m, name=f"m-{m}")
                for m in methods
            )
        )
        result = home.run("sync")
        assert result.code == 75, result  # several accounts failed
        for method in methods:
            assert "does not offer" in error_line(result, f"m-{method}")
        assert_nothing_secret_on_wire(server, len(methods))


# -- 4. OAuth2 against the fake server -----------------------------------------------


def oauth_run(
    server: FakePOP3, home: Home, mail: Path, ca_file: Path, method: str, token: str
) -> Result:
    home.write_config(
        fake_account(
            server,
            mail,
            ca_file=ca_file,
            auth=method,
            password=None,
            password_command=f"printf %s {token}",
        )
    )
    return home.run("sync")


def auth_exchange(server: FakePOP3) -> list[bytes]:
    """The AUTH line and the SASL responses after it, up to the next command."""
    lines = sessions(server)
    start = next(i for i, ln in enumerate(lines) if ln.startswith(b"AUTH"))
    after = (i for i, ln in enumerate(lines) if i > start and ln in (b"CAPA", b"UIDL", b"QUIT"))
    return lines[start : next(after, len(lines))]


def test_xoauth2_initial_response(
    ca: trustme.CA, ca_file: Path, home: Home, tmp_path: Path
) -> None:
    mail = tmp_path / "Mail"
    with serving(tls_context=make_server_context(ca, "localhost"), implicit_tls=True) as server:
        result = oauth_run(server, home, mail, ca_file, "xoauth2", TOKEN)
        assert result.code == 0, result
        [line] = auth_exchange(server)
        assert line == f"AUTH XOAUTH2 {b64(xoauth2_payload())}".encode()
    assert maildir_messages(mail) == [MESSAGE]


def test_xoauth2_long_token_waits_for_the_challenge(
    ca: trustme.CA, ca_file: Path, home: Home, tmp_path: Path
) -> None:
    """RFC 5034 section 4: an AUTH line may not pass 255 octets."""
    token = "t" * 300
    mail = tmp_path / "Mail"
    with serving(
        tls_context=make_server_context(ca, "localhost"),
        implicit_tls=True,
        tokens={USER: token},
    ) as server:
        result = oauth_run(server, home, mail, ca_file, "xoauth2", token)
        assert result.code == 0, result
        assert auth_exchange(server) == [
            b"AUTH XOAUTH2",
            b64(xoauth2_payload(token)).encode(),
        ]
        assert server.sessions[0].user == USER
    assert maildir_messages(mail) == [MESSAGE]


def test_oauthbearer(ca: trustme.CA, ca_file: Path, home: Home, tmp_path: Path) -> None:
    mail = tmp_path / "Mail"
    with serving(tls_context=make_server_context(ca, "localhost"), implicit_tls=True) as server:
        result = oauth_run(server, home, mail, ca_file, "oauthbearer", TOKEN)
        assert result.code == 0, result
        message = b64(oauthbearer_payload(server.port))
        assert auth_exchange(server) == [f"AUTH OAUTHBEARER {message}".encode()]
    assert maildir_messages(mail) == [MESSAGE]


def test_failed_xoauth2_shows_the_servers_error(
    ca: trustme.CA, ca_file: Path, home: Home, tmp_path: Path
) -> None:
    mail = tmp_path / "Mail"
    with serving(tls_context=make_server_context(ca, "localhost"), implicit_tls=True) as server:
        result = oauth_run(server, home, mail, ca_file, "xoauth2", "expired-token")
        assert result.code == 77, result
        line = error_line(result)
        assert line.startswith("fetchpop: acct: authentication failed: -ERR [AUTH] ")
        assert json.dumps(XOAUTH2_ERROR, separators=(",", ":")) in line
        assert "expired-token" not in result.stderr
        # Google's protocol: the JSON challenge is answered with an empty line.
        assert auth_exchange(server)[1:] == [b""]
    assert maildir_messages(mail) == []


# -- 5. Leaks: no secret in output, transcript, seen-store or argv ----------------------

POP3_COMMANDS = frozenset(
    {"CAPA", "STLS", "USER", "PASS", "APOP", "AUTH", "STAT", "LIST", "UIDL", "RETR", "TOP",
     "DELE", "RSET", "NOOP", "QUIT"}
)  # fmt: skip
METHODS = ("user", "apop", "plain", "login", "scram-sha-1", "scram-sha-256", "xoauth2",
           "oauthbearer")  # fmt: skip
OAUTH = frozenset({"xoauth2", "oauthbearer"})

# A child that records its own command line and environment, as the kernel sees them.
RECORDER = """\
import json, os, sys
with open(sys.argv[2], "a") as log:
    cmdline = open("/proc/self/cmdline", "rb").read().decode().split("\\0")[:-1]
    log.write(json.dumps({"argv": cmdline, "env": dict(os.environ)}) + "\\n")
"""
PASSWORD_COMMAND = RECORDER + "sys.stdout.write(open(sys.argv[1]).read())\n"
MDA = (
    RECORDER
    + """\
with open(os.path.join(sys.argv[1], str(os.getpid())), "wb") as out:
    out.write(sys.stdin.buffer.read())
"""
)


def secret_forms(port: int) -> set[str]:
    """The secrets, and their base64 forms alone and inside SASL payloads."""
    return {
        SECRET,
        b64(SECRET),
        TOKEN,
        b64(TOKEN),
        b64(plain_payload()),
        b64(xoauth2_payload()),
        b64(oauthbearer_payload(port)),
    }


def wire_secrets(server: FakePOP3, count: int = 1) -> set[str]:
    """What the client said after PASS, APOP and AUTH, and every SASL response."""
    found = set()
    for line in sessions(server, count):
        text = line.decode("latin-1")
        word, _, rest = text.partition(" ")
        if word.upper() == "PASS":
            found.add(rest)
        elif word.upper() == "APOP":
            found.add(rest.rpartition(" ")[2])  # the digest
        elif word.upper() == "AUTH":
            found.add(rest.partition(" ")[2])  # the initial response, if any
        elif word.upper() not in POP3_COMMANDS:
            found.add(text)
    return {s for s in found if len(s) >= 8}  # "" and "=" are everywhere


def b64_inside(secret: str) -> set[str]:
    """*secret*'s base64 inside a longer base64 string, at each of the three
    alignments: the characters that stand for bytes of the secret alone."""
    raw = secret.encode()
    out = set()
    for shift in range(3):
        encoded = base64.b64encode(b"\0" * shift + raw).decode("ascii")
        out.add(encoded[-(-4 * shift // 3) : 4 * (shift + len(raw)) // 3])
    return out


def scram_proofs(wire: set[str]) -> set[str]:
    """The ClientProof of each SCRAM client-final message among *wire*'s base64 lines."""
    proofs = set()
    for line in wire:
        text = base64.b64decode(line + "=" * (-len(line) % 4)).decode("latin-1")
        if text.startswith("c=") and ",p=" in text:
            proofs.add(text.rpartition(",p=")[2])
    return proofs


# Servers that say back what they were sent (issue 15, item 2).

LOGIN_COMMAND = {"user": "PASS", "apop": "APOP"}  # else AUTH


def credentials(conn: Conn) -> list[bytes]:
    """What the client sent this session as credentials, as sent: PASS's and
    APOP's argument, AUTH's initial response, each SASL response."""
    out = []
    for line in conn.session.commands:
        word, _, rest = line.partition(b" ")
        name = word.decode("latin-1").upper()
        if name == "PASS":
            out.append(rest)
        elif name == "APOP":
            out.append(rest.rpartition(b" ")[2])
        elif name == "AUTH":
            out.append(rest.partition(b" ")[2])
        elif name not in POP3_COMMANDS:
            out.append(line)
    return [c for c in out if c not in (b"", b"=")]


def everything_sent(conn: Conn, secret: str) -> bytes:
    """All a careless server could say back: the secret, its base64 alone and
    inside longer base64 strings, each credential as sent, each decoded."""
    sent = credentials(conn)
    decoded = []
    for line in sent:
        try:
            data = base64.b64decode(line, validate=True)
        except ValueError:
            continue
        decoded.append(data.replace(b"\r", b"").replace(b"\n", b""))
    parts = [secret, b64(secret), b64("x" + secret + "y"), b64("xy" + secret + "z")]
    return b" | ".join([*(p.encode() for p in parts), *sent, *decoded])


def exchange(conn: Conn, cmd: Command) -> bytes:
    """The server's last word to *cmd*: for AUTH, after the whole SASL
    exchange (challenges sent, responses read and recorded as usual)."""
    answer = conn.real(cmd)
    while conn.sasl is not None:
        conn.send(answer)
        line = conn.readline()
        if line is None:
            return b""
        conn.session.commands.append(line)
        answer = conn.continue_sasl(line)
    return answer


def echo_ok(secret: str) -> Action:
    """The normal reply, with every credential the client sent (and more, see
    everything_sent) in its +OK line's text, once the client has sent one."""

    def act(conn: Conn, cmd: Command) -> None:
        answer = exchange(conn, cmd)
        if answer.startswith(b"+OK") and credentials(conn):
            rest = answer.partition(b"\r\n")[2]
            answer = b"+OK you sent " + everything_sent(conn, secret) + b"\r\n" + rest
        conn.send(answer)

    return act


def echo_err(secret: str, code: bytes = b"") -> Action:
    """After the real exchange, ``-ERR`` saying back the secret and the last
    credential sent: "invalid password 'SECRET' (b64 LAST)"."""

    def act(conn: Conn, cmd: Command) -> None:
        exchange(conn, cmd)
        last = credentials(conn)[-1]
        conn.send(b"-ERR %sinvalid password '%s' (b64 %s)\r\n" % (code, secret.encode(), last))

    return act


def assert_absent(forms: set[str], where: str, data: str | bytes) -> None:
    raw = data.encode() if isinstance(data, str) else data
    for form in forms:
        assert form.encode() not in raw, f"{form!r} found in {where}"


def recorded(log: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in log.read_text().splitlines()]


@pytest.mark.parametrize("echo", [False, True], ids=["quiet", "echoing"])
@pytest.mark.parametrize("method", METHODS)
def test_no_secret_leaks_from_a_verbose_sync(
    method: str, echo: bool, ca: trustme.CA, ca_file: Path, home: Home, tmp_path: Path
) -> None:
    """*echo*: the server says back every credential it was sent (and their
    base64 forms) in each +OK after the login's, and in the login's own."""
    secret = TOKEN if method in OAUTH else SECRET
    login = LOGIN_COMMAND.get(method, "AUTH")
    echoes = [Fault(on, echo_ok(secret)) for on in (login, "CAPA", "UIDL", "LIST", "RETR")]
    secret_file = tmp_path / "secret"
    secret_file.write_text(secret + "\n")
    tools = tmp_path / "tools"
    tools.mkdir()
    (tools / "pwcmd.py").write_text(PASSWORD_COMMAND)
    (tools / "mda.py").write_text(MDA)
    out = tmp_path / "delivered"
    out.mkdir()
    command = f"{sys.executable} {tools / 'pwcmd.py'} {secret_file} {tools / 'pwcmd.log'}"
    mda = f"{sys.executable} {tools / 'mda.py'} {out} {tools / 'mda.log'}"
    with serving(
        tls_context=make_server_context(ca, "localhost"),
        implicit_tls=True,
        faults=echoes if echo else [],
    ) as server:
        home.write_config(
            fake_account(
                server,
                tmp_path,
                ca_file=ca_file,
                auth=method,
                password=None,
                password_command=command,
                deliver=f"mda:{mda}",
            )
        )
        result = home.run("-vv", "sync")
        assert result.code == 0, result
        assert server.sessions[0].user == USER
        wire = wire_secrets(server)
        forms = secret_forms(server.port) | wire | b64_inside(secret) | scram_proofs(wire)
        assert wire, "no credential crossed the wire?"
    if echo:  # what was said back is in the transcript, hidden
        assert sum(line.startswith("S: +OK you sent ***") for line in transcript(result)) >= 5
    assert [p.read_bytes() for p in out.iterdir()] == [MESSAGE]
    assert logins(transcript(result)), result  # the login is in the transcript, hidden
    assert_absent(forms, "stdout", result.stdout)
    assert_absent(forms, "stderr", result.stderr)
    # The seen-store (and its write-ahead log), locks, config: everything in $HOME.
    assert home.store_path.exists()
    for path in [home.store_path, home.store_path.with_name(home.store_path.name + "-wal")]:
        if path.exists():
            assert_absent(forms, str(path), path.read_bytes())
    for path in home.root.rglob("*"):
        if path.is_file():
            assert_absent(forms, str(path), path.read_bytes())
    # Children: the password command runs exactly as configured; neither it nor
    # the MDA gets a secret in argv or in the environment.
    [pw_run] = recorded(tools / "pwcmd.log")
    assert pw_run["argv"] == shlex.split(command)
    [mda_run] = recorded(tools / "mda.log")
    assert mda_run["argv"] == shlex.split(mda)
    for run in (pw_run, mda_run):
        assert_absent(forms, "a child's argv", "\0".join(run["argv"]))
        assert_absent(forms, "a child's environment", json.dumps(run["env"]))


def test_no_secret_in_failed_logins_serverinfo_or_accounts(
    ca: trustme.CA, ca_file: Path, home: Home, tmp_path: Path
) -> None:
    context = make_server_context(ca, "localhost")
    other = {USER: "the-right-one-9"}  # the server wants something else
    with serving(tls_context=context, implicit_tls=True, users=other, tokens=other) as server:
        home.write_config(
            "".join(
                fake_account(
                    server,
                    tmp_path / "Mail",
                    ca_file=ca_file,
                    name=f"m-{m}",
                    auth=m,
                    password=TOKEN if m in OAUTH else SECRET,
                )
                for m in METHODS
            )
        )
        failed = home.run("-vv", "sync")
        assert failed.code == 75, failed  # several accounts failed
        for method in METHODS:
            line = error_line(failed, f"m-{method}")
            assert line.startswith(f"fetchpop: m-{method}: authentication failed: -ERR"), line
        info = home.run("-vv", "serverinfo", "m-plain")
        assert info.code == 0, info
        assert "login: authentication failed: -ERR [AUTH]" in info.stdout
        forms = secret_forms(server.port) | wire_secrets(server, len(METHODS) + 1)
    listing = home.run("accounts")
    as_json = home.run("accounts", "--json")
    assert listing.code == as_json.code == 0
    assert {a["password"] for a in json.loads(as_json.stdout)["accounts"]} == {"***"}
    for name, result in [("sync", failed), ("serverinfo", info), ("accounts", listing),
                         ("accounts --json", as_json)]:  # fmt: skip
        assert_absent(forms, f"{name} stdout", result.stdout)
        assert_absent(forms, f"{name} stderr", result.stderr)
    assert_absent(forms, "the seen-store", home.store_path.read_bytes())  # run records


def test_password_echoed_by_the_server_is_hidden(
    ca: trustme.CA, ca_file: Path, home: Home, tmp_path: Path
) -> None:
    echo = b"-ERR [AUTH] wrong password " + SECRET.encode() + b" for alice\r\n"
    with serving(
        tls_context=make_server_context(ca, "localhost"),
        implicit_tls=True,
        faults=[Fault("PASS", reply(echo))],
    ) as server:
        home.write_config(fake_account(server, tmp_path / "Mail", ca_file=ca_file, auth="user"))
        result = home.run("-vv", "sync")
    assert result.code == 77, result
    assert SECRET not in result.stderr
    assert "authentication failed: -ERR [AUTH] wrong password *** for alice" in error_line(result)
    assert "S: -ERR [AUTH] wrong password *** for alice" in transcript(result)


# -- 6. The config file ----------------------------------------------------------------


@pytest.mark.parametrize("mode", [0o644, 0o640])
def test_password_in_readable_config_is_refused(
    mode: int, ca_file: Path, home: Home, tmp_path: Path
) -> None:
    with serving() as server:
        path = home.write_config(fake_account(server, tmp_path / "Mail", ca_file=ca_file), mode)
        result = home.run("sync")
        assert result.code == 78, result
        assert str(path) in result.stderr and "chmod 600" in result.stderr
        assert '"password"' in result.stderr
        assert SECRET not in result.stderr + result.stdout
        assert server.sessions == []  # not even a connection


@pytest.mark.dovecot
def test_tls_off_warns_on_every_run(mailbox: DovecotUser, home: Home, tmp_path: Path) -> None:
    dc = mailbox.dovecot
    dc.add_message(mailbox.user, MESSAGE)
    mail = tmp_path / "Mail"
    home.write_config(dovecot_account(mailbox, mail, tls="off", port=dc.port, ca_file=None))
    warning = (
        'fetchpop: acct: warning: tls = "off": password and mail cross the network in clear text'
    )
    first = home.run("-vv", "sync")
    assert first.code == 0, first
    assert warning in first.stderr.splitlines()
    # auto never picks PLAIN or LOGIN in clear text: USER/PASS, as configured to be.
    assert logins(transcript(first)) == [f"C: USER {mailbox.user}", "C: PASS ***"]
    assert maildir_messages(mail) == [MESSAGE]
    again = home.run("sync")
    assert again.code == 0, again
    assert again.stderr.splitlines() == [warning]
    quiet = home.run("-q", "sync")
    assert quiet.code == 0 and quiet.stderr == "", quiet


# -- 7. serverinfo -------------------------------------------------------------------------


@pytest.mark.dovecot
def test_serverinfo_shows_tls_and_the_fingerprint_that_pins(
    mailbox: DovecotUser, home: Home, tmp_path: Path
) -> None:
    dc = mailbox.dovecot
    dc.add_message(mailbox.user, MESSAGE)
    mail = tmp_path / "Mail"
    home.write_config(dovecot_account(mailbox, mail))
    result = home.run("serverinfo", "acct")
    assert result.code == 0, result
    out = dict(ln.strip().split(": ", 1) for ln in result.stdout.splitlines()[1:])
    assert re.fullmatch(r"TLSv1\.[23], cipher \S+", out["TLS"]), result
    pem = dc.cert_file.read_text()
    leaf = pem[: pem.index("-----END CERTIFICATE-----") + len("-----END CERTIFICATE-----")]
    expected = fingerprint_of(ssl.PEM_cert_to_DER_cert(leaf))
    assert out["certificate fingerprint"] == expected
    assert out["subject"] and "?" not in out["subject"]
    assert "trustme" in out["issuer"]
    expires = datetime.datetime.fromisoformat(out["expires"])
    assert expires > datetime.datetime.now(datetime.UTC)
    assert "fetchpop test dovecot ready." in out["greeting"]
    assert "UIDL" in out["capabilities before login"].split()
    assert "UIDL" in out["capabilities after login"].split()
    assert "login" not in out
    # Pasted as tls_fingerprint, without ca_file, it is all the trust needed ...
    home.write_config(dovecot_account(mailbox, mail, ca_file=None, tls_fingerprint=expected))
    pinned = home.run("sync")
    assert pinned.code == 0, pinned
    assert maildir_messages(mail) == [MESSAGE]
    # ... and without it, the same server is not trusted.
    home.write_config(dovecot_account(mailbox, mail, ca_file=None))
    assert home.run("sync").code == 69


# -- 8. The keyring --------------------------------------------------------------------

KEYRING_BACKEND = (Path(__file__).parent / "filekeyring.py").read_text()


@pytest.fixture
def file_keyring(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """(the keyring's JSON file, the environment that selects it)."""
    where = tmp_path / "keyring-backend"
    where.mkdir()
    (where / "fptestkeyring.py").write_text(KEYRING_BACKEND)
    store = tmp_path / "keyring.json"
    path = os.pathsep.join(p for p in (str(where), os.environ.get("PYTHONPATH")) if p)
    return store, {
        "PYTHONPATH": path,
        "PYTHON_KEYRING_BACKEND": "fptestkeyring.FileKeyring",
        "TEST_KEYRING_FILE": str(store),
    }


def run_on_pty(
    home: Home, *args: str, env: dict[str, str], answers: list[tuple[bytes, str]]
) -> tuple[int, str]:
    """Run fetchpop with a terminal as stdin/stdout/stderr; type each answer after its prompt."""
    import pty

    master, slave = pty.openpty()
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "fetchpop", *args],
            env=home.env(env),
            stdin=slave,
            stdout=slave,
            stderr=slave,
            start_new_session=True,  # no controlling terminal: getpass uses stdin
        )
    finally:
        os.close(slave)
    output, pos, pending = b"", 0, list(answers)
    deadline = time.monotonic() + 30
    try:
        while time.monotonic() < deadline:
            if select.select([master], [], [], 0.1)[0]:
                try:
                    chunk = os.read(master, 4096)
                except OSError:  # EIO: the child is gone and closed the terminal
                    break
                if not chunk:
                    break
                output += chunk
            if pending and (at := output.find(pending[0][0], pos)) >= 0:
                pos = at + len(pending[0][0])
                os.write(master, pending.pop(0)[1].encode() + b"\n")
        code = proc.wait(timeout=10)
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return code, output.decode("utf-8", "replace")


def keyring_account(server: FakePOP3, mail: Path, ca_file: Path) -> str:
    return fake_account(server, mail, ca_file=ca_file, password=None)


def test_password_set_needs_a_terminal(home: Home, tmp_path: Path) -> None:
    home.write_config(account_toml("acct", host="localhost", user=USER,
                                   deliver=f"maildir:{tmp_path / 'Mail'}"))  # fmt: skip
    result = home.run("password", "set", "acct", stdin=SECRET + "\n" + SECRET + "\n")
    assert result.code == 64, result
    assert result.stderr == "fetchpop: password set needs a terminal to ask for the password\n"


def test_password_set_without_a_keyring_gives_advice(home: Home, tmp_path: Path) -> None:
    home.write_config(account_toml("acct", host="localhost", user=USER,
                                   deliver=f"maildir:{tmp_path / 'Mail'}"))  # fmt: skip
    code, output = run_on_pty(
        home,
        "password",
        "set",
        "acct",
        env={"PYTHON_KEYRING_BACKEND": "keyring.backends.fail.Keyring"},
        answers=[(b"Password for alice@localhost: ", SECRET), (b"Again: ", SECRET)],
    )
    assert code == 69, output
    assert "fetchpop: cannot use the system keyring: no keyring backend is available" in output
    assert "set password_command" in output and "chmod 600" in output
    assert SECRET not in output  # typed without echo
    assert "Password for" not in output  # not asked for in vain


def test_password_from_the_keyring(
    file_keyring: tuple[Path, dict[str, str]],
    ca: trustme.CA,
    ca_file: Path,
    home: Home,
    tmp_path: Path,
) -> None:
    store, env = file_keyring
    mail = tmp_path / "Mail"
    with serving(tls_context=make_server_context(ca, "localhost"), implicit_tls=True) as server:
        home.write_config(keyring_account(server, mail, ca_file))
        # Stored under the wrong name: not found, so no password at all.
        store.write_text(json.dumps({"fetchpop": {USER: SECRET}}))
        missing = home.run("sync", env=env)
        assert missing.code == 77, missing
        assert "no password available for alice@localhost" in error_line(missing)
        # `password set` on a terminal stores it as service "fetchpop", USER@HOST ...
        code, output = run_on_pty(
            home,
            "password",
            "set",
            "acct",
            env=env,
            answers=[(b"Password for alice@localhost: ", SECRET), (b"Again: ", SECRET)],
        )
        assert code == 0, output
        assert "acct: password stored in the system keyring" in output
        assert SECRET not in output
        assert json.loads(store.read_text())["fetchpop"]["alice@localhost"] == SECRET
        # ... where sync finds it.
        result = home.run("sync", env=env)
        assert result.code == 0, result
        assert server.sessions[-1].user == USER
    assert maildir_messages(mail) == [MESSAGE]


# -- 9. Hostile identifiers -------------------------------------------------------------

HOSTILE_UIDLS = [
    "../../etc/passwd",
    "a/b",
    "/etc/shadow",
    "..",
    "new",
    "L" * 300,
    "esc\x1b]0;owned\x07\x1b[2Jend",
    "csi\u009b31mred",
]
CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")
MAILDIR_NAME = re.compile(r"\d+\.M\d+P\d+Q\d+\.[^/]+,S=\d+")


def test_hostile_uidls_stay_out_of_paths_and_terminals(
    ca: trustme.CA, ca_file: Path, home: Home, tmp_path: Path
) -> None:
    messages = [b"Subject: %d\n\nbody %d\n" % (n, n) for n in range(len(HOSTILE_UIDLS))]
    escape = HOSTILE_UIDLS.index("esc\x1b]0;owned\x07\x1b[2Jend") + 1
    deep = tmp_path / "deep"
    mail = deep / "Mail"
    with serving(
        Mailbox(messages, uidls=HOSTILE_UIDLS),
        tls_context=make_server_context(ca, "localhost"),
        implicit_tls=True,
        faults=[Fault(f"RETR {escape}", vanish())],  # its UIDL goes into a warning
    ) as server:
        home.write_config(fake_account(server, mail, ca_file=ca_file))
        result = home.run("-vv", "sync")
        assert result.code == 0, result
        assert "vanished before it could be fetched" in result.stderr
        check = home.run("-v", "check")
        assert check.code == 0, check
        assert "fetch esc?]0;owned??[2Jend" in check.stdout
    for output in (result.stdout, result.stderr, check.stdout, check.stderr):
        assert not CONTROL.search(output), output
    delivered = sorted(p.read_bytes() for p in (mail / "new").iterdir())
    assert delivered == sorted(m for n, m in enumerate(messages, 1) if n != escape)
    assert sorted(p.name for p in deep.iterdir()) == ["Mail"]
    for path in tmp_path.rglob("*"):
        if path.is_file() and home.root not in path.parents:
            assert path.parent == mail / "new", path
            assert MAILDIR_NAME.fullmatch(path.name), path.name


def test_overlong_uidl_is_a_protocol_error(
    ca: trustme.CA, ca_file: Path, home: Home, tmp_path: Path
) -> None:
    mail = tmp_path / "Mail"
    with serving(
        Mailbox([MESSAGE], uidls=["U" * 5000]),
        tls_context=make_server_context(ca, "localhost"),
        implicit_tls=True,
    ) as server:
        home.write_config(fake_account(server, mail, ca_file=ca_file))
        result = home.run("sync")
        assert result.code == 76, result
        assert "UIDL" in error_line(result)
        assert len(result.stderr) < 500  # the id is not printed whole
        assert server.commands_named("RETR") == []
    assert maildir_messages(mail) == []


def test_serverinfo_shows_a_hostile_certificates_names_safely(home: Home, tmp_path: Path) -> None:
    """A certificate's subject and issuer are the server's text: escapes in
    them (window title, screen clear) never reach the terminal or --json."""
    import trustme
    from fakepop import FakePOP3, make_server_context

    hostile = "Evil\x1b]0;PWNED\x07\x1b[2J\u202eCorp"
    ca = trustme.CA(organization_name=hostile)
    context = make_server_context(ca, "localhost")
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    with FakePOP3([MESSAGE], tls_context=context, implicit_tls=True) as server:
        home.write_config(
            account_toml(
                "acct",
                host="localhost",
                port=server.port,
                tls="implicit",
                ca_file=str(ca_file),
                user="alice",
                password="secret",
                deliver=f"maildir:{tmp_path / 'Mail'}",
            )
        )
        shown = home.run("serverinfo", "acct")
        as_json = home.run("--json", "serverinfo", "acct")
    assert shown.code == 0 and as_json.code == 0, (shown, as_json)
    (issuer,) = [line for line in shown.stdout.splitlines() if "issuer:" in line]
    assert "Evil" in issuer and "Corp" in issuer
    for text in (shown.stdout, shown.stderr, as_json.stdout):
        assert "\x1b" not in text and "\x07" not in text and "\u202e" not in text
        assert "\\u202e" not in text.lower() and "\\u001b" not in text.lower()
