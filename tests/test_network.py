"""Bridge networking on this machine (root): the default bridge ``shale0``, user-defined
networks, published ports (the monitor's proxy on 127.0.0.1, iptables DNAT from a network
namespace the test makes), ``--network host|none|container:``, teardown and the crash
sweep. The tests talk only to loopback and to namespaces they made; the one test that
reaches Debian's mirror through the NAT skips when the host itself cannot.

Every container, user network and namespace a test makes is removed at teardown; the
default bridge stays, as docker0 does.
"""

from __future__ import annotations

import json
import os
import random
import re
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from container_fixtures import (  # noqa: F401 (fixtures)
    Shale,
    bb_tar_fixture,
    needs_root,
    sh1_fixture,
    shale_fixture,
)

from shale.network import ipam
from shale.network.netlink import Netlink

pytestmark = [*needs_root, pytest.mark.skipif(
    subprocess.run(["sh", "-c", "command -v iptables-restore"], capture_output=True)
    .returncode != 0, reason="needs iptables")]

HTTPD = "mkdir -p /www && echo hello from $(hostname) > /www/index.html && " \
        "exec httpd -f -p 80 -h /www"


@pytest.fixture(name="net")
def net_fixture(sh1: Shale) -> Iterator[Shale]:
    """sh1, and the user networks a test made removed after its containers."""
    yield sh1
    sh1.cleanup()
    sh1.cli("network", "prune", "-f")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def http_get(port: int, host: str = "127.0.0.1", timeout: float = 10) -> str:
    """GET / , retried while the server in the container is starting."""
    end = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"http://{host}:{port}/", timeout=3) as r:
                body: bytes = r.read()
                return body.decode()
        except OSError:
            if time.monotonic() > end:
                raise
            time.sleep(0.05)


def artifacts(cid: str) -> dict[str, list[str]]:
    """What the host holds for container ``cid``'s network."""
    pins = sorted(n for n in os.listdir(ipam.NETNS_DIR) if n.startswith(cid)) \
        if ipam.NETNS_DIR.exists() else []
    ips = [f"{b}:{ip}" for b in ipam.bridges() for ip, h in ipam.members(b) if h.id == cid]
    rules = [ln for ln in subprocess.run(["iptables-save"], capture_output=True, text=True,
                                         check=True).stdout.splitlines() if cid in ln]
    with Netlink() as nl:
        links = [n for n in nl.links() if n.startswith(f"shv{cid[:10]}")]
    with open("/proc/self/mountinfo") as f:
        mounts = [ln.split()[4] for ln in f if cid in ln.split()[4]]
    return {"pins": pins, "ips": ips, "rules": rules, "links": links, "mounts": mounts}


def assert_gone(cid: str, timeout: float = 3.0) -> None:
    """Nothing left: the veth pairs go with the namespace, in the kernel's own time."""
    end = time.monotonic() + timeout
    while True:
        left = artifacts(cid)
        if not any(left.values()):
            return
        assert time.monotonic() < end, left
        time.sleep(0.02)


def ctr_ip(sh: Shale, name: str, network: str = "bridge") -> str:
    ip: str = sh.inspect(name)["NetworkSettings"]["Networks"][network]["IPAddress"]
    assert re.fullmatch(r"\d+\.\d+\.\d+\.\d+", ip), ip
    return ip


