"""Container operations at engine level: create, start, stop, kill, remove, wait.

``create`` turns run options and the image config into a docker-shaped record and the
snapshot chain; ``start`` hands the container, its network plan and rootfs mounts (what
needs the database) to its monitor, which prepares the bundle (rootfs mount, volumes,
config.json, the /etc/hosts|hostname|resolv.conf files) and starts it. The runtime is
reached only through the monitor, or through ``runtime`` verbs for kill/exec.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shale.containers import Container, ContainerStore, State, monitor_alive
from shale.errors import Conflict, InvalidArgument, NotFound, ShaleError
from shale.oci import format_time
from shale.record import field, record

if TYPE_CHECKING:
    from shale.engine import Engine
    from shale.monitor_spawn import Pending

DEFAULT_STOP_TIMEOUT = 10


@record
class RunOptions:
    image: str
    cmd: list[str] | None = None
    entrypoint: str | None = None          # None: the image's; "": reset
    env: list[str] = field(default_factory=list)
    workdir: str = ""
    user: str = ""
    hostname: str = ""
    tty: bool = False
    interactive: bool = False
    name: str | None = None
    auto_remove: bool = False
    volumes: list[str] = field(default_factory=list)
    tmpfs: list[str] = field(default_factory=list)
    read_only: bool = False
    init: bool = False
    stop_signal: str = ""
    stop_timeout: int | None = None
    restart: str = "no"
    ulimits: list[str] = field(default_factory=list)
    privileged: bool = False
    cap_add: list[str] = field(default_factory=list)
    cap_drop: list[str] = field(default_factory=list)
    security_opt: list[str] = field(default_factory=list)
    network: str = "default"  # docker's: the default bridge
    publish: list[str] = field(default_factory=list)      # -p specs, docker's syntax
    publish_all: bool = False                             # -P
    expose: list[str] = field(default_factory=list)
    network_aliases: list[str] = field(default_factory=list)
    extra_hosts: list[str] = field(default_factory=list)   # --add-host HOST:IP
    labels: dict[str, str] = field(default_factory=dict)
    runtime: str = "builtin"
    attach_stdio: bool = True
    # resource limits, parsed (docker's client does the parsing): 0 / "" = none
    memory: int = 0          # bytes
    memory_swap: int = 0     # memory + swap, bytes; -1 = unlimited swap
    nano_cpus: int = 0       # --cpus x 1e9
    cpu_shares: int = 0
    cpuset_cpus: str = ""
    pids_limit: int = 0      # <= 0: unlimited


def parse_extra_host(text: str) -> str:
    """``--add-host HOST:IP`` (or ``HOST=IP``; IP may be ``host-gateway``), as docker checks
    it; kept as ``HOST:IP``."""
    import ipaddress

    host, _, ip = text.partition("=" if "=" in text else ":")
    ip = ip.strip("[]")
    if not host or not ip:
        raise InvalidArgument(f'invalid argument "{text}" for "--add-host" flag: bad format '
                              f'for add-host: "{text}"')
    if ip != "host-gateway":
        try:
            ipaddress.ip_address(ip)
        except ValueError:
            raise InvalidArgument(f'invalid argument "{text}" for "--add-host" flag: invalid '
                                  f'IP address in add-host: "{ip}"') from None
    return f"{host}:{ip}"


def _restart_policy(text: str) -> dict[str, Any]:
    name, _, count = text.partition(":")
    if name not in ("no", "always", "on-failure", "unless-stopped"):
        raise InvalidArgument(f"invalid restart policy '{text}'")
    if count and name != "on-failure":
        raise InvalidArgument(f"invalid restart policy '{text}': maximum retry count can only "
                              "be used with 'on-failure'")
    try:
        n = int(count) if count else 0
    except ValueError:
        raise InvalidArgument(f"invalid restart policy '{text}'") from None
    return {"Name": name, "MaximumRetryCount": n}


def _mounts_from_flags(engine: Engine, opts: RunOptions, image_volumes: dict[str, Any]
                       ) -> list[dict[str, Any]]:
    """docker's Mounts list: binds, named volumes, the image's VOLUMEs as anonymous ones."""
    mounts: list[dict[str, Any]] = []
    for spec in opts.volumes:
        parts = spec.split(":")
        if len(parts) == 1:
            src, dst, mode = "", parts[0], ""
        elif len(parts) == 2:
            src, dst, mode = parts[0], parts[1], ""
        elif len(parts) == 3:
            src, dst, mode = parts
        else:
            raise InvalidArgument(f"invalid volume specification: '{spec}'")
        if not dst.startswith("/"):
            raise InvalidArgument(f"invalid volume specification: '{spec}': invalid mount "
                                  "config for type \"volume\": invalid mount path: "
                                  f"'{dst}' mount path must be absolute")
        rw = "ro" not in mode.split(",")
        if src.startswith("/"):
            mounts.append({"Type": "bind", "Source": os.path.normpath(src),
                           "Destination": dst, "Mode": mode, "RW": rw,
                           "Propagation": "rprivate"})
        else:
            mounts.append({"Type": "volume", "Name": src, "Source": "", "Destination": dst,
                           "Driver": "local", "Mode": mode or "z", "RW": rw,
                           "Propagation": ""})
    taken = {m["Destination"].rstrip("/") or "/" for m in mounts}
    for dst in sorted(image_volumes or {}):
        if (dst.rstrip("/") or "/") not in taken:
            mounts.append({"Type": "volume", "Name": "", "Source": "", "Destination": dst,
                           "Driver": "local", "Mode": "", "RW": True, "Propagation": ""})
    return mounts


def create(engine: Engine, opts: RunOptions, warnings: list[str] | None = None,
           pending: Pending | None = None) -> Container:
    """``warnings`` receives what docker's create returns as warnings (limits this host
    cannot apply, which are then left out). ``pending``: the monitor of a `run`, handed
    the container as soon as its record exists (``monitor_spawn.Pending.begin``: it sets up
    the network while the snapshots are made here); cancelled if the create fails."""
    from shale.containers import ContainerStore

    img = engine.image(opts.image)
    icfg = img.config.config
    if opts.workdir and not opts.workdir.startswith("/"):
        raise InvalidArgument(f"the working directory '{opts.workdir}' is invalid, it needs "
                              "to be an absolute path")
    from shale.limits import resource_config
    from shale.network.config import NetworkRequest, container_network

    warns = warnings if warnings is not None else []
    net = container_network(engine, NetworkRequest(
        opts.network, opts.publish, opts.publish_all, opts.expose, opts.network_aliases,
        opts.hostname), icfg.get("ExposedPorts") or {}, warns)
    entry: list[str] | None = icfg.get("Entrypoint")
    cmd: list[str] | None = icfg.get("Cmd")
    if opts.entrypoint is not None:
        entry = [opts.entrypoint] if opts.entrypoint else None
        if opts.cmd is None:
            cmd = None  # docker: --entrypoint resets the image's Cmd
    if opts.cmd:
        cmd = opts.cmd
    args = (entry or []) + (cmd or [])
    if not args:
        raise InvalidArgument("No command specified")
    store = ContainerStore(engine)
    config = {
        "Hostname": opts.hostname or net.hostname, "Domainname": "",
        "User": opts.user or icfg.get("User", ""),
        "AttachStdin": opts.interactive and opts.attach_stdio,
        "AttachStdout": opts.attach_stdio, "AttachStderr": opts.attach_stdio,
        "ExposedPorts": net.exposed or None,
        "Tty": opts.tty, "OpenStdin": opts.interactive, "StdinOnce": opts.interactive,
        "Env": _merge_env(icfg.get("Env") or [], opts.env), "Cmd": cmd,
        "Image": opts.image, "Volumes": icfg.get("Volumes"),
        "WorkingDir": opts.workdir or icfg.get("WorkingDir", ""),
        "Entrypoint": entry, "OnBuild": None,
        "Labels": {**(icfg.get("Labels") or {}), **opts.labels},
    }
    stop_signal = opts.stop_signal or icfg.get("StopSignal") or ""
    if stop_signal:
        config["StopSignal"] = stop_signal
    if opts.stop_timeout is not None:
        config["StopTimeout"] = opts.stop_timeout
    host_config: dict[str, Any] = {
        "Binds": [v for v in opts.volumes if ":" in v] or None,
        "NetworkMode": net.mode, "PortBindings": net.port_bindings,
        "PublishAllPorts": net.publish_all, "RestartPolicy": _restart_policy(opts.restart),
        "AutoRemove": opts.auto_remove, "VolumeDriver": "", "CapAdd": opts.cap_add or None,
        "CapDrop": opts.cap_drop or None, "Privileged": opts.privileged,
        "ReadonlyRootfs": opts.read_only, "SecurityOpt": opts.security_opt or None,
        "Tmpfs": _tmpfs_map(opts.tmpfs) or None, "Ulimits": _ulimits(opts.ulimits) or None,
        "Init": opts.init or None, "Runtime": opts.runtime,
        "ExtraHosts": [parse_extra_host(h) for h in opts.extra_hosts] or None,
        **resource_config(opts, warns),
    }
    if opts.auto_remove and host_config["RestartPolicy"]["Name"] != "no":
        raise InvalidArgument("Conflicting options: --restart and --rm")
    mounts = _mounts_from_flags(engine, opts, icfg.get("Volumes") or {})
    record = {"Created": format_time(time.time()), "Path": args[0], "Args": args[1:],
              "Image": img.id.value, "Driver": engine.driver, "Platform": "linux",
              "Config": config, "HostConfig": host_config, "Mounts": mounts,
              "NetworkingConfig": {"EndpointsConfig": net.endpoints}}
    chain = engine.unpack(img)
    cid = os.urandom(32).hex()
    if not config["Hostname"]:  # docker's default: the short ID (the host's name for host)
        config["Hostname"] = cid[:12] if opts.network != "host" else os.uname().nodename
    c = store.create(record, opts.name, cid)
    try:
        if pending is not None:
            from shale.network import endpoint

            pending.begin(engine.root, c, opts.attach_stdio, opts.runtime,
                          endpoint.plan(engine, c).to_json())
        # a bind of a host file gets a file stub (a directory would refuse the mount)
        stubs = [(m["Destination"], not (m["Type"] == "bind" and os.path.exists(m["Source"])
                                         and not os.path.isdir(m["Source"])))
                 for m in mounts] + [(d, True) for d in _tmpfs_map(opts.tmpfs)]
        with engine.lock():
            store.prepare_snapshots(c, chain, stubs)
        _create_volumes(engine, c)
    except BaseException:
        if pending is not None:
            pending.cancel()  # it undoes what it made and lets go of the lock first
        with contextlib.suppress(Exception):
            remove_container(engine, c, force=True, volumes=True)
        raise
    return c


def _merge_env(image_env: list[str], extra: list[str]) -> list[str]:
    env = list(image_env)
    for item in extra:
        if "=" not in item:
            if item in os.environ:
                item = f"{item}={os.environ[item]}"
            else:
                continue  # docker drops -e NAME when NAME is unset here
        key = item.partition("=")[0]
        env = [e for e in env if e.partition("=")[0] != key] + [item]
    return env


def _tmpfs_map(items: list[str]) -> dict[str, str]:
    out = {}
    for t in items:
        dst, _, opts = t.partition(":")
        if not dst.startswith("/"):
            raise InvalidArgument(f"invalid tmpfs mount path: '{dst}'")
        out[dst] = opts
    return out


def _ulimits(items: list[str]) -> list[dict[str, Any]]:
    out = []
    for u in items:
        name, _, vals = u.partition("=")
        soft, _, hard = vals.partition(":")
        try:
            s = int(soft)
            h = int(hard) if hard else s
        except ValueError:
            raise InvalidArgument(f"invalid ulimit argument: {u}") from None
        out.append({"Name": name, "Soft": s, "Hard": h})
    return out


def _create_volumes(engine: Engine, c: Container) -> None:
    from shale.volumes import VolumeStore

    vs = VolumeStore(engine.meta, engine.root)
    changed = False
    for m in c.record["Mounts"]:
        if m["Type"] != "volume":
            continue
        vol, _ = vs.create(m["Name"] or None, anonymous=not m["Name"])
        if not m["Name"]:
            m["Name"] = vol.name
        m["Source"] = str(vol.mountpoint)
        vs.attach(vol.name, c.id)
        changed = True
    if changed:
        ContainerStore(engine).update_record(c)


# ---- start -----------------------------------------------------------------------------
def start(engine: Engine, c: Container, attached: bool, pending: Pending | None = None
          ) -> int:
    """Start ``c``: its monitor (``pending``: one forked earlier by the caller, see
    ``monitor_spawn.Pending``) takes the container's lock, binds the published ports, mounts the
    rootfs, sets up the network and writes the bundle, then creates and starts it. Returns
    the status pipe fd once that set-up is done; raises what stopped it."""
    from shale import monitor_spawn

    store = ContainerStore(engine)
    if pending is None:
        pending = monitor_spawn.take()
    try:
        if not pending.begun:  # (`run` began it in ``create``)
            st = store.state(c)
            if st.Running or st.Restarting:
                raise Conflict(f"container {c.id[:12]} is already running")
            from shale.network import endpoint as net

            pending.begin(engine.root, c, attached, c.host_config.get("Runtime") or "builtin",
                          net.plan(engine, c).to_json())
        with engine.lock():
            mounts = store.rootfs_mounts(c)
    except BaseException:
        pending.cancel()
        raise
    # the monitor lock is held from before the network and the mount on (by the
    # monitor): a concurrent start, or another command's crash cleanup, never touches them
    pending.finish(c, mounts)
    return pending.prepared()


def wait_stopped(engine: Engine, c: Container, timeout: float | None = None) -> State:
    store = ContainerStore(engine)
    end = None if timeout is None else time.monotonic() + timeout
    delay = 0.005
    while True:
        st = store.state(c)
        if not st.Running and not st.Restarting and not monitor_alive(c.lock_path):
            return st
        if end is not None and time.monotonic() >= end:
            return st
        time.sleep(delay)
        delay = min(delay * 2, 0.1)


def kill(engine: Engine, c: Container, sig: int) -> None:
    store = ContainerStore(engine)
    st = store.state(c)
    if not st.Running and not st.Restarting:
        raise Conflict(f"Cannot kill container: {c.id[:12]}: Container {c.id} is not running")
    stop_sig = c.config.get("StopSignal")
    exit_on_next = sig == 9 or not stop_sig or parse_signal(stop_sig) == sig
    if exit_on_next:
        # docker's ExitOnNext: a container killed (or sent its stop signal) is not
        # restarted by its restart policy
        (c.dir / "stop-requested").touch()
    if not st.Running:
        return  # restarting: between two runs there is nothing to signal
    from shale.runtime import get_runtime

    rt = get_runtime(c.host_config.get("Runtime") or "builtin", engine.root / "runtime")
    try:
        rt.kill(c.id, sig, all=sig == 9)
    except OSError:
        # the container exited meanwhile and its monitor removed the cgroup under us
        if store.state(c).Running:
            raise
        raise Conflict(f"Cannot kill container: {c.id[:12]}: Container {c.id} is not "
                       "running") from None
    if exit_on_next and st.Paused:
        # as docker: a paused container sent its stop signal is thawed so it can act on it
        with contextlib.suppress(ShaleError, OSError):
            set_paused(engine, c, False)


def stop(engine: Engine, c: Container, timeout: int | None = None) -> None:
    import signal as sigmod

    store = ContainerStore(engine)
    st = store.state(c)
    (c.dir / "stop-requested").touch()
    if not st.Running and not st.Restarting:
        return
    if timeout is None:
        timeout = c.config.get("StopTimeout", DEFAULT_STOP_TIMEOUT)
    sig = parse_signal(c.config.get("StopSignal") or "SIGTERM")
    with contextlib.suppress(ShaleError):
        kill(engine, c, sig)
    st = wait_stopped(engine, c, timeout)
    if st.Running:
        with contextlib.suppress(ShaleError):
            kill(engine, c, sigmod.SIGKILL)
        wait_stopped(engine, c, 30)


def parse_signal(text: str) -> int:
    import signal as sigmod

    t = text.upper()
    if t.isdigit():
        return int(t)
    if not t.startswith("SIG"):
        t = "SIG" + t
    try:
        return int(getattr(sigmod, t))
    except AttributeError:
        raise InvalidArgument(f"Invalid signal: {text}") from None


# ---- remove ----------------------------------------------------------------------------
def remove_container(engine: Engine, c: Container, *, force: bool, volumes: bool,
                     locked: bool = False) -> None:
    store = ContainerStore(engine)
    st = store.state(c)
    if (st.Running or st.Restarting) and not locked:
        if not force:
            raise Conflict(f"You cannot remove a running container {c.id}. Stop the container "
                           "before attempting removal or force remove")
        (c.dir / "stop-requested").touch()
        import signal as sigmod

        with contextlib.suppress(ShaleError):
            kill(engine, c, sigmod.SIGKILL)
        wait_stopped(engine, c, 30)
    elif not locked and monitor_alive(c.lock_path):
        wait_stopped(engine, c, 10)  # it recorded the exit and is unmounting: let it finish
    from shale.network.endpoint import teardown

    teardown(c.dir)  # the monitor did it, unless it died
    store.unmount_rootfs(c)
    with engine.lock():
        store.remove_snapshots(c)
    store.delete_record(c)
    if volumes:
        _remove_anonymous_volumes(engine, c)
    with contextlib.suppress(Exception):
        from shale.runtime.cgroups import remove_cgroup

        remove_cgroup(c.id)
    shutil.rmtree(c.dir, ignore_errors=True)


def _remove_anonymous_volumes(engine: Engine, c: Container) -> None:
    from shale.volumes import VolumeStore

    vs = VolumeStore(engine.meta, engine.root)
    for m in c.record.get("Mounts", []):
        if m.get("Type") == "volume" and m.get("Name"):
            with contextlib.suppress(NotFound, ShaleError):
                vol = vs.get(m["Name"])
                if vol.anonymous and not vs.users(vol.name):
                    vs.remove(vol.name)


def cleanup_dead(engine: Engine) -> None:
    """Clean what crashed monitors left (DESIGN.md: the next command cleans what a crash
    left): a container whose monitor died while it ran has its processes killed, its
    rootfs unmounted and its state finalized (exited, 137); a stopped container's rootfs
    left mounted is unmounted."""
    import fcntl

    from shale.mount import mountinfo

    store = ContainerStore(engine)
    base = engine.root / "containers"
    prefix = str(base) + "/"
    mounted = {m.mount_point for m in mountinfo() if m.mount_point.startswith(prefix)}
    for c in store.list():
        orphaned = _raw_status(c) in ("running", "paused", "restarting")
        if not orphaned and str(c.rootfs) not in mounted:
            continue
        try:
            lock = os.open(c.lock_path, os.O_RDWR)
        except FileNotFoundError:
            continue
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)  # no monitor: we may write
        except BlockingIOError:
            os.close(lock)
            continue
        try:
            if _raw_status(c) in ("running", "paused", "restarting"):
                _finalize_orphan(engine, c)
            store.unmount_rootfs(c)
        finally:
            os.close(lock)
        if orphaned and c.host_config.get("AutoRemove"):
            with contextlib.suppress(ShaleError):
                remove_container(engine, c, force=True, volumes=True)
    from shale.network.reconcile import sweep

    with contextlib.suppress(Exception):  # never fail the command that happened to run it
        sweep()  # what dead containers of any data root left on the host's network


def _raw_status(c: Container) -> str:
    try:
        return str(json.loads(c.state_path.read_text()).get("Status", ""))
    except (OSError, ValueError):
        return ""


def _finalize_orphan(engine: Engine, c: Container) -> None:
    """The monitor of ``c`` died (kill -9, OOM killer): kill what it left running and record
    the end. The caller holds the monitor lock, so no monitor writes the state meanwhile."""
    from shale.containers import write_state
    from shale.runtime import get_runtime

    with contextlib.suppress(Exception):
        from shale.runtime.cgroups import thaw

        thaw(c.id)
    with contextlib.suppress(Exception):
        rt = get_runtime(c.host_config.get("Runtime") or "builtin", engine.root / "runtime")
        rt.delete(c.id, force=True)
    from shale.network.endpoint import teardown

    teardown(c.dir)
    try:
        st = State.from_json(json.loads(c.state_path.read_text()))
    except (OSError, ValueError):
        st = State()
    if st.Status != "restarting":  # a restarting container had already recorded its end
        st.ExitCode = st.ExitCode or 137
        st.FinishedAt = format_time(time.time())
        st.Error = st.Error or "the container's monitor died"
    st.Status, st.Running, st.Paused, st.Restarting, st.Pid = "exited", False, False, \
        False, 0
    st.MonitorPid = 0
    write_state(c, st)


def state_json(st: State) -> dict[str, Any]:
    d = st.to_json()
    d.pop("MonitorPid", None)
    return {"Status": d["Status"], "Running": d["Running"], "Paused": d["Paused"],
            "Restarting": d["Restarting"], "OOMKilled": d["OOMKilled"], "Dead": d["Dead"],
            "Pid": d["Pid"], "ExitCode": d["ExitCode"], "Error": d["Error"],
            "StartedAt": d["StartedAt"], "FinishedAt": d["FinishedAt"]}


def _unused(*_: Any) -> None:
    _ = (json, Path)


def set_paused(engine: Engine, c: Container, paused: bool) -> None:
    from shale.runtime.cgroups import freeze, thaw

    store = ContainerStore(engine)
    st = store.state(c)
    if not st.Running:
        raise Conflict(f"Container {c.id} is not running")
    if paused == st.Paused:
        raise Conflict(f"Container {c.id} is {'already' if paused else 'not'} paused")
    (freeze if paused else thaw)(c.id)
    st.Paused = paused
    st.Status = "paused" if paused else "running"
    store.write_state(c, st)
