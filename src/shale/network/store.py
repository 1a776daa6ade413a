"""Network records (the ``networks`` table) and the verbs of ``shale network``.

docker's three predefined networks exist in every data root: ``bridge`` (the Linux bridge
``shale0``, shared by every root on the host; its subnet is chosen on first use), ``host``
and ``none``; they are always listed and never removed. A user-defined network is a bridge
of its own (``shale-<id prefix>``, or ``-o com.docker.network.bridge.name``), made at once so
its subnet is claimed on the host, and containers on it find each other by name.

Which containers are on a network is read from the containers' own ``network.json`` files
(written at start, removed at stop): docker lists running endpoints only, as we do.
"""

from __future__ import annotations

import builtins
import ipaddress
import json
import os
import re
import time
from typing import TYPE_CHECKING, Any

from shale.errors import Conflict, InvalidArgument, NotFound, ShaleError
from shale.network import ipam
from shale.network.bridge import DEFAULT_BRIDGE, BridgeConfig
from shale.record import record

if TYPE_CHECKING:
    from shale.engine import Engine

PREDEFINED = ("bridge", "host", "none")
BRIDGE_NAME_OPT = "com.docker.network.bridge.name"
ICC_OPT = "com.docker.network.bridge.enable_icc"
MTU_OPT = "com.docker.network.driver.mtu"


@record
class Network:
    id: str
    name: str
    driver: str
    created: str
    record: dict[str, Any]

    @property
    def predefined(self) -> bool:
        return self.name in PREDEFINED

    @property
    def is_bridge(self) -> bool:
        return self.driver == "bridge"

    @property
    def is_default(self) -> bool:
        return self.name == "bridge"

    @property
    def bridge(self) -> str:
        return str(self.record.get("bridge") or DEFAULT_BRIDGE)

    def bridge_config(self) -> BridgeConfig | None:
        """The bridge to make; None for the default bridge (its subnet is the host's)."""
        if self.is_default or not self.is_bridge:
            return None
        opts = self.record.get("options") or {}
        return BridgeConfig(self.bridge, self.record["subnet"], self.record["gateway"],
                            icc=opts.get(ICC_OPT, "true") != "false",
                            internal=bool(self.record.get("internal")),
                            mtu=int(opts.get(MTU_OPT) or 1500))


TABLE = """
CREATE TABLE IF NOT EXISTS networks (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    driver TEXT NOT NULL,
    created TEXT NOT NULL,
    record TEXT NOT NULL
)"""


