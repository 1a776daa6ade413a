"""The image verbs through the CLI: import, images, tag, rmi (docker's untag/delete rules),
inspect, history, image prune, system check/df, and concurrent tagging.

Images with fixed bytes are made by loading hand-built archives, so IDs, sizes and dates
are known in advance and outputs are asserted exactly. Where it is cheap, the same
scenario runs against the real docker daemon and the outputs are compared.
After every test, every image in the store passes ``assert_image_valid`` and
``system check`` (tests that corrupt the store on purpose ask for ``corrupts_store``).
"""

from __future__ import annotations

import gzip
import json
import os
import re
import subprocess
import tarfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import SHALE_ARGV, Cli, Docker
from helpers import (
    ArchImage,
    Entry,
    arch_image,
    assert_image_valid,
    blob_listing,
    docker_25_archive,
    docker_2010_archive,
    sha256,
    simple_layer,
    tar_bytes,
)

from shale.cli.table import human_duration_ago
from shale.digest import chain_ids
from shale.engine import Engine
from shale.oci import parse_time


# -------------------------------------------------------------------------------- helpers
@pytest.fixture
def corrupts_store() -> None:
    """Requested by tests that damage the store on purpose: skips the after-test check."""


@pytest.fixture(autouse=True)
def _store_invariants(request: pytest.FixtureRequest, root: Path) -> Iterator[None]:
    yield
    if "corrupts_store" in request.fixturenames or not (root / "metadata.db").exists():
        return
    eng = Engine(root)
    try:
        for img in eng.images.list():
            assert_image_valid(eng, img)
        assert eng.check() == []
    finally:
        eng.close()


def human3(n: float) -> str:
    """go-units HumanSizeWithPrecision(n, 3), written out independently of shale."""
    units = ["B", "kB", "MB", "GB", "TB"]
    i = 0
    while n >= 1000 and i < len(units) - 1:
        n /= 1000
        i += 1
    return f"{n:.3g}{units[i]}"


def ago(created: str) -> str:
    return str(human_duration_ago(parse_time(created)))


def table(rows: list[list[str]], header: list[str]) -> str:
    """docker's tabwriter layout (min width 10, padding 3), last column unpadded."""
    widths = [max(10, *(len(r[i]) + 3 for r in [header, *rows])) for i in range(len(header))]
    lines = []
    for r in [header, *rows]:
        cells = [c.ljust(widths[i]) for i, c in enumerate(r[:-1])] + [r[-1]]
        lines.append("".join(cells))
    return "".join(line + "\n" for line in lines)


def load(cli: Cli, images: list[ArchImage]) -> str:
    return cli.ok("load", stdin=docker_25_archive(images))


def short(image_id: str) -> str:
    return image_id[7:19]


# A small fixed scenario: A and B share A's layer; C is untagged (dangling).
L1 = simple_layer({"app/one.txt": b"one\n" * 100, "bin/tool": b"\x7fELF" + b"x" * 3000})
L2 = tar_bytes([Entry("app", "dir"), Entry("app/two.txt", data=b"two\n" * 500),
                Entry("app/link", "symlink", link="/app/two.txt")])
L3 = simple_layer({"c/file": b"c" * 7777})
A = arch_image([L1], ["shaletest-app:1", "shaletest-app:latest"], created="2020-01-01T00:00:00Z")
B = arch_image([L1, L2], ["shaletest-web:2"], created="2021-06-01T12:00:00Z",
               history=[{"created": "2020-01-01T00:00:00Z", "created_by": "/bin/sh -c #(nop) "
                         "ADD file:0123456789abcdef0123456789abcdef in / "},
                        {"created": "2021-06-01T12:00:00Z",
                         "created_by": "/bin/sh -c #(nop)  ENV X=1", "empty_layer": True},
                        {"created": "2021-06-01T12:00:00Z",
                         "created_by": "/bin/sh -c mkdir -p /app && echo two > /app/two.txt "
                                       "&& ln -s /app/two.txt /app/link",
                         "comment": "second step"}])
C = arch_image([L3], [], created="2019-01-01T00:00:00Z")
SIZE_A = 400 + 3004              # regular files only
SIZE_B = SIZE_A + 2000 + 12      # plus a file and a 12-byte symlink target
SIZE_C = 7777


@pytest.fixture
def abc(cli: Cli) -> None:
    out = load(cli, [A, B, C])
    # docker 20.10: the last image has no tag, so every image's ID is listed too
    assert out == ("Loaded image: shaletest-app:1\nLoaded image: shaletest-app:latest\n"
                   f"Loaded image: shaletest-web:2\nLoaded image ID: {A.id}\n"
                   f"Loaded image ID: {B.id}\nLoaded image ID: {C.id}\n")


def images_rows(*rows: tuple[str, str, ArchImage, int]) -> list[list[str]]:
    return [[repo, tag, short(img.id), ago(json.loads(img.config)["created"]), human3(size)]
            for repo, tag, img, size in rows]


