"""The union-fs rules: changesets between trees, layer tars out of them (layer tars into
trees: ``layer_apply``).

Both directions and both on-disk encodings of deletions live here and nowhere else:

- in a layer tar (OCI image-spec ``layer.md``): a whiteout is an empty regular file
  ``.wh.<name>``; an opaque directory is marked by ``<dir>/.wh..wh..opq``;
- on disk, ``fmt="dir"``: a full tree (vfs snapshots, ``export``); a deletion is a deletion;
- on disk, ``fmt="overlay"``: an overlayfs upper dir holding only changes; a whiteout is a
  char device 0/0, an opaque directory carries ``trusted.overlay.opaque=y``. Mounts must use
  ``index=off,redirect_dir=off,metacopy=off`` so that an upper dir is a plain changeset.

Paths in ``Change`` are ``/etc/passwd``-style; inside this module, ``rel`` paths have no
leading slash (``etc/passwd``) and ``""`` is the root. Every write into a tree goes through
``fsroot.Root``, so a hostile layer cannot write outside it, whatever symlinks it plants.
Trees we read (upper and lower dirs) are our own snapshots: walks use ``lstat`` and never
follow a symlink, but do not guard against concurrent changes.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO, NamedTuple

from shale import tarwriter as tw
from shale.digest import Digest
from shale.errors import InvalidArgument
from shale.record import record
from shale.tarwriter import getxattr as _getx

WH = ".wh."
WH_META = ".wh..wh."
WH_OPAQUE = ".wh..wh..opq"
_OPAQUE = "trusted.overlay.opaque"
_XWHITEOUT = "trusted.overlay.whiteout"
_OVERLAY_XATTRS = ("trusted.overlay.", "user.overlay.")
_NS = 1_000_000_000
_BUF = 1 << 20


@record(frozen=True)
class Change:
    kind: str  # "A" added, "C" changed, "D" deleted (docker diff's letters)
    path: str  # "/etc/passwd"


def _fmt(fmt: str) -> str:
    if fmt not in ("dir", "overlay"):
        raise InvalidArgument(f"layer format {fmt!r}: want 'dir' or 'overlay'")
    return fmt


def _join(rel: str, name: str) -> str:
    return f"{rel}/{name}" if rel else name


# ---------------------------------------------------------------- reading trees


def _is_whiteout(st: os.stat_result) -> bool:
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


def _lstat(path: str) -> os.stat_result | None:
    try:
        return os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None


def _sorted_names(path: str) -> list[str]:
    # Byte order, as Go's WalkDir: str order differs for surrogate-escaped names.
    return sorted(os.listdir(path), key=os.fsencode)


def _same_time(a: int, b: int) -> bool:
    """moby's sameFsTime: equal, or same second with one side lacking nanoseconds (a copy
    through a tar loses them, and that must not count as a change)."""
    return a == b or (a // _NS == b // _NS and (a % _NS == 0 or b % _NS == 0))


def _differs(lst: os.stat_result, ust: os.stat_result, lpath: str, upath: str) -> bool:
    """moby's statDifferent plus the security.capability comparison."""
    if (lst.st_mode, lst.st_uid, lst.st_gid, lst.st_rdev) != (
        ust.st_mode, ust.st_uid, ust.st_gid, ust.st_rdev
    ):
        return True
    if stat.S_ISDIR(ust.st_mode):
        return False  # a dir's size and mtime change with its entries: not a change of its own
    if lst.st_size != ust.st_size or not _same_time(lst.st_mtime_ns, ust.st_mtime_ns):
        return True
    if not stat.S_ISREG(ust.st_mode):
        return False
    return _getx(lpath, "security.capability") != _getx(upath, "security.capability")


# --------------------------------------------------------- changes of full trees


class _Frame:
    __slots__ = ("emitted", "lpath", "names", "rel", "st", "upath")

    def __init__(self, rel: str, upath: str, lpath: str | None, st: os.stat_result | None,
                 emitted: bool) -> None:
        self.rel, self.upath, self.lpath, self.st, self.emitted = rel, upath, lpath, st, emitted
        self.names = _merged_names(upath, lpath)


def _merged_names(upath: str, lpath: str | None) -> Iterator[tuple[str, bool, bool]]:
    upper = set(os.listdir(upath))
    lower = set(os.listdir(lpath)) if lpath is not None else set()
    for name in sorted(upper | lower, key=os.fsencode):
        yield name, name in upper, name in lower


