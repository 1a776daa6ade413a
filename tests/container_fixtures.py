"""Fixtures for the container suites (test_containers, test_container_lifecycle,
test_container_fs): a fresh data root with one storage driver and one runtime, the ``bb``
image imported into it, and shale run in-process (fast) or as a child process (exec, tty,
signals, kills).

A test module imports the fixtures it uses, by their function names (``from
container_fixtures import bb_tar_fixture, shale_fixture  # noqa: F401``): pytest registers
them under their ``name=`` (``bb_tar``, ``shale``), so test arguments shadow nothing.

``bb`` is a busybox rootfs (conftest's, every applet a symlink) plus an ``app`` user with a
home, a ``/usr/local/tomcat/webapps`` tree (the seed 004 scenario) and a ``/data`` directory
with content (volume copy-up). Every container a test made is removed at teardown, so no
monitor, mount or cgroup outlives its test.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import SHALE_ARGV, Cli, CliResult
from helpers import Entry, busybox_entries, tar_bytes

needs_root = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="containers need root"),
    pytest.mark.skipif(not os.path.exists("/bin/busybox"), reason="needs /bin/busybox"),
]
HAVE_RUNC = shutil.which("runc") is not None
RUNTIMES = ["builtin", pytest.param("runc", marks=pytest.mark.skipif(
    not HAVE_RUNC, reason="runc not installed"))]
DRIVERS = ["overlay", "vfs"]
WEBAPPS = ("ROOT", "docs", "examples", "host-manager", "manager")


def bb_entries() -> list[Entry]:
    entries = [e for e in busybox_entries() if e.name not in ("etc/passwd", "etc/group")]
    entries += [
        Entry("etc/passwd", data=b"root:x:0:0:root:/root:/bin/sh\n"
              b"app:x:1000:1000:app:/home/app:/bin/sh\n"
              b"nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"),
        Entry("etc/group", data=b"root:x:0:\nwheel:x:10:root,app\napp:x:1000:\n"
              b"nogroup:x:65534:\n"),
        Entry("home", "dir"), Entry("home/app", "dir", mode=0o750, uid=1000, gid=1000),
        Entry("data", "dir"), Entry("data/seed.txt", data=b"from the image\n"),
        Entry("usr/local", "dir"), Entry("usr/local/tomcat", "dir"),
        Entry("usr/local/tomcat/webapps", "dir"),
    ]
    for app in WEBAPPS:
        entries += [Entry(f"usr/local/tomcat/webapps/{app}", "dir"),
                    Entry(f"usr/local/tomcat/webapps/{app}/index.html",
                          data=f"<h1>{app}</h1>\n".encode())]
    return entries


@pytest.fixture(scope="session", name="bb_tar")
def bb_tar_fixture(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not os.path.exists("/bin/busybox"):
        pytest.skip("busybox-static is not installed")
    path = tmp_path_factory.mktemp("bb") / "bb.tar"
    path.write_bytes(tar_bytes(bb_entries()))
    return path


class Shale:
    """shale on one data root, storage driver and runtime. ``self(...)`` runs the CLI in
    this process (output captured); ``proc``/``popen`` run it as a child process, needed
    when the output comes from the container's own fds (``exec``), for a tty, and for
    signals and kills."""

    def __init__(self, root: Path, driver: str, runtime: str) -> None:
        self.root, self.driver, self.runtime = root, driver, runtime
        self.cli = Cli(root)
        self.argv = [*SHALE_ARGV, "--root", str(root), "-s", driver]

    def _args(self, args: tuple[str, ...]) -> list[str]:
        # run/create take the runtime under test unless the test names one
        if args and args[0] in ("run", "create") and "--runtime" not in args:
            return [args[0], "--runtime", self.runtime, *args[1:]]
        return list(args)

    def __call__(self, *args: str, stdin: bytes | None = None) -> CliResult:
        return self.cli("-s", self.driver, *self._args(args), stdin=stdin)

    def ok(self, *args: str, stdin: bytes | None = None) -> str:
        res = self(*args, stdin=stdin)
        assert (res.code, res.err) == (0, ""), res
        return res.out

    def proc(self, *args: str, stdin: bytes | None = None, timeout: float = 60,
             ) -> subprocess.CompletedProcess[str]:
        res = subprocess.run([*self.argv, *self._args(args)], input=stdin,
                             capture_output=True, timeout=timeout, check=False)
        return subprocess.CompletedProcess(res.args, res.returncode,
                                           res.stdout.decode(errors="replace"),
                                           res.stderr.decode(errors="replace"))

    def popen(self, *args: str, **kw: Any) -> subprocess.Popen[bytes]:
        kw.setdefault("stdout", subprocess.PIPE)
        kw.setdefault("stderr", subprocess.PIPE)
        kw.setdefault("stdin", subprocess.DEVNULL)
        return subprocess.Popen([*self.argv, *self._args(args)], **kw)

    def detach(self, *args: str) -> str:
        """``run -d ARGS``: the container's full ID."""
        cid = self.ok("run", "-d", *args).strip()
        assert len(cid) == 64, cid
        return cid

    def inspect(self, name: str) -> dict[str, Any]:
        data: list[dict[str, Any]] = json.loads(self.ok("container", "inspect", name))
        return data[0]

    def state(self, name: str) -> dict[str, Any]:
        st: dict[str, Any] = self.inspect(name)["State"]
        return st

    def wait_status(self, name: str, status: str, timeout: float = 15) -> dict[str, Any]:
        end = time.monotonic() + timeout
        while True:
            st = self.state(name)
            if st["Status"] == status or time.monotonic() > end:
                assert st["Status"] == status, st
                return st
            time.sleep(0.05)

    def ids(self) -> list[str]:
        return self.ok("ps", "-aq", "--no-trunc").split()

    def mounts(self) -> list[str]:
        """Mount points under this data root in the host's namespace."""
        prefix = os.path.realpath(self.root) + "/"
        with open("/proc/self/mountinfo") as f:
            return [ln.split()[4] for ln in f if ln.split()[4].startswith(prefix)]

    def cleanup(self) -> None:
        if not (self.root / "metadata.db").exists():
            return
        ids = self.cli("ps", "-aq", "--no-trunc").out.split()
        if ids:
            self.cli("rm", "-f", "-v", *ids)
        for point in sorted(self.mounts(), key=len, reverse=True):
            subprocess.run(["umount", "-l", point], check=False, capture_output=True)


