"""Deferred diff_id verification of pulled layers.

``shale pull`` keeps a layer as pulled (gzip) once the blob's digest and size match the
manifest, and records the layer as *unverified*: the claim "this blob gunzips to diff_id D"
comes from the image config and has not been checked. Checking it (gunzip + sha256 of the
tar) is about three quarters of a verifying pull's CPU time; it runs at the layer's first
use instead, in the pass that uses it:

- unpack (the first container or build step on the image): the tar applied to the snapshot
  is hashed as it streams (``checked``); the snapshot is committed only if it hashed to D;
- ``save``, ``push`` and the size columns (images, history, inspect): ``verify_layers``
  reads the blob once (the gunzip runs on a read-ahead thread while this one hashes and
  sizes the tar), then records the sizes.

What keeps it safe (the rules live in ``ImageStore``; ``pull.py`` follows them):

- an unverified layer never satisfies a lookup by diff_id (``ImageStore.has_layer``), so no
  other image is ever given this blob for D; only an image whose own manifest names the
  same blob for the same D (the same claim) shares the record;
- a verified record of D (load, import, build, a verifying pull) replaces an unverified one;
- nothing is unpacked, saved or pushed from a layer before it is verified; a mismatch (or a
  blob that does not gunzip) is recorded on the layer and every later use fails with the
  same one-line error, without reading the blob again; ``rmi`` + ``pull`` start over.
"""

from __future__ import annotations

import hashlib
import queue
import threading
import zlib
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import TYPE_CHECKING, BinaryIO

from shale.digest import Digest
from shale.errors import DataError, DigestMismatch
from shale.images import LayerRecord
from shale.tarscan import BLOCK, _checksum_ok, _cstr, _octal, _padded, _pax_records

if TYPE_CHECKING:
    from shale.content import ContentStore
    from shale.engine import Engine

CHUNK = 1 << 20
VERIFY_JOBS = 2          # layers verified at once (each is two threads: gunzip, hash)
_ZERO_BLOCK = bytes(BLOCK)
_META_LIMIT = 16 << 20   # a PAX/long-name payload larger than this stops the sizing

Verified = Callable[[LayerRecord, int, int], None]  # (layer, tar size, content size)


class LayerCheckError(DigestMismatch):
    """A pulled layer's blob does not gunzip to the diff_id its image config names."""

    def __init__(self, message: str, diff_id: Digest, blob: Digest) -> None:
        super().__init__(message)
        self.diff_id = diff_id
        self.blob = blob


def mismatch(layer: LayerRecord, got: Digest) -> LayerCheckError:
    return LayerCheckError(
        f"layer {layer.diff_id.short}: invalid diffID: expected {layer.diff_id}, got {got} "
        f"(pulled blob {layer.blob}); remove the image and pull it again",
        layer.diff_id, layer.blob)


def corrupt(layer: LayerRecord, err: BaseException) -> LayerCheckError:
    return LayerCheckError(
        f"layer {layer.diff_id.short}: pulled blob {layer.blob} does not decompress: "
        f"{err or type(err).__name__}; remove the image and pull it again",
        layer.diff_id, layer.blob)


def content_error(e: BaseException) -> bool:
    """An error the compressed bytes themselves cause (not I/O, not a bug)."""
    from isal import isal_zlib

    if isinstance(e, OSError):
        return e.errno is None  # BadGzipFile, "CRC check failed", bz2's invalid data
    isal_error: type[Exception] = isal_zlib.error  # type: ignore[assignment]
    return isinstance(e, (EOFError, isal_error, zlib.error))


