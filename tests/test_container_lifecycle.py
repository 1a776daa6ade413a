"""A container's life through both runtimes: stop (timeout, trap, --init), kill, restart
policies, --rm, start/attach/wait/restart/pause/rename/prune, and crashes: kill -9 of the
attached CLI (the container goes on, its exit code is kept) and of the monitor (the
container shows as exited, its mounts and processes are cleaned by the next command).

Real containers (root), overlay storage.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

from container_fixtures import (  # noqa: F401 (fixtures)
    Shale,
    bb_tar_fixture,
    needs_root,
    sh1_fixture,
    shale_fixture,
)

pytestmark = needs_root

TRAP = "trap 'exit 143' TERM; while true; do sleep 0.1; done"


def _timed(sh: Shale, *args: str) -> float:
    t = time.monotonic()
    sh.ok(*args)
    return time.monotonic() - t


def _cgroup_exists(cid: str) -> bool:
    return any(Path(base, "shale", cid).exists()
               for base in ("/sys/fs/cgroup", "/sys/fs/cgroup/pids", "/sys/fs/cgroup/unified",
                            "/sys/fs/cgroup/memory", "/sys/fs/cgroup/freezer"))


# ------------------------------------------------------------------------ stop / kill
def test_stop_waits_the_timeout_then_kills(shale: Shale) -> None:
    """PID 1 without a TERM handler ignores SIGTERM: stop -t 2 waits 2 s, then 137."""
    cid = shale.detach("bb", "sleep", "60")
    took = _timed(shale, "stop", "-t", "2", cid)
    assert 2.0 <= took < 4.5, took
    st = shale.state(cid)
    assert (st["Status"], st["ExitCode"], st["Running"]) == ("exited", 137, False)
    assert shale.mounts() == []


def test_stop_trap_and_init(shale: Shale) -> None:
    trap = shale.detach("bb", "sh", "-c", TRAP)
    init = shale.detach("--init", "bb", "sleep", "60")
    assert shale.proc("exec", init, "cat", "/proc/1/cmdline").stdout.split("\0")[:3] == \
        ["/sbin/docker-init", "--", "sleep"]
    took = _timed(shale, "stop", trap, init)
    assert took < 3.0, took
    assert shale.state(trap)["ExitCode"] == 143
    assert shale.state(init)["ExitCode"] == 143  # tini passes SIGTERM on, sleep dies of it
    # --stop-signal / --stop-timeout are the container's defaults for stop
    usr = shale.detach("--stop-signal", "USR1", "--stop-timeout", "1", "bb", "sh", "-c",
                       "trap 'exit 10' USR1; while true; do sleep 0.1; done")
    assert _timed(shale, "stop", usr) < 2.0
    assert shale.state(usr)["ExitCode"] == 10
    slow = shale.detach("--stop-timeout", "1", "bb", "sleep", "60")
    took = _timed(shale, "stop", slow)
    assert 1.0 <= took < 3.0 and shale.state(slow)["ExitCode"] == 137
    assert shale.ok("stop", slow) == slow + "\n"  # stopping a stopped container: fine


def test_kill(shale: Shale) -> None:
    cid = shale.detach("bb", "sh", "-c", "trap 'echo usr1' USR1; trap 'exit 7' HUP;"
                       "while true; do sleep 0.1; done")
    shale.ok("kill", "-s", "USR1", cid)
    end = time.monotonic() + 10
    while shale.ok("logs", cid) != "usr1\n":
        assert time.monotonic() < end
        time.sleep(0.05)
    shale.ok("kill", "-s", "SIGHUP", cid)
    st = shale.wait_status(cid, "exited")
    assert st["ExitCode"] == 7
    assert shale.ok("logs", cid) == "usr1\n"
    cid = shale.detach("--init", "bb", "sleep", "60")
    shale.ok("kill", cid)
    assert shale.wait_status(cid, "exited")["ExitCode"] == 137
    res = shale("kill", cid)
    assert res.code == 1 and "is not running" in res.err
    res = shale("kill", "-s", "NOSUCH", cid)
    assert res.code != 0 and "Invalid signal" in res.err


# ---------------------------------------------------------------------------- restart
def test_restart_on_failure(shale: Shale) -> None:
    cid = shale.detach("--restart", "on-failure:2", "bb", "sh", "-c", "echo run; exit 1")
    end = time.monotonic() + 20
    while shale.inspect(cid)["RestartCount"] < 2 or shale.state(cid)["Status"] != "exited":
        assert time.monotonic() < end, shale.inspect(cid)
        time.sleep(0.1)
    time.sleep(0.5)
    info = shale.inspect(cid)
    assert info["RestartCount"] == 2 and info["State"]["ExitCode"] == 1
    assert info["State"]["Status"] == "exited"
    assert shale.ok("logs", cid) == "run\nrun\nrun\n"
    # on-failure: a clean exit is not restarted
    ok = shale.detach("--restart", "on-failure", "bb", "true")
    shale.wait_status(ok, "exited")
    time.sleep(0.3)
    assert shale.inspect(ok)["RestartCount"] == 0


def test_restart_always_until_stopped_or_killed(sh1: Shale) -> None:
    sh = sh1
    for verb in ("stop", "kill"):
        cid = sh.detach("--restart", "always", "bb", "sh", "-c", "echo up; sleep 0.2")
        end = time.monotonic() + 20
        while sh.inspect(cid)["RestartCount"] < 2:
            assert time.monotonic() < end
            time.sleep(0.1)
        sh.ok(verb, cid)
        st = sh.wait_status(cid, "exited")
        count = sh.inspect(cid)["RestartCount"]
        time.sleep(1.0)
        assert sh.inspect(cid)["RestartCount"] == count, f"restarted after {verb}"
        assert sh.state(cid)["Status"] == "exited", st
    res = sh("run", "--rm", "--restart", "always", "bb", "true")
    assert res.code == 125 and "Conflicting options" in res.err


# ------------------------------------------------------------------------- --rm / rm
def test_autoremove_and_rm(shale: Shale) -> None:
    assert shale("run", "--rm", "bb", "sh", "-c", "exit 4").code == 4
    cid = shale.detach("--rm", "bb", "sh", "-c", "sleep 0.3")
    end = time.monotonic() + 20
    while cid in shale.ids():
        assert time.monotonic() < end, "run -d --rm: not removed after exit"
        time.sleep(0.1)
    assert shale.ids() == []
    # rm of a running container is refused; rm -f kills it; nothing stays behind
    cid = shale.detach("bb", "sleep", "60")
    res = shale("rm", cid)
    assert res.code == 1 and "cannot remove a running container" in res.err
    assert _cgroup_exists(cid)
    assert shale.ok("rm", "-f", cid) == cid + "\n"
    assert shale.ids() == [] and shale.mounts() == []
    assert not (shale.root / "containers" / cid).exists()
    assert not _cgroup_exists(cid)
    res = shale("rm", "nosuch")
    assert res.code == 1 and "No such container: nosuch" in res.err


# ------------------------------------------------------- start / attach / wait / misc
def test_create_start_attach_wait(shale: Shale) -> None:
    cid = shale.ok("create", "--name", "c1", "bb", "sh", "-c", "echo hello; exit 6").strip()
    assert shale.state(cid)["Status"] == "created"
    assert shale.mounts() == [], "create mounts nothing"
    res = shale.proc("start", "-a", "c1")
    assert (res.returncode, res.stdout) == (6, "hello\n"), res
    assert shale.ok("start", "c1") == "c1\n"
    assert shale.ok("wait", "c1") == "6\n"
    assert shale.ok("logs", "c1") == "hello\nhello\n"
    # attach to a running container: its output from then on, and its exit code
    cid = shale.detach("bb", "sh", "-c", "sleep 0.5; echo late; exit 5")
    res = shale.proc("attach", cid)
    assert (res.returncode, res.stdout) == (5, "late\n"), res
    res = shale("attach", cid)
    assert res.code != 0 and "stopped container" in res.err
    # start -ai feeds stdin
    shale.ok("create", "-i", "--name", "c2", "bb", "sh", "-c", "read x; echo got $x")
    res = shale.proc("start", "-ai", "c2", stdin=b"line\n")
    assert (res.returncode, res.stdout) == (0, "got line\n"), res
    out = shale.ok("wait", "c1", "c2")
    assert out == "6\n0\n"
    # a start that fails: exit 1 for start and start -a (docker), the error on stderr
    shale.ok("create", "--name", "c3", "bb", "nosuch")
    for args in (["start", "c3"], ["start", "-a", "c3"]):
        res = shale.proc(*args)
        assert res.returncode == 1 and 'exec: "nosuch"' in res.stderr, (args, res)


def test_restart_pause_rename_top_prune(sh1: Shale) -> None:
    sh = sh1
    cid = sh.detach("--name", "p1", "bb", "sh", "-c",
                    "while true; do date +%s%N >> /tmp/t; sleep 0.05; done")
    sh.ok("pause", "p1")
    st = sh.state("p1")
    assert (st["Status"], st["Paused"], st["Running"]) == ("paused", True, True)
    assert sh.ok("ps", "--format", "{{.Status}}").strip().endswith("(Paused)")
    res = sh.proc("exec", "p1", "true")
    assert res.returncode == 1 and "paused" in res.stderr
    written = sh.root / "containers" / cid / "bundle" / "rootfs" / "tmp" / "t"
    n1 = len(written.read_text().splitlines())
    time.sleep(0.3)
    assert len(written.read_text().splitlines()) == n1, "a paused container does not run"
    sh.ok("unpause", "p1")
    assert sh.state("p1")["Status"] == "running"
    top = sh.ok("top", "p1")
    assert top.splitlines()[0].split()[:2] == ["UID", "PID"]
    assert "while true" in top
    pid = sh.state("p1")["Pid"]
    sh.ok("rename", "p1", "p2")
    assert sh.inspect(cid)["Name"] == "/p2"
    assert sh("rename", "p2", "bad name!").code != 0
    sh.ok("restart", "-t", "0", "p2")
    st = sh.state("p2")
    assert st["Running"] is True and st["Pid"] != pid
    # stop of a paused container: signalled and thawed (docker), not a timeout and 137
    trap = sh.detach("bb", "sh", "-c", TRAP)
    sh.ok("pause", trap)
    took = _timed(sh, "stop", "-t", "10", trap)
    assert took < 5 and sh.state(trap)["ExitCode"] == 143, took
    sh.ok("rm", trap)
    stopped = sh.ok("create", "bb", "true").strip()
    out = sh.ok("container", "prune", "-f")
    assert out.startswith("Deleted Containers:\n" + stopped + "\n")
    assert sh.ids() == [cid]


def test_other_commands_never_unmount_a_starting_container(sh1: Shale) -> None:
    """Every container verb first cleans what dead monitors left (unmounts): running
    meanwhile, in a loop, it must never unmount the rootfs a start has just mounted."""
    import threading

    from shale.container_ops import cleanup_dead
    from shale.engine import Engine
    from shale.monitor import _preload

    # The runs fork monitors from this (now two-threaded) process. A fork while the loop
    # thread is inside an import leaves that module's import lock held for good in the
    # child, which then hangs importing it: load up front what the loop and the monitor
    # import (the CLI itself never has a thread that imports while it forks).
    _preload()
    warm = Engine(sh1.root, driver=sh1.driver)
    cleanup_dead(warm)
    warm.close()
    done = threading.Event()

    def loop() -> None:
        eng = Engine(sh1.root, driver=sh1.driver)
        try:
            while not done.is_set():
                cleanup_dead(eng)
        finally:
            eng.close()

    t = threading.Thread(target=loop)
    t.start()
    try:
        for _ in range(10):
            res = sh1("run", "--rm", "bb", "ls", "/bin/sh")
            assert (res.code, res.out, res.err) == (0, "/bin/sh\n", ""), res.err
    finally:
        done.set()
        t.join()


# -------------------------------------------------------------------------- crashes
def test_kill9_of_attached_cli_keeps_the_container(shale: Shale) -> None:
    with shale.popen("run", "--name", "k1", "bb", "sh", "-c",
                     "echo started; sleep 1.5; echo finished; exit 7") as p:
        assert p.stdout is not None and p.stdout.readline() == b"started\n"
        p.kill()
    assert shale.state("k1")["Running"] is True
    assert shale.ok("wait", "k1") == "7\n"
    assert shale.ok("logs", "k1") == "started\nfinished\n"
    st = shale.state("k1")
    assert (st["Status"], st["ExitCode"]) == ("exited", 7)
    assert shale.mounts() == []
    # an attached --rm run whose CLI died: the monitor removes the container itself
    with shale.popen("run", "--rm", "--name", "k2", "bb", "sh", "-c",
                     "echo go; sleep 0.5") as p:
        assert p.stdout is not None and p.stdout.readline() == b"go\n"
        p.kill()
    end = time.monotonic() + 20
    while "k2" in shale.ok("ps", "-a", "--format", "{{.Names}}").split():
        assert time.monotonic() < end, "attached --rm container not removed"
        time.sleep(0.1)


def test_kill9_of_the_monitor(shale: Shale) -> None:
    cid = shale.detach("bb", "sleep", "60")
    st = json.loads((shale.root / "containers" / cid / "state.json").read_text())
    monitor, pid = st["MonitorPid"], st["Pid"]
    assert monitor > 0 and pid > 0 and shale.mounts() != []
    os.kill(monitor, signal.SIGKILL)
    end = time.monotonic() + 10
    while os.path.exists(f"/proc/{monitor}") and \
            "zombie" not in Path(f"/proc/{monitor}/status").read_text().lower():
        assert time.monotonic() < end
        time.sleep(0.02)
    # the next command sees it exited, cleans its mounts and its processes
    ps = shale.ok("ps", "-a", "--format", "{{.ID}} {{.Status}}")
    assert ps.startswith(f"{cid[:12]} Exited (137) "), ps
    assert "ago" in ps and "years" not in ps
    assert shale.mounts() == []
    st = shale.state(cid)
    assert (st["Status"], st["Running"], st["ExitCode"]) == ("exited", False, 137)
    assert st["FinishedAt"] != "0001-01-01T00:00:00Z"
    end = time.monotonic() + 10
    while _alive(pid):
        assert time.monotonic() < end, "the container's process outlived its monitor"
        time.sleep(0.05)
    # and it starts again
    shale.ok("start", cid)
    assert shale.state(cid)["Running"] is True
    shale.ok("rm", "-f", cid)
    assert shale.mounts() == []


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/status") as f:
            return "\nState:\tZ" not in f.read()
    except FileNotFoundError:
        return False


def test_start_failing_after_the_monitor_forked_leaves_nothing(sh1: Shale,
                                                                monkeypatch: object) -> None:
    """The monitor is forked before the bundle is made (it gets ready meanwhile): when the
    bundle fails, it leaves at once without touching anything, nothing stays mounted or
    locked, and the next start works."""
    import pytest

    import shale.bundle
    from shale.containers import monitor_alive
    from shale.errors import ShaleError

    assert isinstance(monkeypatch, pytest.MonkeyPatch)
    sh1.ok("create", "--name", "late", "bb", "true")
    cdir = next((sh1.root / "containers").iterdir())

    def broken(*_: object) -> None:
        raise ShaleError("bundle made to fail")

    monkeypatch.setattr(shale.bundle, "write_bundle", broken)
    res = sh1("start", "late")
    assert res.code == 1 and "bundle made to fail" in res.err, res
    assert not monitor_alive(cdir / "monitor.lock")
    assert sh1.mounts() == []
    assert not (cdir / "network.json").exists() and not (cdir / "monitor.err").exists()
    assert sh1.state("late")["Status"] == "created"
    monkeypatch.undo()
    sh1.ok("start", "-a", "late")
    assert sh1.state("late")["Status"] == "exited"
    for _ in range(100):  # the monitor lets go of the lock right before its last words
        if not monitor_alive(cdir / "monitor.lock"):
            break
        time.sleep(0.01)
    assert not monitor_alive(cdir / "monitor.lock")


def _processes_mentioning(text: str) -> list[int]:
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if text.encode() in f.read():
                    found.append(int(pid))
        except OSError:
            continue
    return found


def _processes_holding(prefix: str) -> list[int]:
    """Processes with an open file below ``prefix`` (a monitor holds its lock there)."""
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            links = [os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")]
        except OSError:
            continue
        if any(link.startswith(prefix) for link in links):
            found.append(int(pid))
    return found


def test_run_failing_before_start_leaves_no_monitor(sh1: Shale) -> None:
    """`run` forks the monitor first thing; a run that fails before the container is
    started (unknown image, bad flag, a name in use, --help) sends it away: no process of
    this data root is left when the CLI has returned."""
    sh1.ok("create", "--name", "taken", "bb", "true")
    for args, code in ((["run", "--rm", "nosuchimage", "true"], 125),
                       (["run", "--bogus-flag", "bb"], 125),
                       (["run", "--name", "taken", "bb", "true"], 125),
                       (["run", "--help"], 0)):
        res = sh1.proc(*args)
        assert res.returncode == code, (args, res)
        assert _processes_mentioning(str(sh1.root)) == [], args
    assert sh1.mounts() == []


def test_start_errors_from_the_monitor_keep_their_type_and_code(sh1: Shale) -> None:
    """Set-up errors happen in the monitor now; they reach the user as before."""
    res = sh1("run", "--rm", "-u", "nosuchuser", "bb", "true")
    assert (res.code, res.err) == (
        125, "Error: unable to find user nosuchuser: no matching entries in passwd file\n")
    sh1.ok("create", "--name", "u", "-u", "nosuchuser", "bb", "true")
    res = sh1("start", "u")
    assert res.code == 1 and "unable to find user nosuchuser" in res.err, res
    assert sh1.state("u")["Status"] == "created"
    assert sh1.ids() == [sh1.inspect("u")["Id"]]  # the --rm one is gone
    assert sh1.mounts() == []


def test_monitor_failure_rebuilds_the_error() -> None:
    from shale.errors import Conflict, ShaleError
    from shale.monitor_spawn import encode_failure as _failure
    from shale.monitor_spawn import rebuild_failure as _rebuild

    e = _rebuild(_failure(Conflict("busy")))
    assert type(e) is Conflict and str(e) == "busy" and e.exit_code == 1
    e = _rebuild(_failure(FileNotFoundError(2, "No such file or directory", "/x")))
    assert isinstance(e, FileNotFoundError) and str(e) == \
        "[Errno 2] No such file or directory: '/x'"
    e = _rebuild(_failure(KeyError("k")))
    assert type(e) is ShaleError and str(e) == "KeyError: 'k'"


def test_create_failing_after_the_network_was_set_up_leaves_nothing(
        sh1: Shale, monkeypatch: object) -> None:
    """`run` hands the container to its monitor as soon as the record exists, which sets
    the network up (and binds published ports) while the snapshots are made: when those
    fail, the monitor takes all of it back before the container record goes."""
    import pytest

    from shale.containers import ContainerStore
    from shale.errors import ShaleError
    from shale.network.ipam import NET_DIR

    assert isinstance(monkeypatch, pytest.MonkeyPatch)

    def broken(*_: object) -> None:
        raise ShaleError("snapshots made to fail")

    monkeypatch.setattr(ContainerStore, "prepare_snapshots", broken)
    held_before = sorted(p.name for p in NET_DIR.glob("*/ips/*"))
    res = sh1("run", "--rm", "-p", "127.0.0.1::80", "bb", "true")
    assert res.code == 125 and "snapshots made to fail" in res.err, res
    assert sh1.ids() == [] and sh1.mounts() == []
    assert _processes_holding(str(sh1.root)) == []
    assert sorted(p.name for p in NET_DIR.glob("*/ips/*")) == held_before
    assert list((sh1.root / "containers").iterdir()) == []
