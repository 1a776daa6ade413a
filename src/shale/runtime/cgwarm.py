"""Cheap cgroup moves: ``MoveWarmer`` keeps the kernel's cgroup move lock warm while a
container or an exec is set up (see the class), started by the CLI as soon as it knows its
verb (``warm_moves``) and stopped when the move is done (``stop_warming``)."""

from __future__ import annotations

import os
import time

from shale.runtime.cgroups import host_layout


class MoveWarmer:
    """Hides the wait of moving a process into a cgroup.

    Every write to a ``cgroup.procs`` takes the kernel's global ``cgroup_threadgroup_rwsem``
    for writing, whose ``rcu_sync`` waits one RCU grace period when no other move happened
    in the last grace period or so (10-25 ms on this host, paid by each container start and
    each exec). Moves that come while an earlier one is in that window pay nothing. So,
    while a container or an exec is being set up, a daemon thread writes the caller's own
    pid into the cgroup it is already in (a move that changes nothing) every few
    milliseconds, and the real move of the container's process, in whatever process makes
    it, finds the wait already done. ``stop`` ends it (a deadline does too); failures (no
    permission, no cgroup fs) just end the thread."""

    INTERVAL = 0.003

    def __init__(self, limit: float = 2.0) -> None:
        import threading

        self._done = threading.Event()
        self._limit = limit
        self._thread = threading.Thread(target=self._run, name="cgroup-warmer", daemon=True)

    def start(self) -> MoveWarmer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._done.set()

    def _run(self) -> None:
        path = _own_procs_file()
        if path is None:
            return
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
        except OSError:
            return
        end = time.monotonic() + self._limit
        try:
            while not self._done.is_set() and time.monotonic() < end:
                os.write(fd, b"0")  # ourselves, into the cgroup we are in
                self._done.wait(self.INTERVAL)
        except OSError:
            pass
        finally:
            os.close(fd)


_warmer: MoveWarmer | None = None


def warm_moves() -> None:
    """Start this process's ``MoveWarmer`` unless it runs already. As early as possible:
    its first write waits out the grace period holding the kernel's cgroup mutex, which
    stalls cgroup mkdirs and moves that come meanwhile (`run` and `exec` start it as soon
    as they know their verb)."""
    global _warmer
    if _warmer is None:
        _warmer = MoveWarmer().start()


def stop_warming() -> None:
    global _warmer
    if _warmer is not None:
        _warmer.stop()
        _warmer = None


def _own_procs_file() -> str | None:
    """``cgroup.procs`` of the cgroup the caller is in, on one hierarchy it can see (the v2
    one if mounted: the lock is shared by all)."""
    lay = host_layout()
    try:
        with open("/proc/self/cgroup") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    for line in sorted(lines, key=lambda x: not x.startswith("0::")):
        _, controllers, path = line.split(":", 2)
        if controllers == "" and lay.unified:
            base = lay.unified
        else:
            base = next((lay.v1[c] for c in controllers.split(",") if c in lay.v1), "")
        if base and os.path.isdir(base + path):
            return os.path.join(base + path, "cgroup.procs")
    return None
