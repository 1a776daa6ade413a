#!/usr/bin/env python3
"""Side-by-side timings: shale against docker (and podman where cheap), in one run.

    python3 bench/run_bench.py [--quick] [--big] [--only NAME[,NAME...]] [--keep]

Every figure is measured here, on this machine, in this run; nothing is asserted. Each
benchmark prints one table line: the shale figure, docker's, podman's where measured, the
ratio (docker/shale for times: > 1 means shale is faster), the peak RSS of the shale
process, and the target it is held against. See bench/README.md for what each line means.

Standard library only. Needs root (containers), a running docker daemon for the docker
column, and the `shale` console script installed (`pip install -e .`).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
PREFIX = "shalebench-"
CACHE = Path(os.environ.get("SHALEBENCH_CACHE", "/tmp/shalebench-cache"))
GROUPS = ("startup", "saveload", "share", "run", "exec", "commit")
ALIASES = {"save": "saveload", "load": "saveload", "import": "saveload"}
MB = 1_000_000
ROOTFS_VERSION = 1  # bump when the generator changes, so cached tarballs are remade


# ------------------------------------------------------------------------- processes
@dataclass
class Proc:
    argv: list[str]
    rc: int
    seconds: float
    maxrss_kb: int | None  # peak RSS of the process and the children it waited for
    out: str
    err: str


class CommandFailed(RuntimeError):
    pass


TIME = "/usr/bin/time" if os.access("/usr/bin/time", os.X_OK) else None


def call(argv: Sequence[str], check: bool = True, wrap: bool = False) -> Proc:
    """Run one command, timed from spawn to reap.

    With `wrap`, the command runs under GNU time (`/usr/bin/time -f %M`), whose report is
    its peak RSS: wait4's own ru_maxrss is no good here, as it counts this Python process's
    memory, which the child had (vfork/fork) before it exec'd. Every engine's commands are
    wrapped alike, so the ~1 ms the wrapper costs falls on all of them."""
    argv = [str(a) for a in argv]
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err, \
            tempfile.NamedTemporaryFile(prefix=PREFIX + "rss-") as rss:
        full = [TIME, "-q", "-f", "%M", "-o", rss.name, *argv] if wrap and TIME else argv
        t0 = time.perf_counter()
        p = subprocess.Popen(full, stdin=subprocess.DEVNULL, stdout=out, stderr=err)
        p.wait()
        dt = time.perf_counter() - t0
        out.seek(0)
        err.seek(0)
        maxrss = None
        if wrap and TIME:
            try:
                maxrss = int(Path(rss.name).read_text().split()[-1])
            except (ValueError, IndexError, OSError):
                pass
        res = Proc(argv, p.returncode, dt, maxrss,
                   out.read().decode(errors="replace"), err.read().decode(errors="replace"))
    if check and res.rc != 0:
        raise CommandFailed(f"{' '.join(argv)} -> exit {res.rc}\n{res.err.strip()[-2000:]}")
    return res


def note(msg: str) -> None:
    print(f"  .. {msg}", file=sys.stderr, flush=True)


def sync() -> None:
    """Flush dirty pages so one command's write-back is not billed to the next one."""
    os.sync()


def mounts_under(path: Path) -> list[str]:
    p = str(path.resolve())
    found = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            mp = line.split()[4].replace("\\040", " ")
            if mp == p or mp.startswith(p + "/"):
                found.append(mp)
    return found


def loadavg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def du_bytes(path: Path | str) -> int:
    """Disk use in bytes (`du -s`, allocated blocks; hard links counted once)."""
    r = call(["du", "-s", "--block-size=1", "-x", str(path)])
    return int(r.out.split()[0])


# ------------------------------------------------------------------------- engines
def find_shale(explicit: str | None) -> str:
    """The installed console script. A pyenv shim (a bash script that runs `pyenv exec`,
    ~100 ms on its own) is resolved to the script it execs, so the figure is shale's:
    the interpreter's start-up is counted, the version manager's is not."""
    path = explicit or shutil.which("shale")
    if not path:
        sys.exit("shale is not installed: python3 -m pip install -e .")
    try:
        head = Path(path).read_bytes()[:2048]
    except OSError:
        head = b""
    if b"pyenv" in head and b"exec" in head and shutil.which("pyenv") and not explicit:
        r = call(["pyenv", "which", "shale"], check=False)
        if r.rc == 0 and r.out.strip():
            return r.out.strip()
    return path


def script_interpreter(script: str) -> str:
    with open(script, "rb") as f:
        first = f.readline().decode(errors="replace").strip()
    if first.startswith("#!"):
        return first[2:].split()[0]
    return sys.executable


class Shale:
    def __init__(self, exe: str, root: Path) -> None:
        self.exe, self.root = exe, root

    def argv(self, *args: object, root: Path | None = None) -> list[str]:
        return [self.exe, "--root", str(root or self.root), *map(str, args)]

    def __call__(self, *args: object, root: Path | None = None, check: bool = True) -> Proc:
        return call(self.argv(*args, root=root), check=check, wrap=True)

    def cleanup(self, root: Path | None = None) -> list[str]:
        root = root or self.root
        problems = []
        if root.exists():
            ids = self("ps", "-aq", "--no-trunc", root=root, check=False).out.split()
            if ids:
                self("rm", "-f", *ids, root=root, check=False)
            left = mounts_under(root)
            if left:
                problems.append(f"{len(left)} mount(s) left under {root} after "
                                f"`shale rm -f` of every container: {left[:3]}")
                for mp in sorted(left, key=len, reverse=True):
                    call(["umount", "-l", mp], check=False)
            shutil.rmtree(root, ignore_errors=True)
        return problems


