"""What goes out together, as the server sees it (the rule at the top of
fetchpop/pop3/client.py).

RFC 2449 section 6.6 lets a client pipeline once the server advertises
PIPELINING; fetchpop never pipelines across STLS or the end of a login, where
real servers (Courier, Cyrus) drop what came behind. It remembers the
pre-login capabilities so that the next session sends CAPA with the login's
first line instead of waiting for it. The fake server records what arrived
in each read: under TLS one client write is one record, so commands that
share a chunk were sent together.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import trustme
from fakepop import DEFAULT_CAPA, FakePOP3, Fault, drop, make_server_context, stall
from runner import Home, account_toml, maildir_messages

from fetchpop.seenstore import SeenStore

USER, SECRET = "alice", "Pw-pipe-4"
MESSAGES = [b"Subject: one\n\nfirst\n", b"Subject: two\n\nsecond\n"]
NO_PIPELINING = (*(c for c in DEFAULT_CAPA if c != "PIPELINING"), "SASL PLAIN")


def writes(server: FakePOP3, session: int) -> list[list[bytes]]:
    """The command names of each client write in *session* (SASL lines as "+")."""
    assert server.wait_sessions(session + 1)
    out = []
    for chunk in server.sessions[session].chunks:
        names = []
        for line in chunk.split(b"\r\n"):
            if line:
                word = line.split(b" ", 1)[0].upper()
                names.append(word if word.isalpha() else b"+")
        out.append(names)
    return out


def config(server: FakePOP3, mail: Path, ca_file: Path, **keys: object) -> str:
    base: dict[str, object] = {
        "host": "localhost",
        "port": server.port,
        "user": USER,
        "password": SECRET,
        "tls": "implicit",
        "ca_file": str(ca_file),
        "deliver": f"maildir:{mail}",
        "timeout": 5,
    }
    base.update(keys)
    if base["tls"] == "off":
        del base["ca_file"]
    return account_toml("acct", **{k: v for k, v in base.items() if v is not None})


def tls_server(ca: trustme.CA, **kwargs: object) -> FakePOP3:
    kwargs.setdefault("implicit_tls", True)
    return FakePOP3(
        MESSAGES,
        users={USER: SECRET},
        tls_context=make_server_context(ca, "localhost"),
        **kwargs,  # type: ignore[arg-type]
    )


LOGINS = {
    "user": [b"USER", b"PASS"],
    "apop": [b"APOP"],
    "plain": [b"AUTH"],
}


@pytest.mark.parametrize("method", sorted(LOGINS))
def test_round_trips_from_greeting_to_retr(
    method: str, ca: trustme.CA, ca_file: Path, home: Home, tmp_path: Path
) -> None:
    mail = tmp_path / "Mail"
    login = LOGINS[method]
    with tls_server(ca) as server:
        home.write_config(config(server, mail, ca_file, auth=method))
        first = home.run("sync")
        assert first.code == 0, first
        # Nothing known yet: CAPA alone, the login, then the listing after its reply.
        assert writes(server, 0)[:3] == [[b"CAPA"], login, [b"CAPA", b"UIDL", b"LIST"]]
        assert writes(server, 0)[3][0] == b"RETR"

        server.mailbox.add(b"Subject: three\n\nthird\n")
        second = home.run("sync")
        assert second.code == 0, second
        # The capabilities from last time: CAPA goes out with the login.
        assert writes(server, 1)[:3] == [[b"CAPA", *login], [b"CAPA", b"UIDL", b"LIST"], [b"RETR"]]
    assert len(maildir_messages(mail)) == 3
    assert server.errors == []


#: The commands that end a login or its TLS set-up: nothing may follow them
#: in the same write, or before their reply.
LOGIN_ENDS = {b"STLS", b"PASS", b"APOP", b"AUTH", b"+"}


@pytest.mark.parametrize("tls", ["implicit", "starttls"])
@pytest.mark.parametrize("method", ["user", "apop", "plain", "login", "scram-sha-256", "xoauth2"])
def test_nothing_is_sent_behind_a_login_or_stls(
    method: str, tls: str, ca: trustme.CA, ca_file: Path, home: Home, tmp_path: Path
) -> None:
    """Against a server that throws away whatever came behind STLS or a login
    (as Courier and Cyrus do), on a first run and with remembered capabilities."""
    mail = tmp_path / "Mail"
    password = "tok123" if method == "xoauth2" else SECRET
    with tls_server(
        ca,
        implicit_tls=tls == "implicit",
        tokens={USER: "tok123"},
        discard_after=["STLS", "PASS", "APOP", "AUTH"],
    ) as server:
        home.write_config(config(server, mail, ca_file, auth=method, tls=tls, password=password))
        for run in range(2):
            if run:
                server.mailbox.add(b"Subject: more\n\nmore\n")
            result = home.run("sync")
            assert result.code == 0, result
            for chunk in writes(server, run):
                assert all(name not in LOGIN_ENDS for name in chunk[:-1]), writes(server, run)
            assert server.sessions[run].discarded == b"", server.sessions[run]
    assert len(maildir_messages(mail)) == 3
    assert server.errors == []


def test_a_multi_step_login_is_not_followed_by_commands(
    ca: trustme.CA, ca_file: Path, home: Home, tmp_path: Path
) -> None:
    """SCRAM needs the server's challenge: only CAPA may go out with its first line."""
    with tls_server(ca) as server:
        home.write_config(config(server, tmp_path / "Mail", ca_file, auth="scram-sha-256"))
        assert home.run("sync").code == 0
        assert home.run("sync").code == 0
        second = writes(server, 1)
        assert second[0] == [b"CAPA", b"AUTH"]
        assert [b"CAPA", b"UIDL", b"LIST"] in second[1:]
        assert all(b"UIDL" not in w or w[0] == b"CAPA" for w in second)
    assert server.errors == []


