"""The container store: records, state, the snapshot chain and the bundle.

A container is a row in the metadata database (its docker-shaped record: ``Config``,
``HostConfig``, ``Mounts``...) plus a directory ``containers/<id>/`` holding its state file,
its log, its bundle (``config.json`` and the ``rootfs`` mount point) and the files bound at
/etc/hostname, /etc/hosts and /etc/resolv.conf.

Snapshot chain (DESIGN.md section 7): image top chain -> ``init-<id>`` (committed: mount-point
stubs, so ``diff``/``commit``/``export`` never show them) -> ``<id>`` (active, writable).

State is written only by the container's monitor (``monitor.py``), atomically; the monitor
holds an ``flock`` on ``monitor.lock`` while alive, so "running" is a lock test and a
container whose monitor died shows as exited.
"""

from __future__ import annotations

import builtins
import contextlib
import fcntl
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shale.errors import Conflict, InvalidArgument, NotFound
from shale.fileutil import atomic_write
from shale.record import field, fields, record

if TYPE_CHECKING:
    from shale.engine import Engine
    from shale.mount import Mount

INIT_STUBS_FILES = ("etc/hosts", "etc/hostname", "etc/resolv.conf")
INIT_STUBS_DIRS = ("proc", "sys", "dev", "dev/pts", "dev/shm", "etc")
ZERO_TIME = "0001-01-01T00:00:00Z"


@record
class State:
    Status: str = "created"  # created running paused restarting removing exited dead
    Running: bool = False
    Paused: bool = False
    Restarting: bool = False
    OOMKilled: bool = False
    Dead: bool = False
    Pid: int = 0
    ExitCode: int = 0
    Error: str = ""
    StartedAt: str = ZERO_TIME
    FinishedAt: str = ZERO_TIME
    RestartCount: int = 0
    MonitorPid: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        d = {k: getattr(self, k) for k in fields(self) if k != "extra"}
        d.update(self.extra)
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> State:
        known = {k: d[k] for k in fields(cls) if k in d and k != "extra"}
        extra = {k: v for k, v in d.items() if k not in fields(cls)}
        return cls(**known, extra=extra)


@record
class Container:
    id: str
    name: str
    image: str
    created: float
    record: dict[str, Any]
    dir: Path

    @property
    def config(self) -> dict[str, Any]:
        c: dict[str, Any] = self.record["Config"]
        return c

    @property
    def host_config(self) -> dict[str, Any]:
        h: dict[str, Any] = self.record["HostConfig"]
        return h

    @property
    def short_id(self) -> str:
        return self.id[:12]

    @property
    def state_path(self) -> Path:
        return self.dir / "state.json"

    @property
    def lock_path(self) -> Path:
        return self.dir / "monitor.lock"

    @property
    def log_path(self) -> Path:
        return self.dir / f"{self.id}-json.log"

    @property
    def bundle(self) -> Path:
        return self.dir / "bundle"

    @property
    def rootfs(self) -> Path:
        return self.dir / "bundle" / "rootfs"

    @property
    def attach_socket(self) -> Path:
        return self.dir / "attach.sock"

    @property
    def snapshot_key(self) -> str:
        return self.id

    @property
    def init_snapshot(self) -> str:
        return f"init-{self.id}"

    def to_json(self) -> dict[str, Any]:
        """What a process without the database (the monitor) needs to know it."""
        return {"id": self.id, "name": self.name, "image": self.image,
                "created": self.created, "record": self.record, "dir": str(self.dir)}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Container:
        return cls(d["id"], d["name"], d["image"], d["created"], d["record"], Path(d["dir"]))


