"""Resource limits (issue 8): the run/create flags, docker's checks and warnings, the OCI
``linux.resources`` they become, the cgroup files both runtimes write, OOM (exit 137 and
``OOMKilled``), a pids limit against a fork bomb, and ``shale stats``.

The file writing for v1 and v2 is checked on fake cgroup trees (this host is hybrid:
v1 controllers); real containers (root, overlay, both runtimes where cheap) check the rest.
"""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

import pytest
from container_fixtures import (  # noqa: F401 (fixtures)
    Shale,
    bb_tar_fixture,
    needs_root,
    sh1_fixture,
    shale_fixture,
)

from shale.cli.run_cmds import ram_in_bytes
from shale.cli.stats_cmds import Reading, bytes_size, row
from shale.container_ops import RunOptions
from shale.errors import InvalidArgument
from shale.limits import parse_uint_list, resource_config
from shale.runtime import cgroups
from shale.runtime.cgroups import Cgroup, Layout, Support, host_support, shares_to_weight
from shale.runtime.spec import SpecOptions, build_spec

ALL = Support(memory=True, swap=True, cpu_cfs=True, cpu_shares=True, cpuset=True, pids=True,
              cpus="0-1", mems="0")
MiB = 1 << 20


# ----------------------------------------------------------------- parsing and checks
def test_flag_values() -> None:
    assert ram_in_bytes("64m") == 64 * MiB and ram_in_bytes("64MB") == 64 * MiB
    assert ram_in_bytes("1.5g") == 3 << 29 and ram_in_bytes("512k") == 512 << 10
    assert ram_in_bytes("100") == 100 and ram_in_bytes("2 GiB") == 2 << 30
    for bad in ("x", "-1", "1q", "m", ""):
        with pytest.raises(ValueError, match="invalid size"):
            ram_in_bytes(bad)
    assert parse_uint_list("0-2,4") == {0, 1, 2, 4} and parse_uint_list("") == set()
    for bad in ("0-x", "2-1", "a", "1,", "-1"):
        with pytest.raises(ValueError, match="invalid format"):
            parse_uint_list(bad)


def _cfg(support: Support = ALL, **kw: object) -> tuple[dict[str, object], list[str]]:
    warnings: list[str] = []
    return resource_config(RunOptions(image="x", **kw), warnings, support), warnings  # type: ignore[arg-type]


def test_docker_checks_and_defaults() -> None:
    hc, warns = _cfg()
    assert hc == {"Memory": 0, "MemorySwap": 0, "NanoCpus": 0, "CpuShares": 0,
                  "CpusetCpus": "", "PidsLimit": None} and warns == []
    hc, _ = _cfg(memory=64 * MiB, nano_cpus=500_000_000, cpu_shares=512, cpuset_cpus="0",
                 pids_limit=50)
    assert hc == {"Memory": 64 * MiB, "MemorySwap": 128 * MiB, "NanoCpus": 500_000_000,
                  "CpuShares": 512, "CpusetCpus": "0", "PidsLimit": 50}
    assert _cfg(memory=64 * MiB, memory_swap=-1)[0]["MemorySwap"] == -1
    assert _cfg(cpu_shares=-5)[0]["CpuShares"] == 2
    assert _cfg(cpu_shares=10**6)[0]["CpuShares"] == 262144
    assert _cfg(pids_limit=-1)[0]["PidsLimit"] is None
    ncpu = len(os.sched_getaffinity(0))
    errors = [
        ({"memory": 4 * MiB}, "Minimum memory limit allowed is 6MB"),
        ({"memory": 64 * MiB, "memory_swap": 32 * MiB},
         "Minimum memoryswap limit should be larger than memory limit, see usage"),
        ({"memory_swap": 32 * MiB},
         "You should always set the Memory limit when using Memoryswap limit, see usage"),
        ({"nano_cpus": (ncpu + 1) * 10**9},
         f"Range of CPUs is from 0.01 to {ncpu}.00, as there are only {ncpu} CPUs available"),
        ({"nano_cpus": 10**6}, "Range of CPUs"),
        ({"cpuset_cpus": "7"}, "Requested CPUs are not available - requested 7, "
                               "available: 0-1"),
        ({"cpuset_cpus": "0-x"}, "Invalid value 0-x for cpuset cpus: invalid format: 0-x"),
    ]
    for kw, msg in errors:
        with pytest.raises(InvalidArgument, match=re.escape(msg)):
            _cfg(**kw)
    with pytest.raises(InvalidArgument, match="NanoCPUs can not be set"):
        _cfg(Support(), nano_cpus=10**9)


