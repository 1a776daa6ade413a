"""The built-in runtime: the OCI verbs in Python, with ctypes for the syscalls.

Process tree of ``create`` (namespace syscalls need a single-threaded process, and a new pid
namespace only applies to the *next* child)::

    caller ──fork──> A: dumpable=0, stdio, close fds, unshare(mnt,uts,ipc,[net],pid)
                        ──fork──> B (PID 1): mounts, pivot_root, pty; "go"; user, caps...
                     A reports B's pid and exits; B is reparented to the caller (subreaper)

B builds its filesystem view while the caller moves it into its cgroup; after "go" it sets
user, capabilities and seccomp, reports ``ready`` on the sync pipe and blocks opening
``exec.fifo`` (runc's design: any process can ``start``).
``start`` opens the fifo, reads B's ``0``, then reads to EOF: nothing more means execve
succeeded (B's fd is close-on-exec); ``error CODE MSG`` means it failed. ``exec`` is the same
tree with ``setns`` into B's namespaces instead of ``unshare``, and no fifo.

State lives in ``<root>/<cid>/state.json`` (pid + its start time, so a recycled pid is never
taken for the container), next to ``exec.fifo`` and the compiled ``seccomp.bpf``.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import select
import shutil
import signal
import struct
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

from shale.errors import (
    AlreadyExists,
    CannotExecute,
    CommandNotFound,
    Conflict,
    InvalidArgument,
    NotFound,
    RuntimeFailure,
)
from shale.runtime import ProcessIO, State, linux, process, require_subreaper, rootfs
from shale.runtime.cgroups import Cgroup

_CID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
_NS = {"pid": linux.CLONE_NEWPID, "network": linux.CLONE_NEWNET, "ipc": linux.CLONE_NEWIPC,
       "uts": linux.CLONE_NEWUTS, "mount": linux.CLONE_NEWNS, "cgroup": linux.CLONE_NEWCGROUP}
# process fields an exec inherits from the container's own process when it omits them
_EXEC_DEFAULTS = ("capabilities", "rlimits", "noNewPrivileges")
# setns order for exec: mnt last, as after it /proc paths are the container's
_EXEC_NS = (("ipc", "ipc"), ("uts", "uts"), ("net", "network"), ("pid", "pid"),
            ("cgroup", "cgroup"), ("mnt", "mount"))


def _raise_for(code: int, message: str) -> NoReturn:
    if code == 127:
        raise CommandNotFound(message)
    if code == 126:
        raise CannotExecute(message)
    raise RuntimeFailure(message)


def _high_fd(fd: int) -> int:
    """Internal fds never sit on 0-2, where the process's stdio will be dup'ed."""
    return fd if fd > 2 else fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 3)


def _pipe() -> tuple[int, int]:
    r, w = os.pipe2(os.O_CLOEXEC)
    hr, hw = _high_fd(r), _high_fd(w)
    for orig, new in ((r, hr), (w, hw)):
        if orig != new:
            os.close(orig)
    return hr, hw


class _Sync:
    """Reads ``pid N`` / ``ready`` / ``error CODE MSG`` lines from the children."""

    def __init__(self, fd: int) -> None:
        self.fd, self.buf = fd, b""

    def line(self) -> str | None:
        while b"\n" not in self.buf:
            chunk = os.read(self.fd, 4096)
            if not chunk:
                return None
            self.buf += chunk
        raw, _, self.buf = self.buf.partition(b"\n")
        return raw.decode("utf-8", "replace")

    def expect(self, word: str, what: str) -> str:
        msg = self.line()
        if msg is None:
            raise RuntimeFailure(f"{what}: process exited during setup")
        if msg.startswith("error "):
            code, _, text = msg[6:].partition(" ")
            _raise_for(int(code), text)
        if not msg.startswith(word):
            raise RuntimeFailure(f"{what}: unexpected message {msg!r}")
        return msg[len(word):].strip()


def _stdio(io: ProcessIO) -> list[int]:
    """Parent side: the three fds the child will dup onto 0-2 (/dev/null for None)."""
    null = None
    fds = []
    for fd in (io.stdin, io.stdout, io.stderr):
        if fd is None or io.terminal:
            if null is None:
                null = _high_fd(os.open("/dev/null", os.O_RDWR | os.O_CLOEXEC))
            fd = null
        fds.append(fd)
    return fds


def _child_stdio(fds: list[int]) -> None:
    high = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 3) for fd in fds]
    for target, fd in enumerate(high):
        os.dup2(fd, target)  # dup2 leaves the new fd inheritable
        os.close(fd)


def _close_fds_except(keep: set[int]) -> None:
    """Drop every fd the caller had (pipes, sockets, the store's lock): the container must
    not hold them while it waits in ``created``; the rest is close-on-exec anyway."""
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd > 2 and fd not in keep:
            with contextlib.suppress(OSError):
                os.close(fd)


def _connect_console(path: str | None) -> int | None:
    if path is None:
        return None
    import socket  # here, before any fork: ``_send_pty`` runs where nothing can be imported

    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(path)
    except OSError as e:
        sock.close()
        raise RuntimeFailure(f"cannot connect to console socket {path}: {e.strerror}") from e
    return _high_fd(sock.detach())


def _send_pty(console_fd: int, proc: dict[str, Any]) -> str:
    """Open a pty in the *current* root's devpts, make it our controlling terminal and
    stdio, and send the master to the caller. Returns the slave's path."""
    master, slave = os.openpty()
    size = proc.get("consoleSize") or {}
    if size:
        fcntl.ioctl(master, linux.TIOCSWINSZ,
                    struct.pack("HHHH", size.get("height", 0), size.get("width", 0), 0, 0))
    import socket  # loaded already by _connect_console: no file is read after pivot_root

    with socket.socket(fileno=console_fd) as sock:
        socket.send_fds(sock, [b"/dev/ptmx"], [master])
    os.close(master)
    fcntl.ioctl(slave, linux.TIOCSCTTY, 0)
    name = os.ttyname(slave)
    for target in (0, 1, 2):
        os.dup2(slave, target)
    os.close(slave)
    return name


def _spawn(sync_w: int, keep: set[int], stdio: list[int],
           in_a: Callable[[], None], in_b: Callable[[], None]) -> int:
    """fork A -> A runs ``in_a`` (namespace entry) -> fork B -> B runs ``in_b`` and never
    returns. Returns A's pid; A writes ``pid <B>`` on the sync pipe."""
    pid_a = os.fork()
    if pid_a:
        return pid_a
    code = 1
    try:
        linux.set_dumpable(False)
        process.reset_signals()  # the caller's Python handlers must never run in here
        _child_stdio(stdio)
        _close_fds_except(keep)
        in_a()
        pid_b = os.fork()
        if pid_b == 0:
            try:
                in_b()
            except BaseException as e:  # everything goes to the parent, never up the stack
                process.report(sync_w, e)
            os._exit(1)
        os.write(sync_w, f"pid {pid_b}\n".encode())
        code = 0
    except BaseException as e:
        process.report(sync_w, e)
    os._exit(code)


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)


