"""``sync --jobs`` with many accounts against the real Dovecot (issue 18): the
per-account lock and the seen-store stay right when accounts run side by
side, some of them failing and some locked by another run; every message
arrives once, and a failing account costs the others nothing."""

from __future__ import annotations

import json
import re
import socket
import sqlite3
from collections.abc import Iterable, Iterator, Mapping
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
from dovecot import Dovecot, DovecotUser
from runner import Home, Result, account_toml, maildir_messages

from fetchpop.cli.app import combine
from fetchpop.errors import ExitCode
from fetchpop.locks import MailboxLock

pytestmark = pytest.mark.dovecot

ACCOUNTS = 50
JOBS = "8"
LOCKED = "mailbox is being synced by another fetchpop run"


def _name(i: int) -> str:
    return f"a{i:02d}"


def _msgs(tag: str, n: int, start: int = 0) -> list[bytes]:
    """*n* small messages, each unlike any other in the test."""
    return [
        b"Subject: %s %d\nMessage-ID: <%s.%d@jobs.test>\n\nbody of %s %d\n"
        % (tag.encode(), k, tag.encode(), k, tag.encode(), k)
        for k in range(start, start + n)
    ]


def _account(name: str, box: DovecotUser, target: Path, **keys: object) -> str:
    """An account for *box* over implicit TLS, delivering into the Maildir *target*."""
    dc = box.dovecot
    base: dict[str, object] = {
        "host": "localhost",
        "user": box.user,
        "port": dc.tls_port,
        "tls": "implicit",
        "ca_file": str(dc.ca_file),
        "password": box.password,
        "deliver": f"maildir:{target}",
    }
    base.update(keys)
    return account_toml(name, **base)


@pytest.fixture
def boxes(dovecot: Dovecot) -> Iterator[list[DovecotUser]]:
    """50 new, empty users on the shared Dovecot; removed after the test."""
    made = [dovecot.new_mailbox("jobs") for _ in range(ACCOUNTS)]
    try:
        yield made
    finally:
        for box in made:
            dovecot.remove_user(box.user)


