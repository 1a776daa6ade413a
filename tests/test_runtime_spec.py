"""Pure parts of the runtime: config.json defaults, --user resolution, cgroup layouts, the
seccomp profile. No container is started here (see test_runtime.py for that)."""

from __future__ import annotations

import os
import resource
from pathlib import Path

import pytest

from shale.errors import InvalidArgument
from shale.runtime import exit_code, get_runtime
from shale.runtime.cgroups import Cgroup, device_rule, parse_mountinfo
from shale.runtime.seccomp import default_profile
from shale.runtime.spec import (
    DEFAULT_CAPS,
    DEFAULT_PATH,
    MASKED_PATHS,
    READONLY_PATHS,
    SpecOptions,
    build_spec,
    container_env,
    host_bounding_caps,
)
from shale.runtime.users import resolve, resolve_user

PASSWD = b"""root:x:0:0:root:/root:/bin/sh
daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin
# a comment
app:x:1000:1000:App:/home/app:/bin/sh
broken line
"""
GROUP = b"""root:x:0:
wheel:x:10:root,app
audio:x:29:app
app:x:1000:
staff:x:50:
"""


def allowed(profile: dict[str, object], name: str) -> bool:
    rules = profile["syscalls"]
    assert isinstance(rules, list)
    return any(name in r["names"] and r["action"] == "SCMP_ACT_ALLOW" and not r.get("args")
               for r in rules)


# -- spec ----------------------------------------------------------------------------------

def test_docker_defaults() -> None:
    spec = build_spec(SpecOptions(args=["sh"], hostname="abc", cgroups_path="/shale/x"))
    proc = spec["process"]
    assert proc["capabilities"] == {"bounding": list(DEFAULT_CAPS),
                                    "effective": list(DEFAULT_CAPS),
                                    "permitted": list(DEFAULT_CAPS)}
    assert len(DEFAULT_CAPS) == 14
    assert proc["noNewPrivileges"] is False and "rlimits" not in proc
    linux = spec["linux"]
    assert linux["maskedPaths"] == list(MASKED_PATHS) and len(MASKED_PATHS) == 10
    assert linux["readonlyPaths"] == list(READONLY_PATHS)
    assert {n["type"] for n in linux["namespaces"]} == {"pid", "ipc", "uts", "mount"}
    assert linux["cgroupsPath"] == "/shale/x"
    assert linux["seccomp"]["defaultAction"] == "SCMP_ACT_ERRNO"
    dests = [m["destination"] for m in spec["mounts"]]
    assert dests == ["/proc", "/dev", "/dev/pts", "/sys", "/sys/fs/cgroup", "/dev/mqueue",
                     "/dev/shm"]
    pts = spec["mounts"][2]["options"]
    assert {"newinstance", "ptmxmode=0666", "mode=0620", "gid=5"} <= set(pts)
    assert "ro" in spec["mounts"][3]["options"]
    assert spec["hostname"] == "abc" and spec["root"] == {"path": "rootfs", "readonly": False}


def test_default_caps_mask_is_dockers() -> None:
    from shale.runtime.spec import CAP_NUMBERS

    assert sum(1 << CAP_NUMBERS[c] for c in DEFAULT_CAPS) == 0xA80425FB


def test_non_root_user_gets_only_the_bounding_set() -> None:
    spec = build_spec(SpecOptions(args=["id"], uid=1000, gid=1000, additional_gids=[10]))
    assert spec["process"]["capabilities"] == {"bounding": list(DEFAULT_CAPS)}
    assert spec["process"]["user"] == {"uid": 1000, "gid": 1000, "additionalGids": [10]}


def test_cap_add_drop_all() -> None:
    caps = build_spec(SpecOptions(args=["x"], cap_add=["net_admin"], cap_drop=["CAP_CHOWN"])
                      )["process"]["capabilities"]["bounding"]
    assert "CAP_NET_ADMIN" in caps and "CAP_CHOWN" not in caps and len(caps) == 14
    only = build_spec(SpecOptions(args=["x"], cap_drop=["ALL"], cap_add=["KILL"]))
    assert only["process"]["capabilities"]["bounding"] == ["CAP_KILL"]
    warnings: list[str] = []
    everything = build_spec(SpecOptions(args=["x"], cap_add=["ALL"]), warnings)
    assert everything["process"]["capabilities"]["bounding"] == host_bounding_caps()
    with pytest.raises(InvalidArgument):
        build_spec(SpecOptions(args=["x"], cap_add=["NOT_A_CAP"]))


def test_privileged() -> None:
    warnings: list[str] = []
    spec = build_spec(SpecOptions(args=["x"], privileged=True), warnings)
    assert spec["process"]["capabilities"]["bounding"] == host_bounding_caps()
    assert spec["linux"]["maskedPaths"] == [] and spec["linux"]["readonlyPaths"] == []
    assert "seccomp" not in spec["linux"]
    assert spec["linux"]["resources"]["devices"] == [{"allow": True, "access": "rwm"}]
    assert "ro" not in spec["mounts"][3]["options"]
    if "CAP_SYS_RESOURCE" not in host_bounding_caps():  # this VM
        assert warnings and "CAP_SYS_RESOURCE" in warnings[0]


