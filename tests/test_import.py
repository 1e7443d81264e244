"""``fetchpop import``: taking over fetchmail, mpop and getmail.

Two levels. The readers against hand-written configuration files: every
option that maps, and a warning for every one that does not. Then the whole
take-over against the real tools: each fetches from a real Dovecot and writes
its own seen state; ``fetchpop import`` must then make ``fetchpop sync`` fetch
nothing, and the next new message only.

The real tools come from the Debian packages fetchmail, mpop and getmail6.
Without them those tests skip, unless FETCHPOP_REQUIRE_PEERS=1.
"""

from __future__ import annotations

import hashlib
import os
import pwd
import re
import shutil
import socket
import sqlite3
import ssl
import stat
import subprocess
import sys
import tempfile
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from dovecot import DovecotUser
from runner import Home, maildir_messages

from fetchpop.errors import ConfigError
from fetchpop.importers import ImportResult, read_peer
from fetchpop.importers.common import as_command
from fetchpop.importers.fetchmail import parse_fetchids
from fetchpop.importers.getmail import oldmail_name, parse_oldmail
from fetchpop.importers.mpop import parse_mpoprc, parse_uidls, uidls_path

ENV = {"HOME": "/home/alice", "USER": "alice"}


def read(tool: str, text: str, tmp_path: Path, **kwargs: object) -> ImportResult:
    """Import *text* as *tool*'s configuration file."""
    path = tmp_path / {"fetchmail": ".fetchmailrc", "mpop": ".mpoprc"}.get(tool, "getmailrc")
    path.write_text(text)
    return read_peer(tool, path, environ={**ENV, "HOME": str(tmp_path)}, **kwargs)  # type: ignore[arg-type]


def warnings_of(result: ImportResult, index: int = 0) -> str:
    return "\n".join(result.accounts[index].warnings)


# -- commands --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        ("gpg -q -d ~/pw.gpg", "gpg -q -d ~/pw.gpg"),
        ("pass show 'mail/home'", "pass show 'mail/home'"),
        ("cat ~/pw | head -1", "sh -c 'cat ~/pw | head -1'"),
        ("echo $PW", "sh -c 'echo $PW'"),
        ("procmail -d $USER", "sh -c 'procmail -d $USER'"),
        ("it's broken", "sh -c 'it'\"'\"'s broken'"),
    ],
)
def test_shell_commands_are_wrapped_in_sh_c(command: str, expected: str) -> None:
    assert as_command(command) == expected


# -- fetchmail ------------------------------------------------------------------------

FETCHMAILRC = r"""
# a comment
set daemon 300
set idfile "state/ids"
defaults proto pop3 keep

poll pop.example.org with proto POP3 service 995 timeout 90
    user "alice" there with password "s3cr\"et" is alice here;
    options ssl sslcertfile "ca.pem" sslfingerprint "AB:CD" sslproto TLS1.2
    limit 2000000 fetchlimit 50 fetchall
    mda "/usr/bin/procmail -f %F -d alice"

skip backup.example.org via pop.backup.example.org proto apop
    user bob there no keep

poll imap.example.org proto imap user carol
"""


def test_fetchmail_accounts_options_and_warnings(tmp_path: Path) -> None:
    (tmp_path / "ca.pem").write_text("x")
    result = read("fetchmail", FETCHMAILRC, tmp_path)
    assert [a.name for a in result.accounts] == ["pop.example.org", "backup.example.org"]
    pop, backup = result.accounts
    assert pop.keys == {
        "host": "pop.example.org",
        "user": "alice",
        "tls": "implicit",
        "port": 995,
        "ca_file": f"{tmp_path}/ca.pem",  # fetchmail: relative to $HOME, no ~
        "deliver": "mda:/usr/bin/procmail -f %F -d alice",
        "keep": True,
        "max_size": 2000000,
        "max_messages": 50,
        "timeout": 90,
    }
    text = warnings_of(result)
    for expected in (
        "password was not copied; run `fetchpop password set pop.example.org`",
        "sslfingerprint is an MD5 fingerprint",
        "sslproto TLS1.2 not copied",
        "%T/%F/%s",
        "fetchall not copied",
    ):
        assert expected in text
    assert backup.keys == {
        "host": "pop.backup.example.org",  # via
        "user": "bob",
        "auth": "apop",
        "tls": "starttls",  # fetchmail's opportunistic STARTTLS, made mandatory
        "port": 110,
        "deliver": "smtp:localhost:25",  # fetchmail's default: SMTP to localhost
        "recipient": "alice",
        "keep": False,  # no keep beats the defaults' keep
    }
    backup_text = warnings_of(result, 1)
    assert "'skip' entry" in backup_text
    assert "require STARTTLS" in backup_text
    file_warnings = "\n".join(result.warnings)
    assert "set daemon" in file_warnings
    assert "proto imap is not POP3; not imported" in file_warnings


