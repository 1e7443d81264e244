"""Network faults, one class at a time: the real ``fetchpop sync`` against fakepop.

Every test asserts what a user would notice after the faulty run: the exit
status, the one stderr line naming the account, the Maildir (no partial message,
``tmp/`` empty), the seen-store, what the server was told (no DELE of a message
that was not delivered; ``keep = false`` so delivered ones *would* be DELEted),
that the run ended within a bounded time -- and that a following clean run
fetches exactly what was missed: nothing twice, nothing lost.

POP3 has no STAT in fetchpop's session (UIDL and LIST say everything STAT
would), so "drop at STAT/LIST" is a drop at LIST.
"""

from __future__ import annotations

import re
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import pytest
import trustme
from fakepop import (
    Action,
    Command,
    Conn,
    FakePOP3,
    Fault,
    Mailbox,
    chain,
    drip,
    drop,
    endless,
    err,
    make_server_context,
    no_quit_reply,
    reply,
    reset,
    stall,
    to_crlf,
    truncate_multiline,
    vanish,
)
from runner import Home, Result, account_toml, maildir_messages

#: seconds of silence before fetchpop gives up (the account's ``timeout``)
TIMEOUT = 2
#: a faulty run must end within this (Python start-up included, on a busy CI box)
BOUND = TIMEOUT + 8.0

MESSAGES = [
    b"From: a@example.org\nSubject: one\n\nfirst message\n",
    b"From: b@example.org\nSubject: two\n\n.leading dot\n..two dots\n.\nend of two\n",
    b"From: c@example.org\nSubject: three\n\n" + b"a line of text in message three\n" * 40,
    b"From: d@example.org\nSubject: four\n\nfour\r\nwith a CRLF line\n",
]
UIDLS = [f"uid-{n}" for n in range(1, len(MESSAGES) + 1)]
CLEARTEXT_WARNING = re.compile(r'^fetchpop: home: warning: tls = "off"')
# Plain CAPA without SASL, so that auth = "user" is what a server offers too.
CAPA = ("TOP", "UIDL", "USER", "RESP-CODES", "AUTH-RESP-CODE", "PIPELINING")


def stored(message: bytes) -> bytes:
    """What a Maildir holds for *message*: CRLF as LF, a final newline."""
    return to_crlf(message).replace(b"\r\n", b"\n")


# -- harness --------------------------------------------------------------------


@pytest.fixture
def mail(tmp_path: Path) -> Path:
    return tmp_path / "Mail"


@contextmanager
def serving(
    messages: list[bytes] | Mailbox | None = None,
    faults: list[Fault] | None = None,
    **kwargs: Any,
) -> Iterator[FakePOP3]:
    """A running fakepop whose own errors (bugs in the harness) must stay empty."""
    box = messages if isinstance(messages, Mailbox) else Mailbox(messages or MESSAGES, None)
    kwargs.setdefault("capa", CAPA)
    server = FakePOP3(box, faults=faults or [], **kwargs)
    server.start()
    try:
        yield server
    finally:
        server.close()
    assert not server.errors, server.errors


def make_server(ca: trustme.CA) -> ssl.SSLContext:
    """A server context with a certificate for "localhost" from *ca*."""
    return make_server_context(ca, "localhost")


def configure(
    home: Home, server: FakePOP3, mail: Path, ca: trustme.CA | None = None, **keys: object
) -> None:
    """One account "home" on *server*: clear text, or implicit TLS trusting *ca*."""
    base: dict[str, object] = {
        "host": "127.0.0.1",
        "port": server.port,
        "tls": "off",
        "user": "alice",
        "password": "secret",
        "auth": "user",
        "deliver": f"maildir:{mail}",
        "keep": False,
        "timeout": TIMEOUT,
    }
    if ca is not None:
        ca_file = home.root / "ca.pem"
        ca_file.parent.mkdir(parents=True, exist_ok=True)
        ca.cert_pem.write_to_path(str(ca_file))
        base.update(host="localhost", tls="implicit", ca_file=str(ca_file))
    base.update(keys)
    home.write_config(account_toml("home", **base))


def sync(home: Home, server: FakePOP3, *args: str, bound: float = BOUND) -> Result:
    """``fetchpop sync``, which must end within *bound* seconds; waits for the server."""
    before = len(server.sessions)
    started = time.monotonic()
    result = home.run(*args, "sync", timeout=bound + 30)
    elapsed = time.monotonic() - started
    assert elapsed < bound, f"sync took {elapsed:.1f} s\n{result}"
    if len(server.sessions) > before:
        assert server.wait_sessions(len(server.sessions)), "fakepop session did not end"
    return result


def problems(result: Result) -> list[str]:
    """stderr lines, without the warning every clear-text run prints."""
    return [line for line in result.stderr.splitlines() if not CLEARTEXT_WARNING.match(line)]


