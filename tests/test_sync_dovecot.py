"""End to end against a real Dovecot: ``fetchpop sync`` as a user runs it.

Every test runs the real command in a subprocess and asserts what a user
would notice: the bytes delivered, the exit status, the line on stderr, what
is left on the server.
"""

from __future__ import annotations

import fcntl
import os
import socket
import sqlite3
import sys
import time
from pathlib import Path

import pytest
from corpus import hard_messages
from dovecot import DovecotUser
from runner import Home, account_toml, maildir_messages

from fetchpop.deliver.mbox import split_mboxrd

pytestmark = pytest.mark.dovecot


def config(mb: DovecotUser, target: str, *, name: str = "home", **keys: object) -> str:
    """An account for *mb* over implicit TLS verified with the test CA."""
    dc = mb.dovecot
    base: dict[str, object] = {
        "host": "localhost",
        "user": mb.user,
        "port": dc.tls_port,
        "tls": "implicit",
        "ca_file": str(dc.ca_file),
        "password": mb.password,
        "deliver": target,
    }
    base.update(keys)
    return account_toml(name, **base)


def _ensure_final_newline(msg: bytes) -> bytes:
    return msg if msg.endswith(b"\n") else msg + b"\n"


@pytest.fixture(scope="module")
def corpus() -> list[bytes]:
    return hard_messages(300)


def test_hard_messages_into_maildir_once(
    mailbox: DovecotUser, home: Home, tmp_path: Path, corpus: list[bytes]
) -> None:
    dc = mailbox.dovecot
    dc.add_messages(mailbox.user, corpus)
    served = dc.server_messages(mailbox.user)
    assert len(served) == 300
    mail = tmp_path / "Mail"
    home.write_config(config(mailbox, f"maildir:{mail}"))

    first = home.run("sync")
    assert first.code == 0, first
    assert first.stderr == "" and first.stdout == ""  # quiet under cron
    assert maildir_messages(mail) == sorted(served)
    assert dc.count(mailbox.user) == 300  # keep = true by default

    again = home.run("sync")
    assert again.code == 0, again
    assert len(maildir_messages(mail)) == 300

    late = b"From: late@example.org\nSubject: late\n\nonly this one\n"
    dc.add_message(mailbox.user, late)
    third = home.run("-vv", "sync")
    assert third.code == 0, third
    assert "home: 1 new message(s)" in third.stderr
    assert "home: fetched message 301 (" in third.stderr  # -vv: a line per message
    got = maildir_messages(mail)
    assert len(got) == 301 and late in got
    assert not list((mail / "tmp").iterdir())


def test_hard_messages_into_mbox(
    mailbox: DovecotUser, home: Home, tmp_path: Path, corpus: list[bytes]
) -> None:
    dc = mailbox.dovecot
    dc.add_messages(mailbox.user, corpus)
    served = dc.server_messages(mailbox.user)
    mbox = tmp_path / "inbox.mbox"
    home.write_config(config(mailbox, f"mbox:{mbox}"))
    result = home.run("sync")
    assert result.code == 0, result
    got = split_mboxrd(mbox.read_bytes())
    assert sorted(got) == sorted(_ensure_final_newline(m) for m in served)
    assert home.run("sync").code == 0
    assert len(split_mboxrd(mbox.read_bytes())) == 300


def test_keep_false_empties_server(mailbox: DovecotUser, home: Home, tmp_path: Path) -> None:
    dc = mailbox.dovecot
    msgs = [b"Subject: m%d\n\nbody %d\n" % (i, i) for i in range(25)]
    dc.add_messages(mailbox.user, msgs)
    mail = tmp_path / "Mail"
    home.write_config(config(mailbox, f"maildir:{mail}", keep=False))
    result = home.run("sync")
    assert result.code == 0, result
    assert dc.count(mailbox.user) == 0
    assert maildir_messages(mail) == sorted(msgs)
    # The deleted messages are gone from the server, so the store forgets them
    # after the next completed session.
    assert home.run("sync").code == 0
    assert home.seen_uidls() == set()


