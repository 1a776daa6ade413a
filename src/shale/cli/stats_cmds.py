"""stats: docker's resource table (CPU %, memory, network, block I/O, pids) from each
container's cgroup (``runtime.cgroups.Cgroup.usage``) and /proc.

Numbers are docker's: CPU % is the container's CPU time over the host's (``/proc/stat``)
between two readings, times the number of CPUs; memory usage leaves out inactive page cache
(``total_inactive_file`` on v1, ``inactive_file`` on v2) and the limit is the host's memory
when there is none; NET I/O counts the container's own network namespace (none of its own:
``0B / 0B``, as docker's host network); a container that is not running shows zeros.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from shale.containers import Container
    from shale.engine import Engine

INTERVAL = 1.0  # seconds between the two readings of a CPU %, and between redraws
DEFAULT_FORMAT = ("table {{.ID}}\t{{.Name}}\t{{.CPUPerc}}\t{{.MemUsage}}\t{{.MemPerc}}\t"
                  "{{.NetIO}}\t{{.BlockIO}}\t{{.PIDs}}")
HEADERS = {"Container": "CONTAINER", "ID": "CONTAINER ID", "Name": "NAME", "CPUPerc": "CPU %",
           "MemUsage": "MEM USAGE / LIMIT", "MemPerc": "MEM %", "NetIO": "NET I/O",
           "BlockIO": "BLOCK I/O", "PIDs": "PIDS"}
_BINARY = ("B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB", "ZiB", "YiB")


def register(sub: argparse._SubParsersAction[Any]) -> None:
    p = sub.add_parser("stats", help="display a live stream of container resource usage")
    p.add_argument("-a", "--all", action="store_true")
    p.add_argument("--no-stream", action="store_true")
    p.add_argument("--no-trunc", action="store_true")
    p.add_argument("--format", default="")
    p.add_argument("containers", nargs="*", metavar="CONTAINER")
    p.set_defaults(handler=cmd_stats)


def bytes_size(size: float) -> str:
    """go-units ``BytesSize``: binary units, 4 significant digits (``1.5MiB``)."""
    value, unit = float(size), 0
    while value >= 1024.0 and unit < len(_BINARY) - 1:
        value /= 1024.0
        unit += 1
    return f"{value:.4g}{_BINARY[unit]}"


@dataclass
class Reading:
    running: bool = False
    cpu_ns: int = 0
    system_ns: int = 0
    memory: float = 0.0
    limit: float = 0.0
    net_rx: int = 0
    net_tx: int = 0
    blk_read: int = 0
    blk_write: int = 0
    pids: int = 0


def system_cpu_ns() -> int:
    """The host's CPU time (docker's ``getSystemCPUUsage``: the first seven fields of
    /proc/stat's ``cpu`` line) in nanoseconds."""
    with open("/proc/stat") as f:
        fields = f.readline().split()[1:8]
    return sum(int(x) for x in fields) * 1_000_000_000 // os.sysconf("SC_CLK_TCK")


def _mem_total() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    return 0


def _net(pid: int) -> tuple[int, int]:
    """Bytes received and sent on the interfaces of ``pid``'s network namespace, loopback
    left out; (0, 0) when it is the host's (docker shows nothing for ``--network host``)."""
    try:
        if os.stat(f"/proc/{pid}/ns/net").st_ino == os.stat("/proc/self/ns/net").st_ino:
            return 0, 0
        with open(f"/proc/{pid}/net/dev") as f:
            lines = f.read().splitlines()[2:]
    except OSError:
        return 0, 0
    rx = tx = 0
    for line in lines:
        name, _, data = line.partition(":")
        fields = data.split()
        if name.strip() != "lo" and len(fields) >= 9:
            rx, tx = rx + int(fields[0]), tx + int(fields[8])
    return rx, tx


