"""The overlay driver: each snapshot's own files are an overlayfs upper dir.

Layout under ``home`` (besides ``metadata.db`` and ``tmp/``, see ``meta``)::

    snapshots/<id>/fs      the layer's own files: the upper dir (whiteouts are char 0/0,
                           opaque dirs carry trusted.overlay.opaque=y)
    snapshots/<id>/work    overlay's work dir (same filesystem as fs, as overlay requires)
    l/<id>                 -> ../snapshots/<id>/fs: short names for the lowerdir list, so
                           mount(2) data stays small on kernels without ``lowerdir+``

Mounts use ``index=off,redirect_dir=off,metacopy=off`` so every upper dir is a plain
changeset that ``layer.changes`` can read directly (no redirects, no data-less copies).
"""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
from pathlib import Path

from shale.errors import InvalidArgument, LimitExceeded, ShaleError
from shale.mount import OVERLAY_MAX_LOWERS, Mount, mount_all, unmount
from shale.snapshots import Kind
from shale.snapshots.meta import Row, SnapshotStore, Tx

OVERLAY_FLAGS = ("index=off", "redirect_dir=off", "metacopy=off")


class OverlaySnapshotter(SnapshotStore):
    driver = "overlay"
    layer_format = "overlay"

    def __init__(self, home: Path) -> None:
        # ':' separates lowerdirs and ',' options in the Mount description: refuse a home
        # whose paths could not be written there unambiguously.
        if ":" in str(home) or "," in str(home):
            raise InvalidArgument(f"overlay store {home}: path must not contain ':' or ','")
        super().__init__(home)
        (home / "l").mkdir(exist_ok=True)

    def _link(self, row_id: int) -> Path:
        return self.home / "l" / str(row_id)

    def _populate(self, staging: Path, kind: Kind, parent: Row | None) -> None:
        fs = staging / "fs"
        fs.mkdir()
        os.chmod(fs, 0o755)  # the container's "/": not subject to our umask
        (staging / "work").mkdir(mode=0o700)

    def _check_depth(self, lowers: int) -> None:
        if lowers > OVERLAY_MAX_LOWERS:
            raise LimitExceeded(
                f"snapshot chain of {lowers} layers: overlayfs mounts at most "
                f"{OVERLAY_MAX_LOWERS} lower layers; squash the image or use the vfs driver")

    def _publish(self, tx: Tx, row_id: int) -> None:
        link = self._link(row_id)
        link.unlink(missing_ok=True)  # a stale link of a crashed process with this id
        os.symlink(f"../snapshots/{row_id}/fs", link)
        tx.undo(lambda: link.unlink(missing_ok=True))

    def _unpublish(self, tx: Tx, row_id: int) -> None:
        link = self._link(row_id)
        link.unlink(missing_ok=True)
        tx.undo(lambda: os.symlink(f"../snapshots/{row_id}/fs", link))

    def _orphans(self, ids: set[int]) -> list[Path]:
        return [p for p in (self.home / "l").iterdir()
                if not p.name.isdigit() or int(p.name) not in ids]

    def _mounts(self, row: Row) -> list[Mount]:
        chain = self._meta.ancestors(row.id)
        fs = self._fs(row.id)
        if row.kind == Kind.ACTIVE:
            if not chain:
                return [Mount("bind", str(fs), ("rbind", "rw"))]
            return [Mount("overlay", "overlay", (
                *OVERLAY_FLAGS, self._lowerdir(chain),
                f"upperdir={fs}", f"workdir={self._dir(row.id) / 'work'}"))]
        # A view: nothing is ever written, so no upper; one layer needs no overlay at all.
        if not chain:
            return [Mount("bind", str(fs), ("rbind", "ro"))]
        if len(chain) == 1:
            return [Mount("bind", str(self._fs(chain[0])), ("rbind", "ro"))]
        return [Mount("overlay", "overlay", ("ro", *OVERLAY_FLAGS, self._lowerdir(chain)))]

    def _lowerdir(self, chain: list[int]) -> str:
        return "lowerdir=" + ":".join(str(self._link(i)) for i in chain)


def overlay_supported(root: Path) -> bool:
    """True when overlayfs works under ``root`` the way the overlay driver needs (mount with
    our flags, char 0/0 whiteouts in the upper dir). Probed once by a real mount in a temp
    dir under ``root/snapshots``; the answer is cached there with the kernel release, so a
    kernel upgrade probes again."""
    base = root / "snapshots"
    cache = base / ".overlay-check"
    release = os.uname().release
    try:
        lines = cache.read_text().splitlines()
        if len(lines) >= 2 and lines[0] == release:
            return lines[1] == "yes"
    except OSError:
        pass
    if os.geteuid() != 0:
        return False  # not cached: a later run as root must probe for itself
    ok, reason = _probe(base)
    try:
        tmp = base / f".overlay-check.{os.getpid()}"
        tmp.write_text(f"{release}\n{'yes' if ok else 'no'}\n{reason}\n")
        os.rename(tmp, cache)
    except OSError:
        pass  # an unwritable root just means probing again next time
    return ok


def _probe(base: Path) -> tuple[bool, str]:
    try:
        base.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".overlay-probe-", dir=base))
    except OSError as e:
        return False, str(e)
    try:
        return _probe_in(tmp)
    except (ShaleError, OSError) as e:
        return False, str(e)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _probe_in(tmp: Path) -> tuple[bool, str]:
    dirs = {name: tmp / name for name in ("lower", "upper", "work", "merged")}
    for d in dirs.values():
        d.mkdir()
    (dirs["lower"] / "gone").write_text("x")
    (dirs["lower"] / "kept").write_text("y")
    mount_all([Mount("overlay", "overlay", (
        *OVERLAY_FLAGS, f"lowerdir={dirs['lower']}", f"upperdir={dirs['upper']}",
        f"workdir={dirs['work']}"))], dirs["merged"])
    try:
        (dirs["merged"] / "gone").unlink()
        (dirs["merged"] / "new").write_text("z")
        kept = (dirs["merged"] / "kept").read_text()
    finally:
        unmount(dirs["merged"])
    st = os.lstat(dirs["upper"] / "gone")
    if not (stat.S_ISCHR(st.st_mode) and st.st_rdev == 0):
        return False, "overlayfs did not write a char 0/0 whiteout"
    if kept != "y" or not (dirs["upper"] / "new").exists():
        return False, "overlayfs merged view is wrong"
    return True, ""
