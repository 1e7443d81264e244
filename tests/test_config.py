"""fetchpop.config: every key, every problem reported at once, with file/account/key."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Literal

import pytest

from fetchpop.config import (
    ACCOUNT_KEYS,
    Account,
    Config,
    find_config_path,
    load_config,
    parse_size,
    user_dir,
)
from fetchpop.errors import ConfigError, ExitCode

FP = "AB:CD:" + "0" * 60
MINIMAL = """
[accounts.home]
host = "pop.example.org"
user = "alice"
deliver = "mda:/usr/bin/true"
"""


def write(tmp_path: Path, text: str, mode: int = 0o600, name: str = "config.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    path.chmod(mode)
    return path


def load(tmp_path: Path, text: str, mode: int = 0o600) -> Config:
    return load_config(write(tmp_path, text, mode))


def problems(tmp_path: Path, text: str, mode: int = 0o600) -> list[str]:
    path = write(tmp_path, text, mode)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.exit_code == ExitCode.CONFIG
    return info.value.problems


def one_account(tmp_path: Path, extra: str) -> Account:
    return load(tmp_path, MINIMAL + extra).accounts["home"]


def one_problem(tmp_path: Path, extra: str) -> str:
    found = problems(tmp_path, MINIMAL + extra)
    assert len(found) == 1, found
    return found[0]


# -- defaults and the happy path -----------------------------------------------


def test_minimal_account_gets_documented_defaults(tmp_path: Path) -> None:
    config = load(tmp_path, MINIMAL)
    assert config.path == tmp_path / "config.toml"
    account = config.accounts["home"]
    assert account.name == "home"
    assert account.host == "pop.example.org"
    assert account.user == "alice"
    assert account.port == 995
    assert account.tls == "implicit"
    assert account.auth == "auto"
    assert account.keep is True
    assert account.timeout == 60.0
    assert account.mbox_lock_timeout == 30.0
    assert account.deliver.kind == "mda"
    assert account.deliver.command == ("/usr/bin/true",)
    for key in (
        "ca_file",
        "tls_fingerprint",
        "password_command",
        "password",
        "delete_after_days",
        "max_size",
        "max_messages",
    ):
        assert getattr(account, key) is None, key


@pytest.mark.parametrize(
    ("tls", "port"), [("implicit", 995), ("starttls", 110), ("off", 110)]
)  # fmt: skip
def test_port_default_follows_tls(tmp_path: Path, tls: str, port: int) -> None:
    assert one_account(tmp_path, f'tls = "{tls}"\n').port == port


def test_explicit_port_wins_over_tls_default(tmp_path: Path) -> None:
    assert one_account(tmp_path, 'tls = "starttls"\nport = 1110\n').port == 1110


def test_port_default_follows_tls_from_defaults(tmp_path: Path) -> None:
    config = load(tmp_path, '[defaults]\ntls = "starttls"\n' + MINIMAL)
    assert config.accounts["home"].port == 110


def test_defaults_apply_to_every_account_and_accounts_override(tmp_path: Path) -> None:
    config = load(
        tmp_path,
        """
[defaults]
user = "alice"
keep = false
timeout = 10
deliver = "mda:procmail"

[accounts.a]
host = "a.example"

