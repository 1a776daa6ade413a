"""Image archives: ``save`` and ``load``.

``save`` writes ONE tar that is at the same time a docker-archive (``manifest.json``,
``repositories``) and an OCI image layout (``oci-layout``, ``index.json``, ``blobs/``), as
Docker 25+ does, so docker, podman, skopeo and umoci all read it. Layers go out uncompressed
and byte-identical to what was stored, so diff_ids never drift.

``load`` reads, in one streaming pass, Docker 20.10 archives (``<id>/layer.tar``), Docker 25+
and shale archives, podman's docker-archive (symlinked layers) and oci-archive (gzip layers,
no ``manifest.json``), plain or compressed. Every member is verified before anything is
published; a bad archive leaves the store as it was (blobs already written become orphans
that ``gc`` removes; no image or tag changes).
"""

from __future__ import annotations

import io
import json
import os
import posixpath
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, BinaryIO

from shale import oci
from shale.compression import decompressed
from shale.content import ContentStore, Writer
from shale.digest import Digest, Hasher
from shale.errors import DataError, DigestMismatch, InvalidReference, NotFound, ShaleError
from shale.images import Image, ImageStore, LayerRecord
from shale.refs import Reference
from shale.tarscan import scan_copy

SMALL_HEAD = 64 << 10  # members up to this size are kept in memory whatever they are
SMALL = 16 << 20  # JSON-like members up to this size too (configs, manifests, indexes)
Progress = Callable[[str, int], None]


# ---------------------------------------------------------------------------------- save
@dataclass
class SaveItem:
    image: Image
    tags: list[Reference]  # the tags to record for this image (may be empty)


class _TarOut:
    """Minimal streaming tar writer: PAX headers, data copied with sendfile when it can."""

    def __init__(self, out: BinaryIO, progress: Progress | None) -> None:
        self.out = out
        self.progress = progress
        self.written = 0
        try:
            self.out_fd: int | None = out.fileno()
        except (AttributeError, OSError, io.UnsupportedOperation):
            self.out_fd = None

    def _write(self, data: bytes) -> None:
        self.out.write(data)
        self.written += len(data)

    def dir(self, name: str) -> None:
        ti = tarfile.TarInfo(name.rstrip("/") + "/")
        ti.type, ti.mode = tarfile.DIRTYPE, 0o755
        self._write(ti.tobuf(tarfile.PAX_FORMAT))

    def file_bytes(self, name: str, data: bytes) -> None:
        ti = tarfile.TarInfo(name)
        ti.size, ti.mode = len(data), 0o644
        self._write(ti.tobuf(tarfile.PAX_FORMAT))
        self._write(data + b"\0" * (-len(data) % 512))

    def file_stream(self, name: str, src: BinaryIO, size: int) -> None:
        ti = tarfile.TarInfo(name)
        ti.size, ti.mode = size, 0o644
        self._write(ti.tobuf(tarfile.PAX_FORMAT))
        self.out.flush()
        left = size
        src_fd = _fileno(src)
        if self.out_fd is not None and src_fd is not None:
            while left > 0:
                n = os.sendfile(self.out_fd, src_fd, None, min(left, 1 << 30))
                if n == 0:
                    break
                left -= n
                self.written += n
                self._tick(n)
        else:
            while left > 0:
                chunk = src.read(min(left, 1 << 20))
                if not chunk:
                    break
                self._write(chunk)
                left -= len(chunk)
                self._tick(len(chunk))
        if left:
            raise DataError(f"{name}: blob is shorter than its recorded size")
        self._write(b"\0" * (-size % 512))

    def _tick(self, n: int) -> None:
        if self.progress:
            self.progress("save", n)

    def close(self) -> None:
        self._write(b"\0" * 1024)
        self.out.flush()


def _fileno(src: BinaryIO) -> int | None:
    try:
        return src.fileno() if isinstance(src, io.BufferedReader) else None
    except (OSError, io.UnsupportedOperation):
        return None


