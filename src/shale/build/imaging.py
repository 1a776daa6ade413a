"""Intermediate images and read-only views of them: what every build step needs.

Each step's image is docker's classic-builder child image: the parent's config data with
the step's runtime ``config``, a ``container_config`` whose ``Cmd`` is the step's cache
probe command (``#(nop)`` for metadata steps), one history entry, and one more layer for a
filesystem step whose layer is not empty.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shale import oci
from shale.digest import EMPTY_LAYER_DIFF_ID
from shale.errors import DockerfileError
from shale.images import Image, LayerRecord

if TYPE_CHECKING:
    from shale.engine import Engine

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# docker's container.Config, in Go struct order (so image configs read like docker's);
# the keys in _OMIT_EMPTY carry ``omitempty`` there.
_CONFIG_ORDER = ("Hostname", "Domainname", "User", "AttachStdin", "AttachStdout",
                 "AttachStderr", "ExposedPorts", "Tty", "OpenStdin", "StdinOnce", "Env", "Cmd",
                 "Healthcheck", "ArgsEscaped", "Image", "Volumes", "WorkingDir", "Entrypoint",
                 "NetworkDisabled", "MacAddress", "OnBuild", "Labels", "StopSignal",
                 "StopTimeout", "Shell")
_OMIT_EMPTY = frozenset(("ExposedPorts", "Healthcheck", "ArgsEscaped", "NetworkDisabled",
                         "MacAddress", "StopSignal", "StopTimeout", "Shell"))
_ZERO: dict[str, Any] = {"Hostname": "", "Domainname": "", "User": "", "AttachStdin": False,
                         "AttachStdout": False, "AttachStderr": False, "Tty": False,
                         "OpenStdin": False, "StdinOnce": False, "Env": None, "Cmd": None,
                         "Image": "", "Volumes": None, "WorkingDir": "", "Entrypoint": None,
                         "OnBuild": None, "Labels": None}


def normal_config(config: dict[str, Any]) -> dict[str, Any]:
    """``config`` with docker's keys in docker's order, empty ``omitempty`` keys dropped and
    every always-present key filled in (unknown keys kept at the end)."""
    out: dict[str, Any] = {}
    for k in _CONFIG_ORDER:
        if k in config and not (k in _OMIT_EMPTY and not config[k]):
            out[k] = config[k]
        elif k in _ZERO:
            out[k] = _ZERO[k]
    for k, v in config.items():
        if k not in out and k not in _OMIT_EMPTY:
            out[k] = v
    return out


def scratch_data() -> dict[str, Any]:
    os_name, arch = oci.host_platform()
    return {"architecture": arch, "config": normal_config({}), "os": os_name,
            "rootfs": {"type": "layers", "diff_ids": []}, "history": []}


def stage_config(base: dict[str, Any]) -> dict[str, Any]:
    """The runtime config a stage starts from: the base's, with the default PATH when the
    base sets none and no stdin (moby's ``beginStage``, BuildKit's convert)."""
    config = normal_config(dict(base.get("config") or {}))
    env = list(config.get("Env") or [])
    if not any(e.partition("=")[0] == "PATH" for e in env):
        env.append(f"PATH={DEFAULT_PATH}")
    config["Env"] = env
    config["OpenStdin"] = config["StdinOnce"] = False
    return config


def classic_merge(config: dict[str, Any], parent: dict[str, Any]) -> dict[str, Any]:
    """The one trace moby's ``merge`` leaves on a classic build: each step's container is
    created by merging the parent image's config into a copy of the step's config, and
    that copy shares the step's ``Healthcheck`` struct, so a HEALTHCHECK's unset options
    (zero durations, zero retries) take the previous HEALTHCHECK's values."""
    old, new = parent.get("Healthcheck"), config.get("Healthcheck")
    if not old:
        return config
    if not new:
        return {**config, "Healthcheck": old}
    both = {**new, **{k: v for k, v in old.items() if not new.get(k)}}
    order = ("Test", "Interval", "Timeout", "StartPeriod", "StartInterval", "Retries")
    return {**config, "Healthcheck": {k: both[k] for k in sorted(both, key=lambda k: (
        order.index(k) if k in order else len(order), k))}}


