"""What a container changed: ``diff``, ``commit`` and ``export`` (flattened rootfs).

The container's own layer (its snapshot's layer dir) holds exactly its changes; the init
layer below it holds the mount-point stubs, so they never show here, as in docker.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any, BinaryIO

from shale import oci
from shale.containers import Container, ContainerStore
from shale.digest import Digest

if TYPE_CHECKING:
    from shale.engine import Engine
    from shale.layer import Change, WrittenLayer


def diff(engine: Engine, c: Container) -> list[Change]:
    from shale.layer import changes_dirs, changes_overlay

    snap = engine.snapshots
    upper = snap.layer_dir(c.snapshot_key)
    if snap.layer_format == "overlay":
        return changes_overlay(upper, snap.parent_dirs(c.snapshot_key))
    return changes_dirs(snap.layer_dir(c.init_snapshot), upper)


def write_container_layer(engine: Engine, c: Container, out: BinaryIO) -> WrittenLayer:
    """The container's changes as a layer tar into ``out``: (diff_id, size, content size)."""
    from shale.layer import write_layer_sized

    snap = engine.snapshots
    upper = snap.layer_dir(c.snapshot_key)
    if snap.layer_format == "overlay":
        return write_layer_sized(out, upper, fmt="overlay")
    return write_layer_sized(out, upper, fmt="dir", lower=snap.layer_dir(c.init_snapshot))


def commit(engine: Engine, c: Container, *, ref: str | None, message: str = "",
           author: str = "", changes: list[str] | None = None, pause: bool = True) -> Digest:
    from shale.digest import EMPTY_LAYER_DIFF_ID
    from shale.images import LayerRecord
    from shale.refs import Reference

    target = Reference.parse(ref).with_default_tag() if ref else None
    img = engine.images.load(c.image)
    paused = _freeze(engine, c) if pause else False
    try:
        with engine.lock(), engine.content.writer() as w:
            diff_id, size, content_size = write_container_layer(
                engine, c, w)  # type: ignore[arg-type]
            w.commit(diff_id, size, what="container layer")
    finally:
        if paused:
            _thaw(engine, c)
    empty = diff_id.value == EMPTY_LAYER_DIFF_ID
    config = dict(c.config)
    engine.apply_changes(config, list(changes or []))
    now = oci.now_rfc3339()
    data: dict[str, Any] = dict(img.config.data)
    data.pop("id", None)
    data["config"] = config
    data["container"] = c.id
    data["container_config"] = dict(c.config)
    data["created"] = now
    if author:
        data["author"] = author
    else:
        data.pop("author", None)
    if message:
        data["comment"] = message
    else:
        data.pop("comment", None)
    hist = list(data.get("history") or [])
    entry: dict[str, Any] = {"created": now}
    if author:
        entry["author"] = author
    entry["created_by"] = " ".join([c.record["Path"], *c.record["Args"]])
    if message:
        entry["comment"] = message
    if empty:
        entry["empty_layer"] = True
    hist.append(entry)
    data["history"] = hist
    diff_ids = list(data["rootfs"].get("diff_ids") or [])
    if not empty:
        diff_ids.append(diff_id.value)
    data["rootfs"] = {"type": "layers", "diff_ids": diff_ids}
    cfg = oci.ImageConfig.build(data)
    layers = engine.images.layers(img)
    if not empty:
        layers.append(LayerRecord(diff_id, diff_id, oci.OCI_LAYER, size, size, content_size))
    with engine.lock():
        engine.content.write_bytes(cfg.raw, cfg.id, what="config")
        engine.images.publish(cfg, layers, parent=img.id.value,
                              tags=[target] if target else [])
    return cfg.id


def _freeze(engine: Engine, c: Container) -> bool:
    st = ContainerStore(engine).state(c)
    if not st.Running or st.Paused:
        return False
    with contextlib.suppress(Exception):
        from shale.runtime.cgroups import freeze

        freeze(c.id)
        return True
    return False


def _thaw(engine: Engine, c: Container) -> None:
    with contextlib.suppress(Exception):
        from shale.runtime.cgroups import thaw

        thaw(c.id)


def export(engine: Engine, c: Container, out: BinaryIO) -> None:
    """The flattened rootfs (image layers + init stubs + container changes) as one tar."""
    from shale.containers import stopped_rootfs
    from shale.layer import write_layer

    if ContainerStore(engine).state(c).Running:  # start mounted it, its monitor holds it
        write_layer(out, c.rootfs, fmt="dir", lower=None)
        return
    with stopped_rootfs(engine, c) as rootfs:
        write_layer(out, rootfs, fmt="dir", lower=None)
