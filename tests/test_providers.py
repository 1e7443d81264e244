"""What the big providers do that no server in the matrix does, in the scripted server.

* Gmail's normal POP mode lists at most about 250 messages a session, those
  not yet "popped"; what a session retrieved is not listed again once it
  QUITs. fetchpop goes on with a new session while each one brings new mail
  (at most ``fetchpop.sync.MAX_SESSIONS`` a run), and says so with ``-v``.
* Microsoft's POP3 takes XOAUTH2 only in two steps (``AUTH XOAUTH2``, then
  the token after the ``+``), and its tokens are longer than 4 KB.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable
from pathlib import Path

import trustme
from fakepop import (
    DEFAULT_MECHANISMS,
    Accounts,
    FakePOP3,
    Mailbox,
    SASLExchange,
    make_server_context,
    sasl_xoauth2,
    to_crlf,
)
from runner import Home, account_toml, maildir_messages

GPOP = b"+OK Gpop ready for requests from 127.0.0.1 a1mb23456789pjq\r\n"


class GmailMailbox(Mailbox):
    """Gmail's normal mode: each session shows the first *batch* messages not
    yet popped; those a session retrieved are popped when it QUITs."""

    def __init__(self, messages: Iterable[bytes], batch: int = 250) -> None:
        super().__init__()
        self.all = [to_crlf(m) for m in messages]
        self.all_uidls = [f"GmailId{n:012x}" for n in range(1, len(self.all) + 1)]
        self.batch = batch
        self.popped: set[int] = set()
        self.window: list[int] = []
        self.taken: set[int] = set()
        self.sessions = 0

    def begin_session(self) -> None:
        self.sessions += 1
        left = [i for i in range(len(self.all)) if i not in self.popped]
        self.window = left[: self.batch]
        self.messages = [self.all[i] for i in self.window]
        self.uidls = [self.all_uidls[i] for i in self.window]
        self.taken = set()

    def retrieved(self, number: int) -> None:
        self.taken.add(self.window[number - 1])

    def expunge(self, numbers: Iterable[int]) -> None:  # at QUIT
        self.popped |= self.taken | {self.window[n - 1] for n in numbers}


def gmail_config(server: FakePOP3, mail: Path, ca_file: Path) -> str:
    return account_toml(
        "gmail",
        host="localhost",
        port=server.port,
        user="alice",
        password="secret",
        tls="implicit",
        ca_file=str(ca_file),
        auth="user",
        deliver=f"maildir:{mail}",
        timeout=10,
    )


def test_gmail_batches_are_fetched_in_one_run(
    ca: trustme.CA, ca_file: Path, home: Home, tmp_path: Path
) -> None:
    messages = [b"Subject: %d\n\nbody %d\n" % (n, n) for n in range(1, 601)]
    box = GmailMailbox(messages)
    mail = tmp_path / "Mail"
    context = make_server_context(ca, "localhost")
    with FakePOP3(box, tls_context=context, implicit_tls=True, greeting=GPOP) as server:
        home.write_config(gmail_config(server, mail, ca_file))
        result = home.run("-v", "sync")
        assert result.code == 0, result
        # 250 + 250 + 100, and one more session would list nothing new: 100 < 200.
        assert box.sessions == 3
        assert sorted(maildir_messages(mail)) == sorted(messages)
        assert "gmail: 3 sessions: the server lists at most 250 messages at once" in (
            result.stderr
        ), result
        assert "600 new message(s)" in result.stderr
        again = home.run("sync")
        assert again.code == 0 and again.stderr == "", again
        assert box.sessions == 4
    assert len(maildir_messages(mail)) == 600
    assert server.errors == []


def microsoft_xoauth2(accounts: Accounts, initial: bytes | None) -> SASLExchange:
    """Outlook's XOAUTH2: no initial response (two steps), the token after ``+``."""
    if initial is not None:
        yield b'{"status":"400","error":"initial response not supported"}' * 100
        return None
    return (yield from sasl_xoauth2(accounts, None))


def test_microsoft_two_step_xoauth2_with_a_long_token(
    ca: trustme.CA, ca_file: Path, home: Home, tmp_path: Path
) -> None:
    token = "EwBIBOl3BAAU" + "x" * 6000  # Microsoft access tokens run to several KB
    mail = tmp_path / "Mail"
    with FakePOP3(
        [b"Subject: hi\n\nfrom outlook\n"],
        users={"alice@example.com": "unused"},
        tokens={"alice@example.com": token},
        mechanisms={**DEFAULT_MECHANISMS, "XOAUTH2": microsoft_xoauth2},
        tls_context=make_server_context(ca, "localhost"),
        implicit_tls=True,
    ) as server:
        home.write_config(
            account_toml(
                "work",
                host="localhost",
                port=server.port,
                user="alice@example.com",
                auth="xoauth2",
                password_command=f"printf %s {token}",
                tls="implicit",
                ca_file=str(ca_file),
                deliver=f"maildir:{mail}",
            )
        )
        result = home.run("sync")
        assert result.code == 0, result
        auth = [c for c in server.sessions[0].commands if c.upper().startswith(b"AUTH")]
        assert auth == [b"AUTH XOAUTH2"]
        sent = server.sessions[0].commands[server.sessions[0].commands.index(auth[0]) + 1]
        assert len(sent) > 4096
        assert token.encode() in base64.b64decode(sent)
    assert maildir_messages(mail) == [b"Subject: hi\n\nfrom outlook\n"]
    assert server.errors == []


def test_gmail_batches_respect_max_messages_and_ask_the_password_once(
    ca: trustme.CA, ca_file: Path, home: Home, tmp_path: Path
) -> None:
    box = GmailMailbox([b"Subject: %d\n\nx\n" % n for n in range(1, 601)])
    mail = tmp_path / "Mail"
    asked = tmp_path / "asked"
    context = make_server_context(ca, "localhost")
    with FakePOP3(box, tls_context=context, implicit_tls=True, greeting=GPOP) as server:
        text = gmail_config(server, mail, ca_file).replace(
            'password = "secret"\n',
            f"password_command = \"sh -c 'echo >> {asked}; echo secret'\"\n",
        )
        home.write_config(text + "max_messages = 300\n")
        result = home.run("sync")
        assert result.code == 0, result
        assert len(maildir_messages(mail)) == 300  # per run, over both sessions
        assert box.sessions == 2
        assert asked.read_text() == "\n"  # one password_command for two logins
