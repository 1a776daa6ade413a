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

The built-in runtime creates freezer, pids, memory, devices, cpu, cpuacct, cpuset and blkio
(v1) and the v2 directory; runc creates its own (all hierarchies) and removes them on
``delete``. Read ``oom_killed()`` *before* ``remove()``/``Runtime.delete``: the counter
lives in the cgroup.

Limits: ``apply_resources`` writes an OCI ``linux.resources`` (memory, cpu, pids) the way
runc does, to v1 files (``memory.limit_in_bytes``, ``memory.memsw.limit_in_bytes``,
``cpu.cfs_quota_us``/``cpu.cfs_period_us``, ``cpu.shares``, ``cpuset.cpus``, ``pids.max``)
or v2 ones (``memory.max``, ``memory.swap.max``, ``cpu.max``, ``cpu.weight``,
``cpuset.cpus``, ``pids.max``). ``host_support`` is docker's sysinfo: which limits this
host can apply. ``Cgroup.usage`` reads what ``shale stats`` shows.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import time
from pathlib import Path
from typing import Any

from shale.errors import InvalidArgument, RuntimeFailure
from shale.record import field, record

V1_CONTROLLERS = ("freezer", "pids", "memory", "devices", "cpu", "cpuacct", "cpuset", "blkio")
_V2_CONTROLLERS = ("pids", "memory")  # enabled or the create fails
_V2_OPTIONAL = ("cpu", "cpuset", "io")  # enabled where the host lets us
_KNOWN_V1 = frozenset(("cpu", "cpuacct", "cpuset", "memory", "devices", "freezer", "net_cls",
                       "net_prio", "blkio", "perf_event", "hugetlb", "pids", "rdma", "misc"))


@record(frozen=True)
class Layout:
    mode: str  # "v1" | "hybrid" | "v2"
    v1: dict[str, str] = field(default_factory=dict)  # controller -> mount point
    unified: str | None = None  # the cgroup2 mount point, if any
    # every v1 mount point, named hierarchies (name=systemd) too: runc makes its directory
    # in each, and removing a container removes them all
    v1_mounts: tuple[str, ...] = ()


def parse_mountinfo(text: str) -> Layout:
    v1: dict[str, str] = {}
    mounts: list[str] = []
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
            mounts.append(mountpoint)
            for opt in tail[2].split(","):
                if opt in _KNOWN_V1:
                    v1.setdefault(opt, mountpoint)
    if not v1:
        return Layout("v2" if unified else "none", {}, unified)
    return Layout("hybrid" if unified else "v1", v1, unified, tuple(dict.fromkeys(mounts)))


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


