"""Differential builds: the same Dockerfile and context built by shale and by docker's
classic builder (``DOCKER_BUILDKIT=0``, the docker 20.10 daemon) must give the same
flattened file tree (path, type, mode, uid/gid, content, link target) and the same config
(Env, Cmd, Entrypoint, WorkingDir, User, ExposedPorts, Volumes, Labels, Healthcheck,
StopSignal, Shell, OnBuild), and the same ``created_by`` history.

Only Dockerfiles both builders accept are here: what BuildKit added to the language
(heredocs, ``--chmod``, ``--mount``, ``${v#p}``...) and where shale follows BuildKit rather
than the classic builder (ARG inheritance between stages, only needed stages built) are
tested on their own in ``test_build.py``.
"""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from conftest import Cli, docker_available
from test_build_support import (
    HardLink,
    Link,
    Spec,
    config_fields,
    flatten,
    make_busybox,
    tree_diff,
    write_context,
)

pytestmark = [
    pytest.mark.docker,
    pytest.mark.skipif(os.geteuid() != 0, reason="builds run containers: needs root"),
    pytest.mark.skipif(not os.path.exists("/bin/busybox"), reason="needs busybox-static"),
]

# unique per run: two runs of this suite at once (CI, a colleague) must not share tags
RUN_ID = uuid.uuid4().hex[:8]
BASE = f"shaletest-build-{RUN_ID}-base"


@dataclass
class Case:
    dockerfile: str
    context: Spec = field(default_factory=dict)
    args: list[str] = field(default_factory=list)
    parent: str = ""        # a Dockerfile built first and tagged <BASE>-parent (ONBUILD)
    history: bool = True    # compare created_by too


CMD_ENTRYPOINT = """\
FROM @BASE@ AS withcmd
CMD ["inherited"]
FROM withcmd AS cleared
ENTRYPOINT /bin/true
FROM withcmd AS restored
ENTRYPOINT []
FROM withcmd AS emptycmd
CMD ["set", "here"]
ENTRYPOINT ["/bin/echo"]
CMD []
"""

