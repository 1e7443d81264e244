"""Self-tests of the real-Cyrus harness (tests/cyrus.py).

They also pin what Cyrus 3.6.1 really does on the wire (see the facts in the
harness docstring), so the product's quirk handling is tested against truth.
"""

from __future__ import annotations

import base64
import imaplib
import itertools
import os
import poplib
import re
import socket
import ssl
import time
from collections.abc import Iterator

import pytest
import servers
from cyrus import SENDER, Cyrus, _group_members, require_cyrus

pytestmark = pytest.mark.servers

GREETING = re.compile(
    rb"\+OK localhost Cyrus POP3 (3\.6\.1\S*) server ready <\d+\.\d+@localhost>\r\n"
)
IMPLEMENTATION = re.compile(rb"IMPLEMENTATION Cyrus POP3 3\.6\.1\S*")
SESSION = re.compile(rb"\+OK Mailbox locked and ready SESSIONID=<[^>]+>\r\n")
# lmtpd prepends these (with LMTP from smtplib, LHLO localhost).
PREPENDED = re.compile(
    rb"Return-Path: <" + re.escape(SENDER.encode()) + rb">\n"
    rb"Received: from localhost \(\[unix socket\]\)\n"
    rb"\t by localhost \(Cyrus 3\.6\.1\S*\) with LMTPA;\n"
    rb"\t \w{3}, \d\d \w{3} \d{4} \d\d:\d\d:\d\d [+-]\d{4}\n"
    rb"X-Cyrus-Session-Id: localhost-[\d-]+\n"
    rb"X-Sieve: CMU Sieve 3\.0\n"
)
ADDED = re.compile(  # appended to the header when the message has neither
    rb"Message-ID: <cmu-lmtpd-[\d-]+@localhost>\nDate: \w{3}, \d\d \w{3} \d{4} [\d:]{8} [+-]\d{4}\n"
)
DATE = b"Date: Thu, 03 Dec 2026 13:00:00 +0000\n"
MSG = b"Subject: %d\nMessage-ID: <%d@example.org>\n" + DATE + b"\nbody %d\n"


@pytest.fixture(scope="module")
def server() -> Iterator[Cyrus]:
    require_cyrus()
    with Cyrus() as cyrus:
        yield cyrus


@pytest.fixture(scope="module")
def stock() -> Iterator[Cyrus]:
    """A second server: Cyrus's own failedloginpause (3 s), and munge8bit off."""
    require_cyrus()
    with Cyrus(options={"failedloginpause": "3s", "munge8bit": "no"}) as cyrus:
        yield cyrus


_names = itertools.count(1)


def fresh(server: Cyrus, messages: int = 0) -> tuple[str, str]:
    """A new user with *messages* messages (MSG 1..n)."""
    user, password = f"u{next(_names)}", f"pw-{os.getpid()}-S3cret!"
    server.add_user(user, password)
    for n in range(1, messages + 1):
        server.add_message(user, MSG % (n, n, n))
    return user, password


class Wire:
    """A raw POP3 connection for byte-exact exchanges."""

    def __init__(self, server: Cyrus, mode: str = "starttls") -> None:
        """*mode*: "starttls" (STLS done), "implicit", or "off" (the STLS port in clear)."""
        self.server = server
        port = server.ports["implicit" if mode == "implicit" else "starttls"]
        self.sock: socket.socket = socket.create_connection((server.host, port), timeout=10)
        self.buf = b""
        if mode == "implicit":
            self._wrap()
        self.greeting = self.line()
        if mode == "starttls":
            self.send(b"STLS\r\n")
            assert self.line() == b"+OK Begin TLS negotiation now\r\n"
            self._wrap()

    def _wrap(self) -> None:
        assert not self.buf
        self.sock = self.server.ssl_context().wrap_socket(self.sock, server_hostname="localhost")

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def line(self) -> bytes:
        while b"\n" not in self.buf:
            data = self.sock.recv(65536)
            if not data:
                raise EOFError(self.buf)
            self.buf += data
        line, _, self.buf = self.buf.partition(b"\n")
        return line + b"\n"

    def lines(self, n: int) -> list[bytes]:
        return [self.line() for _ in range(n)]

    def multiline(self) -> list[bytes]:
        """The lines of a multi-line reply after its status, up to the dot line."""
        out = []
        while (line := self.line()) != b".\r\n":
            out.append(line)
        return out

    def silent(self, wait: float = 0.5) -> bytes:
        """Whatever arrives within *wait* seconds (b"" when the server says nothing)."""
        self.sock.settimeout(wait)
        try:
            self.buf += self.sock.recv(65536)
        except TimeoutError:
            pass
        finally:
            self.sock.settimeout(10)
        data, self.buf = self.buf, b""
        return data

    def login(self, user: str, password: str) -> None:
        self.send(f"USER {user}\r\n".encode())
        assert self.line() == b"+OK Name is a valid mailbox\r\n"
        self.send(f"PASS {password}\r\n".encode())
        assert SESSION.fullmatch(self.line())

    def close(self) -> None:
        self.sock.close()


