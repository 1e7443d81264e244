"""The popa3d harness (tests/popa3d.py) and the popa3d behaviour it documents.

One server for the module, a fresh system user per test.  Needs root and
.ci/servers; skipped otherwise (failed with FETCHPOP_REQUIRE_SERVERS=1).
"""

from __future__ import annotations

import fcntl
import os
import poplib
import pwd
import socket
import stat
import time
from collections.abc import Iterator

import pytest
from popa3d import Popa3d, _live_members, mbox_entry, require_popa3d

pytestmark = pytest.mark.servers

FROM = b"From MAILER-DAEMON Thu Dec  4 10:00:00 2025\n"
NO_HEADERS_UIDL = "d98c1dd404b2008f"  # the UIDL of every message without hashed headers


@pytest.fixture(scope="module")
def server() -> Iterator[Popa3d]:
    require_popa3d()
    with Popa3d(backdate=True) as running:  # no 1 s wait after add_message
        yield running


@pytest.fixture
def account(server: Popa3d) -> tuple[str, str]:
    return server.new_user()


def talk(server: Popa3d, data: bytes, timeout: float = 10) -> bytes:
    """Send *data* in one packet right after connecting; all bytes until the server closes."""
    with socket.create_connection((server.host, server.ports["off"]), timeout) as s:
        s.sendall(data)
        out = b""
        while chunk := s.recv(65536):
            out += chunk
        return out


def receive(s: socket.socket, lines: int) -> bytes:
    """Read until *lines* CRLFs have come or the server closes."""
    out = b""
    while out.count(b"\r\n") < lines and (chunk := s.recv(65536)):
        out += chunk
    return out


def login(user: str, password: str) -> bytes:
    return f"USER {user}\r\nPASS {password}\r\n".encode()


def test_server_starts_on_loopback_without_tls(server: Popa3d) -> None:
    assert server.ca_file is None and list(server.ports) == ["off"]
    assert talk(server, b"QUIT\r\n") == b"+OK\r\n+OK\r\n"
    with pytest.raises(OSError), socket.create_connection(("127.0.0.2", server.ports["off"]), 2):
        pass


def test_exact_replies_and_pipelining(server: Popa3d, account: tuple[str, str]) -> None:
    user, password = account
    server.add_message(user, b"Message-ID: <1@example.org>\nSubject: one\n\nbody\n")
    server.add_message(user, b"Subject: two\n\nsecond\n")
    commands = ["CAPA", "APOP x 0123456789abcdef0123456789abcdef", "AUTH PLAIN", "STLS"]
    commands += [f"USER {user}", f"PASS {password}", "CAPA", "STAT", "LIST", "LIST 2", "UIDL"]
    commands += ["UIDL 1", "RETR 2", "TOP 1 0", "LAST", "NOOP", "RSET", "XYZZY", "QUIT"]
    reply = talk(server, b"".join(c.encode() + b"\r\n" for c in commands))  # one packet
    assert reply == (
        b"+OK\r\n"  # greeting: no APOP timestamp
        b"-ERR\r\n-ERR\r\n-ERR\r\n-ERR\r\n"  # CAPA, APOP, AUTH, STLS
        b"+OK\r\n+OK\r\n"  # USER, PASS
        b"-ERR\r\n"  # CAPA, after login too
        b"+OK 2 75\r\n"
        b"+OK\r\n1 51\r\n2 24\r\n.\r\n"
        b"+OK 2 24\r\n"
        b"+OK\r\n1 3e553ba3ef372859\r\n2 d98c1dd404b2008f\r\n.\r\n"
        b"+OK 1 3e553ba3ef372859\r\n"
        b"+OK\r\nSubject: two\r\n\r\nsecond\r\n.\r\n"
        b"+OK\r\nMessage-ID: <1@example.org>\r\nSubject: one\r\n\r\n.\r\n"
        b"+OK 2\r\n+OK\r\n+OK\r\n-ERR\r\n+OK\r\n"  # LAST, NOOP, RSET, XYZZY, QUIT
    )


def test_wrong_password_refused_after_a_delay_then_closed(
    server: Popa3d, account: tuple[str, str]
) -> None:
    user, _ = account
    started = time.monotonic()
    with socket.create_connection((server.host, server.ports["off"]), 10) as unknown:
        # An unknown user is answered the same way (in parallel, to save time).
        unknown.sendall(login("fptnosuchuser", "wrong") + b"STAT\r\n")
        client = poplib.POP3(server.host, server.ports["off"], timeout=10)
        try:
            assert client.user(user) == b"+OK"
            with pytest.raises(poplib.error_proto) as refused:
                client.pass_("wrong")
            elapsed = time.monotonic() - started
            assert client.sock.recv(10) == b""  # closed: no second try in this connection
        finally:
            client.close()
        assert refused.value.args == (b"-ERR Authentication failed (bad password?)",)
        assert 0.5 < elapsed < 5  # PAM's fail delay: 2 s, randomised
        reply = receive(unknown, 10)
    assert reply == b"+OK\r\n+OK\r\n-ERR Authentication failed (bad password?)\r\n"


