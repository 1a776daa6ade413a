"""A container's filesystem on both storage drivers (overlay, vfs): the seed 004 scenario,
diff (never the init stubs), commit (whiteouts kept; docker loads and runs the result),
export, cp both ways with hostile symlinks planted in the container, volumes (copy-up from
the image), and rmi refused while a container uses an image.

Real containers (root), the builtin runtime; the run/exec semantics of both runtimes are in
test_containers.py.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
import uuid
from pathlib import Path

import pytest
from conftest import Docker
from container_fixtures import (  # noqa: F401 (fixtures)
    WEBAPPS,
    Shale,
    assert_top_layer_sized,
    bb_tar_fixture,
    layered_fixture,
    needs_root,
    pty_run,
    sh1_fixture,
)

pytestmark = needs_root

STUBS = ("/etc/hosts", "/etc/hostname", "/etc/resolv.conf", "/etc/mtab", "/dev", "/proc",
         "/sys", "/etc")


def _members(data: bytes) -> dict[str, tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        return {m.name.rstrip("/"): m for m in tf.getmembers()}


def _read_member(data: bytes, name: str) -> bytes:
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        f = tf.extractfile(name)
        assert f is not None, name
        return f.read()


def _last_layer(archive: Path) -> dict[str, tarfile.TarInfo]:
    """The members of the top layer of the one image in a ``shale save`` archive."""
    with tarfile.open(archive) as tf:
        manifest = json.load(tf.extractfile("manifest.json"))  # type: ignore[arg-type]
        layer = tf.extractfile(manifest[0]["Layers"][-1])
        assert layer is not None
        return _members(layer.read())


# ------------------------------------------------------------------------ seed 004
def test_seed_004_commit_after_exec_rm(layered: Shale, tmp_path: Path) -> None:
    """docker run -id; exec -it ... rm -rf docs; commit -m -a; save; rmi; load; the new
    image lacks docs, the original image and another container on it keep it."""
    sh = layered
    sh.ok("run", "-id", "--name", "tomcat01", "-w", "/usr/local/tomcat", "bb", "sh")
    other = sh.detach("bb", "sleep", "60")
    code, out = pty_run([*sh.argv, "exec", "-it", "tomcat01", "sh", "-c",
                         "cd webapps && rm -rf docs && ls && pwd"])
    assert code == 0, out
    assert b"docs" not in out and b"examples" in out, out
    assert b"/usr/local/tomcat/webapps\r\n" in out  # exec starts in the container's WORKDIR
    assert sh.ok("diff", "tomcat01").splitlines() == [
        "C /usr", "C /usr/local", "C /usr/local/tomcat", "C /usr/local/tomcat/webapps",
        "D /usr/local/tomcat/webapps/docs"]
    iid = sh.ok("commit", "-m", "yyds", "-a", "tianqikai", "tomcat01",
                "tqk/tomcat02:1.0").strip()
    assert iid.startswith("sha256:")
    archive = tmp_path / "tomcat02.tar"
    sh.ok("save", "-o", str(archive), "tqk/tomcat02:1.0")
    assert sh("rmi", "tqk/tomcat02:1.0").code == 0
    assert "Loaded image: tqk/tomcat02:1.0" in sh.ok("load", "-i", str(archive))

    img = json.loads(sh.ok("inspect", "tqk/tomcat02:1.0"))[0]
    assert (img["Id"], img["Comment"], img["Author"]) == (iid, "yyds", "tianqikai")
    assert img["Config"]["WorkingDir"] == "/usr/local/tomcat"
    assert len(img["RootFS"]["Layers"]) == 2
    layer = _last_layer(archive)
    assert set(layer) == {"usr", "usr/local", "usr/local/tomcat", "usr/local/tomcat/webapps",
                          "usr/local/tomcat/webapps/.wh.docs"}, sorted(layer)
    hist = sh.ok("history", "--format", "{{.CreatedBy}}|{{.Comment}}", "tqk/tomcat02:1.0")
    assert hist.splitlines()[0] == "sh|yyds"

    new = sh.detach("tqk/tomcat02:1.0", "sleep", "60")
    old = sh.detach("bb", "sleep", "60")
    ls = "ls /usr/local/tomcat/webapps"
    apps = sorted(WEBAPPS)
    assert sh.proc("exec", new, "sh", "-c", ls).stdout.split() == \
        [a for a in apps if a != "docs"]
    assert sh.proc("exec", old, "sh", "-c", ls).stdout.split() == apps
    assert sh.proc("exec", other, "sh", "-c", ls).stdout.split() == apps
    assert sh.ok("run", "--rm", "bb", "ls", "/usr/local/tomcat/webapps").split() == apps
    assert sh.ok("diff", other) == ""
    # the committed container keeps running, unchanged by the commit
    assert sh.state("tomcat01")["Running"] is True
    assert "D /usr/local/tomcat/webapps/docs" in sh.ok("diff", "tomcat01")


# ------------------------------------------------------------------------------- diff
def test_diff_never_shows_init_stubs(layered: Shale, tmp_path: Path) -> None:
    sh = layered
    cid = sh.detach("-v", "/anon", "-v", f"{tmp_path}/bind:/mnt/bind", "--tmpfs", "/scratch",
                    "-w", "/work/dir", "bb", "sleep", "60")
    # as docker, -w made the working directory in the container's layer; unlike docker,
    # volume and tmpfs targets are init-layer stubs (DESIGN.md section 7)
    assert sh.ok("diff", cid).splitlines() == ["A /work", "A /work/dir"]
    assert sh.ok("diff", sh.detach("bb", "sleep", "60")) == "", "a fresh container"
    # writes to the bound files, the tmpfs /dev, volumes: none is the container's layer
    res = sh.proc("exec", cid, "sh", "-c", "echo x >> /etc/hosts; echo x > /etc/hostname;"
                  "mkdir /dev/mine; touch /anon/f /mnt/bind/f /scratch/f /proc/self/comm")
    assert res.returncode == 0, res
    diff = sh.ok("diff", cid).splitlines()
    assert diff == ["A /work", "A /work/dir"], diff
    assert sh.proc("exec", cid, "rm", "/etc/passwd").returncode == 0
    assert sh.proc("exec", cid, "touch", "/etc/newfile").returncode == 0
    sh.ok("stop", "-t", "0", cid)
    diff = sh.ok("diff", cid).splitlines()
    assert diff == ["C /etc", "A /etc/newfile", "D /etc/passwd", "A /work", "A /work/dir"]
    assert not any(line.split()[1] in STUBS[:-1] for line in diff)


def test_rm_containers_have_a_volatile_layer(layered: Shale) -> None:
    """A --rm container's layer dies with it: overlay mounts it volatile (no sync of the
    upper filesystem at unmount, as podman); a kept container's layer stays durable."""
    def root_mount(*flags: str) -> str:
        res = layered.proc("run", *flags, "bb", "sh", "-c",
                           "grep ' / ' /proc/self/mountinfo; echo x > /f; cat /f")
        assert res.returncode == 0, res
        assert res.stdout.endswith("x\n"), res.stdout
        return res.stdout
    if layered.driver == "overlay":
        assert "volatile" in root_mount("--rm")
    else:
        assert "volatile" not in root_mount("--rm")
    assert "volatile" not in root_mount()


