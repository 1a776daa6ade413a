"""``inspect`` of an image, in docker's JSON shape (API 1.41 field order)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from shale.oci import format_time, parse_time

if TYPE_CHECKING:
    from shale.engine import Engine
    from shale.images import Image

_CONFIG_KEYS = ["Hostname", "Domainname", "User", "AttachStdin", "AttachStdout",
                "AttachStderr", "ExposedPorts", "Tty", "OpenStdin", "StdinOnce", "Env", "Cmd",
                "Healthcheck", "ArgsEscaped", "Image", "Volumes", "WorkingDir", "Entrypoint",
                "NetworkDisabled", "MacAddress", "OnBuild", "Labels", "StopSignal",
                "StopTimeout", "Shell"]
_OMIT_EMPTY = {"ExposedPorts", "Healthcheck", "ArgsEscaped", "NetworkDisabled", "MacAddress",
               "StopSignal", "StopTimeout", "Shell"}
_DEFAULTS: dict[str, Any] = {"Hostname": "", "Domainname": "", "User": "",
                             "AttachStdin": False, "AttachStdout": False,
                             "AttachStderr": False, "Tty": False, "OpenStdin": False,
                             "StdinOnce": False, "Env": None, "Cmd": None, "Image": "",
                             "Volumes": None, "WorkingDir": "", "Entrypoint": None,
                             "OnBuild": None, "Labels": None}


def docker_config(cfg: dict[str, Any] | None) -> dict[str, Any]:
    """An OCI or docker ``config`` object shown with docker's container.Config keys."""
    src = cfg or {}
    out: dict[str, Any] = {}
    for k in _CONFIG_KEYS:
        if k in src and not (k in _OMIT_EMPTY and not src[k]):
            out[k] = src[k]
        elif k in _DEFAULTS:
            out[k] = _DEFAULTS[k]
    for k, v in src.items():
        if k not in out and k not in _OMIT_EMPTY:
            out[k] = v
    return out


def _comment(img: Image) -> str:
    """docker's LookupImage: the config's comment, else the last history entry's."""
    comment = str(img.config.data.get("comment") or "")
    history = img.config.history
    return comment or (history[-1].comment if history else "")


def image_inspect(engine: Engine, img: Image) -> dict[str, Any]:
    data = img.config.data
    diff_ids = [d.value for d in img.config.diff_ids]
    size = engine.image_size(img)
    out: dict[str, Any] = {
        "Id": img.id.value,
        "RepoTags": img.familiar_tags,
        "RepoDigests": img.familiar_digests,
        "Parent": img.parent,
        "Comment": _comment(img),
        "Created": data.get("created") or format_time(0),
        "Container": data.get("container", ""),
        "ContainerConfig": docker_config(data.get("container_config")),
        "DockerVersion": data.get("docker_version", ""),
        "Author": data.get("author", ""),
        "Config": docker_config(data.get("config")),
        "Architecture": data.get("architecture", ""),
    }
    if data.get("variant"):
        out["Variant"] = data["variant"]
    out["Os"] = data.get("os", "")
    if data.get("os.version"):
        out["OsVersion"] = data["os.version"]
    out["Size"] = size
    out["VirtualSize"] = size
    out["GraphDriver"] = {"Data": None, "Name": engine.driver}
    out["RootFS"] = {"Type": "layers", "Layers": diff_ids}
    last = img.last_tag_time
    out["Metadata"] = {"LastTagTime": format_time(last) if last else "0001-01-01T00:00:00Z"}
    _ = parse_time
    return out
