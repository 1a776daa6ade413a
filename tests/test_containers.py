"""run and exec through both runtimes (builtin, runc): exit codes, stdio, tty, environment
defaults, users, working directory, entrypoint, runtime flags; and the engine-side views:
inspect, ps (filters, format), logs.

Real containers (root), overlay storage; storage-driver behaviour is in
test_container_fs.py, stop/kill/restart/monitor crashes in test_container_lifecycle.py.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
import uuid
from pathlib import Path

import pytest
from conftest import Docker
from container_fixtures import (  # noqa: F401 (fixtures)
    Shale,
    bb_tar_fixture,
    needs_root,
    pty_run,
    sh1_fixture,
    shale_fixture,
)

pytestmark = needs_root

PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


# ------------------------------------------------------------------------- exit codes
EXIT_CASES = [
    (["bb", "true"], 0),
    (["bb", "sh", "-c", "exit 3"], 3),
    (["bb", "sh", "-c", "kill -9 $$; echo survived"], 0),  # PID 1 ignores it, as docker
    (["bb", "nosuch"], 127),
    (["bb", "/etc/nosuch"], 127),
    (["bb", "/etc"], 126),
    (["bb", "/etc/passwd"], 126),
    (["--bogus-flag", "bb", "true"], 125),
    (["nosuchimage", "true"], 125),
    (["--restart", "sometimes", "bb", "true"], 125),
    (["-w", "relative", "bb", "true"], 125),
    (["--name", "taken", "bb", "true"], 125),  # the test makes "taken" first
]


def test_exit_codes(shale: Shale) -> None:
    shale.ok("create", "--name", "taken", "bb", "true")
    for args, code in EXIT_CASES:
        res = shale("run", "--rm", *args)
        assert res.code == code, (args, res)
        if code >= 125:
            assert res.err.startswith("Error: ") and res.err.count("\n") <= 2, res.err
    assert shale.ok("run", "--rm", "bb", "sh", "-c", "kill -9 $$; echo survived") == \
        "survived\n"
    assert shale.ok("ps", "-aq", "--no-trunc") == shale.inspect("taken")["Id"] + "\n", \
        "--rm removes containers that failed to start too"
    # without --rm a container that could not start stays, Created, with its error
    res = shale("run", "--name", "nf", "bb", "nosuch")
    assert res.code == 127 and 'exec: "nosuch": executable file not found' in res.err
    st = shale.state("nf")
    assert (st["Status"], st["ExitCode"], st["Running"]) == ("created", 127, False)
    assert "nosuch" in st["Error"]


@pytest.mark.docker
def test_exit_codes_match_docker(sh1: Shale, docker: Docker) -> None:
    ref = f"shaletest-ctr-{uuid.uuid4().hex[:10]}:1"
    name = f"shaletest-taken-{uuid.uuid4().hex[:10]}"
    sh1.ok("tag", "bb", ref)
    docker.track(ref)
    docker("load", stdin=sh1.cli.binary("save", ref)[1])
    sh1.ok("create", "--name", name, ref, "true")
    docker("create", "--name", name, ref, "true")
    try:
        for args, code in EXIT_CASES:
            args = [{"bb": ref, "taken": name}.get(a, a) for a in args]
            mine = sh1("run", "--rm", *args).code
            theirs = docker("run", "--rm", *args, check=False).returncode
            assert (args, mine) == (args, theirs) == (args, code)
    finally:
        docker("rm", "-f", name, check=False)


def test_stdout_stderr_and_stdin(shale: Shale) -> None:
    res = shale("run", "--rm", "bb", "sh", "-c", "echo out; echo err >&2; exit 5")
    assert res == (5, "out\n", "err\n")
    # -i: stdin reaches the container, EOF ends it
    res = shale.proc("run", "--rm", "-i", "bb", "sh", "-c", "read a; read b; echo $b $a",
                     stdin=b"one\ntwo\n")
    assert (res.returncode, res.stdout) == (0, "two one\n"), res
    res = shale.proc("run", "--rm", "-i", "bb", "wc", "-c", stdin=b"x" * 300_000)
    assert res.stdout.strip() == "300000", res
    # without -i the container's stdin is empty
    res = shale.proc("run", "--rm", "bb", "cat", stdin=b"ignored")
    assert (res.returncode, res.stdout) == (0, ""), res
    # large output in order, nothing lost
    out = shale.ok("run", "--rm", "bb", "seq", "1", "20000")
    assert out.split() == [str(i) for i in range(1, 20001)]
    # -it without a terminal: docker's error
    res = shale("run", "-it", "bb", "true")
    assert res.code == 125 and "the input device is not a TTY" in res.err


# ------------------------------------------------------------------------------- tty
def test_tty(shale: Shale) -> None:
    code, out = pty_run([*shale.argv, "run", "--runtime", shale.runtime, "-it", "--rm", "bb",
                         "sh", "-c", "tty; echo $TERM; stty size; echo err >&2; read x;"
                         " echo got $x; stty size; exit 4"], rows=33, cols=111,
                        send=b"abc\r", send_when=b"err", resize=(50, 132))
    assert code == 4, out
    lines = out.decode().split("\r\n")
    # the size is the terminal's from the first instruction on, and follows it
    assert lines[:4] == ["/dev/pts/0", "xterm", "33 111", "err"], out
    assert lines[-3:] == ["got abc", "50 132", ""], out
    # -t alone: output through the pty, \r\n line ends, stderr merged
    res = shale.proc("run", "--rm", "-t", "bb", "sh", "-c", "tty; echo e >&2")
    assert (res.returncode, res.stdout, res.stderr) == (0, "/dev/pts/0\r\ne\r\n", ""), res


def test_tty_exec_and_ctrl_c(shale: Shale) -> None:
    cid = shale.detach("-t", "bb", "sleep", "60")
    code, out = pty_run([*shale.argv, "exec", "-it", cid, "sh", "-c",
                         "tty; echo $TERM; stty size"], rows=10, cols=20)
    assert code == 0, out
    assert re.fullmatch(rb"/dev/pts/\d+\r\nxterm\r\n10 20\r\n", out), out
    # Ctrl-C typed on an -it run reaches the container through its tty
    code, out = pty_run([*shale.argv, "run", "--runtime", shale.runtime, "-it", "--rm", "bb",
                         "sh", "-c", "trap 'echo caught; exit 9' INT; echo ready; "
                         "while true; do sleep 0.1; done"], send=b"\x03", send_when=b"ready")
    assert code == 9 and b"caught" in out, out


# ---------------------------------------------------------------------- environment
def test_env_defaults(shale: Shale, tmp_path: Path) -> None:
    cid = shale.ok("run", "-d", "bb", "env").strip()
    shale.ok("wait", cid)
    env = shale.ok("logs", cid).split()
    assert sorted(env) == sorted([PATH, f"HOSTNAME={cid[:12]}", "HOME=/root"]), env
    assert shale.ok("run", "--rm", "bb", "hostname") != ""
    out = shale.ok("run", "--rm", "-u", "app", "bb", "sh", "-c", "echo $HOME; id -u; id -g")
    assert out == "/home/app\n1000\n1000\n"
    out = shale.ok("run", "--rm", "-u", "1000:10", "bb", "id")
    assert out.startswith("uid=1000(app) gid=10(wheel)"), out
    assert shale.ok("run", "--rm", "-u", "nobody", "bb", "sh", "-c", "echo $HOME") == \
        "/nonexistent\n"
    res = shale("run", "--rm", "-u", "nosuchuser", "bb", "true")
    assert res.code in (125, 126, 127) and "nosuchuser" in res.err, res
    envfile = tmp_path / "env"
    envfile.write_text("# comment\nFROM_FILE=1\nHOME=/elsewhere\n")
    os.environ["SHALE_TEST_PASS"] = "passed"
    try:
        out = shale.ok("run", "--rm", "--env-file", str(envfile), "-e", "A=b c",
                       "-e", "SHALE_TEST_PASS", "-e", "SHALE_TEST_UNSET",
                       "-e", "PATH=/bin:/usr/bin", "-h", "myhost", "bb", "env")
    finally:
        del os.environ["SHALE_TEST_PASS"]
    env = out.splitlines()
    assert {"FROM_FILE=1", "HOME=/elsewhere", "A=b c", "SHALE_TEST_PASS=passed",
            "PATH=/bin:/usr/bin", "HOSTNAME=myhost"} <= set(env), env
    assert not any(e.startswith("SHALE_TEST_UNSET") for e in env)
    assert shale.ok("run", "--rm", "-h", "myhost", "bb", "hostname") == "myhost\n"


def test_supplementary_groups_as_docker(shale: Shale) -> None:
    out = shale.ok("run", "--rm", "-u", "app", "bb", "id")
    assert out == "uid=1000(app) gid=1000(app) groups=10(wheel),1000(app)\n"
    assert shale.ok("run", "--rm", "-u", "1000:10", "bb", "id") == \
        "uid=1000(app) gid=10(wheel) groups=10(wheel)\n"


def test_workdir_and_entrypoint(shale: Shale) -> None:
    assert shale.ok("run", "--rm", "-w", "/a/b/c", "bb", "pwd") == "/a/b/c\n"
    # as docker: the missing directory is made (owned by root) whatever the user
    assert shale.ok("run", "--rm", "-u", "app", "-w", "/home/app/w", "bb", "sh", "-c",
                    "pwd; stat -c %U .") == "/home/app/w\nroot\n"
    assert shale.ok("run", "--rm", "--entrypoint", "echo", "bb", "a", "b") == "a b\n"
    assert shale.ok("run", "--rm", "--entrypoint", "/bin/echo", "bb") == "\n"
    # an image with an entrypoint: the command becomes its arguments
    shale.ok("run", "--name", "base", "bb", "true")
    shale.ok("commit", "-c", 'ENTRYPOINT ["echo", "ep"]', "-c", 'CMD ["default"]',
             "-c", "WORKDIR /usr/local", "-c", "ENV FOO=bar", "base", "ep")
    assert shale.ok("run", "--rm", "ep") == "ep default\n"
    assert shale.ok("run", "--rm", "ep", "given") == "ep given\n"
    assert shale.ok("run", "--rm", "--entrypoint", "pwd", "ep") == "/usr/local\n"
    assert shale.ok("run", "--rm", "--entrypoint", "sh", "ep", "-c", "echo $FOO") == "bar\n"
    res = shale("run", "--rm", "--entrypoint", "", "ep")
    assert res.code == 125 and "No command specified" in res.err, res
    cid = shale.ok("create", "ep", "x").strip()
    info = shale.inspect(cid)
    assert (info["Path"], info["Args"]) == ("echo", ["ep", "x"])
    assert info["Config"]["Entrypoint"] == ["echo", "ep"] and info["Config"]["Cmd"] == ["x"]


def test_runtime_flags(shale: Shale) -> None:
    def status(*flags: str) -> dict[str, str]:
        out = shale.ok("run", "--rm", *flags, "bb", "cat", "/proc/self/status")
        return dict(line.split(":\t", 1) for line in out.splitlines() if ":\t" in line)

    st = status()
    assert (st["CapEff"], st["NoNewPrivs"], st["Seccomp"]) == ("00000000a80425fb", "0", "2")
    assert status("--security-opt", "no-new-privileges")["NoNewPrivs"] == "1"
    assert status("--cap-drop", "ALL", "--cap-add", "CHOWN")["CapEff"] == "0000000000000001"
    assert status("--security-opt", "seccomp=unconfined")["Seccomp"] == "0"
    res = shale("run", "--rm", "--read-only", "--tmpfs", "/scratch", "bb", "sh", "-c",
                "touch /scratch/ok && echo tmpfs-ok; touch /x")
    assert res.code == 1 and res.out == "tmpfs-ok\n" and "Read-only file system" in res.err
    assert shale.ok("run", "--rm", "--network", "none", "bb", "ls", "/sys/class/net") == \
        "lo\n"
    out = shale.ok("run", "--rm", "--ulimit", "nofile=1024:2048", "bb", "sh", "-c",
                   "ulimit -n; ulimit -Hn")
    assert out == "1024\n2048\n"
    res = shale("run", "--rm", "--ulimit", "nofile=1024:999999999", "bb", "true")
    assert res.code == 0, "a limit above the host's is clamped, never fatal"
    assert res.err.startswith("WARNING: ulimit nofile hard limit 999999999 lowered to ")
    # --privileged: every capability of the host's bounding set, and a word on the others
    with open("/proc/self/status") as f:
        host = dict(line.split(":\t", 1) for line in f if ":\t" in line)["CapBnd"].strip()
    res = shale("run", "--rm", "--privileged", "bb", "grep", "CapEff", "/proc/self/status")
    assert (res.code, res.out) == (0, f"CapEff:\t{host}\n"), res
    if int(host, 16) != (1 << 41) - 1:  # this VM lacks CAP_SYS_RESOURCE
        assert res.err.startswith("WARNING: capabilities not available on this host: ")


# ------------------------------------------------------------------------------ exec
def test_exec(shale: Shale) -> None:
    cid = shale.detach("--name", "ex", "-w", "/tmp", "-e", "BASE=1", "bb", "sleep", "60")
    res = shale.proc("exec", "ex", "sh", "-c", "pwd; echo $BASE $HOME; id -u; echo e >&2")
    assert (res.returncode, res.stdout, res.stderr) == (0, "/tmp\n1 /root\n0\n", "e\n"), res
    res = shale.proc("exec", "-w", "/", "-e", "X=2", "-u", "app", "ex", "sh", "-c",
                     "pwd; echo $X $BASE $HOME; id -u")
    assert res.stdout == "/\n2 1 /home/app\n1000\n", res
    res = shale.proc("exec", "-i", "ex", "sh", "-c", "cat; exit 4", stdin=b"piped\n")
    assert (res.returncode, res.stdout) == (4, "piped\n"), res
    # the same pid namespace and files: PID 1 is the container's command
    res = shale.proc("exec", cid, "sh", "-c", "cat /proc/1/cmdline | tr '\\0' ' '")
    assert res.stdout == "sleep 60 ", res
    res = shale.proc("exec", "-d", "ex", "sh", "-c", "echo detached > /tmp/d")
    assert (res.returncode, res.stdout) == (0, ""), res
    for _ in range(100):
        if shale.proc("exec", "ex", "cat", "/tmp/d").stdout == "detached\n":
            break
        time.sleep(0.05)
    else:
        raise AssertionError("exec -d did not run")
    # exit codes (docker 20.10 gives 126 for a missing command in exec; docker 25+ and
    # the issue ask for 127)
    for args, code in ((["nosuch"], 127), (["/etc"], 126), (["sh", "-c", "exit 7"], 7)):
        assert shale.proc("exec", "ex", *args).returncode == code, args
    res = shale.proc("exec", "nosuchctr", "true")
    assert res.returncode == 1 and "No such container: nosuchctr" in res.stderr
    assert shale.proc("exec", "ex").returncode == 1  # docker: "requires at least 2 arguments"
    shale.ok("stop", "-t", "0", "ex")
    res = shale.proc("exec", "ex", "true")
    assert res.returncode == 1 and "is not running" in res.stderr, res


def test_sig_proxy(shale: Shale) -> None:
    """SIGTERM to an attached `run` reaches the container (docker: --sig-proxy=true)."""
    p = shale.popen("run", "--rm", "bb", "sh", "-c",
                    "trap 'echo got-term; exit 42' TERM; echo ready; "
                    "while true; do sleep 0.1; done")
    assert p.stdout is not None
    assert p.stdout.readline() == b"ready\n"
    p.send_signal(signal.SIGTERM)
    out, _ = p.communicate(timeout=20)
    assert (p.returncode, out) == (42, b"got-term\n")
    # --sig-proxy=false: the CLI dies of the signal, the container goes on
    p = shale.popen("run", "--sig-proxy=false", "--name", "np", "bb", "sh", "-c",
                    "echo ready; sleep 1; exit 3")
    assert p.stdout is not None and p.stdout.readline() == b"ready\n"
    p.send_signal(signal.SIGTERM)
    p.communicate(timeout=20)
    assert p.returncode == -signal.SIGTERM
    assert shale.ok("wait", "np") == "3\n"


# ------------------------------------------------------------------- inspect / ps / logs
def test_inspect_shape(sh1: Shale, tmp_path: Path) -> None:
    sh = sh1
    cid = sh.detach("--name", "insp", "-l", "k=v", "-v", f"{tmp_path}:/host:ro",
                    "-v", "named:/named", "--restart", "on-failure:3", "--init",
                    "-e", "E=1", "-w", "/w", "bb", "sleep", "60")
    info = sh.inspect("insp")
    assert info["Id"] == cid and info["Name"] == "/insp"
    assert (info["Path"], info["Args"]) == ("sleep", ["60"])
    st = info["State"]
    assert set(st) >= {"Status", "Running", "Paused", "Restarting", "OOMKilled", "Dead",
                       "Pid", "ExitCode", "Error", "StartedAt", "FinishedAt"}
    assert (st["Status"], st["Running"], st["Paused"], st["OOMKilled"]) == (
        "running", True, False, False)
    assert st["Pid"] > 0 and os.path.exists(f"/proc/{st['Pid']}")
    assert st["StartedAt"].endswith("Z") and st["FinishedAt"] == "0001-01-01T00:00:00Z"
    assert info["RestartCount"] == 0
    assert info["Image"] == json.loads(sh.ok("inspect", "bb"))[0]["Id"]
    cfg = info["Config"]
    assert cfg["Hostname"] == cid[:12] and cfg["Image"] == "bb"
    assert cfg["Labels"] == {"k": "v"} and "E=1" in cfg["Env"]
    assert (cfg["Cmd"], cfg["WorkingDir"], cfg["Tty"]) == (["sleep", "60"], "/w", False)
    hc = info["HostConfig"]
    assert hc["RestartPolicy"] == {"Name": "on-failure", "MaximumRetryCount": 3}
    assert hc["Init"] is True and hc["Binds"] == [f"{tmp_path}:/host:ro", "named:/named"]
    mounts = {m["Destination"]: m for m in info["Mounts"]}
    assert mounts["/host"]["Type"] == "bind" and mounts["/host"]["RW"] is False
    assert mounts["/host"]["Source"] == str(tmp_path)
    assert (mounts["/named"]["Type"], mounts["/named"]["Name"]) == ("volume", "named")
    assert "NetworkSettings" in info and "Networks" in info["NetworkSettings"]
    assert sh.ok("inspect", "-f", "{{.State.Status}} {{.Config.Hostname}}", "insp") == \
        f"running {cid[:12]}\n"
    assert sh.ok("container", "inspect", "-f", "{{json .State.Running}}", cid[:6]) == \
        "true\n"
    sh.ok("kill", "insp")
    st = sh.wait_status("insp", "exited")
    assert (st["ExitCode"], st["Pid"], st["Running"]) == (137, 0, False)
    assert st["FinishedAt"] > st["StartedAt"]
    res = sh("container", "inspect", "nosuch")
    assert res.code == 1 and res.out.strip() == "[]"


def test_ps(sh1: Shale) -> None:
    sh = sh1
    a = sh.detach("--name", "alpha", "-l", "team=a", "bb", "sleep", "60")
    assert sh("run", "--name", "beta", "-l", "team=b", "bb", "sh", "-c", "exit 2").code == 2
    b = sh.inspect("beta")["Id"]
    c = sh.ok("create", "--name", "gamma", "bb", "true").strip()
    assert sh.ok("ps", "-q").split() == [a[:12]]
    assert sh.ok("ps", "-aq").split() == [c[:12], b[:12], a[:12]]  # newest first
    assert sh.ok("ps", "-lq").split() == [c[:12]]
    assert sh.ok("ps", "-n", "2", "-q").split() == [c[:12], b[:12]]
    assert sh.ok("ps", "-q", "--no-trunc").split() == [a]

    def q(*filters: str) -> list[str]:
        args = [x for f in filters for x in ("-f", f)]
        return sorted(sh.ok("ps", "-aq", *args).split())

    assert q("status=exited") == [b[:12]]
    assert q("status=created") == [c[:12]]
    assert q("status=running") == [a[:12]]
    assert q("name=alp") == [a[:12]]
    assert q("label=team") == sorted([a[:12], b[:12]])
    assert q("label=team=b") == [b[:12]]
    assert q("exited=2") == [b[:12]]
    assert q("ancestor=bb") == sorted([a[:12], b[:12], c[:12]])
    assert q("status=running", "name=beta") == []
    res = sh("ps", "-f", "bogus=1")
    assert res.code == 1 and "nvalid filter" in res.err  # docker: exit 1
    out = sh.ok("ps", "-a", "--format", "{{.Names}}\t{{.Status}}\t{{.Command}}")
    rows = [line.split("\t") for line in out.splitlines()]
    assert [r[0] for r in rows] == ["gamma", "beta", "alpha"]
    assert rows[0][1] == "Created" and rows[1][1].startswith("Exited (2) ")
    assert rows[2][1].startswith("Up ") and rows[2][2] == '"sleep 60"'
    table = sh.ok("ps", "--format", "table {{.ID}}\t{{.Image}}\t{{.Names}}")
    assert table.splitlines()[0].split() == ["CONTAINER", "ID", "IMAGE", "NAMES"]
    assert table.splitlines()[1].split() == [a[:12], "bb", "alpha"]
    js = [json.loads(line) for line in sh.ok("ps", "-a", "--format", "json").splitlines()]
    assert [j["Names"] for j in js] == ["gamma", "beta", "alpha"]
    assert js[2]["State"] == "running" and js[2]["Labels"] == "team=a"
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d [+-]\d{4} \w+", js[2]["CreatedAt"])
    assert js[2]["Networks"] == "bridge"  # docker's default network
    header = sh.ok("ps").splitlines()[0].split()
    assert header == ["CONTAINER", "ID", "IMAGE", "COMMAND", "CREATED", "STATUS", "PORTS",
                      "NAMES"]


def test_logs(sh1: Shale) -> None:
    sh = sh1
    cid = sh.detach("bb", "sh", "-c", "echo one; echo two >&2; echo three; "
                    "printf partial; sleep 0.6; echo; echo four")
    # -f follows until the container exits
    p = sh.popen("logs", "-f", cid)
    out, err = p.communicate(timeout=20)
    assert (p.returncode, out, err) == (0, b"one\nthree\npartial\nfour\n", b"two\n")
    res = sh("logs", cid)
    assert (res.out, res.err) == ("one\nthree\npartial\nfour\n", "two\n")
    res = sh("logs", "--tail", "2", cid)
    assert res.out + res.err == "partial\nfour\n"
    assert sh("logs", "--tail", "0", cid).out == ""
    res = sh("logs", "-t", cid)
    stamp = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+Z "
    assert re.fullmatch(f"({stamp}\\w+\\n){{4}}", res.out), res.out
    assert sh("logs", "--since", "1h", cid).out == "one\nthree\npartial\nfour\n"
    future = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 3600))
    assert sh("logs", "--since", future, cid).out == ""
    # the log is docker's json-file
    log = Path(sh.inspect(cid)["LogPath"]).read_text().splitlines()
    first = json.loads(log[0])
    assert set(first) == {"log", "stream", "time"} and first["log"] == "one\n"
    # a tty container: one stream, \r\n
    tid = sh.ok("run", "-d", "-t", "bb", "sh", "-c", "echo out; echo err >&2").strip()
    sh.ok("wait", tid)
    assert sh.ok("logs", tid) == "out\r\nerr\r\n"
    res = sh("logs", "nosuch")
    assert res.code == 1 and "No such container" in res.err


def test_run_imports_stay_lazy(sh1: Shale) -> None:
    sh1.ok("run", "--rm", "bb", "true")  # the first run unpacks the image (tarfile)
    code = ("import sys; from shale.cli import main; rc = main(sys.argv[1:]); "
            "bad = [m for m in ('tarfile', 'httpx', 'rich', 'isal') if m in sys.modules]; "
            "print(bad); sys.exit(rc)")
    res = subprocess.run(["python3", "-c", code, "--root", str(sh1.root), "-s", "overlay",
                          "run", "--rm", "bb", "true"], capture_output=True, text=True,
                         check=False, timeout=60)
    assert (res.returncode, res.stdout) == (0, "[]\n"), res
