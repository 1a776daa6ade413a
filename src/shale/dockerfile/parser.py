"""Typed, checked Dockerfile instructions and stages (BuildKit's ``instructions`` package).

``parse`` runs the line layer (``syntax.py``), then checks every instruction the way
BuildKit's ``instructions.Parse`` does (argument counts, builder flags, JSON-only SHELL,
ONBUILD triggers, stage names) and splits the file into stages. Nothing is expanded here:
``$VAR`` references, quotes in ENV/LABEL/ARG values and ``--chown`` values are left as
written, because their values depend on build arguments and on the stage's environment;
the builder expands them with ``shell.Lexer(dockerfile.escape)``.

Errors are ``DockerfileParseError`` (a ``DockerfileError``) whose message names the file and
line: ``Dockerfile:3: unknown instruction: FOOO``.

``parse_instruction`` / ``parse_changes`` parse the ``-c`` changes of ``docker import`` and
``docker commit`` and apply the same checks plus Docker's list of allowed instructions.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from shale.dockerfile._go import quote
from shale.dockerfile.health import HEALTHCHECK_FLAGS, healthcheck_config
from shale.dockerfile.syntax import DockerfileParseError, Heredoc, Node, parse_ast, parse_heredoc
from shale.errors import DockerfileError
from shale.record import field, record

__all__ = [
    "CHANGE_COMMANDS",
    "Dockerfile",
    "Instruction",
    "Stage",
    "parse",
    "parse_changes",
    "parse_instruction",
]

_BOOL, _STRING, _STRINGS = "bool", "string", "strings"
_FLAGS: dict[str, dict[str, str]] = {
    "add": {
        "chown": _STRING,
        "chmod": _STRING,
        "link": _BOOL,
        "keep-git-dir": _BOOL,
        "checksum": _STRING,
        "unpack": _BOOL,
        "exclude": _STRINGS,
    },
    "copy": {
        "from": _STRING,
        "chown": _STRING,
        "chmod": _STRING,
        "link": _BOOL,
        "parents": _BOOL,
        "exclude": _STRINGS,
    },
    "from": {"platform": _STRING},
    "run": {"mount": _STRINGS, "network": _STRING, "security": _STRING, "device": _STRINGS},
    "healthcheck": dict.fromkeys(HEALTHCHECK_FLAGS, _STRING),
}
"""Builder flags each instruction accepts (BuildKit's current set) and their types."""

CHANGE_COMMANDS = frozenset(
    (
        "cmd",
        "entrypoint",
        "env",
        "expose",
        "healthcheck",
        "label",
        "onbuild",
        "stopsignal",
        "user",
        "volume",
        "workdir",
    )
)
"""Instructions ``import -c`` / ``commit -c`` accept. Docker 20.10 accepts HEALTHCHECK but
not STOPSIGNAL; newer engines accept both, and so do we."""

_STAGE_NAME = re.compile(r"[a-z][a-z0-9-_.]*\Z")
_ONBUILD_PREFIX = re.compile(r"(?i)^\s*ONBUILD\s*")


class _Fail(Exception):
    """Internal: a check failed; the caller adds file and line."""


@record(frozen=True)
class Instruction:
    """One checked instruction.

    - ``cmd``: lower-case keyword; ``original``: the logical line as Docker prints it in
      ``Step N/M : ...`` (continuations joined, comments dropped).
    - ``args``: BuildKit's arguments, unexpanded. Shell form RUN/CMD/ENTRYPOINT/SHELL is one
      string; exec form (``json``) one string per element; ADD/COPY/VOLUME/EXPOSE/FROM are
      whitespace-separated words; ARG words keep their quotes (``abc="1 2"``); ENV and LABEL
      are ``key, value, sep`` triples (sep ``"="``, or ``""`` for the legacy ``ENV k v``
      form): use ``pairs()``; HEALTHCHECK is the type (``CMD``/``NONE``) then the command;
      ONBUILD is the trigger's text (the wrapped instruction is also in ``sub``).
    - ``flags``: builder flags by name. Booleans are ``["true"]``/``["false"]``; ``--mount``,
      ``--exclude`` and ``--device`` may repeat. ``raw_flags`` keeps them as written.
    - ``heredocs``: the ``<<NAME`` documents of RUN/COPY/ADD, in order.
    - ``line``/``end_line``: first and last source line (1-based), heredoc bodies included.
    """

    cmd: str
    original: str
    args: list[str]
    json: bool = False
    flags: dict[str, list[str]] = field(default_factory=dict)
    heredocs: list[Heredoc] = field(default_factory=list)
    line: int = 0
    end_line: int = 0
    raw_flags: list[str] = field(default_factory=list)
    sub: Instruction | None = None

    @property
    def keyword(self) -> str:
        return self.cmd.upper()

    def pairs(self) -> list[tuple[str, str]]:
        """ENV/LABEL ``(key, value)`` pairs, unexpanded (quotes still in place)."""
        return [(self.args[i], self.args[i + 1]) for i in range(0, len(self.args) - 2, 3)]

    def flag(self, name: str, default: str = "") -> str:
        """The last value given for a flag, or ``default``."""
        values = self.flags.get(name)
        return values[-1] if values else default


@record(frozen=True)
class Stage:
    """A build stage: its FROM and the instructions up to the next FROM.

    ``name`` is the lower-cased ``AS`` name ("" if none); ``base`` and ``platform`` are the
    FROM image and ``--platform`` value as written (the builder expands them with the meta
    args).
    """

    index: int
    name: str
    base: str
    platform: str
    from_instruction: Instruction
    instructions: list[Instruction]


@record(frozen=True)
class Dockerfile:
    """A parsed Dockerfile. ``meta_args`` are the ARGs before the first FROM; ``instructions``
    is every instruction in order (meta args and FROMs included)."""

    filename: str
    directives: dict[str, str]
    escape: str
    instructions: list[Instruction]
    meta_args: list[Instruction]
    stages: list[Stage]
    warnings: list[str] = field(default_factory=list)

    @property
    def syntax(self) -> str:
        return self.directives.get("syntax", "")

    def stage(self, ref: str | int) -> Stage:
        """A stage by AS name (case-insensitive) or index; KeyError if there is none."""
        for st in self.stages:
            if (isinstance(ref, int) and st.index == ref) or st.name == str(ref).lower():
                return st
        raise KeyError(ref)


# -- flags (bflag.go) --------------------------------------------------------------------------


def _parse_flags(cmd: str, raw: list[str]) -> dict[str, list[str]]:
    known = _FLAGS.get(cmd, {})
    used: dict[str, list[str]] = {}
    for arg in raw:
        if arg == "--":
            break
        if not arg.startswith("--"):
            raise _Fail(f"arg should start with -- : {arg}")
        name, has_value, value = arg[2:].partition("=")
        kind = known.get(name)
        if kind is None:
            raise _Fail(f"unknown flag: {name}")
        if name in used and kind != _STRINGS:
            raise _Fail(f"duplicate flag specified: {name}")
        used.setdefault(name, []).append(_flag_value(name, kind, bool(has_value), value))
    return used


def _flag_value(name: str, kind: str, has_value: bool, value: str) -> str:
    if kind != _BOOL:
        if not has_value:
            raise _Fail(f"missing a value on flag: {name}")
        return value
    if has_value and value == "":
        raise _Fail(f"missing a value on flag: {name}")
    lower = value.lower()
    if lower in ("", "true", "false"):
        return lower or "true"
    raise _Fail(f"expecting boolean value for flag {name}, not: {value}")


def _lenient_flags(raw: list[str]) -> dict[str, list[str]]:
    """Flags of an ONBUILD trigger: recorded, not checked (BuildKit checks them when the
    trigger runs in a child build)."""
    out: dict[str, list[str]] = {}
    for arg in raw:
        name, _, value = arg.removeprefix("--").partition("=")
        out.setdefault(name, []).append(value)
    return out


# -- per-instruction checks (parse.go) ---------------------------------------------------------


def _at_least_one(cmd: str, args: list[str]) -> None:
    if not args:
        raise _Fail(f"{cmd.upper()} requires at least one argument")


def _exactly_one(cmd: str, args: list[str]) -> None:
    if len(args) != 1:
        raise _Fail(f"{cmd.upper()} requires exactly one argument")


def _check_kvps(cmd: str, args: list[str]) -> None:
    _at_least_one(cmd, args)
    if any(args[i] == "" for i in range(0, len(args), 3)):
        raise _Fail(f"{cmd.upper()} names can not be blank")


def _check_arg(node: Node) -> None:
    _at_least_one("arg", node.args)
    if any(a.partition("=")[0] == "" for a in node.args):
        raise _Fail("ARG names can not be blank")


def _check_copy(node: Node) -> None:
    cmd = node.value.upper()
    if len(node.args) < 2:
        raise _Fail(
            f"{cmd} requires at least two arguments, but only one was provided. "
            "Destination could not be determined"
        )
    if parse_heredoc(node.args[-1]) is not None:
        raise _Fail(f"{cmd} cannot accept a heredoc as a destination")


def _check_from(node: Node) -> None:
    args = node.args
    if len(args) == 3 and args[1].lower() == "as":
        if not _STAGE_NAME.match(args[2].lower()):
            raise _Fail(
                f"invalid name for build stage: {quote(args[2])}, "
                "name can't start with a number or contain symbols"
            )
    elif len(args) != 1:
        raise _Fail("FROM requires either one or three arguments")


def _check_onbuild(node: Node) -> None:
    if node.sub is None:
        raise _Fail("ONBUILD requires at least one argument")
    trigger = node.sub.value.upper()
    if trigger == "ONBUILD":
        raise _Fail("Chaining ONBUILD via `ONBUILD ONBUILD` isn't allowed")
    if trigger in ("MAINTAINER", "FROM"):
        raise _Fail(f"{trigger} isn't allowed as an ONBUILD trigger")


def _check_shell(node: Node) -> None:
    if not node.args:
        raise _Fail("SHELL requires at least one argument")
    if not node.json:
        raise _Fail("SHELL requires the arguments to be in JSON form")


def _check_volume(node: Node) -> None:
    _at_least_one("volume", node.args)
    if any(a.strip() == "" for a in node.args):
        raise _Fail("VOLUME specified can not be an empty string")


def _check_health(node: Node, flags: dict[str, list[str]]) -> None:
    try:
        healthcheck_config(node.args, node.json, flags)
    except ValueError as exc:
        raise _Fail(str(exc)) from None


def _check(cmd: str, node: Node, flags: dict[str, list[str]]) -> None:
    args = node.args
    if cmd in ("env", "label"):
        _check_kvps(cmd, args)
    elif cmd in ("maintainer", "workdir", "user", "stopsignal"):
        _exactly_one(cmd, args)
    elif cmd == "expose":
        _at_least_one(cmd, args)
    elif cmd in ("add", "copy"):
        _check_copy(node)
    elif cmd == "arg":
        _check_arg(node)
    elif cmd == "from":
        _check_from(node)
    elif cmd == "onbuild":
        _check_onbuild(node)
    elif cmd == "shell":
        _check_shell(node)
    elif cmd == "volume":
        _check_volume(node)
    elif cmd == "healthcheck":
        _check_health(node, flags)


_KNOWN = CHANGE_COMMANDS | {"add", "arg", "copy", "from", "maintainer", "run", "shell"}


def _instruction(node: Node, *, strict: bool = True) -> Instruction:
    cmd = node.value.lower()
    if cmd not in _KNOWN:
        raise _Fail(f"unknown instruction: {node.value.upper()}")
    if strict:
        # HEALTHCHECK NONE ignores flags entirely in BuildKit.
        none = cmd == "healthcheck" and bool(node.args) and node.args[0].upper() == "NONE"
        flags = {} if none else _parse_flags(cmd, node.flags)
        _check(cmd, node, flags)
    else:
        flags = _lenient_flags(node.flags)
    sub = None
    args = node.args
    if node.sub is not None:
        sub = _instruction(node.sub, strict=False) if node.sub.value.lower() in _KNOWN else None
        args = [_ONBUILD_PREFIX.sub("", node.original, count=1)]
    return Instruction(
        cmd, node.original, list(args), node.json, flags, list(node.heredocs),
        node.start_line, node.end_line, list(node.flags), sub,
    )  # fmt: skip


def _checked(node: Node, filename: str) -> Instruction:
    try:
        return _instruction(node)
    except _Fail as exc:
        raise DockerfileParseError(filename, node.start_line, str(exc), node.end_line) from None


# -- stages ------------------------------------------------------------------------------------


def _stages(instrs: list[Instruction], filename: str) -> tuple[list[Instruction], list[Stage]]:
    meta: list[Instruction] = []
    stages: list[Stage] = []
    current: list[Instruction] = []
    for ins in instrs:
        if ins.cmd == "from":
            current = []
            name = ins.args[2].lower() if len(ins.args) == 3 else ""
            base = ins.args[0]
            stages.append(Stage(len(stages), name, base, ins.flag("platform"), ins, current))
        elif stages:
            current.append(ins)
        elif ins.cmd == "arg":
            meta.append(ins)
        else:
            raise DockerfileParseError(filename, ins.line, "no build stage in current context")
    return meta, stages


def parse(text: str, filename: str = "Dockerfile") -> Dockerfile:
    """Parse and check a Dockerfile. Raises DockerfileParseError (``file:line: message``)."""
    ast = parse_ast(text, filename)
    instrs = [_checked(node, filename) for node in ast.nodes]
    meta, stages = _stages(instrs, filename)
    if not stages:
        line = instrs[-1].end_line if instrs else 1
        raise DockerfileParseError(filename, line, "dockerfile contains no stages to build")
    return Dockerfile(
        filename, dict(ast.directives), ast.escape, instrs, meta, stages, ast.warnings
    )


# -- import -c / commit -c ---------------------------------------------------------------------


def parse_changes(changes: Sequence[str]) -> list[Instruction]:
    """Parse ``-c`` changes as Docker does: joined with newlines and parsed as one file, then
    every instruction must be one Docker allows in a change. Errors carry Docker's message
    (``run is not a valid change command``), without a file name."""
    try:
        ast = parse_ast("\n".join(changes), "change")
    except DockerfileParseError as exc:
        raise DockerfileError(exc.detail) from None
    for node in ast.nodes:
        if node.value.lower() not in CHANGE_COMMANDS:
            raise DockerfileError(f"{node.value.lower()} is not a valid change command")
    out = []
    for node in ast.nodes:
        try:
            out.append(_instruction(node))
        except _Fail as exc:
            raise DockerfileError(str(exc)) from None
    return out


def parse_instruction(line: str) -> Instruction:
    """Parse one ``-c`` change (see ``parse_changes``); it must hold exactly one instruction."""
    instrs = parse_changes([line])
    if len(instrs) != 1:
        raise DockerfileError(f"expected one instruction in change {quote(line)}")
    return instrs[0]
