"""One conformance suite for every snapshot driver, with real mounts; then the overlay
driver's own rules (whiteouts, lower-layer limits, the mount(2) fallback) and mount.py.

Needs root and a kernel with overlayfs (Linux >= 6.8 for the new-API tests)."""

from __future__ import annotations

import multiprocessing as mp
import os
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from shale import mount as mountmod
from shale.errors import (
    AlreadyExists,
    InUse,
    InvalidArgument,
    LimitExceeded,
    NotFound,
)
from shale.mount import (
    Mount,
    is_mountpoint,
    make_rprivate,
    mount_all,
    mountinfo,
    unmount,
    unmount_all_under,
)
from shale.snapshots import Kind, Snapshotter, Usage, open_snapshotter
from shale.snapshots.overlay import overlay_supported

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="mounts need root"),
]


def _has_overlay(tmp: Path) -> bool:
    return os.geteuid() == 0 and overlay_supported(tmp)


@pytest.fixture
def clean_mounts(tmp_path: Path) -> Iterator[Path]:
    """tmp_path, with everything mounted below it (or on it) undone at teardown."""
    yield tmp_path
    unmount_all_under(tmp_path)
    unmount(tmp_path)
    assert not [m for m in mountinfo() if m.mount_point.startswith(str(tmp_path))]


@pytest.fixture(params=["overlay", "vfs"])
def snap(request: pytest.FixtureRequest, clean_mounts: Path) -> Iterator[Snapshotter]:
    driver: str = request.param
    if driver == "overlay" and not _has_overlay(clean_mounts / "probe"):
        pytest.skip("overlayfs is not usable here")
    s = open_snapshotter(clean_mounts / "root", driver)
    yield s
    unmount_all_under(clean_mounts)  # before the db closes: a failed test may leave mounts
    s.close()  # type: ignore[attr-defined]


@pytest.fixture
def target(clean_mounts: Path) -> Path:
    t = clean_mounts / "mnt"
    t.mkdir()
    return t


def _write_layer(s: Snapshotter, key: str, parent: str, files: dict[str, str],
                 target: Path) -> None:
    """prepare -> mount -> write ``files`` through the mount -> unmount."""
    mount_all(s.prepare(key, parent), target)
    try:
        for name, data in files.items():
            p = target / name
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text(data)
    finally:
        unmount(target)


def _read_view(s: Snapshotter, parent: str, target: Path, key: str = "") -> dict[str, str]:
    """Every regular file (relative path -> text) of a read-only view on ``parent``."""
    key = key or f"view-{parent}"
    mount_all(s.view(key, parent), target)
    try:
        return {str(p.relative_to(target)): p.read_text()
                for p in sorted(target.rglob("*")) if p.is_file() and not p.is_symlink()}
    finally:
        unmount(target)
        s.remove(key)


def _chain(s: Snapshotter, depth: int, prefix: str = "c") -> str:
    """Committed snapshots ``<prefix>0 .. <prefix>{depth-1}``, each adding one file,
    written straight into the own-layer dir (no mount needed to build a chain)."""
    parent = ""
    for i in range(depth):
        key = f"{prefix}{i}-active"
        s.prepare(key, parent)
        (s.layer_dir(key) / f"f{i}").write_text(str(i))
        s.commit(f"{prefix}{i}", key)
        parent = f"{prefix}{i}"
    return parent


# --- conformance: every driver -------------------------------------------------------------

def test_prepare_commit_and_view(snap: Snapshotter, target: Path) -> None:
    _write_layer(snap, "k1", "", {"etc/hello": "hi", "a": "A"}, target)
    snap.commit("base", "k1")
    with pytest.raises(NotFound):
        snap.stat("k1")  # the key is gone once committed
    info = snap.stat("base")
    assert (info.kind, info.parent, info.name) == (Kind.COMMITTED, "", "base")
    assert _read_view(snap, "base", target) == {"etc/hello": "hi", "a": "A"}


