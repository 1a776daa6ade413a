"""Test helpers shared by the suites: tar and archive builders, store snapshots and the
validate-style image invariant.

Everything here builds real bytes with ``tarfile``/``gzip``/``json`` so tests feed shale the
same kind of input docker, podman and skopeo produce. Nothing is mocked.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shale.digest import chain_ids

# A fixed timestamp so every generated tar is byte-for-byte reproducible (diff_ids stable
# across runs, which keeps expected outputs exact).
MTIME = 1_700_000_000
CREATED = "2023-11-14T22:13:20Z"

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


def dumps(obj: Any) -> bytes:
    """Compact JSON as Go's json.Marshal writes it."""
    return json.dumps(obj, separators=(",", ":")).encode()


# ---------------------------------------------------------------------------- tar entries
@dataclass
class Entry:
    """One tar member. ``kind``: file, dir, symlink, hardlink, fifo, chardev."""

    name: str
    kind: str = "file"
    data: bytes = b""
    link: str = ""
    mode: int | None = None
    uid: int = 0
    gid: int = 0
    pax: dict[str, str] = field(default_factory=dict)


_TYPES = {"file": tarfile.REGTYPE, "dir": tarfile.DIRTYPE, "symlink": tarfile.SYMTYPE,
          "hardlink": tarfile.LNKTYPE, "fifo": tarfile.FIFOTYPE, "chardev": tarfile.CHRTYPE}


def tar_bytes(entries: list[Entry]) -> bytes:
    """A PAX tar of ``entries`` in the given order (hostile names are written as given:
    ``tarfile`` does not sanitise on write)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for e in entries:
            ti = tarfile.TarInfo(e.name)
            ti.type = _TYPES[e.kind]
            ti.mtime = MTIME
            ti.uid, ti.gid = e.uid, e.gid
            default_mode = {"dir": 0o755, "symlink": 0o777}.get(e.kind, 0o644)
            ti.mode = default_mode if e.mode is None else e.mode
            ti.linkname = e.link
            ti.pax_headers = dict(e.pax)
            if e.kind == "file":
                ti.size = len(e.data)
                tf.addfile(ti, io.BytesIO(e.data))
            else:
                tf.addfile(ti)
    return buf.getvalue()


def simple_layer(files: dict[str, bytes]) -> bytes:
    """A layer with parent directories first, then the files, in sorted order."""
    entries: list[Entry] = []
    dirs: set[str] = set()
    for name in sorted(files):
        parts = name.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            d = "/".join(parts[:i])
            if d not in dirs:
                dirs.add(d)
                entries.append(Entry(d, "dir"))
        entries.append(Entry(name, data=files[name]))
    return tar_bytes(entries)


def busybox_entries(busybox: str = "/bin/busybox") -> list[Entry]:
    """A minimal busybox rootfs: every applet a symlink to /bin/busybox, plus /etc/passwd
    and /etc/group so user lookups work in containers."""
    import subprocess

    applets = subprocess.run([busybox, "--list-full"], capture_output=True, text=True,
                             check=True).stdout.split()
    data = Path(busybox).read_bytes()
    entries = [Entry(d, "dir", mode=0o1777 if d == "tmp" else 0o755) for d in
               ("bin", "dev", "etc", "proc", "root", "sbin", "sys", "tmp", "usr", "usr/bin",
                "usr/sbin", "var")]
    entries.append(Entry("bin/busybox", data=data, mode=0o755))
    entries += [Entry(a, "symlink", link="/bin/busybox")
                for a in sorted(set(applets)) if a != "bin/busybox"]
    entries.append(Entry("etc/group", data=b"root:x:0:\nnogroup:x:65534:\n"))
    entries.append(Entry("etc/passwd", data=b"root:x:0:0:root:/root:/bin/sh\n"
                         b"nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"))
    return entries


# ------------------------------------------------------------------------- image configs
def make_config(diff_ids: list[str], *, history: list[dict[str, Any]] | None = None,
                created: str = CREATED, config: dict[str, Any] | None = None,
                extra: dict[str, Any] | None = None, rootfs: bool = True) -> bytes:
    """Config bytes in docker's key order. ``history`` defaults to one entry per layer."""
    if history is None:
        history = [{"created": created, "created_by": f"/bin/sh -c #(nop) ADD layer{i}"}
                   for i in range(len(diff_ids))]
    data: dict[str, Any] = {"architecture": "amd64",
                            "config": config if config is not None else {"Env": ["A=1"]},
                            "created": created, "history": history, "os": "linux"}
    if rootfs:
        data["rootfs"] = {"type": "layers", "diff_ids": diff_ids}
    data.update(extra or {})
    return dumps(data)


@dataclass
class ArchImage:
    """An image to put in a hand-made archive: its config bytes, layer tars (base first)
    and tags (familiar names, e.g. ``shaletest/x:1``)."""

    config: bytes
    layers: list[bytes]
    tags: list[str] = field(default_factory=list)
    parent: str = ""

    @property
    def id(self) -> str:
        return sha256(self.config)

    @property
    def diff_ids(self) -> list[str]:
        return [sha256(x) for x in self.layers]


