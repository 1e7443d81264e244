"""Syncing an account, in four parts:

* :mod:`~fetchpop.sync.connect`: connect, secure the channel, log in;
* :mod:`~fetchpop.sync.plan`: what to fetch, skip and delete (pure);
* :mod:`~fetchpop.sync.session`: the Session, which owns the ordering
  invariant (deliver and fsync -> record and commit -> only then DELE; its
  docstring is the one statement of it);
* :mod:`~fetchpop.sync.listing`: ``check`` and ``seen mark``, which list and
  change nothing on the server;
* :mod:`~fetchpop.sync.account`: :func:`run_account`, a whole account's sync
  as the CLI runs it (mailbox lock, Session, run record).
"""

from __future__ import annotations

from fetchpop.sync.account import run_account
from fetchpop.sync.connect import (
    GREETING_PROBE,
    PasswordSource,
    connect,
    login,
    open_connection,
    probe,
    wrong_port,
)
from fetchpop.sync.listing import check_account, list_server, mark_seen
from fetchpop.sync.plan import (
    DAY,
    MAX_ATTEMPTS,
    RESET_MIN_UNKNOWN,
    Known,
    Plan,
    ServerMessage,
    UIDLResetError,
    make_plan,
    merge_listings,
    read_known,
    server_messages,
    uidl_reset,
)
from fetchpop.sync.session import (
    BATCH_MESSAGES,
    BATCH_OCTETS,
    GMAIL_BATCH,
    MAX_SESSIONS,
    Progress,
    Session,
    SyncResult,
)

__all__ = [
    "BATCH_MESSAGES",
    "BATCH_OCTETS",
    "DAY",
    "GMAIL_BATCH",
    "GREETING_PROBE",
    "MAX_ATTEMPTS",
    "MAX_SESSIONS",
    "RESET_MIN_UNKNOWN",
    "Known",
    "PasswordSource",
    "Plan",
    "Progress",
    "ServerMessage",
    "Session",
    "SyncResult",
    "UIDLResetError",
    "check_account",
    "connect",
    "list_server",
    "login",
    "make_plan",
    "mark_seen",
    "merge_listings",
    "open_connection",
    "probe",
    "read_known",
    "run_account",
    "server_messages",
    "uidl_reset",
    "wrong_port",
]
