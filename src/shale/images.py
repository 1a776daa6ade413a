"""Image records: IDs, parents, children, tags, repo digests and docker's delete rules.

An image is its config blob (ID = sha256 of the config bytes) plus a row in the metadata
database. Tags point to image IDs. Lookup accepts a name[:tag], name@digest, a full ID
(with or without ``sha256:``) or a unique ID prefix, as docker does.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from shale.content import ContentStore
from shale.digest import Digest
from shale.errors import Conflict, InvalidReference, NotFound
from shale.metadata import Metadata
from shale.oci import ImageConfig
from shale.refs import Reference


@dataclass(frozen=True)
class LayerRecord:
    diff_id: Digest
    blob: Digest
    media_type: str
    blob_size: int
    diff_size: int
    content_size: int = -1


@dataclass(frozen=True)
class Image:
    id: Digest
    config: ImageConfig
    parent: str
    added: float
    tags: tuple[str, ...]          # normalised refs, e.g. docker.io/library/busybox:latest
    repo_digests: tuple[str, ...]  # normalised name@sha256:...
    manifest: str
    last_tag_time: float

    @property
    def familiar_tags(self) -> list[str]:
        return [Reference.parse(t).familiar for t in self.tags]

    @property
    def familiar_digests(self) -> list[str]:
        return [Reference.parse(t).familiar for t in self.repo_digests]


# (container ID, running) for every container using an image
UsersFn = Callable[[str], list[tuple[str, bool]]]


class ImageStore:
    def __init__(self, meta: Metadata, content: ContentStore) -> None:
        self.meta = meta
        self.content = content

    # ---- lookup -------------------------------------------------------------------------
    def resolve(self, name: str) -> Digest:
        """Image ID for a reference, full ID or unique ID prefix (docker's lookup order:
        a full ID, then a reference, then an ID prefix)."""
        text = name.strip()
        hexpart = text[7:] if text.startswith("sha256:") else text
        if len(hexpart) == 64 and _is_hex(hexpart):
            if self.meta.one("SELECT 1 FROM images WHERE id=?", ("sha256:" + hexpart,)):
                return Digest.from_hex(hexpart)
        ref = self._try_ref(text)
        if ref is not None:
            row = (self.meta.one("SELECT image FROM repo_digests WHERE name=?", (str(ref),))
                   if ref.digest else
                   self.meta.one("SELECT image FROM tags WHERE name=?", (str(ref),)))
            if row:
                return Digest(row["image"])
        if _is_hex(hexpart) and 1 <= len(hexpart) <= 64:
            rows = self.meta.query("SELECT id FROM images WHERE id LIKE ?",
                                   (f"sha256:{hexpart}%",))
            if len(rows) == 1:
                return Digest(rows[0]["id"])
            if len(rows) > 1:
                raise Conflict(f"multiple IDs found with provided prefix: {hexpart}")
        if ref is None:
            Reference.parse(text)  # raises docker's message for a malformed name
        raise NotFound(f"No such image: {name}")

    @staticmethod
    def _try_ref(text: str) -> Reference | None:
        try:
            return Reference.parse(text).with_default_tag()
        except InvalidReference:
            return None

    def exists(self, image_id: Digest | str) -> bool:
        return self.meta.one("SELECT 1 FROM images WHERE id=?", (str(image_id),)) is not None

    def get(self, name: str) -> Image:
        return self.load(self.resolve(name))

    def load(self, image_id: Digest | str) -> Image:
        row = self.meta.one("SELECT * FROM images WHERE id=?", (str(image_id),))
        if row is None:
            raise NotFound(f"No such image: {image_id}")
        iid = Digest(row["id"])
        config = ImageConfig.parse(self.content.read(iid))
        tags = tuple(r["name"] for r in self.meta.query(
            "SELECT name FROM tags WHERE image=? ORDER BY name", (iid.value,)))
        digests = tuple(r["name"] for r in self.meta.query(
            "SELECT name FROM repo_digests WHERE image=? ORDER BY name", (iid.value,)))
        return Image(iid, config, row["parent"], row["added"], tags, digests,
                     row["manifest"], row["last_tag_time"])

    def list(self) -> list[Image]:
        rows = self.meta.query("SELECT id FROM images")
        return [self.load(r["id"]) for r in rows]

    def children(self, image_id: Digest | str) -> list[str]:
        return [r["id"] for r in self.meta.query(
            "SELECT id FROM images WHERE parent=?", (str(image_id),))]

    def layers(self, image: Image) -> list[LayerRecord]:
        out = []
        for d in image.config.diff_ids:
            out.append(self.layer(d))
        return out

    def layer(self, diff_id: Digest) -> LayerRecord:
        row = self.meta.one("SELECT * FROM layers WHERE diff_id=?", (diff_id.value,))
        if row is None:
            raise NotFound(f"layer {diff_id} not found")
        return LayerRecord(Digest(row["diff_id"]), Digest(row["blob"]), row["media_type"],
                           row["blob_size"], row["diff_size"], row["content_size"])

    def has_layer(self, diff_id: Digest) -> bool:
        return self.meta.one("SELECT 1 FROM layers WHERE diff_id=?",
                             (diff_id.value,)) is not None

    # ---- writes -------------------------------------------------------------------------
    def publish(self, config: ImageConfig, layers: Iterable[LayerRecord], *,
                parent: str = "", tags: Iterable[Reference] = (), manifest: str = "",
                repo_digest: Reference | None = None) -> list[tuple[str, str | None]]:
        """Record an image whose blobs are already stored, in one transaction; move tags to
        it. Returns (tag, previous image ID or None) for each tag that was set."""
        now = time.time()
        moved: list[tuple[str, str | None]] = []
        with self.meta.transaction() as db:
            for lay in layers:
                db.execute(
                    "INSERT OR IGNORE INTO layers VALUES (?,?,?,?,?,?)",
                    (lay.diff_id.value, lay.blob.value, lay.media_type, lay.blob_size,
                     lay.diff_size, lay.content_size))
            db.execute("INSERT OR IGNORE INTO images(id, parent, added, manifest) "
                       "VALUES (?,?,?,?)", (config.id.value, parent, now, manifest))
            if manifest:
                db.execute("UPDATE images SET manifest=? WHERE id=?",
                           (manifest, config.id.value))
            for ref in tags:
                moved.append(self._set_tag(db, ref, config.id.value, now))
            if repo_digest is not None:
                db.execute("INSERT OR REPLACE INTO repo_digests VALUES (?,?)",
                           (str(repo_digest), config.id.value))
        return moved

    @staticmethod
    def _set_tag(db: object, ref: Reference, image_id: str, now: float
                 ) -> tuple[str, str | None]:
        import sqlite3

        assert isinstance(db, sqlite3.Connection)
        name = str(ref.with_default_tag())
        row = db.execute("SELECT image FROM tags WHERE name=?", (name,)).fetchone()
        db.execute("INSERT OR REPLACE INTO tags VALUES (?,?)", (name, image_id))
        db.execute("UPDATE images SET last_tag_time=? WHERE id=?", (now, image_id))
        prev = row["image"] if row and row["image"] != image_id else None
        return name, prev

    def tag(self, image_id: Digest, ref: Reference) -> None:
        if ref.digest:
            raise InvalidReference("refusing to create a tag with a digest reference")
        with self.meta.transaction() as db:
            self._set_tag(db, ref, image_id.value, time.time())

    def set_layer_content_size(self, diff_id: Digest, size: int) -> None:
        with self.meta.transaction() as db:
            db.execute("UPDATE layers SET content_size=? WHERE diff_id=?",
                       (size, diff_id.value))

    # ---- delete (docker's daemon/images/image_delete.go rules) --------------------------
    def delete(self, name: str, *, force: bool, users: UsersFn,
               prune: bool = True) -> list[tuple[str, str]]:
        """Untag and/or delete; returns ("Untagged"|"Deleted", text) lines in order."""
        image_id = self.resolve(name)
        image = self.load(image_id)
        out: list[tuple[str, str]] = []
        using = users(image_id.value)
        by_id = _is_id_ref(name, image_id)
        refs = list(image.tags) + list(image.repo_digests)
        if not by_id:
            ref = Reference.parse(name).with_default_tag()
            if len(refs) == 1 and using and not force:
                raise Conflict(
                    f'conflict: unable to remove repository reference "{name}" (must force) '
                    f"- container {using[0][0][:12]} is using its referenced image "
                    f"{image_id.short}")
            out.append(("Untagged", ref.familiar))
            self._remove_refs([str(ref)])
            left = [r for r in refs if r != str(ref)]
            # digest refs of the same repository go with the last tag of it, as docker
            if left and all("@" in r for r in left):
                repo = ref.name
                same = [r for r in left if Reference.parse(r).name == repo]
                for r in same:
                    out.append(("Untagged", Reference.parse(r).familiar))
                self._remove_refs(same)
                left = [r for r in left if r not in same]
            if left:
                return out
        elif refs:
            repos = {Reference.parse(r).name for r in refs}
            if len(repos) > 1 and not force:
                raise Conflict(f"conflict: unable to delete {image_id.short} (must be forced)"
                               " - image is referenced in multiple repositories")
        self._check_conflict(image_id, using, force, allow_refs=True)
        for r in refs if by_id else []:
            out.append(("Untagged", Reference.parse(r).familiar))
        self._remove_refs(refs if by_id else [])
        self._delete_chain(image_id, out, users, prune)
        return out

    def _check_conflict(self, image_id: Digest, using: list[tuple[str, bool]], force: bool,
                        allow_refs: bool) -> None:
        if self.children(image_id):
            raise Conflict(f"conflict: unable to delete {image_id.short} (cannot be forced)"
                           " - image has dependent child images")
        running = [c for c, r in using if r]
        if running:
            raise Conflict(f"conflict: unable to delete {image_id.short} (cannot be forced)"
                           f" - image is being used by running container {running[0][:12]}")
        if using and not force:
            raise Conflict(f"conflict: unable to delete {image_id.short} (must be forced)"
                           f" - image is being used by stopped container {using[0][0][:12]}")

    def _delete_chain(self, image_id: Digest, out: list[tuple[str, str]], users: UsersFn,
                      prune: bool) -> None:
        current: str = image_id.value
        while True:
            row = self.meta.one("SELECT parent FROM images WHERE id=?", (current,))
            parent = row["parent"] if row else ""
            with self.meta.transaction() as db:
                db.execute("DELETE FROM tags WHERE image=?", (current,))
                db.execute("DELETE FROM repo_digests WHERE image=?", (current,))
                db.execute("DELETE FROM build_cache WHERE child=? OR parent=?",
                           (current, current))
                db.execute("DELETE FROM images WHERE id=?", (current,))
            out.append(("Deleted", current))
            if not prune or not parent or not self.exists(parent):
                return
            # an untagged parent with no other child and no user goes too
            if (self.children(parent) or self._has_refs(parent) or users(parent)):
                return
            current = parent

    def _has_refs(self, image_id: str) -> bool:
        return bool(self.meta.one("SELECT 1 FROM tags WHERE image=?", (image_id,)) or
                    self.meta.one("SELECT 1 FROM repo_digests WHERE image=?", (image_id,)))

    def _remove_refs(self, names: list[str]) -> None:
        if not names:
            return
        with self.meta.transaction() as db:
            for n in names:
                db.execute("DELETE FROM tags WHERE name=?", (n,))
                db.execute("DELETE FROM repo_digests WHERE name=?", (n,))

    def dangling(self) -> list[str]:
        """Untagged images with no child (``images -f dangling=true``)."""
        rows = self.meta.query(
            "SELECT id FROM images i WHERE NOT EXISTS (SELECT 1 FROM tags t WHERE t.image=i.id)"
            " AND NOT EXISTS (SELECT 1 FROM repo_digests d WHERE d.image=i.id)"
            " AND NOT EXISTS (SELECT 1 FROM images c WHERE c.parent=i.id)")
        return [r["id"] for r in rows]

    def intermediate(self, image_id: str) -> bool:
        """Untagged but with children: hidden by ``images`` unless ``-a``."""
        return not self._has_refs(image_id) and bool(self.children(image_id))


def _is_hex(text: str) -> bool:
    return all(c in "0123456789abcdef" for c in text) and bool(text)


def _is_id_ref(name: str, image_id: Digest) -> bool:
    text = name[7:] if name.startswith("sha256:") else name
    return _is_hex(text) and image_id.hex.startswith(text)
