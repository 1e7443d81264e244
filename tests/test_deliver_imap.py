"""IMAP APPEND delivery (``deliver = "imap://USER@HOST/MAILBOX"``), issue 17 item 3.

Against a real Dovecot (POP3 and IMAP with UIDPLUS, LITERAL+, BINARY): the
hard-message corpus fetched over POP3 arrives byte-identical in the IMAP
mailbox, flags and internal dates as configured, STARTTLS and a mailbox
created when missing. Against the scripted servers (tests/fakepop.py,
tests/fakeimap.py): NO and BAD at each step, [TRYCREATE], a connection lost
after the APPEND literal before the tagged OK, SIGKILL there, a server
without UIDPLUS, a message with NUL bytes -- each asserting the exit status,
the line on stderr, that the POP3 server got no DELE for a message the IMAP
server did not accept, and how many times each message is in the mailbox.
"""

from __future__ import annotations

import dataclasses
import datetime
import imaplib
import re
import signal
import ssl
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from corpus import hard_messages
from dovecot import Dovecot
from fakeimap import DEFAULT_CAPS, FakeIMAP, Fault
from fakepop import FakePOP3, Mailbox, to_crlf
from runner import Home, Result, account_toml

from fetchpop.deliver import ImapSettings, format_deliver, open_target, parse_deliver
from fetchpop.errors import AuthError, ProtocolError
from fetchpop.imap import protocol

MESSAGES = [
    b"From: a@example.org\nMessage-ID: <one@example.org>\nSubject: one\n\nfirst message\n",
    b"From: b@example.org\nMessage-ID: <two@example.org>\nSubject: two\n\n.dot\n..two\n",
    b"From: c@example.org\nMessage-ID: <three@example.org>\nSubject: three\n\n"
    + b"a line of text in message three\n" * 40,
    b"From: d@example.org\nMessage-ID: <four@example.org>\nSubject: four\n\nfour\n",
]
CLEARTEXT = re.compile(r'^fetchpop: home: warning: tls = "off"')


def crlf(message: bytes) -> bytes:
    """What an IMAP server is given for a message fetched over POP3."""
    return to_crlf(message)


def problems(result: Result) -> list[str]:
    return [ln for ln in result.stderr.splitlines() if not CLEARTEXT.match(ln)]


# -- real Dovecot ---------------------------------------------------------------------


def _dovecot_account(dc: Dovecot, src: Any, dst: Any, **keys: object) -> str:
    base: dict[str, object] = {
        "host": "localhost",
        "user": src.user,
        "port": dc.tls_port,
        "tls": "implicit",
        "ca_file": str(dc.ca_file),
        "password": src.password,
        "deliver": f"imap://{dst.user}@localhost:{dc.imaps_port}/INBOX",
        "imap_ca_file": str(dc.ca_file),
        "imap_password": dst.password,
        "keep": False,
    }
    base.update(keys)
    return account_toml("home", **base)


def _maildir_files(maildir: Path) -> list[bytes]:
    return sorted(p.read_bytes() for sub in ("new", "cur") for p in (maildir / sub).iterdir())


@contextmanager
def _imap(dc: Dovecot, user: Any) -> Iterator[imaplib.IMAP4_SSL]:
    """The test's own look into the mailbox (imaplib is fine for reading back)."""
    context = ssl.create_default_context(cafile=str(dc.ca_file))
    client = imaplib.IMAP4_SSL("localhost", dc.imaps_port, ssl_context=context)
    try:
        client.login(user.user, user.password)
        yield client
    finally:
        client.logout()


