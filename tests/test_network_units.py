"""Networking pieces that need no root: docker's ``-p``/``--expose`` syntax and error texts,
the shapes docker shows ports in (inspect, ``ps``, ``port``), /etc/hosts and resolv.conf,
the iptables rule text, rtnetlink message packing, the address allocator under concurrent
processes (in a temporary directory) and the port proxy (loopback sockets only).
"""

from __future__ import annotations

import contextlib
import multiprocessing
import selectors
import socket
import struct
import threading
from pathlib import Path

import pytest

from shale.errors import InvalidArgument, NotFound
from shale.network import hosts, ipam, iptables, netlink, ports
from shale.network.proxy import PortProxy


# ------------------------------------------------------------------------- -p / --expose
def test_publish_syntax() -> None:
    b, exposed = ports.parse_publish(["8080:80", "127.0.0.1:8081:81/udp", "90",
                                      "127.0.0.1::91", "8000-8001:100-101",
                                      "9000-9010:110", "[::1]:7000:70"])
    assert b["80/tcp"] == [{"HostIp": "", "HostPort": "8080"}]
    assert b["81/udp"] == [{"HostIp": "127.0.0.1", "HostPort": "8081"}]
    assert b["90/tcp"] == [{"HostIp": "", "HostPort": ""}]
    assert b["91/tcp"] == [{"HostIp": "127.0.0.1", "HostPort": ""}]
    assert b["100/tcp"] == [{"HostIp": "", "HostPort": "8000"}]
    assert b["101/tcp"] == [{"HostIp": "", "HostPort": "8001"}]
    assert b["110/tcp"] == [{"HostIp": "", "HostPort": "9000-9010"}]
    assert b["70/tcp"] == [{"HostIp": "::1", "HostPort": "7000"}]
    assert exposed[:3] == ["80/tcp", "81/udp", "90/tcp"]
    assert ports.parse_expose(["90", "100-102/udp", "90"]) == \
        ["90/tcp", "100/udp", "101/udp", "102/udp"]


@pytest.mark.parametrize(("spec", "why"), [
    ("x", "invalid containerPort: x"),
    ("x:80", "invalid hostPort: x"),
    ("1.2.3:80:80", "invalid IP address: 1.2.3"),
    ("80/icmp", "invalid proto: icmp"),
    ("8000-8002:80-81", "invalid ranges specified for container and host Ports: 80-81 and "
                        "8000-8002"),
    ("70000", "invalid containerPort: 70000"),
])
def test_publish_errors_as_docker(spec: str, why: str) -> None:
    with pytest.raises(InvalidArgument) as e:
        ports.parse_publish([spec])
    assert str(e.value) == f'invalid argument "{spec}" for "-p, --publish" flag: {why}'
    with pytest.raises(InvalidArgument, match="invalid range format for --expose: a"):
        ports.parse_expose(["a"])


def test_ports_as_docker_shows_them() -> None:
    bindings = [ports.Binding("tcp", "0.0.0.0", 18080, 80),
                ports.Binding("udp", "127.0.0.1", 18081, 81),
                ports.Binding("tcp", "0.0.0.0", 32768, 82),
                ports.Binding("tcp", "0.0.0.0", 5000, 5000),
                ports.Binding("tcp", "0.0.0.0", 5001, 5001)]
    js = ports.ports_json(bindings, ["80/tcp", "81/udp", "82/tcp", "90/tcp", "91/tcp"])
    assert list(js) == sorted(js)  # Go sorts map keys
    assert js["80/tcp"] == [{"HostIp": "0.0.0.0", "HostPort": "18080"}]
    assert js["90/tcp"] is None
    # docker's CLI: bare ports and same-numbered mappings grouped, other mappings after
    assert ports.displayable(js) == ("90-91/tcp, 0.0.0.0:5000-5001->5000-5001/tcp, "
                                     "0.0.0.0:18080->80/tcp, 127.0.0.1:18081->81/udp, "
                                     "0.0.0.0:32768->82/tcp")
    assert ports.port_lines(js, None, "c") == [
        "80/tcp -> 0.0.0.0:18080", "81/udp -> 127.0.0.1:18081", "82/tcp -> 0.0.0.0:32768",
        "5000/tcp -> 0.0.0.0:5000", "5001/tcp -> 0.0.0.0:5001"]
    assert ports.port_lines(js, "81/udp", "c") == ["127.0.0.1:18081"]
    with pytest.raises(NotFound, match="No public port '90' published for c"):
        ports.port_lines(js, "90", "c")
    assert ports.displayable({}) == ""