[accounts.b]
host = "b.example"
user = "bob"
keep = true
""",
    )
    a, b = config.accounts["a"], config.accounts["b"]
    assert (a.user, a.keep, a.timeout) == ("alice", False, 10.0)
    assert (b.user, b.keep, b.timeout) == ("bob", True, 10.0)
    assert a.deliver == b.deliver


def test_accounts_keep_file_order(tmp_path: Path) -> None:
    text = "".join(
        f'[accounts.{n}]\nhost = "h"\nuser = "u"\ndeliver = "mda:true"\n'
        for n in ("zeta", "alpha", "mid")
    )
    assert list(load(tmp_path, text).accounts) == ["zeta", "alpha", "mid"]


def test_account_names_may_use_dots_dashes_underscores(tmp_path: Path) -> None:
    text = MINIMAL.replace("[accounts.home]", '[accounts."work.old-2_x"]')
    assert list(load(tmp_path, text).accounts) == ["work.old-2_x"]


def test_mailbox_is_lowercased_host_port_user(tmp_path: Path) -> None:
    acc = load(tmp_path, MINIMAL.replace("pop.example.org", "POP.Example.ORG")).accounts["home"]
    assert acc.mailbox == ("pop.example.org", 995, "alice")
    assert acc.host == "POP.Example.ORG"


# -- every key: valid values ---------------------------------------------------


@pytest.mark.parametrize(
    ("line", "key", "expected"),
    [
        ('host = "mail.example.net"', "host", "mail.example.net"),
        ('user = "alice@example.org"', "user", "alice@example.org"),
        ("port = 1", "port", 1),
        ("port = 65535", "port", 65535),
        ('tls = "starttls"', "tls", "starttls"),
        ('tls = "off"', "tls", "off"),
        (f'tls_fingerprint = "sha256:{FP}"', "tls_fingerprint", "abcd" + "0" * 60),
        (f'tls_fingerprint = "SHA256:{"ab" * 32}"', "tls_fingerprint", "ab" * 32),
        (f'tls_fingerprint = "sha256:{"AB" * 32}"', "tls_fingerprint", "ab" * 32),
        ('auth = "user"', "auth", "user"),
        ('auth = "apop"', "auth", "apop"),
        ('auth = "plain"', "auth", "plain"),
        ('auth = "login"', "auth", "login"),
        ('auth = "scram-sha-1"', "auth", "scram-sha-1"),
        ('auth = "scram-sha-256"', "auth", "scram-sha-256"),
        ('auth = "xoauth2"', "auth", "xoauth2"),
        ('auth = "oauthbearer"', "auth", "oauthbearer"),
        ('password_command = "pass show \'mail/home x\'"', "password_command",
         "pass show 'mail/home x'"),
        ('password = "s3cret pass"', "password", "s3cret pass"),
        ("keep = false", "keep", False),
        ("delete_after_days = 30", "delete_after_days", 30),
        ("max_size = 1000", "max_size", 1000),
        ('max_size = "25MB"', "max_size", 25_000_000),
        ('max_size = "500k"', "max_size", 500_000),
        ('max_size = "1GiB"', "max_size", 2**30),
        ("max_messages = 1", "max_messages", 1),
        ("timeout = 2.5", "timeout", 2.5),
        ("timeout = 1", "timeout", 1.0),
        ("mbox_lock_timeout = 0.5", "mbox_lock_timeout", 0.5),
        ("mda_timeout = 60", "mda_timeout", 60.0),
    ],
)  # fmt: skip
def test_valid_value(tmp_path: Path, line: str, key: str, expected: object) -> None:
    text = "\n".join(
        ln for ln in MINIMAL.splitlines() if not ln.startswith(f"{key} =")
    )  # fmt: skip
    account = load(tmp_path, text + "\n" + line + "\n").accounts["home"]
    assert getattr(account, key) == expected
    assert type(getattr(account, key)) is type(expected)


def test_password_command_is_split_once_into_argv(tmp_path: Path) -> None:
    account = one_account(tmp_path, "password_command = \"pass show 'mail/home x'\"\n")
    assert account.password_command == "pass show 'mail/home x'"  # as written, for `accounts`
    assert account.password_argv == ("pass", "show", "mail/home x")  # what runs
    changed = dataclasses.replace(account, password_command="printf %s 'a b'")
    assert changed.password_argv == ("printf", "%s", "a b")
    assert dataclasses.replace(account, password_command=None).password_argv is None
    assert one_account(tmp_path, "").password_argv is None


def test_ca_file_must_exist_and_is_expanded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    certs = tmp_path / "certs"
    certs.mkdir()
    (certs / "ca.pem").write_text("-----BEGIN CERTIFICATE-----\n")
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("CERTDIR", str(certs))
    assert one_account(tmp_path, 'ca_file = "~/certs/ca.pem"\n').ca_file == certs / "ca.pem"
    assert one_account(tmp_path, 'ca_file = "$CERTDIR/ca.pem"\n').ca_file == certs / "ca.pem"
    assert one_account(tmp_path, 'ca_file = "${CERTDIR}/ca.pem"\n').ca_file == certs / "ca.pem"


def test_environ_argument_is_used_for_expansion(tmp_path: Path) -> None:
    (tmp_path / "ca.pem").write_text("x")
    path = write(tmp_path, MINIMAL + 'ca_file = "$D/ca.pem"\n')
    config = load_config(path, environ={"D": str(tmp_path)})
    assert config.accounts["home"].ca_file == tmp_path / "ca.pem"


def test_unset_variable_in_path_is_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("FETCHPOP_NO_SUCH_VAR", raising=False)
    line = one_problem(tmp_path, 'ca_file = "$FETCHPOP_NO_SUCH_VAR/ca.pem"\n')
    assert 'key "ca_file"' in line
    # The words deliver has always used (fetchpop.paths: one rule for both keys).
    assert (
        "environment variable $FETCHPOP_NO_SUCH_VAR in '$FETCHPOP_NO_SUCH_VAR/ca.pem' is not set"
    ) in line


def ca_file_problem(tmp_path: Path, value: str, environ: dict[str, str]) -> str:
    path = write(tmp_path, MINIMAL + f"ca_file = {json.dumps(value)}\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, environ=environ)
    (line,) = info.value.problems
    prefix = f'{path}: account "home": key "ca_file": '
    assert line.startswith(prefix), line
    return line.removeprefix(prefix)


@pytest.mark.parametrize(
    ("value", "environ", "message"),
    [
        # Was the password database's home directory (or the process's $HOME).
        ("~/ca.pem", {}, "cannot expand ~ in '~/ca.pem': HOME is not set"),
        ("~/ca.pem", {"HOME": ""}, "cannot expand ~ in '~/ca.pem': HOME is empty"),
        # Was //fetchpop-no-such-ca.pem.
        ("~/fetchpop-no-such-ca.pem", {"HOME": "/"}, "no such file: /fetchpop-no-such-ca.pem"),
        # ~ is expanded before $VAR, as in a shell: a value's ~ is a plain
        # character (was: expanded, since variables came first).
        ("$D/ca.pem", {"HOME": "/home/a", "D": "~/certs"}, "no such file: ~/certs/ca.pem"),
        ("~$U/ca.pem", {"U": "root"}, "no such file: ~root/ca.pem"),
        # Was "no such file: a?b".
        ("a\0b", {}, "path 'a\\x00b' contains a NUL character"),
    ],
)
def test_ca_file_is_expanded_as_deliver_is(
    tmp_path: Path, value: str, environ: dict[str, str], message: str
) -> None:
    assert ca_file_problem(tmp_path, value, environ) == message


def test_relative_ca_file_is_relative_to_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "ca.pem").write_text("x")
    monkeypatch.chdir(tmp_path)
    assert one_account(tmp_path, 'ca_file = "ca.pem"\n').ca_file == Path("ca.pem")


def test_environ_argument_is_used_for_deliver_too(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL.replace("mda:/usr/bin/true", "maildir:~/$BOX"))
    config = load_config(path, environ={"HOME": "/home/zed", "BOX": "inbox"})
    assert config.accounts["home"].deliver.path == Path("/home/zed/inbox")


def test_missing_ca_file_names_the_expanded_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    line = one_problem(tmp_path, 'ca_file = "~/nope.pem"\n')
    assert line == f'{tmp_path}/config.toml: account "home": key "ca_file": no such file: ' + str(
        tmp_path / "nope.pem"
    )


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("1", 1), ("25MB", 25_000_000), ("25mb", 25_000_000), ("25M", 25_000_000),
        ("500k", 500_000), ("500 KB", 500_000), ("1KiB", 1024), ("1kib", 1024),
        ("2MiB", 2 * 1024**2), ("1GiB", 1024**3), ("1G", 10**9), ("1.5MB", 1_500_000),
        ("100b", 100),
    ],
)  # fmt: skip
def test_parse_size(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "MB", "25 XB", "-1MB", "0", "0k", "1TB", "1e6", "25 M B"])
def test_parse_size_rejects(text: str) -> None:
    with pytest.raises(ValueError, match=r"size|at least"):
        parse_size(text)


# -- every key: invalid values -------------------------------------------------


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('host = ""', 'key "host": must not be empty'),
        ('host = "pop example.org"', 'key "host": must not contain spaces'),
        ("host = 42", 'key "host": expected a string, got 42'),
        ('user = ""', 'key "user": must not be empty'),
        ('user = "alice\\r\\nDELE 1"', 'key "user": must not contain control characters'),
        ("user = true", 'key "user": expected a string, got true'),
        ("port = 0", 'key "port": must be between 1 and 65535, got 0'),
        ("port = 65536", 'key "port": must be between 1 and 65535, got 65536'),
        ('port = "995"', 'key "port": expected an integer, got "995"'),
        ("port = 995.0", 'key "port": expected an integer, got 995.0'),
        ("port = true", 'key "port": expected an integer, got true'),
        ('tls = "tsl"', 'key "tls": must be one of "implicit", "starttls", "off"; got "tsl"'),
        ('tls = "startls"', '(did you mean "starttls"?)'),
        ("tls = false", 'key "tls": expected a string, got false'),
        ('tls_fingerprint = "AB:CD"', 'key "tls_fingerprint": expected "sha256:" and 64 hex'),
        (f'tls_fingerprint = "{"ab" * 32}"', 'key "tls_fingerprint": expected "sha256:"'),
        (f'tls_fingerprint = "sha256:{"ab" * 31}"', 'key "tls_fingerprint": expected'),
        (f'tls_fingerprint = "sha256:{"zz" * 32}"', 'key "tls_fingerprint": expected'),
        (f'tls_fingerprint = "sha1:{"ab" * 32}"', 'key "tls_fingerprint": expected'),
        ('auth = "cram-md5"', 'key "auth": must be one of "auto", "user"'),
        ('auth = "scram-sha256"', '(did you mean "scram-sha-256"?)'),
        ('password_command = ""', 'key "password_command": must not be empty'),
        ('password_command = "   "', 'key "password_command": must not be empty'),
        ('password_command = "pass show \'x"', 'key "password_command": cannot be split'),
        ('password_command = ["pass", "show"]', 'key "password_command": expected a string, '
         "got an array"),
        ('password = ""', 'key "password": must not be empty'),
        ('password = "a\\nb"', 'key "password": must not contain control characters'),
        ('deliver = "carrier-pigeon:home"', 'key "deliver": '),
        ("deliver = 1", 'key "deliver": expected a string, got 1'),
        ('keep = "yes"', 'key "keep": expected a boolean, got "yes"'),
        ("keep = 1", 'key "keep": expected a boolean, got 1'),
        ("delete_after_days = 0", 'key "delete_after_days": must be at least 1, got 0'),
        ('delete_after_days = "30"', 'key "delete_after_days": expected an integer, got "30"'),
        ("max_size = 0", 'key "max_size": must be at least 1, got 0'),
        ('max_size = "25 XB"', 'key "max_size": expected a size like 25MB, 500k or 1GiB, '
         'got "25 XB"'),
        ("max_size = 2.5", 'key "max_size": expected an integer or a size like "25MB", got 2.5'),
        ("max_messages = 0", 'key "max_messages": must be at least 1, got 0'),
        ("max_messages = -3", 'key "max_messages": must be at least 1, got -3'),
        ("timeout = 0", 'key "timeout": must be a number greater than 0, got 0'),
        ("timeout = -1.5", 'key "timeout": must be a number greater than 0, got -1.5'),
        ("timeout = inf", 'key "timeout": must be a number greater than 0, got inf'),
        ("timeout = nan", 'key "timeout": must be a number greater than 0, got nan'),
        ('timeout = "60"', 'key "timeout": expected a number, got "60"'),
        ("timeout = false", 'key "timeout": expected a number, got false'),
        ("mbox_lock_timeout = 0", 'key "mbox_lock_timeout": must be a number greater than 0'),
        ("keep = 1979-05-27", 'key "keep": expected a boolean, got a date or time'),
        ("keep = {a = 1}", 'key "keep": expected a boolean, got a table'),
    ],
)  # fmt: skip
def test_invalid_value(tmp_path: Path, line: str, message: str) -> None:
    key = line.split(" =", 1)[0]
    text = "\n".join(ln for ln in MINIMAL.splitlines() if not ln.startswith(f"{key} ="))
    found = problems(tmp_path, text + "\n" + line + "\n")
    assert len(found) == 1, found
    assert found[0].startswith(f'{tmp_path}/config.toml: account "home": key "{key}": ')
    assert message in found[0]


def test_wrong_type_for_password_does_not_show_the_value(tmp_path: Path) -> None:
    line = one_problem(tmp_path, "password = 123456789\n")
    assert line.endswith('key "password": expected a string, got an integer')
    assert "123456789" not in line


def test_delete_after_days_needs_keep(tmp_path: Path) -> None:
    line = one_problem(tmp_path, "keep = false\ndelete_after_days = 3\n")
    assert 'account "home": key "delete_after_days": has no effect with keep = false' in line


def test_inherited_delete_after_days_does_not_forbid_keep_false(tmp_path: Path) -> None:
    config = load(tmp_path, "[defaults]\ndelete_after_days = 7\n" + MINIMAL + "keep = false\n")
    account = config.accounts["home"]
    assert (account.keep, account.delete_after_days) == (False, 7)


# -- reporting -----------------------------------------------------------------


def test_unknown_key_suggests_closest(tmp_path: Path) -> None:
    assert one_problem(tmp_path, "prot = 995\n") == (
        f'{tmp_path}/config.toml: account "home": key "prot": unknown key (did you mean "port"?)'
    )


def test_unknown_key_without_close_match(tmp_path: Path) -> None:
    assert one_problem(tmp_path, "colour = 1\n").endswith('key "colour": unknown key')


def test_defaults_problems_name_the_defaults_table(tmp_path: Path) -> None:
    found = problems(tmp_path, '[defaults]\nkeep = "yes"\n' + MINIMAL)
    assert found == [
        f'{tmp_path}/config.toml: [defaults]: key "keep": expected a boolean, got "yes"'
    ]


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
[defaults]
kep = true
timeout = 0

[accounts.home]
host = "pop.example.org"
prot = 995
tls = "maybe"

[accounts.work]
user = "bob"
deliver = "mda:true"
port = 70000

[acounts.x]
host = "h"
""",
    )
    with pytest.raises(ConfigError) as info:
        load_config(path)
    p = str(path)
    assert info.value.problems == [
        f'{p}: [acounts]: unknown table (did you mean "accounts"?)',
        f'{p}: [defaults]: key "kep": unknown key (did you mean "keep"?)',
        f'{p}: [defaults]: key "timeout": must be a number greater than 0, got 0',
        f'{p}: account "home": key "prot": unknown key (did you mean "port"?)',
        f'{p}: account "home": key "tls": must be one of "implicit", "starttls", "off"; '
        'got "maybe"',
        f'{p}: account "home": key "user": missing; it is required',
        f'{p}: account "home": key "deliver": missing; it is required',
        f'{p}: account "work": key "port": must be between 1 and 65535, got 70000',
        f'{p}: account "work": key "host": missing; it is required',
    ]
    assert str(info.value) == "\n".join(info.value.problems)