def assert_failed(result: Result, code: int, pattern: str) -> str:
    """Exit *code* and exactly one stderr line, naming the account, matching *pattern*."""
    assert result.code == code, result
    lines = problems(result)
    assert len(lines) == 1, result
    assert lines[0].startswith("fetchpop: home: "), result
    assert re.search(pattern, lines[0]), result
    assert "secret" not in result.stderr
    return lines[0]


def assert_mail(mail: Path, messages: list[bytes]) -> None:
    """The Maildir holds exactly *messages* (each once) and nothing half-written."""
    assert maildir_messages(mail) == sorted(stored(m) for m in messages)
    tmp = mail / "tmp"
    assert not tmp.exists() or not list(tmp.iterdir()), list(tmp.iterdir())


def session_commands(server: FakePOP3, index: int, name: str) -> list[str]:
    """Arguments of the *name* commands of session *index*."""
    return [c.arg for c in map(Command, server.sessions[index].commands) if c.name == name.upper()]


def assert_clean_rerun(home: Home, server: FakePOP3, mail: Path) -> None:
    """With the faults gone, one run delivers what was missed and empties the server."""
    server.faults.clear()
    before = len(server.sessions)
    result = sync(home, server)
    assert result.code == 0, result
    assert problems(result) == [], result
    assert_mail(mail, MESSAGES)
    assert server.mailbox.messages == []  # keep = false: all delivered, all deleted
    assert server.sessions[before].quit_answered
    # QUIT confirmed the deletions: their records go (a UIDL that comes back
    # after that is another message).
    assert home.seen_uidls() == set()


# -- drops and resets at every stage --------------------------------------------

# (id, fault, messages delivered by the faulty run, stderr pattern)
DROPS = [
    ("greeting", Fault("greeting", drop()), 0, "closed by server"),
    ("greeting-partial", Fault("greeting", drop(after=5)), 0, "closed by server"),
    ("capa", Fault("CAPA", drop(after=35)), 0, "closed by server"),
    ("user", Fault("USER", drop()), 0, "closed by server"),
    ("pass", Fault("PASS", drop()), 0, "closed by server"),
    ("uidl", Fault("UIDL", drop(after=40)), 0, "closed by server"),
    ("list", Fault("LIST", drop()), 0, "closed by server"),
    ("reset-greeting", Fault("greeting", reset()), 0, "reset|lost"),
    ("reset-uidl", Fault("UIDL", reset(after=20)), 0, "reset|lost|closed"),
]
# The same during RETR, where pipelining changes what is in flight.
RETR_DROPS = [
    ("retr-first", Fault("RETR 1", drop()), 0, "closed by server"),
    ("mid-retr", Fault("RETR 3", drop(after=200)), 2, "closed by server"),
    ("mid-retr-status", Fault("RETR 2", drop(after=5)), 1, "closed by server"),
    ("between-messages", Fault("RETR 2", drop()), 1, "closed by server"),
    ("before-final-dot", Fault("RETR 2", truncate_multiline()), 1, "closed by server"),
    ("reset-mid-retr", Fault("RETR 3", reset(after=200)), 2, "reset|lost|closed"),
]
WINDOWS = {"pipelined": CAPA, "lockstep": tuple(c for c in CAPA if c != "PIPELINING")}


@pytest.mark.parametrize(
    ("fault", "delivered", "pattern", "capa"),
    [pytest.param(f, n, p, CAPA, id=i) for i, f, n, p in DROPS]
    + [
        pytest.param(f, n, p, capa, id=f"{i}-{mode}")
        for i, f, n, p in RETR_DROPS
        for mode, capa in WINDOWS.items()
    ],
)
def test_drop_before_deletion(
    home: Home, mail: Path, fault: Fault, delivered: int, pattern: str, capa: tuple[str, ...]
) -> None:
    with serving(faults=[fault], capa=capa) as server:
        configure(home, server, mail)
        result = sync(home, server)
        assert_failed(result, 75, pattern)
        if "reset" in pattern:
            # A TCP RST discards what the client had not read yet: at most
            # *delivered* messages arrived, and exactly those are recorded.
            delivered = min(len(maildir_messages(mail)), delivered)
        assert_mail(mail, MESSAGES[:delivered])
        assert home.seen_uidls() == set(UIDLS[:delivered])
        assert server.all_commands().count(b"QUIT") == 0
        assert server.commands_named("DELE") == []
        assert len(server.mailbox.messages) == len(MESSAGES)
        assert_clean_rerun(home, server, mail)


