"""The build context: a directory (or a tar from stdin, unpacked once into a temp dir),
filtered by ``.dockerignore``, with safe source lookup and docker's source hashes.

Source hashes are docker's ``tarsum`` v1 per file (name, mode, uid, gid, size, type, link
target and content; never mtimes), combined as the classic builder combines them
(``file:``, ``dir:``, ``multi:``), so ``COPY`` history lines carry the same hash docker
prints and touching a file does not invalidate the cache. Context files hash as owned by
0:0, as the docker CLI sends them: host ownership never busts the cache; files of an
image (``COPY --from``) hash with their real owners, which the copy preserves.
"""

from __future__ import annotations

import copy
import fnmatch
import functools
import hashlib
import os
import posixpath
import shutil
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from shale.errors import DockerfileError, InvalidArgument
from shale.fileutil import scratch_dir
from shale.record import record

if TYPE_CHECKING:
    from shale.dockerfile import Matcher
    from shale.fsroot import Root


@record(frozen=True)
class Source:
    """One file or directory to copy. ``rel`` is its path in the source tree ("" = root);
    ``path`` the host path to read (a followed top-level symlink's target); ``name`` the
    base name it is copied under (the link's own name, as docker does)."""

    rel: str
    path: Path
    st: os.stat_result
    name: str = ""

    @property
    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.st.st_mode)


@record(frozen=True)
class Inline:
    """A heredoc source of COPY/ADD: a file named ``name`` holding ``data``."""

    name: str
    data: bytes


