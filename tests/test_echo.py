"""Hostile server text (issue 15, items 1 and 2), as a user sees it.

Every test runs the real ``fetchpop`` against the scripted server
(tests/fakepop.py) and reads what a user would: the exit status, the line on
stderr, the -vv transcript, ``--json``, ``fetchpop status`` (which replays the
run record) and the seen-store's bytes.

1. What a server says for people is made safe where it is parsed: the
   greeting, every +OK/-ERR text with its response code, SASL challenges,
   the texts of listings and messages. No escape, C0 or C1 control, DEL,
   bidirectional control or invalid UTF-8 gets anywhere.
2. A server that says back what it was sent -- the password, the token,
   their base64, a SASL response -- gets ``***`` everywhere instead, for each
   of the eight login methods, in the login's refusal and after the login.
   (test_security.py's -vv leak test covers the +OK texts.)
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import trustme
from fakepop import Action, Command, Conn, FakePOP3, Fault, Mailbox, make_server_context, reply
from runner import Home, Result
from test_security import (
    LOGIN_COMMAND,
    MESSAGE,
    METHODS,
    OAUTH,
    SECRET,
    TOKEN,
    assert_absent,
    b64_inside,
    echo_err,
    error_line,
    everything_sent,
    exchange,
    fake_account,
    scram_proofs,
    secret_forms,
    serving,
    transcript,
    wire_secrets,
)

#: Terminal escapes (OSC, CSI; a C1 CSI), a right-to-left override, DEL and a
#: byte that is not UTF-8.
HOSTILE = b"\x1b]0;owned\x07\x1b[2J\xc2\x9b31m\xe2\x80\xaedetacer\xe2\x80\xac\x7f\xff end"
#: How fetchpop shows it.
SHOWN = "?]0;owned??[2J?31m?detacer??\ufffd end"
#: What must not reach a terminal: C0 controls but TAB and LF, DEL, C1, the
#: bidirectional controls, line and paragraph separators.
UNSAFE = re.compile(
    "[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069\u2028\u2029]"
)
#: The hostile bytes as they would sit in the seen-store, raw.
RAW = (b"\x1b]0;owned", b"\x1b[2J", b"\xc2\x9b31m", b"\xe2\x80\xae", b"\xe2\x80\xac")


def secure(**kwargs: Any) -> dict[str, Any]:
    """Implicit TLS with the test CA (passed as *ca*)."""
    ca: trustme.CA = kwargs.pop("ca")
    return {"tls_context": make_server_context(ca, "localhost"), "implicit_tls": True, **kwargs}


def store_bytes(home: Home) -> bytes:
    """The seen-store file and its write-ahead log, as bytes."""
    wal = home.store_path.with_name(home.store_path.name + "-wal")
    return b"".join(p.read_bytes() for p in (home.store_path, wal) if p.exists())


def status(home: Home) -> tuple[Result, dict[str, Any]]:
    """``fetchpop status`` and the last run record as ``status --json`` gives it."""
    shown, as_json = home.run("status"), home.run("status", "--json")
    assert shown.code == as_json.code == 0, (shown, as_json)
    [account] = json.loads(as_json.stdout)["accounts"]
    return shown, account["last_run"]


def assert_nothing_raw(home: Home, *results: Result) -> None:
    for result in results:
        for stream in (result.stdout, result.stderr):
            assert not UNSAFE.search(stream), result
            assert "\ufffd" not in stream or SHOWN in stream, result
    data = store_bytes(home)
    for raw in RAW:
        assert raw not in data


def retext(text: bytes) -> Action:
    """The normal reply with *text* as its status line's text."""

    def act(conn: Conn, cmd: Command) -> None:
        status_line, _, rest = conn.real(cmd).partition(b"\r\n")
        conn.send(status_line.split(b" ", 1)[0] + b" " + text + b"\r\n" + rest)

    return act


# -- 1. Hostile text -----------------------------------------------------------------