# ------------------------------------------------------------------------- /etc files
def test_hosts_and_resolv() -> None:
    peer = ipam.Holder("b" * 64, "web", "/x", ("www",))
    text = hosts.render("aaaaaaaaaaaa", "172.30.0.2", [("172.30.0.3", peer)])
    assert text.startswith("127.0.0.1\tlocalhost\n")
    assert text.endswith("172.30.0.2\taaaaaaaaaaaa\n172.30.0.3\tweb bbbbbbbbbbbb www\n")
    assert hosts.filter_resolv("nameserver 10.0.0.53\nsearch x\n") == \
        "nameserver 10.0.0.53\nsearch x\n"
    assert hosts.filter_resolv("nameserver 127.0.0.53\noptions edns0\n") == \
        "options edns0\nnameserver 8.8.8.8\nnameserver 8.8.4.4\n"
    assert hosts.filter_resolv("nameserver 127.0.0.53\n", "nameserver 9.9.9.9\n") == \
        "nameserver 9.9.9.9\n"


def test_hosts_rewritten_in_place(tmp_path: Path) -> None:
    f = tmp_path / "hosts"
    f.write_text("a much longer first version of the file\n")
    ino = f.stat().st_ino
    hosts.write_in_place(f, "short\n")
    assert f.read_text() == "short\n" and f.stat().st_ino == ino


# ------------------------------------------------------------------------- iptables text
def test_rule_text() -> None:
    rules = iptables.bridge_rules("shale0", "172.18.0.0/16")
    tag = "-m comment --comment shale-net:shale0"
    assert f"-A SHALE-POSTROUTING -s 172.18.0.0/16 ! -o shale0 {tag} -j MASQUERADE" in \
        rules["nat"]
    assert f"-A SHALE-FORWARD -i shale0 -o shale0 {tag} -j ACCEPT" in rules["filter"]
    internal = iptables.bridge_rules("shale-x", "10.9.0.0/24", internal=True)
    assert not any("MASQUERADE" in r for r in internal["nat"])
    assert internal["filter"][-1].endswith("-j DROP")
    cid = "c" * 64
    pr = iptables.port_rules(cid, "shale0", [
        iptables.PortRule("tcp", "0.0.0.0", 8080, "172.18.0.2", 80),
        iptables.PortRule("tcp", "127.0.0.1", 8081, "172.18.0.2", 80)])
    assert pr["nat"] == [
        f"-A SHALE ! -i shale0 -p tcp -m tcp --dport 8080 -m comment --comment shale:{cid} "
        "-j DNAT --to-destination 172.18.0.2:80",
        f"-A SHALE -d 127.0.0.1/32 ! -i shale0 -p tcp -m tcp --dport 8081 -m comment "
        f"--comment shale:{cid} -j DNAT --to-destination 172.18.0.2:80"]
    assert len(pr["filter"]) == 1  # one FORWARD accept per container port
    saved = {"nat": [f'-A SHALE -p tcp -m comment --comment "shale:{cid}" -j DNAT',
                     "-A SHALE -j RETURN"]}
    assert iptables._tagged(saved, f"shale:{cid}") == \
        {"nat": [f'-D SHALE -p tcp -m comment --comment "shale:{cid}" -j DNAT']}


# ------------------------------------------------------------------------- netlink packing
def test_netlink_attributes() -> None:
    raw = netlink.attr(netlink.IFLA_IFNAME, b"eth0\0") + \
        netlink.nested(netlink.IFLA_LINKINFO, netlink.attr(netlink.IFLA_INFO_KIND, b"veth\0"))
    assert len(raw) % 4 == 0
    parsed = netlink.parse_attrs(raw)
    assert parsed[netlink.IFLA_IFNAME] == b"eth0\0"
    assert netlink.parse_attrs(parsed[netlink.IFLA_LINKINFO]) == \
        {netlink.IFLA_INFO_KIND: b"veth\0"}
    assert struct.unpack_from("=HH", raw)[1] == netlink.IFLA_IFNAME
    assert netlink.mac_for("172.17.0.2") == "02:42:ac:11:00:02"  # as docker


