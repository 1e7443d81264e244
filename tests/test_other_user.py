"""Delivery next to another local user's files, with fetchpop not running as root.

The rules of SECURITY (fetchpop(1), issue 15 item 6) that only mean something
with two users: an mbox owned by another user is refused (unless fetchpop
runs as root), and so is a symbolic link in a directory others can write to,
which another user could point at their victim's file.

The test creates two users and a group with ``useradd``/``groupadd`` and
removes them afterwards; it is skipped when not run as root or without those
tools. The victim's files are mode 0666 on purpose: the kernel would let
fetchpop write them, so only fetchpop's own checks keep them untouched.

fetchpop runs as the other user through a small launcher: this interpreter
lives under /root (mode 0700), which that user cannot enter, so the launcher
starts as root, imports what fetchpop needs, and then drops every privilege
(setgroups, setgid, setuid: real and effective ids alike) before running the
command-line tool, exactly as ``python -m fetchpop`` would.
"""

from __future__ import annotations

import contextlib
import grp
import os
import pwd
import secrets
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from fakepop import FakePOP3
from runner import Home, account_toml

ROOT = Path(__file__).resolve().parent.parent
MESSAGE = b"From: a@example.org\r\nSubject: hello\r\n\r\nbody\r\n"
VICTIM_MBOX = b"From victim@example.org Thu Jan  1 00:00:00 2026\nSubject: mine\n\nmine\n"

LAUNCHER = """\
import os, pkgutil, importlib, runpy, sys
import fetchpop
def modules(package):
    # walk_packages without onerror stops at a package that fails to import.
    prefix = package.__name__ + "."
    return pkgutil.walk_packages(package.__path__, prefix, onerror=lambda name: None)
for mod in modules(fetchpop):
    if mod.name == "fetchpop.__main__":  # which would run the command, as root
        continue
    try:  # a module the command does not use may fail; one it uses fails it
        importlib.import_module(mod.name)
    except Exception:
        pass
for name in {extra!r}:
    try:
        importlib.import_module(name)
    except ImportError:
        pass
os.setgroups([{group}])
os.setgid({gid})
os.setuid({uid})
assert os.getuid() == os.geteuid() == {uid} and os.getegid() == {gid}
sys.argv = ["fetchpop", *sys.argv[1:]]
runpy.run_module("fetchpop", run_name="__main__", alter_sys=True)
"""
# What a sync imports late (lazily, or in the standard library's own modules).
EXTRA_MODULES = [
    "encodings.idna",
    "encodings.latin_1",
    "encodings.ascii",
    "encodings.utf_8",
    "email.parser",
    "email.policy",
    "email.feedparser",
    "json",
    "fcntl",
    "sqlite3",
    "ssl",
    "socket",
    "selectors",
    "hashlib",
    "hmac",
    "base64",
    "platformdirs",
    "platformdirs.unix",
    "click",
    "uuid",
    "concurrent.futures",
    "concurrent.futures.thread",
    "unicodedata",
    "locale",
    "gettext",
    "shlex",
    "tomllib",
]

pytestmark = pytest.mark.timeout(120)


@dataclass
class User:
    name: str
    uid: int
    gid: int


@dataclass
class Users:
    base: Path  # 0755, root's
    runner: User  # runs fetchpop
    victim: User  # owns the files fetchpop must not touch
    group: int  # both are in it: the group of the shared spool directory


def _run(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True, text=True)


