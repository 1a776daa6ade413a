"""Container verbs: ps, logs, stop, kill, restart, wait, rm, rename, top, pause, unpause,
container prune/inspect, diff, commit, export, cp, volume."""

from __future__ import annotations

import argparse
import sys
import time
from typing import TYPE_CHECKING, Any

from shale.cli.flags import docker_bool
from shale.errors import InvalidArgument, ShaleError

if TYPE_CHECKING:
    from shale.containers import Container, ContainerStore, State
    from shale.engine import Engine


def register(sub: argparse._SubParsersAction[Any]) -> None:
    _add_ps(sub.add_parser("ps", help="list containers"))
    p = sub.add_parser("logs", help="fetch the logs of a container")
    p.add_argument("-f", "--follow", action="store_true")
    p.add_argument("-n", "--tail", default="all")
    p.add_argument("-t", "--timestamps", action="store_true")
    p.add_argument("--since", default=None)
    p.add_argument("--until", default=None)
    p.add_argument("container")
    p.set_defaults(handler=cmd_logs)
    for verb, fn in (("stop", cmd_stop), ("restart", cmd_restart)):
        p = sub.add_parser(verb, help=f"{verb} containers")
        p.add_argument("-t", "--time", type=int, default=None)
        p.add_argument("-s", "--signal", default=None)
        p.add_argument("containers", nargs="+", metavar="CONTAINER")
        p.set_defaults(handler=fn)
    p = sub.add_parser("kill", help="kill containers")
    p.add_argument("-s", "--signal", default="KILL")
    p.add_argument("containers", nargs="+", metavar="CONTAINER")
    p.set_defaults(handler=cmd_kill)
    p = sub.add_parser("wait", help="wait for containers to stop; print exit codes")
    p.add_argument("containers", nargs="+", metavar="CONTAINER")
    p.set_defaults(handler=cmd_wait)
    _add_rm(sub.add_parser("rm", help="remove containers"))
    p = sub.add_parser("rename", help="rename a container")
    p.add_argument("container")
    p.add_argument("new_name")
    p.set_defaults(handler=cmd_rename)
    p = sub.add_parser("top", help="running processes of a container")
    p.add_argument("container")
    p.add_argument("ps_args", nargs=argparse.REMAINDER)
    p.set_defaults(handler=cmd_top)
    for verb, fn in (("pause", cmd_pause), ("unpause", cmd_unpause)):
        p = sub.add_parser(verb, help=f"{verb} containers")
        p.add_argument("containers", nargs="+", metavar="CONTAINER")
        p.set_defaults(handler=fn)
    p = sub.add_parser("diff", help="changes in a container's filesystem")
    p.add_argument("container")
    p.set_defaults(handler=cmd_diff)
    p = sub.add_parser("commit", help="create an image from a container's changes")
    p.add_argument("-m", "--message", default="")
    p.add_argument("-a", "--author", default="")
    p.add_argument("-c", "--change", action="append", default=[])
    docker_bool(p, "-p", "--pause", default=True)
    p.add_argument("container")
    p.add_argument("repository", nargs="?", default=None)
    p.set_defaults(handler=cmd_commit)
    p = sub.add_parser("export", help="export a container's filesystem as a tar")
    p.add_argument("-o", "--output", default=None)
    p.add_argument("container")
    p.set_defaults(handler=cmd_export)
    p = sub.add_parser("cp", help="copy files between a container and the host")
    p.add_argument("-a", "--archive", action="store_true")
    p.add_argument("-L", "--follow-link", action="store_true")
    p.add_argument("src")
    p.add_argument("dst")
    p.set_defaults(handler=cmd_cp)
    _add_container_group(sub.add_parser("container", help="manage containers"))
    _add_volume_group(sub.add_parser("volume", help="manage volumes"))


def _add_ps(p: argparse.ArgumentParser) -> None:
    p.add_argument("-a", "--all", action="store_true")
    p.add_argument("-q", "--quiet", action="store_true")
    p.add_argument("-l", "--latest", action="store_true")
    p.add_argument("-n", "--last", type=int, default=-1)
    p.add_argument("--no-trunc", action="store_true")
    p.add_argument("-s", "--size", action="store_true")
    p.add_argument("-f", "--filter", action="append", default=[])
    p.add_argument("--format", default=None)
    p.set_defaults(handler=cmd_ps)


