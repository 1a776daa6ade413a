"""Real containers through both runtimes (builtin and runc) from one busybox rootfs.

Needs root, /bin/busybox (static) and, for the runc half, ``runc`` in PATH. Every test runs
a real container; cgroups go under ``/shale-test/<cid>`` and are removed at the end.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from shale.errors import AlreadyExists, CannotExecute, CommandNotFound, Conflict, NotFound
from shale.runtime import ConsoleSocket, ProcessIO, Runtime, exit_code, get_runtime
from shale.runtime.cgroups import Cgroup
from shale.runtime.spec import DEFAULT_PATH, SpecOptions, build_spec
from shale.runtime.users import resolve_user

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root"),
    pytest.mark.skipif(not os.path.exists("/bin/busybox"), reason="needs /bin/busybox"),
]

RUNTIMES = ["builtin", pytest.param("runc", marks=pytest.mark.skipif(
    shutil.which("runc") is None, reason="runc not installed"))]
DOCKER_CAPS = "00000000a80425fb"
CGROUP_PARENT = "shale-test"


@pytest.fixture(scope="session", autouse=True)
def _subreaper() -> Iterator[None]:
    from shale.runtime import become_subreaper

    become_subreaper()
    yield
    # runc makes the parent in every hierarchy, named ones (name=systemd) included
    for parent in [*Path("/sys/fs/cgroup").glob(f"*/{CGROUP_PARENT}"),
                   Path("/sys/fs/cgroup", CGROUP_PARENT)]:
        with contextlib.suppress(OSError):
            parent.rmdir()


@pytest.fixture(scope="session")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("busybox")
    root.chmod(0o755)  # as in a real image: a non-root user must be able to walk "/"
    for d in ("bin", "etc", "proc", "sys", "dev", "tmp", "root", "home/app"):
        (root / d).mkdir(parents=True)
    shutil.copy2("/bin/busybox", root / "bin/busybox")
    applets = subprocess.run(["/bin/busybox", "--list"], capture_output=True, text=True,
                             check=True).stdout.split()
    for name in applets:
        if name != "busybox":
            os.symlink("busybox", root / "bin" / name)
    (root / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/sh\n"
                                     "app:x:1000:1000:app:/home/app:/bin/sh\n")
    (root / "etc/group").write_text("root:x:0:\nwheel:x:10:root,app\napp:x:1000:\n")
    (root / "etc/notexec").write_text("data\n")
    return root


@pytest.fixture
def bundle(template: Path, tmp_path: Path) -> Path:
    """A fresh copy of the rootfs per test (hard-linked busybox: cheap)."""
    dst = tmp_path / "bundle" / "rootfs"
    shutil.copytree(template, dst, symlinks=True, copy_function=os.link)
    return dst.parent


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """Console sockets live here: unix socket paths are limited to 108 bytes."""
    path = Path(tempfile.mkdtemp(prefix="shrt-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(params=RUNTIMES)
def rt(request: pytest.FixtureRequest, short_dir: Path) -> Runtime:
    return get_runtime(request.param, short_dir / "state")


@dataclass
class Result:
    code: int
    out: str
    err: str


class Box:
    """Runs containers for one test and always deletes them."""

    def __init__(self, rt: Runtime, bundle: Path) -> None:
        self.rt, self.bundle = rt, bundle
        self.cids: list[str] = []

    def spec(self, args: list[str], **kw: Any) -> SpecOptions:
        cid = f"t{uuid.uuid4().hex[:12]}"
        self.cids.append(cid)
        kw.setdefault("env", [f"PATH={DEFAULT_PATH}", "HOSTNAME=box"])
        kw.setdefault("hostname", "box")
        return SpecOptions(args=args, cgroups_path=f"/{CGROUP_PARENT}/{cid}", **kw)

    def create(self, opts: SpecOptions, io: ProcessIO | None = None) -> tuple[str, int]:
        (self.bundle / "config.json").write_text(json.dumps(build_spec(opts)))
        cid = opts.cgroups_path.rsplit("/", 1)[1]
        return cid, self.rt.create(cid, self.bundle, io or ProcessIO())

    def run(self, args: list[str], **kw: Any) -> Result:
        opts = self.spec(args, **kw)
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        try:
            cid, pid = self.create(opts, ProcessIO(None, out_w, err_w))
        finally:
            os.close(out_w)
            os.close(err_w)
        self.rt.start(cid)
        code = wait(pid)
        return Result(code, read_all(out_r), read_all(err_r))

    def background(self, args: list[str], **kw: Any) -> tuple[str, int]:
        cid, pid = self.create(self.spec(args, **kw))
        self.rt.start(cid)
        return cid, pid

    def close(self) -> None:
        for cid in self.cids:
            with contextlib.suppress(Exception):
                self.rt.delete(cid, force=True)


def wait(pid: int, timeout: float = 20.0) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return exit_code(status)
        time.sleep(0.002)
    os.kill(pid, signal.SIGKILL)
    raise AssertionError(f"process {pid} did not exit within {timeout}s")


def read_all(fd: int) -> str:
    with open(fd, "rb") as f:
        return f.read().decode()


@pytest.fixture
def box(rt: Runtime, bundle: Path) -> Iterator[Box]:
    b = Box(rt, bundle)
    yield b
    b.close()


def caps_of(out: str) -> dict[str, str]:
    return dict(line.split(":\t") for line in out.splitlines() if line.startswith("Cap"))


# -- exit codes ---------------------------------------------------------------------------

def test_exit_codes(box: Box) -> None:
    assert box.run(["true"]).code == 0
    r = box.run(["sh", "-c", "echo out; echo err >&2; exit 3"])
    assert (r.code, r.out, r.err) == (3, "out\n", "err\n")


def test_command_not_found_is_127(box: Box) -> None:
    with pytest.raises(CommandNotFound) as e:
        box.run(["nosuch"])
    assert e.value.exit_code == 127
    assert str(e.value) == 'exec: "nosuch": executable file not found in $PATH'


@pytest.mark.parametrize("path", ["/etc/notexec", "/etc"])
def test_not_executable_is_126(box: Box, path: str) -> None:
    with pytest.raises(CannotExecute) as e:
        box.run([path])
    assert e.value.exit_code == 126
    assert str(e.value) == f'exec: "{path}": permission denied'


def test_execve_failure_after_start(box: Box) -> None:
    """Passes the lookup (mode 755) but execve fails: ENOEXEC."""
    bad = box.bundle / "rootfs/bad"
    bad.write_bytes(b"\x00garbage")
    bad.chmod(0o755)
    cid, pid = box.create(box.spec(["/bad"]))
    if box.rt.name == "builtin":
        with pytest.raises(CannotExecute, match="exec format error"):
            box.rt.start(cid)
        assert wait(pid) == 126
    else:  # runc, like docker 20.10: the init reports it on stderr and exits 1
        box.rt.start(cid)
        assert wait(pid) == 1


def test_sigkill_is_137_and_state(box: Box) -> None:
    cid, pid = box.create(box.spec(["sleep", "100"]))
    assert box.rt.state(cid).status == "created"
    assert box.rt.state(cid).pid == pid
    box.rt.start(cid)
    assert box.rt.state(cid).status == "running"
    with pytest.raises(Conflict):
        box.rt.start(cid)
    with pytest.raises(Conflict):
        box.rt.delete(cid)
    box.rt.kill(cid, signal.SIGKILL)
    assert wait(pid) == 137
    assert box.rt.state(cid).status == "stopped"
    box.rt.delete(cid)
    with pytest.raises(NotFound):
        box.rt.state(cid)


def test_lifecycle_errors(box: Box) -> None:
    opts = box.spec(["sleep", "100"])
    cid, pid = box.create(opts)
    with pytest.raises(AlreadyExists):
        box.create(opts)
    box.rt.delete(cid)  # a created container is killed without force
    assert wait(pid) == 137
    assert not Cgroup(opts.cgroups_path).exists()
    with pytest.raises(NotFound):
        box.rt.state(cid)
    cid, pid = box.background(["sleep", "100"])
    cg = Cgroup(f"/{CGROUP_PARENT}/{cid}")
    cg.freeze()
    try:
        with pytest.raises(Conflict):
            box.rt.exec(cid, {"args": ["true"], "cwd": "/"}, ProcessIO())
    finally:
        cg.thaw()
    box.rt.kill(cid, signal.SIGKILL, all=True)
    assert wait(pid) == 137
    with pytest.raises(Conflict):
        box.rt.kill(cid, signal.SIGTERM)
    with pytest.raises(Conflict):
        box.rt.start(cid)


def test_sigterm_to_exec_process_is_143(box: Box) -> None:
    cid, pid = box.background(["sleep", "100"])
    proc = {"args": ["sleep", "50"], "env": [f"PATH={DEFAULT_PATH}"], "cwd": "/",
            "user": {"uid": 0, "gid": 0}}
    child = box.rt.exec(cid, proc, ProcessIO())
    os.kill(child, signal.SIGTERM)
    assert wait(child) == 143
    box.rt.kill(cid, signal.SIGKILL, all=True)
    assert wait(pid) == 137


# -- namespaces, identity ----------------------------------------------------------------

def test_pid1_hostname_env(box: Box) -> None:
    r = box.run(["sh", "-c", "echo $$; hostname; echo $HOME; echo $PATH"], hostname="h0st")
    assert r.out.split() == ["1", "h0st", "/root", DEFAULT_PATH]


def test_network_none_has_only_lo(box: Box) -> None:
    r = box.run(["sh", "-c", "ls /sys/class/net; cat /sys/class/net/lo/flags"], network="none")
    names, flags = r.out.split()
    assert names == "lo" and int(flags, 16) & 1  # IFF_UP


def test_masked_and_readonly_paths(box: Box) -> None:
    script = ("wc -c < /proc/keys; ls /sys/firmware | wc -l; ls /proc/acpi | wc -l;"
              "echo x 2>/dev/null > /proc/sys/kernel/domainname && echo rw || echo ro")
    assert box.run(["sh", "-c", script]).out.split() == ["0", "0", "0", "ro"]


def test_default_capabilities_are_dockers(box: Box) -> None:
    caps = caps_of(box.run(["grep", "Cap", "/proc/self/status"]).out)
    assert caps == {"CapInh": "0" * 16, "CapPrm": DOCKER_CAPS, "CapEff": DOCKER_CAPS,
                    "CapBnd": DOCKER_CAPS, "CapAmb": "0" * 16}


def test_cap_add_drop_and_privileged(box: Box) -> None:
    caps = caps_of(box.run(["grep", "Cap", "/proc/self/status"],
                           cap_add=["NET_ADMIN"], cap_drop=["chown"]).out)
    assert int(caps["CapEff"], 16) == (0xA80425FB | 1 << 12) & ~1
    r = box.run(["sh", "-c", "grep Cap /proc/self/status; grep Seccomp: /proc/self/status"],
                privileged=True)
    with open("/proc/self/status") as f:
        host_bnd = next(x for x in f if x.startswith("CapBnd:")).split()[1]
    assert caps_of(r.out)["CapEff"] == host_bnd
    assert "Seccomp:\t0" in r.out


def test_user_from_passwd(box: Box) -> None:
    user = resolve_user(box.bundle / "rootfs", "app")
    assert user == (1000, 1000, [10, 1000], "/home/app")  # as docker: primary gid last
    r = box.run(["sh", "-c", "id; echo $HOME; grep -E 'CapEff|CapBnd' /proc/self/status"],
                uid=user.uid, gid=user.gid, additional_gids=user.additional_gids)
    lines = r.out.splitlines()
    assert lines[0] == "uid=1000(app) gid=1000(app) groups=10(wheel),1000(app)"
    assert lines[1] == "/home/app"
    assert caps_of("\n".join(lines[2:])) == {"CapEff": "0" * 16, "CapBnd": DOCKER_CAPS}


def test_rlimits_clamped_to_host(box: Box) -> None:
    import resource

    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    r = box.run(["sh", "-c", "ulimit -n; ulimit -Hn"], ulimits={"nofile": (hard + 10, hard + 10)})
    assert r.out.split() == [str(hard), str(hard)]


def test_no_new_privileges(box: Box) -> None:
    assert "NoNewPrivs:\t1" in box.run(["grep", "NoNew", "/proc/self/status"],
                                       no_new_privileges=True).out
    assert "NoNewPrivs:\t0" in box.run(["grep", "NoNew", "/proc/self/status"]).out


# -- filesystem --------------------------------------------------------------------------

def test_bind_mounts_ro_and_rw(box: Box, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_text("hello\n")
    mounts = [{"destination": "/ro", "type": "bind", "source": str(src),
               "options": ["rbind", "ro"]},
              {"destination": "/deep/rw", "type": "bind", "source": str(src),
               "options": ["rbind"]},
              {"destination": "/scratch", "type": "tmpfs", "source": "tmpfs",
               "options": ["nosuid", "size=1m"]}]
    script = ("cat /ro/f; touch /ro/x 2>/dev/null && echo rw || echo ro;"
              "echo new > /deep/rw/g; echo t > /scratch/t && cat /scratch/t")
    assert box.run(["sh", "-c", script], mounts=mounts).out.split() == ["hello", "ro", "t"]
    assert (src / "g").read_text() == "new\n"


def test_readonly_rootfs(box: Box) -> None:
    script = ("touch /x 2>/dev/null && echo rw || echo ro;"
              "touch /dev/shm/x && echo shm-ok")
    assert box.run(["sh", "-c", script], readonly_rootfs=True).out.split() == ["ro", "shm-ok"]


@pytest.mark.parametrize("link", ["/tmp/shale-escape-{u}", "../../../../../tmp/shale-escape-{u}"])
def test_symlink_at_mount_target_stays_inside(box: Box, tmp_path: Path, link: str) -> None:
    u = uuid.uuid4().hex[:8]
    outside = Path(f"/tmp/shale-escape-{u}")
    rootfs = box.bundle / "rootfs"
    (rootfs / "data").symlink_to(link.format(u=u))
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_text("inside\n")
    mounts = [{"destination": "/data", "type": "bind", "source": str(src),
               "options": ["rbind"]}]
    try:
        r = box.run(["cat", "/data/f"], mounts=mounts)
        assert r.out == "inside\n"
        assert not outside.exists(), "the mount target was created on the host"
        assert (rootfs / "tmp" / outside.name).is_dir()
    finally:
        if outside.exists():
            subprocess.run(["umount", "-l", str(outside)], check=False)
            outside.rmdir()


def test_seccomp_blocks_what_docker_blocks(box: Box) -> None:
    # unshare(CLONE_NEWUSER) needs no capability: only the filter stops it
    script = ("grep Seccomp: /proc/self/status;"
              "unshare -U true 2>/dev/null && echo allowed || echo blocked")
    assert box.run(["sh", "-c", script]).out.split() == ["Seccomp:", "2", "blocked"]
    unfiltered = box.run(["sh", "-c", script], seccomp=False)
    assert unfiltered.out.split() == ["Seccomp:", "0", "allowed"]


# -- tty, exec ----------------------------------------------------------------------------

def _read_pty(master: int, pid: int) -> str:
    data = b""
    while True:
        try:
            chunk = os.read(master, 4096)
        except OSError:  # EIO: the slave side is closed
            break
        if not chunk:
            break
        data += chunk
    wait(pid)
    return data.decode()


def test_tty_is_the_containers_devpts(box: Box, short_dir: Path) -> None:
    opts = box.spec(["sh", "-c", "tty; ls -l /dev/console | wc -l"], tty=True)
    with ConsoleSocket(short_dir / "c.sock") as console:
        cid, pid = box.create(opts, ProcessIO(console_socket=console.path))
        master = console.receive()
    try:
        box.rt.start(cid)
        out = _read_pty(master, pid)
    finally:
        os.close(master)
    assert out.split() == ["/dev/pts/0", "1"]


def test_exec_sees_the_same_pid_namespace_and_files(box: Box) -> None:
    cid, pid = box.background(["sh", "-c", "echo marker > /tmp/m; exec sleep 100"])
    proc = {"args": ["sh", "-c", "cat /proc/1/comm; cat /tmp/m; echo $$; hostname"],
            "env": [f"PATH={DEFAULT_PATH}"], "cwd": "/tmp", "user": {"uid": 0, "gid": 0},
            "capabilities": {"bounding": [], "effective": [], "permitted": []}}
    for _ in range(200):  # the marker is written right after start
        if (box.bundle / "rootfs/tmp/m").exists():
            break
        time.sleep(0.005)
    out_r, out_w = os.pipe()
    child = box.rt.exec(cid, proc, ProcessIO(None, out_w, None))
    os.close(out_w)
    assert wait(child) == 0
    comm, marker, own_pid, host = read_all(out_r).split()
    assert (comm, marker, host) == ("sleep", "marker", "box")
    assert int(own_pid) > 1
    with pytest.raises(CommandNotFound):
        box.rt.exec(cid, dict(proc, args=["nosuch"]), ProcessIO())
    box.rt.kill(cid, signal.SIGKILL)
    assert wait(pid) == 137


def test_exec_with_tty(box: Box, short_dir: Path) -> None:
    cid, pid = box.background(["sleep", "100"])
    proc = {"args": ["tty"], "env": [f"PATH={DEFAULT_PATH}"], "cwd": "/", "terminal": True,
            "user": {"uid": 0, "gid": 0}}
    with ConsoleSocket(short_dir / "e.sock") as console:
        child = box.rt.exec(cid, proc, ProcessIO(console_socket=console.path))
        master = console.receive()
    try:
        out = _read_pty(master, child)
    finally:
        os.close(master)
    assert out.strip().startswith("/dev/pts/")
    box.rt.kill(cid, signal.SIGKILL)
    wait(pid)


# -- cgroups -------------------------------------------------------------------------------

def test_freeze_thaw_and_pids(box: Box) -> None:
    cid, pid = box.background(["sleep", "100"])
    cg = Cgroup(f"/{CGROUP_PARENT}/{cid}")
    assert cg.pids() == [pid]
    cg.freeze()
    assert box.rt.state(cid).status == "paused"
    cg.thaw()
    assert box.rt.state(cid).status == "running"
    cg.freeze()
    box.rt.delete(cid, force=True)  # a paused container dies too
    assert wait(pid) == 137
    assert not cg.exists()


def test_oom_killed(box: Box) -> None:
    opts = box.spec(["tail", "/dev/zero"])
    cid, pid = box.create(opts)
    cg = Cgroup(opts.cgroups_path)
    mem = cg.v1_dir("memory")
    if mem is None:
        pytest.skip("memory limits on v2 come with the limits work")
    (mem / "memory.limit_in_bytes").write_text(str(16 << 20))
    if (mem / "memory.memsw.limit_in_bytes").exists():
        (mem / "memory.memsw.limit_in_bytes").write_text(str(16 << 20))
    assert not cg.oom_killed()
    box.rt.start(cid)
    assert wait(pid) == 137
    assert cg.oom_killed()