def monitor_alive(lock_path: Path) -> bool:
    """True while some process holds the container's monitor lock."""
    try:
        fd = os.open(lock_path, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def read_state(c: Container) -> State:
    """The container's state, corrected for a dead monitor. No database access, so the
    monitor (a forked child that must not touch SQLite) can use it."""
    try:
        st = State.from_json(json.loads(c.state_path.read_text()))
    except (FileNotFoundError, ValueError):
        st = State()
    if st.Status in ("running", "paused", "restarting") and not monitor_alive(c.lock_path):
        # the monitor died (kill -9, reboot): the container died with it
        st.Status, st.Running, st.Paused, st.Restarting = "exited", False, False, False
        st.Pid = 0
        if st.FinishedAt == ZERO_TIME:
            st.ExitCode = 137 if st.ExitCode == 0 else st.ExitCode
            # when it died is unknown until the next command records it (cleanup_dead):
            # the last state write is the best bound, never "year 1"
            with contextlib.suppress(OSError):
                from shale.oci import format_time

                st.FinishedAt = format_time(c.state_path.stat().st_mtime)
    return st


def take_lock(c: Container, wait: float = 0.0) -> int:
    """The container's monitor lock, taken (``flock`` exclusive, close-on-exec fd) by
    ``start`` from the mount of the rootfs on, then held by the monitor it forks, or by an
    operation on a stopped container's mounted rootfs. Conflict while someone else holds
    it after ``wait`` seconds (a monitor finishing up after the exit takes a moment)."""
    fd = os.open(c.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    end = time.monotonic() + wait
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            if time.monotonic() >= end:
                os.close(fd)
                raise Conflict(f"container {c.id[:12]} is running or being started"
                               ) from None
            time.sleep(0.01)


@contextlib.contextmanager
def stopped_rootfs(engine: Engine, c: Container) -> Iterator[Path]:
    """The rootfs of a container that is not running, mounted for the caller (and unmounted
    after it unless it was mounted already); the monitor lock is held meanwhile, so neither
    a ``start`` nor the crash cleanup of another command can interleave."""
    from shale.mount import is_mountpoint, mount_all, unmount

    lock = take_lock(c, wait=10.0)
    try:
        mounted_here = not is_mountpoint(c.rootfs)
        if mounted_here:
            with engine.lock():
                mount_all(engine.snapshots.mounts(c.snapshot_key), c.rootfs)
        try:
            yield c.rootfs
        finally:
            if mounted_here:
                unmount(c.rootfs)
    finally:
        os.close(lock)


def write_state(c: Container, st: State) -> None:
    atomic_write(c.state_path, json.dumps(st.to_json()).encode(), durable=False)


def unmount_rootfs(c: Container) -> None:
    from shale.mount import unmount

    unmount(c.rootfs)  # everything at and below it


class ContainerStore:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.meta = engine.meta
        self.base = engine.root / "containers"
        self.base.mkdir(exist_ok=True)

    # ---- lookup ------------------------------------------------------------------------
    def _from_row(self, row: Any) -> Container:
        return Container(row["id"], row["name"], row["image"], row["created"],
                         json.loads(row["record"]), self.base / row["id"])

    def get(self, name: str) -> Container:
        """By full ID, name (with or without '/'), or unique ID prefix (docker's order)."""
        text = name.strip()
        row = self.meta.one("SELECT * FROM containers WHERE id=?", (text,))
        if row is None:
            row = self.meta.one("SELECT * FROM containers WHERE name=?", (text.lstrip("/"),))
        if row is None and text and all(c in "0123456789abcdef" for c in text):
            rows = self.meta.query("SELECT * FROM containers WHERE id LIKE ?", (text + "%",))
            if len(rows) > 1:
                raise Conflict(f"multiple IDs found with provided prefix: {text}")
            row = rows[0] if rows else None
        if row is None:
            raise NotFound(f"No such container: {name}")
        return self._from_row(row)

    def list(self) -> builtins.list[Container]:
        rows = self.meta.query("SELECT * FROM containers ORDER BY created DESC")
        return [self._from_row(r) for r in rows]

    def users_of_image(self, image_id: str) -> builtins.list[tuple[str, bool]]:
        rows = self.meta.query("SELECT id FROM containers WHERE image=?", (image_id,))
        out: builtins.list[tuple[str, bool]] = []
        for r in rows:
            c = self.get(r["id"])
            out.append((c.id, self.state(c).Running))
        return out

    # ---- state -------------------------------------------------------------------------
    def state(self, c: Container) -> State:
        return read_state(c)

    def write_state(self, c: Container, st: State) -> None:
        write_state(c, st)

    # ---- create ------------------------------------------------------------------------
    def create(self, record: dict[str, Any], name: str | None, cid: str | None = None
               ) -> Container:
        """Insert a record (name unique across processes via the database), make its
        directory and state. The caller fills the record (Config, HostConfig, Image...);
        ``cid``: the ID, when the caller needed it before (a fresh random one else)."""
        cid = cid or os.urandom(32).hex()
        wanted = name.lstrip("/") if name else None
        if wanted is not None:
            _check_name(wanted)
        now = time.time()
        record = {**record, "Id": cid}
        with self.meta.transaction() as db:
            nm = wanted or self._random_name(db)
            row = db.execute("SELECT id FROM containers WHERE name=?", (nm,)).fetchone()
            if row is not None:
                raise Conflict(f'Conflict. The container name "/{nm}" is already in use by '
                               f'container "{row["id"]}". You have to remove (or rename) that '
                               "container to be able to reuse that name.")
            record["Name"] = "/" + nm
            db.execute("INSERT INTO containers VALUES (?,?,?,?,?)",
                       (cid, nm, record["Image"], now, json.dumps(record)))
        c = Container(cid, nm, record["Image"], now, record, self.base / cid)
        c.dir.mkdir(mode=0o710)
        (c.dir / "bundle").mkdir()
        c.rootfs.mkdir()
        self.write_state(c, State())
        return c

    @staticmethod
    def _random_name(db: Any) -> str:
        from shale.names import random_name

        for _ in range(20):
            nm = random_name()
            if db.execute("SELECT 1 FROM containers WHERE name=?", (nm,)).fetchone() is None:
                return nm
        return random_name() + "_" + os.urandom(2).hex()

    def update_record(self, c: Container) -> None:
        with self.meta.transaction() as db:
            db.execute("UPDATE containers SET record=? WHERE id=?", (json.dumps(c.record), c.id))

    def rename(self, c: Container, new: str) -> None:
        new = new.lstrip("/")
        _check_name(new)
        with self.meta.transaction() as db:
            row = db.execute("SELECT id FROM containers WHERE name=?", (new,)).fetchone()
            if row is not None:
                raise Conflict(f'Conflict. The container name "/{new}" is already in use by '
                               f'container "{row["id"]}". You have to remove (or rename) that '
                               "container to be able to reuse that name.")
            c.record["Name"] = "/" + new
            db.execute("UPDATE containers SET name=?, record=? WHERE id=?",
                       (new, json.dumps(c.record), c.id))
        c.name = new

    def delete_record(self, c: Container) -> None:
        with self.meta.transaction() as db:
            db.execute("DELETE FROM containers WHERE id=?", (c.id,))
            db.execute("DELETE FROM volume_users WHERE container=?", (c.id,))

    # ---- snapshots ---------------------------------------------------------------------
    def prepare_snapshots(self, c: Container, image_chain: str,
                          stub_paths: builtins.list[tuple[str, bool]]) -> None:
        """image chain -> committed init layer with the stubs -> active writable layer.
        ``stub_paths``: (mount target, is a directory) for volumes, binds, tmpfs."""
        snap = self.engine.snapshots
        key = f"{c.init_snapshot}-key"
        snap.prepare(key, image_chain, labels={"shale.container": c.id})
        try:
            _write_stubs(snap.layer_dir(key), stub_paths, snap.parent_dirs(key),
                         snap.layer_format)
            snap.commit(c.init_snapshot, key, labels={"shale.container": c.id})
        except BaseException:
            with contextlib.suppress(Exception):
                snap.remove(key)
            raise
        snap.prepare(c.snapshot_key, c.init_snapshot, labels={"shale.container": c.id})

    def remove_snapshots(self, c: Container) -> None:
        self.engine.snapshots.remove_all([c.snapshot_key, f"{c.init_snapshot}-key",
                                          c.init_snapshot])

    def mount_rootfs(self, c: Container) -> None:
        from shale.mount import is_mountpoint, mount_all

        if is_mountpoint(c.rootfs):
            return
        mount_all(self.rootfs_mounts(c), c.rootfs)

    def rootfs_mounts(self, c: Container) -> builtins.list[Mount]:
        """What makes the container's rootfs (its writable snapshot on the image)."""
        mounts = self.engine.snapshots.mounts(c.snapshot_key)
        if c.host_config.get("AutoRemove"):
            mounts = [_volatile(m) for m in mounts]
        return mounts

    def unmount_rootfs(self, c: Container) -> None:
        unmount_rootfs(c)


def _volatile(m: Mount) -> Mount:
    """A ``--rm`` container's writable layer never outlives it, so its overlay is mounted
    ``volatile`` (as podman does): no sync of the whole upper filesystem at unmount, which
    costs tens of milliseconds whenever anything else on the host is writing."""
    from shale.mount import Mount

    if m.type != "overlay" or m.option("upperdir") is None:
        return m
    return Mount(m.type, m.source, (*m.options, "volatile"))


def _check_name(name: str) -> None:
    import re

    if not re.fullmatch(r"[a-zA-Z0-9][a-zA-Z0-9_.-]*", name):
        raise InvalidArgument(f'Invalid container name ({name}), only [a-zA-Z0-9][a-zA-Z0-9_.-] '
                              "are allowed")


def _write_stubs(layer: Path, stubs: list[tuple[str, bool]], lowers: list[Path],
                 fmt: str) -> None:
    """Create mount-point stubs in the init layer (never following a symlink out of it):
    a directory, or an empty file for a bind of a file; nothing where the image has one."""
    from shale.fsroot import Root

    root = Root(layer)
    for d in INIT_STUBS_DIRS:
        if not _exists_below(lowers, d, want_dir=True) or fmt == "dir":
            root.mkdir_p(d)
    for f in INIT_STUBS_FILES:
        root.mkdir_p(os.path.dirname(f))
        _touch(root, f)
    for path, is_dir in stubs:
        p = path.strip("/")
        if not p or _exists_below(lowers, p, want_dir=False) or _exists_in(root, p):
            continue
        if is_dir:
            root.mkdir_p(p)
        else:
            root.mkdir_p(os.path.dirname(p))
            _touch(root, p)
    with contextlib.suppress(OSError):
        dfd, base = root.open_parent("etc/mtab", create_parents=True)
        try:
            with contextlib.suppress(FileExistsError):
                os.symlink("/proc/mounts", base, dir_fd=dfd)
        finally:
            os.close(dfd)


def _touch(root: Any, rel: str) -> None:
    fd = root.open_file(rel, os.O_WRONLY | os.O_CREAT, 0o755)
    os.close(fd)


def _exists_in(root: Any, rel: str) -> bool:
    try:
        root.lstat(rel)
    except (FileNotFoundError, NotADirectoryError):
        return False
    return True


def _exists_below(lowers: list[Path], rel: str, want_dir: bool) -> bool:
    for lower in lowers:
        p = lower / rel
        if os.path.lexists(p):
            return os.path.isdir(p) if want_dir else True
    return False
