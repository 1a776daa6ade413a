"""``push``: a local image to a registry, each compressed layer made once and reused.

- The blob pushed for a layer is, in order: the manifest's own blob of a pulled image (its
  kept manifest is then pushed byte for byte, so the digest stays the registry's), the
  layer's stored gzip blob (a pulled layer), an encoding recorded earlier in
  ``layer_blobs`` (an earlier push), or a new one: the uncompressed tar gzipped by isal on
  a producer thread while the upload streams it (one ``PATCH``, then ``PUT ?digest=``) and
  the same bytes go to the content store; ``layer_blobs`` then records diff_id -> that
  digest, so every later push (to any registry) sends the same bytes and gets the same
  manifest digest.
- A blob the repository has (``HEAD``) is skipped ("Layer already exists"); one that
  another repository of the same registry holds (known from this store's references) is
  mounted ("Mounted from ..."); up to 4 layers move at once.
- Then the config (single ``POST``, with distribution 2.8's 202 handled), then the manifest
  (Docker schema2, pretty-printed as docker does) last. The repo digest is recorded.
"""

from __future__ import annotations

import json
import os
import queue
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

from shale import oci
from shale.digest import Digest
from shale.errors import InvalidArgument, NotFound, RegistryError
from shale.images import Image, LayerRecord
from shale.pull import Events, NoEvents
from shale.record import field, record
from shale.refs import Reference

if TYPE_CHECKING:
    from shale.engine import Engine
    from shale.registry import Registry

PUSH_JOBS = 4
GZIP_LEVEL = 1  # isal levels run 0-3; 1 is ~270 MB/s at a ratio near zlib's level 6
READ = 1 << 20


@record
class PushResult:
    ref: Reference
    digest: Digest
    size: int
    statuses: list[tuple[str, str]] = field(default_factory=list)  # (layer id, status)
    compressed: int = 0      # layers gzipped by this push
    uploaded: int = 0        # layer blobs sent


@record
class _Blob:
    layer: LayerRecord
    digest: Digest | None    # None: to be compressed now
    size: int
    media_type: str


def push(engine: Engine, ref: Reference, events: Events | None = None, *,
         all_tags: bool = False, insecure: tuple[str, ...] = (), level: int | None = None,
         chunk_size: int = 0) -> list[PushResult]:
    from shale.auth import get_credentials
    from shale.registry import Registry

    ev: Events = events or NoEvents()
    if ref.digest is not None:
        raise InvalidArgument("cannot push a digest reference")
    if all_tags:
        if ref.tag is not None:
            raise InvalidArgument("tag can't be used with --all-tags/-a")
        refs = [Reference.parse(t) for t in _repo_tags(engine, ref)]
        if not refs:
            raise NotFound(f"An image does not exist locally with the tag: {ref.repository}")
    else:
        if ref.tag is None:
            ev.line("Using default tag: latest")
        refs = [ref.with_default_tag()]
    images = []
    for r in refs:
        try:
            images.append((r, engine.images.get(str(r))))
        except NotFound:
            raise NotFound(f"An image does not exist locally with the tag: "
                           f"{r.repository if r.tag == 'latest' else r.familiar}") from None
    if level is None:
        level = int(os.environ.get("SHALE_PUSH_GZIP_LEVEL", GZIP_LEVEL))
    if not 0 <= level <= 3:
        raise InvalidArgument(f"gzip level {level}: want 0 to 3 (isal)")
    ev.line(f"The push refers to repository [{ref.name}]")
    out: list[PushResult] = []
    with Registry(ref.domain, get_credentials(ref.domain), insecure=insecure) as reg, \
            engine.lock():
        for r, img in images:
            out.append(_push_image(engine, reg, r, img, ev, level, chunk_size))
    return out


def _repo_tags(engine: Engine, ref: Reference) -> list[str]:
    rows = engine.meta.query("SELECT name FROM tags ORDER BY name")
    return [r["name"] for r in rows if Reference.parse(r["name"]).name == ref.name]