def _closed_port() -> int:
    """A loopback port nothing listens on (bound, then closed)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _lock_key(box: DovecotUser) -> tuple[str, int, str]:
    """The mailbox an :func:`_account` for *box* locks (Account.mailbox)."""
    return ("localhost", box.dovecot.tls_port, box.user)


def _sync(home: Home, *args: str) -> tuple[Result, dict[str, dict[str, Any]]]:
    """``fetchpop sync --jobs 8 --json ARGS``: the result, and the report by account
    (each account reported once)."""
    result = home.run("sync", "--jobs", JOBS, "--json", *args)
    try:
        entries = json.loads(result.stdout)["accounts"]
    except (ValueError, KeyError):
        pytest.fail(f"no --json report\n{result}")
    report = {entry["account"]: entry for entry in entries}
    assert len(report) == len(entries), result  # one entry per account
    return result, report


def _seen(home: Home) -> dict[tuple[int, str], list[str]]:
    """The seen-store's UIDLs by mailbox (port, user), each list sorted: a UIDL
    recorded twice would show twice."""
    out: dict[tuple[int, str], list[str]] = {}
    if not home.store_path.exists():
        return out
    db = sqlite3.connect(home.store_path)
    try:
        rows = db.execute(
            "SELECT m.port, m.user, s.uidl FROM seen s JOIN mailbox m ON m.id = s.mailbox"
        ).fetchall()
    finally:
        db.close()
    for port, user, uidl in rows:
        out.setdefault((port, user), []).append(uidl)
    return {key: sorted(uidls) for key, uidls in out.items()}


def _assert_delivered(expected: Mapping[Path, Iterable[bytes]]) -> None:
    """Each Maildir holds exactly its messages, each once, and nothing else."""
    for path, messages in expected.items():
        assert maildir_messages(path) == sorted(messages), path


def _stderr_reports(stderr: str) -> list[str]:
    """The ``fetchpop: ...`` reports on stderr, sorted, whether or not each had
    its own line (see test_each_failure_has_its_own_line_under_jobs)."""
    return sorted(part.strip() for part in re.split(r"(?=fetchpop: )", stderr) if part.strip())


# ------------------------------------------------- 50 accounts, all well --


def test_fifty_accounts_deliver_every_message_once(
    dovecot: Dovecot, boxes: list[DovecotUser], home: Home, tmp_path: Path
) -> None:
    """50 mailboxes of 0 to 5 messages, a third with keep = false, five
    delivering into one shared Maildir: each message arrives once, the
    seen-store knows each kept UIDL once, a second run fetches nothing, and
    new mail arrives once."""
    shared = tmp_path / "Shared"
    counts = {i: i % 6 for i in range(ACCOUNTS)}
    keeps = {i: i % 3 != 2 for i in range(ACCOUNTS)}
    targets = {i: shared if i % 10 == 4 else tmp_path / f"Mail{i:02d}" for i in range(ACCOUNTS)}
    expected: dict[Path, list[bytes]] = {path: [] for path in targets.values()}
    text = ""
    for i, box in enumerate(boxes):
        messages = _msgs(_name(i), counts[i])
        dovecot.add_messages(box.user, messages)
        expected[targets[i]] += messages
        text += _account(_name(i), box, targets[i], keep=keeps[i])
    home.write_config(text)
    assert len(expected[shared]) == sum(counts[i] for i in (4, 14, 24, 34, 44)) > 0

    def check_server_and_store() -> None:
        seen = _seen(home)
        for i, box in enumerate(boxes):
            key = (dovecot.tls_port, box.user)
            if keeps[i]:  # all still there, each UIDL recorded once
                assert dovecot.count(box.user) == counts[i]
                assert seen.get(key, []) == sorted(dovecot.uidls(box.user)), _name(i)
            else:  # deleted once delivered, and the records of them forgotten
                assert dovecot.count(box.user) == 0, _name(i)
                assert key not in seen, _name(i)

    first, report = _sync(home)
    assert first.code == 0, first
    assert first.stderr == "", first  # quiet when all is well
    assert sorted(report) == [_name(i) for i in range(ACCOUNTS)]
    for i in range(ACCOUNTS):
        entry = report[_name(i)]
        assert (entry["ok"], entry["exit_code"], entry["error"]) == (True, 0, None), entry
        assert entry["fetched"] == counts[i], entry
        assert entry["deleted"] == (0 if keeps[i] else counts[i]), entry
    _assert_delivered(expected)
    check_server_and_store()

    again, report = _sync(home)
    assert again.code == 0 and again.stderr == "", again
    assert [report[_name(i)]["fetched"] for i in range(ACCOUNTS)] == [0] * ACCOUNTS
    _assert_delivered(expected)
    check_server_and_store()

    fresh = [i for i in range(ACCOUNTS) if i % 4 == 0]  # empty, keep = false, shared among them
    assert 0 in {counts[i] for i in fresh} and not all(keeps[i] for i in fresh)
    assert any(targets[i] == shared for i in fresh)
    for i in fresh:
        [message] = _msgs(_name(i), 1, start=10)
        dovecot.add_message(boxes[i].user, message)
        expected[targets[i]].append(message)
        counts[i] += keeps[i]  # what the server keeps
    third, report = _sync(home)
    assert third.code == 0 and third.stderr == "", third
    fetched = {i: report[_name(i)]["fetched"] for i in range(ACCOUNTS)}
    assert fetched == {i: int(i in fresh) for i in range(ACCOUNTS)}
    _assert_delivered(expected)
    check_server_and_store()


# ------------------------------ 50 accounts, some failing, some locked --


def _check_failures(
    report: Mapping[str, Mapping[str, Any]],
    counts: Mapping[int, int],
    kinds: Mapping[int, str],
    closed: int,
) -> dict[int, str]:
    """The --json report of the run with failing accounts: the healthy ones got
    all their mail; each failing one nothing, with the status and the error of
    its failure (returned by account number)."""
    failures = {
        "password": (ExitCode.NOPERM, "authentication failed: -ERR [AUTH] Authentication failed."),
        "refused": (
            ExitCode.TEMPFAIL,
            f"cannot connect to localhost port {closed}: Connection refused",
        ),
        "locked": (ExitCode.TEMPFAIL, LOCKED),
    }
    for i in range(ACCOUNTS):
        entry = report[_name(i)]
        if i in kinds:
            assert entry["ok"] is False and entry.get("fetched", 0) == 0, entry
            assert (entry["exit_code"], entry["error"]) == failures[kinds[i]], entry
        else:
            assert (entry["ok"], entry["exit_code"], entry["error"]) == (True, 0, None), entry
            assert entry["fetched"] == counts[i], entry
    return {i: report[_name(i)]["error"] for i in kinds}


def test_failing_and_locked_accounts_cost_the_others_nothing(
    dovecot: Dovecot, boxes: list[DovecotUser], home: Home, tmp_path: Path
) -> None:
    """Of 50 accounts, three have a wrong password, three a port that refuses
    connections and three a mailbox another run holds: the other 41 get all
    their mail, those nine nothing, each failure is reported, and the exit
    status is combine()'s. Once fixed, the nine get their mail, once."""
    kinds = dict.fromkeys((3, 19, 36), "password")
    kinds |= dict.fromkeys((7, 24, 41), "refused")
    kinds |= dict.fromkeys((11, 28, 45), "locked")
    failing = set(kinds)
    closed = _closed_port()
    counts = {i: 1 + i % 4 for i in range(ACCOUNTS)}
    targets = {i: tmp_path / f"Mail{i:02d}" for i in range(ACCOUNTS)}
    messages = {i: _msgs(_name(i), counts[i]) for i in range(ACCOUNTS)}
    for i, box in enumerate(boxes):
        dovecot.add_messages(box.user, messages[i])

    def write_config(*, broken: bool) -> None:
        text = ""
        for i, box in enumerate(boxes):
            keys: dict[str, object] = {}
            if broken and kinds.get(i) == "password":
                keys["password"] = "not-" + box.password
            if broken and kinds.get(i) == "refused":
                keys["port"] = closed
            text += _account(_name(i), box, targets[i], **keys)
        home.write_config(text)

    write_config(broken=True)
    locked = sorted(i for i, kind in kinds.items() if kind == "locked")
    with ExitStack() as held:  # another fetchpop's locks, held while this one runs
        for i in locked:
            lock = held.enter_context(MailboxLock(home.state_dir, _lock_key(boxes[i])))
            lock.acquire()
        result, report = _sync(home)

    assert sorted(report) == [_name(i) for i in range(ACCOUNTS)]
    codes = [report[_name(i)]["exit_code"] for i in range(ACCOUNTS)]
    # Nine accounts failed: combine() makes that EX_TEMPFAIL, whatever their own codes.
    assert result.code == ExitCode.TEMPFAIL == combine(codes), result
    why = _check_failures(report, counts, kinds, closed)
    # One report per failing account, naming it, and nothing else on stderr.
    assert _stderr_reports(result.stderr) == sorted(
        f"fetchpop: {_name(i)}: {why[i]}" for i in failing
    ), result
    _assert_delivered({targets[i]: [] if i in failing else messages[i] for i in targets})
    seen = _seen(home)
    for i, box in enumerate(boxes):
        uidls = seen.get((dovecot.tls_port, box.user), [])
        assert uidls == ([] if i in failing else sorted(dovecot.uidls(box.user))), _name(i)
        assert dovecot.count(box.user) == counts[i]  # keep = true: nothing deleted
    assert not any(port == closed and uidls for (port, _), uidls in seen.items())

    # One failing account among healthy ones: the status is its own.
    single = home.run("sync", "--jobs", JOBS, _name(3), _name(0), _name(1), _name(2))
    assert single.code == ExitCode.NOPERM, single
    assert single.stderr == f"fetchpop: {_name(3)}: {why[3]}\n", single

    # Locks released (above), passwords and ports fixed: the nine catch up.
    write_config(broken=False)
    fixed, report = _sync(home)
    assert fixed.code == 0 and fixed.stderr == "", fixed
    for i in range(ACCOUNTS):
        entry = report[_name(i)]
        assert (entry["ok"], entry["fetched"]) == (True, counts[i] if i in failing else 0), entry
    _assert_delivered({targets[i]: messages[i] for i in targets})
    seen = _seen(home)
    for box in boxes:
        assert seen[(dovecot.tls_port, box.user)] == sorted(dovecot.uidls(box.user))
    last, report = _sync(home)
    assert last.code == 0 and last.stderr == "", last
    assert all(entry["fetched"] == 0 for entry in report.values())
    _assert_delivered({targets[i]: messages[i] for i in targets})


