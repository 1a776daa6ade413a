"""Compression sniffing and streaming decompression (gzip through isal, as DESIGN.md asks)."""

from __future__ import annotations

import io
from typing import BinaryIO

from shale.errors import Unsupported

GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
BZIP2_MAGIC = b"BZh"
XZ_MAGIC = b"\xfd7zXZ\x00"


class Peekable(io.RawIOBase):
    """A read-only stream with its first bytes already read, so the magic can be sniffed
    on a pipe (stdin) without seeking."""

    def __init__(self, src: BinaryIO, head: bytes) -> None:
        self._src = src
        self._head = head

    def readable(self) -> bool:
        return True

    def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
        view = memoryview(b).cast("B")
        if self._head:
            n = min(len(view), len(self._head))
            view[:n] = self._head[:n]
            self._head = self._head[n:]
            return n
        data = self._src.read(len(view))
        if not data:
            return 0
        view[:len(data)] = data
        return len(data)

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0:
            rest = self._head + self._src.read()
            self._head = b""
            return rest
        if self._head:
            out = self._head[:size]
            self._head = self._head[size:]
            if len(out) < size:
                out += self._src.read(size - len(out))
            return out
        return self._src.read(size)


def sniff(src: BinaryIO) -> tuple[str, BinaryIO]:
    """Return (compression, stream positioned at the start). compression is one of
    "", "gzip", "zstd", "bzip2", "xz"."""
    head = b""
    while len(head) < 6:
        more = src.read(6 - len(head))
        if not more:
            break
        head += more
    stream: BinaryIO = Peekable(src, head)  # type: ignore[assignment]
    if head.startswith(GZIP_MAGIC):
        return "gzip", stream
    if head.startswith(ZSTD_MAGIC):
        return "zstd", stream
    if head.startswith(BZIP2_MAGIC):
        return "bzip2", stream
    if head.startswith(XZ_MAGIC):
        return "xz", stream
    return "", stream


def decompressed(src: BinaryIO) -> tuple[str, BinaryIO]:
    """Sniff and wrap ``src`` in the matching decompressor; returns (compression, stream)."""
    kind, stream = sniff(src)
    if kind == "gzip":
        from isal import igzip

        return kind, igzip.IGzipFile(fileobj=stream, mode="rb")  # type: ignore[return-value,no-untyped-call]
    if kind == "bzip2":
        import bz2

        return kind, bz2.BZ2File(stream, "rb")  # type: ignore[return-value]
    if kind == "xz":
        import lzma

        return kind, lzma.LZMAFile(stream, "rb")  # type: ignore[return-value]
    if kind == "zstd":
        raise Unsupported("zstd-compressed layers are not supported yet")
    return kind, stream


def gzip_writer(dest: BinaryIO, level: int = 1) -> BinaryIO:
    """A gzip stream with mtime 0 so the same input always gives the same bytes."""
    from isal import igzip

    return igzip.IGzipFile(fileobj=dest, mode="wb", compresslevel=level,  # type: ignore[return-value,no-untyped-call]
                           mtime=0)
