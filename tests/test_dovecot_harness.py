"""Self-tests of the real-Dovecot harness (tests/dovecot.py, tests/corpus.py).

They also pin down exactly which bytes Dovecot 2.3 changes, so the fetchpop
integration tests can compare delivered mail with ``server_messages()``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import poplib
import socket
import ssl
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from contextlib import closing
from pathlib import Path

import pytest
from corpus import HARD_SPECIAL_COUNT, hard_messages, small_messages
from dovecot import (
    DEFAULT_PASSWORD,
    DEFAULT_USER,
    Dovecot,
    DovecotError,
    DovecotUser,
    require_dovecot,
)

pytestmark = pytest.mark.dovecot

ALL_MECHS = "plain login cram-md5 scram-sha-1 scram-sha-256 apop"


def served(raw: bytes) -> bytes:
    """What Dovecot serves for a Maildir file of LF-terminated lines."""
    return raw if raw.endswith(b"\n") else raw + b"\n"


def raw_capa(port: int, *, tls_ctx: ssl.SSLContext | None = None) -> list[str]:
    with socket.create_connection((Dovecot.host, port), timeout=10) as raw:
        sock = tls_ctx.wrap_socket(raw, server_hostname="localhost") if tls_ctx else raw
        with closing(sock), sock.makefile("rb") as f:
            assert f.readline().startswith(b"+OK")
            sock.sendall(b"CAPA\r\n")
            assert f.readline().startswith(b"+OK")
            lines = []
            while (line := f.readline()) != b".\r\n":
                lines.append(line.decode().rstrip("\r\n"))
            sock.sendall(b"QUIT\r\n")
            return lines


def test_capa_plain_port(dovecot: Dovecot) -> None:
    capa = raw_capa(dovecot.port)
    print("CAPA (plain port):", capa)
    for needed in ("UIDL", "TOP", "PIPELINING", "USER", "STLS", "RESP-CODES", "AUTH-RESP-CODE"):
        assert needed in capa
    assert "SASL PLAIN LOGIN" in capa


def test_capa_tls_port_has_no_stls(dovecot: Dovecot) -> None:
    ctx = ssl.create_default_context(cafile=str(dovecot.ca_file))
    capa = raw_capa(dovecot.tls_port, tls_ctx=ctx)
    assert "STLS" not in capa
    assert {"UIDL", "TOP", "PIPELINING", "USER"} <= set(capa)


@pytest.mark.parametrize("server_hostname", ["localhost", "127.0.0.1"])
def test_implicit_tls_verifies_with_ca_file(mailbox: DovecotUser, server_hostname: str) -> None:
    server, user, password, _ = mailbox
    ctx = ssl.create_default_context(cafile=str(server.ca_file))
    with (
        socket.create_connection((server.host, server.tls_port), timeout=10) as raw,
        ctx.wrap_socket(raw, server_hostname=server_hostname) as tls,
    ):
        assert tls.version() in ("TLSv1.2", "TLSv1.3")
    client = poplib.POP3_SSL("localhost", server.tls_port, context=ctx, timeout=10)
    try:
        client.user(user)
        client.pass_(password)
        assert client.stat() == (0, 0)
        client.quit()
    finally:
        client.close()


def test_implicit_tls_rejects_unknown_ca(dovecot: Dovecot) -> None:
    ctx = ssl.create_default_context()  # system CAs only
    with (
        socket.create_connection((dovecot.host, dovecot.tls_port), timeout=10) as raw,
        pytest.raises(ssl.SSLCertVerificationError),
    ):
        ctx.wrap_socket(raw, server_hostname="localhost").close()


def test_stls_on_plain_port(mailbox: DovecotUser) -> None:
    server, user, password, _ = mailbox
    server.add_message(user, b"Subject: stls\n\nhello\n")
    ctx = ssl.create_default_context(cafile=str(server.ca_file))
    client = poplib.POP3(server.host, server.port, timeout=10)
    try:
        client.stls(ctx)
        assert isinstance(client.sock, ssl.SSLSocket)
        assert "STLS" not in client.capa()
        client.user(user)
        client.pass_(password)
        assert client.stat()[0] == 1
        client.quit()
    finally:
        client.close()


def test_other_certificates_from_the_ca(dovecot: Dovecot, tmp_path: Path) -> None:
    cert = dovecot.ca.issue_cert("client.test")
    cert.private_key_and_cert_chain_pem.write_to_path(str(tmp_path / "client.pem"))
    assert (tmp_path / "client.pem").stat().st_size > 0


# --------------------------------------------------------- authentication ----


def _cmd(client: poplib.POP3, line: str) -> bytes:
    client.sock.sendall(line.encode() + b"\r\n")
    return client.file.readline().rstrip(b"\r\n")


def _scram(client: poplib.POP3, user: str, password: str, hash_name: str) -> bytes:
    mech = "SCRAM-SHA-1" if hash_name == "sha1" else "SCRAM-SHA-256"
    nonce = base64.b64encode(os.urandom(18)).decode()
    first_bare = f"n={user},r={nonce}"
    resp = _cmd(client, f"AUTH {mech} " + base64.b64encode(b"n,," + first_bare.encode()).decode())
    assert resp.startswith(b"+ "), resp
    server_first = base64.b64decode(resp[2:]).decode()
    fields = dict(kv.split("=", 1) for kv in server_first.split(","))
    assert fields["r"].startswith(nonce)
    salted = hashlib.pbkdf2_hmac(
        hash_name, password.encode(), base64.b64decode(fields["s"]), int(fields["i"])
    )
    client_key = hmac.digest(salted, b"Client Key", hash_name)
    stored_key = hashlib.new(hash_name, client_key).digest()
    final_no_proof = f"c=biws,r={fields['r']}"
    auth_message = f"{first_bare},{server_first},{final_no_proof}".encode()
    signature = hmac.digest(stored_key, auth_message, hash_name)
    proof = bytes(a ^ b for a, b in zip(client_key, signature, strict=True))
    final = f"{final_no_proof},p={base64.b64encode(proof).decode()}"
    resp = _cmd(client, base64.b64encode(final.encode()).decode())
    if resp.startswith(b"+ "):  # server-final with v=...; empty response completes
        server_key = hmac.digest(salted, b"Server Key", hash_name)
        expected_v = base64.b64encode(hmac.digest(server_key, auth_message, hash_name))
        assert base64.b64decode(resp[2:]) == b"v=" + expected_v
        resp = _cmd(client, "")
    return resp


@pytest.fixture(scope="module")
def all_mechs_server() -> Iterator[Dovecot]:
    """A server offering every mechanism, shared by this module's auth tests."""
    require_dovecot()
    with Dovecot(auth_mechanisms=ALL_MECHS) as server:
        yield server