def test_each_failure_has_its_own_line_under_jobs(home: Home) -> None:
    """200 accounts whose server refuses the connection fail at about the same
    moment: each says so on a line of its own. (Without the fix, nearly every
    run shows two reports on one line; up to five runs make a pass by chance
    unlikely enough for a strict xfail.)"""
    closed = _closed_port()
    names = [f"r{i:03d}" for i in range(4 * ACCOUNTS)]
    home.write_config(
        "".join(
            account_toml(
                name,
                host="127.0.0.1",
                port=closed,
                user=name,
                password="secret",
                deliver=f"maildir:{home.root / 'Mail'}",
            )
            for name in names
        )
    )
    expected = sorted(
        f"fetchpop: {name}: cannot connect to 127.0.0.1 port {closed}: Connection refused"
        for name in names
    )
    for _ in range(5):
        result = home.run("sync", "--jobs", JOBS)
        assert result.code == ExitCode.TEMPFAIL, result
        assert _stderr_reports(result.stderr) == expected, result  # each failure said
        assert sorted(result.stderr.splitlines()) == expected, result  # each on its own line


# ------------------------------------------ several accounts, one mailbox --


def _same_mailbox_config(home: Home, box: DovecotUser, tmp_path: Path, n: int) -> list[Path]:
    """*n* accounts on *box* (same host, port and user), each with its own Maildir."""
    targets = [tmp_path / f"Same{k}" for k in range(n)]
    text = "".join(_account(f"s{k}", box, targets[k]) for k in range(n))
    home.write_config(text)
    return targets


