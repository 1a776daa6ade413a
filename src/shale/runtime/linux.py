"""Thin ctypes wrappers over the Linux syscalls the built-in runtime needs.

Python 3.11 has no ``os.unshare``/``os.setns``/``mount``/``pivot_root``/``capset``, so they
come from libc through ctypes (about 3 ms to import). Every wrapper raises ``OSError`` with
the real errno, never returns a status. ``openat2`` is ``shale.fsroot``'s (one copy of the
path-safety primitive in the project).

Only this module talks ctypes; the rest of the runtime calls these functions.
"""

from __future__ import annotations

import _socket  # not socket: its enums and helpers cost ~2.5 ms on every `run`
import ctypes
import fcntl
import os
import struct

_libc = ctypes.CDLL(None, use_errno=True)

CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000

MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_SYNCHRONOUS = 0x10
MS_REMOUNT = 0x20
MS_MANDLOCK = 0x40
MS_DIRSYNC = 0x80
MS_NOSYMFOLLOW = 0x100
MS_NOATIME = 0x400
MS_NODIRATIME = 0x800
MS_BIND = 0x1000
MS_MOVE = 0x2000
MS_REC = 0x4000
MS_SILENT = 0x8000
MS_UNBINDABLE = 1 << 17
MS_PRIVATE = 1 << 18
MS_SLAVE = 1 << 19
MS_SHARED = 1 << 20
MS_RELATIME = 1 << 21
MS_STRICTATIME = 1 << 24
MNT_DETACH = 2

PR_SET_PDEATHSIG = 1
PR_SET_DUMPABLE = 4
PR_SET_KEEPCAPS = 8
PR_SET_SECCOMP = 22
PR_CAPBSET_READ = 23
PR_CAPBSET_DROP = 24
PR_SET_CHILD_SUBREAPER = 36
PR_GET_CHILD_SUBREAPER = 37
PR_SET_NO_NEW_PRIVS = 38
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_RAISE = 2
PR_CAP_AMBIENT_CLEAR_ALL = 4
SECCOMP_MODE_FILTER = 2

O_PATH = 0o10000000
CLOSE_RANGE_CLOEXEC = 1 << 2

TIOCSCTTY = 0x540E
TIOCSWINSZ = 0x5414


def _check(ret: int, *what: str) -> int:
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), *what[:1])
    return ret


def _b(s: str | None) -> bytes | None:
    return None if s is None else os.fsencode(s)


_libc.mount.argtypes = [
    ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p,
]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
_libc.pivot_root.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
_libc.sethostname.argtypes = [ctypes.c_char_p, ctypes.c_size_t]
_libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong,
                        ctypes.c_ulong]
_libc.unshare.argtypes = [ctypes.c_int]
_libc.setns.argtypes = [ctypes.c_int, ctypes.c_int]
_libc.capset.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
_libc.close_range.argtypes = [ctypes.c_uint, ctypes.c_uint, ctypes.c_int]
_libc.syscall.restype = ctypes.c_long


def unshare(flags: int) -> None:
    """Fails with EINVAL for CLONE_NEWNS in a multi-threaded process: call it after fork."""
    _check(_libc.unshare(flags))


def setns(fd: int, nstype: int = 0) -> None:
    _check(_libc.setns(fd, nstype))


def mount(source: str | None, target: str, fstype: str | None = None, flags: int = 0,
          data: str | None = None) -> None:
    _check(_libc.mount(_b(source), _b(target), _b(fstype), flags, _b(data)), target)


def umount2(target: str, flags: int = 0) -> None:
    _check(_libc.umount2(_b(target), flags), target)


def pivot_root(new_root: str, put_old: str) -> None:
    _check(_libc.pivot_root(_b(new_root), _b(put_old)), new_root)


def sethostname(name: str) -> None:
    raw = name.encode()
    _check(_libc.sethostname(raw, len(raw)))


def prctl(option: int, arg2: int = 0, arg3: int = 0, arg4: int = 0, arg5: int = 0) -> int:
    return _check(_libc.prctl(option, arg2, arg3, arg4, arg5))


def set_child_subreaper() -> None:
    """Orphaned descendants are reparented to us, so ``os.waitpid`` sees their exit."""
    prctl(PR_SET_CHILD_SUBREAPER, 1)


