"""Layer tars into trees: ``apply_layer`` (the other direction of ``layer``; the encodings
of deletions are described there). Every write goes through ``fsroot.Root``, so a hostile
layer cannot write outside the root, whatever symlinks or hardlinks it plants."""

from __future__ import annotations

import errno
import io
import os
import stat
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO, TypeVar, cast

from shale.errors import DataError, UnsafePath
from shale.fsroot import Root, clean_entry_name, clone_at, remove_at
from shale.layer import (
    _BUF,
    _OPAQUE,
    _OVERLAY_XATTRS,
    WH,
    WH_META,
    WH_OPAQUE,
    _fmt,
    _is_whiteout,
    _join,
)
from shale.record import record

_NS = 1_000_000_000
_CACHE_MAX = 512
_T = TypeVar("_T")


@record(frozen=True)
class ApplyResult:
    size: int  # bytes of regular files written
    entries: int  # tar members processed


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
