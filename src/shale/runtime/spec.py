"""OCI ``config.json`` from run options, with docker's defaults (moby ``oci/defaults.go`` and
``daemon/oci_linux.go`` as of docker 20.10, the version measured on this host).

``build_spec(SpecOptions(...))`` returns the dict to write as ``bundle/config.json``. It is
host-aware on purpose, as dockerd's output is: ``--privileged`` and ``--cap-add ALL`` grant
the capabilities in *this host's* bounding set (docker fails outright where one is missing;
we warn instead), and ``--ulimit`` values are clamped to the current hard limits (without
CAP_SYS_RESOURCE a higher one fails the start). Both runtimes read the same dict.
"""

from __future__ import annotations

import resource
from typing import Any

from shale.errors import InvalidArgument
from shale.record import field, record

# capability names by number (linux/capability.h)
_CAP_TABLE = """
CHOWN DAC_OVERRIDE DAC_READ_SEARCH FOWNER FSETID KILL SETGID SETUID SETPCAP LINUX_IMMUTABLE
NET_BIND_SERVICE NET_BROADCAST NET_ADMIN NET_RAW IPC_LOCK IPC_OWNER SYS_MODULE SYS_RAWIO
SYS_CHROOT SYS_PTRACE SYS_PACCT SYS_ADMIN SYS_BOOT SYS_NICE SYS_RESOURCE SYS_TIME
SYS_TTY_CONFIG MKNOD LEASE AUDIT_WRITE AUDIT_CONTROL SETFCAP MAC_OVERRIDE MAC_ADMIN SYSLOG
WAKE_ALARM BLOCK_SUSPEND AUDIT_READ PERFMON BPF CHECKPOINT_RESTORE
"""
CAPABILITIES = tuple(_CAP_TABLE.split())
CAP_NUMBERS = {f"CAP_{name}": i for i, name in enumerate(CAPABILITIES)}

# docker's 14 (CapEff 00000000a80425fb), in the order docker lists them.
DEFAULT_CAPS = (
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD", "CAP_NET_RAW",
    "CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE",
)

MASKED_PATHS = (
    "/proc/asound", "/proc/acpi", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
    "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi", "/sys/firmware",
)
READONLY_PATHS = ("/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger")
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# deny all, then docker's/runc's allowed list (runc appends the same list itself).
DEFAULT_DEVICE_RULES: tuple[dict[str, Any], ...] = (
    {"allow": False, "access": "rwm"},
    {"allow": True, "type": "c", "access": "m"},
    {"allow": True, "type": "b", "access": "m"},
    *({"allow": True, "type": "c", "major": ma, "minor": mi, "access": "rwm"}
      for ma, mi in ((1, 3), (1, 5), (1, 7), (1, 8), (1, 9), (5, 0), (5, 1), (5, 2),
                     (136, None), (10, 200))),
)

RLIMITS = {
    "as": "RLIMIT_AS", "core": "RLIMIT_CORE", "cpu": "RLIMIT_CPU", "data": "RLIMIT_DATA",
    "fsize": "RLIMIT_FSIZE", "locks": "RLIMIT_LOCKS", "memlock": "RLIMIT_MEMLOCK",
    "msgqueue": "RLIMIT_MSGQUEUE", "nice": "RLIMIT_NICE", "nofile": "RLIMIT_NOFILE",
    "nproc": "RLIMIT_NPROC", "rss": "RLIMIT_RSS", "rtprio": "RLIMIT_RTPRIO",
    "rttime": "RLIMIT_RTTIME", "sigpending": "RLIMIT_SIGPENDING", "stack": "RLIMIT_STACK",
}


@record
class SpecOptions:
    """Everything ``build_spec`` needs; the engine fills it from image config + flags.
    ``env`` is the final list (see ``container_env``); ``mounts`` are extra OCI mounts
    (binds, tmpfs, volumes) as ``{"destination", "type", "source", "options"}`` dicts."""

    args: list[str]
    env: list[str] = field(default_factory=list)
    cwd: str = "/"
    uid: int = 0
    gid: int = 0
    additional_gids: list[int] = field(default_factory=list)
    hostname: str = ""
    tty: bool = False
    cap_add: list[str] = field(default_factory=list)
    cap_drop: list[str] = field(default_factory=list)
    privileged: bool = False
    readonly_rootfs: bool = False
    mounts: list[dict[str, Any]] = field(default_factory=list)
    no_new_privileges: bool = False
    ulimits: dict[str, tuple[int, int]] = field(default_factory=dict)  # name -> (soft, hard)
    network: str = "host"  # "host" | "none" (a new, empty namespace) | a namespace's path
    seccomp: bool = True
    cgroups_path: str = ""
    root_path: str = "rootfs"
    shm_size: int = 64 << 20
    masked_paths: list[str] | None = None  # None: docker's defaults
    readonly_paths: list[str] | None = None
    # limits, as docker's HostConfig holds them (0 / "": none)
    memory: int = 0  # bytes
    memory_swap: int = 0  # memory + swap, bytes; -1: unlimited swap
    nano_cpus: int = 0  # CPUs x 1e9
    cpu_shares: int = 0
    cpuset_cpus: str = ""
    pids_limit: int = 0  # <0: unlimited


