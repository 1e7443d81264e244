"""The protocol transcript: complete, secrets hidden, and not even built without a sink."""

from __future__ import annotations

import base64
import collections
from typing import cast

import pytest

from fetchpop.errors import AuthError, ProtocolError
from fetchpop.pop3 import auth
from fetchpop.pop3 import client as client_module
from fetchpop.pop3.client import Client, Refusal
from fetchpop.pop3.transport import Transport

SERVER = [
    b"+OK ready\r\n",
    b"+OK\r\nUSER\r\nUIDL\r\nPIPELINING\r\n.\r\n",
    b"+OK\r\n+OK logged in\r\n",
    b"+OK\r\nUIDL\r\nPIPELINING\r\n.\r\n",
    b"+OK\r\n1 uid-a\r\n2 uid-b\r\n.\r\n+OK 2 messages\r\n1 7\r\n2 8\r\n.\r\n",
    b"+OK\r\nhello\r\n.\r\n-ERR [SYS/TEMP] gone\r\n",
    b"+OK deleted\r\n+OK bye\r\n",
]


class Script:
    """Hands out the server's replies in order; keeps what the client sends."""

    host = "script.example"
    timeout = 30.0

    def __init__(self, replies: list[bytes]) -> None:
        self._replies = collections.deque(replies)
        self.sent = b""

    def recv(self, wait: float | None = None) -> bytes:
        return self._replies.popleft() if self._replies else b""

    def send(self, data: bytes) -> None:
        self.sent += data

    def close(self) -> None:
        pass


def login(transport: Script, log: client_module.Log | None) -> Client:
    pop = Client(cast(Transport, transport), log=log)
    pop.capa()
    pop.user_pass("alice", "s3cret")
    return pop


def fetch(pop: Client) -> list[tuple[int, object]]:
    uidl, _ = pop.maildrop()
    got: list[tuple[int, object]] = []
    for number, body in pop.retrieve([(n, None) for n in uidl.numbers], window=2):
        got.append((number, body if isinstance(body, Refusal) else b"".join(body)))
    pop.delete_and_quit([1])
    return got


def test_transcript_with_a_sink() -> None:
    lines: list[str] = []
    fetch(login(Script(SERVER), lines.append))
    assert lines == [
        "S: +OK ready",
        "C: CAPA",
        "S: +OK  [3 lines]",
        "C: USER alice",
        "C: PASS ***",
        "S: +OK ",
        "S: +OK logged in",
        "C: CAPA",
        "C: UIDL",
        "C: LIST",
        "S: +OK  [2 lines]",
        "S: +OK  [2 lines]",
        "S: +OK 2 messages [2 lines]",
        "C: RETR 1",
        "C: RETR 2",
        "S: +OK ",
        "S: [10 octets]",
        "S: -ERR [SYS/TEMP] gone",
        "C: DELE 1",
        "S: +OK deleted",
        "C: QUIT",
        "S: +OK bye",
    ]


def test_no_sink_builds_no_log_lines(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*_: object) -> str:
        raise AssertionError("a log line was built with no one to read it")

    transport = Script(SERVER)
    pop = login(transport, None)
    for name in ("describe", "said", "cut"):
        monkeypatch.setattr(client_module, name, refuse)
    got = fetch(pop)
    assert got[0] == (1, b"hello\n")
    assert got[1][0] == 2
    assert transport.sent.endswith(b"RETR 1\r\nRETR 2\r\nDELE 1\r\nQUIT\r\n")


def test_echoed_password_is_hidden() -> None:
    lines: list[str] = []
    replies = [SERVER[0], SERVER[1], b"+OK\r\n-ERR [AUTH] s3cret is wrong\r\n"]
    with pytest.raises(AuthError) as caught:
        login(Script(replies), lines.append)
    assert "s3cret" not in str(caught.value)
    assert "S: -ERR [AUTH] *** is wrong" in lines
    assert not any("s3cret" in line for line in lines)


# -- echoed secrets, every path (issue 15, item 2) ----------------------------------

PASSWORD = "Pw-7x!Qz9kL#t"
CAPA = b"+OK\r\nUSER\r\nUIDL\r\nSASL PLAIN LOGIN SCRAM-SHA-256\r\n.\r\n"