def save(images: ImageStore, content: ContentStore, items: list[SaveItem], out: BinaryIO,
         progress: Progress | None = None) -> None:
    from shale.unpack import open_layer_tar

    if not items:
        raise DataError("empty export - nothing to save")
    manifests: list[tuple[SaveItem, bytes, list[LayerRecord]]] = []
    for item in items:
        layers = images.layers(item.image)
        manifests.append((item, _oci_manifest(item.image, layers), layers))
    tar = _TarOut(out, progress)
    tar.file_bytes("oci-layout", b'{"imageLayoutVersion": "1.0.0"}')
    tar.file_bytes("index.json", _index_json(manifests))
    tar.file_bytes("manifest.json", _manifest_json(manifests))
    tar.file_bytes("repositories", _repositories_json(manifests))
    tar.dir("blobs")
    tar.dir("blobs/sha256")
    seen: set[str] = set()
    for item, mbytes, layers in manifests:
        for digest, data in ((item.image.id, item.image.config.raw),
                             (Digest.of_bytes(mbytes), mbytes)):
            if digest.hex not in seen:
                seen.add(digest.hex)
                tar.file_bytes(f"blobs/sha256/{digest.hex}", data)
        for lay in layers:
            if lay.diff_id.hex in seen:
                continue
            seen.add(lay.diff_id.hex)
            with open_layer_tar(content, lay) as f:
                tar.file_stream(f"blobs/sha256/{lay.diff_id.hex}", f, lay.diff_size)
    tar.close()


def _oci_manifest(image: Image, layers: list[LayerRecord]) -> bytes:
    return oci.dumps({
        "schemaVersion": 2,
        "mediaType": oci.OCI_MANIFEST,
        "config": {"mediaType": oci.OCI_CONFIG, "digest": image.id.value,
                   "size": len(image.config.raw)},
        "layers": [{"mediaType": oci.OCI_LAYER, "digest": x.diff_id.value,
                    "size": x.diff_size} for x in layers],
    })


def _index_json(manifests: list[tuple[SaveItem, bytes, list[LayerRecord]]]) -> bytes:
    descs: list[dict[str, Any]] = []
    for item, mbytes, _ in manifests:
        base = {"mediaType": oci.OCI_MANIFEST, "digest": Digest.of_bytes(mbytes).value,
                "size": len(mbytes)}
        if not item.tags:
            descs.append(base)
        for ref in item.tags:
            descs.append({**base, "annotations": {
                oci.ANNOT_CONTAINERD_NAME: str(ref), oci.ANNOT_REF_NAME: ref.tag or "latest"}})
    return oci.dumps({"schemaVersion": 2, "mediaType": oci.OCI_INDEX, "manifests": descs})


def _manifest_json(manifests: list[tuple[SaveItem, bytes, list[LayerRecord]]]) -> bytes:
    saved = {item.image.id.value for item, _, _ in manifests}
    out: list[dict[str, Any]] = []
    for item, _, layers in manifests:
        entry: dict[str, Any] = {
            "Config": f"blobs/sha256/{item.image.id.hex}",
            "RepoTags": [r.familiar for r in item.tags] or None,
            "Layers": [f"blobs/sha256/{x.diff_id.hex}" for x in layers]}
        # docker writes the parent link only when the parent is saved too
        if item.image.parent in saved:
            entry["Parent"] = item.image.parent
        out.append(entry)
    return oci.dumps(out) + b"\n"


def _repositories_json(manifests: list[tuple[SaveItem, bytes, list[LayerRecord]]]) -> bytes:
    repos: dict[str, dict[str, str]] = {}
    for item, _, layers in manifests:
        if not layers:
            continue
        for ref in item.tags:
            repos.setdefault(ref.repository, {})[ref.tag or "latest"] = layers[-1].diff_id.hex
    return oci.dumps(repos) + b"\n"


# ---------------------------------------------------------------------------------- load
@dataclass
class _Member:
    name: str
    raw: Digest | None = None        # sha256 of the member bytes as they are in the archive
    raw_size: int = 0
    data: bytes | None = None        # kept when small or JSON-like (configs, manifests)
    layer: LayerRecord | None = None  # set when the member was staged as a tar layer
    staged: Writer | None = None     # the layer's uncompressed bytes, not yet committed
    error: ShaleError | None = None  # why it could not be staged (raised only if it is used)
    link: str = ""                   # symlink/hardlink target (archive path)


@dataclass
class LoadResult:
    lines: list[str] = field(default_factory=list)
    images: list[Digest] = field(default_factory=list)


def _corrupt_errors() -> tuple[type[BaseException], ...]:
    """What a decompressor or tarfile raises on damaged input (a truncated gzip raises
    EOFError, bad deflate data isal's error), turned into DataError by the callers."""
    from isal.igzip_lib import IsalError

    return (tarfile.TarError, EOFError, OSError, ValueError,
            IsalError)  # type: ignore[return-value]  # isal's stubs type it as an instance


