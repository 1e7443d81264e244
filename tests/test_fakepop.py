"""Self-tests of the fake POP3 server, with the stdlib's poplib (and raw sockets
where poplib cannot express a fault) as the client."""

from __future__ import annotations

import base64
import json
import poplib
import socket
import ssl
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager
from typing import Any

import pytest
import trustme
from fakepop import (
    ERR_AUTH,
    ERR_IN_USE,
    ERR_NO_SUCH_MESSAGE,
    OK_BEGIN_TLS,
    OK_BYE,
    OK_LOGGED_IN,
    XOAUTH2_ERROR,
    FakePOP3,
    Fault,
    Mailbox,
    drip,
    drop,
    endless,
    err,
    inject_after_stls,
    make_client_context,
    make_server_context,
    no_handshake,
    no_quit_reply,
    reply,
    reset,
    stall,
    truncate_multiline,
    vanish,
)

MESSAGES = [
    b"Subject: one\n\nhello\n.dot line\n",
    b"Subject: two\r\n\r\nbody 2\r\nline 2\r\nline 3\r\n",
]
WIRE_1 = b"Subject: one\r\n\r\nhello\r\n.dot line\r\n"  # what octet counts refer to


@contextmanager
def running(*args: Any, **kwargs: Any) -> Iterator[FakePOP3]:
    """A started server whose recorded errors must be empty once it has stopped."""
    server = FakePOP3(*args, **kwargs)
    with server:
        yield server
    assert server.errors == []


def pop(server: FakePOP3) -> poplib.POP3:
    return poplib.POP3(server.host, server.port, timeout=5)


def connect(server: FakePOP3) -> socket.socket:
    return socket.create_connection((server.host, server.port), timeout=5)


def read_until(sock: socket.socket, end: bytes) -> bytes:
    data = b""
    while not data.endswith(end):
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def read_all(sock: socket.socket) -> bytes:
    return read_until(sock, b"\0never")


def login(client: poplib.POP3) -> None:
    client.user("alice")
    client.pass_("secret")


# -- normal behaviour ------------------------------------------------------------


def test_normal_session() -> None:
    with running(MESSAGES) as server, closing(pop(server)) as client:
        assert client.getwelcome().startswith(b"+OK fakepop ready <")
        assert "UIDL" in client.capa()
        login(client)
        size_2 = len(MESSAGES[1])
        assert client.stat() == (2, len(WIRE_1) + size_2)
        assert client.list()[1] == [b"1 %d" % len(WIRE_1), b"2 %d" % size_2]
        assert client.uidl()[1] == [b"1 uid-1", b"2 uid-2"]
        assert client.uidl(2) == b"+OK 2 uid-2"
        assert client.retr(1)[1] == [b"Subject: one", b"", b"hello", b".dot line"]
        assert client.top(2, 1)[1] == [b"Subject: two", b"", b"body 2"]
        with pytest.raises(poplib.error_proto, match="no such message"):
            client.retr(3)
        assert client.quit() == OK_BYE.strip()
    [session] = server.sessions
    assert session.quit_answered and not session.tls and session.user == "alice"
    assert session.commands[:3] == [b"CAPA", b"USER alice", b"PASS secret"]
    assert server.commands_named("retr") == ["1", "3"]


def test_deletions_applied_only_after_quit_ok() -> None:
    faults = [Fault(on="QUIT", action=no_quit_reply(), session=1)]
    with running(MESSAGES, faults=faults) as server:
        with closing(pop(server)) as client:  # 0: DELE, then hang up without QUIT
            login(client)
            client.dele(1)
        assert server.wait_sessions(1)
        with closing(pop(server)) as client:  # 1: QUIT read but never answered
            login(client)
            client.dele(1)
            with pytest.raises(poplib.error_proto, match="EOF"):
                client.quit()
        assert server.wait_sessions(2)
        assert len(server.mailbox.messages) == 2
        with closing(pop(server)) as client:  # 2: QUIT answered: UPDATE
            login(client)
            client.dele(1)
            with pytest.raises(poplib.error_proto, match="already deleted"):
                client.retr(1)
            client.quit()
        assert server.mailbox.uidls == ["uid-2"]
        with closing(pop(server)) as client:  # 3: the next session sees the change
            login(client)
            assert client.stat()[0] == 1
            client.quit()
    assert [s.quit_answered for s in server.sessions] == [False, False, True, True]
    assert server.sessions[0].closed_by_client and not server.sessions[1].closed_by_client
    assert server.commands_named("DELE") == ["1", "1", "1"]


