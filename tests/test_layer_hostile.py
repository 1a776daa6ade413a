"""Hostile layers: nothing outside the root may change, whatever the tar plants.

Every case runs in a sandbox ``tmp/{root,outside,lower}``; the whole sandbox except the
root is snapshotted before and after (paths, types, modes, owners, times, contents, link
targets, xattrs, link counts). Cases that are lexically unsafe must fail with
``UnsafePath``; others may succeed (writes land inside the root) or fail with ``DataError``
(e.g. creating through a dangling symlink: overlay mode must create a whiteout's parent,
dir mode need not), but never escape.
"""

from __future__ import annotations

import hashlib
import io
import os
import stat
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest

from shale.errors import DataError, UnsafePath
from shale.layer_apply import apply_layer

HOSTABS = f"/shale-hostile-{os.getpid()}"

Entry = tuple[str, str, object]  # (name, kind, payload)
Case = Callable[[Path], list[Entry]]  # outside -> entries
Plant = Callable[[Path, Path], None]  # (tree, outside) -> None


def snapshot(top: Path, exclude: Path) -> dict[str, tuple[object, ...]]:
    out: dict[str, tuple[object, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(top):
        if Path(dirpath) == exclude.parent:
            dirnames[:] = [d for d in dirnames if Path(dirpath, d) != exclude]
        for name in [".", *dirnames, *filenames]:
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            data: object = None
            if stat.S_ISREG(st.st_mode):
                data = hashlib.sha256(Path(p).read_bytes()).hexdigest()
            elif stat.S_ISLNK(st.st_mode):
                data = os.readlink(p)
            xattrs = sorted(os.listxattr(p, follow_symlinks=False))
            times = 0 if stat.S_ISDIR(st.st_mode) and name == "." else st.st_mtime_ns
            out[os.path.relpath(p, top)] = (st.st_mode, st.st_uid, st.st_gid, st.st_nlink,
                                            st.st_size, times, data, tuple(xattrs))
    return out


def make_tar(entries: list[Entry]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for name, kind, payload in entries:
            ti = tarfile.TarInfo(name)
            ti.mode = 0o4777 if kind == "reg" else 0o755
            ti.mtime = 1
            if kind == "reg":
                data = payload if isinstance(payload, bytes) else b"pwned"
                ti.size = len(data)
                tf.addfile(ti, io.BytesIO(data))
                continue
            ti.type = {"dir": tarfile.DIRTYPE, "sym": tarfile.SYMTYPE, "lnk": tarfile.LNKTYPE,
                       "fifo": tarfile.FIFOTYPE, "chr": tarfile.CHRTYPE}[kind]
            if kind in ("sym", "lnk"):
                ti.linkname = str(payload)
            if kind == "sym":
                ti.pax_headers = {"SCHILY.xattr.user.evil": "1"}
            tf.addfile(ti)
    return buf.getvalue()


OK, DATA, UNSAFE = None, DataError, UnsafePath

# name: (entries(outside), planted(tree, outside) or None, expected dir, expected overlay)
CASES: dict[str, tuple[Case, Plant | None, type[Exception] | None, type[Exception] | None]] = {
    "dotdot_name": (lambda o: [("../../etc/x", "reg", None)], None, UNSAFE, UNSAFE),
    "dotdot_to_outside": (lambda o: [("../outside/x", "reg", None)], None, UNSAFE, UNSAFE),
    "dotdot_inside_name": (lambda o: [("a/b/../../../outside/x", "reg", None)], None,
                           UNSAFE, UNSAFE),
    "absolute_name": (lambda o: [(HOSTABS + "/x", "reg", None)], None, OK, OK),
    "symlink_to_slash": (lambda o: [("evil", "sym", "/"), ("evil/etc/x", "reg", None)],
                         None, OK, OK),
    "symlink_to_host_path": (lambda o: [("evil", "sym", str(o)), ("evil/x", "reg", None)],
                             None, DATA, DATA),
    "symlink_dotdot_chain": (lambda o: [
        ("a", "sym", "../../.."), ("b", "sym", "a/a/../outside"), ("outside", "dir", None),
        ("b/x", "reg", None), ("a/a/outside/y", "reg", None)], None, OK, OK),
    "symlink_chain_dangling": (lambda o: [
        ("a", "sym", "../../.."), ("c", "sym", "a/../../outside"), ("c/x", "reg", None)],
        None, DATA, DATA),
    "hardlink_through_symlink": (lambda o: [
        ("out", "sym", "../outside"), ("h", "lnk", "out/secret")], None, DATA, DATA),
    "hardlink_through_abs_symlink": (lambda o: [
        ("out", "sym", str(o)), ("h", "lnk", f"out/{o.name}/secret")], None, DATA, DATA),
    "hardlink_dotdot_target": (lambda o: [("h", "lnk", "../../outside/secret")], None,
                               UNSAFE, UNSAFE),
    "hardlink_abs_target": (lambda o: [("h", "lnk", str(o / "secret"))], None, DATA, DATA),
    "hardlink_created_through_symlink": (lambda o: [
        ("f", "reg", None), ("out", "sym", "../outside"), ("outside", "dir", None),
        ("out/x", "lnk", "f")], None, OK, OK),
    "hardlink_to_root": (lambda o: [("h", "lnk", "./")], None, UNSAFE, UNSAFE),
    "whiteout_dotdot": (lambda o: [("../outside/.wh.secret", "reg", b"")], None,
                        UNSAFE, UNSAFE),
    "whiteout_in_dir_name": (lambda o: [("a/.wh.x/../../../outside/y", "reg", None)], None,
                             UNSAFE, UNSAFE),
    "whiteout_through_symlink": (lambda o: [
        ("out", "sym", str(o)), ("out/.wh.secret", "reg", b""),
        ("rel", "sym", "../outside"), ("rel/.wh.secret", "reg", b"")], None, OK, DATA),
    "whiteout_of_symlink_dir": (lambda o: [
        ("out", "sym", str(o.parent)), (f"out/{o.name}/.wh.secret", "reg", b"")], None,
        OK, DATA),
    "opaque_through_symlink": (lambda o: [
        ("out", "sym", "../outside"), ("out/.wh..wh..opq", "reg", b""),
        ("abs", "sym", str(o)), ("abs/.wh..wh..opq", "reg", b"")], None, OK, DATA),
    "opaque_of_root_via_symlink": (lambda o: [
        ("up", "sym", "../.."), ("up/.wh..wh..opq", "reg", b"")], None, OK, OK),
    "file_over_symlink": (lambda o: [("f", "sym", str(o / "secret")), ("f", "reg", None)],
                          None, OK, OK),
    "dir_over_symlink": (lambda o: [("d", "sym", str(o)), ("d", "dir", None),
                                    ("d/secret", "reg", None)], None, OK, OK),
    "fifo_over_symlink": (lambda o: [("n", "sym", "../outside/secret"), ("n", "fifo", None)],
                          None, OK, OK),
    "device_through_symlink": (lambda o: [("e", "sym", "/"), ("e/null", "chr", None)],
                               None, OK, OK),
    "hardlink_to_symlink": (lambda o: [("s", "sym", str(o / "secret")), ("h", "lnk", "s"),
                                       ("h", "reg", None)], None, OK, OK),
    "symlink_loop": (lambda o: [("l1", "sym", "l2"), ("l2", "sym", "l1"),
                                ("l1/x", "reg", None)], None, DATA, DATA),
    "root_as_file": (lambda o: [("./", "reg", None)], None, DATA, DATA),
    "planted_abs_symlink": (lambda o: [("lib/x", "reg", None)],
                            lambda t, o: os.symlink(str(o), t / "lib"), DATA, OK),
    "planted_rel_symlink": (lambda o: [("rel/secret", "reg", None), ("rel/.wh.secret", "reg",
                                                                     b"")],
                            lambda t, o: os.symlink("../../outside", t / "rel"), DATA, OK),
    "planted_up_symlink": (lambda o: [("up/outside/secret", "reg", None)],
                           lambda t, o: os.symlink("/../..", t / "up"), OK, OK),
    "planted_symlink_hardlink": (lambda o: [("h", "lnk", "lib/secret")],
                                 lambda t, o: os.symlink(str(o), t / "lib"), DATA, DATA),
    "planted_symlink_opaque": (lambda o: [("lib/.wh..wh..opq", "reg", b"")],
                               lambda t, o: os.symlink("../outside", t / "lib"), OK, OK),
}


@pytest.mark.parametrize("fmt", ["dir", "overlay"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_hostile_layer_stays_inside(tmp_path: Path, case: str, fmt: str) -> None:
    entries_of, plant, want_dir, want_overlay = CASES[case]
    want = want_dir if fmt == "dir" else want_overlay
    root, outside, lower = tmp_path / "root", tmp_path / "outside", tmp_path / "lower"
    for d in (root, outside, lower):
        d.mkdir()
    (outside / "secret").write_text("secret")
    (lower / "f").write_text("lower file")
    if plant is not None:
        plant(root if fmt == "dir" else lower, outside)
    before = snapshot(tmp_path, root)
    data = make_tar(entries_of(outside))
    lowers = [lower] if fmt == "overlay" else None
    if want is None:
        apply_layer(io.BytesIO(data), root, fmt=fmt, lowers=lowers)
    else:
        with pytest.raises(want) as err:
            apply_layer(io.BytesIO(data), root, fmt=fmt, lowers=lowers)
        if want is UnsafePath:
            assert "'" in str(err.value)  # the message names the entry
    assert snapshot(tmp_path, root) == before
    assert not os.path.lexists(HOSTABS)


def test_writes_land_inside(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    data = make_tar([("evil", "sym", "/"), ("evil/etc/x", "reg", b"in"),
                     ("a", "sym", "../../.."), ("a/a/y", "reg", b"in"),
                     (HOSTABS + "/z", "reg", b"in")])
    apply_layer(io.BytesIO(data), root, fmt="dir")
    assert (root / "etc" / "x").read_bytes() == b"in"
    assert (root / "y").read_bytes() == b"in"
    assert (root / HOSTABS.lstrip("/") / "z").read_bytes() == b"in"
    assert os.readlink(root / "evil") == "/"  # kept verbatim


def test_dir_mode_through_planted_symlink_in_lower_tree(tmp_path: Path) -> None:
    """A lower layer left ``usr/lib -> /lib`` (absolute, normal): a later layer writing
    ``usr/lib/x`` must land in the root's /lib."""
    root = tmp_path / "root"
    (root / "lib").mkdir(parents=True)
    (root / "usr").mkdir()
    os.symlink("/lib", root / "usr" / "lib")
    apply_layer(io.BytesIO(make_tar([("usr/lib/x", "reg", b"ok")])), root, fmt="dir")
    assert (root / "lib" / "x").read_bytes() == b"ok"