class BuiltinRuntime:
    name = "builtin"

    def __init__(self, root: Path) -> None:
        self.root = root

    # -- state ------------------------------------------------------------------------------
    def _dir(self, cid: str) -> Path:
        if not _CID.match(cid):
            raise InvalidArgument(f"invalid container id {cid!r}")
        return self.root / cid

    def _load(self, cid: str) -> dict[str, Any]:
        try:
            data: dict[str, Any] = json.loads((self._dir(cid) / "state.json").read_text())
        except FileNotFoundError:
            raise NotFound(f"container {cid} does not exist") from None
        return data

    def _alive(self, st: dict[str, Any]) -> bool:
        return bool(st["pid"]) and linux.proc_starttime(st["pid"]) == st["starttime"]

    def state(self, cid: str) -> State:
        st = self._load(cid)
        if not self._alive(st):
            return State("stopped", 0, st["bundle"])
        if (self._dir(cid) / "exec.fifo").exists():
            return State("created", st["pid"], st["bundle"])
        if st["cgroup"] and Cgroup(st["cgroup"]).frozen():
            return State("paused", st["pid"], st["bundle"])
        return State("running", st["pid"], st["bundle"])

    # -- create / start -----------------------------------------------------------------------
    def create(self, cid: str, bundle: Path, io: ProcessIO) -> int:
        require_subreaper()
        config = _load_config(bundle)
        if bool((config.get("process") or {}).get("terminal")) != io.terminal:
            raise InvalidArgument("process.terminal and a console socket go together")
        state_dir = self._dir(cid)
        self.root.mkdir(parents=True, exist_ok=True)
        try:
            state_dir.mkdir()
        except FileExistsError:
            raise AlreadyExists(f"container {cid} already exists") from None
        cgroup = None
        try:
            cgroup = _make_cgroup(config)
            bpf = self._seccomp(config, state_dir)
            pid = _Launch(config, bundle, state_dir, io, cgroup, bpf).run()
            proc = config.get("process") or {}
            st = {"id": cid, "pid": pid, "starttime": linux.proc_starttime(pid),
                  "bundle": str(bundle), "cgroup": cgroup.path if cgroup else "",
                  "created": time.time(),
                  "exec_defaults": {k: proc[k] for k in _EXEC_DEFAULTS if k in proc}}
            tmp = state_dir / "state.json.tmp"
            tmp.write_text(json.dumps(st))
            tmp.rename(state_dir / "state.json")
            return pid
        except BaseException:
            if cgroup is not None:
                with contextlib.suppress(Exception):
                    cgroup.kill(signal.SIGKILL)
                    cgroup.remove()
            shutil.rmtree(state_dir, ignore_errors=True)
            raise

    def _seccomp(self, config: dict[str, Any], state_dir: Path) -> bytes | None:
        profile = (config.get("linux") or {}).get("seccomp")
        if not profile:
            return None
        from shale.runtime.seccomp import compile_bpf

        bpf = compile_bpf(profile, self.root / ".seccomp-cache")
        (state_dir / "seccomp.bpf").write_bytes(bpf)
        return bpf

    def start(self, cid: str) -> None:
        st = self.state(cid)
        if st.status != "created":
            raise Conflict(f"cannot start a container that is {st.status}")
        fifo = self._dir(cid) / "exec.fifo"
        try:
            fd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except FileNotFoundError:
            raise Conflict(f"container {cid} is already started") from None
        try:
            fifo.unlink()
            data = _drain_fifo(fd, os.pidfd_open(st.pid))
        except ProcessLookupError:
            data = b""
        finally:
            os.close(fd)
        if not data.startswith(b"0"):
            raise RuntimeFailure(f"container {cid} died before it could start")
        msg = data[1:].decode("utf-8", "replace").strip()
        if msg.startswith("error "):
            code, _, text = msg[6:].partition(" ")
            _raise_for(int(code), text)

    # -- kill / delete ----------------------------------------------------------------------
    def kill(self, cid: str, sig: int, all: bool = False) -> None:
        st = self._load(cid)
        if not self._alive(st):
            raise Conflict(f"container {cid} is not running")
        if all and st["cgroup"]:
            Cgroup(st["cgroup"]).kill(sig)
            return
        _signal_pid(st, sig)

    def delete(self, cid: str, force: bool = False) -> None:
        st = self._load(cid)
        status = self.state(cid).status
        if status in ("running", "paused") and not force:
            raise Conflict(f"cannot delete container {cid} that is not stopped: {status}")
        cgroup = Cgroup(st["cgroup"]) if st["cgroup"] else None
        if status != "stopped":
            pidfd = os.pidfd_open(st["pid"])
            try:
                if cgroup is not None:
                    cgroup.kill(signal.SIGKILL)
                _signal_pid(st, signal.SIGKILL)
                if not select.select([pidfd], [], [], 10.0)[0]:
                    raise RuntimeFailure(f"container {cid} did not die after SIGKILL")
            finally:
                os.close(pidfd)
        if cgroup is not None:
            cgroup.remove()
        shutil.rmtree(self._dir(cid), ignore_errors=True)

    # -- exec -------------------------------------------------------------------------------
    def exec(self, cid: str, process_spec: dict[str, Any], io: ProcessIO) -> int:
        require_subreaper()
        st = self._load(cid)
        status = self.state(cid).status
        if status != "running":
            # a frozen cgroup would freeze the joining process mid-setup: refuse, as runc
            raise Conflict(f"cannot exec in a container that is {status}")
        if bool(process_spec.get("terminal")) != io.terminal:
            raise InvalidArgument("process.terminal and a console socket go together")
        bpf_path = self._dir(cid) / "seccomp.bpf"
        bpf = bpf_path.read_bytes() if bpf_path.exists() else None
        # as runc: what the exec'd process does not say comes from the container's process
        merged = {**st.get("exec_defaults", {}), **process_spec}
        return _exec(st, merged, io, bpf)