def test_rset_undeletes() -> None:
    with running(MESSAGES) as server, closing(pop(server)) as client:
        login(client)
        client.dele(2)
        client.rset()
        client.quit()
    assert len(server.mailbox.messages) == 2


def test_pipelined_commands_in_one_send() -> None:
    lines = [b"USER alice", b"PASS secret", b"STAT", b"RETR 1", b"DELE 1", b"NOOP", b"QUIT"]
    with running(MESSAGES) as server, closing(connect(server)) as sock:
        read_until(sock, b"\r\n")
        sock.sendall(b"".join(line + b"\r\n" for line in lines))
        data = read_all(sock)
    assert data == (
        b"+OK send PASS\r\n+OK logged in\r\n+OK 2 %d\r\n" % (len(WIRE_1) + len(MESSAGES[1]))
        + b"+OK %d octets\r\n" % len(WIRE_1)
        + b"Subject: one\r\n\r\nhello\r\n..dot line\r\n.\r\n"
        + b"+OK message deleted\r\n+OK\r\n+OK bye\r\n"
    )
    assert server.sessions[0].commands == lines
    assert server.mailbox.uidls == ["uid-2"]


def test_apop_and_bad_password() -> None:
    with running(MESSAGES) as server, closing(pop(server)) as client:
        with pytest.raises(poplib.error_proto, match=r"\[AUTH\]"):
            client.apop("alice", "wrong")
        client.apop("alice", "secret")
        assert client.stat()[0] == 2
        client.quit()
    assert server.sessions[0].user == "alice"


# -- TLS -------------------------------------------------------------------------


def test_stls_upgrade(ca: trustme.CA) -> None:
    context = make_server_context(ca, "127.0.0.1")
    with running(MESSAGES, tls_context=context) as server, closing(pop(server)) as client:
        assert "STLS" in client.capa()
        client.stls(make_client_context(ca))
        assert "STLS" not in client.capa()  # RFC 2595 section 4
        login(client)
        assert client.stat()[0] == 2
        client.quit()
    assert server.sessions[0].tls and server.sessions[0].quit_answered


def test_implicit_tls(ca: trustme.CA) -> None:
    context = make_server_context(ca, "127.0.0.1")
    with running(MESSAGES, tls_context=context, implicit_tls=True) as server:
        client = poplib.POP3_SSL(server.host, server.port, context=make_client_context(ca))
        with closing(client):
            login(client)
            assert client.retr(2)[1][-1] == b"line 3"
            client.quit()
    assert server.sessions[0].tls


def test_expired_certificate_is_a_session_error(ca: trustme.CA) -> None:
    context = make_server_context(ca, "127.0.0.1", expired=True)
    with running(MESSAGES, tls_context=context, implicit_tls=True) as server:
        with pytest.raises(ssl.SSLCertVerificationError, match="expired"):
            poplib.POP3_SSL(server.host, server.port, context=make_client_context(ca), timeout=5)
        assert server.wait_sessions(1)
    [session] = server.sessions
    assert session.error is not None and not session.tls and session.commands == []


def test_tls_1_0_only_server(ca: trustme.CA) -> None:
    old = ssl.TLSVersion.TLSv1
    context = make_server_context(ca, "127.0.0.1", tls_max_version=old)
    with running(tls_context=context, implicit_tls=True) as server:
        with pytest.raises(ssl.SSLError):  # a modern client refuses
            poplib.POP3_SSL(server.host, server.port, context=make_client_context(ca), timeout=5)
        try:
            client = poplib.POP3_SSL(
                server.host, server.port, context=make_client_context(ca, tls_max_version=old)
            )
        except ssl.SSLError as exc:
            pytest.skip(f"local OpenSSL cannot do TLS 1.0 even at @SECLEVEL=0: {exc}")
        with closing(client):
            assert isinstance(client.sock, ssl.SSLSocket)
            assert client.sock.version() == "TLSv1"
            client.quit()


