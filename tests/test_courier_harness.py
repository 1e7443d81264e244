"""Self-tests of the Courier harness (tests/courier.py).

They also pin, byte for byte, the Courier 1.0.16 behaviour fetchpop must
cope with (the list is in courier.py's docstring).
"""

from __future__ import annotations

import base64
import itertools
import os
import poplib
import re
import socket
import ssl
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from courier import Courier, require_courier

pytestmark = pytest.mark.servers

GREETING = b"+OK Hello there.\r\n"
CAPA_TAIL = (
    b"TOP\r\nUSER\r\nLOGIN-DELAY 10\r\nPIPELINING\r\nUIDL\r\nUTF8 USER\r\n"
    b"IMPLEMENTATION Courier Mail Server\r\n.\r\n"
)
CAPA_HEAD = b"+OK Here's what I can do:\r\n"
LOGGED_IN = b"+OK Password required.\r\n+OK logged in.\r\n"
WRAPPER_HEAD = (
    b"From: Mail Delivery Subsystem <postmaster>\r\n"
    b"Subject: Cannot display Unicode content\r\n"
    b"Mime-Version: 1.0\r\n"
    b'Content-Type: multipart/mixed; boundary="=_'
)

_names = itertools.count(1)


@pytest.fixture(scope="module")
def server() -> Iterator[Courier]:
    require_courier()
    with Courier() as courier:
        yield courier


@pytest.fixture
def connect(server: Courier) -> Iterator[Callable[..., Wire]]:
    """Open :class:`Wire` connections to *server*; all are closed after the test."""
    wires: list[Wire] = []

    def open_wire(mode: str = "starttls") -> Wire:
        wires.append(Wire(server, mode))
        return wires[-1]

    yield open_wire
    for wire in wires:
        wire.close()


@pytest.fixture
def user(server: Courier) -> tuple[str, str]:
    """A fresh user (so no test sees another's mail or courierpop3dsizelist)."""
    name = f"user{next(_names)}"
    server.add_user(name, f"pw-{name}")
    return name, f"pw-{name}"


