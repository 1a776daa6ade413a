"""Published ports: docker's ``-p``/``--expose`` syntax, the host sockets, and the shapes
docker shows them in (``HostConfig.PortBindings``, ``NetworkSettings.Ports``, the PORTS
column of ``ps``, ``docker port``).

A host port is *bound* by the CLI before anything else of the container's network exists,
so a port already taken fails first (docker's ``Bind for 0.0.0.0:8080 failed: port is
already allocated``) and leaves nothing behind; the bound sockets are then handed to the
container's monitor, which proxies them (``network.proxy``) for the container's life.
"""

from __future__ import annotations

import ipaddress
import re
from typing import TYPE_CHECKING, Any

from shale.errors import InvalidArgument, NotFound, ShaleError
from shale.record import record

if TYPE_CHECKING:
    import socket

PROTOS = ("tcp", "udp", "sctp")


@record(frozen=True)
class Binding:
    """One host address:port published for one container port."""

    proto: str
    host_ip: str
    host_port: int
    ctr_port: int

    @property
    def key(self) -> str:
        return f"{self.ctr_port}/{self.proto}"

    def to_json(self) -> dict[str, Any]:
        return {"proto": self.proto, "host_ip": self.host_ip, "host_port": self.host_port,
                "ctr_port": self.ctr_port}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Binding:
        return cls(d["proto"], d["host_ip"], int(d["host_port"]), int(d["ctr_port"]))


# ---- parsing (go-connections nat.ParsePortSpec, docker's CLI) ---------------------------
def _bad(flag: str, value: str, why: str) -> InvalidArgument:
    return InvalidArgument(f'invalid argument "{value}" for "{flag}" flag: {why}')


def _port_range(text: str) -> tuple[int, int]:
    if not text:
        raise ValueError("empty string specified for ports")
    lo, dash, hi = text.partition("-")
    first, last = int(lo), int(hi) if dash else int(lo)
    if not (0 <= first <= 65535 and 0 <= last <= 65535) or last < first:
        raise ValueError(f"invalid range specified for port: {text}")
    return first, last


def _split_proto(text: str) -> tuple[str, str]:
    port, _, proto = text.partition("/")
    return port, (proto or "tcp")


def parse_publish(specs: list[str]) -> tuple[dict[str, list[dict[str, str]]], list[str]]:
    """``-p`` values -> (PortBindings, the ports they expose)."""
    bindings: dict[str, list[dict[str, str]]] = {}
    exposed: list[str] = []
    for spec in specs:
        try:
            for key, ip, host in _parse_one(spec):
                bindings.setdefault(key, []).append({"HostIp": ip, "HostPort": host})
                if key not in exposed:
                    exposed.append(key)
        except ValueError as e:
            raise _bad("-p, --publish", spec, str(e)) from None
    return bindings, exposed


def _parse_one(raw: str) -> list[tuple[str, str, str]]:
    parts = raw.split(":")
    ctr = parts[-1]
    host = parts[-2] if len(parts) >= 2 else ""
    ip = ":".join(parts[:-2]) if len(parts) >= 3 else ""
    ctr, proto = _split_proto(ctr)
    if ip.startswith("[") and ip.endswith("]"):
        ip = ip[1:-1]
    if ip:
        try:
            ipaddress.ip_address(ip)
        except ValueError:
            raise ValueError(f"invalid IP address: {ip}") from None
    if not ctr:
        raise ValueError(f"no port specified: {raw}<empty>")
    try:
        first, last = _port_range(ctr)
    except ValueError:
        raise ValueError(f"invalid containerPort: {ctr}") from None
    hfirst = hlast = 0
    if host:
        try:
            hfirst, hlast = _port_range(host)
        except ValueError:
            raise ValueError(f"invalid hostPort: {host}") from None
        if last - first != hlast - hfirst and last != first:
            raise ValueError("invalid ranges specified for container and host Ports: "
                             f"{ctr} and {host}")
    if proto.lower() not in PROTOS:
        raise ValueError(f"invalid proto: {proto}")
    out = []
    for i in range(last - first + 1):
        hp = str(hfirst + i) if host else ""
        if first == last and hfirst != hlast:
            hp = f"{hfirst}-{hlast}"  # one container port: any free one of the host range
        out.append((f"{first + i}/{proto.lower()}", ip, hp))
    return out


def parse_expose(specs: list[str]) -> list[str]:
    out: list[str] = []
    for spec in specs:
        port, proto = _split_proto(spec)
        try:
            first, last = _port_range(port)
        except ValueError as e:
            raise InvalidArgument(f"invalid range format for --expose: {spec}, error: {e}"
                                  ) from None
        out += [f"{p}/{proto}" for p in range(first, last + 1) if f"{p}/{proto}" not in out]
    return out


# ---- binding -----------------------------------------------------------------------------
class Bound:
    """A host socket bound (and listening, for TCP) for one binding."""

    def __init__(self, binding: Binding, sock: socket.socket) -> None:
        self.binding, self.sock = binding, sock


