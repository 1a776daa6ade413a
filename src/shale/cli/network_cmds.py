"""network (create, ls, rm, inspect, connect, disconnect, prune) and port: docker's verbs
over ``shale.network``."""

from __future__ import annotations

import argparse
import sys
import time
from typing import TYPE_CHECKING, Any

from shale.errors import InvalidArgument, ShaleError

if TYPE_CHECKING:
    from shale.engine import Engine
    from shale.network.store import Network, NetworkStore


def register(sub: argparse._SubParsersAction[Any]) -> None:
    p = sub.add_parser("port", help="list a container's published ports")
    p.add_argument("container")
    p.add_argument("private", nargs="?", default=None, metavar="PRIVATE_PORT[/PROTO]")
    p.set_defaults(handler=cmd_port)
    net = sub.add_parser("network", help="manage networks")
    verbs = net.add_subparsers(dest="network_verb", metavar="COMMAND")
    q = verbs.add_parser("create")
    q.add_argument("-d", "--driver", default="bridge")
    q.add_argument("--subnet", action="append", default=[])
    q.add_argument("--gateway", action="append", default=[])
    q.add_argument("--internal", action="store_true")
    q.add_argument("--attachable", action="store_true")
    q.add_argument("-o", "--opt", action="append", default=[])
    q.add_argument("--label", action="append", default=[])
    q.add_argument("name")
    q.set_defaults(handler=cmd_create)
    q = verbs.add_parser("ls", aliases=["list"])
    q.add_argument("-q", "--quiet", action="store_true")
    q.add_argument("--no-trunc", action="store_true")
    q.add_argument("-f", "--filter", action="append", default=[])
    q.add_argument("--format", default=None)
    q.set_defaults(handler=cmd_ls)
    q = verbs.add_parser("rm", aliases=["remove"])
    q.add_argument("-f", "--force", action="store_true")
    q.add_argument("names", nargs="+", metavar="NETWORK")
    q.set_defaults(handler=cmd_rm)
    q = verbs.add_parser("inspect")
    q.add_argument("-f", "--format", default=None)
    q.add_argument("-v", "--verbose", action="store_true")
    q.add_argument("names", nargs="+", metavar="NETWORK")
    q.set_defaults(handler=cmd_inspect)
    q = verbs.add_parser("connect")
    q.add_argument("--alias", action="append", default=[])
    q.add_argument("network")
    q.add_argument("container")
    q.set_defaults(handler=cmd_connect)
    q = verbs.add_parser("disconnect")
    q.add_argument("-f", "--force", action="store_true")
    q.add_argument("network")
    q.add_argument("container")
    q.set_defaults(handler=cmd_disconnect)
    q = verbs.add_parser("prune")
    q.add_argument("-f", "--force", action="store_true")
    q.add_argument("--filter", action="append", default=[])
    q.set_defaults(handler=cmd_prune)


def _store(engine: Engine) -> NetworkStore:
    from shale.container_ops import cleanup_dead
    from shale.network.store import NetworkStore

    cleanup_dead(engine)  # a dead container's endpoints must not count as active
    return NetworkStore(engine)


def _pairs(items: list[str], what: str) -> dict[str, str]:
    out = {}
    for item in items:
        key, _, value = item.partition("=")
        if not key:
            raise InvalidArgument(f"invalid {what}: {item}")
        out[key] = value
    return out


def cmd_create(engine: Engine, ns: argparse.Namespace) -> int:
    if len(ns.subnet) > 1 or len(ns.gateway) > 1:
        raise InvalidArgument("shale networks take one IPv4 subnet (and gateway)")
    net = _store(engine).create(
        ns.name, driver=ns.driver, subnet=(ns.subnet or [""])[0],
        gateway=(ns.gateway or [""])[0], internal=ns.internal, attachable=ns.attachable,
        labels=_pairs(ns.label, "label"), options=_pairs(ns.opt, "option"))
    print(net.id)
    return 0


def _go_time(created: str) -> str:
    """``CreatedAt`` as docker's table shows it: Go's ``time.Time.String()``."""
    from shale.oci import parse_time

    ts = parse_time(created)
    frac = f"{ts % 1:.9f}"[2:].rstrip("0")
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ts)) + \
        (f".{frac}" if frac else "") + " +0000 UTC"