class Context:
    """A source tree: the build context, or an image's rootfs for ``COPY --from``
    (``owned``: keep real owners in hashes, no ignore file)."""

    def __init__(self, root: Path, ignore_text: str = "", cleanup: Path | None = None,
                 *, owned: bool = False) -> None:
        from shale.dockerfile import Matcher

        self.root = root.absolute()
        self.owned = owned
        self._cleanup = cleanup
        self.matcher = Matcher.from_dockerignore(ignore_text)
        self._sums: dict[str, str | None] = {}
        self._walks: dict[tuple[str, str], list[Source]] = {}
        self._inodes: dict[tuple[int, int], str] | None = None
        self.exclude: Matcher | None = None  # COPY/ADD --exclude, relative to each source

    def excluding(self, patterns: list[str]) -> Context:
        """This context as one ``COPY --exclude=...`` sees it (BuildKit 1.19): patterns in
        ``.dockerignore`` syntax, matched against paths relative to each copied directory
        (and, for a source a wildcard matched, its path in the context)."""
        from shale.dockerfile import Matcher

        view = copy.copy(self)
        view.exclude = Matcher(patterns)
        view._walks = {}
        view._sums = self._sums  # a file's sum does not depend on what else is copied
        return view

    @classmethod
    def open(cls, root: Path, dockerfile: Path | None) -> Context:
        """The context at ``root``. ``<Dockerfile>.dockerignore`` next to the Dockerfile
        wins over ``<root>/.dockerignore`` (BuildKit's rule; classic reads only the latter)."""
        candidates = [root / ".dockerignore"]
        if dockerfile is not None:
            candidates.insert(0, dockerfile.parent / f"{dockerfile.name}.dockerignore")
        text = ""
        for p in candidates:
            if p.is_file():
                text = p.read_text(errors="replace")
                break
        return cls(root, text)

    @classmethod
    def from_tar(cls, src: BinaryIO, dockerfile_name: str | None = None) -> Context:
        """A context sent as a tar on stdin (plain or compressed), unpacked once."""
        from shale.compression import decompressed
        from shale.layer_apply import apply_layer

        tmp = Path(scratch_dir("shale-context-"))
        try:
            _, stream = decompressed(src)
            apply_layer(stream, tmp, fmt="dir")
            ctx = cls.open(tmp, dockerfile_path(tmp, dockerfile_name, inside=True))
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        ctx._cleanup = tmp
        return ctx

    def close(self) -> None:
        if self._cleanup is not None:
            shutil.rmtree(self._cleanup, ignore_errors=True)

    def ignored(self, rel: str) -> bool:
        return bool(rel) and self.matcher.matches(rel)

    # ---- lookup --------------------------------------------------------------------------
    def lookup(self, pattern: str, what: str) -> list[Source]:
        """Sources for one COPY/ADD argument: a path or a glob (``*``, ``?``, ``[...]`` per
        path component) relative to the root; ``..`` and a leading ``/`` are clamped to
        it, as docker does. Symlinks on the way, and a symlink source itself, are followed
        inside the root (a link can never lead out of it)."""
        return [src for _, src in self.lookup_paths(pattern, what)]

    def lookup_paths(self, pattern: str, what: str, *, doublestar: bool = False
                     ) -> list[tuple[str, Source]]:
        """``lookup``, with the path each source was matched under (before symlinks are
        followed); ``doublestar``: a ``**`` component matches any number of directories
        (``COPY --parents``)."""
        from shale.fsroot import Root

        rel = posixpath.normpath("/" + pattern).lstrip("/")
        rel = "" if rel == "." else rel
        with Root(self.root) as r:
            if _has_glob(rel):
                found = [(m, x) for m in self._glob(r, rel, doublestar)
                         if (x := self._source(r, m))]
                if not found:
                    raise DockerfileError(f"{what}: no source files were specified")
                return found
            src = self._source(r, rel)
        if src is None:
            raise DockerfileError(f"{what}: file not found in build context or excluded by "
                                  f".dockerignore: stat {rel or '.'}: file does not exist")
        return [(rel, src)]

    def _source(self, r: Root, rel: str) -> Source | None:
        """``rel`` followed inside the root; None if missing or ignored."""
        if self.ignored(rel):
            return None
        real = r.resolve(rel).lstrip("/")
        if real != rel and self.ignored(real):
            return None
        try:
            st = os.lstat(self.root / real)
        except (FileNotFoundError, NotADirectoryError):
            return None
        return Source(real, self.root / real if real else self.root, st,
                      posixpath.basename(rel))

    def _glob(self, r: Root, rel: str, doublestar: bool = False) -> list[str]:
        """Paths matching ``rel`` (Go's filepath.Match per component: ``*`` matches a
        leading dot too, ``[^...]`` negates), sorted."""
        bases = [""]
        for part in rel.split("/"):
            nxt = []
            for b in bases:
                if not _has_glob(part):
                    nxt.append(posixpath.join(b, part) if b else part)
                    continue
                if part == "**" and doublestar:
                    nxt += self._subdirs(r, b)
                    continue
                real = r.resolve(b).lstrip("/") if b else ""
                try:
                    names = sorted(os.listdir(self.root / real if real else self.root))
                except (NotADirectoryError, FileNotFoundError):
                    continue
                pat = part.replace("[^", "[!")
                nxt += [posixpath.join(b, n) if b else n for n in names
                        if fnmatch.fnmatchcase(n, pat)]
            bases = nxt
        return sorted(bases)

    def _subdirs(self, r: Root, base: str) -> list[str]:
        """``base`` and every directory below it that is not ignored (``**``)."""
        out, todo = [], [base]
        while todo:
            cur = todo.pop()
            out.append(cur)
            real = r.resolve(cur).lstrip("/") if cur else ""
            try:
                entries = list(os.scandir(self.root / real if real else self.root))
            except (NotADirectoryError, FileNotFoundError, PermissionError):
                continue
            for e in entries:
                path = posixpath.join(cur, e.name) if cur else e.name
                if e.is_dir(follow_symlinks=False) and not self.ignored(path):
                    todo.append(path)
        return sorted(out)

    def walk(self, src: Source) -> list[Source]:
        """The source and, for a directory, everything below it that is not ignored, in
        sorted order; directories excluded whole are never walked into. Kept per source:
        a COPY hashes its sources, then writes them, from one walk."""
        key = (src.rel, str(src.path))
        found = self._walks.get(key)
        if found is None:
            found = self._walks[key] = list(self._walk(src, src.rel))
        return found

    def _skipped(self, rel: str, top: str) -> tuple[bool, bool]:
        """(not copied, and nothing below it can be either) for an entry below ``top``."""
        if self.ignored(rel):
            return True, self.matcher.may_skip_dir(rel)
        if self.exclude is not None:
            below = rel[len(top) + 1:] if top else rel
            if self.exclude.matches(below):
                return True, self.exclude.may_skip_dir(below)
        return False, False

    def _walk(self, src: Source, top: str) -> Iterator[Source]:
        yield src
        if not stat.S_ISDIR(src.st.st_mode):
            return
        try:
            entries = sorted(os.scandir(src.path), key=lambda e: e.name)
        except PermissionError:
            return
        for entry in entries:
            rel = posixpath.join(src.rel, entry.name) if src.rel else entry.name
            st = entry.stat(follow_symlinks=False)
            child = Source(rel, Path(entry.path), st, entry.name)
            skipped, whole = self._skipped(rel, top)
            if skipped:
                if not stat.S_ISDIR(st.st_mode) or whole:
                    continue
                # an excluded dir with possible exceptions below: walk without yielding it
                yield from (s for s in self._walk(child, top) if s.rel != rel
                            and not self._skipped(s.rel, top)[0])
                continue
            yield from self._walk(child, top)

    # ---- hashes --------------------------------------------------------------------------
    def file_sum(self, s: Source) -> str | None:
        """docker's tarsum v1 of one entry (hex), cached per path. A symlink counts as what
        it points to inside the root (docker hashes the followed path); a link to nothing
        counts as its own path in the context (docker's fallback) and is skipped in an
        image (docker's lazy source fails to stat it)."""
        if s.rel in self._sums:
            return self._sums[s.rel]
        out: str | None
        if stat.S_ISLNK(s.st.st_mode):
            target = self._target(s.rel)
            out = self.file_sum(target) if target is not None else \
                None if self.owned else s.rel
        else:
            out = _tarsum(s, self.owned, self._hardlink_of(s))
        self._sums[s.rel] = out
        return out

    def _hardlink_of(self, s: Source) -> str:
        """The path a context file is a hard link to in docker's context tar ("" if it is
        its inode's first name there: tar order is the walk's, directories sorted)."""
        if self.owned or not stat.S_ISREG(s.st.st_mode) or s.st.st_nlink < 2:
            return ""
        if self._inodes is None:  # once, and only for contexts that have hard links
            self._inodes = {}
            for x in self._walk(Source("", self.root, os.lstat(self.root)), ""):
                if stat.S_ISREG(x.st.st_mode) and x.st.st_nlink > 1:
                    self._inodes.setdefault((x.st.st_dev, x.st.st_ino), x.rel)
        first = self._inodes.get((s.st.st_dev, s.st.st_ino), s.rel)
        return "" if first == s.rel else first

    def _target(self, rel: str) -> Source | None:
        from shale.fsroot import Root

        with Root(self.root) as r:
            real = r.resolve(rel).lstrip("/")
        try:
            st = os.lstat(self.root / real)
        except (FileNotFoundError, NotADirectoryError):
            return None
        if stat.S_ISLNK(st.st_mode) or self.ignored(real):
            return None
        return Source(real, self.root / real, st)

    def source_hash(self, src: Source) -> str:
        """``file:<sum>`` or, for a directory, ``dir:<sha256 of its sorted sums>``."""
        if not src.is_dir:
            return f"file:{self.file_sum(src)}"
        # the context root ("") is not an entry of docker's context tar; other dirs count
        sums = sorted(x for s in self.walk(src) if s.rel and (x := self.file_sum(s)))
        return "dir:" + hashlib.sha256(",".join(sums).encode()).hexdigest()

    def file_sums(self, sources: list[Source]) -> dict[str, str]:
        """Every entry's sum by path, for ``--explain`` to name the files that changed."""
        return {s.rel or ".": self.file_sum(s) or "" for top in sources
                for s in self.walk(top)}


