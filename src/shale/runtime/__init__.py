"""The container runtime: one interface in the OCI runtime's own verbs, two implementations.

The contract is an OCI bundle: ``bundle/config.json`` (see ``spec.build_spec``) plus the
root filesystem it names. The runtime knows nothing of images. ``get_runtime("builtin")``
(Python + ctypes, the default) and ``get_runtime("runc")`` take the same bundle and pass the
same tests.

Lifecycle, as the caller (the container's monitor process) drives it::

    become_subreaper()                      # once per process, before the first create
    with ConsoleSocket(path) as console:    # only when process.terminal is true
        pid = rt.create(cid, bundle, ProcessIO(console_socket=console.path))
        master = console.receive()          # the pty master fd (runc's protocol)
    rt.start(cid)
    _, status = os.waitpid(pid, 0)          # the caller reaps the container's init itself
    code = exit_code(status)                # 128+N after signal N, as docker reports
    rt.delete(cid)

Contract of every ``Runtime``:

``create(cid, bundle, io) -> pid``
    Sets up namespaces, the cgroup (``linux.cgroupsPath``), mounts, root, user,
    capabilities and seccomp, looks ``process.args[0]`` up, and holds the init process
    right before ``execve`` until ``start``. Returns its host pid. After ``create`` returns
    the init is a child of the caller, *provided the caller is a child subreaper* (both
    runtimes double-fork; ``create`` raises RuntimeFailure otherwise): the caller waits on it
    with ``os.waitpid``. Raises CommandNotFound (127) or CannotExecute (126) for a command
    that is missing or not executable, AlreadyExists for a used ``cid``, RuntimeFailure for
    anything else; on any error nothing is left to delete.
``start(cid)``
    Lets the init ``execve``. Conflict unless the container is ``created``. When the
    ``execve`` itself fails (``exec format error``, a script's missing interpreter) the
    built-in runtime raises CannotExecute / CommandNotFound and the init exits 126 / 127;
    runc (like docker 20.10) reports success and the init prints the error and exits 1.
    Either way the caller still reaps the pid.
``state(cid) -> State``
    ``created`` | ``running`` | ``paused`` | ``stopped`` and the init pid (0 once stopped;
    an unreaped zombie counts as stopped). NotFound for an unknown ``cid``.
``kill(cid, sig, all=False)``
    Signal the init, or with ``all`` every process of the container's cgroup. Conflict if
    stopped. A PID 1 ignores signals it has no handler for, except SIGKILL.
``delete(cid, force=False)``
    Remove runtime state and the cgroup. Conflict if the container runs and not ``force``;
    ``force`` SIGKILLs everything and waits for the init to die. A ``created`` container
    is killed without ``force`` (runc does the same).
``exec(cid, process, io) -> pid``
    Start an extra process (an OCI ``process`` object) in the container's namespaces and
    cgroup, under the container's seccomp filter; ``capabilities``, ``rlimits`` and
    ``noNewPrivileges`` it omits are the container's own (as runc does). Returns its host
    pid, reaped by the caller like the init. CommandNotFound / CannotExecute as for
    ``create``; Conflict unless the container is running (a paused one included).

Cgroups: ``linux.cgroupsPath`` names the container's cgroup for both runtimes, so
``cgroups.Cgroup(path)`` (or, for the engine's ``/shale/<cid>`` paths, ``cgroups.freeze(cid)``,
``thaw``, ``pids``, ``oom_killed``, ``remove_cgroup``) works whichever runtime ran it. Read
``oom_killed`` before ``delete``, which removes the cgroup.

``ProcessIO`` is either up to three fds (None: /dev/null), dup'ed onto the process's 0/1/2,
or ``console_socket``: the path of a listening unix socket on which the runtime sends the pty
master as SCM_RIGHTS, exactly runc's ``--console-socket`` protocol, so caller code is the
same for both runtimes. The pty is opened inside the container's own devpts (``tty`` prints
``/dev/pts/0``). ``console_socket`` must be set iff ``process.terminal`` is true.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Protocol

from shale.errors import InvalidArgument, RuntimeFailure
from shale.record import record

RUNTIMES = ("builtin", "runc")


@record(frozen=True)
class ProcessIO:
    stdin: int | None = None
    stdout: int | None = None
    stderr: int | None = None
    console_socket: str | None = None

    @property
    def terminal(self) -> bool:
        return self.console_socket is not None


@record(frozen=True)
class State:
    status: str  # "created" | "running" | "paused" | "stopped"
    pid: int
    bundle: str = ""


class Runtime(Protocol):
    name: str

    def create(self, cid: str, bundle: Path, io: ProcessIO) -> int: ...

    def start(self, cid: str) -> None: ...

    def state(self, cid: str) -> State: ...

    def kill(self, cid: str, sig: int, all: bool = False) -> None: ...

    def delete(self, cid: str, force: bool = False) -> None: ...

    def exec(self, cid: str, process: dict[str, Any], io: ProcessIO) -> int: ...


def get_runtime(name: str, state_root: Path) -> Runtime:
    """``builtin`` keeps its state under ``state_root/builtin``, runc under ``state_root/runc``
    (its ``--root``)."""
    if name == "builtin":
        from shale.runtime.builtin import BuiltinRuntime

        return BuiltinRuntime(state_root / "builtin")
    if name == "runc":
        from shale.runtime.runc import RuncRuntime

        return RuncRuntime(state_root / "runc")
    raise InvalidArgument(f"unknown runtime {name!r} (known: {', '.join(RUNTIMES)})")


def exit_code(wait_status: int) -> int:
    """docker's exit code from an ``os.waitpid`` status: the code, or 128+N for signal N."""
    code = os.waitstatus_to_exitcode(wait_status)
    return 128 - code if code < 0 else code


def become_subreaper() -> None:
    """Make the caller the reaper of orphaned descendants: the container init (double-forked
    by both runtimes) is then reparented to it and ``os.waitpid`` gets its status."""
    from shale.runtime import linux

    linux.set_child_subreaper()


def require_subreaper() -> None:
    from shale.runtime import linux

    if not linux.is_child_subreaper():
        raise RuntimeFailure("the caller must be a child subreaper to wait for containers "
                             "(call shale.runtime.become_subreaper() first)")


class ConsoleSocket:
    """A listening unix socket receiving one pty master (runc's ``--console-socket``).
    ``path`` must fit a unix socket address (under 108 bytes)."""

    def __init__(self, path: Path | str) -> None:
        import socket

        self.path = str(path)
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self._sock.bind(self.path)
            self._sock.listen(1)
        except OSError:
            self._sock.close()
            raise

    def receive(self, timeout: float = 10.0) -> int:
        """Accept the runtime's connection and return the pty master fd (caller owns it)."""
        import socket

        self._sock.settimeout(timeout)
        try:
            conn, _ = self._sock.accept()
        except TimeoutError:
            raise RuntimeFailure("no console received from the runtime") from None
        with conn:
            conn.settimeout(timeout)
            _, fds, _, _ = socket.recv_fds(conn, 4096, 1)
        if not fds:
            raise RuntimeFailure("console socket message carried no fd")
        return fds[0]

    def close(self) -> None:
        self._sock.close()
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass

    def __enter__(self) -> ConsoleSocket:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
