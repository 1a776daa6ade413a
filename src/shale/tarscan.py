"""A one-pass tar scanner: copies a layer tar to a sink byte for byte while reading its
headers, so a layer can be stored (its bytes are its diff_id) and checked without unpacking.

It checks what can be checked from names alone, before anything is stored: entry names and
hardlink targets that climb out of the root, malformed whiteouts, truncated archives. Writes
through symlinks are confined later, at apply time, by ``fsroot``. It also sums the bytes of
regular files and symlink targets: docker's layer size (``history`` SIZE).
"""

from __future__ import annotations

import posixpath
from collections.abc import Callable
from typing import BinaryIO

from shale.errors import DataError, UnsafePath
from shale.record import record

BLOCK = 512
CHUNK = 1 << 20
WH_PREFIX = ".wh."
WH_OPAQUE = ".wh..wh..opq"


@record
class ScanResult:
    tar_size: int = 0
    content_size: int = 0
    entries: int = 0


def clean_name(name: str, what: str = "entry") -> str:
    """Normalise a tar entry name as moby does (``path.Clean(TrimLeft(name, "/"))``) and
    refuse one that climbs out of the root. Returns "" for the root itself."""
    if "\x00" in name:
        raise UnsafePath(f"{what} {name!r}: NUL in name")
    stripped = name.lstrip("/")
    cleaned = posixpath.normpath(stripped) if stripped else "."
    if cleaned == ".":
        return ""
    if cleaned == ".." or cleaned.startswith("../"):
        raise UnsafePath(f"{what} {name!r}: path escapes the root")
    return cleaned


def check_whiteout(cleaned: str, what: str = "entry") -> None:
    base = posixpath.basename(cleaned)
    if not base.startswith(WH_PREFIX) or base == WH_OPAQUE:
        return
    target = base[len(WH_PREFIX):]
    if target in ("", ".", "..") or "/" in target:
        raise UnsafePath(f"{what} {cleaned!r}: invalid whiteout name")


def _octal(field: bytes) -> int:
    if field and field[0] & 0x80:  # base-256 (GNU) for big numbers
        value = int.from_bytes(field[1:], "big")
        return value
    text = field.replace(b"\x00", b" ").strip()
    return int(text, 8) if text else 0


def _checksum_ok(header: bytes) -> bool:
    stored = _octal(header[148:156])
    calc = sum(header[:148]) + 8 * 32 + sum(header[156:])
    return stored == calc


def _pax_records(data: bytes) -> dict[str, str]:
    out: dict[str, str] = {}
    pos = 0
    while pos < len(data):
        sp = data.find(b" ", pos)
        if sp < 0:
            break
        try:
            length = int(data[pos:sp])
        except ValueError:
            raise DataError("corrupt PAX header") from None
        if length <= 0:
            raise DataError("corrupt PAX header")
        record = data[sp + 1:pos + length - 1]
        key, _, value = record.partition(b"=")
        out[key.decode("utf-8", "replace")] = value.decode("utf-8", "surrogateescape")
        pos += length
    return out


class _Reader:
    def __init__(self, src: BinaryIO, sink: Callable[[bytes], object]) -> None:
        self.src = src
        self.sink = sink
        self.total = 0

    def exact(self, n: int, what: str) -> bytes:
        buf = bytearray()
        while len(buf) < n:
            chunk = self.src.read(n - len(buf))
            if not chunk:
                raise DataError(f"{what}: unexpected end of tar archive")
            buf += chunk
        data = bytes(buf)
        self.sink(data)
        self.total += n
        return data

    def copy(self, n: int, what: str) -> None:
        while n > 0:
            chunk = self.src.read(min(n, CHUNK))
            if not chunk:
                raise DataError(f"{what}: unexpected end of tar archive")
            self.sink(chunk)
            self.total += len(chunk)
            n -= len(chunk)

    def rest(self) -> None:
        while chunk := self.src.read(CHUNK):
            self.sink(chunk)
            self.total += len(chunk)


def scan_copy(src: BinaryIO, sink: Callable[[bytes], object], what: str = "layer"
              ) -> ScanResult:
    """Copy the tar in ``src`` to ``sink`` unchanged while validating it."""
    rd = _Reader(src, sink)
    res = ScanResult()
    pax: dict[str, str] = {}
    long_name = long_link = None
    while True:
        header = rd.exact(BLOCK, what)
        if header == b"\x00" * BLOCK:
            break
        if not _checksum_ok(header):
            raise DataError(f"{what}: not a tar archive (bad header checksum at byte "
                            f"{rd.total - BLOCK})")
        typ = header[156:157]
        size = _octal(header[124:136])
        if typ in (b"x", b"g", b"L", b"K"):
            data = rd.exact(_padded(size), what)[:size]
            if typ == b"x":
                pax.update(_pax_records(data))
            elif typ == b"L":
                long_name = data.rstrip(b"\x00").decode("utf-8", "surrogateescape")
            elif typ == b"K":
                long_link = data.rstrip(b"\x00").decode("utf-8", "surrogateescape")
            continue
        name = pax.get("path") or long_name or _header_name(header)
        link = pax.get("linkpath") or long_link or _cstr(header[157:257])
        if "size" in pax:
            size = int(pax["size"])
        pax, long_name, long_link = {}, None, None
        _check_entry(name, typ, link, what)
        res.entries += 1
        data_size = size if typ in (b"0", b"\x00", b"7") else 0
        if typ in (b"0", b"\x00", b"7"):
            res.content_size += size
        elif typ == b"2":
            # docker sizes a layer by walking its unpacked dir (directory.Size), where a
            # symlink counts as the length of its target
            res.content_size += len(link.encode("utf-8", "surrogateescape"))
        rd.copy(_padded(data_size), what)
    rd.rest()
    res.tar_size = rd.total
    return res


def _check_entry(name: str, typ: bytes, link: str, what: str) -> None:
    cleaned = clean_name(name, f"{what} entry")
    if cleaned:
        check_whiteout(cleaned, f"{what} entry")
    if typ == b"1":
        clean_name(link, f"{what} hardlink {name!r} ->")


def _padded(n: int) -> int:
    return (n + BLOCK - 1) // BLOCK * BLOCK


def _cstr(field: bytes) -> str:
    return field.split(b"\x00", 1)[0].decode("utf-8", "surrogateescape")


def _header_name(header: bytes) -> str:
    name = _cstr(header[0:100])
    if header[257:262] == b"ustar":
        prefix = _cstr(header[345:500])
        if prefix:
            name = prefix + "/" + name
    return name
