"""Shared by the build suites (no tests here): a base image tarball, build contexts written
from a spec, and the flattened view of an image (its layers applied in memory) that the
differential tests compare between shale and docker.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import posixpath
import subprocess
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent

CONFIG_FIELDS = ("Env", "Cmd", "Entrypoint", "WorkingDir", "User", "ExposedPorts", "Volumes",
                 "Labels", "Healthcheck", "StopSignal", "Shell", "OnBuild")


@dataclass(frozen=True)
class Link:
    target: str


@dataclass(frozen=True)
class HardLink:
    target: str  # a path in the same spec, written before this one


Spec = dict[str, "bytes | str | tuple[bytes, int] | int | Link | HardLink"]
"""A context: ``"f": b"data"`` (0644), ``"f": (b"data", 0o755)``, ``"d/": 0o700`` (a
directory), ``"l": Link("target")``, ``"h": HardLink("f")``; ``str`` values are encoded
as UTF-8."""


def make_busybox(out: Path) -> Path:
    """contrib/mkbusybox.sh's base: busybox applets, and passwd/group with root, daemon,
    app (1000) and nobody, so ``--chown`` and ``USER`` by name work."""
    subprocess.run([str(REPO / "contrib" / "mkbusybox.sh"), str(out)], check=True,
                   capture_output=True)
    return out


def write_context(root: Path, spec: Spec) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name in sorted(spec):
        value = spec[name]
        path = root / name.rstrip("/")
        path.parent.mkdir(parents=True, exist_ok=True)
        if name.endswith("/"):
            assert isinstance(value, int)
            path.mkdir(exist_ok=True)
            os.chmod(path, value)
        elif isinstance(value, Link):
            path.symlink_to(value.target)
        elif isinstance(value, HardLink):
            os.link(root / value.target, path)
        else:
            data, mode = value if isinstance(value, tuple) else (value, 0o644)
            assert not isinstance(data, int)
            path.write_bytes(data.encode() if isinstance(data, str) else data)
            os.chmod(path, mode)
    return root


Tree = dict[str, dict[str, Any]]


def _kind(m: tarfile.TarInfo) -> str:
    return ("dir" if m.isdir() else "symlink" if m.issym() else "hardlink" if m.islnk()
            else "file" if m.isfile() else "chardev" if m.ischr() else "fifo" if m.isfifo()
            else "other")


def apply_layer(tree: Tree, data: bytes) -> None:
    """One layer tar onto ``tree`` with the OCI rules (whiteouts, opaque directories)."""
    if data[:2] == b"\x1f\x8b":
        import gzip

        data = gzip.decompress(data)
    with tarfile.open(fileobj=io.BytesIO(data)) as lt:
        for m in lt:
            name = posixpath.normpath("/" + m.name).lstrip("/")
            if not name:
                continue
            parent, base = posixpath.split(name)
            if base == ".wh..wh..opq":
                for k in [k for k in tree if k.startswith(parent + "/")]:
                    del tree[k]
                continue
            if base.startswith(".wh."):
                gone = posixpath.join(parent, base[4:])
                for k in [k for k in tree if k == gone or k.startswith(gone + "/")]:
                    del tree[k]
                continue
            if not m.isdir():
                for k in [k for k in tree if k.startswith(name + "/")]:
                    del tree[k]
            entry: dict[str, Any] = {"type": _kind(m), "mode": oct(m.mode & 0o7777),
                                     "uid": m.uid, "gid": m.gid}
            if m.isfile():
                f = lt.extractfile(m)
                assert f is not None
                entry["sha256"] = hashlib.sha256(f.read()).hexdigest()
            elif m.issym() or m.islnk():
                entry["link"] = m.linkname.lstrip("/") if m.islnk() else m.linkname
            elif m.ischr():
                entry["dev"] = (m.devmajor, m.devminor)
            tree[name] = entry


def flatten(save_tar: bytes) -> tuple[Tree, dict[str, Any]]:
    """(the image's file tree, its config) from a ``save`` archive of one image."""
    outer = tarfile.open(fileobj=io.BytesIO(save_tar))  # noqa: SIM115  (closed below)
    try:
        mf = outer.extractfile("manifest.json")
        assert mf is not None
        manifest = json.load(mf)[0]
        tree: Tree = {}
        for layer in manifest["Layers"]:
            lf = outer.extractfile(layer)
            assert lf is not None
            apply_layer(tree, lf.read())
        cf = outer.extractfile(manifest["Config"])
        assert cf is not None
        config = json.load(cf)
    finally:
        outer.close()
    return tree, config


def config_fields(config: dict[str, Any]) -> dict[str, Any]:
    """The runtime config fields the differential tests compare (absent == null)."""
    c = config.get("config") or {}
    return {k: c.get(k) or None for k in CONFIG_FIELDS}


def tree_diff(a: Tree, b: Tree) -> list[str]:
    """Readable differences between two trees (empty when equal)."""
    out = []
    for k in sorted(set(a) | set(b)):
        if a.get(k) != b.get(k):
            out.append(f"{k}: {a.get(k)} != {b.get(k)}")
    return out
