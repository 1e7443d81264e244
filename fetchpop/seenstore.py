"""The seen-store: which messages each mailbox has delivered. The only user of sqlite3.

Strategy:

* Keyed by mailbox (host, port, user), never by account name, so renaming an
  account does not fetch everything again.
* A journal of *intents*: before a message is delivered its intent (UIDL and
  where it is going) is written; the same transaction that records the UIDL as
  seen removes the intent. An intent left over after a crash tells the next
  run to look in the target before delivering again (SPEC section 1, promise 2).
* WAL mode with ``synchronous=NORMAL``: commits are cheap and survive a killed
  process; :meth:`SeenStore.sync` (a full checkpoint, which fsyncs) makes them
  survive power loss too, and the sync layer calls it before trusting them. A
  write made with ``durable=True`` commits with ``synchronous=FULL`` instead:
  one fsync of the WAL makes it and every earlier commit durable, and the next
  ``sync()`` has nothing to do.
* Every write is an explicit ``BEGIN IMMEDIATE`` ... ``COMMIT`` that rolls back
  on any exception. Schema migrations run in the transaction that records
  their version (``PRAGMA user_version``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import sqlite3
import threading
import time
from collections.abc import Collection, Iterable, Iterator, Mapping
from pathlib import Path

from fetchpop.errors import StoreError, StoreLockedError
from fetchpop.paths import make_private_dirs

# Each entry upgrades the schema from version i to i + 1.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE mailbox (
        id INTEGER PRIMARY KEY,
        host TEXT NOT NULL,
        port INTEGER NOT NULL,
        user TEXT NOT NULL,
        UNIQUE (host, port, user)
    );
    CREATE TABLE seen (
        mailbox INTEGER NOT NULL REFERENCES mailbox(id),
        uidl TEXT NOT NULL,
        first_seen REAL NOT NULL,
        PRIMARY KEY (mailbox, uidl)
    ) WITHOUT ROWID;
    CREATE TABLE intent (
        id INTEGER PRIMARY KEY,
        mailbox INTEGER NOT NULL REFERENCES mailbox(id),
        uidl TEXT NOT NULL,
        target TEXT NOT NULL,
        detail TEXT NOT NULL,
        created REAL NOT NULL
    );
    CREATE TABLE run (
        account TEXT PRIMARY KEY,
        mailbox INTEGER NOT NULL REFERENCES mailbox(id),
        started REAL NOT NULL,
        finished REAL NOT NULL,
        exit_code INTEGER NOT NULL,
        message TEXT NOT NULL,
        fetched INTEGER NOT NULL,
        octets INTEGER NOT NULL,
        deleted INTEGER NOT NULL,
        skipped INTEGER NOT NULL
    );
    """,
    # 2: messages that were skipped (max_size) or keep failing to deliver, so
    # a skip is reported once, and a poison message stops being retried.
    """
    CREATE TABLE problem (
        mailbox INTEGER NOT NULL REFERENCES mailbox(id),
        uidl TEXT NOT NULL,
        attempts INTEGER NOT NULL,
        reason TEXT NOT NULL,
        first REAL NOT NULL,
        PRIMARY KEY (mailbox, uidl)
    ) WITHOUT ROWID;
    """,
    # 3: `seen mark` records messages it never delivered; keep = false and
    # delete_after_days must not delete those (SPEC section 1, promise 1).
    """
    ALTER TABLE seen ADD COLUMN delivered INTEGER NOT NULL DEFAULT 1;
    """,
    # 4: what the server said to CAPA before the login, last time, so the next
    # session can send CAPA and the login together (one round trip less).
    """
    CREATE TABLE capability (
        mailbox INTEGER PRIMARY KEY REFERENCES mailbox(id),
        lines TEXT NOT NULL,
        updated REAL NOT NULL
    );
    """,
    # 5: what a server was seen to do wrong (it lost pipelined commands), so
    # later sessions work around it from the start.
    """
    CREATE TABLE quirk (
        mailbox INTEGER NOT NULL REFERENCES mailbox(id),
        name TEXT NOT NULL,
        noted REAL NOT NULL,
        PRIMARY KEY (mailbox, name)
    ) WITHOUT ROWID;
    """,
    # 6: what identifies a delivered message besides its UIDL (its
    # Message-ID, or a digest of its header), so that a UIDL the server hands
    # out again for another message never authorises deleting that one.
    """
    ALTER TABLE seen ADD COLUMN ident TEXT;
    """,
)

#: The server advertises PIPELINING and loses pipelined commands.
NO_PIPELINING = "no-pipelining"


