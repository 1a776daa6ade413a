"""Deferred diff_id checks of pulled layers (``shale.layercheck``) beneath the registry: the
push-fed tar sizer against ``tarscan``, the read-through check, and the store rules for
unverified layer records. The end-to-end cases (pull, run, save, push, check, rmi) are in
test_registry.py."""

from __future__ import annotations

import gzip
import io
import json
import random
import tarfile
from pathlib import Path

import pytest
from helpers import Entry, sha256, simple_layer, tar_bytes

from shale import oci
from shale.digest import Digest
from shale.engine import Engine
from shale.errors import DataError
from shale.images import LayerRecord
from shale.layercheck import LayerCheckError, TarSizer, checked, verify_layers, verify_stored
from shale.tarscan import scan_copy


def _tars() -> list[bytes]:
    long = "d/" + "n" * 120 + "/file"
    gnu = io.BytesIO()
    with tarfile.open(fileobj=gnu, mode="w", format=tarfile.GNU_FORMAT) as tf:
        for name, data in ((long, b"gnu long name"), ("x/" + "y" * 150, b"")):
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data))
        ti = tarfile.TarInfo("link")
        ti.type, ti.linkname = tarfile.SYMTYPE, "t/" + "z" * 130
        tf.addfile(ti)
    return [
        simple_layer({"a/b": b"1" * 513, "a/c": b"", "e": b"2" * 100_000}),
        tar_bytes([Entry("d", "dir"), Entry("d/f", data=b"x" * 1000),
                   Entry("d/s", "symlink", link="f"), Entry("d/h", "hardlink", link="d/f"),
                   Entry("d/pax", data=b"p", pax={"comment": "c" * 600}),
                   Entry(long, data=b"long"), Entry("l", "symlink", link="é" * 70)]),
        gnu.getvalue(),
        tar_bytes([]),
        simple_layer({f"many/{i}": bytes(i % 7) for i in range(300)}),
    ]


@pytest.mark.parametrize("index", range(5))
def test_tar_sizer_agrees_with_tarscan_in_any_chunking(index: int) -> None:
    data = _tars()[index]
    want = scan_copy(io.BytesIO(data), lambda _b: None)
    rng = random.Random(index)
    for chunking in ("whole", "bytes", "random"):
        sizer = TarSizer()
        if chunking == "whole":
            sizer.feed(data)
        elif chunking == "bytes" and len(data) < 200_000:
            for i in range(len(data)):
                sizer.feed(data[i:i + 1])
        else:
            pos = 0
            while pos < len(data):
                n = rng.choice((1, 7, 511, 512, 513, 4096, 65536))
                sizer.feed(memoryview(data)[pos:pos + n])
                pos += n
        assert sizer.ok
        assert (sizer.tar_size, sizer.content_size) == (want.tar_size, want.content_size)


def test_tar_sizer_gives_up_where_tarscan_refuses() -> None:
    data = bytearray(simple_layer({"f": b"x"}))
    data[0] ^= 0x55  # the header checksum no longer matches
    with pytest.raises(DataError):
        scan_copy(io.BytesIO(bytes(data)), lambda _b: None)
    sizer = TarSizer()
    sizer.feed(bytes(data))
    assert not sizer.ok and sizer.tar_size == len(data)


def _record(layer: bytes, blob: bytes) -> LayerRecord:
    return LayerRecord(Digest(sha256(layer)), Digest(sha256(blob)), oci.DOCKER_LAYER_GZIP,
                       len(blob), -1, -1, verified=False)


def test_checked_stream_calls_back_only_for_the_right_bytes() -> None:
    layer = simple_layer({"etc/f": b"f" * 3000})
    rec = _record(layer, gzip.compress(layer))
    seen: list[tuple[int, int]] = []
    with checked(io.BytesIO(layer), rec, lambda _l, t, c: seen.append((t, c))) as src:
        assert src.read(100) == layer[:100]  # the reader gets the bytes unchanged
    assert seen == [(len(layer), 3000)]  # the rest was read by the check itself
    wrong = simple_layer({"etc/f": b"g" * 3000})
    with pytest.raises(LayerCheckError, match="invalid diffID"), \
            checked(io.BytesIO(wrong), rec, lambda *_a: seen.append((0, 0))) as src:
        src.read()
    assert len(seen) == 1
    # a verified record is passed through untouched
    plain = LayerRecord(rec.diff_id, rec.diff_id, oci.OCI_LAYER, len(layer), len(layer))
    stream = io.BytesIO(layer)
    with checked(stream, plain, None) as src:
        assert src is stream


