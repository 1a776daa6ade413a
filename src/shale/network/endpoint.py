"""A container's network at start and at stop.

``start`` (the CLI, holding the container's monitor lock) calls, in this order:
``plan`` (networks from the database; ``container:X`` must be running), ``bind_ports`` (the
host sockets, first of all, so a port taken fails before anything exists), ``setup`` (bridge,
namespace, veth pairs, addresses, routes, port rules, /etc files, ``network.json``). The
monitor then serves the ports and, when the container is done for good (not between two
runs of a restart policy), calls ``teardown``, which needs nothing but ``network.json``:
rules, addresses, name lists of the other members, the namespace pin. ``rm`` and the crash
sweep call it too; it is idempotent.

Setup is done in the CLI rather than in the monitor: it needs the network records (the
monitor never opens the database) and its errors must reach ``run`` as docker's.

``network.json``: ``{"id", "mode", "hostname", "netns", "owns_netns", "sandbox_id",
"shared_from", "endpoints": {network name: {network_id, bridge, veth, ifname, ip,
prefixlen, gateway, mac, endpoint_id, resolve, aliases}}, "ports": [...], "exposed": [...],
"rules" (true, or the iptables batch added, which teardown takes back as it is)}``.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shale.errors import Conflict, ShaleError
from shale.fileutil import atomic_write
from shale.network import hosts, ipam, reconcile
from shale.network.config import endpoints_config, network_mode
from shale.record import field, record

if TYPE_CHECKING:
    from shale.containers import Container
    from shale.engine import Engine
    from shale.network.netlink import Netlink
    from shale.network.ports import Bound
    from shale.network.store import Network

STATE = "network.json"
JOINERS = "netns-joiners"


@record
class Plan:
    mode: str                                    # bridge | user | host | none | container
    networks: list[tuple[Network, list[str]]] = field(default_factory=list)
    shared: Container | None = None              # container mode: whose namespace
    shared_state: dict[str, Any] | None = None
    publish: list[tuple[str, str, str]] = field(default_factory=list)
    exposed: list[str] = field(default_factory=list)

    @property
    def bridged(self) -> bool:
        return self.mode in ("bridge", "user")

    def to_json(self) -> dict[str, Any]:
        """For the monitor, which sets the network up without the database."""
        return {"mode": self.mode,
                "networks": [[n.id, n.name, n.driver, n.created, n.record, aliases]
                             for n, aliases in self.networks],
                "shared": self.shared.to_json() if self.shared is not None else None,
                "shared_state": self.shared_state, "publish": self.publish,
                "exposed": self.exposed}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Plan:
        from shale.containers import Container
        from shale.network.store import Network

        return cls(d["mode"],
                   [(Network(i, name, driver, created, record), list(aliases))
                    for i, name, driver, created, record, aliases in d["networks"]],
                   Container.from_json(d["shared"]) if d["shared"] is not None else None,
                   d["shared_state"], [(k, ip, port) for k, ip, port in d["publish"]],
                   list(d["exposed"]))


def veth_name(cid: str, index: int) -> str:
    return f"shv{cid[:10]}{index}"  # <= 15 bytes; the crash sweep finds them by prefix


def state_path(cdir: str | Path) -> Path:
    return Path(cdir) / STATE


# ---- plan and ports (the CLI, with the database) ----------------------------------------
def plan(engine: Engine, c: Container) -> Plan:
    from shale.network import ports
    from shale.network.store import NetworkStore

    mode = network_mode(c.host_config)
    exposed = list(c.config.get("ExposedPorts") or {})
    if mode == "container":
        return _plan_shared(engine, c, exposed)
    p = Plan(mode, exposed=exposed)
    store = NetworkStore(engine)
    for name, ep in endpoints_config(c.record).items():
        net = _lookup(store, name, ep.get("NetworkID") or "")
        if net.name in ("host", "none"):
            p.mode, p.networks = net.name, [(net, [])]
            break
        p.networks.append((net, list(ep.get("Aliases") or [])))
    if p.bridged:
        p.publish = ports.wanted(c.host_config.get("PortBindings") or {}, exposed,
                                 bool(c.host_config.get("PublishAllPorts")))
    return p


def _lookup(store: Any, name: str, nid: str) -> Network:
    from shale.errors import NotFound

    try:
        net: Network = store.get(nid or name)
    except NotFound:
        raise NotFound(f"network {name} not found") from None
    return net


def _plan_shared(engine: Engine, c: Container, exposed: list[str]) -> Plan:
    from shale.containers import ContainerStore

    target_id = str(c.host_config["NetworkMode"]).partition(":")[2]
    target = ContainerStore(engine).get(target_id)
    if not ContainerStore(engine).state(target).Running:
        raise Conflict(f"cannot join network of a non running container: {target.id}")
    return Plan("container", shared=target, shared_state=hosts.read_state(target.dir),
                exposed=exposed)


def bind_ports(c: Container, p: Plan, endpoint_id: str) -> list[Bound]:
    from shale.network import ports

    return ports.bind_all(p.publish, f"{c.name} ({endpoint_id})") if p.publish else []


def proxies(bound: list[Bound], state: dict[str, Any]) -> list[tuple[Any, str, tuple[str, int]]]:
    """What the monitor relays: (host socket, protocol, container address)."""
    primary = next(iter((state.get("endpoints") or {}).values()), None)
    if primary is None:
        return []
    return [(b.sock, b.binding.proto, (primary["ip"], b.binding.ctr_port)) for b in bound]


# ---- setup --------------------------------------------------------------------------------
def setup(c: Container, p: Plan, bound: list[Bound], sandbox_id: str) -> dict[str, Any]:
    """Make the container's network and its /etc files; returns what ``network.json``
    holds. On failure everything made so far is removed again."""
    stale = hosts.read_state(c.dir)
    if stale is not None:  # a crash left it: the container's monitor is not alive
        teardown(c.dir, delete_links=True)
    state: dict[str, Any] = {"id": c.id, "mode": p.mode, "sandbox_id": sandbox_id,
                             "hostname": c.config.get("Hostname") or c.short_id,
                             "netns": "", "owns_netns": False, "endpoints": {},
                             "ports": [b.binding.to_json() for b in bound],
                             "exposed": p.exposed, "rules": False, "dir": str(c.dir),
                             "extra_hosts": list(c.host_config.get("ExtraHosts") or [])}
    try:
        if p.bridged:
            _setup_bridged(c, p, bound, state)
        elif p.mode in ("host", "none"):
            state["aux_endpoints"] = {net.name: {"network_id": net.id,
                                                 "endpoint_id": os.urandom(32).hex()}
                                      for net, _ in p.networks}
        elif p.mode == "container":
            _setup_shared(c, p, state)
        state["extra_hosts"] = hosts.resolve_gateway(state["extra_hosts"], state)
        _write_etc(c, state)
        atomic_write(state_path(c.dir), json.dumps(state).encode(), durable=False)
        for ep in state["endpoints"].values():
            if ep.get("resolve"):
                with ipam.bridge_lock(ep["bridge"]):
                    hosts.rewrite_members(ep["bridge"], skip=c.id)
    except BaseException:
        undo(state, delete_links=True)
        raise
    return state


def _setup_bridged(c: Container, p: Plan, bound: list[Bound], state: dict[str, Any]) -> None:
    from shale.network import bridge, iptables, netns
    from shale.network.netlink import Netlink

    with Netlink() as host_nl:
        made = [(net, aliases, *bridge.ensure(host_nl, net.bridge_config()))
                for net, aliases in p.networks]
        reconcile.claim(c.id, c.dir)  # first made, last removed: the crash sweep's anchor
        pin = ipam.NETNS_DIR / c.id
        ns_fd, ns_nl = netns.create(pin)
        state["netns"], state["owns_netns"] = str(pin), True
        try:
            for i, (net, aliases, cfg, index) in enumerate(made):
                attach(host_nl, ns_fd, ns_nl, c, state, i, net, aliases, cfg, index)
        finally:
            ns_nl.close()
            os.close(ns_fd)
    primary = next(iter(state["endpoints"].values()), None)
    if bound and primary is not None:
        state["rules"] = True  # before adding: a failure half way still removes them
        state["rules"] = iptables.add_ports(c.id, primary["bridge"], [
            iptables.PortRule(b.binding.proto, b.binding.host_ip, b.binding.host_port,
                              primary["ip"], b.binding.ctr_port)
            for b in bound if ":" not in b.binding.host_ip]) or True


def attach(host_nl: Netlink, ns_fd: int, ns_nl: Netlink, c: Container,
           state: dict[str, Any], i: int, net: Network, aliases: list[str], cfg: Any,
           br_index: int) -> dict[str, Any]:
    """One endpoint: an address, a veth pair from ``cfg``'s bridge to ``eth<i>`` in the
    namespace, the default route through the first one."""
    from shale.network.netlink import mac_for

    names = ([c.short_id, *aliases] if not net.is_default else [])
    ip = ipam.allocate(cfg.bridge, cfg.subnet, cfg.gateway,
                       ipam.Holder(c.id, c.name, str(c.dir), tuple(aliases)), net.name)
    ep = {"network_id": net.id, "network": net.name, "bridge": cfg.bridge,
          "veth": veth_name(c.id, i), "ifname": f"eth{i}", "ip": ip,
          "prefixlen": cfg.prefixlen, "gateway": cfg.gateway, "mac": mac_for(ip),
          "endpoint_id": os.urandom(32).hex(), "resolve": not net.is_default,
          "aliases": names or None}
    state["endpoints"][net.name] = ep  # recorded first: an undo releases the address
    _make_veth(host_nl, ep, ns_fd, br_index, cfg.mtu)
    index = ns_nl.link_index(ep["ifname"])
    ns_nl.set_up(index)
    ns_nl.add_address(index, ip, cfg.prefixlen)
    if not any(e.get("default_route") for e in state["endpoints"].values()):
        ns_nl.add_default_route(cfg.gateway, index)
        ep["default_route"] = True
    return ep


def _make_veth(nl: Netlink, ep: dict[str, Any], ns_fd: int, br_index: int, mtu: int) -> None:
    try:
        nl.create_veth(ep["veth"], ep["ifname"], ns_fd, br_index, ep["mac"], mtu)
    except FileExistsError:
        # the same container's previous pair, still being destroyed with its namespace
        nl.delete_link(ep["veth"])
        nl.create_veth(ep["veth"], ep["ifname"], ns_fd, br_index, ep["mac"], mtu)


def _setup_shared(c: Container, p: Plan, state: dict[str, Any]) -> None:
    assert p.shared is not None
    other = p.shared_state or {}
    if other.get("mode") == "host":
        state["mode"] = "host"
        return
    from shale.containers import read_state

    path = other.get("netns") or f"/proc/{read_state(p.shared).Pid}/ns/net"
    state.update(netns=path, shared_from=p.shared.id, hostname=other.get("hostname") or
                 state["hostname"])
    joiners = p.shared.dir / JOINERS
    joiners.mkdir(exist_ok=True)
    (joiners / c.id).write_text(str(c.dir))


def _write_etc(c: Container, state: dict[str, Any]) -> None:
    """hostname, hosts and resolv.conf in the container's directory (bind-mounted at start;
    hosts is rewritten in place later, so it is written in place here too)."""
    (c.dir / "hostname").write_text((c.config.get("Hostname") or c.short_id) + "\n")
    mode = state["mode"]
    if mode == "container":
        return  # the other container's files are mounted
    if mode == "host":
        text = _read("/etc/hosts", hosts.LOCALHOST) + hosts.extra_lines(state)
    elif mode == "none":
        text = hosts.LOCALHOST + hosts.extra_lines(state) + f"127.0.1.1\t{state['hostname']}\n"
    else:
        text = hosts.hosts_for(state)
    hosts.write_in_place(c.dir / "hosts", text)
    (c.dir / "resolv.conf").write_text(hosts.resolv_conf(host_network=mode == "host"))


def _read(path: str, default: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return default


def etc_sources(c: Container) -> dict[str, str]:
    """Host files to mount at /etc/hosts|hostname|resolv.conf (``container:X`` shares X's
    hosts and resolv.conf, as docker)."""
    out = {n: str(c.dir / n) for n in ("resolv.conf", "hostname", "hosts")}
    state = hosts.read_state(c.dir) or {}
    other = state.get("shared_from")
    if other:
        base = Path(state.get("dir") or c.dir).parent / other
        out.update({n: str(base / n) for n in ("resolv.conf", "hosts")})
    return out


def spec_network(c: Container) -> str:
    """What config.json gets: "host", "none", or the path of the namespace to join."""
    state = hosts.read_state(c.dir) or {}
    if state.get("netns"):
        return str(state["netns"])
    return "none" if state.get("mode", network_mode(c.host_config)) == "none" else "host"


# ---- teardown (files only: the monitor runs it) ------------------------------------------
def teardown(cdir: str | Path, delete_links: bool = False) -> None:
    """Undo what ``network.json`` in ``cdir`` describes, then remove it."""
    state = hosts.read_state(cdir)
    if state is not None:
        undo(state, delete_links)
    with contextlib.suppress(FileNotFoundError):
        state_path(cdir).unlink()


def undo(state: dict[str, Any], delete_links: bool) -> None:
    """Rules, links (see below), addresses, the others' name lists, the namespace pin.

    Unpinning the namespace is enough to delete the veth pairs: the kernel destroys them
    with the namespace once the container's last process is gone, within ~20-40 ms and
    off our path (an explicit delete waits ~15 ms for the kernel's RCU grace periods).
    They are deleted explicitly when asked, or when another container still lives in the
    namespace (``--network container:``), which would keep the namespace alive."""
    from shale.network import iptables, netns

    cid = state["id"]
    eps = list((state.get("endpoints") or {}).values())
    if state.get("rules"):
        added = state["rules"] if isinstance(state["rules"], dict) else None
        with contextlib.suppress(ShaleError):
            iptables.remove_container(cid, added)
    if eps and (delete_links or _joiners_alive(state)):
        _delete_links(eps)
    for ep in eps:
        ipam.release(ep["bridge"], ep["ip"], cid)
    if state.get("owns_netns") and state.get("netns"):
        netns.remove(state["netns"])
    _forget_joiner(state)
    reconcile.release(cid)
    for ep in eps:
        if ep.get("resolve"):
            with ipam.bridge_lock(ep["bridge"]):
                hosts.rewrite_members(ep["bridge"], skip=cid)


def _delete_links(eps: list[dict[str, Any]]) -> None:
    from shale.network.netlink import Netlink

    with Netlink() as nl:
        for ep in eps:
            with contextlib.suppress(OSError):
                nl.delete_link(ep["veth"])


def _joiners_alive(state: dict[str, Any]) -> bool:
    from shale.containers import monitor_alive

    joiners = Path(state.get("dir", "")) / JOINERS
    try:
        names = os.listdir(joiners)
    except OSError:
        return False
    alive = False
    for name in names:
        cdir = (joiners / name).read_text() if (joiners / name).exists() else ""
        if cdir and monitor_alive(Path(cdir) / "monitor.lock"):
            alive = True
        else:
            (joiners / name).unlink(missing_ok=True)
    return alive


def _forget_joiner(state: dict[str, Any]) -> None:
    other = state.get("shared_from")
    if other and state.get("dir"):
        marker = Path(state["dir"]).parent / other / JOINERS / state["id"]
        marker.unlink(missing_ok=True)