class Wire:
    """A raw POP3 connection: exact bytes, pipelining, timing."""

    def __init__(self, server: Courier, mode: str = "starttls") -> None:
        context = ssl.create_default_context(cafile=str(server.ca_file))
        port = server.ports["implicit" if mode == "implicit" else "starttls"]
        self.sock: socket.socket = socket.create_connection((server.host, port), 10)
        self.buf = b""
        if mode == "implicit":
            self.sock = context.wrap_socket(self.sock, server_hostname=server.host)
        self.greeting = self.line()
        if mode == "starttls":
            assert self.ask(b"STLS\r\n") == b"+OK Begin SSL/TLS negotiation now.\r\n"
            self.sock = context.wrap_socket(self.sock, server_hostname=server.host)

    def _fill(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise EOFError(self.buf)
        self.buf += chunk

    def line(self) -> bytes:
        while b"\r\n" not in self.buf:
            self._fill()
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line + b"\r\n"

    def multi(self) -> bytes:
        """A status line and, after +OK, the lines up to and including ".\\r\\n"."""
        out = first = self.line()
        while first.startswith(b"+OK") and not out.endswith(b"\r\n.\r\n"):
            out += self.line()
        return out

    def ask(self, command: bytes, multi: bool = False) -> bytes:
        self.sock.sendall(command)
        return self.multi() if multi else self.line()

    def login(self, user: str, password: str) -> None:
        self.sock.sendall(f"USER {user}\r\nPASS {password}\r\n".encode())
        assert self.line() + self.line() == LOGGED_IN

    def silence(self, seconds: float = 1.0) -> bytes:
        """Whatever arrives until the server has said nothing for *seconds*."""
        self.sock.settimeout(seconds)
        try:
            while True:
                self._fill()
        except TimeoutError:
            pass
        finally:
            self.sock.settimeout(10)
        out, self.buf = self.buf, b""
        return out

    def close(self) -> None:
        self.sock.close()


def octets(status: bytes) -> int:
    match = re.fullmatch(rb"\+OK (\d+) octets follow\.\r\n", status)
    assert match, status
    return int(match[1])


def test_starts_quickly_and_greets(server: Courier, connect: Callable[..., Wire]) -> None:
    assert server.startup_seconds < 5
    assert server.ports["starttls"] != server.ports["implicit"]
    plain = connect("off")
    assert plain.greeting == GREETING
    assert plain.ask(b"QUIT\r\n") == b"+OK Better luck next time.\r\n"
    assert connect("implicit").greeting == GREETING


def test_capa_before_and_after_tls_and_login(
    server: Courier, connect: Callable[..., Wire], user: tuple[str, str]
) -> None:
    plain = connect("off")
    assert plain.ask(b"CAPA\r\n", multi=True) == CAPA_HEAD + b"STLS\r\n" + CAPA_TAIL
    # UTF8 is accepted in the login phase, even before TLS; LANG and APOP are not known.
    assert plain.ask(b"UTF8\r\n") == b"+OK UTF8 enabled\r\n"
    for command in (b"LANG\r\n", b"APOP u 0123\r\n", b"AUTH\r\n"):
        assert plain.ask(command) == b"-ERR Invalid command.\r\n"
    for mode in ("starttls", "implicit"):
        wire = connect(mode)
        assert wire.ask(b"CAPA\r\n", multi=True) == CAPA_HEAD + CAPA_TAIL
        if mode == "starttls":
            wire.login(*user)
        else:  # no SASL in CAPA (Debian's POP3AUTH=""), but AUTH PLAIN works all the same
            assert wire.ask(b"AUTH PLAIN\r\n") == b"+ \r\n"
            secret = base64.b64encode(f"\0{user[0]}\0{user[1]}".encode())
            assert wire.ask(secret + b"\r\n") == b"+OK logged in.\r\n"
        assert wire.ask(b"CAPA\r\n", multi=True) == CAPA_HEAD + CAPA_TAIL
        assert wire.ask(b"QUIT\r\n") == b"+OK Bye-bye.\r\n"


def test_poplib_logs_in_over_starttls_and_implicit_tls(
    server: Courier, user: tuple[str, str]
) -> None:
    assert server.ca_file is not None
    context = ssl.create_default_context(cafile=str(server.ca_file))
    for mode in ("implicit", "starttls"):
        if mode == "implicit":
            client: poplib.POP3 = poplib.POP3_SSL(server.host, server.ports[mode], context=context)
        else:
            client = poplib.POP3(server.host, server.ports[mode])
            assert client.stls(context) == b"+OK Begin SSL/TLS negotiation now."
        try:
            assert client.user(user[0]) == b"+OK Password required."
            assert client.pass_(user[1]) == b"+OK logged in."
            assert client.stat() == (0, 0)
            assert client.quit() == b"+OK Bye-bye."
        finally:
            client.close()


@pytest.mark.slow
def test_wrong_password_takes_5_seconds_and_keeps_the_connection(
    server: Courier, connect: Callable[..., Wire], user: tuple[str, str]
) -> None:
    # courierpop3login sleeps 5 s before answering (compiled in; no setting).
    wire = connect()
    assert wire.ask(f"USER {user[0]}\r\n".encode()) == b"+OK Password required.\r\n"
    started = time.monotonic()
    assert wire.ask(b"PASS wrong\r\n") == b"-ERR Login failed.\r\n"
    assert 4.5 < time.monotonic() - started < 6.5
    # A second wrong one: the same; what is pipelined behind a failed PASS is kept.
    started = time.monotonic()
    wire.sock.sendall(f"PASS wrong\r\nPASS {user[1]}\r\n".encode())
    assert wire.line() == b"-ERR Login failed.\r\n"
    assert 4.5 < time.monotonic() - started < 6.5
    assert wire.line() == b"+OK logged in.\r\n"


def test_add_message_raw_messages_and_count(server: Courier, user: tuple[str, str]) -> None:
    raws = [b"Subject: one\n\nbody\n", b"From: a@b\nSubject: two\n\nline\n\nend\n"]
    assert server.count(user[0]) == 0
    for raw in raws:
        server.add_message(user[0], raw)
    assert server.count(user[0]) == 2
    got = server.raw_messages(*user)
    assert [message for _uidl, message in got] == raws
    assert [uidl.split("-")[0] for uidl, _message in got] == ["UID1", "UID2"]
    assert server.raw_messages(*user) == got  # UIDLs are stable
    assert server.count(user[0]) == 2


def test_login_moves_new_to_cur_and_retr_marks_seen(
    server: Courier, connect: Callable[..., Wire], user: tuple[str, str]
) -> None:
    path = server.add_message(user[0], b"Subject: one\n\nbody\n")
    wire = connect()
    wire.login(*user)
    assert path.parent.name == "new"
    assert [(p.parent.name, p.name) for p in server.messages(user[0])] == [
        ("cur", path.name + ":2,")
    ]
    assert wire.ask(b"RETR 1\r\n", multi=True).startswith(b"+OK 22 octets follow.\r\n")
    deadline = time.monotonic() + 2  # renamed just after the reply, before any QUIT
    while server.messages(user[0])[0].name != path.name + ":2,S":
        assert time.monotonic() < deadline, server.messages(user[0])
        time.sleep(0.01)


def test_missing_final_newline_gets_crlf_not_counted_in_list(
    server: Courier, connect: Callable[..., Wire], user: tuple[str, str]
) -> None:
    server.add_message(user[0], b"Subject: two\n\n..no final newline")  # 32 bytes, 2 LF
    wire = connect()
    wire.login(*user)
    assert wire.ask(b"LIST 1\r\n") == b"+OK 1 34\r\n"
    reply = wire.ask(b"RETR 1\r\n", multi=True)
    status, body = reply.split(b"\r\n", 1)
    assert octets(status + b"\r\n") == 34  # neither counts the dot-stuffing or the CRLF added
    assert body == b"Subject: two\r\n\r\n...no final newline\r\n.\r\n"  # 37 bytes + ".\r\n"


def test_8bit_header_is_wrapped_unless_utf8(
    server: Courier, connect: Callable[..., Wire], user: tuple[str, str]
) -> None:
    original = "Subject: caf\u00e9\n\nbody\n".encode()
    server.add_message(user[0], original)
    server.add_message(user[0], "Subject: x\n\n8-bit body \u00e9\n".encode())
    wire = connect()
    wire.login(*user)
    assert wire.ask(b"LIST\r\n", multi=True).endswith(b"1 24\r\n2 29\r\n.\r\n")
    reply = wire.ask(b"RETR 1\r\n", multi=True)
    status, body = reply.split(b"\r\n", 1)
    assert body.startswith(WRAPPER_HEAD)
    boundary = re.search(rb'boundary="(=_\d+-\d+)"', body)
    assert boundary
    part = b"--" + boundary[1] + b"\r\nContent-Type: message/global\r\n\r\n"
    assert part + original.replace(b"\n", b"\r\n") + b"\r\n--" + boundary[1] in body
    assert b"\r\n\r\nThis E-mail message was determined to be Unicode-formatted\r\n" in body
    assert octets(status + b"\r\n") == 719  # counts the wrapper's LFs as 1 octet...
    assert len(body) - len(b".\r\n") == 746  # ...and the server sends 746
    body_only = wire.ask(b"RETR 2\r\n", multi=True)  # 8-bit bytes only in the body: unchanged
    assert body_only == b"+OK 29 octets follow.\r\nSubject: x\r\n\r\n8-bit body \xc3\xa9\r\n.\r\n"
    served = b"+OK 24 octets follow.\r\nSubject: caf\xc3\xa9\r\n\r\nbody\r\n.\r\n"
    for before_user in (True, False):
        wire = connect()
        if before_user:
            assert wire.ask(b"UTF8\r\n") == b"+OK UTF8 enabled\r\n"
            wire.login(*user)
        else:  # after login (courierpop3d knows UTF8 too)
            wire.login(*user)
            assert wire.ask(b"UTF8\r\n") == b"+OK UTF8 enabled\r\n"
        assert wire.ask(b"RETR 1\r\n", multi=True) == served


def test_pipelining_after_pass_is_lost_but_works_after_login(
    server: Courier, connect: Callable[..., Wire], user: tuple[str, str]
) -> None:
    for n in range(3):
        server.add_message(user[0], b"Subject: %d\n\nbody\n" % n)
    name, password = user
    wire = connect()
    # courierpop3login execs courierpop3d after PASS: what it had read after PASS is gone.
    wire.sock.sendall(f"USER {name}\r\nPASS {password}\r\nCAPA\r\nUIDL\r\n".encode())
    assert wire.silence(1.5) == LOGGED_IN
    assert wire.ask(b"STAT\r\n") == b"+OK 3 60\r\n"  # the session itself is fine
    batch = b"CAPA\r\nUIDL\r\nLIST\r\n" + b"".join(b"RETR %d\r\n" % n for n in (1, 2, 3))
    wire.sock.sendall(batch + b"NOOP\r\n")
    assert wire.multi() == CAPA_HEAD + CAPA_TAIL
    assert re.fullmatch(rb"\+OK\r\n1 UID1-\d+\r\n2 UID2-\d+\r\n3 UID3-\d+\r\n\.\r\n", wire.multi())
    assert wire.multi() == (
        b"+OK POP3 clients that break here, they violate STD53.\r\n1 20\r\n2 20\r\n3 20\r\n.\r\n"
    )
    for n in range(3):
        assert wire.multi() == b"+OK 20 octets follow.\r\nSubject: %d\r\n\r\nbody\r\n.\r\n" % n
    assert wire.line() == b"+OK Yup.\r\n"


def test_retr_errors(server: Courier, connect: Callable[..., Wire], user: tuple[str, str]) -> None:
    server.add_message(user[0], b"Subject: one\n\nbody\n")
    server.add_message(user[0], b"Subject: two\n\nbody\n")
    wire = connect()
    wire.login(*user)
    assert wire.ask(b"RETR 3\r\n") == b"-ERR Invalid message number.\r\n"
    assert wire.ask(b"RETR 0\r\n") == b"-ERR Invalid message number.\r\n"
    os.unlink(server.messages(user[0])[0])  # another client or process took it
    assert server.count(user[0]) == 1
    gone = b"-ERR Can't open the message file - it's gone!\r\n"
    assert wire.ask(b"RETR 1\r\n") == gone
    assert wire.ask(b"TOP 1 0\r\n") == gone
    assert wire.ask(b"LIST 1\r\n") == b"+OK 1 22\r\n"  # still listed
    assert wire.ask(b"DELE 1\r\n") == b"+OK Deleted.\r\n"
    assert wire.ask(b"RETR 1\r\n") == b"-ERR Invalid message number.\r\n"
    assert wire.ask(b"RETR 2\r\n", multi=True).endswith(b"Subject: two\r\n\r\nbody\r\n.\r\n")
    assert wire.ask(b"QUIT\r\n") == b"+OK Bye-bye.\r\n"


def test_stop_kills_everything_and_removes_the_directory() -> None:
    require_courier()
    courier = Courier().start()
    root, ports, leader = courier.root, dict(courier.ports), courier._proc
    assert leader is not None
    courier.add_user("late", "pw")  # users added while running can log in
    courier.add_message("late", b"Subject: x\n\nbody\n")
    assert courier.raw_messages("late", "pw")[0][1] == b"Subject: x\n\nbody\n"
    courier.stop()
    courier.stop()  # idempotent
    assert leader.returncode is not None
    assert not root.exists()
    for port in ports.values():
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", port), 1).close()
    members = []
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            stat = Path(f"/proc/{entry}/stat").read_bytes()
        except OSError:
            continue
        if int(stat[stat.rfind(b")") + 2 :].split()[3]) == leader.pid:
            members.append(entry)
    assert members == []