# --------------------------------------------------------------------------------- import
def test_import_file(cli: Cli, engine: Engine, busybox_tar: Path) -> None:
    out = cli.ok("import", str(busybox_tar), "shaletest-bb:1")
    image_id = out.strip()
    assert re.fullmatch(r"sha256:[0-9a-f]{64}\n", out)
    img = engine.image("shaletest-bb:1")
    assert img.id.value == image_id
    assert_image_valid(engine, img)
    # the layer is the tarball's exact bytes: its sha256 is the diff_id
    diff_id = sha256(busybox_tar.read_bytes())
    assert [d.value for d in img.config.diff_ids] == [diff_id]
    assert engine.content.path(img.config.diff_ids[0]).read_bytes() == busybox_tar.read_bytes()
    data = img.config.data
    assert list(data) == ["architecture", "comment", "config", "container_config", "created",
                          "history", "os", "rootfs"]
    assert data["comment"] == "Imported from -"
    assert data["history"] == [{"created": data["created"], "comment": "Imported from -"}]
    assert (data["os"], data["architecture"]) == ("linux", "amd64")
    # docker's size: busybox + every applet's 12-byte symlink target + passwd + group
    with tarfile.open(busybox_tar) as tf:
        size = sum(m.size if m.isfile() else len(m.linkname) if m.issym() else 0
                   for m in tf.getmembers())
    assert engine.image_size(img) == size
    out = cli.ok("images")
    created = re.split(r"\s{3,}", out.splitlines()[1])[3]
    assert re.fullmatch(r"(Less than a second|\d+ seconds?) ago", created)
    assert out == table([["shaletest-bb", "1", image_id[7:19], created, human3(size)]],
                        ["REPOSITORY", "TAG", "IMAGE ID", "CREATED", "SIZE"])


def test_import_stdin_and_gzip_give_the_same_layer(cli: Cli, engine: Engine,
                                                  busybox_tar: Path) -> None:
    raw = busybox_tar.read_bytes()
    cli.ok("import", "-", "shaletest-bb:stdin", stdin=raw)
    gz = busybox_tar.parent / "busybox.tar.gz"
    gz.write_bytes(gzip.compress(raw, compresslevel=1))
    cli.ok("import", str(gz), "shaletest-bb:gz")
    a, b = engine.image("shaletest-bb:stdin"), engine.image("shaletest-bb:gz")
    assert a.config.diff_ids == b.config.diff_ids == [engine.images.layer(
        a.config.diff_ids[0]).diff_id]
    assert a.config.diff_ids[0].value == sha256(raw)
    # stored once, uncompressed (layers made by import are kept as plain tars)
    layer = engine.images.layer(a.config.diff_ids[0])
    assert (layer.blob, layer.blob_size, layer.diff_size) == (layer.diff_id, len(raw), len(raw))
    assert a.config.data["comment"] == "Imported from -"
    blobs = blob_listing(engine.root)
    assert sorted(blobs) == sorted([a.id.hex, b.id.hex, layer.diff_id.hex])


def test_import_message_sets_comment_and_history(cli: Cli, engine: Engine,
                                                 busybox_tar: Path) -> None:
    image_id = cli.ok("import", "-m", "hello msg", str(busybox_tar), "shaletest-bb:m").strip()
    img = engine.image(image_id)
    assert img.config.data["comment"] == "hello msg"
    assert img.config.data["history"][0]["comment"] == "hello msg"
    out = cli.ok("history", "shaletest-bb:m")
    row = out.splitlines()[1]
    assert row.startswith(image_id[7:19] + "   ")
    assert row.endswith("   hello msg")


def test_import_without_name_is_dangling(cli: Cli, busybox_tar: Path) -> None:
    image_id = cli.ok("import", str(busybox_tar)).strip()
    assert cli.ok("images", "-q") == image_id[7:19] + "\n"
    assert cli.ok("images", "-q", "--filter", "dangling=true") == image_id[7:19] + "\n"
    assert cli.ok("images", "--format", "json").count('"Repository":"\\u003cnone\\u003e"') == 1


def test_import_with_change_sets_config(cli: Cli, engine: Engine, busybox_tar: Path) -> None:
    image_id = cli.ok("import", "-c", 'CMD ["/bin/sh"]', "-c", "ENV A=1 B=2",
                      "-c", "WORKDIR /w", str(busybox_tar), "shaletest-bb:c").strip()
    cfg = engine.image(image_id).config.config
    assert (cfg["Cmd"], cfg["Env"], cfg["WorkingDir"]) == (["/bin/sh"], ["A=1", "B=2"], "/w")