@dataclasses.dataclass(frozen=True)
class Intent:
    """A delivery begun but not recorded as finished."""

    id: int
    uidl: str
    target: str
    detail: str


@dataclasses.dataclass(frozen=True)
class RunRecord:
    """The outcome of an account's last sync, for ``fetchpop status``."""

    account: str
    started: float
    finished: float
    exit_code: int
    message: str
    fetched: int
    octets: int
    deleted: int
    skipped: int


class SeenStore:
    """An open seen-store file. Use as a context manager, or call close()."""

    def __init__(self, path: Path, *, readonly: bool = False) -> None:
        self.path = path
        # One store serves every account of a run, ``--jobs`` threads and
        # all: each transaction (and each read) holds the connection whole.
        self._lock = threading.RLock()
        self._dirty = True  # commits not yet known to be durable (sync() checks)
        try:
            if readonly:
                if path.stat().st_size == 0:
                    raise _damaged(path, "it is empty")
                self._db = sqlite3.connect(
                    f"file:{path}?mode=ro",
                    uri=True,
                    isolation_level=None,
                    timeout=10,
                    check_same_thread=False,
                )
            else:
                make_private_dirs(path.parent)
                if not path.exists():
                    _create(path)
                elif path.stat().st_size == 0:
                    # A store is only ever put in place whole (see _create):
                    # an empty one was truncated, not new.
                    raise _damaged(path, "it is empty")
                self._db = sqlite3.connect(
                    path, isolation_level=None, timeout=10, check_same_thread=False
                )
        except StoreError:
            raise
        except (sqlite3.Error, OSError) as exc:
            raise StoreError(f"cannot open seen-store {path}: {exc}") from exc
        try:
            if not readonly:
                self._set_up()
            else:
                self._check_version()
        except sqlite3.Error as exc:
            self._db.close()
            raise _store_error(path, exc) from exc
        except StoreError:
            self._db.close()
            raise

    def _set_up(self) -> None:
        # Switching a new file to WAL takes an exclusive lock and does not
        # wait for the busy timeout: two runs starting together (``--jobs``,
        # or two cron jobs) retry for a while instead of failing.
        deadline = time.monotonic() + 10
        while True:
            try:
                self._db.execute("PRAGMA journal_mode=WAL")
                break
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._migrate()

    def __enter__(self) -> SeenStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the database."""
        self._db.close()

    # -- schema ----------------------------------------------------------------

    def _check_version(self) -> int:
        with self._lock:
            (version,) = self._db.execute("PRAGMA user_version").fetchone()
        if version > len(MIGRATIONS):
            raise StoreError(
                f"seen-store {self.path} was written by a newer fetchpop "
                f"(schema {version}); upgrade fetchpop"
            )
        return int(version)

    def _migrate(self) -> None:
        with self._transaction():
            version = self._check_version()
            for number in range(version, len(MIGRATIONS)):
                for statement in MIGRATIONS[number].split(";"):
                    if statement.strip():
                        self._db.execute(statement)
                self._db.execute(f"PRAGMA user_version = {number + 1}")

    @contextlib.contextmanager
    def _transaction(self, *, durable: bool = False) -> Iterator[sqlite3.Connection]:
        """A write transaction; *durable* makes its commit fsync the WAL."""
        with self._lock:
            try:
                if durable:  # read at COMMIT, but only settable outside a transaction
                    self._db.execute("PRAGMA synchronous=FULL")
                try:
                    self._db.execute("BEGIN IMMEDIATE")
                    try:
                        yield self._db
                    except BaseException:
                        self._db.execute("ROLLBACK")
                        raise
                    self._db.execute("COMMIT")
                finally:
                    if durable:
                        self._db.execute("PRAGMA synchronous=NORMAL")
                self._dirty = not durable
            except sqlite3.Error as exc:
                raise _store_error(self.path, exc) from exc

    def _read(self, sql: str, args: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
        with self._lock:
            try:
                return self._db.execute(sql, args).fetchall()
            except sqlite3.Error as exc:
                raise _store_error(self.path, exc) from exc

    # -- mailboxes -------------------------------------------------------------

    def mailbox_id(self, host: str, port: int, user: str, *, create: bool = True) -> int | None:
        """The id of the mailbox (host, port, user), created when missing."""
        rows = self._read(
            "SELECT id FROM mailbox WHERE host = ? AND port = ? AND user = ?", (host, port, user)
        )
        if rows:
            return int(str(rows[0][0]))
        if not create:
            return None
        with self._transaction() as db:
            # (Another run, or another --jobs account, may have just made it.)
            db.execute(
                "INSERT OR IGNORE INTO mailbox (host, port, user) VALUES (?, ?, ?)",
                (host, port, user),
            )
            (ident,) = db.execute(
                "SELECT id FROM mailbox WHERE host = ? AND port = ? AND user = ?",
                (host, port, user),
            ).fetchone()
            return int(ident)

    def capabilities(self, mailbox: int) -> dict[str, list[str]] | None:
        """What *mailbox*'s server answered CAPA before the login last time, if known."""
        if self._check_version() < 4:  # a read-only look at an older store
            return None
        rows = self._read("SELECT lines FROM capability WHERE mailbox = ?", (mailbox,))
        if not rows:
            return None
        words = (line.split() for line in str(rows[0][0]).split("\n"))
        return {w[0]: w[1:] for w in words if w}

    def remember_capabilities(self, mailbox: int, caps: dict[str, list[str]] | None) -> None:
        """Keep *caps* for :meth:`capabilities` (None forgets them); writes only on change."""
        if caps == self.capabilities(mailbox):
            return
        with self._transaction() as db:
            if caps is None:
                db.execute("DELETE FROM capability WHERE mailbox = ?", (mailbox,))
            else:
                lines = "\n".join(" ".join([name, *args]) for name, args in caps.items())
                db.execute(
                    "INSERT OR REPLACE INTO capability VALUES (?, ?, ?)",
                    (mailbox, lines, time.time()),
                )

    def quirks(self, mailbox: int, *, max_age: float | None = None) -> set[str]:
        """What *mailbox*'s server was seen to get wrong (:data:`NO_PIPELINING`),
        within the last *max_age* seconds if given."""
        if self._check_version() < 5:  # a read-only look at an older store
            return set()
        since = 0.0 if max_age is None else time.time() - max_age
        rows = self._read(
            "SELECT name FROM quirk WHERE mailbox = ? AND noted >= ?", (mailbox, since)
        )
        return {str(name) for (name,) in rows}

    def note_quirk(self, mailbox: int, name: str) -> None:
        """Remember that *mailbox*'s server has quirk *name*."""
        with self._transaction() as db:
            db.execute(
                "INSERT OR REPLACE INTO quirk VALUES (?, ?, ?)", (mailbox, name, time.time())
            )

    # -- seen UIDLs ------------------------------------------------------------

    def seen(self, mailbox: int) -> dict[str, float]:
        """Every UIDL recorded for *mailbox*, with its first-seen time (one query)."""
        rows = self._read("SELECT uidl, first_seen FROM seen WHERE mailbox = ?", (mailbox,))
        return dict(rows)  # type: ignore[arg-type]  # (TEXT, REAL) columns

    def seen_text(self, mailbox: int) -> tuple[int, str]:
        """How many UIDLs are recorded for *mailbox*, and all of them in one
        string, joined by line feeds, in key order (one query, no row objects)."""
        rows = self._read(
            "SELECT count(*), group_concat(uidl, char(10)) FROM seen WHERE mailbox = ?",
            (mailbox,),
        )
        count, text = rows[0]
        return int(str(count)), "" if text is None else str(text)

    def seen_before(self, mailbox: int, when: float) -> dict[str, float]:
        """The UIDLs of *mailbox* first recorded at or before *when*, with that time."""
        rows = self._read(
            "SELECT uidl, first_seen FROM seen WHERE mailbox = ? AND first_seen <= ?",
            (mailbox, when),
        )
        return dict(rows)  # type: ignore[arg-type]  # (TEXT, REAL) columns

    def record(
        self,
        mailbox: int,
        uidls: Iterable[str],
        *,
        done: Iterable[int] = (),
        now: float | None = None,
        delivered: bool = True,
        durable: bool = False,
        idents: Mapping[str, str] | None = None,
    ) -> None:
        """Record *uidls* as seen and drop the intents *done*, in one transaction.

        ``delivered=False`` records messages as seen without this store having
        delivered them (``seen mark``): they are never deleted on its behalf.
        ``durable=True`` makes the commit (and every earlier one) durable.
        *idents* maps a UIDL to what identifies its message (see
        :mod:`fetchpop.sync.ident`).
        """
        stamp = time.time() if now is None else now
        ids = idents or {}
        with self._transaction(durable=durable) as db:
            db.executemany(
                "INSERT OR IGNORE INTO seen (mailbox, uidl, first_seen, delivered, ident)"
                " VALUES (?, ?, ?, ?, ?)",
                ((mailbox, uidl, stamp, int(delivered), ids.get(uidl)) for uidl in uidls),
            )
            db.executemany("DELETE FROM intent WHERE id = ?", ((i,) for i in done))

    def idents(self, mailbox: int) -> dict[str, str]:
        """UIDL -> the identity recorded with it, for the records that have one."""
        rows = self._read(
            "SELECT uidl, ident FROM seen WHERE mailbox = ? AND ident IS NOT NULL", (mailbox,)
        )
        return dict(rows)  # type: ignore[arg-type]  # (TEXT, TEXT) columns

    def set_idents(self, mailbox: int, idents: Mapping[str, str]) -> None:
        """Give records made without an identity (before schema 6) one."""
        with self._transaction() as db:
            db.executemany(
                "UPDATE seen SET ident = ? WHERE mailbox = ? AND uidl = ? AND ident IS NULL",
                ((ident, mailbox, uidl) for uidl, ident in idents.items()),
            )

    def undelivered(self, mailbox: int) -> set[str]:
        """UIDLs marked as seen that this store never delivered."""
        if self._check_version() < 3:  # a read-only look at an older store
            return set()
        rows = self._read("SELECT uidl FROM seen WHERE mailbox = ? AND delivered = 0", (mailbox,))
        return {str(row[0]) for row in rows}

    def forget(self, mailbox: int, uidls: Iterable[str] | None = None) -> int:
        """Remove *uidls* (all when None) from the store; returns how many went."""
        with self._transaction() as db:
            if uidls is None:
                cur = db.execute("DELETE FROM seen WHERE mailbox = ?", (mailbox,))
                return cur.rowcount
            count = 0
            for uidl in uidls:
                count += db.execute(
                    "DELETE FROM seen WHERE mailbox = ? AND uidl = ?", (mailbox, uidl)
                ).rowcount
            return count

    def prune(self, mailbox: int, records: Collection[str], problems: Collection[str]) -> None:
        """Forget *records* and the notes on *problems*: messages no longer on
        the server (see fetchpop.sync.plan.vanished; after a completed session only)."""
        if records:
            self.forget(mailbox, records)
        if problems:
            self.clear_problems(mailbox, problems)

    # -- intents ---------------------------------------------------------------

    def begin_intent(self, mailbox: int, uidl: str, target: str, detail: str) -> int:
        """Journal that *uidl* is about to be delivered to *target* (at *detail*)."""
        return self.begin_intents(mailbox, target, [(uidl, detail)])[0]

    def begin_intents(
        self,
        mailbox: int,
        target: str,
        messages: Iterable[tuple[str, str]],
        *,
        durable: bool = False,
    ) -> list[int]:
        """Journal intents for several (uidl, detail) in one transaction; their ids."""
        now = time.time()
        with self._transaction(durable=durable) as db:
            return [
                int(
                    db.execute(
                        "INSERT INTO intent (mailbox, uidl, target, detail, created)"
                        " VALUES (?, ?, ?, ?, ?)",
                        (mailbox, uidl, target, detail, now),
                    ).lastrowid
                    or 0
                )
                for uidl, detail in messages
            ]

    def intents(self, mailbox: int) -> list[Intent]:
        """Unfinished intents of *mailbox*, oldest first."""
        rows = self._read(
            "SELECT id, uidl, target, detail FROM intent WHERE mailbox = ? ORDER BY id", (mailbox,)
        )
        return [Intent(int(r[0]), str(r[1]), str(r[2]), str(r[3])) for r in rows]  # type: ignore[call-overload]

    def drop_intents(self, ids: Iterable[int]) -> None:
        """Forget intents whose message is known not to have been delivered."""
        with self._transaction() as db:
            db.executemany("DELETE FROM intent WHERE id = ?", ((i,) for i in ids))

    def sync(self) -> None:
        """Make every commit so far durable against power loss (fsync)."""
        if not self._dirty:
            return
        with self._lock:
            try:
                self._db.execute("PRAGMA wal_checkpoint(FULL)").fetchall()
            except sqlite3.Error as exc:
                raise _store_error(self.path, exc) from exc
            self._dirty = False

    # -- problem messages ------------------------------------------------------

    def problems(self, mailbox: int) -> dict[str, tuple[int, str]]:
        """UIDL -> (attempts, reason) for skipped or failing messages."""
        rows = self._read(
            "SELECT uidl, attempts, reason FROM problem WHERE mailbox = ?", (mailbox,)
        )
        return {str(u): (int(str(a)), str(r)) for u, a, r in rows}

    def note_problem(self, mailbox: int, uidl: str, reason: str, *, attempt: bool) -> int:
        """Remember a skip (``attempt=False``) or a failed delivery; returns attempts."""
        with self._transaction() as db:
            db.execute(
                "INSERT INTO problem (mailbox, uidl, attempts, reason, first)"
                " VALUES (?, ?, 0, ?, ?)"
                " ON CONFLICT (mailbox, uidl) DO UPDATE SET reason = excluded.reason",
                (mailbox, uidl, reason, time.time()),
            )
            if attempt:
                db.execute(
                    "UPDATE problem SET attempts = attempts + 1 WHERE mailbox = ? AND uidl = ?",
                    (mailbox, uidl),
                )
            row = db.execute(
                "SELECT attempts FROM problem WHERE mailbox = ? AND uidl = ?", (mailbox, uidl)
            ).fetchone()
            return int(row[0])

    def clear_problems(self, mailbox: int, uidls: Iterable[str] | None = None) -> int:
        """Forget problems of *uidls* (all of the mailbox when None); returns how
        many of them were failed deliveries (not size skips)."""
        with self._transaction() as db:
            if uidls is None:
                failed = db.execute(
                    "DELETE FROM problem WHERE mailbox = ? AND attempts > 0", (mailbox,)
                ).rowcount
                db.execute("DELETE FROM problem WHERE mailbox = ?", (mailbox,))
                return int(failed)
            failed = 0
            for uidl in uidls:
                failed += db.execute(
                    "DELETE FROM problem WHERE mailbox = ? AND uidl = ? AND attempts > 0",
                    (mailbox, uidl),
                ).rowcount
                db.execute("DELETE FROM problem WHERE mailbox = ? AND uidl = ?", (mailbox, uidl))
            return failed

    # -- runs ------------------------------------------------------------------

    def record_run(self, mailbox: int, run: RunRecord) -> None:
        """Remember the outcome of an account's sync."""
        with self._transaction() as db:
            db.execute(
                "INSERT OR REPLACE INTO run VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    run.account,
                    mailbox,
                    run.started,
                    run.finished,
                    run.exit_code,
                    run.message,
                    run.fetched,
                    run.octets,
                    run.deleted,
                    run.skipped,
                ),
            )

    def last_run(self, account: str) -> RunRecord | None:
        """The last recorded sync of *account*, if any."""
        rows = self._read(
            "SELECT account, started, finished, exit_code, message, fetched, octets, deleted,"
            " skipped FROM run WHERE account = ?",
            (account,),
        )
        return RunRecord(*rows[0]) if rows else None  # type: ignore[arg-type]

    def count(self, mailbox: int) -> int:
        """How many UIDLs are recorded for *mailbox*."""
        return int(str(self._read("SELECT count(*) FROM seen WHERE mailbox = ?", (mailbox,))[0][0]))