# ---------------------------------------------------------------------- commit / docker
SCRIPT = ("rm -rf /usr/local/tomcat/webapps/docs /etc/group; "  # a dir and a file deleted
          "rm -rf /data && mkdir /data && echo new > /data/n; "  # opaque: replaced dir
          "rm -rf /home/app && echo now-a-file > /home/app; "    # dir replaced by a file
          "mkdir -p /opt/x && echo hi > /opt/x/y; "              # new tree
          "echo changed >> /usr/local/tomcat/webapps/ROOT/index.html")
CHECK = ("ls -a /data /opt/x /usr/local/tomcat/webapps; cat /home/app /opt/x/y "
         "/usr/local/tomcat/webapps/ROOT/index.html; ls /etc/group 2>&1; "
         "ls /etc; echo $X")


def _commit_changes(sh: Shale) -> str:
    sh.ok("run", "--name", "src", "bb", "sh", "-c", SCRIPT)
    return sh.ok("commit", "-c", 'CMD ["cat", "/data/n"]', "-c", "ENV X=1", "src",
                 f"shaletest-ctr-{uuid.uuid4().hex[:8]}:1").strip()


def test_commit_whiteouts_and_run(layered: Shale, tmp_path: Path) -> None:
    sh = layered
    iid = _commit_changes(sh)
    diff = sh.ok("diff", "src").splitlines()
    assert {"D /etc/group", "D /usr/local/tomcat/webapps/docs", "A /opt/x/y",
            "C /home/app", "C /usr/local/tomcat/webapps/ROOT/index.html"} <= set(diff), diff
    assert not any(line.split()[1] in STUBS[:-1] for line in diff)
    out = sh.ok("run", "--rm", iid, "sh", "-c", CHECK)
    assert "ls: /etc/group: No such file or directory" in out
    assert out.split("\n")[0:3] == ["/data:", ".", ".."]
    assert "n\n" in out and "docs" not in out and "now-a-file\n" in out
    assert "<h1>ROOT</h1>\nchanged\n" in out and out.endswith("1\n")
    assert sh.ok("run", "--rm", iid) == "new\n"  # -c CMD
    archive = tmp_path / "img.tar"
    sh.ok("save", "-o", str(archive), iid)
    layer = _last_layer(archive)
    for name in ("etc/.wh.group", "usr/local/tomcat/webapps/.wh.docs", "data/n",
                 "home/app", "opt/x/y"):
        assert name in layer, (name, sorted(layer))
    # a replaced directory: overlay marks it opaque, vfs (a tree comparison, as docker's
    # vfs) whites out what it held
    opaque = "data/.wh..wh..opq" if sh.driver == "overlay" else "data/.wh.seed.txt"
    assert opaque in layer, sorted(layer)
    assert layer["home/app"].isfile()
    for stub in ("etc/hosts", "etc/hostname", "etc/resolv.conf", "etc/mtab", "proc", "sys",
                 "dev"):
        assert stub not in layer, stub
    # the original image is unchanged
    assert "docs" in sh.ok("run", "--rm", "bb", "ls", "/usr/local/tomcat/webapps")