def test_fetchmail_ids_file_from_set_idfile(tmp_path: Path) -> None:
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "ids").write_text(
        "alice@pop.example.org UID1\n"
        "ALICE@POP.EXAMPLE.ORG UID2\n"  # fetchmail compares without case
        "bob@pop.backup.example.org <1@x> trailing\n"
        "alice@elsewhere.example UID3\n"
    )
    result = read("fetchmail", FETCHMAILRC, tmp_path)
    pop, backup = result.accounts
    assert pop.uidls == {"UID1": None, "UID2": None}
    assert backup.uidls == {"<1@x>": None}
    assert pop.seen_file == tmp_path / "state" / "ids"


def test_fetchmail_ids_lines_as_uid_c_reads_them() -> None:
    text = (
        "user@example.org@pop.example.org 17@inter.mail\n"  # '@' in user and UIDL
        "  spaced@host  X1\n"
        "garbage line without at sign\n"
        "\n"
    )
    assert parse_fetchids(text) == {
        ("user@example.org", "pop.example.org"): ["17@inter.mail"],
        ("spaced", "host"): ["X1"],
    }


def test_fetchmail_missing_ids_file_is_a_warning(tmp_path: Path) -> None:
    result = read("fetchmail", "poll h proto pop3 user u ssl keep mda cat\n", tmp_path)
    (account,) = result.accounts
    assert account.uidls == {}
    assert f"no ids file at {tmp_path / '.fetchids'}" in warnings_of(result)


def test_fetchmail_several_users_get_several_accounts(tmp_path: Path) -> None:
    rc = (
        'poll mail.example.org proto pop3 ssl\n  user "a@x" mda "cat > /dev/null"\n'
        "  user b is b2 here keep mda /bin/true password secret\n"
        "poll mail.example.org proto pop3 user c mda /bin/true\n"
    )
    result = read("fetchmail", rc, tmp_path)
    assert [a.name for a in result.accounts] == [
        "mail.example.org-a_x",
        "mail.example.org-b",
        "mail.example.org",
    ]
    # The hint names the account as it is finally called.
    assert "`fetchpop password set mail.example.org-b`" in warnings_of(result, 1)
    assert result.accounts[0].keys["deliver"] == "mda:sh -c 'cat > /dev/null'"
    assert result.accounts[1].keys["keep"] is True
    assert result.accounts[0].keys["keep"] is False


def test_fetchmail_quoting_and_unknown_words(tmp_path: Path) -> None:
    rc = 'poll "h" proto pop3 user "tab\\there" ssl frobnicate mda cat\n'
    result = read("fetchmail", rc, tmp_path)
    (account,) = result.accounts
    assert account.keys["user"] == "tab\there"
    assert "unknown keyword 'frobnicate' ignored" in warnings_of(result)


ORACLE_RC = r"""
set no syslog
defaults proto pop3 keep
poll a.example.org service pop3s user a1 ssl
poll b.example.org via real-b.example.org proto pop3 port 1110
    user "x@y" there with password "p" is local1 here nokeep fetchlimit 10 limit 500
    user u2 here is remote2 there keep mda "/bin/cat > /dev/null"
skip c.example.org proto apop user cc
poll d.example.org proto imap user dd
poll e.example.org proto pop3 timeout 20 user "e\x41\0102\65" ssl sslproto "" no keep
poll f.example.org proto pop3 user ff is carol here smtphost mail.example.org/2525 smtpname c@x.org
poll g.example.org proto pop3 user gg lmtp smtphost /run/dovecot/lmtp
poll h.example.org proto pop3 user hh lmtp smtphost lmtp.example.org/24 smtpaddress example.org
"""


def forwarded(user: dict[str, Any]) -> str:
    """Where fetchmail forwards a user's mail, as its --configdump says (its
    first smtphost, HOST/PORT or an LMTP socket's path; port 25 for SMTP)."""
    first = (user["smtphunt"] or ["localhost"])[0]
    kind = "lmtp" if user["lmtp"] else "smtp"
    if first.startswith("/"):
        return f"{kind}:{first}"
    host, _, port = first.partition("/")
    return f"{kind}:{host}:{port or 25}"


