"""``sync --jobs``: which accounts may run side by side (fetchpop/cli/syncing.py
_in_jobs). Accounts sharing a mailbox, or an mbox file, never overlap."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

from fetchpop.cli.syncing import _in_jobs
from fetchpop.config import Account
from fetchpop.deliver import DeliverySpec


def account(name: str, user: str, deliver: DeliverySpec) -> Account:
    return Account(
        name=name, host="pop.example.org", user=user, port=995, tls="implicit", deliver=deliver
    )


def test_what_accounts_share_they_use_one_at_a_time(tmp_path: Path) -> None:
    inbox = DeliverySpec("mbox", tmp_path / "inbox")
    alias = DeliverySpec("mbox", tmp_path / "link")
    (tmp_path / "inbox").touch()
    (tmp_path / "link").symlink_to(tmp_path / "inbox")
    maildir = DeliverySpec("maildir", tmp_path / "Maildir")
    accounts = [
        account("a", "alice", inbox),
        account("b", "bob", alias),  # the same mbox, by another name
        account("c", "carol", maildir),
        account("d", "carol", maildir),  # the same mailbox as c
        account("e", "dave", maildir),  # a Maildir takes writers side by side
        account("f", "erin", DeliverySpec("mbox", tmp_path / "other")),
    ]
    lock = threading.Lock()
    busy: dict[str, int] = {}
    overlaps: list[tuple[str, str]] = []
    most = 0

    def one(acct: Account) -> tuple[int, dict[str, Any]]:
        nonlocal most
        uses = [f"mailbox {acct.user}", f"target {acct.deliver.path.resolve()}"]  # type: ignore[union-attr]
        if acct.deliver.kind == "maildir":
            uses.pop()
        with lock:
            for use in uses:
                if busy.get(use):
                    overlaps.append((acct.name, use))
                busy[use] = busy.get(use, 0) + 1
            most = max(most, sum(1 for n in busy.values() if n))
        time.sleep(0.05)
        with lock:
            for use in uses:
                busy[use] -= 1
        return 0, {"account": acct.name}

    results = _in_jobs(accounts, one, 4)
    assert [r["account"] for _, r in results] == list("abcdef")  # in order
    assert overlaps == []
    assert most >= 3  # the others did run side by side
