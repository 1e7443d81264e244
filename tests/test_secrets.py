"""fetchpop.secrets: password sources in order, and no secret in any error."""

from __future__ import annotations

import dataclasses
import shlex
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import keyring
import keyring.backend
import keyring.backends.fail
import keyring.errors
import pytest

from fetchpop.config import Account, load_config
from fetchpop.errors import AuthError, ExitCode, UnavailableError
from fetchpop.secrets import (
    KEYRING_SERVICE,
    delete_password,
    get_password,
    keyring_username,
    set_password,
)


class MemoryKeyring(keyring.backend.KeyringBackend):
    """A keyring backend that keeps passwords in a dict, for tests."""

    priority = 1

    def __init__(self) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.store: dict[tuple[str, str], str] = {}

    def get_password(self, service: str, username: str) -> str | None:
        return self.store.get((service, username))

    def set_password(self, service: str, username: str, password: str) -> None:
        self.store[(service, username)] = password

    def delete_password(self, service: str, username: str) -> None:
        if self.store.pop((service, username), None) is None:
            raise keyring.errors.PasswordDeleteError("not found")


class BrokenKeyring(MemoryKeyring):
    """A backend whose every call fails, like a locked or crashed secret service."""

    def get_password(self, service: str, username: str) -> str | None:
        raise keyring.errors.KeyringLocked("the collection is locked")

    def set_password(self, service: str, username: str, password: str) -> None:
        raise keyring.errors.PasswordSetError(f"D-Bus refused {password!r}")


@pytest.fixture
def use_keyring() -> Iterator[Any]:
    """Install a keyring backend for one test; the previous one comes back after."""
    previous = keyring.get_keyring()

    def install(backend: keyring.backend.KeyringBackend) -> keyring.backend.KeyringBackend:
        keyring.set_keyring(backend)
        return backend

    yield install
    keyring.set_keyring(previous)


@pytest.fixture
def memory(use_keyring: Any) -> MemoryKeyring:
    backend: MemoryKeyring = use_keyring(MemoryKeyring())
    return backend


@pytest.fixture
def no_keyring(use_keyring: Any) -> None:
    use_keyring(keyring.backends.fail.Keyring())  # type: ignore[no-untyped-call]


def make_account(tmp_path: Path, extra: str = "") -> Account:
    path = tmp_path / "config.toml"
    path.write_text(
        '[accounts.home]\nhost = "pop.example.org"\nuser = "alice"\n'
        'deliver = "mda:true"\ntimeout = 5\n' + extra
    )
    path.chmod(0o600)
    return load_config(path).accounts["home"]


def command_account(tmp_path: Path, script: str) -> Account:
    """An account whose password_command is ``sh -c SCRIPT``."""
    return dataclasses.replace(
        make_account(tmp_path), password_command=shlex.join(["sh", "-c", script])
    )


def never_prompt(text: str) -> str:
    raise AssertionError(f"prompted: {text}")


# -- password_command ----------------------------------------------------------


def test_command_first_line_is_the_password(tmp_path: Path, memory: MemoryKeyring) -> None:
    memory.store[("fetchpop", "alice@pop.example.org")] = "from-keyring"
    account = command_account(tmp_path, "printf 'pa ss\\nsecond line\\n'")
    assert get_password(account, prompt=never_prompt) == "pa ss"


@pytest.mark.parametrize(
    ("script", "secret"),
    [
        ("printf secret", "secret"),
        ("printf 'secret\\r\\n'", "secret"),
        ("printf ' spaced \\n'", " spaced "),
        ("printf 'caf\\303\\251\\n'", "caf\u00e9"),
    ],
)
def test_command_output_forms(tmp_path: Path, script: str, secret: str) -> None:
    assert get_password(command_account(tmp_path, script), prompt=None) == secret


@pytest.mark.parametrize(
    "script", ["printf 'a\\rDELE 1'", "printf 'a\\000b'", "printf 'a\\033[2J'"]
)
def test_a_password_with_a_control_character_is_refused_before_it_is_sent(
    tmp_path: Path, script: str
) -> None:
    """CR would end PASS early and start another command (the class of
    CVE-2025-15367 in Python's poplib): refused, naming where it came from."""
    from fetchpop.errors import ConfigError

    with pytest.raises(ConfigError) as info:
        get_password(command_account(tmp_path, script), prompt=None)
    assert str(info.value) == (
        'account "home": the password from password_command contains a control '
        "character; refusing to send it"
    )
    assert info.value.exit_code == ExitCode.CONFIG