def test_child_sees_parent_and_changes_stay_in_child(snap: Snapshotter, target: Path
                                                     ) -> None:
    _write_layer(snap, "k1", "", {"a": "A", "keep": "K"}, target)
    snap.commit("base", "k1")
    mount_all(snap.prepare("k2", "base"), target)
    try:
        assert (target / "a").read_text() == "A"
        (target / "a").write_text("changed")  # copy-on-write
        (target / "new").write_text("N")
    finally:
        unmount(target)
    snap.commit("child", "k2")
    assert _read_view(snap, "child", target) == {"a": "changed", "keep": "K", "new": "N"}
    assert _read_view(snap, "base", target) == {"a": "A", "keep": "K"}
    assert (snap.layer_dir("base") / "a").read_text() == "A"


def test_deletion_in_child_hides_lower_file(snap: Snapshotter, target: Path) -> None:
    _write_layer(snap, "k1", "", {"gone": "x", "d/f": "y", "stay": "z"}, target)
    snap.commit("base", "k1")
    mount_all(snap.prepare("k2", "base"), target)
    try:
        (target / "gone").unlink()
        (target / "d" / "f").unlink()
        (target / "d").rmdir()
    finally:
        unmount(target)
    own = snap.layer_dir("k2")
    if snap.layer_format == "overlay":
        st = os.lstat(own / "gone")  # the kernel's whiteout: char device 0/0
        assert stat.S_ISCHR(st.st_mode) and st.st_rdev == 0
        assert stat.S_ISCHR(os.lstat(own / "d").st_mode)
    else:
        assert not (own / "gone").exists() and not (own / "d").exists()
    snap.commit("child", "k2")
    assert _read_view(snap, "child", target) == {"stay": "z"}
    assert _read_view(snap, "base", target) == {"gone": "x", "d/f": "y", "stay": "z"}


