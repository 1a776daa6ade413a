"""Path safety: every write into a root directory resolves inside it.

A rootfs is hostile input: image layers plant symlinks (absolute ones are normal,
``/etc/alternatives/...``), and a later write through ``etc/x`` must land in the *root's*
``/etc`` even when ``etc`` is a symlink to ``/``. ``Root`` resolves every path with
``openat2(RESOLVE_IN_ROOT)`` (Linux 5.6+), so the kernel follows symlinks as if the root
were ``/`` and clamps ``..`` at it; only the final component is then handled by the caller
with ``os.*(..., dir_fd=parent)``, which never follows it unless asked.

Paths given to ``Root`` are in-root paths: ``/etc/passwd``, ``etc/passwd`` and
``../etc/passwd`` all name the same file, as they would inside a container. Tar entry names
are different: one that climbs out lexically is an attack, not a path; ``clean_entry_name``
refuses it with ``UnsafePath``.
"""

from __future__ import annotations

import ctypes
import errno
import os
import posixpath
import shutil
import stat
from collections.abc import Callable
from types import TracebackType

from shale.errors import UnsafePath, Unsupported

_SYS_OPENAT2 = 437  # the same on every architecture since the syscall table was unified
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_IN_ROOT = 0x10
_RESOLVE = RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS
_O_TMPFILE = getattr(os, "O_TMPFILE", 0o20200000)
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY

MkdirHook = Callable[[str, int], None]
"""Called as ``hook(in_root_path, dir_fd)`` right after ``Root`` creates a missing directory."""


class _OpenHow(ctypes.Structure):
    _fields_ = [
        ("flags", ctypes.c_uint64),
        ("mode", ctypes.c_uint64),
        ("resolve", ctypes.c_uint64),
    ]


_libc = ctypes.CDLL(None, use_errno=True)
_syscall = _libc.syscall
_syscall.restype = ctypes.c_long
_probed = False


def openat2(dirfd: int, path: str, flags: int, mode: int = 0, resolve: int = _RESOLVE) -> int:
    """Raw ``openat2``; raises ``OSError`` (its errno subclass) or ``Unsupported``."""
    how = _OpenHow(flags | os.O_CLOEXEC, mode, resolve)
    raw = os.fsencode(path)
    for _ in range(64):
        fd = int(_syscall(ctypes.c_long(_SYS_OPENAT2), ctypes.c_int(dirfd), ctypes.c_char_p(raw),
                          ctypes.byref(how), ctypes.c_size_t(ctypes.sizeof(how))))
        if fd >= 0:
            return fd
        err = ctypes.get_errno()
        # EAGAIN: a rename raced the ".." checks of RESOLVE_IN_ROOT; the kernel asks to retry.
        if err == errno.EAGAIN:
            continue
        if err == errno.ENOSYS:
            raise Unsupported("openat2(2) is not available (Linux 5.6+ needed for path safety)")
        raise OSError(err, os.strerror(err), path)
    raise OSError(errno.EAGAIN, os.strerror(errno.EAGAIN), path)


def _probe(fd: int) -> None:
    """Fail once, clearly, where openat2 is missing or filtered (seccomp returns EPERM/ENOSYS)."""
    global _probed
    if _probed:
        return
    try:
        os.close(openat2(fd, ".", os.O_PATH))
    except PermissionError as e:
        raise Unsupported(f"openat2(2) is blocked here ({e.strerror})") from e
    _probed = True


def clean_entry_name(name: str) -> str:
    """Normalise a tar entry name the way moby does (``path.Clean`` after trimming leading
    ``/``): ``./a//b/`` -> ``a/b``; the root itself -> ``""``. A name that climbs out of the
    root lexically is refused with ``UnsafePath`` naming the entry."""
    clean = posixpath.normpath(name.lstrip("/"))
    if clean == ".":
        return ""
    if clean == ".." or clean.startswith("../"):
        raise UnsafePath(f"tar entry {name!r} climbs out of the root")
    return clean


