"""What needs a login and a listing but changes nothing on the server:
``fetchpop check`` and ``fetchpop seen mark``."""

from __future__ import annotations

import time

from fetchpop.config import Account
from fetchpop.errors import PipeliningLostError
from fetchpop.pop3.client import Log
from fetchpop.seenstore import SeenStore
from fetchpop.sync.connect import PasswordSource, connect
from fetchpop.sync.plan import (
    Known,
    Maildrop,
    Plan,
    Seen,
    lock_step_lately,
    make_plan,
    server_messages,
)


def list_server(
    account: Account,
    password: PasswordSource,
    *,
    log: Log | None = None,
    pipelining: bool = True,
) -> Maildrop:
    """Log in, list the maildrop (see :func:`server_messages`), QUIT. Changes
    nothing. *pipelining* False: the server is known to lose commands."""
    if pipelining:
        try:
            return _list_server(account, password, log, pipelining=True)
        except PipeliningLostError:
            pass
    return _list_server(account, password, log, pipelining=False)


def _list_server(
    account: Account, password: PasswordSource, log: Log | None, *, pipelining: bool
) -> Maildrop:
    client = connect(account, password, log=log, pipelining=pipelining)
    try:
        listing = server_messages(client)
        client.quit()
    except BaseException:
        client.close()
        raise
    return listing


def check_account(
    account: Account,
    known: Known,
    password: PasswordSource,
    *,
    log: Log | None = None,
    now: float | None = None,
) -> Plan:
    """What a sync would fetch and delete now. Changes nothing anywhere."""
    messages = list_server(account, password, log=log, pipelining=known.pipelining)
    return make_plan(account, messages, known, now=time.time() if now is None else now)


def mark_seen(
    account: Account,
    store: SeenStore | None,
    password: PasswordSource,
    *,
    log: Log | None = None,
) -> tuple[int, list[str]]:
    """Record every message now on the server as seen, downloading nothing.

    Returns (messages on the server, UIDLs newly recorded). With *store* None
    (a dry run) nothing is written; the second item lists what would be.
    """
    lock_step = False
    if store is not None:
        box = store.mailbox_id(*account.mailbox, create=False)
        lock_step = box is not None and lock_step_lately(store, box)
    messages = list_server(account, password, log=log, pipelining=not lock_step)
    seen = Seen.of({})
    mailbox = None
    if store is not None:
        mailbox = store.mailbox_id(*account.mailbox)
        assert mailbox is not None
        seen = Seen.read(store, mailbox)
    new = [] if seen.matches(messages) else [k for k in messages.store_keys() if k not in seen]
    if store is not None and mailbox is not None:
        store.record(mailbox, new, delivered=False)
        store.sync()
    return len(messages), new