def test_sasl_mechanisms_advertised(all_mechs_server: Dovecot) -> None:
    capa = raw_capa(all_mechs_server.port)
    sasl = next(c for c in capa if c.startswith("SASL "))
    assert set(sasl.split()[1:]) == {"PLAIN", "LOGIN", "CRAM-MD5", "SCRAM-SHA-1", "SCRAM-SHA-256"}
    # APOP is not a SASL mechanism: it shows up as a timestamp in the greeting.
    with all_mechs_server.pop3() as client:
        assert b"<" in client.getwelcome()


def test_apop(all_mechs_server: Dovecot) -> None:
    client = poplib.POP3(all_mechs_server.host, all_mechs_server.port, timeout=10)
    try:
        assert client.apop(DEFAULT_USER, DEFAULT_PASSWORD).startswith(b"+OK")
        client.quit()
    finally:
        client.close()
    client = poplib.POP3(all_mechs_server.host, all_mechs_server.port, timeout=10)
    try:
        with pytest.raises(poplib.error_proto):
            client.apop(DEFAULT_USER, "wrong")
    finally:
        client.close()


def test_no_apop_timestamp_by_default(dovecot: Dovecot) -> None:
    with dovecot.pop3() as client:
        assert b"<" not in client.getwelcome()


def test_cram_md5_and_plain(all_mechs_server: Dovecot) -> None:
    server = all_mechs_server
    with closing(poplib.POP3(server.host, server.port, timeout=10)) as client:
        resp = _cmd(client, "AUTH CRAM-MD5")
        challenge = base64.b64decode(resp[2:])
        digest = hmac.new(DEFAULT_PASSWORD.encode(), challenge, "md5").hexdigest()
        answer = base64.b64encode(f"{DEFAULT_USER} {digest}".encode()).decode()
        assert _cmd(client, answer).startswith(b"+OK")
        client.quit()
    with closing(poplib.POP3(server.host, server.port, timeout=10)) as client:
        token = base64.b64encode(f"\0{DEFAULT_USER}\0{DEFAULT_PASSWORD}".encode()).decode()
        assert _cmd(client, "AUTH PLAIN " + token).startswith(b"+OK")
        client.quit()


