"""``shale build``: output, intermediate images and history, the cache and ``--explain``,
failures, errors, multi-stage, the context and its ignore files, and what BuildKit added
to the language (heredocs, ``RUN --mount``, ``--chmod``, ``${v#p}``, ARG inheritance,
only the needed stages built), which docker's classic builder, the oracle of
``test_build_diff.py``, does not have.

Real builds (root): RUN steps run in containers of the builtin runtime.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import signal
import subprocess
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import CliResult
from container_fixtures import Shale, assert_top_layer_sized, needs_root
from test_build_support import Link, Spec, make_busybox, write_context

pytestmark = needs_root


@pytest.fixture(scope="module")
def base_tar(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_busybox(tmp_path_factory.mktemp("base") / "busybox.tar")


def _shale(root: Path, base_tar: Path, driver: str = "overlay") -> Iterator[Shale]:
    sh = Shale(root, driver, "builtin")
    sh.ok("import", str(base_tar), "busybox")
    try:
        yield sh
    finally:
        sh.cleanup()


@pytest.fixture
def sh(root: Path, base_tar: Path) -> Iterator[Shale]:
    yield from _shale(root, base_tar)


def build(sh: Shale, tmp: Path, dockerfile: str, spec: Spec | None = None,
          *args: str) -> CliResult:
    ctx = write_context(tmp / "ctx", spec or {})
    (ctx / "Dockerfile").write_text(dockerfile)
    return sh("build", *args, str(ctx))


def ok(res: CliResult) -> str:
    assert res.code == 0, res
    return res.out


def cat(sh: Shale, image: str, path: str) -> str:
    return sh.ok("run", "--rm", image, "cat", path)


def inspect(sh: Shale, name: str) -> dict[str, Any]:
    data: list[dict[str, Any]] = json.loads(sh.ok("image", "inspect", name))
    return data[0]


def steps(out: str) -> list[str]:
    """The ` ---> ...` lines of a build's output."""
    return [ln for ln in out.splitlines() if ln.startswith(" ---> ")]


BASIC = """\
FROM busybox
ENV FOO=bar
ARG V=1
RUN echo $V > /v.txt
COPY a.txt /a/
COPY d /d
WORKDIR /app
LABEL a=b
EXPOSE 80 443/udp
CMD ["sh"]
"""
BASIC_CTX: Spec = {"a.txt": b"hi\n", "d/x": b"x\n", "d/sub/x": b"x\n", "d/sub/y": b"y\n"}