@pytest.mark.parametrize("action", [drop(after=60), reset(after=60)], ids=["drop", "reset"])
def test_drop_mid_retr_over_tls(home: Home, mail: Path, ca: trustme.CA, action: Action) -> None:
    """Over TLS a bare TCP close mid-message is an unexpected EOF: the same 75."""
    tls = {"tls_context": make_server(ca), "implicit_tls": True}
    with serving(faults=[Fault("RETR 2", action)], **tls) as server:
        configure(home, server, mail, ca)
        result = sync(home, server)
        assert_failed(result, 75, "closed|lost|EOF|reset")
        assert len(maildir_messages(mail)) <= 1  # a RST may discard message 1 in flight
        delivered = len(maildir_messages(mail))
        assert_mail(mail, MESSAGES[:delivered])
        assert home.seen_uidls() == set(UIDLS[:delivered])
        assert server.commands_named("DELE") == []
        assert server.sessions[0].tls
        assert_clean_rerun(home, server, mail)


def test_drop_at_dele(home: Home, mail: Path) -> None:
    """Everything delivered and recorded; the DELEs die with the connection (no
    UPDATE without QUIT), so the next run deletes them without fetching again."""
    with serving(faults=[Fault("DELE 2", drop(), session=0)]) as server:
        configure(home, server, mail)
        result = sync(home, server)
        assert_failed(result, 75, "closed by server")
        assert_mail(mail, MESSAGES)
        assert home.seen_uidls() == set(UIDLS)
        assert len(server.mailbox.messages) == len(MESSAGES)  # no QUIT, no UPDATE
        assert not server.sessions[0].quit_answered
        assert_clean_rerun(home, server, mail)
        assert session_commands(server, 1, "RETR") == []
        assert session_commands(server, 1, "DELE") == ["1", "2", "3", "4"]


@pytest.mark.parametrize(
    ("fault", "applied"),
    [
        pytest.param(no_quit_reply(), False, id="no-quit-reply"),
        pytest.param(reset(), False, id="reset-at-quit"),
        pytest.param(drop(after=3), True, id="dropped-after-update"),
    ],
)
def test_quit_not_answered(home: Home, mail: Path, fault: Any, applied: bool) -> None:
    """QUIT unanswered: the deletions may or may not have happened. Exit 75; the
    next run neither re-delivers nor loses anything, and DELEs what is left."""
    with serving(faults=[Fault("QUIT", fault, session=0)]) as server:
        configure(home, server, mail)
        result = sync(home, server)
        assert_failed(result, 75, "closed|reset|lost")
        assert_mail(mail, MESSAGES)
        assert home.seen_uidls() == set(UIDLS)
        assert session_commands(server, 0, "DELE") == ["1", "2", "3", "4"]
        assert len(server.mailbox.messages) == (0 if applied else len(MESSAGES))
        server.faults.clear()
        again = sync(home, server)
        assert again.code == 0 and problems(again) == [], again
        assert_mail(mail, MESSAGES)
        assert session_commands(server, 1, "RETR") == []
        assert session_commands(server, 1, "DELE") == ([] if applied else ["1", "2", "3", "4"])
        assert server.mailbox.messages == []


# -- stalls, slow servers -----------------------------------------------------------


def partial(count: int) -> Action:
    """Send the first *count* bytes of the real reply (and do its side effects)."""

    def act(conn: Conn, cmd: Command) -> None:
        conn.send(conn.real(cmd)[:count])

    return act


STALLS = [
    ("greeting", Fault("greeting", stall()), 0, False),
    ("uidl", Fault("UIDL", stall()), 0, False),
    ("mid-retr", Fault("RETR 3", chain(partial(200), stall())), 2, False),
    ("missing-final-dot", Fault("RETR 2", truncate_multiline(hang=True)), 1, False),
    ("dele", Fault("DELE 1", stall()), 4, False),
    ("quit", Fault("QUIT", stall()), 4, False),
    ("tls-mid-retr", Fault("RETR 2", chain(partial(40), stall())), 1, True),
]


def sync_side_by_side(runs: list[tuple[Home, FakePOP3]]) -> list[Result]:
    """``fetchpop sync`` in every home at once (each against its own server)."""
    started = time.monotonic()
    procs = [home.popen("sync") for home, _ in runs]
    results = []
    for proc in procs:
        out, errs = proc.communicate(timeout=BOUND + 60)
        results.append(Result(proc.returncode, out, errs))
    elapsed = time.monotonic() - started
    # Several Python start-ups share the CPUs, so allow them more than one run's bound.
    assert elapsed < BOUND + 10, f"{len(runs)} syncs side by side took {elapsed:.1f} s"
    for _, server in runs:
        assert server.wait_sessions(len(server.sessions))
    return results