def test_checked_names_the_blob_when_the_reader_fails_because_of_it() -> None:
    layer = simple_layer({"etc/f": b"f" * 3000})
    rec = _record(layer, b"")
    # the applier refused the tar: if the bytes are not the diff_id, that is the error
    with pytest.raises(LayerCheckError, match="invalid diffID"), \
            checked(io.BytesIO(b"\0" * 10), rec, None) as src:
        src.read(1)
        raise DataError("layer tar: bad")
    # ... if they are, the applier's error stands
    with pytest.raises(DataError, match="bad") as info, \
            checked(io.BytesIO(layer), rec, None) as src:
        src.read(1)
        raise DataError("layer tar: bad")
    assert not isinstance(info.value, LayerCheckError)
    # an error from writing (errno set) is not the blob's fault
    with pytest.raises(OSError, match="No space"), checked(io.BytesIO(layer), rec, None):
        raise OSError(28, "No space left on device")


def _store_unverified(eng: Engine, layer: bytes, blob: bytes, tag: str) -> LayerRecord:
    rec = _record(layer, blob)
    eng.content.write_bytes(blob, rec.blob)
    cfg = oci.ImageConfig.build({"architecture": "amd64", "os": "linux", "config": {},
                                 "rootfs": {"type": "layers",
                                            "diff_ids": [rec.diff_id.value]}})
    eng.content.write_bytes(cfg.raw, cfg.id)
    from shale.refs import Reference

    eng.images.publish(cfg, [rec], tags=[Reference.parse(tag)])
    return rec


def test_store_rules_for_unverified_records(tmp_path: Path) -> None:
    eng = Engine(tmp_path / "root")
    try:
        layer = simple_layer({"etc/f": b"content"})
        gz = gzip.compress(layer, mtime=0)
        rec = _store_unverified(eng, layer, gz, "a:1")
        assert not eng.images.has_layer(rec.diff_id)
        assert eng.images.layer(rec.diff_id).verified is False
        assert eng.images.unverified_layer(rec.diff_id) == (rec.blob, "")
        # another unverified claim on the same diff_id does not replace the first
        other = gzip.compress(layer, compresslevel=1, mtime=1)
        eng.images.publish(eng.images.get("a:1").config, [_record(layer, other)])
        assert eng.images.layer(rec.diff_id).blob == rec.blob
        # verify_stored reads with every use's decoder; verify_layers records the sizes
        assert verify_stored(eng.content, rec) == (len(layer), len(b"content"))
        (after,) = verify_layers(eng, [rec])
        assert after.verified and after.diff_size == len(layer) and after.content_size == 7
        assert eng.images.has_layer(rec.diff_id) and eng.check() == []
    finally:
        eng.close()


def test_a_verified_record_replaces_an_unverified_one_and_rmi_cascades(tmp_path: Path
                                                                       ) -> None:
    eng = Engine(tmp_path / "root")
    try:
        layer = simple_layer({"etc/f": b"content"})
        rec = _store_unverified(eng, layer, gzip.compress(layer, mtime=0), "a:1")
        # a load of the same layer (uncompressed, its digest is its diff_id) replaces it
        from shale.unpack import store_layer

        plain = store_layer(eng.content, io.BytesIO(layer))
        eng.images.publish(eng.images.get("a:1").config, [plain])
        got = eng.images.layer(rec.diff_id)
        assert got.verified and got.blob == rec.diff_id and got.diff_size == len(layer)
        assert eng.images.unverified_layer(rec.diff_id) is None
        # a verified record is never replaced by an unverified claim
        eng.images.publish(eng.images.get("a:1").config, [rec])
        assert eng.images.layer(rec.diff_id).verified
        # an unverified record goes with its layer row (rmi + gc)
        layer2 = simple_layer({"etc/g": b"other"})
        rec2 = _store_unverified(eng, layer2, gzip.compress(layer2, mtime=0), "b:1")
        eng.remove_image("b:1")
        assert eng.images.unverified_layer(rec2.diff_id) is None
        assert eng.meta.query("SELECT * FROM unverified_layers") == []
        assert eng.check() == []
    finally:
        eng.close()


def test_a_failed_check_is_recorded_and_reported(tmp_path: Path) -> None:
    eng = Engine(tmp_path / "root")
    try:
        layer = simple_layer({"etc/f": b"content"})
        lie = simple_layer({"etc/f": b"a lie"})
        rec = _store_unverified(eng, layer, gzip.compress(lie, mtime=0), "a:1")
        # the size columns do not fail: the layer stays unverified, its size the blob's
        (after,) = verify_layers(eng, [rec], strict=False)
        assert not after.verified
        assert eng.image_size(eng.images.get("a:1")) == rec.blob_size
        err = eng.images.layer_check_error(rec.diff_id, rec.blob)
        assert f"invalid diffID: expected {rec.diff_id}, got {sha256(lie)}" in err
        with pytest.raises(LayerCheckError) as info:
            verify_layers(eng, [rec])
        assert info.value.message == err
        assert eng.check() == [err]
        assert json.loads(eng.images.get("a:1").config.raw)["rootfs"]["diff_ids"] == \
            [rec.diff_id.value]
    finally:
        eng.close()