# ---- output, images, history ---------------------------------------------------------------
def test_output_history_and_intermediate_images(sh: Shale, tmp_path: Path) -> None:
    out = ok(build(sh, tmp_path, BASIC, BASIC_CTX, "-t", "t1"))
    lines = out.splitlines()
    assert lines[0] == "Step 1/10 : FROM busybox"
    assert "Step 4/10 : RUN echo $V > /v.txt" in lines
    assert any(ln.startswith(" ---> Running in ") for ln in lines)
    assert any(ln.startswith("Removing intermediate container ") for ln in lines)
    ids = [ln.split()[1] for ln in steps(out) if not ln.startswith(" ---> Running")]
    assert len(ids) == 10 and all(len(i) == 12 for i in ids)
    assert lines[-2:] == [f"Successfully built {ids[-1]}", "Successfully tagged t1:latest"]
    created_by = sh.ok("history", "--no-trunc", "--format", "{{.CreatedBy}}", "t1")
    # docker 20.10 writes exactly these (the hashes are docker's tarsums of the context)
    assert created_by.splitlines()[:9] == [
        '/bin/sh -c #(nop)  CMD ["sh"]',
        "/bin/sh -c #(nop)  EXPOSE 443/udp 80",
        "/bin/sh -c #(nop)  LABEL a=b",
        "/bin/sh -c #(nop) WORKDIR /app",
        "/bin/sh -c #(nop) COPY dir:a2aa403bf8a281b9cf09df8f4e30823ec35392b0522a7cd192ae6554"
        "00241386 in /d ",
        "/bin/sh -c #(nop) COPY file:2cc6f75217b6d0ad0246a0f00e7bb3296d332db51dc16a22ce49043"
        "0905d8d80 in /a/ ",
        "|1 V=1 /bin/sh -c echo $V > /v.txt",
        "/bin/sh -c #(nop)  ARG V=1",
        "/bin/sh -c #(nop)  ENV FOO=bar",
    ]
    # every step's image is local: history shows an ID on each line, images -a lists them
    history_ids = sh.ok("history", "-q", "t1").split()
    assert "<missing>" not in history_ids and len(history_ids) == 10
    assert set(ids) <= set(sh.ok("images", "-aq").split())
    assert set(sh.ok("images", "-q").split()) == {ids[-1], ids[0]}
    img = inspect(sh, "t1")
    assert img["Parent"].removeprefix("sha256:").startswith(ids[-2])
    assert img["Config"]["Env"] == ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:"
                                    "/sbin:/bin", "FOO=bar"]
    assert img["ContainerConfig"]["Cmd"] == ["/bin/sh", "-c", "#(nop) ", 'CMD ["sh"]']
    assert img["Config"]["Image"] == img["Parent"] and img["Comment"] == ""
    layers = img["RootFS"]["Layers"]
    assert len(layers) == 5  # the base, RUN, COPY, COPY, WORKDIR (/app is new)
    assert cat(sh, "t1", "/v.txt") == "1\n"
    # rmi of the tag removes the whole chain of intermediate images, as docker does
    deleted = [ln for ln in sh.ok("rmi", "t1").splitlines() if ln.startswith("Deleted:")]
    assert {d[-64:][:12] for d in deleted} >= set(ids[1:])
    assert sh.ok("images", "-aq").split() == [ids[0]]


def test_quiet_iidfile_labels(sh: Shale, tmp_path: Path) -> None:
    iid = tmp_path / "iid"
    out = ok(build(sh, tmp_path, "FROM busybox\nLABEL x=1\nRUN echo hi\n", {}, "-q",
                   "--iidfile", str(iid), "--label", "b=2", "--label", "a=1 $X"))
    assert out.strip() == iid.read_text() and out.startswith("sha256:")
    img = inspect(sh, out.strip())
    assert img["Config"]["Labels"] == {"a": "1 $X", "b": "2", "x": "1"}
    created_by = sh.ok("history", "--no-trunc", "--format", "{{.CreatedBy}}", out.strip())
    assert created_by.splitlines()[:2] == ["/bin/sh -c #(nop)  LABEL b=2",
                                           "/bin/sh -c #(nop)  LABEL a=1 $X"]


def test_onbuild_triggers_run_in_the_child(sh: Shale, tmp_path: Path) -> None:
    ok(build(sh, tmp_path / "p", "FROM busybox\nONBUILD RUN echo ran > /ob\n"
             "ONBUILD ENV OB=1\n", {}, "-t", "parent"))
    out = ok(build(sh, tmp_path / "c", "FROM parent\nRUN cat /ob\n", {}, "-t", "child"))
    assert "# Executing 2 build triggers" in out and "ran" in out.splitlines()
    img = inspect(sh, "child")
    assert img["Config"]["OnBuild"] is None and "OB=1" in img["Config"]["Env"]
    assert inspect(sh, "parent")["Config"]["OnBuild"] == ["RUN echo ran > /ob", "ENV OB=1"]


def test_vfs_driver_builds_too(root: Path, base_tar: Path, tmp_path: Path) -> None:
    for s in _shale(root, base_tar, "vfs"):
        ok(build(s, tmp_path, BASIC, BASIC_CTX, "-t", "v"))
        assert cat(s, "v", "/d/sub/y") == "y\n"
        assert "Using cache" in ok(build(s, tmp_path, BASIC, BASIC_CTX, "-t", "v"))