def test_add_message_raw_messages_count(server: Popa3d, account: tuple[str, str]) -> None:
    user, password = account
    assert not server.spool(user).exists()
    assert server.count(user) == 0  # no mailbox is an empty one: "+OK 0 0"
    one, two = b"Subject: one\n\nbody\n", b"Subject: two\n\nFrom here\n>From there\nlast"
    server.add_message(user, one)
    server.add_message(user, two)
    assert server.count(user) == 2
    spool = server.spool(user)
    info = spool.stat()
    assert (info.st_uid, stat.S_IMODE(info.st_mode)) == (pwd.getpwnam(user).pw_uid, 0o660)
    data = spool.read_bytes()
    assert data.count(b"\nSubject: two\n\n>From here\n>From there\nlast\n\n") == 1  # mboxo
    assert data.startswith(b"From MAILER-DAEMON ") and b"\nbody\n\nFrom MAILER-DAEMON " in data
    # ">From " is not unquoted: a client gets what the MTA stored.
    expected = [one, b"Subject: two\n\n>From here\n>From there\nlast\n"]
    assert [raw for _, raw in server.raw_messages(user, password)] == expected


def test_dele_quit_shrinks_the_spool(server: Popa3d, account: tuple[str, str]) -> None:
    user, password = account
    for n in range(3):
        server.add_message(user, b"Subject: %d\n\nbody\n" % n)
    before = server.spool(user).read_bytes()
    reply = talk(server, login(user, password) + b"DELE 1\r\nDELE 3\r\nQUIT\r\n")
    assert reply == b"+OK\r\n" * 6
    after = server.spool(user).read_bytes()
    assert len(after) < len(before) and after.count(b"From ") == 1
    assert after.startswith(b"From MAILER-DAEMON ") and after.endswith(b"\nSubject: 1\n\nbody\n\n")


def test_uidl_hashes_a_few_headers_only(server: Popa3d, account: tuple[str, str]) -> None:
    user, password = account
    dated = b"Date: Thu, 4 Dec 2025 10:00:00 +0000\nSubject: a\n\nbody\n"
    messages = [
        dated,
        dated,  # identical
        dated.replace(b"Subject: a\n", b"Subject: a\nStatus: RO\nX-Status: A\nX-UIDL: x\n"),
        dated.replace(b"body", b"other body"),
        dated.replace(b"10:00:00", b"10:00:01"),
        b"Subject: no hashed headers\n\nbody\n",
        b"Subject: none either\n\nanother body\n",
        b"Received: from a\n\tby b\n\nx\n",
        b"Received: from a\n\tby c\n\nx\n",  # continuation lines count
    ]
    for raw in messages:
        server.add_message(user, raw)
    uidls = [uidl for uidl, _ in server.raw_messages(user, password)]
    assert len(set(uidls[:4])) == 1  # identical, Status: rewritten, body changed
    assert uidls[4] != uidls[0]
    assert uidls[5] == uidls[6] == NO_HEADERS_UIDL
    assert uidls[7] != uidls[8]
    assert all(len(u) == 16 and int(u, 16) >= 0 for u in uidls)


def test_mbox_separators_and_odd_messages_on_the_wire(
    server: Popa3d, account: tuple[str, str]
) -> None:
    user, _ = account
    server.append_spool(
        user,
        FROM + b"Subject: a\n\nbody\nFrom not after a blank line\n\n"
        b"From unquoted after a blank line\nX-Header: only\n\n"
        + FROM + b"Subject: b\nStatus: RO\nX-UIDL: kept\n\n.dot\nlast line",
    )  # fmt: skip
    _, password = account
    reply = talk(server, login(user, password) + b"LIST\r\nRETR 1\r\nRETR 2\r\nRETR 3\r\nQUIT\r\n")
    assert reply == (
        b"+OK\r\n+OK\r\n+OK\r\n"
        b"+OK\r\n1 49\r\n2 18\r\n3 56\r\n.\r\n"
        b"+OK\r\nSubject: a\r\n\r\nbody\r\nFrom not after a blank line\r\n.\r\n"
        b"+OK\r\nX-Header: only\r\n\r\n.\r\n"  # a body-less message gets an empty line
        b"+OK\r\nSubject: b\r\nStatus: RO\r\nX-UIDL: kept\r\n\r\n..dot\r\nlast line\r\n.\r\n"
        b"+OK\r\n"
    )
    # LIST: stored size + 1 per line (dot-stuffing not counted), so 1 short when the
    # last line has no LF: 56 for the 57 octets sent (58 with the stuffed dot).
    assert len(b"Subject: b\r\nStatus: RO\r\nX-UIDL: kept\r\n\r\n.dot\r\nlast line\r\n") == 57