@pytest.mark.dovecot
def test_hard_corpus_arrives_byte_identical_once(imap_dovecot: Dovecot, home: Home) -> None:
    dc = imap_dovecot
    src, dst = dc.new_mailbox("pop"), dc.new_mailbox("imap")
    corpus = hard_messages(80, big_size=3 * 1024 * 1024)
    dc.add_messages(src.user, corpus)
    served = dc.server_messages(src.user)
    home.write_config(_dovecot_account(dc, src, dst))

    first = home.run("sync")
    assert first.code == 0, first
    assert first.stderr == "" and first.stdout == ""
    # Dovecot keeps an APPENDed message with LF line ends in its Maildir: the
    # bytes a Maildir delivery would have written, NUL (BINARY) and lone CR
    # included.
    assert _maildir_files(dst.maildir) == sorted(served)
    assert dc.count(src.user) == 0  # keep = false: each DELE'd once appended

    with _imap(dc, dst) as client:
        client.select("INBOX", readonly=True)
        _, data = client.uid("FETCH", "1:*", "(BODY.PEEK[])")
        bodies = sorted(part[1] for part in data if isinstance(part, tuple))
    # Read back over IMAP: CRLF line ends; and a plain FETCH (not BINARY[])
    # shows each NUL as 0x80, Dovecot's stand-in (RFC 3501 allows no NUL in
    # a literal): the stored bytes above have them.
    wire = sorted(m.replace(b"\n", b"\r\n").replace(b"\0", b"\x80") for m in served)
    assert bodies == wire

    again = home.run("sync")
    assert again.code == 0, again
    assert len(_maildir_files(dst.maildir)) == 80


@pytest.mark.dovecot
def test_flags_internal_date_starttls_and_a_new_mailbox(imap_dovecot: Dovecot, home: Home) -> None:
    dc = imap_dovecot
    src, dst = dc.new_mailbox("pop"), dc.new_mailbox("imap")
    dated = b"Date: Tue, 04 Feb 2025 10:00:00 +0100\n" + MESSAGES[0]
    dc.add_messages(src.user, [dated, MESSAGES[1]])
    home.write_config(
        _dovecot_account(
            dc,
            src,
            dst,
            deliver=f"imap://{dst.user}@localhost:{dc.imap_port}/Archive.Entwürfe",
            imap_tls="starttls",
            imap_flags=r"\Seen $Fetched",
            imap_keep_date=True,
        )
    )
    result = home.run("sync")
    assert result.code == 0, result
    with _imap(dc, dst) as client:
        status, _ = client.select('"Archive.Entw&APw-rfe"', readonly=True)
        assert status == "OK"
        _, data = client.uid("FETCH", "1:*", "(FLAGS INTERNALDATE)")
    lines = [d.decode() for d in data]
    assert len(lines) == 2
    assert all("\\Seen" in ln and "$Fetched" in ln for ln in lines)
    dates = [
        datetime.datetime.strptime(
            re.findall(r'INTERNALDATE "([^"]+)"', ln)[0].strip(), "%d-%b-%Y %H:%M:%S %z"
        )
        for ln in lines
    ]
    utc = datetime.UTC
    assert dates[0] == datetime.datetime(2025, 2, 4, 9, 0, tzinfo=utc)  # the Date: header
    assert dates[1].year >= 2026  # no Date: header: the time of the APPEND


@pytest.mark.dovecot
def test_wrong_imap_password_deletes_nothing(imap_dovecot: Dovecot, home: Home) -> None:
    dc = imap_dovecot
    src, dst = dc.new_mailbox("pop"), dc.new_mailbox("imap")
    dc.add_messages(src.user, MESSAGES)
    home.write_config(_dovecot_account(dc, src, dst, imap_password="not-the-password"))
    result = home.run("sync")
    assert result.code == 77, result
    assert "not-the-password" not in result.stderr
    assert re.search(
        r"^fetchpop: home: IMAP login refused: NO \[AUTHENTICATIONFAILED\]", result.stderr, re.M
    ), result
    assert dc.count(src.user) == 4
    assert _maildir_files(dst.maildir) == []