class Docker:
    def __init__(self) -> None:
        self.ok = shutil.which("docker") is not None and \
            call(["docker", "info", "--format", "{{.ServerVersion}}"], check=False).rc == 0
        self.version = call(["docker", "info", "--format", "{{.ServerVersion}} "
                                                           "{{.Driver}}"],
                            check=False).out.strip() if self.ok else "not available"
        self.containers: set[str] = set()
        self.images: set[str] = set()

    def argv(self, *args: object) -> list[str]:
        return ["docker", *map(str, args)]

    def __call__(self, *args: object, check: bool = True) -> Proc:
        return call(self.argv(*args), check=check, wrap=True)

    def image(self, ref: str) -> str:
        self.images.add(ref)
        return ref

    def container(self, name: str) -> str:
        self.containers.add(name)
        return name

    def layer_root(self) -> Path:
        root = self("info", "--format", "{{.DockerRootDir}}").out.strip()
        return Path(root) / "overlay2"

    def layer_dirs(self, ref: str) -> list[Path]:
        """The overlay2 dirs of an image's layers (each holds diff/, link, lower...)."""
        data = json.loads(self("image", "inspect", "--format", "{{json .GraphDriver.Data}}",
                               ref).out)
        paths = [data.get("UpperDir", ""), *data.get("LowerDir", "").split(":")]
        return [Path(p).parent for p in paths if p]

    def sweep_leftovers(self) -> None:
        """Remove `shalebench-` containers and images a killed earlier run left behind."""
        if not self.ok:
            return
        names = self("ps", "-a", "--filter", f"name=^{PREFIX}", "--format", "{{.Names}}",
                     check=False).out.split()
        if names:
            self("rm", "-f", *names, check=False)
        refs = [r for r in self("images", "--format", "{{.Repository}}:{{.Tag}}",
                                check=False).out.split() if r.startswith(PREFIX)]
        if refs:
            self("rmi", "-f", *refs, check=False)

    def cleanup(self) -> None:
        if not self.ok:
            return
        if self.containers:
            self("rm", "-f", *sorted(self.containers), check=False)
        self.sweep_leftovers()
        if self.images:
            self("rmi", "-f", *sorted(self.images), check=False)


class Podman:
    """podman on a private temporary store, so nothing of the machine's is touched."""

    def __init__(self, base: Path) -> None:
        self.dir = base / "podman"
        self.ok = shutil.which("podman") is not None
        self.version = ""
        if self.ok:
            r = call(["podman", "--version"], check=False)
            self.ok = r.rc == 0
            self.version = r.out.strip().replace("podman version ", "")
        (self.dir / "tmp").mkdir(parents=True, exist_ok=True)
        # podman's default rlimits (nofile and nproc 1048576) are more than runc may set
        # here: ask for this process's own soft nofile and a modest nproc (root ignores it)
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        self.ulimits = ["--ulimit", f"nofile={soft}:{soft}", "--ulimit", "nproc=4096:4096"]

    def argv(self, *args: object) -> list[str]:
        return ["podman", "--root", str(self.dir / "root"), "--runroot", str(self.dir / "run"),
                "--tmpdir", str(self.dir / "tmp"), "--storage-driver", "overlay",
                "--cgroup-manager", "cgroupfs", "--events-backend", "file",
                *map(str, args)]

    def __call__(self, *args: object, check: bool = True) -> Proc:
        return call(self.argv(*args), check=check, wrap=True)

    def cleanup(self) -> None:
        if self.ok and self.dir.exists():
            self("rm", "-af", "-t", "0", check=False)
            self("rmi", "-af", check=False)
            self("system", "reset", "-f", check=False)
        for mp in sorted(mounts_under(self.dir) if self.dir.exists() else [], key=len,
                         reverse=True):
            call(["umount", "-l", mp], check=False)
        shutil.rmtree(self.dir, ignore_errors=True)


# ------------------------------------------------------------------------- results
@dataclass
class Figure:
    seconds: float | None = None
    nbytes: int | None = None  # archive size (throughput = nbytes / seconds) or disk bytes
    rss_kb: int | None = None
    samples: list[float] = field(default_factory=list)

    def text(self, kind: str) -> str:
        if kind == "bytes":
            return "-" if self.nbytes is None else fmt_bytes(self.nbytes)
        if self.seconds is None:
            return "-"
        t = fmt_time(self.seconds)
        if kind == "throughput" and self.nbytes:
            return f"{t} {self.nbytes / MB / self.seconds:5.0f}MB/s"
        return t


def fmt_time(s: float) -> str:
    if s < 0.01:
        return f"{s * 1000:.1f} ms"
    return f"{s * 1000:.0f} ms" if s < 1 else f"{s:.2f} s"


def fmt_bytes(n: float) -> str:
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.2f} {unit}"
    return f"{n:.0f} B"