def test_mda_delivery(mailbox: DovecotUser, home: Home, tmp_path: Path) -> None:
    dc = mailbox.dovecot
    msgs = [b"Subject: mda %d\n\n.\n..\nFrom x\n" % i for i in range(5)]
    dc.add_messages(mailbox.user, msgs)
    out = tmp_path / "out"
    out.mkdir()
    script = tmp_path / "mda.py"
    script.write_text(
        "import sys, os, uuid\n"
        "data = sys.stdin.buffer.read()\n"
        f"open(os.path.join({str(out)!r}, uuid.uuid4().hex), 'wb').write(data)\n"
    )
    home.write_config(config(mailbox, f"mda:{sys.executable} {script}", keep=False))
    result = home.run("sync")
    assert result.code == 0, result
    assert sorted(p.read_bytes() for p in out.iterdir()) == sorted(msgs)
    assert dc.count(mailbox.user) == 0


def test_mda_failure_leaves_mail_on_server(
    mailbox: DovecotUser, home: Home, tmp_path: Path
) -> None:
    dc = mailbox.dovecot
    dc.add_messages(mailbox.user, [b"Subject: refused\n\nno\n"])
    home.write_config(config(mailbox, "mda:/bin/sh -c 'cat >/dev/null; exit 1'", keep=False))
    result = home.run("sync")
    assert result.code == 73, result
    assert result.stderr.startswith("fetchpop: home: ")
    assert dc.count(mailbox.user) == 1
    assert home.seen_uidls() == set()


def test_starttls_with_ca_file(mailbox: DovecotUser, home: Home, tmp_path: Path) -> None:
    dc = mailbox.dovecot
    dc.add_messages(mailbox.user, [b"Subject: stls\n\nhello\n"])
    mail = tmp_path / "Mail"
    home.write_config(config(mailbox, f"maildir:{mail}", tls="starttls", port=dc.port))
    result = home.run("-vv", "sync")
    assert result.code == 0, result
    assert "C: STLS" in result.stderr
    assert mailbox.password not in result.stderr
    assert maildir_messages(mail) == [b"Subject: stls\n\nhello\n"]


def test_unverified_certificate_is_refused(
    mailbox: DovecotUser, home: Home, tmp_path: Path
) -> None:
    dc = mailbox.dovecot
    dc.add_messages(mailbox.user, [b"Subject: x\n\ny\n"])
    mail = tmp_path / "Mail"
    text = config(mailbox, f"maildir:{mail}").replace(f'ca_file = "{dc.ca_file}"\n', "")
    home.write_config(text)
    result = home.run("sync")
    assert result.code == 69, result
    assert "home: TLS certificate of localhost did not verify" in result.stderr
    assert maildir_messages(mail) == []


def test_wrong_password(mailbox: DovecotUser, home: Home, tmp_path: Path) -> None:
    home.write_config(config(mailbox, f"maildir:{tmp_path / 'Mail'}", password="wrong"))
    result = home.run("sync")
    assert result.code == 77, result
    assert result.stderr.startswith("fetchpop: home: authentication failed: -ERR [AUTH]")
    assert "wrong" not in result.stderr