def test_missing_controllers_warn_and_drop() -> None:
    hc, warns = _cfg(Support(), memory=64 * MiB, cpu_shares=512, cpuset_cpus="0",
                     pids_limit=5)
    assert (hc["Memory"], hc["MemorySwap"], hc["CpuShares"], hc["CpusetCpus"],
            hc["PidsLimit"]) == (0, -1, 0, "", None)
    assert warns == [
        "Your kernel does not support memory limit capabilities or the cgroup is not mounted. "
        "Limitation discarded.",
        "Your kernel does not support CPU shares or the cgroup is not mounted. "
        "Shares discarded.",
        "Your kernel does not support cpuset or the cgroup is not mounted. Cpuset discarded.",
        "Your kernel does not support PIDs limit capabilities or the cgroup is not mounted. "
        "PIDs limit discarded."]
    hc, warns = _cfg(Support(memory=True), memory=64 * MiB)
    assert (hc["Memory"], hc["MemorySwap"]) == (64 * MiB, -1)
    assert warns == ["Your kernel does not support swap limit capabilities or the cgroup is "
                     "not mounted. Memory limited without swap."]


def test_spec_resources() -> None:
    plain = build_spec(SpecOptions(args=["true"]))["linux"]["resources"]
    assert set(plain) == {"devices"}
    res = build_spec(SpecOptions(args=["true"], memory=64 * MiB, memory_swap=128 * MiB,
                                 nano_cpus=1_500_000_000, cpu_shares=512, cpuset_cpus="0",
                                 pids_limit=10))["linux"]["resources"]
    assert res["memory"] == {"limit": 64 * MiB, "swap": 128 * MiB}
    assert res["cpu"] == {"shares": 512, "quota": 150000, "period": 100000, "cpus": "0"}
    assert res["pids"] == {"limit": 10} and res["devices"]
    # unlimited swap is the cgroup's default: docker writes nothing for it
    res = build_spec(SpecOptions(args=["true"], memory=64 * MiB, memory_swap=-1))
    assert res["linux"]["resources"]["memory"] == {"limit": 64 * MiB}


# ----------------------------------------------------------------- cgroup files (fakes)
RESOURCES = {"memory": {"limit": 64 * MiB, "swap": 128 * MiB},
             "cpu": {"shares": 512, "quota": 50000, "period": 100000, "cpus": "0"},
             "pids": {"limit": 10}}
V1_FILES = {"memory": ["memory.limit_in_bytes", "memory.memsw.limit_in_bytes"],
            "cpu": ["cpu.shares", "cpu.cfs_quota_us", "cpu.cfs_period_us"],
            "cpuset": ["cpuset.cpus", "cpuset.mems"], "pids": ["pids.max"]}


def _fake_v1(tmp_path: Path) -> Layout:
    v1 = {}
    for ctl, files in V1_FILES.items():
        mnt = tmp_path / ctl
        v1[ctl] = str(mnt)
        for d in (mnt, mnt / "shale", mnt / "shale/c1"):
            d.mkdir(parents=True, exist_ok=True)
            for f in files:
                (d / f).write_text("")
    (tmp_path / "cpuset/cpuset.cpus").write_text("0-3\n")
    (tmp_path / "cpuset/cpuset.mems").write_text("0\n")
    (tmp_path / "cpuset/cpuset.effective_cpus").write_text("0-3\n")
    return Layout("v1", v1, None)


