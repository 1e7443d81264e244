"""The Session and run_account in-process, against the scripted server, and
commands driven in-process through click's CliRunner with an injected
Environment (the subprocess tests keep exit codes, signals and real servers)."""

from __future__ import annotations

import dataclasses
import io
import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from fakepop import FakePOP3, Fault, drop
from runner import account_toml, maildir_messages

from fetchpop.cli import Environment, main
from fetchpop.config import Account
from fetchpop.deliver import DeliverySpec
from fetchpop.errors import ConnectionLostError, ExitCode
from fetchpop.locks import MailboxLock
from fetchpop.seenstore import SeenStore
from fetchpop.sync import Session, run_account

MESSAGES = [b"Subject: %d\n\nbody %d\n" % (n, n) for n in range(1, 6)]


def account(server: FakePOP3, mail: Path, **keys: object) -> Account:
    base = Account(
        name="home",
        host="127.0.0.1",
        user="alice",
        port=server.port,
        tls="off",
        deliver=DeliverySpec("maildir", mail),
        timeout=5.0,
    )
    return dataclasses.replace(base, **keys)  # type: ignore[arg-type]


def secret() -> str:
    return "secret"


def test_a_session_delivers_records_and_deletes(tmp_path: Path) -> None:
    mail = tmp_path / "Mail"
    with (
        FakePOP3(MESSAGES) as server,
        SeenStore(tmp_path / "store.sqlite3") as store,
    ):
        result = Session(account(server, mail, keep=False), store, secret).run()
        assert (result.fetched, result.deleted, result.server_messages) == (5, 5, 5)
        assert maildir_messages(mail) == sorted(MESSAGES)
        assert server.mailbox.messages == []
        mailbox = store.mailbox_id("127.0.0.1", server.port, "alice")
        # QUIT confirmed the deletions, so their records went with them.
        assert mailbox is not None and store.seen(mailbox) == {}
        assert store.intents(mailbox) == []


def test_a_dropped_connection_keeps_what_was_recorded_and_deletes_nothing(
    tmp_path: Path,
) -> None:
    mail = tmp_path / "Mail"
    with (
        FakePOP3(MESSAGES, faults=[Fault("RETR 3", drop(after=10))]) as server,
        SeenStore(tmp_path / "store.sqlite3") as store,
    ):
        session = Session(account(server, mail, keep=False), store, secret)
        with pytest.raises(ConnectionLostError):
            session.run()
        assert session.result.fetched == 2
        assert maildir_messages(mail) == sorted(MESSAGES[:2])
        assert server.commands_named("DELE") == []
        assert len(server.mailbox.messages) == 5
        mailbox = store.mailbox_id("127.0.0.1", server.port, "alice")
        assert mailbox is not None and set(store.seen(mailbox)) == {"uid-1", "uid-2"}


def test_run_account_takes_the_lock_and_writes_the_run_record(tmp_path: Path) -> None:
    mail = tmp_path / "Mail"
    state = tmp_path / "state"
    with FakePOP3(MESSAGES) as server, SeenStore(tmp_path / "store.sqlite3") as store:
        acct = account(server, mail)
        with MailboxLock(state, acct.mailbox) as held:
            held.acquire()
            locked = run_account(acct, store, state, secret)
        assert locked.code == ExitCode.TEMPFAIL and locked.result is None
        assert locked.message == "mailbox is being synced by another fetchpop run"
        done = run_account(acct, store, state, secret)
        assert done.code == 0 and done.message == "ok"
        assert done.result is not None and done.result.fetched == 5
        record = store.last_run("home")
        assert record is not None and (record.exit_code, record.fetched) == (0, 5)


