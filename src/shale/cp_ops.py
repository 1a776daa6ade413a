"""``cp`` between a container and the host, through the same path safety as layers.

Into a container: the source is packed as a tar and applied with ``layer_apply.apply_layer`` into
the container's root, so every write resolves inside it (a symlink planted in the container
never leads a write outside). Out of a container: the source is resolved inside the root
with ``openat2(RESOLVE_IN_ROOT)`` and read through descriptors, never following a link.
The root of a running container is its own view (``/proc/PID/root``: its volumes, binds and
tmpfs mounts included, as docker's cp); a stopped one's rootfs is mounted for the copy.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import shutil
import stat
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from shale.containers import Container, ContainerStore
from shale.errors import InvalidArgument, NotFound

if TYPE_CHECKING:
    from shale.engine import Engine


def _split(arg: str) -> tuple[str | None, str]:
    """``CONTAINER:PATH`` -> (container, path); a host path -> (None, path)."""
    if arg.startswith(("/", ".")) or ":" not in arg:
        return None, arg
    name, _, path = arg.partition(":")
    return name, path


@contextlib.contextmanager
def _mounted(engine: Engine, store: ContainerStore, c: Container) -> Iterator[Path]:
    from shale.containers import stopped_rootfs

    st = store.state(c)
    if st.Running and st.Pid > 0 and os.path.isdir(f"/proc/{st.Pid}/root"):
        # the container's own view, volumes, binds and tmpfs mounts included (as docker);
        # its /proc magic links are never followed (fsroot resolves without them)
        yield Path(f"/proc/{st.Pid}/root")
        return
    with stopped_rootfs(engine, c) as rootfs:
        yield rootfs


def copy(engine: Engine, store: ContainerStore, src: str, dst: str, follow: bool) -> int:
    sname, spath = _split(src)
    dname, dpath = _split(dst)
    if (sname is None) == (dname is None):
        raise InvalidArgument("copying between containers is not supported; "
                              "one of source or destination must be a container path")
    if sname is not None:
        c = store.get(sname)
        with _mounted(engine, store, c) as root:
            _from_container(root, spath, dpath, follow)
    else:
        assert dname is not None
        c = store.get(dname)
        with _mounted(engine, store, c) as root:
            _into_container(root, spath, dpath)
    return 0


def _from_container(root: Path, spath: str, dest: str, follow: bool) -> None:
    """Copy ``spath`` (resolved inside the container's root: every symlink on the way is
    followed as if the root were ``/``; the last one only with ``-L``, else the link itself
    is copied, as docker) to the host path ``dest`` or as a tar to stdout (``-``)."""
    from shale.fsroot import Root

    contents_only = spath.endswith("/.")
    rel = spath.strip("/")
    with Root(root) as r:
        try:
            inside = r.resolve(rel) if (follow or not rel) else posixpath.join(
                r.resolve(posixpath.dirname(rel)), posixpath.basename(rel))
            if inside.strip("/"):
                pfd, base = r.open_parent(inside)
            else:
                pfd, base = r.open_dir(""), "."
        except (FileNotFoundError, NotADirectoryError):
            raise NotFound(f"Could not find the file {spath} in container") from None
    try:
        try:
            st = os.stat(base, dir_fd=pfd, follow_symlinks=False)
        except (FileNotFoundError, NotADirectoryError):
            raise NotFound(f"Could not find the file {spath} in container") from None
        name = posixpath.basename(inside.rstrip("/")) or "."
        if dest == "-":
            with tarfile.open(fileobj=sys.stdout.buffer, mode="w|",
                              format=tarfile.PAX_FORMAT) as tf:
                _tar_at(tf, pfd, base, name)
            return
        target = Path(dest)
        if target.is_dir() and not contents_only:
            target = target / (name if name != "." else "root")
        _copy_at(pfd, base, st, target)
    finally:
        os.close(pfd)


def _copy_at(pfd: int, base: str, st: os.stat_result, target: Path) -> None:
    """One in-container entry (never followed if a symlink) to a host path."""
    if stat.S_ISDIR(st.st_mode):
        fd = os.open(base, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=pfd)
        try:
            target.mkdir(exist_ok=True)
            # cp -a never follows the tree's symlinks; the fd must survive into cp
            res = subprocess.run(["cp", "-a", "--", f"/proc/self/fd/{fd}/.", str(target)],
                                 capture_output=True, pass_fds=(fd,), check=False)
        finally:
            os.close(fd)
        if res.returncode:
            raise InvalidArgument("copy failed: " +
                                  res.stderr.decode(errors="replace").strip())
    elif stat.S_ISLNK(st.st_mode):
        with contextlib.suppress(FileNotFoundError):
            target.unlink()
        os.symlink(os.readlink(base, dir_fd=pfd), target)
    elif stat.S_ISREG(st.st_mode):
        fd = os.open(base, os.O_RDONLY | os.O_NOFOLLOW, dir_fd=pfd)
        with os.fdopen(fd, "rb") as src, open(target, "wb") as out:
            shutil.copyfileobj(src, out)
        os.chmod(target, stat.S_IMODE(st.st_mode))
        os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))
    else:
        raise InvalidArgument(f"copy failed: {base}: not a regular file, directory or link")


def _tar_at(tf: tarfile.TarFile, pfd: int, base: str, arc: str) -> None:
    """Add ``pfd/base`` (and what is below it) as ``arc``, walking by directory fds with
    O_NOFOLLOW so no symlink in the container is ever followed."""
    st = os.stat(base, dir_fd=pfd, follow_symlinks=False)
    ti = tarfile.TarInfo(arc)
    ti.mode, ti.uid, ti.gid, ti.mtime = stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, \
        int(st.st_mtime)
    if stat.S_ISLNK(st.st_mode):
        ti.type, ti.linkname = tarfile.SYMTYPE, os.readlink(base, dir_fd=pfd)
        tf.addfile(ti)
    elif stat.S_ISREG(st.st_mode):
        ti.size = st.st_size
        fd = os.open(base, os.O_RDONLY | os.O_NOFOLLOW, dir_fd=pfd)
        with os.fdopen(fd, "rb") as f:
            tf.addfile(ti, f)
    elif stat.S_ISDIR(st.st_mode):
        ti.type = tarfile.DIRTYPE
        tf.addfile(ti)
        fd = os.open(base, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=pfd)
        try:
            for child in sorted(os.listdir(fd)):
                _tar_at(tf, fd, child, f"{arc}/{child}")
        finally:
            os.close(fd)
    elif stat.S_ISFIFO(st.st_mode):
        ti.type = tarfile.FIFOTYPE
        tf.addfile(ti)
    # device nodes and sockets are left out (a container's /dev is not its layer)


def _into_container(root: Path, spath: str, dpath: str) -> None:
    from shale.fsroot import Root
    from shale.layer_apply import apply_layer

    rel_dest = dpath.strip("/")
    with Root(root) as r:
        try:
            st = r.lstat(rel_dest) if rel_dest else os.stat(root)
            dest_is_dir = (st.st_mode & 0o170000) == 0o040000 or \
                (rel_dest and os.path.isdir(str(root) + r.resolve(rel_dest)))
        except FileNotFoundError:
            dest_is_dir = False
            parent = posixpath.dirname(rel_dest)
            if parent:
                try:
                    r.resolve(parent)
                except FileNotFoundError:
                    raise NotFound(f"Could not find the file {posixpath.dirname(dpath)} in "
                                   "container") from None
        inside = r.resolve(rel_dest) if dest_is_dir and rel_dest else "/" + rel_dest
    with tempfile.TemporaryFile() as tmp:
        if spath == "-":
            shutil.copyfileobj(sys.stdin.buffer, tmp)
            prefix = inside.strip("/")
            tmp.seek(0)
            _apply_prefixed(tmp, root, prefix)
            return
        src = Path(spath)
        if not src.exists() and not src.is_symlink():
            raise NotFound(f"lstat {spath}: no such file or directory")
        contents_only = spath.endswith("/.")
        if dest_is_dir and not contents_only:
            arc = posixpath.join(inside.strip("/"), src.name)
        else:
            arc = inside.strip("/")
        with tarfile.open(fileobj=tmp, mode="w", format=tarfile.PAX_FORMAT) as tf:
            tf.add(str(src), arcname=arc or ".", filter=_owner_root)
        tmp.seek(0)
        apply_layer(tmp, root, fmt="dir")


def _owner_root(ti: tarfile.TarInfo) -> tarfile.TarInfo:
    ti.uid = ti.gid = 0
    ti.uname = ti.gname = ""
    return ti


def _apply_prefixed(src: BinaryIO, root: Path, prefix: str) -> None:
    """Apply a tar read from stdin under ``prefix`` inside the container."""
    from shale.layer_apply import apply_layer

    with tempfile.TemporaryFile() as out:
        with tarfile.open(fileobj=src, mode="r|") as tin, \
                tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tout:
            for ti in tin:
                ti.name = posixpath.join(prefix, ti.name.lstrip("/")) if prefix else ti.name
                if ti.islnk():
                    ti.linkname = posixpath.join(prefix, ti.linkname.lstrip("/"))
                f = tin.extractfile(ti) if ti.isfile() else None
                tout.addfile(ti, f)
        out.seek(0)
        apply_layer(out, root, fmt="dir")