def test_v1_comounted_and_named_hierarchies(tmp_path: Path) -> None:
    layout = cgroups.parse_mountinfo(
        f"27 25 0:24 / {tmp_path}/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct\n"
        f"29 25 0:26 / {tmp_path}/systemd rw - cgroup cgroup rw,xattr,name=systemd\n")
    assert layout.v1_mounts == (f"{tmp_path}/cpu,cpuacct", f"{tmp_path}/systemd")
    cg = Cgroup("/shale/c1", layout)
    cg.create()
    d = tmp_path / "cpu,cpuacct/shale/c1"
    assert cg.dirs() == [d] and cg.mounts() == [("cpu,cpuacct", d)]  # listed once
    (tmp_path / "systemd/shale/c1").mkdir(parents=True)  # as runc makes it
    cg.remove()
    assert not d.exists() and not (tmp_path / "systemd/shale/c1").exists()


def test_apply_v1(tmp_path: Path) -> None:
    layout = _fake_v1(tmp_path)
    cg = Cgroup("/shale/c1", layout)
    cg.create()  # copies cpuset.cpus/mems down, level by level
    for level in ("shale", "shale/c1"):
        assert (tmp_path / "cpuset" / level / "cpuset.cpus").read_text() == "0-3"
        assert (tmp_path / "cpuset" / level / "cpuset.mems").read_text() == "0"
    cg.apply_resources(RESOURCES)
    got = {f: (tmp_path / ctl / "shale/c1" / f).read_text()
           for ctl, files in V1_FILES.items() for f in files}
    assert got == {"memory.limit_in_bytes": str(64 * MiB),
                   "memory.memsw.limit_in_bytes": str(128 * MiB), "cpu.shares": "512",
                   "cpu.cfs_quota_us": "50000", "cpu.cfs_period_us": "100000",
                   "cpuset.cpus": "0", "cpuset.mems": "0", "pids.max": "10"}
    sup = host_support(layout)
    assert (sup.memory, sup.swap, sup.cpu_cfs, sup.cpu_shares, sup.cpuset, sup.pids) == \
        (True,) * 6 and sup.cpus == "0-3"
    (tmp_path / "memory/memory.memsw.limit_in_bytes").unlink()
    assert not host_support(layout).swap
    assert not host_support(Layout("v1", {}, None)).memory


def test_apply_v2(tmp_path: Path) -> None:
    names = ("memory.max", "memory.swap.max", "cpu.max", "cpu.weight", "cpuset.cpus",
             "pids.max")
    (tmp_path / "cgroup.controllers").write_text("cpuset cpu io memory pids\n")
    (tmp_path / "cgroup.subtree_control").write_text("")
    (tmp_path / "shale").mkdir()
    (tmp_path / "shale/cgroup.controllers").write_text("cpuset cpu io memory pids\n")
    (tmp_path / "shale/cgroup.subtree_control").write_text("")
    d = tmp_path / "shale/c1"
    d.mkdir()
    for n in names:
        (d / n).write_text("")
    layout = Layout("v2", {}, str(tmp_path))
    cg = Cgroup("/shale/c1", layout)
    cg.create()
    cg.apply_resources(RESOURCES)
    assert {n: (d / n).read_text() for n in names} == {
        "memory.max": str(64 * MiB), "memory.swap.max": str(64 * MiB),
        "cpu.max": "50000 100000", "cpu.weight": "20", "cpuset.cpus": "0", "pids.max": "10"}
    assert shares_to_weight(1024) == 39 and shares_to_weight(2) == 1
    assert shares_to_weight(262144) == 10000 and shares_to_weight(1) == 1
    cg.apply_resources({"memory": {"limit": 64 * MiB, "swap": -1}})
    assert (d / "memory.swap.max").read_text() == "max"
    sup = host_support(layout)
    assert sup.memory and sup.cpu_cfs and sup.cpuset and sup.pids