def logged_in(replies: list[bytes], lines: list[str]) -> Client:
    pop = Client(cast(Transport, Script([b"+OK ready\r\n", CAPA, *replies])), log=lines.append)
    pop.capa()
    return pop


def test_a_listing_error_quoting_the_password_cut_short_hides_its_beginning() -> None:
    lines: list[str] = []
    bad = b"0 " + b"u" * 72 + PASSWORD.encode() + b"\r\n"
    pop = logged_in([b"+OK\r\n+OK\r\n", b"+OK\r\n" + bad + b".\r\n"], lines)
    pop.user_pass("alice", PASSWORD)
    with pytest.raises(ProtocolError) as caught:
        pop.uidl()
    # The line is cut at 80 characters, inside the password: its first 6 go too.
    assert str(caught.value) == (
        "malformed UIDL line (bad message number): 0 " + "u" * 72 + "***..."
    )


def test_capabilities_after_the_login_hide_the_password() -> None:
    lines: list[str] = []
    pop = logged_in(
        [b"+OK\r\n+OK\r\n", b"+OK\r\nIMPLEMENTATION " + PASSWORD.encode() + b"\r\n.\r\n"], lines
    )
    pop.user_pass("alice", PASSWORD)
    assert pop.capa() == {"IMPLEMENTATION": ["***"]}


def test_a_challenge_echoing_the_password_is_hidden() -> None:
    """Not base64 (so the error quotes it), and after the password was sent."""
    lines: list[str] = []
    pop = logged_in(
        [b"+ VXNlcm5hbWU6\r\n", b"+ UGFzc3dvcmQ6\r\n", b"+ Tm8h" + PASSWORD.encode() + b"\r\n"],
        lines,
    )
    with pytest.raises(ProtocolError) as caught:
        pop.sasl(auth.login("alice", PASSWORD))
    assert str(caught.value) == "server sent invalid base64: 'Tm8h***'"
    assert not any(PASSWORD in line for line in lines)


def test_a_scram_error_echoing_the_password_is_hidden() -> None:
    lines: list[str] = []
    error = base64.b64encode(f"e=wrong password {PASSWORD}".encode())
    pop = logged_in([b"+ " + error + b"\r\n", b"-ERR [AUTH] no\r\n"], lines)
    with pytest.raises(AuthError) as caught:
        pop.sasl(auth.scram("sha256", "alice", PASSWORD))
    assert str(caught.value) == "server refused SCRAM: wrong password ***"


def test_each_sasl_response_is_hidden_when_said_back() -> None:
    """SCRAM: the initial response's base64, the final one's, and the proof inside it."""
    lines: list[str] = []
    mech = auth.scram("sha256", "alice", PASSWORD, nonce="fixed-nonce")
    first = base64.b64encode(b"n,,n=alice,r=fixed-nonce").decode()
    server_first = base64.b64encode(b"r=fixed-nonceSERVER,s=c2FsdA==,i=4096")
    transport = Script([b"+OK ready\r\n", CAPA])
    pop = Client(cast(Transport, transport), log=lines.append)
    pop.capa()
    sent_first = False

    def recv(wait: float | None = None) -> bytes:
        nonlocal sent_first
        if not sent_first:
            sent_first = True
            return b"+ " + server_first + b"\r\n"
        final = transport.sent.splitlines()[-1].decode()
        proof = base64.b64decode(final).decode().rpartition(",p=")[2]
        return f"-ERR [AUTH] you sent {first} then {final}, proof {proof}\r\n".encode()

    transport.recv = recv  # type: ignore[method-assign]
    with pytest.raises(AuthError) as caught:
        pop.sasl(mech)
    assert (
        str(caught.value) == "authentication failed: -ERR [AUTH] you sent *** then ***, proof ***"
    )
    assert "S: -ERR [AUTH] you sent *** then ***, proof ***" in lines


def test_a_short_password_is_not_hidden() -> None:
    """Hiding "abc" would hide letters of every word, and tell the password."""
    lines: list[str] = []
    pop = logged_in([b"+OK\r\n-ERR [AUTH] abc is not your password\r\n"], lines)
    with pytest.raises(AuthError) as caught:
        pop.user_pass("alice", "abc")
    assert str(caught.value) == "authentication failed: -ERR [AUTH] abc is not your password"
