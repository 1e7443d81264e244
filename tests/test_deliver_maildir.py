"""Maildir delivery: real directories, real files."""

from __future__ import annotations

import os
import re
import socket
import stat
from pathlib import Path

import pytest
from readonly import READ_ONLY, deliver_read_only

from fetchpop.deliver import DeliverySpec, open_target
from fetchpop.deliver.maildir import MaildirTarget, unique_name
from fetchpop.errors import DeliveryError, LocalIOError, LocalProtocolError

MESSAGE = b"Return-Path: <a@example.org>\nSubject: hi\n\nFrom here\n>From there\n.\nend"


def entries(maildir: Path) -> dict[str, list[str]]:
    return {sub: sorted(os.listdir(maildir / sub)) for sub in ("cur", "new", "tmp")}


def deliver(target: MaildirTarget, message: bytes, chunks: list[bytes] | None = None) -> str:
    delivery = target.begin("uidl-1")
    for chunk in chunks if chunks is not None else [message]:
        delivery.write(chunk)
    delivery.finish()
    target.flush()
    return delivery.intent


def test_message_lands_in_new_byte_for_byte(tmp_path: Path) -> None:
    target = MaildirTarget(tmp_path)
    intent = deliver(target, MESSAGE)
    assert entries(tmp_path) == {"cur": [], "new": [f"{intent},S={len(MESSAGE)}"], "tmp": []}
    path = tmp_path / "new" / f"{intent},S={len(MESSAGE)}"
    assert path.read_bytes() == MESSAGE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    target.close()


@pytest.mark.parametrize("split", range(len(MESSAGE) + 1))
def test_chunking_does_not_change_the_bytes(tmp_path: Path, split: int) -> None:
    target = MaildirTarget(tmp_path)
    deliver(target, MESSAGE, [MESSAGE[:split], MESSAGE[split:]])
    (name,) = os.listdir(tmp_path / "new")
    assert (tmp_path / "new" / name).read_bytes() == MESSAGE


def test_one_byte_chunks_and_empty_message(tmp_path: Path) -> None:
    target = MaildirTarget(tmp_path)
    one = deliver(target, MESSAGE, [MESSAGE[i : i + 1] for i in range(len(MESSAGE))])
    empty = deliver(target, b"")
    assert (tmp_path / "new" / f"{one},S={len(MESSAGE)}").read_bytes() == MESSAGE
    assert (tmp_path / "new" / f"{empty},S=0").read_bytes() == b""


def test_missing_maildir_and_parents_are_created_private(tmp_path: Path) -> None:
    maildir = tmp_path / "a" / "b" / "Mail"
    MaildirTarget(maildir)
    for directory in (tmp_path / "a", tmp_path / "a" / "b", maildir, maildir / "new"):
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700, directory
    assert entries(maildir) == {"cur": [], "new": [], "tmp": []}


def test_existing_maildir_is_used_as_is(tmp_path: Path) -> None:
    for sub in ("cur", "new", "tmp"):
        (tmp_path / sub).mkdir(mode=0o755)
    (tmp_path / "cur" / "old:2,S").write_bytes(b"old")
    deliver(MaildirTarget(tmp_path), MESSAGE)
    assert stat.S_IMODE((tmp_path / "new").stat().st_mode) == 0o755
    assert (tmp_path / "cur" / "old:2,S").read_bytes() == b"old"


def test_unique_names_follow_the_convention() -> None:
    names = [unique_name() for _ in range(1000)]
    assert len(set(names)) == len(names)
    pattern = re.compile(rf"\d+\.M\d{{1,6}}P{os.getpid()}Q\d+\.[^/:]+")
    assert all(pattern.fullmatch(name) for name in names), names[0]


def test_hostname_slash_and_colon_are_escaped(monkeypatch: pytest.MonkeyPatch) -> None:
    # The one fake here: the machine's real host name cannot be changed.
    monkeypatch.setattr(socket, "gethostname", lambda: "odd/host:name")
    assert unique_name().endswith(".odd\\057host\\072name")


def test_intent_names_the_tmp_file_created_at_the_first_write(tmp_path: Path) -> None:
    target = MaildirTarget(tmp_path)
    delivery = target.begin("uidl-1")
    # Nothing yet: a run killed before it journals the intent leaves no orphan.
    assert entries(tmp_path)["tmp"] == []
    delivery.write(b"")
    assert entries(tmp_path)["tmp"] == [delivery.intent]
    assert stat.S_IMODE((tmp_path / "tmp" / delivery.intent).stat().st_mode) == 0o600
    delivery.abort()
    assert entries(tmp_path)["tmp"] == []


def test_abort_before_the_first_write_leaves_a_same_named_file_alone(tmp_path: Path) -> None:
    target = MaildirTarget(tmp_path)
    delivery = target.begin("uidl-1")
    delivery.abort()
    assert target.begin("uidl-2").intent != delivery.intent
    # Someone else's file under the name (a clock step back): neither used nor removed.
    other = target.begin("uidl-3")
    (tmp_path / "tmp" / other.intent).write_bytes(b"theirs")
    with pytest.raises(DeliveryError, match="File exists"):
        other.write(b"ours")
    other.abort()
    assert (tmp_path / "tmp" / other.intent).read_bytes() == b"theirs"
    target.close()