def _split(relpath: str) -> tuple[str, str]:
    """``a/b/c`` -> (``a/b``, ``c``), refusing a last component that is not a plain name."""
    rel = relpath.strip("/")
    head, _, base = rel.rpartition("/")
    if base in ("", ".", ".."):
        raise UnsafePath(f"{relpath!r}: not a file name inside the root")
    return head, base


class Root:
    """A directory that every method treats as ``/``. Holds an ``O_PATH`` fd to it; close it
    (or use ``with``). Returned fds are the caller's to close."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.path.abspath(os.fspath(path))
        self.fd = os.open(self.path, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            _probe(self.fd)
            self._canon = os.readlink(f"/proc/self/fd/{self.fd}")
        except BaseException:
            os.close(self.fd)
            raise

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> Root:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def open(self, relpath: str, flags: int, mode: int = 0) -> int:
        """``openat2`` in the root; every symlink on the way (the last one too, unless
        ``O_NOFOLLOW``) is followed as if the root were ``/``."""
        return openat2(self.fd, relpath.lstrip("/") or ".", flags, mode)

    def open_file(self, relpath: str, flags: int, mode: int = 0o644) -> int:
        creating = flags & os.O_CREAT or flags & _O_TMPFILE == _O_TMPFILE
        return self.open(relpath, flags, mode if creating else 0)

    def open_dir(self, relpath: str, create_parents: bool = False, *, mode: int = 0o755,
                 on_mkdir: MkdirHook | None = None) -> int:
        """An ``O_RDONLY|O_DIRECTORY`` fd of ``relpath``; with ``create_parents`` every missing
        component (the last one too) is created like ``mkdir -p``, with ``mode``."""
        try:
            return self.open(relpath, _DIR_FLAGS)
        except FileNotFoundError:
            if not create_parents:
                raise
        done = ""
        fd = self.open(".", _DIR_FLAGS)
        for part in relpath.split("/"):
            if part in ("", "."):
                continue
            done = f"{done}/{part}" if done else part
            fd = self._step(fd, done, part, mode, on_mkdir)  # takes ownership of fd
        return fd

    def _step(self, parent: int, done: str, part: str, mode: int,
              on_mkdir: MkdirHook | None) -> int:
        """Open the prefix ``done`` (resolved from the root, so a symlink in it stays
        confined), creating its last component ``part`` in ``parent`` if it is missing."""
        try:
            try:
                return self.open(done, _DIR_FLAGS)
            except FileNotFoundError:
                pass
            # EEXIST here means a dangling symlink: like moby's MkdirAll, do not follow it.
            os.mkdir(part, mode, dir_fd=parent)
            fd = os.open(part, _DIR_FLAGS | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent)
            try:
                os.fchmod(fd, mode)  # mkdir is subject to the umask; the mode asked for is not
                if on_mkdir is not None:
                    on_mkdir(self.canonical(fd), fd)
            except BaseException:
                os.close(fd)
                raise
            return fd
        finally:
            os.close(parent)

    def open_parent(self, relpath: str, create_parents: bool = False, *,
                    on_mkdir: MkdirHook | None = None) -> tuple[int, str]:
        """(fd of the parent directory resolved in the root, validated base name)."""
        head, base = _split(relpath)
        return self.open_dir(head, create_parents, on_mkdir=on_mkdir), base

    def mkdir_p(self, relpath: str, mode: int = 0o755) -> None:
        os.close(self.open_dir(relpath, True, mode=mode))

    def lstat(self, relpath: str) -> os.stat_result:
        if not relpath.strip("/"):
            return os.stat(self.fd)
        pfd, base = self.open_parent(relpath)
        try:
            return os.stat(base, dir_fd=pfd, follow_symlinks=False)
        finally:
            os.close(pfd)

    def remove_all(self, relpath: str) -> None:
        """``rm -rf`` of one in-root path; a symlink is removed, never followed. Missing: no-op."""
        try:
            pfd, base = self.open_parent(relpath)
        except (FileNotFoundError, NotADirectoryError):
            return
        try:
            remove_at(pfd, base)
        finally:
            os.close(pfd)

    def read_file(self, relpath: str) -> bytes:
        fd = self.open_file(relpath, os.O_RDONLY)
        try:
            with os.fdopen(fd, "rb", closefd=False) as f:
                return f.read()
        finally:
            os.close(fd)

    def canonical(self, fd: int) -> str:
        """The in-root path (``/a/b``) of an fd opened under this root."""
        real = os.readlink(f"/proc/self/fd/{fd}")
        if real == self._canon:
            return "/"
        if not real.startswith(self._canon.rstrip("/") + "/"):
            raise UnsafePath(f"{real!r} is outside {self.path!r}")
        return real[len(self._canon.rstrip("/")):]

    def resolve(self, relpath: str) -> str:
        """The canonical in-root path of ``relpath`` (``/``-rooted): symlinks followed inside
        the root; from the first missing component on, the rest is joined lexically."""
        parts = [p for p in relpath.split("/") if p not in ("", ".")]
        cur = "/"
        for i, part in enumerate(parts):
            try:
                fd = self.open(posixpath.join(cur, part), os.O_PATH)
            except (FileNotFoundError, NotADirectoryError):
                return posixpath.normpath(posixpath.join(cur, *parts[i:]))
            try:
                cur = self.canonical(fd)
            finally:
                os.close(fd)
        return cur


def remove_at(dirfd: int, name: str) -> int:
    """Remove ``name`` in ``dirfd`` (a tree: recursively, never following symlinks).
    Returns the removed entry's ``st_mode``, or 0 if there was nothing."""
    try:
        st = os.stat(name, dir_fd=dirfd, follow_symlinks=False)
    except FileNotFoundError:
        return 0
    if stat.S_ISDIR(st.st_mode):
        # fd-based and symlink-attack resistant (shutil.rmtree.avoids_symlink_attacks).
        shutil.rmtree(name, dir_fd=dirfd)
    else:
        os.unlink(name, dir_fd=dirfd)
    return st.st_mode


