"""Interop with the real tools, no mocks: docker (20.10 daemon), podman, skopeo and umoci
read shale's archives, and shale reads theirs, keeping image IDs and layer bytes.

Every test here runs real tools; the module is marked ``docker``. Podman runs on a private
``--root`` (vfs) under the test's temp dir, so the host's podman store is never touched.
Docker images are named ``shaletest-*`` and removed at teardown.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import Cli, Docker
from helpers import (
    Entry,
    arch_image,
    assert_image_valid,
    busybox_entries,
    docker_25_archive,
    read_archive,
    sha256,
    simple_layer,
    tar_bytes,
)

from shale.engine import Engine

pytestmark = pytest.mark.docker

Run = Callable[..., subprocess.CompletedProcess[bytes]]


def _tool(name: str) -> Run:
    if shutil.which(name) is None:
        pytest.skip(f"{name} is not installed")

    def run(*args: str, check: bool = True) -> subprocess.CompletedProcess[bytes]:
        res = subprocess.run([name, *args], capture_output=True, timeout=300, check=False)
        if check and res.returncode != 0:
            raise AssertionError(f"{name} {' '.join(args)} failed ({res.returncode}): "
                                 f"{res.stderr.decode(errors='replace')}")
        return res

    return run


@pytest.fixture
def podman(tmp_path: Path) -> Iterator[Run]:
    """podman on a private store: nothing leaks into the host's images. (Its runroot
    must be a short path: podman refuses one longer than 50 characters.)"""
    run = _tool("podman")
    runroot = tempfile.mkdtemp(prefix="shaletest-pod-", dir="/tmp")
    store = ["--root", str(tmp_path / "podman-root"), "--runroot", runroot,
             "--storage-driver", "vfs"]
    try:
        yield lambda *args, check=True: run(*store, *args, check=check)
    finally:
        shutil.rmtree(runroot, ignore_errors=True)


def _tree(export: bytes) -> dict[str, tuple[object, ...]]:
    """A flattened filesystem (``docker export``) as path -> (type, mode, uid, gid,
    link target, content digest, mtime), leaving out what ``docker create`` itself adds
    (the init layer's stubs) so two containers of one image compare equal."""
    init = {".dockerenv", "etc/hostname", "etc/hosts", "etc/resolv.conf", "etc/mtab", "dev",
            "proc", "sys", "etc"}
    out: dict[str, tuple[object, ...]] = {}
    with tarfile.open(fileobj=io.BytesIO(export)) as tf:
        for ti in tf:
            name = ti.name.rstrip("/")
            if name.startswith("dev/"):
                continue
            data = b""
            if ti.isfile():
                f = tf.extractfile(ti)
                assert f is not None
                data = f.read()
            mtime = None if name in init else ti.mtime
            out[name] = (ti.type, ti.mode, ti.uid, ti.gid, ti.linkname,
                         hashlib.sha256(data).hexdigest(), mtime)
    return out


def _docker_tree(docker: Docker, image: str) -> dict[str, tuple[object, ...]]:
    cid = docker.out("create", image, "/bin/true").strip()
    try:
        return _tree(docker("export", cid).stdout)
    finally:
        docker("rm", "-f", cid, check=False)


# ------------------------------------------------------------------ shale -> docker/podman
def test_shale_save_docker_load_docker_run(cli: Cli, docker: Docker, busybox_tar: Path,
                                           tmp_path: Path) -> None:
    image_id = cli.ok("import", str(busybox_tar), "shaletest-io:1").strip()
    docker.track("shaletest-io:1", image_id)
    archive = tmp_path / "s.tar"
    cli.ok("save", "-o", str(archive), "shaletest-io:1")
    assert docker.out("load", "-i", str(archive)) == "Loaded image: shaletest-io:1\n"
    assert docker.out("image", "inspect", "-f", "{{.Id}}", "shaletest-io:1") == image_id + "\n"
    res = docker("run", "--rm", "shaletest-io:1", "/bin/sh", "-c",
                 "echo hello from shale; cat /etc/passwd | head -1")
    assert res.stdout == b"hello from shale\nroot:x:0:0:root:/root:/bin/sh\n"
    # docker keeps the layer bytes: its own save gives shale's diff_id back
    data = docker("save", "shaletest-io:1").stdout
    layers = [v for k, v in read_archive(data).items() if k.endswith("layer.tar")]
    assert [sha256(x) for x in layers] == [sha256(busybox_tar.read_bytes())]


def test_podman_and_skopeo_and_umoci_read_shale_archive(cli: Cli, podman: Run,
                                                        tmp_path: Path) -> None:
    skopeo, umoci = _tool("skopeo"), _tool("umoci")
    la = tar_bytes(busybox_entries())
    lb = tar_bytes([Entry("etc", "dir"), Entry("etc/.wh.group"), Entry("srv", "dir"),
                    Entry("srv/hello", data=b"hello\n"),
                    Entry("srv/hard", "hardlink", link="srv/hello"),
                    Entry("srv/sym", "symlink", link="hello")])
    img = arch_image([la, lb], ["shaletest/tools:1"], config={"Cmd": ["/bin/sh"],
                                                               "Env": ["A=1"]})
    cli.ok("load", stdin=docker_25_archive([img]))
    archive = tmp_path / "s.tar"
    cli.ok("save", "-o", str(archive), "shaletest/tools:1")
    members = read_archive(archive.read_bytes())
    index = json.loads(members["index.json"])
    mdigest = index["manifests"][0]["digest"]

    # skopeo: both transports, the OCI one by the tag-only ref.name
    info = json.loads(skopeo("inspect", f"docker-archive:{archive}").stdout)
    assert (info["Layers"], info["Architecture"], info["Os"]) == (img.diff_ids, "amd64",
                                                                   "linux")
    assert info["Env"] == ["A=1"]
    info = json.loads(skopeo("inspect", f"oci-archive:{archive}:1").stdout)
    assert (info["Digest"], info["Layers"]) == (mdigest, img.diff_ids)
    raw = skopeo("inspect", "--raw", f"oci-archive:{archive}:1").stdout
    assert raw == members[f"blobs/sha256/{mdigest[7:]}"]
    cfg = skopeo("inspect", "--config", "--raw", f"oci-archive:{archive}:1").stdout
    assert cfg == img.config

    # podman: name from io.containerd.image.name, ID = config digest
    res = podman("load", "-i", str(archive))
    assert res.stdout.decode().splitlines()[-1] == "Loaded image: docker.io/shaletest/tools:1"
    assert podman("image", "inspect", "-f", "{{.Id}}", "shaletest/tools:1").stdout == \
        img.id[7:].encode() + b"\n"

    # umoci: the extracted archive is a valid OCI layout; unpack applies the whiteout
    layout = tmp_path / "layout"
    layout.mkdir()
    with tarfile.open(archive) as tf:
        tf.extractall(layout, filter="tar")
    stat = umoci("stat", "--json", "--image", f"{layout}:1").stdout
    assert [h["layer"]["digest"] for h in json.loads(stat)["history"]
            if h.get("layer")] == img.diff_ids
    bundle = tmp_path / "bundle"
    umoci("unpack", "--image", f"{layout}:1", str(bundle))
    rootfs = bundle / "rootfs"
    assert (rootfs / "srv/hello").read_bytes() == b"hello\n"
    assert os.stat(rootfs / "srv/hard").st_ino == os.stat(rootfs / "srv/hello").st_ino
    assert os.readlink(rootfs / "srv/sym") == "hello"
    assert not (rootfs / "etc/group").exists() and (rootfs / "etc/passwd").exists()
    spec = json.loads((bundle / "config.json").read_text())
    assert spec["process"]["args"] == ["/bin/sh"]


# ------------------------------------------------------------------ docker/podman -> shale
DOCKERFILE = """\
FROM shaletest-base:{tag}
RUN mkdir -p /data/sub && echo hello > /data/sub/f && echo x > /data/gone \\
    && ln -s /data/sub/f /data/link && ln /data/sub/f /data/hard
RUN rm -rf /usr /etc/group && rm /data/gone && chmod 700 /data/sub
ENV FOO=bar
RUN rm -rf /data/sub && mkdir /data/sub && echo new > /data/sub/g && chown 1:2 /data/sub/g
CMD ["/bin/sh"]
"""


def test_docker_build_with_deletions_round_trips(cli: Cli, engine: Engine, docker: Docker,
                                                 busybox_tar: Path, tmp_path: Path) -> None:
    tag = os.urandom(4).hex()  # a base no earlier run left behind
    docker.track(f"shaletest-base:{tag}", f"shaletest-del:{tag}")
    base_id = docker.out("import", str(busybox_tar), f"shaletest-base:{tag}").strip()
    docker.track_descendants(base_id)
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text(DOCKERFILE.format(tag=tag))
    env = {**os.environ, "DOCKER_BUILDKIT": "0"}
    subprocess.run(["docker", "build", "--force-rm", "-q", "-t", f"shaletest-del:{tag}",
                    str(ctx)],
                   env=env, check=True, capture_output=True, timeout=300)
    name = f"shaletest-del:{tag}"
    image_id = docker.out("image", "inspect", "-f", "{{.Id}}", name).strip()
    before = _docker_tree(docker, name)
    assert not {"data/gone", "usr", "usr/bin/env", "etc/group"} & set(before)
    assert "etc/passwd" in before
    assert before["data/sub/g"][2:4] == (1, 2)
    original = docker("save", name).stdout

    # (a /etc/group stub from docker's init layer would hide the whiteout: there is none)
    # docker save -> shale load: same ID, same layers
    assert cli.ok("load", stdin=original) == f"Loaded image: {name}\n"
    img = engine.image(name)
    assert img.id.value == image_id
    assert_image_valid(engine, img)
    assert len(img.config.diff_ids) == 4  # base + three RUN layers (ENV, CMD are empty)
    # shale keeps docker's history text: ENV and CMD are empty_layer entries
    hist = cli.ok("history", "--no-trunc", "--format", "json", name).splitlines()
    assert [json.loads(x)["CreatedBy"] for x in hist][:2] == [
        '/bin/sh -c #(nop)  CMD ["/bin/sh"]',
        "/bin/sh -c rm -rf /data/sub && mkdir /data/sub && echo new > /data/sub/g && "
        "chown 1:2 /data/sub/g"]

    # shale save -> docker load into a docker that no longer has the image or its base
    code, ours, _ = cli.binary("save", name)
    assert code == 0
    docker("rmi", name)
    docker("rmi", f"shaletest-base:{tag}")
    assert docker.out("load", stdin=ours) == f"Loaded image: {name}\n"
    assert docker.out("image", "inspect", "-f", "{{.Id}}", name).strip() == image_id
    assert _docker_tree(docker, name) == before
    # neither side has the build steps now: history (IDs, <missing>, sizes) is the same
    args = ["history", "--no-trunc", "-H=false", name]
    assert cli.ok(*args) == docker.out(*args)

    def cells(text: str, created: int) -> list[list[str]]:
        """Table cells without the CREATED column (seconds tick between the two runs)."""
        rows = [re.split(r" {3,}", line) for line in text.splitlines()]
        return [r[:created] + r[created + 1:] for r in rows]

    for args, col in ((["history", name], 1),
                      (["images", "--filter", f"reference={name}"], 3)):
        assert cells(cli.ok(*args), col) == cells(docker.out(*args), col), args
    # and docker's own save of what it loaded from shale has the same layer bytes
    again = read_archive(docker("save", name).stdout)
    first = read_archive(original)
    assert sorted(sha256(v) for k, v in again.items() if k.endswith("layer.tar")) == \
        sorted(sha256(v) for k, v in first.items() if k.endswith("layer.tar"))


@pytest.mark.parametrize("fmt", ["docker-archive", "oci-archive"])
def test_podman_save_shale_load(cli: Cli, engine: Engine, podman: Run, tmp_path: Path,
                                fmt: str) -> None:
    layer = simple_layer({"etc/os-release": b"ID=shaletest\n", "srv/x": os.urandom(5000)})
    src = tmp_path / "layer.tar"
    src.write_bytes(layer)
    podman("import", "--change", "CMD /bin/sh", str(src), "shaletest-pod:1")
    out = tmp_path / f"{fmt}.tar"
    podman("save", "--format", fmt, "-o", str(out), "localhost/shaletest-pod:1")
    # the ID podman's archive carries: its config's sha256
    members = read_archive(out.read_bytes())
    if fmt == "docker-archive":
        config_name = json.loads(members["manifest.json"])[0]["Config"]
    else:
        index = json.loads(members["index.json"])
        manifest = json.loads(members["blobs/sha256/" + index["manifests"][0]["digest"][7:]])
        config_name = "blobs/sha256/" + manifest["config"]["digest"][7:]
    expected_id = sha256(members[config_name])
    res = cli("load", "-i", str(out))
    assert res == (0, "Loaded image: localhost/shaletest-pod:1\n", "")
    img = engine.image("localhost/shaletest-pod:1")
    assert img.id.value == expected_id
    assert [d.value for d in img.config.diff_ids] == [sha256(layer)]
    assert engine.content.path(img.config.diff_ids[0]).read_bytes() == layer
    assert_image_valid(engine, img)
    assert engine.check() == []


# ------------------------------------------------------------------------------ containerd
@pytest.fixture
def ctr() -> Iterator[Run]:
    """containerd's ``ctr`` in a private namespace (removed at the end): needs the
    containerd daemon CI starts for dockerd."""
    run = _tool("ctr")
    ns = f"shaletest-{os.getpid()}"
    if run("version", check=False).returncode != 0:
        pytest.skip("containerd is not running")
    try:
        yield lambda *args, check=True: run("-n", ns, *args, check=check)
    finally:
        for line in run("-n", ns, "images", "ls", "-q", check=False).stdout.decode().split():
            run("-n", ns, "images", "rm", line, check=False)
        run("-n", ns, "containers", "rm", "shaletest-ctr", check=False)
        for _ in range(40):  # content is collected in the background: then it can go
            if run("namespaces", "rm", ns, check=False).returncode == 0:
                break
            time.sleep(0.1)


def test_containerd_imports_runs_and_exports_back(cli: Cli, engine: Engine, ctr: Run,
                                                  busybox_tar: Path, tmp_path: Path) -> None:
    image_id = cli.ok("import", "-c", 'CMD ["echo", "run by containerd"]', str(busybox_tar),
                      "shaletest/ctr:1").strip()
    archive = tmp_path / "s.tar"
    cli.ok("save", "-o", str(archive), "shaletest/ctr:1")
    ctr("images", "import", str(archive))
    listing = ctr("images", "ls", "-q").stdout.decode().split()
    assert listing == ["docker.io/shaletest/ctr:1"]
    res = ctr("run", "--rm", "docker.io/shaletest/ctr:1", "shaletest-ctr")
    assert res.stdout == b"run by containerd\n"
    out = tmp_path / "ctr.tar"
    ctr("images", "export", str(out), "docker.io/shaletest/ctr:1")
    cli.ok("rmi", "shaletest/ctr:1")
    assert cli.ok("load", "-i", str(out)) == "Loaded image: shaletest/ctr:1\n"
    img = engine.image("shaletest/ctr:1")
    assert img.id.value == image_id  # the same config bytes came back
    assert_image_valid(engine, img)
    if os.geteuid() == 0:
        assert cli.ok("run", "--rm", "shaletest/ctr:1") == "run by containerd\n"