def test_hostile_greeting_refusal(
    ca: trustme.CA, ca_file: Path, home: Home, tmp_path: Path
) -> None:
    with serving(**secure(ca=ca, greeting=b"-ERR [SYS/TEMP] " + HOSTILE + b"\r\n")) as server:
        home.write_config(fake_account(server, tmp_path / "Mail", ca_file=ca_file))
        result = home.run("-vv", "sync")
        as_json = home.run("sync", "--json")
    said = f"server refused the connection: -ERR [SYS/TEMP] {SHOWN}"
    assert result.code == as_json.code == 75, (result, as_json)
    assert error_line(result) == f"fetchpop: acct: {said}"
    assert f"acct: S: -ERR [SYS/TEMP] {SHOWN}" in result.stderr.splitlines()
    assert json.loads(as_json.stdout)["accounts"][0]["error"] == said
    shown, last = status(home)
    assert f"failed (75): {said}; 0 fetched" in shown.stdout
    assert last["message"] == said
    assert_nothing_raw(home, result, as_json, shown)


def test_hostile_texts_in_the_transcript(
    ca: trustme.CA, ca_file: Path, home: Home, tmp_path: Path
) -> None:
    """A greeting, the login's +OK, a listing's, a message's, a refused RETR's."""
    faults = [Fault(on, retext(HOSTILE)) for on in ("PASS", "UIDL", "RETR 1", "CAPA")] + [
        Fault("RETR 2", reply(b"-ERR [SYS/TEMP] " + HOSTILE + b"\r\n"))
    ]
    with serving(
        [MESSAGE, MESSAGE],
        **secure(ca=ca, greeting=b"+OK " + HOSTILE + b"\r\n", apop=False, faults=faults),
    ) as server:
        home.write_config(fake_account(server, tmp_path / "Mail", ca_file=ca_file, auth="user"))
        result = home.run("-vv", "sync")
        check = home.run("-vv", "check", "--json")
    assert result.code == 75, result  # a message left for later: try again then
    lines = transcript(result)
    assert lines[0] == f"S: +OK {SHOWN}"
    assert lines.count(f"S: +OK {SHOWN}") == 3  # greeting, PASS, RETR 1
    assert f"S: +OK {SHOWN} [7 lines]" in lines  # CAPA
    assert f"S: +OK {SHOWN} [2 lines]" in lines  # UIDL
    assert f"S: -ERR [SYS/TEMP] {SHOWN}" in lines
    [warning] = [ln for ln in result.stderr.splitlines() if "could not be fetched" in ln]
    assert f"message uid-2 could not be fetched: -ERR [SYS/TEMP] {SHOWN}" in warning
    assert check.code == 0, check
    shown, _ = status(home)
    assert_nothing_raw(home, result, check, shown)


@pytest.mark.parametrize(
    ("answer", "code", "words"),
    [
        (b"-ERR [AUTH] " + HOSTILE, 77, f"authentication failed: -ERR [AUTH] {SHOWN}"),
        (b"-ERR [SYS/TEMP] " + HOSTILE, 75, f"login refused: -ERR [SYS/TEMP] {SHOWN}"),
        # A response code with a right-to-left override in it is no code fetchpop knows.
        (b"-ERR [\xe2\x80\xaeHTUA] no", 77, "authentication failed: -ERR [?HTUA] no"),
    ],
    ids=["auth", "sys-temp", "bidi-in-the-code"],
)
def test_hostile_login_refusal(
    answer: bytes, code: int, words: str, ca: trustme.CA, ca_file: Path, home: Home, tmp_path: Path
) -> None:
    with serving(**secure(ca=ca, faults=[Fault("PASS", reply(answer + b"\r\n"))])) as server:
        home.write_config(fake_account(server, tmp_path / "Mail", ca_file=ca_file, auth="user"))
        result = home.run("-vv", "sync")
        as_json = home.run("sync", "--json")
    assert result.code == as_json.code == code, (result, as_json)
    assert error_line(result) == f"fetchpop: acct: {words}"
    assert json.loads(as_json.stdout)["accounts"][0]["error"] == words
    shown, last = status(home)
    assert last["message"] == words
    assert_nothing_raw(home, result, as_json, shown)