CASES: dict[str, Case] = {
    "whiteouts-and-opaque-dirs": Case("""\
FROM @BASE@
RUN mkdir -p /w/keep /w/gone /o/sub && echo 1 > /w/keep/f && echo 2 > /w/gone/f \\
 && echo 3 > /o/sub/f && echo 4 > /o/top && echo 5 > /etc/extra
RUN rm -rf /w/gone /etc/extra /bin/vi && rm -rf /o && mkdir -p /o/new && echo 6 > /o/new/g
RUN echo changed > /w/keep/f && rm /etc/group && echo 'root:x:0:' > /etc/group
COPY f.txt /w/gone/
RUN rm -rf /tmp && mkdir -m 0700 /tmp
""",
        context={"f.txt": b"back\n"}),
    "copy-add-corners": Case("""\
FROM @BASE@
RUN mkdir -p /real /exists && ln -s /real /lnkdir && chmod 750 /real
COPY priv /newdir
COPY priv /tmp
COPY --chown=1000:1000 priv /newdir2
COPY --chown=1000 a.txt /x/y/z/
COPY --chown=app:wheel a.txt b.txt /named/
COPY --chown=daemon a.txt /byname
COPY link.txt /ld/
COPY link.txt /ldf
COPY a.txt /lnkdir/
COPY a.txt /newfile
COPY a.txt /home
COPY d* /g/
COPY emptyd /e/
COPY tree /tree/
COPY tree/sub/../sub /s2
COPY ["a.txt", "spaced name.txt", "/json dest/"]
ADD arch.tgz /ex/
ADD --chown=1000:1000 arch.tgz /ex2/
ADD plain.tar notar.gz /ex3/
ADD arch.tar.bz2 /
ADD arch.tar.xz /exists
ADD b.txt /added
WORKDIR /wd
COPY a.txt .
COPY a.txt rel/
""",
        context={"priv/": 0o700, "priv/in/f": b"p\n", "a.txt": b"a\n", "b.txt": (b"b\n", 0o600),
                 "link.txt": Link("a.txt"), "d1/f": b"d\n", "dfile": b"z\n", "emptyd/": 0o755,
                 "tree/x": (b"#!/bin/sh\n", 0o755), "tree/sub/y": b"y\n",
                 "tree/sub/abs": Link("/etc/passwd"), "tree/sub/rel": Link("../x"),
                 "tree/sub/dangling": Link("nowhere"), "tree/setuid": (b"s", 0o4755),
                 "tree/sticky/": 0o1777, "spaced name.txt": b"sp\n",
                 "arch.tgz": b"", "arch.tar.bz2": b"", "arch.tar.xz": b"", "plain.tar": b"",
                 "notar.gz": b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03\xcb\xc8\x04\x00\xac"
                             b"\x2a\x93\xd8\x02\x00\x00\x00"}),
    "copy-into-existing-dirs": Case("""\
FROM @BASE@
RUN mkdir -p /e1 /e2 /e3 /e4 /e5/sub && chown 5:5 /e1 /e2 /e3 /e4 /e5 /e5/sub \\
 && chmod 700 /e1 /e2 /e3 /e4 /e5/sub
COPY --chown=1000 d /e1/
COPY d /e2/
COPY --chown=1000 a.txt /e3/
COPY a.txt /e4/
COPY --chown=1000 d /e5/sub/new/
COPY d /home/app
COPY d /e2
""",
        context={"a.txt": b"a\n", "d/f": b"f\n", "d/g/": 0o750, "d/g/h": (b"h", 0o755)}),
    "dockerignore": Case("""\
FROM @BASE@
COPY . /ctx
COPY *.md /md/
""",
        context={".dockerignore": "*.md\n!README.md\n**/*.log\nlogs/\n/docs/*\n!docs/keep.txt"
                                  "\n./sub/.hidden\n*.tmp\n.dockerignore\n",
                 "README.md": b"r", "a.md": b"a", "x/y.md": b"y", "z.log": b"z",
                 "a/b/c.log": b"c", "logs/1.txt": b"1", "docs/drop.txt": b"d",
                 "docs/keep.txt": b"k", "sub/.hidden": b"h", "sub/f.tmp": b"t", "f.tmp": b"t",
                 ".env": b"e"}),
    "arg-env-expansion": Case("""\
ARG TAG=unused
ARG BASEIMG=@BASE@
FROM ${BASEIMG}
ARG V=1
ARG EMPTY
ARG FROMCLI
ENV A=hello B="with space" C=${V:-none} D=${EMPTY:-dflt} E=${V:+set} F='$V' G=\\$V
ENV A=again H=$A I=${A}x
ENV legacy value with  spaces
LABEL "q k"="v $A" plain=${B} e=${EMPTY:-unset}
WORKDIR /base/$V
WORKDIR sub/${FROMCLI}
USER ${FROMCLI:-nobody}
EXPOSE ${PORT:-8080} 9000-9001/udp 53/UDP
VOLUME ["/data/$V", "/other"]
VOLUME /list1 /list2
STOPSIGNAL SIG${NOSUCH:-TERM}
RUN echo "$V $FROMCLI $A" > /tmp/out.txt && env | sort | grep -v HOSTNAME > /tmp/env.txt
ARG V=2
RUN echo "$V" > /tmp/out2.txt
""",
        args=["--build-arg", "FROMCLI=app", "--build-arg", "UNUSED=x",
              "--build-arg", "HTTP_PROXY=http://proxy:3128"]),
    "metadata": Case("""\
FROM @BASE@
MAINTAINER someone <a@b.c>
CMD echo shell form
ENTRYPOINT ["/bin/echo", "json"]
CMD ["arg1", "arg 2"]
SHELL ["/bin/sh", "-ec"]
ENV S=after-shell
RUN echo "$S" > /s
HEALTHCHECK --interval=5s --timeout=3s --start-period=1m30s --retries=4 CMD wget -q x || exit 1
STOPSIGNAL 9
USER 1000:1000
LABEL a=1 b="two words"
LABEL legacy form here
ONBUILD RUN echo trigger > /trigger
ONBUILD ENV T=1
EXPOSE 80 443/tcp
HEALTHCHECK NONE
""",
        history=True),
    **{f"cmd-and-entrypoint-{t}": Case(CMD_ENTRYPOINT, args=["--target", t])
       for t in ("cleared", "restored", "emptycmd")},
    "multi-stage": Case("""\
FROM @BASE@ AS build
RUN mkdir -p /out/sub && echo built > /out/a && echo deeper > /out/sub/b \\
 && chown -R 1000:1000 /out/sub && chmod 600 /out/a && ln -s a /out/lnk
FROM @BASE@ AS other
RUN echo other > /other
FROM @BASE@
COPY --from=build /out /from-name
COPY --from=0 /out/a /out/lnk /from-index/
COPY --from=1 /other /
COPY --from=build --chown=app /out/sub /chowned
COPY --from=@BASE@ /etc/passwd /passwd-from-image
""",
        ),  # docker hashes --from sources with its host's user and group names: so do we
    "onbuild-child": Case("""\
FROM @BASE@-parent
RUN cat /trigger > /seen
""",
        parent="""\
FROM @BASE@
ONBUILD RUN echo from-trigger > /trigger
ONBUILD ENV TRIGGERED=yes
ONBUILD COPY a.txt /onbuild-copied
ENV P=1
""",
        context={"a.txt": b"a\n"}),
    "permissions-and-links": Case("""\
FROM @BASE@
RUN mkdir -p /p && cd /p && echo f > f && ln f hard && ln -s f soft && ln -s /nope dangling \\
 && mkfifo fifo && chmod 4755 f && mkdir -m 1777 sticky && mkdir -m 2750 sgid \\
 && chown 1000:10 sgid && touch -h soft
COPY --chown=65534:65534 tree /p/tree
RUN chmod -R go-rwx /p/tree && chown -h 1:1 /p/soft
""",
        context={"tree/a": (b"a", 0o640), "tree/b/": 0o711, "tree/b/c": (b"c", 0o755),
                 "tree/l": Link("a"), "tree/z-hard": HardLink("tree/a")}),
    "parser-directives": Case("""\
# syntax=docker/dockerfile:1
# escape=`
FROM @BASE@
# a comment
RUN echo one `
# a comment inside a continuation is dropped
    two `
    three > /joined
ENV W=C:\\path\\to `
    X=y
COPY a.txt `
     /dir/
LABEL k=`$notvar
""",
        context={"a.txt": b"a\n"}),
    # remote sources, from a server on the host (dockerd fetches them from its own netns,
    # the host's, so 127.0.0.1 reaches it): name, mode 0600, never unpacked, hash in history
    "add-remote": Case("""\
FROM @BASE@
ADD @URL@/f.txt /d/
ADD @URL@/t.tar /d/
ADD @URL@/f.txt /renamed
ADD @URL@/dl/ /cd/
ADD @URL@/redirect /r/
ADD @URL@/f.txt @URL@/t.tar /both/
ADD --chown=1000:1000 @URL@/f.txt /owned/
"""),
}