def test_stalls_time_out(tmp_path: Path, ca: trustme.CA) -> None:
    """A server that goes silent at any stage costs one timeout, then 75 naming
    it; what was delivered before is recorded, nothing else. (The cases run side
    by side: each is mostly waiting.)"""
    with ExitStack() as stack:
        cases = []
        for name, fault, delivered, use_tls in STALLS:
            tls: dict[str, Any] = {}
            if use_tls:
                tls = {"tls_context": make_server(ca), "implicit_tls": True}
            server = stack.enter_context(serving(faults=[fault], **tls))
            home, mail = Home(tmp_path / name / "home"), tmp_path / name / "Mail"
            configure(home, server, mail, ca if use_tls else None)
            cases.append((name, home, mail, server, delivered, use_tls))
        started = time.monotonic()
        results = sync_side_by_side([(c[1], c[3]) for c in cases])
        assert time.monotonic() - started >= TIMEOUT
        for (name, home, mail, server, delivered, use_tls), result in zip(
            cases, results, strict=True
        ):
            host = "localhost" if use_tls else "127.0.0.1"
            assert_failed(result, 75, rf"^fetchpop: home: no reply from {host} for {TIMEOUT} s$")
            assert_mail(mail, MESSAGES[:delivered])
            assert home.seen_uidls() == set(UIDLS[:delivered]), name
            if delivered < len(MESSAGES):
                assert server.commands_named("DELE") == [], name
            assert len(server.mailbox.messages) == len(MESSAGES), name
            server.faults.clear()
        # The server is well again: one run gets exactly what was missed.
        for (name, _, mail, server, *_), result in zip(
            cases, sync_side_by_side([(c[1], c[3]) for c in cases]), strict=True
        ):
            assert result.code == 0 and problems(result) == [], f"{name}: {result}"
            assert_mail(mail, MESSAGES)
            assert server.mailbox.messages == [], name


def test_dripping_server_finishes(home: Home, mail: Path) -> None:
    """A server sending a few bytes at a time takes longer than the timeout in
    total, but never leaves a single read waiting that long: the sync succeeds."""
    big = b"Subject: slow\n\n" + b"drip drip drip drip drip drip\n" * 100  # ~3 KB
    messages = [MESSAGES[0], big]
    with serving(messages, [Fault("RETR 2", drip(1500.0, chunk=30))]) as server:
        configure(home, server, mail)
        started = time.monotonic()
        result = sync(home, server)
        assert time.monotonic() - started > TIMEOUT  # slower than one timeout overall
        assert result.code == 0 and problems(result) == [], result
        assert_mail(mail, messages)
        assert home.seen_uidls() == set()  # delivered, deleted, and so forgotten
        assert server.mailbox.messages == []


# -- a server that breaks the protocol --------------------------------------------------

GARBAGE = [
    ("greeting", Fault("greeting", reply(b"hello, this is not POP3\r\n")), 0, "unexpected"),
    ("user", Fault("USER", reply(b"OK fine\r\n")), 0, "unexpected"),
    ("uidl", Fault("UIDL", reply(b"+OKAY here you go\r\n")), 0, "unexpected"),
    ("uidl-line", Fault("UIDL", reply(b"+OK\r\n1 uid-1\r\nbogus\r\n.\r\n")), 0, "malformed"),
    ("list-line", Fault("LIST", reply(b"+OK\r\n1 many\r\n.\r\n")), 0, "malformed"),
    ("retr-status", Fault("RETR 2", reply(b"200 OK\r\n")), 1, "unexpected"),
    (
        "overlong-status",
        Fault("PASS", reply(b"+OK " + b"x" * 10_000 + b"\r\n")),
        0,
        "longer than 4096 bytes",
    ),
    (
        "status-without-end",
        Fault("UIDL", chain(reply(b"+OK " + b"y" * 100_000), stall())),
        0,
        "longer than 4096 bytes",
    ),
    (
        "overlong-listing-line",
        Fault("UIDL", reply(b"+OK\r\n1 " + b"u" * 5000 + b"\r\n.\r\n")),
        0,
        "longer than 4096 bytes",
    ),
    ("control-chars", Fault("UIDL", reply(b"\x1b[2J\x1b]0;pwned\x07\r\n")), 0, "unexpected"),
]


@pytest.mark.parametrize(
    ("fault", "delivered", "pattern"), [pytest.param(f, n, p, id=i) for i, f, n, p in GARBAGE]
)
def test_protocol_violation(
    home: Home, mail: Path, fault: Fault, delivered: int, pattern: str
) -> None:
    with serving(faults=[fault]) as server:
        configure(home, server, mail)
        result = sync(home, server)
        line = assert_failed(result, 76, pattern)
        assert not re.search(r"[\x00-\x08\x0a-\x1f\x7f]", line)  # sanitised
        assert_mail(mail, MESSAGES[:delivered])
        assert home.seen_uidls() == set(UIDLS[:delivered])
        assert server.commands_named("DELE") == []
        assert_clean_rerun(home, server, mail)