def test_import_matches_docker(cli: Cli, docker: Docker, busybox_tar: Path) -> None:
    changes = ['CMD ["/bin/sh"]', "ENV A=1 B=2", "WORKDIR /w", "EXPOSE 80", "LABEL x=y",
               "USER nobody", 'ENTRYPOINT ["/bin/env"]']
    args = [a for c in changes for a in ("-c", c)] + ["-m", "a message", str(busybox_tar)]
    docker.track("shaletest-imp:1")
    docker("import", *args, "shaletest-imp:1")
    cli.ok("import", *args, "shaletest-imp:1")
    ours = json.loads(cli.ok("inspect", "shaletest-imp:1"))[0]
    theirs = json.loads(docker.out("inspect", "shaletest-imp:1"))[0]
    # what differs by nature: the ID (it hashes the creation time), times, docker's own
    # version and storage paths
    for x in (ours, theirs):
        for key in ("Id", "Created", "DockerVersion", "GraphDriver", "Metadata"):
            del x[key]
    assert ours == theirs
    assert list(ours) == list(theirs)
    row = [re.split(r"\s{3,}", x)[2:] for x in (
        cli.ok("history", "shaletest-imp:1").splitlines()[1],
        docker.out("history", "shaletest-imp:1").splitlines()[1])]
    assert row[0] == row[1] == [human3(theirs["Size"]), "a message"]


def test_import_missing_file(cli: Cli, tmp_path: Path) -> None:
    res = cli("import", str(tmp_path / "nope.tar"), "shaletest-x:1")
    assert res == (1, "", f"Error: open {tmp_path}/nope.tar: No such file or directory\n")
    assert cli.ok("images", "-qa") == ""


@pytest.mark.parametrize(("entries", "what"), [
    ([Entry("../evil", data=b"x")], "'../evil': path escapes the root"),
    ([Entry("a", "dir"), Entry("a/../../evil", data=b"x")],
     "'a/../../evil': path escapes the root"),
    ([Entry("x", "hardlink", link="../../etc/passwd")], "path escapes the root"),
    ([Entry("etc/.wh...", data=b"")], "invalid whiteout name"),
])
def test_import_hostile_tar_is_refused(cli: Cli, root: Path, entries: list[Entry],
                                       what: str) -> None:
    res = cli("import", "-", "shaletest-evil:1", stdin=tar_bytes(entries))
    assert res.code == 1
    assert res.out == ""
    assert res.err.startswith("Error: ") and res.err.count("\n") == 1
    assert what in res.err
    assert cli.ok("images", "-qa") == ""
    assert blob_listing(root) == {}


# --------------------------------------------------------------------------------- images
def test_images_table(cli: Cli, abc: None) -> None:
    assert cli.ok("images") == table(images_rows(
        ("shaletest-web", "2", B, SIZE_B), ("shaletest-app", "1", A, SIZE_A),
        ("shaletest-app", "latest", A, SIZE_A), ("<none>", "<none>", C, SIZE_C)),
        ["REPOSITORY", "TAG", "IMAGE ID", "CREATED", "SIZE"])


def test_images_quiet_no_trunc_digests(cli: Cli, abc: None) -> None:
    # -q: one line per image (not per tag), newest first
    assert cli.ok("images", "-q") == "".join(short(i.id) + "\n" for i in (B, A, C))
    assert cli.ok("images", "-q", "--no-trunc") == "".join(i.id + "\n" for i in (B, A, C))
    out = cli.ok("images", "--no-trunc", "shaletest-web")
    assert out == table([["shaletest-web", "2", B.id, ago(json.loads(B.config)["created"]),
                          human3(SIZE_B)]], ["REPOSITORY", "TAG", "IMAGE ID", "CREATED",
                                             "SIZE"])
    out = cli.ok("images", "--digests", "shaletest-app")
    rows = [[*r[:2], "<none>", *r[2:]] for r in images_rows(
        ("shaletest-app", "1", A, SIZE_A), ("shaletest-app", "latest", A, SIZE_A))]
    assert out == table(rows, ["REPOSITORY", "TAG", "DIGEST", "IMAGE ID", "CREATED", "SIZE"])


def test_images_repo_digest_column(cli: Cli, engine: Engine, abc: None) -> None:
    """A repo digest (set by pull) shows in --digests; rmi of the repository's last tag
    removes the digest reference with it, as docker does."""
    from shale.refs import Reference

    digest = "sha256:" + "ab" * 32
    ref = Reference.parse(f"shaletest-web@{digest}")
    engine.images.publish(engine.image("shaletest-web:2").config, [], repo_digest=ref)
    out = cli.ok("images", "--digests", "shaletest-web")
    assert out.splitlines()[1].split() [:3] == ["shaletest-web", "2", digest]
    assert cli.ok("rmi", "shaletest-web:2") == (
        f"Untagged: shaletest-web:2\nUntagged: shaletest-web@{digest}\n"
        f"Deleted: {B.id}\nDeleted: {chain_ids(B.diff_ids)[1].value}\n")


