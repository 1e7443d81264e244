"""Fast start: what ``fetchpop --version`` and a sync with nothing new import.

Python reports every module it imports when PYTHONPROFILEIMPORTTIME is set
(``python -X importtime``); these tests read that report from a real run's
stderr, so a module pulled in by accident shows up here, by name, instead of
as a few milliseconds more in the benchmark.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from dovecot import DovecotUser
from runner import Home, Result, account_toml

IMPORT_TIME = {"PYTHONPROFILEIMPORTTIME": "1"}


def imported(result: Result) -> set[str]:
    """The modules a run imported once Python's own start-up was over.

    A module's line comes when its import ends, so "site" ends the part that
    belongs to the interpreter and to whatever start-up hooks (``.pth``
    files) its site-packages has: those are not fetchpop's.
    """
    names: set[str] = set()
    for line in result.stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            name = line.rsplit("|", 1)[1].strip()
            if name == "site":
                names.clear()
            elif name != "package":  # the header line
                names.add(name)
    return names


def test_version_imports_the_command_line_only(home: Home) -> None:
    result = home.run("--version", env=IMPORT_TIME)
    assert result.code == 0 and "fetchpop, version" in result.stdout, result
    modules = imported(result)
    assert {"click", "fetchpop.cli"} <= modules  # the report was read
    unneeded = {
        "fetchpop.config",
        "fetchpop.sync",
        "fetchpop.seenstore",
        "tomllib",
        "ssl",
        "socket",
        "sqlite3",
        "keyring",
        "platformdirs",
        "json",
    }
    assert modules & unneeded == set()


@pytest.mark.dovecot
def test_sync_with_nothing_new_imports_what_it_uses(
    mailbox: DovecotUser, home: Home, tmp_path: Path
) -> None:
    dc = mailbox.dovecot
    dc.add_messages(mailbox.user, [b"Subject: %d\n\nbody\n" % i for i in range(3)])
    home.write_config(
        account_toml(
            "home",
            host="localhost",
            user=mailbox.user,
            port=dc.tls_port,
            tls="implicit",
            ca_file=str(dc.ca_file),
            password=mailbox.password,
            deliver=f"maildir:{tmp_path / 'Mail'}",
        )
    )
    first = home.run("sync")
    assert first.code == 0, first
    again = home.run("sync", env=IMPORT_TIME)
    assert again.code == 0, again
    modules = imported(again)
    assert {"fetchpop.sync", "sqlite3", "ssl", "fetchpop.deliver.maildir"} <= modules
    unneeded = {
        "keyring",  # the password is in the file
        "platformdirs",  # Linux's XDG directories need no library
        "json",  # no --json, no OAuth2
        "subprocess",  # no password_command, no MDA
        "shlex",
        "tempfile",
        "getpass",
        "concurrent.futures",  # nothing to fsync
        "stringprep",  # no SCRAM, no IDNA host name
        "unicodedata",
        "encodings.idna",
        "secrets",
        "fetchpop.deliver.mbox",
        "fetchpop.deliver.mda",
        "fetchpop.oauth",
        "fetchpop.importers",
    }
    assert modules & unneeded == set()


def test_host_names_go_out_as_socket_and_ssl_would_send_them() -> None:
    from fetchpop.pop3.transport import _ascii_host

    # ASCII as it is; a name with other letters in IDNA, as the idna codec
    # (which socket.getaddrinfo and ssl use for a str) would give it.
    assert _ascii_host("pop.example.org") == b"pop.example.org"
    assert _ascii_host("POP.Example.ORG.") == b"POP.Example.ORG."
    assert _ascii_host("bücher.example") == "bücher.example".encode("idna")
    assert _ascii_host("bücher.example") == b"xn--bcher-kva.example"