def test_overlong_message_line_is_fine(home: Home, mail: Path) -> None:
    """Message lines longer than RFC 5322 allows are streamed, not refused."""
    long_line = b"Subject: long\n\n" + b"z" * 1_500_000 + b"\n.z\n"
    messages = [long_line, MESSAGES[1]]
    with serving(messages) as server:
        configure(home, server, mail)
        result = sync(home, server)
        assert result.code == 0 and problems(result) == [], result
        assert_mail(mail, messages)


def test_retr_larger_than_list(home: Home, mail: Path) -> None:
    """LIST says 100 octets; RETR sends 400 KB: a lying (or broken) server, 76."""
    big = b"Subject: big\n\n" + b"0123456789abcdef\n" * 24_000
    messages = [MESSAGES[0], big, MESSAGES[2]]
    sizes = b"+OK\r\n1 %d\r\n2 100\r\n3 %d\r\n.\r\n" % (
        len(to_crlf(MESSAGES[0])),
        len(to_crlf(MESSAGES[2])),
    )
    with serving(messages, [Fault("LIST", reply(sizes))]) as server:
        configure(home, server, mail)
        result = sync(home, server)
        assert_failed(result, 76, "larger than the .* octets announced")
        assert_mail(mail, messages[:1])
        assert home.seen_uidls() == {"uid-1"}
        assert server.commands_named("DELE") == []
        # LIST now tells the truth: everything arrives.
        server.faults.clear()
        again = sync(home, server)
        assert again.code == 0 and problems(again) == [], again
        assert_mail(mail, messages)
        assert server.mailbox.messages == []


def test_retr_smaller_than_list_is_fine(home: Home, mail: Path) -> None:
    sizes = b"+OK\r\n" + b"".join(b"%d 99999\r\n" % n for n in range(1, 5)) + b".\r\n"
    with serving(faults=[Fault("LIST", reply(sizes))]) as server:
        configure(home, server, mail)
        result = sync(home, server)
        assert result.code == 0 and problems(result) == [], result
        assert_mail(mail, MESSAGES)


_RSS_WRAPPER = """
import os, resource, subprocess, sys
code = subprocess.run(sys.argv[1:]).returncode
with open(os.environ["RSS_OUT"], "w") as out:
    out.write(str(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss))
sys.exit(code)
"""


