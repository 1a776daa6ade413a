"""``pull``: a registry image into the store, verified, then published in one transaction.

1. Resolve: ``HEAD`` the tag (an image already recorded under that repo digest is "up to
   date": nothing is downloaded), then ``GET`` the manifest by digest. An index picks the
   platform (the host's, or ``--platform os/arch[/variant]``).
2. The config blob is fetched and checked against the manifest (one diff_id per layer).
3. Layers this store lacks (by diff_id) are downloaded 4 at a time. Each one streams through
   ``BlobReader`` (resumed with Range) into an ingest file while it is hashed, gunzipped
   (isal) and scanned as a tar (``tarscan``: diff_id, uncompressed size, docker's content
   size, path checks) in the same pass. The blob is kept as pulled (gzip, its digest is the
   manifest's); ``save`` decompresses it on the fly.
4. Only when every layer verified are the ingest files committed, then the config and the
   manifest blobs, and last the image record (tags, repo digest, kept manifest) in one
   transaction. A failure anywhere discards the ingest files: nothing is half-stored.
"""

from __future__ import annotations

import io
import threading
from collections.abc import Callable
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from shale import oci
from shale.content import Writer
from shale.digest import Digest, Hasher
from shale.errors import DataError, DigestMismatch, InvalidArgument, RegistryError, Unsupported
from shale.images import LayerRecord
from shale.refs import Reference

if TYPE_CHECKING:
    from shale.engine import Engine
    from shale.registry import Registry

PULL_JOBS = 4


class Events(Protocol):
    """Where pull and push report what they do (the CLI draws it)."""

    def line(self, text: str) -> None: ...

    def layer(self, lid: str, status: str, total: int = 0) -> None: ...

    def advance(self, lid: str, n: int) -> None: ...


class NoEvents:
    def line(self, text: str) -> None:
        pass

    def layer(self, lid: str, status: str, total: int = 0) -> None:
        pass

    def advance(self, lid: str, n: int) -> None:
        pass


@dataclass
class PullResult:
    ref: Reference
    image_id: Digest
    repo_digest: str
    up_to_date: bool
    layers_pulled: int = 0
    bytes_pulled: int = 0
    skipped: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Platform:
    os: str
    architecture: str
    variant: str = ""

    @classmethod
    def parse(cls, text: str | None) -> Platform:
        if not text:
            os_name, arch = oci.host_platform()
            return cls(os_name, arch, "v8" if arch == "arm64" else "")
        parts = text.lower().split("/")
        if len(parts) not in (2, 3) or not all(parts):
            raise InvalidArgument(f'"{text}": unknown operating system or architecture: '
                                  "invalid argument")
        arch, variant = parts[1], parts[2] if len(parts) == 3 else ""
        arch = {"x86_64": "amd64", "aarch64": "arm64"}.get(arch, arch)
        return cls(parts[0], arch, variant)

    def matches(self, p: dict[str, object] | None) -> bool:
        if not p:
            return False
        if p.get("os") != self.os or p.get("architecture") != self.architecture:
            return False
        return not self.variant or p.get("variant") in (None, "", self.variant)

    def __str__(self) -> str:
        return "/".join(x for x in (self.os, self.architecture, self.variant) if x)


def pull(engine: Engine, ref: Reference, events: Events | None = None, *,
         platform: str | None = None, insecure: tuple[str, ...] = (),
         registry: Registry | None = None) -> PullResult:
    """Pull one reference (a tag is ``latest`` when none is given)."""
    from shale.auth import get_credentials
    from shale.registry import Registry

    ev: Events = events or NoEvents()
    ref = ref.with_default_tag()
    plat = Platform.parse(platform)
    own = registry is None
    reg = registry or Registry(ref.domain, get_credentials(ref.domain), insecure=insecure)
    try:
        return _pull(engine, reg, ref, plat, explicit=bool(platform), ev=ev)
    finally:
        if own:
            reg.close()


def pull_all_tags(engine: Engine, ref: Reference, events: Events | None = None, *,
                  platform: str | None = None, insecure: tuple[str, ...] = ()
                  ) -> list[PullResult]:
    from shale.auth import get_credentials
    from shale.registry import Registry

    if ref.tag is not None or ref.digest is not None:
        raise InvalidArgument("tag can't be used with --all-tags/-a")
    with Registry(ref.domain, get_credentials(ref.domain), insecure=insecure) as reg:
        tags = reg.list_tags(ref.path)
        if not tags:
            raise RegistryError(f"{ref.name}: the repository has no tags")
        return [pull(engine, ref.with_tag(t), events, platform=platform, registry=reg)
                for t in sorted(tags)]


