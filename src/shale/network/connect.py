"""``network connect`` / ``disconnect``: change which networks a container is on.

The record's ``NetworkingConfig.EndpointsConfig`` always changes (a stopped container joins
at its next start); a running one also gets, or loses, the endpoint at once: a veth pair
into its namespace (``eth<n>``), an address, and the name lists of the network's members.
"""

from __future__ import annotations

import contextlib
import json
import os
from typing import TYPE_CHECKING, Any

from shale.errors import Conflict
from shale.fileutil import atomic_write
from shale.network import endpoint, hosts, ipam
from shale.network.config import check_aliases, endpoints_config, network_mode

if TYPE_CHECKING:
    from shale.containers import Container
    from shale.engine import Engine
    from shale.network.store import Network


def _check(c: Container, net: Network) -> None:
    mode = network_mode(c.host_config)
    if net.name == "host" or mode == "host":
        raise Conflict("container cannot be disconnected from host network or connected to "
                       "host network")
    if mode == "container":
        raise Conflict("container sharing network namespace with another container or host "
                       "cannot be connected to any other network")
    if net.name == "none" or mode == "none":
        raise Conflict("container cannot be connected to multiple networks with one of the "
                       "networks in private (none) mode")


def connect(engine: Engine, c: Container, net: Network, aliases: list[str]) -> None:
    from shale.containers import ContainerStore

    _check(c, net)
    check_aliases(aliases)
    eps = endpoints_config(c.record)
    if net.name in eps:
        raise Conflict(f"endpoint with name {c.name} already exists in network {net.name}")
    if aliases and net.is_default:
        raise Conflict("network-scoped aliases are only supported for user-defined networks")
    store = ContainerStore(engine)
    if store.state(c).Running:
        _attach_live(c, net, aliases)
    eps[net.name] = {"Aliases": aliases or None, "NetworkID": net.id}
    c.record["NetworkingConfig"] = {"EndpointsConfig": eps}
    store.update_record(c)


def disconnect(engine: Engine, c: Container, net: Network) -> None:
    from shale.containers import ContainerStore

    eps = endpoints_config(c.record)
    if net.name not in eps:
        raise Conflict(f"container {c.id} is not connected to network {net.name}")
    if net.name in ("host", "none") or network_mode(c.host_config) == "container":
        _check(c, net)
    store = ContainerStore(engine)
    if store.state(c).Running:
        _detach_live(c, net)
    del eps[net.name]
    c.record["NetworkingConfig"] = {"EndpointsConfig": eps}
    store.update_record(c)


def _attach_live(c: Container, net: Network, aliases: list[str]) -> None:
    from shale.network import bridge, netns
    from shale.network.netlink import Netlink

    state = hosts.read_state(c.dir)
    if state is None or not state.get("netns"):
        raise Conflict(f"container {c.id} has no network namespace to connect")
    used = {ep["ifname"] for ep in state["endpoints"].values()}
    index = next(i for i in range(64) if f"eth{i}" not in used)
    with Netlink() as host_nl:
        cfg, br_index = bridge.ensure(host_nl, net.bridge_config())
        ns_fd, ns_nl = netns.open_netlink(state["netns"])
        try:
            endpoint.attach(host_nl, ns_fd, ns_nl, c, state, index, net, aliases, cfg,
                            br_index)
        except BaseException:
            _forget(state, net.name, delete_link=True)
            raise
        finally:
            ns_nl.close()
            os.close(ns_fd)
    _save(c, state)
    if not net.is_default:
        with ipam.bridge_lock(cfg.bridge):
            hosts.rewrite_members(cfg.bridge)
    hosts.rewrite(c.dir)


def _detach_live(c: Container, net: Network) -> None:
    state = hosts.read_state(c.dir)
    if state is None or net.name not in (state.get("endpoints") or {}):
        return
    ep = state["endpoints"][net.name]
    _forget(state, net.name, delete_link=True)
    _save(c, state)
    if ep.get("resolve"):
        with ipam.bridge_lock(ep["bridge"]):
            hosts.rewrite_members(ep["bridge"])
    hosts.rewrite(c.dir)


def _forget(state: dict[str, Any], name: str, delete_link: bool) -> None:
    """Drop endpoint ``name`` of a live container: its veth (explicitly: the namespace
    lives on), its address."""
    from shale.network.netlink import Netlink

    ep = state["endpoints"].pop(name, None)
    if ep is None:
        return
    if delete_link:
        with Netlink() as nl, contextlib.suppress(OSError):
            nl.delete_link(ep["veth"])
    ipam.release(ep["bridge"], ep["ip"], state["id"])


def _save(c: Container, state: dict[str, Any]) -> None:
    atomic_write(endpoint.state_path(c.dir), json.dumps(state).encode(), durable=False)
