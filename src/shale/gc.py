"""Mark and sweep over images, layers, snapshots and blobs; ``system check``.

Roots are image records (their config blob, their layers and the chain-ID snapshots of those
layers, and kept manifests) and, once containers exist, the snapshots that containers use.
Everything else is garbage: blobs a killed ``load`` wrote but never published, temp files in
``ingest/``, half-unpacked ``extract-*`` snapshots, layers of deleted images.
Callers hold the store lock exclusively.
"""

from __future__ import annotations

import contextlib
import os
import time
from typing import TYPE_CHECKING

from shale.digest import Digest, chain_ids
from shale.errors import NotFound, ShaleError
from shale.snapshots import Kind

if TYPE_CHECKING:
    from shale.engine import Engine

STALE_INGEST = 3600.0  # an ingest temp file untouched this long belongs to a dead process


def _marked(engine: Engine) -> tuple[set[str], set[str], set[str]]:
    """(blob digests, layer diff_ids, snapshot names) reachable from image records."""
    blobs: set[str] = set()
    diffs: set[str] = set()
    chains: set[str] = set()
    for row in engine.meta.query("SELECT id, manifest FROM images"):
        blobs.add(row["id"])
        if row["manifest"]:
            blobs.add(row["manifest"])
        try:
            img = engine.images.load(row["id"])
        except (NotFound, ShaleError):
            continue
        ids = img.config.diff_ids
        diffs.update(d.value for d in ids)
        chains.update(c.value for c in chain_ids(ids))
    for row in engine.meta.query("SELECT * FROM layers"):
        if row["diff_id"] in diffs:
            blobs.add(row["blob"])
    for row in engine.meta.query("SELECT * FROM layer_blobs"):
        if row["diff_id"] in diffs:
            blobs.add(row["digest"])
    return blobs, diffs, chains


def collect(engine: Engine, extra_snapshots: set[str] | None = None) -> dict[str, int]:
    blobs, diffs, chains = _marked(engine)
    removed = {"blobs": 0, "layers": 0, "snapshots": 0, "ingests": 0}
    with engine.meta.transaction() as db:
        for row in db.execute("SELECT diff_id FROM layers").fetchall():
            if row["diff_id"] not in diffs:
                db.execute("DELETE FROM layers WHERE diff_id=?", (row["diff_id"],))
                removed["layers"] += 1
        db.execute("DELETE FROM layer_blobs WHERE diff_id NOT IN (SELECT diff_id FROM layers)")
    for d in list(engine.content.walk()):
        if d.value not in blobs:
            engine.content.delete(d)
            removed["blobs"] += 1
    now = time.time()
    for p in engine.content.ingests():
        with contextlib.suppress(FileNotFoundError):
            if now - p.stat().st_mtime > STALE_INGEST:
                p.unlink()
                removed["ingests"] += 1
    removed["snapshots"] = _sweep_snapshots(engine, chains | (extra_snapshots or set()))
    return removed


def _sweep_snapshots(engine: Engine, keep: set[str]) -> int:
    snap_root = engine.root / "snapshots" / engine.driver
    if not snap_root.exists():
        return 0
    snap = engine.snapshots
    count = 0
    # remove leaves first, repeatedly, so parents become removable
    while True:
        infos = list(snap.walk())
        parents = {i.parent for i in infos if i.parent}
        doomed = [i for i in infos if i.name not in keep and i.name not in parents and
                  (i.kind == Kind.COMMITTED or i.name.startswith("extract-"))]
        if not doomed:
            return count
        for info in doomed:
            with contextlib.suppress(ShaleError):
                snap.remove(info.name)
                count += 1


def check(engine: Engine) -> list[str]:
    """Every problem found, one line each (empty: the store is sound)."""
    problems: list[str] = []
    for d in engine.content.walk():
        if not engine.content.verify(d):
            problems.append(f"blob {d}: content does not match its digest")
    for row in engine.meta.query("SELECT id, parent FROM images"):
        iid = row["id"]
        if not engine.content.exists(Digest(iid)):
            problems.append(f"image {iid}: config blob missing")
            continue
        try:
            img = engine.images.load(iid)
        except ShaleError as e:
            problems.append(f"image {iid}: {e}")
            continue
        if row["parent"] and not engine.images.exists(row["parent"]):
            problems.append(f"image {iid}: parent {row['parent']} missing")
        for d in img.config.diff_ids:
            try:
                lay = engine.images.layer(d)
            except NotFound:
                problems.append(f"image {iid}: layer {d} has no record")
                continue
            if not engine.content.exists(lay.blob):
                problems.append(f"image {iid}: layer {d}: blob {lay.blob} missing")
            elif os.path.getsize(engine.content.path(lay.blob)) != lay.blob_size:
                problems.append(f"image {iid}: layer {d}: blob size differs from record")
    for row in engine.meta.query("SELECT u.diff_id, u.blob, u.error, l.blob AS record "
                                 "FROM unverified_layers u JOIN layers l USING (diff_id)"):
        if row["blob"] != row["record"]:
            problems.append(f"layer {row['diff_id']}: unverified mark names blob "
                            f"{row['blob']}, the record {row['record']}")
        elif row["error"]:  # a pulled layer its first use found damaged (shale.layercheck)
            problems.append(row["error"])
    for table in ("tags", "repo_digests"):
        for row in engine.meta.query(f"SELECT name, image FROM {table}"):
            if not engine.images.exists(row["image"]):
                problems.append(f"reference {row['name']}: image {row['image']} missing")
    return problems