def _make(root: Path, bb_tar: Path, driver: str, runtime: str) -> Iterator[Shale]:
    sh = Shale(root, driver, runtime)
    sh.ok("import", str(bb_tar), "bb")
    try:
        yield sh
    finally:
        sh.cleanup()


@pytest.fixture(params=RUNTIMES, name="shale")
def shale_fixture(request: pytest.FixtureRequest, root: Path, bb_tar: Path) -> Iterator[Shale]:
    """Overlay storage, each runtime: for what the runtime does (run, exec, stop...)."""
    yield from _make(root, bb_tar, "overlay", request.param)


@pytest.fixture(params=DRIVERS, name="layered")
def layered_fixture(request: pytest.FixtureRequest, root: Path, bb_tar: Path) -> Iterator[Shale]:
    """Builtin runtime, each storage driver: for what the layers do (diff, commit, cp)."""
    yield from _make(root, bb_tar, request.param, "builtin")


@pytest.fixture(name="sh1")
def sh1_fixture(root: Path, bb_tar: Path) -> Iterator[Shale]:
    """One configuration (overlay, builtin) for engine-side behaviour."""
    yield from _make(root, bb_tar, "overlay", "builtin")


def pty_run(argv: list[str], *, rows: int = 24, cols: int = 80, send: bytes = b"",
            send_when: bytes = b"", resize: tuple[int, int] | None = None,
            timeout: float = 30) -> tuple[int, bytes]:
    """Run ``argv`` on a new pty of the given size; once its output contains ``send_when``,
    resize the terminal to ``resize`` (the kernel sends SIGWINCH) and type ``send``; return
    (exit code, everything it printed)."""
    import fcntl
    import pty
    import select
    import struct
    import termios

    pid, fd = pty.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            fcntl.ioctl(0, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
            os.execvp(argv[0], argv)
        finally:
            os._exit(127)
    out = b""
    start = time.monotonic()
    sent = not send
    try:
        while True:
            if not sent and send_when in out:
                if resize:
                    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", *resize, 0, 0))
                    time.sleep(0.3)  # let the SIGWINCH travel before the keystrokes
                os.write(fd, send)
                sent = True
            left = timeout - (time.monotonic() - start)
            if left <= 0:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                raise AssertionError(f"{argv} did not finish: {out!r}")
            ready, _, _ = select.select([fd], [], [], min(left, 0.05))
            if ready:
                try:
                    data = os.read(fd, 65536)
                except OSError:  # EIO: the child side closed
                    break
                if not data:
                    break
                out += data
    finally:
        os.close(fd)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), out


def assert_top_layer_sized(sh: Shale, ref: str) -> None:
    """The sizes recorded for ``ref``'s top layer while its tar was written agree with a
    scan of the stored blob, and the blob verifies."""
    from shale.engine import Engine
    from shale.tarscan import scan_copy

    eng = Engine(sh.root, sh.driver)
    try:
        top = eng.images.layers(eng.images.load(eng.images.resolve(ref)))[-1]
        with eng.content.open(top.blob) as f:
            scanned = scan_copy(f, lambda _b: None)
        assert (top.content_size, top.diff_size) == (scanned.content_size, scanned.tar_size)
        assert eng.content.verify(top.blob)
    finally:
        eng.close()