def normalize_cap(name: str) -> str:
    up = name.strip().upper()
    if up == "ALL":
        return up
    full = up if up.startswith("CAP_") else f"CAP_{up}"
    if full not in CAP_NUMBERS:
        raise InvalidArgument(f"unknown capability: {name!r}")
    return full


def host_bounding_caps() -> list[str]:
    """Capability names in this process's bounding set (``--privileged`` grants these)."""
    with open("/proc/self/status") as f:
        line = next(x for x in f if x.startswith("CapBnd:"))
    mask = int(line.split()[1], 16)
    return [n for n, i in CAP_NUMBERS.items() if mask >> i & 1]


def resolve_caps(opts: SpecOptions, warnings: list[str]) -> list[str]:
    """docker's TweakCapabilities: ALL in cap_add starts from every cap, ALL in cap_drop
    from none; then drops, then adds. Caps the host cannot grant are left out with a warning."""
    adds = [normalize_cap(c) for c in opts.cap_add]
    drops = [normalize_cap(c) for c in opts.cap_drop]
    host = host_bounding_caps()
    base = list(CAP_NUMBERS) if opts.privileged or "ALL" in adds else list(DEFAULT_CAPS)
    caps = [] if "ALL" in drops and not opts.privileged else [
        c for c in base if opts.privileged or c not in drops]
    caps += [c for c in adds if c != "ALL" and c not in caps]
    missing = [c for c in caps if c not in host]
    if missing and (opts.privileged or "ALL" in adds or any(c in adds for c in missing)):
        warnings.append("capabilities not available on this host: " + ", ".join(missing))
    return [c for c in caps if c in host]


def _rlimits(ulimits: dict[str, tuple[int, int]], warnings: list[str]) -> list[dict[str, Any]]:
    out = []
    for name, (soft, hard) in sorted(ulimits.items()):
        if name not in RLIMITS:
            raise InvalidArgument(f"invalid ulimit type: {name}")
        kind = RLIMITS[name]
        _, host_hard = resource.getrlimit(getattr(resource, kind))
        if host_hard != resource.RLIM_INFINITY and hard > host_hard:
            warnings.append(f"ulimit {name} hard limit {hard} lowered to {host_hard}")
            hard, soft = host_hard, min(soft, host_hard)
        out.append({"type": kind, "soft": soft, "hard": hard})
    return out


