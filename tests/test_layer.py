"""layer: changes, deterministic layer tars, and applying them (dir and overlay encodings)."""

from __future__ import annotations

import hashlib
import io
import os
import stat
import tarfile
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import pytest

from shale.digest import EMPTY_LAYER_DIFF_ID, Digest
from shale.errors import DataError, InvalidArgument, UnsafePath
from shale.layer import Change, changes_dirs, changes_overlay, write_layer
from shale.layer_apply import apply_layer

T0 = 1_600_000_000


# ------------------------------------------------------------------ helpers


def tree_state(root: Path, dir_mtimes: bool = True) -> dict[str, tuple[object, ...]]:
    """Everything a layer must carry, per path (the root itself excluded)."""
    out: dict[str, tuple[object, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            rel = os.path.relpath(p, root)
            kind = stat.S_IFMT(st.st_mode)
            extra: object = None
            if stat.S_ISREG(st.st_mode):
                extra = hashlib.sha256(Path(p).read_bytes()).hexdigest()
            elif stat.S_ISLNK(st.st_mode):
                extra = os.readlink(p)
            elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
                extra = st.st_rdev
            mtime = st.st_mtime_ns // 10**9 if dir_mtimes or not stat.S_ISDIR(st.st_mode) else 0
            xattrs = {} if stat.S_ISLNK(st.st_mode) else {
                k: os.getxattr(p, k) for k in os.listxattr(p) if k.startswith("user.")}
            out[rel] = (kind, stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, mtime, extra,
                        tuple(sorted(xattrs.items())))
    return out


def link_groups(root: Path) -> set[frozenset[str]]:
    groups: dict[tuple[int, int], set[str]] = {}
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            if not stat.S_ISDIR(st.st_mode) and st.st_nlink > 1:
                groups.setdefault((st.st_dev, st.st_ino), set()).add(os.path.relpath(p, root))
    return {frozenset(g) for g in groups.values() if len(g) > 1}


def write(path: Path, data: bytes = b"x", mode: int = 0o644, mtime: int = T0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    os.chmod(path, mode)
    os.utime(path, (mtime, mtime))


def layer(upper: Path, fmt: str, lower: Path | None = None,
          skip: Callable[[str], bool] | None = None) -> tuple[bytes, Digest]:
    buf = io.BytesIO()
    digest, size = write_layer(buf, upper, fmt=fmt, lower=lower, skip=skip)
    data = buf.getvalue()
    assert size == len(data)
    assert digest == Digest.of_bytes(data)
    return data, digest


def members(data: bytes) -> list[tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        return tf.getmembers()


def names(data: bytes) -> list[str]:
    return [m.name + ("/" if m.isdir() else "") for m in members(data)]


def raw_names(data: bytes) -> list[bytes]:
    """Entry names as stored (dir entries keep their trailing '/')."""
    out, off = [], 0
    while off < len(data) and data[off:off + 512] != bytes(512):
        hdr = data[off:off + 512]
        size = int(hdr[124:135] or b"0", 8)
        if hdr[156:157] != b"x":
            out.append(hdr[:100].rstrip(b"\0"))
        off += 512 + (size + 511) // 512 * 512
    return out


def make_tar(entries: list[tuple[str, str, object]], fmt: int = tarfile.PAX_FORMAT,
             mtime: int = T0) -> bytes:
    """(name, kind, payload): kind reg (bytes), dir, sym/lnk (target), fifo, chr ((maj, min))."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tf:
        for name, kind, payload in entries:
            ti = tarfile.TarInfo(name)
            ti.mtime = mtime
            ti.mode = 0o755 if kind == "dir" else 0o644
            if kind == "reg":
                data = payload if isinstance(payload, bytes) else b""
                ti.size = len(data)
                tf.addfile(ti, io.BytesIO(data))
                continue
            ti.type = {"dir": tarfile.DIRTYPE, "sym": tarfile.SYMTYPE, "lnk": tarfile.LNKTYPE,
                       "fifo": tarfile.FIFOTYPE, "chr": tarfile.CHRTYPE}[kind]
            if kind in ("sym", "lnk"):
                ti.linkname = str(payload)
            if kind == "chr":
                ti.devmajor, ti.devminor = payload  # type: ignore[misc]
            tf.addfile(ti)
    return buf.getvalue()


def apply(data: bytes, root: Path, fmt: str = "dir", lowers: list[Path] | None = None) -> None:
    apply_layer(io.BytesIO(data), root, fmt=fmt, lowers=lowers)


# ------------------------------------------------------------ writing: format


def test_empty_changeset_is_the_canonical_empty_layer(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    write(tmp_path / "a" / "f")
    data, digest = layer(tmp_path / "a", fmt="dir", lower=tmp_path / "a")
    assert data == bytes(1024)
    assert str(digest) == EMPTY_LAYER_DIFF_ID
    (tmp_path / "upper").mkdir()
    assert layer(tmp_path / "upper", fmt="overlay")[0] == bytes(1024)


def test_header_format(tmp_path: Path) -> None:
    up = tmp_path / "up"
    write(up / "d" / "f", b"hello")
    os.chown(up / "d" / "f", 1234, 5678)
    os.chmod(up / "d" / "f", 0o4755)  # after chown, which clears setuid
    os.utime(up / "d" / "f", ns=(T0 * 10**9 + 999_999_999, T0 * 10**9 + 999_999_999))
    data, _ = layer(up, fmt="dir")
    assert data.endswith(bytes(1024)) and len(data) == 3 * 512 + 1024  # no 10240 pad
    assert raw_names(data) == [b"d/", b"d/f"]
    f = members(data)[1]
    assert (f.mode, f.uid, f.gid, f.uname, f.gname, f.mtime) == (0o4755, 1234, 5678, "", "", T0)
    assert f.pax_headers == {}  # nothing needed a PAX header
    hdr = data[512:1024]
    assert hdr[100:108] == b"0004755\0"  # permission bits only, no type bits
    assert hdr[257:265] == b"ustar\x0000"


def test_pax_only_when_needed(tmp_path: Path) -> None:
    up = tmp_path / "up"
    long = "n" * 150
    write(up / long)
    write(up / "caf\u00e9")
    write(up / "x")
    os.setxattr(up / "x", "user.bin", b"\xff\x00\x01")
    os.chown(up / "x", 3_000_000, 0)
    by_name = {m.name: m for m in members(layer(up, fmt="dir")[0])}
    assert set(by_name) == {long, "caf\u00e9", "x"}
    assert by_name["x"].uid == 3_000_000
    raw = by_name["x"].pax_headers["SCHILY.xattr.user.bin"]
    assert raw.encode("utf-8", "surrogateescape") == b"\xff\x00\x01"


def test_order_is_bytewise_per_dir_parent_first(tmp_path: Path) -> None:
    up = tmp_path / "up"
    for n in ("a/x", "a-b", "a.c", "B", "a/y/z"):
        write(up / n)
    assert names(layer(up, fmt="dir")[0]) == ["B", "a/", "a/x", "a/y/", "a/y/z", "a-b", "a.c"]


def test_deterministic_and_hardlinks(tmp_path: Path) -> None:
    up = tmp_path / "up"
    write(up / "b", b"data")
    os.link(up / "b", up / "a")
    os.symlink("/etc/b", up / "s")
    os.mkfifo(up / "p")
    first, d1 = layer(up, fmt="dir")
    assert layer(up, fmt="dir")[1] == d1
    ms = {m.name: m for m in members(first)}
    assert ms["a"].isreg() and ms["a"].size == 4
    assert ms["b"].islnk() and ms["b"].linkname == "a" and ms["b"].size == 0
    assert ms["s"].issym() and ms["s"].linkname == "/etc/b"
    assert ms["p"].isfifo()


def test_sockets_skipped_and_skip_callback(tmp_path: Path) -> None:
    import socket

    up = tmp_path / "up"
    write(up / "etc" / "hosts")
    write(up / "etc" / "keep")
    write(up / "dev" / "console")
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(up / "sock"))
    try:
        data, _ = layer(up, fmt="dir", skip=lambda p: p in ("/etc/hosts", "/dev"))
    finally:
        s.close()
    assert names(data) == ["etc/", "etc/keep"]


def test_unknown_format_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument):
        write_layer(io.BytesIO(), tmp_path, fmt="aufs")
    with pytest.raises(InvalidArgument):
        apply_layer(io.BytesIO(bytes(1024)), tmp_path, fmt="zip")


# ----------------------------------------------------------- changes of trees


def make_pair(tmp_path: Path) -> tuple[Path, Path]:
    lower, upper = tmp_path / "lower", tmp_path / "upper"
    for base in (lower, upper):
        write(base / "etc" / "passwd", b"root")
        write(base / "etc" / "same", b"s")
        write(base / "old" / "deep" / "f")
        write(base / "mod", b"1")
        write(base / "perm")
        write(base / "bin" / "ping")
        write(base / "nsec", b"n")
    os.utime(lower / "nsec", ns=(T0 * 10**9, T0 * 10**9))
    os.utime(upper / "nsec", ns=(T0 * 10**9 + 5, T0 * 10**9 + 5))  # sameFsTime: unchanged
    import shutil

    shutil.rmtree(upper / "old")
    write(upper / "mod", b"2", mtime=T0 + 1)
    os.chmod(upper / "perm", 0o600)
    write(upper / "etc" / "new")
    os.setxattr(upper / "bin" / "ping", "security.capability",
                bytes.fromhex("0100000200200000000000000000000000000000"))
    os.utime(upper / "etc", (1, 1))  # dir mtimes are ignored
    return lower, upper


def test_changes_dirs(tmp_path: Path) -> None:
    lower, upper = make_pair(tmp_path)
    assert changes_dirs(lower, upper) == [
        Change("C", "/bin"), Change("C", "/bin/ping"), Change("C", "/etc"),
        Change("A", "/etc/new"), Change("C", "/mod"), Change("D", "/old"), Change("C", "/perm"),
    ]
    assert changes_dirs(None, upper)[0] == Change("A", "/bin")


def test_changes_dirs_sorted_by_full_path(tmp_path: Path) -> None:
    lower, upper = tmp_path / "l", tmp_path / "u"
    lower.mkdir()
    write(upper / "a" / "b")
    write(upper / "a-b")
    assert [c.path for c in changes_dirs(lower, upper)] == ["/a", "/a-b", "/a/b"]


def test_write_dir_diff(tmp_path: Path) -> None:
    lower, upper = make_pair(tmp_path)
    data, _ = layer(upper, fmt="dir", lower=lower)
    assert names(data) == ["bin/", "bin/ping", "etc/", "etc/new", "mod", ".wh.old", "perm"]
    ms = {m.name: m for m in members(data)}
    assert ms[".wh.old"].isreg() and ms[".wh.old"].mode == 0o600 and ms[".wh.old"].size == 0
    assert "SCHILY.xattr.security.capability" in ms["bin/ping"].pax_headers
    # and it applies: a copy of lower becomes upper
    import shutil

    target = tmp_path / "target"
    shutil.copytree(lower, target, symlinks=True)
    apply(data, target)
    assert tree_state(target, dir_mtimes=False) == tree_state(upper, dir_mtimes=False)
    assert os.getxattr(target / "bin" / "ping", "security.capability")[:4] == b"\x01\0\0\x02"


def test_type_changes_in_dir_diff(tmp_path: Path) -> None:
    lower, upper = tmp_path / "l", tmp_path / "u"
    write(lower / "was_file")
    write(lower / "was_dir" / "child")
    write(upper / "was_file" / "now_child")
    write(upper / "was_dir")
    data, _ = layer(upper, fmt="dir", lower=lower)
    assert names(data) == ["was_dir", "was_file/", "was_file/now_child"]
    import shutil

    shutil.copytree(lower, tmp_path / "t")
    apply(data, tmp_path / "t")
    assert tree_state(tmp_path / "t") == tree_state(upper)


# ----------------------------------------------------- overlay upper dirs (by hand)


def overlay_fixture(tmp_path: Path) -> tuple[Path, Path, Path]:
    """lower2 (far) < lower1 (near) < upper, as the kernel would leave them."""
    far, near, upper = tmp_path / "far", tmp_path / "near", tmp_path / "upper"
    write(far / "data" / "a.txt")
    write(far / "data" / "sub" / "old")
    write(far / "data" / "sub" / "old2")
    write(far / "bin" / "touch")
    write(far / "gone")
    write(near / "data" / "sub" / "near_only")
    os.mknod(near / "gone", stat.S_IFCHR)  # deleted in near: not visible below upper
    write(upper / "bin" / "new")
    os.mknod(upper / "bin" / "touch", stat.S_IFCHR | 0o000)
    os.link(upper / "bin" / "touch", upper / "data_whiteout_link")  # whiteouts share inodes
    write(upper / "data" / "sub" / "c", b"new")
    os.setxattr(upper / "data" / "sub", "trusted.overlay.opaque", b"y")
    os.setxattr(upper / "data", "trusted.overlay.origin", b"\0junk")
    os.setxattr(upper / "bin" / "new", "trusted.overlay.origin", b"\0junk")
    os.setxattr(upper / "bin" / "new", "user.keep", b"1")
    os.chown(upper / "bin" / "touch", 7, 8, follow_symlinks=False)
    os.chmod(upper / "data" / "sub", 0o750)
    return far, near, upper


def test_changes_overlay(tmp_path: Path) -> None:
    far, near, upper = overlay_fixture(tmp_path)
    assert changes_overlay(upper, [near, far]) == [
        Change("C", "/bin"), Change("A", "/bin/new"), Change("D", "/bin/touch"),
        Change("C", "/data"), Change("C", "/data/sub"), Change("A", "/data/sub/c"),
        Change("D", "/data/sub/near_only"), Change("D", "/data/sub/old"),
        Change("D", "/data/sub/old2"), Change("D", "/data_whiteout_link"),
    ]


def test_write_overlay(tmp_path: Path) -> None:
    upper = overlay_fixture(tmp_path)[2]
    data, _ = layer(upper, fmt="overlay")
    assert raw_names(data) == [b"bin/", b"bin/new", b"bin/.wh.touch", b"data/", b"data/sub/",
                               b"data/sub/.wh..wh..opq", b"data/sub/c", b".wh.data_whiteout_link"]
    ms = {m.name: m for m in members(data)}
    wh = ms["bin/.wh.touch"]
    assert (wh.type, wh.mode, wh.size, wh.uid, wh.gid) == (tarfile.REGTYPE, 0o600, 0, 7, 8)
    assert ms[".wh.data_whiteout_link"].isreg()  # not a hardlink of the other whiteout
    opq = ms["data/sub/.wh..wh..opq"]
    assert (opq.mode, opq.mtime, opq.size) == (0o750, 0, 0)
    for m in ms.values():
        assert not any("overlay" in k for k in m.pax_headers)
    assert ms["bin/new"].pax_headers == {"SCHILY.xattr.user.keep": "1"}


def test_overlay_layer_applies_as_dir_and_as_overlay(tmp_path: Path) -> None:
    far, near, upper = overlay_fixture(tmp_path)
    data, _ = layer(upper, fmt="overlay")
    # dir: onto a flattened copy of the lowers
    flat = tmp_path / "flat"
    write(flat / "data" / "a.txt")
    for n in ("old", "old2", "near_only"):
        write(flat / "data" / "sub" / n)
    write(flat / "bin" / "touch")
    apply(data, flat)
    assert sorted(os.path.relpath(os.path.join(d, f), flat)
                  for d, ds, fs in os.walk(flat) for f in fs + ds) == [
        "bin", "bin/new", "data", "data/a.txt", "data/sub", "data/sub/c"]
    # overlay: into an empty upper, back to the same upper encoding and the same bytes
    up2 = tmp_path / "up2"
    up2.mkdir()
    apply(data, up2, fmt="overlay", lowers=[near, far])
    st = os.lstat(up2 / "bin" / "touch")
    assert stat.S_ISCHR(st.st_mode) and st.st_rdev == 0 and (st.st_uid, st.st_gid) == (7, 8)
    assert os.getxattr(up2 / "data" / "sub", "trusted.overlay.opaque") == b"y"
    assert (far / "data" / "sub" / "old").exists()  # nothing deleted
    assert names(layer(up2, fmt="overlay")[0]) == names(data)


# ------------------------------------------------------------------ applying


def test_apply_dir_whiteouts_and_replacements(tmp_path: Path) -> None:
    root = tmp_path / "root"
    write(root / "etc" / "gone")
    write(root / "tree" / "a" / "b")
    write(root / "file_to_dir")
    write(root / "dir_to_file" / "x")
    os.symlink("/etc", root / "sym_to_file")
    write(root / "merge" / "keep")
    data = make_tar([
        ("etc/.wh.gone", "reg", b""), (".wh.tree", "reg", b""),
        ("file_to_dir/", "dir", None), ("file_to_dir/x", "reg", b"1"),
        ("dir_to_file", "reg", b"2"), ("sym_to_file", "reg", b"3"),
        ("merge/", "dir", None), (".wh.never_existed", "reg", b""),
        ("nodir/.wh.x", "reg", b""),
    ])
    apply(data, root)
    assert not (root / "etc" / "gone").exists() and not (root / "tree").exists()
    assert (root / "file_to_dir" / "x").read_bytes() == b"1"
    assert (root / "dir_to_file").read_bytes() == b"2"
    assert not (root / "sym_to_file").is_symlink()
    assert (root / "merge" / "keep").exists()
    assert os.stat(root / "merge").st_mtime == T0
    assert not (root / "nodir").exists()  # a whiteout creates nothing


@pytest.mark.parametrize("opq_first", [True, False])
def test_apply_opaque_keeps_this_layers_entries(tmp_path: Path, opq_first: bool) -> None:
    root = tmp_path / "root"
    write(root / "d" / "lower_file")
    write(root / "d" / "sub" / "lower_in_sub")
    write(root / "d" / "keep" / "lower")
    opq: list[tuple[str, str, object]] = [("d/.wh..wh..opq", "reg", b"")]
    body: list[tuple[str, str, object]] = [
        ("d/", "dir", None), ("d/new", "reg", b"n"), ("d/keep/implied", "reg", b"i")]
    apply(make_tar(body[:1] + opq + body[1:] if opq_first else body + opq), root)
    assert sorted(os.listdir(root / "d")) == ["keep", "new"]
    assert os.listdir(root / "d" / "keep") == ["implied"]


def test_apply_hardlinks_symlinks_nodes(tmp_path: Path) -> None:
    root = tmp_path / "root"
    write(root / "lower" / "f", b"lowerdata")
    data = make_tar([
        ("a", "reg", b"data"), ("b", "lnk", "a"), ("c", "lnk", "./lower/f"),
        ("s", "sym", "/abs/target"), ("r", "sym", "../rel"), ("p", "fifo", None),
        ("null", "chr", (1, 3)), ("self", "lnk", "self"),
    ])
    apply(data, root)
    assert os.path.samefile(root / "a", root / "b")
    assert os.path.samefile(root / "lower" / "f", root / "c")
    assert os.readlink(root / "s") == "/abs/target" and os.readlink(root / "r") == "../rel"
    assert stat.S_ISFIFO(os.lstat(root / "p").st_mode)
    assert os.lstat(root / "null").st_rdev == os.makedev(1, 3)
    assert os.lstat(root / "s").st_mtime == T0
    with pytest.raises(DataError, match="does not exist"):
        apply(make_tar([("x", "lnk", "missing")]), root)


def test_apply_metadata_order(tmp_path: Path) -> None:
    """setuid survives the chown; capabilities survive it too; dir mtimes are restored;
    overlay xattrs from a tar are never planted."""
    from shale import tarwriter as tw

    cap = bytes.fromhex("0100000200200000000000000000000000000000")
    xattrs = {"security.capability": cap, "user.x": b"v", "trusted.overlay.redirect": b"/etc"}
    raw = b"".join([
        tw.header("d/", tw.DIR, mode=0o2750, uid=5, gid=6, mtime=1000),
        tw.header("d/suid", tw.REG, mode=0o4755, uid=100, gid=200, mtime=2000, size=1,
                  xattrs=xattrs),
        b"x" + tw.padding(1), bytes(1024),
    ])
    root = tmp_path / "root"
    root.mkdir()
    res = apply_layer(io.BytesIO(raw), root, fmt="dir")
    assert (res.size, res.entries) == (1, 2)
    st = os.lstat(root / "d" / "suid")
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, st.st_mtime) == (
        0o4755, 100, 200, 2000)
    assert os.getxattr(root / "d" / "suid", "security.capability") == cap
    assert os.getxattr(root / "d" / "suid", "user.x") == b"v"
    assert "trusted.overlay.redirect" not in os.listxattr(root / "d" / "suid")
    dst = os.lstat(root / "d")
    assert (stat.S_IMODE(dst.st_mode), dst.st_uid, dst.st_mtime) == (0o2750, 5, 1000)


def go_style(data: bytes) -> bytes:
    """Cut Python's 10240-byte record padding: Go ends with exactly two zero blocks."""
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        tf.getmembers()
        end = tf.offset
    return data[:end] + bytes(1024)


def test_go_style_and_python_tars_apply_the_same(tmp_path: Path) -> None:
    entries: list[tuple[str, str, object]] = [
        ("bin", "dir", None), ("bin/busybox", "reg", b"bb"), ("bin/sh", "lnk", "bin/busybox"),
        ("etc", "dir", None), ("etc/alt", "sym", "/bin/busybox"), ("etc/.wh.x", "reg", b""),
    ]
    go = [("./" + n, k, ("./" + str(p)) if k == "lnk" else p) for n, k, p in entries]
    py_tar = make_tar(entries, fmt=tarfile.GNU_FORMAT)
    go_tar = make_tar([("./", "dir", None), *go], fmt=tarfile.USTAR_FORMAT)
    go_tar = go_style(go_tar)
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    apply(py_tar, a)
    apply(go_tar, b)
    assert tree_state(a) == tree_state(b)
    assert link_groups(a) == link_groups(b) == {frozenset({"bin/busybox", "bin/sh"})}


@pytest.mark.parametrize("bad", [".wh.", "d/.wh..", "d/.wh...", ".wh.x/y"])
def test_invalid_whiteouts_are_refused(tmp_path: Path, bad: str) -> None:
    with pytest.raises(UnsafePath, match="whiteout"):
        apply(make_tar([(bad, "reg", b"")]), tmp_path)


def test_meta_names_are_skipped(tmp_path: Path) -> None:
    apply(make_tar([(".wh..wh.aufs", "reg", b""), (".wh..wh.plnk/123", "reg", b"x"),
                    ("ok", "reg", b"")]), tmp_path)
    assert os.listdir(tmp_path) == ["ok"]


@pytest.mark.parametrize("mangle", [
    lambda d: d[:700],  # truncated in the middle of data
    lambda d: b"garbage!" * 200,
    lambda d: d[:512] + bytes(8),  # header then nothing
])
def test_corrupt_tars_raise_dataerror(tmp_path: Path, mangle: Callable[[bytes], bytes]) -> None:
    data = make_tar([("f", "reg", b"x" * 1000), ("g", "reg", b"y")])
    with pytest.raises(DataError):
        apply(mangle(data), tmp_path)


def test_apply_reads_the_whole_stream(tmp_path: Path) -> None:
    data = make_tar([("f", "reg", b"x")])  # Python pads to 10240 bytes
    stream = io.BytesIO(data)
    apply_layer(stream, tmp_path, fmt="dir")
    assert stream.tell() == len(data)


def test_overlay_apply_copies_up_hardlink_targets(tmp_path: Path) -> None:
    lower, upper = tmp_path / "lower", tmp_path / "upper"
    write(lower / "usr" / "bin" / "perl", b"perl", 0o755)
    os.chmod(lower / "usr", 0o711)
    os.chown(lower / "usr" / "bin", 2, 3)
    os.setxattr(lower / "usr" / "bin" / "perl", "user.a", b"b")
    upper.mkdir()
    apply(make_tar([("usr/bin/perl5", "lnk", "usr/bin/perl")]), upper, "overlay", [lower])
    assert os.path.samefile(upper / "usr" / "bin" / "perl", upper / "usr" / "bin" / "perl5")
    assert (upper / "usr" / "bin" / "perl").read_bytes() == b"perl"
    assert os.getxattr(upper / "usr" / "bin" / "perl", "user.a") == b"b"
    assert stat.S_IMODE(os.stat(upper / "usr").st_mode) == 0o711  # implied dirs copy lowers
    assert os.stat(upper / "usr" / "bin").st_uid == 2
    assert (lower / "usr" / "bin" / "perl").stat().st_nlink == 1


def test_memory_stays_flat_on_many_entries(tmp_path: Path) -> None:
    """Stream mode would keep every TarInfo (~1 KB each); we drop them as we go."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for i in range(20_000):
            tf.addfile(tarfile.TarInfo(f".wh.n{i}"))
    buf.seek(0)
    tracemalloc.start()
    try:
        res = apply_layer(buf, tmp_path, fmt="dir")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert res.entries == 20_000
    assert peak < 4 << 20, peak  # keeping the TarInfos: ~10 MB


# ------------------------------------------------------------------ layer sizes, hashing once


def sized_tree(root: Path) -> int:
    """An overlay upper dir with files on both sides of the writer's gathering threshold
    (64 KiB) and of its 1 MiB buffer, hard links, symlinks (one non-ASCII), a whiteout, an
    opaque dir and a fifo, every mtime fixed; returns docker's size of it (regular file
    bytes, a hard link once, plus symlink target lengths in bytes)."""
    sizes = [0, 1, 511, 512, 513, 65535, 65536, 65537, (1 << 20) - 1, 1 << 20, (1 << 20) + 7,
             3 * (1 << 20) + 5]
    total = 0
    for i, n in enumerate(sizes):
        write(root / "d" / f"f{i:02d}", bytes((i * 7 + k) % 251 for k in range(n)))
        total += n
    os.link(root / "d" / "f11", root / "d" / "hard")  # counted once
    os.symlink("/usr/lib/ziel-ä", root / "d" / "lnk")
    total += len("/usr/lib/ziel-ä".encode())
    os.mknod(root / "gone", stat.S_IFCHR)
    (root / "opq").mkdir()
    os.setxattr(root / "opq", "trusted.overlay.opaque", b"y")
    write(root / "opq" / "x", b"x" * 70000)
    total += 70000
    os.mkfifo(root / "d" / "fifo")
    os.chmod(root / "d" / "fifo", 0o644)
    for dirpath, dirnames, filenames in os.walk(root, topdown=False):
        for name in [*filenames, *dirnames, ""]:
            path = os.path.join(dirpath, name)
            os.lchown(path, 0, 0)
            if os.path.isdir(path) and not os.path.islink(path):
                os.chmod(path, 0o755)
            os.utime(path, (T0, T0), follow_symlinks=False)
    return total


# sha256 of sized_tree's layer tar as the writer produced it before it gathered small
# writes: the byte format is frozen (every diff_id depends on it)
SIZED_TREE_DIFF_ID = "sha256:c7261076eb8c9cbaa12d421d93e33574507ca060c7b32eaf3e53c70b8d7e4047"


def test_layer_sizes_are_counted_while_writing(tmp_path: Path) -> None:
    from shale.layer import write_layer_sized
    from shale.tarscan import scan_copy

    upper = tmp_path / "upper"
    upper.mkdir()
    want = sized_tree(upper)
    buf = io.BytesIO()
    written = write_layer_sized(buf, upper, fmt="overlay")
    data = buf.getvalue()
    assert written.diff_id == Digest.of_bytes(data) and written.size == len(data)
    scanned = scan_copy(io.BytesIO(data), lambda _b: None)
    assert written.content_size == scanned.content_size == want
    assert written.diff_id.value == SIZED_TREE_DIFF_ID


def test_layer_into_the_content_store_is_hashed_once(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """A layer written into a content store writer: the writer's own sha256 is the diff_id
    (the tar is not hashed a second time), and the bytes are those written anywhere else."""
    from shale.content import ContentStore
    from shale.digest import Hasher
    from shale.layer import write_layer_sized

    upper = tmp_path / "upper"
    upper.mkdir()
    sized_tree(upper)
    ref = io.BytesIO()
    write_layer_sized(ref, upper, fmt="overlay")
    hashed = [0]
    real = Hasher.update

    def counting(self: Hasher, data: bytes | bytearray | memoryview) -> None:
        hashed[0] += len(data)
        real(self, data)

    monkeypatch.setattr(Hasher, "update", counting)
    store = ContentStore(tmp_path / "store")
    with store.writer() as w:
        written = write_layer_sized(w, upper, fmt="overlay")  # type: ignore[arg-type]
        w.commit(written.diff_id, written.size)
    assert hashed[0] == written.size == len(ref.getvalue())
    assert store.read(written.diff_id) == ref.getvalue()
    assert store.verify(written.diff_id)


def test_tar_writer_after_other_bytes_hashes_its_own(tmp_path: Path) -> None:
    """A writer that already holds bytes does not lend its hash: the tar's digest is of the
    tar alone, the blob's of everything."""
    from shale import tarwriter as tw
    from shale.content import ContentStore

    store = ContentStore(tmp_path / "store")
    with store.writer() as w:
        w.write(b"prefix")
        tar = tw.TarWriter(w)  # type: ignore[arg-type]
        tar.write(tw.header("a", tw.REG, mode=0o644, uid=0, gid=0, mtime=T0, size=2))
        tar.write(b"hi" + tw.padding(2))
        digest, size = tar.close()
        blob = w.commit()
    data = store.read(blob)
    assert data.startswith(b"prefix") and size == len(data) - 6
    assert digest == Digest.of_bytes(data[6:]) and blob == Digest.of_bytes(data)
