"""The machinery both snapshot drivers share: the metadata database and the lifecycle.

Layout under a driver's home::

    metadata.db            SQLite (WAL): name -> id, kind, parent, labels, created, usage
    snapshots/<id>/fs      the snapshot's own files
    tmp/<pid>-<token>      staging (new snapshots) and trash (removed ones)

Every state change runs in one ``BEGIN IMMEDIATE`` transaction, which holds SQLite's write
lock, so the directory renames that go with it are serialised with every other writer:
a snapshot directory is published (renamed from ``tmp/``) only while its row is being
inserted, and undone while the lock is still held if the transaction fails. Slow work
(copying a parent for vfs, walking a tree for usage) happens before the transaction.
Drivers subclass ``SnapshotStore`` and supply only how a directory is filled and mounted.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import shutil
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from shale.errors import AlreadyExists, InUse, InvalidArgument, NotFound
from shale.metadata import init_connection
from shale.mount import Mount
from shale.record import record
from shale.snapshots import Info, Kind, Usage

_SCHEMA = """
CREATE TABLE IF NOT EXISTS snapshots (
    id      INTEGER PRIMARY KEY AUTOINCREMENT,
    name    TEXT NOT NULL UNIQUE,
    kind    TEXT NOT NULL,
    parent  INTEGER REFERENCES snapshots(id),
    labels  TEXT NOT NULL,
    created REAL NOT NULL,
    size    INTEGER,
    inodes  INTEGER
);
CREATE INDEX IF NOT EXISTS snapshots_parent ON snapshots(parent);
"""
_SCHEMA_VERSION = 1
_BUSY_TIMEOUT_MS = 60_000
_ROW_SQL = """SELECT s.id, s.name, s.kind, s.parent, p.name, s.labels, s.created,
                     s.size, s.inodes
              FROM snapshots s LEFT JOIN snapshots p ON p.id = s.parent"""


@record(frozen=True)
class Row:
    id: int
    name: str
    kind: Kind
    parent_id: int | None
    parent: str
    labels: dict[str, str]
    created: float
    size: int | None
    inodes: int | None

    def info(self) -> Info:
        return Info(self.name, self.kind, self.parent, self.created, dict(self.labels))


def _row(t: tuple[object, ...]) -> Row:
    id_, name, kind, parent_id, parent, labels, created, size, inodes = t
    assert isinstance(id_, int) and isinstance(name, str) and isinstance(kind, str)
    assert isinstance(labels, str) and isinstance(created, float)
    return Row(id_, name, Kind(kind), parent_id if isinstance(parent_id, int) else None,
               parent if isinstance(parent, str) else "", json.loads(labels), created,
               size if isinstance(size, int) else None,
               inodes if isinstance(inodes, int) else None)


class Tx:
    """An open write transaction plus undo actions for the filesystem changes made in it;
    undos run (newest first) while the write lock is still held."""

    def __init__(self, con: sqlite3.Connection) -> None:
        self.con = con
        self._undo: list[Callable[[], None]] = []

    def undo(self, action: Callable[[], None]) -> None:
        self._undo.append(action)

    def rollback(self) -> None:
        for action in reversed(self._undo):
            with contextlib.suppress(OSError):
                action()
        if self.con.in_transaction:
            self.con.execute("ROLLBACK")


class MetaStore:
    """The per-driver SQLite file. One connection per process (reopened after fork, as
    SQLite connections must not cross a fork), guarded by a lock for threads."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.RLock()
        self._pid = -1
        self._con: sqlite3.Connection | None = None

    def _connect(self) -> sqlite3.Connection:
        if self._con is not None and self._pid == os.getpid():
            return self._con
        con = sqlite3.connect(self.path, timeout=_BUSY_TIMEOUT_MS / 1000,
                              isolation_level=None, check_same_thread=False)
        try:
            init_connection(con)  # WAL, NORMAL sync, foreign keys; retries a racy BUSY
        except BaseException:
            con.close()
            raise
        if con.execute("PRAGMA user_version").fetchone()[0] != _SCHEMA_VERSION:
            _create_schema(con)
        self._con, self._pid = con, os.getpid()
        return con

    def close(self) -> None:
        with self._lock:
            if self._con is not None and self._pid == os.getpid():
                self._con.close()
            self._con = None

    @contextlib.contextmanager
    def write(self) -> Iterator[Tx]:
        with self._lock:
            con = self._connect()
            con.execute("BEGIN IMMEDIATE")
            tx = Tx(con)
            try:
                yield tx
                con.execute("COMMIT")
            except BaseException:
                tx.rollback()
                raise

    def find(self, name: str, con: sqlite3.Connection | None = None) -> Row | None:
        with self._lock:
            c = con or self._connect()
            t = c.execute(f"{_ROW_SQL} WHERE s.name = ?", (name,)).fetchone()
        return None if t is None else _row(t)

    def get(self, name: str) -> Row:
        row = self.find(name)
        if row is None:
            raise NotFound(f"snapshot {name!r}: not found")
        return row

    def rows(self) -> list[Row]:
        with self._lock:
            return [_row(t) for t in self._connect().execute(f"{_ROW_SQL} ORDER BY s.id")]

    def ancestors(self, row_id: int) -> list[int]:
        """Ids of the row's ancestors, nearest parent first."""
        sql = """WITH RECURSIVE chain(id, depth) AS (
                     SELECT parent, 1 FROM snapshots WHERE id = ? AND parent IS NOT NULL
                     UNION ALL
                     SELECT s.parent, c.depth + 1 FROM snapshots s JOIN chain c ON s.id = c.id
                     WHERE s.parent IS NOT NULL)
                 SELECT id FROM chain ORDER BY depth"""
        with self._lock:
            return [t[0] for t in self._connect().execute(sql, (row_id,))]

    def ids(self) -> set[int]:
        with self._lock:
            return {t[0] for t in self._connect().execute("SELECT id FROM snapshots")}


