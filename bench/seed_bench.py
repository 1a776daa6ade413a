#!/usr/bin/env python3
"""Seed build benchmark: the seed's Dockerfile, shale against docker's classic builder.

    python3 bench/seed_bench.py [--rounds N] [--prefetched] [--also SRC] [--keep]

The Dockerfile of the seeds (issue 6's acceptance), verbatim but for the base's name:

    FROM debian
    MAINTAINER mylinux
    RUN apt-get update && apt-get install -y emacs
    RUN apt-get install -y apache2
    CMD ["/bin/bash"]

on a debootstrap Debian base (contrib/mkdebian.sh, made once and cached in
/tmp/shalebench-cache, ``$SHALEBENCH_CACHE``) imported into each engine with
``import -c 'CMD ["bash"]'``. Every round is cold for both engines: a fresh shale root (so
the base is imported again and unpacked on first use, as a user's first build does) and,
for docker, the base imported again and every image of the previous round removed. apt
fetches from the mirror each time, for both alike; the mirror's speed varies from minute
to minute, so the engines take turns going first (shale in odd rounds, docker in even
ones) and the figures are medians over the rounds.

Lines printed (medians; ratio = docker / shale, > 1: shale is faster):

- ``import + build``: the user's seed workflow from the tarball (shale unpacks the base
  lazily during the build, docker during its import, so only the sum is like for like);
- ``build``: the build alone; ``step 3`` / ``step 4``: the two RUN steps, from their
  ``Step N/5`` line to the next one (the apt work plus the engine's container start and
  layer commit);
- ``cached rebuild``: the same build again, all cache hits (median of 3, last round).

``--prefetched`` takes the mirror out: each engine first builds (untimed) an image that
ran ``apt-get update && apt-get install -d`` of both packages, and the timed Dockerfile
installs them from that image with ``--no-download``: the engines' own cost with apt's
dpkg work alone. ``--also SRC`` measures a second shale as a third engine in the same
rounds: the package under ``SRC/shale`` (e.g. ``git archive`` of a commit's ``src``), run
through ``PYTHONPATH``, to compare a change with what came before it under the same load.
Standard library only; needs root, a docker daemon, debootstrap and the
Debian mirror.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from build_bench import run, shale_argv  # bench/ is the script's directory

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
CACHE = Path(os.environ.get("SHALEBENCH_CACHE", "/tmp/shalebench-cache"))
D_BASE = "shalebench-seed-debian"
D_PREP = "shalebench-seed-prep"
D_TAG = "shalebench-seed"

SEED = """\
FROM {base}
MAINTAINER mylinux
RUN apt-get update && apt-get install -y emacs
RUN apt-get install -y apache2
CMD ["/bin/bash"]
"""
PREP = """\
FROM {base}
RUN apt-get update && apt-get install -d -y emacs apache2 >/dev/null
"""
PREFETCHED = """\
FROM {base}
MAINTAINER mylinux
RUN apt-get install -y --no-download emacs
RUN apt-get install -y --no-download apache2
CMD ["/bin/bash"]
"""


def debian_tar() -> Path:
    out = CACHE / "debian-bookworm-minbase.tar"  # the name bench/run_bench.py caches it as
    if not out.exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        print(f"debootstrap --variant=minbase bookworm (once; cached in {CACHE})", flush=True)
        tmp = out.with_suffix(".part")
        subprocess.run(["sh", str(REPO / "contrib" / "mkdebian.sh"), str(tmp)], check=True,
                       stdout=subprocess.DEVNULL)
        tmp.rename(out)
    return out


def timed_build(argv: list[str], env: dict[str, str] | None, log: Path
                ) -> tuple[float, dict[int, float]]:
    """Run a build, streaming its output into ``log``; the total time and the time of
    each step (from its ``Step N/M`` line to the next step's, or to the end)."""
    os.sync()  # the previous build's write-back is not billed to this one
    starts: dict[int, float] = {}
    t0 = time.perf_counter()
    with open(log, "wb") as out:
        p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
        assert p.stdout is not None
        for line in p.stdout:
            now = time.perf_counter() - t0
            out.write(b"%8.2f " % now + line)
            if line.startswith(b"Step ") and b"/" in line:
                starts[int(line[5:line.index(b"/")])] = now
        rc = p.wait()
    total = time.perf_counter() - t0
    if rc != 0:
        raise SystemExit(f"{' '.join(argv)} failed ({rc}); see {log}")
    order = sorted(starts)
    ends = [starts[n] for n in order[1:]] + [total]
    return total, {n: end - starts[n] for n, end in zip(order, ends, strict=True)}


def docker_out(*args: str) -> str:
    return subprocess.run(["docker", *args], capture_output=True, text=True,
                          check=False).stdout


def docker_cleanup(*bases: str) -> None:
    """Remove the bench's tags, every image descending from one of ``bases`` (the classic
    builder's intermediates), then the bases. Nothing else of docker's is touched."""
    subprocess.run(["docker", "rmi", "-f", D_TAG], capture_output=True, check=False)
    for base in bases:
        base_id = docker_out("image", "inspect", "-f", "{{.Id}}", base).strip()
        ids = docker_out("images", "-aq", "--no-trunc").split()
        if base_id and ids:
            parents = dict(line.split(" ", 1) for line in
                           docker_out("image", "inspect", "-f", "{{.Id}} {{.Parent}}",
                                      *ids).splitlines() if " " in line)

            def depth(i: str, parents: dict[str, str] = parents, base_id: str = base_id
                      ) -> int:
                n = 0
                while parents.get(i) and parents[i] != base_id:
                    i, n = parents[i], n + 1
                return n if parents.get(i) == base_id else -1

            for iid in sorted((i for i in parents if depth(i) >= 0), key=depth,
                              reverse=True):
                subprocess.run(["docker", "rmi", "-f", iid], capture_output=True,
                               check=False)
        subprocess.run(["docker", "rmi", "-f", base], capture_output=True, check=False)


class Engine:
    """One engine's round: import the base, (prefetch,) build, keep the figures."""

    def __init__(self, name: str, work: Path, tar: Path, prefetched: bool,
                 src: Path | None = None) -> None:
        self.name, self.work, self.tar, self.prefetched = name, work, tar, prefetched
        self.docker = name == "docker"
        self.figures: dict[str, list[float]] = {}
        self.ctx = work / f"ctx-{name}"
        self.ctx.mkdir()
        base = D_BASE if self.docker else "debian"
        if prefetched:
            (work / f"prep-{name}").mkdir()
            (work / f"prep-{name}" / "Dockerfile").write_text(PREP.format(base=base))
            base = D_PREP if self.docker else "prep"
        (self.ctx / "Dockerfile").write_text(
            (PREFETCHED if prefetched else SEED).format(base=base))
        self.env: dict[str, str] | None = None
        if self.docker:
            self.env = {**os.environ, "DOCKER_BUILDKIT": "0"}
        elif src is not None:
            self.env = {**os.environ, "PYTHONPATH": str(src)}
        self.root: Path | None = None

    def cli(self) -> list[str]:
        if self.docker:
            return ["docker"]
        assert self.root is not None
        return [*shale_argv(), "--root", str(self.root)]

    def add(self, key: str, value: float) -> None:
        self.figures.setdefault(key, []).append(value)

    def round(self, n: int) -> None:
        if not self.docker:
            if self.root is not None:
                shutil.rmtree(self.root, ignore_errors=True)
            self.root = self.work / f"root-{self.name}-{n}"
            base = "debian"
        else:
            docker_cleanup(D_BASE)
            base = D_BASE
        cli, env = self.cli(), self.env
        t_import = run([*cli, "import", "-c", 'CMD ["bash"]', str(self.tar), base], env)
        if self.prefetched:  # untimed: fetch the packages into an image
            run([*cli, "build", "-q", "-t", D_PREP if self.docker else "prep",
                 str(self.work / f"prep-{self.name}")], env)
        tag = D_TAG if self.docker else "mylinux"
        total, steps = timed_build([*cli, "build", "--no-cache", "-t", tag, str(self.ctx)],
                                   env, self.work / f"{self.name}-{n}.log")
        self.add("build", total)
        if not self.prefetched:  # there the base's import is followed by the prep build
            self.add("import + build", t_import + total)
        for step, dt in steps.items():
            self.add(f"step {step}", dt)
        print(f"  round {n} {self.name:6} import {t_import:5.2f}s  build {total:6.2f}s  "
              + "  ".join(f"step {k} {v:5.2f}s" for k, v in steps.items() if v >= 0.5),
              flush=True)

    def cached(self) -> None:
        tag = D_TAG if self.docker else "mylinux"
        for _ in range(3):
            self.add("cached rebuild", run([*self.cli(), "build", "-q", "-t", tag,
                                            str(self.ctx)], self.env))

    def check(self) -> None:
        """The image works: emacs and apache2 run in it (untimed)."""
        tag = D_TAG if self.docker else "mylinux"
        run([*self.cli(), "run", "--rm", tag, "sh", "-c",
             "emacs --version >/dev/null && apache2 -v >/dev/null"], self.env)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5, help="cold builds per engine (5)")
    ap.add_argument("--prefetched", action="store_true",
                    help="packages fetched beforehand: no mirror in the timed build")
    ap.add_argument("--also", type=Path, metavar="SRC",
                    help="also measure the shale package in SRC/shale (PYTHONPATH)")
    ap.add_argument("--keep", action="store_true", help="keep the work dir and images")
    opts = ap.parse_args()
    if os.geteuid() != 0:
        print("needs root (builds run containers)", file=sys.stderr)
        return 1
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(REPO / "src" / "shale")],
                   check=False, capture_output=True)
    tar = debian_tar()
    work = Path(tempfile.mkdtemp(prefix="shalebench-seed-"))
    engines = [Engine("shale", work, tar, opts.prefetched),
               Engine("docker", work, tar, opts.prefetched)]
    if opts.also:
        src = opts.also.resolve()
        subprocess.run([sys.executable, "-m", "compileall", "-q", str(src / "shale")],
                       check=False, capture_output=True)
        engines.insert(1, Engine("also", work, tar, opts.prefetched, src))
    print(f"seed build{' (prefetched packages)' if opts.prefetched else ''}: "
          f"{opts.rounds} rounds, engines taking turns; load average "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    t_start = time.perf_counter()
    try:
        for n in range(1, opts.rounds + 1):
            k = (n - 1) % len(engines)  # each engine takes its turn at going first
            for eng in engines[k:] + engines[:k]:
                eng.round(n)
        for eng in engines:
            eng.cached()
            eng.check()
        fig = {e.name: e.figures for e in engines}
        also = "also" in fig
        print(f"\n{'seed Dockerfile, median of ' + str(opts.rounds):40} {'shale':>8} "
              f"{'docker':>8} {'docker/shale':>13}" + (f" {'also':>8} {'docker/also':>12}"
                                                        if also else ""))
        for key in ("import + build", "build", "step 3", "step 4", "cached rebuild"):
            if all(key in f for f in fig.values()):
                s, d = statistics.median(fig["shale"][key]), statistics.median(fig["docker"][key])
                line = f"{key:40} {s:7.2f}s {d:7.2f}s {d / s:12.2f}x"
                if also:
                    a = statistics.median(fig["also"][key])
                    line += f" {a:7.2f}s {d / a:11.2f}x"
                print(line)
        print("target: no slower than docker (ratio >= 1); load average at end "
              f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}; "
              f"{time.perf_counter() - t_start:.0f} s in all")
    finally:
        if not opts.keep:
            docker_cleanup(D_BASE, D_PREP)
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"kept: {work}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