# ---- cache ---------------------------------------------------------------------------------
def test_unchanged_rebuild_is_all_hits_with_the_same_id(sh: Shale, tmp_path: Path) -> None:
    first = ok(build(sh, tmp_path, BASIC, BASIC_CTX, "-t", "c"))
    # a separate process: the cache index lives in the store
    res = subprocess.run([*sh.argv, "build", "-t", "c", str(tmp_path / "ctx")],
                         capture_output=True, text=True, check=True)
    assert res.stdout.count(" ---> Using cache") == 9
    assert "Running in" not in res.stdout
    assert steps(first)[-1] == steps(res.stdout)[-1]


def test_cache_keys(sh: Shale, tmp_path: Path) -> None:
    ok(build(sh, tmp_path, BASIC, BASIC_CTX, "-t", "c"))
    ctx = tmp_path / "ctx"
    os.utime(ctx / "a.txt", (1, 1))  # mtimes never count
    assert ok(sh("build", str(ctx))).count("Using cache") == 9
    os.chmod(ctx / "a.txt", 0o600)  # modes do
    out = ok(sh("build", str(ctx)))
    assert out.count("Using cache") == 3  # ENV, ARG, RUN; COPY a.txt and after run again
    os.chmod(ctx / "a.txt", 0o644)
    assert ok(sh("build", str(ctx))).count("Using cache") == 9  # the old chain is still there
    (ctx / "d" / "sub" / "y").write_text("changed\n")
    assert ok(sh("build", str(ctx))).count("Using cache") == 4
    # a build arg's value busts the RUNs that see it (ARG itself records the default)
    out = ok(sh("build", "--build-arg", "V=2", str(ctx)))
    assert out.count("Using cache") == 2 and "|1 V=2" in sh.ok(
        "history", "--no-trunc", "--format", "{{.CreatedBy}}", steps(out)[-1][6:])
    # --no-cache rebuilds everything
    assert "Using cache" not in ok(sh("build", "--no-cache", str(ctx)))


def test_explain_names_the_cause(sh: Shale, tmp_path: Path) -> None:
    df = "FROM busybox\nARG V=1\nCOPY . /app\nRUN echo $V > /v\nCMD [\"sh\"]\n"
    ok(build(sh, tmp_path, df, {"a.txt": b"1", "gone.txt": b"g"}))
    ctx = tmp_path / "ctx"
    (ctx / "a.txt").write_text("2")
    (ctx / "new.txt").write_text("n")
    (ctx / "gone.txt").unlink()
    out = ok(sh("build", "--explain", str(ctx)))
    assert " ---> Cache miss: source changed: a.txt; source added: new.txt; " \
           "source removed: gone.txt" in out
    assert " ---> Cache miss: step 3 missed, so the rest of this stage runs again" in out
    out = ok(sh("build", "--progress", "plain", "--build-arg", "V=2", str(ctx)))
    assert " ---> Cache miss: build arg V changed: '1' -> '2'" in out
    (ctx / "Dockerfile").write_text(df.replace("FROM busybox", "FROM busybox\nENV E=1"))
    out = ok(sh("build", "--explain", str(ctx)))
    assert "Cache miss: no earlier ENV on the base image busybox" in out
    out = ok(sh("build", "--explain", "--no-cache", str(ctx)))
    assert " ---> Cache miss: --no-cache" in out


# ---- failures and errors -------------------------------------------------------------------
FAILING = """\
FROM busybox
ENV A=1
RUN echo step > /s.txt
RUN echo failing; echo err >&2; touch /partial; exit 3
RUN echo never
"""


def test_failed_run_leaves_last_good_image_and_container(sh: Shale, tmp_path: Path) -> None:
    ok(build(sh, tmp_path / "old", "FROM busybox\n", {}, "-t", "app"))
    before = sh.ok("images", "-q", "app")
    res = build(sh, tmp_path, FAILING, {}, "-t", "app")
    assert res.code == 3
    assert res.err.splitlines()[0] == ("The command '/bin/sh -c echo failing; echo err >&2; "
                                       "touch /partial; exit 3' returned a non-zero code: 3")
    assert "failing\nerr\n" in res.out and "never" not in res.out
    last_good = steps(res.out)[-2].split()[1]
    assert f"shale run -it {last_good} sh" in res.err
    assert sh.ok("images", "-q", "app") == before  # nothing half-built is tagged
    assert sh.ok("run", "--rm", last_good, "cat", "/s.txt") == "step\n"
    failed = [c for c in sh.ids() if sh.inspect(c)["State"]["ExitCode"] == 3]
    assert len(failed) == 1
    assert "A /partial" in sh.ok("diff", failed[0])
    assert sh.ok("system", "check").strip() == "no problems found"
    # -q: nothing on stdout, the step's output on stderr; --force-rm: no container left
    res = build(sh, tmp_path, FAILING, {}, "-q", "--force-rm")
    assert res.code == 3 and res.out == "" and "failing\nerr\n" in res.err
    assert len(sh.ids()) == 1


