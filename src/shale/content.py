"""Content store: immutable blobs named by their sha256, under ``blobs/sha256/<hex>``.

Contract (containerd's content store, reduced to what shale needs):
- ``writer()`` streams into a temp file under ``ingest/``; ``commit()`` fsyncs it, verifies
  size and digest against what the caller expected, renames it into place and fsyncs the
  directory. A blob that is already present makes ``commit`` a successful no-op (dedupe), so
  two processes writing the same blob at once both succeed.
- Readers never see a partial blob: a blob path exists only after its rename.
- ``delete`` is idempotent. ``walk`` lists committed blobs; ``ingests`` lists temp files
  (left by a crash; ``gc`` removes the stale ones).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import BinaryIO

from shale.digest import Digest, Hasher
from shale.errors import DigestMismatch, NotFound


class Writer:
    """A blob being written. Use as a context manager; call ``commit`` to publish it.
    Leaving the block without ``commit`` discards the temp file."""

    def __init__(self, store: ContentStore) -> None:
        self._store = store
        fd, name = tempfile.mkstemp(dir=store.ingest_dir, prefix="ingest-")
        self._fd = fd
        self.path = Path(name)
        self._hasher = Hasher()
        self.committed: Digest | None = None

    @property
    def size(self) -> int:
        return self._hasher.size

    @property
    def hasher(self) -> Hasher:
        """The running sha256 of everything written (a ``TarWriter`` on this writer uses
        it rather than hashing the same bytes twice)."""
        return self._hasher

    def write(self, data: bytes | bytearray | memoryview) -> int:
        view = memoryview(data)
        self._hasher.update(view)
        while view:
            n = os.write(self._fd, view)
            view = view[n:]
        return len(data)

    def digest(self) -> Digest:
        return self._hasher.digest()

    def commit(self, expected: Digest | None = None, size: int | None = None,
               what: str = "blob") -> Digest:
        """Verify and publish; returns the digest. ``DigestMismatch`` names ``what``."""
        got = self._hasher.digest()
        if expected is not None and got != expected:
            raise DigestMismatch(f"{what}: digest mismatch: expected {expected}, got {got}")
        if size is not None and size != self._hasher.size:
            raise DigestMismatch(
                f"{what}: size mismatch: expected {size} bytes, got {self._hasher.size}")
        dest = self._store.path(got)
        if not dest.exists():  # a blob already stored needs no flush of our copy
            os.fsync(self._fd)
        os.close(self._fd)
        self._fd = -1
        if dest.exists():
            self.path.unlink(missing_ok=True)
        else:
            os.chmod(self.path, 0o444)
            os.rename(self.path, dest)
            self._store.fsync_dir()
        self.committed = got
        return got

    def discard(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        if self.committed is None:
            self.path.unlink(missing_ok=True)

    def __enter__(self) -> Writer:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.discard()


class ContentStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.blob_dir = root / "blobs" / "sha256"
        self.ingest_dir = root / "ingest"
        self.blob_dir.mkdir(parents=True, exist_ok=True)
        self.ingest_dir.mkdir(parents=True, exist_ok=True)

    def path(self, digest: Digest) -> Path:
        return self.blob_dir / digest.hex

    def exists(self, digest: Digest) -> bool:
        return self.path(digest).exists()

    def size(self, digest: Digest) -> int:
        try:
            return self.path(digest).stat().st_size
        except FileNotFoundError:
            raise NotFound(f"blob {digest} not found") from None

    def open(self, digest: Digest) -> BinaryIO:
        try:
            return open(self.path(digest), "rb")
        except FileNotFoundError:
            raise NotFound(f"blob {digest} not found") from None

    def read(self, digest: Digest) -> bytes:
        with self.open(digest) as f:
            return f.read()

    def writer(self) -> Writer:
        return Writer(self)

    def write_bytes(self, data: bytes, expected: Digest | None = None,
                    what: str = "blob") -> Digest:
        with self.writer() as w:
            w.write(data)
            return w.commit(expected, what=what)

    def write_stream(self, src: BinaryIO, expected: Digest | None = None,
                     size: int | None = None, what: str = "blob") -> Digest:
        with self.writer() as w:
            while chunk := src.read(1 << 20):
                w.write(chunk)
            return w.commit(expected, size, what=what)

    def delete(self, digest: Digest) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path(digest).unlink()

    def walk(self) -> Iterator[Digest]:
        for entry in os.scandir(self.blob_dir):
            if len(entry.name) == 64:
                with contextlib.suppress(Exception):
                    yield Digest.from_hex(entry.name)

    def ingests(self) -> Iterator[Path]:
        for entry in os.scandir(self.ingest_dir):
            yield Path(entry.path)

    def verify(self, digest: Digest) -> bool:
        """True when the blob's bytes hash to its name."""
        h = Hasher()
        with self.open(digest) as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
        return h.digest() == digest

    def fsync_dir(self) -> None:
        fd = os.open(self.blob_dir, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