def _stage_layer(content: ContentStore, src: BinaryIO, what: str) -> tuple[Writer, LayerRecord]:
    """Decompress and check a layer into an ingest file without publishing it: nothing
    reaches ``blobs/`` before the whole archive is verified, so a bad archive leaves the
    store exactly as it was."""
    w = content.writer()
    try:
        _, stream = decompressed(src)
        res = scan_copy(stream, w.write, what=what)
    except ShaleError:
        w.discard()
        raise
    except tarfile.TarError:
        w.discard()  # the archive itself ended or broke, not this layer: the caller says so
        raise
    except _corrupt_errors() as e:
        w.discard()
        raise DataError(f"{what}: {e}") from None
    diff_id = w.digest()
    return w, LayerRecord(diff_id, diff_id, oci.OCI_LAYER, res.tar_size, res.tar_size,
                          res.content_size)


def _ingest(content: ContentStore, name: str, f: BinaryIO, size: int,
            progress: Progress | None) -> _Member:
    """Read one member: keep small and JSON-like ones in memory; stage the others as
    uncompressed layers, hashing the bytes as they are in the archive (OCI blob names)
    too. A member that is not a valid layer keeps its error for when it is referenced:
    an unused odd file does not fail the load, a bad layer does."""
    head = f.read(min(size, SMALL_HEAD))
    if size <= SMALL_HEAD or (size <= SMALL and head.lstrip()[:1] in (b"{", b"[")):
        data = head + f.read()
        if len(data) != size:
            raise DataError("invalid archive: unexpected end of data")
        if progress:
            progress("load", size)
        return _Member(name, Digest.of_bytes(data), size, data)
    raw_hash = Hasher()
    raw_hash.update(head)
    if progress:
        progress("load", len(head))
    tee = _TeeReader(_Prefixed(head, f), raw_hash, progress, skip=len(head))
    m = _Member(name)
    try:
        m.staged, m.layer = _stage_layer(content, tee, name)  # type: ignore[arg-type]
    except ShaleError as e:
        m.error = e
    tee.drain()
    if raw_hash.size != size:
        # tarfile hands out a short member when the archive ends early; say so, instead
        # of the stream error it raises when it next tries to move on
        _discard(m)
        raise DataError("invalid archive: unexpected end of data")
    m.raw, m.raw_size = raw_hash.digest(), raw_hash.size
    return m


class _Prefixed:
    """``head`` then the rest of ``src``: the bytes already read to sniff a member."""

    def __init__(self, head: bytes, src: BinaryIO) -> None:
        self.head, self.src = head, src

    def read(self, n: int = -1) -> bytes:
        if self.head:
            if n < 0:
                out, self.head = self.head + self.src.read(), b""
                return out
            out, self.head = self.head[:n], self.head[n:]
            return out
        return self.src.read(n)


class _TeeReader:
    """Hashes (and reports) the raw member bytes as the decompressor pulls them; the
    first ``skip`` bytes were already hashed."""

    def __init__(self, src: _Prefixed, h: Hasher, progress: Progress | None,
                 skip: int = 0) -> None:
        self.src, self.h, self.progress, self.skip = src, h, progress, skip

    def read(self, n: int = -1) -> bytes:
        data = self.src.read(n)
        view = data[self.skip:] if self.skip else data
        self.skip = max(0, self.skip - len(data))
        self.h.update(view)
        if self.progress and view:
            self.progress("load", len(view))
        return data

    def drain(self) -> None:
        while self.read(1 << 20):
            pass


def _members(content: ContentStore, src: BinaryIO, progress: Progress | None
             ) -> dict[str, _Member]:
    members: dict[str, _Member] = {}
    try:
        _, stream = decompressed(src)
        tf = tarfile.open(fileobj=stream, mode="r|", bufsize=1 << 20)  # noqa: SIM115
    except ShaleError:
        raise
    except _corrupt_errors() as e:
        raise DataError(f"invalid archive: {e}") from None
    try:
        for ti in tf:
            name = posixpath.normpath(ti.name.lstrip("/")) if ti.name.strip("/") else "."
            if ti.issym():
                members[name] = _Member(name, link=posixpath.normpath(
                    posixpath.join(posixpath.dirname(name), ti.linkname)))
            elif ti.islnk():
                members[name] = _Member(name, link=posixpath.normpath(ti.linkname))
            elif ti.isfile():
                f = tf.extractfile(ti)
                assert f is not None
                _discard(members.get(name))
                members[name] = _ingest(content, name, f, ti.size, progress)  # type: ignore[arg-type]
            tf.members = []  # type: ignore[attr-defined]  # flat memory on big archives
    except ShaleError:
        _discard_all(members)
        raise
    except _corrupt_errors() as e:
        _discard_all(members)
        raise DataError(f"invalid archive: {e}") from None
    except BaseException:
        _discard_all(members)
        raise
    finally:
        tf.close()
    return members


