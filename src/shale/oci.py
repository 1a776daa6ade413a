"""OCI and Docker image models: media types, descriptors, manifests, indexes, configs.

Every model keeps the raw bytes it was parsed from: digests are always over raw bytes, so
nothing is ever re-serialised on the way through (an image loaded from docker keeps docker's
ID, a pulled manifest keeps its digest).
"""

from __future__ import annotations

import json
import math
import os
import time
from typing import Any

from shale.digest import Digest
from shale.errors import DataError
from shale.record import field, record

# Media types (image-spec specs-go/v1/mediatype.go; docker schema2).
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
OCI_LAYOUT_HEADER = "application/vnd.oci.layout.header.v1+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar"
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
DOCKER_FOREIGN_GZIP = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"

MANIFEST_TYPES = (OCI_MANIFEST, DOCKER_MANIFEST)
INDEX_TYPES = (OCI_INDEX, DOCKER_LIST)

ANNOT_REF_NAME = "org.opencontainers.image.ref.name"
ANNOT_CONTAINERD_NAME = "io.containerd.image.name"


def is_gzip_type(media_type: str) -> bool:
    return media_type.endswith("gzip")


def is_zstd_type(media_type: str) -> bool:
    return media_type.endswith("zstd")


def now_rfc3339() -> str:
    return format_time(time.time())


def format_time(ts: float) -> str:
    """RFC 3339 with nanosecond-style fraction, as Go's time.RFC3339Nano (trailing zeros cut).
    Microseconds rounded half to even, as ``datetime.fromtimestamp`` does (without importing
    ``datetime``: ~1 ms on every `run`)."""
    frac_part, whole = math.modf(ts)
    micro = round(frac_part * 1e6)
    secs = int(whole)
    if micro >= 1_000_000:
        secs, micro = secs + 1, micro - 1_000_000
    elif micro < 0:
        secs, micro = secs - 1, micro + 1_000_000
    base = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs))
    frac = f"{micro:06d}".rstrip("0")
    return f"{base}.{frac}Z" if frac else f"{base}Z"


def parse_time(text: str | None) -> float:
    """Parse RFC 3339 (any fraction length, Z or offset); 0.0 when absent or unparsable."""
    if not text:
        return 0.0
    try:
        head, _, _tz = text.partition("Z") if text.endswith("Z") else (text, "", "")
        main = head
        offset = "+00:00"
        if not text.endswith("Z"):
            for sign in ("+", "-"):
                pos = text.rfind(sign, 19)
                if pos > 0:
                    main, offset = text[:pos], text[pos:]
                    break
        if "." in main:
            base, frac = main.split(".", 1)
            main = f"{base}.{frac[:6].ljust(6, '0')}"
        else:
            main += ".000000"
        from datetime import datetime

        return datetime.fromisoformat(main + offset).timestamp()
    except ValueError:
        return 0.0