def wanted(port_bindings: dict[str, Any], exposed: list[str], publish_all: bool
           ) -> list[tuple[str, str, str]]:
    """(port/proto, host IP, host port spec) to bind: the bindings, then with ``-P`` every
    exposed port that has none (on a random port)."""
    out = [(key, b.get("HostIp") or "", b.get("HostPort") or "")
           for key, lst in sorted(port_bindings.items(), key=lambda kv: _key_order(kv[0]))
           for b in lst or []]
    if publish_all:
        out += [(key, "", "") for key in sorted(exposed, key=_key_order)
                if key not in port_bindings]
    return out


def bind_all(items: list[tuple[str, str, str]], endpoint: str = "") -> list[Bound]:
    bound: list[Bound] = []
    try:
        for key, ip, spec in items:
            bound.append(_bind(key, ip or "0.0.0.0", spec, endpoint))
    except BaseException:
        for b in bound:
            b.sock.close()
        raise
    return bound


def _bind(key: str, ip: str, spec: str, endpoint: str) -> Bound:
    port_text, proto = _split_proto(key)
    if proto == "sctp":
        raise ShaleError("sctp port publishing is not supported")
    first, last = _port_range(spec) if spec else (0, 0)
    for port in range(first, last + 1):
        sock = _socket(ip, proto)
        try:
            sock.bind((ip, port))
            if proto == "tcp":
                sock.listen(128)
        except OSError:
            sock.close()
            continue
        return Bound(Binding(proto, ip, sock.getsockname()[1], int(port_text)), sock)
    where = f"{ip}:{spec}" if ":" not in ip else f"[{ip}]:{spec}"
    prefix = f"driver failed programming external connectivity on endpoint {endpoint}: " \
        if endpoint else ""
    raise ShaleError(f"{prefix}Bind for {where} failed: port is already allocated")


def _socket(ip: str, proto: str) -> socket.socket:
    import socket  # only with ports to publish: not on every `run`

    family = socket.AF_INET6 if ":" in ip else socket.AF_INET
    kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
    sock = socket.socket(family, kind)
    if proto == "tcp":  # a port in TIME_WAIT after the last container is free, as docker's
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    return sock


# ---- docker's shapes ---------------------------------------------------------------------
def _key_order(key: str) -> tuple[int, str]:
    port, _, proto = key.partition("/")
    return int(port), proto


def ports_json(bindings: list[Binding], exposed: list[str]) -> dict[str, Any]:
    """``NetworkSettings.Ports``: every exposed port, null when not published."""
    out: dict[str, Any] = {key: None for key in exposed}
    for b in bindings:
        lst = out.get(b.key) or []
        lst.append({"HostIp": b.host_ip, "HostPort": str(b.host_port)})
        out[b.key] = lst
    return dict(sorted(out.items()))  # Go's encoding/json sorts map keys


def displayable(ports: dict[str, Any]) -> str:
    """The PORTS column of ``docker ps`` (its CLI's ``DisplayablePorts``): same-numbered
    mappings and bare exposed ports grouped into ranges, other mappings after them."""
    items = []
    for key, lst in ports.items():
        port, _, proto = key.partition("/")
        for b in lst or [{"HostIp": "", "HostPort": "0"}]:
            items.append((int(port), b["HostIp"], int(b["HostPort"] or 0), proto))
    items.sort()
    groups: dict[str, list[int]] = {}
    result, mappings = [], []
    for private, ip, public, proto in items:
        group_key = proto
        if ip:
            if public != private:
                mappings.append(f"{_host(ip, public)}->{private}/{proto}")
                continue
            group_key = f"{ip}/{proto}"
        group = groups.get(group_key)
        if group is None:
            groups[group_key] = [private, private]
        elif private == group[1] + 1:
            group[1] = private
        else:
            result.append(_form_group(group_key, *group))
            groups[group_key] = [private, private]
    result += [_form_group(k, *g) for k, g in groups.items()]
    return ", ".join(result + mappings)


def _host(ip: str, port: int | str) -> str:
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


def _form_group(key: str, first: int, last: int) -> str:
    ip, _, proto = key.rpartition("/")
    text = str(first) if first == last else f"{first}-{last}"
    if ip:
        text = f"{_host(ip, text)}->{text}"
    return f"{text}/{proto}"


def port_lines(ports: dict[str, Any], private: str | None, container: str) -> list[str]:
    """``docker port``'s lines, naturally sorted as its CLI does."""
    if private is not None:
        port, _, proto = private.partition("/")
        if not port.isdigit() or int(port) > 65535:
            raise InvalidArgument(f"Error: invalid port ({port})")
        frontends = ports.get(f"{port}/{proto or 'tcp'}")
        if not frontends:
            raise NotFound(f"No public port '{private}' published for {container}")
        out = [_host(f["HostIp"], f["HostPort"]) for f in frontends]
    else:
        out = [f"{key} -> {_host(f['HostIp'], f['HostPort'])}"
               for key, lst in ports.items() for f in lst or []]
    return sorted(out, key=_natural)


def _natural(text: str) -> list[Any]:
    return [(0, int(p), "") if p.isdigit() else (1, 0, p) for p in re.split(r"(\d+)", text)
            if p]