def test_rm_false_keeps_every_container(sh: Shale, tmp_path: Path) -> None:
    ok(build(sh, tmp_path, "FROM busybox\nRUN true\nRUN true\n", {}, "--rm=false"))
    assert len(sh.ids()) == 2


@pytest.mark.parametrize(("dockerfile", "message"), [
    ("FROM busybox\nFOO bar\n", "Dockerfile:2: unknown instruction: FOO"),
    ("FROM busybox\nRUN true\nCOPY nope /x\n",
     "Dockerfile:3: COPY failed: file not found in build context or excluded by "
     ".dockerignore: stat nope: file does not exist"),
    ("FROM busybox\nCOPY *.none /x/\n", "Dockerfile:2: COPY failed: no source files were "
     "specified"),
    ("FROM busybox\nCOPY --from=nostage /a /b\n", "Dockerfile:2: invalid from flag value "
     "nostage"),
    ("FROM busybox\nCOPY --from=0 /a /b\n", "Dockerfile:2: invalid from flag value 0: refers "
     "to current build stage"),
    ("FROM busybox\nCOPY --bogus=1 a /b\n", "Dockerfile:2: unknown flag: bogus"),
    ("FROM busybox\nRUN --mount=type=secret,id=x,required cat /run/secrets/x\n",
     "Dockerfile:2: secret x: not found"),
    ("FROM busybox\nADD git@example.com:o/r.git /x/\n", "Dockerfile:2: ADD git@example"
     ".com:o/r.git: git sources are not supported"),
    ("FROM busybox\nADD --checksum=sha256:00 http://127.0.0.1:9/f /f\n",
     "Dockerfile:2: invalid checksum digest format: 'sha256:00'"),
    ("FROM busybox\nCOPY a.txt b.txt /notadir\n", "Dockerfile:2: When using COPY with more "
     "than one source file, the destination must be a directory and end with a /"),
    ("FROM busybox\nENV X=${Y:?required}\n", "Dockerfile:2: failed to process "
     '"${Y:?required}": Y: required'),
    ("FROM nosuchimage\n", "Dockerfile:1: nosuchimage: not in this store, and pulling it failed"),
    ("FROM busybox\nCOPY --chown=nosuchuser a.txt /\n", "Dockerfile:2: unable to convert "
     "uid/gid chown string to host mapping: can't find uid for user nosuchuser"),
    ("FROM busybox\nCMD [\"a\", [\"nested\"]]\n", "Dockerfile:2: when using JSON array "
     "syntax, arrays must be comprised of strings only"),
])
def test_errors_name_the_line_and_tag_nothing(sh: Shale, tmp_path: Path, dockerfile: str,
                                              message: str) -> None:
    res = build(sh, tmp_path, dockerfile, {"a.txt": b"a", "b.txt": b"b"}, "-t", "broken")
    assert res.code == 1, res
    assert message in res.err, res.err
    assert len(res.err.strip().splitlines()) == 1
    assert sh("images", "-q", "broken").out == ""


def test_missing_target_and_bad_network(sh: Shale, tmp_path: Path) -> None:
    res = build(sh, tmp_path, "FROM busybox AS a\n", {}, "--target", "b")
    assert res.code == 1 and "failed to reach build target b" in res.err
    res = build(sh, tmp_path, "FROM busybox\n", {}, "--network", "nosuchnet")
    assert res.code != 0 and "network nosuchnet not found" in res.err