def _tarsum(s: Source, owned: bool, hardlink: str = "") -> str:
    """tarsum v1 of one entry: header fields (no mtime, no user names) then content."""
    st = s.st
    mode = stat.S_IMODE(st.st_mode)
    name, size, kind, link = s.rel, 0, "0", ""
    if hardlink:
        kind, link = "1", hardlink
    elif stat.S_ISDIR(st.st_mode):
        name, kind = name + "/", "5"
    elif stat.S_ISLNK(st.st_mode):
        kind, link = "2", os.readlink(s.path)
    elif stat.S_ISREG(st.st_mode):
        size = st.st_size
    else:
        kind = "3" if stat.S_ISCHR(st.st_mode) else "4" if stat.S_ISBLK(st.st_mode) else "6"
    if owned:
        # docker's lazy image source hashes real owners and the Go 1.8 type bits
        mode |= stat.S_IFMT(st.st_mode)
    uid, gid = (st.st_uid, st.st_gid) if owned else (0, 0)
    # docker's lazy source fills the header as Go's tar.FileInfoHeader does: owner names
    # from the daemon host's user and group databases ("" where they have none)
    uname, gname = (_user_name(uid), _group_name(gid)) if owned else ("", "")
    dev = st.st_rdev if kind in ("3", "4") else 0
    h = hashlib.sha256()
    for k, v in (("name", name), ("mode", str(mode)), ("uid", str(uid)), ("gid", str(gid)),
                 ("size", str(size)), ("typeflag", kind), ("linkname", link), ("uname", uname),
                 ("gname", gname), ("devmajor", str(os.major(dev))),
                 ("devminor", str(os.minor(dev)))):
        h.update((k + v).encode("utf-8", "surrogateescape"))
    if kind == "0" and size:
        with open(s.path, "rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
    return h.hexdigest()


@functools.cache
def _user_name(uid: int) -> str:
    import pwd

    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return ""


@functools.cache
def _group_name(gid: int) -> str:
    import grp

    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return ""


def summary(ctx: Context, sources: list[Source], inline: list[Inline],
            more: list[str] | None = None) -> str:
    """``file:<hash>``, ``dir:<hash>`` or ``multi:<hash>``: the classic builder's summary
    of a COPY/ADD's sources in ``created_by`` (a heredoc hashes as a 0644 file; ``more``:
    hashes of downloaded sources)."""
    hashes = [ctx.source_hash(s) for s in sources] + (more or [])
    for doc in inline:
        h = hashlib.sha256()
        for k, v in (("name", doc.name), ("mode", "420"), ("uid", "0"), ("gid", "0"),
                     ("size", str(len(doc.data))), ("typeflag", "0"), ("linkname", ""),
                     ("uname", ""), ("gname", ""), ("devmajor", "0"), ("devminor", "0")):
            h.update((k + v).encode())
        h.update(doc.data)
        hashes.append("file:" + h.hexdigest())
    if len(hashes) == 1:
        return hashes[0]
    return "multi:" + hashlib.sha256(",".join(hashes).encode()).hexdigest()


def _has_glob(text: str) -> bool:
    return any(c in text for c in "*?[")


def dockerfile_path(ctx_root: Path, name: str | None, *, inside: bool = False) -> Path:
    """Where the Dockerfile is: ``<context>/Dockerfile`` by default; a relative ``-f`` is
    taken from the current directory, else from the context (docker's CLI order), and
    only from the context when the context came as a tar (``inside``)."""
    if not name:
        return ctx_root / "Dockerfile"
    path = Path(name)
    if inside or (not path.is_absolute() and not path.exists()):
        return ctx_root / name
    return path


def read_dockerfile(path: Path | None, stdin: BinaryIO | None) -> str:
    """The Dockerfile's text: from ``path``, or from stdin when ``path`` is None
    (``-f -``)."""
    if path is None:
        assert stdin is not None
        return stdin.read().decode("utf-8", "replace")
    try:
        return path.read_bytes().decode("utf-8", "replace")
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        raise InvalidArgument(f"unable to prepare context: unable to evaluate symlinks in "
                              f"Dockerfile path: lstat {path}: no such file or directory"
                              ) from None