def test_fetchmail_reader_agrees_with_fetchmail(tmp_path: Path) -> None:
    """fetchmail --configdump shows how fetchmail itself reads a file: compare."""
    fetchmail = peer("fetchmail", "fetchmail")
    rc = tmp_path / ".fetchmailrc"
    rc.write_text(ORACLE_RC)
    rc.chmod(0o600)
    dump = subprocess.run(
        [fetchmail, "-f", str(rc), "--configdump"],
        env={**os.environ, "HOME": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout
    namespace: dict[str, object] = {}
    exec(dump, namespace)  # fetchmail writes it as Python, for fetchmailconf
    servers = namespace["fetchmailrc"]["servers"]  # type: ignore[index]
    expected = []
    for server in servers:
        if server["protocol"] not in ("POP3", "APOP"):
            continue
        for user in server["users"]:
            service = server["service"] or ("995" if user["ssl"] else "110")
            expected.append(
                (
                    server["via"] or server["pollname"],
                    user["remote"],
                    int(service) if service.isdigit() else socket.getservbyname(service),
                    "implicit" if user["ssl"] else "starttls",
                    "apop" if server["protocol"] == "APOP" else None,
                    bool(user["keep"]),
                    "mda:" + as_command(user["mda"]) if user["mda"] else forwarded(user),
                    user["limit"] or None,
                    user["fetchlimit"] or None,
                    server["timeout"] if server["timeout"] != 300 else None,
                )
            )
    result = read_peer("fetchmail", rc, environ={**ENV, "HOME": str(tmp_path)})
    got = [
        (
            a.keys["host"],
            a.keys["user"],
            a.keys["port"],
            a.keys["tls"],
            a.keys.get("auth"),
            a.keys["keep"],
            a.keys["deliver"],
            a.keys.get("max_size"),
            a.keys.get("max_messages"),
            a.keys.get("timeout"),
        )
        for a in result.accounts
    ]
    assert got == expected
    assert len(got) == 8
    recipients = [a.keys.get("recipient") for a in result.accounts[5:]]
    assert recipients == ["c@x.org", "alice", "alice@example.org"]  # ENV: USER=alice


def test_fetchmail_unterminated_string_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"line 2: unterminated quoted string"):
        read("fetchmail", 'poll h\n user "alice\n', tmp_path)


# -- mpop ------------------------------------------------------------------------------

FP16 = "00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF"
MPOPRC_TEMPLATE = """
defaults
tls on
tls_trust_file ~/ca.pem
delivery maildir ~/Mail
keep on

account home
host pop.example.org
user alice
passwordeval gpg -q -d ~/.pw.gpg
killsize 10m
skipsize 2k

# inherits from home
account work : home
host pop.work.example
tls_starttls off
tls_trust_file
tls_fingerprint {fp}
auth scram-sha-256
password "secret"
delivery mda "/usr/bin/procmail -f '%F' -d $USER"
keep off
only_new off
filter /usr/bin/spamcheck
eval echo port 1234
frobnicate yes

account plain
host 10.0.0.1
user carol
tls off
delivery mbox ~/mbox
uidls_file ~/uidls/%U@%H
"""
MPOPRC = MPOPRC_TEMPLATE.replace("{fp}", f"{FP16}:{FP16}")


def test_mpop_accounts_options_and_warnings(tmp_path: Path) -> None:
    (tmp_path / "ca.pem").write_text("x")
    result = read("mpop", MPOPRC, tmp_path)
    home, work, plain = result.accounts
    assert home.keys == {
        "host": "pop.example.org",
        "user": "alice",
        "tls": "starttls",  # mpop's tls_starttls defaults to on
        "port": 110,
        "ca_file": "~/ca.pem",
        "password_command": "gpg -q -d ~/.pw.gpg",
        "deliver": "maildir:~/Mail",
        "keep": True,
        "max_size": 2048,  # the smaller of killsize and skipsize
    }
    assert work.keys == {
        "host": "pop.work.example",
        "user": "alice",  # from home
        "tls": "implicit",
        "port": 995,
        "tls_fingerprint": f"sha256:{FP16}:{FP16}",
        "auth": "scram-sha-256",
        "password_command": "gpg -q -d ~/.pw.gpg",  # passwordeval wins, as in mpop
        "deliver": "mda:sh -c '/usr/bin/procmail -f '\"'\"'%F'\"'\"' -d $USER'",
        "keep": False,
        "max_size": 2048,
    }
    text = warnings_of(result, 1)
    for expected in ("%F", "only_new off", "filter not copied", "killsize: fetchpop leaves"):
        assert expected in text
    assert plain.keys["tls"] == "starttls" and plain.keys["deliver"] == "mbox:~/mbox"
    assert "require STARTTLS" in warnings_of(result, 2)
    file_warnings = "\n".join(result.warnings)
    assert "eval lines are not run" in file_warnings
    assert "unknown command 'frobnicate'" in file_warnings


MPOP_ORACLE_RC = """
defaults
tls on
tls_trust_file {home}/ca.pem
delivery maildir "~/Mail"
keep on

account home
host pop.example.org
user alice
passwordeval "echo secret && true"
killsize 10m
skipsize 2k

account work : home
host pop.work.example
tls_starttls off
tls_trust_file
tls_fingerprint {fp}
auth scram-sha-256
delivery mda "/usr/bin/procmail -f '%F' -d $USER"
keep off

account plain
host 10.0.0.1
user carol
tls off
port 1110
delivery mbox\t~/mbox
uidls_file ~/uidls/%U@%H
"""


def test_mpop_reader_agrees_with_mpop(tmp_path: Path) -> None:
    """mpop --pretend shows how mpop itself reads each account: compare."""
    mpop = peer("mpop", "mpop")
    (tmp_path / "ca.pem").write_text("x")
    rc = tmp_path / ".mpoprc"
    rc.write_text(MPOP_ORACLE_RC.format(home=tmp_path, fp=f"{FP16}:{FP16}"))
    rc.chmod(0o600)
    environ = {**ENV, "HOME": str(tmp_path)}
    result = read_peer("mpop", rc, environ=environ)
    assert [a.name for a in result.accounts] == ["home", "work", "plain"]
    for account in result.accounts:
        shown = subprocess.run(
            [mpop, "-C", str(rc), "--pretend", account.name],
            env={**os.environ, "HOME": str(tmp_path)},
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout
        mpop_says = dict(ln.split(" = ", 1) for ln in shown.splitlines() if " = " in ln)
        keys = account.keys
        assert keys["host"] == mpop_says["host"]
        assert keys["port"] == int(mpop_says["port"])
        assert keys["user"] == mpop_says["user"]
        evaluated = mpop_says["passwordeval"]
        assert keys.get("password_command") == (
            None if evaluated == "(not set)" else as_command(evaluated)
        )
        tls = {"on": {"on": "starttls", "off": "implicit"}}.get(mpop_says["tls"], {})
        assert keys["tls"] == tls.get(mpop_says["tls_starttls"], "starttls")
        assert (
            keys.get("tls_fingerprint", "sha256:(not set)")
            == "sha256:" + (mpop_says["tls_fingerprint"])
        )
        method, where = mpop_says["delivery"].split(" ", 1)
        kind, _, ours = str(keys["deliver"]).partition(":")
        assert kind == method
        expected = as_command(where) if kind == "mda" else where
        assert ours.replace("~", str(tmp_path), 1) == expected
        assert keys["keep"] == (mpop_says["keep"] == "on")
        sizes = [int(mpop_says[k]) for k in ("killsize", "skipsize") if mpop_says[k] != "off"]
        assert keys.get("max_size") == (min(sizes) if sizes else None)
        uidls = Path(mpop_says["uidls file"])
        assert _uidls_path(rc, account.name, environ) == uidls


def _uidls_path(rc: Path, name: str, environ: dict[str, str]) -> Path:
    (block,) = [b for b in parse_mpoprc(rc.read_text(), rc).accounts if b.name == name]
    return uidls_path(block, environ)


def test_mpop_password_in_clear_is_not_copied(tmp_path: Path) -> None:
    rc = "account a\nhost h\nuser u\ntls on\npassword hunter2\ndelivery maildir ~/M\n"
    result = read("mpop", rc, tmp_path)
    assert "password" not in result.accounts[0].keys
    assert "hunter2" not in repr(result)
    assert "run `fetchpop password set a`" in warnings_of(result)


def test_mpop_uidls_files_per_account(tmp_path: Path) -> None:
    uidls = tmp_path / ".mpop_uidls"
    uidls.mkdir()
    (uidls / "alice_at_pop.example.org").write_text(
        "# This file was generated by mpop version 1.4.18.\n#\n"
        " 2 pop.example.org alice\nUID-A\n#UID-B\n"
        " 1 other.example alice\nUID-C\n"
    )
    (tmp_path / "uidls").mkdir()
    (tmp_path / "uidls" / "carol@10.0.0.1").write_text(" 1 10.0.0.1 carol\nUID-D\n")
    (tmp_path / "ca.pem").write_text("x")
    result = read("mpop", MPOPRC, tmp_path)
    home, work, plain = result.accounts
    assert home.uidls == {"UID-A": None, "#UID-B": None}
    assert work.uidls == {} and "no UIDLS file at" in warnings_of(result, 1)
    assert plain.uidls == {"UID-D": None}


def test_mpop_before_1_0_kept_one_uidls_file(tmp_path: Path) -> None:
    (tmp_path / ".mpop_uidls").write_text(" 1 pop.example.org alice\nOLD\n")
    (tmp_path / "ca.pem").write_text("x")
    result = read("mpop", MPOPRC, tmp_path)
    assert result.accounts[0].uidls == {"OLD": None}


def test_mpop_uidls_option_overrides(tmp_path: Path) -> None:
    one = tmp_path / "one"
    one.write_text(" 1 pop.example.org alice\nX\n 1 10.0.0.1 carol\nY\n")
    (tmp_path / "ca.pem").write_text("x")
    result = read("mpop", MPOPRC, tmp_path, seen=one)
    assert [a.uidls for a in result.accounts] == [{"X": None}, {}, {"Y": None}]


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        (" 2 h u\nONE\n", "too few UIDLs"),
        ("UID\n", "not an mpop UIDLS list header"),
        (" 0 h u\n", "not an mpop UIDLS list header"),
        (" 2 h u\nA\n 1 h u\nB\n", "too few UIDLs"),
    ],
)
def test_mpop_uidls_format_errors(tmp_path: Path, text: str, problem: str) -> None:
    with pytest.raises(ConfigError, match=problem):
        parse_uidls(text, tmp_path / "u")