# ------------------------------------------------------------------------- publishing
def test_published_httpd_answers_on_loopback(shale: Shale) -> None:
    """Both runtimes: 127.0.0.1:P (proxy) and 0.0.0.0:Q (proxy for local connections),
    docker's shapes in inspect, ps and port; the address, rules and ports go at stop."""
    p1, p2 = free_port(), free_port()
    cid = shale.detach("--name", "web", "-p", f"127.0.0.1:{p1}:80", "-p", f"{p2}:80",
                       "bb", "sh", "-c", HTTPD)
    assert http_get(p1) == f"hello from {cid[:12]}\n"
    assert http_get(p2) == f"hello from {cid[:12]}\n"
    info = shale.inspect("web")
    assert info["HostConfig"]["PortBindings"] == {
        "80/tcp": [{"HostIp": "127.0.0.1", "HostPort": str(p1)},
                   {"HostIp": "", "HostPort": str(p2)}]}
    assert info["Config"]["ExposedPorts"] == {"80/tcp": {}}
    ns = info["NetworkSettings"]
    assert ns["Ports"] == {"80/tcp": [{"HostIp": "127.0.0.1", "HostPort": str(p1)},
                                      {"HostIp": "0.0.0.0", "HostPort": str(p2)}]}
    bridge = ns["Networks"]["bridge"]
    assert ns["IPAddress"] == bridge["IPAddress"] and ns["Gateway"] == bridge["Gateway"]
    octets = [int(x) for x in bridge["IPAddress"].split(".")]
    assert bridge["MacAddress"] == "02:42:" + ":".join(f"{x:02x}" for x in octets)
    assert ns["SandboxKey"] == f"/run/shale/netns/{cid}" and len(ns["SandboxID"]) == 64
    assert set(bridge) == {"IPAMConfig", "Links", "Aliases", "NetworkID", "EndpointID",
                           "Gateway", "IPAddress", "IPPrefixLen", "IPv6Gateway",
                           "GlobalIPv6Address", "GlobalIPv6PrefixLen", "MacAddress",
                           "DriverOpts"}
    ports = shale.ok("ps", "--format", "{{.Ports}}|{{.Networks}}").strip()
    assert ports == f"0.0.0.0:{p2}->80/tcp, 127.0.0.1:{p1}->80/tcp|bridge"
    assert shale.ok("port", "web").splitlines() == sorted(
        [f"80/tcp -> 0.0.0.0:{p2}", f"80/tcp -> 127.0.0.1:{p1}"])
    shale.ok("stop", "-t", "1", "web")
    stopped = shale.inspect("web")["NetworkSettings"]
    assert stopped["Ports"] == {} and stopped["Networks"]["bridge"]["IPAddress"] == ""
    assert shale.ok("port", "web") == ""
    with socket.socket() as s:  # the host port is free again (no listener holds it)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", p1))
        s.listen()
    assert_gone(cid)


def test_random_port_publish_all_and_port_verb(sh1: Shale) -> None:
    cid = sh1.detach("-p", "80", "--expose", "81", "--expose", "90-91/udp", "bb", "sh", "-c",
                     HTTPD)
    host = sh1.ok("port", cid, "80").strip()
    assert re.fullmatch(r"0\.0\.0\.0:\d+", host), host
    assert http_get(int(host.split(":")[1])) == f"hello from {cid[:12]}\n"
    res = sh1("port", cid, "81")
    assert res.code == 1 and f"No public port '81' published for {cid}" in res.err
    assert sh1.ok("ps", "--format", "{{.Ports}}").strip() == \
        f"81/tcp, 90-91/udp, {host}->80/tcp"
    cid2 = sh1.detach("-P", "--expose", "80", "bb", "sh", "-c", HTTPD)
    ports = sh1.inspect(cid2)["NetworkSettings"]["Ports"]
    assert list(ports) == ["80/tcp"] and ports["80/tcp"][0]["HostIp"] == "0.0.0.0"
    assert http_get(int(ports["80/tcp"][0]["HostPort"])).startswith("hello")
    assert sh1.inspect(cid2)["HostConfig"]["PublishAllPorts"] is True


def test_port_taken_fails_first_and_leaves_nothing(sh1: Shale) -> None:
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        port = taken.getsockname()[1]
        res = sh1.proc("run", "-d", "--name", "late", "-p", f"{port}:80", "bb", "true")
        assert res.returncode == 125, res
        assert f"Bind for 0.0.0.0:{port} failed: port is already allocated" in res.stderr
        cid = sh1.inspect("late")["Id"]
        assert sh1.state("late")["Status"] == "created"  # docker keeps it, never started
        assert not any(artifacts(cid).values()), artifacts(cid)
        res = sh1.proc("run", "--rm", "--name", "gone", "-p", f"{port}:80", "bb", "true")
        assert res.returncode == 125 and "port is already allocated" in res.stderr
        assert sh1("inspect", "gone").code == 1  # --rm: removed, as docker
    assert sh1.proc("start", "late").returncode == 0  # the port is free now