@pytest.mark.dovecot
def test_recovery_search_on_dovecot_finds_only_what_was_appended(imap_dovecot: Dovecot) -> None:
    """What the next run after a crash asks Dovecot: the message appended
    since the intent's UIDNEXT, with its Message-ID and size; not an older
    copy, not another message with the same Message-ID."""
    dc = imap_dovecot
    dst = dc.new_mailbox("imap")
    spec = parse_deliver(f"imap://{dst.user}@localhost:{dc.imaps_port}/INBOX")
    spec = dataclasses.replace(spec, imap=ImapSettings(ca_file=dc.ca_file, password=dst.password))
    old, new = MESSAGES[0], MESSAGES[1]
    same_id_other = MESSAGES[1].replace(b"\n\n", b"\nX-Other: yes\n\n", 1)
    target = open_target(spec)
    first = target.begin("u0")
    first.write(old)
    first.finish()
    (intent,) = target.reserve(1)
    delivery = target.begin("u1", intent)
    delivery.write(new)
    delivery.finish()
    assert delivery.receipt is not None and delivery.receipt[1] == 2  # APPENDUID
    (later,) = target.reserve(1)  # a crash before this one's APPEND: nothing since
    target.close()

    again = open_target(spec)
    try:
        assert again.confirm(intent, [new]) is True
        assert again.confirm(intent, [old]) is False  # there, but from before the intent
        # "3:*" matches UID 2, the last, by RFC 3501's rule: not counted.
        assert again.confirm(later, [new]) is False
        assert again.confirm(intent, [same_id_other]) is False  # same Message-ID, other size
        assert again.confirm("999:1", [old]) is True  # UIDVALIDITY changed: the whole mailbox
        assert again.damaged() == []
        assert again.confirm(intent, [b"Subject: no id\n\nx\n"]) is False
        assert any("without Message-ID" in line for line in again.damaged())
    finally:
        again.close()


def _fingerprint(dc: Dovecot) -> str:
    import hashlib

    pem = dc.cert_file.read_text().split("-----END CERTIFICATE-----")[0] + (
        "-----END CERTIFICATE-----\n"
    )
    return "sha256:" + hashlib.sha256(ssl.PEM_cert_to_DER_cert(pem)).hexdigest()


@pytest.mark.dovecot
@pytest.mark.parametrize(
    ("keys", "code", "pattern"),
    [
        ({}, 69, r"TLS certificate of localhost did not verify"),  # no imap_ca_file
        ({"imap_tls_fingerprint": "sha256:" + "00" * 32}, 69, r"fingerprint"),
        ({"imap_tls_fingerprint": "PIN"}, 0, None),
    ],
    ids=["unverified", "wrong-pin", "pinned"],
)
def test_the_imap_certificate_is_verified_as_for_pop3(
    imap_dovecot: Dovecot, home: Home, keys: dict[str, object], code: int, pattern: str | None
) -> None:
    dc = imap_dovecot
    src, dst = dc.new_mailbox("pop"), dc.new_mailbox("imap")
    dc.add_messages(src.user, MESSAGES)
    if keys.get("imap_tls_fingerprint") == "PIN":
        keys = {"imap_tls_fingerprint": _fingerprint(dc)}
    config = _dovecot_account(dc, src, dst, **keys)
    config = config.replace(f'imap_ca_file = "{dc.ca_file}"\n', "")
    home.write_config(config)
    result = home.run("sync")
    assert result.code == code, result
    if pattern is None:
        assert len(_maildir_files(dst.maildir)) == 4 and dc.count(src.user) == 0
    else:
        assert re.search(pattern, result.stderr), result
        assert _maildir_files(dst.maildir) == [] and dc.count(src.user) == 4


# -- scripted servers -------------------------------------------------------------------


@contextmanager
def servers(
    messages: list[bytes] | None = None, **imap: Any
) -> Iterator[tuple[FakePOP3, FakeIMAP]]:
    box = Mailbox(messages if messages is not None else MESSAGES)
    pop = FakePOP3(box, capa=("TOP", "UIDL", "USER", "PIPELINING"))
    pop.start()
    try:
        with FakeIMAP(**imap) as server:
            yield pop, server
            assert not server.errors, server.errors
    finally:
        pop.close()


def configure(
    home: Home, pop: FakePOP3, imap: FakeIMAP, mailbox: str = "INBOX", **keys: object
) -> None:
    base: dict[str, object] = {
        "host": "127.0.0.1",
        "port": pop.port,
        "tls": "off",
        "user": "alice",
        "password": "secret",
        "auth": "user",
        "deliver": f"imap://bob@127.0.0.1:{imap.port}/{mailbox}",
        "imap_tls": "off",
        "imap_password": "imap-secret",
        "keep": False,
        "timeout": 5,
    }
    base.update(keys)
    home.write_config(account_toml("home", **base))