def _add_rm(p: argparse.ArgumentParser) -> None:
    p.add_argument("-f", "--force", action="store_true")
    p.add_argument("-v", "--volumes", action="store_true")
    p.add_argument("containers", nargs="+", metavar="CONTAINER")
    p.set_defaults(handler=cmd_rm)


def _add_container_group(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="container_verb", metavar="COMMAND")
    _add_ps(sub.add_parser("ls", aliases=["list"]))
    _add_rm(sub.add_parser("rm", aliases=["remove"]))
    q = sub.add_parser("prune")
    q.add_argument("-f", "--force", action="store_true")
    q.set_defaults(handler=cmd_container_prune)
    q = sub.add_parser("inspect")
    q.add_argument("-f", "--format", default=None)
    q.add_argument("names", nargs="+")
    q.set_defaults(handler=cmd_container_inspect)


def _add_volume_group(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="volume_verb", metavar="COMMAND")
    q = sub.add_parser("create")
    q.add_argument("-l", "--label", action="append", default=[])
    q.add_argument("-d", "--driver", default="local")
    q.add_argument("name", nargs="?", default=None)
    q.set_defaults(handler=cmd_volume_create)
    q = sub.add_parser("ls", aliases=["list"])
    q.add_argument("-q", "--quiet", action="store_true")
    q.add_argument("--format", default=None)
    q.set_defaults(handler=cmd_volume_ls)
    q = sub.add_parser("rm", aliases=["remove"])
    q.add_argument("-f", "--force", action="store_true")
    q.add_argument("names", nargs="+")
    q.set_defaults(handler=cmd_volume_rm)
    q = sub.add_parser("inspect")
    q.add_argument("-f", "--format", default=None)
    q.add_argument("names", nargs="+")
    q.set_defaults(handler=cmd_volume_inspect)
    q = sub.add_parser("prune")
    q.add_argument("-f", "--force", action="store_true")
    q.add_argument("-a", "--all", action="store_true")
    q.set_defaults(handler=cmd_volume_prune)


def _store(engine: Engine) -> ContainerStore:
    from shale.container_ops import cleanup_dead
    from shale.containers import ContainerStore

    cleanup_dead(engine)
    return ContainerStore(engine)


def _each(engine: Engine, names: list[str], fn: Any) -> int:
    store = _store(engine)
    code = 0
    for name in names:
        try:
            fn(store, store.get(name))
            print(name)
        except ShaleError as e:
            print(f"Error: {e}", file=sys.stderr)
            code = 1
    return code


# ---- ps ----------------------------------------------------------------------------------
def status_text(st: State, now: float) -> str:
    from shale.cli.table import human_duration
    from shale.oci import parse_time

    if st.Status == "running" or st.Status == "paused":
        up = f"Up {human_duration(now - parse_time(st.StartedAt))}"
        return up + (" (Paused)" if st.Paused else "")
    if st.Status == "restarting":
        ago = human_duration(now - parse_time(st.FinishedAt))
        return f"Restarting ({st.ExitCode}) {ago} ago"
    if st.Status == "exited":
        ago = human_duration(now - parse_time(st.FinishedAt))
        return f"Exited ({st.ExitCode}) {ago} ago"
    return st.Status.capitalize()


def _command(c: Container, trunc: bool) -> str:
    cmd = " ".join([c.record["Path"], *c.record["Args"]])
    if trunc and len(cmd) > 20:
        cmd = cmd[:19] + "…"
    return f'"{cmd}"'


