"""A container's network as docker 20.10 shows it: ``NetworkSettings`` of ``inspect``, the
PORTS and NETWORKS columns of ``ps``, the mappings of ``port``.

Static facts (which networks, aliases) come from the record; live ones (addresses, MACs,
endpoint IDs, host ports) from ``network.json``, which exists while the container runs: a
stopped container shows its networks with empty addresses, as docker's.
"""

from __future__ import annotations

from typing import Any

from shale.network.config import endpoints_config
from shale.network.hosts import read_state
from shale.network.ports import Binding, displayable, ports_json

_EMPTY_ENDPOINT = {"IPAMConfig": None, "Links": None, "Aliases": None, "NetworkID": "",
                   "EndpointID": "", "Gateway": "", "IPAddress": "", "IPPrefixLen": 0,
                   "IPv6Gateway": "", "GlobalIPv6Address": "", "GlobalIPv6PrefixLen": 0,
                   "MacAddress": "", "DriverOpts": None}


def live_state(c: Any, running: bool) -> dict[str, Any]:
    state = read_state(c.dir) if running else None
    return state or {}


def ports(c: Any, running: bool) -> dict[str, Any]:
    """``NetworkSettings.Ports``: empty unless the container runs on a bridge."""
    state = live_state(c, running)
    if not state.get("endpoints"):
        return {}
    return ports_json([Binding.from_json(b) for b in state.get("ports") or []],
                      list(state.get("exposed") or []))


def network_settings(c: Any, running: bool) -> dict[str, Any]:
    state = live_state(c, running)
    eps = state.get("endpoints") or {}
    aux = state.get("aux_endpoints") or {}
    networks = {}
    for name, cfg in endpoints_config(c.record).items():
        ep = eps.get(name)
        out = dict(_EMPTY_ENDPOINT, NetworkID=cfg.get("NetworkID") or "",
                   Aliases=cfg.get("Aliases") or None)
        if ep is not None:
            out.update(Aliases=ep.get("aliases"), NetworkID=ep["network_id"],
                       EndpointID=ep["endpoint_id"], Gateway=ep["gateway"],
                       IPAddress=ep["ip"], IPPrefixLen=ep["prefixlen"], MacAddress=ep["mac"])
        elif name in aux:
            out.update(NetworkID=aux[name]["network_id"], EndpointID=aux[name]["endpoint_id"])
        networks[name] = out
    default = networks.get("bridge") if "bridge" in eps else None
    return {
        "Bridge": "", "SandboxID": state.get("sandbox_id", ""), "HairpinMode": False,
        "LinkLocalIPv6Address": "", "LinkLocalIPv6PrefixLen": 0, "Ports": ports(c, running),
        "SandboxKey": state.get("netns", "") if state.get("owns_netns") else "",
        "SecondaryIPAddresses": None, "SecondaryIPv6Addresses": None,
        # docker fills the top-level fields from the default bridge's endpoint only
        "EndpointID": default["EndpointID"] if default else "",
        "Gateway": default["Gateway"] if default else "",
        "GlobalIPv6Address": "", "GlobalIPv6PrefixLen": 0,
        "IPAddress": default["IPAddress"] if default else "",
        "IPPrefixLen": default["IPPrefixLen"] if default else 0,
        "IPv6Gateway": "", "MacAddress": default["MacAddress"] if default else "",
        "Networks": networks,
    }


def ps_ports(c: Any, running: bool) -> str:
    return displayable(ports(c, running))


def ps_networks(c: Any) -> str:
    """docker ps's NETWORKS: the names of the networks in the record."""
    return ",".join(endpoints_config(c.record))