def test_images_format_json(cli: Cli, abc: None) -> None:
    lines = cli.ok("images", "--format", "json").splitlines()
    assert len(lines) == 4
    created = json.loads(A.config)["created"]
    created_at = time.strftime("%Y-%m-%d %H:%M:%S +0000 UTC", time.gmtime(parse_time(created)))
    # Go's encoding/json: sorted keys, <none> escaped as \u003cnone\u003e
    assert lines[1] == (
        '{"Containers":"N/A","CreatedAt":"' + created_at + '","CreatedSince":"'
        + ago(created) + '","Digest":"\\u003cnone\\u003e","ID":"' + short(A.id)
        + '","Repository":"shaletest-app","SharedSize":"N/A","Size":"' + human3(SIZE_A)
        + '","Tag":"1","UniqueSize":"N/A","VirtualSize":"' + f"{SIZE_A / 1000:.4g}kB" + '"}')
    assert json.loads(lines[3])["Repository"] == "<none>"


def test_images_filter_dangling(cli: Cli, abc: None) -> None:
    assert cli.ok("images", "-q", "--filter", "dangling=true") == short(C.id) + "\n"
    assert cli.ok("images", "-q", "-f", "dangling=false") == f"{short(B.id)}\n{short(A.id)}\n"
    # docker's checks and messages
    assert cli("images", "--filter", "bogus=1") == (1, "", "Error: Invalid filter 'bogus'\n")
    assert cli("images", "-f", "dangling=1") == (1, "", "Error: Invalid filter 'dangling=[1]'\n")
    assert cli("images", "-f", "dangling") == (
        125, "", 'Error: invalid argument "dangling" for "-f, --filter" flag: bad format of '
                 "filter (expected name=value)\n")


def _parent_chain() -> tuple[ArchImage, ArchImage]:
    """P (untagged) and its child K, as a docker save of a classic build step pair."""
    lp = simple_layer({"p": b"parent"})
    lk = simple_layer({"k": b"child!"})
    hp = [{"created": "2022-01-01T00:00:00Z", "created_by": "/bin/sh -c #(nop) ADD p /"}]
    hk = [*hp, {"created": "2022-01-02T00:00:00Z", "created_by": "/bin/sh -c echo child > /k"}]
    p = arch_image([lp], [], history=hp, created="2022-01-01T00:00:00Z")
    k = arch_image([lp, lk], ["shaletest-kid:1"], history=hk, created="2022-01-02T00:00:00Z")
    k.parent = p.id
    return p, k


def test_images_all_shows_intermediate(cli: Cli, engine: Engine) -> None:
    p, k = _parent_chain()
    cli.ok("load", stdin=docker_2010_archive([p, k]))
    assert engine.image(k.id).parent == p.id
    assert cli.ok("images", "-q") == short(k.id) + "\n"
    assert cli.ok("images", "-qa") == f"{short(k.id)}\n{short(p.id)}\n"
    # an untagged parent is not dangling, with or without -a
    assert cli.ok("images", "-q", "--filter", "dangling=true") == ""
    assert cli.ok("images", "-qa", "--filter", "dangling=true") == ""
    assert cli.ok("images", "-qa", "--filter", "dangling=false") == f"{short(k.id)}\n"
    out = cli.ok("history", "shaletest-kid:1")
    assert [ln.split()[0] for ln in out.splitlines()[1:]] == [short(k.id), short(p.id)]


# ------------------------------------------------------------------------------------ tag
def test_tag_and_retag(cli: Cli, engine: Engine, abc: None) -> None:
    assert cli("tag", "shaletest-app:1", "shaletest-new") == (0, "", "")
    assert cli("tag", short(B.id), "localhost:5000/shaletest/x:v1") == (0, "", "")
    assert engine.image("shaletest-new:latest").id.value == A.id
    assert engine.image("localhost:5000/shaletest/x:v1").id.value == B.id
    # moving a tag to another image leaves the old one untagged
    cli.ok("tag", "shaletest-web:2", "shaletest-app:1")
    assert engine.image("shaletest-app:1").id.value == B.id
    assert sorted(engine.image(A.id).familiar_tags) == ["shaletest-app:latest",
                                                        "shaletest-new:latest"]


def test_tag_errors(cli: Cli, abc: None) -> None:
    assert cli("tag", "shaletest-nope:1", "shaletest-x:1") == (
        1, "", "Error: No such image: shaletest-nope:1\n")
    assert cli("tag", "shaletest-nope:1", "Shaletest-X:1") == (
        1, "", "Error: invalid reference format: repository name (library/Shaletest-X) "
                 "must be lowercase\n")
    assert cli("tag", "shaletest-app:1", f"shaletest-x@sha256:{'0' * 64}") == (
        1, "", "Error: refusing to create a tag with a digest reference\n")


def _tag_worker(root: str, first: int) -> subprocess.Popen[bytes]:
    script = ("import sys\nfrom shale.cli import main\n"
              f"for n in range({first}, {first + 5}):\n"
              f"    rc = main(['--root', {root!r}, 'tag', 'shaletest-app:1',"
              " f'shaletest-many:{n}'])\n"
              "    if rc: sys.exit(rc)\n")
    return subprocess.Popen([SHALE_ARGV[0], "-c", script], stderr=subprocess.PIPE)


