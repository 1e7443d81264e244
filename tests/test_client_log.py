"""The protocol transcript: complete, secrets hidden, and not even built without a sink."""

from __future__ import annotations

import collections
from typing import cast

import pytest

from fetchpop.errors import AuthError
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
    for number, body in pop.retrieve([(n, None) for n, _ in uidl], window=2):
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