def test_killed_build_leaves_a_consistent_store(sh: Shale, tmp_path: Path) -> None:
    ctx = write_context(tmp_path / "ctx", {"a": b"a"})
    (ctx / "Dockerfile").write_text("FROM busybox\nCOPY a /a\nRUN sleep 30\n")
    p = sh.popen("build", str(ctx))
    assert p.stdout is not None
    deadline = time.monotonic() + 30
    seen = b""
    while b"Running in" not in seen and time.monotonic() < deadline:
        seen += p.stdout.readline()
    os.kill(p.pid, signal.SIGKILL)
    p.communicate()
    assert sh.ok("system", "check").strip() == "no problems found"


# ---- multi-stage and args (BuildKit's rules) -----------------------------------------------
MULTI = """\
ARG BASE=busybox
FROM ${BASE} AS build
ARG WHO=world
RUN echo "hello $WHO" > /greeting
FROM busybox AS unused
RUN echo UNUSED-STAGE-RAN && exit 1
FROM build AS child
RUN echo "child sees $WHO" > /child
FROM busybox
ARG BASE
COPY --from=child /greeting /child /out/
COPY --from=0 /greeting /by-index
RUN echo "$BASE" > /meta
"""


def test_multistage_builds_only_needed_stages(sh: Shale, tmp_path: Path) -> None:
    # BuildKit builds what the target needs; the classic builder would run 'unused' too.
    # A stage FROM another inherits its ARGs (BuildKit; classic does not).
    out = ok(build(sh, tmp_path, MULTI, {}, "-t", "m", "--build-arg", "WHO=you"))
    assert "UNUSED-STAGE-RAN" not in out and "Step 1/10 : FROM ${BASE} AS build" in out
    assert cat(sh, "m", "/out/greeting") == "hello you\n"
    assert cat(sh, "m", "/out/child") == "child sees you\n"
    assert cat(sh, "m", "/by-index") == "hello you\n"
    assert cat(sh, "m", "/meta") == "busybox\n"  # a meta ARG re-declared in a stage
    out = ok(sh("build", "--target", "build", "-q", str(tmp_path / "ctx")))
    assert sh.ok("run", "--rm", out.strip(), "cat", "/greeting") == "hello world\n"
    res = sh("build", "--target", "unused", str(tmp_path / "ctx"))
    assert res.code == 1 and "UNUSED-STAGE-RAN" in res.out


def test_args_proxies_and_unused_warning(sh: Shale, tmp_path: Path) -> None:
    df = ("FROM busybox\nARG A\nARG B=dflt\nENV B=env-wins\n"
          "RUN echo \"$A $B $HTTP_PROXY\" > /out\n")
    out = ok(build(sh, tmp_path, df, {}, "-t", "a", "--build-arg", "A=1", "--build-arg",
                   "HTTP_PROXY=http://p:3128", "--build-arg", "NOPE=x"))
    assert cat(sh, "a", "/out") == "1 env-wins http://p:3128\n"
    assert "[Warning] One or more build-args [NOPE] were not consumed" in out
    # the proxy arg is neither in the history nor in the image
    hist = sh.ok("history", "--no-trunc", "--format", "{{.CreatedBy}}", "a").splitlines()
    assert hist[0] == '|1 A=1 /bin/sh -c echo "$A $B $HTTP_PROXY" > /out'
    assert not any("HTTP_PROXY=" in e for e in inspect(sh, "a")["Config"]["Env"])


def test_buildkit_word_expansion(sh: Shale, tmp_path: Path) -> None:
    df = ("FROM busybox\nARG F=archive.tar.gz\n"
          "ENV BASE=${F%%.*} EXT=${F#*.} R=${F/tar/TAR} U=${NOPE-unset}\n")
    ok(build(sh, tmp_path, df, {}, "-t", "w"))
    assert inspect(sh, "w")["Config"]["Env"][1:] == [
        "BASE=archive", "EXT=tar.gz", "R=archive.TAR.gz", "U=unset"]