def test_concurrent_tags_are_never_lost(cli: Cli, root: Path, abc: None) -> None:
    procs = [_tag_worker(str(root), 5 * i) for i in range(8)]
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert (p.returncode, err) == (0, b"")
    tags = cli.ok("images", "--format", "json", "shaletest-many")
    got = sorted(int(json.loads(x)["Tag"]) for x in tags.splitlines())
    assert got == list(range(40))


# ------------------------------------------------------------------------------------ rmi
def test_rmi_one_of_two_tags_only_untags(cli: Cli, root: Path, abc: None) -> None:
    blobs = blob_listing(root)
    assert cli("rmi", "shaletest-app:latest") == (0, "Untagged: shaletest-app:latest\n", "")
    assert blob_listing(root) == blobs
    assert cli.ok("images", "-q", "shaletest-app") == short(A.id) + "\n"


def test_rmi_last_tag_deletes_image_and_unshared_layers(cli: Cli, root: Path,
                                                        abc: None) -> None:
    # B shares its base layer with A: only B's top chain goes
    b_chains = chain_ids(B.diff_ids)
    assert cli("rmi", "shaletest-web:2") == (
        0, f"Untagged: shaletest-web:2\nDeleted: {B.id}\nDeleted: {b_chains[1].value}\n", "")
    blobs = blob_listing(root)
    assert sha256(L1)[7:] in blobs and sha256(L2)[7:] not in blobs
    assert B.id[7:] not in blobs
    # then A's last tags: its layer goes with the last one
    assert cli("rmi", "shaletest-app:1", "shaletest-app") == (
        0, f"Untagged: shaletest-app:1\nUntagged: shaletest-app:latest\nDeleted: {A.id}\n"
           f"Deleted: {sha256(L1)}\n", "")
    assert sorted(blob_listing(root)) == sorted([C.id[7:], sha256(L3)[7:]])


def test_rmi_by_id_with_tags_in_two_repos_refuses(cli: Cli, root: Path, abc: None) -> None:
    cli.ok("tag", "shaletest-app:1", "shaletest-other:1")
    before = (cli.ok("images", "-a"), blob_listing(root))
    msg = (f"Error: conflict: unable to delete {short(A.id)} (must be forced) - image is "
           "referenced in multiple repositories\n")
    assert cli("rmi", short(A.id)) == (1, "", msg)
    assert cli("rmi", A.id) == (1, "", msg)
    assert (cli.ok("images", "-a"), blob_listing(root)) == before
    # -f untags everything (sorted by full name), then deletes
    assert cli("rmi", "-f", short(A.id)) == (
        0, "Untagged: shaletest-app:1\nUntagged: shaletest-app:latest\n"
           f"Untagged: shaletest-other:1\nDeleted: {A.id}\n", "")


def test_rmi_by_id_with_two_tags_in_one_repo_refuses_too(cli: Cli, abc: None) -> None:
    # docker's "single reference" is at most one tag, whatever the repositories
    assert cli("rmi", short(A.id)) == (
        1, "", f"Error: conflict: unable to delete {short(A.id)} (must be forced) - image is "
               "referenced in multiple repositories\n")


def test_rmi_by_id_with_one_tag(cli: Cli, abc: None) -> None:
    assert cli("rmi", B.id[7:]) == (
        0, f"Untagged: shaletest-web:2\nDeleted: {B.id}\n"
           f"Deleted: {chain_ids(B.diff_ids)[1].value}\n", "")
    assert cli("rmi", short(C.id)) == (
        0, f"Deleted: {C.id}\nDeleted: {sha256(L3)}\n", "")


def test_rmi_errors_and_exit_codes(cli: Cli, abc: None) -> None:
    assert cli("rmi", "shaletest-nope:1") == (1, "", "Error: No such image: shaletest-nope:1\n")
    assert cli("rmi", "shaletest-nope") == (
        1, "", "Error: No such image: shaletest-nope:latest\n")
    assert cli("rmi", "0" * 64) == (1, "", f"Error: No such image: sha256:{'0' * 64}\n")
    # one bad name does not stop the others; the exit code reports the failure
    assert cli("rmi", "shaletest-nope", "shaletest-app:latest") == (
        1, "Untagged: shaletest-app:latest\n", "Error: No such image: shaletest-nope:latest\n")


def test_rmi_refuses_image_used_by_a_container(cli: Cli, busybox_tar: Path) -> None:
    image_id = cli.ok("import", str(busybox_tar), "shaletest-used:1").strip()
    cid = cli.ok("create", "--name", "shaletest-user", "shaletest-used:1", "/bin/true").strip()
    assert cli("rmi", "shaletest-used:1") == (
        1, "", 'Error: conflict: unable to remove repository reference "shaletest-used:1" '
               f"(must force) - container {cid[:12]} is using its referenced image "
               f"{image_id[7:19]}\n")
    assert cli("rmi", image_id) == (
        1, "", f"Error: conflict: unable to delete {image_id[7:19]} (must be forced) - image "
               f"is being used by stopped container {cid[:12]}\n")


