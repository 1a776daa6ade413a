#!/usr/bin/env python3
"""Registry throughput: push and pull of a ~200 MB image, shale against docker and skopeo,
against local distribution registries (``docker-registry``) on 127.0.0.1. One run.

    python3 bench/registry_bench.py [--size-mb 200] [--layers 4] [--repeat 3] [--keep]

The image is made of real files from /usr (binaries and text, so gzip has real work), split
into ``--layers`` layers, written once as a docker-archive that shale and docker both load
(same image ID). Each push goes to a fresh registry so nothing is already there:

- push: shale (cold: compresses every layer with isal on parallel threads while uploading,
  stores the gzip); shale again to another fresh registry (warm: the stored gzip blobs are
  reused, nothing is compressed); docker push (Go gzip, level 6); skopeo copy from the
  docker-archive (pgzip).
- pull of shale's pushed image from one registry, each ``--repeat`` times into a fresh
  store (the median is shown): shale pull (download, verify the blob digests, store the
  gzip; the diff_ids are verified at first use, unpacking is lazy) against skopeo copy to
  an OCI layout directory (download + digest check: the same work; also to a ``dir:``
  directory, where skopeo copies one blob at a time); shale pull with
  ``SHALE_PULL_VERIFY=1`` (the diff_ids gunzipped and verified during the pull, as docker
  does); then a fresh pull and the first ``shale run`` of it (unpack + diff_id check: what
  docker does during its pull) against docker pull (download + extract into overlay2).

Ratios are other/shale for times (> 1: shale is faster). Standard library only; needs the
``shale`` CLI importable, ``docker-registry``, a docker daemon and skopeo (columns without
their tool are left out).
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

MB = 1_000_000
REPO = Path(__file__).resolve().parent.parent
SHALE = [sys.executable, "-c", "import sys; from shale.cli import main; sys.exit(main())"]
NAME = "shaletest-regbench"


def sh(argv: list[str], *, env: dict[str, str] | None = None, stdin: bytes | None = None
       ) -> float:
    t0 = time.perf_counter()
    res = subprocess.run(argv, input=stdin, capture_output=True, env=env, check=False)
    dt = time.perf_counter() - t0
    if res.returncode != 0:
        raise SystemExit(f"failed ({res.returncode}): {' '.join(argv)}\n"
                         f"{res.stderr.decode(errors='replace')}")
    return dt


def median(xs: list[float]) -> float:
    ys = sorted(xs)
    mid = len(ys) // 2
    return ys[mid] if len(ys) % 2 else (ys[mid - 1] + ys[mid]) / 2


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Registry:
    def __init__(self, base: Path) -> None:
        base.mkdir(parents=True)
        self.port = free_port()
        self.host = f"127.0.0.1:{self.port}"
        cfg = {"version": 0.1, "log": {"level": "error", "accesslog": {"disabled": True}},
               "storage": {"filesystem": {"rootdirectory": str(base / "data")}},
               "http": {"addr": self.host}, "health": {"storagedriver": {"enabled": False}}}
        (base / "config.yml").write_text(json.dumps(cfg))
        exe = shutil.which("docker-registry") or shutil.which("registry")
        if exe is None:
            raise SystemExit("docker-registry is not installed")
        self.log = open(base / "log", "wb")  # noqa: SIM115
        self.proc = subprocess.Popen([exe, "serve", str(base / "config.yml")],
                                     stdout=self.log, stderr=subprocess.STDOUT)
        for _ in range(200):
            try:
                c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=1)
                c.request("GET", "/v2/")
                c.getresponse().read()
                c.close()
                return
            except OSError:
                time.sleep(0.05)
        raise SystemExit("registry did not start")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)
        self.log.close()


def make_layers(size: int, count: int) -> list[bytes]:
    """Real files from /usr, in sorted order, cut into ``count`` layer tars."""
    per = size // count
    layers: list[bytes] = []
    buf = io.BytesIO()
    tf = tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT)  # noqa: SIM115
    total = 0
    if os.path.exists("/bin/busybox"):  # something to run (static) for the unpack figure
        data = Path("/bin/busybox").read_bytes()
        ti = tarfile.TarInfo("bin/busybox")
        ti.size, ti.mode, ti.mtime = len(data), 0o755, 1_700_000_000
        tf.addfile(ti, io.BytesIO(data))
        total += len(data)
    for top in ("/usr/lib", "/usr/bin", "/usr/share", "/usr/libexec", "/usr/sbin"):
        for dirpath, dirnames, filenames in os.walk(top):
            dirnames.sort()
            for fn in sorted(filenames):
                p = os.path.join(dirpath, fn)
                try:
                    st = os.lstat(p)
                except OSError:
                    continue
                if not (os.path.isfile(p) and not os.path.islink(p)) or st.st_size > 32 * MB:
                    continue
                try:
                    with open(p, "rb") as f:
                        data = f.read()
                except OSError:
                    continue
                ti = tarfile.TarInfo(f"{len(layers)}{p}")
                ti.size, ti.mode, ti.mtime = len(data), 0o644, 1_700_000_000
                tf.addfile(ti, io.BytesIO(data))
                total += len(data)
                if total >= per * (len(layers) + 1):
                    tf.close()
                    layers.append(buf.getvalue())
                    if len(layers) == count:
                        return layers
                    buf = io.BytesIO()
                    tf = tarfile.open(fileobj=buf, mode="w",  # noqa: SIM115
                                      format=tarfile.PAX_FORMAT)
    tf.close()
    layers.append(buf.getvalue())
    return layers


def docker_archive(layers: list[bytes], tag: str) -> bytes:
    diff_ids = ["sha256:" + hashlib.sha256(x).hexdigest() for x in layers]
    config = json.dumps({
        "architecture": "amd64", "os": "linux", "created": "2023-11-14T22:13:20Z",
        "config": {"Cmd": ["/bin/sh"]},
        "history": [{"created": "2023-11-14T22:13:20Z", "created_by": f"layer {i}"}
                    for i in range(len(layers))],
        "rootfs": {"type": "layers", "diff_ids": diff_ids}}, separators=(",", ":")).encode()
    cid = hashlib.sha256(config).hexdigest()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        def add(name: str, data: bytes) -> None:
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data))

        paths = []
        for d, layer in zip(diff_ids, layers, strict=True):
            add(f"{d[7:]}/layer.tar", layer)
            paths.append(f"{d[7:]}/layer.tar")
        add(f"{cid}.json", config)
        add("manifest.json", json.dumps([{"Config": f"{cid}.json", "RepoTags": [tag],
                                          "Layers": paths}]).encode())
    return buf.getvalue()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size-mb", type=int, default=200)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--keep", action="store_true", help="keep the temp dir")
    ap.add_argument("--repeat", type=int, default=3,
                    help="pulls of each kind (fresh store each time); the median is shown")
    args = ap.parse_args()
    have_docker = shutil.which("docker") is not None and subprocess.run(
        ["docker", "version"], capture_output=True, check=False).returncode == 0
    have_skopeo = shutil.which("skopeo") is not None
    # byte-compile shale first, as an installed package is: with PYTHONDONTWRITEBYTECODE
    # set, a source checkout would otherwise recompile every edited module on each run
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(REPO / "src" / "shale")],
                   check=False, capture_output=True)
    work = Path(tempfile.mkdtemp(prefix="shale-regbench-"))
    regs: list[Registry] = []
    tag = f"{NAME}:1"
    try:
        layers = make_layers(args.size_mb * MB, args.layers)
        size = sum(len(x) for x in layers)
        archive = work / "image.tar"
        archive.write_bytes(docker_archive(layers, tag))
        del layers
        print(f"image: {args.layers} layers, {size / MB:.0f} MB uncompressed; "
              f"{os.cpu_count()} CPUs")
        env = {**os.environ, "SHALE_ROOT": str(work / "root"),
               "DOCKER_CONFIG": str(work / "dockercfg")}
        env2 = {**env, "SHALE_ROOT": str(work / "root2")}
        sh([*SHALE, "load", "-q", "-i", str(archive)], env=env)
        regs = [Registry(work / f"reg{i}") for i in range(5)]
        r_shale, r_warm, r_docker, r_skopeo, _ = regs
        rows: list[tuple[str, float | None, float | None, float | None]] = []

        # ---- push
        ref = f"{r_shale.host}/bench/img:1"
        sh([*SHALE, "tag", tag, ref], env=env)
        t_push = sh([*SHALE, "push", ref], env=env)
        ref_warm = f"{r_warm.host}/bench/img:1"
        sh([*SHALE, "tag", tag, ref_warm], env=env)
        t_warm = sh([*SHALE, "push", ref_warm], env=env)
        t_dpush = t_spush = None
        if have_docker:
            sh(["docker", "load", "-q", "-i", str(archive)])
            dref = f"{r_docker.host}/bench/{NAME}:1"
            sh(["docker", "tag", tag, dref])
            t_dpush = sh(["docker", "push", dref])
            sh(["docker", "rmi", dref, tag])
        if have_skopeo:
            t_spush = sh(["skopeo", "copy", "-q", "--dest-tls-verify=false",
                          f"docker-archive:{archive}", f"docker://{r_skopeo.host}/bench/img:1"])
        rows.append(("push (cold: compress + upload)", t_push, t_dpush, t_spush))
        rows.append(("push (stored gzip reused)", t_warm, None, None))

        # ---- pull (shale's pushed image, from one registry), alternating the tools
        def shale_pull(verify: bool) -> float:
            shutil.rmtree(work / "root2", ignore_errors=True)
            return sh([*SHALE, "pull", "-q", ref],
                      env={**env2, "SHALE_PULL_VERIFY": "1" if verify else "0"})

        def skopeo_pull(dest: str) -> float:
            shutil.rmtree(work / "oci", ignore_errors=True)
            target = f"oci:{work / 'oci'}:img" if dest == "oci" else f"dir:{work / 'oci'}"
            return sh(["skopeo", "copy", "-q", "--src-tls-verify=false", f"docker://{ref}",
                       target])

        dname = f"{r_shale.host}/bench/img:1"

        def docker_pull() -> float:
            t = sh(["docker", "pull", "-q", dname])
            sh(["docker", "rmi", dname])
            return t

        lazy: list[float] = []
        eager: list[float] = []
        sko: list[float] = []
        sko_dir: list[float] = []
        dock: list[float] = []
        for _ in range(max(1, args.repeat)):
            lazy.append(shale_pull(False))
            if have_skopeo:
                sko.append(skopeo_pull("oci"))
                sko_dir.append(skopeo_pull("dir"))
            eager.append(shale_pull(True))
            if have_docker:
                dock.append(docker_pull())
        t_pull, t_pull_v = median(lazy), median(eager)
        t_spull = median(sko) if sko else None
        t_sdir = median(sko_dir) if sko_dir else None
        t_dpull = median(dock) if dock else None
        t_unpack = None
        shale_pull(False)
        if os.geteuid() == 0 and os.path.exists("/bin/busybox"):
            t_unpack = sh([*SHALE, "run", "--rm", ref, "/bin/busybox", "true"], env=env2)
        rows.append(("pull (download + verify blob digests)", t_pull, None, t_spull))
        if t_sdir is not None:
            rows.append(("  the same, skopeo copy to dir:", t_pull, None, t_sdir))
        rows.append(("pull, diff_ids verified in the pull", t_pull_v, None, t_spull))
        if t_unpack is not None:
            rows.append(("pull + first run (unpack, diff_ids)", t_pull + t_unpack, t_dpull,
                         None))
        else:
            rows.append(("pull (docker: + extract)", t_pull, t_dpull, None))

        print(f"{'operation':40} {'shale':>8} {'docker':>8} {'skopeo':>8} "
              f"{'MB/s':>7} {'docker/shale':>13} {'skopeo/shale':>13}")
        def f(x: float | None) -> str:
            return f"{x:7.2f}s" if x is not None else "       -"

        def r(x: float | None, base: float | None) -> str:
            return f"{x / base:12.2f}x" if x is not None and base else "            -"

        for what, s, d, k in rows:
            mbs = f"{size / MB / s:7.0f}" if s else "      -"
            print(f"{what:40} {f(s)} {f(d)} {f(k)} {mbs} {r(d, s)} {r(k, s)}")
        print("MB/s = uncompressed image bytes / shale's time; ratios > 1: shale is faster")
    finally:
        for reg in regs:
            reg.stop()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"kept {work}")


if __name__ == "__main__":
    main()