def test_closed_port_is_tempfail(home: Home, tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    home.write_config(
        account_toml(
            "home",
            host="127.0.0.1",
            user="u",
            password="p",
            port=port,
            deliver=f"maildir:{tmp_path / 'Mail'}",
        )
    )
    started = time.monotonic()
    result = home.run("sync")
    assert result.code == 75, result
    assert time.monotonic() - started < 10
    assert "home: cannot connect to 127.0.0.1 port" in result.stderr


def test_misspelt_key(home: Home, tmp_path: Path) -> None:
    path = home.write_config(
        account_toml("home", host="h", user="u", prot=995, deliver=f"maildir:{tmp_path}")
    )
    result = home.run("sync")
    assert result.code == 78, result
    assert str(path) in result.stderr and '"prot"' in result.stderr and "port" in result.stderr


def test_locked_mbox_waits_then_tempfails(mailbox: DovecotUser, home: Home, tmp_path: Path) -> None:
    dc = mailbox.dovecot
    dc.add_messages(mailbox.user, [b"Subject: x\n\ny\n"])
    mbox = tmp_path / "inbox"
    mbox.write_bytes(b"")
    home.write_config(config(mailbox, f"mbox:{mbox}", mbox_lock_timeout=1))
    with open(mbox, "rb+") as held:
        fcntl.lockf(held, fcntl.LOCK_EX)
        started = time.monotonic()
        result = home.run("sync")
        waited = time.monotonic() - started
    assert result.code == 75, result
    assert 1 <= waited < 20
    assert "locked" in result.stderr
    assert mbox.read_bytes() == b""
    assert home.seen_uidls() == set()
    assert home.run("sync").code == 0
    assert len(split_mboxrd(mbox.read_bytes())) == 1


def test_delete_after_days(mailbox: DovecotUser, home: Home, tmp_path: Path) -> None:
    dc = mailbox.dovecot
    dc.add_messages(mailbox.user, [b"Subject: old\n\n1\n", b"Subject: new\n\n2\n"])
    mail = tmp_path / "Mail"
    home.write_config(config(mailbox, f"maildir:{mail}", delete_after_days=30))
    assert home.run("sync").code == 0
    assert dc.count(mailbox.user) == 2
    # Age the first message's record by 31 days, as if time had passed.
    old_uidl = dc.uidls(mailbox.user)[0]
    db = sqlite3.connect(home.store_path)
    with db:
        db.execute(
            "UPDATE seen SET first_seen = first_seen - 31 * 86400 WHERE uidl = ?", (old_uidl,)
        )
    db.close()
    check = home.run("check")
    assert check.code == 0, check
    assert "1 to delete" in check.stdout and "first fetched 31 days ago" in check.stdout
    assert dc.count(mailbox.user) == 2  # check changes nothing
    result = home.run("sync")
    assert result.code == 0, result
    assert dc.uidls(mailbox.user) == [u for u in dc.uidls(mailbox.user) if u != old_uidl]
    assert dc.count(mailbox.user) == 1
    assert len(maildir_messages(mail)) == 2


def test_check_changes_nothing(mailbox: DovecotUser, home: Home, tmp_path: Path) -> None:
    dc = mailbox.dovecot
    dc.add_messages(mailbox.user, [b"Subject: a\n\n1\n", b"Subject: b\n\n2\n"])
    mail = tmp_path / "Mail"
    home.write_config(config(mailbox, f"maildir:{mail}", keep=False))
    result = home.run("check", "--json")
    assert result.code == 0, result
    import json

    report = json.loads(result.stdout)["accounts"][0]
    assert len(report["fetch"]) == 2 and report["delete"] == []
    assert dc.count(mailbox.user) == 2
    assert not home.store_path.exists()
    assert not mail.exists()


def test_status_and_accounts(mailbox: DovecotUser, home: Home, tmp_path: Path) -> None:
    import json

    dc = mailbox.dovecot
    dc.add_messages(mailbox.user, [b"Subject: a\n\n1\n"])
    home.write_config(config(mailbox, f"maildir:{tmp_path / 'Mail'}"))
    assert "never synced" in home.run("status").stdout
    assert home.run("sync").code == 0
    status = json.loads(home.run("status", "--json").stdout)["accounts"][0]
    assert status["known"] == 1 and status["last_run"]["exit_code"] == 0
    accounts = home.run("accounts", "--json")
    assert accounts.code == 0
    assert mailbox.password not in accounts.stdout
    assert json.loads(accounts.stdout)["accounts"][0]["password"] == "***"


def test_second_run_while_first_holds_lock(
    mailbox: DovecotUser, home: Home, tmp_path: Path
) -> None:
    from fetchpop.locks import MailboxLock

    home.write_config(config(mailbox, f"maildir:{tmp_path / 'Mail'}"))
    lock = MailboxLock(home.state_dir, ("localhost", mailbox.dovecot.tls_port, mailbox.user))
    lock.acquire()
    try:
        result = home.run("sync")
    finally:
        lock.release()
    assert result.code == 75, result
    assert "home: mailbox is being synced by another fetchpop run" in result.stderr


def test_renamed_account_keeps_its_state(mailbox: DovecotUser, home: Home, tmp_path: Path) -> None:
    dc = mailbox.dovecot
    dc.add_messages(mailbox.user, [b"Subject: a\n\n1\n"])
    mail = tmp_path / "Mail"
    home.write_config(config(mailbox, f"maildir:{mail}"))
    assert home.run("sync").code == 0
    home.write_config(config(mailbox, f"maildir:{mail}", name="renamed"))
    assert home.run("sync").code == 0
    assert len(maildir_messages(mail)) == 1


def test_permissions_of_config_with_password(
    mailbox: DovecotUser, home: Home, tmp_path: Path
) -> None:
    home.write_config(config(mailbox, f"maildir:{tmp_path / 'Mail'}"), mode=0o644)
    result = home.run("sync")
    assert result.code == 78, result
    assert "chmod 600" in result.stderr
    assert os.environ.get("X") is None