def auth_plain(user: str, password: str) -> bytes:
    return b"AUTH PLAIN " + base64.b64encode(f"\0{user}\0{password}".encode()) + b"\r\n"


def capa(wire: Wire) -> list[bytes]:
    wire.send(b"CAPA\r\n")
    assert wire.line() == b"+OK List of capabilities follows\r\n"
    lines = wire.multiline()
    assert IMPLEMENTATION.fullmatch(lines[-1].rstrip(b"\r\n"))
    return [line.rstrip(b"\r\n") for line in lines[:-1]]


# ---------------------------------------------------------------- life cycle
def test_start_is_fast_and_stop_kills_everything() -> None:
    require_cyrus()
    started = time.monotonic()
    cyrus = Cyrus().start()
    assert time.monotonic() - started < 5
    assert cyrus._proc is not None
    pgid, root = cyrus._proc.pid, cyrus.root
    assert len(_group_members(pgid)) >= 3  # master, pop3d, pop3d (prefork=1)
    started = time.monotonic()
    cyrus.stop()
    assert time.monotonic() - started < 3
    assert _group_members(pgid) == []
    assert not root.exists()
    cyrus.stop()  # idempotent


def test_start_retries_a_lost_port_race(monkeypatch: pytest.MonkeyPatch) -> None:
    require_cyrus()
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = busy.getsockname()[1]
        picks = iter([taken])
        real = servers.free_port
        monkeypatch.setattr(servers, "free_port", lambda: next(picks, None) or real())
        with Cyrus() as cyrus:
            assert taken not in cyrus.ports.values()
            wire = Wire(cyrus, "off")
            assert GREETING.fullmatch(wire.greeting)
            wire.close()


def test_errors_reach_the_log(server: Cyrus) -> None:
    if not (server.root / "syslog.so").exists():
        pytest.skip("no C compiler: syslog is not captured")
    user, _ = fresh(server)
    with pytest.raises(poplib.error_proto):
        server.pop3(user, "wrong")
    log = server.log_text()
    assert f"badlogin: localhost [127.0.0.1] plaintext ({user})" in log
    assert f"login: localhost [127.0.0.1] {user} plaintext+TLS User logged in" in log


# ---------------------------------------------------------------- greeting, CAPA
def test_greeting_carries_apop_timestamp(server: Cyrus) -> None:
    for mode in ("starttls", "implicit"):
        wire = Wire(server, mode)
        assert GREETING.fullmatch(wire.greeting), wire.greeting
        wire.close()


def test_capa_before_and_after_login(server: Cyrus) -> None:
    user, password = fresh(server)
    common = [b"EXPIRE NEVER", b"LOGIN-DELAY 0", b"TOP", b"UIDL", b"PIPELINING"]
    common += [b"RESP-CODES", b"AUTH-RESP-CODE"]
    wire = Wire(server, "off")
    assert capa(wire) == [b"STLS", *common]  # no SASL, no USER before TLS
    wire.close()
    for mode in ("starttls", "implicit"):
        wire = Wire(server, mode)
        assert capa(wire) == [b"SASL PLAIN LOGIN", *common, b"USER"]
        wire.login(user, password)
        assert capa(wire) == [b"SASL PLAIN LOGIN", *common]
        wire.close()
    wire = Wire(server)
    wire.send(auth_plain(user, password))
    assert SESSION.fullmatch(wire.line())
    assert capa(wire) == common  # after AUTH the SASL line goes too
    wire.close()


def test_no_utf8(server: Cyrus) -> None:
    user, password = fresh(server)
    wire = Wire(server)
    assert not any(line.startswith(b"UTF8") for line in capa(wire))
    wire.send(b"UTF8\r\n")
    assert wire.line() == b"-ERR Unrecognized command\r\n"
    wire.login(user, password)
    wire.send(b"UTF8\r\n")
    assert wire.line() == b"-ERR Unrecognized command\r\n"
    wire.close()