def _all_delivered(targets: Iterable[Path]) -> list[bytes]:
    return sorted(m for path in targets for m in maildir_messages(path))


def test_accounts_sharing_a_mailbox_get_its_mail_once(
    mailbox: DovecotUser, home: Home, tmp_path: Path
) -> None:
    """Six accounts naming one mailbox (the config allows it; the seen-store and
    the lock are the mailbox's): under --jobs its mail arrives once in all,
    not once per account, run after run. With --wait they take turns, and the
    run is clean."""
    dc = mailbox.dovecot
    sent = _msgs("same", 8)
    dc.add_messages(mailbox.user, sent)
    targets = _same_mailbox_config(home, mailbox, tmp_path, 6)
    for round_ in range(3):
        result, report = _sync(home)
        assert sorted(report) == [f"s{k}" for k in range(6)]
        assert result.code in (0, ExitCode.TEMPFAIL), result
        for entry in report.values():  # each either synced or found the mailbox busy
            assert entry["ok"] or (entry["exit_code"], entry["error"]) == (
                ExitCode.TEMPFAIL,
                LOCKED,
            ), entry
        assert sum(entry.get("fetched", 0) for entry in report.values()) == (
            8 if round_ == 0 else 0
        )
        assert _all_delivered(targets) == sorted(sent)
    assert _seen(home) == {(dc.tls_port, mailbox.user): sorted(dc.uidls(mailbox.user))}

    more = _msgs("same", 2, start=8)
    dc.add_messages(mailbox.user, more)
    waited, report = _sync(home, "--wait", "30")
    assert waited.code == 0 and waited.stderr == "", waited
    assert sorted(entry["fetched"] for entry in report.values()) == [0, 0, 0, 0, 0, 2]
    assert _all_delivered(targets) == sorted(sent + more)
    assert _seen(home) == {(dc.tls_port, mailbox.user): sorted(dc.uidls(mailbox.user))}
    sequential = home.run("sync")  # one after another, as without --jobs: clean too
    assert sequential.code == 0 and sequential.stderr == "", sequential
    assert _all_delivered(targets) == sorted(sent + more)


def test_accounts_sharing_a_mailbox_do_not_lock_each_other_out(
    mailbox: DovecotUser, home: Home, tmp_path: Path
) -> None:
    """What a user of the config above expects of ``sync --jobs``: what plain
    ``sync`` does, a clean run."""
    mailbox.dovecot.add_messages(mailbox.user, _msgs("same", 8))
    _same_mailbox_config(home, mailbox, tmp_path, 6)
    for _ in range(3):
        result, _report = _sync(home)
        assert result.code == 0 and result.stderr == "", result


def test_accounts_sharing_an_mbox_append_one_after_the_other(
    boxes: list[DovecotUser], home: Home, tmp_path: Path
) -> None:
    """Eight accounts of eight servers' mailboxes, one mbox (``/var/mail/alice``
    style), plain ``sync`` (4 jobs by default): an mbox's locks do not keep two
    threads of one process apart, so those accounts go one after the other.
    Every message arrives once and whole."""
    import mailbox

    mbox = tmp_path / "inbox.mbox"
    sent: list[bytes] = []
    config = []
    for i, box in enumerate(boxes[:8]):
        msgs = _msgs(f"mbox{i}", 30)
        box.dovecot.add_messages(box.user, msgs)
        sent += msgs
        config.append(_account(_name(i), box, tmp_path, deliver=f"mbox:{mbox}"))
    home.write_config("".join(config))
    result = home.run("sync")
    assert result.code == 0 and result.stderr == "", result
    box = mailbox.mbox(mbox, create=False)
    try:
        got = [m.as_bytes().replace(b"\r\n", b"\n") for m in box]
    finally:
        box.close()
    subjects = sorted(m.split(b"\n", 1)[0] for m in got)
    assert subjects == sorted(m.split(b"\n", 1)[0] for m in sent)
    for message in got:  # whole: its own header and body, nothing of another's
        tag = message.split(b"\n", 1)[0].removeprefix(b"Subject: ")
        assert message.rstrip(b"\n").endswith(b"body of " + tag), message