def _signal_pid(st: dict[str, Any], sig: int) -> None:
    try:
        pidfd = os.pidfd_open(st["pid"])
    except ProcessLookupError:
        return
    try:
        # the pidfd pins the process: checking the start time now rules out a recycled pid
        if linux.proc_starttime(st["pid"]) == st["starttime"]:
            signal.pidfd_send_signal(pidfd, sig)
    except ProcessLookupError:
        pass
    finally:
        os.close(pidfd)


def _drain_fifo(fd: int, pidfd: int) -> bytes:
    """Read the init's ``0`` and then up to EOF (execve done) or its death. The fifo is
    non-blocking so a container killed before it opened its end cannot hang us."""
    data = b""
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    poller.register(pidfd, select.POLLIN)
    try:
        while True:
            ready = dict(poller.poll())
            if fd in ready:
                chunk = os.read(fd, 4096)
                if chunk:
                    data += chunk
                    continue
                return data  # EOF after a writer: execve closed it, or the init exited
            if pidfd in ready:
                with contextlib.suppress(BlockingIOError):
                    data += os.read(fd, 4096)
                return data
    finally:
        os.close(pidfd)


def _load_config(bundle: Path) -> dict[str, Any]:
    try:
        config: dict[str, Any] = json.loads((bundle / "config.json").read_text())
    except FileNotFoundError:
        raise NotFound(f"bundle {bundle} has no config.json") from None
    except json.JSONDecodeError as e:
        raise InvalidArgument(f"invalid config.json in {bundle}: {e}") from None
    for ns in (config.get("linux") or {}).get("namespaces") or []:
        if ns.get("type") not in _NS:
            raise InvalidArgument(f"namespace {ns.get('type')!r} is not supported")
    return config


