"""``deliver = "smtp:..."`` and ``"lmtp:..."``: the sans-IO protocol, and the
real ``fetchpop sync`` against fakepop (POP3) and fakesmtp (the delivery
server, scripted to fail at each step), and against a private Postfix.

What each fault test asserts is what a user would notice: the exit status
(75 for a 4xx or a lost connection: try again later; 73 for a refusal of
the message, counted, and 65 once it is skipped after MAX_ATTEMPTS runs),
the stderr line naming the account and the server, that the POP3 server was
sent no DELE for a message the delivery server did not accept, and that a
clean run afterwards delivers what was missed: nothing lost.
"""

from __future__ import annotations

import itertools
import os
import re
import signal
import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import trustme
from fakepop import FakePOP3, Mailbox, make_server_context, to_crlf
from fakesmtp import DROP, KILL, FakeSMTP, unix_socket_path
from runner import Home, Result, account_toml

from fetchpop.errors import LocalProtocolError, ProtocolError
from fetchpop.smtp.protocol import DataEncoder, MessageScan, ReplyParser, command, return_path

MESSAGES = [
    b"Return-Path: <bob@example.org>\nFrom: bob@example.org\nSubject: one\n\nfirst\n",
    b"From: c@example.org\nSubject: two\n\n.leading dot\n..two\n.\nend\n",
    b"From: d@example.org\nSubject: three\n\n" + b"a line of message three\n" * 50,
]
UIDLS = ["uid-1", "uid-2", "uid-3"]
CLEARTEXT = re.compile(r'^fetchpop: home: warning: tls = "off"')


def stored(message: bytes) -> bytes:
    """What fetchpop receives of *message* from fakepop (and a Maildir would hold)."""
    return to_crlf(message).replace(b"\r\n", b"\n")


# -- the sans-IO protocol ---------------------------------------------------------


def test_replies_single_and_multi_line_with_enhanced_codes() -> None:
    parser = ReplyParser()
    wire = b"220 hi there\r\n250-mx.example\r\n250-PIPELINING\r\n250 SIZE 100\r\n550 5.1.1 no\r\n"
    replies = [r for i in range(len(wire)) for r in parser.feed(wire[i : i + 1])]
    assert [(r.code, r.enhanced) for r in replies] == [(220, None), (250, None), (550, "5.1.1")]
    assert replies[1].lines == ("mx.example", "PIPELINING", "SIZE 100")
    assert replies[2].text == "550 5.1.1 no"
    assert not parser.partial


@pytest.mark.parametrize(
    "wire",
    [b"hello\r\n", b"250-a\r\n251 b\r\n", b"2500 x\r\n", b"250x\r\n", b"250 " + b"x" * 5000],
)
def test_malformed_replies_are_protocol_errors(wire: bytes) -> None:
    with pytest.raises(ProtocolError):
        ReplyParser().feed(wire)


def test_server_text_is_made_safe() -> None:
    (reply,) = ReplyParser().feed(b"550 \x1b[31mred\x07\r\n")
    assert "\x1b" not in reply.text and "\x07" not in reply.text


def test_commands_refuse_line_ends() -> None:
    assert command("RCPT", "TO:<alice>") == b"RCPT TO:<alice>\r\n"
    for bad in ("a\r\nDATA", "a\nb", "a\0b"):
        with pytest.raises(LocalProtocolError):
            command("RCPT", f"TO:<{bad}>")


@pytest.mark.parametrize(
    "message",
    [
        b"",
        b".",
        b".\n",
        b"a\n.\n..\n.x\nend",
        b"\n.\n\r\n.\r.\n",
        b"no final newline",
        b"x" * 10 + b"\n." * 5,
    ],
)
def test_dot_stuffing_and_crlf_hold_at_every_chunk_boundary(message: bytes) -> None:
    want = message.replace(b"\n", b"\r\n")
    lines = re.split(rb"(?<=\n)", want)  # (lone CRs are no line ends)
    want = b"".join((b"." + line if line.startswith(b".") else line) for line in lines)
    want += (b"" if not message or message.endswith(b"\n") else b"\r\n") + b".\r\n"
    for cut_a, cut_b in itertools.combinations(range(len(message) + 1), 2):
        encoder = DataEncoder()
        parts = (message[:cut_a], message[cut_a:cut_b], message[cut_b:])
        assert b"".join(encoder.encode(p) for p in parts) + encoder.end() == want, parts