def sync(home: Home, pop: FakePOP3) -> Result:
    before = len(pop.sessions)
    result = home.run("sync", timeout=60)
    if len(pop.sessions) > before:
        assert pop.wait_sessions(len(pop.sessions))
    return result


def dele(pop: FakePOP3) -> list[str]:
    return pop.commands_named("DELE")


def test_appends_each_message_once_and_then_deletes(home: Home) -> None:
    with servers() as (pop, imap):
        configure(home, pop, imap)
        result = sync(home, pop)
        assert result.code == 0, result
        assert problems(result) == []
        assert imap.messages() == [crlf(m) for m in MESSAGES]
        assert pop.mailbox.messages == []
        assert imap.names().count("APPEND") == 4
        again = sync(home, pop)
        assert again.code == 0 and imap.names().count("APPEND") == 4


def test_without_literal_plus_waits_for_the_continuation(home: Home) -> None:
    caps = tuple(c for c in DEFAULT_CAPS if c != "LITERAL+")
    with servers(caps=caps) as (pop, imap):
        configure(home, pop, imap)
        result = sync(home, pop)
        assert result.code == 0, result
        assert imap.messages() == [crlf(m) for m in MESSAGES]
        appends = [ln for ln in imap.commands[0] if " APPEND " in ln]
        assert all(re.search(r"\{\d+\}$", ln) for ln in appends), appends


# (id, faults, exit status, stderr pattern, messages the IMAP server keeps)
REFUSALS = [
    ("login-no", [Fault("LOGIN", "no")], 77, r"IMAP login refused", 0),
    ("greeting-bye", [Fault("greeting", "refuse")], 69, r"refused the connection", 0),
    (
        "status-unavailable",
        [Fault("STATUS", "no", code="UNAVAILABLE")],
        75,
        r"IMAP mailbox INBOX: NO \[UNAVAILABLE\]",
        0,
    ),
    (
        "append-overquota",
        [Fault("APPEND", "no", code="OVERQUOTA")],
        75,
        r"refused the message \(NO \[OVERQUOTA\].*stays on the server",
        0,
    ),
    ("append-bad", [Fault("APPEND", "bad")], 76, r"APPEND is bad", 0),
    ("append-drop", [Fault("APPEND", "drop")], 75, r"closed by server", 0),
    ("login-drop", [Fault("LOGIN", "drop")], 75, r"closed by server", 0),
    ("login-bad", [Fault("LOGIN", "bad")], 76, r"LOGIN is bad", 0),
    ("capability-no", [Fault("CAPABILITY", "no")], 76, r"IMAP CAPABILITY refused", 0),
]


@pytest.mark.parametrize(
    ("faults", "code", "pattern", "kept"),
    [pytest.param(f, c, p, k, id=i) for i, f, c, p, k in REFUSALS],
)
def test_refusals_leave_the_mail_on_the_pop3_server(
    home: Home, faults: list[Fault], code: int, pattern: str, kept: int
) -> None:
    with servers(faults=faults) as (pop, imap):
        configure(home, pop, imap)
        result = sync(home, pop)
        assert result.code == code, result
        lines = problems(result)
        assert len(lines) == 1 and lines[0].startswith("fetchpop: home: "), result
        assert re.search(pattern, lines[0]), result
        assert "imap-secret" not in result.stderr
        assert len(imap.messages()) == kept
        assert dele(pop) == []
        assert len(pop.mailbox.messages) == 4
        # With the fault gone, the next run delivers everything, once.
        imap.faults.clear()
        rerun = sync(home, pop)
        assert rerun.code == 0, rerun
        assert imap.messages() == [crlf(m) for m in MESSAGES]
        assert pop.mailbox.messages == []


