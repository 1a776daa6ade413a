"""One cgroup per container, from its first instruction on.

``Cgroup("/shale/<cid>")`` names the same directory under every hierarchy, which is what
``linux.cgroupsPath`` means to runc (cgroupfs driver): a runc container and a built-in one
are paused, listed and checked for OOM by the same code.

Host layouts (read from /proc/self/mountinfo, never guessed from paths):

- ``v1``: one mount per controller set (``/sys/fs/cgroup/memory`` ...);
- ``hybrid`` (this host): v1 controllers plus a cgroup2 mount with no useful controllers
  (``/sys/fs/cgroup/unified``), which still gives ``cgroup.kill`` and ``cgroup.events``;
- ``v2``: one cgroup2 mount at ``/sys/fs/cgroup``; controllers must be enabled in every
  ancestor's ``cgroup.subtree_control`` first.

The built-in runtime creates freezer, pids, memory and devices (v1) and the v2 directory; runc
creates its own (all hierarchies) and removes them on ``delete``. Read ``oom_killed()``
*before* ``remove()``/``Runtime.delete``: the counter lives in the cgroup.
"""

from __future__ import annotations

import errno
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shale.errors import InvalidArgument, RuntimeFailure

V1_CONTROLLERS = ("freezer", "pids", "memory", "devices")
_V2_CONTROLLERS = ("pids", "memory")
_KNOWN_V1 = frozenset(("cpu", "cpuacct", "cpuset", "memory", "devices", "freezer", "net_cls",
                       "net_prio", "blkio", "perf_event", "hugetlb", "pids", "rdma", "misc"))


@dataclass(frozen=True)
class Layout:
    mode: str  # "v1" | "hybrid" | "v2"
    v1: dict[str, str] = field(default_factory=dict)  # controller -> mount point
    unified: str | None = None  # the cgroup2 mount point, if any


def parse_mountinfo(text: str) -> Layout:
    v1: dict[str, str] = {}
    unified = None
    for line in text.splitlines():
        pre, _, post = line.partition(" - ")
        fields, tail = pre.split(), post.split()
        if len(fields) < 5 or len(tail) < 3:
            continue
        mountpoint = fields[4].replace("\\040", " ")
        if tail[0] == "cgroup2":
            unified = unified if unified == "/sys/fs/cgroup" else mountpoint
        elif tail[0] == "cgroup":
            for opt in tail[2].split(","):
                if opt in _KNOWN_V1:
                    v1.setdefault(opt, mountpoint)
    if not v1:
        return Layout("v2" if unified else "none", {}, unified)
    return Layout("hybrid" if unified else "v1", v1, unified)


_layout_cache: Layout | None = None


def host_layout() -> Layout:
    global _layout_cache
    if _layout_cache is None:
        with open("/proc/self/mountinfo") as f:
            _layout_cache = parse_mountinfo(f.read())
    return _layout_cache


def _write(path: Path, value: str) -> None:
    with open(path, "w") as f:
        f.write(value)


def device_rule(rule: dict[str, Any]) -> str:
    """An OCI ``linux.resources.devices`` entry as a v1 ``devices.allow/deny`` line."""
    kind = rule.get("type", "a") or "a"
    major = "*" if rule.get("major") is None else str(rule["major"])
    minor = "*" if rule.get("minor") is None else str(rule["minor"])
    access = rule.get("access", "rwm") or "rwm"
    if kind == "a":
        return f"a *:* {access}"
    return f"{kind} {major}:{minor} {access}"