def _archives(ctx: Path) -> None:
    """The ADD archives of copy-add-corners, made with known owners and modes."""
    import bz2
    import gzip
    import io
    import lzma
    import tarfile

    def tar(entries: list[tuple[str, bytes | None, int, int, int]]) -> bytes:
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
            for name, data, mode, uid, gid in entries:
                ti = tarfile.TarInfo(name)
                ti.mode, ti.uid, ti.gid, ti.mtime = mode, uid, gid, 1_700_000_000
                if data is None:
                    ti.type = tarfile.DIRTYPE
                    tf.addfile(ti)
                else:
                    ti.size = len(data)
                    tf.addfile(ti, io.BytesIO(data))
        return buf.getvalue()

    (ctx / "arch.tgz").write_bytes(gzip.compress(tar([("r", b"ar\n", 0o644, 123, 456)])))
    (ctx / "arch.tar.bz2").write_bytes(bz2.compress(tar([("bzdir", None, 0o700, 5, 5),
                                                          ("bzdir/f", b"bz", 0o640, 5, 5)])))
    (ctx / "arch.tar.xz").write_bytes(lzma.compress(tar([("./xz/deep/f", b"xz", 0o600, 0, 0)])))
    (ctx / "plain.tar").write_bytes(tar([("sub/x", b"xx", 0o600, 7, 8)]))


# ---- fixtures ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def base_tar(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_busybox(tmp_path_factory.mktemp("base") / "busybox.tar")