def test_a_rejected_message_stays_and_the_others_go(home: Home) -> None:
    with servers(faults=[Fault("APPEND", "no", code="TOOBIG")]) as (pop, imap):
        configure(home, pop, imap)
        result = sync(home, pop)
        assert result.code == 73, result
        assert any(
            "message uid-1 not delivered (attempt 1 of 3)" in ln and "[TOOBIG]" in ln
            for ln in problems(result)
        ), result
        assert imap.messages() == [crlf(m) for m in MESSAGES[1:]]
        assert "1" not in dele(pop)
        assert pop.mailbox.messages == [crlf(MESSAGES[0])]


def test_a_connection_lost_before_the_message_went_out_is_tried_once_more(home: Home) -> None:
    """Without LITERAL+ nothing of the message goes before the continuation:
    a drop there cannot have delivered it, and a new connection delivers it."""
    caps = tuple(c for c in DEFAULT_CAPS if c != "LITERAL+")
    with servers(caps=caps, faults=[Fault("APPEND", "drop")]) as (pop, imap):
        configure(home, pop, imap)
        result = sync(home, pop)
        assert result.code == 0, result
        assert imap.messages() == [crlf(m) for m in MESSAGES]
        assert len(imap.commands) == 2 and "UID SEARCH" not in imap.names()
        assert pop.mailbox.messages == []


def test_trycreate_creates_the_mailbox_once(home: Home) -> None:
    with servers() as (pop, imap):
        configure(home, pop, imap, mailbox="Archive/2025")
        result = sync(home, pop)
        assert result.code == 0, result
        assert imap.messages("Archive/2025") == [crlf(m) for m in MESSAGES]
        assert imap.names().count("CREATE") == 1


def test_a_mailbox_that_cannot_be_created_fails_the_account(home: Home) -> None:
    with servers(faults=[Fault("CREATE", "no", code="NOPERM")]) as (pop, imap):
        configure(home, pop, imap, mailbox="Archive")
        result = sync(home, pop)
        assert result.code == 73, result
        assert re.search(r"IMAP mailbox Archive cannot be created: NO \[NOPERM\]", result.stderr), (
            result
        )
        assert dele(pop) == [] and imap.names().count("APPEND") == 0


def test_sigkill_then_a_server_that_cannot_search_is_at_least_once_and_said(
    home: Home,
) -> None:
    faults = [Fault("APPEND", "hold-after-literal"), Fault("UID SEARCH", "no", times=9)]
    with servers(faults=faults) as (pop, imap):
        configure(home, pop, imap)
        _killed_mid_append(home, imap)
        imap.faults[:1] = []
        result = sync(home, pop)
        assert result.code == 0, result
        assert re.search(
            r"cannot search INBOX .* appended again \(at least once\)", result.stderr
        ), result
        got = imap.messages()
        assert got.count(crlf(MESSAGES[0])) == 2
        assert sorted(set(got)) == sorted(crlf(m) for m in MESSAGES)
        assert pop.mailbox.messages == []


def test_no_binary_a_nul_message_is_refused_and_stays(home: Home) -> None:
    nul = b"Message-ID: <nul@example.org>\nSubject: nul\n\nbefore\0after\n"
    with servers([*MESSAGES[:2], nul]) as (pop, imap):
        configure(home, pop, imap)
        result = sync(home, pop)
        assert result.code == 73, result
        assert any("NUL bytes" in ln and "BINARY" in ln for ln in problems(result)), result
        assert imap.messages() == [crlf(m) for m in MESSAGES[:2]]
        assert pop.mailbox.messages == [crlf(nul)]


def test_with_binary_a_nul_message_goes_as_literal8(home: Home) -> None:
    nul = b"Message-ID: <nul@example.org>\nSubject: nul\n\nbefore\0after\n"
    with servers([nul], caps=(*DEFAULT_CAPS, "BINARY")) as (pop, imap):
        configure(home, pop, imap)
        result = sync(home, pop)
        assert result.code == 0, result
        assert imap.messages() == [crlf(nul)]
        assert any(re.search(r"~\{\d+\+?\}$", ln) for ln in imap.commands[0])


