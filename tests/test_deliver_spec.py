"""The ``deliver`` config value and open_target."""

from __future__ import annotations

from pathlib import Path

import pytest

from fetchpop.deliver import DeliverySpec, open_target, parse_deliver
from fetchpop.deliver.maildir import MaildirTarget
from fetchpop.deliver.mbox import MboxTarget
from fetchpop.deliver.mda import MdaTarget

FORMS = (
    "maildir:DIR, mbox:FILE, mda:COMMAND, lmtp:SOCKET, lmtp:HOST:PORT, smtp:HOST[:PORT] "
    "or imap://USER@HOST/MAILBOX"
)


@pytest.fixture(autouse=True)
def home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("MAILROOT", "/srv/mail")
    monkeypatch.delenv("FETCHPOP_UNSET", raising=False)
    return tmp_path / "home"


@pytest.mark.parametrize(
    ("value", "spec"),
    [
        ("maildir:/var/mail/alice", DeliverySpec("maildir", path=Path("/var/mail/alice"))),
        ("maildir:~/Mail/home", DeliverySpec("maildir", path=Path("HOME/Mail/home"))),
        ("mbox:$MAILROOT/alice", DeliverySpec("mbox", path=Path("/srv/mail/alice"))),
        ("mbox:${MAILROOT}x/a b", DeliverySpec("mbox", path=Path("/srv/mailx/a b"))),
        (" Maildir : ~ ", DeliverySpec("maildir", path=Path("HOME"))),
        ("mda:procmail -d alice", DeliverySpec("mda", command=("procmail", "-d", "alice"))),
        (
            "mda:~/bin/deliver --to 'a b' \"$HOME\" x\\ y",
            DeliverySpec("mda", command=("HOME/bin/deliver", "--to", "a b", "$HOME", "x y")),
        ),
    ],
)
def test_valid_values(value: str, spec: DeliverySpec, home: Path) -> None:
    if spec.path is not None:
        spec = DeliverySpec(spec.kind, path=Path(str(spec.path).replace("HOME", str(home))))
    if spec.command is not None:
        command = tuple(word.replace("HOME/", f"{home}/") for word in spec.command)
        spec = DeliverySpec("mda", command=command)
    assert parse_deliver(value) == spec


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("~/Mail", "'~/Mail' is not one of " + FORMS),
        ("imap:x", "'imap:x' is not one of " + FORMS),
        ("maildir:", "'maildir:' lacks the path after maildir:"),
        ("mda:  ", "'mda:  ' lacks the command after mda:"),
        ("maildir:Mail", "path 'Mail' must be absolute (or start with ~ or $VAR)"),
        ("mbox:$FETCHPOP_UNSET/x", "environment variable $FETCHPOP_UNSET in '$FETCHPOP_UNSET/x' "),
        ("mda:procmail 'oops", 'mda command "procmail \'oops": No closing quotation'),
        ("mda:''", "mda command is empty"),
    ],
)
def test_bad_values_say_what_is_wrong(value: str, message: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_deliver(value)
    assert str(info.value).startswith(message)


def test_an_explicit_environment_is_used_instead_of_os_environ() -> None:
    env = {"HOME": "/home/zed", "BOX": "inbox"}
    assert parse_deliver("mbox:~/$BOX", env) == DeliverySpec("mbox", path=Path("/home/zed/inbox"))
    assert parse_deliver("mda:~/bin/mda ~", env).command == ("/home/zed/bin/mda", "/home/zed")
    with pytest.raises(ValueError, match="environment variable \\$MAILROOT"):
        parse_deliver("mbox:$MAILROOT/x", env)
    with pytest.raises(ValueError, match="HOME is not set"):
        parse_deliver("maildir:~/Mail", {})


def test_an_empty_home_is_an_error_not_the_root() -> None:
    # Was maildir:/Mail and an mda word /bin/x: ~ is $HOME, and "" is no home.
    with pytest.raises(ValueError, match="cannot expand ~ in '~/Mail': HOME is empty"):
        parse_deliver("maildir:~/Mail", {"HOME": ""})
    with pytest.raises(ValueError, match="HOME is empty"):
        parse_deliver("mda:~/bin/x", {"HOME": ""})
    assert parse_deliver("maildir:~/Mail", {"HOME": "/"}).path == Path("/Mail")


def test_open_target_kinds(tmp_path: Path) -> None:
    maildir = open_target(parse_deliver(f"maildir:{tmp_path}/Mail"))
    mbox = open_target(parse_deliver(f"mbox:{tmp_path}/mbox"), mbox_lock_timeout=1.0)
    mda = open_target(parse_deliver("mda:cat"), mda_timeout=5.0)
    assert isinstance(maildir, MaildirTarget)
    assert isinstance(mbox, MboxTarget)
    assert isinstance(mda, MdaTarget) and mda.timeout == 5.0
    assert (tmp_path / "Mail" / "new").is_dir()
    for target in (maildir, mbox, mda):
        target.close()


def test_open_target_refuses_an_incomplete_spec() -> None:
    with pytest.raises(ValueError):
        open_target(DeliverySpec("mbox"))
    with pytest.raises(ValueError):
        open_target(DeliverySpec("mda", command=()))
