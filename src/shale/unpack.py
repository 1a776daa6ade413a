"""Layers in and out of the stores.

- ``store_layer``: a layer stream (plain or compressed) -> an uncompressed tar blob in the
  content store, checked by ``tarscan`` on the way (its sha256 is the diff_id).
- ``unpack``: image layers -> committed snapshots named by chain ID. Each chain is unpacked
  once and shared by every image and container on it; a chain another process committed
  first is taken as it is (``AlreadyExists`` is dedupe).

Unpacking is lazy: ``load``, ``import`` and ``pull`` only store blobs; the first container
or build step on an image unpacks what is missing.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Sequence
from typing import BinaryIO

from shale import oci
from shale.content import ContentStore
from shale.digest import Digest, Hasher, chain_ids
from shale.errors import AlreadyExists, NotFound
from shale.images import LayerRecord
from shale.snapshots import Kind, Snapshotter


def store_layer(content: ContentStore, src: BinaryIO, *, expected: Digest | None = None,
                what: str = "layer") -> LayerRecord:
    """Store the layer in ``src`` uncompressed; verify it against ``expected`` (a diff_id)."""
    # imported here: `run` of an unpacked image needs neither (~1 ms)
    from shale.compression import decompressed
    from shale.tarscan import scan_copy

    _, stream = decompressed(src)
    if expected is not None and content.exists(expected):
        # already stored: only verify what the archive says, write nothing
        h = Hasher()
        res = scan_copy(stream, h.update, what)
        got = h.digest()
        if got != expected:
            from shale.errors import DigestMismatch

            raise DigestMismatch(f"{what}: invalid diffID: expected {expected}, got {got}")
        return LayerRecord(got, got, oci.OCI_LAYER, res.tar_size, res.tar_size,
                           res.content_size)
    with content.writer() as w:
        res = scan_copy(stream, w.write, what)
        got = w.digest()
        if expected is not None and got != expected:
            from shale.errors import DigestMismatch

            raise DigestMismatch(f"{what}: invalid diffID: expected {expected}, got {got}")
        w.commit()
    return LayerRecord(got, got, oci.OCI_LAYER, res.tar_size, res.tar_size, res.content_size)


def open_layer_tar(content: ContentStore, layer: LayerRecord) -> BinaryIO:
    """The layer's uncompressed tar as a stream (decompressing a pulled blob on the fly)."""
    f = content.open(layer.blob)
    if layer.blob == layer.diff_id:
        return f
    from shale.compression import decompressed

    try:
        _, stream = decompressed(f)
    except BaseException:
        f.close()
        raise
    inner_close = stream.close

    def close() -> None:  # the decompressor does not close the blob file it reads
        try:
            inner_close()
        finally:
            f.close()

    stream.close = close  # type: ignore[method-assign]
    return stream


def unpack(snap: Snapshotter, content: ContentStore, layers: Sequence[LayerRecord],
           verified: Callable[[LayerRecord, int, int], None] | None = None) -> str:
    """Make sure every chain of ``layers`` is a committed snapshot; return the top chain ID
    ("" for an image without layers). An unverified (pulled) layer is hashed as it is
    applied and its snapshot committed only if it matched its diff_id; then
    ``verified(layer, tar size, content size)`` (``shale.layercheck``)."""
    parent = ""
    for layer, chain in zip(layers, chain_ids([x.diff_id for x in layers]), strict=True):
        name = chain.value
        if _committed(snap, name):
            parent = name
            continue
        from shale.layer_apply import apply_layer  # only when unpacking: `run` skips tarfile


        def fill(key: str, layer: LayerRecord = layer) -> None:
            with open_layer_tar(content, layer) as f, _checked(f, layer, verified) as src:
                apply_layer(src, snap.layer_dir(key), fmt=snap.layer_format,
                            lowers=snap.parent_dirs(key))

        commit_filled(snap, name, parent, fill)
        parent = name
    return parent


def _checked(f: BinaryIO, layer: LayerRecord,
             verified: Callable[[LayerRecord, int, int], None] | None
             ) -> contextlib.AbstractContextManager[BinaryIO]:
    if layer.verified:
        return contextlib.nullcontext(f)
    from shale.layercheck import checked

    return checked(f, layer, verified)


def commit_filled(snap: Snapshotter, name: str, parent: str,
                  fill: Callable[[str], None]) -> None:
    """Fill a temporary active snapshot on ``parent`` (``fill(key)``), flush it and commit it
    as ``name``. A name another process committed first is taken as it is (dedupe); on any
    other failure the temporary snapshot goes and nothing is published."""
    key = f"extract-{os.urandom(8).hex()}-{name[7:19]}"
    snap.prepare(key, parent, labels={"shale.extract": "1"})
    try:
        fill(key)
        _sync(snap, key)
        snap.commit(name, key)
    except AlreadyExists:
        snap.remove(key)
    except BaseException:
        with contextlib.suppress(Exception):
            snap.remove(key)
        raise


def _committed(snap: Snapshotter, name: str) -> bool:
    try:
        return snap.stat(name).kind == Kind.COMMITTED
    except NotFound:
        return False


def _sync(snap: Snapshotter, key: str) -> None:
    """Flush the unpacked files before the snapshot is published under its chain ID, so a
    crash never leaves a committed snapshot with missing data."""
    import ctypes

    fd = os.open(snap.layer_dir(key), os.O_RDONLY | os.O_DIRECTORY)
    try:
        ctypes.CDLL(None, use_errno=True).syncfs(fd)
    finally:
        os.close(fd)