def test_invalid_default_is_reported_once_not_per_account(tmp_path: Path) -> None:
    text = '[defaults]\nuser = ""\n' + "".join(
        f'[accounts.{n}]\nhost = "h"\ndeliver = "mda:true"\n' for n in ("a", "b")
    )
    assert problems(tmp_path, text) == [
        f'{tmp_path}/config.toml: [defaults]: key "user": must not be empty'
    ]


def test_required_key_from_defaults_counts(tmp_path: Path) -> None:
    text = '[defaults]\nhost = "h"\n[accounts.a]\nuser = "u"\ndeliver = "mda:true"\n'
    assert load(tmp_path, text).accounts["a"].host == "h"


def test_account_key_at_top_level(tmp_path: Path) -> None:
    found = problems(tmp_path, "keep = true\n" + MINIMAL)
    assert found == [
        f'{tmp_path}/config.toml: key "keep": not in a table; '
        "account keys go in [defaults] or [accounts.NAME]"
    ]


def test_unknown_top_level_key(tmp_path: Path) -> None:
    found = problems(tmp_path, "verbose = true\n" + MINIMAL)
    assert found == [f'{tmp_path}/config.toml: key "verbose": unknown top-level key']


def test_no_accounts(tmp_path: Path) -> None:
    for text in ("", "[defaults]\nkeep = true\n", "[accounts]\n"):
        found = problems(tmp_path, text)
        assert found == [
            f"{tmp_path}/config.toml: no accounts defined; add an [accounts.NAME] table"
        ]