@pytest.mark.parametrize("hash_name", ["sha1", "sha256"])
def test_scram(all_mechs_server: Dovecot, hash_name: str) -> None:
    server = all_mechs_server
    with closing(poplib.POP3(server.host, server.port, timeout=10)) as client:
        assert _scram(client, DEFAULT_USER, DEFAULT_PASSWORD, hash_name).startswith(b"+OK")
        client.quit()
    with closing(poplib.POP3(server.host, server.port, timeout=10)) as client:
        assert _scram(client, DEFAULT_USER, "wrong", hash_name).startswith(b"-ERR")


def test_wrong_password_no_penalty_for_next_login(mailbox: DovecotUser) -> None:
    server, user, _, _ = mailbox
    for _ in range(2):
        with pytest.raises(poplib.error_proto, match="AUTH"), server.pop3(user, "wrong"):
            pass
    start = time.monotonic()
    assert server.count(user) == 0
    assert time.monotonic() - start < 1.0  # no anvil auth penalty (2..15 s)


def test_disable_plaintext_auth_applies_to_insecure_source(
    dovecot_factory: Callable[..., Dovecot],
) -> None:
    server = dovecot_factory(disable_plaintext_auth=True)
    for source, allowed in ((server.host, True), (server.insecure_source, False)):
        with (
            socket.create_connection(
                (server.host, server.port), timeout=10, source_address=(source, 0)
            ) as sock,
            sock.makefile("rb") as f,
        ):
            assert f.readline().startswith(b"+OK")
            sock.sendall(b"USER alice\r\n")
            assert f.readline().startswith(b"+OK" if allowed else b"-ERR")


def test_user_added_while_running_can_log_in_at_once(dovecot: Dovecot) -> None:
    warm = dovecot.new_mailbox("warm")  # a lookup in this second
    try:
        assert dovecot.count(warm.user) == 0
    finally:
        dovecot.remove_user(warm.user)
    for _ in range(5):
        box = dovecot.new_mailbox("fresh")
        try:
            assert dovecot.count(box.user) == 0
        finally:
            dovecot.remove_user(box.user)


# ------------------------------------------------------------- messages ----


def test_hard_corpus_round_trip(mailbox: DovecotUser) -> None:
    server, user, password, maildir = mailbox
    msgs = hard_messages()
    assert len(msgs) == 300 and max(map(len, msgs)) > 20 * 1024 * 1024
    server.add_messages(user, msgs)
    assert len(os.listdir(maildir / "new")) == 300

    got = server.server_messages(user)

    assert len(got) == len(msgs)
    for i, (want, have) in enumerate(zip(msgs, got, strict=True)):
        assert have == served(want), f"message {i + 1} altered"
    # Only the missing final newline differs; the corpus has such messages.
    assert sum(not m.endswith(b"\n") for m in msgs) >= 2
    # LIST sizes: LF counted as CRLF, the CRLF added for a missing final
    # newline NOT counted (so up to 2 octets less than what RETR sends).
    with server.pop3(user, password) as client:
        sizes = [int(line.split()[1]) for line in client.list()[1]]
    assert sizes == [len(m) + m.count(b"\n") for m in msgs]


