"""Round trips (hypothesis): tree -> layer -> tree; tree -> changes -> diff layer -> applied onto a
copy of the original == the changed tree; overlay mount -> upper dir -> layer -> applied as a
dir and as an overlay upper == the merged view."""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shale.layer import changes_dirs, write_layer
from shale.layer_apply import apply_layer

NAMES = st.sampled_from(["a", "b", "c", "a-b", "a.b", "B", "caf\u00e9", "L" * 110, ".h"])
PATHS = st.lists(NAMES, min_size=1, max_size=3).map(tuple)
KINDS = st.sampled_from(["file", "file", "dir", "dir", "symlink", "hardlink", "fifo"])
MODES = st.sampled_from([0o644, 0o755, 0o600, 0o4755, 0o2711, 0o1777, 0o444])
OWNERS = st.sampled_from([(0, 0), (1000, 1000), (65534, 3), (3_000_000, 5)])
MTIMES = st.integers(-10**9, 2**33).map(lambda s: s * 10**9) | st.integers(0, 2**62)
TARGETS = st.sampled_from(["/etc/passwd", "../x", "a", "b/c", "L" * 120, "caf\u00e9"])
XATTRS = st.sampled_from([None, b"", b"v", b"\xff\x00\x80bin"])
DATA = st.binary(max_size=600) | st.sampled_from([70_000, (1 << 20) + 3])  # int: that many bytes
ENTRY = st.tuples(PATHS, KINDS, DATA, MODES, OWNERS, MTIMES, XATTRS, TARGETS)
TREES = st.lists(ENTRY, max_size=25)
MUTATIONS = st.lists(st.tuples(st.sampled_from([
    "modify", "delete", "add_file", "add_dir", "add_symlink", "replace_with_dir",
    "replace_with_file", "chmod", "chown", "recreate_dir", "xattr", "hardlink_new", "add_fifo",
]), PATHS, st.integers(0, 10**6)), max_size=12)
SETTINGS = settings(max_examples=60, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


# ------------------------------------------------------------------ trees


def tree_state(root: Path, dir_mtimes: bool = True) -> dict[str, tuple[object, ...]]:
    out: dict[str, tuple[object, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            st_ = os.lstat(p)
            extra: object = None
            if stat.S_ISREG(st_.st_mode):
                extra = hashlib.sha256(Path(p).read_bytes()).hexdigest()
            elif stat.S_ISLNK(st_.st_mode):
                extra = os.readlink(p)
            is_dir = stat.S_ISDIR(st_.st_mode)
            xattrs = () if stat.S_ISLNK(st_.st_mode) else tuple(sorted(
                (k, os.getxattr(p, k)) for k in os.listxattr(p) if k.startswith("user.")))
            mtime = st_.st_mtime_ns // 10**9 if dir_mtimes or not is_dir else None
            out[os.path.relpath(p, root)] = (stat.S_IFMT(st_.st_mode), stat.S_IMODE(st_.st_mode),
                                             st_.st_uid, st_.st_gid, mtime, extra, xattrs)
    return out


def link_groups(root: Path) -> set[frozenset[str]]:
    groups: dict[tuple[int, int], set[str]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            st_ = os.lstat(p)
            if not stat.S_ISDIR(st_.st_mode) and st_.st_nlink > 1:
                groups.setdefault((st_.st_dev, st_.st_ino), set()).add(os.path.relpath(p, root))
    return {frozenset(g) for g in groups.values() if len(g) > 1}


def ensure_parents(root: Path, comps: tuple[str, ...]) -> Path | None:
    """The path for ``comps`` with its parents made; None if a parent is not a real dir."""
    cur = root
    for c in comps[:-1]:
        cur = cur / c
        if not os.path.lexists(cur):
            cur.mkdir()
        elif not stat.S_ISDIR(os.lstat(cur).st_mode):
            return None
    return cur / comps[-1]


def set_meta(p: Path, mode: int, owner: tuple[int, int], mtime: int, xattr: bytes | None,
             kind: str) -> None:
    os.chown(p, *owner, follow_symlinks=False)
    if kind != "symlink":
        os.chmod(p, mode)  # after chown, which clears setuid bits
    if xattr is not None and kind in ("file", "dir"):
        os.setxattr(p, "user.t", xattr)
    os.utime(p, ns=(mtime, mtime), follow_symlinks=False)


def build(root: Path, entries: list[tuple]) -> None:  # type: ignore[type-arg]
    root.mkdir(exist_ok=True)
    nondirs: list[Path] = []
    dirs: list[tuple[Path, int]] = []
    for comps, kind, data, mode, owner, mtime, xattr, target in entries:
        p = ensure_parents(root, comps)
        if p is None or os.path.lexists(p):
            continue
        if kind == "file":
            p.write_bytes(data if isinstance(data, bytes) else b"z" * data)
        elif kind == "dir":
            p.mkdir()
            dirs.append((p, mtime))
        elif kind == "symlink":
            os.symlink(target, p)
        elif kind == "fifo":
            os.mkfifo(p)
        elif kind == "hardlink":
            if not nondirs:
                continue
            os.link(nondirs[mtime % len(nondirs)], p, follow_symlinks=False)
            continue
        if kind != "dir":
            nondirs.append(p)
        set_meta(p, mode, owner, mtime, xattr, kind)
    for p, mtime in reversed(dirs):  # children changed them: set last, deepest first
        os.utime(p, ns=(mtime, mtime))


def mutate(root: Path, muts: list[tuple[str, tuple[str, ...], int]]) -> None:
    """Changes a user would make; every content change also moves the mtime (moby's rules
    look at size and mtime, not content)."""
    made: list[Path] = []
    for op, comps, n in muts:
        p = root.joinpath(*comps)
        exists = os.path.lexists(p)
        st_ = os.lstat(p) if exists else None
        is_dir = st_ is not None and stat.S_ISDIR(st_.st_mode)
        when = (2_000_000_000 + n) * 10**9
        if op in ("delete", "replace_with_dir", "replace_with_file", "recreate_dir") and exists:
            if is_dir:
                shutil.rmtree(p)
            else:
                p.unlink()
            if op == "delete" or (op == "recreate_dir" and not is_dir):
                continue
            op = {"replace_with_dir": "add_dir", "replace_with_file": "add_file",
                  "recreate_dir": "add_dir"}[op]
            exists = False
        if op == "modify" and st_ is not None and stat.S_ISREG(st_.st_mode):
            with open(p, "ab") as f:
                f.write(b"+" * (n % 5))
            os.utime(p, ns=(when, when))
        elif op in ("chmod", "chown") and exists and not stat.S_ISLNK(st_.st_mode):  # type: ignore[union-attr]
            if op == "chmod":
                os.chmod(p, 0o700 if n % 2 else 0o640)
            else:
                os.chown(p, 4242, n % 7)
        elif op == "xattr" and st_ is not None and stat.S_ISREG(st_.st_mode):
            os.setxattr(p, "user.t", str(n).encode())
            os.utime(p, ns=(when, when))  # moby's rules do not compare user.* xattrs
        elif op.startswith("add_") or op == "hardlink_new":
            q = None if exists else ensure_parents(root, comps)
            if q is None:
                continue
            if op == "add_file":
                q.write_bytes(str(n).encode())
            elif op == "add_dir":
                q.mkdir()
            elif op == "add_symlink":
                os.symlink(f"target{n}", q)
            elif op == "add_fifo":
                os.mkfifo(q)
            else:  # links only to files made here: see test_diff_round_trip
                alive = [m for m in made if os.path.lexists(m) and not m.is_symlink()
                         and m.is_file()]
                if alive:
                    os.link(alive[n % len(alive)], q)
                continue
            os.utime(q, ns=(when, when), follow_symlinks=False)
            if op == "add_file":
                made.append(q)


def layer_bytes(upper: Path, fmt: str, lower: Path | None = None) -> bytes:
    buf = io.BytesIO()
    _, size = write_layer(buf, upper, fmt=fmt, lower=lower)
    assert size == len(buf.getvalue())
    return buf.getvalue()


def apply(data: bytes, root: Path, fmt: str, lowers: list[Path] | None = None) -> None:
    root.mkdir(exist_ok=True)
    apply_layer(io.BytesIO(data), root, fmt=fmt, lowers=lowers)


def copy_tree(src: Path, dst: Path) -> None:
    subprocess.run(["cp", "-a", "--", str(src), str(dst)], check=True)


# ------------------------------------------------------------------ dir encoding


@SETTINGS
@given(TREES)
def test_full_tree_round_trip(entries: list[tuple]) -> None:  # type: ignore[type-arg]
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp, "src"), Path(tmp, "dst")
        build(src, entries)
        data = layer_bytes(src, fmt="dir")
        assert layer_bytes(src, fmt="dir") == data  # deterministic
        apply(data, dst, fmt="dir")
        assert tree_state(dst) == tree_state(src)
        assert link_groups(dst) == link_groups(src)
        assert changes_dirs(src, dst) == []


@SETTINGS
@given(TREES, MUTATIONS)
def test_diff_round_trip(entries: list[tuple], muts: list[tuple]) -> None:  # type: ignore[type-arg]
    with tempfile.TemporaryDirectory() as tmp:
        first, second, target = Path(tmp, "1"), Path(tmp, "2"), Path(tmp, "t")
        build(first, entries)
        copy_tree(first, second)
        mutate(second, muts)
        data = layer_bytes(second, fmt="dir", lower=first)
        copy_tree(first, target)
        apply(data, target, fmt="dir")
        # Directory mtimes are not changes of their own (moby); a dir whose entries came and
        # went within the changes keeps its old mtime in the target.
        assert tree_state(target, dir_mtimes=False) == tree_state(second, dir_mtimes=False)
        assert link_groups(target) == link_groups(second)
        assert changes_dirs(second, target) == []


# ------------------------------------------------------------------ overlay encoding


@contextlib.contextmanager
def overlay(lower: Path, upper: Path, work: Path, merged: Path) -> Iterator[Path]:
    for d in (upper, work, merged):
        d.mkdir(exist_ok=True)
    opts = f"lowerdir={lower},upperdir={upper},workdir={work},index=off,redirect_dir=off," \
           "metacopy=off"
    subprocess.run(["mount", "-t", "overlay", "overlay", "-o", opts, str(merged)], check=True)
    try:
        yield merged
    finally:
        subprocess.run(["umount", str(merged)], check=True)


def _overlay_works() -> bool:
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        (t / "l").mkdir()
        try:
            with overlay(t / "l", t / "u", t / "w", t / "m"):
                return True
        except subprocess.CalledProcessError:
            return False


needs_overlay = pytest.mark.skipif(os.geteuid() != 0 or not _overlay_works(),
                                   reason="needs root and overlayfs")


@needs_overlay
@pytest.mark.root
@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(TREES, MUTATIONS)
def test_overlay_round_trip(entries: list[tuple], muts: list[tuple]) -> None:  # type: ignore[type-arg]
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        lower = t / "lower"
        build(lower, entries)
        with overlay(lower, t / "upper", t / "work", t / "merged") as merged:
            mutate(merged, muts)
            want = tree_state(merged, dir_mtimes=False)
        data = layer_bytes(t / "upper", fmt="overlay")
        # as a dir layer onto a copy of the lower
        copy_tree(lower, t / "flat")
        apply(data, t / "flat", fmt="dir")
        assert tree_state(t / "flat", dir_mtimes=False) == want
        # as a new upper dir over the same lower, seen through a mount
        apply(data, t / "upper2", fmt="overlay", lowers=[lower])
        with overlay(lower, t / "upper2", t / "work2", t / "merged2") as merged2:
            assert tree_state(merged2, dir_mtimes=False) == want
        assert layer_bytes(t / "upper2", fmt="overlay") == data