def test_accounts_and_defaults_must_be_tables(tmp_path: Path) -> None:
    found = problems(tmp_path, 'defaults = 1\naccounts = "home"\n')
    assert found == [
        f'{tmp_path}/config.toml: "defaults" must be a table, got 1',
        f'{tmp_path}/config.toml: "accounts" must be a table, got "home"',
    ]


def test_account_must_be_a_table(tmp_path: Path) -> None:
    found = problems(tmp_path, "[accounts]\nhome = 1\n")
    assert found == [f'{tmp_path}/config.toml: account "home": must be a table, got 1']


def test_invalid_account_name(tmp_path: Path) -> None:
    found = problems(tmp_path, MINIMAL.replace("[accounts.home]", '[accounts."my home"]'))
    assert found == [
        f'{tmp_path}/config.toml: account "my home": invalid name; '
        'use letters, digits, ".", "_" and "-"'
    ]


def test_nested_table_in_account_is_an_unknown_key(tmp_path: Path) -> None:
    line = one_problem(tmp_path, "[accounts.home.extra]\na = 1\n")
    assert line.endswith('account "home": key "extra": unknown key')


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.toml"
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.problems == [
        f"{path}: no such file; create it (see fetchpop-config(5)) or run `fetchpop init`"
    ]


def test_unreadable_path(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path)  # a directory