def read(c: Container, running: bool, pid: int, mem_total: int) -> Reading:
    if not running:
        return Reading(system_ns=system_cpu_ns())
    from shale.runtime.cgroups import for_container

    u = for_container(c.id).usage()
    rx, tx = _net(pid) if pid else (0, 0)
    memory = u.memory - u.inactive_file if u.inactive_file < u.memory else u.memory
    limit = u.memory_limit if 0 < u.memory_limit <= mem_total or not mem_total else mem_total
    return Reading(True, u.cpu_ns, system_cpu_ns(), float(memory), float(limit), rx, tx,
                   u.blk_read, u.blk_write, u.pids)


def row(name: str, c: Container, before: Reading, now: Reading, trunc: bool) -> dict[str, Any]:
    """One line of the table, as docker's ``statsContext`` prints it."""
    from shale.cli.table import human_size

    cpu = 0.0
    cpu_delta, sys_delta = now.cpu_ns - before.cpu_ns, now.system_ns - before.system_ns
    if now.running and before.running and cpu_delta > 0 and sys_delta > 0:
        cpu = cpu_delta / sys_delta * len(os.sched_getaffinity(0)) * 100.0
    mem_pct = now.memory / now.limit * 100.0 if now.limit else 0.0
    return {
        "Container": name, "ID": c.short_id if trunc else c.id, "Name": c.name or "--",
        "CPUPerc": f"{cpu:.2f}%", "MemUsage": f"{bytes_size(now.memory)} / "
                                              f"{bytes_size(now.limit)}",
        "MemPerc": f"{mem_pct:.2f}%",
        "NetIO": f"{human_size(now.net_rx)} / {human_size(now.net_tx)}",
        "BlockIO": f"{human_size(now.blk_read)} / {human_size(now.blk_write)}",
        "PIDs": str(now.pids),
    }


def _targets(engine: Engine, ns: argparse.Namespace) -> list[tuple[str, Container]]:
    """(the name the row shows in CONTAINER, container): the named ones, else every
    running one (every one with ``-a``)."""
    from shale.containers import ContainerStore

    store = ContainerStore(engine)
    if ns.containers:
        return [(name, store.get(name)) for name in ns.containers]
    return [(c.short_id, c) for c in store.list() if ns.all or store.state(c).Running]


def _sample(engine: Engine, targets: list[tuple[str, Container]], mem_total: int
            ) -> dict[str, Reading]:
    from shale.containers import ContainerStore

    store = ContainerStore(engine)
    out = {}
    for _, c in targets:
        try:
            st = store.state(c)
            out[c.id] = read(c, st.Running, st.Pid, mem_total)
        except OSError:  # it stopped while being read
            out[c.id] = Reading(system_ns=system_cpu_ns())
    return out


def _render(fmt: str, rows: list[dict[str, Any]]) -> str:
    from shale.cli.format import render
    from shale.cli.table import go_json

    if fmt == "json":
        return "".join(go_json(r, escape_html=True, sort_keys=True) + "\n" for r in rows)
    return render(fmt, rows, HEADERS, type_name="*formatter.statsContext")


def cmd_stats(engine: Engine, ns: argparse.Namespace) -> int:
    fmt = ns.format or "table"
    if fmt.strip() == "table":
        fmt = DEFAULT_FORMAT
    mem_total = _mem_total()
    targets = _targets(engine, ns)
    before = _sample(engine, targets, mem_total)
    while True:
        time.sleep(INTERVAL)
        now = _sample(engine, targets, mem_total)
        rows = [row(name, c, before.get(c.id, Reading()), now[c.id], not ns.no_trunc)
                for name, c in targets]
        text = _render(fmt, rows)
        if ns.no_stream:
            sys.stdout.write(text)
            return 0
        sys.stdout.write("\033[2J\033[H" + text)  # docker's redraw: clear, cursor home
        sys.stdout.flush()
        if not ns.containers:  # containers that started or stopped meanwhile
            targets = _targets(engine, ns)
            now = {c.id: now.get(c.id) or _sample(engine, [(n, c)], mem_total)[c.id]
                   for n, c in targets}
        before = now