def test_inject_after_stls_and_no_handshake(ca: trustme.CA) -> None:
    faults = [
        Fault(on="STLS", action=inject_after_stls(b"+OK injected\r\n"), session=0),
        Fault(on="STLS", action=no_handshake(), session=1),
    ]
    with running(tls_context=make_server_context(ca), faults=faults) as server:
        with closing(connect(server)) as sock:
            read_until(sock, b"\r\n")
            sock.sendall(b"STLS\r\n")
            assert read_until(sock, b"injected\r\n") == OK_BEGIN_TLS + b"+OK injected\r\n"
        with closing(connect(server)) as sock:
            read_until(sock, b"\r\n")
            sock.sendall(b"STLS\r\nCAPA\r\n")  # also: plaintext pipelined after STLS
            assert read_until(sock, b"\r\n") == OK_BEGIN_TLS
            sock.settimeout(0.2)
            with pytest.raises(TimeoutError):
                sock.recv(1)
    assert server.sessions[1].commands == [b"STLS"]
    assert server.sessions[1].received == b"STLS\r\nCAPA\r\n"
    assert all(s.closed_by_client and not s.tls for s in server.sessions)


# -- faults ----------------------------------------------------------------------


def test_drop_mid_retr_then_recover() -> None:
    faults = [Fault(on="RETR 1", action=drop(after=30), times=1)]
    with running(MESSAGES, faults=faults) as server:
        with closing(pop(server)) as client:
            login(client)
            with pytest.raises(poplib.error_proto, match="EOF"):
                client.retr(1)
        with closing(pop(server)) as client:
            login(client)
            assert client.retr(1)[1][0] == b"Subject: one"
            client.quit()
    assert not server.sessions[0].closed_by_client and not server.sessions[0].quit_answered
    assert faults[0].fired == 1 and faults[0].seen == 2


def test_stall_is_released_at_shutdown() -> None:
    server = FakePOP3(faults=[Fault(on="greeting", action=stall())])
    with server, closing(connect(server)) as sock:
        sock.settimeout(0.2)
        with pytest.raises(TimeoutError):
            sock.recv(1)
        started = time.monotonic()
        server.close()
        assert time.monotonic() - started < 1
        sock.settimeout(5)
        assert sock.recv(1) == b""
    assert server.errors == []


def test_server_without_capa() -> None:
    with running(MESSAGES, capa=None) as server, closing(pop(server)) as client:
        with pytest.raises(poplib.error_proto, match="CAPA not supported"):
            client.capa()
        login(client)
        client.quit()
    assert server.sessions[0].commands[0] == b"CAPA"


def test_nth_and_greeting_faults() -> None:
    faults = [
        Fault(on="greeting", action=err(ERR_IN_USE), session=0),
        Fault(on="greeting", action=reply(b"garbage\n"), session=1),
        Fault(on="STAT", action=vanish(), nth=2),
        Fault(on="LIST 1", action=reply(b"+OK 1 999999999\r\n")),
    ]
    with running(MESSAGES, faults=faults) as server:
        with closing(connect(server)) as sock:
            assert read_all(sock) == ERR_IN_USE
        with closing(connect(server)) as sock:
            assert read_until(sock, b"\n") == b"garbage\n"
        with closing(pop(server)) as client:
            login(client)
            assert client.stat()[0] == 2
            with pytest.raises(poplib.error_proto, match="no such message"):
                client.stat()
            scan: object = client.list(1)  # typeshed says tuple; one message gives bytes
            assert scan == b"+OK 1 999999999"
            client.quit()


LOGGED_IN = b"+OK send PASS\r\n" + OK_LOGGED_IN
RETR_1 = b"+OK %d octets\r\n" % len(WIRE_1) + WIRE_1.replace(b"\n.", b"\n..")


@pytest.mark.parametrize(
    ("action", "expected"),
    [
        (truncate_multiline(), RETR_1),  # no ".\r\n", then EOF
        (drip(bytes_per_second=2000, chunk=4), RETR_1 + b".\r\n" + OK_BYE),
        (vanish(), ERR_NO_SUCH_MESSAGE + OK_BYE),
    ],
)
def test_retr_faults_raw(action: Any, expected: bytes) -> None:
    faults = [Fault(on="RETR", action=action)]
    with running(MESSAGES, faults=faults) as server, closing(connect(server)) as sock:
        read_until(sock, b"\r\n")
        sock.sendall(b"USER alice\r\nPASS secret\r\nRETR 1\r\nQUIT\r\n")
        assert read_all(sock) == LOGGED_IN + expected