def _pull(engine: Engine, reg: Registry, ref: Reference, plat: Platform, *,
          explicit: bool, ev: Events) -> PullResult:
    repo = ref.path
    what = ref.digest or ref.tag or "latest"
    head = reg.head_manifest(repo, what)
    name = ref.name_only()
    if head is not None:
        known = _known_image(engine, name.with_digest(head[0].value), plat)
        if known is not None:
            engine.images.publish(engine.images.load(known).config, [],
                                  tags=[ref] if ref.digest is None else [])
            ev.line(f"{what}: Pulling from {ref.path}")
            ev.line(f"Digest: {head[0]}")
            return PullResult(ref, known, str(name.with_digest(head[0].value)), True)
    top = reg.get_manifest(repo, head[0].value if head is not None else what)
    ev.line(f"{what}: Pulling from {ref.path}")
    repo_digest = top.digest
    manifest_raw, manifest_mt = top.raw, top.media_type
    if manifest_mt in oci.INDEX_TYPES:
        index = oci.Index.parse(top.raw, top.media_type)
        choice = next((d for d in index.manifests if plat.matches(d.platform)), None)
        if choice is None:
            raise RegistryError(f"no matching manifest for {plat} in the manifest list "
                                "entries")
        sub = reg.get_manifest(repo, choice.digest.value)
        manifest_raw, manifest_mt = sub.raw, sub.media_type
    elif manifest_mt not in oci.MANIFEST_TYPES:
        raise Unsupported(f"{ref}: unsupported manifest media type {manifest_mt!r}")
    manifest = oci.Manifest.parse(manifest_raw, manifest_mt)
    if manifest.media_type in oci.INDEX_TYPES:
        raise DataError(f"{ref}: an index inside an index is not supported")
    config = oci.ImageConfig.parse(reg.get_blob(repo, manifest.config.digest))
    if config.id != manifest.config.digest:
        raise DigestMismatch(f"config {manifest.config.digest}: digest mismatch")
    diff_ids = config.diff_ids
    if len(diff_ids) != len(manifest.layers):
        raise DataError(f"{ref}: the manifest has {len(manifest.layers)} layers, the config "
                        f"{len(diff_ids)} diff_ids")
    if explicit and (config.os, config.architecture) != (plat.os, plat.architecture):
        raise RegistryError(
            f"image with reference {ref.familiar} was found but does not match the "
            f"specified platform: wanted {plat}, actual: {config.os}/{config.architecture}")

    result = PullResult(ref, config.id, str(name.with_digest(repo_digest.value)), False)
    with engine.lock():
        staged = _fetch_layers(engine, reg, repo, manifest.layers, diff_ids, ev, result)
        records: list[LayerRecord] = []
        fresh: dict[Digest, LayerRecord] = {}
        try:
            for item in staged:
                if item is not None:
                    writer, rec = item
                    writer.commit(rec.blob, rec.blob_size, what=f"layer {rec.blob}")
                    fresh[rec.diff_id] = rec
            records = [fresh.get(d) or engine.images.layer(d) for d in diff_ids]
        finally:
            for item in staged:
                if item is not None:
                    item[0].discard()
        engine.content.write_bytes(config.raw, config.id, what="config")
        mdigest = engine.content.write_bytes(manifest_raw, what="manifest")
        engine.images.publish(config, records, tags=[ref] if ref.digest is None else [],
                              manifest=mdigest.value,
                              repo_digest=name.with_digest(repo_digest.value))
    ev.line(f"Digest: {repo_digest}")
    return result


def _known_image(engine: Engine, repo_digest: Reference, plat: Platform) -> Digest | None:
    """The local image recorded under this repo digest, for this platform, complete."""
    row = engine.meta.one("SELECT image FROM repo_digests WHERE name=?", (str(repo_digest),))
    if row is None or not engine.images.exists(row["image"]):
        return None
    img = engine.images.load(row["image"])
    if (img.config.os, img.config.architecture) != (plat.os, plat.architecture):
        return None
    if all(engine.images.has_layer(d) for d in img.config.diff_ids):
        return img.id
    return None


Staged = tuple[Writer, LayerRecord] | None