def test_the_scan_finds_8bit_utf8_headers_and_the_return_path() -> None:
    scan = MessageScan()
    for chunk in (b"Return-Path: <a@b.example>\nSubject: Gr\xc3", b"\xbc\xc3\x9fe\n\nbody\n"):
        scan.feed(chunk)
    scan.finish()
    assert (scan.eight_bit, scan.utf8_header, scan.sender) == (True, True, "a@b.example")
    latin = MessageScan()
    latin.feed(b"Subject: \xe9\n\n")
    latin.finish()
    assert (latin.eight_bit, latin.utf8_header, latin.sender) == (True, False, "")
    assert return_path(b"Return-Path: <>\n") == ""
    assert return_path(b"Return-Path: <a b@c>\n") == ""
    assert return_path(b"X: y\nreturn-path:\n <x@y.example>\n") == "x@y.example"
    body_only = MessageScan()
    body_only.feed(b"Subject: x\n\nReturn-Path: <no@body.example>\n\xff\n")
    body_only.finish()
    assert (body_only.eight_bit, body_only.utf8_header, body_only.sender) == (True, False, "")


# -- the harness for fetchpop sync --------------------------------------------------


@contextmanager
def servers(lmtp: bool = False, **kwargs: object) -> Iterator[tuple[FakePOP3, FakeSMTP]]:
    pop = FakePOP3(Mailbox(MESSAGES, UIDLS))
    pop.start()
    smtp = FakeSMTP(lmtp=lmtp, **kwargs)  # type: ignore[arg-type]
    smtp.start()
    try:
        yield pop, smtp
    finally:
        smtp.close()
        pop.close()
    assert not pop.errors, pop.errors
    assert not smtp.errors, smtp.errors


def configure(home: Home, pop: FakePOP3, smtp: FakeSMTP, **keys: object) -> None:
    kind = "lmtp" if smtp.lmtp else "smtp"
    base: dict[str, object] = {
        "host": "127.0.0.1",
        "port": pop.port,
        "tls": "off",
        "user": "alice",
        "password": "secret",
        "auth": "user",
        "deliver": f"{kind}:{smtp.address}",
        "recipient": "alice@example.org",
        "keep": False,
        "timeout": 5,
    }
    base.update(keys)
    home.write_config(account_toml("home", **base))


def sync(home: Home, *args: str) -> Result:
    return home.run(*args, "sync", timeout=120)


def problems(result: Result) -> list[str]:
    return [line for line in result.stderr.splitlines() if not CLEARTEXT.match(line)]


def deles(pop: FakePOP3) -> list[bytes]:
    return [c for s in pop.sessions for c in s.commands if c.upper().startswith(b"DELE")]


def delivered(smtp: FakeSMTP) -> list[bytes]:
    return sorted(m.data for m in smtp.messages)


def assert_clean_rerun(home: Home, pop: FakePOP3, smtp: FakeSMTP) -> None:
    """With the faults gone, one run delivers the rest and empties the server."""
    smtp.faults.clear()
    result = sync(home)
    assert result.code == 0, result
    assert problems(result) == [], result
    assert pop.mailbox.messages == []
    assert set(delivered(smtp)) == {stored(m) for m in MESSAGES}


# -- delivery ---------------------------------------------------------------------


@pytest.mark.parametrize("lmtp", [False, True], ids=["smtp", "lmtp"])
def test_messages_are_delivered_then_deleted(home: Home, lmtp: bool) -> None:
    with servers(lmtp=lmtp) as (pop, smtp):
        configure(home, pop, smtp)
        result = sync(home)
        assert result.code == 0, result
        assert problems(result) == [], result
        assert pop.mailbox.messages == []
        assert delivered(smtp) == sorted(stored(m) for m in MESSAGES)
        senders = sorted(m.sender for m in smtp.messages)
        assert senders == ["", "", "bob@example.org"]
        assert {tuple(m.recipients) for m in smtp.messages} == {("alice@example.org",)}
        # One connection for the whole run, pipelined MAIL/RCPT/DATA.
        assert len(smtp.sessions) == 1
        hello = smtp.sessions[0].commands[0].split()[0]
        assert hello == (b"LHLO" if lmtp else b"EHLO")


