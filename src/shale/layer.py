"""The union-fs rules: changesets between trees, layer tars out of them, layer tars into trees.

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

import errno
import io
import os
import stat
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, NamedTuple, TypeVar, cast

from shale import tarwriter as tw
from shale.digest import Digest
from shale.errors import DataError, InvalidArgument, UnsafePath
from shale.fsroot import Root, clean_entry_name, clone_at, remove_at
from shale.tarwriter import getxattr as _getx

WH = ".wh."
WH_META = ".wh..wh."
WH_OPAQUE = ".wh..wh..opq"
_OPAQUE = "trusted.overlay.opaque"
_XWHITEOUT = "trusted.overlay.whiteout"
_OVERLAY_XATTRS = ("trusted.overlay.", "user.overlay.")
_NS = 1_000_000_000
_BUF = 1 << 20
_CACHE_MAX = 512
_T = TypeVar("_T")


@dataclass(frozen=True)
class Change:
    kind: str  # "A" added, "C" changed, "D" deleted (docker diff's letters)
    path: str  # "/etc/passwd"


@dataclass(frozen=True)
class ApplyResult:
    size: int  # bytes of regular files written
    entries: int  # tar members processed


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


# ------------------------------------------------------------------ applying layers


def _mtime_ns(ti: tarfile.TarInfo) -> int:
    m = ti.mtime
    return m * _NS if isinstance(m, int) else round(m * _NS)


def _tar_xattrs(ti: tarfile.TarInfo) -> list[tuple[str, bytes]]:
    """PAX ``SCHILY.xattr.*`` records, minus the overlay's own: a layer must not be able to
    plant ``trusted.overlay.redirect``/``opaque``/``metacopy`` in a snapshot."""
    out: list[tuple[str, bytes]] = []
    for key, value in ti.pax_headers.items():
        if key.startswith("SCHILY.xattr.") and not key[13:].startswith(_OVERLAY_XATTRS):
            out.append((key[13:], value.encode("utf-8", "surrogateescape")))
    return out


def _setx(target: int | str, name: str, value: bytes) -> None:
    """lsetxattr (fsetxattr for an fd); EPERM/ENOTSUP are ignored, as moby does."""
    try:
        if isinstance(target, int):
            os.setxattr(target, name, value)
        else:
            os.setxattr(target, name, value, follow_symlinks=False)
    except OSError as e:
        if e.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP):
            raise


def _meta_fd(fd: int, ti: tarfile.TarInfo) -> None:
    """Owner before mode (chown clears setuid bits), xattrs after both (chown drops
    security.capability)."""
    os.fchown(fd, ti.uid, ti.gid)
    os.fchmod(fd, ti.mode & 0o7777)
    for name, value in _tar_xattrs(ti):
        _setx(fd, name, value)


def _meta_at(pfd: int, base: str, ti: tarfile.TarInfo, chmod: bool) -> None:
    """Metadata of an entry that cannot be opened (symlink, device, fifo), by name in its
    already-resolved parent; never follows the entry itself."""
    os.chown(base, ti.uid, ti.gid, dir_fd=pfd, follow_symlinks=False)
    if chmod:  # only nodes we just made with mknod: not symlinks, so following is moot
        os.chmod(base, ti.mode & 0o7777, dir_fd=pfd)
    if ti.pax_headers:
        for name, value in _tar_xattrs(ti):
            # /proc/self/fd/N is the resolved parent; base has no '/': stays in the root.
            _setx(f"/proc/self/fd/{pfd}/{base}", name, value)
    ns = _mtime_ns(ti)
    os.utime(base, ns=(ns, ns), dir_fd=pfd, follow_symlinks=False)


_NODES = {tarfile.CHRTYPE: stat.S_IFCHR, tarfile.BLKTYPE: stat.S_IFBLK,
          tarfile.FIFOTYPE: stat.S_IFIFO}


class _Applier:
    """One pass over a layer tar into ``root``. Parent directories are resolved in-root once
    and cached by their (clean, lexical) name; any removal of a directory or symlink may
    change what a cached name resolves to, so it empties the cache."""

    def __init__(self, root: Root, fmt: str, lowers: list[Path]) -> None:
        self.root, self.overlay = root, fmt == "overlay"
        self.lowers = [Root(p) for p in lowers] if self.overlay else []
        self.dirs: dict[str, int] = {}
        self.dir_times: dict[str, int] = {}  # restored last: later entries touch them
        self.unpacked: set[str] = set()
        self.view = memoryview(bytearray(_BUF))
        self.size = self.entries = 0

    def close(self) -> None:
        self._forget(None)
        for lower in self.lowers:
            lower.close()

    def _forget(self, keep: str | None) -> None:
        for name in [n for n in self.dirs if n != keep]:
            os.close(self.dirs.pop(name))

    def _parent(self, name: str, create: bool = True) -> tuple[int, str, str]:
        """(in-root fd of the parent, parent name, base name); the fd belongs to the cache."""
        head, _, base = name.rpartition("/")
        if not head:
            return self.root.fd, head, base
        fd = self.dirs.get(head)
        if fd is None:
            hook = self._mkdir_hook if self.overlay else None
            fd = self.root.open_dir(head, create, on_mkdir=hook)
            self.dirs[head] = fd
        return fd, head, base

    def _mkdir_hook(self, rel: str, fd: int) -> None:
        """A directory implied in an upper dir takes the metadata of the lower one it covers;
        a plain 0755 root-owned dir would change the merged view (think /tmp)."""
        for lower in self.lowers:
            try:
                st = lower.lstat(rel)
            except (FileNotFoundError, NotADirectoryError):
                continue
            if stat.S_ISDIR(st.st_mode):
                os.fchown(fd, st.st_uid, st.st_gid)
                os.fchmod(fd, stat.S_IMODE(st.st_mode))
                self.dir_times[rel.strip("/")] = st.st_mtime_ns
            return

    def _remove(self, pfd: int, head: str, base: str) -> None:
        mode = remove_at(pfd, base)
        if stat.S_ISDIR(mode) or stat.S_ISLNK(mode):
            self._forget(head)  # the parent itself still resolves the same way

    def _make(self, pfd: int, head: str, base: str, create: Callable[[], _T]) -> _T:
        """Create optimistically; whatever is in the way (moby: any existing entry unless
        dir over dir) is removed and creation retried once. Never writes through an
        existing file: it may be a hardlink shared with a lower layer."""
        try:
            return create()
        except FileExistsError:
            self._remove(pfd, head, base)
            return create()

    def entry(self, tf: tarfile.TarFile, ti: tarfile.TarInfo) -> None:
        self.entries += 1
        try:
            self._entry(tf, ti)
        except (OSError, ValueError) as e:
            raise DataError(f"layer entry {ti.name!r}: {e}") from e

    def _entry(self, tf: tarfile.TarFile, ti: tarfile.TarInfo) -> None:
        if len(self.dirs) > _CACHE_MAX:
            self._forget(None)
        name = clean_entry_name(ti.name)
        head, _, base = name.rpartition("/")
        if base.startswith(WH) or f"/{WH}" in f"/{head}":
            self._special(ti, name, head, base)
            return
        if not name:
            if not ti.isdir():
                raise DataError(f"tar entry {ti.name!r}: the root must be a directory")
            self._root_dir(ti)
        elif ti.isreg():
            self._file(tf, ti, name)
        elif ti.isdir():
            self._dir(ti, name)
        elif ti.issym():
            pfd, head, base = self._parent(name)
            self._make(pfd, head, base, lambda: os.symlink(ti.linkname, base, dir_fd=pfd))
            _meta_at(pfd, base, ti, chmod=False)
        elif ti.islnk():
            self._hardlink(ti, name)
        elif ti.type in _NODES:
            pfd, head, base = self._parent(name)
            dev = os.makedev(ti.devmajor, ti.devminor)
            mode = _NODES[ti.type] | 0o600
            self._make(pfd, head, base, lambda: os.mknod(base, mode, dev, dir_fd=pfd))
            _meta_at(pfd, base, ti, chmod=True)
        else:
            raise DataError(f"tar entry {ti.name!r}: unsupported type {ti.type!r}")
        self._mark(name)

    def _mark(self, name: str) -> None:
        """Remember ``name`` and its parents as unpacked: an opaque marker later in this
        layer must not delete them."""
        while name and name not in self.unpacked:
            self.unpacked.add(name)
            name = name.rpartition("/")[0]

    def _special(self, ti: tarfile.TarInfo, name: str, head: str, base: str) -> None:
        """Whiteouts, opaque markers and reserved ``.wh..wh.`` names."""
        parts = head.split("/") if head else []
        if any(p.startswith(WH) for p in parts):
            if any(p.startswith(WH_META) for p in parts):
                return  # inside a reserved meta dir (AUFS .wh..wh.plnk): skipped, as moby
            raise UnsafePath(f"tar entry {ti.name!r}: a whiteout name used as a directory")
        if base == WH_OPAQUE:
            self._opaque(head)
        elif not base.startswith(WH_META):
            target = base[len(WH):]
            if target in ("", ".", ".."):
                raise UnsafePath(f"tar entry {ti.name!r}: invalid whiteout name")
            self._whiteout(_join(head, target), ti)

    def _whiteout(self, target: str, ti: tarfile.TarInfo) -> None:
        if not self.overlay:
            try:
                pfd, head, base = self._parent(target, create=False)
            except (FileNotFoundError, NotADirectoryError):
                return  # nothing there to delete
            self._remove(pfd, head, base)
            return
        pfd, head, base = self._parent(target)
        self._make(pfd, head, base, lambda: os.mknod(base, stat.S_IFCHR, 0, dir_fd=pfd))
        if ti.uid or ti.gid:
            os.chown(base, ti.uid, ti.gid, dir_fd=pfd, follow_symlinks=False)
        ns = _mtime_ns(ti)  # not in moby; makes the upper dir re-export to the same bytes
        os.utime(base, ns=(ns, ns), dir_fd=pfd, follow_symlinks=False)

    def _opaque(self, rel_dir: str) -> None:
        if self.overlay:
            hook = self._mkdir_hook
            fd = self.root.open_dir(rel_dir, True, on_mkdir=hook)
            try:
                os.setxattr(fd, _OPAQUE, b"y")
            finally:
                os.close(fd)
            return
        try:
            stack = [(rel_dir, self.root.open_dir(rel_dir))]
        except (FileNotFoundError, NotADirectoryError):
            return
        self._forget(None)  # we remove dirs below; no cached fd may outlive them
        while stack:
            rel, dfd = stack.pop()
            try:
                for name in os.listdir(dfd):
                    child = _join(rel, name)
                    if child not in self.unpacked:
                        remove_at(dfd, name)
                        continue
                    st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
                    if stat.S_ISDIR(st.st_mode):
                        flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
                        stack.append((child, os.open(name, flags, dir_fd=dfd)))
            finally:
                os.close(dfd)

    def _root_dir(self, ti: tarfile.TarInfo) -> None:
        fd = self.root.open_dir("")
        try:
            _meta_fd(fd, ti)
        finally:
            os.close(fd)
        self.dir_times[""] = _mtime_ns(ti)

    def _dir(self, ti: tarfile.TarInfo, name: str) -> None:
        pfd, head, base = self._parent(name)
        merged = False
        try:
            os.mkdir(base, 0o700, dir_fd=pfd)
        except FileExistsError:
            # Dir over dir merges (only metadata is replaced); anything else is replaced.
            merged = stat.S_ISDIR(os.stat(base, dir_fd=pfd, follow_symlinks=False).st_mode)
            if not merged:
                self._remove(pfd, head, base)
                os.mkdir(base, 0o700, dir_fd=pfd)
        flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(base, flags, dir_fd=pfd)
        try:
            if merged:
                # The entry's xattrs replace the kind a layer carries (tarwriter's rule);
                # moby only adds, so a dir recreated in a container would keep stale ones.
                keep = {k for k, _ in _tar_xattrs(ti)}
                for k in os.listxattr(fd):
                    if k not in keep and (k == "security.capability" or (
                            k.startswith("user.") and not k.startswith("user.overlay."))):
                        os.removexattr(fd, k)
            _meta_fd(fd, ti)
        except BaseException:
            os.close(fd)
            raise
        old = self.dirs.pop(name, None)
        if old is not None:
            os.close(old)
        self.dirs[name] = fd  # its children usually come next
        self.dir_times[name] = _mtime_ns(ti)

    def _file(self, tf: tarfile.TarFile, ti: tarfile.TarInfo, name: str) -> None:
        pfd, head, base = self._parent(name)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = self._make(pfd, head, base, lambda: os.open(base, flags, 0o600, dir_fd=pfd))
        try:
            if ti.size:
                self._copy(tf, ti, fd)
            _meta_fd(fd, ti)
            ns = _mtime_ns(ti)
            os.utime(fd, ns=(ns, ns))
        finally:
            os.close(fd)
        self.size += ti.size

    def _copy(self, tf: tarfile.TarFile, ti: tarfile.TarInfo, fd: int) -> None:
        src = cast(io.BufferedReader, tf.extractfile(ti))
        view, left = self.view, ti.size
        while left:
            n = src.readinto(view[: min(left, _BUF)])
            if not n:
                raise DataError(f"tar entry {ti.name!r}: truncated data")
            done = 0
            while done < n:
                done += os.write(fd, view[done:n])
            left -= n

    def _hardlink(self, ti: tarfile.TarInfo, name: str) -> None:
        """``linkname`` is a root-relative archive path, resolved in-root like any other. Its
        parent gets a fresh fd (not the cache): creating the link may empty the cache."""
        target = clean_entry_name(ti.linkname)
        if not target:
            raise UnsafePath(f"tar entry {ti.name!r}: hardlink to the root")
        if target == name:
            return  # a link to itself: the file is already there
        try:
            self.root.lstat(target)
        except (FileNotFoundError, NotADirectoryError):
            if not self.overlay:
                raise DataError(f"tar entry {ti.name!r}: hardlink target "
                                f"{ti.linkname!r} does not exist") from None
            self._copy_up(target)
        tpfd, tbase = self.root.open_parent(target)
        try:
            pfd, head, base = self._parent(name)
            self._make(pfd, head, base, lambda: os.link(
                tbase, base, src_dir_fd=tpfd, dst_dir_fd=pfd, follow_symlinks=False))
        finally:
            os.close(tpfd)

    def _copy_up(self, target: str) -> None:
        """Bring a lower file into the upper dir so a hardlink can point at it: the nearest
        lower that has it wins; a whiteout in a nearer one hides it."""
        for lower in self.lowers:
            try:
                st = lower.lstat(target)
            except (FileNotFoundError, NotADirectoryError):
                continue
            if _is_whiteout(st) or stat.S_ISDIR(st.st_mode):
                break
            lpfd, lbase = lower.open_parent(target)
            try:
                pfd, _, base = self._parent(target)
                clone_at(lpfd, lbase, st, pfd, base, self.view, _OVERLAY_XATTRS)
            finally:
                os.close(lpfd)
            return
        raise DataError(f"hardlink target {target!r} is in neither the layer nor its lowers")

    def finish(self) -> None:
        self._forget(None)
        flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
        for rel, ns in self.dir_times.items():
            try:
                fd = self.root.open(rel, flags)
            except OSError as e:
                if e.errno in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP):
                    continue  # removed or replaced later in the layer
                raise
            try:
                os.utime(fd, ns=(ns, ns))
            finally:
                os.close(fd)


def apply_layer(stream: BinaryIO, root: Path, *, fmt: str,
                lowers: list[Path] | None = None) -> ApplyResult:
    """Apply a plain (uncompressed) layer tar to ``root`` in one streaming pass.

    ``fmt="dir"``: ``root`` is a full tree; whiteouts and opaque markers delete.
    ``fmt="overlay"``: ``root`` is an (empty-ish) upper dir over ``lowers`` (nearest first);
    whiteouts become char 0/0 devices, opaque markers ``trusted.overlay.opaque=y``, nothing
    is deleted; a hardlink to a file only in a lower copies it up first.
    Raises ``UnsafePath`` for entries that would leave the root, ``DataError`` for corrupt
    tars; a failure leaves ``root`` half-filled (the caller discards it).
    """
    overlay = _fmt(fmt) == "overlay"
    with Root(root) as r:
        ap = _Applier(r, fmt, list(lowers or []) if overlay else [])
        try:
            with tarfile.open(fileobj=stream, mode="r|") as tf:
                for ti in tf:
                    # Stream mode still keeps every member (200k entries: +87 MB): drop them.
                    tf.members = []  # type: ignore[attr-defined]
                    ap.entry(tf, ti)
            ap.finish()
        except tarfile.TarError as e:
            raise DataError(f"layer tar: {e}") from e
        finally:
            ap.close()
    # Read the end padding too, so a caller hashing the stream sees every byte.
    while stream.read(_BUF):
        pass
    return ApplyResult(ap.size, ap.entries)