def test_toml_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    found = problems(tmp_path, MINIMAL + "keep = \n")
    assert len(found) == 1
    assert found[0].startswith(f"{tmp_path}/config.toml: line 6, column 8: invalid TOML: ")


def test_invalid_utf8_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_bytes(MINIMAL.encode() + b"# caf\xe9\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.problems == [f"{path}: line 6: not valid UTF-8"]


# -- the password key and the file's permissions --------------------------------


def test_password_accepted_in_private_file(tmp_path: Path) -> None:
    account = load(tmp_path, MINIMAL + 'password = "hunter2"\n', mode=0o600).accounts["home"]
    assert account.password == "hunter2"


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o620, 0o604, 0o660])
def test_password_refused_when_others_can_read_or_write(tmp_path: Path, mode: int) -> None:
    path = write(tmp_path, MINIMAL + 'password = "hunter2"\n', mode)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.problems == [
        f'{path}: account "home": key "password": the file is readable by others; '
        f"chmod 600 {path} or use password_command"
    ]
    assert "hunter2" not in str(info.value)


def test_readable_file_without_password_is_fine(tmp_path: Path) -> None:
    assert load(tmp_path, MINIMAL, mode=0o644).accounts["home"].password is None


def test_password_in_defaults_of_readable_file_is_reported_once(tmp_path: Path) -> None:
    text = '[defaults]\npassword = "x"\n' + MINIMAL + MINIMAL.replace("home", "work")
    found = problems(tmp_path, text, mode=0o644)
    assert len(found) == 1
    assert found[0].startswith(f'{tmp_path}/config.toml: [defaults]: key "password": ')