_Event = tuple[str, str, str, os.stat_result | None]  # kind, rel, upper path, upper stat


def _diff_walk(lower: str | None, upper: str,
               skip: Callable[[str], bool] | None) -> Iterator[_Event]:
    """Double walk in tar order (per directory in byte order, parents first). A directory that
    did not change itself is yielded as "C" just before its first changed descendant; a
    deleted subtree is one "D"; below an added directory everything is "A"."""
    frames = [_Frame("", upper, lower, None, True)]
    while frames:
        item = next(frames[-1].names, None)
        if item is None:
            frames.pop()
            continue
        fr = frames[-1]
        name, in_upper, in_lower = item
        rel = _join(fr.rel, name)
        if skip is not None and skip("/" + rel):
            continue
        upath = f"{fr.upath}/{name}"
        lpath = f"{fr.lpath}/{name}" if in_lower and fr.lpath is not None else None
        if not in_upper:
            yield from _flush(frames)
            yield "D", rel, upath, None
            continue
        ust = os.lstat(upath)
        lst = os.lstat(lpath) if lpath is not None else None
        kind = "A" if lst is None else ("C" if _differs(lst, ust, str(lpath), upath) else "")
        if kind:
            yield from _flush(frames)
            yield kind, rel, upath, ust
        if stat.S_ISDIR(ust.st_mode):
            sub = lpath if lst is not None and stat.S_ISDIR(lst.st_mode) else None
            frames.append(_Frame(rel, upath, sub, ust, bool(kind)))


def _flush(frames: list[_Frame]) -> Iterator[_Event]:
    for fr in frames:
        if not fr.emitted:
            fr.emitted = True
            yield "C", fr.rel, fr.upath, fr.st


def _sorted_changes(changes: list[Change]) -> list[Change]:
    return sorted(changes, key=lambda c: os.fsencode(c.path))


def changes_dirs(lower: Path | None, upper: Path) -> list[Change]:
    """``docker diff`` of two full trees (vfs), sorted by path."""
    low = os.fspath(lower) if lower is not None else None
    events = _diff_walk(low, os.fspath(upper), None)
    return _sorted_changes([Change(kind, "/" + rel) for kind, rel, _, _ in events])


# ---------------------------------------------------------- changes of an upper dir


def _lower_dirs(ldirs: list[str], name: str) -> list[str]:
    """The lower dirs merged under ``name``, nearest first: a whiteout, a non-directory or
    an opaque directory hides everything below it."""
    out: list[str] = []
    for ldir in ldirs:
        path = f"{ldir}/{name}"
        st = _lstat(path)
        if st is None:
            continue
        if not stat.S_ISDIR(st.st_mode):
            break
        out.append(path)
        if _getx(path, _OPAQUE) == b"y":
            break
    return out


def _in_lowers(ldirs: list[str], name: str) -> bool:
    for ldir in ldirs:
        st = _lstat(f"{ldir}/{name}")
        if st is not None:
            return not _is_whiteout(st)
    return False


def _visible(ldirs: list[str]) -> set[str]:
    seen: dict[str, bool] = {}
    for ldir in ldirs:
        for name in os.listdir(ldir):
            if name not in seen:
                seen[name] = not _is_whiteout(os.lstat(f"{ldir}/{name}"))
    return {name for name, shown in seen.items() if shown}


def _xattr_whiteout(path: str, st: os.stat_result, parent_x: bool) -> bool:
    """Newer kernels may store a whiteout as an empty file with ``trusted.overlay.whiteout``
    in a directory marked ``trusted.overlay.opaque=x``; only look when the parent says so."""
    return parent_x and stat.S_ISREG(st.st_mode) and st.st_size == 0 and \
        _getx(path, _XWHITEOUT) is not None


def changes_overlay(upper: Path, lowers: list[Path]) -> list[Change]:
    """``docker diff`` read from an overlay upper dir; ``lowers`` nearest first."""
    out: list[Change] = []
    stack = [("", os.fspath(upper), [os.fspath(p) for p in lowers], False)]
    while stack:
        rel_dir, udir, ldirs, parent_x = stack.pop()
        for name in os.listdir(udir):
            rel, path = _join(rel_dir, name), f"{udir}/{name}"
            st = os.lstat(path)
            if _is_whiteout(st) or _xattr_whiteout(path, st, parent_x):
                out.append(Change("D", "/" + rel))
                continue
            exists = _in_lowers(ldirs, name)
            out.append(Change("C" if exists else "A", "/" + rel))
            if not stat.S_ISDIR(st.st_mode):
                continue
            sub = _lower_dirs(ldirs, name) if exists else []
            opaque = _getx(path, _OPAQUE)
            if opaque == b"y":
                hidden = _visible(sub) - set(os.listdir(path))
                out.extend(Change("D", f"/{rel}/{n}") for n in hidden)
                sub = []
            stack.append((rel, path, sub, opaque == b"x"))
    return _sorted_changes(out)


