"""One SQLite database (WAL) for everything that is not a blob.

Images, tags, repo digests, layers, the build cache index, containers and volumes live here.
Every change is one transaction (``BEGIN IMMEDIATE``), so concurrent shale processes never
lose a tag and a crash never leaves half a record: blobs and snapshots are written first, the
records that make them visible are published last.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

SCHEMA: list[str] = [
    # v1: images, tags, layers, build cache
    """
    CREATE TABLE images (
        id TEXT PRIMARY KEY,            -- sha256:<hex> of the config bytes
        parent TEXT NOT NULL DEFAULT '',-- parent image ID (commit/build), '' if none
        added REAL NOT NULL,            -- when it entered this store
        manifest TEXT NOT NULL DEFAULT '', -- digest of a kept manifest blob (pull), or ''
        last_tag_time REAL NOT NULL DEFAULT 0
    );
    CREATE INDEX images_parent ON images(parent);
    CREATE TABLE tags (
        name TEXT PRIMARY KEY,          -- normalised reference docker.io/library/x:tag
        image TEXT NOT NULL REFERENCES images(id)
    );
    CREATE INDEX tags_image ON tags(image);
    CREATE TABLE repo_digests (
        name TEXT PRIMARY KEY,          -- docker.io/library/x@sha256:...
        image TEXT NOT NULL REFERENCES images(id)
    );
    CREATE INDEX repo_digests_image ON repo_digests(image);
    CREATE TABLE layers (
        diff_id TEXT PRIMARY KEY,       -- sha256 of the uncompressed tar
        blob TEXT NOT NULL,             -- digest of the stored blob (== diff_id if plain tar)
        media_type TEXT NOT NULL,       -- media type of the stored blob
        blob_size INTEGER NOT NULL,
        diff_size INTEGER NOT NULL,     -- uncompressed tar size
        content_size INTEGER NOT NULL DEFAULT -1 -- bytes of regular files (docker's layer size)
    );
    CREATE TABLE layer_blobs (          -- other encodings of a layer (pushed gzip, pulled)
        digest TEXT PRIMARY KEY,
        diff_id TEXT NOT NULL,
        media_type TEXT NOT NULL,
        size INTEGER NOT NULL
    );
    CREATE INDEX layer_blobs_diff ON layer_blobs(diff_id);
    CREATE TABLE build_cache (
        parent TEXT NOT NULL,
        key TEXT NOT NULL,
        child TEXT NOT NULL,
        PRIMARY KEY (parent, key)
    );
    """,
    # v2: containers and volumes
    """
    CREATE TABLE containers (
        id TEXT PRIMARY KEY,            -- 64 hex
        name TEXT NOT NULL UNIQUE,      -- without the leading '/'
        image TEXT NOT NULL,            -- image ID (sha256:...)
        created REAL NOT NULL,
        record TEXT NOT NULL            -- JSON: Config, HostConfig, Path, Args, Mounts, ...
    );
    CREATE INDEX containers_image ON containers(image);
    CREATE TABLE volumes (
        name TEXT PRIMARY KEY,
        created REAL NOT NULL,
        anonymous INTEGER NOT NULL DEFAULT 0,
        labels TEXT NOT NULL DEFAULT '{}'
    );
    CREATE TABLE volume_users (
        volume TEXT NOT NULL,
        container TEXT NOT NULL,
        PRIMARY KEY (volume, container)
    );
    """,
    # v3: pulled layers whose diff_id is not verified yet (shale.layercheck)
    """
    CREATE TABLE unverified_layers (
        diff_id TEXT PRIMARY KEY REFERENCES layers(diff_id) ON DELETE CASCADE,
        blob TEXT NOT NULL,             -- the pulled blob the config's claim is about
        error TEXT NOT NULL DEFAULT ''  -- why the check failed ('': not checked yet)
    );
    """,
]


class Metadata:
    """A connection to the store's database. One per Engine; not shared across threads."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._db: sqlite3.Connection | None = None
        self._migrate()

    @property
    def db(self) -> sqlite3.Connection:
        """The connection, opened on first use. ``close()`` before ``fork()``: SQLite's
        locks are per process, so a child must never inherit an open connection."""
        if self._db is None:
            db = sqlite3.connect(self.path, timeout=60, isolation_level=None)
            db.row_factory = sqlite3.Row
            try:
                init_connection(db)
            except BaseException:
                db.close()
                raise
            self._db = db
        return self._db

    def _migrate(self) -> None:
        version = self.db.execute("PRAGMA user_version").fetchone()[0]
        if version >= len(SCHEMA):
            return
        with self.transaction() as db:
            version = db.execute("PRAGMA user_version").fetchone()[0]
            for i in range(version, len(SCHEMA)):
                for stmt in _statements(SCHEMA[i]):
                    db.execute(stmt)
            db.execute(f"PRAGMA user_version={len(SCHEMA)}")

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction, taken at once (``BEGIN IMMEDIATE``) so concurrent writers
        queue on SQLite's lock instead of failing on upgrade."""
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield self.db
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    def query(self, sql: str, args: tuple[object, ...] = ()) -> list[sqlite3.Row]:
        return self.db.execute(sql, args).fetchall()

    def one(self, sql: str, args: tuple[object, ...] = ()) -> sqlite3.Row | None:
        row: sqlite3.Row | None = self.db.execute(sql, args).fetchone()
        return row

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None


def init_connection(db: sqlite3.Connection, patience: float = 60.0) -> None:
    """Per-connection settings. Opening a WAL database while another process closes its
    last connection (checkpoint, WAL reset) can answer SQLITE_BUSY without consulting the
    busy handler, so a "locked" here is retried rather than failing a concurrent command.
    WAL mode is persistent: it is only switched on when the file is not in it yet."""
    import time

    deadline = time.monotonic() + patience
    delay = 0.002
    while True:
        try:
            db.execute("PRAGMA busy_timeout=60000")
            if db.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
                db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute("PRAGMA foreign_keys=ON")
            return
        except sqlite3.OperationalError as e:
            if ("locked" not in str(e) and "busy" not in str(e)) or time.monotonic() > deadline:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 0.1)


def _statements(script: str) -> list[str]:
    """Split a schema script on ';' (the schema has no ';' inside strings or triggers)."""
    out = []
    for part in script.split(";"):
        lines = [ln.split("--", 1)[0] for ln in part.splitlines()]
        stmt = "\n".join(lines).strip()
        if stmt:
            out.append(stmt)
    return out