def test_the_unix_socket_and_the_default_recipient(home: Home, tmp_path: Path) -> None:
    with servers(lmtp=True, unix_path=unix_socket_path(tmp_path)) as (pop, smtp):
        configure(home, pop, smtp)
        text = home.config_path.read_text().replace('recipient = "alice@example.org"\n', "")
        home.write_config(text)
        result = sync(home)
        assert result.code == 0, result
        import pwd

        me = pwd.getpwuid(os.geteuid()).pw_name
        assert {tuple(m.recipients) for m in smtp.messages} == {(me,)}


def test_8bit_and_utf8_messages_carry_body_and_smtputf8_where_offered(home: Home) -> None:
    messages = [
        b"Subject: caf\xc3\xa9\n\nUTF-8 header\n",
        b"Subject: x\n\nlatin \xe9\n",
        MESSAGES[2],
    ]
    for offered in (True, False):
        pop = FakePOP3(Mailbox(messages))
        pop.start()
        exts = ("PIPELINING", "8BITMIME", "SMTPUTF8", "SIZE 100000") if offered else ()
        with FakeSMTP(extensions=exts) as smtp:
            configure(home, pop, smtp)
            home.store_path.unlink(missing_ok=True)
            result = sync(home)
            assert result.code == 0, result
            params = {m.data.split(b"\n")[0]: m.params for m in smtp.messages}
            assert delivered(smtp) == sorted(stored(m) for m in messages)  # bytes as they are
        pop.close()
        if offered:
            assert params[b"Subject: caf\xc3\xa9"][:2] == ["BODY=8BITMIME", "SMTPUTF8"]
            assert (
                params[b"Subject: x"][0] == "BODY=8BITMIME"
                and "SMTPUTF8" not in params[b"Subject: x"]
            )
            assert [p.split("=")[0] for p in params[b"From: d@example.org"]] == ["SIZE"]
        else:
            assert all(p == [] for p in params.values())


@pytest.mark.parametrize("lmtp", [False, True], ids=["smtp", "lmtp"])
def test_a_server_that_ends_the_connection_between_messages_gets_a_new_one(
    home: Home, lmtp: bool
) -> None:
    with servers(lmtp=lmtp, close_after=1) as (pop, smtp):
        configure(home, pop, smtp)
        result = sync(home)
        assert result.code == 0, result
        assert problems(result) == [], result
        assert pop.mailbox.messages == []
        assert delivered(smtp) == sorted(stored(m) for m in MESSAGES)  # each once
        assert len(smtp.sessions) == 3


# -- STARTTLS and AUTH --------------------------------------------------------------


@pytest.fixture(scope="module")
def tls_ca() -> trustme.CA:
    return trustme.CA()


def test_starttls_is_taken_where_offered_and_verified(home: Home, tls_ca: trustme.CA) -> None:
    context = make_server_context(tls_ca, "localhost")
    ca_file = home.root / "ca.pem"
    tls_ca.cert_pem.write_to_path(str(ca_file))
    with servers(tls_context=context) as (pop, smtp):
        deliver = f"smtp:localhost:{smtp.port}"
        configure(home, pop, smtp, deliver=deliver)
        result = sync(home)  # not verified: nothing sent, nothing deleted
        assert result.code == 69, result
        (line,) = problems(result)
        assert line.startswith(f"fetchpop: home: smtp localhost:{smtp.port}: TLS certificate"), line
        assert smtp.messages == [] and deles(pop) == []
        configure(home, pop, smtp, deliver=deliver, smtp_ca_file=str(ca_file))
        result = sync(home)
        assert result.code == 0, result
        assert smtp.sessions[-1].tls
        assert delivered(smtp) == sorted(stored(m) for m in MESSAGES)


def test_smtp_tls_off_and_starttls_required(home: Home, tls_ca: trustme.CA) -> None:
    context = make_server_context(tls_ca, "localhost")
    with servers(tls_context=context) as (pop, smtp):
        configure(home, pop, smtp, smtp_tls="off")
        result = sync(home)
        assert result.code == 0, result
        assert not any(s.tls for s in smtp.sessions)
    with servers() as (pop, smtp):
        configure(home, pop, smtp, smtp_tls="starttls")
        home.store_path.unlink(missing_ok=True)
        result = sync(home)
        assert result.code == 69, result
        assert "does not offer STARTTLS" in problems(result)[0]
        assert smtp.messages == [] and deles(pop) == []