def test_mpop_exchange_delivery_is_refused(tmp_path: Path) -> None:
    rc = "account a\nhost h\nuser u\ndelivery exchange c:\\pickup\n"
    with pytest.raises(ConfigError, match="delivery exchange is not supported"):
        read("mpop", rc, tmp_path)


def test_same_names_get_suffixes_and_hints_follow(tmp_path: Path) -> None:
    rc = "poll h proto pop3 user u password p mda cat\n" * 2
    result = read("fetchmail", rc, tmp_path)
    assert [a.name for a in result.accounts] == ["h", "h-2"]
    assert "`fetchpop password set h-2`" in warnings_of(result, 1)


def test_mpop_settings_before_any_account_are_account_default(tmp_path: Path) -> None:
    result = read("mpop", "host h\nuser u\ntls on\ndelivery maildir ~/M\n", tmp_path)
    assert [a.name for a in result.accounts] == ["default"]


# -- getmail ---------------------------------------------------------------------------

GETMAILRC = """
[retriever]
type = SimplePOP3SSLRetriever
server = pop.example.org
username = alice@example.org
password_command = ("/usr/bin/pass", "show", "mail/alice home")
ca_certs = ~/ca.pem
ssl_fingerprints = ("{fp}", "{fp2}")
use_apop = false
timeout = 30
keyfile = ~/client.key

[destination]
type = Maildir
path = ~/Mail/
user = alice

[options]
read_all = false
delete = false
delete_after = 14
max_message_size = 5000000
max_messages_per_session = 100
delivered_to = false
verbose = 2

[filter-spam]
type = Filter_external
path = /usr/bin/spamc
"""


