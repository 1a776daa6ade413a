"""``build --secret`` and ``build --ssh``: what a ``RUN --mount=type=secret|ssh`` step may
use, as BuildKit's client (buildx) takes them. A secret is read when a step mounts it, put
in a private tmpfs file for that step alone and never written to a layer, an image, the
cache key or the build output.
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from pathlib import Path

from shale.errors import DockerfileError, InvalidArgument
from shale.record import field, record

MAX_SECRET_SIZE = 500 * 1024  # BuildKit's limit


@record
class SecretSource:
    id: str
    file: str = ""
    env: str = ""


@record
class Session:
    """What the client offers this build: secrets by id, ssh agent sockets by id."""

    secrets: dict[str, SecretSource] = field(default_factory=dict)
    ssh: dict[str, str] = field(default_factory=dict)

    def secret(self, ident: str, required: bool) -> bytes | None:
        src = self.secrets.get(ident)
        if src is None:
            if required:
                raise DockerfileError(f"secret {ident}: not found")
            return None
        if src.env:
            value = os.environ.get(src.env)
            if value is None:
                raise DockerfileError(f"secret {ident}: environment variable {src.env} is "
                                      "not set")
            return value.encode()
        try:
            with open(src.file, "rb") as f:
                data = f.read(MAX_SECRET_SIZE + 1)
        except OSError as e:
            raise DockerfileError(f"secret {ident}: {e.strerror}: {src.file}") from None
        if len(data) > MAX_SECRET_SIZE:
            raise DockerfileError(f"secret {ident} too big. max size 500KB")
        return data

    def agent(self, ident: str, required: bool) -> str | None:
        sock = self.ssh.get(ident)
        if sock is None and required:
            raise DockerfileError(f"no SSH key {ident!r} forwarded from the client")
        return sock


def parse_secret(spec: str) -> SecretSource:
    """``id=ID[,type=file|env][,src=PATH|source=PATH][,env=VAR]``; with neither a file nor
    a variable, the variable named ID if it is set, else the file named ID (buildx)."""
    ident = typ = file = env = ""
    for part in spec.split(","):
        key, _, value = part.partition("=")
        key = key.strip().lower()
        if key == "type":
            if value not in ("file", "env"):
                raise InvalidArgument(f"unsupported secret type {value!r}")
            typ = value
        elif key == "id":
            ident = value
        elif key in ("source", "src"):
            file = value
        elif key == "env":
            env = value
        else:
            raise InvalidArgument(f"unexpected key '{key}' in '{part}'")
    if not ident:
        raise InvalidArgument(f"secret missing ID: --secret {spec}")
    if typ == "env" and not env:
        env, file = file or ident, ""
    if not env and not file:
        if ident in os.environ:
            env = ident
        else:
            file = ident
    if file:
        try:
            size = os.stat(file).st_size
        except OSError as e:
            raise InvalidArgument(f"failed to stat {file}: {e.strerror}") from None
        if size > MAX_SECRET_SIZE:
            raise InvalidArgument(f"secret {ident} too big. max size 500KB")
    return SecretSource(ident, file, env)


def parse_ssh(spec: str) -> tuple[str, str]:
    """``default`` (``$SSH_AUTH_SOCK``) or ``ID=SOCKET``: an agent's socket. Key files
    would need an agent of our own; point at a running one instead."""
    ident, sep, path = spec.partition("=")
    if not sep:
        path = os.environ.get("SSH_AUTH_SOCK", "")
        if not path:
            raise InvalidArgument(f"--ssh {spec}: SSH_AUTH_SOCK is not set (start "
                                  "ssh-agent or give ID=SOCKET)")
    paths = path.split(",")
    if len(paths) != 1:
        raise InvalidArgument(f"--ssh {spec}: one agent socket per id")
    try:
        mode = os.stat(paths[0]).st_mode
    except OSError as e:
        raise InvalidArgument(f"--ssh {spec}: {e.strerror}: {paths[0]}") from None
    if not stat.S_ISSOCK(mode):
        raise InvalidArgument(f"--ssh {spec}: {paths[0]} is not an agent socket (key files "
                              "are not supported: ssh-add them to an agent)")
    return ident or "default", os.path.abspath(paths[0])


def secret_file(data: bytes, mode: int, uid: int, gid: int, tmpdir: Path) -> Path:
    """The secret as a file for one step's bind mount: on tmpfs when the host has one,
    so it never reaches a disk."""
    fd, name = tempfile.mkstemp(dir=tmpdir)
    try:
        os.write(fd, data)
        os.fchown(fd, uid, gid)
        os.fchmod(fd, mode)
    finally:
        os.close(fd)
    return Path(name)


def private_dir() -> contextlib.AbstractContextManager[str]:
    """A 0700 directory for one step's secret files, on tmpfs when the host has one;
    the next build removes what a killed one left."""
    from shale.fileutil import scratch

    shm = "/dev/shm"
    return scratch("shale-secrets-", shm if os.path.isdir(shm) and os.access(shm, os.W_OK)
                   else None)
