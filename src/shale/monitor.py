"""The per-container monitor process (DESIGN.md section 7).

Forked from the CLI (``shale.monitor_spawn``; `run`, `start` and `restart` do it first
thing, so it loads its code while the CLI parses, creates the record and snapshots, and plans
the network), it
detaches (double fork, ``setsid``, inherited fds closed), waits for the container (``go``),
sets it up (lock, published ports, rootfs, network, ``config.json``: ``Monitor.prepare``)
and then, for the container's whole life:
- holds an ``flock`` on ``monitor.lock`` (liveness = a lock test);
- is the child subreaper, so it waits on the container's init whatever runtime made it;
- owns the container's stdio (pipes, or the pty master received on a console socket),
  writes them to the json-file log and to attached clients (``attach.py`` frames);
- records state (pid, exit code, times), applies ``--restart`` and ``--rm``, unmounts.

Errors before the container runs (not found 127, not executable 126, engine 125) are recorded
in the state and sent to the CLI on the status pipe.
"""

from __future__ import annotations

import _socket  # not socket: its enums and helpers cost ~2.5 ms on every `run`
import contextlib
import json
import os
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

from shale import attach as ap
from shale.containers import Container, State, read_state, unmount_rootfs, write_state
from shale.monitor_spawn import encode_failure
from shale.oci import format_time


# ---- the monitor -------------------------------------------------------------------------
class _Cancelled(Exception):
    """The caller gave up before ``go``, or the set-up failed and was reported: leave."""


def monitor_main(status_fd: int, go_fd: int) -> None:
    code = 0
    m: Monitor | None = None
    try:
        _detach_fds(keep={status_fd, go_fd})
        _preload()
        m = Monitor(status_fd, _receive(go_fd))
        m.prepare(go_fd)
        m.run()
    except _Cancelled:
        pass
    except BaseException:
        code = 1
        with contextlib.suppress(Exception):
            import traceback

            if m is not None and m._c is not None:
                (m.c.dir / "monitor.err").write_text(traceback.format_exc())
    os._exit(code)


def _receive(go_fd: int) -> dict[str, Any]:
    """The next part of the job (``Pending.begin``, ``finish``); ``_Cancelled`` when the
    caller closed the pipe instead."""
    head = _read_exactly(go_fd, 4)
    if len(head) < 4:
        raise _Cancelled()
    data = _read_exactly(go_fd, int.from_bytes(head, "big"))
    part: dict[str, Any] = json.loads(data)
    return part


def _read_exactly(fd: int, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = os.read(fd, size - len(data))
        if not chunk:
            break
        data += chunk
    return data


def _detach_fds(keep: set[int]) -> None:
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    os.close(null)
    low = 3
    for fd in sorted(keep):
        os.closerange(low, fd)
        low = fd + 1
    with contextlib.suppress(OSError):
        os.closerange(low, 65536)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)


class _Log:
    """docker's json-file log: one JSON object per line, lines split at '\\n'."""

    def __init__(self, path: Path) -> None:
        self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        self.partial: dict[str, bytes] = {"stdout": b"", "stderr": b""}

    def write(self, stream: str, data: bytes) -> None:
        buf = self.partial[stream] + data
        lines = buf.split(b"\n")
        self.partial[stream] = lines.pop()
        if len(self.partial[stream]) > 16384:
            lines.append(self.partial[stream])
            self.partial[stream] = b""
            self._emit(stream, lines[:-1], nl=True)
            self._emit(stream, lines[-1:], nl=False)
            return
        self._emit(stream, lines, nl=True)

    def _emit(self, stream: str, lines: list[bytes], nl: bool) -> None:
        if not lines:
            return
        now = format_time(time.time())
        out = b"".join(json.dumps({"log": ln.decode("utf-8", "replace") + ("\n" if nl else ""),
                                   "stream": stream, "time": now}).encode() + b"\n"
                       for ln in lines)
        os.write(self.fd, out)

    def flush(self) -> None:
        for stream, rest in self.partial.items():
            if rest:
                self._emit(stream, [rest], nl=False)
                self.partial[stream] = b""


