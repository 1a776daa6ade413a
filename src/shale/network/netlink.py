"""Minimal rtnetlink over ``_socket.AF_NETLINK``: just what container networking needs.

Links (bridge, veth pair with the peer created straight in another network namespace),
addresses, the default route, and a route dump to find a free subnet. Messages are packed
with ``struct`` (``linux/rtnetlink.h``, ``linux/if_link.h``); pyroute2 does the same but its
import alone costs ~108 ms, more than a whole container start.

A ``Netlink`` socket works in the network namespace it was *created* in, whatever namespace
the process moves to later: ``network.netns`` opens one inside a new namespace and keeps
using it from the host's. Every request asks for an ACK, and a kernel error becomes an
``OSError`` with the kernel's errno.
"""

from __future__ import annotations

import _socket  # not socket: its enums and helpers cost ~2.5 ms on every `run`
import ipaddress
import os
import struct
from collections.abc import Iterator

from shale.record import record

NETLINK_ROUTE = 0
RTM_NEWLINK, RTM_DELLINK, RTM_GETLINK = 16, 17, 18
RTM_NEWADDR, RTM_GETADDR = 20, 22
RTM_NEWROUTE, RTM_GETROUTE = 24, 26
NLMSG_ERROR, NLMSG_DONE = 2, 3
NLM_F_REQUEST, NLM_F_MULTI, NLM_F_ACK = 0x1, 0x2, 0x4
NLM_F_DUMP, NLM_F_EXCL, NLM_F_CREATE = 0x300, 0x200, 0x400
NLA_F_NESTED = 0x8000

IFLA_ADDRESS, IFLA_IFNAME, IFLA_MTU, IFLA_MASTER = 1, 3, 4, 10
IFLA_LINKINFO, IFLA_NET_NS_FD = 18, 28
IFLA_INFO_KIND, IFLA_INFO_DATA = 1, 2
VETH_INFO_PEER = 1
IFF_UP = 0x1
IFA_ADDRESS, IFA_LOCAL, IFA_BROADCAST = 1, 2, 4
RTA_DST, RTA_OIF, RTA_GATEWAY, RTA_TABLE = 1, 4, 5, 15
RT_TABLE_MAIN, RTPROT_BOOT, RT_SCOPE_UNIVERSE, RT_SCOPE_LINK = 254, 3, 0, 253
RTN_UNICAST = 1

_HDR = struct.Struct("=IHHII")        # nlmsghdr: len, type, flags, seq, pid
_IFINFO = struct.Struct("=BxHiII")     # ifinfomsg: family, type, index, flags, change
_IFADDR = struct.Struct("=BBBBI")      # ifaddrmsg: family, prefixlen, flags, scope, index
_RTMSG = struct.Struct("=BBBBBBBBI")   # rtmsg: family, dst_len, src_len, tos, table,
#                                        protocol, scope, type, flags
_ATTR = struct.Struct("=HH")


def _align(n: int) -> int:
    return (n + 3) & ~3


def attr(kind: int, payload: bytes) -> bytes:
    """One rtattr, padded to 4 bytes."""
    raw = _ATTR.pack(_ATTR.size + len(payload), kind) + payload
    return raw + b"\0" * (_align(len(raw)) - len(raw))


def nested(kind: int, *attrs: bytes) -> bytes:
    return attr(kind | NLA_F_NESTED, b"".join(attrs))


def _str(value: str) -> bytes:
    return value.encode() + b"\0"


def _u32(value: int) -> bytes:
    return struct.pack("=I", value)


def parse_attrs(data: bytes) -> dict[int, bytes]:
    """rtattrs of one message body: type (nested flag cleared) -> payload; last one wins."""
    out: dict[int, bytes] = {}
    pos = 0
    while pos + _ATTR.size <= len(data):
        length, kind = _ATTR.unpack_from(data, pos)
        if length < _ATTR.size:
            break
        out[kind & ~NLA_F_NESTED] = data[pos + _ATTR.size:pos + length]
        pos += _align(length)
    return out


def mac_for(ip: str) -> str:
    """docker's MAC for an IPv4 endpoint: 02:42 then the address's four bytes."""
    return "02:42:" + ":".join(f"{b:02x}" for b in ipaddress.IPv4Address(ip).packed)