def test_dnat_from_another_namespace(sh1: Shale) -> None:
    """Traffic that arrives from elsewhere (here: a namespace the test makes, on a veth
    pair of its own) goes through the iptables DNAT, not the proxy."""
    port = free_port()
    cid = sh1.detach("-p", f"{port}:80", "bb", "sh", "-c", HTTPD)
    http_get(port)
    ns, host_if = f"shaletest{os.getpid()}", f"stv{os.getpid() % 100000}"
    net = f"10.254.{os.getpid() % 250}"  # two test runs at once get two subnets
    sh = ["sh", "-c", f"""set -e
        ip netns add {ns}
        ip link add {host_if} type veth peer name eth0 netns {ns}
        ip addr add {net}.1/30 dev {host_if}
        ip link set {host_if} up
        ip -n {ns} addr add {net}.2/30 dev eth0
        ip -n {ns} link set eth0 up
        ip -n {ns} link set lo up"""]
    try:
        subprocess.run(sh, check=True, capture_output=True)
        out = subprocess.run(["ip", "netns", "exec", ns, "busybox", "timeout", "5", "busybox",
                              "wget", "-q", "-O-", f"http://{net}.1:{port}/"],
                             capture_output=True, text=True, timeout=20)
        assert out.stdout == f"hello from {cid[:12]}\n", out
    finally:
        subprocess.run(["ip", "link", "del", host_if], capture_output=True)
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)


# ------------------------------------------------------------------------- containers talk
def test_default_bridge_by_address_not_by_name(shale: Shale) -> None:
    shale.detach("--name", "srv", "bb", "sh", "-c", HTTPD)
    ip = ctr_ip(shale, "srv")
    out = shale.ok("run", "--rm", "bb", "sh", "-c",
                   f"for i in 1 2 3 4 5 6 7 8 9 10; do timeout 3 wget -q -O- http://{ip}/ && "
                   "break; sleep 0.2; done; cat /etc/hosts")
    assert out.startswith("hello from ")
    assert "srv" not in out.split("\n", 1)[1]  # the default bridge resolves no names
    net_io = shale.ok("stats", "--no-stream", "--format", "{{.NetIO}}", "srv").strip()
    assert re.fullmatch(r"[\d.]+k?B / [\d.]+k?B", net_io) and not net_io.startswith("0B"), \
        net_io  # stats counts the container's own interfaces
    lines = out.strip().splitlines()
    assert re.fullmatch(r"\d+\.\d+\.\d+\.\d+\t[0-9a-f]{12}", lines[-1])