def _default_mounts(opts: SpecOptions) -> list[dict[str, Any]]:
    ro_sys = [] if opts.privileged else ["ro"]
    return [
        {"destination": "/proc", "type": "proc", "source": "proc",
         "options": ["nosuid", "noexec", "nodev"]},
        {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
         "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
        {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
         "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]},
        {"destination": "/sys", "type": "sysfs", "source": "sysfs",
         "options": ["nosuid", "noexec", "nodev", *ro_sys]},
        {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
         "options": ["nosuid", "noexec", "nodev", "relatime", *ro_sys]},
        {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
         "options": ["nosuid", "noexec", "nodev"]},
        {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
         "options": ["nosuid", "noexec", "nodev", "mode=1777", f"size={opts.shm_size}"]},
    ]


def _mounts(opts: SpecOptions) -> list[dict[str, Any]]:
    """Defaults a user mount replaces (same destination) drop out; user mounts are sorted
    so a parent directory is mounted before what goes inside it (docker's sortMounts)."""
    user = sorted(opts.mounts, key=lambda m: len(m["destination"].rstrip("/").split("/")))
    taken = {m["destination"].rstrip("/") for m in user}
    mounts = [m for m in _default_mounts(opts) if m["destination"] not in taken]
    writable = ("/proc", "/dev", "/dev/pts", "/dev/shm", "/dev/mqueue")
    for m in mounts if opts.readonly_rootfs else []:
        if m["destination"] not in writable and "ro" not in m["options"]:
            m["options"].append("ro")
    return mounts + [dict(m, options=list(m.get("options") or [])) for m in user]


def _process(opts: SpecOptions, caps: list[str], warnings: list[str]) -> dict[str, Any]:
    process: dict[str, Any] = {
        "terminal": opts.tty,
        "user": {"uid": opts.uid, "gid": opts.gid},
        "args": list(opts.args),
        "env": list(opts.env),
        "cwd": opts.cwd or "/",
        # docker: a non-root user gets the bounding set only, so it holds no capability
        # unless a file capability or setuid binary gives one.
        "capabilities": ({"bounding": caps, "effective": caps, "permitted": caps}
                         if opts.uid == 0 else {"bounding": caps}),
        "noNewPrivileges": opts.no_new_privileges,
    }
    if opts.additional_gids:
        process["user"]["additionalGids"] = list(opts.additional_gids)
    if opts.ulimits:
        process["rlimits"] = _rlimits(opts.ulimits, warnings)
    return process


CFS_PERIOD = 100000  # us: docker's period for --cpus


def _resources(opts: SpecOptions) -> dict[str, Any]:
    """docker's ``linux.resources`` for the limits (moby ``getMemoryResources``,
    ``getCPUResources``, ``getPidsLimit``); only what is set appears."""
    out: dict[str, Any] = {}
    memory: dict[str, Any] = {}
    if opts.memory > 0:
        memory["limit"] = opts.memory
    if opts.memory_swap > 0:  # -1 (unlimited) is the cgroup's default: docker writes nothing
        memory["swap"] = opts.memory_swap
    if memory:
        out["memory"] = memory
    cpu: dict[str, Any] = {}
    if opts.cpu_shares:
        cpu["shares"] = opts.cpu_shares
    if opts.nano_cpus > 0:
        cpu["quota"] = opts.nano_cpus * CFS_PERIOD // 1_000_000_000
        cpu["period"] = CFS_PERIOD
    if opts.cpuset_cpus:
        cpu["cpus"] = opts.cpuset_cpus
    if cpu:
        out["cpu"] = cpu
    if opts.pids_limit:
        out["pids"] = {"limit": opts.pids_limit}
    return out


def build_spec(opts: SpecOptions, warnings: list[str] | None = None) -> dict[str, Any]:
    """The OCI runtime spec (1.0.2, what runc 1.1 reads) for ``opts``. Problems the
    container can run despite (capabilities or limits the host lacks) go to ``warnings``."""
    if not opts.args:
        raise InvalidArgument("no command specified")
    if opts.network not in ("host", "none") and not opts.network.startswith("/"):
        raise InvalidArgument(f"network {opts.network!r} is not supported (host, none, or "
                              "the path of a network namespace)")
    warns = warnings if warnings is not None else []
    caps = resolve_caps(opts, warns)
    namespaces = [{"type": t} for t in ("pid", "ipc", "uts", "mount")]
    if opts.network == "none":
        namespaces.append({"type": "network"})
    elif opts.network != "host":
        namespaces.append({"type": "network", "path": opts.network})
    linux: dict[str, Any] = {
        "namespaces": namespaces,
        "resources": {"devices": [{"allow": True, "access": "rwm"}] if opts.privileged
                      else [dict(r) for r in DEFAULT_DEVICE_RULES], **_resources(opts)},
        "maskedPaths": [] if opts.privileged else list(
            MASKED_PATHS if opts.masked_paths is None else opts.masked_paths),
        "readonlyPaths": [] if opts.privileged else list(
            READONLY_PATHS if opts.readonly_paths is None else opts.readonly_paths),
    }
    if opts.cgroups_path:
        linux["cgroupsPath"] = opts.cgroups_path
    if opts.seccomp and not opts.privileged:
        from shale.runtime.seccomp import default_profile

        linux["seccomp"] = default_profile(set(caps))
    spec: dict[str, Any] = {
        "ociVersion": "1.0.2-dev",
        "process": _process(opts, caps, warns),
        "root": {"path": opts.root_path, "readonly": opts.readonly_rootfs},
        "mounts": _mounts(opts),
        "linux": linux,
    }
    if opts.hostname:
        spec["hostname"] = opts.hostname
    return spec


def container_env(image_env: list[str], hostname: str, tty: bool = False,
                  extra: list[str] | None = None) -> list[str]:
    """docker's process env: PATH default, HOSTNAME, TERM=xterm with a tty, then the image's
    and the user's variables replacing same-named ones. HOME is added by the runtime from
    the container's passwd when absent (as runc does)."""
    env = [f"PATH={DEFAULT_PATH}", f"HOSTNAME={hostname}"] + (["TERM=xterm"] if tty else [])
    for item in [*image_env, *(extra or [])]:
        key = item.partition("=")[0]
        at = next((i for i, e in enumerate(env) if e.partition("=")[0] == key), None)
        if at is None:
            env.append(item)
        else:
            env[at] = item  # docker's ReplaceOrAppendEnvValues keeps the position
    return env
