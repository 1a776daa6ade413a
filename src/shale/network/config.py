"""The network part of ``create``: ``--network``, ``-p``, ``-P``, ``--expose`` and
``--network-alias`` checked as docker checks them, into docker's record fields.

``HostConfig.NetworkMode`` keeps what was asked (``default`` is the bridge, as in docker;
``container:`` gets the full ID), ``HostConfig.PortBindings``/``PublishAllPorts`` and
``Config.ExposedPorts`` (the image's, ``--expose``'s and ``-p``'s), and
``NetworkingConfig.EndpointsConfig`` the networks to join at start, the first one primary
(``network connect`` of a stopped container adds to it).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from shale.errors import InvalidArgument
from shale.record import field, record

if TYPE_CHECKING:
    from shale.engine import Engine


@record
class NetworkRequest:
    mode: str = "default"
    publish: list[str] = field(default_factory=list)
    publish_all: bool = False
    expose: list[str] = field(default_factory=list)
    aliases: list[str] = field(default_factory=list)
    hostname: str = ""


@record
class NetworkFields:
    mode: str
    port_bindings: dict[str, Any]
    publish_all: bool
    exposed: dict[str, dict[str, Any]]
    endpoints: dict[str, dict[str, Any]]
    hostname: str = ""  # container:X: X's hostname, as docker


def container_network(engine: Engine, req: NetworkRequest, image_exposed: dict[str, Any],
                      warnings: list[str]) -> NetworkFields:
    from shale.network import ports
    from shale.network.store import NetworkStore

    check_aliases(req.aliases)
    bindings, published = ports.parse_publish(req.publish)
    exposed = dict.fromkeys([*(image_exposed or {}), *ports.parse_expose(req.expose),
                             *published])
    mode = req.mode or "default"
    if mode.startswith("container:"):
        return _container_mode(engine, req, mode, bindings, exposed)
    net = NetworkStore(engine).get("bridge" if mode == "default" else mode)
    if req.aliases and (net.predefined or not net.is_bridge):
        raise InvalidArgument("network-scoped aliases are only supported for user-defined "
                              "networks")
    if net.name == "host" and (bindings or req.publish_all):
        warnings.append("Published ports are discarded when using host network mode")
        bindings = {}
    endpoint = {"Aliases": list(req.aliases) or None, "NetworkID": net.id}
    return NetworkFields(mode, bindings, req.publish_all and net.name != "host",
                         {k: {} for k in exposed}, {net.name: endpoint})


def _container_mode(engine: Engine, req: NetworkRequest, mode: str,
                    bindings: dict[str, Any], exposed: dict[str, Any]) -> NetworkFields:
    from shale.containers import ContainerStore

    if req.hostname:
        raise InvalidArgument("conflicting options: hostname and the network mode")
    if bindings or req.publish_all:
        raise InvalidArgument("conflicting options: port publishing and the container type "
                              "network mode")
    if req.aliases:
        raise InvalidArgument("network-scoped aliases are only supported for user-defined "
                              "networks")
    target = ContainerStore(engine).get(mode.partition(":")[2])
    return NetworkFields(f"container:{target.id}", {}, False, {k: {} for k in exposed}, {},
                         hostname=target.config.get("Hostname") or target.short_id)


def check_aliases(aliases: list[str]) -> None:
    """An alias becomes a name in /etc/hosts: a host name's characters only."""
    import re

    for alias in aliases:
        if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,254}", alias):
            raise InvalidArgument(f"invalid network alias {alias!r}: letters, digits, "
                                  "'.', '-' and '_' only")


def network_mode(host_config: dict[str, Any]) -> str:
    """bridge | host | none | container | user (a user-defined network)."""
    mode = str(host_config.get("NetworkMode") or "default")
    if mode in ("default", "bridge"):
        return "bridge"
    if mode in ("host", "none"):
        return mode
    if mode.startswith("container:"):
        return "container"
    return "user"


def endpoints_config(record: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The networks a container joins at start (first: primary), from its record."""
    cfg = (record.get("NetworkingConfig") or {}).get("EndpointsConfig")
    if cfg is not None:
        return dict(cfg)
    mode = str(record["HostConfig"].get("NetworkMode") or "default")
    if mode.startswith("container:"):
        return {}
    return {"bridge" if mode == "default" else mode: {"Aliases": None, "NetworkID": ""}}