@pytest.mark.parametrize("capa", [NO_PIPELINING, None], ids=["no-pipelining", "no-capa"])
def test_no_pipelining_without_the_servers_word(
    capa: tuple[str, ...] | None, ca: trustme.CA, ca_file: Path, home: Home, tmp_path: Path
) -> None:
    with tls_server(ca, capa=capa) as server:
        home.write_config(config(server, tmp_path / "Mail", ca_file, auth="user"))
        for run in range(2):
            result = home.run("sync")
            assert result.code == 0, result
            assert all(len(w) == 1 for w in writes(server, run)), writes(server, run)
    assert len(maildir_messages(tmp_path / "Mail")) == 2
    assert server.errors == []


def test_changed_capabilities_are_learnt_again(
    ca: trustme.CA, ca_file: Path, home: Home, tmp_path: Path
) -> None:
    with tls_server(ca) as server:
        home.write_config(config(server, tmp_path / "Mail", ca_file, auth="user"))
        assert home.run("sync").code == 0
        server.capa = NO_PIPELINING  # the server stopped advertising PIPELINING
        server.mailbox.add(b"Subject: three\n\nthird\n")
        second = home.run("sync")
        assert second.code == 0, second
        # Sent on last session's word; the server still answers in order.
        assert writes(server, 1)[:2] == [[b"CAPA", b"USER", b"PASS"], [b"CAPA"]]
        third = home.run("sync")
        assert third.code == 0, third
        assert all(len(w) == 1 for w in writes(server, 2))
    assert len(maildir_messages(tmp_path / "Mail")) == 3
    assert server.errors == []


def test_a_refused_login_is_not_followed_by_the_listing(
    ca: trustme.CA, ca_file: Path, home: Home, tmp_path: Path
) -> None:
    with tls_server(ca) as server:
        home.write_config(config(server, tmp_path / "Mail", ca_file, auth="user", password="wrong"))
        result = home.run("sync")
        assert result.code == 77, result
        [line] = result.stderr.splitlines()
        assert line.startswith("fetchpop: acct: authentication failed: -ERR")
        assert [w for w in writes(server, 0) if w][1:] == [[b"USER", b"PASS"]]
        assert server.commands_named("UIDL") == []
    assert maildir_messages(tmp_path / "Mail") == []
    assert server.errors == []


def test_starttls_with_known_capabilities_sends_stls_at_once(
    ca: trustme.CA, ca_file: Path, home: Home, tmp_path: Path
) -> None:
    with tls_server(ca, implicit_tls=False) as server:
        home.write_config(config(server, tmp_path / "Mail", ca_file, tls="starttls", auth="plain"))
        assert home.run("sync").code == 0
        assert writes(server, 0)[:2] == [[b"CAPA"], [b"STLS"]]
        server.mailbox.add(b"Subject: three\n\nthird\n")
        assert home.run("sync").code == 0
        second = writes(server, 1)
        assert second[0] == [b"STLS"]  # nothing else before the handshake
        assert second[1:3] == [[b"CAPA", b"AUTH"], [b"CAPA", b"UIDL", b"LIST"]]
    assert len(maildir_messages(tmp_path / "Mail")) == 3
    assert server.errors == []


def test_clear_text_sessions_learn_nothing(home: Home, tmp_path: Path) -> None:
    with FakePOP3(MESSAGES, users={USER: SECRET}) as server:
        home.write_config(
            config(server, tmp_path / "Mail", tmp_path / "no-ca.pem", tls="off", auth="user")
        )
        for run in range(2):
            assert home.run("sync").code == 0
            assert writes(server, run)[0] == [b"CAPA"]
    assert server.errors == []


def test_the_store_keeps_capabilities_per_mailbox(tmp_path: Path) -> None:
    with SeenStore(tmp_path / "store.sqlite3") as store:
        one = store.mailbox_id("pop.example.org", 995, "alice")
        two = store.mailbox_id("pop.example.org", 995, "bob")
        assert one is not None and two is not None
        assert store.capabilities(one) is None
        caps = {"PIPELINING": [], "SASL": ["PLAIN", "SCRAM-SHA-256"], "UIDL": []}
        store.remember_capabilities(one, caps)
        store.remember_capabilities(two, {})
    with SeenStore(tmp_path / "store.sqlite3") as store:
        assert store.capabilities(one) == caps
        assert store.capabilities(two) == {}
        store.remember_capabilities(one, None)
        assert store.capabilities(one) is None


