"""`fetchpop init` against the real Dovecot: probe, log in, write a config that syncs."""

from __future__ import annotations

from pathlib import Path

import pytest
from dovecot import DovecotUser
from runner import Home, maildir_messages

pytestmark = pytest.mark.dovecot


def answers(*lines: str) -> str:
    return "\n".join(lines) + "\n"


def test_init_writes_a_working_account(mailbox: DovecotUser, tmp_path: Path) -> None:
    dc = mailbox.dovecot
    dc.add_messages(mailbox.user, [b"Subject: hello\n\nfirst\n"])
    home = Home(tmp_path / "home")
    mail = tmp_path / "Mail"
    stdin = answers(
        "someone@localhost",  # address
        "localhost",  # server
        mailbox.user,  # user name
        "not the password",  # first try fails
        mailbox.password,
        f"maildir:{mail}",
        "y",  # keep on server
        "y",  # no keyring here: put the password in the private file
    )
    args = ("init", "--name", "home", "--port", str(dc.tls_port), "--ca-file", str(dc.ca_file))
    result = home.run(*args, stdin=stdin)
    assert result.code == 0, result
    assert (
        f"localhost: implicit TLS (TLSv1.3), SASL mechanisms: PLAIN LOGIN on port {dc.tls_port}"
        in result.stdout
    )
    assert "authentication failed" in result.stderr
    assert "Login works." in result.stdout
    assert "cannot use the system keyring" in result.stderr
    assert oct(home.config_path.stat().st_mode & 0o777) == "0o600"
    text = home.config_path.read_text()
    assert "[accounts.home]" in text and 'tls = "implicit"' in text
    sync = home.run("sync", "home")
    assert sync.code == 0, sync
    assert maildir_messages(mail) == [b"Subject: hello\n\nfirst\n"]
    # A second init for the same name refuses to overwrite it.
    again = home.run(*args, stdin=stdin)
    assert again.code == 78, again
    assert "already exists" in again.stderr


def test_init_refuses_an_unverified_server(mailbox: DovecotUser, tmp_path: Path) -> None:
    home = Home(tmp_path / "home")
    result = home.run(
        "init",
        "--port",
        str(mailbox.dovecot.tls_port),
        stdin=answers("someone@localhost", "localhost", mailbox.user),
    )
    assert result.code == 69, result
    assert "did not verify" in result.stderr and "--ca-file" in result.stderr
    assert not home.config_path.exists()