def _make_cgroup(config: dict[str, Any]) -> Cgroup | None:
    linux_cfg = config.get("linux") or {}
    path = linux_cfg.get("cgroupsPath")
    if not path:
        return None
    cgroup = Cgroup(path)
    if cgroup.exists():
        raise AlreadyExists(f"cgroup {path} already exists")
    try:
        cgroup.create()
        resources = linux_cfg.get("resources") or {}
        cgroup.apply_devices(list(resources.get("devices") or []))
        cgroup.apply_resources(resources)
    except BaseException:
        with contextlib.suppress(Exception):
            cgroup.remove()
        raise
    return cgroup


class _Launch:
    """One ``create``: the fds and the two children. ``run`` returns the init's pid."""

    def __init__(self, config: dict[str, Any], bundle: Path, state_dir: Path, io: ProcessIO,
                 cgroup: Cgroup | None, bpf: bytes | None) -> None:
        self.config, self.cgroup, self.bpf = config, cgroup, bpf
        root = (config.get("root") or {}).get("path") or "rootfs"
        self.rootfs = os.path.realpath(bundle / root)
        if not os.path.isdir(self.rootfs):
            raise NotFound(f"rootfs {self.rootfs} does not exist")
        self.fifo = state_dir / "exec.fifo"
        os.mkfifo(self.fifo)
        os.chmod(self.fifo, 0o622)  # writable by a non-root container user, whatever umask
        self.io = io
        self.cgroup_mounts = cgroup.mounts() if cgroup else []

    def run(self) -> int:
        opened: list[int] = []
        try:
            sync_r, sync_w = _pipe()
            go_r, go_w = _pipe()
            opened += [sync_r, sync_w, go_r, go_w]
            fifo_fd = _high_fd(os.open(self.fifo, linux.O_PATH | os.O_CLOEXEC))
            opened.append(fifo_fd)
            console = _connect_console(self.io.console_socket)
            opened += [] if console is None else [console]
            ns_joins, flags = _namespace_plan(self.config)
            opened += [fd for fd, _ in ns_joins]
            stdio = _stdio(self.io)
            opened += stdio

            def in_a() -> None:
                for fd, kind in ns_joins:
                    linux.setns(fd, kind)
                linux.unshare(flags)

            def in_b() -> None:
                self._init(sync_w, go_r, fifo_fd, console)

            keep = {sync_w, go_r, fifo_fd, *(fd for fd, _ in ns_joins)}
            keep |= set() if console is None else {console}
            pid_a = _spawn(sync_w, keep, stdio, in_a, in_b)
            for fd in keep:
                os.close(fd)
                opened.remove(fd)
            return self._handshake(pid_a, _Sync(sync_r), go_w)
        finally:
            _close_own(opened, self.io)

    def _handshake(self, pid_a: int, sync: _Sync, go_w: int) -> int:
        pid = 0
        try:
            pid = int(sync.expect("pid", "container init"))
        finally:
            _reap(pid_a)
        try:
            if self.cgroup is not None:
                self.cgroup.add(pid)
            os.write(go_w, b"g")
            sync.expect("ready", "container init")
            return pid
        except BaseException:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            _reap(pid)
            raise

    def _init(self, sync_w: int, go_r: int, fifo_fd: int, console: int | None) -> None:
        """Runs as the container's PID 1 until execve."""
        os.setsid()
        os.umask(0)
        cfg, proc = self.config, self.config.get("process") or {}
        new_ns = {n.get("type") for n in (cfg.get("linux") or {}).get("namespaces") or []
                  if not n.get("path")}
        if cfg.get("hostname") and "uts" in new_ns:
            linux.sethostname(cfg["hostname"])
        if "network" in new_ns:
            linux.loopback_up()
        # nothing may be imported from here on: after pivot_root the host's Python
        # library is gone
        rootfs.prepare(cfg, self.rootfs, self.cgroup_mounts)
        if console is not None:
            rootfs.bind_console(_send_pty(console, proc))
        rootfs.finalize(cfg)
        os.umask(0o022)
        # the caller moves us into the cgroup while we mount (a v1 cgroup move waits for an
        # RCU grace period, ~10 ms here); nothing of the container's runs before "go"
        if os.read(go_r, 1) != b"g":
            os._exit(1)
        os.close(go_r)
        path, env = process.prepare(proc, self.bpf)
        os.write(sync_w, b"ready\n")
        os.close(sync_w)
        # O_PATH fd reopened through /proc: blocks until ``start`` opens the read end
        wfd = os.open(linux.proc_fd(fifo_fd), os.O_WRONLY | os.O_CLOEXEC)
        os.close(fifo_fd)
        os.write(wfd, b"0")
        process.execute(path, list(proc.get("args") or []), env, wfd)


