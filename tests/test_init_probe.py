"""`fetchpop init` finding the server (the usual ports, a given one, host:port),
asking again only for what failed, and the header it writes; against the
scripted server with TLS (tests/fakepop.py)."""

from __future__ import annotations

import re
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme
from fakepop import FakePOP3, make_server_context
from runner import Home, Result

HEADER = re.compile(r"# Added by fetchpop init on \d{4}-\d\d-\d\d \d\d:\d\d\.")


def answers(*lines: str) -> str:
    return "\n".join(lines) + "\n"


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture
def implicit(ca: trustme.CA) -> Iterator[FakePOP3]:
    context = make_server_context(ca, "localhost")
    with FakePOP3([b"Subject: hi\n\nhello\n"], tls_context=context, implicit_tls=True) as server:
        yield server


@pytest.fixture
def starttls(ca: trustme.CA) -> Iterator[FakePOP3]:
    with FakePOP3([b"Subject: hi\n\nhello\n"], tls_context=make_server_context(ca)) as server:
        yield server


def _init(home: Home, ca_file: Path, stdin: str, *options: str) -> Result:
    return home.run("init", "--name", "home", "--ca-file", str(ca_file), *options, stdin=stdin)


def _written(home: Home) -> dict[str, str]:
    lines = home.config_path.read_text().splitlines()
    return dict(ln.split(" = ", 1) for ln in lines if " = " in ln)


def test_a_given_port_is_tried_with_implicit_tls_then_starttls(
    home: Home, starttls: FakePOP3, ca_file: Path, tmp_path: Path
) -> None:
    mail = tmp_path / "Mail"
    stdin = answers("alice@localhost", "localhost", "alice", "secret", f"maildir:{mail}", "y", "y")
    result = _init(home, ca_file, stdin, "--port", str(starttls.port))
    assert result.code == 0, result
    found = re.search(
        r"localhost: STARTTLS \(TLSv1\.[23]\), SASL mechanisms: .+ on port (\d+)", result.stdout
    )
    assert found and int(found.group(1)) == starttls.port, result
    keys = _written(home)
    assert keys["tls"] == '"starttls"' and keys["port"] == str(starttls.port)
    assert home.run("sync", "home").code == 0


def test_the_server_is_asked_again_alone_and_host_port_is_a_given_port(
    home: Home, implicit: FakePOP3, ca_file: Path, tmp_path: Path
) -> None:
    if _listening(995) or _listening(110):
        pytest.skip("something listens on port 995 or 110 of this machine")
    mail = tmp_path / "Mail"
    stdin = answers(
        "alice@localhost",
        "localhost",  # nothing on 995 and 110 here
        "alice",
        f"localhost:{implicit.port}",  # asked again: the server only
        "secret",
        f"maildir:{mail}",
        "y",
        "y",
    )
    result = _init(home, ca_file, stdin)
    assert result.code == 0, result
    failed = [ln for ln in result.stderr.splitlines() if "found no POP3 server" in ln]
    assert len(failed) == 1, result
    assert failed[0].startswith(
        "fetchpop: found no POP3 server with TLS at localhost: implicit TLS on port 995: "
    )
    assert "; STARTTLS on port 110: " in failed[0]
    assert (
        "Give the server again: its name, or host:port for another port "
        "(fetchpop init --port N tries only port N)." in result.stdout
    )
    assert result.stdout.count("Your e-mail address") == 1
    assert result.stdout.count("User name") == 1
    assert result.stdout.count("POP3 server (host, or host:port)") == 2
    assert "localhost: implicit TLS (TLSv1.3), SASL mechanisms: " in result.stdout
    keys = _written(home)
    assert keys["host"] == '"localhost"' and keys["port"] == str(implicit.port)
    assert keys["tls"] == '"implicit"'
    assert home.run("sync", "home").code == 0


def test_the_failure_stands_when_the_input_ends(home: Home, ca_file: Path) -> None:
    with socket.socket() as sock:  # a port that is surely closed: bound, never listening
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        result = _init(home, ca_file, answers("alice@localhost", f"localhost:{port}", "alice"))
    assert result.code == 69, result
    assert "fetchpop: found no POP3 server with TLS at localhost: " in result.stderr
    assert f"implicit TLS on port {port}: " in result.stderr
    assert "Give the server again" in result.stdout
    assert not home.config_path.exists()


def test_the_password_is_asked_again_then_the_user_name(
    home: Home, implicit: FakePOP3, ca_file: Path, tmp_path: Path
) -> None:
    stdin = answers(
        "bob@localhost",
        f"localhost:{implicit.port}",
        "bob",  # not a user there
        "secret",
        "secret again",
        "alice",  # asked after the second failure
        "secret",
        f"maildir:{tmp_path / 'Mail'}",
        "y",
        "y",
    )
    result = _init(home, ca_file, stdin)
    assert result.code == 0, result
    failed = [ln for ln in result.stderr.splitlines() if "authentication failed" in ln]
    assert len(failed) == 2, result
    assert result.stdout.count("User name") == 2
    assert result.stdout.count("POP3 server") == 1
    assert "Login works." in result.stdout
    assert _written(home)["user"] == '"alice"'


def test_a_bad_deliver_is_asked_again(
    home: Home, implicit: FakePOP3, ca_file: Path, tmp_path: Path
) -> None:
    mail = tmp_path / "Mail"
    stdin = answers(
        "alice@localhost",
        f"localhost:{implicit.port}",
        "alice",
        "secret",
        "Mail/home",  # neither maildir:, mbox: nor mda:
        f"maildir:{mail}",
        "y",
        "y",
    )
    result = _init(home, ca_file, stdin)
    assert result.code == 0, result
    assert "fetchpop: deliver: 'Mail/home' is not one of " in result.stderr
    assert result.stdout.count("Deliver mail to") == 2
    assert result.stdout.count("Password for") == 1
    assert _written(home)["deliver"] == f'"maildir:{mail}"'


def test_the_header_says_who_wrote_the_table(
    home: Home, implicit: FakePOP3, ca_file: Path, tmp_path: Path
) -> None:
    home.write_config("[defaults]\nkeep = true\n")
    stdin = answers(
        "alice@localhost", f"localhost:{implicit.port}", "alice", "secret",
        f"maildir:{tmp_path / 'Mail'}", "y", "y",
    )  # fmt: skip
    result = _init(home, ca_file, stdin)
    assert result.code == 0, result
    lines = home.config_path.read_text().splitlines()
    assert lines[:3] == ["[defaults]", "keep = true", ""]
    assert HEADER.fullmatch(lines[3]), lines[3]
    assert lines[4] == "[accounts.home]"
    assert "Imported" not in home.config_path.read_text()


def test_no_answer_at_all_is_a_usage_error(home: Home, ca_file: Path) -> None:
    result = _init(home, ca_file, "")
    assert result.code == 64, result
    assert result.stderr.splitlines()[-1] == (
        "fetchpop: init stopped: no answer to 'Your e-mail address'"
    )
