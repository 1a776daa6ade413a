"""The crash sweep: free what dead containers left on the host's network.

A container's monitor tears its network down when the container stops; after a ``kill -9``
of the monitor (or of the CLI in the middle of a start), nothing did. Every container with
network state has an owner file ``RUN_DIR/netns/<id>.owner`` (its directory, written before
anything else is made and removed last) and holds addresses in ``RUN_DIR/net/*/ips``; a
container is dead when its monitor lock is free. For each dead one: its ``network.json``
is undone if it is there, else its rules (by comment), addresses, veth pairs (by name) and
namespace pin are found and removed one by one. Cheap when nothing is dead: a directory
listing and one lock test per running container; ``iptables-save`` runs only for the dead.
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path

from shale.network import hosts, ipam

OWNER = ".owner"


def owner_path(cid: str) -> Path:
    return ipam.NETNS_DIR / f"{cid}{OWNER}"


def claim(cid: str, cdir: str | Path) -> None:
    """Record who owns the network state about to be made for ``cid``."""
    ipam.NETNS_DIR.mkdir(parents=True, exist_ok=True)
    # whole or not at all: a sweep reading it half written would find no owner, call the
    # container dead and take down the namespace being made (seen with concurrent runs)
    tmp = ipam.NETNS_DIR / f".{cid}.{os.getpid()}.tmp"
    tmp.write_text(str(cdir))
    os.replace(tmp, owner_path(cid))


def release(cid: str) -> None:
    owner_path(cid).unlink(missing_ok=True)


def _alive(cdir: str) -> bool:
    from shale.containers import monitor_alive

    return bool(cdir) and monitor_alive(Path(cdir) / "monitor.lock")


def dead_owners() -> dict[str, str]:
    """id -> directory of every container with network state and no live monitor."""
    dead: dict[str, str] = {}
    try:
        names = os.listdir(ipam.NETNS_DIR)
    except FileNotFoundError:
        names = []
    names = [n for n in names if not n.startswith(".")]  # an owner being written
    owners = {n[:-len(OWNER)] for n in names if n.endswith(OWNER)}
    for name in names:
        cid = name[:-len(OWNER)] if name.endswith(OWNER) else name
        if cid in dead or (name == cid and cid in owners):
            continue
        cdir = _read(ipam.NETNS_DIR / f"{cid}{OWNER}")
        if not _alive(cdir):
            dead[cid] = cdir
    for bridge in ipam.bridges():
        for _, holder in ipam.members(bridge):
            if holder.id not in dead and not _alive(holder.dir):
                dead[holder.id] = holder.dir
        _drop_stale_temps(ipam.bridge_dir(bridge) / "ips")
    _drop_stale_temps(ipam.NETNS_DIR)
    return dead


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""


def _drop_stale_temps(ips: Path) -> None:
    """Temporary records of allocations that a killed process never finished."""
    with contextlib.suppress(OSError):
        for name in os.listdir(ips):
            if name.startswith(".") and time.time() - (ips / name).stat().st_mtime > 60:
                (ips / name).unlink(missing_ok=True)


def sweep() -> list[str]:
    """Tear down the network of every dead container; returns their IDs."""
    dead = dead_owners()
    if not dead:
        return []
    from shale.network import endpoint, iptables

    with contextlib.suppress(Exception):
        ruled = iptables.containers_with_rules()
        for cid in set(dead) & ruled:
            iptables.remove_container(cid)
    for cid, cdir in dead.items():
        with contextlib.suppress(Exception):
            state = hosts.read_state(cdir) if cdir else None
            if state is not None and state.get("id") == cid:
                endpoint.teardown(cdir, delete_links=True)
            _forget(cid)
            release(cid)
    return sorted(dead)


def _forget(cid: str) -> None:
    """What a dead container without ``network.json`` may still hold."""
    from shale.network import netns
    from shale.network.netlink import Netlink

    prefix = f"shv{cid[:10]}"
    with Netlink() as nl:
        for name in nl.links():
            if name.startswith(prefix):
                with contextlib.suppress(OSError):
                    nl.delete_link(name)
    for bridge in ipam.bridges():
        freed = False
        for ip, holder in ipam.members(bridge):
            if holder.id == cid:
                ipam.release(bridge, ip, cid)
                freed = True
        if freed:
            with ipam.bridge_lock(bridge):
                hosts.rewrite_members(bridge)
    netns.remove(ipam.NETNS_DIR / cid)