def test_commit_layer_size_counted_as_the_tar_is_written(layered: Shale) -> None:
    """commit sizes its layer (regular file bytes and symlink targets, a hard link once)
    while writing the tar, not by reading the blob back: both agree, on both drivers."""
    sh = layered
    name = f"sized-{uuid.uuid4().hex[:8]}"
    sh.ok("run", "--name", name, "bb", "sh", "-c",
          "head -c 2000000 /dev/zero > /big && ln /big /big2 && ln -s /somewhere /lnk "
          "&& rm /etc/group")
    iid = sh.ok("commit", name).strip()
    assert _image_size(sh, iid) - _image_size(sh, "bb") == 2_000_000 + len("/somewhere")
    assert_top_layer_sized(sh, iid)


def _image_size(sh: Shale, ref: str) -> int:
    size: int = json.loads(sh.ok("image", "inspect", ref))[0]["Size"]
    return size


@pytest.mark.docker
def test_committed_image_runs_in_docker(sh1: Shale, docker: Docker) -> None:
    sh = sh1
    iid = _commit_changes(sh)
    ref = f"shaletest-ctr-{uuid.uuid4().hex[:10]}:1"
    sh.ok("tag", iid, ref)
    docker.track(ref)
    save = sh.cli.binary("-s", sh.driver, "save", ref)
    assert save[0] == 0, save[2]
    docker("load", stdin=save[1])
    assert docker.out("run", "--rm", ref) == "new\n"
    mine = sh.ok("run", "--rm", ref, "sh", "-c", CHECK)
    theirs = docker.out("run", "--rm", ref, "sh", "-c", CHECK)
    assert mine == theirs
    # docker computes the same image ID from the same config and layer bytes
    assert docker.out("image", "inspect", "-f", "{{.Id}}", ref).strip() == iid


# ----------------------------------------------------------------------------- export
def test_export_flattened_rootfs(layered: Shale, tmp_path: Path) -> None:
    sh = layered
    sh.ok("run", "--name", "x", "bb", "sh", "-c",
          "rm -rf /usr/local/tomcat/webapps/docs; echo content > /root/new")
    out = tmp_path / "x.tar"
    sh.ok("export", "-o", str(out), "x")
    data = out.read_bytes()
    names = _members(data)
    assert "bin/busybox" in names and "root/new" in names and "data/seed.txt" in names
    assert _read_member(data, "root/new") == b"content\n"
    assert "usr/local/tomcat/webapps/docs" not in names
    assert not any(".wh." in n for n in names)
    for stub in ("proc", "sys", "dev", "etc/hosts", "etc/hostname", "etc/resolv.conf"):
        assert stub in names, stub  # the mount points, as docker export has them
    assert sh.mounts() == []  # a stopped container's rootfs is not left mounted
    assert sh.cli.binary("-s", sh.driver, "export", "x")[1] == data