def test_commands_run_in_process_with_an_injected_environment(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text(
        account_toml(
            "home", host="pop.example.org", user="alice", deliver=f"maildir:{tmp_path / 'M'}"
        )
    )
    out, err = io.StringIO(), io.StringIO()
    env = Environment(
        stdout=out,
        stderr=err,
        stdin_isatty=False,
        stderr_isatty=False,
        environ={"HOME": str(tmp_path)},
        state_override=tmp_path / "state",
    )
    result = CliRunner().invoke(main, ["-c", str(config), "accounts", "--json"], obj=env)
    assert result.exit_code == 0 and err.getvalue() == "", err.getvalue()
    data = json.loads(out.getvalue())
    assert [a["name"] for a in data["accounts"]] == ["home"]
    assert data["accounts"][0]["port"] == 995


def test_an_in_process_command_failure_goes_through_the_one_funnel(tmp_path: Path) -> None:
    out, err = io.StringIO(), io.StringIO()
    env = Environment(stdout=out, stderr=err, environ={"HOME": str(tmp_path)})
    missing = tmp_path / "nothing.toml"
    result = CliRunner().invoke(main, ["-c", str(missing), "status"], obj=env)
    assert result.exit_code == ExitCode.CONFIG
    assert err.getvalue().startswith(f"fetchpop: {missing}: ")
    assert out.getvalue() == ""


def test_an_interrupted_mbox_delivery_the_server_cannot_serve_now_waits(tmp_path: Path) -> None:
    """Killed after the mbox copy was written, before it was recorded: the next
    run compares with the server's copy. If RETR is refused for now
    ([SYS/TEMP]), nothing is decided and the message is not fetched again."""
    from fakepop import err

    from fetchpop.deliver import format_deliver

    mbox = tmp_path / "mail.mbox"
    with (
        FakePOP3([b"Subject: one\n\nbody\n"]) as server,
        SeenStore(tmp_path / "s.sqlite3") as store,
    ):
        acct = dataclasses.replace(
            account(server, tmp_path / "unused"), deliver=DeliverySpec("mbox", mbox)
        )
        Session(acct, store, secret).run()
        mailbox = store.mailbox_id("127.0.0.1", server.port, "alice")
        assert mailbox is not None
        # As a kill -9 after the fsync and before the record leaves it:
        store.forget(mailbox, ["uid-1"])
        store.begin_intents(mailbox, format_deliver(acct.deliver), [("uid-1", "0")], durable=True)
        server.faults = [Fault("RETR 1", err(b"-ERR [SYS/TEMP] busy, try later\r\n"), times=1)]
        result = Session(acct, store, secret).run()
        assert result.fetched == 0
        assert any("cannot be read now to check" in w for w in result.warnings), result.warnings
        assert mbox.read_bytes().count(b"Subject: one") == 1
        assert [i.uidl for i in store.intents(mailbox)] == ["uid-1"]
        later = Session(acct, store, secret).run()  # the server serves it again
        assert later.fetched == 0 and any("were recorded" in w for w in later.warnings)
        assert mbox.read_bytes().count(b"Subject: one") == 1
        assert "uid-1" in store.seen(mailbox)


def test_an_os_error_that_escapes_is_a_local_io_error_not_a_bug() -> None:
    """Say, EIO while Python reads one of fetchpop's modules for a lazy import."""
    import errno

    from fetchpop.cli.app import failure

    code, lines = failure(OSError(errno.EIO, "Input/output error"))
    assert code == ExitCode.IOERR
    assert lines == ["local I/O error: [Errno 5] Input/output error"]
    assert failure(ValueError("x"))[0] == ExitCode.SOFTWARE


def test_a_local_io_error_during_the_tls_handshake_is_74(monkeypatch: pytest.MonkeyPatch) -> None:
    """EIO or ENOSPC in the middle of a handshake is this machine's trouble,
    not a TLS failure (69) that would send the user looking at certificates."""
    import errno
    import socket
    import ssl

    from fetchpop.errors import LocalIOError
    from fetchpop.pop3.transport import Transport, make_ssl_context

    class Failing:
        def settimeout(self, _: float) -> None:
            pass

        def do_handshake(self) -> None:
            raise OSError(errno.EIO, "Input/output error")

        def close(self) -> None:
            pass

    context = make_ssl_context()
    monkeypatch.setattr(ssl.SSLContext, "wrap_socket", lambda *a, **k: Failing())
    left, right = socket.socketpair()
    with left, right:
        transport = Transport(left, "pop.example.org", 5.0)
        with pytest.raises(LocalIOError, match="Input/output error") as info:
            transport.start_tls(context)
    assert info.value.exit_code == ExitCode.IOERR


def test_no_summary_as_if_all_went_well_for_a_failed_account(tmp_path: Path) -> None:
    from runner import Home

    home = Home(tmp_path / "home")
    with FakePOP3(MESSAGES) as server:
        port = server.port
    home.write_config(
        account_toml(
            "home",
            host="127.0.0.1",
            port=port,
            user="alice",
            password="secret",
            tls="off",
            deliver=f"maildir:{tmp_path / 'Mail'}",
            timeout=5,
        )
    )
    result = home.run("-v", "sync")  # nothing listens on the port any more
    assert result.code == 75, result
    assert "new message(s)" not in result.stderr


DAY = 86400.0


def test_delete_after_days_with_a_clock_that_jumps(tmp_path: Path) -> None:
    """The clock is the Session's (injected): backwards, nothing is old enough;
    forwards past the limit, what is due goes, checked first with TOP."""
    mail = tmp_path / "Mail"
    start = 1_800_000_000.0
    with FakePOP3(MESSAGES[:2]) as server, SeenStore(tmp_path / "s.sqlite3") as store:
        acct = account(server, mail, keep=True, delete_after_days=30)
        first = Session(acct, store, secret, now=lambda: start).run()
        assert first.fetched == 2
        back = Session(acct, store, secret, now=lambda: start - 400 * DAY).run()
        assert back.deleted == 0 and len(server.mailbox.messages) == 2
        early = Session(acct, store, secret, now=lambda: start + 29.9 * DAY).run()
        assert early.deleted == 0
        due = Session(acct, store, secret, now=lambda: start + 30 * DAY).run()
        assert due.deleted == 2 and server.mailbox.messages == []
        assert server.commands_named("TOP") == ["1 0", "2 0"]
        assert maildir_messages(mail) == sorted(MESSAGES[:2])


@pytest.mark.parametrize("extra", [b"", b"a few more lines\n" * 3])
def test_a_message_whose_size_differs_from_list_is_delivered_as_served(
    extra: bytes, tmp_path: Path
) -> None:
    """LIST said one size, RETR serves another (smaller, or larger within the
    bound): what was served is delivered, once."""
    from fakepop import dot_stuff, reply, to_crlf

    served = b"Subject: 2\n\nbody 2\n" + extra if extra else b"Subject: 2\n\nb\n"
    wire = b"+OK\r\n" + dot_stuff(to_crlf(served)) + b".\r\n"
    mail = tmp_path / "Mail"
    with (
        FakePOP3(MESSAGES[:3], faults=[Fault("RETR 2", reply(wire))]) as server,
        SeenStore(tmp_path / "s.sqlite3") as store,
    ):
        result = Session(account(server, mail), store, secret).run()
        assert result.fetched == 3
        assert maildir_messages(mail) == sorted([MESSAGES[0], served, MESSAGES[2]])


def test_knowing_redelivery_through_an_mda_is_said(tmp_path: Path) -> None:
    """An MDA cannot be asked whether it got a message before a crash: the
    message is delivered again (at least once, never lost), and one line says so."""
    import sys

    from fetchpop.deliver import format_deliver

    out = tmp_path / "out"
    out.mkdir()
    script = tmp_path / "mda.py"
    script.write_text(
        "import sys, uuid, os\n"
        f"open(os.path.join({str(out)!r}, uuid.uuid4().hex), 'wb').write(sys.stdin.buffer.read())\n"
    )
    spec = DeliverySpec("mda", None, (sys.executable, str(script)))
    with FakePOP3(MESSAGES[:1]) as server, SeenStore(tmp_path / "s.sqlite3") as store:
        acct = dataclasses.replace(account(server, tmp_path / "unused"), deliver=spec)
        mailbox = store.mailbox_id("127.0.0.1", server.port, "alice")
        assert mailbox is not None
        # As a crash after the MDA exited 0, before the record, leaves it:
        store.begin_intents(mailbox, format_deliver(spec), [("uid-1", "")], durable=True)
        result = Session(acct, store, secret).run()
        assert result.fetched == 1
        assert (
            "message uid-1 is delivered again: an interrupted run may have handed it to the "
            "MDA already, which cannot be asked"
        ) in result.warnings
        assert len(list(out.iterdir())) == 1