@pytest.mark.parametrize("source", ["smtp_password", "smtp_password_command"])
def test_a_real_sync_logs_in_to_the_smtp_server(home: Home, source: str) -> None:
    """fetchpop sync hands the target its password source: AUTH as smtp_user,
    the password asked once for the run, never shown under -vv."""
    with servers(users={"bob": "hunter2"}) as (pop, smtp):
        secret = "hunter2" if source == "smtp_password" else "echo hunter2"
        configure(home, pop, smtp, smtp_user="bob", smtp_tls="off", **{source: secret})
        result = sync(home, "-vv")
        assert result.code == 0, result
        assert pop.mailbox.messages == []
        assert delivered(smtp) == sorted(stored(m) for m in MESSAGES)
        assert "hunter2" not in result.stderr and "aHVudGVyMg" not in result.stderr
        assert "AUTH PLAIN" in result.stderr  # the target's transcript, under -vv


def test_auth_with_the_smtp_password_sources(tmp_path: Path) -> None:
    """AUTH through the target: PLAIN, then LOGIN, with the password from
    smtp_password_command, and a refused one."""
    from fetchpop.config import Account, load_config
    from fetchpop.deliver import DeliverySpec, open_target
    from fetchpop.errors import AuthError
    from fetchpop.secrets import get_smtp_password

    def source(account: Account) -> Callable[[], str]:
        return lambda: get_smtp_password(account)

    def send(spec: DeliverySpec, account: Account) -> None:
        target = open_target(spec, secret=source(account))
        try:
            delivery = target.begin("uid-1")
            delivery.write(MESSAGES[0])
            delivery.finish()
        finally:
            target.close()

    config = tmp_path / "config.toml"
    for extensions in (("PIPELINING",), ()):
        with FakeSMTP(users={"bob": "hunter2"}, extensions=extensions) as smtp:
            keys = {"smtp_user": "bob", "smtp_password_command": "echo hunter2"}
            text = account_toml(
                "home", host="pop.example", user="alice", deliver=f"smtp:{smtp.address}",
                recipient="alice", **keys,
            )  # fmt: skip
            config.write_text(text)
            account = load_config(config).accounts["home"]
            send(account.deliver, account)
            assert smtp.sessions[0].authenticated == "bob"
            assert delivered(smtp) == [MESSAGES[0]]
    with FakeSMTP(users={"bob": "other"}) as smtp:
        spec = DeliverySpec("smtp", host="127.0.0.1", port=smtp.port, server=account.deliver.server)
        with pytest.raises(AuthError, match=r"refused AUTH as bob: 535 5\.7\.8"):
            send(spec, account)
        assert smtp.messages == []


# -- faults at each step ----------------------------------------------------------

#: (step, reply) -> exit status of the faulty run.
TEMPORARY = [
    ("greeting", b"421 4.3.2 busy"),
    ("EHLO", b"451 4.3.0 later"),
    ("MAIL", b"451 4.3.0 later"),
    ("RCPT", b"450 4.2.1 mailbox busy"),
    ("DATA", b"451 4.3.0 later"),
    ("message", b"452 4.2.2 over quota, for now"),
    ("MAIL", b"421 4.3.2 shutting down"),
    ("message", b"421 4.3.2 shutting down"),
    ("greeting", DROP),
    ("EHLO", DROP),
    ("MAIL", DROP),
    ("RCPT", DROP),
    ("DATA", DROP),
]


@pytest.mark.parametrize("lmtp", [False, True], ids=["smtp", "lmtp"])
@pytest.mark.parametrize(
    ("step", "answer"), TEMPORARY, ids=[f"{s}-{a[:3].decode()}" for s, a in TEMPORARY]
)
def test_a_temporary_failure_leaves_the_mail_on_the_server(
    home: Home, lmtp: bool, step: str, answer: bytes
) -> None:
    with servers(lmtp=lmtp, faults={step: answer}) as (pop, smtp):
        configure(home, pop, smtp)
        result = sync(home)
        assert result.code == 75, result
        (line,) = problems(result)
        kind = "lmtp" if lmtp else "smtp"
        assert line.startswith(f"fetchpop: home: {kind} 127.0.0.1:{smtp.port}"), line
        if answer != DROP:
            assert answer.decode() in line, line
        assert smtp.messages == []
        assert deles(pop) == []
        assert len(pop.mailbox.messages) == 3
        assert_clean_rerun(home, pop, smtp)


