"""A container's /etc/hosts and /etc/resolv.conf, as docker writes them.

/etc/hosts: the localhost block, then the container's address and hostname. On a
user-defined network every container also finds the others by name, short ID and alias:
docker answers those with an embedded DNS server; shale lists them in /etc/hosts instead,
and rewrites the file of every member *in place* when one joins or leaves (the file is
bind-mounted into the container, so it must stay the same inode). The rewrite reads only
files (each member's ``network.json`` and the bridge's allocations), never the database:
the monitor does it when a container stops. The default bridge resolves no names, as
docker's.

/etc/resolv.conf: the host's, without loopback name servers (unreachable from another
network namespace); when none is left, docker's defaults (Google's public servers).
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any

from shale.network import ipam

LOCALHOST = ("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"
             "fe00::0\tip6-localnet\nff00::0\tip6-mcastprefix\nff02::1\tip6-allnodes\n"
             "ff02::2\tip6-allrouters\n")
DEFAULT_DNS = ("8.8.8.8", "8.8.4.4")
RESOLVED_UPSTREAM = "/run/systemd/resolve/resolv.conf"


def render(hostname: str, own_ip: str, peers: list[tuple[str, ipam.Holder]],
           extra: str = "") -> str:
    text = LOCALHOST + extra + (f"{own_ip}\t{hostname}\n" if own_ip else "")
    for ip, h in peers:
        names = [h.name, h.id[:12], *h.aliases]
        text += f"{ip}\t{' '.join(dict.fromkeys(n for n in names if n))}\n"
    return text


def write_in_place(path: Path, text: str) -> None:
    """Same inode (a bind mount of it stays valid); one write, then truncate to size."""
    data = text.encode()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except FileNotFoundError:
        return  # the container's directory is gone: nothing to update
    try:
        os.write(fd, data)
        os.ftruncate(fd, len(data))
    finally:
        os.close(fd)


def read_state(cdir: str | Path) -> dict[str, Any] | None:
    try:
        data: dict[str, Any] = json.loads((Path(cdir) / "network.json").read_text())
        return data
    except (OSError, ValueError):
        return None


def hosts_for(state: dict[str, Any]) -> str:
    """The hosts file of the container whose ``network.json`` is ``state``."""
    eps = state.get("endpoints") or {}
    own = next((ep["ip"] for ep in eps.values() if ep.get("ip")), "")
    peers: list[tuple[str, ipam.Holder]] = []
    for ep in eps.values():
        if ep.get("resolve") and ep.get("bridge"):
            peers += ipam.members(ep["bridge"])
    return render(state.get("hostname", ""), own, peers, extra_lines(state))


def extra_lines(state: dict[str, Any]) -> str:
    """``--add-host`` entries, after the localhost block as docker writes them."""
    out = ""
    for entry in state.get("extra_hosts") or []:
        host, _, ip = entry.partition(":")
        out += f"{ip}\t{host}\n"
    return out


def resolve_gateway(entries: list[str], state: dict[str, Any]) -> list[str]:
    """``host-gateway``: the address of the host on the container's network (its first
    bridge's gateway; for host/none networking, the default bridge's)."""
    if not any(e.endswith(":host-gateway") for e in entries):
        return entries
    gw = next((ep.get("gateway") for ep in (state.get("endpoints") or {}).values()
               if ep.get("gateway")), "")
    if not gw:  # host/none networking: the default bridge's address is the host's too
        from shale.network.bridge import DEFAULT_BRIDGE, load

        cfg = load(DEFAULT_BRIDGE)
        gw = cfg.gateway if cfg is not None else "127.0.0.1"
    return [e.rpartition(":")[0] + ":" + gw if e.endswith(":host-gateway") else e
            for e in entries]


def rewrite(cdir: str | Path) -> None:
    state = read_state(cdir)
    if state is not None and not state.get("shared_from"):
        write_in_place(Path(cdir) / "hosts", hosts_for(state))


def rewrite_members(bridge: str, skip: str = "") -> None:
    """Rewrite the hosts file of every container on ``bridge`` (its membership changed).
    The caller holds the bridge's lock."""
    for _, holder in ipam.members(bridge):
        if holder.id != skip:
            with contextlib.suppress(OSError):
                rewrite(holder.dir)


def resolv_conf(host_network: bool) -> str:
    try:
        text = Path("/etc/resolv.conf").read_text()
    except OSError:
        text = ""
    if host_network:
        return text
    upstream = ""
    if _only_loopback(text):
        with contextlib.suppress(OSError):
            upstream = Path(RESOLVED_UPSTREAM).read_text()  # systemd-resolved's servers
    return filter_resolv(text, upstream)


def filter_resolv(text: str, upstream: str = "") -> str:
    """docker's ``FilterResolvDNS``: loopback servers out (``upstream``, systemd-resolved's
    own list, replaces a file that has nothing else), the defaults if none is left."""
    if upstream and _only_loopback(text):
        text = upstream
    lines = [ln for ln in text.splitlines() if not _loopback_server(ln)]
    if not any(ln.split()[:1] == ["nameserver"] for ln in lines):
        lines += [f"nameserver {ip}" for ip in DEFAULT_DNS]
    return "\n".join(lines) + "\n"


def _loopback_server(line: str) -> bool:
    parts = line.split()
    return len(parts) >= 2 and parts[0] == "nameserver" and \
        (parts[1].startswith("127.") or parts[1] == "::1")


def _only_loopback(text: str) -> bool:
    servers = [ln for ln in text.splitlines() if ln.split()[:1] == ["nameserver"]]
    return bool(servers) and all(_loopback_server(ln) for ln in servers)