# --------------------------------------------------------------------------- sizes
class TarSizer:
    """``tarscan.scan_copy``'s two sizes (tar bytes, docker's content size: regular files
    plus symlink targets) from chunks pushed to it, for a stream another reader consumes
    (``apply_layer``). It follows scan_copy header for header; where scan_copy would refuse
    the tar (a bad header checksum), ``ok`` turns False and the content size is unknown."""

    def __init__(self) -> None:
        self.tar_size = 0
        self.content_size = 0
        self.ok = True
        self._skip = 0
        self._need = BLOCK
        self._buf = bytearray()
        self._meta = b""          # type of the PAX/long-name payload being collected
        self._meta_size = 0
        self._pax: dict[str, str] = {}
        self._long_name: str | None = None
        self._long_link: str | None = None
        self._done = False

    def feed(self, data: bytes | memoryview) -> None:
        n = len(data)
        self.tar_size += n
        view = memoryview(data)
        pos = 0
        while pos < n and not self._done and self.ok:
            if self._skip:
                k = min(self._skip, n - pos)
                self._skip -= k
                pos += k
                continue
            take = min(self._need - len(self._buf), n - pos)
            self._buf += view[pos:pos + take]
            pos += take
            if len(self._buf) == self._need:
                block = bytes(self._buf)
                self._buf.clear()
                try:
                    self._block(block)
                except (DataError, ValueError):
                    self.ok = False

    def _block(self, block: bytes) -> None:
        if self._meta:
            typ, self._meta, self._need = self._meta, b"", BLOCK
            data = block[:self._meta_size]
            if typ == b"x":
                self._pax.update(_pax_records(data))
            elif typ == b"L":
                self._long_name = data.rstrip(b"\x00").decode("utf-8", "surrogateescape")
            elif typ == b"K":
                self._long_link = data.rstrip(b"\x00").decode("utf-8", "surrogateescape")
            return
        if block == _ZERO_BLOCK:
            self._done = True
            return
        if not _checksum_ok(block):
            self.ok = False
            return
        typ = block[156:157]
        size = _octal(block[124:136])
        if typ in (b"x", b"g", b"L", b"K"):
            if _padded(size) > _META_LIMIT:
                self.ok = False
                return
            self._meta, self._meta_size, self._need = typ, size, _padded(size)
            if self._need == 0:  # an empty payload: nothing more to collect
                self._block(b"")
            return
        link = self._pax.get("linkpath") or self._long_link or _cstr(block[157:257])
        if "size" in self._pax:
            size = int(self._pax["size"])
        self._pax, self._long_name, self._long_link = {}, None, None
        if typ in (b"0", b"\x00", b"7"):
            self.content_size += size
            self._skip = _padded(size)
        elif typ == b"2":
            self.content_size += len(link.encode("utf-8", "surrogateescape"))


# -------------------------------------------------------------------- the check
class DiffCheck:
    """A layer's tar stream, read through: every byte is hashed and sized on its way to
    the reader. ``finish`` reads what is left and raises ``LayerCheckError`` unless the
    bytes hashed to the layer's diff_id."""

    def __init__(self, src: BinaryIO | _ReadAhead, layer: LayerRecord) -> None:
        self._src = src
        self.layer = layer
        self._hash = hashlib.sha256()
        self.sizer = TarSizer()
        self._view = memoryview(b"")
        self._eof = False
        self.read_error: BaseException | None = None

    def readable(self) -> bool:
        return True

    def _fill(self) -> None:
        try:
            chunk = self._src.read(CHUNK)
        except Exception as e:
            if content_error(e):
                self.read_error = e
            raise
        if not chunk:
            self._eof = True
            self._view = memoryview(b"")
            return
        self._hash.update(chunk)
        self.sizer.feed(chunk)
        self._view = memoryview(chunk)

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0:
            parts = []
            while part := self.read(CHUNK):
                parts.append(part)
            return b"".join(parts)
        if not self._view:
            if self._eof:
                return b""
            self._fill()
        out = bytes(self._view[:n])
        self._view = self._view[n:]
        return out

    def readinto(self, b: bytearray | memoryview) -> int:
        data = self.read(len(b))
        memoryview(b)[:len(data)] = data
        return len(data)

    def finish(self) -> tuple[int, int]:
        """Read to the end; (tar size, content size or -1) if the diff_id matched."""
        try:
            while not self._eof:
                self._fill()
        except Exception as e:
            if self.read_error is not None:
                raise corrupt(self.layer, e) from e
            raise
        got = Digest("sha256:" + self._hash.hexdigest())
        if got != self.layer.diff_id:
            raise mismatch(self.layer, got)
        return self.sizer.tar_size, self.sizer.content_size if self.sizer.ok else -1

    def settle(self, err: BaseException) -> None:
        """The reader failed with ``err``: raise ``LayerCheckError`` if the blob is at fault
        (it does not gunzip, or it is not the diff_id); return if ``err`` stands."""
        if self.read_error is not None:
            raise corrupt(self.layer, self.read_error) from err
        if isinstance(err, DataError) and not isinstance(err, LayerCheckError):
            # a tar the applier refused: a substituted blob is the better explanation, if so
            self.finish()


@contextmanager
def checked(stream: BinaryIO, layer: LayerRecord, verified: Verified | None
            ) -> Iterator[BinaryIO]:
    """``stream`` itself for a verified layer; else a ``DiffCheck`` over it that must end
    at the diff_id when the block ends, then ``verified(layer, tar size, content size)``."""
    if layer.verified:
        yield stream
        return
    chk = DiffCheck(stream, layer)
    try:
        yield chk  # type: ignore[misc]
    except Exception as e:
        chk.settle(e)
        raise
    tar_size, content_size = chk.finish()
    if verified is not None:
        verified(layer, tar_size, content_size)


