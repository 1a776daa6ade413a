"""Mounts: the only thing snapshotters hand out, plus helpers to mount and unmount them.

A ``Mount`` is a description (type, source, options), as in containerd: nothing is mounted
until ``mount_all`` is called with a target. Overlay mounts with many lower dirs go through
the new mount API (``fsopen``/``fsconfig`` with ``lowerdir+``) so ``mount(2)``'s silent
truncation of its data at one page can never drop a layer.

Helpers (all raise ``shale.errors`` types naming the path and the OS error):

- ``mount_all(mounts, target)``: mount each description on ``target``, in order.
- ``unmount(target)``: unmount everything at and below ``target`` (idempotent).
- ``unmount_all_under(prefix)``: unmount every mount strictly below ``prefix``, deepest
  first; used at start-up to clean stale mounts of dead containers.
- ``make_rprivate(path)``: make ``path`` a mount point with private propagation so the
  store's mounts never leak into (or receive events from) other namespaces.
- ``is_mountpoint(path)`` and ``mountinfo()``: read ``/proc/self/mountinfo``.
"""

from __future__ import annotations

import errno
import os
import re
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shale.errors import (
    InUse,
    InvalidArgument,
    LimitExceeded,
    NotFound,
    ShaleError,
    Unsupported,
)
from shale.record import field, record


@record(frozen=True)
class Mount:
    """One mount. For overlay: ``options`` holds ``lowerdir=a:b`` (highest first),
    ``upperdir=``, ``workdir=`` and flags; for a bind: ``type="bind"``, options ``rbind``/``ro``."""

    type: str
    source: str
    options: tuple[str, ...] = field(default_factory=tuple)

    @property
    def readonly(self) -> bool:
        return "ro" in self.options

    def option(self, key: str) -> str | None:
        prefix = key + "="
        for opt in self.options:
            if opt.startswith(prefix):
                return opt[len(prefix):]
        return None


OVERLAY_MAX_LOWERS = 500
"""The kernel's ``OVL_MAX_STACK``: one more lower and the mount fails with EINVAL."""

# mount(2) flags, from <linux/mount.h>.
MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_SYNCHRONOUS = 0x10
MS_REMOUNT = 0x20
MS_DIRSYNC = 0x80
MS_NOATIME = 0x400
MS_NODIRATIME = 0x800
MS_BIND = 0x1000
MS_REC = 0x4000
MS_UNBINDABLE = 0x20000
MS_PRIVATE = 0x40000
MS_SLAVE = 0x80000
MS_SHARED = 0x100000
MS_RELATIME = 0x200000
MS_STRICTATIME = 0x1000000
MNT_DETACH = 0x2
UMOUNT_NOFOLLOW = 0x8

# The new mount API. Syscalls numbered 424 and up are shared by every architecture except
# alpha, so these numbers are not x86_64-only.
_SYS_MOVE_MOUNT = 429
_SYS_FSOPEN = 430
_SYS_FSCONFIG = 431
_SYS_FSMOUNT = 432
_FSOPEN_CLOEXEC = 0x1
_FSMOUNT_CLOEXEC = 0x1
_FSCONFIG_SET_FLAG = 0
_FSCONFIG_SET_STRING = 1
_FSCONFIG_CMD_CREATE = 6
_MOUNT_ATTR_RDONLY = 0x1
_MOVE_MOUNT_F_EMPTY_PATH = 0x4
_AT_FDCWD = -100