def test_endless_retr(home: Home, mail: Path, tmp_path: Path) -> None:
    """An endless RETR reply stops at the bound LIST implies (76), streaming:
    the client's memory stays far below what it received."""
    announced = 40_000_000  # LIST's word; the bound is about twice that
    sizes = b"+OK\r\n1 %d\r\n2 %d\r\n.\r\n" % (len(to_crlf(MESSAGES[0])), announced)
    faults = [Fault("LIST", reply(sizes)), Fault("RETR 2", endless())]
    with serving(MESSAGES[:2], faults) as server:
        configure(home, server, mail)
        rss_file = tmp_path / "rss"
        started = time.monotonic()
        proc = subprocess.run(
            [sys.executable, "-c", _RSS_WRAPPER, sys.executable, "-m", "fetchpop", "sync"],
            env=home.env({"RSS_OUT": str(rss_file)}),
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert time.monotonic() - started < 60
        assert server.wait_sessions(1)
        result = Result(proc.returncode, proc.stdout, proc.stderr)
        assert_failed(result, 76, "larger than the 80065536 octets announced")
        max_rss_mib = int(rss_file.read_text()) / 1024
        assert max_rss_mib < 70, f"fetchpop used {max_rss_mib:.0f} MiB for an endless message"
        assert_mail(mail, MESSAGES[:1])
        assert home.seen_uidls() == {"uid-1"}
        assert server.commands_named("DELE") == []


def test_retr_of_a_message_list_does_not_show(home: Home, mail: Path) -> None:
    """UIDL lists a message LIST leaves out: its RETR would have no bound, so the
    listing is refused (76) before any RETR, whatever that RETR would send."""
    sizes = b"+OK\r\n1 %d\r\n.\r\n" % len(to_crlf(MESSAGES[0]))
    faults = [Fault("LIST", reply(sizes)), Fault("RETR 2", endless(max_bytes=5_000_000))]
    with serving(MESSAGES[:2], faults) as server:
        configure(home, server, mail)
        result = sync(home, server)
        assert_failed(result, 76, "LIST does not list message 2")
        assert_mail(mail, [])
        assert server.commands_named("RETR") == []
        assert server.commands_named("DELE") == []


# -- odd unique ids ----------------------------------------------------------------------


def test_duplicate_uidls_in_one_run(home: Home, mail: Path) -> None:
    """Two messages with one UIDL are two messages: both delivered, once."""
    box = Mailbox(MESSAGES, ["uid-1", "dup", "dup", "uid-4"])
    with serving(box) as server:
        configure(home, server, mail, keep=True)
        result = sync(home, server, "-v")
        assert result.code == 0, result
        assert "home: server lists 1 repeated UIDL(s)" in problems(result)
        assert_mail(mail, MESSAGES)
        assert len(home.seen_uidls()) == 4
        again = sync(home, server)
        assert again.code == 0 and problems(again) == [], again  # quiet without -v
        assert session_commands(server, 1, "RETR") == []
        assert_mail(mail, MESSAGES)


def test_repeated_uidl_key_cannot_collide_with_a_spaced_uidl(home: Home, mail: Path) -> None:
    """A server that puts spaces in UIDLs cannot make a repeat's key look seen."""
    box = Mailbox(MESSAGES[:3], ["dup", "dup", "dup #2"])
    with serving(box) as server:
        configure(home, server, mail, keep=True)
        result = sync(home, server)
        assert result.code == 0, result
        assert_mail(mail, MESSAGES[:3])
        assert len(home.seen_uidls()) == 3
        again = sync(home, server)
        assert again.code == 0, again
        assert session_commands(server, 1, "RETR") == []


def test_duplicate_uidls_across_runs(home: Home, mail: Path) -> None:
    """One run fetches the first copy (max_messages = 1), the next the second.
    Deleting the first copy early would make the second look like the first, so
    it would be deleted unread: a repeated UIDL is deleted only once every
    message carrying it is recorded."""
    box = Mailbox(MESSAGES[:2], ["dup", "dup"])
    with serving(box) as server:
        configure(home, server, mail, max_messages=1)
        first = sync(home, server)
        assert first.code == 0, first
        assert_mail(mail, MESSAGES[:1])
        assert session_commands(server, 0, "DELE") == []
        second = sync(home, server)
        assert second.code == 0, second
        assert_mail(mail, MESSAGES[:2])
        assert session_commands(server, 1, "RETR") == ["2"]
        assert session_commands(server, 1, "DELE") == ["1", "2"]
        assert server.mailbox.messages == []
        third = sync(home, server)
        assert third.code == 0, third
        assert_mail(mail, MESSAGES[:2])


def test_duplicate_uidls_interrupted(home: Home, mail: Path) -> None:
    """The second copy's RETR dies: the next run fetches only the second copy."""
    box = Mailbox(MESSAGES[:3], ["dup", "dup", "uid-3"])
    with serving(box, [Fault("RETR 2", drop(after=30), session=0)]) as server:
        configure(home, server, mail)
        first = sync(home, server)
        assert first.code == 75, first
        assert problems(first) == [
            "fetchpop: home: connection closed by server while waiting for reply to RETR",
        ]
        assert_mail(mail, MESSAGES[:1])
        assert home.seen_uidls() == {"dup"}
        assert server.commands_named("DELE") == []
        again = sync(home, server)
        assert again.code == 0, again
        assert session_commands(server, 1, "RETR") == ["2", "3"]
        assert_mail(mail, MESSAGES[:3])
        assert server.mailbox.messages == []


def test_empty_uidl_is_a_protocol_error(home: Home, mail: Path) -> None:
    """A message without a unique id cannot be tracked, so fetching it could
    deliver it on every run: the server broke RFC 1939, 76, nothing touched."""
    box = Mailbox(MESSAGES, ["uid-1", "", "uid-3", "uid-4"])
    with serving(box) as server:
        configure(home, server, mail)
        result = sync(home, server)
        assert_failed(result, 76, "UIDL")
        assert_mail(mail, [])
        assert home.seen_uidls() == set()
        assert server.commands_named("RETR") == []
        assert server.commands_named("DELE") == []
        server.mailbox.uidls[1] = "uid-2"
        assert_clean_rerun(home, server, mail)


ODD_UIDLS = [
    "L" * 200,  # longer than RFC 1939's 70
    "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~",
    "'; DROP TABLE seen; --",
    "caf\u00e9-\u2603",  # UTF-8 on the wire, outside RFC 1939's 0x21..0x7E
    "#2",
]


def test_odd_uidls_work(home: Home, mail: Path) -> None:
    """Long, punctuated and non-ASCII UIDLs are keys like any other, byte for byte."""
    messages = [*MESSAGES, b"Subject: five\n\nfive\n"]
    box = Mailbox(messages, ODD_UIDLS)
    with serving(box) as server:
        configure(home, server, mail, keep=True)
        result = sync(home, server)
        assert result.code == 0 and problems(result) == [], result
        assert_mail(mail, messages)
        seen = {s.encode("latin-1") for s in home.seen_uidls()}
        assert seen == {u.encode() for u in ODD_UIDLS}
        again = sync(home, server)
        assert again.code == 0 and problems(again) == [], again
        assert session_commands(server, 1, "RETR") == []
        assert_mail(mail, messages)


def test_changed_uidl_is_a_new_message(home: Home, mail: Path) -> None:
    """Decision (as in every POP3 client): a UIDL is the message's identity. When
    the server changes a message's UIDL between runs, the message is new and is
    fetched again; the old UIDL is forgotten once the server no longer lists it."""
    with serving(MESSAGES[:3]) as server:
        configure(home, server, mail, keep=True)
        assert sync(home, server).code == 0
        assert_mail(mail, MESSAGES[:3])
        server.mailbox.uidls[1] = "renumbered-2"
        result = sync(home, server)
        assert result.code == 0 and problems(result) == [], result
        assert session_commands(server, 1, "RETR") == ["2"]
        assert_mail(mail, [*MESSAGES[:3], MESSAGES[1]])
        assert home.seen_uidls() == {"uid-1", "renumbered-2", "uid-3"}


# -- messages that vanish, servers without CAPA or with bare LF ---------------------------


def test_message_vanishes_before_retr(home: Home, mail: Path) -> None:
    box = Mailbox(MESSAGES, ["uid-1", "gone\x1b[2J", "uid-3", "uid-4"])
    with serving(box, [Fault("RETR 2", vanish(), session=0)]) as server:
        configure(home, server, mail)
        result = sync(home, server)
        assert result.code == 0, result
        (line,) = problems(result)
        assert line.startswith("fetchpop: home: message gone?[2J vanished"), result
        assert "no such message" in line
        delivered = [MESSAGES[0], *MESSAGES[2:]]
        assert_mail(mail, delivered)
        assert home.seen_uidls() == set()  # delivered, deleted, and so forgotten
        assert session_commands(server, 0, "DELE") == ["1", "3", "4"]
        # It came back (say, the other device's expunge failed): fetched now, once.
        server.faults.clear()
        again = sync(home, server)
        assert again.code == 0 and problems(again) == [], again
        assert_mail(mail, MESSAGES)
        assert server.mailbox.messages == []


@pytest.mark.parametrize(
    "reply", [b"-ERR [SYS/TEMP] unable to read message\r\n", b"-ERR cannot open message file\r\n"]
)
def test_a_message_the_server_cannot_serve_now_stays_and_says_so(
    reply: bytes, home: Home, mail: Path
) -> None:
    """Courier answers RETR with [SYS/TEMP] when it cannot read the file: that
    is no vanished message, and the run must not end as if all went well."""
    with serving(faults=[Fault("RETR 2", err(reply), session=0)]) as server:
        configure(home, server, mail)
        result = sync(home, server)
        assert result.code == 75, result
        (line,) = problems(result)
        words = reply.decode().strip()
        assert line == f"fetchpop: home: message uid-2 could not be fetched: {words}; " + (
            "it stays on the server"
        ), result
        assert_mail(mail, [MESSAGES[0], *MESSAGES[2:]])
        assert home.seen_uidls() == set()  # the others delivered, deleted, forgotten
        # The others are deleted as usual (keep = false); message 2 is not.
        assert session_commands(server, 0, "DELE") == ["1", "3", "4"]
        assert server.mailbox.uidls == ["uid-2"]
        again = sync(home, server)
        assert again.code == 0 and problems(again) == [], again
        assert_mail(mail, MESSAGES)


def test_a_message_the_server_never_serves_is_skipped_after_three_runs(
    home: Home, mail: Path
) -> None:
    with serving(faults=[Fault("RETR 2", err(b"-ERR [SYS/TEMP] unable to read message\r\n"))]) as s:
        configure(home, s, mail, keep=True)
        for _ in range(3):
            assert sync(home, s).code == 75
        result = sync(home, s, "-q")
        assert result.code == 65, result
        assert "skipped uid-2: failed to deliver 3 times (RETR: -ERR [SYS/TEMP]" in result.stderr
        assert session_commands(s, 3, "RETR") == []


def observe(record: list[bytes], seconds: float = 0.3) -> Action:
    """Wait *seconds* (reading what the client sends), note all received so far, answer."""

    def act(conn: Conn, cmd: Command) -> None:
        conn.wait(seconds)
        record.append(bytes(conn.session.received))
        conn.send(conn.real(cmd))

    return act


def test_server_without_capa(home: Home, mail: Path) -> None:
    """CAPA answered -ERR: no pipelining, one command at a time, and it works."""
    seen_at_retr: list[bytes] = []
    with serving(capa=None, faults=[Fault("RETR 1", observe(seen_at_retr))]) as server:
        configure(home, server, mail)
        result = sync(home, server)
        assert result.code == 0 and problems(result) == [], result
        assert_mail(mail, MESSAGES)
        assert server.mailbox.messages == []
        (received,) = seen_at_retr
        assert received.endswith(b"RETR 1\r\n")  # nothing sent before the reply
        names = [Command(c).name for c in server.sessions[0].commands]
        assert names == ["CAPA", "USER", "PASS", "UIDL", "LIST"] + ["RETR"] * 4 + ["DELE"] * 4 + [
            "QUIT"
        ]


def bare_lf() -> Action:
    """The real reply with every CRLF as a bare LF."""

    def act(conn: Conn, cmd: Command) -> None:
        conn.send(conn.real(cmd).replace(b"\r\n", b"\n"))

    return act


def test_server_with_bare_lf(home: Home, mail: Path) -> None:
    messages = [*MESSAGES, b"Subject: dots\n\n.\n..\n...\n. \nx.\n"]
    faults = [Fault("greeting", bare_lf()), Fault("*", bare_lf())]
    with serving(messages, faults) as server:
        configure(home, server, mail)
        result = sync(home, server)
        assert result.code == 0 and problems(result) == [], result
        assert_mail(mail, messages)
        assert server.mailbox.messages == []


# -- -ERR at login, with and without RFC 2449/3206 response codes ----------------------------

LOGIN_ERRORS = [
    ("in-use", "-ERR [IN-USE] mailbox locked by another session", 75),
    ("login-delay", "-ERR [LOGIN-DELAY] wait 5 minutes between logins", 75),
    ("sys-temp", "-ERR [SYS/TEMP] disk quota check failed, try later", 75),
    ("auth", "-ERR [AUTH] invalid user name or password", 77),
    ("no-code", "-ERR invalid user name or password", 77),
    ("sys-perm", "-ERR [SYS/PERM] account disabled by the administrator", 69),
]


@pytest.mark.parametrize(("text", "code"), [pytest.param(t, c, id=i) for i, t, c in LOGIN_ERRORS])
def test_err_at_pass(home: Home, mail: Path, text: str, code: int) -> None:
    with serving(faults=[Fault("PASS", err(text))]) as server:
        configure(home, server, mail)
        result = sync(home, server)
        line = assert_failed(result, code, re.escape(text))
        assert line.endswith(text)
        assert_mail(mail, [])
        assert home.seen_uidls() == set()
        assert server.commands_named("RETR") == []
        assert_clean_rerun(home, server, mail)


def test_greeting_err_with_sys_temp(home: Home, mail: Path) -> None:
    """A server too busy to talk says so in its greeting: try again later."""
    text = "-ERR [SYS/TEMP] too many connections"
    with serving(faults=[Fault("greeting", err(text))]) as server:
        configure(home, server, mail)
        result = sync(home, server)
        assert_failed(result, 75, re.escape(text))
        assert_mail(mail, [])
        assert_clean_rerun(home, server, mail)


# -- pipelining ---------------------------------------------------------------------------


def test_pipelining_sends_a_window_of_retrs(home: Home, mail: Path) -> None:
    seen_at_retr: list[bytes] = []
    with serving(faults=[Fault("RETR 1", observe(seen_at_retr))]) as server:
        configure(home, server, mail)
        result = sync(home, server)
        assert result.code == 0 and problems(result) == [], result
        assert_mail(mail, MESSAGES)
        (received,) = seen_at_retr
        # Before the first RETR was answered, every RETR had arrived, in order.
        retrs = [received.find(b"RETR %d\r\n" % n) for n in range(1, 5)]
        assert all(i >= 0 for i in retrs) and retrs == sorted(retrs), received
        assert session_commands(server, 0, "DELE") == ["1", "2", "3", "4"]


def test_pipelining_drop_mid_window(home: Home, mail: Path) -> None:
    """Five RETRs in flight; the connection dies inside the third reply. Exactly
    the two fully delivered messages are recorded; the next run fetches the rest."""
    messages = [*MESSAGES, b"Subject: five\n\nfive\n"]
    uidls = [f"uid-{n}" for n in range(1, 6)]
    with serving(messages, [Fault("RETR 3", drop(after=150), session=0)]) as server:
        assert "PIPELINING" in CAPA
        configure(home, server, mail)
        result = sync(home, server)
        assert_failed(result, 75, "closed by server")
        assert b"RETR 5\r\n" in server.sessions[0].received  # the drop was mid-window
        assert_mail(mail, messages[:2])
        assert home.seen_uidls() == set(uidls[:2])
        assert server.commands_named("DELE") == []
        again = sync(home, server)
        assert again.code == 0 and problems(again) == [], again
        assert session_commands(server, 1, "RETR") == ["3", "4", "5"]
        assert_mail(mail, messages)
        assert server.mailbox.messages == []
        assert home.seen_uidls() == set()