def test_password_not_in_repr(tmp_path: Path) -> None:
    account = load(tmp_path, MINIMAL + 'password = "hunter2"\n').accounts["home"]
    assert "hunter2" not in repr(account)
    assert "hunter2" not in repr(load(tmp_path, MINIMAL + 'password = "hunter2"\n'))


# -- find_config_path ----------------------------------------------------------


def test_find_config_path_order(tmp_path: Path) -> None:
    env = {"FETCHPOP_CONFIG": "/env/config.toml", "XDG_CONFIG_HOME": str(tmp_path / "xdg")}
    assert find_config_path("/explicit.toml", env) == Path("/explicit.toml")
    assert find_config_path(None, env) == Path("/env/config.toml")
    del env["FETCHPOP_CONFIG"]
    assert find_config_path(None, env) == tmp_path / "xdg" / "fetchpop" / "config.toml"


def test_find_config_path_empty_env_var_is_unset(tmp_path: Path) -> None:
    env = {"FETCHPOP_CONFIG": "", "XDG_CONFIG_HOME": str(tmp_path)}
    assert find_config_path(None, env) == tmp_path / "fetchpop" / "config.toml"


@pytest.mark.skipif(sys.platform in ("win32", "darwin"), reason="XDG platforms only")
def test_find_config_path_default_is_home_dot_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
    got = find_config_path(None, {"HOME": str(tmp_path)})
    assert got == tmp_path / ".config" / "fetchpop" / "config.toml"


@pytest.mark.skipif(sys.platform in ("win32", "darwin"), reason="XDG platforms only")
def test_find_config_path_honours_xdg_in_os_environ(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "cfg"))
    got = find_config_path(None, os.environ)
    assert got == tmp_path / "cfg" / "fetchpop" / "config.toml"