def _fetch_layers(engine: Engine, reg: Registry, repo: str,
                  descs: tuple[oci.Descriptor, ...], diff_ids: list[Digest], ev: Events,
                  result: PullResult) -> list[Staged]:
    staged: list[Staged] = [None] * len(descs)
    todo: list[int] = []
    seen: set[str] = set()
    for i, (desc, diff_id) in enumerate(zip(descs, diff_ids, strict=True)):
        if engine.images.has_layer(diff_id) or diff_id.value in seen:
            ev.layer(desc.digest.short, "Already exists")
            result.skipped.append(desc.digest.value)
            continue
        if oci.is_zstd_type(desc.media_type):
            raise Unsupported(f"layer {desc.digest}: zstd-compressed layers are not "
                              "supported yet")
        seen.add(diff_id.value)
        todo.append(i)
        ev.layer(desc.digest.short, "Pulling fs layer", desc.size)
    if not todo:
        return staged
    stop = threading.Event()
    with ThreadPoolExecutor(max_workers=min(PULL_JOBS, len(todo))) as pool:
        futures: dict[Future[tuple[Writer, LayerRecord]], int] = {
            pool.submit(_fetch_layer, engine, reg, repo, descs[i], diff_ids[i], ev, stop): i
            for i in todo}
        try:
            done, _ = wait(futures, return_when=FIRST_EXCEPTION)
        except BaseException:  # Ctrl-C: the workers stop at their next chunk
            stop.set()
            raise
        failed = next((f for f in done if f.exception() is not None), None)
        if failed is not None:
            stop.set()
        wait(futures)
        for fut, i in futures.items():
            if fut.exception() is None:
                staged[i] = fut.result()
    if failed is not None:
        for item in staged:
            if item is not None:
                item[0].discard()
        exc = failed.exception()
        assert exc is not None
        raise exc
    for i in todo:
        item = staged[i]
        assert item is not None
        result.layers_pulled += 1
        result.bytes_pulled += item[1].blob_size
    return staged


class _Stopped(RegistryError):
    pass


def _fetch_layer(engine: Engine, reg: Registry, repo: str, desc: oci.Descriptor,
                 diff_id: Digest, ev: Events, stop: threading.Event
                 ) -> tuple[Writer, LayerRecord]:
    """Download one layer into an uncommitted ingest file, verifying both digests."""
    from shale.compression import decompressed
    from shale.tarscan import scan_copy

    lid = desc.digest.short
    writer = engine.content.writer()
    ok = False
    try:
        def on_data(n: int) -> None:
            if stop.is_set():
                raise _Stopped("stopped: another layer failed")
            ev.advance(lid, n)

        reader = reg.open_blob(repo, desc.digest, desc.size, on_data)
        raw = _Tee(reader, writer.write)
        what = f"layer {desc.digest.short}"
        diff = Hasher()
        try:
            _, stream = decompressed(raw)  # type: ignore[arg-type]
            res = scan_copy(stream, diff.update, what)
        except _Stopped:
            raise
        except (DataError, OSError, EOFError, ValueError) as e:
            _drain(raw)
            _check_blob(writer, desc)  # a damaged blob is a digest error first
            if isinstance(e, DataError):
                raise
            raise DataError(f"{what}: {e}") from None
        _drain(raw)
        reader.close()
        _check_blob(writer, desc)
        if diff.digest() != diff_id:
            raise DigestMismatch(f"{what}: invalid diffID: expected {diff_id}, "
                                 f"got {diff.digest()}")
        ev.layer(lid, "Pull complete")
        ok = True
        media = desc.media_type or oci.DOCKER_LAYER_GZIP
        return writer, LayerRecord(diff_id, desc.digest, media, writer.size, res.tar_size,
                                   res.content_size)
    finally:
        if not ok:
            writer.discard()


def _check_blob(writer: Writer, desc: oci.Descriptor) -> None:
    got = writer.digest()
    if got != desc.digest:
        raise DigestMismatch(f"filesystem layer verification failed for digest "
                             f"{desc.digest}: got {got}")
    if writer.size != desc.size:
        raise DigestMismatch(f"layer {desc.digest}: size {writer.size}, the manifest says "
                             f"{desc.size}")


def _drain(src: _Tee) -> None:
    while src.read(1 << 20):
        pass


class _Tee:
    """Reads from ``src`` and hands every byte read to ``sink`` too."""

    def __init__(self, src: io.RawIOBase, sink: Callable[[bytes], object]) -> None:
        self._src = src
        self._sink = sink

    def read(self, n: int = -1) -> bytes:
        data = self._src.read(n if n and n > 0 else 1 << 20) or b""
        if data:
            self._sink(data)
        return data

    def readinto(self, b: bytearray | memoryview) -> int:
        data = self.read(len(b))
        memoryview(b)[:len(data)] = data
        return len(data)

    def readable(self) -> bool:
        return True
