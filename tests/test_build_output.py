"""``build -o/--output`` (BuildKit's exporters): the built filesystem into a directory or a
tar, or the image into an archive, besides the store."""

from __future__ import annotations

import io
import subprocess
import tarfile
from pathlib import Path

from container_fixtures import Shale, needs_root
from test_build import base_tar as base_tar  # re-exported: the sh fixture needs it
from test_build import build, ok
from test_build import sh as sh

from shale.build.output import Output, parse

pytestmark = needs_root

ARTIFACT = """\
FROM busybox AS build
RUN mkdir -p /app/sub && echo artifact > /app/bin && chmod 750 /app/bin \\
 && ln -s bin /app/link && echo s > /app/sub/f && chown 1000:10 /app/sub/f
FROM scratch
COPY --from=build /app /
"""


def test_output_specs() -> None:
    assert parse("out") == Output("local", "out")
    assert parse("-") == Output("tar", "-")
    assert parse("type=local,dest=d") == Output("local", "d")
    assert parse("type=tar") == Output("tar", "-")
    assert parse("type=docker,dest=a.tar") == Output("docker", "a.tar")


def test_output_to_a_directory_and_a_tar(sh: Shale, tmp_path: Path) -> None:
    out = tmp_path / "out"
    res = build(sh, tmp_path, ARTIFACT, {}, "-q", "-o", str(out))
    assert ok(res).startswith("sha256:")
    assert (out / "bin").read_text() == "artifact\n"
    assert (out / "bin").stat().st_mode & 0o777 == 0o750
    assert (out / "link").is_symlink() and str((out / "link").readlink()) == "bin"
    st = (out / "sub" / "f").stat()
    assert (st.st_uid, st.st_gid) == (1000, 10)
    # to stdout: the tar alone there, the build's own lines on stderr
    code, raw, err = sh.cli.binary("-s", sh.driver, "build", "-o", "-", str(tmp_path / "ctx"))
    assert code == 0 and "Successfully built" in err
    with tarfile.open(fileobj=io.BytesIO(raw)) as tf:
        names = {m.name: m for m in tf}
    assert sorted(names) == ["bin", "link", "sub", "sub/f"]
    assert names["link"].issym() and names["sub/f"].uid == 1000
    res = sh("build", "-q", "-o", f"type=tar,dest={tmp_path / 'fs.tar'}", str(tmp_path / "ctx"))
    assert res.code == 0
    assert subprocess.run(["tar", "tf", str(tmp_path / "fs.tar")], capture_output=True,
                          check=True).stdout.split() == [b"bin", b"link", b"sub/", b"sub/f"]


def test_output_as_an_archive_and_bad_specs(sh: Shale, tmp_path: Path) -> None:
    arch = tmp_path / "img.tar"
    ok(build(sh, tmp_path, ARTIFACT, {}, "-q", "-t", "art:1", "-o",
             f"type=docker,dest={arch}"))
    listing = subprocess.run(["tar", "tf", str(arch)], capture_output=True, check=True)
    assert b"manifest.json" in listing.stdout.split()
    sh.ok("rmi", "art:1")
    assert sh.ok("load", "-i", str(arch)) == "Loaded image: art:1\n"
    res = sh("build", "-o", "type=bogus,dest=x", str(tmp_path / "ctx"))
    assert res.code == 1 and "unsupported exporter type" in res.err