def test_missing_message_numbers(server: Popa3d, account: tuple[str, str]) -> None:
    user, password = account
    server.add_message(user, b"Subject: x\n\nbody\n")
    commands = b"RETR 99\r\nRETR 0\r\nRETR x\r\nTOP 99 0\r\nLIST 99\r\nUIDL 99\r\nDELE 99\r\n"
    reply = talk(server, login(user, password) + commands + b"DELE 1\r\nRETR 1\r\nQUIT\r\n")
    assert reply == b"+OK\r\n" * 3 + b"-ERR\r\n" * 7 + b"+OK\r\n-ERR\r\n+OK\r\n"


def test_locks_fcntl_only_while_loading(server: Popa3d, account: tuple[str, str]) -> None:
    user, password = account
    server.add_message(user, b"Subject: x\n\nbody\n")
    spool = server.spool(user)
    dot_lock = spool.with_name(f"{user}.lock")
    dot_lock.write_bytes(b"")  # ignored
    fd = os.open(spool, os.O_RDWR)
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX)
        with socket.create_connection((server.host, server.ports["off"]), 10) as s:
            s.sendall(login(user, password) + b"STAT\r\n")
            assert receive(s, 2) == b"+OK\r\n+OK\r\n"
            s.settimeout(1)
            with pytest.raises(TimeoutError):  # PASS waits for the lock
                s.recv(100)
            fcntl.lockf(fd, fcntl.LOCK_UN)
            s.settimeout(10)
            assert receive(s, 2) == b"+OK\r\n+OK 1 20\r\n"
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # not held during the session
            fcntl.lockf(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
        dot_lock.unlink()


def test_mailbox_changed_during_a_session(server: Popa3d, account: tuple[str, str]) -> None:
    user, password = account
    for n in range(2):
        server.add_message(user, b"Subject: %d\n\nbody\n" % n)
    with socket.create_connection((server.host, server.ports["off"]), 10) as s:
        s.sendall(login(user, password) + b"STAT\r\n")
        assert receive(s, 4).endswith(b"+OK 2 40\r\n")
        server.add_message(user, b"Subject: new\n\nbody\n")  # kept by the update
        s.sendall(b"DELE 1\r\nQUIT\r\n")
        assert receive(s, 3) == b"+OK\r\n+OK\r\n"
    assert [raw for _, raw in server.raw_messages(user, password)] == [
        b"Subject: 1\n\nbody\n",
        b"Subject: new\n\nbody\n",
    ]
    # The file shrank since PASS: QUIT closes without a reply, nothing is deleted.
    with socket.create_connection((server.host, server.ports["off"]), 10) as s:
        s.sendall(login(user, password) + b"STAT\r\n")
        assert receive(s, 4).endswith(b"+OK 2 42\r\n")
        shorter = server.spool(user).read_bytes().split(b"\n\nFrom ")[0] + b"\n\n"
        server.spool(user).write_bytes(shorter)
        s.sendall(b"DELE 1\r\nQUIT\r\n")
        assert receive(s, 3) == b"+OK\r\n"  # DELE's; then EOF
    assert server.spool(user).read_bytes() == shorter


def test_long_lines_pass_unchanged(server: Popa3d, account: tuple[str, str]) -> None:
    user, password = account
    folded = b"X-Folded: start\n" + b"".join(b"\tpart %d\n" % n for n in range(300))
    raw = b"X-Long: " + b"h" * 3000 + b"\n" + folded + b"\n" + b"L" * 3000 + b"\nend\n"
    server.add_message(user, raw)
    assert server.raw_messages(user, password) == [(NO_HEADERS_UIDL, raw)]


def test_add_user_refuses_taken_names(server: Popa3d) -> None:
    for name in ("root", "popa3d"):
        with pytest.raises(ValueError, match="exists"):
            server.add_user(name, "secret")
    with pytest.raises(ValueError):
        server.add_user("Bad Name", "secret")


def test_mbox_entry_is_what_an_mta_appends() -> None:
    entry = mbox_entry(b"Subject: x\n\nFrom a\n>From b\nno newline", "a@b.example", 0)
    head, rest = entry.split(b"\n", 1)
    assert head.startswith(b"From a@b.example ") and head.endswith(b" 1970")
    assert rest == b"Subject: x\n\n>From a\n>From b\nno newline\n\n"


def test_stop_kills_our_processes_and_removes_users(server: Popa3d) -> None:
    private = Popa3d(backdate=True).start()
    user, password = private.new_user()
    private.add_message(user, b"Subject: x\n\nbody\n")
    pgid = private._proc.pid if private._proc else 0
    root = private.root
    # An open session (a popa3d running as the user) must not stop userdel.
    with socket.create_connection((private.host, private.ports["off"]), 10) as s:
        s.sendall(login(user, password))
        assert receive(s, 3) == b"+OK\r\n+OK\r\n+OK\r\n"
        private.stop()
    with pytest.raises(KeyError):
        pwd.getpwnam(user)
    assert not private.spool(user).exists() and not root.exists()
    assert pgid and not _live_members(pgid)
    assert server.count(server.new_user()[0]) == 0  # the shared server is unaffected