def child_image(engine: Engine, parent: Image | None, base: dict[str, Any],
                config: dict[str, Any], created_by: str, probe: list[str],
                layer: LayerRecord | None, container: str = "") -> Image:
    """Publish a step's image: ``base`` (the parent's config data, or scratch's) with
    ``config``, a container_config whose Cmd is ``probe``, one history entry and, when
    ``layer`` is not empty, one more layer. Blobs first, the record last."""
    parent_id = parent.id.value if parent is not None else ""
    merged = classic_merge(config, parent.config.config) if parent is not None else config
    cfg_obj = normal_config({**merged, "Image": parent_id})
    data = {k: v for k, v in base.items()
            if k not in ("container", "container_config", "comment", "created", "id",
                         "parent", "docker_version")}
    now = oci.now_rfc3339()
    data["config"] = cfg_obj
    data["container"] = container
    data["container_config"] = normal_config(
        {**cfg_obj, "Cmd": probe, "Hostname": container[:12]})
    data["created"] = now
    empty = layer is None or layer.diff_id.value == EMPTY_LAYER_DIFF_ID
    entry: dict[str, Any] = {"created": now, "created_by": created_by}
    if empty:
        entry["empty_layer"] = True
    data["history"] = [*(base.get("history") or []), entry]
    diff_ids = list((base.get("rootfs") or {}).get("diff_ids") or [])
    layers = engine.images.layers(parent) if parent is not None else []
    if not empty:
        assert layer is not None
        diff_ids.append(layer.diff_id.value)
        layers.append(layer)
    data["rootfs"] = {"type": "layers", "diff_ids": diff_ids}
    cfg = oci.ImageConfig.build(dict(sorted(data.items())))
    with engine.lock():
        engine.content.write_bytes(cfg.raw, cfg.id, what="config")
        engine.images.publish(cfg, layers, parent=parent_id)
    return engine.images.load(cfg.id)


def store_tar(engine: Engine, path: Path) -> LayerRecord:
    from shale.unpack import store_layer

    with engine.lock(), open(path, "rb") as f:
        return store_layer(engine.content, f, what="build layer")


# ---- a read-only view of an image's rootfs -------------------------------------------------
@contextlib.contextmanager
def image_view(engine: Engine, image: Image | None) -> Iterator[Path | None]:
    """The image's rootfs mounted read-only on a temp dir (None for an empty image)."""
    from shale.mount import mount_all, unmount

    if image is None or not image.config.diff_ids:
        yield None
        return
    chain = engine.unpack(image)
    key = f"view-{os.urandom(8).hex()}"
    snap = engine.snapshots
    target = Path(tempfile.mkdtemp(prefix="shale-view-"))
    try:
        with engine.lock():
            mounts = snap.view(key, chain)
        mount_all(mounts, target)
        try:
            yield target
        finally:
            unmount(target)
    finally:
        with contextlib.suppress(Exception):
            snap.remove(key)
        with contextlib.suppress(OSError):
            target.rmdir()


def resolve_in(view: Path | None, path: str) -> tuple[str, os.stat_result | None]:
    """The canonical in-root form of ``path`` in the image (symlinks followed inside it)
    and the stat of what is there (None: missing)."""
    if view is None:
        return posixpath.normpath("/" + path), None
    from shale.fsroot import Root

    with Root(view) as r:
        real = r.resolve(path)
        if real == "/":
            return real, os.stat(view)
        try:
            return real, r.lstat(real)
        except (FileNotFoundError, NotADirectoryError):
            return real, None


def lookup_ids(view: Path | None, chown: str) -> tuple[int, int]:
    """``--chown user[:group]`` to numbers with the image's passwd and group files.

    A number needs no entry (a lone uid is also the gid); a name must exist. A lone user
    name takes the user's primary group (BuildKit's rule; the classic builder looked up a
    group of the same name, which gives the same answer in the usual passwd layout)."""
    from shale.runtime.users import parse_group, parse_passwd, read_in_root

    user, sep, group = chown.partition(":")
    if not user or (sep and not group):
        raise DockerfileError(f"invalid chown string format: {chown}")
    passwd = read_in_root(view, "etc/passwd") if view else None
    groups = read_in_root(view, "etc/group") if view else None
    if user.isdigit():
        uid, gid = int(user), int(user)
    else:
        match = [u for u in parse_passwd(passwd) if u.name == user]
        if not match:
            raise DockerfileError(f"unable to convert uid/gid chown string to host mapping: "
                                  f"can't find uid for user {user}: no such user: {user}")
        uid, gid = match[0].uid, match[0].gid
    if group:
        if group.isdigit():
            gid = int(group)
        else:
            found = [g for g in parse_group(groups) if g.name == group]
            if not found:
                raise DockerfileError(f"unable to convert uid/gid chown string to host "
                                      f"mapping: can't find gid for group {group}: no such "
                                      f"group: {group}")
            gid = found[0].gid
    return uid, gid