def test_corpus_is_deterministic_and_has_the_cases() -> None:
    a = hard_messages(40, big_size=4096)
    assert a == hard_messages(40, big_size=4096)
    assert a != hard_messages(40, big_size=4096, seed=99)
    assert len(hard_messages(HARD_SPECIAL_COUNT, big_size=1000)) == HARD_SPECIAL_COUNT
    with pytest.raises(ValueError):
        hard_messages(3)
    lines = {line for m in a for line in m.split(b"\n")}
    assert {b".", b"..", b".x", b"..."} <= lines
    assert any(line.startswith(b"From ") for line in lines)
    assert any(line.startswith(b">From ") for line in lines)
    assert any(line.startswith(b">>From ") for line in lines)
    assert max(map(len, lines)) >= 5000
    assert any(b"\0" in m for m in a)
    assert any(b"\r" in line for line in lines)
    headers = [m.split(b"\n\n", 1)[0] for m in a]
    assert any(b"\xc3\xb6" in h for h in headers)  # raw UTF-8 header
    assert any(b"\xf6" in h and b"\xc3\xb6" not in h for h in headers)  # raw Latin-1 header
    assert any(b"\n\n" not in m for m in a)  # header-only
    assert any(m.endswith(b"\n\n") for m in a)  # empty body
    big = [m for m in a if b"big attachment" in m]
    assert len(big) == 1 and len(big[0]) > 4096
    small = small_messages(5, 4096)
    assert [len(m) for m in small] == [4096] * 5 and len(set(small)) == 5


def test_dovecot_byte_alterations(mailbox: DovecotUser) -> None:
    """Exactly what Dovecot 2.3 changes (apart from LF -> CRLF on the wire)."""
    server, user, _, _ = mailbox
    cases = [
        # kept verbatim: NUL, lone CR, 8-bit, dot lines (stuffed on the wire)
        (b"Subject: nul\n\na\x00b\n\x00\n", b"Subject: nul\n\na\x00b\n\x00\n"),
        (b"Subject: cr\n\na\rb\n\rc\n", b"Subject: cr\n\na\rb\n\rc\n"),
        (b"Subject: 8bit \xe4\xf6\n\n\xff\xfe\n", b"Subject: 8bit \xe4\xf6\n\n\xff\xfe\n"),
        (b"Subject: dots\n\n.\n..\n.x\n", b"Subject: dots\n\n.\n..\n.x\n"),
        # missing final newline: CRLF appended
        (b"Subject: x\n\nno newline", b"Subject: x\n\nno newline\n"),
        (b"Subject: x\n\n.", b"Subject: x\n\n.\n"),
        # an empty (0-byte) file is served as one empty line
        (b"", b"\n"),
        # CR LF in the file is just a line end (a CR before it survives)
        (b"Subject: crlf\r\n\r\nline\r\nx\r\r\n", b"Subject: crlf\n\nline\nx\r\n"),
        (b"Subject: cr\n\na\rb\n\r\n", b"Subject: cr\n\na\rb\n\n"),
        # a trailing CR without LF: CRLF appended after it
        (b"Subject: x\n\nab\r", b"Subject: x\n\nab\r\n"),
    ]
    server.add_messages(user, [raw for raw, _ in cases])
    assert server.server_messages(user) == [want for _, want in cases]


