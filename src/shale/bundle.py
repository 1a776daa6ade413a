"""The OCI bundle of a container: ``config.json`` beside the mounted ``rootfs``.

Built at every start from the container record: user and groups from the image's passwd
(read inside the rootfs, never through a symlink out of it), docker's env, mounts for
volumes, binds, tmpfs and the /etc/hosts|hostname|resolv.conf files (written by
``network.endpoint.setup`` just before), the network namespace to join, ``--init``.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from shale.containers import Container
from shale.errors import InvalidArgument
from shale.fileutil import atomic_write

INIT_BINARIES = ("/usr/bin/docker-init", "/usr/sbin/docker-init", "/usr/bin/tini-static",
                 "/usr/bin/tini")


def _etc_files(c: Container) -> list[dict[str, Any]]:
    """The files ``network.endpoint.setup`` wrote (or, for ``--network container:X``, X's)."""
    from shale.network.endpoint import etc_sources

    return [{"destination": f"/etc/{n}", "type": "bind", "source": src,
             "options": ["rbind", "rprivate"]} for n, src in etc_sources(c).items()]


def _volume_mounts(c: Container) -> list[dict[str, Any]]:
    from shale.fsroot import Root
    from shale.volumes import populate

    out = []
    root = Root(c.rootfs)
    try:
        for m in c.record.get("Mounts", []):
            opts = ["rbind", "rprivate"] + ([] if m.get("RW", True) else ["ro"])
            if m["Type"] == "bind":
                src = Path(m["Source"])
                if not src.exists():
                    src.mkdir(parents=True, exist_ok=True)  # -v creates a missing host dir
            else:
                src = Path(m["Source"])
                try:
                    inside = root.resolve(m["Destination"].lstrip("/"))
                    populate(src, Path(str(c.rootfs) + inside))
                except (OSError, ValueError):
                    pass
            out.append({"destination": m["Destination"], "type": "bind",
                        "source": str(src), "options": opts})
    finally:
        root.close()
    for dst, o in (c.host_config.get("Tmpfs") or {}).items():
        options = ["nosuid", "nodev", "noexec"] + [x for x in o.split(",") if x]
        out.append({"destination": dst, "type": "tmpfs", "source": "tmpfs",
                    "options": options})
    return out


def _init_mount() -> tuple[dict[str, Any], str]:
    for p in INIT_BINARIES:
        if os.path.exists(p):
            return ({"destination": "/sbin/docker-init", "type": "bind", "source": p,
                     "options": ["rbind", "ro", "rprivate"]}, "/sbin/docker-init")
    raise InvalidArgument("--init: no docker-init or tini binary found on this host")


def _ulimits(c: Container) -> dict[str, tuple[int, int]]:
    return {u["Name"]: (u["Soft"], u["Hard"]) for u in c.host_config.get("Ulimits") or []}


def write_bundle(c: Container) -> None:
    from shale.fsroot import Root
    from shale.network.endpoint import spec_network
    from shale.runtime.spec import SpecOptions, build_spec, container_env
    from shale.runtime.users import resolve_user

    cfg, hc = c.config, c.host_config
    user = resolve_user(c.rootfs, cfg.get("User") or "")
    env = container_env(cfg.get("Env") or [], cfg.get("Hostname") or c.short_id,
                        tty=bool(cfg.get("Tty")))
    if not any(e.startswith("HOME=") for e in env):
        env.append(f"HOME={user.home or '/'}")
    args = [c.record["Path"], *c.record["Args"]]
    mounts = _etc_files(c) + _volume_mounts(c)
    if hc.get("Init"):
        m, init = _init_mount()
        mounts.append(m)
        args = [init, "--", *args]
    cwd = cfg.get("WorkingDir") or "/"
    if cwd != "/":
        with Root(c.rootfs) as root:
            root.mkdir_p(cwd.lstrip("/"))  # docker creates a missing WORKDIR
    sec = hc.get("SecurityOpt") or []
    opts = SpecOptions(
        args=args, env=env, cwd=cwd, uid=user.uid, gid=user.gid,
        additional_gids=list(user.additional_gids), hostname=cfg.get("Hostname") or c.short_id,
        tty=bool(cfg.get("Tty")), cap_add=hc.get("CapAdd") or [],
        cap_drop=hc.get("CapDrop") or [], privileged=bool(hc.get("Privileged")),
        readonly_rootfs=bool(hc.get("ReadonlyRootfs")), mounts=mounts,
        no_new_privileges=any(s.startswith("no-new-privileges") and not s.endswith("false")
                              for s in sec),
        ulimits=_ulimits(c),
        network=spec_network(c),
        seccomp="seccomp=unconfined" not in sec, cgroups_path=f"/shale/{c.id}",
        root_path=str(c.rootfs), memory=int(hc.get("Memory") or 0),
        memory_swap=int(hc.get("MemorySwap") or 0), nano_cpus=int(hc.get("NanoCpus") or 0),
        cpu_shares=int(hc.get("CpuShares") or 0), cpuset_cpus=hc.get("CpusetCpus") or "",
        pids_limit=int(hc.get("PidsLimit") or 0))
    warnings: list[str] = []
    spec = build_spec(opts, warnings)
    # compact: json's C encoder (indent= takes the pure-Python one, 4x slower)
    atomic_write(c.bundle / "config.json", json.dumps(spec).encode(), durable=False)
    if warnings:
        (c.dir / "warnings").write_text("\n".join(warnings) + "\n")
    else:
        (c.dir / "warnings").unlink(missing_ok=True)
    _ = shutil
