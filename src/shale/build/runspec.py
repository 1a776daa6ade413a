"""What a RUN step is, before anything runs: its command line (shell or exec form,
heredocs) and its ``--mount`` options. Pure functions, kept apart from ``run.py`` so a
cache hit never loads the container machinery.
"""

from __future__ import annotations

import posixpath
from collections.abc import Callable

from shale.dockerfile import Instruction
from shale.dockerfile.syntax import parse_heredoc
from shale.errors import DockerfileError
from shale.record import field, record

PIPES = "/dev/pipes"


@record
class Command:
    """What a RUN executes: ``argv``, plus a script file for a ``#!`` heredoc (mounted
    read-only at ``/dev/pipes/<name>``, as BuildKit does)."""

    argv: list[str]
    script: tuple[str, bytes] | None = None


def command(instr: Instruction, shell: list[str]) -> Command:
    """BuildKit's rules: a lone heredoc starting with ``#!`` is a script file that runs
    itself; a lone heredoc otherwise is the shell's command; a command with heredocs is
    given to the shell with the documents after it, as a shell reads them."""
    if instr.json:
        return Command(list(instr.args))
    text = " ".join(instr.args)
    if instr.heredocs:
        if parse_heredoc(text.strip()) is not None:
            doc = instr.heredocs[0]
            data = doc.body
            if data.startswith("#!"):
                return Command([posixpath.join(PIPES, doc.name)], (doc.name, data.encode()))
            return Command([*shell, data])
        text += "".join("\n" + d.content + d.name for d in instr.heredocs)
    return Command([*shell, text])


# ---- --mount -------------------------------------------------------------------------------
@record
class MountSpec:
    type: str = "bind"
    target: str = ""
    source: str = ""
    src_from: str = ""
    readonly: bool | None = None
    id: str = ""
    sharing: str = "shared"
    mode: int = 0o755
    uid: int = 0
    gid: int = 0
    size: str = ""
    required: bool = False           # secret/ssh: fail when the build was not given it
    env: str = ""                    # secret: also (or only) as this environment variable
    extra: dict[str, str] = field(default_factory=dict)

    def key(self) -> str:
        """The mount's part of the step's cache key (a cache mount's content is not)."""
        key = f"{self.type},{self.target},{self.source},{self.src_from},{self.readonly}," \
              f"{self.id},{self.sharing},{self.mode:o},{self.uid},{self.gid},{self.size}"
        # a secret's value never is: BuildKit leaves it out too, so rotating one reuses
        return key + f",{self.required},{self.env}" if self.type in ("secret", "ssh") else key


_KEYS = {"type", "target", "dst", "destination", "source", "src", "from", "ro", "readonly",
         "rw", "readwrite", "id", "sharing", "mode", "uid", "gid", "size", "required", "env"}


def _bool(key: str, value: str | None) -> bool:
    if value is None or value.lower() == "true":
        return True
    if value.lower() == "false":
        return False
    raise DockerfileError(f"invalid value for {key}: {value}")


def parse_mount(text: str, expand: Callable[[str], str]) -> MountSpec:
    """One ``--mount`` value (CSV of ``key=value``; values expanded, ``from`` is not)."""
    m = MountSpec()
    import csv  # only for RUN --mount: 0.5 ms off every cached build

    fields = next(csv.reader([text]), [])
    mode_set = False
    for f in fields:
        key, sep, raw = f.partition("=")
        key = key.strip().lower()
        if key not in _KEYS:
            raise DockerfileError(f"unexpected key '{key}' in '{f}'")
        value = (raw if key == "from" else expand(raw)) if sep else None
        if key == "type":
            m.type = value or ""
        elif key in ("target", "dst", "destination"):
            m.target = value or ""
        elif key in ("source", "src"):
            m.source = value or ""
        elif key == "from":
            m.src_from = value or ""
        elif key in ("ro", "readonly"):
            m.readonly = _bool(key, value)
        elif key in ("rw", "readwrite"):
            m.readonly = not _bool(key, value)
        elif key == "id":
            m.id = value or ""
        elif key == "sharing":
            if value not in ("shared", "private", "locked"):
                raise DockerfileError(f"unsupported sharing value \"{value}\"")
            m.sharing = value
        elif key == "mode":
            try:
                m.mode = int(value or "", 8)
            except ValueError:
                raise DockerfileError(f"invalid value for mode: {value}") from None
            mode_set = True
        elif key == "required":
            m.required = _bool(key, value)
        elif key == "env":
            m.env = value or ""
        elif key in ("uid", "gid"):
            try:
                setattr(m, key, int(value or ""))
            except ValueError:
                raise DockerfileError(f"invalid value for {key}: {value}") from None
        else:
            m.extra[key] = value or ""
            if key == "size":
                m.size = value or ""
    if m.type not in ("bind", "cache", "tmpfs", "secret", "ssh"):
        raise DockerfileError(f"unsupported mount type \"{m.type}\"")
    if m.type in ("secret", "ssh"):
        _secret_defaults(m, mode_set)
    elif m.env:
        raise DockerfileError(f"unexpected key 'env' for a {m.type} mount")
    if not m.target and not m.env:
        raise DockerfileError("mount destination (target) is required")
    if m.type == "tmpfs" and (m.source or m.src_from):
        raise DockerfileError("tmpfs mounts take no source or from")
    return m


def _secret_defaults(m: MountSpec, mode_set: bool) -> None:
    """BuildKit's defaults: a secret is ``/run/secrets/<id>`` (0400), the id defaulting to
    the target's base name; an ssh agent socket is ``/run/buildkit/ssh_agent.0`` (0600)
    for the ``default`` id. A secret with ``env=`` and no target is only a variable."""
    if m.source or m.src_from:
        raise DockerfileError(f"{m.type} mounts take no source or from")
    if m.type == "secret":
        if not m.id:
            if not m.target:
                raise DockerfileError("one of source, target required")
            m.id = posixpath.basename(m.target)
        if not m.target and not m.env:
            m.target = f"/run/secrets/{m.id}"
        mode = 0o400
    else:
        if m.env:
            raise DockerfileError("unexpected key 'env' for an ssh mount")
        m.id = m.id or "default"
        m.target = m.target or "/run/buildkit/ssh_agent.0"
        mode = 0o600
    if not mode_set:
        m.mode = mode