#: A refusal of the message itself: counted, skipped after three runs.
REFUSALS = [
    ("MAIL", b"553 5.1.8 sender domain does not exist"),
    ("RCPT", b"550 5.1.1 no such user"),
    ("DATA", b"554 5.5.1 no valid recipients"),
    ("message", b"554 5.7.1 spam"),
]


@pytest.mark.parametrize("lmtp", [False, True], ids=["smtp", "lmtp"])
@pytest.mark.parametrize(("step", "answer"), REFUSALS, ids=[s for s, _ in REFUSALS])
def test_a_refused_message_is_counted_then_skipped_never_deleted(
    home: Home, lmtp: bool, step: str, answer: bytes
) -> None:
    with servers(lmtp=lmtp, faults={step: answer}) as (pop, smtp):
        configure(home, pop, smtp)
        for attempt in (1, 2, 3):
            result = sync(home)
            assert result.code == 73, result
            for uidl in UIDLS:
                assert f"message {uidl} not delivered (attempt {attempt} of 3): " in result.stderr
            assert answer.decode() in problems(result)[0], result
        result = sync(home)
        assert result.code == 65, result
        for uidl in UIDLS:
            assert f"skipped {uidl}" in result.stderr
        assert smtp.messages == []
        assert deles(pop) == []
        assert len(pop.mailbox.messages) == 3  # nothing lost


@pytest.mark.parametrize("lmtp", [False, True], ids=["smtp", "lmtp"])
@pytest.mark.parametrize("step", ["greeting", "EHLO"])
def test_a_server_refusing_us_fails_the_account_and_counts_no_message(
    home: Home, lmtp: bool, step: str
) -> None:
    with servers(lmtp=lmtp, faults={step: b"554 5.3.2 not accepting mail"}) as (pop, smtp):
        configure(home, pop, smtp)
        for _ in range(4):  # never skipped: the server's fault, not the messages'
            result = sync(home)
            assert result.code == 73, result
            (line,) = problems(result)
            assert "554 5.3.2 not accepting mail" in line
            assert "attempt" not in result.stderr
        assert deles(pop) == []
        assert_clean_rerun(home, pop, smtp)


@pytest.mark.parametrize("lmtp", [False, True], ids=["smtp", "lmtp"])
def test_a_drop_after_the_final_dot_is_try_again_later_and_at_least_once(
    home: Home, lmtp: bool
) -> None:
    """The server kept the message but its reply was lost: fetchpop cannot know,
    so it stays on the POP3 server, unrecorded, and comes again (at least
    once), said in one line by the next run."""
    with servers(lmtp=lmtp, faults={"message": DROP}) as (pop, smtp):
        configure(home, pop, smtp)
        result = sync(home)
        assert result.code == 75, result
        (line,) = problems(result)
        assert "closed by the server" in line, line
        assert deles(pop) == []
        assert len(smtp.messages) == 1  # the first message, whose reply was lost
        smtp.faults.clear()
        result = sync(home)
        assert result.code == 0, result
        (line,) = problems(result)
        server = "LMTP" if lmtp else "SMTP"
        assert re.search(
            rf"message uid-1 is delivered again: .* handed it to the {server} server already",
            line,
        )
        assert pop.mailbox.messages == []
        assert delivered(smtp) == sorted(stored(m) for m in [MESSAGES[0], *MESSAGES])


def test_sigkill_after_the_server_took_the_message_is_said_on_the_next_run(home: Home) -> None:
    """A crash between the server's acceptance and the record: the next run
    cannot ask the server, delivers it again, and says so in one line."""
    with servers(lmtp=True, faults={"message": KILL}) as (pop, smtp):
        configure(home, pop, smtp)
        proc = home.popen("sync")
        smtp.on_kill = lambda: os.kill(proc.pid, signal.SIGKILL)
        try:
            proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:  # pragma: no cover
            proc.kill()
            raise
        assert proc.returncode == -signal.SIGKILL
        assert deles(pop) == [] and len(smtp.messages) == 1
        smtp.faults.clear()
        result = sync(home)
        assert result.code == 0, result
        (line,) = problems(result)
        assert re.search(r"message uid-1 is delivered again: an interrupted run may have", line)
        assert pop.mailbox.messages == []
        assert delivered(smtp) == sorted(stored(m) for m in [MESSAGES[0], *MESSAGES])


# -- the config: deliver forms and keys ---------------------------------------------


