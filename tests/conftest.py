"""Fixtures every suite shares: a temp data root, the CLI run in-process, the CLI as a
separate process, a busybox rootfs tarball and the docker daemon (skipped when absent).

Keep these generic: the container and build suites reuse them.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import NamedTuple

import pytest
from helpers import busybox_entries, tar_bytes

from shale.engine import Engine

# The CLI as a child process, without relying on a console script being on PATH.
SHALE_ARGV = [sys.executable, "-c", "import sys; from shale.cli import main; sys.exit(main())"]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A test that asks for the ``docker`` fixture is a docker test: mark it, so
    ``-m 'not docker'`` deselects it without every module repeating the marker."""
    for item in items:
        if "docker" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.docker)


# ------------------------------------------------------------------------------ store
@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A fresh data root (not created: shale makes it, as it would on first use)."""
    return tmp_path / "root"


@pytest.fixture
def engine(root: Path) -> Iterator[Engine]:
    """An Engine on ``root``, for checks beneath the CLI (invariants, records)."""
    eng = Engine(root)
    try:
        yield eng
    finally:
        eng.close()


class CliResult(NamedTuple):
    code: int
    out: str
    err: str


class Cli:
    """``main(["--root", root, *args])`` in this process, with stdin fed from bytes and
    stdout/stderr captured (stdout also as bytes, for ``save`` to stdout)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def __call__(self, *args: str, stdin: bytes | None = None) -> CliResult:
        code, out, err = self.binary(*args, stdin=stdin)
        return CliResult(code, out.decode("utf-8", "replace"), err)

    def binary(self, *args: str, stdin: bytes | None = None) -> tuple[int, bytes, str]:
        from shale.cli import main

        out_buf, err_buf = io.BytesIO(), io.BytesIO()
        saved = sys.stdin, sys.stdout, sys.stderr
        # TextIOWrappers over BytesIO give the real interface (``.buffer``, ``isatty``)
        # that the CLI uses for binary stdin/stdout. They are kept referenced (and
        # detached at the end) because a collected wrapper closes its buffer.
        wrappers = (io.TextIOWrapper(io.BytesIO(stdin or b""), encoding="utf-8"),
                    io.TextIOWrapper(out_buf, encoding="utf-8", write_through=True),
                    io.TextIOWrapper(err_buf, encoding="utf-8", write_through=True))
        sys.stdin, sys.stdout, sys.stderr = wrappers
        try:
            code = main(["--root", str(self.root), *args])
        finally:
            sys.stdin, sys.stdout, sys.stderr = saved
            for w in wrappers:
                w.flush()
                w.detach()
        return code, out_buf.getvalue(), err_buf.getvalue().decode("utf-8", "replace")

    def ok(self, *args: str, stdin: bytes | None = None) -> str:
        """Run and require exit 0 with nothing on stderr; return stdout."""
        res = self(*args, stdin=stdin)
        assert (res.code, res.err) == (0, ""), res
        return res.out


@pytest.fixture
def cli(root: Path) -> Cli:
    return Cli(root)


def run_shale(root: Path, *args: str, stdin: bytes | None = None, timeout: float = 120,
              ) -> subprocess.CompletedProcess[bytes]:
    """The CLI in a child process (for concurrency and kill tests)."""
    return subprocess.run([*SHALE_ARGV, "--root", str(root), *args], input=stdin,
                          capture_output=True, timeout=timeout, check=False)


@pytest.fixture
def shale_proc(root: Path) -> Sequence[str]:
    """argv prefix that runs the CLI on ``root`` in a child process."""
    return [*SHALE_ARGV, "--root", str(root)]


# ----------------------------------------------------------------------------- inputs
@pytest.fixture(scope="session")
def busybox_tar(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A rootfs tarball from /bin/busybox (busybox-static): every applet a symlink, plus
    /etc/passwd and /etc/group. Byte-for-byte reproducible (fixed mtimes, owners)."""
    busybox = shutil.which("busybox") or "/bin/busybox"
    if not os.path.exists(busybox):
        pytest.skip("busybox-static is not installed")
    path = tmp_path_factory.mktemp("busybox") / "busybox.tar"
    path.write_bytes(tar_bytes(busybox_entries(busybox)))
    return path


# ----------------------------------------------------------------------------- docker
class Docker:
    """The real docker CLI; remembers images the test named so teardown removes them."""

    def __init__(self) -> None:
        self.images: list[str] = []
        self.bases: list[str] = []

    def __call__(self, *args: str, stdin: bytes | None = None, check: bool = True,
                 timeout: float = 300) -> subprocess.CompletedProcess[bytes]:
        res = subprocess.run(["docker", *args], input=stdin, capture_output=True,
                             timeout=timeout, check=False)
        if check and res.returncode != 0:
            raise AssertionError(f"docker {' '.join(args)} failed ({res.returncode}): "
                                 f"{res.stderr.decode(errors='replace')}")
        return res

    def out(self, *args: str, stdin: bytes | None = None) -> str:
        return self(*args, stdin=stdin).stdout.decode()

    def track(self, *names: str) -> None:
        """Remove these images (names must start with ``shaletest-``) at teardown."""
        for n in names:
            assert n.split("/")[-1].startswith("shaletest-") or n.startswith("sha256:"), n
            self.images.append(n)

    def track_descendants(self, image_id: str) -> None:
        """Also remove every image built on ``image_id`` (classic-builder steps, a failed
        build's last good step) at teardown."""
        self.bases.append(image_id)

    def _descendants(self) -> list[str]:
        ids = self("images", "-aq", "--no-trunc", check=False).stdout.decode().split()
        if not ids or not self.bases:
            return []
        res = self("image", "inspect", "-f", "{{.Id}} {{.Parent}}", *ids, check=False)
        parent = dict(line.split(" ", 1) for line in res.stdout.decode().splitlines()
                      if " " in line)
        doomed: list[str] = []
        for iid in parent:
            cur = parent.get(iid, "")
            while cur and cur not in self.bases:
                cur = parent.get(cur, "")
            if cur:
                doomed.append(iid)
        # children before parents: deeper chains first
        return sorted(doomed, key=lambda i: -_depth(parent, i))

    def cleanup(self) -> None:
        for iid in self._descendants():
            for cid in self("ps", "-aq", "--filter", f"ancestor={iid}",
                            check=False).stdout.decode().split():
                self("rm", "-f", cid, check=False)
            self("rmi", "-f", iid, check=False)
        for name in reversed(self.images):
            self("rmi", "-f", name, check=False)


def _depth(parent: dict[str, str], iid: str) -> int:
    n = 0
    while parent.get(iid):
        iid = parent[iid]
        n += 1
    return n


_docker_ok: bool | None = None


def docker_available() -> bool:
    global _docker_ok
    if _docker_ok is None:
        try:
            _docker_ok = shutil.which("docker") is not None and subprocess.run(
                ["docker", "version"], capture_output=True, timeout=10,
                check=False).returncode == 0
        except subprocess.TimeoutExpired:
            _docker_ok = False
    return _docker_ok


@pytest.fixture
def docker() -> Iterator[Docker]:
    """The docker daemon, or a skip when none answers ``docker version`` quickly."""
    if not docker_available():
        pytest.skip("no docker daemon")
    d = Docker()
    try:
        yield d
    finally:
        d.cleanup()