@record(frozen=True)
class Route:
    dst: ipaddress.IPv4Network
    oif: int
    gateway: str


class Netlink:
    """An rtnetlink socket in the network namespace current when it was made."""

    def __init__(self) -> None:
        self.sock = _socket.socket(_socket.AF_NETLINK, _socket.SOCK_RAW | _socket.SOCK_CLOEXEC,
                                  NETLINK_ROUTE)
        self.sock.bind((0, 0))
        self.seq = 0

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Netlink:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # ---- transport -----------------------------------------------------------------------
    def _send(self, kind: int, flags: int, body: bytes) -> int:
        self.seq += 1
        msg = _HDR.pack(_HDR.size + len(body), kind, flags | NLM_F_REQUEST, self.seq, 0) + body
        self.sock.sendto(msg, (0, 0))
        return self.seq

    def _replies(self, seq: int) -> Iterator[tuple[int, bytes]]:
        """(type, body) of every reply to ``seq`` until the ACK / DONE; errors raise."""
        while True:
            data = self.sock.recv(1 << 16)
            pos = 0
            while pos + _HDR.size <= len(data):
                length, kind, flags, rseq, _ = _HDR.unpack_from(data, pos)
                body = data[pos + _HDR.size:pos + length]
                pos += _align(length)
                if rseq != seq:
                    continue  # a stale reply of an earlier request
                if kind == NLMSG_ERROR:
                    err = -struct.unpack_from("=i", body)[0]
                    if err:
                        raise OSError(err, os.strerror(err))
                    return
                if kind == NLMSG_DONE:
                    return
                yield kind, body
                if not flags & NLM_F_MULTI:
                    return

    def request(self, kind: int, body: bytes, flags: int = 0) -> None:
        """Send one change and wait for its ACK."""
        for _ in self._replies(self._send(kind, flags | NLM_F_ACK, body)):
            pass

    def dump(self, kind: int, body: bytes) -> list[bytes]:
        return [b for _, b in self._replies(self._send(kind, NLM_F_DUMP, body))]

    # ---- links ---------------------------------------------------------------------------
    def link_index(self, name: str) -> int:
        """The index of ``name`` in this socket's namespace; 0 if there is none."""
        body = _IFINFO.pack(_socket.AF_UNSPEC, 0, 0, 0, 0) + attr(IFLA_IFNAME, _str(name))
        try:
            for _, reply in self._replies(self._send(RTM_GETLINK, 0, body)):
                return int(_IFINFO.unpack_from(reply)[2])
        except OSError as e:
            if e.errno in (19, 2):  # ENODEV, ENOENT
                return 0
            raise
        return 0

    def links(self) -> dict[str, int]:
        """Every link of this namespace: name -> index."""
        out = {}
        for body in self.dump(RTM_GETLINK, _IFINFO.pack(_socket.AF_UNSPEC, 0, 0, 0, 0)):
            index = _IFINFO.unpack_from(body)[2]
            name = parse_attrs(body[_IFINFO.size:]).get(IFLA_IFNAME, b"").rstrip(b"\0")
            out[name.decode()] = index
        return out

    def create_bridge(self, name: str, mac: str, mtu: int = 1500) -> int:
        """A bridge, up. Its MAC is set (as docker does) so that it does not change each
        time the port with the lowest MAC comes or goes."""
        body = (_IFINFO.pack(_socket.AF_UNSPEC, 0, 0, IFF_UP, IFF_UP)
                + attr(IFLA_IFNAME, _str(name)) + attr(IFLA_MTU, _u32(mtu))
                + attr(IFLA_ADDRESS, bytes.fromhex(mac.replace(":", "")))
                + nested(IFLA_LINKINFO, attr(IFLA_INFO_KIND, _str("bridge"))))
        self.request(RTM_NEWLINK, body, NLM_F_CREATE | NLM_F_EXCL)
        return self.link_index(name)

    def create_veth(self, host_name: str, peer_name: str, peer_netns_fd: int, master: int,
                    peer_mac: str = "", mtu: int = 1500) -> None:
        """One message: the host end (enslaved to ``master``, up) and the peer, made
        directly in the namespace of ``peer_netns_fd`` under ``peer_name``. The peer stays
        down: the kernel configures it before the pair is linked, so opening it then fails
        (ENOTCONN); ``set_up`` it from inside its namespace."""
        peer = (_IFINFO.pack(_socket.AF_UNSPEC, 0, 0, 0, 0)
                + attr(IFLA_IFNAME, _str(peer_name)) + attr(IFLA_NET_NS_FD, _u32(peer_netns_fd))
                + attr(IFLA_MTU, _u32(mtu)))
        if peer_mac:
            peer += attr(IFLA_ADDRESS, bytes.fromhex(peer_mac.replace(":", "")))
        body = (_IFINFO.pack(_socket.AF_UNSPEC, 0, 0, IFF_UP, IFF_UP)
                + attr(IFLA_IFNAME, _str(host_name)) + attr(IFLA_MASTER, _u32(master))
                + attr(IFLA_MTU, _u32(mtu))
                + nested(IFLA_LINKINFO, attr(IFLA_INFO_KIND, _str("veth")),
                         nested(IFLA_INFO_DATA, attr(VETH_INFO_PEER, peer))))
        self.request(RTM_NEWLINK, body, NLM_F_CREATE | NLM_F_EXCL)

    def set_up(self, index: int) -> None:
        self.request(RTM_NEWLINK, _IFINFO.pack(_socket.AF_UNSPEC, 0, index, IFF_UP, IFF_UP))

    def delete_link(self, name: str) -> bool:
        """Delete ``name`` (for a veth, both ends go); False if it did not exist."""
        body = _IFINFO.pack(_socket.AF_UNSPEC, 0, 0, 0, 0) + attr(IFLA_IFNAME, _str(name))
        try:
            self.request(RTM_DELLINK, body)
        except OSError as e:
            if e.errno in (19, 2):
                return False
            raise
        return True

    # ---- addresses and routes ------------------------------------------------------------
    def add_address(self, index: int, ip: str, prefixlen: int) -> None:
        net = ipaddress.IPv4Network(f"{ip}/{prefixlen}", strict=False)
        packed = ipaddress.IPv4Address(ip).packed
        body = (_IFADDR.pack(_socket.AF_INET, prefixlen, 0, RT_SCOPE_UNIVERSE, index)
                + attr(IFA_LOCAL, packed) + attr(IFA_ADDRESS, packed)
                + attr(IFA_BROADCAST, net.broadcast_address.packed))
        self.request(RTM_NEWADDR, body, NLM_F_CREATE | NLM_F_EXCL)

    def addresses(self, index: int) -> list[tuple[str, int]]:
        """IPv4 (address, prefix length) of link ``index``."""
        out = []
        for body in self.dump(RTM_GETADDR, _IFADDR.pack(_socket.AF_INET, 0, 0, 0, 0)):
            _, plen, _, _, idx = _IFADDR.unpack_from(body)
            if idx != index:
                continue
            attrs = parse_attrs(body[_IFADDR.size:])
            raw = attrs.get(IFA_LOCAL) or attrs.get(IFA_ADDRESS)
            if raw:
                out.append((str(ipaddress.IPv4Address(raw)), plen))
        return out

    def add_default_route(self, gateway: str, oif: int) -> None:
        body = (_RTMSG.pack(_socket.AF_INET, 0, 0, 0, RT_TABLE_MAIN, RTPROT_BOOT,
                            RT_SCOPE_UNIVERSE, RTN_UNICAST, 0)
                + attr(RTA_GATEWAY, ipaddress.IPv4Address(gateway).packed)
                + attr(RTA_OIF, _u32(oif)))
        self.request(RTM_NEWROUTE, body, NLM_F_CREATE | NLM_F_EXCL)

    def routes(self) -> list[Route]:
        """IPv4 routes of every table (a subnet in use anywhere is not free)."""
        out = []
        for body in self.dump(RTM_GETROUTE, _RTMSG.pack(_socket.AF_INET, 0, 0, 0, 0, 0, 0, 0,
                                                        0)):
            dst_len = body[1]
            attrs = parse_attrs(body[_RTMSG.size:])
            dst = attrs.get(RTA_DST, b"\0\0\0\0")
            gw = attrs.get(RTA_GATEWAY)
            oif = struct.unpack("=I", attrs[RTA_OIF])[0] if RTA_OIF in attrs else 0
            out.append(Route(ipaddress.IPv4Network((dst, dst_len), strict=False), oif,
                             str(ipaddress.IPv4Address(gw)) if gw else ""))
        return out