def test_drop_after_the_literal_is_settled_by_search(home: Home) -> None:
    """Lost after the literal, before the tagged OK: the message was taken;
    a new connection finds it by Message-ID and size and it is not appended again."""
    with servers(faults=[Fault("APPEND", "drop-after-literal")]) as (pop, imap):
        configure(home, pop, imap)
        result = sync(home, pop)
        assert result.code == 0, result
        assert imap.messages() == [crlf(m) for m in MESSAGES]
        assert "UID SEARCH" in imap.names(1)
        assert pop.mailbox.messages == []


def test_drop_after_the_literal_without_a_second_connection(home: Home) -> None:
    """The same, but the server cannot be reached again in that run: the run
    fails (75), the message is not DELE'd, and its intent stays, so that the
    next run looks for it in the mailbox instead of appending it again."""
    faults = [Fault("APPEND", "drop-after-literal"), Fault("greeting", "refuse", session=1)]
    with servers(faults=faults) as (pop, imap):
        configure(home, pop, imap)
        result = sync(home, pop)
        assert result.code == 75, result
        assert re.search(r"cannot be checked now", result.stderr), result
        assert dele(pop) == []
        assert len(pop.mailbox.messages) == 4
        rerun = sync(home, pop)
        assert rerun.code == 0, rerun
        assert "1 message(s) delivered by an interrupted run were recorded" in rerun.stderr
        got = imap.messages()
        assert all(got.count(crlf(m)) == 1 for m in MESSAGES)  # exactly once
        assert pop.mailbox.messages == []


def _killed_mid_append(home: Home, imap: FakeIMAP) -> None:
    proc = home.popen("sync")
    try:
        assert imap.appended.wait(30), "fetchpop never sent the APPEND literal"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL


@pytest.mark.parametrize("uidplus", [True, False], ids=["uidplus", "no-uidplus"])
def test_sigkill_after_the_literal_next_run_finds_it(home: Home, uidplus: bool) -> None:
    caps = DEFAULT_CAPS if uidplus else tuple(c for c in DEFAULT_CAPS if c != "UIDPLUS")
    with servers(caps=caps, faults=[Fault("APPEND", "hold-after-literal")]) as (pop, imap):
        configure(home, pop, imap)
        _killed_mid_append(home, imap)
        assert dele(pop) == []
        assert len(imap.messages()) == 1
        imap.faults.clear()
        result = sync(home, pop)
        assert result.code == 0, result
        assert "1 message(s) delivered by an interrupted run were recorded" in result.stderr
        assert imap.messages() == [crlf(m) for m in MESSAGES]  # each exactly once
        assert "UID SEARCH" in imap.names()
        assert pop.mailbox.messages == []


def test_sigkill_without_message_id_is_at_least_once_and_said(home: Home) -> None:
    bare = [b"Subject: no id\n\nnothing to search for\n", MESSAGES[1]]
    with servers(bare, faults=[Fault("APPEND", "hold-after-literal")]) as (pop, imap):
        configure(home, pop, imap)
        _killed_mid_append(home, imap)
        imap.faults.clear()
        result = sync(home, pop)
        assert result.code == 0, result
        assert re.search(
            r"without Message-ID .* appended again \(at least once\)", result.stderr
        ), result
        assert imap.messages() == [crlf(bare[0]), crlf(bare[0]), crlf(bare[1])]
        assert pop.mailbox.messages == []


# -- the target and the protocol on their own -------------------------------------------


def _target(imap: FakeIMAP, **settings: Any) -> Any:
    spec = parse_deliver(f"imap://bob@127.0.0.1:{imap.port}/INBOX")
    options = ImapSettings(tls="off", timeout=5, **settings)
    return dataclasses.replace(spec, imap=options)


