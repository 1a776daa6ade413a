"""save and load: round trips that keep IDs and layer bytes, the dual docker-archive + OCI
layout that save writes, every archive layout load reads, and hostile or corrupt archives,
each of which must fail with exit 1 (docker's CLI code for a failed verb) and one line on
stderr while leaving the store exactly as it was."""

from __future__ import annotations

import hashlib
import io
import json
import os
import signal
import subprocess
import tarfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import SHALE_ARGV, Cli
from helpers import (
    ArchImage,
    Entry,
    TarBuilder,
    arch_image,
    assert_image_valid,
    blob_listing,
    busybox_entries,
    docker_25_archive,
    docker_2010_archive,
    dumps,
    gzip_bytes,
    ingest_listing,
    make_config,
    oci_archive,
    podman_docker_archive,
    read_archive,
    sha256,
    simple_layer,
    tar_bytes,
)

from shale.engine import Engine

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


@pytest.fixture(autouse=True)
def _store_invariants(root: Path) -> Iterator[None]:
    yield
    if not (root / "metadata.db").exists():
        return
    eng = Engine(root)
    try:
        for img in eng.images.list():
            assert_image_valid(eng, img)
        assert eng.check() == []
    finally:
        eng.close()


@pytest.fixture(scope="module")
def bb_layer() -> bytes:
    """A 2 MB layer: big enough that load stages it instead of keeping it in memory."""
    return tar_bytes(busybox_entries())


LA = simple_layer({"a/one": b"1" * 1000, "a/two": b"2" * 2000})
LB = tar_bytes([Entry("a", "dir"), Entry("a/.wh.one"), Entry("b", "symlink", link="/a/two"),
                Entry("c", "hardlink", link="a/two")])


def _image(bb_layer: bytes, tag: str = "shaletest/arch:1") -> ArchImage:
    return arch_image([bb_layer, LA, LB], [tag], history=[
        {"created": "2023-01-01T00:00:00Z", "created_by": "/bin/sh -c #(nop) ADD bb in /"},
        {"created": "2023-01-02T00:00:00Z", "created_by": "/bin/sh -c #(nop)  ENV X=1",
         "empty_layer": True},
        {"created": "2023-01-03T00:00:00Z", "created_by": "/bin/sh -c make a"},
        {"created": "2023-01-04T00:00:00Z", "created_by": "/bin/sh -c rm a/one"}])


def _check_loaded(engine: Engine, img: ArchImage) -> None:
    """The store holds exactly the archive's config bytes and layer bytes."""
    got = engine.image(img.id)
    assert got.config.raw == img.config
    assert [d.value for d in got.config.diff_ids] == img.diff_ids
    for layer, diff_id in zip(img.layers, img.diff_ids, strict=True):
        rec = engine.images.layer(got.config.diff_ids[img.diff_ids.index(diff_id)])
        assert engine.content.path(rec.blob).read_bytes() == layer
    assert_image_valid(engine, got)


# ---------------------------------------------------------------------------- round trip
def test_save_load_round_trip_is_byte_exact(cli: Cli, engine: Engine, tmp_path: Path,
                                            bb_layer: bytes) -> None:
    img = _image(bb_layer)
    assert cli.ok("load", stdin=docker_2010_archive([img])) == "Loaded image: shaletest/arch:1\n"
    _check_loaded(engine, img)
    out = tmp_path / "saved.tar"
    assert cli("save", "-o", str(out), "shaletest/arch:1") == (0, "", "")
    # to stdout: the same bytes
    code, data, err = cli.binary("save", "shaletest/arch:1")
    assert (code, err) == (0, "")
    assert data == out.read_bytes()
    other = Cli(tmp_path / "other-root")
    assert other.ok("load", "-i", str(out)) == "Loaded image: shaletest/arch:1\n"
    eng2 = Engine(tmp_path / "other-root")
    try:
        _check_loaded(eng2, img)
        # and again: save of the reloaded image gives the same archive
        code, again, _ = other.binary("save", "shaletest/arch:1")
        assert again == data
    finally:
        eng2.close()