def _push_image(engine: Engine, reg: Registry, ref: Reference, img: Image, ev: Events,
                level: int, chunk_size: int) -> PushResult:
    assert ref.tag is not None
    repo = ref.path
    layers = engine.images.layers(img)
    if not all(x.verified for x in layers):  # a pulled layer goes out as its diff_id once
        from shale.layercheck import verify_layers  # verified (see shale.layercheck)

        layers = verify_layers(engine, layers)
    kept = _kept_manifest(engine, img, layers)
    blobs = _plan(engine, layers, kept)
    mounts = _mount_sources(engine, ref, {b.layer.diff_id.value for b in blobs})
    result = PushResult(ref, img.id, 0)
    for b in reversed(blobs):
        ev.layer(b.layer.diff_id.short, "Preparing", b.size)

    def one(b: _Blob) -> tuple[_Blob, str, bool]:
        if b.digest is None:
            digest, size = _compress_upload(engine, reg, repo, b.layer, ev, level, chunk_size)
            return _Blob(b.layer, digest, size, b.media_type), "Pushed", True
        return b, _upload_known(engine, reg, repo, b, mounts.get(b.layer.diff_id.value, []),
                                ev, chunk_size), False

    unique: dict[str, _Blob] = {}
    for b in blobs:
        unique.setdefault(b.layer.diff_id.value, b)
    done: dict[str, _Blob] = {}
    with ThreadPoolExecutor(max_workers=max(1, min(PUSH_JOBS, len(unique)))) as pool:
        futures = [pool.submit(one, b) for b in unique.values()]
        error: BaseException | None = None
        for fut in futures:
            try:
                b, status, fresh = fut.result()
            except BaseException as e:  # keep the encodings that did get made
                error = error or e
                continue
            done[b.layer.diff_id.value] = b
            result.statuses.append((b.layer.diff_id.short, status))
            ev.layer(b.layer.diff_id.short, status)
            if status == "Pushed":
                result.uploaded += 1
            if fresh:
                result.compressed += 1
                _record_encoding(engine, b)
        if error is not None:
            raise error
    final = [done[b.layer.diff_id.value] for b in blobs]
    if not reg.blob_exists(repo, img.id):
        reg.post_blob(repo, img.id, img.config.raw)
    if kept is not None:
        raw, media_type = kept.raw, kept.media_type
    else:
        raw, media_type = _schema2(img, final), oci.DOCKER_MANIFEST
    digest = reg.put_manifest(repo, ref.tag, raw, media_type)
    mdigest = engine.content.write_bytes(raw, digest, what="manifest")
    engine.images.publish(img.config, [], manifest=mdigest.value,
                          repo_digest=ref.name_only().with_digest(digest.value))
    result.digest, result.size = digest, len(raw)
    ev.line(f"{ref.tag}: digest: {digest} size: {len(raw)}")
    return result


def _kept_manifest(engine: Engine, img: Image, layers: list[LayerRecord]
                   ) -> oci.Manifest | None:
    """The manifest a pulled image came with, when every blob it names is here."""
    if not img.manifest:
        return None
    try:
        m = oci.Manifest.parse(engine.content.read(Digest(img.manifest)))
    except Exception:
        return None
    if m.config.digest != img.id or len(m.layers) != len(layers):
        return None
    for desc, lay in zip(m.layers, layers, strict=True):
        if not _have_encoding(engine, lay, desc.digest):
            return None
    return m


def _have_encoding(engine: Engine, lay: LayerRecord, digest: Digest) -> bool:
    if lay.blob == digest:
        return engine.content.exists(digest)
    row = engine.meta.one("SELECT 1 FROM layer_blobs WHERE digest=? AND diff_id=?",
                          (digest.value, lay.diff_id.value))
    return row is not None and engine.content.exists(digest)


def _plan(engine: Engine, layers: list[LayerRecord], kept: oci.Manifest | None
          ) -> list[_Blob]:
    out: list[_Blob] = []
    for i, lay in enumerate(layers):
        if kept is not None:
            d = kept.layers[i]
            out.append(_Blob(lay, d.digest, d.size, d.media_type))
            continue
        if lay.blob != lay.diff_id and oci.is_gzip_type(lay.media_type) and \
                engine.content.exists(lay.blob):
            out.append(_Blob(lay, lay.blob, lay.blob_size, oci.DOCKER_LAYER_GZIP))
            continue
        row = engine.meta.one(
            "SELECT digest, size FROM layer_blobs WHERE diff_id=? AND media_type LIKE "
            "'%gzip' ORDER BY digest", (lay.diff_id.value,))
        if row is not None and engine.content.exists(Digest(row["digest"])):
            out.append(_Blob(lay, Digest(row["digest"]), row["size"], oci.DOCKER_LAYER_GZIP))
            continue
        out.append(_Blob(lay, None, -1, oci.DOCKER_LAYER_GZIP))
    return out


def _mount_sources(engine: Engine, ref: Reference, diff_ids: set[str]) -> dict[str, list[str]]:
    """diff_id -> other repositories of the same registry that hold it (by this store's
    tags and repo digests)."""
    out: dict[str, list[str]] = {}
    rows = engine.meta.query("SELECT name, image FROM repo_digests UNION "
                             "SELECT name, image FROM tags")
    by_image: dict[str, set[str]] = {}
    for r in rows:
        other = Reference.parse(r["name"])
        if other.domain == ref.domain and other.path != ref.path:
            by_image.setdefault(r["image"], set()).add(other.path)
    for image_id, repos in by_image.items():
        try:
            cfg = engine.images.load(image_id).config
        except NotFound:
            continue
        for d in cfg.diff_ids:
            if d.value in diff_ids:
                lst = out.setdefault(d.value, [])
                lst.extend(p for p in sorted(repos) if p not in lst)
    return out


def _file_chunks(path: str, on_data: Callable[[int], None]) -> Callable[[], Iterator[bytes]]:
    def gen() -> Iterator[bytes]:
        with open(path, "rb") as f:
            while chunk := f.read(READ):
                on_data(len(chunk))
                yield chunk
    return gen