def test_xoauth2_login_with_the_token_source() -> None:
    caps = (*DEFAULT_CAPS, "AUTH=XOAUTH2")
    with FakeIMAP(token="ya29.token", caps=caps) as imap:
        target = open_target(_target(imap, auth="xoauth2"), secret=lambda: "ya29.token")
        delivery = target.begin("u1")
        delivery.write(MESSAGES[0])
        delivery.finish()
        target.close()
        assert imap.messages() == [crlf(MESSAGES[0])]
        wrong = open_target(_target(imap, auth="xoauth2"), secret=lambda: "ya29.stale")
        with pytest.raises(AuthError) as caught:
            wrong.reserve(1)
        assert "ya29" not in str(caught.value)
        assert '{"status":"401"}' in str(caught.value)
        wrong.close()


def test_a_password_with_quotes_and_8bit_goes_as_a_literal() -> None:
    password = 'p"a\\ss wörd'
    with FakeIMAP(password=password, caps=("IMAP4rev1",)) as imap:
        target = open_target(_target(imap, auth="login", password=password))
        assert target.reserve(1) == ["1234:1"]
        target.close()
        login = next(ln for ln in imap.commands[0] if " LOGIN " in ln)
        assert "wörd" not in login and re.search(r"\{\d+\}$", login)


def test_deliver_value_round_trips() -> None:
    for value in (
        "imap://alice@example.org@imap.gmail.com/[Gmail]/All%20Mail",
        "imap://bob@127.0.0.1:1143/INBOX",
        "imap://u@[::1]:993/Archive/2025",
    ):
        spec = parse_deliver(value)
        assert format_deliver(spec) == value
        assert parse_deliver(format_deliver(spec)) == spec
    assert parse_deliver("imap://alice@host").mailbox == "INBOX"
    for bad in ("imap://host/INBOX", "imap://u@/INBOX", "imap://u@h:0/INBOX"):
        with pytest.raises(ValueError):
            parse_deliver(bad)


def test_parser_reads_literals_codes_and_continuations() -> None:
    parser = protocol.Parser()
    parser.feed(b"* OK [CAPABILITY IMAP4rev1 LITERAL+] hi\x1b[2J\r\n+ go\r\n")
    parser.feed(b"* STATUS {5}\r\nIN BX (UIDNEXT 7 UIDVALIDITY 9)\r\n")
    parser.feed(b"A1 OK [APPENDUID 9 7] done\r\n")
    greeting = parser.next()
    assert greeting is not None and greeting.code_name == "CAPABILITY"
    assert "\x1b" not in greeting.text  # sanitised before it can reach a terminal
    assert protocol.capabilities((greeting.code or "")[10:]) == {"IMAP4REV1", "LITERAL+"}
    cont = parser.next()
    assert cont is not None and cont.kind == "continue"
    status = parser.next()
    assert status is not None and protocol.status_items(status.data) == {
        "UIDNEXT": 7,
        "UIDVALIDITY": 9,
    }
    done = parser.next()
    assert done is not None and protocol.appenduid(done.code) == (9, 7)
    assert parser.next() is None
    parser.feed(b"* STATUS {0}\r\n (UIDNEXT 1 UIDVALIDITY 2)\r\n")
    empty = parser.next()
    assert empty is not None and protocol.status_items(empty.data) == {
        "UIDNEXT": 1,
        "UIDVALIDITY": 2,
    }
    assert parser.next() is None
    parser.feed(b"* " + b"x" * (protocol.MAX_LINE + 10))
    with pytest.raises(ProtocolError):
        parser.next()


def test_strings_and_mailbox_names() -> None:
    assert protocol.astring("INBOX") == b"INBOX"
    assert protocol.astring('a "b"') == b'"a \\"b\\""'
    assert protocol.astring("wörd") == protocol.Literal(5, "wörd".encode())
    assert protocol.encode_mutf7("Entwürfe & Co") == b"Entw&APw-rfe &- Co"
    assert protocol.encode_mutf7("日本語") == b"&ZeVnLIqe-"
    pieces = protocol.Command("A1", "APPEND", (b"INBOX", protocol.Literal(3))).pieces(
        frozenset({"LITERAL+"})
    )
    assert pieces[0][0] == b"A1 APPEND INBOX {3+}\r\n"


# -- the keys ---------------------------------------------------------------------------