def shares_to_weight(shares: int) -> int:
    """v1 ``cpu.shares`` (2..262144) as v2 ``cpu.weight`` (1..10000), runc's conversion."""
    if shares <= 0:
        return 0
    return min(10000, max(1, 1 + ((shares - 2) * 9999) // 262142))


@record
class Usage:
    """One reading of a container's cgroup (bytes, nanoseconds, counts)."""

    cpu_ns: int = 0
    memory: int = 0
    memory_limit: int = 0  # 0: no limit file (a huge value: unlimited)
    inactive_file: int = 0
    pids: int = 0
    blk_read: int = 0
    blk_write: int = 0


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def _int(path: Path) -> int:
    text = _read(path).strip()
    return int(text) if text.lstrip("-").isdigit() else 0  # "max" and missing: 0


def _kv(path: Path) -> dict[str, int]:
    out = {}
    for line in _read(path).splitlines():
        key, _, value = line.partition(" ")
        if value.strip().lstrip("-").isdigit():
            out[key] = int(value)
    return out


@record(frozen=True)
class Support:
    """docker's ``sysinfo``: which limits this host's cgroups can apply."""

    memory: bool = False
    swap: bool = False
    cpu_cfs: bool = False
    cpu_shares: bool = False
    cpuset: bool = False
    pids: bool = False
    cpus: str = ""  # the CPUs a cpuset may name, e.g. "0-3"
    mems: str = ""


def _online(name: str) -> str:
    return _read(Path("/sys/devices/system/node" if name == "mems" else
                      "/sys/devices/system/cpu", "online")).strip()


def host_support(layout: Layout | None = None) -> Support:
    lay = layout or host_layout()
    if lay.mode == "v2":
        assert lay.unified is not None
        root = Path(lay.unified)
        ctl = set(_read(root / "cgroup.controllers").split())
        return Support(memory="memory" in ctl, swap="memory" in ctl, cpu_cfs="cpu" in ctl,
                       cpu_shares="cpu" in ctl, cpuset="cpuset" in ctl, pids="pids" in ctl,
                       cpus=_read(root / "cpuset.cpus.effective").strip() or _online("cpus"),
                       mems=_read(root / "cpuset.mems.effective").strip() or _online("mems"))

    def has(ctl: str, name: str) -> bool:
        return ctl in lay.v1 and Path(lay.v1[ctl], name).exists()

    cpuset = Path(lay.v1.get("cpuset", "/nonexistent"))
    return Support(memory=has("memory", "memory.limit_in_bytes"),
                   swap=has("memory", "memory.memsw.limit_in_bytes"),
                   cpu_cfs=has("cpu", "cpu.cfs_quota_us"), cpu_shares=has("cpu", "cpu.shares"),
                   cpuset=has("cpuset", "cpuset.cpus"), pids="pids" in lay.v1,
                   cpus=_read(cpuset / "cpuset.effective_cpus").strip() or _online("cpus"),
                   mems=_read(cpuset / "cpuset.effective_mems").strip() or _online("mems"))


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
        # co-mounted controllers (cpu,cpuacct) share one directory: list it once
        return list(dict.fromkeys(d for d in found if d is not None and d.is_dir()))

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
            if d is not None and d.is_dir() and all(d != seen for _, seen in out):
                out.append((os.path.basename(self.layout.v1[c]), d))
        return out

    # -- lifecycle ------------------------------------------------------------------------
    def create(self) -> None:
        for c in V1_CONTROLLERS:
            d = self.v1_dir(c)
            if d is not None:
                d.mkdir(parents=True, exist_ok=True)
        self._init_cpuset()
        d2 = self.v2_dir()
        if d2 is not None:
            if self.layout.mode == "v2":
                self._enable_v2_controllers()
            d2.mkdir(parents=True, exist_ok=True)

    def _init_cpuset(self) -> None:
        """A new v1 cpuset starts with empty ``cpuset.cpus``/``cpuset.mems``, and a task
        cannot join it until they are set: copy them down from the parent, level by level
        (runc does the same)."""
        mnt = self.layout.v1.get("cpuset")
        if mnt is None:
            return
        parent = Path(mnt)
        for part in self._rel.split("/"):
            d = parent / part
            for name in ("cpuset.cpus", "cpuset.mems"):
                f = d / name
                if f.exists() and not f.read_text().strip():
                    _write(f, (parent / name).read_text().strip())
            parent = d

    def _enable_v2_controllers(self) -> None:
        assert self.layout.unified is not None
        parent = Path(self.layout.unified)
        for part in [*self._rel.split("/")[:-1], None]:
            available = (parent / "cgroup.controllers").read_text().split()
            wanted = " ".join(f"+{c}" for c in _V2_CONTROLLERS if c in available)
            if wanted:
                _write(parent / "cgroup.subtree_control", wanted)
            enabled = (parent / "cgroup.subtree_control").read_text().split()
            for c in _V2_OPTIONAL:
                if c in available and c not in enabled:
                    with contextlib.suppress(OSError):  # e.g. cpu with realtime tasks
                        _write(parent / "cgroup.subtree_control", f"+{c}")
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

    def apply_resources(self, resources: dict[str, Any]) -> None:
        """Write the OCI ``linux.resources`` limits (memory, cpu, pids) into this cgroup,
        as runc does; devices go through ``apply_devices``. A limit whose controller is
        missing here is skipped (the engine warned about it when the container was made)."""
        try:
            if self.layout.mode == "v2":
                self._apply_v2(resources)
            else:
                self._apply_v1(resources)
        except OSError as e:
            raise RuntimeFailure(f"cannot apply resource limits to cgroup {self.path}: "
                                 f"{e.filename}: {e.strerror}") from e

    def _set(self, controller: str | None, name: str, value: Any) -> None:
        d = self.v2_dir() if controller is None else self.v1_dir(controller)
        if d is not None and (d / name).exists():
            _write(d / name, str(value))

    def _apply_v1(self, r: dict[str, Any]) -> None:
        mem, cpu, pids = r.get("memory") or {}, r.get("cpu") or {}, r.get("pids") or {}
        limit, swap = mem.get("limit"), mem.get("swap")
        # memsw >= memory always: from the unlimited start, memory first, then memsw
        if limit:
            self._set("memory", "memory.limit_in_bytes", limit)
        if swap:
            self._set("memory", "memory.memsw.limit_in_bytes", swap)
        if mem.get("reservation"):
            self._set("memory", "memory.soft_limit_in_bytes", mem["reservation"])
        if cpu.get("shares"):
            self._set("cpu", "cpu.shares", cpu["shares"])
        if cpu.get("period"):
            self._set("cpu", "cpu.cfs_period_us", cpu["period"])
        if cpu.get("quota"):
            self._set("cpu", "cpu.cfs_quota_us", cpu["quota"])
        if cpu.get("cpus"):
            self._set("cpuset", "cpuset.cpus", cpu["cpus"])
        if cpu.get("mems"):
            self._set("cpuset", "cpuset.mems", cpu["mems"])
        if pids.get("limit"):
            self._set("pids", "pids.max", "max" if pids["limit"] < 0 else pids["limit"])

    def _apply_v2(self, r: dict[str, Any]) -> None:
        mem, cpu, pids = r.get("memory") or {}, r.get("cpu") or {}, r.get("pids") or {}
        limit, swap = mem.get("limit"), mem.get("swap")
        if limit:
            self._set(None, "memory.max", "max" if limit < 0 else limit)
        if swap:
            # v1's memory+swap total is v2's swap alone (runc's ConvertMemorySwapToCgroupV2Value)
            self._set(None, "memory.swap.max",
                      "max" if swap < 0 or not limit or limit < 0 else max(swap - limit, 0))
        if mem.get("reservation"):
            self._set(None, "memory.low", mem["reservation"])
        if cpu.get("shares"):
            self._set(None, "cpu.weight", shares_to_weight(int(cpu["shares"])))
        if cpu.get("quota") or cpu.get("period"):
            quota = cpu.get("quota") or -1
            self._set(None, "cpu.max",
                      f"{'max' if quota < 0 else quota} {cpu.get('period') or 100000}")
        if cpu.get("cpus"):
            self._set(None, "cpuset.cpus", cpu["cpus"])
        if cpu.get("mems"):
            self._set(None, "cpuset.mems", cpu["mems"])
        if pids.get("limit"):
            self._set(None, "pids.max", "max" if pids["limit"] < 0 else pids["limit"])

    def remove(self, timeout: float = 2.0) -> None:
        """rmdir every directory (in every v1 hierarchy, where runc made one); retries
        while exiting tasks still hold it (EBUSY)."""
        deadline = time.monotonic() + timeout
        extra = [Path(m, self._rel) for m in self.layout.v1_mounts]
        for d in dict.fromkeys([*self.dirs(), *(x for x in extra if x.is_dir())]):
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

    def usage(self) -> Usage:
        """What ``shale stats`` shows, read from the controllers' files (zeros where a
        controller or file is missing)."""
        u = Usage()
        if self.layout.mode == "v2":
            d = self.v2_dir()
            if d is None or not d.is_dir():
                return u
            u.cpu_ns = _kv(d / "cpu.stat").get("usage_usec", 0) * 1000
            u.memory = _int(d / "memory.current")
            u.memory_limit = _int(d / "memory.max")
            u.inactive_file = _kv(d / "memory.stat").get("inactive_file", 0)
            u.pids = _int(d / "pids.current")
            for line in _read(d / "io.stat").splitlines():
                fields = dict(f.split("=", 1) for f in line.split()[1:] if "=" in f)
                u.blk_read += int(fields.get("rbytes", 0))
                u.blk_write += int(fields.get("wbytes", 0))
            return u
        for ctl, attr, name in (("cpuacct", "cpu_ns", "cpuacct.usage"),
                                ("memory", "memory", "memory.usage_in_bytes"),
                                ("memory", "memory_limit", "memory.limit_in_bytes"),
                                ("pids", "pids", "pids.current")):
            d = self.v1_dir(ctl)
            if d is not None:
                setattr(u, attr, _int(d / name))
        d = self.v1_dir("memory")
        if d is not None:
            u.inactive_file = _kv(d / "memory.stat").get("total_inactive_file", 0)
        d = self.v1_dir("blkio")
        if d is not None:
            text = ""
            for name in ("io_service_bytes_recursive", "bfq.io_service_bytes_recursive",
                         "throttle.io_service_bytes_recursive"):  # runc's order
                text = _read(d / f"blkio.{name}")
                if any(len(x.split()) == 3 for x in text.splitlines()):
                    break
            for line in text.splitlines():
                parts = line.split()
                if len(parts) == 3 and parts[1] == "Read":
                    u.blk_read += int(parts[2])
                elif len(parts) == 3 and parts[1] == "Write":
                    u.blk_write += int(parts[2])
        return u

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