def test_round_trip_of_imported_image(cli: Cli, busybox_tar: Path, tmp_path: Path) -> None:
    image_id = cli.ok("import", str(busybox_tar), "shaletest-bb:1").strip()
    code, data, _ = cli.binary("save", "shaletest-bb:1")
    assert code == 0
    other = Cli(tmp_path / "r2")
    assert other.ok("load", stdin=data) == "Loaded image: shaletest-bb:1\n"
    assert other.ok("images", "-q", "--no-trunc") == image_id + "\n"
    assert other.ok("inspect", "shaletest-bb:1") == cli.ok("inspect", "shaletest-bb:1") \
        .replace(*_last_tag_time(cli, other))


def _last_tag_time(a: Cli, b: Cli) -> tuple[str, str]:
    ta = json.loads(a.ok("inspect", "shaletest-bb:1"))[0]["Metadata"]["LastTagTime"]
    tb = json.loads(b.ok("inspect", "shaletest-bb:1"))[0]["Metadata"]["LastTagTime"]
    return ta, tb


def test_parent_links_survive_save_and_load(cli: Cli, tmp_path: Path) -> None:
    lp, lk = simple_layer({"p": b"p"}), simple_layer({"k": b"k"})
    hp = [{"created": "2022-01-01T00:00:00Z", "created_by": "p"}]
    p = arch_image([lp], [], history=hp, created="2022-01-01T00:00:00Z")
    k = arch_image([lp, lk], ["shaletest-kid:1"], history=[*hp, {"created_by": "k"}],
                   created="2022-01-02T00:00:00Z")
    k.parent = p.id
    cli.ok("load", stdin=docker_2010_archive([p, k]))
    _, data, _ = cli.binary("save", "shaletest-kid:1", p.id)
    manifest = json.loads(read_archive(data)["manifest.json"])
    assert manifest == [
        {"Config": f"blobs/sha256/{k.id[7:]}", "RepoTags": ["shaletest-kid:1"],
         "Layers": [f"blobs/sha256/{d[7:]}" for d in k.diff_ids], "Parent": p.id},
        {"Config": f"blobs/sha256/{p.id[7:]}", "RepoTags": None,
         "Layers": [f"blobs/sha256/{sha256(lp)[7:]}"]}]
    other = Cli(tmp_path / "r2")
    other.ok("load", stdin=data)
    assert other.ok("images", "-qa") == f"{k.id[7:19]}\n{p.id[7:19]}\n"
    assert other.ok("images", "-q") == f"{k.id[7:19]}\n"


def test_invalid_parent_is_refused(cli: Cli, root: Path) -> None:
    p = arch_image([LA], [], history=[{"created_by": "unrelated"}])
    k = arch_image([LA, LB], ["shaletest-kid:1"], history=[{"created_by": "x"},
                                                           {"created_by": "y"}])
    k.parent = p.id
    res = cli("load", stdin=docker_2010_archive([p, k]))
    assert res == (1, "", f"Error: image {p.id} is not a valid parent for {k.id}\n")
    assert blob_listing(root) == {}


# ------------------------------------------------------------------------- save's layout
def test_save_is_docker_archive_and_oci_layout(cli: Cli, bb_layer: bytes) -> None:
    img = _image(bb_layer)
    cli.ok("load", stdin=docker_25_archive([img]))
    cli.ok("tag", "shaletest/arch:1", "shaletest/arch:2")
    code, data, _ = cli.binary("save", "shaletest/arch:1", "shaletest/arch:2")
    assert code == 0
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        names = tf.getnames()
        for ti in tf:
            # reproducible: no host owners, no mtimes
            assert (ti.uid, ti.gid, ti.uname, ti.gname, ti.mtime) == (0, 0, "", "", 0), ti.name
    members = read_archive(data)
    manifest_bytes = _oci_manifest_bytes(img)
    mdigest = sha256(manifest_bytes)
    blobs = sorted(f"blobs/sha256/{x[7:]}" for x in {img.id, mdigest, *img.diff_ids})
    assert names == ["oci-layout", "index.json", "manifest.json", "repositories", "blobs",
                     "blobs/sha256", *_blob_order(img, mdigest)]
    assert sorted(n for n in names if n.startswith("blobs/sha256/")) == blobs
    # every blob is named by its sha256
    for name in blobs:
        assert sha256(members[name]) == "sha256:" + name.rsplit("/", 1)[1]
    assert members["oci-layout"] == b'{"imageLayoutVersion": "1.0.0"}'
    assert members[f"blobs/sha256/{img.id[7:]}"] == img.config
    assert members[f"blobs/sha256/{mdigest[7:]}"] == manifest_bytes
    for layer in img.layers:
        assert members[f"blobs/sha256/{sha256(layer)[7:]}"] == layer
    desc = {"mediaType": OCI_MANIFEST, "digest": mdigest, "size": len(manifest_bytes)}
    assert members["index.json"] == dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{**desc, "annotations": {
            "io.containerd.image.name": f"docker.io/shaletest/arch:{t}",
            "org.opencontainers.image.ref.name": t}} for t in ("1", "2")]})
    assert members["manifest.json"] == dumps([{
        "Config": f"blobs/sha256/{img.id[7:]}",
        "RepoTags": ["shaletest/arch:1", "shaletest/arch:2"],
        "Layers": [f"blobs/sha256/{d[7:]}" for d in img.diff_ids]}]) + b"\n"
    assert members["repositories"] == dumps(
        {"shaletest/arch": {"1": img.diff_ids[-1][7:], "2": img.diff_ids[-1][7:]}}) + b"\n"