def is_child_subreaper() -> bool:
    flag = ctypes.c_int(0)
    _check(_libc.prctl(PR_GET_CHILD_SUBREAPER, ctypes.addressof(flag), 0, 0, 0))
    return flag.value != 0


def set_dumpable(on: bool) -> None:
    """Non-dumpable: a process in the container cannot open our /proc/PID/exe (the host's
    python) or ptrace us while we still run host code inside its namespaces."""
    prctl(PR_SET_DUMPABLE, 1 if on else 0)


def set_no_new_privs() -> None:
    prctl(PR_SET_NO_NEW_PRIVS, 1)


def set_keepcaps(on: bool) -> None:
    prctl(PR_SET_KEEPCAPS, 1 if on else 0)


def last_cap() -> int:
    with open("/proc/sys/kernel/cap_last_cap", "rb") as f:
        return int(f.read())


def drop_bounding(keep: set[int]) -> None:
    """Drop every capability not in ``keep`` from the bounding set (needs CAP_SETPCAP)."""
    for cap in range(last_cap() + 1):
        if cap not in keep and _libc.prctl(PR_CAPBSET_READ, cap, 0, 0, 0) == 1:
            prctl(PR_CAPBSET_DROP, cap)


def _mask(caps: set[int]) -> tuple[int, int]:
    bits = sum(1 << c for c in caps)
    return bits & 0xFFFFFFFF, bits >> 32


def capset(effective: set[int], permitted: set[int], inheritable: set[int]) -> None:
    """capset(2) with _LINUX_CAPABILITY_VERSION_3 (two 32-bit words per set)."""
    header = ctypes.create_string_buffer(struct.pack("Ii", 0x20080522, 0))
    e, p, i = _mask(effective), _mask(permitted), _mask(inheritable)
    data = ctypes.create_string_buffer(struct.pack("6I", e[0], p[0], i[0], e[1], p[1], i[1]))
    _check(_libc.capset(header, data))


def set_ambient(caps: set[int]) -> None:
    prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL)
    for cap in sorted(caps):
        prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, cap)


def load_seccomp(bpf: bytes) -> None:
    """Install a classic-BPF seccomp program (as exported by libseccomp). Without
    no_new_privs this needs CAP_SYS_ADMIN, so callers load it before dropping caps."""
    if not bpf or len(bpf) % 8:
        raise ValueError("seccomp program must be a non-empty array of sock_filter")
    prog_buf = ctypes.create_string_buffer(bpf, len(bpf))
    # struct sock_fprog { unsigned short len; struct sock_filter *filter; }
    fprog = ctypes.create_string_buffer(
        struct.pack("HxxxxxxP", len(bpf) // 8, ctypes.addressof(prog_buf)))
    _check(_libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.addressof(fprog), 0, 0))


def close_range_cloexec(first: int) -> None:
    """Mark every fd >= ``first`` close-on-exec (nothing the caller had leaks into the
    container), without closing the ones still needed until execve."""
    _check(_libc.close_range(first, 0xFFFFFFFF, CLOSE_RANGE_CLOEXEC))


def proc_fd(fd: int) -> str:
    """Mounting on /proc/self/fd/N mounts on exactly the inode the fd holds."""
    return f"/proc/self/fd/{fd}"


def loopback_up() -> None:
    """Bring ``lo`` up in a fresh network namespace (runc does the same for netns=new)."""

    siocgifflags, siocsifflags, iff_up = 0x8913, 0x8914, 0x1
    s = _socket.socket(_socket.AF_INET, _socket.SOCK_DGRAM)
    try:
        req = struct.pack("16sH14x", b"lo", 0)
        flags = struct.unpack("16sH14x", fcntl.ioctl(s.fileno(), siocgifflags, req))[1]
        fcntl.ioctl(s.fileno(), siocsifflags, struct.pack("16sH14x", b"lo", flags | iff_up))
    finally:
        s.close()


def proc_starttime(pid: int) -> int | None:
    """Field 22 of /proc/PID/stat: with the pid it names one process for its lifetime, so a
    recycled pid is never mistaken for the container. None if gone or a zombie."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = raw[raw.rindex(b")") + 2:].split()
    if fields[0] in (b"Z", b"X"):
        return None
    return int(fields[19])
