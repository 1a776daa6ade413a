"""``exec``: an extra process in a running container, started by the CLI itself.

The CLI becomes a child subreaper, asks the runtime to start the process in the container's
namespaces and cgroup, and waits for it: exec output is not logged (as docker), so no
monitor is involved. With ``-t`` the pty comes from the container's own devpts.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import struct
import sys
import tempfile
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from shale.containers import ContainerStore
from shale.errors import Conflict
from shale.record import field, record

if TYPE_CHECKING:
    from shale.engine import Engine


@record
class ExecOptions:
    cmd: list[str]
    env: list[str] = field(default_factory=list)
    workdir: str = ""
    user: str = ""
    tty: bool = False
    interactive: bool = False
    detach: bool = False
    privileged: bool = False


def _process(c_spec: dict[str, Any], rootfs: str, opts: ExecOptions) -> dict[str, Any]:
    from pathlib import Path

    proc: dict[str, Any] = json.loads(json.dumps(c_spec["process"]))
    proc["args"] = opts.cmd
    proc["terminal"] = opts.tty
    if opts.tty:
        from shale.attach import terminal_size

        size = terminal_size()
        if size:  # the pty has the terminal's size before the command runs
            proc["consoleSize"] = {"height": size[0], "width": size[1]}
        else:
            proc.pop("consoleSize", None)
    env = list(proc.get("env") or [])
    if opts.tty and not any(e.startswith("TERM=") for e in env):
        env.append("TERM=xterm")
    for item in opts.env:
        if "=" not in item:
            if item not in os.environ:
                continue
            item = f"{item}={os.environ[item]}"
        key = item.partition("=")[0]
        env = [e for e in env if e.partition("=")[0] != key] + [item]
    if opts.user:
        from shale.runtime.users import resolve_user

        u = resolve_user(Path(rootfs), opts.user)
        proc["user"] = {"uid": u.uid, "gid": u.gid, "additionalGids": list(u.additional_gids)}
        env = [e for e in env if not e.startswith("HOME=")] + [f"HOME={u.home or '/'}"]
    proc["env"] = env
    if opts.workdir:
        proc["cwd"] = opts.workdir
    if opts.privileged:
        from shale.runtime.spec import host_bounding_caps

        caps = host_bounding_caps()
        proc["capabilities"] = {k: caps for k in ("bounding", "effective", "permitted")}
    return proc


def run_exec(engine: Engine, name: str, opts: ExecOptions) -> int:
    from shale.runtime.cgwarm import stop_warming, warm_moves

    # the exec'd process is moved into the container's cgroup: let that wait overlap with
    # the work before it (see cgwarm.MoveWarmer; `main` started it already)
    warm_moves()
    try:
        return _run_exec(engine, name, opts, stop_warming)
    finally:
        stop_warming()


def _run_exec(engine: Engine, name: str, opts: ExecOptions,
              stop_warming: Callable[[], None]) -> int:
    from shale.runtime import ConsoleSocket, ProcessIO, become_subreaper, exit_code, get_runtime

    store = ContainerStore(engine)
    c = store.get(name)
    st = store.state(c)
    if not st.Running:
        raise Conflict(f"Container {c.id} is not running")
    if st.Paused:
        raise Conflict(f"Container {c.id} is paused, unpause the container before exec")
    spec = json.loads((c.bundle / "config.json").read_text())
    proc = _process(spec, str(c.rootfs), opts)
    rt = get_runtime(c.host_config.get("Runtime") or "builtin", engine.root / "runtime")
    become_subreaper()
    if opts.tty:
        tmp = tempfile.mkdtemp(prefix="shale-exec-")
        try:
            with ConsoleSocket(os.path.join(tmp, "c.sock")) as console:
                pid = rt.exec(c.id, proc, ProcessIO(console_socket=console.path))
                stop_warming()
                master = console.receive()
        finally:
            with contextlib.suppress(OSError):
                os.rmdir(tmp)
        if opts.detach:
            os.close(master)
            return 0
        _pump_pty(master, pid, stdin=opts.interactive)
    else:
        devnull = os.open(os.devnull, os.O_RDONLY)
        try:
            io = ProcessIO(stdin=0 if opts.interactive else devnull,
                           stdout=devnull if opts.detach else 1,
                           stderr=devnull if opts.detach else 2)
            pid = rt.exec(c.id, proc, io)
        finally:
            os.close(devnull)
            stop_warming()
        if opts.detach:
            return 0
    return exit_code(_wait(pid))


def _wait(pid: int) -> int:
    """Wait for the exec'd process, forwarding SIGINT/SIGTERM to it (as docker's CLI does
    when attached without a tty)."""
    def forward(signum: int, _f: Any) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum)

    old = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        while True:
            try:
                _, status = os.waitpid(pid, 0)
                return status
            except InterruptedError:
                continue
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def _pump_pty(master: int, pid: int, stdin: bool) -> None:
    import fcntl
    import termios
    import tty

    in_fd = sys.stdin.fileno()
    old = None
    if stdin and os.isatty(in_fd):
        old = termios.tcgetattr(in_fd)
        tty.setraw(in_fd, termios.TCSANOW)  # keep what was typed ahead
    if os.isatty(1):
        with contextlib.suppress(OSError):
            ws = fcntl.ioctl(1, termios.TIOCGWINSZ, b"\0" * 8)
            fcntl.ioctl(master, termios.TIOCSWINSZ, ws)
    watch = [master] + ([in_fd] if stdin else [])
    try:
        while True:
            ready, _, _ = select.select(watch, [], [])
            if master in ready:
                try:
                    data = os.read(master, 65536)
                except OSError:
                    data = b""
                if not data:
                    break
                os.write(1, data)
            if in_fd in ready:
                data = os.read(in_fd, 65536)
                if not data:
                    watch.remove(in_fd)
                else:
                    os.write(master, data)
    finally:
        if old is not None:
            termios.tcsetattr(in_fd, termios.TCSADRAIN, old)
        os.close(master)
    _ = struct
