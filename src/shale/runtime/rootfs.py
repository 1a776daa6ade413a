"""The container's filesystem view, built in the init child's new mount namespace.

Order (runc's ``prepareRootfs``/``finalizeRootfs``): make ``/`` a recursive slave, bind the
rootfs on itself, mount the spec's mounts *inside* it, create ``/dev`` nodes and links,
``pivot_root``; then, seen from the new root, mask and read-only paths and the read-only
root remount.

Path safety: every mount target is opened with ``openat2(RESOLVE_IN_ROOT |
RESOLVE_NO_MAGICLINKS)`` against the rootfs and mounted through ``/proc/self/fd/N``, so a
symlink planted in the image at a mount target (``/data -> /etc``) resolves inside the
rootfs, never on the host. Missing targets are created the same way (mkdir, or an empty file
for a file bind). Sources are the engine's own choices and are trusted.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path
from typing import Any

from shale.errors import RuntimeFailure
from shale.fsroot import RESOLVE_IN_ROOT, RESOLVE_NO_MAGICLINKS, openat2
from shale.runtime import linux

_FLAGS: dict[str, tuple[bool, int]] = {  # option -> (clear?, flag)
    "ro": (False, linux.MS_RDONLY), "rw": (True, linux.MS_RDONLY),
    "nosuid": (False, linux.MS_NOSUID), "suid": (True, linux.MS_NOSUID),
    "nodev": (False, linux.MS_NODEV), "dev": (True, linux.MS_NODEV),
    "noexec": (False, linux.MS_NOEXEC), "exec": (True, linux.MS_NOEXEC),
    "sync": (False, linux.MS_SYNCHRONOUS), "async": (True, linux.MS_SYNCHRONOUS),
    "dirsync": (False, linux.MS_DIRSYNC), "mand": (False, linux.MS_MANDLOCK),
    "nomand": (True, linux.MS_MANDLOCK), "noatime": (False, linux.MS_NOATIME),
    "atime": (True, linux.MS_NOATIME), "nodiratime": (False, linux.MS_NODIRATIME),
    "diratime": (True, linux.MS_NODIRATIME), "relatime": (False, linux.MS_RELATIME),
    "norelatime": (True, linux.MS_RELATIME), "strictatime": (False, linux.MS_STRICTATIME),
    "nostrictatime": (True, linux.MS_STRICTATIME), "nosymfollow": (False, linux.MS_NOSYMFOLLOW),
    "bind": (False, linux.MS_BIND), "rbind": (False, linux.MS_BIND | linux.MS_REC),
}
_PROPAGATION = {
    "private": linux.MS_PRIVATE, "rprivate": linux.MS_PRIVATE | linux.MS_REC,
    "shared": linux.MS_SHARED, "rshared": linux.MS_SHARED | linux.MS_REC,
    "slave": linux.MS_SLAVE, "rslave": linux.MS_SLAVE | linux.MS_REC,
    "unbindable": linux.MS_UNBINDABLE, "runbindable": linux.MS_UNBINDABLE | linux.MS_REC,
}
# statvfs f_flag bits -> mount flags, to keep a mount's flags across a read-only remount.
_ST_TO_MS = ((1, linux.MS_RDONLY), (2, linux.MS_NOSUID), (4, linux.MS_NODEV),
             (8, linux.MS_NOEXEC), (16, linux.MS_SYNCHRONOUS), (64, linux.MS_MANDLOCK),
             (1024, linux.MS_NOATIME), (2048, linux.MS_NODIRATIME), (4096, linux.MS_RELATIME))
_DEVICES = (("null", 1, 3), ("zero", 1, 5), ("full", 1, 7), ("random", 1, 8),
            ("urandom", 1, 9), ("tty", 5, 0))
_DEV_LINKS = (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"),
              ("stdout", "/proc/self/fd/1"), ("stderr", "/proc/self/fd/2"), ("ptmx", "pts/ptmx"))
_RESOLVE = RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS


def parse_options(options: list[str]) -> tuple[int, int, str]:
    """(mount flags, propagation flags, data string) for OCI mount options."""
    flags = prop = 0
    data = []
    for opt in options:
        if opt in _FLAGS:
            clear, bit = _FLAGS[opt]
            flags = flags & ~bit if clear else flags | bit
        elif opt in _PROPAGATION:
            prop |= _PROPAGATION[opt]
        else:
            data.append(opt)
    return flags, prop, ",".join(data)


def mount_flags_of(path: str) -> int:
    vfs = os.statvfs(path)
    return sum(ms for st, ms in _ST_TO_MS if vfs.f_flag & st)


# -- resolving inside the root -------------------------------------------------------------

def open_in_root(rootfd: int, rel: str, flags: int = linux.O_PATH) -> int:
    return openat2(rootfd, rel, flags, 0, _RESOLVE)


def _redirect(rootfd: int, parts: list[str], i: int) -> str | None:
    """If ``parts[i]`` is a dangling symlink, the path it stands for (with the rest of
    ``parts``), to be resolved inside the root again; None if it is not a symlink."""
    parent = open_in_root(rootfd, "/".join(parts[:i]) or ".", linux.O_PATH | os.O_DIRECTORY)
    try:
        target = os.readlink(parts[i], dir_fd=parent)
    except OSError:
        return None
    finally:
        os.close(parent)
    base = [] if target.startswith("/") else parts[:i]
    return "/".join([*base, target, *parts[i + 1:]])


def mkdir_in_root(rootfd: int, rel: str, _depth: int = 0) -> None:
    """mkdir -p of ``rel`` with every component resolved inside the root. A dangling
    symlink on the way is followed, inside the root, and its target created (as runc's
    securejoin does), so ``/data -> /nonexistent`` yields ``ROOT/nonexistent``."""
    if _depth > 40:  # MAXSYMLINKS
        raise RuntimeFailure(f"too many levels of symbolic links creating /{rel}")
    parts = [p for p in rel.split("/") if p and p != "."]
    for i in range(len(parts)):
        try:
            os.close(open_in_root(rootfd, "/".join(parts[:i + 1]), linux.O_PATH | os.O_DIRECTORY))
            continue
        except FileNotFoundError:
            pass
        parent = open_in_root(rootfd, "/".join(parts[:i]) or ".", linux.O_PATH | os.O_DIRECTORY)
        try:
            os.mkdir(parts[i], 0o755, dir_fd=parent)
            continue
        except FileExistsError:
            pass
        finally:
            os.close(parent)
        redirect = _redirect(rootfd, parts, i)
        if redirect is None:
            raise RuntimeFailure(f"cannot create mount destination /{rel}")
        mkdir_in_root(rootfd, redirect, _depth + 1)
        return


def ensure_target(rootfd: int, rel: str, directory: bool) -> None:
    if directory:
        mkdir_in_root(rootfd, rel)
        return
    parts = [p for p in rel.split("/") if p and p != "."]
    for _ in range(40):
        if len(parts) > 1:
            mkdir_in_root(rootfd, "/".join(parts[:-1]))
        path = "/".join(parts)
        try:
            os.close(open_in_root(rootfd, path))  # O_PATH: never open a planted device
            return
        except FileNotFoundError:
            pass
        try:
            os.close(openat2(rootfd, path, os.O_RDONLY | os.O_CREAT, 0o644, _RESOLVE))
            return
        except FileNotFoundError:
            redirect = _redirect(rootfd, parts, len(parts) - 1)
            if redirect is None:
                raise
            parts = [p for p in redirect.split("/") if p and p != "."]
    raise RuntimeFailure(f"too many levels of symbolic links creating /{rel}")


def _mount_at(rootfd: int, rel: str, source: str | None, fstype: str | None, flags: int,
              data: str | None = None) -> None:
    fd = open_in_root(rootfd, rel)
    try:
        linux.mount(source, linux.proc_fd(fd), fstype, flags, data or None)
    finally:
        os.close(fd)


# -- mounts --------------------------------------------------------------------------------

def mount_entry(rootfd: int, m: dict[str, Any], cgroup_mounts: list[tuple[str, Path]]) -> None:
    dest = m.get("destination", "")
    rel = os.path.normpath("/" + dest).lstrip("/")
    if not dest.startswith("/") or not rel:
        raise RuntimeFailure(f"invalid mount destination {dest!r}")
    fstype, source = m.get("type") or "", m.get("source") or ""
    flags, prop, data = parse_options(list(m.get("options") or []))
    if fstype == "bind" or flags & linux.MS_BIND:
        _bind(rootfd, rel, source, flags)
    elif fstype == "cgroup":
        _cgroup(rootfd, rel, flags, cgroup_mounts)
    else:
        mkdir_in_root(rootfd, rel)
        _mount_at(rootfd, rel, source or fstype, fstype, flags, data)
    if prop:
        _mount_at(rootfd, rel, None, None, prop)


def _bind(rootfd: int, rel: str, source: str, flags: int) -> None:
    try:
        is_dir = stat.S_ISDIR(os.stat(source).st_mode)
    except FileNotFoundError:
        raise RuntimeFailure(f"bind source path does not exist: {source}") from None
    ensure_target(rootfd, rel, is_dir)
    _mount_at(rootfd, rel, source, None, linux.MS_BIND | (flags & linux.MS_REC))
    extra = flags & ~(linux.MS_BIND | linux.MS_REC)
    if extra:
        # reopen: the target now resolves to the new mount, which is what gets remounted
        _mount_at(rootfd, rel, None, None, linux.MS_REMOUNT | linux.MS_BIND | extra)


def _cgroup(rootfd: int, rel: str, flags: int, cgroup_mounts: list[tuple[str, Path]]) -> None:
    """runc's v1 layout: a tmpfs with the container's own cgroup dir of each hierarchy
    bound at its name; on v2 the container's dir bound at the destination. Only the
    container's own directories are shown, never the host's tree."""
    mkdir_in_root(rootfd, rel)
    ro = flags & linux.MS_RDONLY
    bind_flags = linux.MS_REMOUNT | linux.MS_BIND | (flags & ~linux.MS_REC)
    if len(cgroup_mounts) == 1 and cgroup_mounts[0][0] == "":
        _mount_at(rootfd, rel, str(cgroup_mounts[0][1]), None, linux.MS_BIND)
        _mount_at(rootfd, rel, None, None, bind_flags)
        return
    base = flags & ~(linux.MS_RDONLY | linux.MS_REC)
    _mount_at(rootfd, rel, "tmpfs", "tmpfs", base, "mode=755")
    for name, hostdir in cgroup_mounts:
        sub = f"{rel}/{name}"
        mkdir_in_root(rootfd, sub)
        _mount_at(rootfd, sub, str(hostdir), None, linux.MS_BIND)
        _mount_at(rootfd, sub, None, None, bind_flags)
    if ro:
        _mount_at(rootfd, rel, None, None, linux.MS_REMOUNT | base | linux.MS_RDONLY)


def create_devices(rootfd: int, devices: list[dict[str, Any]]) -> None:
    """The standard nodes runc creates in a tmpfs /dev, the spec's ``linux.devices``, and
    the /dev symlinks (fd, stdin, stdout, stderr, ptmx -> pts/ptmx)."""
    devfd = open_in_root(rootfd, "dev", linux.O_PATH | os.O_DIRECTORY)
    try:
        for name, major, minor in _DEVICES:
            _mknod(devfd, name, stat.S_IFCHR | 0o666, major, minor)
        for target_name, target in _DEV_LINKS:
            try:
                os.symlink(target, target_name, dir_fd=devfd)
            except FileExistsError:
                pass
    finally:
        os.close(devfd)
    for dev in devices:
        _spec_device(rootfd, dev)


def _mknod(dirfd: int, name: str, mode: int, major: int, minor: int) -> None:
    try:
        os.mknod(name, mode, os.makedev(major, minor), dir_fd=dirfd)
    except FileExistsError:
        pass


def _spec_device(rootfd: int, dev: dict[str, Any]) -> None:
    rel = os.path.normpath("/" + dev["path"]).lstrip("/")
    parent, _, name = rel.rpartition("/")
    mkdir_in_root(rootfd, parent)
    kind = {"c": stat.S_IFCHR, "u": stat.S_IFCHR, "b": stat.S_IFBLK, "p": stat.S_IFIFO}
    mode = kind[dev.get("type", "c")] | (dev.get("fileMode", 0o666) & 0o7777)
    dirfd = open_in_root(rootfd, parent or ".", linux.O_PATH | os.O_DIRECTORY)
    try:
        _mknod(dirfd, name, mode, dev.get("major", 0), dev.get("minor", 0))
        os.chown(name, dev.get("uid", 0), dev.get("gid", 0), dir_fd=dirfd,
                 follow_symlinks=False)
    finally:
        os.close(dirfd)


def prepare(config: dict[str, Any], rootfs: str, cgroup_mounts: list[tuple[str, Path]]) -> None:
    """Everything up to and including pivot_root; afterwards ``/`` is the container's."""
    linux_cfg = config.get("linux") or {}
    prop = _PROPAGATION.get(linux_cfg.get("rootfsPropagation", ""),
                            linux.MS_SLAVE | linux.MS_REC)
    linux.mount(None, "/", None, prop)
    linux.mount(rootfs, rootfs, None, linux.MS_BIND | linux.MS_REC)
    rootfd = os.open(rootfs, linux.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        mounts = list(config.get("mounts") or [])
        for m in mounts:
            mount_entry(rootfd, m, cgroup_mounts)
        cwd = (config.get("process") or {}).get("cwd") or "/"
        mkdir_in_root(rootfd, cwd)  # runc creates a missing cwd too (docker's WORKDIR)
        if any(m.get("destination") == "/dev" and m.get("type") != "bind" for m in mounts):
            create_devices(rootfd, list(linux_cfg.get("devices") or []))
        os.fchdir(rootfd)
    finally:
        os.close(rootfd)
    # pivot_root(".", "."): the old root ends up stacked on "/"; made a slave first so
    # detaching it does not propagate to the host, then lazily unmounted.
    linux.pivot_root(".", ".")
    linux.mount(None, ".", None, linux.MS_SLAVE | linux.MS_REC)
    linux.umount2(".", linux.MNT_DETACH)
    os.chdir("/")


def bind_console(slave_path: str) -> None:
    """runc bind-mounts the pty slave on /dev/console."""
    try:
        os.close(os.open("/dev/console", os.O_CREAT | os.O_RDONLY | os.O_CLOEXEC, 0o600))
        linux.mount(slave_path, "/dev/console", None, linux.MS_BIND)
    except OSError as e:
        if e.errno not in (errno.EROFS, errno.ENOENT):
            raise


def finalize(config: dict[str, Any]) -> None:
    """After pivot_root: masked paths, read-only paths, read-only root."""
    linux_cfg = config.get("linux") or {}
    for path in linux_cfg.get("readonlyPaths") or []:
        _readonly(path)
    for path in linux_cfg.get("maskedPaths") or []:
        _mask(path)
    if (config.get("root") or {}).get("readonly"):
        linux.mount(None, "/", None, linux.MS_REMOUNT | linux.MS_BIND | linux.MS_RDONLY
                    | mount_flags_of("/"))


def _readonly(path: str) -> None:
    try:
        linux.mount(path, path, None, linux.MS_BIND | linux.MS_REC)
    except FileNotFoundError:
        return
    flags = mount_flags_of(path)
    linux.mount(None, path, None,
                linux.MS_REMOUNT | linux.MS_BIND | linux.MS_REC | linux.MS_RDONLY | flags)


def _mask(path: str) -> None:
    try:
        is_dir = stat.S_ISDIR(os.stat(path).st_mode)
    except (FileNotFoundError, NotADirectoryError):
        return
    if is_dir:
        linux.mount("tmpfs", path, "tmpfs", linux.MS_RDONLY)
    else:
        linux.mount("/dev/null", path, None, linux.MS_BIND)