def test_hostile_uidl_refusal(ca: trustme.CA, ca_file: Path, home: Home, tmp_path: Path) -> None:
    with serving(**secure(ca=ca, faults=[Fault("UIDL", reply(b"-ERR " + HOSTILE + b"\r\n"))])) as s:
        home.write_config(fake_account(s, tmp_path / "Mail", ca_file=ca_file))
        result = home.run("sync")
    words = f"server does not support UIDL, so fetchpop cannot tell new mail from old: -ERR {SHOWN}"
    assert result.code == 69, result
    assert error_line(result) == f"fetchpop: acct: {words}"
    shown, last = status(home)
    assert last["message"] == words
    assert_nothing_raw(home, result, shown)


def test_sasl_challenge_that_is_not_base64(
    ca: trustme.CA, ca_file: Path, home: Home, tmp_path: Path
) -> None:
    challenge = b"+ \x1b[31mVXNlcm5hbWU6\xe2\x80\xae\r\n"
    with serving(**secure(ca=ca, faults=[Fault("AUTH", reply(challenge))])) as server:
        home.write_config(fake_account(server, tmp_path / "Mail", ca_file=ca_file, auth="login"))
        result = home.run("-vv", "sync")
    assert result.code == 76, result
    assert error_line(result) == "fetchpop: acct: server sent invalid base64: '?[31mVXNlcm5hbWU6?'"
    shown, _ = status(home)
    assert_nothing_raw(home, result, shown)


def test_sasl_challenges_in_the_transcript(
    ca: trustme.CA, ca_file: Path, home: Home, tmp_path: Path
) -> None:
    with serving(**secure(ca=ca)) as server:
        home.write_config(fake_account(server, tmp_path / "Mail", ca_file=ca_file, auth="login"))
        result = home.run("-vv", "sync")
    assert result.code == 0, result
    lines = transcript(result)
    start = lines.index("C: AUTH LOGIN")
    assert lines[start : start + 6] == [
        "C: AUTH LOGIN",
        "S: + VXNlcm5hbWU6",  # "Username:"
        "C: ***",
        "S: + UGFzc3dvcmQ6",  # "Password:"
        "C: ***",
        "S: +OK logged in",
    ]


# -- 2. Secrets said back ------------------------------------------------------------


def forms_of(server: FakePOP3, secret: str, count: int) -> set[str]:
    """Every form of the secrets that must not be seen anywhere."""
    wire = wire_secrets(server, count)
    assert wire, "no credential crossed the wire?"
    return secret_forms(server.port) | wire | b64_inside(secret) | scram_proofs(wire)


def assert_hidden(forms: set[str], home: Home, *results: Result) -> None:
    shown, _ = status(home)
    for result in (*results, shown):
        assert_absent(forms, "stdout", result.stdout)
        assert_absent(forms, "stderr", result.stderr)
    assert_absent(forms, "the seen-store", store_bytes(home))


def run_twice(home: Home) -> tuple[Result, Result]:
    """``-vv sync``, then ``sync --json``."""
    return home.run("-vv", "sync"), home.run("sync", "--json")