def test_special_files_reach_children(snap: Snapshotter, target: Path) -> None:
    """Owners, modes, hardlinks, devices, fifos, xattrs and sparse files, as ``cp -a``."""
    snap.prepare("k1", "")
    own = snap.layer_dir("k1")
    (own / "suid").write_text("x")
    os.chown(own / "suid", 1234, 5678)
    os.chmod(own / "suid", 0o4750)
    os.link(own / "suid", own / "hard")
    os.mknod(own / "null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    os.mkfifo(own / "fifo")
    os.symlink("/etc/passwd", own / "abs-link")
    os.setxattr(own / "suid", "user.shale", b"v")
    with open(own / "sparse", "wb") as f:
        f.truncate(64 << 20)
        f.seek((64 << 20) - 1)
        f.write(b"!")
    snap.commit("base", "k1")
    mount_all(snap.prepare("k2", "base"), target)
    try:
        st = os.lstat(target / "suid")
        assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (1234, 5678, 0o4750)
        assert os.lstat(target / "hard").st_ino == st.st_ino and st.st_nlink == 2
        assert os.lstat(target / "null").st_rdev == os.makedev(1, 3)
        assert stat.S_ISFIFO(os.lstat(target / "fifo").st_mode)
        assert os.readlink(target / "abs-link") == "/etc/passwd"
        assert os.getxattr(target / "suid", "user.shale") == b"v"
        sp = os.lstat(target / "sparse")
        assert sp.st_size == 64 << 20 and sp.st_blocks * 512 < 1 << 20
    finally:
        unmount(target)


def test_stat_walk_usage_and_labels(snap: Snapshotter) -> None:
    snap.prepare("k1", "", labels={"a": "1"})
    own = snap.layer_dir("k1")
    (own / "five").write_text("12345")
    (own / "d").mkdir()
    (own / "d" / "three").write_text("123")
    os.link(own / "five", own / "d" / "hard")  # one inode, counted once
    os.symlink("five", own / "sym")
    assert snap.usage("k1") == Usage(size=8, inodes=4)  # live for an active snapshot
    snap.commit("base", "k1")
    assert snap.usage("base") == Usage(size=8, inodes=4)
    assert snap.stat("base").labels == {"a": "1"}
    snap.prepare("k2", "base")
    snap.commit("top", "k2", labels={"b": "2"})
    snap.view("v", "top")
    infos = {i.name: i for i in snap.walk()}
    assert set(infos) == {"base", "top", "v"}
    assert (infos["top"].parent, infos["top"].labels) == ("base", {"b": "2"})
    assert (infos["v"].kind, infos["v"].parent) == (Kind.VIEW, "top")
    assert infos["base"].created <= infos["top"].created <= infos["v"].created
    assert snap.parent_dirs("v") == [snap.layer_dir("top"), snap.layer_dir("base")]


def test_errors(snap: Snapshotter) -> None:
    snap.prepare("k1", "")
    with pytest.raises(AlreadyExists):
        snap.prepare("k1", "")
    with pytest.raises(NotFound):
        snap.prepare("k2", "nope")
    with pytest.raises(InvalidArgument):
        snap.prepare("k2", "k1")  # parent must be committed
    with pytest.raises(InvalidArgument):
        snap.prepare("", "")
    snap.commit("base", "k1")
    with pytest.raises(InvalidArgument):
        snap.mounts("base")  # committed: mount a view instead
    snap.prepare("k3", "")
    with pytest.raises(AlreadyExists):
        snap.commit("base", "k3")
    assert snap.stat("k3").kind == Kind.ACTIVE  # a failed commit leaves the key as it was
    snap.view("v", "base")
    with pytest.raises(InvalidArgument):
        snap.commit("v2", "v")  # a view cannot be committed
    for call in (snap.stat, snap.mounts, snap.remove, snap.usage, snap.layer_dir):
        with pytest.raises(NotFound):
            call("missing")
    with pytest.raises(NotFound):
        snap.commit("x", "missing")
    assert snap.mounts("k3") == snap.mounts("k3")


def test_remove_refuses_parents_and_leaves_nothing(snap: Snapshotter) -> None:
    _chain(snap, 2)
    snap.view("v", "c1")
    with pytest.raises(InUse):
        snap.remove("c0")
    with pytest.raises(InUse):
        snap.remove("c1")  # a view is a child too
    dirs = [snap.layer_dir(n).parent for n in ("v", "c1", "c0")]
    for name in ("v", "c1", "c0"):
        snap.remove(name)
    assert list(snap.walk()) == []
    assert not any(d.exists() for d in dirs)
    home = dirs[0].parent.parent
    assert list((home / "snapshots").iterdir()) == []
    assert list((home / "tmp").iterdir()) == []
    if (home / "l").exists():
        assert list((home / "l").iterdir()) == []


def test_remove_all_is_one_transaction(snap: Snapshotter) -> None:
    _chain(snap, 2)
    snap.prepare("k", "c1")
    snap.view("v", "c0")
    home = snap.layer_dir("c0").parent.parent.parent
    # c0 still has a child (v): nothing goes, k included
    with pytest.raises(InUse):
        snap.remove_all(["k", "c1", "c0"])
    assert {i.name for i in snap.walk()} == {"c0", "c1", "k", "v"}
    assert snap.layer_dir("k").is_dir() and snap.layer_dir("c1").is_dir()
    # children first, missing keys skipped
    dirs = [snap.layer_dir(n).parent for n in ("k", "c1")]
    assert snap.remove_all(["k", "nosuch", "c1"]) == ["k", "c1"]
    assert {i.name for i in snap.walk()} == {"c0", "v"}
    assert not any(d.exists() for d in dirs)
    assert list((home / "tmp").iterdir()) == []
    assert snap.remove_all([]) == [] and snap.remove_all(["gone"]) == []


def test_cleanup_removes_what_dead_processes_left(snap: Snapshotter) -> None:
    _chain(snap, 1)
    snap.prepare("live", "c0")
    home = snap.layer_dir("c0").parent.parent.parent
    dead = subprocess.run(["sh", "-c", "echo $$"], capture_output=True, check=True)
    dead_pid = int(dead.stdout)
    leftovers = [home / "tmp" / f"{dead_pid}-abc", home / "snapshots" / "9999"]
    for d in leftovers:
        (d / "fs").mkdir(parents=True)
    mine = home / "tmp" / f"{os.getpid()}-in-flight"
    mine.mkdir()
    removed = snap.cleanup()  # type: ignore[attr-defined]
    assert set(leftovers) <= set(removed)
    assert not any(d.exists() for d in leftovers) and mine.exists()
    assert {i.name for i in snap.walk()} == {"c0", "live"}
    assert (snap.layer_dir("c0") / "f0").exists()


def test_deep_chain_mounts(snap: Snapshotter, target: Path) -> None:
    top = _chain(snap, 200)
    mount_all(snap.prepare("rw", top), target)
    try:
        assert len(os.listdir(target)) == 200
        assert (target / "f0").read_text() == "0"
        (target / "f0").write_text("mine")
    finally:
        unmount(target)
    assert (snap.layer_dir("c0") / "f0").read_text() == "0"
    assert len(_read_view(snap, top, target)) == 200


def _race(driver: str, root: str, key: str, name: str, barrier: object, queue: object
          ) -> None:
    """One of two processes committing the same name at the same moment."""
    s = open_snapshotter(Path(root), driver)
    s.prepare(key, "base")
    (s.layer_dir(key) / "who").write_text(key)
    barrier.wait()  # type: ignore[attr-defined]
    try:
        s.commit(name, key)
        queue.put((name, key, "won"))  # type: ignore[attr-defined]
    except AlreadyExists:
        s.remove(key)  # what unpack does: the chain exists, drop our copy
        queue.put((name, key, "lost"))  # type: ignore[attr-defined]


def test_concurrent_commit_of_one_name(snap: Snapshotter, clean_mounts: Path,
                                       target: Path) -> None:
    snap.prepare("k0", "")
    snap.commit("base", "k0")
    ctx = mp.get_context("spawn")  # two real interpreters, no inherited sqlite handle
    barrier, queue = ctx.Barrier(2), ctx.Queue()
    rounds = 4
    procs = [ctx.Process(target=_race, args=(snap.driver, str(clean_mounts / "root"),
                                             f"{name}-{side}", name, barrier, queue))
             for name in (f"chain{r}" for r in range(rounds)) for side in "ab"]
    for pair in range(rounds):  # one pair at a time: the barrier is for two
        for p in procs[2 * pair:2 * pair + 2]:
            p.start()
        for p in procs[2 * pair:2 * pair + 2]:
            p.join(120)
            assert p.exitcode == 0
    results = [queue.get(timeout=10) for _ in procs]
    for r in range(rounds):
        outcome = sorted(res[2] for res in results if res[0] == f"chain{r}")
        assert outcome == ["lost", "won"]
        winner = next(res[1] for res in results if res[0] == f"chain{r}" and res[2] == "won")
        assert _read_view(snap, f"chain{r}", target) == {"who": winner}
    assert sorted(i.name for i in snap.walk()) == ["base"] + [f"chain{r}" for r in
                                                              range(rounds)]


# --- overlay only --------------------------------------------------------------------------

@pytest.fixture
def overlay(clean_mounts: Path) -> Iterator[Snapshotter]:
    if not _has_overlay(clean_mounts / "probe"):
        pytest.skip("overlayfs is not usable here")
    s = open_snapshotter(clean_mounts / "root", "overlay")
    yield s
    unmount_all_under(clean_mounts)
    s.close()  # type: ignore[attr-defined]


def _mount_options(target: Path) -> str:
    (entry,) = [m for m in mountinfo() if m.mount_point == str(target)]
    return entry.super_options


def test_overlay_mount_shapes(overlay: Snapshotter) -> None:
    overlay.prepare("k0", "")
    assert overlay.mounts("k0")[0].type == "bind"
    overlay.commit("base", "k0")
    (m,) = overlay.prepare("k1", "base")
    assert m.type == "overlay"
    assert {"index=off", "redirect_dir=off", "metacopy=off"} <= set(m.options)
    assert m.option("upperdir") == str(overlay.layer_dir("k1"))
    (v,) = overlay.view("v1", "base")  # one layer: a read-only bind, no overlay
    assert (v.type, v.readonly, v.source) == ("bind", True, str(overlay.layer_dir("base")))
    overlay.commit("top", "k1")
    (v2,) = overlay.view("v2", "top")
    lowers = (v2.option("lowerdir") or "").split(":")
    assert v2.readonly and v2.option("upperdir") is None
    assert [os.path.realpath(p) for p in lowers] == [
        str(overlay.layer_dir("top")), str(overlay.layer_dir("base"))]  # highest first


def test_overlay_opaque_dir(overlay: Snapshotter, target: Path) -> None:
    _write_layer(overlay, "k0", "", {"d/old": "o"}, target)
    overlay.commit("base", "k0")
    mount_all(overlay.prepare("k1", "base"), target)
    try:
        (target / "d" / "old").unlink()
        (target / "d").rmdir()
        (target / "d").mkdir()
        (target / "d" / "new").write_text("n")
    finally:
        unmount(target)
    assert os.getxattr(overlay.layer_dir("k1") / "d", "trusted.overlay.opaque") == b"y"


def test_overlay_499_lowers_and_the_limit(overlay: Snapshotter, target: Path) -> None:
    top = _chain(overlay, 499)
    mount_all(overlay.prepare("rw499", top), target)  # 499 lowers + upper: new mount API
    try:
        assert len(os.listdir(target)) == 499
        (target / "up").write_text("u")
        assert _mount_options(target).count("lowerdir+=") == 499
    finally:
        unmount(target)
    assert (overlay.layer_dir("rw499") / "up").exists()
    overlay.prepare("k499", top)
    (overlay.layer_dir("k499") / "f499").write_text("499")
    overlay.commit("c499", "k499")
    assert len(_read_view(overlay, "c499", target)) == 500  # exactly the kernel's limit
    overlay.prepare("k500", "c499")
    overlay.commit("c500", "k500")
    with pytest.raises(LimitExceeded, match="500"):
        overlay.prepare("too-deep", "c500")  # 501 lowers
    with pytest.raises(LimitExceeded):
        overlay.view("too-deep", "c500")
    assert not [i for i in overlay.walk() if i.name == "too-deep"]


def test_overlay_legacy_mount_fallback(overlay: Snapshotter, target: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """A kernel without ``lowerdir+``: mount(2), relative short links when the absolute
    paths pass one page, and a clear error instead of silent truncation."""
    monkeypatch.setattr(mountmod, "_lowerdir_plus_supported", lambda: False)
    top = _chain(overlay, 200)
    (m,) = overlay.prepare("rw", top)
    assert len(",".join(m.options)) > 4095  # too long as absolute paths
    mount_all([m], target)
    try:
        assert len(os.listdir(target)) == 200
        assert "lowerdir=l/" in _mount_options(target)  # relative to the store home
    finally:
        unmount(target)
    long_dirs = []
    for i in range(40):
        d = target.parent / f"{'x' * 200}{i}"
        d.mkdir()
        long_dirs.append(str(d))
    too_long = Mount("overlay", "overlay", ("ro", "lowerdir=" + ":".join(long_dirs)))
    with pytest.raises(LimitExceeded, match="bytes of mount data"):
        mount_all([too_long], target)
    assert not is_mountpoint(target)


def test_overlay_mount_errors_name_path_and_cause(clean_mounts: Path, target: Path) -> None:
    if not _has_overlay(clean_mounts / "probe"):
        pytest.skip("overlayfs is not usable here")
    lower = clean_mounts / "lower"
    lower.mkdir()
    missing = Mount("overlay", "overlay", (
        "ro", f"lowerdir={lower}:{clean_mounts / 'no-such-dir'}"))
    with pytest.raises(NotFound, match=f"{target}.*No such file"):
        mount_all([missing], target)
    many = Mount("overlay", "overlay", ("ro", "lowerdir=" + ":".join([str(lower)] * 501)))
    with pytest.raises(LimitExceeded, match="501"):
        mount_all([many], target)
    assert not is_mountpoint(target)


def test_overlay_supported_caches_its_answer(clean_mounts: Path) -> None:
    assert overlay_supported(clean_mounts) is True
    cache = clean_mounts / "snapshots" / ".overlay-check"
    assert cache.read_text().splitlines()[:2] == [os.uname().release, "yes"]
    cache.write_text(f"{os.uname().release}\nno\nforced\n")
    assert overlay_supported(clean_mounts) is False  # read from the cache, no new probe
    assert [p.name for p in (clean_mounts / "snapshots").iterdir()] == [".overlay-check"]


# --- mount.py ------------------------------------------------------------------------------

def test_readonly_bind_and_unmount(clean_mounts: Path, target: Path) -> None:
    src = clean_mounts / "src"
    src.mkdir()
    mount_all([Mount("bind", str(src), ("rbind", "ro"))], target)
    assert is_mountpoint(target)
    with pytest.raises(OSError, match="Read-only"):
        (target / "x").write_text("x")
    unmount(target)
    unmount(target)  # idempotent
    assert not is_mountpoint(target)
    with pytest.raises(NotFound, match="no-such"):
        mount_all([Mount("bind", str(clean_mounts / "no-such"), ("rbind",))], target)
    mount_all([Mount("tmpfs", "tmpfs", ("size=1m", "nosuid", "rshared"))], target)
    (entry,) = [m for m in mountinfo() if m.mount_point == str(target)]
    assert "nosuid" in entry.options.split(",")
    assert any(o.startswith("shared:") for o in entry.optional)


def test_unmount_all_under_deepest_first(clean_mounts: Path) -> None:
    base = clean_mounts / "containers"
    for sub in ("a", "a/b", "c"):
        (base / sub).mkdir(parents=True)
    tmpfs = Mount("tmpfs", "tmpfs", ("size=1m",))
    mount_all([tmpfs], base / "a")
    (base / "a" / "b").mkdir()
    mount_all([tmpfs], base / "a" / "b")
    mount_all([tmpfs, tmpfs], base / "c")  # stacked on one point
    (base / "h" / "hidden").mkdir(parents=True)
    mount_all([tmpfs], base / "h" / "hidden")
    mount_all([tmpfs], base / "h")  # hides the one below: reachable only after it goes
    done = unmount_all_under(base)
    assert len(done) == 6
    assert not [m for m in mountinfo() if m.mount_point.startswith(str(base))]


def test_unmount_takes_the_point_and_what_is_below(clean_mounts: Path) -> None:
    from shale.mount import mount_points

    tmpfs = Mount("tmpfs", "tmpfs", ("size=1m",))
    top = clean_mounts / "with space"
    top.mkdir()
    sibling = clean_mounts / "with space2"  # a prefix match that is not below
    sibling.mkdir()
    mount_all([tmpfs], sibling)
    mount_all([tmpfs, tmpfs], top)  # stacked
    (top / "sub").mkdir()
    mount_all([tmpfs], top / "sub")
    assert mount_points(str(top)) == [str(top), str(top), str(top / "sub")]
    assert is_mountpoint(top) and is_mountpoint(top / "sub") and not is_mountpoint(clean_mounts)
    unmount(top)
    assert mount_points(str(top)) == [] and mount_points(str(sibling)) == [str(sibling)]
    unmount(top)  # nothing there: not an error
    unmount(sibling)


def test_make_rprivate_stops_propagation(clean_mounts: Path) -> None:
    a, b = clean_mounts / "a", clean_mounts / "b"
    a.mkdir()
    b.mkdir()
    # a shared mount a, with b as its peer: what a host with systemd's shared "/" looks like
    mount_all([Mount("bind", str(a), ("bind",))], a)
    mountmod._sys_mount(None, str(a), None, mountmod.MS_SHARED, None)
    mount_all([Mount("bind", str(a), ("bind",))], b)
    root = a / "store"
    root.mkdir()
    make_rprivate(root)
    make_rprivate(root)  # idempotent: no second self-bind
    entries = [m for m in mountinfo() if m.mount_point == str(root)]
    assert len(entries) == 1 and not any(o.startswith("shared:") for o in entries[0].optional)
    (root / "x").mkdir()
    mount_all([Mount("tmpfs", "tmpfs", ("size=1m",))], root / "x")
    assert is_mountpoint(root / "x")
    assert not is_mountpoint(b / "store" / "x")  # did not leak to the peer
