"""BuildKit's newer COPY/ADD flags, which docker's classic builder (the oracle of
``test_build_diff.py``) does not have: ``--exclude`` (dockerfile 1.19) and ``--parents``
(1.20), each checked against the examples of the Dockerfile reference.
"""

from __future__ import annotations

from pathlib import Path

from container_fixtures import Shale, needs_root
from test_build import base_tar as base_tar  # re-exported: the sh fixture needs it
from test_build import build, ok
from test_build import sh as sh
from test_build_support import Spec

pytestmark = needs_root


def test_copy_exclude(sh: Shale, tmp_path: Path) -> None:
    """BuildKit's ``--exclude`` (dockerfile 1.19): .dockerignore patterns relative to each
    copied directory; a wildcard's matches are filtered by their context path."""
    spec: Spec = {"app/main.py": b"m", "app/x.pyc": b"c", "app/sub/y.pyc": b"c",
                  "app/node_modules/dep/i.js": b"d", "app/keep.md": b"k", "home.txt": b"h",
                  "homer.md": b"r"}
    df = ("FROM busybox\nCOPY --exclude=*.pyc --exclude=node_modules app /a/\n"
          "COPY --exclude=**/*.pyc --exclude=*.md app /b/\n"
          "COPY --exclude=*.txt hom* /c/\n")
    ok(build(sh, tmp_path, df, spec, "-t", "ex"))
    found = sh.ok("run", "--rm", "ex", "find", "/a", "/b", "/c", "-type", "f").split()
    assert sorted(found) == ["/a/keep.md", "/a/main.py", "/a/sub/y.pyc", "/b/main.py",
                             "/b/node_modules/dep/i.js", "/c/homer.md"]
    # the patterns are in the cache key; an excluded file's change is not
    (tmp_path / "ctx" / "app" / "x.pyc").write_bytes(b"changed")
    assert ok(sh("build", "-q", "-t", "ex2", str(tmp_path / "ctx"))) == \
        sh.ok("image", "inspect", "-f", "{{.Id}}", "ex")
    res = build(sh, tmp_path / "2", "FROM busybox\nCOPY --exclude=* f* /d/\n", {"f1": b"1"})
    assert res.code == 1 and "no source files were specified" in res.err


def test_copy_parents(sh: Shale, tmp_path: Path) -> None:
    spec: Spec = {"x/": 0o700, "x/a.txt": b"a", "y/a.txt": b"ya", "x/y/a.txt": b"xy",
                  "x/y/b.txt": b"xyb", "mono/a/package.json": b"1", "mono/b/package.json": b"2",
                  "mono/a/node/package.json": b"3", "mono/a/index.js": b"n"}
    df = ("FROM busybox\nCOPY ./x/a.txt ./y/a.txt /no_parents/\n"
          "COPY --parents ./x/a.txt ./y/a.txt /parents/\n"
          "COPY --parents ./x/./y/*.txt /pivot/\n"
          "COPY --parents mono/**/package.json /app/\n"
          "COPY --parents x/y /dir/\n")
    ok(build(sh, tmp_path, df, spec, "-t", "par"))
    found = sh.ok("run", "--rm", "par", "find", "/no_parents", "/parents", "/pivot", "/app",
                  "/dir", "-type", "f").split()
    assert sorted(found) == [
        "/app/mono/a/node/package.json", "/app/mono/a/package.json",
        "/app/mono/b/package.json", "/dir/x/y/a.txt", "/dir/x/y/b.txt", "/no_parents/a.txt",
        "/parents/x/a.txt", "/parents/y/a.txt", "/pivot/y/a.txt", "/pivot/y/b.txt"]
    # the directories on the way are the source's: x is 0700 in the context
    modes = sh.ok("run", "--rm", "par", "stat", "-c", "%a %n", "/parents/x", "/parents/y",
                  "/dir/x", "/app/mono")
    assert modes.splitlines() == ["700 /parents/x", "755 /parents/y", "700 /dir/x",
                                  "755 /app/mono"]
    # a new file that matches the pattern misses the cache
    (tmp_path / "ctx" / "mono" / "c").mkdir()
    (tmp_path / "ctx" / "mono" / "c" / "package.json").write_text("4")
    ok(sh("build", "-q", "-t", "par2", str(tmp_path / "ctx")))
    assert "/app/mono/c/package.json" in sh.ok("run", "--rm", "par2", "find", "/app").split()
