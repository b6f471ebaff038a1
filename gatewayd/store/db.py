"""The durable store: one SQLite database in `state_dir`.

Contract:
- One writer thread owns the connection. Every read and write is a job run
  there, so the event loop never blocks on fsync.
- Jobs that arrive together commit in one transaction (group commit); each
  job runs inside its own SAVEPOINT, so one failing job does not undo the
  others. A job's future resolves only after its transaction is durable
  (WAL, `synchronous=FULL`).
- Events get their `seq` inside the job that makes the ledger change they
  report: `seq` rises by exactly 1, survives crashes and is never reused.
- The schema is versioned with `PRAGMA user_version`; a database from a newer
  gatewayd, or a corrupt one, is refused with a message that says what to do,
  never recreated.
- A second process on the same `state_dir` is refused (an flock on a lock
  file, held for the life of the store).
- A store has a `store_id` (a UUID made with it, kept in `meta`): `seq` starts
  again at 1 only under a new one. Starting a new store is logged at WARNING
  (`store_created`), never confused with opening one.
- The database file is never lost quietly: `file_problem()` compares the open
  files with what is at their paths (removed, or another file moved over them),
  and `restore()` puts the open database back at its path (online backup into
  a temp file beside it, fsync, rename), keeping every commit and the `seq`.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import os
import queue
import sqlite3
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import structlog

from gatewayd.contract.wire import (
    EventBody,
    EventEnvelope,
    Priority,
    encode_event,
    event_type_of,
    priority_of,
)
from gatewayd.errors import StoreClosed, StoreError, StoreLocked

log = structlog.get_logger(__name__)

T = TypeVar("T")

DB_NAME = "gatewayd.db"
LOCK_NAME = "gatewayd.lock"
# The files SQLite keeps open for the database, by suffix of its path.
DB_FILES = ("", "-wal", "-shm")
# At most this many jobs share one transaction: bounds the latency of the
# first job in a burst while still amortising the fsync.
MAX_GROUP = 512



# --- schema -------------------------------------------------------------------

# Each entry migrates from version i to i + 1. Never edit a shipped entry: add one.
MIGRATIONS: list[str] = [
    # 1: the first schema.
    """
    CREATE TABLE meta (
        key TEXT PRIMARY KEY,
        value TEXT NOT NULL
    );
    -- The center owns balances; this is the gateway's mirror (behaviour.md).
    CREATE TABLE accounts (
        account TEXT PRIMARY KEY,
        balance_fen INTEGER NOT NULL DEFAULT 0,
        known INTEGER NOT NULL DEFAULT 0,      -- credited or synced by the center
        updated REAL NOT NULL
    );
    CREATE TABLE cards (
        uid TEXT PRIMARY KEY,                  -- upper-case hex
        account TEXT NOT NULL,
        kind TEXT NOT NULL,
        status TEXT NOT NULL,
        expires TEXT,                          -- RFC 3339 date or NULL
        updated REAL NOT NULL
    );
    -- The event log and outbox: seq is assigned in the ledger's transaction.
    CREATE TABLE events (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        id TEXT NOT NULL UNIQUE,
        type TEXT NOT NULL,
        class INTEGER NOT NULL,                -- delivery class, lower first
        wall REAL NOT NULL,                    -- epoch seconds, for keep_events_days
        payload BLOB NOT NULL,                 -- the complete JSON message
        published REAL                         -- when the broker acknowledged it
    );
    CREATE INDEX events_pending ON events (class, seq) WHERE published IS NULL;
    CREATE INDEX events_wall ON events (wall);
    -- Commands seen, with their first result (duplicates are answered, not applied).
    CREATE TABLE commands (
        id TEXT PRIMARY KEY,
        received REAL NOT NULL,
        result BLOB NOT NULL,
        published REAL
    );
    CREATE INDEX commands_received ON commands (received);
    -- Water sessions still open: recovered and charged after a crash.
    CREATE TABLE water_sessions (
        point TEXT PRIMARY KEY,
        session TEXT NOT NULL,
        card TEXT NOT NULL,
        account TEXT NOT NULL,
        service TEXT NOT NULL,
        offline INTEGER NOT NULL,
        started REAL NOT NULL,                 -- epoch seconds
        elapsed_s REAL NOT NULL DEFAULT 0,     -- monotonic time accounted so far
        counter_start INTEGER,                 -- pulse count at open, NULL without a flow meter
        counter_last INTEGER,
        volume_ml INTEGER NOT NULL DEFAULT 0,
        charged_fen INTEGER NOT NULL DEFAULT 0,
        carry TEXT NOT NULL DEFAULT '0'        -- fraction of a fen carried (decimal)
    );
    -- Per-room state that must survive restarts.
    CREATE TABLE rooms (
        room TEXT PRIMARY KEY,
        baseline_wh INTEGER,                   -- last charged meter reading
        baseline_wall REAL,                    -- epoch seconds of that reading
        carry TEXT NOT NULL DEFAULT '0',       -- fraction of a fen carried (decimal)
        accrued_wh INTEGER NOT NULL DEFAULT 0, -- charged, not yet reported
        accrued_fen INTEGER NOT NULL DEFAULT 0,
        chain_from_wh INTEGER,                 -- meter_wh_from of the next power.usage
        accrued_since REAL,                    -- epoch seconds of the first unreported charge
        low_sent INTEGER NOT NULL DEFAULT 0,   -- balance.low sent for this crossing
        hold INTEGER NOT NULL DEFAULT 0,       -- room.cut with hold
        cut_reason TEXT,                       -- why the gateway has it cut, NULL if not
        trip_reason TEXT,                      -- overload/resistive/remote trip waiting to reclose
        reclose_at REAL,                       -- epoch seconds
        lockout_until REAL,                    -- epoch seconds
        trips TEXT NOT NULL DEFAULT '[]',      -- epoch seconds of recent trips (JSON)
        max_power_w INTEGER                    -- room.limit override
    );
    -- Water spent per card per day while the center is unreachable.
    CREATE TABLE offline_spend (
        card TEXT NOT NULL,
        day TEXT NOT NULL,
        fen INTEGER NOT NULL,
        PRIMARY KEY (card, day)
    );
    """,
    # 2: pulses counted by an open water session, so that a recovered session
    # charges the flow after its last progress from the right volume.
    """
    ALTER TABLE water_sessions ADD COLUMN pulses INTEGER NOT NULL DEFAULT 0;
    """,
    # 3: the center link's outbox (gatewayd/store/outbox.py): telemetry queued while
    # offline, and exact per-class counts and bytes of what is unpublished,
    # kept by triggers so that the cap and the status `pending` cost one row
    # read instead of a scan of the backlog.
    """
    CREATE TABLE telemetry (
        id INTEGER PRIMARY KEY,
        wall REAL NOT NULL,                    -- epoch seconds when it was taken
        payload BLOB NOT NULL                  -- the complete JSON message
    );
    CREATE TABLE outbox_pending (
        class INTEGER PRIMARY KEY,             -- delivery class, as events.class
        count INTEGER NOT NULL,
        bytes INTEGER NOT NULL                 -- payload bytes
    );
    INSERT INTO outbox_pending (class, count, bytes) VALUES (0, 0, 0), (1, 0, 0), (2, 0, 0), (3, 0, 0);
    UPDATE outbox_pending SET
        count = (SELECT COUNT(*) FROM commands WHERE published IS NULL),
        bytes = (SELECT COALESCE(SUM(length(result)), 0) FROM commands WHERE published IS NULL)
        WHERE class = 0;
    UPDATE outbox_pending SET
        count = (SELECT COUNT(*) FROM events WHERE published IS NULL AND class = outbox_pending.class),
        bytes = (SELECT COALESCE(SUM(length(payload)), 0) FROM events
                 WHERE published IS NULL AND class = outbox_pending.class)
        WHERE class IN (1, 2);
    CREATE INDEX commands_pending ON commands (received) WHERE published IS NULL;
    CREATE TRIGGER events_outbox_insert AFTER INSERT ON events WHEN new.published IS NULL
    BEGIN
        UPDATE outbox_pending SET count = count + 1, bytes = bytes + length(new.payload)
            WHERE class = new.class;
    END;
    CREATE TRIGGER events_outbox_update AFTER UPDATE OF published, class, payload ON events
    BEGIN
        UPDATE outbox_pending SET count = count - 1, bytes = bytes - length(old.payload)
            WHERE class = old.class AND old.published IS NULL;
        UPDATE outbox_pending SET count = count + 1, bytes = bytes + length(new.payload)
            WHERE class = new.class AND new.published IS NULL;
    END;
    CREATE TRIGGER events_outbox_delete AFTER DELETE ON events WHEN old.published IS NULL
    BEGIN
        UPDATE outbox_pending SET count = count - 1, bytes = bytes - length(old.payload)
            WHERE class = old.class;
    END;
    CREATE TRIGGER commands_outbox_insert AFTER INSERT ON commands WHEN new.published IS NULL
    BEGIN
        UPDATE outbox_pending SET count = count + 1, bytes = bytes + length(new.result) WHERE class = 0;
    END;
    CREATE TRIGGER commands_outbox_update AFTER UPDATE OF published, result ON commands
    BEGIN
        UPDATE outbox_pending SET count = count - 1, bytes = bytes - length(old.result)
            WHERE class = 0 AND old.published IS NULL;
        UPDATE outbox_pending SET count = count + 1, bytes = bytes + length(new.result)
            WHERE class = 0 AND new.published IS NULL;
    END;
    CREATE TRIGGER commands_outbox_delete AFTER DELETE ON commands WHEN old.published IS NULL
    BEGIN
        UPDATE outbox_pending SET count = count - 1, bytes = bytes - length(old.result) WHERE class = 0;
    END;
    CREATE TRIGGER telemetry_outbox_insert AFTER INSERT ON telemetry
    BEGIN
        UPDATE outbox_pending SET count = count + 1, bytes = bytes + length(new.payload) WHERE class = 3;
    END;
    CREATE TRIGGER telemetry_outbox_delete AFTER DELETE ON telemetry
    BEGIN
        UPDATE outbox_pending SET count = count - 1, bytes = bytes - length(old.payload) WHERE class = 3;
    END;
    """,
    # 4: a breaker decision committed but not yet carried out (a crash between
    # the commit and the coil write): finished at the next start, not mistaken
    # for a breaker switched by hand.
    """
    ALTER TABLE rooms ADD COLUMN switch_pending INTEGER NOT NULL DEFAULT 0;
    """,
    # 5: the lasting alarms on record as raised (their last event says active),
    # kept by a trigger on the event log, so that a restart can clear what it no
    # longer sees instead of leaving the center with an alarm for ever.
    """
    CREATE TABLE alarms_active (
        code TEXT NOT NULL,
        device TEXT NOT NULL,
        detail TEXT NOT NULL,
        since TEXT NOT NULL,                   -- the raising event's ts
        PRIMARY KEY (code, device)
    );
    INSERT INTO alarms_active (code, device, detail, since)
    SELECT code, device, COALESCE(detail, ''), ts FROM (
        SELECT json_extract(payload, '$.code') AS code, json_extract(payload, '$.device') AS device,
               json_extract(payload, '$.detail') AS detail, json_extract(payload, '$.ts') AS ts,
               json_extract(payload, '$.active') AS active,
               ROW_NUMBER() OVER (PARTITION BY json_extract(payload, '$.code'),
                                  json_extract(payload, '$.device') ORDER BY seq DESC) AS latest
        FROM events WHERE type = 'alarm'
    ) WHERE latest = 1 AND active AND code NOT IN ('meter_reset', 'meter_jump');
    CREATE TRIGGER events_alarm_state AFTER INSERT ON events
    WHEN new.type = 'alarm' AND json_extract(new.payload, '$.code') NOT IN ('meter_reset', 'meter_jump')
    BEGIN
        DELETE FROM alarms_active WHERE code = json_extract(new.payload, '$.code')
            AND device = json_extract(new.payload, '$.device');
        INSERT INTO alarms_active (code, device, detail, since)
            SELECT json_extract(new.payload, '$.code'), json_extract(new.payload, '$.device'),
                   COALESCE(json_extract(new.payload, '$.detail'), ''), json_extract(new.payload, '$.ts')
            WHERE json_extract(new.payload, '$.active');
    END;
    """,
    # 6: when each remembered command's validity ends (epoch seconds; NULL for
    # rows from before, whose validity was max_command_age_s): its id is kept
    # until then at least, so that a command with `expires` cannot be applied
    # twice (center-link.md "Signing").
    """
    ALTER TABLE commands ADD COLUMN valid_until REAL;
    """,
    # 7: the store's identity (center-link.md "Status", `store_id`): a random
    # UUID (version 4) made once, with the store or by this migration, and kept;
    # the center keys its seq bookkeeping on it.
    """
    INSERT OR IGNORE INTO meta (key, value)
    SELECT 'store_id', lower(substr(h, 1, 8) || '-' || substr(h, 9, 4) || '-4' || substr(h, 14, 3)
                             || '-' || substr('89ab', 1 + (abs(random()) % 4), 1) || substr(h, 18, 3)
                             || '-' || substr(h, 21, 12))
    FROM (SELECT hex(randomblob(16)) AS h);
    """,
]

SCHEMA_VERSION = len(MIGRATIONS)

# Delivery classes (center-link.md "Delivery"), as the `class` column holds them.
CLASS_RESULT = int(Priority.RESULT)
CLASS_MONEY = int(Priority.MONEY)
CLASS_EVENT = int(Priority.EVENT)
CLASS_TELEMETRY = int(Priority.TELEMETRY)


@dataclass(frozen=True, slots=True)
class Event:
    """An event as committed: what the outbox publishes."""

    seq: int
    id: str
    type: str
    payload: bytes


def last_assigned_seq(conn: sqlite3.Connection) -> int:
    """The last event seq assigned in the store, 0 before the first event."""
    row = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'events'").fetchone()
    return int(row[0]) if row else 0


class Txn:
    """What a job sees: the connection, inside the group's transaction."""

    def __init__(self, conn: sqlite3.Connection, store: Store) -> None:
        self.conn = conn
        self._store = store
        self.events: list[Event] = []

    def execute(self, sql: str, params: Any = ()) -> sqlite3.Cursor:
        return self.conn.execute(sql, params)

    def last_seq(self) -> int:
        """The last event seq assigned (events may have been pruned or dropped since)."""
        return last_assigned_seq(self.conn)

    def event(self, body: EventBody, *, ts: str, wall: float | None = None) -> Event:
        """Append an event to the log in this transaction; return it with its seq.

        `body` is the type's own fields, a contract type: the contract decides
        the event's `type` and its delivery class. The envelope (id, seq, ts,
        building) is added here, in the contract's key order.
        """
        seq = self._store._next_seq
        event_id = str(uuid.uuid4())
        type_ = event_type_of(body)
        payload = encode_event(EventEnvelope(id=event_id, seq=seq, ts=ts,
                                             building=self._store.building), body)
        self.conn.execute(
            "INSERT INTO events (seq, id, type, class, wall, payload) VALUES (?, ?, ?, ?, ?, ?)",
            (seq, event_id, type_.value, int(priority_of(type_)),
             time.time() if wall is None else wall, payload),
        )
        self._store._next_seq = seq + 1
        ev = Event(seq, event_id, type_.value, payload)
        self.events.append(ev)
        return ev


