"""fsroot: every path resolves inside the root, symlinks followed as if the root were /."""

from __future__ import annotations

import ctypes
import errno
import os
from pathlib import Path

import pytest

from shale import fsroot
from shale.errors import UnsafePath, Unsupported
from shale.fsroot import Root, clean_entry_name


@pytest.fixture()
def box(tmp_path: Path) -> tuple[Path, Path]:
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (outside / "secret").write_text("s")
    return root, outside


def test_open_file_creates_inside_and_reads(box: tuple[Path, Path]) -> None:
    root, _ = box
    with Root(root) as r:
        r.mkdir_p("etc")
        fd = r.open_file("/etc/passwd", os.O_WRONLY | os.O_CREAT, 0o600)
        os.write(fd, b"root:x:0:0::/root:/bin/sh\n")
        os.close(fd)
        assert r.read_file("etc/passwd").startswith(b"root:")
        assert r.lstat("/etc/passwd").st_mode & 0o777 == 0o600
    assert (root / "etc" / "passwd").exists()


def test_absolute_symlink_is_followed_as_if_root_were_slash(box: tuple[Path, Path]) -> None:
    root, outside = box
    (root / "data").mkdir()
    os.symlink("/data", root / "link")
    os.symlink(str(outside), root / "host")  # a host path means root/<host path>
    with Root(root) as r:
        os.close(r.open_file("link/x", os.O_WRONLY | os.O_CREAT))
        assert (root / "data" / "x").exists()
        with pytest.raises(FileNotFoundError):
            r.open_file("host/secret", os.O_RDONLY)
        with pytest.raises(FileNotFoundError):
            r.open_file("host/new", os.O_WRONLY | os.O_CREAT)
    assert sorted(os.listdir(outside)) == ["secret"]


def test_dotdot_and_relative_chains_are_clamped(box: tuple[Path, Path]) -> None:
    root, outside = box
    os.symlink("../../..", root / "up")
    os.symlink("up/up/outside", root / "chain")
    with Root(root) as r:
        with pytest.raises(FileExistsError):  # chain dangles: never created through
            r.mkdir_p("chain/deep")
        r.mkdir_p("../../outside")
        os.close(r.open_file("../../outside/a", os.O_WRONLY | os.O_CREAT))
        r.mkdir_p("chain/deep")
        assert r.resolve("chain/deep") == "/outside/deep"
        assert r.resolve("up/up") == "/"
    assert (root / "outside" / "a").exists()
    assert (root / "outside" / "deep").is_dir()
    assert sorted(os.listdir(outside)) == ["secret"]


def test_open_dir_create_parents_and_hook(box: tuple[Path, Path]) -> None:
    root, _ = box
    (root / "usr" / "lib").mkdir(parents=True)
    os.symlink("/usr/lib", root / "lib")
    seen: list[str] = []
    with Root(root) as r:
        fd = r.open_dir("lib/x/y", create_parents=True, on_mkdir=lambda p, _fd: seen.append(p))
        os.close(fd)
        with pytest.raises(FileNotFoundError):
            r.open_dir("missing")
    assert seen == ["/usr/lib/x", "/usr/lib/x/y"]
    assert (root / "usr/lib/x/y").is_dir()
    assert (root / "usr/lib/x").stat().st_mode & 0o777 == 0o755


def test_create_through_dangling_symlink_fails_inside(box: tuple[Path, Path]) -> None:
    root, outside = box
    os.symlink(str(outside / "newdir"), root / "dangling")
    with Root(root) as r, pytest.raises(FileExistsError):
        r.mkdir_p("dangling/x")
    assert sorted(os.listdir(outside)) == ["secret"]


def test_open_parent_validates_base(box: tuple[Path, Path]) -> None:
    root, _ = box
    with Root(root) as r:
        for bad in ("", "/", ".", "a/..", "a/."):
            with pytest.raises(UnsafePath):
                r.open_parent(bad)
        fd, base = r.open_parent("a/", create_parents=True)
        os.close(fd)
        assert base == "a"


def test_remove_all_never_follows(box: tuple[Path, Path]) -> None:
    root, outside = box
    (root / "d").mkdir()
    os.symlink(str(outside), root / "d" / "to_outside")
    os.symlink("../../outside", root / "rel")
    with Root(root) as r:
        r.remove_all("rel")
        r.remove_all("d")
        r.remove_all("d")  # missing: no-op
        r.remove_all("nope/deeper")
    assert os.listdir(root) == []
    assert sorted(os.listdir(outside)) == ["secret"]


def test_remove_all_through_symlinked_parent_stays_inside(box: tuple[Path, Path]) -> None:
    root, outside = box
    os.symlink(str(outside.parent), root / "evil")
    (root / "tmpx").mkdir()
    with Root(root) as r:
        r.remove_all(f"evil/{outside.name}/secret")  # root/<host path>/... does not exist
        r.remove_all("evil/../../outside")  # clamped: root/outside, absent
    assert (outside / "secret").exists()


def test_resolve(box: tuple[Path, Path]) -> None:
    root, _ = box
    (root / "etc").mkdir()
    os.symlink("/etc", root / "e")
    with Root(root) as r:
        assert r.resolve("e/passwd") == "/etc/passwd"
        assert r.resolve("/e/../e/x/../y") == "/etc/y"
        assert r.resolve("../../e") == "/etc"
        assert r.resolve("") == "/"
        assert r.resolve("nope/../x") == "/x"


def test_lstat_root_and_symlink(box: tuple[Path, Path]) -> None:
    root, _ = box
    os.symlink("/nowhere", root / "l")
    with Root(root) as r:
        assert os.path.samestat(r.lstat("/"), os.stat(root))
        assert (r.lstat("l").st_mode & 0o170000) == 0o120000


@pytest.mark.parametrize(("name", "clean"), [
    ("./a//b/", "a/b"), ("/abs/x", "abs/x"), ("./", ""), (".", ""), ("a/../b", "b"),
    ("//x", "x"),
])
def test_clean_entry_name(name: str, clean: str) -> None:
    assert clean_entry_name(name) == clean


@pytest.mark.parametrize("name", ["..", "../x", "a/../../x", "./../x", "/../x"])
def test_clean_entry_name_refuses_climbing(name: str) -> None:
    with pytest.raises(UnsafePath, match="climbs out"):
        clean_entry_name(name)


def test_missing_openat2_is_unsupported(box: tuple[Path, Path],
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    def enosys(*_args: object) -> int:
        ctypes.set_errno(errno.ENOSYS)
        return -1

    monkeypatch.setattr(fsroot, "_syscall", enosys)
    monkeypatch.setattr(fsroot, "_probed", False)
    with pytest.raises(Unsupported, match="openat2"):
        Root(box[0])