def test_mounts_readonly_rootfs_and_user_mounts() -> None:
    user = [{"destination": "/a/b", "type": "bind", "source": "/x", "options": ["rbind"]},
            {"destination": "/a", "type": "tmpfs", "source": "tmpfs", "options": []},
            {"destination": "/dev/shm", "type": "tmpfs", "source": "tmpfs", "options": []}]
    spec = build_spec(SpecOptions(args=["x"], mounts=user, readonly_rootfs=True))
    dests = [m["destination"] for m in spec["mounts"]]
    assert dests.count("/dev/shm") == 1  # the user's replaces docker's
    assert dests[-3:] == ["/a", "/dev/shm", "/a/b"] or dests.index("/a") < dests.index("/a/b")
    assert spec["root"]["readonly"] is True
    by_dest = {m["destination"]: m for m in spec["mounts"]}
    assert "ro" not in by_dest["/dev"]["options"] and "ro" in by_dest["/sys"]["options"]


def test_ulimits_clamped_and_network() -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    warnings: list[str] = []
    spec = build_spec(SpecOptions(args=["x"], ulimits={"nofile": (hard + 1, hard + 1)},
                                  network="none"), warnings)
    assert spec["process"]["rlimits"] == [{"type": "RLIMIT_NOFILE", "soft": hard, "hard": hard}]
    assert warnings
    assert {"type": "network"} in spec["linux"]["namespaces"]
    with pytest.raises(InvalidArgument):
        build_spec(SpecOptions(args=["x"], network="bridge"))
    with pytest.raises(InvalidArgument):
        build_spec(SpecOptions(args=["x"], ulimits={"bogus": (1, 1)}))
    with pytest.raises(InvalidArgument):
        build_spec(SpecOptions(args=[]))


def test_container_env() -> None:
    env = container_env(["PATH=/img", "A=1"], "abc", tty=True, extra=["A=2", "B=3"])
    assert env == ["PATH=/img", "HOSTNAME=abc", "TERM=xterm", "A=2", "B=3"]
    assert container_env([], "h") == [f"PATH={DEFAULT_PATH}", "HOSTNAME=h"]


# -- seccomp -------------------------------------------------------------------------------

def test_seccomp_profile_follows_capabilities() -> None:
    plain = default_profile(set(DEFAULT_CAPS))
    for name in ("read", "execve", "chroot", "ptrace"):
        assert allowed(plain, name), name
    for name in ("unshare", "mount", "keyctl", "add_key", "request_key", "kexec_load",
                 "init_module", "finit_module", "delete_module", "reboot", "swapon", "bpf",
                 "perf_event_open", "userfaultfd", "open_by_handle_at", "setns"):
        assert not allowed(plain, name), name
    rules = plain["syscalls"]
    clone3 = [r for r in rules if r["names"] == ["clone3"]]
    assert clone3 and clone3[0]["errnoRet"] == 38  # ENOSYS: libc falls back to clone
    admin = default_profile({*DEFAULT_CAPS, "CAP_SYS_ADMIN"})
    assert allowed(admin, "mount") and allowed(admin, "unshare")
    assert not allowed(admin, "keyctl")


def test_seccomp_compiles_and_caches(tmp_path: Path) -> None:
    pytest.importorskip("pyseccomp")
    from shale.runtime.seccomp import compile_bpf

    profile = default_profile(set(DEFAULT_CAPS))
    bpf = compile_bpf(profile, tmp_path)
    assert len(bpf) % 8 == 0 and len(bpf) > 800
    assert [p.suffix for p in tmp_path.iterdir()] == [".bpf"]
    assert compile_bpf(profile, tmp_path) == bpf


# -- users ---------------------------------------------------------------------------------

# docker 20.10 (measured): the primary gid is always in the supplementary list, after the
# groups that name the user (`-u app` -> groups=10(wheel),1000(app); `-u 1000:10` -> 10)
@pytest.mark.parametrize(("spec", "expected"), [
    ("", (0, 0, [10, 0], "/root")),
    ("root", (0, 0, [10, 0], "/root")),
    ("app", (1000, 1000, [10, 29, 1000], "/home/app")),
    ("1000", (1000, 1000, [10, 29, 1000], "/home/app")),
    ("app:staff", (1000, 50, [50], "/home/app")),
    ("app:50", (1000, 50, [50], "/home/app")),
    ("1000:4242", (1000, 4242, [4242], "/home/app")),
    ("4242", (4242, 0, [0], "/")),
    ("4242:4242", (4242, 4242, [4242], "/")),
    ("daemon", (1, 1, [1], "/usr/sbin")),
])
def test_resolve_user(spec: str, expected: tuple[int, int, list[int], str]) -> None:
    assert tuple(resolve(PASSWD, GROUP, spec)) == expected