# --------------------------------------------------------------------------------- cp
def test_cp_both_ways(layered: Shale, tmp_path: Path) -> None:
    sh = layered
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "sub" / "f").write_text("deep\n")
    (src / "top").write_text("top\n")
    (src / "link").symlink_to("top")
    cid = sh.detach("bb", "sleep", "60")
    sh.ok("cp", str(src / "top"), f"{cid}:/tmp/")
    sh.ok("cp", str(src / "top"), f"{cid}:/tmp/renamed")
    sh.ok("cp", str(src), f"{cid}:/opt")          # a new name: the dir becomes /opt
    sh.ok("cp", str(src), f"{cid}:/tmp")          # an existing dir: /tmp/src
    sh.ok("cp", f"{src}/.", f"{cid}:/root")       # contents only
    res = sh.proc("exec", cid, "sh", "-c",
                  "cat /tmp/top /tmp/renamed /opt/sub/f /tmp/src/sub/f /root/top;"
                  "readlink /opt/link")
    assert res.stdout == "top\ntop\ndeep\ndeep\ntop\ntop\n", res
    dest = tmp_path / "out"
    dest.mkdir()
    sh.ok("cp", f"{cid}:/etc/passwd", str(dest))
    sh.ok("cp", f"{cid}:/usr/local/tomcat/webapps", str(dest / "apps"))
    assert "app:x:1000" in (dest / "passwd").read_text()
    assert sorted(os.listdir(dest / "apps")) == sorted(WEBAPPS)
    # tar streams both ways
    code, tar_out, err = sh.cli.binary("-s", sh.driver, "cp", f"{cid}:/data", "-")
    assert code == 0, err
    assert _read_member(tar_out, "data/seed.txt") == b"from the image\n"
    assert sh.proc("exec", cid, "mkdir", "/srv").returncode == 0
    sh.ok("cp", "-", f"{cid}:/srv", stdin=tar_out)
    assert sh.proc("exec", cid, "cat", "/srv/data/seed.txt").stdout == "from the image\n"
    # a stopped container: mounted for the copy, unmounted after
    sh.ok("stop", "-t", "0", cid)
    sh.ok("cp", str(src / "top"), f"{cid}:/stopped")
    sh.ok("cp", f"{cid}:/stopped", str(dest / "back"))
    assert (dest / "back").read_text() == "top\n"
    assert sh.mounts() == []
    assert "A /stopped" in sh.ok("diff", cid).splitlines()
    res = sh("cp", f"{cid}:/nonexistent", str(dest))
    assert res.code != 0 and "Could not find the file" in res.err


