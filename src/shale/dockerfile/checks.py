"""BuildKit's build checks (``# check=skip=...;error=true``, docs "Build checks"): the
static rules, with BuildKit's names and messages. Pure functions over a parsed Dockerfile;
the builder prints the warnings after the build, or fails before it with ``error=true``.

UndefinedVar needs the build's variables: ``VarLexer`` records it as the builder expands
words. Not here: InvalidBaseImagePlatform, CopyIgnoredFile and the experimental
InvalidDefinitionDescription.
"""

from __future__ import annotations

import re
from collections import Counter

from shale.dockerfile.parser import Dockerfile, Instruction
from shale.dockerfile.shell import Env, Expansion, Lexer
from shale.errors import DockerfileError
from shale.record import record

PLATFORM_ARGS = frozenset(("BUILDPLATFORM", "BUILDOS", "BUILDARCH", "BUILDVARIANT",
                           "TARGETPLATFORM", "TARGETOS", "TARGETARCH", "TARGETVARIANT"))
_SECRET_WORDS = frozenset(("apikey", "auth", "credential", "credentials", "key", "password",
                           "pword", "passwd", "secret", "token"))
_ONCE = ("cmd", "entrypoint", "healthcheck")
_VAR = re.compile(r"\$(?:\{([A-Za-z_][A-Za-z0-9_]*)[^}]*\}|([A-Za-z_][A-Za-z0-9_]*))")


@record(frozen=True)
class Violation:
    rule: str
    message: str
    line: int

    def __str__(self) -> str:
        return f"{self.rule}: {self.message} (line {self.line})"


@record(frozen=True)
class CheckConfig:
    skip: frozenset[str] = frozenset()
    skip_all: bool = False
    error: bool = False


def config(directive: str, override: str | None = None) -> CheckConfig:
    """``skip=<Rule,Rule|all>;error=<bool>`` from the ``check`` directive, or from the
    ``BUILDKIT_DOCKERFILE_CHECK`` build arg, which wins."""
    text = override if override is not None else directive
    skip: set[str] = set()
    error = False
    for part in filter(None, (p.strip() for p in text.split(";"))):
        key, sep, value = part.partition("=")
        key = key.strip().lower()
        if key == "skip" and sep:
            skip |= {r.strip() for r in value.split(",") if r.strip()}
        elif key == "error" and sep:
            if value.strip().lower() not in ("true", "false"):
                raise DockerfileError(f"failed to parse check options: invalid boolean value "
                                      f"{value.strip()!r} for error")
            error = value.strip().lower() == "true"
        else:
            raise DockerfileError(f"failed to parse check options: invalid check option "
                                  f"{part!r}")
    return CheckConfig(frozenset(skip - {"all"}), "all" in skip, error)


def run(df: Dockerfile, cfg: CheckConfig) -> list[Violation]:
    """Every static violation the configuration does not skip, in line order."""
    if cfg.skip_all:
        return []
    return select(_casing(df) + _stages(df) + _instructions(df), cfg)


def select(found: list[Violation], cfg: CheckConfig) -> list[Violation]:
    """The violations ``cfg`` does not skip, in line order."""
    if cfg.skip_all:
        return []
    return sorted((w for w in found if w.rule not in cfg.skip), key=lambda w: w.line)


def failure(filename: str, found: list[Violation]) -> DockerfileError:
    rules = ", ".join(dict.fromkeys(w.rule for w in found))
    return DockerfileError(f"{filename}:{found[0].line}: lint violation found for rules: "
                           f"{rules}")


def report(found: list[Violation]) -> str:
    """BuildKit's summary after a build."""
    head = f"{len(found)} warning{'s' if len(found) != 1 else ''} found:"
    return "\n".join([head, *(f" - {w}" for w in found)])


# ---- rules ---------------------------------------------------------------------------------
def _keyword(instr: Instruction) -> str:
    return instr.original.split(None, 1)[0] if instr.original.strip() else instr.cmd


def _casing(df: Dockerfile) -> list[Violation]:
    words = [_keyword(i) for i in df.instructions]
    cased = [w for w in words if w.isupper() or w.islower()]
    upper = sum(w.isupper() for w in cased)
    majority = "uppercase" if upper >= len(cased) - upper else "lowercase"
    out = []
    for instr, w in zip(df.instructions, words, strict=True):
        if (majority == "uppercase" and not w.isupper()) or \
                (majority == "lowercase" and not w.islower()):
            out.append(Violation("ConsistentInstructionCasing",
                               f"Command '{w}' should match the case of the command majority "
                               f"({majority})", instr.line))
    return out


