"""The durable store: one SQLite database in `state_dir`, one writer thread.

Contract:
- One writer thread owns the connection. Every read and write is a job run
  there (a function of a `gatewayd.store.txn.Txn`), so the event loop never
  blocks on fsync.
- Jobs that arrive together commit in one transaction (group commit); each
  job runs inside its own SAVEPOINT, so one failing job does not undo the
  others. A job's future resolves only after its transaction is durable
  (WAL, `synchronous=FULL`).
- Events get their `seq` inside the job that makes the ledger change they
  report: `seq` rises by exactly 1, survives crashes and is never reused (a
  job or commit that fails gives its seqs back).
- The schema is migrated on open (`gatewayd.store.schema`); a database from a
  newer gatewayd, or a corrupt one, is refused with a message that says what
  to do, never recreated.
- A second process on the same `state_dir` is refused (an flock on a lock
  file, held for the life of the store: `gatewayd.store.files`).
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
import queue
import sqlite3
import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import structlog

from gatewayd.errors import StoreClosed, StoreError
from gatewayd.store import schema
from gatewayd.store.files import StateFiles
from gatewayd.store.txn import Event, Job, Txn, last_assigned_seq

log = structlog.get_logger(__name__)

T = TypeVar("T")

# At most this many jobs share one transaction: bounds the latency of the
# first job in a burst while still amortising the fsync.
MAX_GROUP = 512

# A job's outcome waiting for the group's commit: its future, ok, the result or error.
_Outcome = tuple[Future[Any], bool, Any]


class Store:
    """The store. Create with `Store.open(state_dir, building)`; use from asyncio."""

    def __init__(self, state_dir: Path, building: str) -> None:
        self.state_dir = state_dir
        self.building = building
        self._files = StateFiles(state_dir)
        self.path = self._files.path
        self._conn: sqlite3.Connection | None = None
        self._queue: queue.SimpleQueue[tuple[Job, Future[Any], bool] | _Exclusive | None] = (
            queue.SimpleQueue())
        self._thread: threading.Thread | None = None
        self._next_seq = 1
        self._closed = False
        self.store_id = ""
        # Listeners called (in the writer thread) with the events of each commit.
        self._on_commit: list[Callable[[list[Event]], None]] = []
        self.commits = 0
        self.jobs = 0


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
        self._files.make_dir()
        self._files.lock()
        existed = self.path.exists()
        conn = self._connect(check=existed)
        self._conn = conn
        self._thread = threading.Thread(target=self._writer, name="store-writer", daemon=True)
        self._thread.start()
        if existed:
            log.info("store_opened", path=str(self.path), schema=schema.SCHEMA_VERSION,
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
            schema.migrate(conn, self.path)
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
        self._files.note_open()
        return conn

    def _corrupt_message(self, detail: str) -> str:
        return (
            f"{self.path} is damaged ({detail}). gatewayd will not start on it and will not "
            "recreate it: it holds money not yet reported. Stop the service, move the "
            "database and its -wal/-shm files aside, restore them from a backup or send them "
            "to the center's operators for recovery, then start again."
        )


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
        self._files.unlock()

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
        return await self.read(lambda _txn: self._files.problem())

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
        self._files.make_dir()
        self._files.relock()
        done: list[str] = []
        if self._conn is None:
            # A restore that failed after closing the connection: the file at the
            # path is the copy it made; open it.
            self._conn = self._connect(check=True)
            return "reopened the restored database"
        kept = self._files.set_aside_foreign()
        if kept:
            done.append(f"kept the file found at its place as {kept}")
        self._files.put_in_place(self._files.backup_beside(self._conn))
        # Close the old connection only now: everything it holds is in the new file.
        # SQLite checkpoints into the old (unlinked) file and deletes the -wal/-shm
        # at the paths, which are ours or gone (foreign ones were set aside above).
        old, self._conn = self._conn, None
        with contextlib.suppress(sqlite3.Error):
            old.close()
        self._files.drop_stale_wal()
        seq_before = self._next_seq
        self._conn = self._connect(check=False)
        if self._next_seq != seq_before:
            log.error("store_restore_seq_moved", expected=seq_before, found=self._next_seq)
        done.append(f"restored {self.path.name} from the open database (next seq {self._next_seq})")
        return "; ".join(done)

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
        txn = self._begin(live)
        if txn is None:
            return
        seq_at_start = self._next_seq
        outcomes = [out for job, fut, write in live
                    if (out := self._run_job(txn, job, fut, write=write)) is not None]
        try:
            txn.conn.execute("COMMIT")
        except sqlite3.Error as e:
            with contextlib.suppress(sqlite3.Error):
                txn.conn.execute("ROLLBACK")
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

    def _begin(self, live: list[tuple[Job, Future[Any], bool]]) -> Txn | None:
        """Open the group's transaction; if it cannot be, fail every job and return None."""
        conn = self._conn
        if conn is None:
            for _, fut, _ in live:
                fut.set_exception(StoreError(f"{self.path} is not open (a restore failed)"))
            return None
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as e:
            for _, fut, _ in live:
                fut.set_exception(StoreError(f"cannot begin a transaction: {e}"))
            return None
        return Txn(conn, self.building, self._next_seq)

    def _run_job(self, txn: Txn, job: Job, fut: Future[Any], *, write: bool) -> _Outcome | None:
        """Run one job in its own savepoint. A read is answered at once (None); a
        write's outcome is returned to be given once the group has committed."""
        conn = txn.conn
        seq_before = txn.next_seq
        events_before = len(txn.events)
        conn.execute("SAVEPOINT job")
        try:
            result = job(txn)
        except BaseException as e:  # a job's own failure is reported to its caller
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK TO job")
                conn.execute("RELEASE job")
            txn.next_seq = seq_before
            del txn.events[events_before:]
            if isinstance(e, sqlite3.Error):
                # Disk full, I/O error: callers handle StoreError, not sqlite3.
                e = StoreError(f"{e}")
            return (fut, False, e)
        conn.execute("RELEASE job")
        self._next_seq = txn.next_seq
        if not write:
            # A read's answer does not depend on the group's commit.
            _resolve(fut, True, result)
            return None
        return (fut, True, result)


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


def _resolve(fut: Future[Any], ok: bool, value: Any) -> None:
    if ok:
        fut.set_result(value)
    else:
        fut.set_exception(value)