class NetworkStore:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.meta = engine.meta
        self._ensure_table()

    def _ensure_table(self) -> None:
        """The ``networks`` table (id, name, driver, created, record JSON) and docker's
        three predefined networks, made on first use. Created here rather than as a
        numbered schema version: it depends on no other table, and this way its place
        in the version list cannot clash with versions other work adds meanwhile."""
        if self.meta.one("SELECT 1 FROM sqlite_master WHERE type='table' AND "
                         "name='networks'") is not None:
            return
        from shale.oci import format_time

        now = format_time(time.time())
        with self.meta.transaction() as db:
            db.execute(TABLE)
            for name, driver, record in (("bridge", "bridge", {"bridge": DEFAULT_BRIDGE}),
                                         ("host", "host", {}), ("none", "null", {})):
                db.execute("INSERT OR IGNORE INTO networks VALUES (?,?,?,?,?)",
                           (os.urandom(32).hex(), name, driver, now, json.dumps(record)))

    # ---- lookup --------------------------------------------------------------------------
    def _from_row(self, row: Any) -> Network:
        return Network(row["id"], row["name"], row["driver"], row["created"],
                       json.loads(row["record"]))

    def get(self, ref: str) -> Network:
        """By full ID, name, or unique ID prefix (docker's order)."""
        row = self.meta.one("SELECT * FROM networks WHERE id=?", (ref,))
        if row is None:
            row = self.meta.one("SELECT * FROM networks WHERE name=?", (ref,))
        if row is None and ref and all(c in "0123456789abcdef" for c in ref):
            rows = self.meta.query("SELECT * FROM networks WHERE id LIKE ?", (ref + "%",))
            if len(rows) > 1:
                raise Conflict(f"network {ref} is ambiguous ({len(rows)} matches found based "
                               "on ID prefix)")
            row = rows[0] if rows else None
        if row is None:
            raise NotFound(f"network {ref} not found")
        return self._from_row(row)

    def list(self) -> list[Network]:
        return [self._from_row(r) for r in self.meta.query("SELECT * FROM networks ORDER BY "
                                                           "name")]

    # ---- create / remove -----------------------------------------------------------------
    def create(self, name: str, *, driver: str = "bridge", subnet: str = "",
               gateway: str = "", internal: bool = False, attachable: bool = False,
               labels: dict[str, str] | None = None, options: dict[str, str] | None = None
               ) -> Network:
        from shale.network import bridge
        from shale.network.netlink import Netlink
        from shale.oci import format_time

        _check_name(name)
        if driver in ("host", "null"):
            raise Conflict(f'only one instance of "{driver}" network is allowed')
        if driver != "bridge":
            raise NotFound(f'plugin "{driver}" not found')
        if self.meta.one("SELECT 1 FROM networks WHERE name=?", (name,)) is not None:
            raise Conflict(f"network with name {name} already exists")
        nid = os.urandom(32).hex()
        opts = dict(options or {})
        br = opts.get(BRIDGE_NAME_OPT) or f"shale-{nid[:9]}"
        if len(br) > 15 or not re.fullmatch(r"[A-Za-z0-9_.-]+", br):
            raise InvalidArgument(f"invalid bridge name: {br}")
        # one subnet chooser at a time on the host: a pool is taken once its bridge exists
        with Netlink() as nl, ipam.locked(ipam.NET_DIR / ".subnets.lock"):
            if br == DEFAULT_BRIDGE or nl.link_index(br) or bridge.load(br) is not None:
                raise Conflict(f"bridge {br} is in use (pick another "
                               f"-o {BRIDGE_NAME_OPT}=...)")
            subnet, gateway = _address_plan(nl, subnet, gateway)
            record = {"bridge": br, "subnet": subnet, "gateway": gateway,
                      "internal": internal, "attachable": attachable,
                      "labels": labels or {}, "options": opts}
            net = Network(nid, name, driver, format_time(time.time()), record)
            cfg = net.bridge_config()
            assert cfg is not None
            bridge.ensure(nl, cfg)  # claims the subnet on the host at once
            try:
                with self.meta.transaction() as db:
                    db.execute("INSERT INTO networks VALUES (?,?,?,?,?)",
                               (nid, name, driver, net.created, json.dumps(record)))
            except BaseException:
                bridge.remove(nl, br)
                raise
        return net

    def remove(self, net: Network) -> None:
        if net.predefined:
            raise Conflict(f"{net.name} is a pre-defined network and cannot be removed")
        if self.endpoints(net):
            raise Conflict(f"error while removing network: network {net.name} id {net.id} "
                           "has active endpoints")
        from shale.network import bridge
        from shale.network.netlink import Netlink

        with self.meta.transaction() as db:
            db.execute("DELETE FROM networks WHERE id=?", (net.id,))
        with Netlink() as nl:
            bridge.remove(nl, net.bridge)

    def prune(self) -> builtins.list[str]:
        removed = []
        for net in self.list():
            if not net.predefined and not self.endpoints(net):
                try:
                    self.remove(net)
                except ShaleError:
                    continue
                removed.append(net.name)
        return removed

    # ---- endpoints -----------------------------------------------------------------------
    def endpoints(self, net: Network) -> dict[str, tuple[str, dict[str, Any]]]:
        """Running containers of this data root on ``net``: id -> (name, endpoint)."""
        from shale.containers import ContainerStore, monitor_alive
        from shale.network.hosts import read_state

        out = {}
        for c in ContainerStore(self.engine).list():
            state = read_state(c.dir)
            if state is None or not monitor_alive(c.lock_path):
                continue
            for ep in (state.get("endpoints") or {}).values():
                if ep.get("network_id") == net.id:
                    out[c.id] = (c.name, ep)
        return out

    def inspect(self, net: Network) -> dict[str, Any]:
        config = self._ipam_config(net)
        containers = {cid: {"Name": name, "EndpointID": ep.get("endpoint_id", ""),
                            "MacAddress": ep.get("mac", ""),
                            "IPv4Address": f"{ep['ip']}/{ep['prefixlen']}" if ep.get("ip")
                            else "", "IPv6Address": ""}
                      for cid, (name, ep) in sorted(self.endpoints(net).items())}
        return {"Name": net.name, "Id": net.id, "Created": net.created, "Scope": "local",
                "Driver": net.driver, "EnableIPv6": False,
                "IPAM": {"Driver": "default",
                         "Options": None if net.predefined else {}, "Config": config},
                "Internal": bool(net.record.get("internal")),
                "Attachable": bool(net.record.get("attachable")), "Ingress": False,
                "ConfigFrom": {"Network": ""}, "ConfigOnly": False,
                "Containers": containers, "Options": self._options(net),
                "Labels": net.record.get("labels") or {}}

    def _ipam_config(self, net: Network) -> builtins.list[dict[str, str]]:
        if not net.is_bridge:
            return []
        if net.is_default:
            from shale.network import bridge

            cfg = bridge.load(DEFAULT_BRIDGE)
            if cfg is None:
                return []
            return [{"Subnet": cfg.subnet, "Gateway": cfg.gateway}]
        return [{"Subnet": net.record["subnet"], "Gateway": net.record["gateway"]}]

    def _options(self, net: Network) -> dict[str, str]:
        if net.is_default:
            return {"com.docker.network.bridge.default_bridge": "true",
                    ICC_OPT: "true", "com.docker.network.bridge.enable_ip_masquerade": "true",
                    "com.docker.network.bridge.host_binding_ipv4": "0.0.0.0",
                    BRIDGE_NAME_OPT: DEFAULT_BRIDGE, MTU_OPT: "1500"}
        return dict(net.record.get("options") or {})