def _create(path: Path) -> None:
    """A new, empty store at *path*, put in place whole.

    It is made under a temporary name (private from the start: SQLite gives
    its -wal and -shm files the database file's mode), fsynced, and linked to
    *path* only then, so that a file at *path* that is empty or not a
    database is damage, never a store a crash left half-made. Two runs
    creating it at once: the second one's link fails, and it uses the first's.
    """
    # One name per process and thread: `sync --jobs` opens the store in threads.
    tmp = path.with_name(f".{path.name}.new-{os.getpid()}-{threading.get_ident()}")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)
    os.close(os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600))
    try:
        db = sqlite3.connect(tmp, isolation_level=None)
        try:
            # A valid database of its own (a header page), not yet WAL: that
            # is switched on, and the schema made, once it is in place.
            db.execute("PRAGMA user_version = 0")
            db.execute("VACUUM")
        finally:
            db.close()
        fd = os.open(tmp, os.O_RDONLY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        with contextlib.suppress(FileExistsError):
            os.link(tmp, path)
        fd = os.open(path.parent, os.O_RDONLY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def _damaged(path: Path, what: str) -> StoreError:
    return StoreError(
        f"seen-store {path} is corrupt ({what}); nothing was fetched. Move it aside "
        f"(mv {path} {path}.broken), then either sync (mail still on the server is "
        "fetched again) or first run `fetchpop seen mark ACCOUNT` (nothing is fetched "
        "again, but mail that came since the last good sync is marked as seen too)"
    )


def _store_error(path: Path, exc: sqlite3.Error) -> StoreError:
    text = str(exc)
    if "locked" in text or "busy" in text:
        return StoreLockedError(f"seen-store {path} is locked by another process: {text}")
    if "not a database" in text or "malformed" in text:
        return _damaged(path, text)
    return StoreError(f"seen-store {path}: {text}")
