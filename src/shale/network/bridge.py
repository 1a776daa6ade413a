"""Linux bridges for shale's networks: the default ``shale0`` and one per user network.

``ensure`` is on every container start's path, so its usual case is cheap: the bridge's
config file, one netlink lookup and a marker saying its iptables rules were made in this
boot for this very link. Otherwise, under the bridge's lock: create the bridge, give it the
gateway address, turn on IP forwarding, add the rules.

The default bridge is shared by every data root on the host (as ``docker0`` is by one
daemon): its subnet is chosen once, the first of docker's own pools (172.18-31.0.0/16, then
192.168.x.0/20) that no route of the host uses, and kept in its config file.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
from typing import TYPE_CHECKING, Any

from shale.errors import ShaleError
from shale.fileutil import atomic_write
from shale.network.ipam import NET_DIR, bridge_dir, bridge_lock, bridges, locked
from shale.record import asdict, record

if TYPE_CHECKING:  # both only when a bridge is made or removed: not on every `run`
    from shale.network.netlink import Netlink

DEFAULT_BRIDGE = "shale0"
POOLS = [f"172.{n}.0.0/16" for n in range(18, 32)] + \
    [f"192.168.{n}.0/20" for n in range(0, 256, 16)]


@record(frozen=True)
class BridgeConfig:
    bridge: str
    subnet: str
    gateway: str
    icc: bool = True          # containers on the bridge reach each other
    internal: bool = False    # --internal: no NAT, no way out of the bridge
    mtu: int = 1500

    @property
    def prefixlen(self) -> int:
        return ipaddress.IPv4Network(self.subnet).prefixlen


def load(bridge: str) -> BridgeConfig | None:
    try:
        data: dict[str, Any] = json.loads((bridge_dir(bridge) / "config.json").read_text())
        return BridgeConfig(**data)
    except (OSError, ValueError, TypeError):
        return None


def _save(cfg: BridgeConfig) -> None:
    bridge_dir(cfg.bridge).mkdir(parents=True, exist_ok=True)
    atomic_write(bridge_dir(cfg.bridge) / "config.json", json.dumps(asdict(cfg)).encode(),
                 durable=False)


def _boot_id() -> str:
    with open("/proc/sys/kernel/random/boot_id") as f:
        return f.read().strip()


def _marker(cfg: BridgeConfig, index: int) -> str:
    return f"{_boot_id()} {index} {cfg.subnet} {int(cfg.icc)}{int(cfg.internal)}"


def used_subnets(nl: Netlink, skip: str = "") -> list[ipaddress.IPv4Network]:
    """Subnets routed on this host (the default route aside) or held by a shale bridge's
    config (a bridge that is down, or not made again since a reboot, keeps its claim)."""
    out = [r.dst for r in nl.routes() if r.dst.prefixlen > 0]
    for name in bridges():
        cfg = load(name)
        if cfg is not None and name != skip:
            out.append(ipaddress.IPv4Network(cfg.subnet))
    return out


def choose_subnet(nl: Netlink) -> str:
    used = used_subnets(nl)
    for pool in POOLS:
        net = ipaddress.IPv4Network(pool)
        if not any(net.overlaps(u) for u in used):
            return pool
    raise ShaleError("could not find an available, non-overlapping IPv4 address pool among "
                     "the defaults to assign to the network")


def ensure(nl: Netlink, cfg: BridgeConfig | None) -> tuple[BridgeConfig, int]:
    """The bridge of ``cfg`` (None: the default bridge, config chosen on first use) up,
    addressed and with its rules. Returns its config and link index."""
    name = cfg.bridge if cfg is not None else DEFAULT_BRIDGE
    current = load(name) if cfg is None else cfg
    if current is not None:
        index = nl.link_index(name)
        if index and _marker_ok(current, index):
            return current, index
    with bridge_lock(name):
        return _make(nl, name, cfg)


def _marker_ok(cfg: BridgeConfig, index: int) -> bool:
    try:
        return (bridge_dir(cfg.bridge) / "rules").read_text() == _marker(cfg, index)
    except OSError:
        return False


def _make(nl: Netlink, name: str, cfg: BridgeConfig | None) -> tuple[BridgeConfig, int]:
    if cfg is None:
        cfg = load(name)
    if cfg is None:  # the default bridge, first use on this host
        with locked(NET_DIR / ".subnets.lock"):
            subnet = choose_subnet(nl)
            net = ipaddress.IPv4Network(subnet)
            cfg = BridgeConfig(name, subnet, str(net.network_address + 1))
            _save(cfg)
    else:
        _save(cfg)
    index = nl.link_index(name)
    if not index:
        index = nl.create_bridge(name, _random_mac(), cfg.mtu)
        _no_ipv6(name)
    if (cfg.gateway, cfg.prefixlen) not in nl.addresses(index):
        try:
            nl.add_address(index, cfg.gateway, cfg.prefixlen)
        except FileExistsError:
            pass
    _enable_forwarding()
    from shale.network import iptables

    iptables.ensure_bridge(name, cfg.subnet, cfg.icc, cfg.internal)
    (bridge_dir(name) / "rules").write_text(_marker(cfg, index))
    return cfg, index


def _random_mac() -> str:
    raw = os.urandom(4)
    return "02:42:" + ":".join(f"{b:02x}" for b in raw)


def _no_ipv6(name: str) -> None:
    """shale's networks are IPv4 only: no link-local chatter from the bridge into every
    container (it would show in their NET I/O)."""
    with contextlib.suppress(OSError), \
            open(f"/proc/sys/net/ipv6/conf/{name}/disable_ipv6", "w") as f:
        f.write("1")


def _enable_forwarding() -> None:
    path = "/proc/sys/net/ipv4/ip_forward"
    with open(path) as f:
        if f.read().strip() == "1":
            return
    with open(path, "w") as f:
        f.write("1")


def remove(nl: Netlink, name: str) -> None:
    """Delete a user network's bridge, its rules and its state directory."""
    import shutil

    from shale.network import iptables

    with bridge_lock(name):
        nl.delete_link(name)
        iptables.remove_bridge(name)
    shutil.rmtree(bridge_dir(name), ignore_errors=True)