# Option name -> (flags to clear, flags to set), as mount(8) spells them.
_FLAG_OPTIONS: dict[str, tuple[int, int]] = {
    "ro": (0, MS_RDONLY), "rw": (MS_RDONLY, 0),
    "nosuid": (0, MS_NOSUID), "suid": (MS_NOSUID, 0),
    "nodev": (0, MS_NODEV), "dev": (MS_NODEV, 0),
    "noexec": (0, MS_NOEXEC), "exec": (MS_NOEXEC, 0),
    "sync": (0, MS_SYNCHRONOUS), "async": (MS_SYNCHRONOUS, 0),
    "dirsync": (0, MS_DIRSYNC),
    "noatime": (0, MS_NOATIME), "atime": (MS_NOATIME, 0),
    "nodiratime": (0, MS_NODIRATIME), "diratime": (MS_NODIRATIME, 0),
    "relatime": (0, MS_RELATIME), "norelatime": (MS_RELATIME, 0),
    "strictatime": (0, MS_STRICTATIME),
    "bind": (0, MS_BIND), "rbind": (0, MS_BIND | MS_REC),
    "defaults": (0, 0),
}

# Propagation options (as OCI specs carry them): a separate mount(2) call after the mount.
_PROPAGATION: dict[str, int] = {
    "private": MS_PRIVATE, "rprivate": MS_PRIVATE | MS_REC,
    "slave": MS_SLAVE, "rslave": MS_SLAVE | MS_REC,
    "shared": MS_SHARED, "rshared": MS_SHARED | MS_REC,
    "unbindable": MS_UNBINDABLE, "runbindable": MS_UNBINDABLE | MS_REC,
}


if TYPE_CHECKING:
    import ctypes

# --- libc and syscalls ---------------------------------------------------------------------

_ctypes: Any = None  # the module, once loaded: ~2 ms, so not at import (the record types
# of this module are on every command's path, its syscalls are not)


@cache
def _libc() -> ctypes.CDLL:
    global _ctypes
    import ctypes

    _ctypes = ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p,
                           ctypes.c_ulong, ctypes.c_char_p]
    libc.mount.restype = ctypes.c_int
    libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
    libc.umount2.restype = ctypes.c_int
    libc.syscall.restype = ctypes.c_long
    return libc


def _b(s: str | None) -> bytes | None:
    return None if s is None else os.fsencode(s)


def libc() -> ctypes.CDLL:
    """libc through ctypes (loaded on first use)."""
    return _libc()


def _check(ret: int) -> int:
    if ret < 0:
        err = _ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return ret


def _sys_mount(source: str | None, target: str, fstype: str | None, flags: int,
               data: str | None) -> None:
    _check(_libc().mount(_b(source), _b(target), _b(fstype), flags, _b(data)))


def _sys_umount2(target: str, flags: int) -> None:
    _check(_libc().umount2(_b(target), flags | UMOUNT_NOFOLLOW))


def _syscall(number: int, *args: int | bytes | None) -> int:
    lib, ctypes = _libc(), _ctypes
    cargs: list[object] = [ctypes.c_long(number)]
    for a in args:
        cargs.append(ctypes.c_char_p(a) if a is None or isinstance(a, bytes)
                     else ctypes.c_long(a))
    return _check(lib.syscall(*cargs))


def _fsopen(fstype: str) -> int:
    return _syscall(_SYS_FSOPEN, fstype.encode(), _FSOPEN_CLOEXEC)


def _lowerdir_plus_supported() -> bool:
    """``lowerdir+`` arrived in Linux 6.8. Older kernels with ``fsopen`` route overlay
    through a legacy context that would only fail at create time, so ask the version."""
    release = os.uname().release
    m = re.match(r"(\d+)\.(\d+)", release)
    return m is not None and (int(m.group(1)), int(m.group(2))) >= (6, 8)


def _fs_log(fs_fd: int) -> str:
    """The kernel's own error lines for a failed fsconfig ("too many lower directories")."""
    lines: list[str] = []
    while len(lines) < 16:
        try:
            lines.append(os.read(fs_fd, 4096).decode(errors="replace").strip())
        except OSError:
            break
    return "; ".join(line[2:] if line[1:2] == " " else line for line in lines)


# --- errors --------------------------------------------------------------------------------

