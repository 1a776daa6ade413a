"""Named and anonymous volumes: ``volumes/<name>/_data`` plus a row each in the database.

A new volume mounted where the image has content is filled with that content on first use,
as docker does (copy-up); a host bind mount is never filled.
"""

from __future__ import annotations

import builtins
import json
import os
import re
import time
from pathlib import Path
from typing import Any

from shale.errors import Conflict, InvalidArgument, NotFound
from shale.metadata import Metadata
from shale.record import record

_NAME = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]+$")


@record(frozen=True)
class Volume:
    name: str
    created: float
    anonymous: bool
    labels: dict[str, str]
    mountpoint: Path

    def inspect(self) -> dict[str, Any]:
        from shale.oci import format_time

        return {"CreatedAt": format_time(self.created), "Driver": "local",
                "Labels": self.labels or None, "Mountpoint": str(self.mountpoint),
                "Name": self.name, "Options": None, "Scope": "local"}


class VolumeStore:
    def __init__(self, meta: Metadata, root: Path) -> None:
        self.meta = meta
        self.base = root / "volumes"
        self.base.mkdir(exist_ok=True)

    def _vol(self, row: Any) -> Volume:
        return Volume(row["name"], row["created"], bool(row["anonymous"]),
                      json.loads(row["labels"]), self.base / row["name"] / "_data")

    @staticmethod
    def valid_name(name: str) -> bool:
        return bool(_NAME.match(name))

    def create(self, name: str | None = None, labels: dict[str, str] | None = None,
               anonymous: bool = False) -> tuple[Volume, bool]:
        """Create (or return the existing) volume; the bool says whether it is new."""
        name = name or os.urandom(32).hex()
        if not self.valid_name(name):
            raise InvalidArgument(f'create {name}: "{name}" includes invalid characters for a '
                                  'local volume name, only "[a-zA-Z0-9][a-zA-Z0-9_.-]" are '
                                  "allowed. If you intended to pass a host directory, use "
                                  "absolute path")
        data = self.base / name / "_data"
        with self.meta.transaction() as db:
            row = db.execute("SELECT * FROM volumes WHERE name=?", (name,)).fetchone()
            if row is not None:
                return self._vol(row), False
            data.mkdir(parents=True, exist_ok=True)
            db.execute("INSERT INTO volumes VALUES (?,?,?,?)",
                       (name, time.time(), int(anonymous), json.dumps(labels or {})))
        return self.get(name), True

    def get(self, name: str) -> Volume:
        row = self.meta.one("SELECT * FROM volumes WHERE name=?", (name,))
        if row is None:
            raise NotFound(f"get {name}: no such volume")
        return self._vol(row)

    def list(self) -> builtins.list[Volume]:
        return [self._vol(r) for r in self.meta.query("SELECT * FROM volumes ORDER BY name")]

    def users(self, name: str) -> builtins.list[str]:
        return [r["container"] for r in self.meta.query(
            "SELECT container FROM volume_users WHERE volume=?", (name,))]

    def attach(self, name: str, container: str) -> None:
        with self.meta.transaction() as db:
            db.execute("INSERT OR IGNORE INTO volume_users VALUES (?,?)", (name, container))

    def remove(self, name: str, force: bool = False) -> None:
        vol = self.get(name)
        users = self.users(name)
        if users and not force:
            raise Conflict(f"remove {name}: volume is in use - [{', '.join(users)}]")
        with self.meta.transaction() as db:
            db.execute("DELETE FROM volumes WHERE name=?", (name,))
            db.execute("DELETE FROM volume_users WHERE volume=?", (name,))
        import shutil

        shutil.rmtree(vol.mountpoint.parent, ignore_errors=True)

    def prune(self, all: bool = False) -> builtins.list[str]:
        """Remove unused volumes (anonymous only unless ``all``, as docker 23+)."""
        removed: builtins.list[str] = []
        for v in self.list():
            if (all or v.anonymous) and not self.users(v.name):
                self.remove(v.name)
                removed.append(v.name)
        return removed


def populate(volume_dir: Path, source: Path) -> None:
    """Copy the image's content at the mount target into a new, empty volume (``cp -a``
    keeps owners, modes, links and xattrs). ``source`` was resolved inside the rootfs."""
    if not source.is_dir() or any(volume_dir.iterdir()):
        return
    st = os.stat(source)
    os.chown(volume_dir, st.st_uid, st.st_gid)
    os.chmod(volume_dir, st.st_mode & 0o7777)
    if any(source.iterdir()):
        import subprocess

        subprocess.run(["cp", "-a", "--", f"{source}/.", str(volume_dir)], check=True,
                       capture_output=True)