class Table:
    COLS = (("benchmark", 30), ("shale", 21), ("docker", 21), ("podman", 21),
            ("docker/shale", 13), ("shale RSS", 10), ("target", 0))

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.problems: list[str] = []

    def header(self) -> None:
        head = " ".join(n.ljust(w) for n, w in self.COLS).rstrip()
        self.emit(head)
        self.emit("-" * len(head))

    def emit(self, line: str) -> None:
        self.lines.append(line)
        print(line, flush=True)

    def row(self, name: str, kind: str, shale: Figure, docker: Figure | None = None,
            podman: Figure | None = None, target: str = "") -> None:
        ratio = "-"
        if docker is not None and kind in ("time", "throughput") and shale.seconds and \
                docker.seconds:
            if kind == "throughput" and shale.nbytes and docker.nbytes:
                r = (shale.nbytes / shale.seconds) / (docker.nbytes / docker.seconds)
            else:
                r = docker.seconds / shale.seconds
            ratio = f"{r:.2f}x"
        elif docker is not None and kind == "bytes" and shale.nbytes and docker.nbytes:
            ratio = f"{docker.nbytes / shale.nbytes:.2f}x"
        rss = "-" if shale.rss_kb is None else f"{shale.rss_kb / 1024:.0f} MB"
        cells = [name, shale.text(kind), docker.text(kind) if docker else "-",
                 podman.text(kind) if podman else "-", ratio, rss, target]
        self.emit(" ".join(c.ljust(w) for c, (_, w) in zip(cells, self.COLS, strict=True)).rstrip())

    def problem(self, msg: str) -> None:
        self.problems.append(msg)
        print(f"  !! {msg}", file=sys.stderr, flush=True)


def measure(fns: dict[str, Callable[[], Proc]], n: int, warm: int,
            problem: Callable[[str], None] | None = None) -> dict[str, Figure]:
    """Median of n timed calls of each function after `warm` untimed ones, the engines
    interleaved round by round so that load from elsewhere on the machine falls on all of
    them alike. Peak RSS is the highest seen. A side column (a key starting with "podman",
    "runc" or "none") may fail: it is dropped (and reported), the others go on."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    rss: dict[str, int | None] = dict.fromkeys(fns)
    live = dict(fns)
    for i in range(warm + n):
        for key, fn in list(live.items()):
            try:
                r = fn()
            except CommandFailed as e:
                if not key.startswith(("podman", "runc", "none")) or problem is None:
                    raise
                problem(f"{key} skipped: {str(e).strip().splitlines()[-1][:300]}")
                del live[key]
                times[key] = []
                continue
            if i >= warm:
                times[key].append(r.seconds)
                if r.maxrss_kb is not None:
                    rss[key] = max(rss[key] or 0, r.maxrss_kb)
    return {k: Figure(statistics.median(v), rss_kb=rss[k], samples=v)
            for k, v in times.items() if v}


# ------------------------------------------------------------------------- rootfs
BUSYBOX_APPLETS = ("sh", "true", "false", "sleep", "echo", "cat", "ls", "mkdir", "rm", "head",
                   "seq", "env", "id")


def busybox_tar(out: Path) -> Path:
    """contrib/mkbusybox.sh's tarball, made once and cached."""
    if not out.exists():
        tmp = out.with_suffix(".part")
        call(["sh", str(REPO / "contrib" / "mkbusybox.sh"), str(tmp)])
        tmp.rename(out)
    return out