@pytest.mark.parametrize(
    ("value", "kind", "path", "host", "port", "written"),
    [
        ("lmtp:/run/dovecot/lmtp", "lmtp", "/run/dovecot/lmtp", None, None, None),
        ("lmtp:~/lmtp.sock", "lmtp", "HOME/lmtp.sock", None, None, "lmtp:HOME/lmtp.sock"),
        ("LMTP: 127.0.0.1:24 ", "lmtp", None, "127.0.0.1", 24, "lmtp:127.0.0.1:24"),
        ("lmtp:[::1]:2424", "lmtp", None, "::1", 2424, None),
        ("smtp:localhost", "smtp", None, "localhost", 25, "smtp:localhost:25"),
        ("smtp:mail.example.org:587", "smtp", None, "mail.example.org", 587, None),
    ],
)
def test_the_deliver_forms(
    tmp_path: Path, value: str, kind: str, path: str | None, host: str | None,
    port: int | None, written: str | None,
) -> None:  # fmt: skip
    from fetchpop.deliver import format_deliver, parse_deliver

    spec = parse_deliver(value, {"HOME": str(tmp_path)})
    home = str(tmp_path)
    assert (spec.kind, spec.host, spec.port) == (kind, host, port)
    assert spec.path == (Path(path.replace("HOME", home)) if path else None)
    assert format_deliver(spec) == (written or value).replace("HOME", home)
    assert parse_deliver(format_deliver(spec), {"HOME": home}) == spec


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("lmtp:", "'lmtp:' lacks the socket or HOST:PORT after lmtp:"),
        ("smtp: ", "'smtp: ' lacks the HOST:PORT after smtp:"),
        ("lmtp:mail.example", "'lmtp:mail.example': LMTP over TCP has no default port"),
        ("lmtp:run/lmtp", "'lmtp:run/lmtp': expected HOST:PORT or an absolute socket path"),
        ("smtp:host:0", "'smtp:host:0': the port must be a number from 1 to 65535"),
        ("smtp:host:smtp", "'smtp:host:smtp': the port must be a number"),
        ("smtp:::1:25", "'smtp:::1:25': write an IPv6 address in brackets"),
        ("smtp:[::1", "'smtp:[::1': expected [ADDRESS]:PORT"),
        ("smtp:user@host:25", "'smtp:user@host:25': expected HOST:PORT"),
    ],
)
def test_bad_deliver_forms_say_what_is_wrong(value: str, message: str) -> None:
    from fetchpop.deliver import parse_deliver

    with pytest.raises(ValueError) as info:
        parse_deliver(value)
    assert str(info.value).startswith(message)


def _load(tmp_path: Path, extra: str, mode: int = 0o600) -> object:
    from fetchpop.config import load_config

    path = tmp_path / "config.toml"
    path.write_text(
        '[accounts.home]\nhost = "pop.example.org"\nuser = "alice"\n'
        'deliver = "smtp:localhost:25"\n' + extra
    )
    path.chmod(mode)
    return load_config(path)


def test_the_smtp_keys_reach_the_target_and_defaults_apply(tmp_path: Path) -> None:
    from fetchpop.deliver import ServerOptions

    ca = tmp_path / "ca.pem"
    ca.write_text("x")
    digits = "ab" * 32
    config = _load(
        tmp_path,
        f'recipient = "alice@example.org"\nsmtp_tls = "starttls"\nsmtp_ca_file = "{ca}"\n'
        f'smtp_tls_fingerprint = "sha256:{digits.upper()}"\nsmtp_user = "bob"\n'
        "smtp_password_command = \"pass show 'smtp relay'\"\ntimeout = 7\nmda_timeout = 99\n",
    )
    account = config.accounts["home"]  # type: ignore[attr-defined]
    assert account.smtp_password_argv == ("pass", "show", "smtp relay")
    assert account.deliver.server == ServerOptions(
        recipient="alice@example.org", tls="starttls", ca_file=ca, tls_fingerprint=digits,
        user="bob", timeout=7.0, reply_timeout=99.0,
    )  # fmt: skip
    public = account.to_public_dict()
    assert public["smtp_tls_fingerprint"] == f"sha256:{digits}"
    assert public["deliver"] == "smtp:localhost:25"
    plain = _load(tmp_path, "").accounts["home"]  # type: ignore[attr-defined]
    assert plain.deliver.server == ServerOptions(tls="auto")
    assert plain.recipient is None and plain.smtp_tls == "auto"


