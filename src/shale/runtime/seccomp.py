"""Docker's default seccomp profile, and compiling an OCI ``linux.seccomp`` object to BPF.

``default_profile(caps)`` gives what dockerd writes into ``config.json`` for a container
with those capabilities: moby's ``profiles/seccomp/default_linux.go`` (an allow list with a
default of EPERM), with the capability-gated groups resolved the same way (a group whose
``Includes.Caps`` are all held is added; a group ``Excludes``-ed by a held cap is left out).
Both runtimes consume that one object: runc natively, the built-in runtime through
``compile_bpf``, which uses libseccomp (pyseccomp, imported lazily: 15-25 ms) and caches the
program by the profile's hash, so a warm start loads raw BPF with one ``prctl``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from shale.errors import Unsupported

# moby default_linux.go, the unconditional allow group (kernel >= 4.8 adds ptrace & co).
_ALLOW = """
accept accept4 access adjtimex alarm bind brk capget capset chdir chmod chown chown32
clock_adjtime clock_adjtime64 clock_getres clock_getres_time64 clock_gettime clock_gettime64
clock_nanosleep clock_nanosleep_time64 close close_range connect copy_file_range creat dup dup2
dup3 epoll_create epoll_create1 epoll_ctl epoll_ctl_old epoll_pwait epoll_pwait2 epoll_wait
epoll_wait_old eventfd eventfd2 execve execveat exit exit_group faccessat faccessat2 fadvise64
fadvise64_64 fallocate fanotify_mark fchdir fchmod fchmodat fchown fchown32 fchownat fcntl
fcntl64 fdatasync fgetxattr flistxattr flock fork fremovexattr fsetxattr fstat fstat64
fstatat64 fstatfs fstatfs64 fsync ftruncate ftruncate64 futex futex_time64 futex_waitv
futimesat getcpu getcwd getdents getdents64 getegid getegid32 geteuid geteuid32 getgid getgid32
getgroups getgroups32 getitimer getpeername getpgid getpgrp getpid getppid getpriority
getrandom getresgid getresgid32 getresuid getresuid32 getrlimit get_robust_list getrusage
getsid getsockname getsockopt get_thread_area gettid gettimeofday getuid getuid32 getxattr
inotify_add_watch inotify_init inotify_init1 inotify_rm_watch io_cancel ioctl io_destroy
io_getevents io_pgetevents io_pgetevents_time64 ioprio_get ioprio_set io_setup io_submit
io_uring_enter io_uring_register io_uring_setup ipc kill landlock_add_rule
landlock_create_ruleset landlock_restrict_self lchown lchown32 lgetxattr link linkat listen
listxattr llistxattr _llseek lremovexattr lseek lsetxattr lstat lstat64 madvise membarrier
memfd_create memfd_secret mincore mkdir mkdirat mknod mknodat mlock mlock2 mlockall mmap mmap2
mprotect mq_getsetattr mq_notify mq_open mq_timedreceive mq_timedreceive_time64 mq_timedsend
mq_timedsend_time64 mq_unlink mremap msgctl msgget msgrcv msgsnd msync munlock munlockall
munmap name_to_handle_at nanosleep newfstatat _newselect open openat openat2 pause pidfd_open
pidfd_send_signal pipe pipe2 pkey_alloc pkey_free pkey_mprotect poll ppoll ppoll_time64 prctl
pread64 preadv preadv2 prlimit64 process_mrelease pselect6 pselect6_time64 pwrite64 pwritev
pwritev2 read readahead readlink readlinkat readv recv recvfrom recvmmsg recvmmsg_time64
recvmsg remap_file_pages removexattr rename renameat renameat2 restart_syscall rmdir rseq
rt_sigaction rt_sigpending rt_sigprocmask rt_sigqueueinfo rt_sigreturn rt_sigsuspend
rt_sigtimedwait rt_sigtimedwait_time64 rt_tgsigqueueinfo sched_getaffinity sched_getattr
sched_getparam sched_get_priority_max sched_get_priority_min sched_getscheduler
sched_rr_get_interval sched_rr_get_interval_time64 sched_setaffinity sched_setattr
sched_setparam sched_setscheduler sched_yield seccomp select semctl semget semop semtimedop
semtimedop_time64 send sendfile sendfile64 sendmmsg sendmsg sendto setfsgid setfsgid32 setfsuid
setfsuid32 setgid setgid32 setgroups setgroups32 setitimer setpgid setpriority setregid
setregid32 setresgid setresgid32 setresuid setresuid32 setreuid setreuid32 setrlimit
set_robust_list setsid setsockopt set_thread_area set_tid_address setuid setuid32 setxattr
shmat shmctl shmdt shmget shutdown sigaltstack signalfd signalfd4 sigprocmask sigreturn
socketcall socketpair splice stat stat64 statfs statfs64 statx symlink symlinkat sync
sync_file_range syncfs sysinfo tee tgkill time timer_create timer_delete timer_getoverrun
timer_gettime timer_gettime64 timer_settime timer_settime64 timerfd_create timerfd_gettime
timerfd_gettime64 timerfd_settime timerfd_settime64 times tkill truncate truncate64 ugetrlimit
umask uname unlink unlinkat utime utimensat utimensat_time64 utimes vfork vmsplice wait4
waitid waitpid write writev
"""
_PTRACE_48 = "process_vm_readv process_vm_writev ptrace"

# Groups allowed only when the container holds the capability (moby's Includes.Caps).
_BY_CAP: dict[str, str] = {
    "CAP_DAC_READ_SEARCH": "open_by_handle_at",
    "CAP_SYS_ADMIN": "bpf clone clone3 fanotify_init fsconfig fsmount fsopen fspick "
                     "lookup_dcookie mount mount_setattr move_mount open_tree perf_event_open "
                     "quotactl quotactl_fd setdomainname sethostname setns syslog umount "
                     "umount2 unshare",
    "CAP_SYS_BOOT": "reboot",
    "CAP_SYS_CHROOT": "chroot",
    "CAP_SYS_MODULE": "delete_module init_module finit_module",
    "CAP_SYS_PACCT": "acct",
    "CAP_SYS_PTRACE": "kcmp pidfd_getfd process_madvise process_vm_readv process_vm_writev "
                      "ptrace",
    "CAP_SYS_RAWIO": "iopl ioperm",
    "CAP_SYS_TIME": "settimeofday stime clock_settime clock_settime64",
    "CAP_SYS_TTY_CONFIG": "vhangup",
    "CAP_SYS_NICE": "get_mempolicy mbind set_mempolicy set_mempolicy_home_node",
    "CAP_SYSLOG": "syslog",
    "CAP_BPF": "bpf",
    "CAP_PERFMON": "perf_event_open",
}

_NS_FLAGS = 0x7E020000  # CLONE_NEWNS|NEWUTS|NEWIPC|NEWUSER|NEWPID|NEWNET|NEWCGROUP
_AF_VSOCK = 40
_EPERM, _ENOSYS = 1, 38

_ARCHES = {
    "x86_64": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
    "aarch64": ["SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"],
    "s390x": ["SCMP_ARCH_S390X", "SCMP_ARCH_S390"],
    "riscv64": ["SCMP_ARCH_RISCV64"],
}


def _kernel_at_least(major: int, minor: int) -> bool:
    try:
        parts = os.uname().release.split(".")
        return (int(parts[0]), int(parts[1].split("-")[0])) >= (major, minor)
    except (ValueError, IndexError):
        return True


def _rule(names: str | list[str], action: str = "SCMP_ACT_ALLOW",
          args: list[dict[str, Any]] | None = None, errno: int | None = None) -> dict[str, Any]:
    rule: dict[str, Any] = {"names": names.split() if isinstance(names, str) else names,
                            "action": action}
    if args:
        rule["args"] = args
    if errno is not None:
        rule["errnoRet"] = errno
    return rule


def _arg(index: int, value: int, op: str, value_two: int = 0) -> dict[str, Any]:
    return {"index": index, "value": value, "valueTwo": value_two, "op": op}


def default_profile(caps: set[str] | frozenset[str]) -> dict[str, Any]:
    """The OCI ``linux.seccomp`` docker gives a container holding ``caps``."""
    machine = os.uname().machine
    rules = [_rule(_ALLOW)]
    if _kernel_at_least(4, 8):
        rules.append(_rule(_PTRACE_48))
    rules.append(_rule("socket", args=[_arg(0, _AF_VSOCK, "SCMP_CMP_NE")]))
    rules += [_rule("personality", args=[_arg(0, p, "SCMP_CMP_EQ")])
              for p in (0x0, 0x0008, 0x20000, 0x20008, 0xFFFFFFFF)]
    if machine in ("x86_64", "i686"):
        rules.append(_rule("arch_prctl modify_ldt"))
    elif machine in ("aarch64", "armv7l"):
        rules.append(_rule("arm_fadvise64_64 arm_sync_file_range sync_file_range2 breakpoint "
                           "cacheflush set_tls"))
    rules += [_rule(names) for cap, names in _BY_CAP.items() if cap in caps]
    if "CAP_SYS_ADMIN" not in caps:
        # clone without namespace flags; clone3 cannot be filtered by its flags, so docker
        # makes it ENOSYS and libc falls back to clone.
        index = 1 if machine.startswith("s390") else 0
        rules.append(_rule("clone", args=[_arg(index, _NS_FLAGS, "SCMP_CMP_MASKED_EQ", 0)]))
        rules.append(_rule("clone3", "SCMP_ACT_ERRNO", errno=_ENOSYS))
    return {
        "defaultAction": "SCMP_ACT_ERRNO",
        "defaultErrnoRet": _EPERM,
        "architectures": _ARCHES.get(machine, []),
        "syscalls": rules,
    }


# --- compiling ------------------------------------------------------------------------------

_OPS = {"SCMP_CMP_NE": 1, "SCMP_CMP_LT": 2, "SCMP_CMP_LE": 3, "SCMP_CMP_EQ": 4,
        "SCMP_CMP_GE": 5, "SCMP_CMP_GT": 6, "SCMP_CMP_MASKED_EQ": 7}


def _action(sc: Any, name: str, errno: int | None) -> int:
    fixed = {"SCMP_ACT_ALLOW": sc.ALLOW, "SCMP_ACT_KILL": sc.KILL,
             "SCMP_ACT_KILL_THREAD": sc.KILL_THREAD, "SCMP_ACT_KILL_PROCESS": sc.KILL_PROCESS,
             "SCMP_ACT_TRAP": sc.TRAP, "SCMP_ACT_LOG": sc.LOG}
    if name in fixed:
        return int(fixed[name])
    if name == "SCMP_ACT_ERRNO":
        return int(sc.ERRNO(_EPERM if errno is None else errno))
    if name == "SCMP_ACT_TRACE":
        return int(sc.TRACE(_EPERM if errno is None else errno))
    raise ValueError(f"unsupported seccomp action {name!r}")


def _build(profile: dict[str, Any]) -> bytes:
    try:
        import pyseccomp as sc  # type: ignore[import-untyped]  # no stubs; lazily: 15-25 ms
    except ImportError:
        raise Unsupported("a seccomp profile needs pyseccomp and libseccomp (pip install "
                          "pyseccomp), or run with --security-opt seccomp=unconfined") from None

    default = _action(sc, profile["defaultAction"], profile.get("defaultErrnoRet"))
    filt = sc.SyscallFilter(default)
    for arch_name in profile.get("architectures") or []:
        arch = getattr(sc.Arch, arch_name.removeprefix("SCMP_ARCH_"), None)
        if arch is not None and not filt.exist_arch(arch):
            filt.add_arch(arch)
    for rule in profile.get("syscalls") or []:
        action = _action(sc, rule["action"], rule.get("errnoRet"))
        if action == default:
            continue  # libseccomp refuses rules equal to the default action
        args = [sc.Arg(a["index"], _OPS[a["op"]], a.get("value", 0), a.get("valueTwo", 0))
                for a in rule.get("args") or []]
        for name in rule["names"]:
            nr = sc.resolve_syscall(sc.Arch.NATIVE, name)
            if nr == -1:
                continue  # unknown to this libseccomp: runc skips these too
            filt.add_rule(action, nr, *args)
    fd = os.memfd_create("seccomp-bpf", os.MFD_CLOEXEC)
    try:
        with open(fd, "wb", closefd=False) as out:
            filt.export_bpf(out)
        os.lseek(fd, 0, os.SEEK_SET)
        size = os.fstat(fd).st_size
        return os.pread(fd, size, 0)
    finally:
        os.close(fd)


def compile_bpf(profile: dict[str, Any], cache_dir: Path | None = None) -> bytes:
    """The BPF program for an OCI ``linux.seccomp`` object; cached in ``cache_dir`` by the
    hash of the profile (the compile is what costs: libseccomp import and ~400 rules)."""
    from shale.digest import sha256_hex

    key = sha256_hex(json.dumps(profile, sort_keys=True).encode() + os.uname().machine.encode())
    cached = cache_dir / f"{key}.bpf" if cache_dir else None
    if cached is not None:
        try:
            return cached.read_bytes()
        except FileNotFoundError:
            pass
    bpf = _build(profile)
    if cached is not None:
        cached.parent.mkdir(parents=True, exist_ok=True)
        tmp = cached.with_name(f".{key}.{os.getpid()}")
        tmp.write_bytes(bpf)
        os.replace(tmp, cached)
    return bpf