# ---- heredocs, --chmod, mounts (BuildKit) --------------------------------------------------
HEREDOCS = """\
FROM busybox
ARG GREETING=hi
RUN <<EOF
echo "heredoc $GREETING" > /h1
EOF
RUN <<EOF
#!/bin/sh
echo "script $0" > /h2
EOF
RUN cat <<A > /h3 && cat <<-B >> /h3
one $GREETING
A
\ttwo
\tB
COPY <<EOF /etc/conf.txt
value=$GREETING "quoted"
EOF
COPY --chmod=0750 <<'EOF' <<EOF2 /multi/
raw $GREETING
EOF
x
EOF2
"""


def test_heredocs(sh: Shale, tmp_path: Path) -> None:
    ok(build(sh, tmp_path, HEREDOCS, {}, "-t", "h"))
    assert cat(sh, "h", "/h1") == "heredoc hi\n"
    assert cat(sh, "h", "/h2") == "script /dev/pipes/EOF\n"  # a #! heredoc runs as a file
    assert cat(sh, "h", "/h3") == "one hi\ntwo\n"
    assert cat(sh, "h", "/etc/conf.txt") == 'value=hi "quoted"\n'
    assert cat(sh, "h", "/multi/EOF") == "raw $GREETING\n"  # quoted: not expanded
    listing = sh.ok("run", "--rm", "h", "ls", "-ln", "/multi")
    assert listing.count("-rwxr-x---    1 0        0") == 2
    hist = sh.ok("history", "--no-trunc", "--format", "{{.CreatedBy}}", "h").splitlines()
    assert '|1 GREETING=hi /bin/sh -c echo "heredoc $GREETING" > /h1' in hist
    assert "|1 GREETING=hi /dev/pipes/EOF" in hist


def test_copy_chmod_link_and_ownership(sh: Shale, tmp_path: Path) -> None:
    df = ("FROM busybox\nCOPY --chmod=a+rX src /sym/\nCOPY --chmod=600 src /oct/\n"
          "COPY --link --chown=app:wheel src/f /linked\n")
    ok(build(sh, tmp_path, df, {"src/f": (b"f", 0o640), "src/d/g": b"g"}, "-t", "cm"))
    out = sh.ok("run", "--rm", "cm", "sh", "-c",
                "stat -c '%a %u:%g %n' /sym/f /sym/d /oct/f /oct/d /linked")
    assert out.splitlines() == ["644 0:0 /sym/f", "755 0:0 /sym/d", "600 0:0 /oct/f",
                                "600 0:0 /oct/d", "640 1000:10 /linked"]


def test_run_mounts_and_network(sh: Shale, tmp_path: Path) -> None:
    df = """\
FROM busybox AS other
RUN echo from-stage > /etc/marker
FROM busybox
RUN --mount=type=bind,source=src,target=/mnt/src cat /mnt/src/f > /from-bind
RUN --mount=type=bind,from=other,source=/etc,target=/m cat /m/marker > /from-stage
RUN --mount=type=bind,source=src,target=/w,rw touch /w/scratch && ls /w > /rw-listing
RUN --mount=type=cache,target=/cache,id=c1 sh -c 'echo x >> /cache/log; wc -l < /cache/log > /n'
RUN --mount=type=tmpfs,target=/scratch sh -c 'mount | grep -c " /scratch type tmpfs" > /t'
RUN --network=none sh -c 'ls /sys/class/net > /nets'
"""
    ok(build(sh, tmp_path, df, {"src/f": b"hello\n"}, "-t", "mnt"))
    assert cat(sh, "mnt", "/from-bind") == "hello\n"
    assert cat(sh, "mnt", "/from-stage") == "from-stage\n"
    assert cat(sh, "mnt", "/rw-listing") == "f\nscratch\n"
    assert not (tmp_path / "ctx" / "src" / "scratch").exists()  # rw writes are thrown away
    assert cat(sh, "mnt", "/n") == "1\n"
    assert cat(sh, "mnt", "/t") == "1\n"
    assert cat(sh, "mnt", "/nets") == "lo\n"
    # mount targets leave nothing in the image
    assert "No such file" in sh("run", "--rm", "mnt", "ls", "/cache", "/mnt").err
    assert sh("run", "--rm", "mnt", "cat", "/m/marker").code != 0
    # the cache mount's content survives into the next build (not part of the cache key)
    out = ok(sh("build", "--no-cache", "-t", "mnt", str(tmp_path / "ctx")))
    assert "Running in" in out and cat(sh, "mnt", "/n") == "2\n"