def test_getmail_account_options_and_warnings(tmp_path: Path) -> None:
    (tmp_path / "ca.pem").write_text("x")
    text = GETMAILRC.format(fp="ab" * 32, fp2="cd" * 32)
    result = read("getmail", text, tmp_path)
    (account,) = result.accounts
    assert account.name == "pop.example.org"  # PATH is plain "getmailrc"
    assert account.keys == {
        "host": "pop.example.org",
        "user": "alice@example.org",
        "port": 995,
        "tls": "implicit",
        "ca_file": "~/ca.pem",
        "tls_fingerprint": "sha256:" + ":".join(["AB"] * 32),
        "password_command": "/usr/bin/pass show 'mail/alice home'",
        "timeout": 30,
        "deliver": "maildir:~/Mail",
        "keep": True,
        "delete_after_days": 14,
        "max_size": 5000000,
        "max_messages": 100,
    }
    text = warnings_of(result)
    for expected in (
        "fetchpop pins one certificate",
        "[retriever] keyfile not copied",
        "[destination] user not copied",
        "[options] delivered_to not copied",
        "[filter-spam] not copied",
    ):
        assert expected in text
    assert "verbose" not in text and "read_all" not in text


def test_getmail_plain_pop3_mboxrd_and_mda(tmp_path: Path) -> None:
    rc = (
        "[retriever]\ntype = SimplePOP3Retriever\nserver = h\nusername = u\npassword = pw\n"
        "[destination]\ntype = MDA_external\npath = /usr/bin/procmail\n"
        'arguments = ("-f", "%(sender)", "-d", "u")\n'
        "[options]\ndelete = true\n"
    )
    result = read("getmail", rc, tmp_path, name="work")
    (account,) = result.accounts
    assert account.name == "work"
    assert account.keys["tls"] == "starttls" and account.keys["port"] == 110
    assert account.keys["deliver"] == "mda:/usr/bin/procmail -f '%(sender)' -d u"
    assert account.keys["keep"] is False
    text = warnings_of(result)
    assert "password was not copied; run `fetchpop password set work`" in text
    assert "%(...) substitutions" in text
    assert "read_all is on" in text
    mbox = rc.replace(
        "type = MDA_external\npath = /usr/bin/procmail", "type = Mboxrd\npath = ~/mbox"
    )
    assert read("getmail", mbox, tmp_path).accounts[0].keys["deliver"] == "mbox:~/mbox"


@pytest.mark.parametrize(
    ("destination", "deliver", "recipient"),
    [
        ("host = /run/dovecot/lmtp\noverride = alice", "lmtp:/run/dovecot/lmtp", "alice"),
        ("host = lmtp.example.org\nport = 24", "lmtp:lmtp.example.org:24", None),
        ("host = ::1", "lmtp:[::1]:2003", None),  # getmail's port: smtplib's LMTP_PORT
    ],
)
def test_getmail_mda_lmtp(
    tmp_path: Path, destination: str, deliver: str, recipient: str | None
) -> None:
    rc = (
        "[retriever]\ntype = SimplePOP3SSLRetriever\nserver = h\nusername = u\n"
        f"[destination]\ntype = MDA_lmtp\n{destination}\nfallback = postmaster\n"
    )
    result = read("getmail", rc, tmp_path)
    (account,) = result.accounts
    assert account.keys["deliver"] == deliver
    assert account.keys.get("recipient") == recipient
    text = warnings_of(result)
    assert "[destination] fallback not copied" in text
    assert ("the recipient the message names" in text) == (recipient is None)


