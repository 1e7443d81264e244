"""Shared pytest fixtures.  Sections are independent; append new ones below.

Real Dovecot (tests/dovecot.py)
-------------------------------
Design: ONE Dovecot process per test session (startup ~50 ms, but a shared
server also keeps per-test cost to adding a user, ~1 ms) and a fresh user
per test for isolation.

* ``dovecot`` (session): the shared :class:`dovecot.Dovecot` with default
  settings (``auth_mechanisms = plain login``, clear-text USER/PASS allowed,
  STLS on ``.port``, implicit TLS on ``.tls_port``, ``.ca_file`` to verify).
  Do not stop it or rely on its default user ``alice`` being empty.
* ``mailbox`` (function): a new, empty user on the shared server, as a
  :class:`dovecot.DovecotUser` ``(dovecot, user, password, maildir)``; the
  user and its Maildir are deleted after the test.
* ``dovecot_factory`` (function): ``dovecot_factory(**kwargs) -> Dovecot``
  starts a private server with other settings (``auth_mechanisms=...``,
  ``disable_plaintext_auth=...``, ``ssl_mode=...``, ``extra_config=...``);
  stopped after the test.

Without dovecot these fixtures skip ("dovecot not installed (apt-get install
dovecot-pop3d)"), or fail if ``FETCHPOP_REQUIRE_DOVECOT=1``.  Mark tests
using them with ``@pytest.mark.dovecot``.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme
from dovecot import Dovecot, DovecotUser, require_dovecot
from runner import Home

# --------------------------------------------------------------- Dovecot ----


@pytest.fixture(scope="session")
def dovecot() -> Iterator[Dovecot]:
    """The session-wide Dovecot POP3 server (see module docstring)."""
    require_dovecot()
    server = Dovecot()
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def mailbox(dovecot: Dovecot) -> Iterator[DovecotUser]:
    """A fresh, empty POP3 user on the shared server: (dovecot, user, password, maildir)."""
    box = dovecot.new_mailbox()
    try:
        yield box
    finally:
        dovecot.remove_user(box.user)


@pytest.fixture
def dovecot_factory() -> Iterator[Callable[..., Dovecot]]:
    """Start private Dovecot servers with custom settings; all stopped after the test."""
    require_dovecot()
    servers: list[Dovecot] = []

    def start(**kwargs: Any) -> Dovecot:
        server = Dovecot(**kwargs)
        servers.append(server)
        return server.start()

    try:
        yield start
    finally:
        for server in servers:
            server.stop()


@pytest.fixture(scope="module")
def lmtp_dovecot() -> Iterator[Dovecot]:
    """A private Dovecot with its LMTP server (loopback port and unix socket,
    Sieve where installed), shared by a module's tests: ``Dovecot(lmtp=True)``."""
    require_dovecot()
    server = Dovecot(lmtp=True)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def imap_dovecot() -> Iterator[Dovecot]:
    """A private Dovecot serving POP3 and IMAP (UIDPLUS, LITERAL+, BINARY) on
    loopback, shared by a module's tests: ``Dovecot(imap=True)``."""
    require_dovecot()
    if not any(Path(d, "imap").exists() for d in ("/usr/lib/dovecot", "/usr/libexec/dovecot")):
        missing = "dovecot's IMAP server not installed (apt-get install dovecot-imapd)"
        if os.environ.get("FETCHPOP_REQUIRE_DOVECOT") == "1":
            pytest.fail(f"{missing}, but FETCHPOP_REQUIRE_DOVECOT=1", pytrace=False)
        pytest.skip(missing)
    server = Dovecot(imap=True)
    server.start()
    try:
        yield server
    finally:
        server.stop()


# ------------------------------------------------------------ TLS (trustme) ----


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    """A throwaway certificate authority for the scripted TLS servers."""
    return trustme.CA()


@pytest.fixture(scope="module")
def ca_file(ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The CA's certificate as a PEM file, for ``ca_file`` in test configs."""
    path = tmp_path_factory.mktemp("ca") / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return path


# ------------------------------------------------------------- fetchpop user ----


@pytest.fixture
def home(tmp_path: Path) -> Home:
    """A user's home for the real ``fetchpop`` command (see tests/runner.py)."""
    return Home(tmp_path / "home")


# ------------------------------------------------------------- signals ----------

# A shell without job control starts its background jobs with SIGINT ignored,
# and an ignored signal stays ignored across exec: every fetchpop the tests
# start would then ignore the Ctrl-C the tests send. A handler of our own
# (reset to the default by exec) makes them start as from a terminal.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)