Job = Callable[[Txn], Any]


class Store:
    """The store. Create with `Store.open(state_dir, building)`; use from asyncio."""

    def __init__(self, state_dir: Path, building: str) -> None:
        self.state_dir = state_dir
        self.building = building
        self.path = state_dir / DB_NAME
        self._lock_fd: int | None = None
        self._conn: sqlite3.Connection | None = None
        self._queue: queue.SimpleQueue[tuple[Job, Future[Any], bool] | _Exclusive | None] = (
            queue.SimpleQueue())
        self._thread: threading.Thread | None = None
        self._next_seq = 1
        self._closed = False
        self.store_id = ""
        # (st_dev, st_ino) of the files open for the database, by suffix (DB_FILES),
        # and of the lock file: what `file_problem()` compares the paths with.
        self._idents: dict[str, tuple[int, int]] = {}
        self._lock_ident: tuple[int, int] | None = None
        # Listeners called (in the writer thread) with the events of each commit.
        self._on_commit: list[Callable[[list[Event]], None]] = []
        self.commits = 0
        self.jobs = 0

    # --- lifecycle ------------------------------------------------------------

    @classmethod
    def open(cls, state_dir: Path | str, building: str) -> Store:
        """Lock the state directory, open and migrate the database, start the writer.

        Blocking (run it before the event loop's hot paths start, or in a thread).
        """
        store = cls(Path(state_dir), building)
        try:
            store._open()
        except BaseException:
            store._release()
            raise
        return store

    def _open(self) -> None:
        try:
            self.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as e:
            raise StoreError(f"cannot create state directory {self.state_dir}: {e.strerror}") from e
        self._lock()
        existed = self.path.exists()
        conn = self._connect(check=existed)
        self._conn = conn
        self._thread = threading.Thread(target=self._writer, name="store-writer", daemon=True)
        self._thread.start()
        if existed:
            log.info("store_opened", path=str(self.path), schema=SCHEMA_VERSION,
                     next_seq=self._next_seq, store_id=self.store_id)
        else:
            # Not an error on a new box, but never to be mistaken for a restart: a
            # gateway that had a store and lost it starts again at seq 1 here.
            log.warning("store_created", path=str(self.path), store_id=self.store_id,
                        detail="no database at this path: a new store starts (seq from 1). "
                        "If this gateway had one before, its unreported money is not in it: "
                        "stop the service and restore gatewayd.db from a backup.")

    def _connect(self, *, check: bool) -> sqlite3.Connection:
        """Open the database at `path` in WAL mode, migrate it, read its seq and id.

        Sets `_next_seq` (never lower than it was), `store_id` and the files'
        identities. `check` runs a quick_check first (an existing file)."""
        try:
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as e:
            raise StoreError(f"cannot open {self.path}: {e}") from e
        try:
            conn.execute("PRAGMA busy_timeout = 0")
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if mode != "wal":
                raise StoreError(f"{self.path}: cannot switch to WAL mode (got {mode})")
            conn.execute("PRAGMA synchronous = FULL")
            conn.execute("PRAGMA foreign_keys = ON")
            if check:
                row = conn.execute("PRAGMA quick_check").fetchone()
                if row is None or row[0] != "ok":
                    raise StoreError(self._corrupt_message(str(row[0] if row else "no answer")))
            self._migrate(conn)
            self._next_seq = max(self._next_seq, last_assigned_seq(conn) + 1)
            row = conn.execute("SELECT value FROM meta WHERE key = 'store_id'").fetchone()
            self.store_id = row[0] if row else ""
        except sqlite3.DatabaseError as e:
            conn.close()
            raise StoreError(self._corrupt_message(str(e))) from e
        except BaseException:
            conn.close()
            raise
        # The reads above opened the -wal and -shm: these are the files to watch.
        self._idents = {}
        for suffix in DB_FILES:
            with contextlib.suppress(OSError):
                st = os.stat(f"{self.path}{suffix}")
                self._idents[suffix] = (st.st_dev, st.st_ino)
        return conn

    def _corrupt_message(self, detail: str) -> str:
        return (
            f"{self.path} is damaged ({detail}). gatewayd will not start on it and will not "
            "recreate it: it holds money not yet reported. Stop the service, move the "
            "database and its -wal/-shm files aside, restore them from a backup or send them "
            "to the center's operators for recovery, then start again."
        )

    def _lock(self) -> None:
        lock_path = self.state_dir / LOCK_NAME
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as e:
            raise StoreError(f"cannot open lock file {lock_path}: {e.strerror}") from e
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            holder = ""
            with contextlib.suppress(OSError, ValueError):
                holder = os.pread(fd, 32, 0).decode().strip()
            os.close(fd)
            if e.errno in (errno.EAGAIN, errno.EACCES):
                who = f" (pid {holder})" if holder else ""
                raise StoreLocked(
                    f"another gatewayd{who} is already using {self.state_dir}; "
                    "stop it first (systemctl stop gatewayd) or use another state_dir"
                ) from e
            raise StoreError(f"cannot lock {lock_path}: {e.strerror}") from e
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        if self._lock_fd is not None:
            os.close(self._lock_fd)   # a lock file that was removed: this one replaces it
        self._lock_fd = fd
        st = os.fstat(fd)
        self._lock_ident = (st.st_dev, st.st_ino)

    def _migrate(self, conn: sqlite3.Connection) -> None:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"{self.path} has schema version {version}, written by a newer gatewayd "
                f"(this one knows up to {SCHEMA_VERSION}). Install that newer version again, "
                "or restore a backup made by this version; the database was not changed."
            )
        for target in range(version + 1, SCHEMA_VERSION + 1):
            log.info("store_migrating", path=str(self.path), to_version=target)
            conn.execute("BEGIN IMMEDIATE")
            try:
                for statement in _statements(MIGRATIONS[target - 1]):
                    conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {target}")
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise

    def close(self) -> None:
        """Finish queued jobs, stop the writer, close the database, release the lock."""
        if self._closed:
            return
        self._closed = True
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join()
        self._release()
        log.info("store_closed", path=str(self.path))

    def _release(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(sqlite3.Error):
                self._conn.close()
            self._conn = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    # --- jobs -----------------------------------------------------------------

    def submit(self, job: Callable[[Txn], T], *, write: bool = True) -> Future[T]:
        """Queue a job for the writer; the future resolves after its commit."""
        if self._closed:
            raise StoreClosed("the store is closed")
        fut: Future[T] = Future()
        self._queue.put((job, fut, write))
        return fut

    async def run(self, job: Callable[[Txn], T]) -> T:
        """Run a write job in the next group transaction and wait until it is durable.

        Cancelling the caller does not cancel the job: once submitted, it
        commits (a ledger change must not be half-done).
        """
        return await asyncio.wrap_future(self.submit(job))

    async def read(self, job: Callable[[Txn], T]) -> T:
        """Run a read-only job on the writer thread (consistent with every commit)."""
        return await asyncio.wrap_future(self.submit(job, write=False))

    def call(self, job: Callable[[Txn], T]) -> T:
        """Blocking form of run(), for start-up code and tools outside the loop."""
        return self.submit(job).result()

    def on_commit(self, listener: Callable[[list[Event]], None]) -> None:
        """Call `listener(events)` in the writer thread after each commit with events."""
        self._on_commit.append(listener)

    @property
    def next_seq(self) -> int:
        return self._next_seq

    # --- the file under the store --------------------------------------------------

    async def file_problem(self) -> str | None:
        """What is wrong with the database's files at their paths, or None.

        Run in the writer thread (the identities change only there)."""
        return await self.read(lambda _txn: self._file_problem())

    def _file_problem(self) -> str | None:
        if not self.state_dir.is_dir():
            return f"the state directory {self.state_dir} was removed"
        for suffix, ident in self._idents.items():
            name = f"{self.path.name}{suffix}"
            try:
                st = os.stat(self.state_dir / name)
            except FileNotFoundError:
                return f"{name} was removed"
            except OSError as e:
                return f"cannot check {name}: {e.strerror or e}"
            if (st.st_dev, st.st_ino) != ident:
                return f"{name} was replaced by another file"
        return None

    async def restore(self) -> str:
        """Put the open database back at its path, losing nothing; say what was done.

        For a database removed or replaced under the running daemon: a file
        found at its place is kept aside (renamed, never deleted); the open
        database is copied with SQLite's online backup into a temp file beside
        the path, fsynced and renamed over it; then the writer reopens it.
        Runs in the writer thread between transactions. Raises StoreError."""
        fut: Future[str] = Future()
        if self._closed:
            raise StoreClosed("the store is closed")
        self._queue.put(_Exclusive(self._restore, fut))
        return await asyncio.wrap_future(fut)

    def _restore(self) -> str:
        try:
            self.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as e:
            raise StoreError(f"cannot create state directory {self.state_dir}: {e.strerror}") from e
        self._relock()
        done: list[str] = []
        if self._conn is None:
            # A restore that failed after closing the connection: the file at the
            # path is the copy it made; open it.
            self._conn = self._connect(check=True)
            return "reopened the restored database"
        kept = self._set_aside_foreign()
        if kept:
            done.append(f"kept the file found at its place as {kept}")
        tmp = self._backup_beside()
        try:
            os.replace(tmp, self.path)
        except OSError as e:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise StoreError(f"cannot put {self.path} back: {e.strerror or e}") from e
        try:
            _fsync_dir(self.state_dir)
        except OSError as e:  # the file is in place; only the rename's durability is unsure
            log.error("store_restore_fsync_failed", path=str(self.state_dir), error=str(e))
        # Close the old connection only now: everything it holds is in the new file.
        # SQLite checkpoints into the old (unlinked) file and deletes the -wal/-shm
        # at the paths, which are ours or gone (foreign ones were set aside above).
        old, self._conn = self._conn, None
        with contextlib.suppress(sqlite3.Error):
            old.close()
        for suffix in DB_FILES[1:]:
            # Left by a close that could not checkpoint (a reader held it): the old
            # database's, whose content the copy has. Never apply it to the copy.
            with contextlib.suppress(FileNotFoundError):
                os.unlink(f"{self.path}{suffix}")
        seq_before = self._next_seq
        self._conn = self._connect(check=False)
        if self._next_seq != seq_before:
            log.error("store_restore_seq_moved", expected=seq_before, found=self._next_seq)
        done.append(f"restored {self.path.name} from the open database (next seq {self._next_seq})")
        return "; ".join(done)

    def _relock(self) -> None:
        """Take the lock file again when it was removed (with the state directory)."""
        try:
            st = os.stat(self.state_dir / LOCK_NAME)
            if (st.st_dev, st.st_ino) == self._lock_ident:
                return
        except FileNotFoundError:
            pass
        except OSError as e:
            raise StoreError(f"cannot check {self.state_dir / LOCK_NAME}: {e.strerror}") from e
        self._lock()

    def _set_aside_foreign(self) -> str | None:
        """Rename files at the database's paths that are not the open ones (another
        database moved over it) to `gatewayd.db.replaced-STAMP[-wal|-shm]`."""
        stamp = time.strftime("%Y%m%dT%H%M%S")
        kept: str | None = None
        for suffix in DB_FILES:
            path = f"{self.path}{suffix}"
            try:
                st = os.stat(path)
            except FileNotFoundError:
                continue
            except OSError as e:
                raise StoreError(f"cannot check {path}: {e.strerror or e}") from e
            if self._idents.get(suffix) == (st.st_dev, st.st_ino):
                continue
            aside = f"{self.path}.replaced-{stamp}{suffix}"
            try:
                os.rename(path, aside)
            except OSError as e:
                raise StoreError(f"cannot move {path} aside: {e.strerror or e}") from e
            log.warning("store_foreign_file_kept", path=path, kept_as=aside)
            if suffix == "":
                kept = os.path.basename(aside)
        return kept

    def _backup_beside(self) -> str:
        """A durable copy of the open database in a temp file in state_dir; its path."""
        assert self._conn is not None
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.restore-", dir=self.state_dir)
        os.close(fd)
        try:
            dest = sqlite3.connect(tmp, isolation_level=None)
            try:
                self._conn.backup(dest)
            finally:
                dest.close()
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        except (OSError, sqlite3.Error) as e:
            for leftover in (tmp, f"{tmp}-journal"):
                with contextlib.suppress(OSError):
                    os.unlink(leftover)
            raise StoreError(f"cannot copy the open database beside {self.path}: {e}") from e
        return tmp

    # --- the writer thread ----------------------------------------------------------

    def _writer(self) -> None:
        stop = False
        while not stop:
            item = self._queue.get()
            if item is None:
                break
            batch: list[tuple[Job, Future[Any], bool]] = []
            exclusive: _Exclusive | None = None
            if isinstance(item, _Exclusive):
                exclusive = item
            else:
                batch.append(item)
            while batch and len(batch) < MAX_GROUP:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    stop = True
                    break
                if isinstance(nxt, _Exclusive):
                    exclusive = nxt   # after the jobs queued before it
                    break
                batch.append(nxt)
            if batch:
                self._run_batch(batch)
            if exclusive is not None:
                exclusive.run()

    def _run_batch(self, batch: list[tuple[Job, Future[Any], bool]]) -> None:
        live = [(job, fut, write) for job, fut, write in batch if fut.set_running_or_notify_cancel()]
        if not live:
            return
        conn = self._conn
        if conn is None:
            for _, fut, _ in live:
                fut.set_exception(StoreError(f"{self.path} is not open (a restore failed)"))
            return
        seq_at_start = self._next_seq
        txn = Txn(conn, self)
        outcomes: list[tuple[Future[Any], bool, Any]] = []
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as e:
            for _, fut, _ in live:
                fut.set_exception(StoreError(f"cannot begin a transaction: {e}"))
            return
        for job, fut, write in live:
            seq_before = self._next_seq
            events_before = len(txn.events)
            conn.execute("SAVEPOINT job")
            try:
                result = job(txn)
            except BaseException as e:  # a job's own failure is reported to its caller
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK TO job")
                    conn.execute("RELEASE job")
                self._next_seq = seq_before
                del txn.events[events_before:]
                if isinstance(e, sqlite3.Error):
                    # Disk full, I/O error: callers handle StoreError, not sqlite3.
                    e = StoreError(f"{e}")
                outcomes.append((fut, False, e))
                continue
            conn.execute("RELEASE job")
            if not write:
                # A read's answer does not depend on the group's commit.
                _resolve(fut, True, result)
                continue
            outcomes.append((fut, True, result))
        try:
            conn.execute("COMMIT")
        except sqlite3.Error as e:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            self._next_seq = seq_at_start
            err = StoreError(f"commit failed: {e}")
            log.error("store_commit_failed", error=str(e), jobs=len(live))
            for fut, _, _ in outcomes:
                fut.set_exception(err)
            return
        self.commits += 1
        self.jobs += len(live)
        if txn.events:
            for listener in self._on_commit:
                try:
                    listener(txn.events)
                except Exception:
                    log.exception("store_listener_failed")
        for fut, ok, value in outcomes:
            _resolve(fut, ok, value)


@dataclass(frozen=True, slots=True)
class _Exclusive:
    """Work the writer runs alone, outside any transaction (a restore)."""

    fn: Callable[[], Any]
    fut: Future[Any]

    def run(self) -> None:
        if not self.fut.set_running_or_notify_cancel():
            return
        try:
            result = self.fn()
        except BaseException as e:  # reported to the caller, like a job's
            if isinstance(e, sqlite3.Error | OSError):
                e = StoreError(f"{e}")
            self.fut.set_exception(e)
        else:
            self.fut.set_result(result)


def _fsync_dir(path: Path) -> None:
    """Make a rename in `path` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _resolve(fut: Future[Any], ok: bool, value: Any) -> None:
    if ok:
        fut.set_result(value)
    else:
        fut.set_exception(value)


def _statements(script: str) -> list[str]:
    """Split a migration script into statements (sqlite3 runs one per execute)."""
    out: list[str] = []
    current: list[str] = []
    for line in script.splitlines():
        stripped = line.split("--", 1)[0].rstrip()
        if not stripped.strip():
            continue
        current.append(stripped)
        if stripped.endswith(";"):
            stmt = "\n".join(current).strip()
            if sqlite3.complete_statement(stmt):
                out.append(stmt)
                current = []
    if current:
        out.append("\n".join(current))
    return out