def debian_tar(out: Path) -> Path | None:
    """contrib/mkdebian.sh (debootstrap --variant=minbase bookworm), made once and cached;
    None when debootstrap or the mirror is not there."""
    if out.exists():
        return out
    if not shutil.which("debootstrap"):
        return None
    note(f"debootstrap --variant=minbase bookworm (once; cached in {CACHE})")
    tmp = out.with_suffix(".part")
    try:
        r = subprocess.run(["sh", str(REPO / "contrib" / "mkdebian.sh"), str(tmp)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=900)
    except subprocess.TimeoutExpired:
        tmp.unlink(missing_ok=True)
        return None
    if r.returncode != 0:
        note("debootstrap failed; the synthetic base is used: "
             + r.stderr.decode(errors="replace").strip()[-300:])
        tmp.unlink(missing_ok=True)
        return None
    tmp.rename(out)
    return out


def make_rootfs(out: Path, target_bytes: int, target_files: int, base: Path | None,
                seed: int = 20240601) -> None:
    """A Debian-like rootfs tarball: `base` (a real Debian minbase, or a busybox skeleton)
    padded with a deterministic synthetic /usr tree up to `target_files` regular files and
    `target_bytes` of file data. Sizes are mixed as in a distribution: mostly small files
    (lognormal, median ~2.5 kB), a tail of 1-16 MB ones; about half compressible text,
    half random bytes; directories of 5-40 entries, some symlinks and hard links."""
    rng = random.Random(seed)
    pool_rand = rng.randbytes(16 << 20)
    words = [bytes(rng.choice(b"abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 9)))
             for _ in range(2000)]
    text = bytearray()
    while len(text) < 4 << 20:
        text += b" ".join(rng.choice(words) for _ in range(12)) + b"\n"
    pool_text = bytes(text) * 4
    mtime = 1_700_000_000
    nfiles = nbytes = 0
    tmp = out.with_suffix(".part")

    def ti(name: str, kind: bytes = tarfile.REGTYPE, mode: int = 0o644, size: int = 0,
           link: str = "") -> tarfile.TarInfo:
        t = tarfile.TarInfo(name)
        t.type, t.mode, t.size, t.mtime, t.linkname = kind, mode, size, mtime, link
        t.uid = t.gid = 0
        t.uname = t.gname = "root"
        return t

    class Slice:
        """File-like over a slice of a pool, so tarfile copies without building bytes."""

        def __init__(self, pool: bytes, off: int, size: int) -> None:
            self.view, self.pos, self.end = memoryview(pool), off, off + size

        def read(self, n: int = -1) -> bytes:
            n = self.end - self.pos if n < 0 else min(n, self.end - self.pos)
            data = self.view[self.pos:self.pos + n]
            self.pos += n
            return bytes(data)

    def payload(size: int) -> Slice:
        pool = pool_rand if rng.random() < 0.5 else pool_text
        off = rng.randrange(0, len(pool) - size + 1)
        return Slice(pool, off, size)

    with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tf:
        if base is not None:
            with tarfile.open(base, "r|*") as src:
                for m in src:
                    if m.isreg():
                        tf.addfile(m, src.extractfile(m))
                        nfiles += 1
                        nbytes += m.size
                    else:
                        tf.addfile(m)
        else:
            bb = shutil.which("busybox") or "/bin/busybox"
            for d in ("bin", "sbin", "etc", "root", "tmp", "usr", "usr/bin", "usr/lib",
                      "usr/share", "var", "home", "dev", "proc", "sys"):
                tf.addfile(ti(d, tarfile.DIRTYPE, 0o1777 if d == "tmp" else 0o755))
            size = os.path.getsize(bb)
            with open(bb, "rb") as f:
                tf.addfile(ti("bin/busybox", mode=0o755, size=size), f)
            nfiles, nbytes = 1, size
            for a in BUSYBOX_APPLETS:
                tf.addfile(ti(f"bin/{a}", tarfile.SYMTYPE, 0o777, link="busybox"))
            for name, body in (("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n"),
                               ("etc/group", b"root:x:0:\n")):
                tf.addfile(ti(name, size=len(body)), Slice(body, 0, len(body)))
                nfiles += 1
                nbytes += len(body)
        # the synthetic part
        left_files = max(0, target_files - nfiles)
        left_bytes = max(0, target_bytes - nbytes)
        small = [min(int(rng.lognormvariate(7.8, 1.5)), 512 << 10) for _ in range(left_files)]
        budget = int(left_bytes * 0.45)  # the small files carry about half the bytes
        if sum(small) > budget and small:
            k = budget / sum(small)
            small = [max(0, int(s * k)) for s in small]
        big_bytes = left_bytes - sum(small)
        big: list[int] = []
        while big_bytes > 0:
            s = min(big_bytes, rng.randint(1 << 20, 16 << 20))
            big.append(s)
            big_bytes -= s
        small = small[:max(0, len(small) - len(big))]
        sizes = small + big
        rng.shuffle(sizes)
        tf.addfile(ti("usr/share/bench", tarfile.DIRTYPE, 0o755))
        dirn, in_dir, cur, prev = 0, 0, "", ""
        for i, size in enumerate(sizes):
            if in_dir == 0:
                cur = f"usr/share/bench/pkg{dirn // 20:03d}/sub{dirn % 20:02d}"
                if dirn % 20 == 0:
                    tf.addfile(ti(cur.rsplit("/", 1)[0], tarfile.DIRTYPE, 0o755))
                tf.addfile(ti(cur, tarfile.DIRTYPE, 0o755))
                dirn += 1
                in_dir = rng.randint(5, 40)
            in_dir -= 1
            name = f"{cur}/file{i:06d}.{rng.choice(['so', 'py', 'txt', 'gz', 'pm', 'h'])}"
            mode = 0o755 if rng.random() < 0.1 else 0o644
            tf.addfile(ti(name, mode=mode, size=size), payload(size))
            if prev and rng.random() < 0.03:
                tf.addfile(ti(f"{name}.lnk", tarfile.SYMTYPE, 0o777,
                              link="../../../../../" + prev))
            elif prev and rng.random() < 0.005:
                tf.addfile(ti(f"{name}.hard", tarfile.LNKTYPE, 0o644, link=prev))
            prev = name
            nfiles += 1
            nbytes += size
    tmp.rename(out)


def rootfs(kind: str, mbytes: int, nfiles: int) -> tuple[Path, str]:
    """The cached tarball for the save/load image, made on first use."""
    CACHE.mkdir(parents=True, exist_ok=True)
    base = None
    label = "busybox skeleton + synthetic /usr"
    if kind == "debian":
        base = debian_tar(CACHE / "debian-bookworm-minbase.tar")
        if base is not None:
            label = "debian bookworm minbase + synthetic /usr"
        else:
            kind = "synthetic"
    out = CACHE / f"rootfs-{kind}-{mbytes}MB-{nfiles}f-v{ROOTFS_VERSION}.tar"
    if not out.exists():
        note(f"making {out.name} ({label}, once; cached)")
        make_rootfs(out, mbytes * MB, nfiles, base)
    return out, label


def tar_stats(path: Path) -> tuple[int, int]:
    files = data = 0
    with tarfile.open(path, "r|*") as tf:
        for m in tf:
            if m.isreg():
                files += 1
                data += m.size
    return files, data


# ------------------------------------------------------------------------- the bench
NETSETUP = """
import json, os, statistics, sys, time
from shale.container_ops import RunOptions, create, remove_container
from shale.containers import take_lock
from shale.engine import Engine
from shale.network import endpoint as net
root, image, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
engine = Engine(root)
out = {}
for key, publish in (("plain", []), ("port", ["80"])):
    ups, downs = [], []
    for i in range(n + 2):  # a container each: veth names are never reused in a loop
        c = create(engine, RunOptions(image=image, cmd=["true"], publish=publish))
        lock = take_lock(c)
        t0 = time.perf_counter()
        plan = net.plan(engine, c)
        bound = net.bind_ports(c, plan, "bench")
        net.setup(c, plan, bound, "bench")
        t1 = time.perf_counter()
        for b in bound:
            b.sock.close()
        net.teardown(c.dir)
        t2 = time.perf_counter()
        if i >= 2:
            ups.append(t1 - t0)
            downs.append(t2 - t1)
        os.close(lock)
        remove_container(engine, c, force=True, volumes=True)
    out[key], out[key + "_down"] = statistics.median(ups), statistics.median(downs)
print(json.dumps(out))
"""


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.quick = args.quick
        self.work = Path(tempfile.mkdtemp(prefix=PREFIX + "work-", dir=args.tmpdir))
        self.shale = Shale(find_shale(args.shale), self.work / "root")
        self.docker = Docker()
        self.podman = Podman(self.work) if not args.no_podman else None
        if self.podman and not self.podman.ok:
            self.podman = None
        self.podman_store = self.podman  # cleaned up even if its column is dropped
        self.table = Table()
        self.bb_tar: Path | None = None
        self.extra_roots: list[Path] = []

    # -- helpers
    def n(self, full: int, quick: int) -> int:
        return quick if self.quick else full

    def busybox(self) -> None:
        """The busybox image in every engine (once)."""
        if self.bb_tar is not None:
            return
        self.bb_tar = busybox_tar(CACHE / "busybox.tar")
        self.shale("import", self.bb_tar, f"{PREFIX}busybox")
        if self.docker.ok:
            self.docker("import", self.bb_tar, self.docker.image(f"{PREFIX}busybox:latest"))
        pm, bb = self.podman, self.bb_tar
        if pm and self.side("podman import", lambda: Figure(
                pm("import", bb, f"{PREFIX}busybox").seconds)) is None:
            self.podman = None

    def side(self, what: str, fn: Callable[[], Figure]) -> Figure | None:
        """A comparison column that may fail on this machine (podman): a note, not a stop."""
        try:
            return fn()
        except CommandFailed as e:
            self.table.problem(f"{what} skipped: {str(e).splitlines()[-1][:300]}")
            return None

    def new_root(self, tag: str) -> Path:
        root = self.work / f"root-{tag}"
        self.extra_roots.append(root)
        return root

    def engines(self, shale: Callable[[], Proc], docker: Callable[[], Proc] | None = None,
                podman: Callable[[], Proc] | None = None) -> dict[str, Callable[[], Proc]]:
        fns = {"shale": shale}
        if docker is not None and self.docker.ok:
            fns["docker"] = docker
        if podman is not None and self.podman:
            fns["podman"] = podman
        return fns

    def measure(self, fns: dict[str, Callable[[], Proc]], n: int, warm: int
                ) -> dict[str, Figure]:
        return measure(fns, n, warm, self.table.problem)

    # -- 0. start-up floor
    def startup(self) -> None:
        n, warm = self.n(20, 5), 2
        py = script_interpreter(self.shale.exe)
        sh, dk, pm = self.shale, self.docker, self.podman
        f = self.measure(self.engines(
            lambda: sh("images", "-q"), lambda: dk("images", "-q"),
            (lambda: pm("images", "-q")) if pm else None), n, warm)
        self.table.row("images -q (start-up)", "time", f["shale"], f.get("docker"),
                       f.get("podman"), "info")
        floor = self.measure({"a": lambda: call([py, "-c", "pass"]),
                              "b": lambda: call([py, "-I", "-S", "-c", "pass"])}, n, warm)
        self.table.row("  python -c pass (floor)", "time", floor["a"], target="info")
        self.table.row("  python -I -S -c pass", "time", floor["b"],
                       target="info: without site-packages' .pth hooks")

    # -- 1. import, save, load
    def saveload(self, mbytes: int, nfiles: int, label: str) -> None:
        src, desc = rootfs(self.args.rootfs, mbytes, nfiles)
        files, data = tar_stats(src)
        note(f"{label}: {src.name}: {desc}, {files} files, {fmt_bytes(data)} of file data, "
             f"tar {fmt_bytes(src.stat().st_size)}")
        ref = f"{PREFIX}rootfs:{label}"
        reps = self.n(3, 1)
        sh, dk = self.shale, self.docker
        size = src.stat().st_size
        # import (timed once: it is how both engines get the image)
        sync()
        r = sh("import", src, ref)
        s_imp = Figure(r.seconds, size, r.maxrss_kb)
        d_imp = None
        if dk.ok:
            sync()
            d_imp = Figure(dk("import", src, dk.image(ref)).seconds, size)
        self.table.row(f"import {label} ({files} files)", "throughput", s_imp, d_imp,
                       target="info")

        # save (the output file is removed and dirty pages flushed before each, untimed)
        s_out, d_out = self.work / f"shale-{label}.tar", self.work / f"docker-{label}.tar"

        def save(eng: Callable[..., Proc], out: Path) -> Callable[[], Proc]:
            def one() -> Proc:
                out.unlink(missing_ok=True)
                sync()
                return eng("save", "-o", out, ref)
            return one

        f = self.measure(self.engines(save(sh, s_out), save(dk, d_out)), reps, 0)
        f["shale"].nbytes = s_out.stat().st_size
        if "docker" in f:
            f["docker"].nbytes = d_out.stat().st_size
        self.table.row(f"save {label}", "throughput", f["shale"], f.get("docker"),
                       target=self.target_io(f["shale"], f.get("docker")))

        # load: the image (and so its layer) is removed first, untimed, so load really loads
        def load_shale() -> Proc:
            sh("rmi", ref, check=False)
            blobs = sh.root / "blobs" / "sha256"
            big = [p for p in blobs.iterdir() if p.stat().st_size > MB] if blobs.exists() else []
            if big:
                self.table.problem(f"`shale rmi {ref}` left {len(big)} big blob(s) behind")
            sync()
            return sh("load", "-i", s_out)

        def load_docker() -> Proc:
            dk("rmi", ref, check=False)
            sync()
            return dk("load", "-i", d_out)

        f = self.measure(self.engines(load_shale, load_docker), reps, 0)
        s_load, d_load = f["shale"], f.get("docker")
        s_load.nbytes = s_out.stat().st_size
        if d_load:
            d_load.nbytes = d_out.stat().st_size
        self.table.row(f"load {label}", "throughput", s_load, d_load,
                       target=self.target_io(s_load, d_load))

        # shale defers unpacking to the first container; docker unpacks in load
        sync()
        r = sh("run", "--rm", ref, "true")
        s_first = Figure((s_load.seconds or 0) + r.seconds,
                         rss_kb=max(s_load.rss_kb or 0, r.maxrss_kb or 0) or None)
        d_first = None
        d_alone = ""
        if dk.ok and d_load and d_load.seconds:
            sync()
            d_run = dk("run", "--rm", ref, "true").seconds
            d_first = Figure(d_load.seconds + d_run)
            d_alone = f", docker {fmt_time(d_run)}"
        self.table.row(f"  load + 1st run {label}", "time", s_first, d_first,
                       target=f"info: 1st run alone: shale {fmt_time(r.seconds)}{d_alone}")
        s_out.unlink(missing_ok=True)
        d_out.unlink(missing_ok=True)
        if self.docker.ok:
            dk("rmi", ref, check=False)
        sh("rmi", ref, check=False)

    @staticmethod
    def target_io(s: Figure, d: Figure | None) -> str:
        parts = []
        if d and d.seconds and s.seconds and s.nbytes and d.nbytes:
            r = (s.nbytes / s.seconds) / (d.nbytes / d.seconds)
            parts.append(f">=2x docker: {'met' if r >= 2 else 'MISSED'}")
        if s.rss_kb is not None:
            parts.append(f"RSS<150MB: {'met' if s.rss_kb < 150 * 1024 else 'MISSED'}")
        return "; ".join(parts)

    # -- 2. a second image on a stored base adds only its own layer
    def share(self) -> None:
        src, _ = rootfs(self.args.rootfs, 200, 10_000)
        sh, dk = self.shale, self.docker
        base, child = f"{PREFIX}share-base:1", f"{PREFIX}share-child:1"
        change = "head -c 1048576 /dev/urandom > /small.bin && echo hi > /etc/bench-motd"
        sh("import", src, base)
        cname = f"{PREFIX}share"
        sh("run", "--name", cname, base, "sh", "-c", change)
        sh("commit", cname, child)
        sh("rm", "-f", cname)
        base_tar, child_tar = self.work / "share-base.tar", self.work / "share-child.tar"
        sh("save", "-o", base_tar, base)
        sh("save", "-o", child_tar, child)
        layers = json.loads(sh("inspect", "-f", "{{json .RootFS.Layers}}", child).out)
        small_hex = layers[-1].split(":", 1)[1]
        with tarfile.open(child_tar) as tf:
            small = tf.getmember(f"blobs/sha256/{small_hex}").size
        fresh = self.new_root("share")
        sh("load", "-i", base_tar, root=fresh)
        sh("run", "--rm", base, "true", root=fresh)  # the base's snapshot, unpacked once
        sync()
        before = du_bytes(fresh)
        sh("load", "-i", child_tar, root=fresh)
        sync()
        after_load = du_bytes(fresh)
        sh("run", "--rm", child, "true", root=fresh)
        sync()
        after_run = du_bytes(fresh)
        s_load = Figure(nbytes=after_load - before)
        s_run = Figure(nbytes=after_run - after_load)
        d_load = d_run = None
        if dk.ok:
            dk("import", src, dk.image(base))
            dk("run", "--name", dk.container(cname), base, "sh", "-c", change)
            dk("commit", cname, dk.image(child))
            dk("rm", "-f", cname)
            d_tar = self.work / "share-docker-child.tar"
            dk("save", "-o", d_tar, child)
            dk("rmi", child)
            # other users of the daemon change /var/lib/docker meanwhile: count only the
            # layer dirs of the child that the load created
            had = set(os.listdir(dk.layer_root()))
            dk("load", "-i", d_tar)
            sync()
            new = [d for d in dk.layer_dirs(child) if d.name not in had]
            loaded = sum(du_bytes(d) for d in new)
            dk("run", "--rm", child, "true")
            sync()
            d_load = Figure(nbytes=loaded)
            d_run = Figure(nbytes=sum(du_bytes(d) for d in new) - loaded)
            d_tar.unlink(missing_ok=True)
            dk("rmi", child, base, check=False)
        ok = s_load.nbytes is not None and s_load.nbytes < 1.5 * small + 256 * 1024
        self.table.row("2nd image on base: load", "bytes", s_load, d_load,
                       target=f"its layer is {fmt_bytes(small)}: "
                              f"{'met' if ok else 'MISSED'} (du -s delta)")
        self.table.row("2nd image on base: 1st run", "bytes", s_run, d_run,
                       target="info: unpacking its layer (du -s delta)")
        for p in (base_tar, child_tar):
            p.unlink(missing_ok=True)
        sh("rmi", child, base, check=False)

    # -- 3. run --rm true
    def run(self) -> None:
        self.busybox()
        n, warm = self.n(20, 5), self.n(2, 1)
        img = f"{PREFIX}busybox"
        sh, dk, pm = self.shale, self.docker, self.podman
        fns = self.engines(lambda: sh("run", "--rm", img, "true"),
                           lambda: dk("run", "--rm", img, "true"),
                           (lambda: pm("run", "--rm", *pm.ulimits, img, "true")) if pm else None)
        if shutil.which("runc"):
            fns["runc"] = lambda: sh("run", "--rm", "--runtime", "runc", img, "true")
        fns["none"] = lambda: sh("run", "--rm", "--network", "none", img, "true")
        f = self.measure(fns, n, warm)
        d = f.get("docker")
        for key, label in (("shale", f"run --rm true (median/{n})"),
                           ("none", "  run --network none"),
                           ("runc", "  run --runtime runc")):
            if key not in f:
                continue
            s = f[key]
            tgt = ""
            if d and d.seconds and s.seconds:
                tgt = f"<=1/3 docker: {'met' if s.seconds * 3 <= d.seconds else 'MISSED'}"
            self.table.row(label, "time", s, d, f.get("podman"), tgt)
        self.netsetup(img)

    def netsetup(self, img: str) -> None:
        """The network part of a container's start, in-process (what `start` adds to a
        run): namespace, veth pair, address, route, /etc files, and with one published
        port the host socket and the iptables rules; then its teardown."""
        n = self.n(20, 5)
        py = script_interpreter(self.shale.exe)
        r = call([py, "-c", NETSETUP, str(self.shale.root), img, str(n)])
        got = json.loads(r.out)
        for key, label in (("plain", f"network setup (median/{n})"),
                           ("port", "  with one -p port"),
                           ("plain_down", "  teardown"), ("port_down", "  teardown with -p")):
            tgt = "< 20 ms: " + ("met" if got[key] < 0.020 else "MISSED") \
                if not key.endswith("down") else ""
            self.table.row(label, "time", Figure(got[key]), target=tgt)

    # -- 4. exec CTR true
    def exec(self) -> None:
        self.busybox()
        n, warm = self.n(20, 5), 2
        img, name = f"{PREFIX}busybox", f"{PREFIX}sleep"
        sh, dk, pm = self.shale, self.docker, self.podman
        try:
            sh("run", "-d", "--name", name, img, "sleep", "100000")
            if dk.ok:
                dk("run", "-d", "--name", dk.container(name), img, "sleep", "100000")
            if pm is not None:
                p0 = pm
                if self.side("podman run -d", lambda: Figure(p0(
                        "run", "-d", *p0.ulimits, "--name", name, img, "sleep", "100000"
                        ).seconds)) is None:
                    pm = None
            f = self.measure(self.engines(
                lambda: sh("exec", name, "true"), lambda: dk("exec", name, "true"),
                (lambda: pm("exec", name, "true")) if pm else None), n, warm)
            self.table.row(f"exec CTR true (median/{n})", "time", f["shale"], f.get("docker"),
                           f.get("podman"), "info")
        finally:
            sh("rm", "-f", name, check=False)
            if dk.ok:
                dk("rm", "-f", name, check=False)
            if self.podman:
                self.podman("rm", "-f", "-t", "0", name, check=False)

    # -- 5. commit of 10,000 changed files
    def commit(self) -> None:
        self.busybox()
        reps = self.n(3, 1)
        nfiles = 10_000
        img, name = f"{PREFIX}busybox", f"{PREFIX}commit"
        make = (f"mkdir -p /data && i=0; while [ $i -lt {nfiles} ]; do "
                f'echo "small file $i" > /data/f$i; i=$((i+1)); done')
        engines: dict[str, Callable[..., Proc]] = {"shale": self.shale}
        if self.docker.ok:
            engines["docker"] = self.docker
            self.docker.container(name)
        sizes: dict[str, str] = {}
        try:
            for eng in engines.values():
                eng("run", "-d", "--name", name, img, "sleep", "100000")
                eng("exec", name, "sh", "-c", make)
            counters = {k: iter(range(reps)) for k in engines}

            def one(key: str) -> Callable[[], Proc]:
                def go() -> Proc:
                    tag = f"{PREFIX}committed:{next(counters[key])}"
                    if key == "docker":
                        self.docker.image(tag)
                    sync()
                    return engines[key]("commit", name, tag)
                return go

            f = self.measure({k: one(k) for k in engines}, reps, 0)
            for k, eng in engines.items():
                sizes[k] = eng("history", "--format", "{{.Size}}",
                               f"{PREFIX}committed:0").out.split("\n")[0]
                eng("rmi", *[f"{PREFIX}committed:{i}" for i in range(reps)], check=False)
        finally:
            for eng in engines.values():
                eng("rm", "-f", name, check=False)
        self.table.row(f"commit {nfiles} new files", "time", f["shale"], f.get("docker"),
                       target="info: history SIZE "
                       + " / ".join(f"{k} {v}" for k, v in sizes.items()))

    # -- driver
    def main(self) -> int:
        a = self.args
        only = set(GROUPS)
        if a.only:
            only = {ALIASES.get(x.strip(), x.strip()) for x in a.only.split(",") if x.strip()}
            bad = only - set(GROUPS)
            if bad:
                sys.exit(f"unknown benchmark {sorted(bad)}; choose from {GROUPS} "
                         f"(or {sorted(ALIASES)})")
        t0 = time.time()
        print(f"shale bench {time.strftime('%Y-%m-%d %H:%M')}  "
              f"{'quick' if self.quick else 'full'}{' +big' if a.big else ''}  "
              f"{os.cpu_count()} cpus  kernel {os.uname().release}")
        py = script_interpreter(self.shale.exe)
        src = call([py, "-c", "import shale; print(shale.__file__)"], check=False).out.strip()
        print(f"shale:  {self.shale.exe} (interpreter {py}; package {src or '?'})")
        print(f"docker: {self.docker.version}   podman: "
              f"{self.podman.version if self.podman else 'not used'}")
        print(f"work:   {self.work} (shale --root {self.shale.root}); "
              f"PYTHONPYCACHEPREFIX={os.environ.get('PYTHONPYCACHEPREFIX', '-')}")
        print(f"load average at start: {loadavg()}  (other work on the machine skews "
              f"every figure; engines are interleaved round by round)")
        print()
        self.docker.sweep_leftovers()
        self.table.header()
        steps: list[tuple[str, Callable[[], None]]] = [
            ("startup", self.startup),
            ("saveload", lambda: self.saveload(200, 10_000, "200MB")),
            ("share", self.share),
            ("run", self.run),
            ("exec", self.exec),
            ("commit", self.commit),
        ]
        if a.big:
            steps.insert(2, ("saveload", lambda: self.saveload(1000, 30_000, "1GB")))
        failed = 0
        try:
            for group, fn in steps:
                if group not in only:
                    continue
                try:
                    fn()
                except CommandFailed as e:
                    failed += 1
                    self.table.problem(f"{group}: {e}")
                    self.table.emit(f"{group}: FAILED (see below)")
        finally:
            self.cleanup()
        print()
        print(f"load average at end: {loadavg()}")
        print(f"total {time.time() - t0:.0f} s. ratio: docker/shale for times and "
              f"shale/docker for MB/s (> 1: shale is faster); for bytes, docker/shale.")
        if self.table.problems:
            print("problems:")
            for p in self.table.problems:
                print(f"  - {p}")
        return 1 if failed else 0

    def cleanup(self) -> None:
        problems = []
        for root in [self.shale.root, *self.extra_roots]:
            problems += self.shale.cleanup(root)
        self.docker.cleanup()
        if self.podman_store:
            self.podman_store.cleanup()
        for p in problems:
            self.table.problem(p)
        if self.args.keep:
            note(f"kept {self.work}")
        else:
            left = mounts_under(self.work)
            if left:
                self.table.problem(f"mounts still under {self.work}: {left[:3]}")
            else:
                shutil.rmtree(self.work, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true",
                    help="fewer repetitions (1 for save/load/commit, 5 for run/exec)")
    ap.add_argument("--big", action="store_true", help="also save/load a ~1 GB image")
    ap.add_argument("--only", metavar="NAME[,NAME]",
                    help=f"run only these: {', '.join(GROUPS)} (save/load/import = saveload)")
    ap.add_argument("--rootfs", choices=("debian", "synthetic"), default="debian",
                    help="base of the save/load image: debootstrap minbase bookworm (cached; "
                         "falls back to synthetic) or a busybox skeleton; both are padded "
                         "with synthetic files to the size and file count")
    ap.add_argument("--shale", help="the shale executable (default: `shale` on PATH, "
                                    "a pyenv shim resolved to its console script)")
    ap.add_argument("--no-podman", action="store_true", help="skip the podman column")
    ap.add_argument("--tmpdir", default=None,
                    help="where the work dir (roots, archives) goes; default $TMPDIR or /tmp")
    ap.add_argument("--keep", action="store_true", help="keep the work dir")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        sys.exit("run as root: containers need it (and so does docker)")
    bytecode_env()
    return Bench(args).main()


def bytecode_env() -> None:
    """An installed package has its .pyc files. Where PYTHONDONTWRITEBYTECODE is set (as in
    some sandboxes), every module edited since its .pyc was written would be compiled
    again on every shale command, ~40 ms that no user pays: let the children write their
    bytecode, into a cache of the bench's own (the source tree is not touched)."""
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    os.environ.setdefault("PYTHONPYCACHEPREFIX", str(CACHE / "pycache"))


if __name__ == "__main__":
    sys.exit(main())