# ---------------------------------------------------------------- login
def test_clear_text_login_refused_without_tls(server: Cyrus) -> None:
    user, password = fresh(server)
    client = poplib.POP3(server.host, server.ports["starttls"], timeout=10)
    with pytest.raises(poplib.error_proto, match=r"USER command only available under a layer"):
        client.user(user)
    with pytest.raises(poplib.error_proto, match=r"^b'-ERR \[AUTH\] authenticating: encryp"):
        client._shortcmd(auth_plain(user, password).decode().rstrip())  # type: ignore[attr-defined]
    client.close()


def test_apop_works_even_without_tls(server: Cyrus) -> None:
    user, password = fresh(server, 1)
    client = poplib.POP3(server.host, server.ports["starttls"], timeout=10)
    assert SESSION.fullmatch(client.apop(user, password) + b"\r\n")
    assert client.stat()[0] == 1
    client.quit()


def test_login_starttls_and_implicit(server: Cyrus) -> None:
    user, password = fresh(server, 2)
    via_starttls = server.raw_messages(user, password)
    assert all(body.endswith(b"\n\nbody %d\n" % n) for n, (_, body) in enumerate(via_starttls, 1))
    implicit = poplib.POP3_SSL(
        server.host, server.ports["implicit"], timeout=10, context=server.ssl_context()
    )
    implicit.user(user)
    assert SESSION.fullmatch(implicit.pass_(password) + b"\r\n")
    assert implicit.stat() == (2, sum(int(x.split()[1]) for x in implicit.list()[1]))
    implicit.quit()


def test_auth_plain(server: Cyrus) -> None:
    user, password = fresh(server, 1)
    client = poplib.POP3(server.host, server.ports["starttls"], timeout=10)
    client.stls(server.ssl_context())
    reply = client._shortcmd(auth_plain(user, password).decode().rstrip())  # type: ignore[attr-defined]
    assert SESSION.fullmatch(reply + b"\r\n")
    assert client.stat()[0] == 1
    client.quit()


def test_wrong_password_refused(server: Cyrus) -> None:
    user, password = fresh(server)
    wire = Wire(server)
    started = time.monotonic()
    wire.send(f"USER {user}\r\nPASS wrong\r\n".encode())
    assert wire.lines(2) == [b"+OK Name is a valid mailbox\r\n", b"-ERR [AUTH] Invalid login\r\n"]
    wire.send(b"USER nosuchuser\r\nPASS wrong\r\n")  # an unknown user looks the same
    assert wire.lines(2) == [b"+OK Name is a valid mailbox\r\n", b"-ERR [AUTH] Invalid login\r\n"]
    wire.send(auth_plain(user, "wrong"))
    assert wire.line() == b"-ERR [AUTH] authenticating: authentication failure\r\n"
    assert time.monotonic() - started < 2.5  # failedloginpause: 0 (the default pauses 3 s)
    wire.login(user, password)  # the connection stays usable
    wire.close()


def test_wrong_password_takes_3s_by_default(stock: Cyrus) -> None:
    user, _ = fresh(stock)
    wire = Wire(stock)
    wire.send(f"USER {user}\r\n".encode())
    wire.line()
    started = time.monotonic()
    wire.send(b"PASS wrong\r\n")
    assert wire.line() == b"-ERR [AUTH] Invalid login\r\n"
    assert 2.9 < time.monotonic() - started < 4.5
    wire.close()


# ---------------------------------------------------------------- messages
def test_add_message_count_and_raw_messages(server: Cyrus) -> None:
    user, password = fresh(server)
    assert server.count(user) == 0
    raws = [MSG % (n, n, n) for n in (1, 2)] + [b"Subject: bare\n\nno id, no date\n"]
    for raw in raws:
        server.add_message(user, raw)
    assert server.count(user) == 3
    got = server.raw_messages(user, password)
    assert [uidl for uidl, _ in got] == [f"{got[0][0].split('.')[0]}.{n}" for n in (1, 2, 3)]
    for raw, (_, message) in zip(raws[:2], got[:2], strict=True):
        assert PREPENDED.match(message)
        assert message[PREPENDED.match(message).end() :] == raw  # type: ignore[union-attr]
    # Message-ID and Date are added at the end of a header that lacks them.
    head, body = got[2][1].split(b"\n\n", 1)
    rest = head[PREPENDED.match(got[2][1]).end() :] + b"\n"  # type: ignore[union-attr]
    assert rest.startswith(b"Subject: bare\n")
    assert ADDED.fullmatch(rest[len(b"Subject: bare\n") :])
    assert body == b"no id, no date\n"