def _docker(*args: str, stdin: bytes | None = None, check: bool = True
            ) -> subprocess.CompletedProcess[bytes]:
    env = {**os.environ, "DOCKER_BUILDKIT": "0"}
    res = subprocess.run(["docker", *args], input=stdin, capture_output=True, env=env,
                         timeout=300, check=False)
    if check and res.returncode != 0:
        raise AssertionError(f"docker {' '.join(args)}: {res.stderr.decode(errors='replace')}")
    return res


@pytest.fixture(scope="module")
def docker_base(base_tar: Path) -> Iterator[str]:
    """The base imported into docker; at the end, every image built on it goes too."""
    if not docker_available():
        pytest.skip("no docker daemon")
    _docker("import", str(base_tar), BASE)
    base_id = _docker("image", "inspect", "-f", "{{.Id}}", BASE).stdout.decode().strip()
    try:
        yield BASE
    finally:
        _remove_descendants(base_id)
        _docker("rmi", "-f", BASE, check=False)


def _remove_descendants(base_id: str) -> None:
    ids = _docker("images", "-aq", "--no-trunc", check=False).stdout.decode().split()
    if not ids:
        return
    res = _docker("image", "inspect", "-f", "{{.Id}} {{.Parent}}", *ids, check=False)
    parent = dict(line.split(" ", 1) for line in res.stdout.decode().splitlines()
                  if " " in line)

    def depth(i: str) -> int:
        n = 0
        while parent.get(i) and parent[i] != base_id:
            i, n = parent[i], n + 1
        return n if parent.get(i) == base_id else -1

    doomed = sorted((i for i in parent if depth(i) >= 0), key=depth, reverse=True)
    for iid in doomed:
        for cid in _docker("ps", "-aq", "--filter", f"ancestor={iid}",
                           check=False).stdout.decode().split():
            _docker("rm", "-f", cid, check=False)
        _docker("rmi", "-f", iid, check=False)


@pytest.fixture(scope="module")
def shale_cli(tmp_path_factory: pytest.TempPathFactory, base_tar: Path) -> Cli:
    cli = Cli(tmp_path_factory.mktemp("shale") / "root")
    cli.ok("import", str(base_tar), BASE)
    return cli


# ---- the test ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def files_url() -> Iterator[str]:
    from test_build_remote import serve

    with serve() as url:
        yield url


def _build_both(case: Case, ctx: Path, tag: str, shale_cli: Cli, url: str = "") -> None:
    df = case.dockerfile.replace("@BASE@", BASE).replace("@URL@", url)
    (ctx / "Dockerfile").write_text(df)
    _docker("build", "-q", "-t", tag, *case.args, str(ctx))
    res = shale_cli("build", "-q", "-t", tag, *case.args, str(ctx))
    assert res.code == 0, res


@pytest.mark.parametrize("name", sorted(CASES))
def test_same_as_docker(name: str, docker_base: str, shale_cli: Cli, tmp_path: Path,
                        files_url: str) -> None:
    case = CASES[name]
    ctx = write_context(tmp_path / "ctx", case.context)
    if name == "copy-add-corners":
        _archives(ctx)
    if case.parent:
        parent_case = Case(case.parent)
        _build_both(parent_case, ctx, f"{BASE}-parent", shale_cli)
    tag = f"shaletest-build-{RUN_ID}-{name}"
    _build_both(case, ctx, tag, shale_cli, files_url)
    try:
        d_tree, d_cfg = flatten(_docker("save", tag).stdout)
    finally:
        _docker("rmi", tag, check=False)
    code, raw, err = shale_cli.binary("save", tag)
    assert code == 0, err
    s_tree, s_cfg = flatten(raw)
    assert tree_diff(s_tree, d_tree) == []
    assert config_fields(s_cfg) == config_fields(d_cfg)
    assert s_cfg.get("author") == d_cfg.get("author")
    if case.history:
        assert [h.get("created_by") for h in s_cfg["history"]] == \
            [h.get("created_by") for h in d_cfg["history"]]
        assert [bool(h.get("empty_layer")) for h in s_cfg["history"]] == \
            [bool(h.get("empty_layer")) for h in d_cfg["history"]]