def test_resolve_user_errors() -> None:
    with pytest.raises(InvalidArgument) as e:
        resolve(PASSWD, GROUP, "nosuch")
    assert str(e.value) == "unable to find user nosuch: no matching entries in passwd file"
    with pytest.raises(InvalidArgument) as e:
        resolve(PASSWD, GROUP, "app:nogroup")
    assert str(e.value) == "unable to find group nogroup: no matching entries in group file"
    assert tuple(resolve(None, None, "")) == (0, 0, [0], "/")
    with pytest.raises(InvalidArgument):
        resolve(None, None, "app")


@pytest.mark.skipif(os.geteuid() != 0, reason="openat2 into a root-owned tree")
def test_resolve_user_never_reads_outside_rootfs(tmp_path: Path) -> None:
    host = tmp_path / "host"
    host.mkdir()
    (host / "passwd").write_text("evil:x:0:0::/evil:/bin/sh\n")
    rootfs = tmp_path / "rootfs"
    (rootfs / "etc").mkdir(parents=True)
    (rootfs / "etc/passwd").symlink_to(host / "passwd")  # absolute: means ROOTFS/<that>
    (host / "group").write_text("evil:x:7:good\n")
    (rootfs / "etc/group").symlink_to("../" * 20 + str(host / "group").lstrip("/"))
    with pytest.raises(InvalidArgument):
        resolve_user(rootfs, "evil")
    inside = rootfs / str(host).lstrip("/")
    inside.mkdir(parents=True)
    (inside / "passwd").write_text("good:x:7:7::/good:/bin/sh\n")
    assert resolve_user(rootfs, "good") == (7, 7, [7], "/good")  # host group not read
    (inside / "group").write_text("inner:x:8:good\n")
    assert resolve_user(rootfs, "good") == (7, 7, [8, 7], "/good")
    (rootfs / "etc/group").unlink()
    (rootfs / "etc/group").symlink_to("group")  # a loop reads as a missing file
    assert resolve_user(rootfs, "good") == (7, 7, [7], "/good")
    os.mkfifo(rootfs / "etc/fifo")
    (rootfs / "etc/passwd").unlink()
    (rootfs / "etc/passwd").symlink_to("fifo")  # must not block
    assert resolve_user(rootfs, "12") == (12, 0, [0], "/")


# -- cgroups -------------------------------------------------------------------------------

HYBRID = """\
25 24 0:22 / /sys/fs/cgroup ro,nosuid,nodev,noexec - tmpfs tmpfs ro,mode=755
26 25 0:23 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime - cgroup2 cgroup2 rw
27 25 0:24 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid - cgroup cgroup rw,cpu,cpuacct
28 25 0:25 / /sys/fs/cgroup/memory rw,nosuid - cgroup cgroup rw,memory
29 25 0:26 / /sys/fs/cgroup/systemd rw,nosuid - cgroup cgroup rw,xattr,name=systemd
"""
V2 = "30 24 0:27 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n"


def test_parse_mountinfo() -> None:
    hybrid = parse_mountinfo(HYBRID)
    assert hybrid.mode == "hybrid" and hybrid.unified == "/sys/fs/cgroup/unified"
    assert hybrid.v1 == {"cpu": "/sys/fs/cgroup/cpu,cpuacct",
                         "cpuacct": "/sys/fs/cgroup/cpu,cpuacct",
                         "memory": "/sys/fs/cgroup/memory"}
    v1 = parse_mountinfo("\n".join(HYBRID.splitlines()[2:]))
    assert v1.mode == "v1" and v1.unified is None
    v2 = parse_mountinfo(V2)
    assert (v2.mode, v2.v1, v2.unified) == ("v2", {}, "/sys/fs/cgroup")


def test_cgroup_paths_and_v2_mounts(tmp_path: Path) -> None:
    layout = parse_mountinfo(f"30 24 0:27 / {tmp_path} rw - cgroup2 cgroup2 rw\n")
    cg = Cgroup("/shale/c1", layout)
    assert cg.v2_dir() == tmp_path / "shale/c1" and cg.v1_dir("memory") is None
    assert cg.mounts() == [] and not cg.exists()
    with pytest.raises(InvalidArgument):
        Cgroup("/shale/../etc", layout)
    with pytest.raises(InvalidArgument):
        Cgroup("/", layout)


def test_container_helpers() -> None:
    from shale.runtime import cgroups

    assert cgroups.container_path("abc") == "/shale/abc"
    assert cgroups.for_container("abc").path == "/shale/abc"
    assert cgroups.pids("no-such-container") == []
    cgroups.remove_cgroup("no-such-container")  # nothing there: no error


def test_device_rules() -> None:
    assert device_rule({"allow": False, "access": "rwm"}) == "a *:* rwm"
    assert device_rule({"allow": True, "type": "c", "major": 1, "minor": 3,
                        "access": "rwm"}) == "c 1:3 rwm"
    assert device_rule({"allow": True, "type": "c", "major": 136, "access": "rwm"}) == \
        "c 136:* rwm"


# -- misc ----------------------------------------------------------------------------------

def test_exit_code_and_get_runtime(tmp_path: Path) -> None:
    assert exit_code(3 << 8) == 3
    assert exit_code(9) == 137 and exit_code(15) == 143
    assert get_runtime("builtin", tmp_path).name == "builtin"
    with pytest.raises(InvalidArgument):
        get_runtime("crun", tmp_path)