def test_usage_readers(tmp_path: Path) -> None:
    v1 = {c: str(tmp_path / c) for c in ("cpuacct", "memory", "pids", "blkio")}
    for c in v1:
        (tmp_path / c / "x").mkdir(parents=True)
    base = tmp_path
    (base / "cpuacct/x/cpuacct.usage").write_text("123456789\n")
    (base / "memory/x/memory.usage_in_bytes").write_text("4096000\n")
    (base / "memory/x/memory.limit_in_bytes").write_text(f"{64 * MiB}\n")
    (base / "memory/x/memory.stat").write_text("cache 10\ntotal_inactive_file 96000\n")
    (base / "pids/x/pids.current").write_text("3\n")
    (base / "blkio/x/blkio.throttle.io_service_bytes_recursive").write_text(
        "8:0 Read 4096\n8:0 Write 8192\n8:0 Total 12288\nTotal 12288\n")
    u = Cgroup("/x", Layout("v1", v1, None)).usage()
    assert (u.cpu_ns, u.memory, u.memory_limit, u.inactive_file, u.pids, u.blk_read,
            u.blk_write) == (123456789, 4096000, 64 * MiB, 96000, 3, 4096, 8192)
    d = tmp_path / "v2/x"
    d.mkdir(parents=True)
    (d / "cpu.stat").write_text("usage_usec 1500\nuser_usec 1000\n")
    (d / "memory.current").write_text("2048\n")
    (d / "memory.max").write_text("max\n")
    (d / "pids.current").write_text("2\n")
    (d / "io.stat").write_text("8:0 rbytes=100 wbytes=200 rios=1 wios=2\n")
    u = Cgroup("/x", Layout("v2", {}, str(tmp_path / "v2"))).usage()
    assert (u.cpu_ns, u.memory, u.memory_limit, u.pids, u.blk_read, u.blk_write) == \
        (1_500_000, 2048, 0, 2, 100, 200)


def test_stats_numbers() -> None:
    assert [bytes_size(n) for n in (0, 1023, 1536, 64 * MiB, 23.54 * 1024**3)] == \
        ["0B", "1023B", "1.5KiB", "64MiB", "23.54GiB"]

    class C:
        id, short_id, name = "a" * 64, "a" * 12, "web"

    before = Reading(True, cpu_ns=0, system_ns=0)
    now = Reading(True, cpu_ns=10**9, system_ns=4 * 10**9, memory=16 * MiB,
                  limit=64 * MiB, net_rx=1234, net_tx=0, blk_read=0, blk_write=5_000_000,
                  pids=3)
    r = row("web", C(), before, now, trunc=True)  # type: ignore[arg-type]
    ncpu = len(os.sched_getaffinity(0))
    assert r == {"Container": "web", "ID": "a" * 12, "Name": "web",
                 "CPUPerc": f"{25.0 * ncpu:.2f}%", "MemUsage": "16MiB / 64MiB",
                 "MemPerc": "25.00%", "NetIO": "1.23kB / 0B", "BlockIO": "0B / 5MB",
                 "PIDs": "3"}
    stopped = row("x", C(), Reading(), Reading(), trunc=False)  # type: ignore[arg-type]
    assert (stopped["ID"], stopped["CPUPerc"], stopped["MemUsage"], stopped["MemPerc"],
            stopped["PIDs"]) == ("a" * 64, "0.00%", "0B / 0B", "0.00%", "0")


# ----------------------------------------------------------------- real containers
def _cg_file(cid: str, v1: tuple[str, str], v2: str) -> Path:
    cg = cgroups.for_container(cid)
    if cg.layout.mode == "v2":
        d = cg.v2_dir()
        assert d is not None
        return d / v2
    d = cg.v1_dir(v1[0])
    assert d is not None
    return d / v1[1]


def _cgroup_gone(cid: str) -> bool:
    """No directory left in any hierarchy (runc's name=systemd one included)."""
    cg = cgroups.for_container(cid)
    return not cg.exists() and not any(Path(m, "shale", cid).exists()
                                       for m in cg.layout.v1_mounts)