@pytest.mark.parametrize(
    ("retriever", "destination", "problem"),
    [
        ("SimpleIMAPSSLRetriever", "Maildir", "imports only SimplePOP3Retriever"),
        ("BrokenUIDLPOP3Retriever", "Maildir", "imports only SimplePOP3Retriever"),
        ("SimplePOP3Retriever", "MultiDestination", "delivers only to Maildir"),
    ],
)
def test_getmail_unsupported_types(
    tmp_path: Path, retriever: str, destination: str, problem: str
) -> None:
    rc = (
        f"[retriever]\ntype = {retriever}\nserver = h\nusername = u\n"
        f"[destination]\ntype = {destination}\npath = ~/M/\n"
    )
    with pytest.raises(ConfigError, match=problem):
        read("getmail", rc, tmp_path)


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("password = hunter2\n[retriever]\n", "line 1: a key before any"),
        ("[retriever]\ntype = SimplePOP3Retriever\nhunter2\n", "line 3: not a section"),
    ],
)
def test_getmail_syntax_errors_do_not_show_the_line(
    tmp_path: Path, text: str, problem: str
) -> None:
    with pytest.raises(ConfigError, match=problem) as raised:
        read("getmail", text, tmp_path)
    assert "hunter2" not in str(raised.value)


def test_getmail_tuples_are_never_evaluated(tmp_path: Path) -> None:
    rc = (
        "[retriever]\ntype = SimplePOP3Retriever\nserver = h\nusername = u\n"
        "password_command = (__import__('os').system('touch pwned'),)\n"
        "[destination]\ntype = Maildir\npath = ~/M/\n"
    )
    with pytest.raises(ConfigError, match="password_command: not a tuple of strings"):
        read("getmail", rc, tmp_path)
    assert not Path("pwned").exists()


def test_getmail_oldmail_file_with_timestamps(tmp_path: Path) -> None:
    rc = (
        "[retriever]\ntype = SimplePOP3SSLRetriever\nserver = pop.example.org\n"
        "username = a/b\n[destination]\ntype = Maildir\npath = ~/M/\n"
        "[options]\nread_all = false\n"
    )
    assert oldmail_name("pop.example.org", 995, "a/b") == "oldmail-pop.example.org-995-a-b"
    (tmp_path / "oldmail-pop.example.org-995-a-b").write_text(
        "UID1\x001700000000\nUID2\x001700000100\nno-nul-here\nbad\x00stamp\n"
    )
    result = read("getmail", rc, tmp_path)
    assert result.accounts[0].uidls == {"UID1": 1700000000.0, "UID2": 1700000100.0}
    assert parse_oldmail("X\x005\n") == {"X": 5.0}


# -- the command: config file and seen-store ----------------------------------------------


def _getmail_setup(home: Home, *, fp: str = "") -> Path:
    folder = home.root / ".getmail"
    folder.mkdir(parents=True)
    rc = folder / "getmailrc"
    rc.write_text(
        "[retriever]\ntype = SimplePOP3SSLRetriever\nserver = Pop.Example.org\nusername = u\n"
        'password_command = ("cat", "/dev/null")\n'
        + (f'ssl_fingerprints = ("{fp}",)\n' if fp else "")
        + "[destination]\ntype = Maildir\npath = ~/Mail/\n"
        "[options]\nread_all = false\n"
    )
    (folder / "oldmail-Pop.Example.org-995-u").write_text("A\x001700000000\nB\x001700000100\n")
    return rc


def _seen_rows(home: Home) -> list[tuple[str, int, str, str, float]]:
    db = sqlite3.connect(home.store_path)
    try:
        return db.execute(
            "SELECT host, port, user, uidl, first_seen FROM seen JOIN mailbox ON mailbox = id"
            " ORDER BY uidl"
        ).fetchall()
    finally:
        db.close()


def test_import_writes_a_private_config_and_the_seen_store(home: Home) -> None:
    rc = _getmail_setup(home)
    result = home.run("import", "getmail", str(rc))
    assert result.code == 0, result
    assert "1 account(s) from getmail added to" in result.stdout
    assert "Pop.Example.org: 2 UIDL(s) recorded as seen" in result.stdout
    assert "warning: getmail did not verify the server certificate" in result.stderr
    assert stat.S_IMODE(home.config_path.stat().st_mode) == 0o600
    data = tomllib.loads(home.config_path.read_text())
    assert data["accounts"]["Pop.Example.org"]["deliver"] == "maildir:~/Mail"
    assert "# note: getmail did not verify" in home.config_path.read_text()
    # Keyed like Account.mailbox: host lowercased; getmail's own times kept.
    assert _seen_rows(home) == [
        ("pop.example.org", 995, "u", "A", 1700000000.0),
        ("pop.example.org", 995, "u", "B", 1700000100.0),
    ]
    accounts = home.run("accounts", "--json")
    assert accounts.code == 0, accounts


