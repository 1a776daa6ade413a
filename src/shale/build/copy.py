"""COPY and ADD: from sources to one deterministic layer tar, written straight into the
content store.

The rules are docker's (verified against the classic builder of docker 20.10):

- a directory source copies its *contents* into the destination;
- a file goes *into* the destination when it ends with ``/`` or is an existing directory
  of the image (symlinks in the image followed inside it), else *becomes* it;
- several sources need a destination ending with ``/``;
- a top-level symlink source is followed and copied under the link's own name; links
  inside a copied directory stay links;
- missing destination directories are created 0755, owned by ``--chown`` (else root);
  existing ones keep their mode and owner;
- files from the context are owned by ``--chown`` or 0:0; files of ``--from`` keep their
  owners unless ``--chown`` is given;
- ADD extracts local tar archives (plain, gzip, bzip2, xz; detected by content) into the
  destination, keeping the archive's owners and modes (``--chown`` does not apply to
  them, as in the classic builder); a compressed file that is not a tar is copied as is.

``--chmod`` (BuildKit's, octal or symbolic) applies to every copied file and directory.
"""

from __future__ import annotations

import os
import posixpath
import re
import stat
from collections.abc import Callable
from pathlib import Path
from typing import IO, TYPE_CHECKING

from shale import oci
from shale import tarwriter as tw
from shale.build.context import Context, Inline, Source
from shale.build.imaging import resolve_in
from shale.errors import DockerfileError
from shale.images import LayerRecord
from shale.record import field, record

if TYPE_CHECKING:
    import tarfile

    from shale.engine import Engine

ModeFn = Callable[[int, bool], int]
"""``--chmod``: (current permission bits, is a directory) -> new bits."""


@record
class CopyPlan:
    cmd: str                          # "copy" or "add"
    ctx: Context                      # where the sources live
    sources: list[Source]
    dest: str                         # expanded, as written
    workdir: str
    chown: tuple[int, int] | None = None
    chmod: ModeFn | None = None
    preserve_owner: bool = False      # COPY --from without --chown
    inline: list[Inline] = field(default_factory=list)
    extract: bool = False             # ADD: unpack local tar archives
    remote: list[Source] = field(default_factory=list)  # ADD: downloaded files, as they are
    placed: dict[str, tuple[str, str]] | None = None  # --parents: source -> (pivot, below)


@record
class _Entry:
    kind: bytes
    mode: int
    uid: int
    gid: int
    mtime: int
    size: int = 0
    path: Path | None = None          # regular file content
    data: bytes | None = None         # inline content
    link: str = ""
    dev: int = 0


# ---- --chmod -------------------------------------------------------------------------------
_SYMBOLIC = re.compile(r"([ugoa]*)([-+=])([rwxXst]*)\Z")


def parse_chmod(spec: str) -> ModeFn:
    """BuildKit's ``--chmod``: octal (``0755``) or symbolic (``u+x,go=rX``) since 1.14."""
    if re.fullmatch(r"[0-7]{1,4}", spec):
        value = int(spec, 8)
        return lambda _mode, _is_dir: value
    clauses = []
    for part in spec.split(","):
        m = _SYMBOLIC.match(part)
        if m is None:
            raise DockerfileError(f"invalid chmod parameter: {spec!r}: neither octal nor "
                                  "symbolic (like u+x,go=rX)")
        clauses.append((m.group(1) or "a", m.group(2), m.group(3)))

    def apply(mode: int, is_dir: bool) -> int:
        for who, op, perms in clauses:
            mask = sum({"u": 0o4700, "g": 0o2070, "o": 0o1007}[w] for w in
                       ("ugo" if "a" in who else who))
            bits = 0
            for p in perms:
                if p == "r":
                    bits |= 0o444
                elif p == "w":
                    bits |= 0o222
                elif p == "x" or (p == "X" and (is_dir or mode & 0o111)):
                    bits |= 0o111
                elif p == "s":
                    bits |= 0o6000
                elif p == "t":
                    bits |= 0o1000
            bits &= mask
            if op == "+":
                mode |= bits
            elif op == "-":
                mode &= ~bits
            else:
                mode = (mode & ~(mask & 0o777)) | bits
        return mode & 0o7777

    return apply


