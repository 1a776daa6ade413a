"""The Engine: the library API behind every CLI verb.

``Engine(root)`` owns the stores under one data root (content, metadata, images,
snapshots) and is passed down; nothing reads global state. Writers stage blobs and
snapshots first and publish records last, in one transaction. ``gc``-like operations take
the store lock exclusively; staging writers take it shared, so a prune never sweeps a blob
that a concurrent load has written but not yet published.
"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from shale import oci
from shale.content import ContentStore
from shale.digest import Digest
from shale.errors import InvalidArgument, NotFound
from shale.images import Image, ImageStore, LayerRecord
from shale.metadata import Metadata
from shale.record import record
from shale.refs import Reference

if TYPE_CHECKING:
    from shale.archive import LoadResult, Progress
    from shale.pull import Events, PullResult
    from shale.push import PushResult
    from shale.snapshots import Snapshotter

DEFAULT_ROOT = "/var/lib/shale"


@record(frozen=True)
class HistoryRow:
    id: str          # image ID or "<missing>"
    created: float
    created_by: str
    size: int
    comment: str
    tags: list[str]


class Engine:
    def __init__(self, root: str | Path = DEFAULT_ROOT, driver: str | None = None) -> None:
        self.root = Path(os.path.abspath(root))  # mount points, bundles: absolute paths
        self.root.mkdir(parents=True, exist_ok=True)
        os.chmod(self.root, 0o710)
        self.content = ContentStore(self.root)
        self.meta = Metadata(self.root / "metadata.db")
        self.images = ImageStore(self.meta, self.content)
        self._driver = driver
        self._snap: Snapshotter | None = None

    # ---- plumbing ------------------------------------------------------------------------
    @property
    def driver(self) -> str:
        """The storage driver of this data root: the one it was first used with (recorded in
        ``<root>/driver``), so a root made with ``-s vfs`` keeps finding its layers."""
        if self._driver is None:
            saved = self.root / "driver"
            if saved.exists():
                self._driver = saved.read_text().strip()
            else:
                from shale.snapshots import default_driver

                self._driver = default_driver(self.root)
        saved = self.root / "driver"
        if not saved.exists():
            from shale.fileutil import atomic_write

            atomic_write(saved, self._driver.encode() + b"\n", durable=False)
        return self._driver

    @property
    def snapshots(self) -> Snapshotter:
        if self._snap is None:
            from shale.snapshots import open_snapshotter

            self._snap = open_snapshotter(self.root, self.driver)
        return self._snap

    @contextmanager
    def lock(self, exclusive: bool = False) -> Iterator[None]:
        fd = os.open(self.root / "lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
            yield
        finally:
            os.close(fd)

    def close(self) -> None:
        """Close every database connection (they reopen on next use). Call before fork."""
        self.meta.close()
        if self._snap is not None:
            close = getattr(self._snap, "close", None)
            if close is not None:
                close()

    # ---- images --------------------------------------------------------------------------
    def image(self, name: str) -> Image:
        return self.images.get(name)

    def list_images(self, all: bool = False) -> list[Image]:
        out = []
        for img in self.images.list():
            if not all and not img.tags and not img.repo_digests and \
                    self.images.children(img.id):
                continue  # intermediate images are hidden without -a, as docker
            out.append(img)
        out.sort(key=lambda i: (-oci.parse_time(i.config.created), i.id.value))
        return out

    def image_size(self, img: Image) -> int:
        """Docker's image size: bytes of regular files and symlink targets over all layers."""
        return sum(self._content_size(x) for x in self._sized(self.images.layers(img)))

    def _sized(self, layers: list[LayerRecord]) -> list[LayerRecord]:
        """The records with their sizes known: a pulled layer not verified yet is verified
        now (its sizes come from the same gunzip; see shale.layercheck)."""
        if all(x.verified for x in layers):
            return layers
        from shale.layercheck import verify_layers

        return verify_layers(self, layers, strict=False)

    def _content_size(self, layer: LayerRecord) -> int:
        if layer.content_size >= 0:
            return layer.content_size
        return layer.diff_size if layer.diff_size >= 0 else layer.blob_size

    def tag(self, source: str, target: str) -> None:
        image_id = self.images.resolve(source)
        self.images.tag(image_id, Reference.parse(target))

    def remove_image(self, name: str, force: bool = False, prune: bool = True
                     ) -> list[tuple[str, str]]:
        from shale.gc import collect

        with self.lock(exclusive=True):
            lines = self.images.delete(name, force=force, users=self.image_users,
                                       prune=prune)
            collect(self)
            return lines

    def image_users(self, image_id: str) -> list[tuple[str, bool]]:
        """Containers using an image: (container ID, running); rmi refuses while any does."""
        from shale.containers import ContainerStore

        return ContainerStore(self).users_of_image(image_id)

    def history(self, name: str) -> list[HistoryRow]:
        img = self.images.get(name)
        layers = self._sized(self.images.layers(img))
        history = img.config.history or [
            oci.History(created=img.config.created) for _ in layers]
        # walk the parent chain so each non-empty step can be matched to a local image
        chain = self._parent_chain(img)
        rows: list[HistoryRow] = []
        layer_i = 0
        sizes: list[int] = []
        for h in history:
            if h.empty_layer:
                sizes.append(0)
            else:
                sizes.append(self._content_size(layers[layer_i]) if layer_i < len(layers)
                             else 0)
                layer_i += 1
        ids = _match_history_ids(chain, len(history))
        for h, size, iid in zip(history, sizes, ids, strict=True):
            tags = self.images.load(iid).familiar_tags if iid != "<missing>" else []
            rows.append(HistoryRow(iid, oci.parse_time(h.created), h.created_by, size,
                                   h.comment, tags))
        rows.reverse()
        return rows

    def _parent_chain(self, img: Image) -> list[Image]:
        chain = [img]
        seen = {img.id.value}
        while chain[-1].parent and chain[-1].parent not in seen:
            try:
                parent = self.images.load(chain[-1].parent)
            except NotFound:
                break
            seen.add(parent.id.value)
            chain.append(parent)
        return chain

    # ---- import / save / load ------------------------------------------------------------
    def import_image(self, src: BinaryIO, ref: str | None = None, changes: list[str] = (),  # type: ignore[assignment]
                     message: str = "", source_name: str = "-") -> Digest:
        from shale.unpack import store_layer

        target = Reference.parse(ref) if ref else None
        if target is not None and target.digest:
            raise InvalidArgument("refusing to create a tag with a digest reference")
        config = _empty_container_config()
        self.apply_changes(config, changes)
        with self.lock():
            layer = store_layer(self.content, src, what="import")
            created = oci.now_rfc3339()
            comment = message or f"Imported from {source_name}"
            os_name, arch = oci.host_platform()
            data: dict[str, Any] = {
                "architecture": arch, "comment": comment, "config": config,
                "container_config": _empty_container_config(), "created": created,
                "history": [{"created": created, "comment": comment}], "os": os_name,
                "rootfs": {"type": "layers", "diff_ids": [layer.diff_id.value]},
            }
            cfg = oci.ImageConfig.build(data)
            self.content.write_bytes(cfg.raw, cfg.id, what="config")
            self.images.publish(cfg, [layer], tags=[target] if target else [])
        return cfg.id

    @staticmethod
    def apply_changes(config: dict[str, Any], changes: list[str]) -> None:
        """Apply ``-c`` Dockerfile instructions (import, commit) to a config object."""
        if not changes:
            return
        from shale.dockerfile.config import apply_changes

        apply_changes(config, changes)

    def save(self, names: list[str], out: BinaryIO, progress: Progress | None = None) -> None:
        from shale.archive import SaveItem, save

        items: list[SaveItem] = []
        for name in names:
            img = self.images.get(name)
            tags = self._save_tags(name, img)
            same = next((i for i in items if i.image.id == img.id), None)
            if same:
                same.tags.extend(t for t in tags if t not in same.tags)
            else:
                items.append(SaveItem(img, tags))
        for item in items:  # a pulled layer is written under its diff_id once verified
            layers = self.images.layers(item.image)
            if not all(x.verified for x in layers):
                from shale.layercheck import verify_layers

                verify_layers(self, layers)
        save(self.images, self.content, items, out, progress)

    def _save_tags(self, name: str, img: Image) -> list[Reference]:
        """docker save NAME records only that tag; by ID it records none; a bare repo name
        records every tag of that repository."""
        text = name[7:] if name.startswith("sha256:") else name
        if img.id.hex.startswith(text):
            return []
        ref = Reference.parse(name)
        if ref.digest:
            return []
        if ref.tag is None:
            all_refs = [Reference.parse(t) for t in img.tags]
            return [r for r in all_refs if r.name == ref.name] or [ref.with_default_tag()]
        return [ref]

    def load(self, src: BinaryIO, progress: Progress | None = None) -> LoadResult:
        from shale.archive import load

        with self.lock():
            return load(self.images, self.content, src, progress)

    # ---- snapshots -----------------------------------------------------------------------
    def unpack(self, img: Image) -> str:
        """Unpack the image's layers (what is missing) and return its top chain ID."""
        from shale.unpack import unpack

        with self.lock():
            layers = self.images.layers(img)
            if not all(x.verified for x in layers):  # pulled: checked while unpacked
                from shale.layercheck import unpack_checked

                return unpack_checked(self, layers)
            return unpack(self.snapshots, self.content, layers)

    # ---- system --------------------------------------------------------------------------
    def prune_images(self, all: bool = False) -> tuple[list[tuple[str, str]], int]:
        """Remove dangling images (``all``: every image without a container)."""
        lines: list[tuple[str, str]] = []
        before = self._disk_usage()
        with self.lock(exclusive=True):
            changed = True
            while changed:
                changed = False
                candidates = (self.images.dangling() if not all else
                              [i.id.value for i in self.images.list()
                               if not self.images.children(i.id)])
                for iid in candidates:
                    if self.image_users(iid) or not self.images.exists(iid):
                        continue
                    lines.extend(self.images.delete(iid, force=True, users=self.image_users))
                    changed = True
            from shale.gc import collect

            collect(self)
        return lines, max(0, before - self._disk_usage())

    def _disk_usage(self) -> int:
        total = 0
        for d in self.content.walk():
            try:
                total += self.content.size(d)
            except NotFound:
                pass
        return total

    def system_df(self) -> dict[str, Any]:
        imgs = self.images.list()
        layer_sizes: dict[str, int] = {}
        for img in imgs:
            for lay in self.images.layers(img):
                layer_sizes[lay.diff_id.value] = lay.blob_size
        active = {i.id.value for i in imgs if self.image_users(i.id.value)}
        unique_active = {d for i in imgs if i.id.value in active
                         for d in (x.value for x in i.config.diff_ids)}
        total = sum(layer_sizes.values())
        reclaim = total - sum(layer_sizes[d] for d in unique_active if d in layer_sizes)
        return {"images": len(imgs), "active": len(active), "size": total,
                "reclaimable": reclaim}

    def check(self) -> list[str]:
        from shale.gc import check

        return check(self)

    @staticmethod
    def now() -> float:
        return time.time()

    # ---- registry (shale.pull, shale.push) -----------------------------------------------
    def pull(self, ref: Reference, events: Events | None = None, *, all_tags: bool = False,
             platform: str | None = None, insecure: tuple[str, ...] = ()) -> list[PullResult]:
        from shale.pull import pull, pull_all_tags

        if all_tags:
            return pull_all_tags(self, ref, events, platform=platform, insecure=insecure)
        return [pull(self, ref, events, platform=platform, insecure=insecure)]

    def push(self, ref: Reference, events: Events | None = None, *, all_tags: bool = False,
             insecure: tuple[str, ...] = (), level: int | None = None, chunk_size: int = 0
             ) -> list[PushResult]:
        from shale.push import push

        return push(self, ref, events, all_tags=all_tags, insecure=insecure, level=level,
                    chunk_size=chunk_size)


def _match_history_ids(chain: list[Image], n: int) -> list[str]:
    """Docker shows a local image ID for the history entries that the parent chain covers:
    the newest entry is the image itself; each parent covers its own (shorter) history."""
    ids = ["<missing>"] * n
    for img in chain:
        count = len(img.config.history)
        if 0 < count <= n and ids[count - 1] == "<missing>":
            ids[count - 1] = img.id.value
    if n and ids[n - 1] == "<missing>" and chain:
        ids[n - 1] = chain[0].id.value
    return ids


def _empty_container_config() -> dict[str, Any]:
    """Docker's zero container.Config, in its field order (Go struct order)."""
    return {"Hostname": "", "Domainname": "", "User": "", "AttachStdin": False,
            "AttachStdout": False, "AttachStderr": False, "Tty": False, "OpenStdin": False,
            "StdinOnce": False, "Env": None, "Cmd": None, "Image": "", "Volumes": None,
            "WorkingDir": "", "Entrypoint": None, "OnBuild": None, "Labels": None}
