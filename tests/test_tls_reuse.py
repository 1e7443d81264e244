"""One run's connections share TLS contexts and resume TLS sessions
(fetchpop/pop3/transport.py TLSReuse), against the real Dovecot: implicit TLS
and STLS, CA trust and a pinned fingerprint; nothing is resumed outside a run
or across servers, and a connection whose pin does not match keeps nothing."""

from __future__ import annotations

import dataclasses
import hashlib
import ssl
from pathlib import Path

import pytest
from dovecot import Dovecot, DovecotUser

from fetchpop.config import Account
from fetchpop.deliver import DeliverySpec
from fetchpop.pop3.transport import TLSError, make_ssl_context, reusing_tls
from fetchpop.sync.connect import connect

pytestmark = pytest.mark.dovecot


def account(box: DovecotUser, **keys: object) -> Account:
    server = box.dovecot
    base = Account(
        name="home",
        host=server.host,
        user=box.user,
        port=server.tls_port,
        tls="implicit",
        ca_file=server.ca_file,
        deliver=DeliverySpec("maildir", Path("/nonexistent")),
    )
    return dataclasses.replace(base, **keys)  # type: ignore[arg-type]


def session(acct: Account, password: str) -> bool:
    """Log in, list, QUIT; whether the TLS handshake resumed a session."""
    client = connect(acct, lambda: password)
    resumed = client.transport.tls_resumed
    client.maildrop()
    client.quit()
    return resumed


def pin(server: Dovecot) -> str:
    der = ssl.PEM_cert_to_DER_cert(server.cert_file.read_text())
    return hashlib.sha256(der).hexdigest()


def test_sessions_resume_within_a_run(mailbox: DovecotUser) -> None:
    acct = account(mailbox)
    with reusing_tls() as reuse:
        assert [session(acct, mailbox.password) for _ in range(3)] == [False, True, True]
        assert len(reuse) == 1
        # One context per trust setting: the CAs are read once a run.
        assert make_ssl_context(acct.ca_file) is make_ssl_context(acct.ca_file)
        assert make_ssl_context(acct.ca_file) is not make_ssl_context(None)


def test_nothing_is_shared_outside_a_run(mailbox: DovecotUser) -> None:
    acct = account(mailbox)
    assert [session(acct, mailbox.password) for _ in range(2)] == [False, False]
    assert make_ssl_context(acct.ca_file) is not make_ssl_context(acct.ca_file)
    with reusing_tls():
        assert session(acct, mailbox.password) is False  # a new run starts afresh


def test_stls_sessions_resume(mailbox: DovecotUser) -> None:
    acct = account(mailbox, port=mailbox.dovecot.port, tls="starttls")
    with reusing_tls():
        assert [session(acct, mailbox.password) for _ in range(2)] == [False, True]


def test_accounts_of_one_server_share_sessions(dovecot: Dovecot) -> None:
    boxes = [dovecot.new_mailbox("reuse") for _ in range(3)]
    try:
        with reusing_tls():
            resumed = [session(account(box), box.password) for box in boxes]
        assert resumed == [False, True, True]
    finally:
        for box in boxes:
            dovecot.remove_user(box.user)


def test_no_session_crosses_ports(mailbox: DovecotUser) -> None:
    """A session belongs to the server (host and port) it was made with."""
    implicit = account(mailbox)
    stls = account(mailbox, port=mailbox.dovecot.port, tls="starttls")
    with reusing_tls():
        assert session(implicit, mailbox.password) is False
        assert session(stls, mailbox.password) is False
        assert session(implicit, mailbox.password) is True


def test_pinned_sessions_resume_and_the_pin_is_checked_each_time(mailbox: DovecotUser) -> None:
    right = account(mailbox, ca_file=None, tls_fingerprint=pin(mailbox.dovecot))
    wrong = dataclasses.replace(right, tls_fingerprint="0" * 64)
    with reusing_tls() as reuse:
        with pytest.raises(TLSError, match="does not match tls_fingerprint"):
            connect(wrong, lambda: mailbox.password)
        assert len(reuse) == 0  # a session whose pin did not match is not kept
        assert [session(right, mailbox.password) for _ in range(2)] == [False, True]
        with pytest.raises(TLSError, match="does not match tls_fingerprint"):
            connect(wrong, lambda: mailbox.password)  # never with the right pin's session


def test_a_changed_ca_file_makes_a_new_context(mailbox: DovecotUser, tmp_path: Path) -> None:
    """``sync --every`` keeps its TLS cache from round to round: a CA file
    rewritten since is read again, and what was resumed under the old one is not."""
    ca = tmp_path / "ca.pem"
    ca.write_bytes(mailbox.dovecot.ca_file.read_bytes())
    acct = account(mailbox, ca_file=ca)
    with reusing_tls() as reuse:
        first = make_ssl_context(ca)
        assert [session(acct, mailbox.password) for _ in range(2)] == [False, True]
        assert make_ssl_context(ca) is first
        ca.write_bytes(ca.read_bytes() + b"\n")  # the same CA, but the file changed
        second = make_ssl_context(ca)
        assert second is not first and make_ssl_context(ca) is second
        assert session(acct, mailbox.password) is False  # nothing resumed across it
        assert session(acct, mailbox.password) is True
        assert len(reuse) == 1