class TestContainers:
    pytestmark = needs_root

    def test_limits_in_cgroup_inspect_and_cleanup(self, shale: Shale) -> None:
        cid = shale.detach("-m", "64m", "--cpus", "0.5", "-c", "512", "--cpuset-cpus", "0",
                           "--pids-limit", "50", "bb", "sleep", "60")
        hc = shale.inspect(cid)["HostConfig"]
        assert {k: hc[k] for k in ("Memory", "MemorySwap", "NanoCpus", "CpuShares",
                                   "CpusetCpus", "PidsLimit")} == {
            "Memory": 64 * MiB, "MemorySwap": 128 * MiB, "NanoCpus": 500_000_000,
            "CpuShares": 512, "CpusetCpus": "0", "PidsLimit": 50}
        v2 = cgroups.host_layout().mode == "v2"
        want = [(("memory", "memory.limit_in_bytes"), "memory.max", str(64 * MiB)),
                (("pids", "pids.max"), "pids.max", "50"),
                (("cpuset", "cpuset.cpus"), "cpuset.cpus", "0")]
        if v2:
            want += [(("", ""), "cpu.max", "50000 100000"), (("", ""), "cpu.weight", "20"),
                     (("", ""), "memory.swap.max", str(64 * MiB))]
        else:
            want += [(("cpu", "cpu.cfs_quota_us"), "", "50000"),
                     (("cpu", "cpu.cfs_period_us"), "", "100000"),
                     (("cpu", "cpu.shares"), "", "512")]
            if host_support().swap:
                want.append((("memory", "memory.memsw.limit_in_bytes"), "", str(128 * MiB)))
        for v1, v2name, value in want:
            assert _cg_file(cid, v1, v2name).read_text().strip() == value, (v1, v2name)
        # the container sees its own limit and CPU set
        out = shale.proc("exec", cid, "grep", "Cpus_allowed_list", "/proc/self/status").stdout
        assert out.split() == ["Cpus_allowed_list:", "0"]
        shale.ok("rm", "-f", cid)
        assert _cgroup_gone(cid)

    def test_oom_kill(self, shale: Shale) -> None:
        res = shale("run", "--name", "oom", "-m", "8m", "--memory-swap", "8m", "bb",
                    "tail", "/dev/zero")
        assert res.code == 137, res
        st = shale.state("oom")
        assert (st["OOMKilled"], st["ExitCode"], st["Status"]) == (True, 137, "exited")
        cid = shale.inspect("oom")["Id"]
        assert _cgroup_gone(cid)  # the runtime's delete took it with the exit
        shale.ok("run", "--name", "fine", "-m", "8m", "bb", "true")
        assert shale.state("fine")["OOMKilled"] is False

    def test_pids_limit_stops_a_fork_bomb(self, shale: Shale) -> None:
        cid = shale.detach("--pids-limit", "10", "bb", "sh", "-c",
                           "b() { b | b & }; b; exec sleep 60")
        current = _cg_file(cid, ("pids", "pids.current"), "pids.current")
        events = _cg_file(cid, ("pids", "pids.events"), "pids.events")
        seen: list[int] = []
        end = time.monotonic() + 10
        while time.monotonic() < end and len(seen) < 20:
            seen.append(int(current.read_text()))
            if int(events.read_text().split()[1]) == 0:
                seen.clear()  # watch for a while once forks are being refused
            time.sleep(0.01)
        assert int(events.read_text().split()[1]) > 0, seen  # forks were refused
        assert 5 <= max(seen) <= 10, seen
        assert shale.state(cid)["Running"]  # PID 1 (sleep) is unharmed
        t = time.monotonic()
        shale.ok("rm", "-f", cid)
        assert time.monotonic() - t < 5 and _cgroup_gone(cid)

    def test_cpu_quota_throttles(self, sh1: Shale) -> None:
        cid = sh1.detach("--cpus", "0.1", "bb", "sh", "-c", "while :; do :; done")
        stat = _cg_file(cid, ("cpu", "cpu.stat"), "cpu.stat")
        end = time.monotonic() + 5
        while time.monotonic() < end:
            fields = dict(line.split() for line in stat.read_text().splitlines())
            if int(fields["nr_throttled"]) > 0:
                break
            time.sleep(0.05)
        assert int(fields["nr_throttled"]) > 0, fields
        sh1.ok("rm", "-f", cid)

    def test_flag_errors_and_warnings(self, sh1: Shale, monkeypatch: pytest.MonkeyPatch,
                                      ) -> None:
        cases = [(["-m", "4m"], "Error: Minimum memory limit allowed is 6MB\n"),
                 (["-m", "lots"], "Error: invalid argument \"lots\" for \"-m, --memory\" flag: "
                                  "invalid size: 'lots'\nSee 'shale create --help'.\n"),
                 (["--cpus", "x"], "Error: invalid argument \"x\" for \"--cpus\" flag: failed "
                                   "to parse x as a rational number\nSee 'shale create "
                                   "--help'.\n"),
                 (["--pids-limit", "x"], "Error: invalid argument \"x\" for \"--pids-limit\" "
                                         "flag: strconv.ParseInt: parsing \"x\": invalid "
                                         "syntax\nSee 'shale create --help'.\n")]
        for flags, err in cases:
            res = sh1("create", *flags, "bb", "true")
            assert (res.code, res.err) == (125, err), res
        assert sh1.ids() == []
        monkeypatch.setattr(cgroups, "host_support", lambda layout=None: Support(cpus="0"))
        res = sh1("run", "--rm", "-m", "64m", "--pids-limit", "5", "bb", "true")
        assert res.code == 0 and res.err.splitlines() == [
            "WARNING: Your kernel does not support memory limit capabilities or the cgroup is "
            "not mounted. Limitation discarded.",
            "WARNING: Your kernel does not support PIDs limit capabilities or the cgroup is "
            "not mounted. PIDs limit discarded."], res

    def test_stats(self, sh1: Shale, monkeypatch: pytest.MonkeyPatch) -> None:
        from shale.cli import stats_cmds

        monkeypatch.setattr(stats_cmds, "INTERVAL", 0.2)
        cid = sh1.detach("--name", "web", "-m", "64m", "bb", "sleep", "60")
        sh1.ok("create", "--name", "idle", "bb", "true")
        out = sh1.ok("stats", "--no-stream").splitlines()
        assert re.split(r"\s{2,}", out[0]) == ["CONTAINER ID", "NAME", "CPU %",
                                               "MEM USAGE / LIMIT", "MEM %", "NET I/O",
                                               "BLOCK I/O", "PIDS"]
        assert len(out) == 2  # running containers only
        cells = re.split(r"\s{2,}", out[1])
        assert cells[:2] == [cid[:12], "web"] and cells[7] == "1", cells
        assert re.fullmatch(r"\d+\.\d\d%", cells[2]) and cells[3].endswith(" / 64MiB")
        # NET I/O: the container's own namespace on the bridge (ARP and the like, if anything)
        assert re.fullmatch(r"\d+\.\d\d%", cells[4])
        assert re.fullmatch(r"[\d.]+k?B / [\d.]+k?B", cells[5]), cells
        assert re.fullmatch(r"\S+B / \S+B", cells[6])
        out = sh1.ok("stats", "--no-stream", "-a", "--no-trunc").splitlines()
        assert len(out) == 3 and any(line.startswith(cid + " ") for line in out)
        idle = next(line for line in out if "idle" in line)
        assert re.split(r"\s{2,}", idle)[2:] == ["0.00%", "0B / 0B", "0.00%", "0B / 0B",
                                                 "0B / 0B", "0"]
        data = json.loads(sh1.ok("stats", "--no-stream", "--format", "{{json .}}", "web"))
        assert sorted(data) == ["BlockIO", "CPUPerc", "Container", "ID", "MemPerc",
                                "MemUsage", "Name", "NetIO", "PIDs"]
        assert (data["Container"], data["Name"], data["PIDs"]) == ("web", "web", "1")
        assert sh1.ok("stats", "--no-stream", "--format", "{{.Name}}: {{.PIDs}}", "web",
                      "idle") == "web: 1\nidle: 0\n"
        res = sh1("stats", "--no-stream", "nosuch")
        assert (res.code, res.err) == (1, "Error: No such container: nosuch\n")