@pytest.mark.parametrize("running", [True, False], ids=["running", "stopped"])
def test_cp_hostile_symlinks_stay_inside(layered: Shale, tmp_path: Path,
                                         running: bool) -> None:
    sh = layered
    probe = f"shale-cp-probe-{uuid.uuid4().hex[:8]}"
    plant = ("ln -s / /evil; ln -s ../../../../../.. /up; mkdir /d; ln -s /etc /d/etc;"
             f"ln -s /tmp/{probe} /abs")
    if running:
        cid = sh.detach("bb", "sh", "-c", plant + "; sleep 60")
        _wait_link(sh, cid)
    else:
        cid = sh.ok("run", "-d", "bb", "sh", "-c", plant).strip()
        sh.wait_status(cid, "exited")
    f = tmp_path / "payload"
    f.write_text("payload\n")
    sh.ok("cp", str(f), f"{cid}:/evil/{probe}")
    sh.ok("cp", str(f), f"{cid}:/up/tmp/{probe}")
    sh.ok("cp", str(f), f"{cid}:/d/etc/{probe}")
    sh.ok("cp", str(f), f"{cid}:/abs")
    for host in (f"/{probe}", f"/tmp/{probe}", f"/etc/{probe}"):
        assert not os.path.lexists(host), f"cp wrote {host} on the host"
    diff = sh.ok("diff", cid).splitlines()
    for inside in (f"A /{probe}", f"A /tmp/{probe}", f"A /etc/{probe}"):
        assert inside in diff, (inside, diff)
    # a tar through stdin: a symlink member then a file through it, and a '..' name
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        link = tarfile.TarInfo("esc")
        link.type, link.linkname = tarfile.SYMTYPE, "/"
        tf.addfile(link)
        for name in (f"esc/etc/{probe}.tar", f"../../../../tmp/{probe}.dots"):
            ti = tarfile.TarInfo(name)
            ti.size = 2
            tf.addfile(ti, io.BytesIO(b"x\n"))
    res = sh("cp", "-", f"{cid}:/", stdin=buf.getvalue())
    assert not os.path.lexists(f"/etc/{probe}.tar")
    assert not os.path.lexists(f"/tmp/{probe}.dots")
    assert res.code == 1 and "climbs out of the root" in res.err, res
    assert f"A /etc/{probe}.tar" in sh.ok("diff", cid).splitlines()  # through esc -> /
    # reading through the links reads the container's files, never the host's
    dest = tmp_path / "out"
    dest.mkdir()
    sh.ok("cp", f"{cid}:/evil/etc/passwd", str(dest / "p1"))
    sh.ok("cp", f"{cid}:/up/etc/passwd", str(dest / "p2"))
    for p in ("p1", "p2"):
        assert "app:x:1000" in (dest / p).read_text()
    code, tar_out, err = sh.cli.binary("-s", sh.driver, "cp", f"{cid}:/evil/etc/passwd", "-")
    assert code == 0, err
    members = _members(tar_out)
    assert list(members) == ["passwd"] and members["passwd"].isfile(), members
    assert b"app:x:1000" in _read_member(tar_out, "passwd")
    if not running:
        assert sh.mounts() == []


def _wait_link(sh: Shale, cid: str) -> None:
    import time

    for _ in range(200):
        if sh.proc("exec", cid, "test", "-L", "/abs").returncode == 0:
            return
        time.sleep(0.05)
    raise AssertionError("the container did not plant its links")