_ERRNO_CLASS: dict[int, type[ShaleError]] = {
    errno.ENOENT: NotFound,
    errno.ENOTDIR: NotFound,
    errno.EBUSY: InUse,
    errno.EINVAL: InvalidArgument,
    errno.ENODEV: Unsupported,
    errno.ENOSYS: Unsupported,
    errno.EOPNOTSUPP: Unsupported,
}


def _error(op: str, target: str, err: int, detail: str = "") -> ShaleError:
    cls = _ERRNO_CLASS.get(err, ShaleError)
    text = f"{op} {target}: {os.strerror(err)}"
    return cls(f"{text} ({detail})" if detail else text)


# --- mountinfo -----------------------------------------------------------------------------

@record(frozen=True)
class MountInfo:
    """One line of ``/proc/self/mountinfo`` (``optional`` holds ``shared:N``, ``master:N``)."""

    mount_id: int
    parent_id: int
    mount_point: str
    options: str
    optional: tuple[str, ...]
    fstype: str
    source: str
    super_options: str  # the filesystem's own options (overlay: its layers)


def _unescape(field_: bytes) -> str:
    # The kernel octal-escapes space, tab, newline and backslash in paths.
    raw = re.sub(rb"\\([0-7]{3})", lambda m: bytes([int(m.group(1), 8)]), field_)
    return os.fsdecode(raw)


def mountinfo() -> list[MountInfo]:
    """The calling process's mount table, in the kernel's order (parents before children)."""
    with open("/proc/self/mountinfo", "rb") as f:
        data = f.read()
    result = []
    for line in data.splitlines():
        fields = line.split(b" ")
        sep = fields.index(b"-", 6)
        result.append(MountInfo(
            mount_id=int(fields[0]), parent_id=int(fields[1]),
            mount_point=_unescape(fields[4]), options=fields[5].decode(),
            optional=tuple(f.decode() for f in fields[6:sep]),
            fstype=fields[sep + 1].decode(), source=_unescape(fields[sep + 2]),
            super_options=_unescape(b" ".join(fields[sep + 3:]))))
    return result


def mount_points(prefix: str) -> list[str]:
    """Mount points at ``prefix`` or below it (a real path, no trailing slash), once per
    mount stacked there, in the kernel's order. The cheap reading of mountinfo: only the
    mount point field is looked at, and only the candidates are unescaped."""
    with open("/proc/self/mountinfo", "rb") as f:
        data = f.read()
    raw = os.fsencode(prefix)
    found = []
    for line in data.splitlines():
        point = line.split(b" ", 5)[4]
        if b"\\" in point:
            point = os.fsencode(_unescape(point))
        if point == raw or (point.startswith(raw) and point[len(raw):len(raw) + 1] == b"/"):
            found.append(os.fsdecode(point))
    return found


def is_mountpoint(path: Path) -> bool:
    """True if something is mounted on ``path`` (bind mounts of the same fs included,
    which ``os.path.ismount`` misses)."""
    real = os.path.realpath(path)
    return real in mount_points(real)


# --- mounting ------------------------------------------------------------------------------

def mount_all(mounts: list[Mount], target: Path) -> None:
    """Mount each description on ``target`` in order (later ones stack on earlier ones).
    On failure the mounts already made here are undone."""
    real = os.path.realpath(target)
    if not os.path.isdir(real):
        raise NotFound(f"mount target {target}: not a directory")
    done = 0
    try:
        for m in mounts:
            _mount_one(m, real)
            done += 1
    except BaseException:
        for _ in range(done):
            try:
                _sys_umount2(real, MNT_DETACH)
            except OSError:
                pass
        raise