@pytest.fixture(scope="module")
def users() -> Iterator[Users]:
    if os.geteuid() != 0:
        pytest.skip("needs root, to create a second and a third local user")
    tools = ("useradd", "userdel", "groupadd", "groupdel")
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        pytest.skip(f"needs {', '.join(missing)} to create local users")
    tag = secrets.token_hex(3)
    group_name, names = f"fpg{tag}", [f"fpr{tag}", f"fpv{tag}"]
    created: list[str] = []
    group_made = False
    base = Path(tempfile.mkdtemp(prefix="fetchpop-users-"))
    try:
        _run("groupadd", group_name)
        group_made = True
        for name in names:
            _run("useradd", "-M", "-N", "-G", group_name, "-s", "/usr/sbin/nologin", name)
            created.append(name)
        base.chmod(0o755)
        runner, victim = (User(n, pwd.getpwnam(n).pw_uid, pwd.getpwnam(n).pw_gid) for n in names)
        yield Users(base, runner, victim, grp.getgrnam(group_name).gr_gid)
    finally:
        for name in created:
            subprocess.run(["userdel", name], check=False, capture_output=True)
        if group_made:
            subprocess.run(["groupdel", group_name], check=False, capture_output=True)
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def place(users: Users) -> Iterator[Path]:
    """A fresh directory under the shared base, for one test."""
    path = Path(tempfile.mkdtemp(dir=users.base))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def owned(path: Path, user: User, mode: int) -> Path:
    os.chown(path, user.uid, user.gid)
    path.chmod(mode)
    return path


def directory(path: Path, user: User, mode: int) -> Path:
    path.mkdir()
    return owned(path, user, mode)


def snapshot(path: Path) -> tuple[bytes, int, int]:
    info = os.stat(path, follow_symlinks=False)
    return path.read_bytes(), stat.S_IMODE(info.st_mode), info.st_uid