def _oci_manifest_bytes(img: ArchImage) -> bytes:
    return dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                  "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                             "digest": img.id, "size": len(img.config)},
                  "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                              "digest": sha256(x), "size": len(x)} for x in img.layers]})


def _blob_order(img: ArchImage, mdigest: str) -> list[str]:
    return [f"blobs/sha256/{x[7:]}" for x in (img.id, mdigest, *img.diff_ids)]


def test_save_by_id_records_no_tag(cli: Cli) -> None:
    img = arch_image([LA], ["shaletest-id:1"])
    cli.ok("load", stdin=docker_25_archive([img]))
    _, data, _ = cli.binary("save", img.id[7:19])
    members = read_archive(data)
    index = json.loads(members["index.json"])
    assert [set(d) for d in index["manifests"]] == [{"mediaType", "digest", "size"}]
    assert json.loads(members["manifest.json"])[0]["RepoTags"] is None
    assert members["repositories"] == b"{}\n"


def test_save_shares_blobs_between_images(cli: Cli) -> None:
    a = arch_image([LA], ["shaletest-a:1"])
    b = arch_image([LA, LB], ["shaletest-b:1"], history=[{"created_by": "1"},
                                                        {"created_by": "2"}])
    cli.ok("load", stdin=docker_25_archive([a, b]))
    _, data, _ = cli.binary("save", "shaletest-a:1", "shaletest-b:1")
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        names = tf.getnames()
    assert names.count(f"blobs/sha256/{sha256(LA)[7:]}") == 1
    assert len(json.loads(read_archive(data)["manifest.json"])) == 2


def test_save_errors_leave_no_file(cli: Cli, tmp_path: Path) -> None:
    out = tmp_path / "x.tar"
    assert cli("save", "-o", str(out), "shaletest-nope:1") == (
        1, "", "Error: No such image: shaletest-nope:1\n")
    assert os.listdir(tmp_path) == ["root"]


# ---------------------------------------------------------------------- load's layouts
def _podman_hardlinked(img: ArchImage) -> bytes:
    t = TarBuilder()
    for n, layer in enumerate(img.layers):
        t.file(f"{sha256(layer)[7:]}.tar", layer)
        t.dir(f"v1-{n}")
        t.hardlink(f"v1-{n}/layer.tar", f"{sha256(layer)[7:]}.tar")
    t.file("cfg.json", img.config)
    t.file("manifest.json", dumps([{"Config": "cfg.json", "RepoTags": img.tags,
                                    "Layers": [f"v1-{n}/layer.tar"
                                               for n in range(len(img.layers))]}]))
    return t.bytes()