class Cgroup:
    """The container's cgroup ``path`` (absolute, e.g. ``/shale/<cid>``) in every hierarchy
    this runtime uses. Methods tolerate hierarchies where the directory does not exist."""

    def __init__(self, path: str, layout: Layout | None = None) -> None:
        rel = path.strip("/")
        if not rel or ".." in rel.split("/"):
            raise InvalidArgument(f"invalid cgroup path {path!r}")
        self.path = "/" + rel
        self.layout = layout or host_layout()
        self._rel = rel

    # -- locations ------------------------------------------------------------------------
    def v1_dir(self, controller: str) -> Path | None:
        mnt = self.layout.v1.get(controller)
        return Path(mnt, self._rel) if mnt else None

    def v2_dir(self) -> Path | None:
        return Path(self.layout.unified, self._rel) if self.layout.unified else None

    def dirs(self) -> list[Path]:
        found = [self.v1_dir(c) for c in V1_CONTROLLERS] + [self.v2_dir()]
        return [d for d in found if d is not None and d.is_dir()]

    def exists(self) -> bool:
        return bool(self.dirs())

    def mounts(self) -> list[tuple[str, Path]]:
        """(name under /sys/fs/cgroup, host dir) for each hierarchy the container has."""
        out: list[tuple[str, Path]] = []
        if self.layout.mode == "v2":
            d = self.v2_dir()
            return [("", d)] if d and d.is_dir() else []
        for c in V1_CONTROLLERS:
            d = self.v1_dir(c)
            if d is not None and d.is_dir():
                out.append((os.path.basename(self.layout.v1[c]), d))
        return out

    # -- lifecycle ------------------------------------------------------------------------
    def create(self) -> None:
        for c in V1_CONTROLLERS:
            d = self.v1_dir(c)
            if d is not None:
                d.mkdir(parents=True, exist_ok=True)
        d2 = self.v2_dir()
        if d2 is not None:
            if self.layout.mode == "v2":
                self._enable_v2_controllers()
            d2.mkdir(parents=True, exist_ok=True)

    def _enable_v2_controllers(self) -> None:
        assert self.layout.unified is not None
        parent = Path(self.layout.unified)
        for part in [*self._rel.split("/")[:-1], None]:
            available = (parent / "cgroup.controllers").read_text().split()
            wanted = " ".join(f"+{c}" for c in _V2_CONTROLLERS if c in available)
            if wanted:
                _write(parent / "cgroup.subtree_control", wanted)
            if part is None:
                break
            parent = parent / part
            parent.mkdir(exist_ok=True)

    def add(self, pid: int) -> None:
        """Move ``pid`` (0: the caller) into every hierarchy's directory."""
        for d in self.dirs():
            _write(d / "cgroup.procs", str(pid))

    def apply_devices(self, rules: list[dict[str, Any]]) -> None:
        """v1 device whitelist. On v2 this needs an eBPF program: not done (see caveats)."""
        d = self.v1_dir("devices")
        if d is None or not d.is_dir():
            return
        for rule in rules:
            target = "devices.allow" if rule.get("allow") else "devices.deny"
            _write(d / target, device_rule(rule))

    def remove(self, timeout: float = 2.0) -> None:
        """rmdir every directory; retries while exiting tasks still hold it (EBUSY)."""
        deadline = time.monotonic() + timeout
        for d in self.dirs():
            while True:
                try:
                    d.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError as e:
                    if e.errno != errno.EBUSY or time.monotonic() > deadline:
                        raise RuntimeFailure(f"cannot remove cgroup {d}: {e.strerror}") from e
                    time.sleep(0.01)

    # -- queries and control --------------------------------------------------------------
    def pids(self) -> list[int]:
        for d in (self.v1_dir("pids"), self.v1_dir("freezer"), self.v1_dir("memory"),
                  self.v2_dir()):
            if d is not None and (d / "cgroup.procs").exists():
                text = (d / "cgroup.procs").read_text()
                return sorted(int(p) for p in text.split())
        return []

    def oom_killed(self) -> bool:
        d = self.v1_dir("memory")
        if d is not None and (d / "memory.oom_control").exists():
            name = "memory.oom_control"
        else:
            d, name = self.v2_dir(), "memory.events"
            if d is None or not (d / name).exists():
                return False
        for line in (d / name).read_text().splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill":
                return int(value) > 0
        return False

    def frozen(self) -> bool:
        d = self.v1_dir("freezer")
        if d is not None and d.is_dir():
            return (d / "freezer.state").read_text().strip() != "THAWED"
        d2 = self.v2_dir()
        if d2 is not None and (d2 / "cgroup.freeze").exists():
            return (d2 / "cgroup.freeze").read_text().strip() == "1"
        return False

    def freeze(self, timeout: float = 5.0) -> None:
        self._set_frozen(True, timeout)

    def thaw(self, timeout: float = 5.0) -> None:
        self._set_frozen(False, timeout)

    def _set_frozen(self, on: bool, timeout: float) -> None:
        d = self.v1_dir("freezer")
        if d is not None and d.is_dir():
            (self._freeze_v1 if on else self._thaw_v1)(d, time.monotonic() + timeout)
            return
        d2 = self.v2_dir()
        if d2 is None or not (d2 / "cgroup.freeze").exists():
            raise RuntimeFailure(f"no freezer for cgroup {self.path}")
        _write(d2 / "cgroup.freeze", "1" if on else "0")
        deadline = time.monotonic() + timeout
        while f"frozen {int(on)}" not in (d2 / "cgroup.events").read_text():
            if time.monotonic() > deadline:
                if on:
                    _write(d2 / "cgroup.freeze", "0")
                raise RuntimeFailure(f"cgroup {self.path} did not {'freeze' if on else 'thaw'}")
            time.sleep(0.001)

    @staticmethod
    def _freeze_v1(d: Path, deadline: float) -> None:
        """A task in an unfreezable wait (a threaded process in the middle of execve waits
        for its other, already frozen threads) keeps v1 in FREEZING forever. So: try for a
        while, thaw to let it make progress, try again; never leave it FREEZING (runc's
        retry loop does the same)."""
        state = d / "freezer.state"
        while True:
            _write(state, "FROZEN")
            for _ in range(50):
                if state.read_text().strip() == "FROZEN":
                    return
                time.sleep(0.001)
            _write(state, "THAWED")
            if time.monotonic() > deadline:
                raise RuntimeFailure(f"cgroup {d} could not be frozen")
            time.sleep(0.005)

    @staticmethod
    def _thaw_v1(d: Path, deadline: float) -> None:
        state = d / "freezer.state"
        _write(state, "THAWED")
        while state.read_text().strip() != "THAWED":
            if time.monotonic() > deadline:
                raise RuntimeFailure(f"cgroup {d} could not be thawed")
            _write(state, "THAWED")
            time.sleep(0.001)

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Signal every process. SIGKILL uses ``cgroup.kill`` where the kernel has it (no
        race with forks); otherwise freeze, signal each pid, thaw."""
        d2 = self.v2_dir()
        if sig == signal.SIGKILL and d2 is not None and (d2 / "cgroup.kill").exists():
            _write(d2 / "cgroup.kill", "1")
            if self.frozen():  # a v1-frozen task does not die of SIGKILL until thawed
                self.thaw()
            return
        was_frozen = self.frozen()
        if not was_frozen:
            self.freeze()
        try:
            for pid in self.pids():
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
        finally:
            if not was_frozen or sig == signal.SIGKILL:
                self.thaw()


# -- by container id: the engine's containers live at /shale/<cid> -------------------------

PARENT = "shale"


def container_path(cid: str) -> str:
    """The ``linux.cgroupsPath`` the engine gives container ``cid``."""
    return f"/{PARENT}/{cid}"


def for_container(cid: str) -> Cgroup:
    return Cgroup(container_path(cid))


def freeze(cid: str) -> None:
    """``docker pause``."""
    for_container(cid).freeze()


def thaw(cid: str) -> None:
    """``docker unpause``."""
    for_container(cid).thaw()


def pids(cid: str) -> list[int]:
    """Host pids of every process in the container (``docker top``)."""
    return for_container(cid).pids()


def oom_killed(cid: str) -> bool:
    """Whether the kernel OOM-killed a process of the container; read before removal."""
    return for_container(cid).oom_killed()


def remove_cgroup(cid: str) -> None:
    """Remove the container's cgroup directories (a no-op where they are already gone)."""
    for_container(cid).remove()