class _ReadAhead:
    """``src`` read on a thread, a few blocks ahead: the isal gunzip inside ``src`` runs
    there (it releases the GIL) while the caller hashes and sizes the previous block."""

    def __init__(self, src: BinaryIO, depth: int = 4) -> None:
        self._q: queue.Queue[bytes | BaseException] = queue.Queue(depth)
        self._stop = threading.Event()
        self._done = False
        self._thread = threading.Thread(target=self._run, args=(src,), daemon=True)
        self._thread.start()

    def _run(self, src: BinaryIO) -> None:
        try:
            while not self._stop.is_set():
                data = src.read(CHUNK)
                self._put(data)
                if not data:
                    return
        except BaseException as e:  # handed to the reader, raised there
            self._put(e)

    def _put(self, item: bytes | BaseException) -> None:
        while not self._stop.is_set():
            try:
                self._q.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def read(self, n: int = CHUNK) -> bytes:
        """The next block (up to ``CHUNK`` bytes, whatever ``n``); b"" at the end."""
        if self._done:
            return b""
        item = self._q.get()
        if isinstance(item, BaseException):
            self._done = True
            raise item
        if not item:
            self._done = True
        return item

    def close(self) -> None:
        self._stop.set()
        while self._thread.is_alive():
            try:
                self._q.get(timeout=0.05)
            except queue.Empty:
                pass
        self._thread.join()


def verify_stored(content: ContentStore, layer: LayerRecord) -> tuple[int, int]:
    """Gunzip and hash a stored layer blob; (tar size, content size) if it is its diff_id,
    else ``LayerCheckError``. Reads with the decoder every other use reads with."""
    from shale.unpack import open_layer_tar

    with open_layer_tar(content, layer) as f:
        ahead = _ReadAhead(f)
        try:
            return DiffCheck(ahead, layer).finish()
        finally:
            ahead.close()


# ------------------------------------------------------------------ store side
def raise_recorded(engine: Engine, layers: Sequence[LayerRecord]) -> None:
    """Raise the error recorded for any of these layers (a failed earlier check)."""
    for lay in layers:
        if not lay.verified:
            err = engine.images.layer_check_error(lay.diff_id, lay.blob)
            if err:
                raise LayerCheckError(err, lay.diff_id, lay.blob)


def record_verified(engine: Engine) -> Verified:
    def done(layer: LayerRecord, tar_size: int, content_size: int) -> None:
        engine.images.layer_verified(layer.diff_id, layer.blob, tar_size, content_size)
    return done


def verify_layers(engine: Engine, layers: Sequence[LayerRecord], *, strict: bool = True
                  ) -> list[LayerRecord]:
    """Verify the unverified layers among ``layers`` now (two at a time) and record the
    outcome; returns the records as they are afterwards. ``strict``: raise the first
    failure (save, push); otherwise a layer that fails stays unverified and its size
    unknown (the size columns of images, history and inspect still show)."""
    todo: dict[str, LayerRecord] = {}
    for lay in layers:
        if not lay.verified:
            todo.setdefault(lay.diff_id.value, lay)
    if not todo:
        return list(layers)
    failed: list[LayerCheckError] = []
    with engine.lock():
        pending = []
        for lay in todo.values():
            err = engine.images.layer_check_error(lay.diff_id, lay.blob)
            if err:
                failed.append(LayerCheckError(err, lay.diff_id, lay.blob))
            else:
                pending.append(lay)
        if pending:
            with ThreadPoolExecutor(max_workers=min(VERIFY_JOBS, len(pending))) as pool:
                futures = [(lay, pool.submit(verify_stored, engine.content, lay))
                           for lay in pending]
                for lay, fut in futures:
                    try:
                        tar_size, content_size = fut.result()
                    except LayerCheckError as e:
                        engine.images.layer_check_failed(lay.diff_id, lay.blob, e.message)
                        failed.append(e)
                    except Exception:
                        if strict:  # I/O and the like: nothing learnt about the blob
                            raise
                    else:
                        engine.images.layer_verified(lay.diff_id, lay.blob, tar_size,
                                                     content_size)
    if failed and strict:
        raise failed[0]
    return [engine.images.layer(x.diff_id) for x in layers]


def unpack_checked(engine: Engine, layers: Sequence[LayerRecord]) -> str:
    """``unpack.unpack`` for layers some of which are unverified: each is checked in the
    pass that applies it; a failure is recorded on the layer before it propagates."""
    from shale.unpack import unpack

    raise_recorded(engine, layers)
    try:
        return unpack(engine.snapshots, engine.content, layers,
                      verified=record_verified(engine))
    except LayerCheckError as e:
        engine.images.layer_check_failed(e.diff_id, e.blob, e.message)
        raise