LAYOUTS: dict[str, Callable[[ArchImage], tuple[bytes, str]]] = {
    "docker-20.10": lambda i: (docker_2010_archive([i]), "Loaded image: shaletest/arch:1\n"),
    "docker-25": lambda i: (docker_25_archive([i]), "Loaded image: shaletest/arch:1\n"),
    "podman-docker-archive": lambda i: (podman_docker_archive(i),
                                        "Loaded image: localhost/shaletest/arch:1\n"),
    "hardlinked-layers": lambda i: (_podman_hardlinked(i), "Loaded image: shaletest/arch:1\n"),
    "oci-archive": lambda i: (oci_archive(i, "localhost/shaletest/arch:1")[0],
                              "Loaded image: localhost/shaletest/arch:1\n"),
    "gzipped-docker-25": lambda i: (gzip_bytes(docker_25_archive([i])),
                                    "Loaded image: shaletest/arch:1\n"),
    "gzipped-oci-archive": lambda i: (gzip_bytes(oci_archive(i, "localhost/shaletest/arch:1")[0]),
                                      "Loaded image: localhost/shaletest/arch:1\n"),
}


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
@pytest.mark.parametrize("via", ["stdin", "file"])
def test_load_layouts(cli: Cli, engine: Engine, tmp_path: Path, bb_layer: bytes,
                      layout: str, via: str) -> None:
    img = _image(bb_layer)
    data, lines = LAYOUTS[layout](img)
    if via == "stdin":
        res = cli("load", stdin=data)
    else:
        (tmp_path / "a.tar").write_bytes(data)
        res = cli("load", "-i", str(tmp_path / "a.tar"))
    assert res == (0, lines, "")
    _check_loaded(engine, img)
    # layers are kept uncompressed whatever the archive carried
    for d in img.diff_ids:
        rec = engine.images.layer(engine.image(img.id).config.diff_ids[img.diff_ids.index(d)])
        assert (rec.blob.value, rec.media_type) == (d, "application/vnd.oci.image.layer.v1.tar")
    assert ingest_listing(engine.root) == []