def test_a_prompted_password_with_a_control_character_is_refused(tmp_path: Path) -> None:
    from fetchpop.errors import ConfigError

    with pytest.raises(ConfigError, match="password from the prompt contains a control"):
        get_password(make_account(tmp_path), prompt=lambda _: "x\ny")


def test_command_without_shell(tmp_path: Path) -> None:
    account = make_account(tmp_path, "password_command = \"printf '%s' 'a;b' '$HOME'\"\n")
    assert get_password(account) == "a;b$HOME"


def test_command_failure_shows_exit_and_stderr_never_stdout(tmp_path: Path) -> None:
    account = command_account(
        tmp_path, "echo leaked-stdout; echo first >&2; printf 'bad \\033[31m key\\n' >&2; exit 3"
    )
    with pytest.raises(AuthError) as info:
        get_password(account)
    message = str(info.value)
    assert info.value.exit_code == ExitCode.NOPERM
    assert message.startswith("password_command failed (exit 3): ")
    assert "first" in message and "bad ?[31m key" in message
    assert "leaked-stdout" not in message
    assert "\033" not in message


def test_command_failure_stderr_tail_is_bounded(tmp_path: Path) -> None:
    account = command_account(tmp_path, "i=0; while [ $i -lt 500 ]; do echo line$i >&2; "
                              "i=$((i+1)); done; exit 1")  # fmt: skip
    with pytest.raises(AuthError) as info:
        get_password(account)
    message = str(info.value)
    assert "line499" in message and "line0 " not in message
    assert len(message) < 300


def test_command_killed_by_signal(tmp_path: Path) -> None:
    with pytest.raises(AuthError, match=r"killed by signal 9"):
        get_password(command_account(tmp_path, "kill -9 $$"))


@pytest.mark.parametrize("script", ["true", "printf '\\nsecret\\n'", "printf '\\r\\n'"])
def test_command_empty_output(tmp_path: Path, script: str) -> None:
    with pytest.raises(AuthError, match="printed no password"):
        get_password(command_account(tmp_path, script), prompt=never_prompt)


def test_command_not_found(tmp_path: Path) -> None:
    account = make_account(tmp_path, 'password_command = "/nonexistent/fetchpop-pw x"\n')
    with pytest.raises(AuthError, match="/nonexistent/fetchpop-pw: command not found"):
        get_password(account)


def test_command_not_utf8(tmp_path: Path) -> None:
    with pytest.raises(AuthError, match="not UTF-8"):
        get_password(command_account(tmp_path, "printf 'x\\377y'"))


def test_command_timeout_uses_account_timeout(tmp_path: Path) -> None:
    account = make_account(tmp_path, 'password_command = "sleep 30"\n')
    account = dataclasses.replace(account, timeout=0.2)
    with pytest.raises(AuthError, match=r"timed out after 0.2 s \(sleep\)"):
        get_password(account)


def test_command_is_run_without_shell_stdin_or_secret_in_argv(tmp_path: Path) -> None:
    calls: list[tuple[Any, dict[str, Any]]] = []

    def run(argv: Any, **kwargs: Any) -> subprocess.CompletedProcess[bytes]:
        calls.append((argv, kwargs))
        return subprocess.CompletedProcess(argv, 0, b"pw\n", b"")

    account = make_account(tmp_path, "password_command = \"pass show 'mail/home'\"\n")
    assert get_password(account, run=run) == "pw"
    [(argv, kwargs)] = calls
    assert argv == ["pass", "show", "mail/home"]
    assert kwargs["stdin"] == subprocess.DEVNULL
    assert kwargs["timeout"] == 5.0
    assert kwargs.get("shell", False) is False
    assert kwargs["capture_output"] is True


# -- the other sources, in order ----------------------------------------------


def test_config_password_before_keyring(tmp_path: Path, memory: MemoryKeyring) -> None:
    memory.store[("fetchpop", "alice@pop.example.org")] = "from-keyring"
    account = make_account(tmp_path, 'password = "from-file"\n')
    assert get_password(account, prompt=never_prompt) == "from-file"


def test_keyring_entry(tmp_path: Path, memory: MemoryKeyring) -> None:
    memory.store[(KEYRING_SERVICE, "alice@pop.example.org")] = "from-keyring"
    assert KEYRING_SERVICE == "fetchpop"
    account = make_account(tmp_path)
    assert keyring_username(account) == "alice@pop.example.org"
    assert get_password(account, prompt=never_prompt) == "from-keyring"