def arch_image(layers: list[bytes], tags: list[str], **kw: Any) -> ArchImage:
    return ArchImage(make_config([sha256(x) for x in layers], **kw), layers, tags)


class TarBuilder:
    """Writes an archive member by member, in the order the test wants."""

    def __init__(self) -> None:
        self.buf = io.BytesIO()
        # closed by bytes(): the builder is filled member by member
        self.tf = tarfile.open(fileobj=self.buf, mode="w", format=tarfile.PAX_FORMAT)  # noqa: SIM115

    def file(self, name: str, data: bytes, mode: int = 0o644) -> None:
        ti = tarfile.TarInfo(name)
        ti.size, ti.mode, ti.mtime = len(data), mode, 0
        self.tf.addfile(ti, io.BytesIO(data))

    def dir(self, name: str) -> None:
        ti = tarfile.TarInfo(name)
        ti.type, ti.mode = tarfile.DIRTYPE, 0o755
        self.tf.addfile(ti)

    def symlink(self, name: str, target: str) -> None:
        ti = tarfile.TarInfo(name)
        ti.type, ti.linkname, ti.mode = tarfile.SYMTYPE, target, 0o777
        self.tf.addfile(ti)

    def hardlink(self, name: str, target: str) -> None:
        ti = tarfile.TarInfo(name)
        ti.type, ti.linkname = tarfile.LNKTYPE, target
        self.tf.addfile(ti)

    def bytes(self) -> bytes:
        self.tf.close()
        return self.buf.getvalue()


def _v1_ids(img: ArchImage) -> list[str]:
    """Legacy v1 directory names; any names work for loading (formats.md 1.6)."""
    return [hashlib.sha256(f"v1 {c.value} {img.id}".encode()).hexdigest()
            for c in chain_ids(img.diff_ids)]


def docker_2010_archive(images: list[ArchImage]) -> bytes:
    """Docker <= 24 ``docker save``: ``<v1id>/{VERSION,json,layer.tar}``, ``<id>.json``,
    ``repositories``, and ``manifest.json`` written last so a reader cannot know the
    layers before it has streamed past all of them."""
    t = TarBuilder()
    manifest: list[dict[str, Any]] = []
    repos: dict[str, dict[str, str]] = {}
    for img in images:
        v1 = _v1_ids(img)
        paths = []
        for vid, layer in zip(v1, img.layers, strict=True):
            t.dir(vid)
            t.file(f"{vid}/VERSION", b"1.0")
            t.file(f"{vid}/json", dumps({"id": vid, "os": "linux"}))
            t.file(f"{vid}/layer.tar", layer)
            paths.append(f"{vid}/layer.tar")
        t.file(f"{img.id[7:]}.json", img.config)
        item: dict[str, Any] = {"Config": f"{img.id[7:]}.json", "RepoTags": img.tags or None,
                                "Layers": paths}
        if img.parent:
            item["Parent"] = img.parent
        manifest.append(item)
        for tag in img.tags:
            repo, _, tg = tag.rpartition(":")
            repos.setdefault(repo, {})[tg] = v1[-1] if v1 else ""
    t.file("repositories", dumps(repos) + b"\n")
    t.file("manifest.json", dumps(manifest) + b"\n")
    return t.bytes()


def _oci_manifest(img: ArchImage, layer_descs: list[dict[str, Any]]) -> bytes:
    return dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                  "config": {"mediaType": OCI_CONFIG, "digest": img.id,
                             "size": len(img.config)},
                  "layers": layer_descs})


def docker_25_archive(images: list[ArchImage]) -> bytes:
    """Docker >= 25 ``docker save``: OCI layout + ``manifest.json``, uncompressed layers
    named by diff_id."""
    t = TarBuilder()
    t.dir("blobs")
    t.dir("blobs/sha256")
    seen: set[str] = set()
    index: list[dict[str, Any]] = []
    manifest: list[dict[str, Any]] = []
    for img in images:
        mbytes = _oci_manifest(img, [{"mediaType": OCI_LAYER, "digest": sha256(x),
                                      "size": len(x)} for x in img.layers])
        for data in [img.config, *img.layers, mbytes]:
            if sha256(data) not in seen:
                seen.add(sha256(data))
                t.file(f"blobs/sha256/{sha256(data)[7:]}", data)
        desc = {"mediaType": OCI_MANIFEST, "digest": sha256(mbytes), "size": len(mbytes)}
        for tag in img.tags:
            index.append({**desc, "annotations": {
                "io.containerd.image.name": f"docker.io/{_full(tag)}",
                "org.opencontainers.image.ref.name": tag.rpartition(":")[2]}})
        if not img.tags:
            index.append(desc)
        manifest.append({"Config": f"blobs/sha256/{img.id[7:]}", "RepoTags": img.tags or None,
                         "Layers": [f"blobs/sha256/{d[7:]}" for d in img.diff_ids]})
    t.file("index.json", dumps({"schemaVersion": 2, "mediaType": OCI_INDEX,
                                "manifests": index}))
    t.file("manifest.json", dumps(manifest) + b"\n")
    t.file("oci-layout", b'{"imageLayoutVersion": "1.0.0"}')
    t.file("repositories", b"{}\n")
    return t.bytes()