# ---------------------------------------------------------------------------- volumes
def test_volumes_named_anonymous_bind(layered: Shale, tmp_path: Path) -> None:
    sh = layered
    # a new named volume is filled from the image; a second container sees its writes
    out = sh.ok("run", "--rm", "-v", "vol1:/data", "bb", "sh", "-c",
                "cat /data/seed.txt; echo more > /data/more")
    assert out == "from the image\n"
    assert sh.ok("run", "--rm", "-v", "vol1:/data", "bb", "cat", "/data/more") == "more\n"
    # an existing volume is never refilled, even on an image path with other content
    assert sh.ok("run", "--rm", "-v", "vol1:/usr/local/tomcat/webapps", "bb",
                 "ls", "/usr/local/tomcat/webapps").split() == ["more", "seed.txt"]
    # cp into and out of a running container goes through its mounts, as docker's
    cid = sh.detach("-v", "vol1:/data", "--tmpfs", "/scratch", "bb", "sleep", "60")
    (tmp_path / "f").write_text("copied\n")
    sh.ok("cp", str(tmp_path / "f"), f"{cid}:/data/copied")
    assert sh.proc("exec", cid, "sh", "-c", "echo t > /scratch/t").returncode == 0
    sh.ok("cp", f"{cid}:/scratch/t", str(tmp_path / "t"))
    assert (tmp_path / "t").read_text() == "t\n"
    assert sh.ok("diff", cid) == ""
    sh.ok("rm", "-f", cid)
    assert sh.ok("run", "--rm", "-v", "vol1:/data", "bb", "cat", "/data/copied") == "copied\n"
    sh.ok("run", "--rm", "-v", "vol1:/data", "bb", "rm", "/data/copied")
    vol = json.loads(sh.ok("volume", "inspect", "vol1"))[0]
    assert (vol["Name"], vol["Driver"], vol["Scope"]) == ("vol1", "local", "local")
    assert Path(vol["Mountpoint"], "more").read_text() == "more\n"
    # -v of a missing host directory creates it and never fills it
    host = tmp_path / "made" / "here"
    assert sh.ok("run", "--rm", "-v", f"{host}:/data", "bb", "sh", "-c",
                 "ls /data; echo w > /data/w") == ""
    assert os.listdir(host) == ["w"]
    # read-only volumes and binds; a bound file (on a new path, and over the image's)
    res = sh("run", "--rm", "-v", f"{host}:/data:ro", "bb", "touch", "/data/x")
    assert res.code == 1 and "Read-only file system" in res.err
    (host / "w").write_text("one file\n")
    assert sh.ok("run", "--rm", "-v", f"{host}/w:/new/dir/f", "-v", f"{host}/w:/etc/passwd:ro",
                 "bb", "cat", "/new/dir/f", "/etc/passwd") == "one file\none file\n"
    res = sh("run", "--rm", "-v", f"{host}/w:/etc", "bb", "true")  # a file over a directory
    assert res.code == 125 and res.err.startswith("Error: "), res
    # anonymous: `-v /path`, filled too; --rm removes it, a named one stays
    before = set(sh.ok("volume", "ls", "-q").split())
    assert sh.ok("run", "--rm", "-v", "/data", "-v", "vol2:/srv", "bb",
                 "cat", "/data/seed.txt") == "from the image\n"
    assert set(sh.ok("volume", "ls", "-q").split()) == before | {"vol2"}
    # the image's VOLUMEs become anonymous volumes; `rm -v` removes them
    sh.ok("run", "--name", "mk", "bb", "true")
    img = sh.ok("commit", "-c", "VOLUME /data", "mk", "withvol").strip()
    cid = sh.ok("run", "-d", img, "cat", "/data/seed.txt").strip()
    sh.ok("wait", cid)
    mounts = sh.inspect(cid)["Mounts"]
    assert [(m["Type"], m["Destination"], m["RW"]) for m in mounts] == [
        ("volume", "/data", True)]
    anon = mounts[0]["Name"]
    assert len(anon) == 64 and anon in sh.ok("volume", "ls", "-q").split()
    assert sh.ok("logs", cid) == "from the image\n"
    res = sh("volume", "rm", anon)
    assert res.code == 1 and "volume is in use" in res.err
    sh.ok("rm", "-v", cid)
    assert anon not in sh.ok("volume", "ls", "-q").split()
    # ls / rm / prune
    listing = sh.ok("volume", "ls")
    assert listing.splitlines()[0].split() == ["DRIVER", "VOLUME", "NAME"]
    assert "local     vol1" in listing
    sh.ok("run", "--name", "keep", "-v", "/anon2", "bb", "true")
    assert sh.ok("volume", "rm", "vol2") == "vol2\n"
    pruned = sh.ok("volume", "prune", "-f")
    assert "vol1" not in pruned  # named volumes only with --all (docker 23+)
    assert sh.inspect("keep")["Mounts"][0]["Name"] in sh.ok("volume", "ls", "-q")
    sh.ok("volume", "prune", "-f", "--all")
    left = sh.ok("volume", "ls", "-q").split()
    assert left == [sh.inspect("keep")["Mounts"][0]["Name"]]
    assert sh("volume", "inspect", "vol1").code == 1


# -------------------------------------------------------------------------------- rmi
def test_rmi_refused_while_a_container_uses_the_image(sh1: Shale) -> None:
    sh = sh1
    iid = json.loads(sh.ok("inspect", "bb"))[0]["Id"]
    sh.ok("tag", "bb", "shaletest-img")  # "bb" alone could be taken for an ID prefix
    sh.ok("rmi", "bb")
    cid = sh.ok("create", "shaletest-img", "true").strip()
    res = sh("rmi", "shaletest-img")
    assert res.code == 1
    assert res.err == ('Error: conflict: unable to remove repository reference '
                       f'"shaletest-img" (must force) - container {cid[:12]} is using its '
                       f"referenced image {iid[7:19]}\n")
    res = sh("rmi", iid)
    assert res.code == 1 and "image is being used by stopped container" in res.err
    assert sh.ok("images", "-q") == iid[7:19] + "\n"
    sh.ok("start", cid)
    sh.ok("wait", cid)
    run = sh.detach("shaletest-img", "sleep", "60")
    res = sh("rmi", "-f", iid)
    assert res.code == 1 and "(cannot be forced) - image is being used by running " \
        f"container {run[:12]}" in res.err
    sh.ok("rm", "-f", cid, run)
    assert "Deleted: " + iid in sh.ok("rmi", "shaletest-img")
