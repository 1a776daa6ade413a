"""The CLI's side of the per-container monitor (``shale.monitor``): fork it ahead of time
(``spawn``; `run`, `start` and `restart` do it first thing through ``spawn_early``/``take``),
hand it the container in two parts (``Pending.begin``/``finish``), wait until it has set the
container up (``Pending.prepared``) and read its status records (``read_status``). Kept apart
from the monitor's own code so the CLI never loads it: the forked child does, while the CLI
parses and creates.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from shale.containers import Container
    from shale.mount import Mount


# ---- spawning ----------------------------------------------------------------------------
class Pending:
    """A monitor forked ahead of time (``spawn``), as early as the caller can: while the
    caller makes the container record and its snapshots, it detaches and loads everything
    it will need (runtime, mounts, network, bundle code). ``go`` hands it the container
    and what only the database knew (network plan, rootfs mounts); it then sets the
    container up as ``start`` always has: lock, published ports, rootfs, network,
    ``config.json``. ``prepared`` waits for that and raises what stopped it; ``cancel`` (or
    the caller's death) sends it away before ``go`` without a trace."""

    def __init__(self, status_fd: int, go_fd: int, pid: int) -> None:
        self.status_fd, self.go_fd, self.pid = status_fd, go_fd, pid
        self.begun = False

    def begin(self, root: Path, c: Container, attached: bool, runtime: str,
              plan: dict[str, Any]) -> None:
        """First part of the job, as soon as the record exists: container ``c`` of data
        root ``root`` and its network ``plan``. The monitor takes the lock, binds the
        published ports and sets up the network while the caller makes the snapshots."""
        self._send({"root": str(root), "container": c.to_json(), "attached": attached,
                    "runtime": runtime, "plan": plan})
        self.begun = True

    def finish(self, c: Container, mounts: list[Mount]) -> None:
        """Second part: the record as it ended up (volumes), the rootfs mounts."""
        self._send({"container": c.to_json(),
                    "mounts": [[m.type, m.source, list(m.options)] for m in mounts]})
        self._close()

    def _send(self, part: dict[str, Any]) -> None:
        data = json.dumps(part).encode()
        data = len(data).to_bytes(4, "big") + data
        try:
            while data:
                data = data[os.write(self.go_fd, data):]
        except BrokenPipeError:  # it gave up (an error it reports) or died: ``prepared``
            pass

    def prepared(self) -> int:
        """Wait until the container is set up; the status fd (for ``read_status``)."""
        try:
            head = os.read(self.status_fd, 1)
            if head == b"P":
                return self.status_fd
            rest = b""
            while chunk := os.read(self.status_fd, 65536):
                rest += chunk
        except BaseException:
            self._close_status()
            raise
        self._close_status()
        if head != b"F":
            from shale.errors import ShaleError

            raise ShaleError("the container monitor died before starting the container")
        raise rebuild_failure(json.loads(rest))

    def cancel(self) -> None:
        """Send it away (before ``finish``; it undoes what it made) and wait until it is
        gone: its lock is free then."""
        self._close()
        if self.status_fd < 0:
            return
        try:
            while os.read(self.status_fd, 4096):  # EOF: it left
                pass
        finally:
            self._close_status()

    def _close_status(self) -> None:
        if self.status_fd >= 0:
            os.close(self.status_fd)
            self.status_fd = -1

    def _close(self) -> None:
        if self.go_fd >= 0:
            os.close(self.go_fd)
            self.go_fd = -1
            with contextlib.suppress(ChildProcessError):
                os.waitpid(self.pid, 0)  # the first child: gone once it forked the monitor


def spawn(freeze: bool = False) -> Pending:
    """Fork the monitor of a container to come (``Pending``); `run` does it first thing, so
    that it shares little with the CLI (what either writes after a fork is copied page by
    page). ``freeze``: keep what is alive now out of the garbage collector's walks from now
    on (``gc.freeze``), for a short-lived caller (the CLI). The status pipe carries ``P``
    once the container is set up (or ``F`` + the error, then closes), ``L`` once the
    attach socket listens (attached mode) and then ``S`` (started) or ``E<code> <message>``
    (failed), then closes. The monitor takes the container's monitor lock before it
    touches the rootfs and holds it for its whole life."""
    import gc

    rd, wr = os.pipe()
    go_rd, go_wr = os.pipe()
    if freeze:
        # a walk writes to every object it visits, and after a fork every page written is
        # a copy: ~3 ms of the CLI's time when `run` forks first thing
        gc.freeze()
    # The monitor never touches SQLite: it is told the record and keeps state in files.
    # (SQLite's locks are per process; a forked child must not use, or even close, the
    # parent's connections: it leaves through os._exit.)
    pid = os.fork()
    if pid == 0:  # first child: detach and fork the monitor, then leave
        try:
            os.close(rd)
            os.close(go_wr)
            os.setsid()
            if os.fork() == 0:
                from shale.monitor import monitor_main  # loaded here, beside the CLI

                monitor_main(wr, go_rd)
            os._exit(0)
        except BaseException:
            os._exit(1)
    os.close(wr)
    os.close(go_rd)
    return Pending(rd, go_wr, pid)


_early: Pending | None = None


def spawn_early() -> None:
    """``spawn`` now, for the next ``take``: the CLI's `main` does it as soon as it knows
    the verb starts a container (the smaller the CLI at that moment, the less a fork costs
    it)."""
    global _early
    if _early is None:
        _early = spawn(freeze=True)  # the CLI: its objects stay as they are until it exits


def take() -> Pending:
    """The monitor spawned early, or a new one."""
    global _early
    pending, _early = _early, None
    return pending if pending is not None else spawn()


def cancel_early() -> None:
    """An early monitor nobody took (the command failed, or had nothing to start)."""
    global _early
    pending, _early = _early, None
    if pending is not None:
        pending.cancel()


def encode_failure(e: BaseException) -> dict[str, Any]:
    """An error of the set-up, for ``rebuild_failure`` on the caller's side."""
    from shale.errors import ShaleError

    if isinstance(e, OSError) and e.errno is not None:
        return {"errno": e.errno, "strerror": e.strerror, "filename": e.filename}
    if isinstance(e, ShaleError):
        return {"type": type(e).__name__, "msg": e.message, "code": e.exit_code}
    return {"type": type(e).__name__, "msg": str(e), "other": True}


def rebuild_failure(err: dict[str, Any]) -> Exception:
    """The set-up's error as ``start`` raised it when it made the bundle itself."""
    from shale import errors

    if "errno" in err:
        args = [err["errno"], err["strerror"]] + ([err["filename"]] if err["filename"] else [])
        return OSError(*args)
    cls = getattr(errors, str(err.get("type")), None)
    if not err.get("other") and isinstance(cls, type) and issubclass(cls, errors.ShaleError):
        e = cls(str(err["msg"]))
        e.exit_code = int(err["code"])
        return e
    return errors.ShaleError(f"{err.get('type')}: {err.get('msg')}")


def read_status(fd: int) -> tuple[str, int, str]:
    """Read one status record: ("L"|"S"|"E"|"", code, message)."""
    head = os.read(fd, 1)
    if not head:
        return "", 125, "the container monitor died before starting the container"
    kind = head.decode()
    if kind != "E":
        return kind, 0, ""
    rest = b""
    while chunk := os.read(fd, 65536):
        rest += chunk
    code, _, msg = rest.decode(errors="replace").partition(" ")
    return "E", int(code or 125), msg