def test_8bit_header_bytes_become_x_by_default(server: Cyrus, stock: Cyrus) -> None:
    raw = b"Subject: caf\xc3\xa9\nMessage-ID: <8@x>\n" + DATE + b"\n\xc3\xa9\n"
    for cyrus, subject in ((server, b"Subject: cafXX\n"), (stock, b"Subject: caf\xc3\xa9\n")):
        user, password = fresh(cyrus)
        cyrus.add_message(user, raw)
        [(_, message)] = cyrus.raw_messages(user, password)
        assert message[PREPENDED.match(message).end() :] == subject + raw[15:]  # type: ignore[union-attr]


def test_uidl_is_uidvalidity_dot_uid(server: Cyrus) -> None:
    user, password = fresh(server, 3)
    uidls = [uidl for uidl, _ in server.raw_messages(user, password)]
    assert all(re.fullmatch(r"\d+\.\d+", u) for u in uidls)
    validity = {u.split(".")[0] for u in uidls}
    assert [u.split(".")[1] for u in uidls] == ["1", "2", "3"] and len(validity) == 1
    if server.imap_port:
        with imaplib.IMAP4(server.host, server.imap_port, timeout=10) as imap:
            imap.starttls(server.ssl_context())
            imap.login(user, password)
            _, [status] = imap.status("INBOX", "(UIDVALIDITY)")
            assert f"UIDVALIDITY {validity.pop()}" in status.decode()


def test_list_size_is_stored_crlf_octets(server: Cyrus) -> None:
    user, password = fresh(server, 1)
    wire = Wire(server)
    wire.login(user, password)
    wire.send(b"LIST 1\r\nRETR 1\r\n")
    size = int(wire.line().split()[2])
    assert wire.line() == b"+OK Message follows\r\n"
    assert size == sum(map(len, wire.multiline()))  # LF stored as CRLF; nothing appended
    wire.close()


def test_no_final_newline_gets_crlf_not_counted(server: Cyrus) -> None:
    if server.imap_port is None:
        pytest.skip("imapd not unpacked (cyrus-imapd): LMTP always ends a message with CRLF")
    user, password = fresh(server)
    stored = b"Subject: nonl\r\n\r\nno newline"
    server.append(user, stored)
    wire = Wire(server)
    wire.login(user, password)
    wire.send(b"LIST\r\nRETR 1\r\n")
    assert wire.line() == b"+OK scan listing follows\r\n"
    assert wire.multiline() == [b"1 %d\r\n" % len(stored)]  # 27
    assert wire.line() == b"+OK Message follows\r\n"
    assert wire.multiline() == [b"Subject: nonl\r\n", b"\r\n", b"no newline\r\n"]  # 29 octets
    wire.close()
    assert server.raw_messages(user, password)[0][1] == b"Subject: nonl\n\nno newline\n"


# ---------------------------------------------------------------- pipelining
def test_pipelining_after_auth_plain_is_lost(server: Cyrus) -> None:
    user, password = fresh(server, 2)
    wire = Wire(server)
    wire.send(auth_plain(user, password) + b"CAPA\r\nUIDL\r\nLIST\r\n")
    assert SESSION.fullmatch(wire.line())
    assert wire.silent() == b""  # CAPA, UIDL, LIST are never answered
    # Cyrus replaced those 18 bytes with the first 18 of the AUTH line, so the
    # next command is glued to "AUTH PLAIN AGF...":
    wire.send(b"NOOP\r\n")
    assert wire.line() == b"-ERR Unrecognized command\r\n"
    wire.send(b"NOOP\r\n")
    assert wire.line() == b"+OK\r\n"
    wire.close()
    # More bytes than the AUTH line: the AUTH line itself comes back first.
    wire = Wire(server)
    line = auth_plain(user, password)
    wire.send(line + b"NOOP\r\n" * 10)
    assert SESSION.fullmatch(wire.line())
    replayed_noops = (60 - len(line)) // 6  # 60 pipelined bytes replayed from the buffer start
    assert (
        wire.lines(1 + replayed_noops)
        == [b"-ERR Unrecognized command\r\n"] + [b"+OK\r\n"] * replayed_noops
    )
    assert wire.silent() == b""
    wire.close()
    # Waiting for the AUTH reply first, a batch in one packet is all answered.
    wire = Wire(server)
    wire.send(line)
    assert SESSION.fullmatch(wire.line())
    wire.send(b"CAPA\r\nUIDL\r\nLIST\r\nRETR 1\r\nRETR 2\r\n")
    assert wire.line() == b"+OK List of capabilities follows\r\n"
    wire.multiline()
    assert wire.line() == b"+OK unique-id listing follows\r\n"
    assert len(wire.multiline()) == 2
    assert wire.line() == b"+OK scan listing follows\r\n"
    assert len(wire.multiline()) == 2
    for n in (1, 2):
        assert wire.line() == b"+OK Message follows\r\n"
        assert wire.multiline()[-1] == b"body %d\r\n" % n
    wire.close()