def test_smtp_password_is_a_secret(tmp_path: Path) -> None:
    from fetchpop.config import load_config
    from fetchpop.errors import ConfigError

    account = _load(tmp_path, 'smtp_user = "bob"\nsmtp_password = "hunter2"\n')
    home = account.accounts["home"]  # type: ignore[attr-defined]
    assert home.smtp_password == "hunter2"
    assert "hunter2" not in repr(home)
    assert home.to_public_dict()["smtp_password"] == "***"
    with pytest.raises(ConfigError) as info:
        _load(tmp_path, 'smtp_password = "hunter2"\n', mode=0o644)
    (line,) = info.value.problems
    assert 'key "smtp_password": the file is readable by others' in line
    assert "hunter2" not in line
    del load_config


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('recipient = "<alice>"', 'key "recipient": must be a plain address'),
        ('recipient = "a b"', 'key "recipient": must be a plain address'),
        ('recipient = ""', 'key "recipient": must not be empty'),
        (
            'smtp_tls = "yes"',
            'key "smtp_tls": must be one of "auto", "starttls", "implicit", "off"',
        ),
        ('smtp_ca_file = "/no/such/ca.pem"', 'key "smtp_ca_file": no such file: /no/such/ca.pem'),
        ('smtp_tls_fingerprint = "ab"', 'key "smtp_tls_fingerprint": expected "sha256:"'),
        ('smtp_user = "a\\nb"', 'key "smtp_user": must not contain control characters'),
        ('smtp_password_command = "\'oops"', 'key "smtp_password_command": cannot be split'),
    ],
)
def test_bad_smtp_keys_say_what_is_wrong(tmp_path: Path, line: str, message: str) -> None:
    from fetchpop.errors import ConfigError

    with pytest.raises(ConfigError) as info:
        _load(tmp_path, line + "\n")
    (problem,) = info.value.problems
    assert message in problem, problem


# -- a real Postfix -----------------------------------------------------------------