class Monitor:
    def __init__(self, status_fd: int, job: dict[str, Any]) -> None:
        self.root = Path(job["root"])
        self.status_fd = status_fd
        self.attached = bool(job["attached"])
        self.runtime_name = str(job["runtime"])
        self.job = job
        self._c: Container | None = Container.from_json(job["container"])
        self.lock = -1
        self.clients: dict[int, tuple[_socket.socket, ap.FrameReader, bool]] = {}
        import selectors

        self._selectors = selectors
        self.sel = selectors.DefaultSelector()
        self.tty = bool(self.c.config.get("Tty"))
        self.stdin_w = -1
        self.exit_sent = False
        self.hello = False  # the first client's hello (stdin wanted, tty size) arrived
        self.size = b""  # "rows cols" for a pty that does not exist yet
        self.proxies: list[Any] = []
        self._rt: Any = None

    @property
    def c(self) -> Container:
        assert self._c is not None, "no container before prepare"
        return self._c

    def prepare(self, go_fd: int) -> None:
        """Set the container up as ``container_ops.start`` did: its lock (waiting a moment
        for a previous monitor finishing up), published ports first (a port taken fails
        leaving nothing), the network, then (second part of the job) the rootfs and
        ``config.json``. ``P`` on the status pipe when done; else everything made is
        undone, the lock let go, ``F`` + the error sent (unless the caller gave up), and
        ``_Cancelled`` raised."""
        from shale.bundle import write_bundle
        from shale.containers import take_lock
        from shale.mount import Mount, is_mountpoint, mount_all
        from shale.network import endpoint as net

        c = self.c
        plan = net.Plan.from_json(self.job["plan"])
        bound: list[Any] = []
        networked = mounted = False
        try:
            try:
                self.lock = take_lock(c, wait=10.0)
                with contextlib.suppress(FileNotFoundError):
                    (c.dir / "stop-requested").unlink()
                sandbox = os.urandom(32).hex()
                bound = net.bind_ports(c, plan, sandbox)
                networked = True
                state = net.setup(c, plan, bound, sandbox)
                part = _receive(go_fd)  # meanwhile, the caller made the snapshots
            finally:
                os.close(go_fd)
            c = self._c = Container.from_json(part["container"])
            mounts = [Mount(t, src, tuple(opts)) for t, src, opts in part["mounts"]]
            unmount_rootfs(c)
            mounted = True
            with _store_lock(self.root):
                if not is_mountpoint(c.rootfs):
                    mount_all(mounts, c.rootfs)
            write_bundle(c)
        except BaseException as e:
            with contextlib.suppress(Exception):
                if networked:
                    net.teardown(c.dir, delete_links=True)
                if mounted:
                    unmount_rootfs(c)
            self._give_up(bound, b"" if isinstance(e, _Cancelled)
                          else b"F" + json.dumps(encode_failure(e)).encode())
        if bound:
            from shale.network.proxy import PortProxy

            self.proxies = [PortProxy(self.sel, *p) for p in net.proxies(bound, state)]
        try:
            os.write(self.status_fd, b"P")
        except BrokenPipeError:  # the caller died meanwhile: as if it never started us
            with contextlib.suppress(Exception):
                net.teardown(c.dir, delete_links=True)
                unmount_rootfs(c)
            self._give_up(bound, b"")

    def _give_up(self, bound: list[Any], report: bytes) -> None:
        for b in bound:
            b.sock.close()
        if self.lock >= 0:
            os.close(self.lock)  # before the report: the caller may act on the container
            self.lock = -1
        if report:
            with contextlib.suppress(OSError):
                os.write(self.status_fd, report)
        raise _Cancelled()

    # ---- lifecycle -----------------------------------------------------------------------
    def run(self) -> None:
        import fcntl

        from shale.runtime.linux import set_child_subreaper

        fcntl.flock(self.lock, fcntl.LOCK_EX)  # held already (taken by ``prepare``)
        set_child_subreaper()
        self.log = _Log(self.c.log_path)
        self.listener = self._listen()
        if self.attached:
            os.write(self.status_fd, b"L")
        st = read_state(self.c)
        st.MonitorPid = os.getpid()
        restarts = 0
        while True:
            # attached: the first run is created while the client connects, and started
            # once its hello is in (nothing of the container's runs before)
            code, err = self._run_once(st, wait_client=self.attached and restarts == 0)
            if err is not None:
                self._fail(st, code, err)
                break
            if not self._should_restart(st, code, restarts):
                break
            restarts += 1
            st.RestartCount = restarts
            st.Status, st.Restarting, st.Running = "restarting", True, False
            write_state(self.c, st)
            time.sleep(min(0.1 * (2 ** (restarts - 1)), 60.0))
            if (self.c.dir / "stop-requested").exists():
                break
        self._finish(st)

    def _should_restart(self, st: State, code: int, restarts: int) -> bool:
        pol = self.c.host_config.get("RestartPolicy") or {}
        name = pol.get("Name") or "no"
        if (self.c.dir / "stop-requested").exists() or self.c.host_config.get("AutoRemove"):
            return False
        if name in ("always", "unless-stopped"):
            return True
        if name == "on-failure":
            limit = int(pol.get("MaximumRetryCount") or 0)
            return code != 0 and (limit == 0 or restarts < limit)
        return False

    def _run_once(self, st: State, wait_client: bool = False) -> tuple[int, str | None]:
        """Create and start the container, pump its stdio until it exits; returns
        (exit code, None) or (code, error message) when it could not start.
        ``wait_client``: between create and start, wait for the first client's hello."""
        from shale.errors import ShaleError

        rt = self._runtime()
        with contextlib.suppress(Exception):
            rt.delete(self.c.id, force=True)
        failed: tuple[int, str] | None = None
        try:
            try:
                pid, fds = self._create(rt)
            finally:
                if wait_client:
                    self._wait_first_client(timeout=30.0)
            rt.start(self.c.id)
        except ShaleError as e:
            failed = e.exit_code, str(e)
        except Exception as e:  # a runtime bug still reaches the CLI as an error (125)
            with contextlib.suppress(Exception):
                rt.delete(self.c.id, force=True)
            failed = 125, f"{type(e).__name__}: {e}"
        if failed is not None:
            return failed
        st.Status, st.Running, st.Restarting, st.Pid = "running", True, False, pid
        st.ExitCode, st.Error = 0, ""
        st.StartedAt, st.FinishedAt = format_time(time.time()), "0001-01-01T00:00:00Z"
        write_state(self.c, st)
        self._status(b"S")
        for proxy in self.proxies:  # published ports are served while the container runs
            proxy.start()
        code = self._pump(pid, fds)
        for proxy in self.proxies:
            proxy.stop()
        st.Status, st.Running, st.Paused, st.Pid = "exited", False, False, 0
        st.ExitCode, st.FinishedAt = code, format_time(time.time())
        st.OOMKilled = self._oom_killed(rt)
        write_state(self.c, st)
        with contextlib.suppress(Exception):
            rt.delete(self.c.id, force=True)
        return code, None

    def _runtime(self) -> Any:
        if self._rt is None:
            from shale.runtime import get_runtime

            self._rt = get_runtime(self.runtime_name, self.root / "runtime")
        return self._rt

    def _oom_killed(self, rt: Any) -> bool:
        """The kernel's OOM-kill counter of the container's cgroup (read before the
        runtime's delete removes the cgroup)."""
        try:
            from shale.runtime.cgroups import oom_killed

            return bool(oom_killed(self.c.id))
        except Exception:
            return False

    def _create(self, rt: Any) -> tuple[int, dict[str, int]]:
        """Make the container's stdio and create it. Returns (pid, fds to pump)."""
        from shale.runtime import ConsoleSocket, ProcessIO

        if self.tty:
            import tempfile

            tmp = tempfile.mkdtemp(prefix="shale-console-")
            try:
                with ConsoleSocket(os.path.join(tmp, "c.sock")) as console:
                    pid = rt.create(self.c.id, self.c.bundle,
                                    ProcessIO(console_socket=console.path))
                    master = console.receive()
            finally:
                os.rmdir(tmp) if os.path.isdir(tmp) and not os.listdir(tmp) else None
            self.stdin_w = master
            if self.size:
                _resize(master, self.size)
            return pid, {"tty": master}
        stdin_r = os.open(os.devnull, os.O_RDONLY)
        if self.c.config.get("OpenStdin"):
            stdin_r, self.stdin_w = os.pipe()
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        try:
            pid = rt.create(self.c.id, self.c.bundle, ProcessIO(stdin=stdin_r, stdout=out_w,
                                                                stderr=err_w))
        finally:
            for fd in (stdin_r, out_w, err_w):
                os.close(fd)
        return pid, {"stdout": out_r, "stderr": err_r}

    # ---- the pump ------------------------------------------------------------------------
    def _pump(self, pid: int, fds: dict[str, int]) -> int:
        pidfd = os.pidfd_open(pid)
        self.sel.register(pidfd, self._selectors.EVENT_READ, ("exit", None))
        for name, fd in fds.items():
            os.set_blocking(fd, False)
            self.sel.register(fd, self._selectors.EVENT_READ, ("out", name))
        exited: int | None = None
        deadline = None
        while True:
            timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
            events = self.sel.select(timeout)
            if not events and deadline is not None:
                break
            for key, mask in events:
                kind, name = key.data
                if kind == "proxy":
                    name(mask)
                elif kind == "exit" and exited is None:
                    exited = _reap(pid)
                    self.sel.unregister(pidfd)
                    os.close(pidfd)
                    deadline = time.monotonic() + 0.5  # drain what the pipes still hold
                elif kind == "out":
                    if not self._read_output(key.fd, name):
                        self.sel.unregister(key.fd)
                        os.close(key.fd)
                        fds = {k: v for k, v in fds.items() if v != key.fd}
                elif kind == "listen":
                    self._accept()
                elif kind == "client":
                    self._client_input(key.fd)
            if exited is not None and not fds:
                break
        for fd in fds.values():
            with contextlib.suppress(Exception):
                self.sel.unregister(fd)
            os.close(fd)
        if self.stdin_w >= 0 and not self.tty:
            with contextlib.suppress(OSError):
                os.close(self.stdin_w)
        self.stdin_w = -1
        self.log.flush()
        return exited if exited is not None else 137

    def _read_output(self, fd: int, name: str) -> bool:
        try:
            data = os.read(fd, 65536)
        except BlockingIOError:
            return True
        except OSError:  # EIO: the pty's other side closed
            return False
        if not data:
            return False
        stream = "stderr" if name == "stderr" else "stdout"
        self.log.write(stream, data)
        kind = ap.STDERR if name == "stderr" else ap.STDOUT
        self._broadcast(ap.frame(kind, data))
        return True

    # ---- clients -------------------------------------------------------------------------
    def _listen(self) -> _socket.socket:
        path = self.c.attach_socket
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        s = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
        dfd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            s.bind(f"/proc/self/fd/{dfd}/{path.name}")
        finally:
            os.close(dfd)
        os.chmod(path, 0o600)
        s.listen(16)
        s.setblocking(False)
        self.sel.register(s.fileno(), self._selectors.EVENT_READ, ("listen", None))
        return s

    def _wait_first_client(self, timeout: float) -> None:
        end = time.monotonic() + timeout
        while not self.hello and time.monotonic() < end:
            for key, _ in self.sel.select(max(0.0, end - time.monotonic())):
                if key.data[0] == "listen":
                    self._accept()
                elif key.data[0] == "client":
                    self._client_input(key.fd)

    def _accept(self) -> None:
        with contextlib.suppress(BlockingIOError):
            # accept4(SOCK_CLOEXEC): the core of socket.accept (not in _socket's stubs)
            fd, _ = cast(Any, self.listener)._accept()
            conn = _socket.socket(fileno=fd)
            conn.setblocking(True)
            self.clients[conn.fileno()] = (conn, ap.FrameReader(), False)
            self.sel.register(conn.fileno(), self._selectors.EVENT_READ, ("client", None))

    def _drop(self, fd: int) -> None:
        conn, _, _ = self.clients.pop(fd)
        with contextlib.suppress(Exception):
            self.sel.unregister(fd)
        conn.close()

    def _client_input(self, fd: int) -> None:
        conn, reader, wants_stdin = self.clients[fd]
        try:
            data = conn.recv(65536)
        except OSError:
            data = b""
        if not data:
            self._drop(fd)
            return
        for kind, payload in reader.feed(data):
            if kind == ap.HELLO:
                hello = json.loads(payload)
                wants_stdin = bool(hello.get("stdin"))
                self.clients[fd] = (conn, reader, wants_stdin)
                self.hello = True
                if hello.get("size") and self.tty:
                    self._resize(" ".join(str(int(x)) for x in hello["size"]).encode())
            elif kind == ap.STDIN and wants_stdin and self.stdin_w >= 0:
                with contextlib.suppress(OSError):
                    os.write(self.stdin_w, payload)
            elif kind == ap.STDIN_EOF and wants_stdin and not self.tty and self.stdin_w >= 0:
                os.close(self.stdin_w)
                self.stdin_w = -1
            elif kind == ap.RESIZE and self.tty:
                self._resize(payload)
            elif kind == ap.SIGNAL:
                with contextlib.suppress(Exception):
                    self._runtime().kill(self.c.id, int(payload))

    def _resize(self, payload: bytes) -> None:
        if self.stdin_w >= 0:
            _resize(self.stdin_w, payload)
        else:
            self.size = payload  # applied when the pty arrives, before the start

    def _broadcast(self, data: bytes) -> None:
        for fd in list(self.clients):
            try:
                self.clients[fd][0].sendall(data)
            except OSError:
                self._drop(fd)

    # ---- the end -------------------------------------------------------------------------
    def _status(self, msg: bytes) -> None:
        if self.status_fd >= 0:
            with contextlib.suppress(OSError):
                os.write(self.status_fd, msg)
                os.close(self.status_fd)
            self.status_fd = -1

    def _fail(self, st: State, code: int, err: str) -> None:
        st.Status = "created" if st.StartedAt == "0001-01-01T00:00:00Z" else "exited"
        st.Running, st.ExitCode, st.Error, st.Pid = False, code, err, 0
        write_state(self.c, st)
        self._status(f"E{code} {err}".encode())
        self._broadcast(ap.frame(ap.EXIT, json.dumps({"ExitCode": code,
                                                      "Error": err}).encode()))
        self.exit_sent = True

    def _finish(self, st: State) -> None:
        for proxy in self.proxies:
            proxy.close()
        with contextlib.suppress(Exception):
            # docker releases a stopped container's address and ports at once
            from shale.network.endpoint import teardown

            teardown(self.c.dir)
        with contextlib.suppress(Exception):
            unmount_rootfs(self.c)
        write_state(self.c, st)
        with contextlib.suppress(FileNotFoundError):
            self.c.attach_socket.unlink()  # the clients connected keep their connections
        # Done with the container: let go of the lock *before* the exit reaches the clients,
        # so a `run --rm` (or `rm`, `start`) acting on that exit finds the container stopped
        # at once. Everything the lock guards (state, mounts, network, the socket path) is
        # final; what is left only concerns this process's own connections.
        os.close(self.lock)
        self.lock = -1
        if not self.exit_sent:
            self._broadcast(ap.frame(ap.EXIT, json.dumps({"ExitCode": st.ExitCode,
                                                          "Error": ""}).encode()))
        attached = bool(self.clients)
        for fd in list(self.clients):
            self._drop(fd)
        self._status(b"S")
        if self.c.host_config.get("AutoRemove") and not attached:
            # an attached CLI removes the container itself (as docker's CLI does); else a
            # fresh process does it: this forked monitor must not open the database
            _spawn_remove(self.root, self.c.id)