def test_user_network_by_name_alias_and_live_connect(net: Shale) -> None:
    for _ in range(10):  # a /24 no other test run on this host holds right now
        octet = random.randrange(1, 255)
        res = net("network", "create", "--subnet", f"10.231.{octet}.0/24", "--label", "t=1",
                  "tnet")
        if res.code == 0:
            break
        assert "Pool overlaps" in res.err, res
    info = json.loads(net.ok("network", "inspect", "tnet"))[0]
    assert info["IPAM"]["Config"] == [{"Subnet": f"10.231.{octet}.0/24",
                                       "Gateway": f"10.231.{octet}.1"}]
    assert info["Driver"] == "bridge" and info["Labels"] == {"t": "1"}
    web = net.detach("--name", "web", "--network", "tnet", "--network-alias", "www", "bb",
                     "sh", "-c", HTTPD)
    wget = "for i in 1 2 3 4 5 6 7 8 9 10; do timeout 3 wget -q -O- http://{}/ && break; " \
        "sleep 0.2; done"
    for name in ("web", "www", web[:12]):
        out = net.ok("run", "--rm", "--network", "tnet", "bb", "sh", "-c", wget.format(name))
        assert out == f"hello from {web[:12]}\n", name
    assert ctr_ip(net, "web", "tnet").startswith(f"10.231.{octet}.")
    endpoint = net.inspect("web")["NetworkSettings"]["Networks"]["tnet"]
    assert endpoint["Aliases"] == [web[:12], "www"]
    assert endpoint["Gateway"] == f"10.231.{octet}.1"
    members = json.loads(net.ok("network", "inspect", "tnet"))[0]["Containers"]
    assert members[web]["Name"] == "web" and members[web]["IPv4Address"].endswith("/24")
    # a container on the default bridge joins tnet live: eth1, and the names
    other = net.detach("--name", "other", "bb", "sleep", "60")
    net.ok("network", "connect", "tnet", "other")
    out = net.proc("exec", "other", "sh", "-c", "ip -o -4 addr show eth1; " +
                   wget.format("web")).stdout
    assert f"10.231.{octet}." in out and out.endswith(f"hello from {web[:12]}\n")
    assert "other" in net.proc("exec", "web", "cat", "/etc/hosts").stdout  # in place
    res = net("network", "rm", "tnet")
    assert res.code == 1 and "has active endpoints" in res.err
    net.ok("network", "disconnect", "tnet", "other")
    assert net.proc("exec", "other", "ip", "link", "show", "eth1").returncode != 0
    assert "other" not in net.proc("exec", "web", "cat", "/etc/hosts").stdout
    assert list(net.inspect(other)["NetworkSettings"]["Networks"]) == ["bridge"]
    net.ok("rm", "-f", "web", "other")
    bridge_name = f"shale-{info['Id'][:9]}"
    with Netlink() as nl:
        assert nl.link_index(bridge_name)
    assert net.ok("network", "rm", "tnet") == "tnet\n"
    with Netlink() as nl:
        assert not nl.link_index(bridge_name)
    assert "shale-net:" + bridge_name not in subprocess.run(
        ["iptables-save"], capture_output=True, text=True).stdout


def test_container_network_mode_and_none(shale: Shale) -> None:
    a = shale.detach("--name", "a", "bb", "sh", "-c", HTTPD)
    ip = ctr_ip(shale, "a")
    out = shale.ok("run", "--rm", "--network", "container:a", "bb", "sh", "-c",
                   "ip -o -4 addr show eth0; hostname; for i in 1 2 3 4 5 6 7 8 9 10; do "
                   "timeout 3 wget -q -O- http://127.0.0.1/ && break; sleep 0.2; done")
    assert f"inet {ip}/" in out and f"\n{a[:12]}\nhello from {a[:12]}\n" in out
    assert shale.ok("run", "--rm", "--network", "none", "bb", "sh", "-c",
                    "ls /sys/class/net") == "lo\n"
    shale.ok("create", "--name", "idle", "bb", "true")
    res = shale.proc("run", "--rm", "--network", "container:idle", "bb", "true")
    assert res.returncode == 125 and "cannot join network of a non running container" \
        in res.stderr
    res = shale.proc("run", "--rm", "--network", "nosuch", "bb", "true")
    assert res.returncode == 125 and "network nosuch not found" in res.stderr
    host = shale.inspect(shale.ok("create", "--network", "host", "bb", "true").strip())
    assert list(host["NetworkSettings"]["Networks"]) == ["host"]


# ------------------------------------------------------------------------- lifecycle
def test_rm_and_crash_leave_nothing(sh1: Shale) -> None:
    port = free_port()
    cid = sh1.detach("-p", f"{port}:80", "bb", "sh", "-c", HTTPD)
    http_get(port)
    held = artifacts(cid)
    assert held["pins"] and held["ips"] and held["rules"] and held["links"] and \
        held["mounts"], held
    sh1.ok("rm", "-f", cid)
    assert_gone(cid)
    # kill -9 of the monitor: the next command reconciles, the port and address are free
    cid = sh1.detach("-p", f"{port}:80", "bb", "sh", "-c", HTTPD)
    http_get(port)
    state = json.loads((sh1.root / "containers" / cid / "state.json").read_text())
    os.kill(state["MonitorPid"], 9)
    time.sleep(0.1)
    # (any shale command sweeps: a background removal left by an earlier test on this root
    # may already have done it, so only the end state is asserted)
    sh1.ok("ps", "-a")
    assert_gone(cid)
    assert sh1.state(cid)["Status"] == "exited"
    again = sh1.detach("-p", f"{port}:80", "bb", "sh", "-c", HTTPD)
    assert http_get(port) == f"hello from {again[:12]}\n"