def _ps_rows(engine: Engine, ns: argparse.Namespace) -> list[dict[str, Any]]:
    from shale.cli.table import human_duration_ago
    from shale.network.settings import ps_ports

    store = _store(engine)
    now = time.time()
    filters: dict[str, list[str]] = {}
    for f in ns.filter:
        k, sep, v = f.partition("=")
        if not sep or k not in ("status", "name", "ancestor", "label", "exited", "id"):
            raise InvalidArgument(f"invalid filter '{f}'")
        filters.setdefault(k, []).append(v)
    rows = []
    items = store.list()
    show_all = ns.all or ns.latest or ns.last >= 0 or bool(filters.get("status")) or \
        bool(filters.get("exited"))
    if ns.latest:
        items = items[:1]
    elif ns.last >= 0:
        items = items[:ns.last]
    for c in items:
        st = store.state(c)
        if not show_all and not st.Running:
            continue
        if not _ps_match(engine, c, st, filters):
            continue
        image = c.config.get("Image") or c.image
        rows.append({
            "ID": c.id if ns.no_trunc else c.short_id, "Image": image,
            "Command": _command(c, not ns.no_trunc),
            "CreatedAt": _go_time(c.created), "RunningFor": human_duration_ago(c.created,
                                                                                 now),
            "Status": status_text(st, now), "State": st.Status,
            "Ports": ps_ports(c, st.Running),
            "Names": c.name, "Labels": ",".join(f"{k}={v}" for k, v in
                                                (c.config.get("Labels") or {}).items()),
            "Mounts": ",".join(m.get("Name") or m.get("Source", "")
                               for m in c.record.get("Mounts", [])),
            "Networks": _network(c), "Size": "",
        })
    return rows


def _go_time(t: float) -> str:
    """docker ps's CreatedAt: Go's time.String() ("2024-01-02 03:04:05 +0000 UTC")."""
    return time.strftime("%Y-%m-%d %H:%M:%S %z %Z", time.localtime(t))


def _network(c: Container) -> str:
    from shale.network.settings import ps_networks

    return ps_networks(c)


def _ps_match(engine: Engine, c: Container, st: State, f: dict[str, list[str]]) -> bool:
    import re

    if "status" in f and st.Status not in f["status"]:
        return False
    if "name" in f and not any(re.search(p, c.name) for p in f["name"]):
        return False
    if "id" in f and not any(c.id.startswith(p) for p in f["id"]):
        return False
    if "exited" in f and (st.Status != "exited" or str(st.ExitCode) not in f["exited"]):
        return False
    labels = c.config.get("Labels") or {}
    for v in f.get("label", []):
        k, sep, val = v.partition("=")
        if k not in labels or (sep and labels[k] != val):
            return False
    if "ancestor" in f:
        ids = set()
        for a in f["ancestor"]:
            try:
                ids.add(engine.images.resolve(a).value)
            except ShaleError:
                pass
        if c.image not in ids:
            return False
    return True


def cmd_ps(engine: Engine, ns: argparse.Namespace) -> int:
    rows = _ps_rows(engine, ns)
    if ns.quiet:
        for r in rows:
            print(r["ID"])
        return 0
    if ns.format:
        from shale.cli.image_cmds import _print_format

        _print_format(ns.format, rows, {"ID": "CONTAINER ID", "RunningFor": "CREATED",
                                        "Names": "NAMES", "Image": "IMAGE"})
        return 0
    from shale.cli.table import render_table

    cols = ["CONTAINER ID", "IMAGE", "COMMAND", "CREATED", "STATUS", "PORTS", "NAMES"]
    sys.stdout.write(render_table(cols, [[r["ID"], r["Image"], r["Command"], r["RunningFor"],
                                          r["Status"], r["Ports"], r["Names"]] for r in rows]))
    return 0


# ---- logs --------------------------------------------------------------------------------
def cmd_logs(engine: Engine, ns: argparse.Namespace) -> int:
    from shale.logs import follow_logs

    c = _store(engine).get(ns.container)
    return follow_logs(c, follow=ns.follow, tail=ns.tail, timestamps=ns.timestamps,
                       since=ns.since, until=ns.until)


# ---- lifecycle ---------------------------------------------------------------------------
def cmd_stop(engine: Engine, ns: argparse.Namespace) -> int:
    from shale.container_ops import stop

    def fn(_s: ContainerStore, c: Container) -> None:
        if ns.signal:
            c.config["StopSignal"] = ns.signal
        stop(engine, c, ns.time)

    return _each(engine, ns.containers, fn)


