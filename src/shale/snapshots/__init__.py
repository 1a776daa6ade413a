"""Snapshotters: the contract, in containerd's vocabulary.

A snapshotter keeps a tree of filesystem snapshots. It knows nothing of images, tars or
layers: callers (``unpack``, ``containers``, ``build``) fill active snapshots through the
mounts they are handed and then commit them.

Vocabulary
----------
- An **active** snapshot is named by a *key*; it is writable, made by ``prepare(key, parent)``
  or read-only by ``view(key, parent)``. Its contents are reached through ``mounts(key)``.
- A **committed** snapshot is named by a *name* (``unpack`` uses the layer chain ID); it is
  immutable and may be the parent of other snapshots. ``commit(name, key)`` turns the active
  snapshot ``key`` into the committed ``name``; ``key`` no longer exists afterwards.
- Keys and names share one namespace per snapshotter.

Contract
--------
- ``prepare(key, parent="")`` -> mounts. ``parent`` must be committed (``NotFound`` if it
  does not exist, ``InvalidArgument`` if it is active). ``AlreadyExists`` if ``key`` exists.
- ``view(key, parent)``: as prepare but read-only; a view cannot be committed.
- ``mounts(key)``: the mounts for an active snapshot (``NotFound``). Several calls give the
  same answer. The overlay driver returns one overlay mount (lowerdir highest first) or, for a
  view on a single layer, a read-only bind; vfs returns one bind of a full copy.
- ``commit(name, key)``: ``AlreadyExists`` if ``name`` exists (callers unpacking by chain ID
  treat it as dedupe: another process got there first; drop ``key`` then).
  The committed snapshot's usage is computed here.
- ``remove(key_or_name)``: ``InUse`` if it has children; ``NotFound`` if missing. Nothing of
  it stays on disk (callers unmount first).
- ``stat(key_or_name)`` -> ``Info``; ``walk()`` -> every ``Info``; ``usage(key_or_name)`` ->
  ``Usage`` (bytes of regular files and inode count in this snapshot's own layer, as docker's
  layer size counts only regular file bytes).
- ``upper_dir(key)`` (overlay) / ``root_dir(key)`` (vfs): the directory that holds the
  snapshot's own files, for ``layer.changes`` and ``layer_apply.apply_layer`` without mounting.
  ``layer_format`` says how deletions are stored there: ``"overlay"`` (char 0/0 whiteouts and
  opaque xattrs in an upper dir that only holds changes) or ``"dir"`` (a full tree).
- Every method is safe against concurrent shale processes: state changes are atomic renames
  and metadata lives in a per-driver SQLite file, so two processes committing the same name
  both succeed (one gets ``AlreadyExists``).
- More than 500 lower layers: ``LimitExceeded`` (the kernel's overlay limit).
"""

from __future__ import annotations

from collections.abc import Iterator
from enum import StrEnum
from pathlib import Path
from typing import Protocol

from shale.mount import Mount
from shale.record import record


class Kind(StrEnum):
    ACTIVE = "active"
    VIEW = "view"
    COMMITTED = "committed"


@record(frozen=True)
class Info:
    name: str
    kind: Kind
    parent: str
    created: float
    labels: dict[str, str]


@record(frozen=True)
class Usage:
    size: int
    inodes: int


class Snapshotter(Protocol):
    """See the module docstring for the contract every method follows."""

    driver: str
    layer_format: str  # "overlay" or "dir": how the own-layer directory stores deletions

    def prepare(self, key: str, parent: str = "", labels: dict[str, str] | None = None
                ) -> list[Mount]: ...

    def view(self, key: str, parent: str, labels: dict[str, str] | None = None
             ) -> list[Mount]: ...

    def mounts(self, key: str) -> list[Mount]: ...

    def commit(self, name: str, key: str, labels: dict[str, str] | None = None) -> None: ...

    def remove(self, key: str) -> None: ...

    def remove_all(self, keys: list[str]) -> list[str]:
        """``remove`` of each of ``keys`` that exists, in order, in one transaction (all or
        none; ``InUse`` as ``remove``). Returns the keys removed."""
        ...

    def stat(self, key: str) -> Info: ...

    def walk(self) -> Iterator[Info]: ...

    def usage(self, key: str) -> Usage: ...

    def layer_dir(self, key: str) -> Path:
        """The directory holding this snapshot's own files (overlay: its upper dir;
        vfs: the full copy)."""
        ...

    def parent_dirs(self, key: str) -> list[Path]:
        """Own-layer dirs of the ancestors, nearest parent first (overlay lowers)."""
        ...


def open_snapshotter(root: Path, driver: str) -> Snapshotter:
    """Open the driver's store under ``root/snapshots/<driver>``."""
    if driver == "overlay":
        from shale.snapshots.overlay import OverlaySnapshotter

        return OverlaySnapshotter(root / "snapshots" / "overlay")
    if driver == "vfs":
        from shale.snapshots.vfs import VfsSnapshotter

        return VfsSnapshotter(root / "snapshots" / "vfs")
    from shale.errors import InvalidArgument

    raise InvalidArgument(f"unknown storage driver {driver!r} (want overlay or vfs)")


def default_driver(root: Path) -> str:
    """``overlay`` when a test mount of overlayfs succeeds under ``root``, else ``vfs``."""
    from shale.snapshots.overlay import overlay_supported

    return "overlay" if overlay_supported(root) else "vfs"
