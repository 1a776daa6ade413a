"""``build -o/--output``: BuildKit's exporters for the built image, besides the store.

- ``DIR``, ``type=local,dest=DIR``: the image's filesystem, flattened, written into DIR
  (owners, modes, links and times as in the image);
- ``-``, ``type=tar[,dest=FILE|-]``: the same as one tar;
- ``type=docker|oci,dest=FILE``: the image as an archive (``save``'s format, which both
  docker and OCI tools load);
- ``type=docker`` or ``type=image`` without ``dest``: the store only (the default).
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from shale.errors import InvalidArgument
from shale.record import record

if TYPE_CHECKING:
    from shale.engine import Engine
    from shale.images import Image


@record(frozen=True)
class Output:
    type: str
    dest: str = ""


def parse(spec: str) -> Output:
    if "=" not in spec:
        return Output("tar", "-") if spec == "-" else Output("local", spec)
    fields: dict[str, str] = {}
    for part in spec.split(","):
        key, sep, value = part.partition("=")
        if not sep:
            raise InvalidArgument(f"invalid value {part!r} in --output {spec!r}")
        fields[key.strip().lower()] = value
    kind, dest = fields.pop("type", ""), fields.pop("dest", "")
    if kind not in ("local", "tar", "docker", "oci", "image", "registry"):
        raise InvalidArgument(f"--output: unsupported exporter type {kind!r} (local, tar, "
                              "docker, oci, image)")
    if kind == "registry":
        raise InvalidArgument("--output type=registry: build, then `shale push`")
    if kind == "local" and not dest:
        raise InvalidArgument("--output type=local needs dest=DIR")
    return Output(kind, dest or ("-" if kind == "tar" else ""))


def export(engine: Engine, image: Image, out: Output, names: list[str],
           stdout: BinaryIO | None = None) -> None:
    """Write ``image`` where ``out`` says (nothing for the store-only types); ``-`` is
    ``stdout`` (the build's own output then goes to stderr)."""
    if out.type in ("docker", "oci", "image") and not out.dest:
        return
    if out.type in ("docker", "oci", "image"):
        with _target(out.dest, stdout) as f:
            engine.save(names or [image.id.value], f)
        return
    from shale.build.imaging import image_view

    with image_view(engine, image) as view:
        if out.type == "local":
            dest = Path(out.dest)
            dest.mkdir(parents=True, exist_ok=True)
            if view is not None:
                subprocess.run(["cp", "-a", f"{view}/.", str(dest)], check=True,
                               capture_output=True)
            return
        from shale.layer import write_layer

        with _target(out.dest, stdout) as f:
            if view is not None:
                write_layer(f, view, fmt="dir", lower=None)
            else:
                f.write(b"\0" * 1024)  # an empty tar


def _target(dest: str, stdout: BinaryIO | None) -> contextlib.AbstractContextManager[BinaryIO]:
    from shale.fileutil import atomic_output

    if dest == "-":
        stream = stdout or sys.stdout.buffer
        if stream.isatty():
            raise InvalidArgument("refusing to write a tar to a terminal: give dest=FILE")
        return contextlib.nullcontext(stream)
    return atomic_output(dest)