def _mount_one(m: Mount, target: str) -> None:
    if m.type == "overlay":
        _mount_overlay(m, target)
    elif m.type == "bind" or "bind" in m.options or "rbind" in m.options:
        _mount_bind(m, target)
    else:
        flags, data = _split_options(m.options)
        try:
            _sys_mount(m.source, target, m.type, flags, data or None)
        except OSError as e:
            raise _error(f"mount {m.type} {m.source} on", target, e.errno or 0) from None
    for opt in m.options:
        if opt in _PROPAGATION:
            try:
                _sys_mount(None, target, None, _PROPAGATION[opt], None)
            except OSError as e:
                _sys_umount2(target, MNT_DETACH)  # mount_all only undoes complete mounts
                raise _error(f"set {opt} propagation on", target, e.errno or 0) from None


def _split_options(options: tuple[str, ...]) -> tuple[int, str]:
    """mount(8)-style options -> (MS_* flags, fs-specific data string); propagation
    options are left to ``_mount_one``."""
    flags = 0
    data: list[str] = []
    for opt in options:
        if opt in _FLAG_OPTIONS:
            clear, set_ = _FLAG_OPTIONS[opt]
            flags = (flags & ~clear) | set_
        elif opt not in _PROPAGATION:
            data.append(opt)
    return flags, ",".join(data)


def _mount_bind(m: Mount, target: str) -> None:
    flags, _ = _split_options(m.options)
    bind_flags = MS_BIND | (flags & MS_REC)
    try:
        _sys_mount(m.source, target, None, bind_flags, None)
    except OSError as e:
        raise _error(f"bind mount {m.source} on", target, e.errno or 0) from None
    extra = flags & ~(MS_BIND | MS_REC)
    if not extra:
        return
    # A bind mount ignores every flag but MS_REC; ro and friends need a remount. It applies
    # to the top mount only, which is all a snapshot's bind has.
    try:
        _sys_mount(None, target, None, MS_REMOUNT | MS_BIND | extra, None)
    except OSError as e:
        _sys_umount2(target, MNT_DETACH)
        raise _error("remount read-only", target, e.errno or 0) from None


@record(frozen=True)
class _Overlay:
    source: str
    lowers: list[str]
    upper: str | None
    work: str | None
    flags: int
    others: list[str]  # fs options other than the layers: index=off, userxattr, ...


def _parse_overlay(m: Mount, target: str) -> _Overlay:
    lowers: list[str] = []
    upper = work = None
    others: list[str] = []
    flags, data = _split_options(m.options)
    for opt in data.split(",") if data else []:
        key, _, value = opt.partition("=")
        if key == "lowerdir":
            lowers.extend(p for p in value.split(":") if p)
        elif key == "upperdir":
            upper = value
        elif key == "workdir":
            work = value
        else:
            others.append(opt)
    if not lowers:
        raise InvalidArgument(f"overlay mount on {target}: no lowerdir")
    if len(lowers) > OVERLAY_MAX_LOWERS:
        raise LimitExceeded(
            f"overlay mount on {target}: {len(lowers)} lower layers, the kernel allows "
            f"at most {OVERLAY_MAX_LOWERS}; squash the image or use the vfs driver")
    return _Overlay(m.source or "overlay", lowers, upper, work, flags, others)


def _mount_overlay(m: Mount, target: str) -> None:
    ov = _parse_overlay(m, target)
    if _lowerdir_plus_supported():
        try:
            fs_fd = _fsopen("overlay")
        except OSError as e:
            if e.errno != errno.ENOSYS:
                raise _error("fsopen overlay for", target, e.errno or 0) from None
        else:
            _mount_overlay_new(fs_fd, ov, target)
            return
    _mount_overlay_legacy(ov, target)


