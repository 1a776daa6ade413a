"""Deterministic tar writing: the byte format of every layer shale produces.

These choices are frozen: the diff_id of every layer we write depends on them, so changing
one changes every diff_id (and breaks the build cache across versions).

- ustar headers (magic ``ustar\\0``, version ``00``); numeric fields are zero-padded octal
  plus NUL; ``devmajor``/``devminor`` always written; uname/gname empty (numeric ids only).
- A PAX ``x`` header (name ``././@PaxHeader``, records sorted by key) only when a field does
  not fit: names or link names that are not ASCII or longer than 100 bytes (no ustar prefix
  split), ids beyond 7 octal digits, sizes beyond 11, negative or huge mtimes, and xattrs as
  ``SCHILY.xattr.<name>`` with their raw bytes. Never a global header.
- Mode = permission and special bits only (no file-type bits, unlike Go).
- Whole-second mtimes (floored); no atime/ctime.
- Xattrs written: ``security.capability`` (as docker) and ``user.*`` (as containers/storage),
  never ``user.overlay.*``/``trusted.*``: overlay metadata is host state.
- Hardlinks: the first path of an inode carries it, later paths are type ``1`` links to it.
- Sockets are never archived.
- The archive ends with exactly two zero blocks (Go style, no 10240-byte record padding), so
  an empty changeset is 1024 zero bytes, the canonical empty layer
  ``sha256:5f70bf18a086007016e948b04aed3b82103a36bea41755b6cddfaf10ace3c6ef``.
"""

from __future__ import annotations

import errno
import os
import stat
from typing import BinaryIO

from shale.digest import Digest, Hasher
from shale.errors import DataError

BLOCK = 512
REG, LNK, SYM, CHR, BLK, DIR, FIFO = b"0", b"1", b"2", b"3", b"4", b"5", b"6"
_PAX = b"x"
_MAX7 = 0o7777777
_MAX11 = 0o77777777777
_ZEROS = bytes(2 * BLOCK)


def _octal(value: int, width: int) -> bytes:
    return b"%0*o\0" % (width - 1, value)


def _pax_record(key: str, value: bytes) -> bytes:
    """``"<len> <key>=<value>\\n"`` where ``len`` counts its own digits."""
    body = b" " + key.encode() + b"=" + value + b"\n"
    n = len(body) + 1
    while len(str(n)) + len(body) != n:
        n += 1
    return str(n).encode() + body


def _fits_name(raw: bytes) -> bool:
    return len(raw) <= 100 and raw.isascii()


def header(name: str, kind: bytes, *, mode: int, uid: int, gid: int, mtime: int,
           size: int = 0, linkname: str = "", devmajor: int = 0, devminor: int = 0,
           xattrs: dict[str, bytes] | None = None) -> bytes:
    """The header block(s) of one entry: a PAX ``x`` header first when needed."""
    raw_name, raw_link = os.fsencode(name), os.fsencode(linkname)
    pax: dict[str, bytes] = {}
    if not _fits_name(raw_name):
        pax["path"] = raw_name
    if not _fits_name(raw_link):
        pax["linkpath"] = raw_link
    if uid > _MAX7:
        pax["uid"], uid = str(uid).encode(), 0
    if gid > _MAX7:
        pax["gid"], gid = str(gid).encode(), 0
    if size > _MAX11:
        pax["size"], size_field = str(size).encode(), 0
    else:
        size_field = size
    if not 0 <= mtime <= _MAX11:
        pax["mtime"], mtime = str(mtime).encode(), 0
    if devmajor > _MAX7 or devminor > _MAX7:
        raise DataError(f"{name}: device number {devmajor}:{devminor} does not fit a tar header")
    for key, value in (xattrs or {}).items():
        pax["SCHILY.xattr." + key] = value
    block = _block(raw_name[:100], kind, mode, uid, gid, size_field, mtime, raw_link[:100],
                   devmajor, devminor)
    if not pax:
        return block
    records = b"".join(_pax_record(k, pax[k]) for k in sorted(pax))
    return (_block(b"././@PaxHeader", _PAX, 0, 0, 0, len(records), 0, b"", 0, 0)
            + records + padding(len(records)) + block)


def _block(name: bytes, kind: bytes, mode: int, uid: int, gid: int, size: int, mtime: int,
           linkname: bytes, devmajor: int, devminor: int) -> bytes:
    blk = b"".join((
        name.ljust(100, b"\0"), _octal(mode & 0o7777, 8), _octal(uid, 8), _octal(gid, 8),
        _octal(size, 12), _octal(mtime, 12), b" " * 8, kind, linkname.ljust(100, b"\0"),
        b"ustar\x0000", bytes(64), _octal(devmajor, 8), _octal(devminor, 8), bytes(167),
    ))
    return blk[:148] + b"%06o\0 " % sum(blk) + blk[156:]


def getxattr(path: str, name: str) -> bytes | None:
    """lgetxattr, None when absent or unsupported."""
    try:
        return os.getxattr(path, name, follow_symlinks=False)
    except OSError as e:
        if e.errno in (errno.ENODATA, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOENT):
            return None
        raise