def test_prompt_when_keyring_has_nothing(tmp_path: Path, memory: MemoryKeyring) -> None:
    asked: list[str] = []

    def prompt(text: str) -> str:
        asked.append(text)
        return "typed"

    assert get_password(make_account(tmp_path), prompt=prompt) == "typed"
    assert asked == ["Password for alice@pop.example.org: "]


def test_no_source_without_prompt(tmp_path: Path, memory: MemoryKeyring) -> None:
    with pytest.raises(AuthError) as info:
        get_password(make_account(tmp_path), prompt=None)
    assert str(info.value) == (
        "no password available for alice@pop.example.org: set password_command, store one "
        "with `fetchpop password set home`, or run on a terminal"
    )
    assert info.value.exit_code == ExitCode.NOPERM


def test_no_keyring_backend_is_mentioned(tmp_path: Path, no_keyring: None) -> None:
    with pytest.raises(AuthError, match="no keyring backend is available"):
        get_password(make_account(tmp_path))


def test_broken_keyring_falls_through_to_prompt(tmp_path: Path, use_keyring: Any) -> None:
    use_keyring(BrokenKeyring())
    assert get_password(make_account(tmp_path), prompt=lambda _: "typed") == "typed"
    with pytest.raises(AuthError, match="the collection is locked"):
        get_password(make_account(tmp_path))


@pytest.mark.parametrize("answer", ["", EOFError()])
def test_empty_prompt_answer(tmp_path: Path, memory: MemoryKeyring, answer: Any) -> None:
    def prompt(_: str) -> str:
        if isinstance(answer, BaseException):
            raise answer
        return str(answer)

    with pytest.raises(AuthError, match=r"no password entered for alice@pop\.example\.org"):
        get_password(make_account(tmp_path), prompt=prompt)


# -- set and delete -------------------------------------------------------------


def test_set_and_delete(tmp_path: Path, memory: MemoryKeyring) -> None:
    account = make_account(tmp_path)
    set_password(account, "s3cret")
    assert memory.store == {("fetchpop", "alice@pop.example.org"): "s3cret"}
    assert get_password(account) == "s3cret"
    assert delete_password(account) is True
    assert memory.store == {}
    assert delete_password(account) is False


def test_set_without_keyring_says_what_to_do(tmp_path: Path, no_keyring: None) -> None:
    with pytest.raises(UnavailableError) as info:
        set_password(make_account(tmp_path), "s3cret")
    message = str(info.value)
    assert info.value.exit_code == ExitCode.UNAVAILABLE
    assert "password_command" in message and "pass show" in message
    assert "secret-tool" in message and "chmod 600" in message
    assert "s3cret" not in message


def test_delete_without_keyring(tmp_path: Path, no_keyring: None) -> None:
    with pytest.raises(UnavailableError, match="no keyring backend"):
        delete_password(make_account(tmp_path))


def test_set_failure_never_shows_the_secret(tmp_path: Path, use_keyring: Any) -> None:
    use_keyring(BrokenKeyring())
    with pytest.raises(UnavailableError) as info:
        set_password(make_account(tmp_path), "s3cret")
    assert "D-Bus refused" in str(info.value)
    assert "s3cret" not in str(info.value)
    assert info.value.__cause__ is None and info.value.__suppress_context__


def test_empty_chainer_counts_as_no_keyring(tmp_path: Path, use_keyring: Any) -> None:
    from keyring.backends import chainer

    class Empty(chainer.ChainerBackend):
        @property
        def backends(self) -> list[Any]:
            return []

    use_keyring(Empty())  # type: ignore[no-untyped-call]
    with pytest.raises(UnavailableError):
        set_password(make_account(tmp_path), "x")


# -- keyring stays unloaded when not needed ------------------------------------


def test_keyring_not_imported_for_password_command(tmp_path: Path) -> None:
    account_file = tmp_path / "config.toml"
    make_account(tmp_path, 'password_command = "printf pw"\n')
    code = (
        "import sys\n"
        "from pathlib import Path\n"
        "from fetchpop.config import load_config\n"
        "from fetchpop.secrets import get_password\n"
        f"account = load_config(Path({str(account_file)!r})).accounts['home']\n"
        "assert get_password(account) == 'pw'\n"
        "assert 'keyring' not in sys.modules, 'keyring was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