def clone_at(src_dir: int, src_name: str, st: os.stat_result, dst_dir: int, dst_name: str,
             buf: memoryview, skip_xattrs: tuple[str, ...] = ()) -> None:
    """Copy one non-directory (data, owner, mode, xattrs but ``skip_xattrs`` prefixes, times)
    from ``src_dir/src_name`` (lstat ``st``) to a new ``dst_dir/dst_name``; neither name is
    followed if it is a symlink."""
    times = (st.st_atime_ns, st.st_mtime_ns)
    if not stat.S_ISREG(st.st_mode):
        if stat.S_ISLNK(st.st_mode):
            os.symlink(os.readlink(src_name, dir_fd=src_dir), dst_name, dir_fd=dst_dir)
        else:
            os.mknod(dst_name, st.st_mode, st.st_rdev, dir_fd=dst_dir)
            os.chmod(dst_name, stat.S_IMODE(st.st_mode), dir_fd=dst_dir)  # ours: no symlink
        os.chown(dst_name, st.st_uid, st.st_gid, dir_fd=dst_dir, follow_symlinks=False)
        os.utime(dst_name, ns=times, dir_fd=dst_dir, follow_symlinks=False)
        return
    src = os.open(src_name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=src_dir)
    try:
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        dst = os.open(dst_name, flags, 0o600, dir_fd=dst_dir)
        try:
            while n := os.readv(src, [buf]):
                done = 0
                while done < n:
                    done += os.write(dst, buf[done:n])
            os.fchown(dst, st.st_uid, st.st_gid)
            os.fchmod(dst, stat.S_IMODE(st.st_mode))  # after chown, which clears setuid
            for name in os.listxattr(src):
                if not name.startswith(skip_xattrs):
                    try:  # after chown, which drops security.capability
                        os.setxattr(dst, name, os.getxattr(src, name))
                    except OSError as e:
                        if e.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP):
                            raise
            os.utime(dst, ns=times)
        finally:
            os.close(dst)
    finally:
        os.close(src)