def test_retrs_go_out_a_thousand_at_a_time(
    ca: trustme.CA, ca_file: Path, home: Home, tmp_path: Path
) -> None:
    """A window must outlast a round trip of small messages: 1,000 RETRs in one
    write (one TLS record), never more outstanding, then the rest in one write."""
    messages = [b"Subject: %d\n\nsmall\n" % n for n in range(1, 1201)]
    context = make_server_context(ca, "localhost")
    with FakePOP3(messages, users={USER: SECRET}, tls_context=context, implicit_tls=True) as server:
        mail = tmp_path / "Mail"
        home.write_config(config(server, mail, ca_file, auth="user"))
        result = home.run("sync")
        assert result.code == 0, result
        retr_writes = [w for w in writes(server, 0) if w and w[0] == b"RETR"]
        assert [len(w) for w in retr_writes] == [1000, 200]
        assert all(set(w) == {b"RETR"} for w in retr_writes)
    assert len(maildir_messages(mail)) == 1200
    assert server.errors == []


# -- the safety net: a server that advertises PIPELINING and loses commands ---------


def lossy_server(ca: trustme.CA, lose_after: str, count: int = 5) -> FakePOP3:
    messages = [b"Subject: %d\n\nbody %d\n" % (n, n) for n in range(1, count + 1)]
    return FakePOP3(
        messages,
        users={USER: SECRET},
        tls_context=make_server_context(ca, "localhost"),
        implicit_tls=True,
        discard_after=[lose_after],
    )


@pytest.mark.parametrize("lose_after", ["*", "CAPA", "RETR", "DELE"])
def test_a_server_that_loses_pipelined_commands_gets_them_in_lock_step(
    lose_after: str, ca: trustme.CA, ca_file: Path, home: Home, tmp_path: Path
) -> None:
    """ "*" loses PASS behind USER, "CAPA" the listing behind it, "RETR" all but
    the first RETR of a window, "DELE" all but the first DELE and the QUIT."""
    mail = tmp_path / "Mail"
    with lossy_server(ca, lose_after) as server:
        home.write_config(config(server, mail, ca_file, auth="user", keep=False, timeout=2))
        first = home.run("-v", "sync")
        assert first.code == 0, first
        notes = [line for line in first.stderr.splitlines() if "without pipelining" in line]
        assert len(notes) == 1, first.stderr
        assert notes[0].startswith("acct: ")
        assert "advertises PIPELINING but did not answer" in notes[0]
        # Every message once, all deleted by the one session whose QUIT counted.
        delivered = sorted(maildir_messages(mail))
        assert delivered == sorted(b"Subject: %d\n\nbody %d\n" % (n, n) for n in range(1, 6))
        assert server.mailbox.messages == []
        assert [s.quit_answered for s in server.sessions] == [False, True]
        assert all(len(w) == 1 for w in writes(server, 1)), writes(server, 1)

        server.mailbox.add(b"Subject: six\n\nsix\n")
        second = home.run("-v", "sync")
        assert second.code == 0, second
        assert "without pipelining" not in second.stderr
        # Remembered: the login and everything after it in lock-step from the start.
        assert all(len(w) == 1 for w in writes(server, 2)), writes(server, 2)
    assert len(maildir_messages(mail)) == 6
    with SeenStore(home.store_path) as store:
        mailbox = store.mailbox_id("localhost", server.port, USER)
        assert mailbox is not None and store.quirks(mailbox) == {"no-pipelining"}
    assert server.errors == []


def test_a_quiet_run_does_not_mention_the_workaround(
    ca: trustme.CA, ca_file: Path, home: Home, tmp_path: Path
) -> None:
    with lossy_server(ca, "RETR") as server:
        home.write_config(config(server, tmp_path / "Mail", ca_file, auth="user", timeout=2))
        result = home.run("sync")
        assert result.code == 0, result
        assert result.stderr == ""
    assert len(maildir_messages(tmp_path / "Mail")) == 5


def test_a_late_reply_followed_by_an_outage_is_no_quirk(
    ca: trustme.CA, ca_file: Path, home: Home, tmp_path: Path
) -> None:
    """RETR 2 answered too late, then the lock-step retry cannot even connect
    (the network went): the server is not remembered as one that loses
    commands."""
    faults = [
        Fault("RETR 2", stall(), session=0),
        Fault("greeting", drop(), session=1),
    ]
    with FakePOP3(
        MESSAGES,
        users={USER: SECRET},
        tls_context=make_server_context(ca, "localhost"),
        implicit_tls=True,
        faults=faults,
    ) as server:
        home.write_config(config(server, tmp_path / "Mail", ca_file, auth="user", timeout=2))
        result = home.run("sync")
        assert result.code == 75, result
        with SeenStore(home.store_path) as store:
            mailbox = store.mailbox_id("localhost", server.port, USER)
            assert mailbox is not None and store.quirks(mailbox) == set()
        assert len(maildir_messages(tmp_path / "Mail")) == 1  # the one answered in time
