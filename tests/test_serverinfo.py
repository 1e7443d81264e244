"""``serverinfo`` as mpop's: without a configuration (--host), without an
account name when there is one account, and a certificate that does not
verify shown all the same, with the line that would trust it."""

from __future__ import annotations

from pathlib import Path

import trustme
from fakepop import FakePOP3, make_server_context
from runner import Home, account_toml
from test_faults import configure

MESSAGE = [b"Subject: x\n\nbody\n"]


def logins(server: FakePOP3) -> list[bytes]:
    return [c for c in server.all_commands() if c.upper().startswith((b"USER", b"PASS", b"AUTH"))]


def test_host_alone_shows_the_certificate_that_does_not_verify_and_how_to_trust_it(
    home: Home, ca: trustme.CA
) -> None:
    with FakePOP3(MESSAGE, tls_context=make_server_context(ca), implicit_tls=True) as server:
        result = home.run("serverinfo", "--host", "localhost", "--port", str(server.port))
    assert result.code == 69, result
    lines = result.stdout.splitlines()
    assert lines[0] == f"localhost: localhost port {server.port}, tls = implicit"
    (fingerprint,) = [
        ln.split(": ", 1)[1] for ln in lines if ln.startswith("certificate fingerprint")
    ]
    assert fingerprint.startswith("sha256:")
    assert any(ln.startswith("  subject: ") for ln in lines)
    assert any("did not verify" in ln and ln.startswith("certificate: ") for ln in lines)
    assert f'  tls_fingerprint = "{fingerprint}"' in lines
    assert any("ca_file" in ln for ln in lines)
    assert logins(server) == []  # nothing but the handshake (and nothing to log in as)


def test_host_with_its_ca_verifies_and_never_logs_in(
    home: Home, ca: trustme.CA, tmp_path: Path
) -> None:
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    with FakePOP3(MESSAGE, tls_context=make_server_context(ca), implicit_tls=True) as server:
        args = ["--host", "localhost", "--port", str(server.port), "--ca-file", str(ca_file)]
        result = home.run("serverinfo", *args)
        as_json = home.run("--json", "serverinfo", *args)
    assert result.code == 0 and as_json.code == 0, (result, as_json)
    assert "capabilities before login: " in result.stdout
    assert "tls_fingerprint" not in result.stdout
    assert not any(ln.startswith("login:") for ln in result.stdout.splitlines())
    assert '"tls_error": null' in as_json.stdout
    assert logins(server) == []


def test_the_only_account_needs_no_name_and_the_tls_error_of_sync_names_both_ways(
    home: Home, ca: trustme.CA, tmp_path: Path
) -> None:
    with FakePOP3(MESSAGE, tls_context=make_server_context(ca), implicit_tls=True) as server:
        home.write_config(
            account_toml(
                "home",
                host="localhost",
                port=server.port,
                tls="implicit",
                user="alice",
                password="secret",
                deliver=f"maildir:{tmp_path / 'Mail'}",
            )
        )
        info = home.run("serverinfo")
        failed = home.run("sync")
    assert info.code == 69, info
    assert info.stdout.startswith(f"home: localhost port {server.port}, tls = implicit")
    assert failed.code == 69, failed
    assert "did not verify" in failed.stderr
    assert "tls_fingerprint (`fetchpop serverinfo home` shows the line to add)" in failed.stderr
    assert "or its CA with ca_file" in failed.stderr
    assert logins(server) == []


def test_several_accounts_and_no_name_is_a_usage_error(home: Home, tmp_path: Path) -> None:
    with FakePOP3(MESSAGE) as server:
        configure(home, server, tmp_path / "Mail")
        text = home.config_path.read_text()
        home.write_config(text + "\n" + text.replace("[accounts.home]", "[accounts.other]"))
        result = home.run("serverinfo")
    assert result.code == 64, result
    assert "name an account (the configuration has 2)" in result.stderr