def exported_xattrs(path: str) -> dict[str, bytes]:
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError as e:
        if e.errno in (errno.ENOTSUP, errno.EOPNOTSUPP):
            return {}
        raise
    out: dict[str, bytes] = {}
    for name in names:
        if name == "security.capability" or (
                name.startswith("user.") and not name.startswith("user.overlay.")):
            value = getxattr(path, name)
            if value is not None:
                out[name] = value
    return out


def padding(size: int) -> bytes:
    return bytes(-size % BLOCK)


_SMALL = 64 << 10  # writes below this are gathered into one buffer (headers, small files)


class TarWriter:
    """Streams a tar to ``out``, hashing as it goes; nothing is held in memory but one
    1 MiB copy buffer and up to 1 MiB of gathered small writes.

    ``out`` sees few, large writes: headers and small files are gathered (a layer of
    30,000 files is otherwise 60,000 tiny writes, each a syscall and a hash update). When
    ``out`` hashes what it is given itself (a content store writer, ``hasher``) the tar is
    not hashed a second time. ``content_size`` sums what ``add_path`` added: regular file
    bytes and symlink target lengths, docker's layer size (as ``tarscan`` counts it)."""

    def __init__(self, out: BinaryIO, bufsize: int = 1 << 20) -> None:
        self._out = out
        shared = getattr(out, "hasher", None)
        self._shared = isinstance(shared, Hasher) and shared.size == 0
        self._hash = shared if isinstance(shared, Hasher) and self._shared else Hasher()
        self._buf = bytearray(bufsize)
        self._pending = bytearray()
        self._links: dict[tuple[int, int], str] = {}
        self.content_size = 0

    def add_path(self, name: str, path: str, st: os.stat_result) -> None:
        """The entry for one filesystem object (``lstat`` result ``st``) named ``name``."""
        mode, uid, gid, mtime = st.st_mode, st.st_uid, st.st_gid, st.st_mtime_ns // 10**9
        if stat.S_ISSOCK(mode):
            return
        xattrs = exported_xattrs(path)
        if stat.S_ISDIR(mode):
            self.write(header(name + "/", DIR, mode=mode, uid=uid, gid=gid, mtime=mtime,
                              xattrs=xattrs))
            return
        if st.st_nlink > 1:
            first = self._links.setdefault((st.st_dev, st.st_ino), name)
            if first != name:
                self.write(header(name, LNK, mode=mode, uid=uid, gid=gid, mtime=mtime,
                                  linkname=first))
                return
        if stat.S_ISREG(mode):
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            try:
                self.write(header(name, REG, mode=mode, uid=uid, gid=gid, mtime=mtime,
                                  size=st.st_size, xattrs=xattrs))
                self.copy_data(fd, st.st_size, name)
            finally:
                os.close(fd)
            self.content_size += st.st_size
        elif stat.S_ISLNK(mode):
            target = os.readlink(path)
            self.write(header(name, SYM, mode=mode, uid=uid, gid=gid, mtime=mtime,
                              linkname=target, xattrs=xattrs))
            self.content_size += len(os.fsencode(target))
        else:
            kind = CHR if stat.S_ISCHR(mode) else BLK if stat.S_ISBLK(mode) else FIFO
            dev = st.st_rdev
            self.write(header(name, kind, mode=mode, uid=uid, gid=gid, mtime=mtime,
                              devmajor=os.major(dev), devminor=os.minor(dev), xattrs=xattrs))

    def add_empty(self, name: str, *, mode: int, uid: int, gid: int, mtime: int) -> None:
        """An empty regular file (whiteouts and opaque markers)."""
        self.write(header(name, REG, mode=mode, uid=uid, gid=gid, mtime=mtime))

    def write(self, data: bytes | memoryview) -> None:
        if len(data) < _SMALL:
            self._pending += data  # a copy: ``data`` may be the reused copy buffer
            if len(self._pending) >= len(self._buf):
                self.flush()
            return
        self.flush()
        self._emit(data)

    def flush(self) -> None:
        """Hand the gathered small writes to ``out`` (``close`` does it too)."""
        if self._pending:
            self._emit(self._pending)
            self._pending = bytearray()

    def _emit(self, data: bytes | bytearray | memoryview) -> None:
        self._out.write(data)
        if not self._shared:
            self._hash.update(data)

    def copy_data(self, fd: int, size: int, what: str) -> None:
        """Exactly ``size`` bytes of ``fd`` then the block padding. A file that shrank while
        we read it is an error: its header already promised ``size`` bytes."""
        view = memoryview(self._buf)
        left = size
        while left:
            n = os.readv(fd, [view[: min(left, len(view))]])
            if n == 0:
                raise DataError(f"{what}: file shrank while it was archived")
            self.write(view[:n])
            left -= n
        self.write(padding(size))

    def close(self) -> tuple[Digest, int]:
        """End the archive (two zero blocks) and return (sha256, byte size) of the tar."""
        self.write(_ZEROS)
        self.flush()
        return self._hash.digest(), self._hash.size