def test_reset_is_a_connection_reset() -> None:
    faults = [Fault(on="USER", action=reset())]
    with running(MESSAGES, faults=faults) as server, closing(connect(server)) as sock:
        read_until(sock, b"\r\n")
        sock.sendall(b"USER alice\r\n")
        with pytest.raises(ConnectionResetError):
            read_all(sock)


def test_endless_stops_when_the_client_goes() -> None:
    with running(MESSAGES, faults=[Fault(on="RETR", action=endless())]) as server:
        with closing(connect(server)) as sock:
            read_until(sock, b"\r\n")
            sock.sendall(b"USER alice\r\nPASS secret\r\nRETR 1\r\n")
            received = 0
            while received < 2_000_000:
                received += len(sock.recv(65536))
        assert server.wait_sessions(1)
    assert server.sessions[0].closed_by_client


# -- SASL ------------------------------------------------------------------------


def b64(data: bytes) -> bytes:
    return base64.b64encode(data)


def converse(server: FakePOP3, lines: list[bytes]) -> list[bytes]:
    """Send *lines* one at a time, returning the reply line to each."""
    with closing(connect(server)) as sock:
        read_until(sock, b"\r\n")
        replies = []
        for line in lines:
            sock.sendall(line + b"\r\n")
            replies.append(read_until(sock, b"\r\n"))
        return replies


def test_auth_plain() -> None:
    with running() as server:
        replies = converse(
            server,
            [b"AUTH PLAIN " + b64(b"\0alice\0wrong"), b"AUTH PLAIN " + b64(b"\0alice\0secret")],
        )
    assert replies == [ERR_AUTH, OK_LOGGED_IN]
    assert server.sessions[0].user == "alice"


def test_auth_xoauth2_two_step_and_google_failure() -> None:
    good = b64(b"user=alice\x01auth=Bearer tok123\x01\x01")
    bad = b64(b"user=alice\x01auth=Bearer nope\x01\x01")
    with running() as server:
        failed = converse(server, [b"AUTH XOAUTH2", bad, b""])
        passed = converse(server, [b"AUTH XOAUTH2", good])
    assert failed[0] == b"+ \r\n" and failed[2] == ERR_AUTH
    assert failed[1].startswith(b"+ ")
    assert json.loads(base64.b64decode(failed[1][2:])) == XOAUTH2_ERROR
    assert passed == [b"+ \r\n", OK_LOGGED_IN]
    assert [s.user for s in server.sessions] == [None, "alice"]


def test_auth_login_oauthbearer_and_cancel() -> None:
    bearer = b64(b"n,a=alice,\x01host=127.0.0.1\x01port=110\x01auth=Bearer tok123\x01\x01")
    with running() as server:
        login_replies = converse(server, [b"AUTH LOGIN", b64(b"alice"), b64(b"secret")])
        bearer_replies = converse(server, [b"AUTH OAUTHBEARER " + bearer])
        cancelled = converse(server, [b"AUTH PLAIN", b"*", b"AUTH CRAM-MD5"])
    assert login_replies == [
        b"+ " + b64(b"Username:") + b"\r\n",
        b"+ UGFzc3dvcmQ6\r\n",
        OK_LOGGED_IN,
    ]
    assert bearer_replies == [OK_LOGGED_IN]
    assert cancelled[1:] == [
        b"-ERR authentication cancelled\r\n",
        b"-ERR unsupported SASL mechanism\r\n",
    ]


def test_auth_scram_sha_256_with_fetchpop_client_mechanism() -> None:
    from fetchpop.pop3 import auth

    mech = auth.scram("sha256", "alice", "secret")
    with running() as server, closing(connect(server)) as sock:
        read_until(sock, b"\r\n")
        sock.sendall(b"AUTH SCRAM-SHA-256 " + b64(mech.initial_response()) + b"\r\n")
        while (line := read_until(sock, b"\r\n")).startswith(b"+ "):
            sock.sendall(b64(mech.respond(base64.b64decode(line[2:]))) + b"\r\n")
        assert line == OK_LOGGED_IN
        mech.verify_final(b"")


def test_mailbox_model() -> None:
    box = Mailbox([b"a\n", b"b"], uidls=["x", "y"])
    box.add(b"c\r\n")
    box.expunge([2])
    assert box.messages == [b"a\r\n", b"c\r\n"] and box.uidls == ["x", "uid-3"]