def _upload_known(engine: Engine, reg: Registry, repo: str, b: _Blob, sources: list[str],
                  ev: Events, chunk_size: int) -> str:
    assert b.digest is not None
    lid = b.layer.diff_id.short
    if reg.blob_exists(repo, b.digest):
        return "Layer already exists"
    location = ""
    for src in sources[:3]:
        mounted, location = reg.start_upload(repo, mount=b.digest, mount_from=src)
        if mounted:
            return f"Mounted from {src}"
        break  # a refused mount leaves an open session: upload through it
    ev.layer(lid, "Pushing", b.size)
    path = str(engine.content.path(b.digest))
    reg.upload_blob(repo, b.digest, b.size, _file_chunks(path, lambda n: ev.advance(lid, n)),
                    location=location, chunk_size=chunk_size)
    return "Pushed"


def _compress_upload(engine: Engine, reg: Registry, repo: str, lay: LayerRecord,
                     ev: Events, level: int, chunk_size: int) -> tuple[Digest, int]:
    """gzip the layer once, streaming it to the registry and to the content store."""
    from shale.unpack import open_layer_tar

    lid = lay.diff_id.short
    ev.layer(lid, "Pushing", lay.diff_size)
    writer = engine.content.writer()
    try:
        _, location = reg.start_upload(repo)
        with open_layer_tar(engine.content, lay) as src:
            chunks = _Compressor(src, level, writer.write, lambda n: ev.advance(lid, n))
            try:
                if chunk_size > 0:
                    location = reg.patch_chunks(repo, location, chunks.iterate(chunk_size))
                else:
                    location = reg.patch_stream(repo, location, chunks.iterate(0))
            finally:
                chunks.stop()
            chunks.check()
        digest = writer.digest()
        reg.put_upload(repo, location, digest, 0, None)
        writer.commit(digest)
        return digest, writer.size
    finally:
        writer.discard()


class _Compressor:
    """gzip on a producer thread (isal releases the GIL), handing compressed pieces to the
    uploader through a small queue and to ``sink`` (the content store) as made."""

    def __init__(self, src: object, level: int, sink: Callable[[bytes], object],
                 on_data: Callable[[int], None]) -> None:
        self._src = src
        self._level = level
        self._sink = sink
        self._on_data = on_data
        self._q: queue.Queue[bytes | BaseException | None] = queue.Queue(maxsize=8)
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._finished = False
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _put(self, item: bytes | BaseException | None) -> bool:
        while not self._stop.is_set():
            try:
                self._q.put(item, timeout=0.2)
                return True
            except queue.Full:
                continue
        return False

    def _run(self) -> None:
        from isal import isal_zlib

        try:
            comp = isal_zlib.compressobj(self._level, isal_zlib.DEFLATED, 31)
            read = self._src.read  # type: ignore[attr-defined]
            while not self._stop.is_set():
                data = read(4 * READ)
                if not data:
                    break
                self._on_data(len(data))
                out = comp.compress(data)
                if out:
                    self._sink(out)
                    if not self._put(out):
                        return
            tail = comp.flush()
            if tail:
                self._sink(tail)
                self._put(tail)
            self._finished = True
            self._put(None)
        except BaseException as e:
            self._error = e
            self._put(e)

    def iterate(self, size: int) -> Iterator[bytes]:
        buf = bytearray()
        while True:
            item = self._q.get()
            if item is None:
                break
            if isinstance(item, BaseException):
                raise item
            if size <= 0:
                yield item
                continue
            buf += item
            while len(buf) >= size:
                yield bytes(buf[:size])
                del buf[:size]
        if buf:
            yield bytes(buf)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def check(self) -> None:
        if self._error is not None:
            raise self._error
        if not self._finished:
            raise RegistryError("compression stopped before the end of the layer")


def _record_encoding(engine: Engine, b: _Blob) -> None:
    assert b.digest is not None
    with engine.meta.transaction() as db:
        db.execute("INSERT OR IGNORE INTO layer_blobs VALUES (?,?,?,?)",
                   (b.digest.value, b.layer.diff_id.value, b.media_type, b.size))


def _schema2(img: Image, blobs: list[_Blob]) -> bytes:
    """A Docker schema2 manifest, 3-space indented as docker pushes it (Go's field order
    mediaType, size, digest)."""
    layers = []
    for b in blobs:
        assert b.digest is not None
        mt = b.media_type if b.media_type.startswith("application/vnd.docker.") else (
            oci.DOCKER_LAYER_GZIP if oci.is_gzip_type(b.media_type) else oci.DOCKER_LAYER)
        layers.append({"mediaType": mt, "size": b.size, "digest": b.digest.value})
    obj = {"schemaVersion": 2, "mediaType": oci.DOCKER_MANIFEST,
           "config": {"mediaType": oci.DOCKER_CONFIG, "size": len(img.config.raw),
                      "digest": img.id.value},
           "layers": layers}
    return json.dumps(obj, indent=3).encode()