# ------------------------------------------------------------------------- allocator
def _allocate_many(n: int, q: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    got = [ipam.allocate("br", "10.77.0.0/24", "10.77.0.1",
                         ipam.Holder(f"{i:064x}", f"c{i}", "/nowhere")) for i in range(n)]
    q.put(got)


def test_allocator_across_processes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ipam, "NET_DIR", tmp_path)
    ctx = multiprocessing.get_context("fork")
    q: multiprocessing.Queue = ctx.Queue()  # type: ignore[type-arg]
    procs = [ctx.Process(target=_allocate_many, args=(20, q)) for _ in range(4)]
    for p in procs:
        p.start()
    got = [ip for _ in procs for ip in q.get(timeout=30)]
    for p in procs:
        p.join()
    assert len(got) == 80 and len(set(got)) == 80 and "10.77.0.1" not in got
    held = ipam.members("br")
    assert len(held) == 80
    ip, holder = held[0]
    ipam.release("br", ip, "someone else")  # not the holder: kept
    assert len(ipam.members("br")) == 80
    ipam.release("br", ip, holder.id)
    assert len(ipam.members("br")) == 79
    # round robin: the next one is after the last given, not the one just freed
    nxt = ipam.allocate("br", "10.77.0.0/24", "10.77.0.1", ipam.Holder("f" * 64, "n", "/"))
    assert nxt != ip
    with pytest.raises(Exception, match="no available IPv4 addresses"):
        for i in range(300):
            ipam.allocate("br", "10.77.0.0/24", "10.77.0.1", ipam.Holder(f"{i:064x}", "", ""))


# ------------------------------------------------------------------------- proxy
def test_proxy_relays_tcp_and_udp() -> None:
    """PortProxy in a selector loop (the monitor's, here a thread's) between loopback
    sockets: a 4 MB upload with half-close through TCP, a datagram round trip through UDP,
    and a refused upstream closing the client's connection."""
    upstream_udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    upstream_udp.bind(("127.0.0.1", 0))
    upstream_tcp = socket.create_server(("127.0.0.1", 0))
    closed = socket.create_server(("127.0.0.1", 0))
    refused_addr = closed.getsockname()
    closed.close()

    def echo_udp() -> None:
        data, addr = upstream_udp.recvfrom(100)
        upstream_udp.sendto(b"echo:" + data, addr)

    def count_tcp() -> None:
        conn, _ = upstream_tcp.accept()
        total = 0
        while chunk := conn.recv(65536):
            total += len(chunk)
        conn.sendall(b"got %d" % total)
        conn.close()

    sel = selectors.DefaultSelector()
    host_udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    host_udp.bind(("127.0.0.1", 0))
    host_tcp = socket.create_server(("127.0.0.1", 0))
    host_bad = socket.create_server(("127.0.0.1", 0))
    proxies = [PortProxy(sel, host_udp, "udp", upstream_udp.getsockname()),
               PortProxy(sel, host_tcp, "tcp", upstream_tcp.getsockname()),
               PortProxy(sel, host_bad, "tcp", refused_addr)]
    for p in proxies:
        p.start()
    done = threading.Event()

    def loop() -> None:
        while not done.is_set():
            for key, mask in sel.select(0.05):
                key.data[1](mask)

    threads = [threading.Thread(target=f, daemon=True) for f in (echo_udp, count_tcp, loop)]
    for t in threads:
        t.start()
    with contextlib.ExitStack() as stack:
        stack.callback(upstream_udp.close)
        stack.callback(upstream_tcp.close)
        for p in proxies:
            stack.callback(p.close)
        # callbacks run last first: the loop stops before the proxies close
        stack.callback(lambda: (done.set(), threads[2].join(5)))
        client = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
        client.settimeout(5)
        client.sendto(b"hi", host_udp.getsockname())
        assert client.recvfrom(100)[0] == b"echo:hi"
        conn = stack.enter_context(socket.create_connection(host_tcp.getsockname(),
                                                            timeout=10))
        sender = threading.Thread(target=lambda: (conn.sendall(b"x" * (4 << 20)),
                                                  conn.shutdown(socket.SHUT_WR)))
        sender.start()
        reply = b""
        while chunk := conn.recv(65536):
            reply += chunk
        sender.join()
        assert reply == b"got %d" % (4 << 20)
        bad = stack.enter_context(socket.create_connection(host_bad.getsockname(), timeout=5))
        assert bad.recv(10) == b""  # the proxy closes it: nothing listens upstream


def test_aliases_are_host_names() -> None:
    from shale.network.config import check_aliases

    check_aliases(["web", "db-1.internal", "_x"])
    for bad in ("a b", "x\n127.0.0.1 evil", "", "-x"):
        with pytest.raises(InvalidArgument, match="invalid network alias"):
            check_aliases([bad])
