#!/usr/bin/env python3
"""Build benchmark: shale against docker's classic builder, in one run.

    python3 bench/build_bench.py [--keep]

One Dockerfile of 11 steps (4 RUNs, a COPY of 200 files, metadata steps) on the same
busybox base (contrib/mkbusybox.sh, imported into both engines), timed twice per engine:

- cold: nothing cached (``--no-cache``; the base itself is already unpacked in both);
- cached: the same build again, every step a cache hit (median of 3 runs each).

Each line prints shale's time, docker's (``DOCKER_BUILDKIT=0 docker build``), and the
ratio docker/shale (> 1: shale is faster). Targets (issue 6): cold at most half of docker's
time, cached no slower than docker. Standard library only; needs root and a docker daemon.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
BASE = "shalebench-build-base"
TAG = "shalebench-build"

DOCKERFILE = """\
FROM {base}
ENV APP=/app LANG=C.UTF-8
WORKDIR /app
COPY files/ /app/files/
RUN mkdir -p /app/out && ls /app/files | wc -l > /app/out/count
RUN for i in 1 2 3 4 5; do echo "line $i" >> /app/out/log; done
ARG VERSION=1.0
RUN echo "$VERSION" > /app/out/version && cp /app/files/f001.txt /app/out/
LABEL org.example.version="1.0" org.example.name="bench"
RUN rm -f /app/files/f200.txt && chmod -R go-w /app/out
CMD ["cat", "/app/out/count"]
"""


def shale_argv() -> list[str]:
    """The installed console script next to this interpreter (a version manager's shim on
    PATH, pyenv's here, costs ~0.1 s a call: that is not shale's time), else PATH's."""
    beside = Path(sys.executable).with_name("shale")
    exe = str(beside) if beside.exists() else shutil.which("shale")
    return [exe] if exe else [sys.executable, "-c", "import sys; from shale.cli import main; "
                              "sys.exit(main())"]


def run(argv: list[str], env: dict[str, str] | None = None) -> float:
    t0 = time.perf_counter()
    res = subprocess.run(argv, capture_output=True, env=env, check=False)
    dt = time.perf_counter() - t0
    if res.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed ({res.returncode}):\n"
                         f"{res.stdout.decode(errors='replace')[-3000:]}"
                         f"{res.stderr.decode(errors='replace')[-3000:]}")
    return dt


def make_context(ctx: Path) -> None:
    (ctx / "files").mkdir(parents=True)
    for i in range(1, 201):
        (ctx / "files" / f"f{i:03d}.txt").write_text(f"file {i}\n" * (i % 7 + 1))
    (ctx / "Dockerfile").write_text(DOCKERFILE.format(base=BASE))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--keep", action="store_true", help="keep the shale root and images")
    opts = ap.parse_args()
    if os.geteuid() != 0:
        print("needs root (builds run containers)", file=sys.stderr)
        return 1
    # byte-compile shale first, as an installed package is: with PYTHONDONTWRITEBYTECODE
    # set, a source checkout would otherwise recompile every edited module on each run
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(REPO / "src" / "shale")],
                   check=False, capture_output=True)
    work = Path(tempfile.mkdtemp(prefix="shalebench-build-"))
    root = work / "root"
    shale = [*shale_argv(), "--root", str(root)]
    denv = {**os.environ, "DOCKER_BUILDKIT": "0"}
    try:
        base_tar = work / "base.tar"
        subprocess.run([str(REPO / "contrib" / "mkbusybox.sh"), str(base_tar)], check=True,
                       capture_output=True)
        ctx = work / "ctx"
        make_context(ctx)
        run([*shale, "import", str(base_tar), BASE])
        run([*shale, "run", "--rm", BASE, "true"])  # unpack the base, as docker's is
        run(["docker", "import", str(base_tar), BASE])

        results: list[tuple[str, float, float]] = []
        s_cold = run([*shale, "build", "--no-cache", "-q", "-t", TAG, str(ctx)])
        d_cold = run(["docker", "build", "--no-cache", "-q", "-t", TAG, str(ctx)], denv)
        results.append(("cold build (11 steps, 4 RUN, COPY 200 files)", s_cold, d_cold))
        # a cached rebuild takes ~0.1 s: the median of 3 (alternating) tames the noise
        hot: tuple[list[float], list[float]] = ([], [])
        for _ in range(3):
            hot[0].append(run([*shale, "build", "-q", "-t", TAG, str(ctx)]))
            hot[1].append(run(["docker", "build", "-q", "-t", TAG, str(ctx)], denv))
        results.append(("fully cached rebuild (median of 3)", sorted(hot[0])[1],
                        sorted(hot[1])[1]))

        print(f"{'benchmark':48} {'shale':>8} {'docker':>8} {'docker/shale':>13}")
        for name, s, d in results:
            print(f"{name:48} {s:7.2f}s {d:7.2f}s {d / s:12.2f}x")
        print("targets: cold <= 0.5x docker's time (ratio >= 2), cached no slower "
              "(ratio >= 1)")
    finally:
        if not opts.keep:
            _cleanup_docker()
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"kept: {work}")
    return 0


def _cleanup_docker() -> None:
    """Remove the bench image, the classic builder's intermediate images and the base."""
    def out(*args: str) -> str:
        return subprocess.run(["docker", *args], capture_output=True, text=True,
                              check=False).stdout

    base_id = out("image", "inspect", "-f", "{{.Id}}", BASE).strip()
    subprocess.run(["docker", "rmi", "-f", TAG], capture_output=True, check=False)
    ids = out("images", "-aq", "--no-trunc").split()
    if base_id and ids:
        parents = dict(line.split(" ", 1) for line in
                       out("image", "inspect", "-f", "{{.Id}} {{.Parent}}", *ids).splitlines()
                       if " " in line)

        def depth(i: str) -> int:
            n = 0
            while parents.get(i) and parents[i] != base_id:
                i, n = parents[i], n + 1
            return n if parents.get(i) == base_id else -1

        for iid in sorted((i for i in parents if depth(i) >= 0), key=depth, reverse=True):
            subprocess.run(["docker", "rmi", "-f", iid], capture_output=True, check=False)
    subprocess.run(["docker", "rmi", "-f", BASE], capture_output=True, check=False)


if __name__ == "__main__":
    sys.exit(main())