# ---- the plan --------------------------------------------------------------------------
class _Layer:
    """Entries by in-root path (no leading slash); the last one written for a path wins."""

    def __init__(self, view: Path | None, plan: CopyPlan) -> None:
        self.view = view
        self.plan = plan
        self.entries: dict[str, _Entry] = {}
        self.archives: list[tuple[Path, str]] = []
        self.done: set[str] = set()  # directories the tar already holds (archives)

    def owner(self, st: os.stat_result | None) -> tuple[int, int]:
        if self.plan.chown is not None:
            return self.plan.chown
        if self.plan.preserve_owner and st is not None:
            return st.st_uid, st.st_gid
        return 0, 0

    def mkdirs(self, real: str, *, chowned: bool = True) -> None:
        """``mkdir -p`` of an in-root path: existing directories are carried with their
        metadata (as docker's copied-up parents), missing ones created 0755."""
        cur = ""
        for part in real.strip("/").split("/"):
            if not part:
                continue
            cur = posixpath.join(cur, part) if cur else part
            if cur in self.entries:
                continue
            _, st = resolve_in(self.view, cur)
            if st is not None and stat.S_ISDIR(st.st_mode):
                self.entries[cur] = _Entry(tw.DIR, stat.S_IMODE(st.st_mode), st.st_uid,
                                           st.st_gid, int(st.st_mtime))
            else:
                uid, gid = self.plan.chown if chowned and self.plan.chown else (0, 0)
                self.entries[cur] = _Entry(tw.DIR, 0o755, uid, gid, 0)

    def add(self, arc: str, s: Source, inodes: dict[tuple[int, int], str] | None = None
            ) -> None:
        """One source entry at ``arc``. Within a directory copy (``inodes``), a file's
        second name is a hard link to its first, as docker's tar-based copy keeps it."""
        st = s.st
        mode = stat.S_IMODE(st.st_mode)
        is_dir = stat.S_ISDIR(st.st_mode)
        if not self.plan.preserve_owner and not is_dir:
            # the classic builder chowns what it copies, and chown(2) drops set-user-ID
            # (and set-group-ID on group-executable files), as on any Linux
            mode &= ~0o4000
            if mode & 0o010:
                mode &= ~0o2000
        if self.plan.chmod is not None and not stat.S_ISLNK(st.st_mode):
            mode = self.plan.chmod(mode, is_dir)
        uid, gid = self.owner(st)
        mtime = int(st.st_mtime)
        if is_dir:
            e = _Entry(tw.DIR, mode, uid, gid, mtime)
        elif stat.S_ISLNK(st.st_mode):
            e = _Entry(tw.SYM, 0o777, uid, gid, mtime, link=os.readlink(s.path))
        elif stat.S_ISREG(st.st_mode):
            first = inodes.setdefault((st.st_dev, st.st_ino), arc) \
                if inodes is not None and st.st_nlink > 1 else arc
            e = _Entry(tw.REG, mode, uid, gid, mtime, st.st_size, path=s.path) \
                if first == arc else _Entry(tw.LNK, mode, uid, gid, mtime, link=first)
        elif stat.S_ISSOCK(st.st_mode):
            return
        else:
            kind = tw.CHR if stat.S_ISCHR(st.st_mode) else tw.BLK \
                if stat.S_ISBLK(st.st_mode) else tw.FIFO
            e = _Entry(kind, mode, uid, gid, mtime, dev=st.st_rdev)
        self.entries[arc] = e


def _dest(plan: CopyPlan) -> tuple[str, bool]:
    """The destination as an absolute path, and whether it is written as a directory."""
    d = plan.dest
    as_dir = d.endswith("/") or d in (".", "..", "") or d.endswith(("/.", "/.."))
    path = d if d.startswith("/") else posixpath.join(plan.workdir or "/", d)
    return posixpath.normpath(path), as_dir