def _namespace_plan(config: dict[str, Any]) -> tuple[list[tuple[int, int]], int]:
    """(fds to setns for namespaces given by path, flags to unshare for new ones)."""
    joins: list[tuple[int, int]] = []
    flags = 0
    for ns in (config.get("linux") or {}).get("namespaces") or []:
        kind = _NS[ns["type"]]
        if ns.get("path"):
            joins.append((_high_fd(os.open(ns["path"], os.O_RDONLY | os.O_CLOEXEC)), kind))
        else:
            flags |= kind
    return joins, flags


def _exec(st: dict[str, Any], proc: dict[str, Any], io: ProcessIO, bpf: bytes | None) -> int:
    pid = st["pid"]
    fds: list[int] = []
    try:
        try:
            for name, _ in _EXEC_NS:
                mine, theirs = os.stat(f"/proc/self/ns/{name}"), os.stat(f"/proc/{pid}/ns/{name}")
                if (mine.st_ino, mine.st_dev) != (theirs.st_ino, theirs.st_dev):
                    fds.append(_high_fd(os.open(f"/proc/{pid}/ns/{name}",
                                                os.O_RDONLY | os.O_CLOEXEC)))
        except (FileNotFoundError, ProcessLookupError):
            pass  # died meanwhile: the start time check below says so
        if linux.proc_starttime(pid) != st["starttime"]:
            raise Conflict(f"container {st['id']} is not running")
        ns_fds = list(fds)
        procs = [_high_fd(os.open(d / "cgroup.procs", os.O_WRONLY | os.O_CLOEXEC))
                 for d in (Cgroup(st["cgroup"]).dirs() if st["cgroup"] else [])]
        fds += procs
        sync_r, sync_w = _pipe()
        fds += [sync_r, sync_w]
        console = _connect_console(io.console_socket)
        stdio = _stdio(io)
        fds += stdio + ([console] if console is not None else [])

        def in_a() -> None:
            for fd in procs:
                os.write(fd, b"0")
            for fd in ns_fds:
                linux.setns(fd, 0)

        def in_b() -> None:
            os.setsid()
            if console is not None:
                _send_pty(console, proc)
            path, env = process.prepare(proc, bpf)
            process.execute(path, list(proc.get("args") or []), env, sync_w)

        keep = {sync_w, *ns_fds, *procs, *([console] if console is not None else [])}
        pid_a = _spawn(sync_w, keep, stdio, in_a, in_b)
        os.close(sync_w)
        fds.remove(sync_w)
        sync = _Sync(sync_r)
        try:
            child = int(sync.expect("pid", "exec"))
        finally:
            _reap(pid_a)
        msg = sync.line()  # EOF: execve closed the pipe; a line: it failed
        if msg is not None:
            _reap(child)
            code, _, text = msg.removeprefix("error ").partition(" ")
            _raise_for(int(code) if code.isdigit() else 125, text)
        return child
    finally:
        _close_own(fds, io)


def _close_own(fds: list[int], io: ProcessIO) -> None:
    """Close the fds this module opened, never the caller's stdio."""
    for fd in set(fds):
        if fd > 2 and fd not in (io.stdin, io.stdout, io.stderr):
            with contextlib.suppress(OSError):
                os.close(fd)