def dumps(obj: Any) -> bytes:
    """Compact JSON as Go's json.Marshal writes it (no spaces, no trailing newline)."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


def loads_object(raw: bytes, what: str) -> dict[str, Any]:
    try:
        obj = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise DataError(f"{what}: invalid JSON: {e}") from None
    if not isinstance(obj, dict):
        raise DataError(f"{what}: want a JSON object")
    return obj


@record(frozen=True)
class Descriptor:
    media_type: str
    digest: Digest
    size: int
    annotations: dict[str, str] = field(default_factory=dict)
    platform: dict[str, Any] | None = None

    @classmethod
    def from_json(cls, obj: Any, what: str) -> Descriptor:
        if not isinstance(obj, dict):
            raise DataError(f"{what}: descriptor is not an object")
        try:
            digest = Digest(str(obj["digest"]))
            size = int(obj["size"])
        except (KeyError, ValueError, TypeError) as e:
            raise DataError(f"{what}: bad descriptor: {e}") from None
        if size < 0:
            raise DataError(f"{what}: negative size")
        annotations = obj.get("annotations") or {}
        return cls(str(obj.get("mediaType", "")), digest, size,
                   dict(annotations) if isinstance(annotations, dict) else {},
                   obj.get("platform"))

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"mediaType": self.media_type, "digest": self.digest.value,
                               "size": self.size}
        if self.annotations:
            out["annotations"] = self.annotations
        if self.platform:
            out["platform"] = self.platform
        return out


@record(frozen=True)
class Manifest:
    raw: bytes
    media_type: str
    config: Descriptor
    layers: tuple[Descriptor, ...]

    @property
    def digest(self) -> Digest:
        return Digest.of_bytes(self.raw)

    @classmethod
    def parse(cls, raw: bytes, media_type: str = "") -> Manifest:
        obj = loads_object(raw, "manifest")
        if obj.get("schemaVersion") != 2:
            raise DataError("manifest: unsupported schemaVersion (want 2)")
        mt = str(obj.get("mediaType") or media_type or OCI_MANIFEST)
        if "config" not in obj:
            raise DataError("manifest: no config descriptor")
        layers = obj.get("layers") or []
        if not isinstance(layers, list):
            raise DataError("manifest: layers is not a list")
        return cls(raw, mt, Descriptor.from_json(obj["config"], "manifest config"),
                   tuple(Descriptor.from_json(d, f"manifest layer {i}")
                         for i, d in enumerate(layers)))


@record(frozen=True)
class Index:
    raw: bytes
    media_type: str
    manifests: tuple[Descriptor, ...]

    @classmethod
    def parse(cls, raw: bytes, media_type: str = "") -> Index:
        obj = loads_object(raw, "index")
        items = obj.get("manifests") or []
        if not isinstance(items, list):
            raise DataError("index: manifests is not a list")
        return cls(raw, str(obj.get("mediaType") or media_type or OCI_INDEX),
                   tuple(Descriptor.from_json(d, f"index entry {i}")
                         for i, d in enumerate(items)))


@record(frozen=True)
class History:
    created: str = ""
    created_by: str = ""
    author: str = ""
    comment: str = ""
    empty_layer: bool = False

    @classmethod
    def from_json(cls, obj: Any) -> History:
        if not isinstance(obj, dict):
            return cls()
        return cls(str(obj.get("created") or ""), str(obj.get("created_by") or ""),
                   str(obj.get("author") or ""), str(obj.get("comment") or ""),
                   bool(obj.get("empty_layer", False)))

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.created:
            out["created"] = self.created
        if self.author:
            out["author"] = self.author
        if self.created_by:
            out["created_by"] = self.created_by
        if self.comment:
            out["comment"] = self.comment
        if self.empty_layer:
            out["empty_layer"] = True
        return out


@record(frozen=True)
class ImageConfig:
    """An image config kept as its raw bytes; ``id`` is their sha256 (docker's image ID)."""

    raw: bytes
    data: dict[str, Any]

    @classmethod
    def parse(cls, raw: bytes) -> ImageConfig:
        data = loads_object(raw, "image config")
        rootfs = data.get("rootfs")
        if not isinstance(rootfs, dict):
            raise DataError("invalid image JSON, no RootFS key")
        ids = rootfs.get("diff_ids") or []
        if not isinstance(ids, list):
            raise DataError("image config: rootfs.diff_ids is not a list")
        for d in ids:
            Digest(str(d))
        cfg = cls(raw, data)
        non_empty = sum(1 for h in cfg.history if not h.empty_layer)
        if cfg.history and non_empty > len(ids):
            raise DataError("too many non-empty layers in History section")
        return cfg

    @classmethod
    def build(cls, data: dict[str, Any]) -> ImageConfig:
        return cls.parse(dumps(data))

    @property
    def id(self) -> Digest:
        return Digest.of_bytes(self.raw)

    @property
    def diff_ids(self) -> list[Digest]:
        return [Digest(str(d)) for d in self.data["rootfs"].get("diff_ids") or []]

    @property
    def history(self) -> list[History]:
        h = self.data.get("history") or []
        return [History.from_json(x) for x in h] if isinstance(h, list) else []

    @property
    def config(self) -> dict[str, Any]:
        c = self.data.get("config")
        return c if isinstance(c, dict) else {}

    @property
    def created(self) -> str:
        return str(self.data.get("created") or "")

    @property
    def author(self) -> str:
        return str(self.data.get("author") or "")

    @property
    def architecture(self) -> str:
        return str(self.data.get("architecture") or "")

    @property
    def os(self) -> str:
        return str(self.data.get("os") or "")


def host_platform() -> tuple[str, str]:
    """(os, architecture) in GOOS/GOARCH terms."""
    machine = os.uname().machine
    arch = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "i686": "386",
            "ppc64le": "ppc64le", "s390x": "s390x", "riscv64": "riscv64"}.get(machine, machine)
    return "linux", arch