def cmd_restart(engine: Engine, ns: argparse.Namespace) -> int:
    import os

    from shale.container_ops import start, stop
    from shale.monitor_spawn import read_status

    def fn(_s: ContainerStore, c: Container) -> None:
        stop(engine, c, ns.time)
        fd = start(engine, c, attached=False)
        kind, _code, msg = read_status(fd)
        os.close(fd)
        if kind == "E":
            raise ShaleError(msg)

    return _each(engine, ns.containers, fn)


def cmd_kill(engine: Engine, ns: argparse.Namespace) -> int:
    from shale.container_ops import kill, parse_signal

    sig = parse_signal(ns.signal)
    return _each(engine, ns.containers, lambda _s, c: kill(engine, c, sig))


def cmd_wait(engine: Engine, ns: argparse.Namespace) -> int:
    from shale.container_ops import wait_stopped

    store = _store(engine)
    code = 0
    for name in ns.containers:
        try:
            c = store.get(name)
            st = wait_stopped(engine, c)
            print(st.ExitCode)
        except ShaleError as e:
            print(f"Error: {e}", file=sys.stderr)
            code = 1
    return code


def cmd_rm(engine: Engine, ns: argparse.Namespace) -> int:
    from shale.container_ops import remove_container

    return _each(engine, ns.containers, lambda _s, c: remove_container(
        engine, c, force=ns.force, volumes=ns.volumes))


def cmd_rename(engine: Engine, ns: argparse.Namespace) -> int:
    store = _store(engine)
    store.rename(store.get(ns.container), ns.new_name)
    return 0


def cmd_top(engine: Engine, ns: argparse.Namespace) -> int:
    import subprocess

    from shale.runtime.cgroups import pids

    store = _store(engine)
    c = store.get(ns.container)
    if not store.state(c).Running:
        raise InvalidArgument(f"Container {c.id} is not running")
    plist = pids(c.id)
    args = ns.ps_args or ["-ef"]
    out = subprocess.run(["ps", *args], capture_output=True, text=True, check=False).stdout
    lines = out.splitlines()
    if not lines:
        return 0
    header = lines[0]
    cols = header.split()
    pid_col = cols.index("PID") if "PID" in cols else 1
    keep = [ln for ln in lines[1:] if len(ln.split()) > pid_col and
            ln.split()[pid_col].isdigit() and int(ln.split()[pid_col]) in plist]
    print(header)
    for ln in keep:
        print(ln)
    return 0


def cmd_pause(engine: Engine, ns: argparse.Namespace) -> int:
    from shale.container_ops import set_paused

    return _each(engine, ns.containers, lambda _s, c: set_paused(engine, c, True))


def cmd_unpause(engine: Engine, ns: argparse.Namespace) -> int:
    from shale.container_ops import set_paused

    return _each(engine, ns.containers, lambda _s, c: set_paused(engine, c, False))


def cmd_container_prune(engine: Engine, ns: argparse.Namespace) -> int:
    from shale.cli.table import human_size
    from shale.container_ops import remove_container

    store = _store(engine)
    removed = []
    for c in store.list():
        if not store.state(c).Running:
            remove_container(engine, c, force=False, volumes=False)
            removed.append(c.id)
    if removed:
        print("Deleted Containers:")
        print("\n".join(removed))
        print()
    print(f"Total reclaimed space: {human_size(0)}")
    return 0


def container_inspect(engine: Engine, c: Container) -> dict[str, Any]:
    from shale.cli.inspect_image import docker_config
    from shale.container_ops import state_json
    from shale.containers import read_state
    from shale.network.endpoint import etc_sources
    from shale.network.settings import network_settings

    st = read_state(c)
    r = c.record
    etc = etc_sources(c)
    out = {"Id": c.id, "Created": r["Created"], "Path": r["Path"], "Args": r["Args"],
           "State": state_json(st), "Image": c.image,
           "ResolvConfPath": etc["resolv.conf"],
           "HostnamePath": etc["hostname"], "HostsPath": etc["hosts"],
           "LogPath": str(c.log_path), "Name": "/" + c.name,
           "RestartCount": st.RestartCount, "Driver": r.get("Driver", engine.driver),
           "Platform": "linux", "MountLabel": "", "ProcessLabel": "", "AppArmorProfile": "",
           "ExecIDs": None, "HostConfig": c.host_config,
           "GraphDriver": {"Data": None, "Name": r.get("Driver", engine.driver)},
           "Mounts": [{k: v for k, v in m.items()} for m in r.get("Mounts", [])],
           "Config": docker_config(c.config),
           "NetworkSettings": network_settings(c, st.Running)}
    return out