def _mount_overlay_new(fs_fd: int, ov: _Overlay, target: str) -> None:
    """fsopen/fsconfig/fsmount/move_mount: one ``lowerdir+`` per layer, no page limit."""
    step = "fsconfig"
    try:
        # "source" only names the mount in mountinfo ("overlay", as mount(2) would show).
        params = [("source", ov.source), *(("lowerdir+", lower) for lower in ov.lowers)]
        if ov.upper is not None:
            params.append(("upperdir", ov.upper))
        if ov.work is not None:
            params.append(("workdir", ov.work))
        for key, value in params:
            step = f"fsconfig {key}={value}"
            _syscall(_SYS_FSCONFIG, fs_fd, _FSCONFIG_SET_STRING, key.encode(),
                     os.fsencode(value), 0)
        for opt in ov.others:
            key, eq, value = opt.partition("=")
            step = f"fsconfig {opt}"
            if eq:
                _syscall(_SYS_FSCONFIG, fs_fd, _FSCONFIG_SET_STRING, key.encode(),
                         value.encode(), 0)
            else:
                _syscall(_SYS_FSCONFIG, fs_fd, _FSCONFIG_SET_FLAG, key.encode(), None, 0)
        step = "fsconfig create"
        _syscall(_SYS_FSCONFIG, fs_fd, _FSCONFIG_CMD_CREATE, None, None, 0)
        step = "fsmount"
        attrs = _MOUNT_ATTR_RDONLY if ov.flags & MS_RDONLY else 0
        mnt_fd = _syscall(_SYS_FSMOUNT, fs_fd, _FSMOUNT_CLOEXEC, attrs)
        try:
            step = "move_mount"
            _syscall(_SYS_MOVE_MOUNT, mnt_fd, b"", _AT_FDCWD, os.fsencode(target),
                     _MOVE_MOUNT_F_EMPTY_PATH)
        finally:
            # An open mount fd keeps the mount busy: umount would fail with EBUSY.
            os.close(mnt_fd)
    except OSError as e:
        log = _fs_log(fs_fd)
        detail = f"{step}: {log}" if log else step
        raise _error("mount overlay on", target, e.errno or 0, detail) from None
    finally:
        os.close(fs_fd)


def _page_limit() -> int:
    # mount(2) copies at most one page of data including the final NUL.
    return os.sysconf("SC_PAGE_SIZE") - 1


def _legacy_data(ov: _Overlay, paths: dict[str, str]) -> str:
    opts = [f"lowerdir={':'.join(paths[p] for p in ov.lowers)}"]
    if ov.upper is not None:
        opts.append(f"upperdir={paths[ov.upper]}")
    if ov.work is not None:
        opts.append(f"workdir={paths[ov.work]}")
    return ",".join([*ov.others, *opts])


def _mount_overlay_legacy(ov: _Overlay, target: str) -> None:
    """mount(2) for kernels without ``lowerdir+``. The kernel truncates data past one page
    without a word (a layer silently vanishes or ENOENT names a cut path), so check the
    length; when absolute paths are too long, use paths relative to their common parent
    (the store's short links ``l/<id>``) from a child process that chdirs there."""
    layer_paths = [*ov.lowers, *(p for p in (ov.upper, ov.work) if p is not None)]
    data = _legacy_data(ov, {p: p for p in layer_paths})
    if len(os.fsencode(data)) <= _page_limit():
        try:
            _sys_mount(ov.source, target, "overlay", ov.flags, data)
        except OSError as e:
            raise _error("mount overlay on", target, e.errno or 0) from None
        return
    base = os.path.commonpath(layer_paths)
    rel = _legacy_data(ov, {p: os.path.relpath(p, base) for p in layer_paths})
    if len(os.fsencode(rel)) > _page_limit():
        raise LimitExceeded(
            f"mount overlay on {target}: {len(ov.lowers)} lower layers need "
            f"{len(os.fsencode(rel))} bytes of mount data even as relative paths, more "
            f"than the kernel's {_page_limit()} (Linux 6.8+ lifts this limit)")
    _mount_from(base, target, ov.flags, rel)


