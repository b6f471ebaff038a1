"""The files under a store: the state directory, its lock, the database's files.

Contract:
- A second process on the same `state_dir` is refused (an flock on a lock
  file, held for the life of the store); the lock file names the holder's pid.
- The database file is never lost quietly: `problem()` compares the files
  open for the database with what is at their paths (removed, or another file
  moved over them). To put the database back, a file found at its place is
  kept aside (renamed, never deleted), and the open database is copied with
  SQLite's online backup into a temp file beside the path, fsynced and renamed
  over it (`gatewayd.store.db` `Store.restore` runs those steps).
- Failures raise StoreError (StoreLocked for another holder) with a message
  that says what to do.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import sqlite3
import tempfile
import time
from pathlib import Path

import structlog

from gatewayd.errors import StoreError, StoreLocked

log = structlog.get_logger(__name__)

DB_NAME = "gatewayd.db"
LOCK_NAME = "gatewayd.lock"
# The files SQLite keeps open for the database, by suffix of its path.
DB_FILES = ("", "-wal", "-shm")


class StateFiles:
    """The lock on `state_dir` and the identities of the database's files."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.path = state_dir / DB_NAME
        self._lock_fd: int | None = None
        # (st_dev, st_ino) of the files open for the database, by suffix (DB_FILES),
        # and of the lock file: what `problem()` compares the paths with.
        self._idents: dict[str, tuple[int, int]] = {}
        self._lock_ident: tuple[int, int] | None = None

    def make_dir(self) -> None:
        """Create the state directory (0700) if it is missing."""
        try:
            self.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as e:
            raise StoreError(f"cannot create state directory {self.state_dir}: {e.strerror}") from e

    def lock(self) -> None:
        """Take the lock file, or raise StoreLocked naming the process that holds it."""
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

    def relock(self) -> None:
        """Take the lock file again when it was removed (with the state directory)."""
        try:
            st = os.stat(self.state_dir / LOCK_NAME)
            if (st.st_dev, st.st_ino) == self._lock_ident:
                return
        except FileNotFoundError:
            pass
        except OSError as e:
            raise StoreError(f"cannot check {self.state_dir / LOCK_NAME}: {e.strerror}") from e
        self.lock()

    def unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def note_open(self) -> None:
        """Remember the identities of the database's files, just opened."""
        self._idents = {}
        for suffix in DB_FILES:
            with contextlib.suppress(OSError):
                st = os.stat(f"{self.path}{suffix}")
                self._idents[suffix] = (st.st_dev, st.st_ino)

    def problem(self) -> str | None:
        """What is wrong with the database's files at their paths, or None."""
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

    def set_aside_foreign(self) -> str | None:
        """Rename files at the database's paths that are not the open ones (another
        database moved over it) to `gatewayd.db.replaced-STAMP[-wal|-shm]`; return
        the name the database file was kept as, if it was."""
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

    def backup_beside(self, conn: sqlite3.Connection) -> str:
        """A durable copy of the database open on `conn` in a temp file in state_dir; its path."""
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.restore-", dir=self.state_dir)
        os.close(fd)
        try:
            dest = sqlite3.connect(tmp, isolation_level=None)
            try:
                conn.backup(dest)
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
            # The log line of the caller names the database (`path=`): not repeated here.
            why = e.strerror if isinstance(e, OSError) and e.strerror else e
            raise StoreError(f"cannot copy the open database beside it: {why}") from e
        return tmp

    def put_in_place(self, tmp: str) -> None:
        """Rename the copy `tmp` over the database's path, durably."""
        try:
            os.replace(tmp, self.path)
        except OSError as e:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise StoreError(f"cannot put the copy in place: {e.strerror or e}") from e
        try:
            _fsync_dir(self.state_dir)
        except OSError as e:  # the file is in place; only the rename's durability is unsure
            log.error("store_restore_fsync_failed", path=str(self.state_dir), error=str(e))

    def drop_stale_wal(self) -> None:
        """Remove the -wal/-shm at the paths, left by a close that could not checkpoint
        (a reader held it): the old database's, whose content the copy has. Never
        apply them to the copy."""
        for suffix in DB_FILES[1:]:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(f"{self.path}{suffix}")


def _fsync_dir(path: Path) -> None:
    """Make a rename in `path` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