def cmd_container_inspect(engine: Engine, ns: argparse.Namespace) -> int:
    store = _store(engine)
    out = []
    code = 0
    for n in ns.names:
        try:
            out.append(container_inspect(engine, store.get(n)))
        except ShaleError:
            print(f"Error: No such container: {n}", file=sys.stderr)
            code = 1
    _print_inspect(out, ns.format)
    return code


def _print_inspect(out: list[dict[str, Any]], fmt: str | None) -> None:
    from shale.cli.image_cmds import print_inspect

    print_inspect(out, fmt)


# ---- changes -----------------------------------------------------------------------------
def cmd_diff(engine: Engine, ns: argparse.Namespace) -> int:
    from shale.changes_ops import diff

    for ch in diff(engine, _store(engine).get(ns.container)):
        print(f"{ch.kind} {ch.path}")
    return 0


def cmd_commit(engine: Engine, ns: argparse.Namespace) -> int:
    from shale.changes_ops import commit

    c = _store(engine).get(ns.container)
    iid = commit(engine, c, ref=ns.repository, message=ns.message, author=ns.author,
                 changes=ns.change, pause=ns.pause)
    print(iid)
    return 0


def cmd_export(engine: Engine, ns: argparse.Namespace) -> int:
    from shale.changes_ops import export

    c = _store(engine).get(ns.container)
    if ns.output is None:
        if sys.stdout.isatty():
            raise InvalidArgument("cowardly refusing to save to a terminal. Use the -o flag "
                                  "or redirect")
        export(engine, c, sys.stdout.buffer)
        return 0
    from shale.fileutil import atomic_output

    with atomic_output(ns.output) as f:
        export(engine, c, f)
    return 0


def cmd_cp(engine: Engine, ns: argparse.Namespace) -> int:
    from shale.cp_ops import copy

    return copy(engine, _store(engine), ns.src, ns.dst, follow=ns.follow_link)


# ---- volumes -----------------------------------------------------------------------------
def _volumes(engine: Engine) -> Any:
    from shale.volumes import VolumeStore

    return VolumeStore(engine.meta, engine.root)


def cmd_volume_create(engine: Engine, ns: argparse.Namespace) -> int:
    labels = dict(x.partition("=")[::2] for x in ns.label)
    vol, _ = _volumes(engine).create(ns.name, labels)
    print(vol.name)
    return 0


def cmd_volume_ls(engine: Engine, ns: argparse.Namespace) -> int:
    vols = _volumes(engine).list()
    if ns.quiet:
        for v in vols:
            print(v.name)
        return 0
    from shale.cli.table import render_table

    sys.stdout.write(render_table(["DRIVER", "VOLUME NAME"], [["local", v.name]
                                                               for v in vols]))
    return 0


def cmd_volume_rm(engine: Engine, ns: argparse.Namespace) -> int:
    vs = _volumes(engine)
    code = 0
    for n in ns.names:
        try:
            vs.remove(n, force=ns.force)
            print(n)
        except ShaleError as e:
            print(f"Error: {e}", file=sys.stderr)
            code = 1
    return code


def cmd_volume_inspect(engine: Engine, ns: argparse.Namespace) -> int:
    vs = _volumes(engine)
    out = []
    code = 0
    for n in ns.names:
        try:
            out.append(vs.get(n).inspect())
        except ShaleError as e:
            print(f"Error: {e}", file=sys.stderr)
            code = 1
    _print_inspect(out, ns.format)
    return code


def cmd_volume_prune(engine: Engine, ns: argparse.Namespace) -> int:
    removed = _volumes(engine).prune(all=ns.all)
    if removed:
        print("Deleted Volumes:")
        print("\n".join(removed))
        print()
    print("Total reclaimed space: 0B")
    return 0