def sync_as(
    users: Users, place: Path, server: FakePOP3, deliver: str
) -> subprocess.CompletedProcess[str]:
    """``fetchpop sync`` as the runner, with a home of its own in *place*."""
    runner = users.runner
    home = directory(place / "home", runner, 0o700)
    config_dir = home / "config" / "fetchpop"
    config_dir.mkdir(parents=True)
    config = config_dir / "config.toml"
    config.write_text(
        account_toml(
            "acct",
            host=server.host,
            port=server.port,
            tls="off",
            user="alice",
            password="secret",
            deliver=deliver,
            timeout=10,
        )
    )
    config.chmod(0o600)
    for path in (home / "config", config_dir, config):
        os.chown(path, runner.uid, runner.gid)
    launcher = place / "launcher.py"
    launcher.write_text(
        LAUNCHER.format(extra=EXTRA_MODULES, group=users.group, gid=runner.gid, uid=runner.uid)
    )
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(home),
        "XDG_CONFIG_HOME": str(home / "config"),
        "XDG_STATE_HOME": str(home / "state"),
        "XDG_DATA_HOME": str(home / "data"),
        "XDG_CACHE_HOME": str(home / "cache"),
        "PYTHONPATH": str(ROOT),
        "PYTHON_KEYRING_BACKEND": "keyring.backends.fail.Keyring",
        "LANG": "C.UTF-8",
    }
    return subprocess.run(
        [sys.executable, str(launcher), "sync"],
        env=env,
        cwd=str(home),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_launcher_runs_fetchpop_as_the_other_user(users: Users, place: Path) -> None:
    """The harness itself: the runner delivers to an mbox of its own."""
    mail = directory(place / "mail", users.runner, 0o700)
    with FakePOP3([MESSAGE]) as server:
        result = sync_as(users, place, server, f"mbox:{mail / 'inbox'}")
    assert result.returncode == 0, result
    inbox = mail / "inbox"
    assert os.stat(inbox).st_uid == users.runner.uid
    assert b"Subject: hello" in inbox.read_bytes()


def test_an_mbox_owned_by_another_user_is_refused(users: Users, place: Path) -> None:
    """In a directory both may write to (like /var/mail with mode 1777), the
    victim's mbox, which the kernel would let us write, is left untouched."""
    shared = place / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    victim_file = shared / "victim"
    victim_file.write_bytes(VICTIM_MBOX)
    owned(victim_file, users.victim, 0o666)
    before = snapshot(victim_file)
    with FakePOP3([MESSAGE]) as server:
        result = sync_as(users, place, server, f"mbox:{victim_file}")
    assert result.returncode == 73, result
    assert result.stderr.splitlines()[-1:] == [
        f"fetchpop: acct: cannot write to mbox {victim_file}: owned by uid "
        f"{users.victim.uid}, not by you; refusing it"
    ], result
    assert snapshot(victim_file) == before
    assert not Path(f"{victim_file}.lock").exists()


def test_a_symlink_planted_in_a_group_writable_spool_is_refused(users: Users, place: Path) -> None:
    """The victim's file (mode 0666) behind a link that another member of the
    spool's group put where fetchpop's mbox should be."""
    victim_home = directory(place / "victim", users.victim, 0o755)
    target = victim_home / "mbox"
    target.write_bytes(VICTIM_MBOX)
    owned(target, users.victim, 0o666)
    spool = place / "spool"
    spool.mkdir()
    os.chown(spool, 0, users.group)
    spool.chmod(0o2775)
    link = spool / "runner"
    link.symlink_to(target)
    os.chown(link, users.victim.uid, users.victim.gid, follow_symlinks=False)
    before = snapshot(target)
    with FakePOP3([MESSAGE]) as server:
        result = sync_as(users, place, server, f"mbox:{link}")
    assert result.returncode == 73, result
    assert result.stderr.splitlines()[-1:] == [
        f"fetchpop: acct: cannot write to mbox {link}: a symbolic link in a directory "
        "others can write to; refusing it"
    ], result
    assert snapshot(target) == before
    assert link.is_symlink() and os.readlink(link) == str(target)
    with contextlib.suppress(FileNotFoundError):
        assert not Path(f"{link}.lock").exists()


def test_a_symlink_in_a_directory_only_you_can_write_is_followed(users: Users, place: Path) -> None:
    """The rule's other side: the runner's own link, in the runner's own
    directory, to the runner's own mbox, is delivered through."""
    mail = directory(place / "mail", users.runner, 0o700)
    target = mail / "inbox"
    target.write_bytes(VICTIM_MBOX)
    owned(target, users.runner, 0o600)
    link = mail / "link"
    link.symlink_to(target)
    os.chown(link, users.runner.uid, users.runner.gid, follow_symlinks=False)
    with FakePOP3([MESSAGE]) as server:
        result = sync_as(users, place, server, f"mbox:{link}")
    assert result.returncode == 0, result
    assert target.read_bytes().startswith(VICTIM_MBOX)
    assert b"Subject: hello" in target.read_bytes()


def test_as_root_an_mbox_owned_by_another_user_is_written(
    users: Users, place: Path, tmp_path: Path
) -> None:
    """ "Unless fetchpop runs as root": root delivering into a user's mbox (as a
    system-wide fetch job does) appends, and the file stays the user's."""
    victim_file = directory(place / "spool", users.victim, 0o755) / "victim"
    victim_file.write_bytes(VICTIM_MBOX)
    owned(victim_file, users.victim, 0o600)
    home = Home(tmp_path / "home")
    with FakePOP3([MESSAGE]) as server:
        home.write_config(
            account_toml(
                "acct",
                host=server.host,
                port=server.port,
                tls="off",
                user="alice",
                password="secret",
                deliver=f"mbox:{victim_file}",
                timeout=10,
            )
        )
        result = home.run("sync")
    assert result.code == 0, result
    data, mode, uid = snapshot(victim_file)
    assert data.startswith(VICTIM_MBOX) and b"Subject: hello" in data
    assert (mode, uid) == (0o600, users.victim.uid)


def test_a_maildir_owned_by_another_user_is_refused(users: Users, place: Path) -> None:
    """The victim's Maildir (its directories mode 0777, so the kernel would let
    us write) in a shared directory: nothing is made or written in it."""
    shared = place / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    victim = directory(shared / "Maildir", users.victim, 0o777)
    for sub in ("cur", "new", "tmp"):
        directory(victim / sub, users.victim, 0o777)
    with FakePOP3([MESSAGE]) as server:
        result = sync_as(users, place, server, f"maildir:{victim}")
    assert result.returncode == 73, result
    assert result.stderr.splitlines()[-1:] == [
        f"fetchpop: acct: cannot write to Maildir {victim}: {victim} is owned by uid "
        f"{users.victim.uid}, not by you; refusing it"
    ], result
    assert all(list((victim / sub).iterdir()) == [] for sub in ("cur", "new", "tmp"))