def test_abort_leaves_nothing(tmp_path: Path) -> None:
    target = MaildirTarget(tmp_path)
    delivery = target.begin("uidl-1")
    delivery.write(MESSAGE * 10000)  # past any buffer
    delivery.abort()
    delivery.abort()  # twice is harmless
    assert entries(tmp_path) == {"cur": [], "new": [], "tmp": []}
    assert target.delivered(delivery.intent) is False


def test_close_aborts_unfinished_deliveries_only(tmp_path: Path) -> None:
    target = MaildirTarget(tmp_path)
    done = deliver(target, MESSAGE)
    target.begin("uidl-2").write(b"partial")
    target.close()
    assert entries(tmp_path) == {"cur": [], "new": [f"{done},S={len(MESSAGE)}"], "tmp": []}


def test_a_finished_delivery_cannot_be_written_or_aborted(tmp_path: Path) -> None:
    target = MaildirTarget(tmp_path)
    delivery = target.begin("uidl-1")
    delivery.finish()
    with pytest.raises(LocalProtocolError):
        delivery.write(b"more")
    delivery.abort()  # no effect after finish
    target.flush()
    assert len(entries(tmp_path)["new"]) == 1


def test_finished_messages_appear_in_new_only_at_flush(tmp_path: Path) -> None:
    target = MaildirTarget(tmp_path)
    names = []
    for i in range(3):
        delivery = target.begin(f"uidl-{i}")
        delivery.write(MESSAGE + str(i).encode())
        delivery.finish()
        names.append(delivery.intent)
    # Complete in tmp/, invisible to a mail reader until synced and published.
    assert entries(tmp_path) == {"cur": [], "new": [], "tmp": sorted(names)}
    target.flush()
    size = len(MESSAGE) + 1
    assert entries(tmp_path) == {
        "cur": [],
        "new": sorted(f"{n},S={size}" for n in names),
        "tmp": [],
    }
    for i, name in enumerate(names):
        assert (tmp_path / "new" / f"{name},S={size}").read_bytes() == MESSAGE + str(i).encode()
    target.flush()  # nothing left to do
    target.close()


def test_close_discards_finished_but_unflushed_messages(tmp_path: Path) -> None:
    target = MaildirTarget(tmp_path)
    published = deliver(target, MESSAGE)
    pending = target.begin("uidl-2")
    pending.write(MESSAGE)
    pending.finish()
    target.close()
    assert entries(tmp_path) == {
        "cur": [],
        "new": [f"{published},S={len(MESSAGE)}"],
        "tmp": [],
    }
    assert target.delivered(pending.intent) is False


def test_reserved_names_are_unique_and_used_as_given(tmp_path: Path) -> None:
    target = MaildirTarget(tmp_path)
    names = target.reserve(100)
    assert len(set(names)) == 100
    # Reserving creates nothing: a run killed now leaves tmp/ empty.
    assert entries(tmp_path) == {"cur": [], "new": [], "tmp": []}
    delivery = target.begin("uidl-1", names[7])
    assert delivery.intent == names[7]
    delivery.write(MESSAGE)
    delivery.finish()
    target.flush()
    assert target.delivered(names[7]) is True
    assert target.delivered(names[8]) is False


def test_a_failed_flush_discards_what_was_not_published(tmp_path: Path) -> None:
    target = MaildirTarget(tmp_path)
    for i in range(2):
        delivery = target.begin(f"uidl-{i}")
        delivery.write(MESSAGE)
        delivery.finish()
    os.rmdir(tmp_path / "cur")
    os.rename(tmp_path / "new", tmp_path / "cur")
    (tmp_path / "new").write_bytes(b"")  # a file where new/ should be: renames fail
    with pytest.raises(DeliveryError, match="Not a directory"):
        target.flush()
    assert os.listdir(tmp_path / "tmp") == []
    target.close()


def finish_three(target: MaildirTarget) -> list[str]:
    names = []
    for i in range(3):
        delivery = target.begin(f"uidl-{i}")
        delivery.write(MESSAGE)
        delivery.finish()
        names.append(delivery.intent)
    return names


def test_every_file_is_fsynced_before_it_is_published(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # No real fault injector can observe the order of fsync and rename;
    # wrappers record it, and the real calls still run.
    events: list[tuple[str, str]] = []
    real_fsync, real_rename = os.fsync, os.rename

    def fsync(fd: int) -> None:
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}").rsplit("/", 1)[-1]))
        real_fsync(fd)

    def rename(src: str, dst: str) -> None:
        events.append(("rename", os.path.basename(src)))
        real_rename(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "rename", rename)
    target = MaildirTarget(tmp_path)
    names = finish_three(target)
    # The fsyncs started as the files were finished, before any flush.
    assert all(name in os.listdir(tmp_path / "tmp") for name in names)
    target.flush()
    for name in names:
        assert events.index(("fsync", name)) < events.index(("rename", name))
    assert len(os.listdir(tmp_path / "new")) == 3
    target.close()