def test_rmi_prunes_untagged_parents(cli: Cli, root: Path) -> None:
    p, k = _parent_chain()
    cli.ok("load", stdin=docker_2010_archive([p, k]))
    kc = chain_ids(k.diff_ids)
    assert cli("rmi", p.id) == (1, "", f"Error: conflict: unable to delete {short(p.id)} "
                                       "(cannot be forced) - image has dependent child images\n")
    assert cli("rmi", "-f", short(p.id))[0] == 1
    assert cli("rmi", "shaletest-kid:1") == (
        0, f"Untagged: shaletest-kid:1\nDeleted: {k.id}\nDeleted: {kc[1].value}\n"
           f"Deleted: {p.id}\nDeleted: {kc[0].value}\n", "")
    assert blob_listing(root) == {}


def test_rmi_no_prune_keeps_parent(cli: Cli) -> None:
    p, k = _parent_chain()
    cli.ok("load", stdin=docker_2010_archive([p, k]))
    assert cli.ok("rmi", "--no-prune", "shaletest-kid:1") == (
        f"Untagged: shaletest-kid:1\nDeleted: {k.id}\n"
        f"Deleted: {chain_ids(k.diff_ids)[1].value}\n")
    assert cli.ok("images", "-q", "--filter", "dangling=true") == short(p.id) + "\n"


def _norm_docker(text: str) -> str:
    return text.replace("Error response from daemon: ", "Error: ")


def _rmi_scenario(run: Callable[..., tuple[int, str, str]], a_id: str
                  ) -> list[tuple[int, str, str]]:
    """The same rmi steps on docker and on shale; ``run(*args) -> (code, out, err)``."""
    steps = [("tag", "shaletest-cmp:1", "shaletest-cmp:2"), ("rmi", "shaletest-cmp:2"),
             ("tag", "shaletest-cmp:1", "shaletest-cmp2:1"), ("rmi", a_id[7:19]),
             ("rmi", "shaletest-nope:1"), ("rmi", "shaletest-cmp2:1"),
             ("tag", "shaletest-cmp:1", "shaletest-cmp:3"), ("rmi", a_id),
             ("rmi", "-f", a_id), ("rmi", "shaletest-cmp-b:1")]
    return [run(*s) for s in steps]


def test_rmi_matches_docker(cli: Cli, docker: Docker) -> None:
    # random bytes: layers no other docker image shares, so docker prints every layer
    la = simple_layer({"a": os.urandom(2000)})
    lb = tar_bytes([Entry("b", data=os.urandom(3000)), Entry("l", "symlink", link="/a")])
    # distinct dates: docker orders images of equal age arbitrarily
    a = arch_image([la], ["shaletest-cmp:1"], created="2022-02-02T00:00:00Z")
    b = arch_image([la, lb], ["shaletest-cmp-b:1"], history=[
        {"created_by": "base"}, {"created_by": "env", "empty_layer": True}, {"created_by": "b"}])
    archive = docker_25_archive([a, b])
    docker.track(a.id, b.id, "shaletest-cmp:1", "shaletest-cmp:2", "shaletest-cmp2:1",
                 "shaletest-cmp:3", "shaletest-cmp-b:1")
    assert docker.out("load", stdin=archive) == cli.ok("load", stdin=archive)
    # same IDs, sizes and dates on both sides: the tables match exactly
    assert docker.out("images", "--filter", "reference=shaletest-cmp*") == cli.ok(
        "images", "--filter", "reference=shaletest-cmp*")

    def run_docker(*args: str) -> tuple[int, str, str]:
        r = docker(*args, check=False)
        return r.returncode, r.stdout.decode(), _norm_docker(r.stderr.decode())

    # outputs, error lines and exit codes, step by step
    assert _rmi_scenario(cli, a.id) == _rmi_scenario(run_docker, a.id)