def test_pipelining_user_pass_and_after_login(server: Cyrus) -> None:
    user, password = fresh(server, 3)
    wire = Wire(server)
    wire.send(f"USER {user}\r\nPASS {password}\r\nCAPA\r\nUIDL\r\n".encode())
    assert wire.line() == b"+OK Name is a valid mailbox\r\n"
    assert SESSION.fullmatch(wire.line())
    assert wire.line() == b"+OK List of capabilities follows\r\n"
    assert IMPLEMENTATION.match(wire.multiline()[-1])
    assert wire.line() == b"+OK unique-id listing follows\r\n"
    assert len(wire.multiline()) == 3
    wire.send(b"CAPA\r\nUIDL\r\nLIST\r\n" + b"".join(b"RETR %d\r\n" % n for n in (1, 2, 3)))
    assert wire.line() == b"+OK List of capabilities follows\r\n"
    wire.multiline()
    for status in (b"+OK unique-id listing follows\r\n", b"+OK scan listing follows\r\n"):
        assert wire.line() == status
        assert len(wire.multiline()) == 3
    for n in (1, 2, 3):
        assert wire.line() == b"+OK Message follows\r\n"
        assert wire.multiline()[-1] == b"body %d\r\n" % n
    wire.close()


def test_bytes_after_stls_are_discarded(server: Cyrus) -> None:
    sock = socket.create_connection((server.host, server.ports["starttls"]), timeout=10)
    assert GREETING.fullmatch(sock.recv(4096))
    sock.sendall(b"STLS\r\nCAPA\r\n")
    assert sock.recv(4096) == b"+OK Begin TLS negotiation now\r\n"
    with server.ssl_context().wrap_socket(sock, server_hostname="localhost") as tls:
        tls.sendall(b"NOOP\r\n")  # the first reply is for this, not for CAPA
        assert tls.recv(4096) == b"-ERR Unrecognized command\r\n"  # NOOP needs a login


# ---------------------------------------------------------------- errors, sessions
def test_retr_errors(server: Cyrus) -> None:
    user, password = fresh(server, 1)
    wire = Wire(server)
    wire.login(user, password)
    wire.send(b"RETR 9\r\nRETR 0\r\nRETR x\r\nDELE 1\r\nRETR 1\r\n")
    assert wire.lines(5) == [
        b"-ERR No such message\r\n",
        b"-ERR No such message\r\n",
        b"-ERR Not a number\r\n",
        b"+OK message deleted\r\n",
        b"-ERR No such message\r\n",
    ]
    wire.close()


def test_concurrent_sessions_and_expunged_messages(server: Cyrus) -> None:
    user, password = fresh(server, 3)
    first = server.pop3(user)
    assert first.stat()[0] == 3
    second = Wire(server)
    second.login(user, password)  # "+OK Mailbox locked and ready": no [IN-USE]
    second.send(b"DELE 1\r\nQUIT\r\n")
    assert second.lines(2) == [b"+OK message deleted\r\n", b"+OK\r\n"]
    second.close()
    if server.imap_port:  # an IMAP client expunges message 2
        with imaplib.IMAP4(server.host, server.imap_port, timeout=10) as imap:
            imap.starttls(server.ssl_context())
            imap.login(user, password)
            imap.select("INBOX")
            imap.uid("STORE", "2", "+FLAGS", "(\\Deleted)")
            imap.expunge()
    assert server.count(user) == (1 if server.imap_port else 2)
    # The open session still lists and serves them (expunge_mode: delayed).
    assert first.stat()[0] == 3
    for n in (1, 2):
        resp, lines, _ = first.retr(n)
        assert resp == b"+OK Message follows" and lines[-1] == b"body %d" % n
    assert first.dele(1) == b"+OK message deleted"
    assert first.quit() == b"+OK"
    assert server.count(user) == (1 if server.imap_port else 2)


def test_ssl_context_verifies_both_names(server: Cyrus) -> None:
    for name in ("localhost", "127.0.0.1"):
        with (
            socket.create_connection((server.host, server.ports["implicit"]), timeout=10) as raw,
            server.ssl_context().wrap_socket(raw, server_hostname=name) as tls,
        ):
            assert tls.version() in ("TLSv1.2", "TLSv1.3")
            assert GREETING.fullmatch(tls.recv(4096))
    with (
        socket.create_connection((server.host, server.ports["implicit"]), timeout=10) as raw,
        pytest.raises(ssl.SSLCertVerificationError),
    ):
        ssl.create_default_context().wrap_socket(raw, server_hostname="localhost")