def test_message_added_between_sessions_is_seen(mailbox: DovecotUser) -> None:
    server, user, password, _ = mailbox
    for i in range(1, 16):  # many times within the same second
        server.add_message(user, b"Subject: %d\n\nbody\n" % i)
        assert server.count(user) == i
    uidls = server.uidls(user)
    # A message added while a session is open shows up only in the next one.
    # NB: the snapshot is taken when the pop3 process starts, which can be
    # just after pop3-login's "+OK" to PASS, so issue a command first.
    with server.pop3(user, password) as client:
        assert client.stat()[0] == 15
        server.add_message(user, b"Subject: late\n\nlate\n")
        assert client.stat()[0] == 15
        assert len(client.uidl()[1]) == 15
    assert server.count(user) == 16
    assert server.uidls(user)[:15] == uidls  # UIDLs are stable
    assert server.server_messages(user)[-1] == b"Subject: late\n\nlate\n"


def test_uidls_stable_after_dele(mailbox: DovecotUser) -> None:
    server, user, password, _ = mailbox
    server.add_messages(user, small_messages(5, 500))
    before = server.uidls(user)
    assert len(set(before)) == 5 and all(len(u) == 16 for u in before)
    with server.pop3(user, password) as client:
        client.dele(2)
    assert server.uidls(user) == before[:1] + before[2:]


def test_add_2000_messages_fast(mailbox: DovecotUser) -> None:
    server, user, _, _ = mailbox
    msgs = small_messages(2000)
    start = time.perf_counter()
    server.add_messages(user, msgs)
    elapsed = time.perf_counter() - start
    print(f"add_messages(2000) took {elapsed:.3f} s in {server.root}")
    assert elapsed < 5.0  # ~0.05 s on tmpfs, ~1 s on a slow disk
    assert server.server_messages(user) == msgs  # order preserved


# ------------------------------------------------------------- lifecycle ----


def test_stop_leaves_no_processes(dovecot_factory: Callable[..., Dovecot]) -> None:
    server = dovecot_factory()
    assert server.running
    pgid = server._proc.pid  # type: ignore[union-attr]
    root = server.root
    start = time.monotonic()
    server.stop()
    print(f"stop took {time.monotonic() - start:.3f} s")
    assert not server.running
    assert not root.exists()
    with pytest.raises(ProcessLookupError):
        os.killpg(pgid, 0)
    server.stop()  # idempotent


def test_startup_time(dovecot_factory: Callable[..., Dovecot]) -> None:
    start = time.monotonic()
    dovecot_factory()
    elapsed = time.monotonic() - start
    print(f"Dovecot startup took {elapsed:.3f} s")
    assert elapsed < 10


def test_startup_failure_reports_log() -> None:
    server = Dovecot(extra_config="no_such_setting_xyz = 1\n")
    with pytest.raises(DovecotError, match="no_such_setting_xyz"):
        server.start()
    assert not server.running


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to switch to an unprivileged user")
def test_works_as_unprivileged_user() -> None:
    """Run the harness as 'nobody' (same code path as a non-root developer)."""
    here = Path(__file__).parent
    script = textwrap.dedent(
        f"""
        import os, socket, ssl, sys
        sys.path.insert(0, {str(here)!r})
        import trustme
        from dovecot import Dovecot
        # Import lazily-loaded modules while /root is still readable.
        trustme.CA().issue_cert("x").private_key_pem.bytes()
        ssl.create_default_context(); "x".encode("idna"); socket.getaddrinfo("127.0.0.1", 1)
        os.setgroups([]); os.setgid(65534); os.setuid(65534)
        with Dovecot() as d:
            assert d.login_user == d.internal_user != "root"
            d.add_message("alice", b"Subject: x\\n\\nhi")
            assert d.server_messages("alice") == [b"Subject: x\\n\\nhi\\n"], d.log_text()
            ctx = ssl.create_default_context(cafile=str(d.ca_file))
            with socket.create_connection((d.host, d.tls_port)) as raw:
                ctx.wrap_socket(raw, server_hostname="localhost").close()
            assert not d.log_errors(), d.log_errors()
        print("OK")
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, cwd="/"
    )
    assert proc.returncode == 0 and proc.stdout.strip() == "OK", proc.stderr