def test_parent_chain_matches_docker(cli: Cli, docker: Docker) -> None:
    """A docker save of a build step and its parent (manifest.json "Parent"): images -a,
    history IDs and the pruning rmi agree with docker's."""
    lp, lk = simple_layer({"p": os.urandom(1000)}), simple_layer({"k": os.urandom(1000)})
    hp = [{"created": "2022-01-01T00:00:00Z", "created_by": "/bin/sh -c #(nop) ADD p /"}]
    p = arch_image([lp], [], history=hp, created="2022-01-01T00:00:00Z")
    k = arch_image([lp, lk], ["shaletest-kid:1"], created="2022-01-02T00:00:00Z", history=[
        *hp, {"created": "2022-01-02T00:00:00Z", "created_by": "/bin/sh -c echo k > /k"}])
    k.parent = p.id
    archive = docker_2010_archive([p, k])
    docker.track(k.id, p.id, "shaletest-kid:1")
    assert docker.out("load", stdin=archive) == cli.ok("load", stdin=archive)
    ref = "reference=shaletest-kid"
    for args in (["images", "-a", "--no-trunc", "--filter", ref], ["history", "shaletest-kid:1"],
                 ["image", "inspect", "-f", "{{.Parent}}", "shaletest-kid:1"]):
        if args[1] == "inspect":
            pytest.importorskip("shale.cli.format")
        assert cli.ok(*args) == docker.out(*args), args
    ours = {k.id, p.id}
    for args in (["images", "-qa", "--no-trunc", "-f", "dangling=true"],
                 ["images", "-q", "--no-trunc", "-f", "dangling=true"],
                 ["images", "-qa", "--no-trunc", "-f", "dangling=false"]):
        mine = [x for x in docker.out(*args).split() if x in ours]
        assert cli.ok(*args).split() == mine, args
    assert _norm_docker(docker("rmi", p.id, check=False).stderr.decode()) == \
        cli("rmi", p.id).err
    assert cli.ok("rmi", "shaletest-kid:1") == docker.out("rmi", "shaletest-kid:1")


def test_images_history_inspect_match_docker(cli: Cli, docker: Docker) -> None:
    la = simple_layer({"etc/x": os.urandom(1500), "usr/bin/y": os.urandom(2500)})
    lb = tar_bytes([Entry("etc", "dir"), Entry("etc/.wh.x"), Entry("z", "symlink",
                                                                    link="usr/bin/y")])
    long_cmd = "/bin/sh -c set -e; apt-get update && apt-get install -y --no-install " \
               "recommends emacs apache2 && rm -rf /var/lib/apt/lists/*"
    b = arch_image([la, lb], ["shaletest-hist:1"], created="2021-03-04T05:06:07.123456789Z",
                   history=[{"created": "2021-03-04T05:06:00Z", "created_by": "/bin/sh -c "
                             "#(nop) ADD file:abc in / "},
                            {"created": "2021-03-04T05:06:01Z",
                             "created_by": "/bin/sh -c #(nop)  CMD [\"sh\"]",
                             "empty_layer": True},
                            {"created": "2021-03-04T05:06:07.123456789Z",
                             "created_by": long_cmd, "comment": "a comment"}],
                   config={"Env": ["PATH=/usr/bin:/bin"], "Cmd": ["sh"], "Labels": {"a": "b"}},
                   extra={"author": "someone"})
    archive = docker_2010_archive([b])
    docker.track(b.id, "shaletest-hist:1")
    docker("load", stdin=archive)
    cli.ok("load", stdin=archive)
    for args in (["images", "--filter", "reference=shaletest-hist"],
                 ["images", "--digests", "--no-trunc", "--filter", "reference=shaletest-hist"],
                 ["history", "shaletest-hist:1"], ["history", "--no-trunc", "shaletest-hist:1"],
                 ["history", "-q", "shaletest-hist:1"], ["history", "-H=false", b.id]):
        assert cli.ok(*args) == docker.out(*args), args
    ours = json.loads(cli.ok("inspect", "shaletest-hist:1"))
    theirs = json.loads(docker.out("inspect", "shaletest-hist:1"))
    for x in (ours[0], theirs[0]):
        del x["GraphDriver"], x["Metadata"]
    theirs[0]["DockerVersion"] = ""  # docker fills in its own version when the config has none
    assert list(ours[0]) == list(theirs[0])
    for key, value in theirs[0].items():
        assert (key, ours[0][key]) == (key, value)


# -------------------------------------------------------------------------------- inspect
def test_inspect_shape(cli: Cli, engine: Engine, abc: None) -> None:
    res = cli("inspect", "shaletest-web:2")
    assert res.code == 0 and res.err == ""
    (info,) = json.loads(res.out)
    assert list(info) == ["Id", "RepoTags", "RepoDigests", "Parent", "Comment", "Created",
                          "Container", "ContainerConfig", "DockerVersion", "Author", "Config",
                          "Architecture", "Os", "Size", "VirtualSize", "GraphDriver", "RootFS",
                          "Metadata"]
    assert info["Id"] == B.id
    assert (info["RepoTags"], info["RepoDigests"], info["Parent"]) == (["shaletest-web:2"], [],
                                                                       "")
    assert info["Created"] == "2021-06-01T12:00:00Z"
    assert info["Config"] == {
        "Hostname": "", "Domainname": "", "User": "", "AttachStdin": False,
        "AttachStdout": False, "AttachStderr": False, "Tty": False, "OpenStdin": False,
        "StdinOnce": False, "Env": ["A=1"], "Cmd": None, "Image": "", "Volumes": None,
        "WorkingDir": "", "Entrypoint": None, "OnBuild": None, "Labels": None}
    assert (info["Architecture"], info["Os"]) == ("amd64", "linux")
    assert info["Size"] == info["VirtualSize"] == SIZE_B
    assert info["RootFS"] == {"Type": "layers", "Layers": B.diff_ids}
    # the JSON text is docker's: 4-space indent, a list, a trailing newline
    assert res.out == json.dumps([info], indent=4) + "\n"


