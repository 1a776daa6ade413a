"""The last steps of a container process before ``execve``, shared by init and exec.

Order (runc's ``finalizeNamespace`` + init): rlimits; seccomp if no_new_privs is *not* set
(loading a filter then needs CAP_SYS_ADMIN, so before caps are dropped); bounding set;
supplementary groups, gid, uid with PR_SET_KEEPCAPS so permitted survives; cwd; the
effective/permitted/inheritable/ambient sets; no_new_privs and then its seccomp; look the
command up in the process's own PATH the way Go's ``exec.LookPath`` does, so the errors read
like docker's (``exec: "nosuch": executable file not found in $PATH``).
"""

from __future__ import annotations

import os
import resource
import signal
import stat
from pathlib import Path
from typing import Any, NoReturn

from shale.runtime import linux, users
from shale.runtime.spec import CAP_NUMBERS


class ExecError(Exception):
    """A failure to run the command: ``code`` is docker's (126 cannot execute, 127 not
    found); the message is the one runc would print."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _caps(names: list[str] | None) -> set[int]:
    return {CAP_NUMBERS[n] for n in names or [] if n in CAP_NUMBERS}


def apply_rlimits(rlimits: list[dict[str, Any]]) -> None:
    """Clamped to the current hard limit and never fatal: without CAP_SYS_RESOURCE a higher
    limit fails (podman's default nofile=1048576 breaks on this host for that reason)."""
    for rl in rlimits:
        kind = getattr(resource, rl.get("type", ""), None)
        if kind is None:
            continue
        _, cur_hard = resource.getrlimit(kind)
        hard = int(rl.get("hard", 0))
        if cur_hard != resource.RLIM_INFINITY:
            hard = min(hard, cur_hard)
        try:
            resource.setrlimit(kind, (min(int(rl.get("soft", 0)), hard), hard))
        except (OSError, ValueError):
            pass


def lookup(arg0: str, env: list[str]) -> str:
    """Go's exec.LookPath (1.19, what runc 1.1 uses): mode bits decide, directories are
    'permission denied', PATH comes from the process's environment."""
    if "/" in arg0:
        _check_executable(arg0, arg0)
        return arg0
    path = next((e[5:] for e in reversed(env) if e.startswith("PATH=")), "")
    for directory in path.split(":"):
        candidate = os.path.join(directory or ".", arg0)
        try:
            _check_executable(arg0, candidate)
            return candidate
        except ExecError:
            continue
    raise ExecError(127, f'exec: "{arg0}": executable file not found in $PATH')


def _check_executable(arg0: str, path: str) -> None:
    try:
        mode = os.stat(path).st_mode
    except OSError as e:
        code = 127 if isinstance(e, (FileNotFoundError, NotADirectoryError)) else 126
        reason = (e.strerror or "").lower()
        raise ExecError(code, f'exec: "{arg0}": stat {path}: {reason}') from None
    if stat.S_ISDIR(mode) or not mode & 0o111:
        raise ExecError(126, f'exec: "{arg0}": permission denied')


def _chdir(cwd: str, final: bool) -> bool:
    try:
        os.chdir(cwd)
    except OSError as e:
        if not final:
            return False
        raise ExecError(125, f"chdir to cwd ({cwd!r}) set in config.json failed: "
                             f"{(e.strerror or '').lower()}") from None
    return True


def _home_env(env: list[str], uid: int) -> list[str]:
    if any(e.startswith("HOME=") for e in env):
        return env
    return [*env, "HOME=" + users.home_of(users.read_in_root(Path("/"), "etc/passwd"), uid)]


def prepare(proc: dict[str, Any], seccomp_bpf: bytes | None) -> tuple[str, list[str]]:
    """Apply everything but execve; returns (resolved path, env). Must run inside the
    container's root, as root with full capabilities."""
    user = proc.get("user") or {}
    uid, gid = int(user.get("uid", 0)), int(user.get("gid", 0))
    env = _home_env(list(proc.get("env") or []), uid)
    apply_rlimits(list(proc.get("rlimits") or []))
    nnp = bool(proc.get("noNewPrivileges"))
    if seccomp_bpf and not nnp:
        linux.load_seccomp(seccomp_bpf)
    caps = proc.get("capabilities") or {}
    linux.drop_bounding(_caps(caps.get("bounding")))
    cwd = proc.get("cwd") or "/"
    # as runc: chdir while still root if possible, else again as the user
    chdir_done = _chdir(cwd, final=False)
    linux.set_keepcaps(True)
    os.setgroups([int(g) for g in user.get("additionalGids") or []])
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)
    linux.set_keepcaps(False)
    if not chdir_done:
        _chdir(cwd, final=True)
    linux.capset(_caps(caps.get("effective")), _caps(caps.get("permitted")),
                 _caps(caps.get("inheritable")))
    ambient = _caps(caps.get("ambient"))
    if ambient:
        linux.set_ambient(ambient)
    if nnp:
        linux.set_no_new_privs()
        if seccomp_bpf:
            linux.load_seccomp(seccomp_bpf)
    args = list(proc.get("args") or [])
    if not args:
        raise ExecError(125, "args must not be empty")
    return lookup(args[0], env), env


def reset_signals() -> None:
    """Python ignores SIGPIPE and SIGXFSZ, and ignored signals survive execve: a container's
    ``yes | head`` would never die of SIGPIPE. Restore every default and unblock all."""
    for sig in signal.valid_signals():
        if sig in (signal.SIGKILL, signal.SIGSTOP):
            continue
        try:
            if signal.getsignal(sig) is not signal.SIG_DFL:
                signal.signal(sig, signal.SIG_DFL)
        except (OSError, ValueError):
            pass
    signal.pthread_sigmask(signal.SIG_SETMASK, [])


def execute(path: str, args: list[str], env: list[str], err_fd: int) -> NoReturn:
    """execve; on failure write ``error CODE MESSAGE`` to ``err_fd`` (close-on-exec, so
    the reader sees EOF exactly when execve succeeded) and exit."""
    linux.close_range_cloexec(3)
    reset_signals()
    environ: dict[str, str] = {}
    for item in env:
        key, sep, value = item.partition("=")
        if sep:
            environ[key] = value
    try:
        os.execve(path, args, environ)
    except OSError as e:
        code = 127 if e.errno == 2 else 126
        report(err_fd, ExecError(code, f'exec: "{args[0]}": {(e.strerror or "").lower()}'))
    os._exit(code)


def report(fd: int, exc: BaseException) -> None:
    """One line on the sync pipe: ``error CODE MESSAGE``."""
    if isinstance(exc, ExecError):
        code, msg = exc.code, exc.message
    elif isinstance(exc, OSError):
        code, msg = 125, f"{exc.strerror or exc}" + (f": {exc.filename}" if exc.filename else "")
    else:
        code, msg = 125, str(exc) or type(exc).__name__
    line = f"error {code} {' '.join(msg.split())}\n".encode()
    try:
        os.write(fd, line)
    except OSError:
        pass
