"""Validated digests, streaming sha256 and OCI chain IDs."""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from typing import BinaryIO

from shale.errors import InvalidArgument
from shale.record import record

_SHA256 = re.compile(r"^sha256:[a-f0-9]{64}$")
_HEX64 = re.compile(r"^[a-f0-9]{64}$")

EMPTY_LAYER_DIFF_ID = "sha256:5f70bf18a086007016e948b04aed3b82103a36bea41755b6cddfaf10ace3c6ef"
"""diff_id of the canonical empty layer: 1024 zero bytes (two tar end blocks)."""


@record(frozen=True, order=True)
class Digest:
    """A ``sha256:<64 lowercase hex>`` digest. Only sha256 is accepted."""

    value: str

    def __post_init__(self) -> None:
        if not _SHA256.match(self.value):
            raise InvalidArgument(f"invalid digest {self.value!r}: want sha256:<64 hex>")

    @classmethod
    def parse(cls, text: str) -> Digest:
        return cls(text)

    @classmethod
    def from_hex(cls, hexpart: str) -> Digest:
        return cls("sha256:" + hexpart)

    @classmethod
    def of_bytes(cls, data: bytes) -> Digest:
        import hashlib  # here: loading libcrypto costs ~2.5 ms, and `run` needs no hash

        return cls("sha256:" + hashlib.sha256(data).hexdigest())

    @property
    def hex(self) -> str:
        return self.value[7:]

    @property
    def short(self) -> str:
        """The 12-hex-digit form docker prints."""
        return self.value[7:19]

    def __str__(self) -> str:
        return self.value


def is_hex64(text: str) -> bool:
    return bool(_HEX64.match(text))


class Hasher:
    """A running sha256 plus byte count, fed as data streams past."""

    def __init__(self) -> None:
        import hashlib

        self._h = hashlib.sha256()
        self.size = 0

    def update(self, data: bytes | bytearray | memoryview) -> None:
        self._h.update(data)
        self.size += len(data)

    def digest(self) -> Digest:
        return Digest("sha256:" + self._h.hexdigest())


def sha256_stream(fp: BinaryIO, bufsize: int = 1 << 20) -> tuple[Digest, int]:
    h = Hasher()
    while chunk := fp.read(bufsize):
        h.update(chunk)
    return h.digest(), h.size


def iter_chunks(fp: BinaryIO, bufsize: int = 1 << 20) -> Iterator[bytes]:
    while chunk := fp.read(bufsize):
        yield chunk


def sha256_hex(data: bytes) -> str:
    """sha256 hex of a small input (a chain ID's, a cache key's) without loading libcrypto:
    the interpreter's own sha256 imports in a third of hashlib's time, and `run` computes
    chain IDs of a layered image. For streams and big blobs use ``Hasher`` (OpenSSL)."""
    try:
        import _sha256 as impl  # type: ignore[import-not-found]
    except ImportError:  # an interpreter built without it
        import hashlib as impl
    hexdigest: str = impl.sha256(data).hexdigest()
    return hexdigest


def chain_ids(diff_ids: Iterable[Digest | str]) -> list[Digest]:
    """OCI chain IDs, base first: ChainID(L0) = DiffID(L0);
    ChainID(L0..n) = sha256(ChainID(L0..n-1) + " " + DiffID(Ln))."""
    out: list[Digest] = []
    for d in diff_ids:
        dd = d if isinstance(d, Digest) else Digest(d)
        if not out:
            out.append(dd)
        else:
            out.append(Digest("sha256:" + sha256_hex(f"{out[-1].value} {dd.value}".encode())))
    return out