def test_inspect_several_and_missing(cli: Cli, abc: None) -> None:
    res = cli("inspect", "shaletest-app:1", "shaletest-nope", short(C.id))
    assert res.code == 1
    assert [x["Id"] for x in json.loads(res.out)] == [A.id, C.id]
    assert res.err == "Error: No such object: shaletest-nope\n"


# -------------------------------------------------------------------------------- history
def test_history_after_load(cli: Cli, abc: None) -> None:
    cb = json.loads(B.config)["history"]
    out = cli.ok("history", "shaletest-web:2")
    rows = [[short(B.id), ago(cb[2]["created"]), cb[2]["created_by"][:44] + "…",
             human3(2000 + 12), "second step"],
            ["<missing>", ago(cb[1]["created"]), cb[1]["created_by"], "0B", ""],
            ["<missing>", ago(cb[0]["created"]), cb[0]["created_by"][:44] + "…",
             human3(SIZE_A), ""]]
    assert out == table(rows, ["IMAGE", "CREATED", "CREATED BY", "SIZE", "COMMENT"])
    assert cli.ok("history", "-q", "shaletest-web:2") == f"{short(B.id)}\n<missing>\n<missing>\n"
    out = cli.ok("history", "--no-trunc", "shaletest-web:2")
    assert out.splitlines()[1].startswith(B.id + "   ")
    assert cb[2]["created_by"] in out and "…" not in out


def test_history_format_json(cli: Cli, abc: None) -> None:
    lines = cli.ok("history", "--format", "json", "shaletest-web:2").splitlines()
    cb = json.loads(B.config)["history"]
    assert [json.loads(x) for x in lines] == [
        {"Comment": h.get("comment", ""), "CreatedAt": h["created"],
         "CreatedBy": h["created_by"] if len(h["created_by"]) <= 45
         else h["created_by"][:44] + "…", "CreatedSince": ago(h["created"]), "ID": i,
         "Size": s} for h, i, s in zip(reversed(cb), [short(B.id), "<missing>", "<missing>"],
                                        [human3(2012), "0B", human3(SIZE_A)], strict=True)]
    assert lines[0].startswith('{"Comment":"second step","CreatedAt":"2021-06-01T12:00:00Z",')


def test_history_unknown_image(cli: Cli) -> None:
    assert cli("history", "shaletest-nope") == (
        1, "", "Error: No such image: shaletest-nope:latest\n")


# ---------------------------------------------------------------------- prune, check, df
def test_image_prune_removes_only_dangling(cli: Cli, root: Path, abc: None) -> None:
    res = cli("image", "prune", "-f")
    assert res.code == 0 and res.err == ""
    head, _, total = res.out.rpartition("\n\n")
    assert head == f"Deleted Images:\ndeleted: {C.id}\ndeleted: {sha256(L3)}"
    assert re.fullmatch(r"Total reclaimed space: \d+(\.\d+)?[kM]?B\n", total)
    assert cli.ok("images", "-qa") == f"{short(B.id)}\n{short(A.id)}\n"
    assert sha256(L3)[7:] not in blob_listing(root)
    # nothing left to prune
    assert cli.ok("image", "prune", "-f") == "Total reclaimed space: 0B\n"


def test_system_check_clean_then_corrupt_blob(cli: Cli, root: Path, abc: None,
                                              corrupts_store: None) -> None:
    assert cli("system", "check") == (0, "no problems found\n", "")
    blob = root / "blobs" / "sha256" / sha256(L2)[7:]
    data = bytearray(blob.read_bytes())
    data[700] ^= 0xFF  # same size, different bytes: only a digest check can tell
    blob.chmod(0o644)
    blob.write_bytes(bytes(data))
    assert cli("system", "check") == (
        1, f"blob {sha256(L2)}: content does not match its digest\n", "1 problem(s) found\n")
    blob.unlink()
    assert cli("system", "check") == (
        1, f"image {B.id}: layer {sha256(L2)}: blob {sha256(L2)} missing\n",
        "1 problem(s) found\n")


def test_system_df(cli: Cli, root: Path, abc: None) -> None:
    out = cli.ok("system", "df")
    size = human3(len(L1) + len(L2) + len(L3))
    assert out == table([["Images", "3", "0", size, f"{size} (100%)"]],
                        ["TYPE", "TOTAL", "ACTIVE", "SIZE", "RECLAIMABLE"])


def test_unknown_verb_and_bad_flag(cli: Cli) -> None:
    assert cli("frobnicate") == (125, "", "Error: unknown command: shale frobnicate\n"
                                          "See 'shale --help'\n")
    code, out, err = cli("images", "--bogus")
    assert (code, out) == (125, "")
    assert err.startswith("Error: unrecognized arguments: --bogus")