def test_a_failed_fsync_publishes_none_of_the_batch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_fsync = os.fsync
    failing: set[str] = set()

    def fsync(fd: int) -> None:
        if os.readlink(f"/proc/self/fd/{fd}").rsplit("/", 1)[-1] in failing:
            raise OSError(5, "Input/output error")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    target = MaildirTarget(tmp_path)
    first = target.begin("uidl-0")
    failing.add(first.intent)
    first.write(MESSAGE)
    first.finish()
    finish_three(target)
    with pytest.raises(LocalIOError, match="Input/output error"):
        target.flush()
    assert entries(tmp_path) == {"cur": [], "new": [], "tmp": []}
    target.close()


def test_delivered_finds_the_message_in_new_and_in_cur(tmp_path: Path) -> None:
    target = MaildirTarget(tmp_path)
    intent = deliver(target, MESSAGE)
    assert target.delivered(intent) is True
    # A mail reader moves it to cur/ and adds flags.
    (name,) = os.listdir(tmp_path / "new")
    os.rename(tmp_path / "new" / name, tmp_path / "cur" / f"{name}:2,S")
    assert target.delivered(intent) is True
    os.rename(tmp_path / "cur" / f"{name}:2,S", tmp_path / "cur" / f"{intent}:2,RS")
    assert target.delivered(intent) is True
    os.rename(tmp_path / "cur" / f"{intent}:2,RS", tmp_path / "cur" / intent)
    assert target.delivered(intent) is True


def test_delivered_does_not_match_a_longer_name(tmp_path: Path) -> None:
    target = MaildirTarget(tmp_path)
    intent = deliver(target, MESSAGE)
    assert target.delivered(intent[:-1]) is False
    assert target.delivered(intent.split(".")[0]) is False
    assert target.delivered("../new") is False
    assert target.delivered("") is False


def test_delivered_removes_a_stale_tmp_file(tmp_path: Path) -> None:
    target = MaildirTarget(tmp_path)
    delivery = target.begin("uidl-1")
    delivery.write(b"half a mess")
    # As after a crash: the next run's target asks about the intent.
    assert MaildirTarget(tmp_path).delivered(delivery.intent) is False
    assert entries(tmp_path)["tmp"] == []
    delivery.abort()  # closes the file


def test_a_file_in_the_way_is_a_delivery_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(DeliveryError) as info:
        open_target(DeliverySpec("maildir", path=tmp_path / "file" / "Mail"))
    assert info.value.exit_code == 73
    assert str(info.value) == f"cannot create Maildir {tmp_path}/file/Mail: Not a directory"


def test_deleted_tmp_dir_is_a_delivery_error(tmp_path: Path) -> None:
    target = MaildirTarget(tmp_path)
    os.rmdir(tmp_path / "tmp")
    with pytest.raises(DeliveryError, match=r"cannot write to Maildir .*: No such file"):
        target.begin("uidl-1")


def test_read_only_directory_is_a_delivery_error(tmp_path: Path) -> None:
    (tmp_path / "ro").mkdir()
    out = deliver_read_only(tmp_path / "ro", f"maildir:{tmp_path}/ro/Mail")
    assert re.fullmatch(
        f"DeliveryError 73 cannot create Maildir {tmp_path}/ro/Mail: {READ_ONLY}\n", out
    )


def test_read_only_maildir_is_a_delivery_error(tmp_path: Path) -> None:
    MaildirTarget(tmp_path / "Mail")
    out = deliver_read_only(tmp_path / "Mail", f"maildir:{tmp_path}/Mail")
    assert re.fullmatch(
        f"DeliveryError 73 cannot write to Maildir {tmp_path}/Mail: {READ_ONLY}\n", out
    )


def test_a_maildir_symlink_planted_in_a_shared_directory_is_refused(tmp_path: Path) -> None:
    """spool/alice -> a directory of the victim's, planted by another member of
    a group-writable directory: nothing is made or written there."""
    spool = tmp_path / "spool"
    spool.mkdir()
    spool.chmod(0o2775)
    victim = tmp_path / "victim"
    victim.mkdir()
    (spool / "alice").symlink_to(victim)
    with pytest.raises(DeliveryError, match="is a symbolic link in a directory others can write"):
        MaildirTarget(spool / "alice")
    assert list(victim.iterdir()) == []


def test_a_maildir_symlink_in_a_private_directory_is_followed(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir(mode=0o700)
    (tmp_path / "Mail").symlink_to(real)
    target = MaildirTarget(tmp_path / "Mail")
    target.close()
    assert sorted(p.name for p in real.iterdir()) == ["cur", "new", "tmp"]


def test_a_file_where_maildir_new_should_be_is_refused(tmp_path: Path) -> None:
    mail = tmp_path / "Mail"
    for sub in ("cur", "tmp"):
        (mail / sub).mkdir(parents=True)
    (mail / "new").write_bytes(b"")
    with pytest.raises(DeliveryError):
        MaildirTarget(mail)