@pytest.mark.skipif(sys.platform != "linux", reason="the platformdirs shortcut is Linux's")
@pytest.mark.parametrize(
    ("xdg", "home"),
    [
        (None, "/home/alice"),
        ("/srv/xdg", "/home/alice"),
        ("relative/xdg", "/home/alice"),  # platformdirs decides (its versions differ)
        (" /srv/padded", "/home/alice"),
        ("", "/home/alice"),
        (None, "relative-home"),  # platformdirs decides
    ],
)
@pytest.mark.parametrize("kind", ["config", "state"])
def test_user_dir_is_what_platformdirs_says(
    kind: Literal["config", "state"],
    xdg: str | None,
    home: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import platformdirs

    var = "XDG_CONFIG_HOME" if kind == "config" else "XDG_STATE_HOME"
    monkeypatch.setenv("HOME", home)
    if xdg is None:
        monkeypatch.delenv(var, raising=False)
    else:
        monkeypatch.setenv(var, xdg)
    expected = (
        platformdirs.user_config_path("fetchpop")
        if kind == "config"
        else platformdirs.user_state_path("fetchpop")
    )
    assert user_dir(kind, os.environ) == expected


# -- Config.select and the public view ----------------------------------------


def three(tmp_path: Path) -> Config:
    return load(
        tmp_path,
        "".join(
            f'[accounts.{n}]\nhost = "h"\nuser = "u"\ndeliver = "mda:true"\n'
            for n in ("a", "b", "c")
        ),
    )


def test_select(tmp_path: Path) -> None:
    config = three(tmp_path)
    assert [a.name for a in config.select([])] == ["a", "b", "c"]
    assert [a.name for a in config.select(["c", "a"])] == ["c", "a"]
    assert [a.name for a in config.select(["b", "b"])] == ["b"]


def test_select_unknown_lists_known(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        three(tmp_path).select(["a", "x", "y"])
    assert info.value.problems == [
        'unknown account "x" (known: a, b, c)',
        'unknown account "y" (known: a, b, c)',
    ]


def test_to_public_dict_hides_password_and_is_json(tmp_path: Path) -> None:
    (tmp_path / "ca.pem").write_text("x")
    account = one_account(
        tmp_path,
        f'password = "hunter2"\nca_file = "{tmp_path}/ca.pem"\n'
        f'tls_fingerprint = "sha256:{FP}"\npassword_command = "pass show x"\n',
    )
    public = account.to_public_dict()
    assert list(public) == ["name", *ACCOUNT_KEYS]
    assert public["password"] == "***"
    assert public["password_command"] == "pass show x"
    assert public["ca_file"] == f"{tmp_path}/ca.pem"
    assert public["tls_fingerprint"] == "sha256:abcd" + "0" * 60
    assert public["deliver"] == "mda:/usr/bin/true"
    assert public["port"] == 995
    text = json.dumps(public)
    assert "hunter2" not in text
    assert one_account(tmp_path, "").to_public_dict()["password"] is None


def test_to_public_dict_deliver_round_trips(tmp_path: Path) -> None:
    def with_deliver(value: object) -> Account:
        text = MINIMAL.replace('"mda:/usr/bin/true"', json.dumps(value))
        return load(tmp_path, text).accounts["home"]

    for value in ("mda:procmail -d 'a b'", f"maildir:{tmp_path}/Mail", f"mbox:{tmp_path}/mbox"):
        account = with_deliver(value)
        assert with_deliver(account.to_public_dict()["deliver"]).deliver == account.deliver


# -- the key table -------------------------------------------------------------


def test_key_table_matches_account_fields() -> None:
    # (password_argv is made from password_command, not a key of its own.)
    fields = [f.name for f in dataclasses.fields(Account) if f.init]
    assert sorted(fields) == sorted(["name", *ACCOUNT_KEYS])
    for name, spec in ACCOUNT_KEYS.items():
        assert spec.name == name
        assert spec.doc and "\n" not in spec.doc
        assert spec.type_doc


def test_key_table_required_keys() -> None:
    assert sorted(k for k, s in ACCOUNT_KEYS.items() if s.required) == ["deliver", "host", "user"]


def test_password_field_hidden_from_repr() -> None:
    field = {f.name: f for f in dataclasses.fields(Account)}["password"]
    assert field.repr is False


def test_config_does_not_import_keyring() -> None:
    code = "import sys, fetchpop.config; assert 'keyring' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