def _full(tag: str) -> str:
    return tag if "/" in tag.split(":")[0] else f"library/{tag}"


def podman_docker_archive(img: ArchImage) -> bytes:
    """podman 4 ``save --format docker-archive``: layer files ``<diffid>.tar`` at the top,
    ``<v1id>/layer.tar`` symlinks to them; here manifest.json names the symlinks so the
    loader has to follow them."""
    t = TarBuilder()
    v1 = _v1_ids(img)
    for layer in img.layers:
        t.file(f"{sha256(layer)[7:]}.tar", layer, 0o444)
    for vid, layer in zip(v1, img.layers, strict=True):
        t.dir(vid)
        t.symlink(f"{vid}/layer.tar", f"../{sha256(layer)[7:]}.tar")
        t.file(f"{vid}/VERSION", b"1.0", 0o444)
        t.file(f"{vid}/json", dumps({"id": vid}), 0o444)
    t.file(f"{img.id[7:]}.json", img.config, 0o444)
    t.file("manifest.json", dumps([{"Config": f"{img.id[7:]}.json",
                                    "RepoTags": [f"localhost/{t_}" for t_ in img.tags],
                                    "Layers": [f"{v}/layer.tar" for v in v1]}]), 0o444)
    t.file("repositories", b"{}", 0o444)
    return t.bytes()


def gzip_bytes(data: bytes) -> bytes:
    return gzip.compress(data, compresslevel=1, mtime=0)


def oci_archive(img: ArchImage, ref_name: str) -> tuple[bytes, str]:
    """podman ``save --format oci-archive``/skopeo style: gzip layers, index.json without
    mediaType naming the image only by ``org.opencontainers.image.ref.name``; no
    manifest.json. Returns (archive, manifest digest)."""
    t = TarBuilder()
    t.file("oci-layout", b'{"imageLayoutVersion": "1.0.0"}')
    gz = [gzip_bytes(x) for x in img.layers]
    mbytes = _oci_manifest(img, [{"mediaType": OCI_LAYER_GZIP, "digest": sha256(g),
                                  "size": len(g)} for g in gz])
    t.file("index.json", dumps({"schemaVersion": 2, "manifests": [
        {"mediaType": OCI_MANIFEST, "digest": sha256(mbytes), "size": len(mbytes),
         "annotations": {"org.opencontainers.image.ref.name": ref_name}}]}))
    t.dir("blobs")
    t.dir("blobs/sha256")
    for data in [*gz, img.config, mbytes]:
        t.file(f"blobs/sha256/{sha256(data)[7:]}", data)
    return t.bytes(), sha256(mbytes)


def read_archive(data: bytes) -> dict[str, bytes]:
    """Archive members: name -> bytes for files, b"->target" for links, b"<dir>" for
    directories."""
    out: dict[str, bytes] = {}
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        for ti in tf:
            if ti.isfile():
                f = tf.extractfile(ti)
                assert f is not None
                out[ti.name] = f.read()
            elif ti.issym() or ti.islnk():
                out[ti.name] = b"->" + ti.linkname.encode()
            elif ti.isdir():
                out[ti.name] = b"<dir>"
    return out


# ------------------------------------------------------------------- store observations
def blob_listing(root: Path) -> dict[str, int]:
    """Every committed blob and its size."""
    d = root / "blobs" / "sha256"
    return {p.name: p.stat().st_size for p in sorted(d.iterdir())} if d.exists() else {}


def ingest_listing(root: Path) -> list[str]:
    d = root / "ingest"
    return sorted(os.listdir(d)) if d.exists() else []


def assert_image_valid(engine: Any, image: Any) -> None:
    """The image invariants every image test checks (image-spec's ``validate``):
    the config blob hashes to the image ID, non-empty history entries match the layers
    one to one, and every layer record points at a blob of the recorded size whose
    uncompressed bytes hash to the diff_id."""
    from shale.unpack import open_layer_tar

    cfg_path = engine.content.path(image.id)
    assert sha256_file(cfg_path) == image.id.value, "config blob does not hash to the ID"
    assert image.config.raw == cfg_path.read_bytes()
    history = image.config.history
    diff_ids = image.config.diff_ids
    if history:
        assert sum(1 for h in history if not h.empty_layer) == len(diff_ids)
    layers = engine.images.layers(image)
    assert [x.diff_id for x in layers] == diff_ids
    for lay in layers:
        path = engine.content.path(lay.blob)
        assert path.exists(), f"layer blob {lay.blob} missing"
        assert path.stat().st_size == lay.blob_size
        assert sha256_file(path) == lay.blob.value
        h = hashlib.sha256()
        size = 0
        with open_layer_tar(engine.content, lay) as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
                size += len(chunk)
        assert "sha256:" + h.hexdigest() == lay.diff_id.value
        # a pulled layer not verified yet does not know its size (shale.layercheck)
        assert size == lay.diff_size or (not lay.verified and lay.diff_size == -1)