def test_concurrent_loads_of_one_archive_all_succeed(root: Path, tmp_path: Path,
                                                    bb_layer: bytes) -> None:
    """Four processes load the same archive at once: every one succeeds (blob commits
    dedupe, records are idempotent) and the store ends up with one sound image."""
    img = _image(bb_layer)
    path = tmp_path / "a.tar"
    path.write_bytes(docker_2010_archive([img]))
    Cli(root).ok("images")
    procs = [subprocess.Popen([*SHALE_ARGV, "--root", str(root), "load", "-i", str(path)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for _ in range(4)]
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert (p.returncode, out, err) == (0, b"Loaded image: shaletest/arch:1\n", b"")
    assert sorted(blob_listing(root)) == sorted(x[7:] for x in [img.id, *img.diff_ids])
    assert ingest_listing(root) == []


def test_oci_archive_with_bare_tag_name_loads_untagged(cli: Cli) -> None:
    img = arch_image([LA], [])
    data, _ = oci_archive(img, "1")
    assert cli.ok("load", stdin=data) == f"Loaded image ID: {img.id}\n"


def test_load_twice_dedupes_and_moves_tags(cli: Cli, root: Path) -> None:
    a = arch_image([LA], ["shaletest-x:1"], created="2020-01-01T00:00:00Z")
    cli.ok("load", stdin=docker_25_archive([a]))
    blobs = blob_listing(root)
    assert cli.ok("load", stdin=docker_2010_archive([a])) == "Loaded image: shaletest-x:1\n"
    assert blob_listing(root) == blobs
    b = arch_image([LA], ["shaletest-x:1"], created="2021-01-01T00:00:00Z")
    assert cli.ok("load", stdin=docker_25_archive([b])) == (
        f"The image shaletest-x:1 already exists, renaming the old one with ID {a.id} to "
        "empty string\nLoaded image: shaletest-x:1\n")
    assert cli.ok("images", "-q", "--no-trunc") == f"{b.id}\n{a.id}\n"


def test_absolute_names_are_confined_not_refused(cli: Cli, engine: Engine) -> None:
    # moby strips the leading "/" (path.Clean(TrimLeft(name, "/"))): such a layer is
    # legal and unpacks inside the root
    layer = tar_bytes([Entry("/abs", "dir"), Entry("/abs/file", data=b"x"),
                       Entry("/abs/hl", "hardlink", link="/abs/file")])
    img = arch_image([layer], ["shaletest-abs:1"])
    assert cli.ok("load", stdin=docker_25_archive([img])) == "Loaded image: shaletest-abs:1\n"
    _check_loaded(engine, img)


# ------------------------------------------------------------------- hostile and corrupt
def _state(cli: Cli, root: Path) -> tuple[object, ...]:
    """Everything a failed load must not change."""
    return (blob_listing(root), ingest_listing(root), cli.ok("images", "-a", "--no-trunc"),
            cli.ok("system", "df"))


def _layer_with(entries: list[Entry], big: bool) -> bytes:
    """A layer holding ``entries`` after a padding file; ``big`` makes it larger than what
    load keeps in memory, so both the in-memory and the staged path are exercised."""
    pad = [Entry("pad", data=b"\0" * (200_000 if big else 100))]
    return tar_bytes(pad + entries)


HOSTILE_LAYERS: dict[str, tuple[list[Entry], str]] = {
    "dotdot": ([Entry("../escape", data=b"x")], "entry '../escape': path escapes the root"),
    "dotdot-deep": ([Entry("a/../../escape", data=b"x")],
                    "entry 'a/../../escape': path escapes the root"),
    "absolute-climb": ([Entry("/../../etc/escape", data=b"x")],
                       "entry '/../../etc/escape': path escapes the root"),
    "hardlink-out": ([Entry("h", "hardlink", link="../../x")],
                     "hardlink 'h' -> '../../x': path escapes the root"),
    "whiteout-dotdot": ([Entry("a", "dir"), Entry("a/.wh..")],
                        "entry 'a/.wh..': invalid whiteout name"),
    "whiteout-climb": ([Entry("../.wh.passwd")], "entry '../.wh.passwd': path escapes the root"),
    "symlink-dir-escape": ([Entry("x", "symlink", link="/"), Entry("x/../../y", data=b"")],
                           "entry 'x/../../y': path escapes the root"),
}


@pytest.fixture
def seeded(cli: Cli) -> ArchImage:
    """A store that already holds an image sharing LA with the hostile archives, so
    'unchanged' also covers a dedupe of an existing layer."""
    img = arch_image([LA], ["shaletest-seed:1"])
    cli.ok("load", stdin=docker_25_archive([img]))
    return img


@pytest.mark.parametrize("big", [False, True], ids=["small", "big"])
@pytest.mark.parametrize("case", sorted(HOSTILE_LAYERS))
@pytest.mark.parametrize("fmt", ["docker-20.10", "oci-archive"])
def test_hostile_layer_is_refused(cli: Cli, root: Path, seeded: ArchImage, case: str,
                                  big: bool, fmt: str) -> None:
    entries, message = HOSTILE_LAYERS[case]
    bad = _layer_with(entries, big)
    # a new good layer first (a loader that publishes as it goes would leave it behind),
    # then one the store already has, then the hostile one
    fresh = simple_layer({"fresh": b"f" * (100_000 if big else 10)})
    img = arch_image([fresh, LA, bad], ["shaletest-evil:1"], history=[
        {"created_by": "a"}, {"created_by": "b"}, {"created_by": "c"}])
    data = docker_2010_archive([img]) if fmt == "docker-20.10" else oci_archive(
        img, "localhost/shaletest-evil:1")[0]
    before = _state(cli, root)
    res = cli("load", stdin=data)
    assert (res.code, res.out) == (1, "")
    assert res.err.startswith("Error: ") and res.err.endswith("\n") and res.err.count("\n") == 1
    assert message in res.err
    assert _state(cli, root) == before
    assert cli("system", "check") == (0, "no problems found\n", "")


def _wrong_diff_id(big_layer: bytes) -> tuple[bytes, str]:
    good = arch_image([big_layer, LA], ["shaletest-bad:1"], history=[{"created_by": "a"},
                                                                    {"created_by": "b"}])
    wrong = "sha256:" + "0" * 64
    cfg = make_config([sha256(big_layer), wrong], history=[{"created_by": "a"},
                                                           {"created_by": "b"}])
    img = ArchImage(cfg, good.layers, good.tags)
    data = docker_2010_archive([img])
    path = [n for n in read_archive(data) if n.endswith("/layer.tar")][1]
    return data, (f"Error: invalid diffID for layer 1 ({path}): expected {wrong}, "
                  f"got {sha256(LA)}\n")


def _manifest_missing_file() -> tuple[bytes, str]:
    img = arch_image([LA], ["shaletest-bad:1"])
    t = TarBuilder()
    t.file("c.json", img.config)
    t.file("manifest.json", dumps([{"Config": "c.json", "RepoTags": img.tags,
                                    "Layers": ["nowhere/layer.tar"]}]))
    return t.bytes(), "Error: invalid archive: layer 'nowhere/layer.tar' not found in archive\n"


def _with_config(cfg: bytes) -> bytes:
    t = TarBuilder()
    t.file("l.tar", LA)
    t.file("c.json", cfg)
    t.file("manifest.json", dumps([{"Config": "c.json", "RepoTags": ["shaletest-bad:1"],
                                    "Layers": ["l.tar"]}]))
    return t.bytes()


def _truncated(bb_layer: bytes) -> tuple[bytes, str]:
    data = docker_2010_archive([_image(bb_layer)])
    return data[:len(data) // 2], ""


CORRUPT: dict[str, Callable[[bytes], tuple[bytes, str]]] = {
    "wrong-diff-id": _wrong_diff_id,
    "manifest-missing-file": lambda _: _manifest_missing_file(),
    "too-many-history-entries": lambda _: (_with_config(make_config(
        [sha256(LA)], history=[{"created_by": "a"}, {"created_by": "b"}])),
        "Error: too many non-empty layers in History section\n"),
    "config-without-rootfs": lambda _: (_with_config(make_config([], rootfs=False)),
                                        "Error: invalid image JSON, no RootFS key\n"),
    "layers-length-mismatch": lambda _: (_with_config(make_config([], history=[])),
                                         "Error: invalid manifest, layers length mismatch\n"),
    "manifest-not-a-list": lambda _: (_archive_with_manifest(b'{"Config": "c.json"}'),
                                      "Error: invalid archive: manifest.json is not a list\n"),
    "manifest-bad-json": lambda _: (_archive_with_manifest(b"[{"), ""),
    "invalid-repo-tag": lambda _: (_archive_with_manifest(dumps(
        [{"Config": "c.json", "RepoTags": ["Bad:Tag"], "Layers": ["l.tar"]}])),
        "Error: invalid reference format: repository name (library/Bad) must be lowercase\n"),
    "truncated": _truncated,
    "truncated-gzip": lambda b: (gzip_bytes(docker_2010_archive([_image(b)]))[:300_000], ""),
    "not-a-tar": lambda _: (os.urandom(100_000), ""),
    "empty-input": lambda _: (b"", ""),
    "no-manifest": lambda _: (tar_bytes([Entry("x", data=b"x")]),
                              "Error: invalid archive: does not contain a manifest.json or "
                              "index.json\n"),
    "zstd-layer": lambda _: (_with_layer_bytes(b"\x28\xb5\x2f\xfd" + b"\0" * 70_000), ""),
}


def _archive_with_manifest(manifest: bytes) -> bytes:
    t = TarBuilder()
    t.file("l.tar", LA)
    t.file("c.json", make_config([sha256(LA)]))
    t.file("manifest.json", manifest)
    return t.bytes()


def _with_layer_bytes(layer: bytes) -> bytes:
    t = TarBuilder()
    t.file("l.tar", layer)
    t.file("c.json", make_config([sha256(LA)]))
    t.file("manifest.json", dumps([{"Config": "c.json", "RepoTags": ["shaletest-bad:1"],
                                    "Layers": ["l.tar"]}]))
    return t.bytes()


@pytest.mark.parametrize("case", sorted(CORRUPT))
def test_corrupt_archive_is_refused(cli: Cli, root: Path, seeded: ArchImage, bb_layer: bytes,
                                    case: str) -> None:
    data, expected_err = CORRUPT[case](bb_layer)
    before = _state(cli, root)
    res = cli("load", stdin=data)
    assert (res.code, res.out) == (1, "")
    if expected_err:
        assert res.err == expected_err
    else:
        assert res.err.startswith("Error: ") and res.err.count("\n") == 1, res.err
        assert "Traceback" not in res.err and "Error: " + "EOFError" not in res.err
    assert _state(cli, root) == before
    assert cli("system", "check") == (0, "no problems found\n", "")


def test_corrupt_error_texts(cli: Cli, bb_layer: bytes) -> None:
    """The one-line errors name what is wrong."""
    data, _ = _truncated(bb_layer)
    assert cli("load", stdin=data).err == "Error: invalid archive: unexpected end of data\n"
    data = gzip_bytes(docker_2010_archive([_image(bb_layer)]))[:300_000]
    assert cli("load", stdin=data).err == (
        "Error: invalid archive: Compressed file ended before the end-of-stream marker was "
        "reached\n")
    assert cli("load", stdin=os.urandom(100_000)).err.startswith("Error: invalid archive: ")
    assert cli("load", stdin=b"").err == "Error: invalid archive: empty file\n"


# ------------------------------------------------------------------------ kill and memory
def _big_archive(path: Path, mb: int) -> tuple[str, str, int]:
    """A docker-archive with one layer of ``mb`` MB, streamed to ``path`` (never held in
    memory). Returns (image ID, diff_id, layer size)."""
    chunk = hashlib.sha256(b"seed").digest() * (1 << 15)  # 1 MiB, not all zeros
    head = tarfile.TarInfo("big.bin")
    head.size, head.mtime = mb << 20, 0
    parts = [head.tobuf(tarfile.PAX_FORMAT)]
    layer_size = len(parts[0]) + (mb << 20) + 1024
    h = hashlib.sha256(parts[0])
    for _ in range(mb):
        h.update(chunk)
    h.update(b"\0" * 1024)
    diff_id = "sha256:" + h.hexdigest()
    config = make_config([diff_id])
    image_id = sha256(config)
    with open(path, "wb") as out:
        member = tarfile.TarInfo("v1/layer.tar")
        member.size = layer_size
        out.write(member.tobuf(tarfile.PAX_FORMAT))
        out.write(parts[0])
        for _ in range(mb):
            out.write(chunk)
        out.write(b"\0" * 1024)
        out.write(b"\0" * (-layer_size % 512))
        rest = TarBuilder()
        rest.file("c.json", config)
        rest.file("manifest.json", dumps([{"Config": "c.json", "RepoTags": ["shaletest-big:1"],
                                           "Layers": ["v1/layer.tar"]}]))
        out.write(rest.bytes())
    return image_id, diff_id, layer_size


@pytest.mark.slow
def test_kill_during_load_then_check_and_reload(root: Path, tmp_path: Path) -> None:
    archive = tmp_path / "big.tar"
    image_id, _, _ = _big_archive(archive, 400)
    Cli(root).ok("images")  # create the store first, so the ingest dir exists
    proc = subprocess.Popen([*SHALE_ARGV, "--root", str(root), "load", "-i", str(archive)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    # kill it part way: once the staged layer has some data but not all of it
    while time.monotonic() < deadline:
        sizes = [os.path.getsize(root / "ingest" / n) for n in ingest_listing(root)]
        if sizes and max(sizes) > 50 << 20:
            break
        assert proc.poll() is None, "load finished before it could be killed"
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    cli = Cli(root)
    assert cli("system", "check") == (0, "no problems found\n", "")
    assert cli.ok("images", "-qa") == ""
    assert blob_listing(root) == {}
    assert cli.ok("load", "-i", str(archive)) == "Loaded image: shaletest-big:1\n"
    assert cli.ok("images", "-q", "--no-trunc") == image_id + "\n"


@pytest.mark.slow
def test_load_and_save_memory_stays_flat(root: Path, tmp_path: Path) -> None:
    """Streaming: a 400 MB layer goes through load and save with a small peak RSS."""
    archive = tmp_path / "big.tar"
    _, diff_id, layer_size = _big_archive(archive, 400)
    for args in (["load", "-i", str(archive)],
                 ["save", "-o", str(tmp_path / "out.tar"), "shaletest-big:1"]):
        # the child reports its own peak RSS, so other children of pytest do not count
        script = ("import resource, sys\nfrom shale.cli import main\n"
                  f"rc = main(['--root', {str(root)!r}, *{args!r}])\n"
                  "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)\n"
                  "sys.exit(rc)\n")
        res = subprocess.run([SHALE_ARGV[0], "-c", script], capture_output=True, timeout=300,
                             check=False)
        assert res.returncode == 0, res.stderr
        peak_kb = int(res.stderr.split()[-1])
        assert peak_kb < 150 * 1024, f"{args[0]}: peak RSS {peak_kb} kB"
    with tarfile.open(tmp_path / "out.tar") as tf:
        member = tf.getmember(f"blobs/sha256/{diff_id[7:]}")
        assert member.size == layer_size