def test_import_appends_and_refuses_to_overwrite(home: Home) -> None:
    original = '[defaults]\nkeep = true\n\n[accounts.other]\nhost = "h"\nuser = "u"\n'
    original += 'deliver = "maildir:~/Other"\n'
    home.write_config(original, mode=0o640)
    rc = _getmail_setup(home)
    first = home.run("import", "getmail", str(rc), "--name", "mine")
    assert first.code == 0, first
    text = home.config_path.read_text()
    assert text.startswith(original)
    assert "[accounts.mine]" in text
    assert stat.S_IMODE(home.config_path.stat().st_mode) == 0o640  # mode kept

    again = home.run("import", "getmail", str(rc), "--name", "mine")
    assert again.code == 78, again
    assert "account 'mine' already exists; not overwritten" in again.stderr
    assert home.config_path.read_text() == text


def test_dry_run_changes_nothing(home: Home) -> None:
    rc = _getmail_setup(home)
    result = home.run("import", "getmail", str(rc), "--dry-run")
    assert result.code == 0, result
    assert not home.config_path.exists()
    assert not home.store_path.exists()
    printed = tomllib.loads(result.stdout)  # the TOML, the counts as comments
    assert printed["accounts"]["Pop.Example.org"]["port"] == 995
    assert "# Pop.Example.org: 2 UIDL(s) would be recorded as seen" in result.stdout


def test_import_that_would_not_load_changes_nothing(home: Home) -> None:
    # A bad value reaches the file only through the peer: the whole import stops.
    rc = _getmail_setup(home)
    rc.write_text(rc.read_text().replace("path = ~/Mail/", "path = Mail/"))
    result = home.run("import", "getmail", str(rc))
    assert result.code == 78, result
    assert "must be absolute" in result.stderr
    assert str(home.config_path) in result.stderr
    assert not home.config_path.exists() and not home.store_path.exists()


def test_missing_peer_file_is_a_usage_error(home: Home) -> None:
    result = home.run("import", "mpop", str(home.root / "nope"))
    assert result.code == 64, result
    assert "no such file" in result.stderr


# -- the real tools against a real Dovecot ------------------------------------------------

PEERS_MISSING = "{tool} not installed (apt-get install {package})"


def peer(tool: str, package: str) -> str:
    """The tool's path; skips (or fails with FETCHPOP_REQUIRE_PEERS=1) when missing."""
    path = shutil.which(tool)
    if path is not None:
        return path
    reason = PEERS_MISSING.format(tool=tool, package=package)
    if os.environ.get("FETCHPOP_REQUIRE_PEERS") == "1":
        pytest.fail(f"{reason}, but FETCHPOP_REQUIRE_PEERS=1", pytrace=False)
    pytest.skip(reason)


def _run_peer(home: Home, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv, env=home.env(), capture_output=True, text=True, timeout=60, check=False
    )


def _message(n: int) -> bytes:
    return f"From: sender@example.org\nSubject: message {n}\n\nbody {n}\n".encode()


def _make_maildir(path: Path) -> Path:
    for sub in ("cur", "new", "tmp"):
        (path / sub).mkdir(parents=True, exist_ok=True)
    return path


def _takeover(home: Home, mb: DovecotUser, tool: str, rc: Path, mail: Path) -> None:
    """Import, sync (nothing new), add a message, sync (just that one)."""
    dc = mb.dovecot
    before = maildir_messages(mail)
    assert len(before) == 3

    imported = home.run("import", tool, str(rc))
    assert imported.code == 0, imported
    assert "3 UIDL(s) recorded as seen" in imported.stdout
    assert home.seen_uidls() == set(dc.uidls(mb.user))

    quiet = home.run("-v", "sync")
    assert quiet.code == 0, quiet
    assert "0 new message(s)" in quiet.stderr
    assert maildir_messages(mail) == before

    late = b"From: late@example.org\nSubject: after the import\n\nonly this one\n"
    dc.add_message(mb.user, late)
    third = home.run("-v", "sync")
    assert third.code == 0, third
    assert "1 new message(s)" in third.stderr
    after = maildir_messages(mail)
    assert len(after) == 4
    assert late in after
    assert dc.count(mb.user) == 4  # keep


def _password_file(home: Home, mb: DovecotUser) -> Path:
    path = home.root / "pw"
    path.write_text(mb.password + "\n")
    path.chmod(0o600)
    return path