def _check_name(name: str) -> None:
    if not re.fullmatch(r"[a-zA-Z0-9][a-zA-Z0-9_.-]*", name):
        raise InvalidArgument(f'invalid network name "{name}": only [a-zA-Z0-9][a-zA-Z0-9_.-] '
                              "are allowed")
    if name in PREDEFINED:
        raise Conflict(f"network with name {name} already exists")


def _address_plan(nl: Any, subnet: str, gateway: str) -> tuple[str, str]:
    """docker's checks of ``--subnet``/``--gateway``; a free pool when none is given."""
    from shale.network import bridge

    if gateway and not subnet:
        raise InvalidArgument("Gateway specified without subnet (--gateway requires --subnet)")
    if not subnet:
        subnet = bridge.choose_subnet(nl)
    else:
        try:
            net = ipaddress.IPv4Network(subnet, strict=False)
        except ValueError:
            raise InvalidArgument(f"invalid subnet {subnet}: invalid CIDR address") from None
        if str(net) != subnet:
            raise InvalidArgument(f"invalid subnet {subnet}: it should be {net}")
        if net.prefixlen > 30:
            raise InvalidArgument(f"invalid subnet {subnet}: too small for containers")
        if any(net.overlaps(u) for u in bridge.used_subnets(nl)):
            raise Conflict("Pool overlaps with other one on this address space")
    net = ipaddress.IPv4Network(subnet)
    if gateway:
        try:
            gw = ipaddress.IPv4Address(gateway)
        except ValueError:
            raise InvalidArgument(f"invalid gateway address {gateway}") from None
        if gw not in net or gw in (net.network_address, net.broadcast_address):
            raise InvalidArgument(f"no matching subnet for gateway {gateway}")
    else:
        gateway = str(net.network_address + 1)
    return subnet, gateway