def _load(tmp_path: Path, **keys: object) -> Any:
    from fetchpop.config import load_config

    base: dict[str, object] = {
        "host": "pop.example.org",
        "user": "alice",
        "password": "x",
        "deliver": "imap://alice@example.com@imap.example.com/Fetched",
    }
    base.update(keys)
    path = tmp_path / "config.toml"
    path.write_text(account_toml("home", **base))
    path.chmod(0o600)
    return load_config(path, environ={"HOME": str(tmp_path)}).accounts["home"]


def test_imap_keys_travel_with_the_target(tmp_path: Path) -> None:
    account = _load(
        tmp_path,
        imap_tls="starttls",
        imap_auth="plain",
        imap_password_command="printf 's3cret\\n'",
        imap_flags="\\Seen $Fetched",
        imap_keep_date=True,
        timeout=7,
    )
    settings = account.deliver.imap
    assert settings is not None
    assert (settings.tls, settings.auth, settings.keep_date, settings.timeout) == (
        "starttls",
        "plain",
        True,
        7.0,
    )
    assert settings.flags == ("\\Seen", "$Fetched")
    assert settings.password_argv == ("printf", "s3cret\\n")
    assert account.to_public_dict()["imap_flags"] == ["\\Seen", "$Fetched"]
    assert format_deliver(account.deliver) == "imap://alice@example.com@imap.example.com/Fetched"

    from fetchpop.secrets import get_imap_password, imap_keyring_username

    assert get_imap_password(account) == "s3cret"
    assert imap_keyring_username(account) == "alice@example.com@imap.example.com"


@pytest.mark.parametrize(
    ("keys", "pattern"),
    [
        ({"imap_auth": "xoauth2"}, r"needs imap_oauth_provider"),
        ({"imap_oauth_provider": "google"}, r'needs imap_auth = "xoauth2"'),
        ({"imap_flags": "\\Recent"}, r"is not an IMAP flag"),
        ({"imap_flags": "a(b"}, r"is not an IMAP flag"),
        ({"imap_tls": "ssl"}, r'must be one of "implicit"'),
    ],
)
def test_imap_keys_refuse_what_cannot_work(
    tmp_path: Path, keys: dict[str, object], pattern: str
) -> None:
    from fetchpop.errors import ConfigError

    with pytest.raises(ConfigError, match=pattern):
        _load(tmp_path, **keys)


def test_a_real_sync_takes_the_imap_password_from_the_keyring(home: Home, tmp_path: Path) -> None:
    """No imap_password in the file: fetchpop sync hands the target the IMAP
    side's password source, whose keyring entry is USER@HOST of the IMAP side."""
    import json
    import os

    backend = tmp_path / "keyring-backend"
    backend.mkdir()
    source = Path(__file__).with_name("filekeyring.py").read_text()
    (backend / "fptestkeyring.py").write_text(source)
    store = tmp_path / "keyring.json"
    from test_security import run_on_pty

    with servers() as (pop, imap):
        configure(home, pop, imap, imap_password=None)
        text = home.config_path.read_text()
        home.write_config("\n".join(ln for ln in text.splitlines() if "imap_password" not in ln))
        env = {
            "PYTHONPATH": os.pathsep.join(
                p for p in (str(backend), os.environ.get("PYTHONPATH")) if p
            ),
            "PYTHON_KEYRING_BACKEND": "fptestkeyring.FileKeyring",
            "TEST_KEYRING_FILE": str(store),
        }
        # `password set --imap` stores it under the IMAP side's USER@HOST.
        code, output = run_on_pty(
            home,
            "password",
            "set",
            "--imap",
            "home",
            env=env,
            answers=[(b"Password for bob@127.0.0.1: ", "imap-secret"), (b"Again: ", "imap-secret")],
        )
        assert code == 0, output
        assert "home: password for bob@127.0.0.1 stored in the system keyring" in output
        assert json.loads(store.read_text())["fetchpop"] == {"bob@127.0.0.1": "imap-secret"}
        result = home.run("sync", env=env, timeout=60)
        assert result.code == 0, result
        assert sorted(imap.messages()) == sorted(crlf(m) for m in MESSAGES)
        assert pop.mailbox.messages == []