# ---- context, Dockerfile sources, ignore files ---------------------------------------------
def test_context_tar_on_stdin_and_dockerfile_on_stdin(sh: Shale, tmp_path: Path) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for name, data in (("Dockerfile", b"FROM busybox\nCOPY f /f\n"), ("f", b"from tar\n")):
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data))
    out = ok(sh("build", "-q", "-t", "s1", "-", stdin=gzip.compress(buf.getvalue())))
    assert out.startswith("sha256:") and cat(sh, "s1", "/f") == "from tar\n"
    ctx = write_context(tmp_path / "ctx", {"g": b"g\n"})
    ok(sh("build", "-q", "-t", "s2", "-f", "-", str(ctx),
          stdin=b"FROM busybox\nCOPY g /g\n"))
    assert cat(sh, "s2", "/g") == "g\n"
    res = sh("build", "-f", "-", "-", stdin=b"")
    assert res.code != 0 and "can't use stdin for both" in res.err


def test_dockerignore_and_dockerfile_specific_ignore(sh: Shale, tmp_path: Path) -> None:
    spec: Spec = {".dockerignore": "*.log\nsecret/\n", "keep.txt": b"k", "x.log": b"l",
                  "secret/key": b"s", "docker/app.Dockerfile.dockerignore": "keep.txt\n",
                  "node_modules/": 0o000, "link": Link("keep.txt")}
    ctx = write_context(tmp_path / "ctx", spec)
    (ctx / ".dockerignore").write_text("*.log\nsecret/\nnode_modules\n")
    (ctx / "Dockerfile").write_text("FROM busybox\nCOPY . /c/\n")
    ok(sh("build", "-t", "i1", str(ctx)))
    listing = sh.ok("run", "--rm", "i1", "find", "/c", "-mindepth", "1")
    assert sorted(listing.split()) == ["/c/.dockerignore", "/c/Dockerfile", "/c/docker",
                                       "/c/docker/app.Dockerfile.dockerignore",
                                       "/c/keep.txt", "/c/link"]
    # <Dockerfile>.dockerignore next to the Dockerfile wins over the context's (BuildKit)
    (ctx / "docker" / "app.Dockerfile").write_text("FROM busybox\nCOPY . /c/\n")
    ok(sh("build", "-t", "i2", "-f", str(ctx / "docker" / "app.Dockerfile"), str(ctx)))
    listing = sh.ok("run", "--rm", "i2", "find", "/c", "-mindepth", "1")
    assert "/c/keep.txt" not in listing.split() and "/c/x.log" in listing.split()
    res = build(sh, tmp_path / "2", "FROM busybox\nCOPY x.log /\n",
                {".dockerignore": "*.log\n", "x.log": b"l"})
    assert res.code == 1 and "excluded by .dockerignore" in res.err


# ---- concurrency ---------------------------------------------------------------------------
def test_two_concurrent_builds_on_the_same_base(sh: Shale, tmp_path: Path) -> None:
    procs = []
    for i in range(2):
        ctx = write_context(tmp_path / f"ctx{i}", {"f": f"{i}\n".encode()})
        (ctx / "Dockerfile").write_text(f"FROM busybox\nCOPY f /f\nRUN cat /f > /g{i}\n"
                                        "RUN sleep 0.2\n")
        procs.append(sh.popen("--debug", "build", "-q", "-t", f"par{i}", str(ctx)))
    for i, p in enumerate(procs):
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        assert cat(sh, f"par{i}", f"/g{i}") == f"{i}\n"
    assert sh.ok("system", "check").strip() == "no problems found"