def _discard(m: _Member | None) -> None:
    if m is not None and m.staged is not None:
        m.staged.discard()


def _discard_all(members: dict[str, _Member]) -> None:
    for m in members.values():
        _discard(m)


def _lookup(members: dict[str, _Member], path: str, what: str) -> _Member:
    name = posixpath.normpath(path.lstrip("/"))
    for _ in range(16):
        m = members.get(name)
        if m is None:
            raise DataError(f"invalid archive: {what} {path!r} not found in archive")
        if not m.link:
            return m
        name = m.link
    raise DataError(f"invalid archive: {what} {path!r}: too many links")


def _layer_of(content: ContentStore, m: _Member, expected: Digest, what: str) -> LayerRecord:
    if m.error is not None:
        raise m.error
    if m.layer is None:
        assert m.data is not None
        m.staged, m.layer = _stage_layer(content, io.BytesIO(m.data), m.name)
        m.data = None  # the staged file holds the bytes now
    if m.layer.diff_id != expected:
        raise DigestMismatch(f"invalid diffID for {what} ({m.name}): expected {expected}, "
                             f"got {m.layer.diff_id}")
    return m.layer


@dataclass
class _Found:
    config: oci.ImageConfig
    layers: list[LayerRecord]
    tags: list[Reference]
    parent: str = ""  # manifest.json "Parent" (docker save of build steps)


def _from_docker_manifest(content: ContentStore, members: dict[str, _Member]) -> list[_Found]:
    raw = _lookup(members, "manifest.json", "file").data or b""
    try:
        items = json.loads(raw)
    except ValueError as e:
        raise DataError(f"invalid archive: manifest.json: {e}") from None
    if not isinstance(items, list):
        raise DataError("invalid archive: manifest.json is not a list")
    found = []
    for n, item in enumerate(items):
        if not isinstance(item, dict):
            raise DataError(f"invalid archive: manifest.json entry {n} is not an object")
        cm = _lookup(members, str(item.get("Config", "")), "config")
        if cm.data is None:
            raise DataError(f"invalid archive: config {cm.name} is too large")
        config = oci.ImageConfig.parse(cm.data)
        paths = item.get("Layers") or []
        diff_ids = config.diff_ids
        if len(paths) != len(diff_ids):
            raise DataError("invalid manifest, layers length mismatch")
        layers = [_layer_of(content, _lookup(members, str(p), "layer"), d, f"layer {i}")
                  for i, (p, d) in enumerate(zip(paths, diff_ids, strict=True))]
        tags = []
        for t in item.get("RepoTags") or []:
            ref = Reference.parse(str(t))
            if ref.tag is None or ref.digest is not None:
                raise InvalidReference(f"invalid tag {t!r}")
            tags.append(ref)
        parent = item.get("Parent") or ""
        found.append(_Found(config, layers, tags, str(parent)))
    return found


def _blob(members: dict[str, _Member], d: oci.Descriptor, what: str) -> _Member:
    m = _lookup(members, f"blobs/sha256/{d.digest.hex}", what)
    if m.raw != d.digest:
        raise DigestMismatch(f"{what} {d.digest}: blob content does not match its digest")
    if m.raw_size != d.size:
        raise DigestMismatch(f"{what} {d.digest}: size {m.raw_size}, descriptor says {d.size}")
    return m


def _from_oci_index(content: ContentStore, members: dict[str, _Member]) -> list[_Found]:
    raw = _lookup(members, "index.json", "file").data or b""
    found: list[_Found] = []
    for desc in _manifest_descs(members, oci.Index.parse(raw)):
        mm = _blob(members, desc, "manifest")
        manifest = oci.Manifest.parse(mm.data or b"", desc.media_type)
        cm = _blob(members, manifest.config, "config")
        config = oci.ImageConfig.parse(cm.data or b"")
        if len(manifest.layers) != len(config.diff_ids):
            raise DataError("invalid manifest, layers length mismatch")
        layers = [_layer_of(content, _blob(members, ld, "layer"), d, f"layer {i}")
                  for i, (ld, d) in enumerate(zip(manifest.layers, config.diff_ids,
                                                  strict=True))]
        tags = _oci_names(desc)
        same = next((f for f in found if f.config.id == config.id), None)
        if same:
            same.tags.extend(tags)
        else:
            found.append(_Found(config, layers, tags))
    return found