def _row(n: Network, trunc: bool) -> dict[str, Any]:
    labels = n.record.get("labels") or {}
    return {"ID": n.id[:12] if trunc else n.id, "Name": n.name, "Driver": n.driver,
            "Scope": "local", "IPv6": "false",
            "Internal": str(bool(n.record.get("internal"))).lower(),
            "Labels": ",".join(f"{k}={v}" for k, v in labels.items()),
            "CreatedAt": _go_time(n.created)}


def _matches(n: Network, filters: list[str]) -> bool:
    for f in filters:
        key, sep, value = f.partition("=")
        if not sep:
            raise InvalidArgument(f"bad format of filter (expected name=value): {f}")
        if not _filter_ok(n, key, value):
            return False
    return True


def _filter_ok(n: Network, key: str, value: str) -> bool:
    """docker's ``network ls`` filters: name (substring), id (prefix), driver, type,
    label, scope."""
    if key == "name":
        return value in n.name
    if key == "id":
        return n.id.startswith(value)
    if key == "driver":
        return n.driver == value
    if key == "type":
        return (value == "builtin") == n.predefined
    if key == "scope":
        return value == "local"
    if key == "label":
        labels = n.record.get("labels") or {}
        k, sep, v = value.partition("=")
        return k in labels and (not sep or labels[k] == v)
    raise InvalidArgument(f"invalid filter '{key}'")


def cmd_ls(engine: Engine, ns: argparse.Namespace) -> int:
    nets = [n for n in _store(engine).list() if _matches(n, ns.filter)]
    rows = [_row(n, not ns.no_trunc) for n in nets]
    if ns.quiet:
        for r in rows:
            print(r["ID"])
        return 0
    if ns.format:
        from shale.cli.image_cmds import _print_format

        _print_format(ns.format, rows, {"ID": "NETWORK ID", "Name": "NAME",
                                        "Driver": "DRIVER", "Scope": "SCOPE"})
        return 0
    from shale.cli.table import render_table

    sys.stdout.write(render_table(["NETWORK ID", "NAME", "DRIVER", "SCOPE"],
                                  [[r["ID"], r["Name"], r["Driver"], r["Scope"]]
                                   for r in rows]))
    return 0


def _each(names: list[str], fn: Any) -> int:
    code = 0
    for name in names:
        try:
            fn(name)
        except ShaleError as e:
            print(f"Error: {e}", file=sys.stderr)
            code = 1
    return code


def cmd_rm(engine: Engine, ns: argparse.Namespace) -> int:
    store = _store(engine)

    def rm(name: str) -> None:
        from shale.errors import NotFound

        try:
            net = store.get(name)
        except NotFound:
            if ns.force:
                return
            raise
        store.remove(net)
        print(name)

    return _each(ns.names, rm)


def cmd_inspect(engine: Engine, ns: argparse.Namespace) -> int:
    from shale.cli.image_cmds import print_inspect

    store = _store(engine)
    out: list[dict[str, Any]] = []
    code = _each(ns.names, lambda name: out.append(store.inspect(store.get(name))))
    print_inspect(out, ns.format)
    return code


def cmd_connect(engine: Engine, ns: argparse.Namespace) -> int:
    from shale.containers import ContainerStore
    from shale.network.connect import connect

    store = _store(engine)
    connect(engine, ContainerStore(engine).get(ns.container), store.get(ns.network),
            ns.alias)
    return 0


def cmd_disconnect(engine: Engine, ns: argparse.Namespace) -> int:
    from shale.containers import ContainerStore
    from shale.network.connect import disconnect

    store = _store(engine)
    disconnect(engine, ContainerStore(engine).get(ns.container), store.get(ns.network))
    return 0


def cmd_prune(engine: Engine, ns: argparse.Namespace) -> int:
    removed = _store(engine).prune()
    if removed:
        print("Deleted Networks:")
        print("\n".join(removed))
        print()
    return 0


def cmd_port(engine: Engine, ns: argparse.Namespace) -> int:
    from shale.container_ops import cleanup_dead
    from shale.containers import ContainerStore
    from shale.network.ports import port_lines
    from shale.network.settings import ports

    cleanup_dead(engine)
    store = ContainerStore(engine)
    c = store.get(ns.container)
    for line in port_lines(ports(c, store.state(c).Running), ns.private, ns.container):
        print(line)
    return 0