def test_run_mount_of_a_single_file(sh: Shale, tmp_path: Path) -> None:
    df = "FROM busybox\nRUN --mount=type=bind,source=f,target=/m cat /m > /copied\n"
    ok(build(sh, tmp_path, df, {"f": b"one file\n"}, "-t", "single"))
    assert cat(sh, "single", "/copied") == "one file\n"


def test_platform_args_and_platform_flag(sh: Shale, tmp_path: Path) -> None:
    # BuildKit's automatic platform args: global, imported into a stage by a bare ARG
    df = ("FROM --platform=linux/amd64 busybox\nARG TARGETPLATFORM\nARG TARGETARCH\n"
          "RUN echo \"$TARGETPLATFORM $TARGETARCH\" > /p\n")
    ok(build(sh, tmp_path, df, {}, "-t", "plat", "--platform", "linux/amd64"))
    assert cat(sh, "plat", "/p") == "linux/amd64 amd64\n"
    res = build(sh, tmp_path, "FROM --platform=linux/s390x busybox\n", {})
    assert res.code == 1 and "Dockerfile:1: platform linux/s390x is not supported" in res.err


def test_explain_says_the_base_changed(sh: Shale, tmp_path: Path, base_tar: Path) -> None:
    df = "FROM busybox\nRUN echo a > /a\n"
    ok(build(sh, tmp_path, df, {}))
    sh.ok("import", str(base_tar), "busybox")  # a new image under the same name
    out = ok(sh("build", "--explain", str(tmp_path / "ctx")))
    assert " ---> Cache miss: nothing was built on the base image busybox (" in out


def test_run_layers_reused_as_snapshots_match_their_tars(sh: Shale, tmp_path: Path) -> None:
    """A RUN's layer directory becomes the next step's snapshot without re-extracting the
    tar: the rootfs a container sees must still be exactly the layers' tree."""
    from test_build_support import apply_layer, flatten

    df = """\
FROM busybox
RUN mkdir -p /w/keep /w/gone /o/sub && echo 1 > /w/keep/f && echo 2 > /w/gone/f \\
 && echo 3 > /o/sub/f && ln -s /w/keep/f /lnk && ln /w/keep/f /hard && mkfifo /fifo
RUN rm -rf /w/gone /bin/vi /o && mkdir -p /o/new && echo 4 > /o/new/g && chmod 700 /o
VOLUME /vol/data
RUN echo changed > /w/keep/f && chown 1000:10 /w && touch /etc/passwd
"""
    ok(build(sh, tmp_path, df, {}, "-t", "adopt"))
    code, raw, err = sh.cli.binary("-s", "overlay", "save", "adopt")
    assert code == 0, err
    want, _ = flatten(raw)
    cid = sh.ok("create", "adopt", "true").strip()
    code, exported, err = sh.cli.binary("-s", "overlay", "export", cid)
    assert code == 0, err
    got: dict[str, dict[str, Any]] = {}
    apply_layer(got, exported)
    stubs = ("dev", "proc", "sys", "etc/hosts", "etc/hostname", "etc/resolv.conf",
             "etc/mtab", ".dockerenv")
    for tree in (got, want):
        for k in [k for k in tree if k.split("/")[0] in stubs or k in stubs]:
            del tree[k]
    assert {k: v for k, v in got.items() if v != want.get(k)} == {}
    assert set(got) == set(want)


def test_run_layer_size_counted_as_the_tar_is_written(sh: Shale, tmp_path: Path) -> None:
    """A RUN layer's size (docker's: regular file bytes and symlink target lengths, a hard
    link counted once, whiteouts and directories nothing) comes from writing its tar, never
    from reading the blob back: it must match a scan of the stored blob."""
    df = ("FROM busybox\nRUN head -c 3000000 /dev/zero > /big && printf hello > /small "
          "&& ln /big /big2 && ln -s /small-target /lnk && rm /etc/group\n")
    ok(build(sh, tmp_path, df, {}, "-t", "sized"))
    assert inspect(sh, "sized")["Size"] - inspect(sh, "busybox")["Size"] == 3_000_000 + 5 + 13
    assert_top_layer_sized(sh, "sized")