@pytest.mark.parametrize("method", METHODS)
def test_login_refusal_saying_the_secret_back(
    method: str, ca: trustme.CA, ca_file: Path, home: Home, tmp_path: Path
) -> None:
    """ "-ERR [AUTH] invalid password 'hunter2' (b64 AGFsaWNlAGh1bnRlcjI=)" after
    the whole exchange (the credential was right; the server says no anyway)."""
    secret = TOKEN if method in OAUTH else SECRET
    login = LOGIN_COMMAND.get(method, "AUTH")
    with serving(**secure(ca=ca, faults=[Fault(login, echo_err(secret, b"[AUTH] "))])) as server:
        home.write_config(
            fake_account(server, tmp_path / "Mail", ca_file=ca_file, auth=method, password=secret)
        )
        result, as_json = run_twice(home)
        forms = forms_of(server, secret, 2)
    said = "-ERR [AUTH] invalid password '***' (b64 ***)"
    assert result.code == as_json.code == 77, (result, as_json)
    assert error_line(result) == f"fetchpop: acct: authentication failed: {said}"
    assert f"S: {said}" in transcript(result)
    assert json.loads(as_json.stdout)["accounts"][0]["error"] == f"authentication failed: {said}"
    shown, last = status(home)
    assert f"failed (77): authentication failed: {said}; 0 fetched" in shown.stdout
    assert last["message"] == f"authentication failed: {said}"
    assert_hidden(forms, home, result, as_json)


@pytest.mark.parametrize("method", METHODS)
def test_uidl_refusal_saying_the_secret_back(
    method: str, ca: trustme.CA, ca_file: Path, home: Home, tmp_path: Path
) -> None:
    """A refusal after the login, quoting what the login sent."""
    secret = TOKEN if method in OAUTH else SECRET
    with serving(**secure(ca=ca, faults=[Fault("UIDL", echo_err(secret))])) as server:
        home.write_config(
            fake_account(server, tmp_path / "Mail", ca_file=ca_file, auth=method, password=secret)
        )
        result, as_json = run_twice(home)
        forms = forms_of(server, secret, 2)
    words = (
        "server does not support UIDL, so fetchpop cannot tell new mail from old: "
        "-ERR invalid password '***' (b64 ***)"
    )
    assert result.code == as_json.code == 69, (result, as_json)
    assert error_line(result) == f"fetchpop: acct: {words}"
    assert "S: -ERR invalid password '***' (b64 ***)" in transcript(result)
    assert json.loads(as_json.stdout)["accounts"][0]["error"] == words
    _, last = status(home)
    assert last["message"] == words
    assert_hidden(forms, home, result, as_json)


def say_everything(secret: str, status_word: bytes) -> Action:
    """Answer with *status_word* and all the client sent (see everything_sent)."""

    def act(conn: Conn, cmd: Command) -> None:
        exchange(conn, cmd)
        conn.send(status_word + b" [SYS/TEMP] you sent " + everything_sent(conn, secret) + b"\r\n")

    return act


@pytest.mark.parametrize("method", METHODS)
def test_refusals_saying_everything_back(
    method: str, ca: trustme.CA, ca_file: Path, home: Home, tmp_path: Path
) -> None:
    """Each credential as sent, decoded, the secret's base64 inside longer
    base64: in a refused RETR (a warning, and a problem in the seen-store),
    then in a refused login (the run record)."""
    secret = TOKEN if method in OAUTH else SECRET
    login = LOGIN_COMMAND.get(method, "AUTH")
    faults = [
        Fault("RETR", say_everything(secret, b"-ERR"), session=0),
        Fault(login, say_everything(secret, b"-ERR"), session=1),
    ]
    with serving(Mailbox([MESSAGE, MESSAGE]), **secure(ca=ca, faults=faults)) as server:
        home.write_config(
            fake_account(server, tmp_path / "Mail", ca_file=ca_file, auth=method, password=secret)
        )
        fetch = home.run("-vv", "sync")
        refused = home.run("-vv", "sync")
        forms = forms_of(server, secret, 2)
    assert fetch.code == 75, fetch  # [SYS/TEMP]: try again later
    warnings = [ln for ln in fetch.stderr.splitlines() if "could not be fetched" in ln]
    assert len(warnings) == 2, fetch
    assert all("-ERR [SYS/TEMP] you sent *** | *** | " in line for line in warnings)
    assert refused.code == 75, refused  # [SYS/TEMP]: try again later
    assert error_line(refused).startswith(
        "fetchpop: acct: login refused: -ERR [SYS/TEMP] you sent *** | *** | "
    )
    assert_hidden(forms, home, fetch, refused)