def _stages(df: Dockerfile) -> list[Violation]:
    out = []
    seen: Counter[str] = Counter()
    declared = {a.partition("=")[0] for m in df.meta_args for a in m.args}
    for st in df.stages:
        fr = st.from_instruction
        if len(fr.args) >= 3:
            from_kw, as_kw, name = _keyword(fr), fr.args[1], fr.args[2]
            if from_kw.isupper() != as_kw.isupper() or from_kw.islower() != as_kw.islower():
                out.append(Violation("FromAsCasing", f"'{as_kw}' and '{from_kw}' keywords' "
                                   "casing do not match", fr.line))
            if name != name.lower():
                out.append(Violation("StageNameCasing", f"Stage name '{name}' should be "
                                   "lowercase", fr.line))
            if st.name in ("scratch", "context"):
                out.append(Violation("ReservedStageName", "Stage name should not use the same "
                                   f'name as reserved stage "{st.name}"', fr.line))
            seen[st.name] += 1
            if seen[st.name] == 2:
                out.append(Violation("DuplicateStageName", f'Duplicate stage name "{st.name}", '
                                   "stage names should be unique", fr.line))
        for m in _VAR.finditer(fr.args[0] if fr.args else ""):
            var = m.group(1) or m.group(2)
            if var not in declared and var not in PLATFORM_ARGS:
                out.append(Violation("UndefinedArgInFrom", f"FROM argument '{var}' is not "
                                   "declared", fr.line))
        platform = fr.flag("platform")
        if platform in ("$TARGETPLATFORM", "${TARGETPLATFORM}"):
            out.append(Violation("RedundantTargetPlatform", f"Setting platform to predefined "
                               f"{platform} in FROM is redundant as this is the default "
                               "behavior", fr.line))
        elif platform and "$" not in platform and \
                platform.rstrip("/").rsplit("/", 1)[-1] not in st.name:
            # a constant is fine where the stage's name says which platform it is for
            out.append(Violation("FromPlatformFlagConstDisallowed", "FROM --platform flag should "
                               f'not use constant value "{platform}"', fr.line))
    return out


def _instructions(df: Dockerfile) -> list[Violation]:
    out: list[Violation] = []
    for st in df.stages:
        counts: Counter[str] = Counter()
        custom_shell = False
        absolute_workdir = False
        for instr in st.instructions:
            out += _one(instr, custom_shell, absolute_workdir)
            custom_shell |= instr.cmd == "shell"
            if instr.cmd == "workdir" and instr.args and instr.args[0].startswith(("/", "$")):
                absolute_workdir = True
            if instr.cmd in _ONCE:
                counts[instr.cmd] += 1
        for instr in st.instructions:  # every one but the last, which wins
            if instr.cmd in _ONCE and counts[instr.cmd] > 1:
                counts[instr.cmd] -= 1
                out.append(Violation("MultipleInstructionsDisallowed",
                                   f"Multiple {instr.cmd.upper()} instructions should not be "
                                   "used in the same stage because only the last one will be "
                                   "used", instr.line))
    for m in df.meta_args:
        out += _one(m, False, True)
    return out


def _one(instr: Instruction, custom_shell: bool, absolute_workdir: bool) -> list[Violation]:
    cmd, out = instr.cmd, []
    if cmd in ("cmd", "entrypoint") and not instr.json and not custom_shell:
        out.append(Violation("JSONArgsRecommended", f"JSON arguments recommended for "
                           f"{cmd.upper()} to prevent unintended behavior related to OS "
                           "signals", instr.line))
    elif cmd == "maintainer":
        out.append(Violation("MaintainerDeprecated", "Maintainer instruction is deprecated in "
                           "favor of using label", instr.line))
    elif cmd in ("env", "label") and any(instr.args[i + 2] == ""
                                         for i in range(0, len(instr.args) - 2, 3)):
        out.append(Violation("LegacyKeyValueFormat", f'"{cmd.upper()} key=value" should be used '
                           f'instead of legacy "{cmd.upper()} key value" format', instr.line))
    elif cmd == "workdir" and instr.args and not absolute_workdir and \
            not instr.args[0].startswith(("/", "$")):
        out.append(Violation("WorkdirRelativePath", f'Relative workdir "{instr.args[0]}" can '
                           "have unexpected results if the base image changes", instr.line))
    if cmd in ("env", "arg"):
        names = [instr.args[i] for i in range(0, len(instr.args), 3)] if cmd == "env" else \
            [a.partition("=")[0] for a in instr.args]
        for name in names:
            if _looks_secret(name):
                out.append(Violation("SecretsUsedInArgOrEnv", "Do not use ARG or ENV "
                                   f'instructions for sensitive data ({cmd.upper()} "{name}")',
                                   instr.line))
    return out


def _looks_secret(name: str) -> bool:
    words = name.lower().split("_")
    return "public" not in words and any(w in _SECRET_WORDS for w in words)


# ---- UndefinedVar, as the build expands words ----------------------------------------------
_DEFAULTED = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*):?[-+?]")


class VarLexer(Lexer):
    """The builder's lexer: a variable that was looked up and not found while an
    instruction is ``current`` (and is not one the stage ``known``s: declared ARGs without
    a value, the automatic ones) is an UndefinedVar. One with a default (``${v:-x}``) is
    not: the Dockerfile says what happens then."""

    def __init__(self, escape: str) -> None:
        super().__init__(escape)
        self.current: Instruction | None = None
        self.known: set[str] = set()
        self.found: dict[tuple[int, str], Violation] = {}

    def process(self, word: str, env: Env) -> Expansion:
        exp = super().process(word, env)
        if self.current is not None and exp.unmatched:
            defaulted = set(_DEFAULTED.findall(word))
            for name in sorted(exp.unmatched - self.known - defaulted - PLATFORM_ARGS):
                line = self.current.line
                self.found.setdefault((line, name), Violation(
                    "UndefinedVar", f"Usage of undefined variable '${name}'", line))
        return exp