def _manifest_descs(members: dict[str, _Member], index: oci.Index) -> Iterator[oci.Descriptor]:
    """Manifest descriptors of an index; a nested index yields its host-platform entry
    (carrying the outer descriptor's annotations, which name the image)."""
    os_name, arch = oci.host_platform()
    for d in index.manifests:
        if d.media_type in oci.INDEX_TYPES:
            inner = oci.Index.parse(_blob(members, d, "index").data or b"")
            pick = [x for x in inner.manifests if (x.platform or {}).get("architecture") == arch
                    and (x.platform or {}).get("os", os_name) == os_name] or \
                list(inner.manifests[:1])
            for x in pick[:1]:
                yield oci.Descriptor(x.media_type, x.digest, x.size,
                                     {**x.annotations, **d.annotations}, x.platform)
        else:
            yield d


def _oci_names(desc: oci.Descriptor) -> list[Reference]:
    for key in (oci.ANNOT_CONTAINERD_NAME, oci.ANNOT_REF_NAME):
        name = desc.annotations.get(key)
        if not name:
            continue
        try:
            ref = Reference.parse(name)
        except InvalidReference:
            continue  # a bare tag such as "1" in ref.name names nothing on its own
        if ref.tag is not None:
            return [ref]
    return []


def load(images: ImageStore, content: ContentStore, src: BinaryIO,
         progress: Progress | None = None) -> LoadResult:
    """Read the whole archive, verify every image in it, and only then publish: layer
    blobs are committed from their staged ingest files, then configs, then the image
    records and tags. Any failure before that leaves blobs, images and tags untouched."""
    members = _members(content, src, progress)
    try:
        if "manifest.json" in members:
            found = _from_docker_manifest(content, members)
        elif "index.json" in members:
            found = _from_oci_index(content, members)
        else:
            raise DataError("invalid archive: does not contain a manifest.json or index.json")
        parents = _valid_parents(found)
        staged: dict[Digest, Writer | None] = {
            m.layer.diff_id: m.staged for m in members.values()
            if m.layer is not None and m.staged is not None}
        result = LoadResult()
        for f in found:
            _publish_layers(content, f.layers, staged)
            content.write_bytes(f.config.raw, f.config.id, what="config")
            moved = images.publish(f.config, f.layers, tags=f.tags,
                                   parent=parents.get(f.config.id.value, ""))
            _report(result, f, moved)
        # docker 20.10's quirk, kept for scripts that parse it: the "Loaded image ID" lines
        # (one per image, tagged or not) appear only when the archive's last image has no tag
        if found and not found[-1].tags:
            result.lines.extend(f"Loaded image ID: {f.config.id}" for f in found)
        return result
    finally:
        _discard_all(members)


def _publish_layers(content: ContentStore, layers: list[LayerRecord],
                    staged: dict[Digest, Writer | None]) -> None:
    for lay in layers:
        w = staged.get(lay.diff_id)
        if w is not None and w.committed is None:
            w.commit(lay.diff_id, lay.diff_size, what=f"layer {lay.diff_id}")


def _valid_parents(found: list[_Found]) -> dict[str, str]:
    """docker load's parent links: kept only when the parent is in the same archive, and
    refused when the parent's history is not the child's minus its last entry
    (moby ``checkValidParent``)."""
    by_id = {f.config.id.value: f for f in found}
    out: dict[str, str] = {}
    for f in found:
        parent = by_id.get(f.parent)
        if parent is None or parent is f:
            continue
        mine, theirs = f.config.data.get("history") or [], parent.config.data.get(
            "history") or []
        if (mine or theirs) and (len(mine) - len(theirs) != 1 or mine[:len(theirs)] != theirs):
            raise DataError(f"image {f.parent} is not a valid parent for {f.config.id}")
        out[f.config.id.value] = f.parent
    return out


def _report(result: LoadResult, f: _Found, moved: list[tuple[str, str | None]]) -> None:
    for name, prev in moved:
        if prev:
            ref = Reference.parse(name)
            result.lines.append(f"The image {ref.familiar} already exists, renaming the "
                                f"old one with ID {prev} to empty string")
    result.images.append(f.config.id)
    result.lines.extend(f"Loaded image: {t.familiar}" for t in f.tags)


def known(images: ImageStore, name: str) -> Image:
    try:
        return images.get(name)
    except NotFound:
        raise NotFound(f"No such image: {name}") from None