def plan_layer(plan: CopyPlan, view: Path | None) -> _Layer:
    """Every entry the layer will hold (file contents are read when written)."""
    dest, as_dir = _dest(plan)
    count = len(plan.sources) + len(plan.inline) + len(plan.remote)
    if count > 1 and not plan.dest.endswith("/"):
        raise DockerfileError(f"When using {plan.cmd.upper()} with more than one source "
                              "file, the destination must be a directory and end with a /")
    layer = _Layer(view, plan)
    real_dest, st = resolve_in(view, dest)
    dest_is_dir = as_dir or (st is not None and stat.S_ISDIR(st.st_mode))
    base = real_dest.strip("/")
    for src in plan.sources:
        if plan.placed is not None:
            _place(layer, plan, src, base)
        elif plan.extract and stat.S_ISREG(src.st.st_mode) and is_tar(src.path):
            layer.mkdirs(base, chowned=False)
            layer.archives.append((src.path, base))
        elif src.is_dir:
            layer.mkdirs(base)
            inodes: dict[tuple[int, int], str] = {}  # hard links within one directory
            for s in plan.ctx.walk(src)[1:]:  # the directory's contents, not itself
                rel = posixpath.relpath(s.rel, src.rel) if src.rel else s.rel
                layer.add(posixpath.join(base, rel) if base else rel, s, inodes)
        else:
            _add_file(layer, src, base, dest_is_dir)
    for src in plan.remote:
        if dest_is_dir and not src.name:
            raise DockerfileError(f"cannot determine filename for source {src.rel or '/'}")
        _add_file(layer, src, base, dest_is_dir)
    for doc in plan.inline:
        arc = posixpath.join(base, doc.name.strip("/")) if dest_is_dir else base
        layer.mkdirs(posixpath.dirname(arc))
        uid, gid = plan.chown or (0, 0)
        mode = plan.chmod(0o644, False) if plan.chmod else 0o644
        layer.entries[arc] = _Entry(tw.REG, mode, uid, gid, 0, len(doc.data), data=doc.data)
    return layer


def _add_file(layer: _Layer, src: Source, base: str, dest_is_dir: bool) -> None:
    """A single (non-directory) source: into the destination directory under its own
    name, or as the destination itself."""
    arc = posixpath.join(base, src.name) if dest_is_dir else base
    layer.mkdirs(posixpath.dirname(arc))
    layer.add(arc, src)


def _place(layer: _Layer, plan: CopyPlan, src: Source, base: str) -> None:
    """``--parents``: the source at its own path under the destination; the directories
    on the way are copies of the source's (mode, owner, mtime), as BuildKit makes them."""
    assert plan.placed is not None
    pivot, sub = plan.placed[src.rel]
    parts = [x for x in sub.split("/") if x not in ("", ".")]
    layer.mkdirs(base)
    for i in range(1, len(parts)):
        arc = posixpath.join(base, *parts[:i])
        if arc not in layer.entries:
            _, st = resolve_in(plan.ctx.root, posixpath.join("/", pivot, *parts[:i]))
            if st is not None and stat.S_ISDIR(st.st_mode):
                layer.add(arc, Source("", plan.ctx.root, st, parts[i - 1]))
    target = posixpath.join(base, *parts) if parts else base
    layer.mkdirs(posixpath.dirname(target))
    if target != base or not src.is_dir:
        layer.add(target, src)
    if src.is_dir:
        inodes: dict[tuple[int, int], str] = {}
        for s in plan.ctx.walk(src)[1:]:
            rel = posixpath.relpath(s.rel, src.rel) if src.rel else s.rel
            layer.add(posixpath.join(target, rel) if target else rel, s, inodes)


def mkdir_layer(engine: Engine, view: Path | None, real: str) -> LayerRecord:
    """WORKDIR's layer: ``mkdir -p`` of an in-root path, new directories root 0755."""
    layer = _Layer(view, CopyPlan("workdir", Context(Path("/")), [], real, "/"))
    layer.mkdirs(real)
    return write_layer(engine, layer)


def write_layer(engine: Engine, layer: _Layer) -> LayerRecord:
    """Write the planned layer into the content store (entries sorted by path, parents
    first, then any archives ADD extracts) and return its record."""
    content = 0
    with engine.lock(), engine.content.writer() as w:
        tar = tw.TarWriter(w)  # type: ignore[arg-type]
        for name in sorted(layer.entries, key=lambda n: n.split("/")):
            e = layer.entries[name]
            if e.kind == tw.DIR:
                tar.write(tw.header(name + "/", tw.DIR, mode=e.mode, uid=e.uid, gid=e.gid,
                                    mtime=e.mtime))
            elif e.kind == tw.REG:
                tar.write(tw.header(name, tw.REG, mode=e.mode, uid=e.uid, gid=e.gid,
                                    mtime=e.mtime, size=e.size))
                content += e.size
                if e.data is not None:
                    tar.write(e.data)
                    tar.write(tw.padding(len(e.data)))
                else:
                    assert e.path is not None
                    fd = os.open(e.path, os.O_RDONLY | os.O_CLOEXEC)
                    try:
                        tar.copy_data(fd, e.size, name)
                    finally:
                        os.close(fd)
            else:
                tar.write(tw.header(name, e.kind, mode=e.mode, uid=e.uid, gid=e.gid,
                                    mtime=e.mtime, linkname=e.link,
                                    devmajor=os.major(e.dev), devminor=os.minor(e.dev)))
        layer.done.update(n for n, e in layer.entries.items() if e.kind == tw.DIR)
        for path, base in layer.archives:
            content += _extract_into(tar, path, base, layer)
        digest, size = tar.close()
        w.commit(digest, size, what="build layer")
    return LayerRecord(digest, digest, oci.OCI_LAYER, size, size, content)