@pytest.mark.dovecot
def test_fetchmail_takeover(mailbox: DovecotUser, home: Home) -> None:
    fetchmail = peer("fetchmail", "fetchmail")
    dc = mailbox.dovecot
    dc.add_messages(mailbox.user, [_message(n) for n in range(3)])
    mail = _make_maildir(home.root / "Mail")
    deliver = home.root / "deliver"
    deliver.write_text(
        f"#!{sys.executable}\n"
        "import os, sys, uuid\n"
        "name = uuid.uuid4().hex\n"
        "with open(os.path.join(sys.argv[1], 'tmp', name), 'wb') as f:\n"
        "    f.write(sys.stdin.buffer.read())\n"
        "os.rename(os.path.join(sys.argv[1], 'tmp', name),\n"
        "          os.path.join(sys.argv[1], 'new', name))\n"
    )
    deliver.chmod(0o755)
    # fetchmail 6.4 wants a CommonName in the certificate (trustme sets none), so
    # it pins the certificate's MD5 fingerprint, with the test CA as sslcertfile.
    pem = re.search(
        r"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----", dc.cert_file.read_text(), re.S
    )
    assert pem is not None
    md5 = hashlib.md5(ssl.PEM_cert_to_DER_cert(pem.group())).hexdigest().upper()
    rc = home.root / ".fetchmailrc"
    rc.write_text(
        "set no syslog\n"
        f"poll localhost proto pop3 service {dc.tls_port} uidl\n"
        f'  user "{mailbox.user}" there with password "{mailbox.password}"\n'
        f'  ssl sslcertfile "{dc.ca_file}" no sslcertck\n'
        f'  sslfingerprint "{":".join(md5[i : i + 2] for i in range(0, 32, 2))}"\n'
        f'  keep mda "{deliver} {mail}"\n'
    )
    rc.chmod(0o600)
    ran = _run_peer(home, fetchmail, "-f", str(rc), "-s")
    assert ran.returncode == 0, ran
    assert (home.root / ".fetchids").read_text().count(f"{mailbox.user}@localhost ") == 3
    # The password is not imported; fetchpop finds it in its own [defaults].
    home.write_config(f'[defaults]\npassword = "{mailbox.password}"\n')
    _takeover(home, mailbox, "fetchmail", rc, mail)
    text = home.config_path.read_text()
    assert "# note: the fetchmail password was not copied" in text
    assert "# note: sslfingerprint is an MD5 fingerprint" in text


@pytest.mark.dovecot
def test_mpop_takeover(mailbox: DovecotUser, home: Home) -> None:
    mpop = peer("mpop", "mpop")
    dc = mailbox.dovecot
    dc.add_messages(mailbox.user, [_message(n) for n in range(3)])
    mail = _make_maildir(home.root / "Mail")
    rc = home.root / ".mpoprc"
    rc.write_text(
        "defaults\ntls on\ntls_starttls off\nkeep on\n\n"
        f"account test\nhost localhost\nport {dc.tls_port}\ntls_trust_file {dc.ca_file}\n"
        f"user {mailbox.user}\npasswordeval cat {_password_file(home, mailbox)}\n"
        f"delivery maildir {mail}\n"
    )
    rc.chmod(0o600)
    ran = _run_peer(home, mpop, "-C", str(rc), "-q", "test")
    assert ran.returncode == 0, ran
    uidls = home.root / ".mpop_uidls" / f"{mailbox.user}_at_localhost"
    assert uidls.read_text().count("\n") >= 3
    _takeover(home, mailbox, "mpop", rc, mail)


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory other users can reach (getmail as root delivers as nobody)."""
    path = Path(tempfile.mkdtemp(prefix="fetchpop-import-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.mark.dovecot
def test_getmail_takeover(mailbox: DovecotUser, home: Home, shared_dir: Path) -> None:
    getmail = peer("getmail", "getmail6")
    dc = mailbox.dovecot
    dc.add_messages(mailbox.user, [_message(n) for n in range(3)])
    mail = _make_maildir(shared_dir / "Mail")
    # getmail refuses to deliver as root; there it delivers as nobody.
    deliver_as = ""
    if os.geteuid() == 0:
        nobody = pwd.getpwnam("nobody")
        for path in (mail, *(mail / sub for sub in ("cur", "new", "tmp"))):
            os.chown(path, nobody.pw_uid, nobody.pw_gid)
        deliver_as = "user = nobody\n"
    folder = home.root / ".getmail"
    folder.mkdir()
    rc = folder / "getmailrc"
    rc.write_text(
        "[retriever]\ntype = SimplePOP3SSLRetriever\nserver = localhost\n"
        f"port = {dc.tls_port}\nusername = {mailbox.user}\n"
        f'password_command = ("cat", "{_password_file(home, mailbox)}")\n'
        f"ca_certs = {dc.ca_file}\n"
        f"[destination]\ntype = Maildir\npath = {mail}/\n{deliver_as}"
        "[options]\nread_all = false\ndelete = false\nverbose = 0\n"
    )
    ran = _run_peer(home, getmail, "--getmaildir", str(folder), "--rcfile", "getmailrc")
    assert ran.returncode == 0, ran
    assert len(maildir_messages(mail)) == 3
    oldmail = parse_oldmail(
        (folder / f"oldmail-localhost-{dc.tls_port}-{mailbox.user}").read_text()
    )
    _takeover(home, mailbox, "getmail", rc, mail)
    first_seen = {uidl: first for *_, uidl, first in _seen_rows(home)}
    assert {u: first_seen[u] for u in oldmail} == oldmail  # getmail's own times