@contextlib.contextmanager
def _store_lock(root: Path) -> Iterator[None]:
    """``Engine.lock()`` (shared): no prune removes a layer while the rootfs is mounted."""
    import fcntl

    fd = os.open(root / "lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)
        yield
    finally:
        os.close(fd)


def _preload() -> None:
    """What ``prepare`` and the runtime will use, loaded before ``go`` (in parallel with the
    caller's work) rather than after it: ~10 ms of imports off `run`'s path."""
    import shale.bundle
    import shale.fsroot
    import shale.network.endpoint
    import shale.network.netns
    import shale.network.store
    import shale.runtime.builtin
    import shale.runtime.seccomp  # the built-in runtime reads its filter through it
    import shale.runtime.spec
    import shale.runtime.users
    import shale.volumes  # noqa: F401
    from shale import mount

    mount.libc()
    import selectors  # noqa: F401


def _spawn_remove(root: Path, cid: str) -> None:
    import subprocess

    subprocess.Popen([sys.executable, "-c", "import sys; from shale.cli import main; "
                      "sys.exit(main(sys.argv[1:]))", "--root", str(root), "rm", "-f", "-v",
                      cid], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                     stderr=subprocess.DEVNULL, start_new_session=True)


def _reap(pid: int) -> int:
    """Wait for the container's init; docker's exit code (128+N after signal N). Reap any
    other orphan the subreaper inherited too."""
    _, status = os.waitpid(pid, 0)
    with contextlib.suppress(ChildProcessError):
        while os.waitpid(-1, os.WNOHANG)[0] > 0:
            pass
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)
    return os.WEXITSTATUS(status)


def _resize(fd: int, payload: bytes) -> None:
    import fcntl
    import struct
    import termios

    try:
        rows, cols = (int(x) for x in payload.split())
        fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
    except (ValueError, OSError):
        pass


if __name__ == "__main__":  # pragma: no cover - debugging aid
    print("the monitor is started by shale run/start", file=sys.stderr)