@pytest.fixture(scope="module")
def postfix() -> Iterator[object]:
    from postfix import Postfix, require_postfix

    require_postfix()
    server = Postfix(mailboxes=("alice", "corpus"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


def as_postfix_keeps(message: bytes) -> bytes:
    """*message* as Postfix stores it: without its own ``Return-Path:`` header
    lines, which cleanup(8) removes (virtual(8) then writes one from the
    envelope sender, which fetchpop took from that header: the same address);
    a header line cut at a NUL; a lone CR turned into a space by smtpd (its
    answer to SMTP smuggling)."""
    header, blank, body = message.partition(b"\n\n")
    lines = re.split(rb"\n(?![ \t])", header)
    kept = [line.split(b"\0")[0] for line in lines if not line.lower().startswith(b"return-path:")]
    return (b"\n".join(kept) + blank + body).replace(b"\r", b" ")


def test_the_hard_corpus_arrives_byte_identical_through_postfix(
    home: Home, postfix: object
) -> None:
    """What Postfix keeps: every byte of the message (8-bit, NUL, lone CR, long
    lines, dot lines, NUL in the body) but what as_postfix_keeps says, with
    Return-Path, X-Original-To, Delivered-To and its Received: line in front."""
    from corpus import hard_messages
    from postfix import Postfix

    assert isinstance(postfix, Postfix)
    corpus = hard_messages(60, big_size=4 * 1024 * 1024)
    pop = FakePOP3(Mailbox(corpus))
    pop.start()
    try:
        home.write_config(
            account_toml(
                "home",
                host="127.0.0.1",
                port=pop.port,
                tls="off",
                user="alice",
                password="secret",
                auth="user",
                deliver=f"smtp:127.0.0.1:{postfix.port}",
                recipient="corpus@fetchpop.test",
                keep=False,
                timeout=30,
            )
        )
        result = sync(home)
        assert result.code == 0, result
        assert problems(result) == [], result
        assert pop.mailbox.messages == []  # all taken by Postfix, so all DELE'd
    finally:
        pop.close()
    got = postfix.wait_delivered(postfix.mailbox("corpus"), len(corpus))
    want = sorted(as_postfix_keeps(stored(m)) for m in corpus)
    assert len(got) == len(want)
    assert [g[:300] for g in got if g not in want] == [w[:300] for w in want if w not in got]
    assert got == want


def test_postfix_refusing_the_recipient_is_a_counted_rejection(home: Home, postfix: object) -> None:
    from postfix import Postfix

    assert isinstance(postfix, Postfix)
    with servers() as (pop, _):
        home.write_config(
            account_toml(
                "home",
                host="127.0.0.1",
                port=pop.port,
                tls="off",
                user="alice",
                password="secret",
                auth="user",
                deliver=f"smtp:127.0.0.1:{postfix.port}",
                recipient="nobody@fetchpop.test",
                keep=False,
                timeout=30,
            )
        )
        result = sync(home)
        assert result.code == 73, result
        assert re.search(r"refused RCPT TO: 550 5\.1\.1 <nobody@fetchpop\.test>", result.stderr)
        assert "message uid-1 not delivered (attempt 1 of 3)" in result.stderr
        assert deles(pop) == []


def test_postfix_starttls_is_verified_and_taken(home: Home, tmp_path: Path) -> None:
    """A Postfix offering STARTTLS with a certificate from a test CA: refused
    unverified (69, nothing sent), taken with smtp_ca_file."""
    from postfix import Postfix, require_postfix

    require_postfix()
    ca = trustme.CA()
    cert = ca.issue_cert("localhost", "127.0.0.1")
    key_file, cert_file, ca_file = tmp_path / "key.pem", tmp_path / "cert.pem", tmp_path / "ca.pem"
    cert.private_key_pem.write_to_path(str(key_file))
    cert_file.write_bytes(b"".join(blob.bytes() for blob in cert.cert_chain_pems))
    ca.cert_pem.write_to_path(str(ca_file))
    tls = (
        f"smtpd_tls_security_level = may\nsmtpd_tls_cert_file = {cert_file}\n"
        f"smtpd_tls_key_file = {key_file}\nsmtpd_tls_received_header = yes\n"
    )
    with Postfix(mailboxes=("alice",), extra_config=tls) as server, servers() as (pop, _):
        deliver = f"smtp:127.0.0.1:{server.port}"
        keys = {"recipient": "alice@fetchpop.test", "timeout": 30}
        configure(home, pop, _, deliver=deliver, **keys)
        result = sync(home)
        assert result.code == 69, result
        assert "did not verify" in problems(result)[0]
        assert deles(pop) == []
        configure(home, pop, _, deliver=deliver, smtp_ca_file=str(ca_file), **keys)
        result = sync(home)
        assert result.code == 0, result
        assert pop.mailbox.messages == []
        maildir = server.mailbox("alice")
        got = server.wait_delivered(maildir, len(MESSAGES))
        assert got == sorted(as_postfix_keeps(stored(m)) for m in MESSAGES)
        files = [p.read_bytes() for sub in ("new", "cur") for p in (maildir / sub).glob("*")]
        assert all(b"(using TLSv1." in f.split(b"\n\n")[0] for f in files)  # its Received: line


def test_the_transcript_shows_no_credential() -> None:
    from fetchpop.deliver import DeliverySpec, ServerOptions, open_target

    with FakeSMTP(users={"bob": "hunter2"}) as smtp:
        lines: list[str] = []
        options = ServerOptions(recipient="alice", user="bob")
        spec = DeliverySpec("smtp", host="127.0.0.1", port=smtp.port, server=options)
        target = open_target(spec, secret=lambda: "hunter2", log=lines.append)
        delivery = target.begin("uid-1")
        delivery.write(MESSAGES[0])
        delivery.finish()
        target.close()
    assert "C: MAIL FROM:<bob@example.org> SIZE=" in "\n".join(lines)
    assert "C: AUTH PLAIN ***" in lines
    assert "S: 235 2.7.0 ok" in lines
    assert not any("hunter2" in line or "aHVudGVy" in line or "AGJvYgBo" in line for line in lines)


def test_an_idle_connection_is_asked_with_noop_before_the_next_message(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import fetchpop.deliver.smtp as smtp_target
    from fetchpop.deliver import DeliverySpec, ServerOptions, open_target

    monkeypatch.setattr(smtp_target, "IDLE_CHECK", 0.0)
    with FakeSMTP(lmtp=True) as smtp:
        options = ServerOptions(recipient="alice")
        target = open_target(DeliverySpec("lmtp", host="127.0.0.1", port=smtp.port, server=options))
        for message in MESSAGES[:2]:
            delivery = target.begin("uid")
            delivery.write(message)
            delivery.finish()
        target.close()
    assert delivered(smtp) == sorted(MESSAGES[:2])
    assert len(smtp.sessions) == 1
    assert b"NOOP" in smtp.sessions[0].commands
