"""``--add-host HOST:IP`` (run, create, build's RUN steps): entries after the localhost
block of /etc/hosts, as docker 20.10 writes them; ``host-gateway`` is the host's address on
the container's network; bad values fail before anything is made."""

from __future__ import annotations

import json
from pathlib import Path

from container_fixtures import (  # noqa: F401 (fixtures)
    Shale,
    bb_tar_fixture,
    needs_root,
    sh1_fixture,
)

pytestmark = needs_root


def _tail(text: str, n: int) -> list[str]:
    return text.splitlines()[-n:]


def test_run_add_host_on_each_network_mode(sh1: Shale) -> None:
    out = sh1.ok("run", "--rm", "--add-host", "db:10.1.2.3", "--add-host", "v6=::1",
                 "--add-host", "gw:host-gateway", "bb", "cat", "/etc/hosts")
    lines = out.splitlines()
    assert lines[:1] == ["127.0.0.1\tlocalhost"]
    assert lines[6:8] == ["10.1.2.3\tdb", "::1\tv6"]
    gw_ip, gw = lines[8].split("\t")
    assert gw == "gw" and gw_ip.endswith(".1")  # the bridge's gateway: the host
    own_ip, own = lines[9].split("\t")
    assert len(own) == 12
    bridge = json.loads(sh1.ok("network", "inspect", "bridge"))[0]
    assert bridge["IPAM"]["Config"][0]["Gateway"] == gw_ip
    assert own_ip.split(".")[:2] == gw_ip.split(".")[:2]
    host = sh1.ok("run", "--rm", "--network", "host", "--add-host", "db:10.1.2.3", "bb",
                  "cat", "/etc/hosts")
    assert host == Path("/etc/hosts").read_text() + "10.1.2.3\tdb\n"
    none = sh1.ok("run", "--rm", "--network", "none", "--add-host", "db:10.1.2.3", "bb",
                  "cat", "/etc/hosts")
    assert "10.1.2.3\tdb" in none.splitlines()
    cid = sh1.ok("create", "--add-host", "a:1.1.1.1", "bb", "true").strip()
    data = json.loads(sh1.ok("inspect", cid))[0]
    assert data["HostConfig"]["ExtraHosts"] == ["a:1.1.1.1"]
    sh1.ok("rm", cid)


def test_bad_add_host_values(sh1: Shale) -> None:
    for value, msg in (("nohost", 'bad format for add-host: "nohost"'),
                       ("x:1.2.3", 'invalid IP address in add-host: "1.2.3"')):
        res = sh1("run", "--rm", "--add-host", value, "bb", "true")
        assert res.code == 125 and msg in res.err
    assert sh1.ok("ps", "-aq") == ""


def test_build_run_steps_get_hosts_and_limits(sh1: Shale, tmp_path: Path) -> None:
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text(
        "FROM bb\nRUN grep db /etc/hosts > /h; ulimit -n > /u; (cat /sys/fs/cgroup/memory/"
        "memory.limit_in_bytes || cat /sys/fs/cgroup/memory.max) > /m 2>/dev/null\n")
    sh1.ok("build", "-q", "-t", "hb", "--add-host", "db:10.9.9.9", "-m", "64m", "--ulimit",
           "nofile=1024:1024", "--cache-from", "x", "--load", str(ctx))
    assert sh1.ok("run", "--rm", "hb", "cat", "/h", "/u", "/m") == \
        "10.9.9.9\tdb\n1024\n67108864\n"
    # not in the image, and not in the cache key (docker's neither)
    assert "10.9.9.9" not in sh1.ok("run", "--rm", "hb", "cat", "/etc/hosts")
    again = sh1.ok("build", str(ctx))
    assert "Using cache" in again
    res = sh1("build", "--add-host", "bad", str(ctx))
    assert res.code == 1 and "bad format for add-host" in res.err
