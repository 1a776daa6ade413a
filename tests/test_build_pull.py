"""A build's base image comes from its registry when the store lacks it (or always, with
``--pull``), as docker's builder does; a base that cannot be pulled fails the FROM line.
Against a real ``docker-registry`` on 127.0.0.1 (plain HTTP, as docker for loopback).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from conftest import Cli
from test_registry import REGISTRY_BIN, RegistryProc, other_cli
from test_registry import docker_config as docker_config  # re-exported: autouse fixture
from test_registry import registry as registry

pytestmark = [
    pytest.mark.skipif(REGISTRY_BIN is None, reason="needs docker-registry"),
    pytest.mark.skipif(os.geteuid() != 0, reason="RUN steps run containers: needs root"),
]


def test_build_pulls_a_missing_base(cli: Cli, tmp_path: Path, registry: RegistryProc,
                                    busybox_tar: Path) -> None:
    base = f"{registry.host}/bp/base:1"
    cli.ok("import", str(busybox_tar), base)
    cli.ok("push", base)
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text(f"FROM {base}\nRUN echo built > /x\n")
    fresh = other_cli(tmp_path)
    out = fresh.ok("build", "-t", "child", str(ctx))
    assert "1: Pulling from bp/base" in out
    assert f"Status: Downloaded newer image for {base}" in out
    assert fresh.ok("run", "--rm", "child", "cat", "/x") == "built\n"
    assert fresh.ok("images", "-q", base).strip()  # the base is stored under its name
    # present now: no pull; --pull asks the registry again
    assert "Pulling" not in fresh.ok("build", str(ctx))
    out = fresh.ok("build", "--pull", str(ctx))
    assert f"Status: Image is up to date for {base}" in out and "Using cache" in out
    # COPY --from an image the store lacks pulls it too
    other = f"{registry.host}/bp/other:2"
    cli.ok("tag", base, other)
    cli.ok("push", other)
    (ctx / "Dockerfile").write_text(f"FROM {base}\nCOPY --from={other} /etc/passwd /p\n")
    out = fresh.ok("build", "-t", "copied", str(ctx))
    assert f"Status: Downloaded newer image for {other}" in out
    assert fresh.ok("run", "--rm", "copied", "head", "-1", "/p").startswith("root:")
    # a base no registry has: the FROM line fails, nothing is tagged
    (ctx / "Dockerfile").write_text(f"FROM {registry.host}/bp/nope\nRUN true\n")
    res = fresh("build", "-t", "broken", str(ctx))
    assert res.code == 1 and res.err.startswith("Error: Dockerfile:1: ")
    assert "pulling it failed" in res.err and len(res.err.splitlines()) == 1
    assert fresh("image", "inspect", "broken").code != 0