# ------------------------------------------------------------------ writing layers


def _whiteout_entry(tar: tw.TarWriter, rel: str, st: os.stat_result | None) -> None:
    """``.wh.<name>``: mode 0600, size 0; owner and mtime of the overlay char device
    (as docker's native diff), zeros for a deletion found by comparing trees."""
    head, _, name = rel.rpartition("/")
    uid, gid, mtime = (st.st_uid, st.st_gid, st.st_mtime_ns // _NS) if st else (0, 0, 0)
    tar.add_empty(_join(head, WH + name), mode=0o600, uid=uid, gid=gid, mtime=mtime)


def _write_overlay(tar: tw.TarWriter, upper: str, skip: Callable[[str], bool] | None) -> None:
    """Walk only the upper dir, in tar order (iterative: trees may be deeper than Python's
    recursion limit)."""
    stack: list[tuple[str, str, Iterator[str], bool]] = [
        ("", upper, iter(_sorted_names(upper)), False)]
    while stack:
        rel_dir, dpath, names, parent_x = stack[-1]
        name = next(names, None)
        if name is None:
            stack.pop()
            continue
        rel, path = _join(rel_dir, name), f"{dpath}/{name}"
        if skip is not None and skip("/" + rel):
            continue
        st = os.lstat(path)
        # Before any hardlink logic: the kernel makes whiteouts links of one inode.
        if _is_whiteout(st) or _xattr_whiteout(path, st, parent_x):
            _whiteout_entry(tar, rel, st)
            continue
        tar.add_path(rel, path, st)
        if stat.S_ISDIR(st.st_mode):
            opaque = _getx(path, _OPAQUE)
            if opaque == b"y":
                # Right after the dir header, as docker: mode = the dir's permission bits,
                # its owner, mtime 0.
                tar.add_empty(_join(rel, WH_OPAQUE), mode=stat.S_IMODE(st.st_mode),
                              uid=st.st_uid, gid=st.st_gid, mtime=0)
            stack.append((rel, path, iter(_sorted_names(path)), opaque == b"x"))


class WrittenLayer(NamedTuple):
    diff_id: Digest
    size: int           # bytes of the tar
    content_size: int   # docker's layer size: regular file bytes + symlink target lengths


def write_layer(out: BinaryIO, upper: Path, *, fmt: str, lower: Path | None = None,
                skip: Callable[[str], bool] | None = None) -> tuple[Digest, int]:
    """Write the changeset tar of ``upper`` to ``out``; return (diff_id, byte size).
    See ``write_layer_sized``."""
    diff_id, size, _ = write_layer_sized(out, upper, fmt=fmt, lower=lower, skip=skip)
    return diff_id, size


def write_layer_sized(out: BinaryIO, upper: Path, *, fmt: str, lower: Path | None = None,
                      skip: Callable[[str], bool] | None = None) -> WrittenLayer:
    """Write the changeset tar of ``upper`` to ``out``; return its diff_id, byte size and
    content size (counted while writing: the tar is never read back for it).

    ``fmt="overlay"``: ``upper`` is an overlay upper dir (``lower`` unused). ``fmt="dir"``:
    ``upper`` is a full tree and ``lower`` the full tree it derives from, or None for
    "everything added" (``export``, flattening); deletions become explicit whiteouts of the
    top-most deleted path. ``skip("/path")`` drops a path and everything below it.
    """
    tar = tw.TarWriter(out, _BUF)
    if _fmt(fmt) == "overlay":
        _write_overlay(tar, os.fspath(upper), skip)
    else:
        low = os.fspath(lower) if lower is not None else None
        for _kind, rel, upath, st in _diff_walk(low, os.fspath(upper), skip):
            if st is None:
                _whiteout_entry(tar, rel, None)
            else:
                tar.add_path(rel, upath, st)
    diff_id, size = tar.close()
    return WrittenLayer(diff_id, size, tar.content_size)