# ---- ADD archives --------------------------------------------------------------------------
def is_tar(path: Path) -> bool:
    """Whether ADD extracts this file: a tar, plain or compressed (checked by content, as
    docker does: a ``.gz`` of anything else is copied as it is)."""
    from shale.compression import decompressed

    try:
        with open(path, "rb") as raw:
            _, stream = decompressed(raw)
            head = stream.read(512)
    except (OSError, EOFError, ValueError):
        return False
    return len(head) == 512 and (head[257:262] == b"ustar" or _v7_checksum_ok(head))


def _v7_checksum_ok(head: bytes) -> bool:
    try:
        want = int(head[148:156].split(b"\0")[0].strip() or b"-1", 8)
    except ValueError:
        return False
    return want == sum(head[:148]) + 256 + sum(head[156:])


def _extract_into(tar: tw.TarWriter, path: Path, base: str, layer: _Layer) -> int:
    """The archive's entries under ``base``: names cleaned (one that climbs out is refused),
    owners and modes kept, missing parent directories made 0755 root (as extraction on
    disk makes them); returns the bytes of regular files."""
    import tarfile

    from shale.compression import decompressed
    from shale.tarscan import clean_name

    total = 0
    with open(path, "rb") as raw:
        _, stream = decompressed(raw)
        with tarfile.open(fileobj=stream, mode="r|") as src:
            for ti in src:
                name = clean_name(ti.name, f"ADD {path.name}")
                src.members = []  # type: ignore[attr-defined]  # streaming: flat memory
                if not name:
                    continue
                arc = posixpath.join(base, name) if base else name
                _parents(tar, layer, posixpath.dirname(arc))
                if ti.isdir():
                    layer.done.add(arc)
                if ti.isreg():
                    tar.write(_hdr(arc, tw.REG, ti, size=ti.size))
                    _copy_member(tar, src.extractfile(ti), ti.size)
                    total += ti.size
                elif ti.islnk():
                    target = clean_name(ti.linkname, f"ADD {path.name}")
                    tar.write(_hdr(arc, tw.LNK, ti, link=posixpath.join(base, target)
                                   if base else target))
                elif ti.isdir() or ti.issym() or ti.ischr() or ti.isblk() or ti.isfifo():
                    kind = {tarfile.DIRTYPE: tw.DIR, tarfile.SYMTYPE: tw.SYM,
                            tarfile.CHRTYPE: tw.CHR, tarfile.BLKTYPE: tw.BLK}.get(ti.type,
                                                                                  tw.FIFO)
                    tar.write(_hdr(arc + ("/" if ti.isdir() else ""), kind, ti,
                                   link=ti.linkname if ti.issym() else ""))
    return total


def _hdr(name: str, kind: bytes, ti: tarfile.TarInfo, *, size: int = 0, link: str = ""
         ) -> bytes:
    """An archive member's header under its new name: owners, mode and mtime kept."""
    return tw.header(name, kind, mode=ti.mode & 0o7777, uid=ti.uid, gid=ti.gid,
                     mtime=int(ti.mtime), size=size, linkname=link,
                     devmajor=ti.devmajor if kind in (tw.CHR, tw.BLK) else 0,
                     devminor=ti.devminor if kind in (tw.CHR, tw.BLK) else 0)


def _parents(tar: tw.TarWriter, layer: _Layer, real: str) -> None:
    missing: list[str] = []
    cur = real
    while cur and cur not in layer.done:
        layer.done.add(cur)
        if resolve_in(layer.view, cur)[1] is None:
            missing.append(cur)
        cur = posixpath.dirname(cur)
    for d in reversed(missing):
        tar.write(tw.header(d + "/", tw.DIR, mode=0o755, uid=0, gid=0, mtime=0))


def _copy_member(tar: tw.TarWriter, f: IO[bytes] | None, size: int) -> None:
    left = size
    while left and f is not None:
        chunk = f.read(min(left, 1 << 20))
        if not chunk:
            break
        tar.write(chunk)
        left -= len(chunk)
    if left:
        raise DockerfileError("ADD: archive member is truncated")
    tar.write(tw.padding(size))