def test_restart_policy_keeps_the_network(sh1: Shale) -> None:
    cid = sh1.detach("--restart", "on-failure:2", "bb", "sh", "-c",
                     "ip -o -4 addr show eth0 >> /proc/1/fd/1; sleep 0.3; exit 3")
    assert sh1.ok("wait", cid) == "3\n"  # after the last restart: its monitor is gone
    assert sh1.inspect(cid)["RestartCount"] == 2
    lines = sh1.ok("logs", cid).splitlines()
    assert len(lines) == 3 and len({ln.split()[3] for ln in lines}) == 1  # one address
    assert_gone(cid)


def test_concurrent_runs_get_distinct_addresses(sh1: Shale) -> None:
    def run(i: int) -> str:
        res = sh1.proc("run", "-d", "--name", f"c{i}", "bb", "sleep", "60")
        assert res.returncode == 0, res
        return res.stdout.strip()

    with ThreadPoolExecutor(6) as pool:
        ids = list(pool.map(run, range(6)))
    ips = [ctr_ip(sh1, cid) for cid in ids]
    assert len(set(ips)) == 6, ips


def test_network_verbs(net: Shale) -> None:
    out = net.ok("network", "ls").splitlines()
    assert out[0].split() == ["NETWORK", "ID", "NAME", "DRIVER", "SCOPE"]
    assert [ln.split()[1:] for ln in out[1:]] == [["bridge", "bridge", "local"],
                                                  ["host", "host", "local"],
                                                  ["none", "null", "local"]]
    nid = net.ok("network", "create", "n1").strip()
    assert len(nid) == 64
    res = net("network", "create", "n1")
    assert res.code == 1 and "network with name n1 already exists" in res.err
    sub = json.loads(net.ok("network", "inspect", "n1"))[0]["IPAM"]["Config"][0]["Subnet"]
    res = net("network", "create", "--subnet", sub, "n2")
    assert res.code == 1 and "Pool overlaps" in res.err
    assert net.ok("network", "ls", "-q", "--filter", "name=n1") == nid[:12] + "\n"
    assert net.ok("network", "ls", "--filter", "type=custom", "--format",
                  "{{.Name}} {{.Driver}}") == "n1 bridge\n"
    for name in ("bridge", "host", "none"):
        res = net("network", "rm", name)
        assert res.code == 1 and f"{name} is a pre-defined network and cannot be removed" \
            in res.err
    bridge = json.loads(net.ok("network", "inspect", "bridge"))[0]
    assert bridge["Options"]["com.docker.network.bridge.name"] == "shale0"
    assert net.ok("network", "prune", "-f") == "Deleted Networks:\nn1\n\n"
    res = net("network", "inspect", "n1")
    assert res.code == 1 and "network n1 not found" in res.err


def test_build_runs_on_the_bridge(sh1: Shale, tmp_path: Path) -> None:
    (tmp_path / "Dockerfile").write_text("FROM bb\nRUN ip -o -4 addr show eth0 && "
                                         "ls /sys/class/net\n")
    out = sh1.ok("build", "-q", "--no-cache", str(tmp_path))
    assert out.startswith("sha256:")
    res = sh1.proc("build", "--no-cache", str(tmp_path))
    assert re.search(r"eth0\s+inet \d+\.\d+\.\d+\.\d+/\d+", res.stdout), res.stdout
    res = sh1.proc("build", "--no-cache", "--network", "none", str(tmp_path))
    assert res.returncode != 0  # no eth0


def _host_reaches_mirror() -> bool:
    try:
        with socket.create_connection(("deb.debian.org", 80), timeout=3):
            return True
    except OSError:
        return False


def test_nat_reaches_the_debian_mirror(sh1: Shale) -> None:
    if not _host_reaches_mirror():
        pytest.skip("the host cannot reach deb.debian.org")
    # (busybox 1.35's wget -T crashes: busybox's timeout instead)
    out = sh1.ok("run", "--rm", "bb", "timeout", "20", "wget", "-q", "-O", "/dev/null",
                 "http://deb.debian.org/debian/dists/bookworm/Release.gpg")
    assert out == ""