def _create_schema(con: sqlite3.Connection) -> None:
    # Not executescript: it would commit our BEGIN IMMEDIATE first, dropping the lock.
    con.execute("BEGIN IMMEDIATE")
    try:
        for stmt in _SCHEMA.split(";"):
            if stmt.strip():
                con.execute(stmt)
        con.execute(f"PRAGMA user_version={_SCHEMA_VERSION}")
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise


def disk_usage(root: Path) -> Usage:
    """Bytes of regular files and number of inodes below ``root`` (not counting ``root``);
    hardlinks (and overlay whiteouts, which share one inode) count once."""
    seen: set[tuple[int, int]] = set()
    size = 0
    stack = [os.fspath(root)]
    while stack:
        with os.scandir(stack.pop()) as it:
            for entry in it:
                st = entry.stat(follow_symlinks=False)
                if (st.st_dev, st.st_ino) in seen:
                    continue
                seen.add((st.st_dev, st.st_ino))
                if entry.is_dir(follow_symlinks=False):
                    stack.append(entry.path)
                elif entry.is_file(follow_symlinks=False):
                    size += st.st_size
    return Usage(size=size, inodes=len(seen))


def _rmtree(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink(missing_ok=True)
    elif path.exists():
        shutil.rmtree(path, ignore_errors=True)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class SnapshotStore:
    """The Snapshotter contract on top of ``MetaStore``; a driver overrides ``_populate``,
    ``_mounts`` and, if it keeps more per snapshot on disk, ``_publish``/``_unpublish``."""

    driver = ""
    layer_format = ""

    def __init__(self, home: Path) -> None:
        self.home = home
        for sub in ("snapshots", "tmp"):
            (home / sub).mkdir(parents=True, exist_ok=True)
        self._meta = MetaStore(home / "metadata.db")

    # --- driver hooks -----------------------------------------------------------------

    def _populate(self, staging: Path, kind: Kind, parent: Row | None) -> None:
        raise NotImplementedError

    def _mounts(self, row: Row) -> list[Mount]:
        raise NotImplementedError

    def _check_depth(self, lowers: int) -> None:
        """Refuse a chain the driver cannot mount (overlay: the kernel's 500 lowers)."""

    def _publish(self, tx: Tx, row_id: int) -> None:
        """Called in the transaction after the directory is in place."""

    def _unpublish(self, tx: Tx, row_id: int) -> None:
        """Called in the transaction that removes the snapshot."""

    # --- paths ------------------------------------------------------------------------

    def _dir(self, row_id: int) -> Path:
        return self.home / "snapshots" / str(row_id)

    def _fs(self, row_id: int) -> Path:
        return self._dir(row_id) / "fs"

    def _staging(self, what: str = "") -> Path:
        # The pid in the name lets cleanup() tell an abandoned staging dir from a live one.
        name = f"{os.getpid()}-{what}{os.urandom(8).hex()}"
        return self.home / "tmp" / name

    # --- the contract -----------------------------------------------------------------

    def prepare(self, key: str, parent: str = "", labels: dict[str, str] | None = None
                ) -> list[Mount]:
        return self._create(key, parent, Kind.ACTIVE, labels)

    def view(self, key: str, parent: str, labels: dict[str, str] | None = None
             ) -> list[Mount]:
        return self._create(key, parent, Kind.VIEW, labels)

    def _parent_row(self, parent: str, con: sqlite3.Connection | None = None) -> Row | None:
        if not parent:
            return None
        row = self._meta.find(parent, con)
        if row is None:
            raise NotFound(f"parent snapshot {parent!r}: not found")
        if row.kind != Kind.COMMITTED:
            raise InvalidArgument(f"parent snapshot {parent!r} is {row.kind.value}, "
                                  "not committed")
        return row

    def _create(self, key: str, parent: str, kind: Kind, labels: dict[str, str] | None
                ) -> list[Mount]:
        _check_name(key)
        prow = self._parent_row(parent)
        if prow is not None:
            self._check_depth(1 + len(self._meta.ancestors(prow.id)))
        if self._meta.find(key) is not None:
            raise AlreadyExists(f"snapshot {key!r}: already exists")
        staging = self._staging()
        try:
            staging.mkdir(mode=0o700)
            self._populate(staging, kind, prow)
            with self._meta.write() as tx:
                self._insert(tx, key, parent, kind, labels, staging)
        finally:
            _rmtree(staging)
        return self.mounts(key)

    def _insert(self, tx: Tx, key: str, parent: str, kind: Kind,
                labels: dict[str, str] | None, staging: Path) -> None:
        # Checked again under the write lock: another process may have raced us.
        prow = self._parent_row(parent, tx.con)
        try:
            cur = tx.con.execute(
                "INSERT INTO snapshots (name, kind, parent, labels, created)"
                " VALUES (?, ?, ?, ?, ?)",
                (key, kind.value, prow.id if prow else None,
                 json.dumps(labels or {}, sort_keys=True), time.time()))
        except sqlite3.IntegrityError:
            raise AlreadyExists(f"snapshot {key!r}: already exists") from None
        row_id = cur.lastrowid
        assert row_id is not None
        dest = self._dir(row_id)
        # Ids are handed out under the write lock, so anything already there is the orphan
        # of a process killed between rename and commit.
        _rmtree(dest)
        os.rename(staging, dest)
        tx.undo(lambda: _rmtree(dest))
        self._publish(tx, row_id)

    def mounts(self, key: str) -> list[Mount]:
        row = self._meta.get(key)
        if row.kind == Kind.COMMITTED:
            raise InvalidArgument(f"snapshot {key!r} is committed: mount a view of it")
        return self._mounts(row)

    def commit(self, name: str, key: str, labels: dict[str, str] | None = None) -> None:
        _check_name(name)
        row = self._meta.get(key)
        if row.kind != Kind.ACTIVE:
            raise InvalidArgument(f"snapshot {key!r} is {row.kind.value}: only an active "
                                  "snapshot can be committed")
        if self._meta.find(name) is not None:
            raise AlreadyExists(f"snapshot {name!r}: already exists")
        usage = disk_usage(self.layer_dir(key))  # outside the lock: it walks the tree
        new_labels = row.labels if labels is None else labels
        with self._meta.write() as tx:
            now = self._meta.find(key, tx.con)
            if now is None or now.id != row.id or now.kind != Kind.ACTIVE:
                raise NotFound(f"snapshot {key!r}: not found (removed or committed "
                               "meanwhile)")
            try:
                tx.con.execute(
                    "UPDATE snapshots SET name = ?, kind = ?, labels = ?, size = ?,"
                    " inodes = ? WHERE id = ?",
                    (name, Kind.COMMITTED.value, json.dumps(new_labels, sort_keys=True),
                     usage.size, usage.inodes, row.id))
            except sqlite3.IntegrityError:
                raise AlreadyExists(f"snapshot {name!r}: already exists") from None

    def remove(self, key: str) -> None:
        trash = self._staging("rm-")
        with self._meta.write() as tx:
            row = self._meta.find(key, tx.con)
            if row is None:
                raise NotFound(f"snapshot {key!r}: not found")
            children = [t[0] for t in tx.con.execute(
                "SELECT name FROM snapshots WHERE parent = ? ORDER BY id LIMIT 3", (row.id,))]
            if children:
                raise InUse(f"snapshot {key!r} has children ({', '.join(children)}"
                            f"{', ...' if len(children) == 3 else ''}): remove them first")
            tx.con.execute("DELETE FROM snapshots WHERE id = ?", (row.id,))
            src = self._dir(row.id)
            if src.exists():
                os.rename(src, trash)
                tx.undo(lambda: os.rename(trash, src))
            self._unpublish(tx, row.id)
        _rmtree(trash)  # after the commit: deleting a big tree must not hold the lock

    def remove_all(self, keys: list[str]) -> list[str]:
        """``remove`` of each key that exists, in order (children first), in one
        transaction: all of them go or none. Returns the keys removed."""
        trash: list[Path] = []
        removed: list[str] = []
        try:
            with self._meta.write() as tx:
                for key in keys:
                    row = self._meta.find(key, tx.con)
                    if row is None:
                        continue
                    children = [t[0] for t in tx.con.execute(
                        "SELECT name FROM snapshots WHERE parent = ? ORDER BY id LIMIT 3",
                        (row.id,))]
                    if children:
                        raise InUse(f"snapshot {key!r} has children ({', '.join(children)}"
                                    f"{', ...' if len(children) == 3 else ''}): remove them "
                                    "first")
                    tx.con.execute("DELETE FROM snapshots WHERE id = ?", (row.id,))
                    src = self._dir(row.id)
                    if src.exists():
                        dst = self._staging("rm-")
                        os.rename(src, dst)
                        trash.append(dst)
                        tx.undo(functools.partial(os.rename, dst, src))
                    self._unpublish(tx, row.id)
                    removed.append(key)
        except BaseException:
            trash.clear()  # the undo put them back
            raise
        for path in trash:  # after the commit: deleting trees must not hold the lock
            _rmtree(path)
        return removed

    def stat(self, key: str) -> Info:
        return self._meta.get(key).info()

    def walk(self) -> Iterator[Info]:
        for row in self._meta.rows():
            yield row.info()

    def usage(self, key: str) -> Usage:
        row = self._meta.get(key)
        if row.kind == Kind.COMMITTED and row.size is not None and row.inodes is not None:
            return Usage(row.size, row.inodes)
        return disk_usage(self.layer_dir(key))

    def layer_dir(self, key: str) -> Path:
        return self._fs(self._meta.get(key).id)

    def parent_dirs(self, key: str) -> list[Path]:
        return [self._fs(i) for i in self._meta.ancestors(self._meta.get(key).id)]

    def close(self) -> None:
        self._meta.close()

    def cleanup(self) -> list[Path]:
        """Remove what killed processes left behind: staging and trash dirs of dead pids,
        snapshot dirs without a row. Runs under the write lock, so no live writer is
        between its rename and its commit. Returns what was removed."""
        removed: list[Path] = []
        with self._meta.write() as tx:
            ids = {t[0] for t in tx.con.execute("SELECT id FROM snapshots")}
            for entry in (self.home / "tmp").iterdir():
                pid = entry.name.split("-", 1)[0]
                if not pid.isdigit() or not _pid_alive(int(pid)):
                    removed.append(entry)
            for entry in (self.home / "snapshots").iterdir():
                if not entry.name.isdigit() or int(entry.name) not in ids:
                    removed.append(entry)
            removed.extend(self._orphans(ids))
            for path in removed:
                _rmtree(path)
        return removed

    def _orphans(self, ids: set[int]) -> list[Path]:
        """Driver-specific leftovers (overlay: short links) for ``cleanup``."""
        return []


def _check_name(name: str) -> None:
    if not isinstance(name, str) or not name or "\0" in name:
        raise InvalidArgument(f"invalid snapshot key {name!r}: want a non-empty string")
