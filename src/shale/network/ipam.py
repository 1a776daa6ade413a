"""Address allocation that works across processes without a daemon, and without SQLite (the
container's monitor releases its address when the container stops).

One directory per bridge under ``RUN_DIR/net/<bridge>/``: ``config.json`` (subnet, gateway),
``ips/<address>`` (one file per allocated address: who holds it), ``lock`` (``flock``:
bridge creation, membership changes and the /etc/hosts rewrites that follow them).
Allocating is ``link(2)`` of a complete file onto ``ips/<address>``: atomic, so two
concurrent ``shale run``s never get the same address, and no reader sees half a record.

These files live with the kernel objects they describe (bridges, namespaces), not in a data
root: every data root on the host shares the default bridge ``shale0``, so they must share
its allocations too. A holder is alive while its container's monitor lock is held
(``containers.monitor_alive``): ``start`` takes that lock before allocating, the monitor
holds it until it has released everything, so ``sweep`` never frees a live address.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import itertools
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from shale.errors import ShaleError
from shale.record import record

RUN_DIR = Path("/run/shale")
NET_DIR = RUN_DIR / "net"
NETNS_DIR = RUN_DIR / "netns"


@record(frozen=True)
class Holder:
    """Who holds an address: enough to rewrite /etc/hosts and to test liveness."""

    id: str
    name: str
    dir: str  # the container's directory (its monitor.lock, hosts, network.json)
    aliases: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "dir": self.dir, "aliases": list(self.aliases)}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Holder:
        return cls(str(d.get("id", "")), str(d.get("name", "")), str(d.get("dir", "")),
                   tuple(d.get("aliases") or ()))


def bridge_dir(bridge: str) -> Path:
    return NET_DIR / bridge


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """An exclusive ``flock`` on ``path`` (created if missing) for the block."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def bridge_lock(bridge: str) -> contextlib.AbstractContextManager[None]:
    return locked(bridge_dir(bridge) / "lock")


def allocate(bridge: str, subnet: str, gateway: str, holder: Holder,
             network_name: str = "", wanted: str = "") -> str:
    """The next free address of ``subnet`` after the last one given (never the gateway),
    or ``wanted``. Going round, as docker's allocator does, rather than taking the lowest
    free one keeps a just-released address (whose veth the kernel may still be destroying)
    out of use for a while."""
    ips = bridge_dir(bridge) / "ips"
    ips.mkdir(parents=True, exist_ok=True)
    net = ipaddress.IPv4Network(subnet)
    tmp = ips / f".{holder.id}.{os.getpid()}"
    tmp.write_text(json.dumps(holder.to_json()))
    try:
        if wanted:
            if ipaddress.IPv4Address(wanted) not in net or wanted == gateway:
                raise ShaleError(f"Address {wanted} is not valid on network {network_name}")
            if _claim(tmp, ips / wanted):
                return wanted
            raise ShaleError(f"Address already in use: {wanted}")
        used = set(os.listdir(ips))
        for host in _round(net, _last(ips.parent / "last", net)):
            text = str(host)
            if text != gateway and text not in used and _claim(tmp, ips / text):
                with contextlib.suppress(OSError):
                    (ips.parent / "last").write_text(text)
                return text
    finally:
        tmp.unlink(missing_ok=True)
    raise ShaleError("no available IPv4 addresses on this network's address pools: "
                     f"{network_name or bridge}")


def _last(path: Path, net: ipaddress.IPv4Network) -> int:
    """Offset in ``net`` of the last address given (a hint: a lost race costs nothing)."""
    try:
        offset = int(ipaddress.IPv4Address(path.read_text().strip())) - int(net[0])
    except (OSError, ValueError):
        return 0
    return offset if 0 < offset < net.num_addresses - 1 else 0


def _round(net: ipaddress.IPv4Network, last: int) -> Iterator[ipaddress.IPv4Address]:
    """The host addresses after offset ``last``, then those up to it."""
    first, end = int(net[0]) + 1, int(net[-1])  # no network or broadcast address
    start = int(net[0]) + last + 1
    for value in itertools.chain(range(max(start, first), end), range(first, min(start, end))):
        yield ipaddress.IPv4Address(value)


def _claim(tmp: Path, target: Path) -> bool:
    try:
        os.link(tmp, target)
    except FileExistsError:
        return False
    return True


def release(bridge: str, ip: str, holder_id: str) -> None:
    """Free ``ip`` if ``holder_id`` still holds it (a reused address is someone else's)."""
    path = bridge_dir(bridge) / "ips" / ip
    held = read_holder(path)
    if held is not None and held.id == holder_id:
        path.unlink(missing_ok=True)


def read_holder(path: Path) -> Holder | None:
    try:
        return Holder.from_json(json.loads(path.read_text()))
    except (OSError, ValueError):
        return None


def members(bridge: str) -> list[tuple[str, Holder]]:
    """(address, holder) of every allocation on ``bridge``, in address order."""
    ips = bridge_dir(bridge) / "ips"
    try:
        names = [n for n in os.listdir(ips) if not n.startswith(".")]
    except FileNotFoundError:
        return []
    out = []
    for name in sorted(names, key=lambda n: ipaddress.IPv4Address(n)):
        holder = read_holder(ips / name)
        if holder is not None:
            out.append((name, holder))
    return out


def bridges() -> list[str]:
    """Every bridge with allocation state on this host."""
    try:
        return sorted(n for n in os.listdir(NET_DIR) if not n.startswith("."))
    except FileNotFoundError:
        return []