def _mount_from(base: str, target: str, flags: int, data: str) -> None:
    """mount(2) with relative layer paths, from a forked child whose cwd is ``base``.
    The child shares our mount namespace, so the mount is ours; forking keeps the
    chdir away from this process's other threads."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child, reports through its exit code
        code = 0
        try:
            os.chdir(base)
            _sys_mount("overlay", target, "overlay", flags, data)
        except OSError as e:
            code = e.errno or 255
        except BaseException:
            code = 255
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    if code < 0:
        raise ShaleError(f"mount overlay on {target}: helper killed by signal {-code}")
    if code != 0:
        raise _error("mount overlay on", target, code, f"relative to {base}")


# --- unmounting and propagation ------------------------------------------------------------

def _umount_path(path: str, lazy_fallback: bool) -> bool:
    """Unmount the top mount on ``path``; False if nothing was mounted there."""
    try:
        _sys_umount2(path, 0)
    except OSError as e:
        if e.errno in (errno.EINVAL, errno.ENOENT):
            return False
        if e.errno != errno.EBUSY or not lazy_fallback:
            raise _error("unmount", path, e.errno or 0) from None
        # Busy (a process still has its cwd or a file there): detach now, the kernel
        # frees it when the last user goes, as docker does for dead containers.
        try:
            _sys_umount2(path, MNT_DETACH)
        except OSError as e2:
            raise _error("unmount (lazy)", path, e2.errno or 0) from None
    return True


def unmount(target: Path, *, lazy_fallback: bool = True) -> None:
    """Unmount every mount at and below ``target``, deepest first, including mounts stacked
    on ``target`` itself. Nothing mounted is not an error (cleanup paths call this twice).
    ``InUse`` if a mount is busy and ``lazy_fallback`` is False."""
    real = os.path.realpath(target)
    if not _unmount_below(real, strict=False, lazy_fallback=lazy_fallback):
        raise InUse(f"unmount {target}: still mounted after 128 unmounts")


def unmount_all_under(prefix: Path, *, lazy_fallback: bool = True) -> list[Path]:
    """Unmount every mount whose mount point is strictly below ``prefix``, deepest first
    (children before parents). Returns the mount points unmounted."""
    done: list[Path] = []
    _unmount_below(os.path.realpath(prefix), strict=True, lazy_fallback=lazy_fallback,
                   done=done)
    return done


def _unmount_below(real: str, *, strict: bool, lazy_fallback: bool,
                   done: list[Path] | None = None) -> bool:
    """Unmount what is mounted at (unless ``strict``) and below ``real``; False if mounts
    kept coming off for 128 rounds. One reading of mountinfo per round: mountinfo
    lists every mount, the covered and the stacked ones too, so when each listed one
    came off there is nothing left to look for. Another round is needed only when one
    could not be reached by its path yet (a mount hidden under a later mount on a
    shallower path), or when a kernel keeps reporting a mount as gone."""
    real = real.rstrip("/") or "/"
    for _ in range(128):  # bounded: a kernel that keeps saying "unmounted" must not hang us
        points = [p for p in mount_points(real) if not (strict and p == real)]
        if not points:
            return True
        # Deeper paths first; stacked mounts appear once per layer, each unmount pops one.
        points.sort(key=lambda p: p.count("/"), reverse=True)
        missed = progress = False
        for point in points:
            if _umount_path(point, lazy_fallback):
                progress = True
                if done is not None:
                    done.append(Path(point))
            else:
                missed = True
        if not missed or not progress:
            # all gone; or none could be reached by its path, which another round will
            # not change (as before: left alone, not an error)
            return True
    return False


def make_rprivate(path: Path) -> None:
    """Make ``path`` a mount point (bind it on itself if needed) with recursive private
    propagation: mounts made below it then never propagate to the host's namespace or to
    peers, and a container's ``unshare`` cannot send them back."""
    path.mkdir(parents=True, exist_ok=True)
    real = os.path.realpath(path)
    try:
        if not is_mountpoint(Path(real)):
            _sys_mount(real, real, None, MS_BIND | MS_REC, None)
        _sys_mount(None, real, None, MS_PRIVATE | MS_REC, None)
    except OSError as e:
        raise _error("make rprivate", real, e.errno or 0) from None
