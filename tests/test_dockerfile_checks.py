"""BuildKit's build checks: each static rule fires on its docs' bad example and not on the
good one; ``# check=skip=...;error=true`` and ``BUILDKIT_DOCKERFILE_CHECK``; the build
prints them after it or, with ``error=true``, fails before its first step."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from conftest import Cli

from shale.dockerfile import checks, parse
from shale.errors import DockerfileError


def lint(text: str, override: str | None = None) -> list[tuple[str, int]]:
    df = parse(text, "Dockerfile")
    cfg = checks.config(df.directives.get("check", ""), override)
    return [(v.rule, v.line) for v in checks.run(df, cfg)]


@pytest.mark.parametrize(("rule", "bad", "good"), [
    ("StageNameCasing", "FROM busybox AS Build\n", "FROM busybox AS build\n"),
    ("FromAsCasing", "FROM busybox as build\n", "FROM busybox AS build\n"),
    ("ConsistentInstructionCasing", "FROM busybox\nRUN true\nrun true\n",
     "from busybox\nrun true\n"),
    ("DuplicateStageName", "FROM busybox AS a\nFROM busybox AS a\n",
     "FROM busybox AS a\nFROM busybox AS b\n"),
    ("ReservedStageName", "FROM busybox AS scratch\n", "FROM busybox AS base\n"),
    ("JSONArgsRecommended", "FROM busybox\nCMD echo hi\n",
     'FROM busybox\nCMD ["echo", "hi"]\n'),
    ("MaintainerDeprecated", "FROM busybox\nMAINTAINER me\n",
     'FROM busybox\nLABEL org.opencontainers.image.authors="me"\n'),
    ("LegacyKeyValueFormat", "FROM busybox\nENV A b\n", "FROM busybox\nENV A=b\n"),
    ("WorkdirRelativePath", "FROM busybox\nWORKDIR app\n",
     "FROM busybox\nWORKDIR /srv\nWORKDIR app\n"),
    ("MultipleInstructionsDisallowed", 'FROM busybox\nCMD ["a"]\nCMD ["b"]\n',
     'FROM busybox\nCMD ["a"]\nFROM busybox\nCMD ["b"]\n'),
    ("UndefinedArgInFrom", "FROM busybox:${TAG}\n", "ARG TAG=1\nFROM busybox:${TAG}\n"),
    ("RedundantTargetPlatform", "FROM --platform=$TARGETPLATFORM busybox\n",
     "FROM --platform=$BUILDPLATFORM busybox\n"),
    ("FromPlatformFlagConstDisallowed", "FROM --platform=linux/amd64 busybox AS build\n",
     "FROM --platform=linux/amd64 busybox AS build_amd64\n"),
    ("SecretsUsedInArgOrEnv", "FROM busybox\nARG GITHUB_TOKEN\n",
     "FROM busybox\nARG PUBLIC_KEY\nARG KEYCLOAK_URL\n"),
])
def test_rule_fires_on_bad_not_on_good(rule: str, bad: str, good: str) -> None:
    assert rule in {r for r, _ in lint(bad)}
    assert rule not in {r for r, _ in lint(good)}


def test_lines_and_every_duplicate_but_the_last() -> None:
    text = 'FROM busybox\nCMD ["a"]\nCMD ["b"]\nCMD ["c"]\n'
    assert lint(text) == [("MultipleInstructionsDisallowed", 2),
                          ("MultipleInstructionsDisallowed", 3)]


def test_skip_and_error_options() -> None:
    bad = "FROM busybox\nMAINTAINER me\nCMD echo\n"
    assert lint("# check=skip=all\n" + bad) == []
    assert lint("# check=skip=MaintainerDeprecated\n" + bad) == [("JSONArgsRecommended", 4)]
    assert lint(bad, "skip=JSONArgsRecommended,MaintainerDeprecated") == []
    cfg = checks.config("error=true")
    assert cfg.error and not cfg.skip_all
    with pytest.raises(DockerfileError, match="invalid check option"):
        checks.config("bogus")
    with pytest.raises(DockerfileError, match="invalid boolean value"):
        checks.config("error=maybe")


@pytest.mark.skipif(os.geteuid() != 0, reason="builds need root")
def test_the_build_reports_or_fails(cli: Cli, tmp_path: Path, busybox_tar: Path) -> None:
    cli.ok("import", str(busybox_tar), "busybox")
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text("FROM busybox\nMAINTAINER me\nCMD echo hi\n")
    res = cli("build", "-t", "linted", str(ctx))
    assert res.code == 0 and "Successfully tagged linted:latest" in res.out
    assert res.err.splitlines() == [
        "2 warnings found:",
        " - MaintainerDeprecated: Maintainer instruction is deprecated in favor of using "
        "label (line 2)",
        " - JSONArgsRecommended: JSON arguments recommended for CMD to prevent unintended "
        "behavior related to OS signals (line 3)"]
    (ctx / "Dockerfile").write_text("# check=error=true\nFROM busybox\nCMD echo hi\n")
    res = cli("build", "-t", "strict", str(ctx))
    assert res.code == 1 and res.out == "" and res.err == (
        "Error: Dockerfile:3: lint violation found for rules: JSONArgsRecommended\n")
    assert cli("image", "inspect", "strict").code != 0
    res = cli("build", "-q", "--build-arg", "BUILDKIT_DOCKERFILE_CHECK=skip=all", str(ctx))
    assert res.code == 0 and res.err == ""


@pytest.mark.skipif(os.geteuid() != 0, reason="builds need root")
def test_undefined_vars_are_found_while_building(cli: Cli, tmp_path: Path,
                                                 busybox_tar: Path) -> None:
    cli.ok("import", str(busybox_tar), "busybox")
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "x").write_text("x")
    (ctx / "Dockerfile").write_text(
        "FROM busybox\nARG DECLARED\nENV A=1\nCOPY x$foo /x/\nENV PATH=$PAHT:/x\n"
        "WORKDIR /${DECLARED}w\nLABEL l=${NOPE:-d} m=$A\nRUN echo $SHELL_ONLY\n"
        "USER ${TARGETARCH}\n")
    res = cli("build", "-t", "uv", str(ctx))
    assert res.code == 0, res
    assert res.err.splitlines() == [
        "2 warnings found:",
        " - UndefinedVar: Usage of undefined variable '$foo' (line 4)",
        " - UndefinedVar: Usage of undefined variable '$PAHT' (line 5)"]
    # found in the cached rebuild too; with error=true the image is not tagged
    assert cli("build", str(ctx)).err.count("UndefinedVar") == 2
    (ctx / "Dockerfile").write_text("# check=error=true\nFROM busybox\nCOPY x$foo /x/\n")
    res = cli("build", "-t", "strict", str(ctx))
    assert res.code == 1 and "Dockerfile:3: lint violation found for rules: UndefinedVar" \
        in res.err
    assert cli("image", "inspect", "strict").code != 0
