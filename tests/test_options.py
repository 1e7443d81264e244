"""Global options anywhere (`fetchpop sync -v` is `fetchpop -v sync`,
`fetchpop --json status` is `fetchpop status --json`), and the output
levels the README and fetchpop(1) promise: -v a summary line per account
(never after a failure), -vv also a line per message and the transcript."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import click
import pytest
from fakepop import FakePOP3
from runner import Home, Result, account_toml

from fetchpop.cli import main, run

MESSAGES = [b"Subject: one\n\nfirst\n", b"Subject: two\n\nsecond\n"]
WARNING = 'fetchpop: acct: warning: tls = "off": password and mail cross the network in clear text'
SUMMARY = "acct: 2 new message(s), 41 B, 0 deleted, 0 skipped"
NOTHING_NEW = "acct: 0 new message(s), 0 B, 0 deleted, 0 skipped"


def _toml(server: FakePOP3, mail: Path, password: str = "secret") -> str:
    return account_toml(
        "acct",
        host=server.host,
        port=server.port,
        tls="off",
        user="alice",
        password=password,
        deliver=f"maildir:{mail}",
        timeout=10,
    )


@pytest.fixture
def server() -> Iterator[FakePOP3]:
    with FakePOP3(MESSAGES) as pop:
        yield pop


def _sync(home: Home, server: FakePOP3, tmp_path: Path, *args: str) -> Result:
    home.write_config(_toml(server, tmp_path / "Mail"))
    return home.run(*args)


# -- every command takes the global options after its name --------------------------------


def _paths(cmd: click.Command, path: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    if path:
        yield path
    if isinstance(cmd, click.Group):
        for name, sub in sorted(cmd.commands.items()):
            yield from _paths(sub, (*path, name))


@pytest.mark.parametrize("path", list(_paths(main)), ids=" ".join)
def test_every_command_takes_the_global_options_after_it(
    path: tuple[str, ...], capsys: pytest.CaptureFixture[str]
) -> None:
    """Parsed, not refused: click would say "No such option" before --help."""
    with pytest.raises(SystemExit) as exited:
        run([*path, "-v", "--verbose", "-q", "--quiet", "-c", "x.toml", "--config=y", "--help"])
    out, err = capsys.readouterr()
    assert exited.value.code == 0, err
    assert out.startswith(f"Usage: fetchpop {' '.join(path)} ")
    # Not listed there, but said: they are global options (fetchpop --help, fetchpop(1)).
    assert "--verbose" not in out and "--quiet" not in out
    assert out.rstrip().endswith(
        "The global options -c, -v and -q may come here too (fetchpop --help)."
    )


def test_the_main_help_says_they_may_follow(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        run(["--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "-c, -v, -q and --json may also follow the command: fetchpop sync -v." in out
    assert "-v, --verbose A summary line per account; -vv also a line per message" in out


@pytest.mark.parametrize(
    "args", [("-v", "sync"), ("sync", "-v"), ("sync", "acct", "-v"), ("sync", "--verbose")]
)
def test_verbose_before_or_after(
    home: Home, server: FakePOP3, tmp_path: Path, args: tuple[str, ...]
) -> None:
    result = _sync(home, server, tmp_path, *args)
    assert result.code == 0, result
    assert result.stderr.splitlines() == [WARNING, SUMMARY]


@pytest.mark.parametrize("args", [("-q", "sync"), ("sync", "-q"), ("sync", "--quiet", "acct")])
def test_quiet_before_or_after(
    home: Home, server: FakePOP3, tmp_path: Path, args: tuple[str, ...]
) -> None:
    result = _sync(home, server, tmp_path, *args)
    assert result.code == 0 and result.stderr == "" and result.stdout == "", result


@pytest.mark.parametrize(
    "args", [("-vv", "sync"), ("sync", "-vv"), ("-v", "sync", "-v"), ("sync", "-v", "-v")]
)
def test_verbose_counts_across_both_places(
    home: Home, server: FakePOP3, tmp_path: Path, args: tuple[str, ...]
) -> None:
    result = _sync(home, server, tmp_path, *args)
    assert result.code == 0, result
    lines = result.stderr.splitlines()
    assert "acct: C: RETR 1" in lines  # the transcript
    assert [ln for ln in lines if " fetched message " in ln] == [
        "acct: fetched message 1 (20 B), UIDL uid-1",
        "acct: fetched message 2 (21 B), UIDL uid-2",
    ]
    assert lines[-1] == SUMMARY


@pytest.mark.parametrize(
    "args", [("--json", "status"), ("status", "--json"), ("--json", "status", "--json")]
)
def test_json_before_or_after(home: Home, tmp_path: Path, args: tuple[str, ...]) -> None:
    home.write_config(account_toml("acct", host="h", user="u", deliver=f"maildir:{tmp_path}"))
    result = home.run(*args)
    assert result.code == 0, result
    report = json.loads(result.stdout)
    assert [a["account"] for a in report["accounts"]] == ["acct"]
    assert report["accounts"][0]["last_run"] is None


def test_json_before_sync(home: Home, server: FakePOP3, tmp_path: Path) -> None:
    result = _sync(home, server, tmp_path, "-q", "--json", "sync")
    assert result.code == 0, result
    (report,) = json.loads(result.stdout)["accounts"]
    assert report["fetched"] == 2 and report["ok"] is True


@pytest.mark.parametrize("command", ["init", "demo", "seen", "password"])
def test_json_before_a_command_without_it_is_a_usage_error(home: Home, command: str) -> None:
    result = home.run("--json", command)
    assert result.code == 64, result
    assert f"Error: {command} has no --json output" in result.stderr


def test_config_before_or_after(home: Home, tmp_path: Path) -> None:
    first, second = tmp_path / "first.toml", tmp_path / "second.toml"
    for path, name in ((first, "one"), (second, "two")):
        path.write_text(account_toml(name, host="h", user="u", deliver=f"maildir:{tmp_path}"))
    for args, shown in (
        (("-c", str(first), "accounts"), "one"),
        (("accounts", "-c", str(second)), "two"),
        (("accounts", f"--config={first}"), "one"),
        (("-c", str(first), "accounts", "-c", str(second)), "two"),  # the later one
        (("-c", str(first), "seen", "-c", str(second), "forget", "two"), "two"),
    ):
        result = home.run(*args)
        assert result.code == 0, result
        assert f"[{shown}]" in result.stdout or f"{shown}: 0 UIDL(s)" in result.stdout, result


def test_options_in_a_subgroup(home: Home, tmp_path: Path) -> None:
    home.write_config(account_toml("acct", host="h", user="u", deliver=f"maildir:{tmp_path}"))
    for args in (("seen", "-q", "forget", "acct"), ("seen", "forget", "acct", "-v")):
        result = home.run(*args)
        assert result.code == 0, result
        assert result.stdout == "acct: 0 UIDL(s) forgotten\n"


# -- the levels -----------------------------------------------------------------------------


def test_no_option_is_quiet_when_all_is_well(home: Home, server: FakePOP3, tmp_path: Path) -> None:
    result = _sync(home, server, tmp_path, "sync")
    assert result.code == 0 and result.stderr.splitlines() == [WARNING], result


def test_v_is_one_summary_line_per_account_not_a_line_per_message(
    home: Home, server: FakePOP3, tmp_path: Path
) -> None:
    first = _sync(home, server, tmp_path, "-v", "sync")
    assert first.stderr.splitlines() == [WARNING, SUMMARY], first
    again = home.run("-v", "sync")
    assert again.stderr.splitlines() == [WARNING, NOTHING_NEW], again


def test_no_success_summary_for_a_failed_account(home: Home, tmp_path: Path) -> None:
    with FakePOP3(MESSAGES) as server:
        home.write_config(_toml(server, tmp_path / "Mail", password="wrong"))
        for level in ("-v", "-vv"):
            result = home.run(level, "sync")
            assert result.code == 77, result
            lines = result.stderr.splitlines()
            assert not [ln for ln in lines if "new message(s)" in ln], lines
            assert lines[-1].startswith("fetchpop: acct: authentication failed"), lines
        quiet = home.run("-q", "sync")
        assert quiet.code == 77
        [line] = quiet.stderr.splitlines()
        assert line.startswith("fetchpop: acct: authentication failed"), quiet
