"""Image records: IDs, parents, children, tags, repo digests and docker's delete rules.

An image is its config blob (ID = sha256 of the config bytes) plus a row in the metadata
database. Tags point to image IDs. Lookup accepts a name[:tag], name@digest, a full ID
(with or without ``sha256:``) or a unique ID prefix, as docker does.
"""

from __future__ import annotations

import builtins
import time
from collections.abc import Callable, Iterable

from shale.content import ContentStore
from shale.digest import Digest, chain_ids
from shale.errors import Conflict, InvalidReference, NotFound, ShaleError
from shale.metadata import Metadata
from shale.oci import ImageConfig
from shale.record import record
from shale.refs import Reference


@record(frozen=True)
class LayerRecord:
    diff_id: Digest
    blob: Digest
    media_type: str
    blob_size: int
    diff_size: int                 # -1 while unverified: not known before the gunzip
    content_size: int = -1
    # False: a pulled blob whose diff_id is not checked yet (shale.layercheck); such a
    # record never satisfies ``has_layer`` and is checked before any use
    verified: bool = True


@record(frozen=True)
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
        if len(hexpart) == 64 and _is_hex(hexpart) and self.meta.one(
                "SELECT 1 FROM images WHERE id=?", ("sha256:" + hexpart,)):
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
        # docker's ErrImageDoesNotExist text: a full ID as sha256:<hex>, a name with its
        # default tag in familiar form ("No such image: busybox:latest")
        if len(hexpart) == 64 and _is_hex(hexpart):
            raise NotFound(f"No such image: sha256:{hexpart}")
        if ref is None:
            Reference.parse(text)  # raises docker's message for a malformed name
            raise NotFound(f"No such image: {name}")
        raise NotFound(f"No such image: {ref.familiar}")

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

    def list(self) -> builtins.list[Image]:
        rows = self.meta.query("SELECT id FROM images")
        return [self.load(r["id"]) for r in rows]

    def children(self, image_id: Digest | str) -> builtins.list[str]:
        return [r["id"] for r in self.meta.query(
            "SELECT id FROM images WHERE parent=?", (str(image_id),))]

    def layers(self, image: Image) -> builtins.list[LayerRecord]:
        out = []
        for d in image.config.diff_ids:
            out.append(self.layer(d))
        return out

    def layer(self, diff_id: Digest) -> LayerRecord:
        row = self.meta.one("SELECT l.*, u.diff_id AS unverified FROM layers l LEFT JOIN "
                            "unverified_layers u ON u.diff_id=l.diff_id WHERE l.diff_id=?",
                            (diff_id.value,))
        if row is None:
            raise NotFound(f"layer {diff_id} not found")
        return LayerRecord(Digest(row["diff_id"]), Digest(row["blob"]), row["media_type"],
                           row["blob_size"], row["diff_size"], row["content_size"],
                           row["unverified"] is None)

    def has_layer(self, diff_id: Digest) -> bool:
        """A verified layer record for this diff_id (an unverified pulled one never counts:
        only the image whose manifest names that blob may use it)."""
        return self.meta.one("SELECT 1 FROM layers WHERE diff_id=? AND diff_id NOT IN "
                             "(SELECT diff_id FROM unverified_layers)",
                             (diff_id.value,)) is not None

    def unverified_layer(self, diff_id: Digest) -> tuple[Digest, str] | None:
        """(blob, recorded error or "") of an unverified record of this diff_id."""
        row = self.meta.one("SELECT blob, error FROM unverified_layers WHERE diff_id=?",
                            (diff_id.value,))
        return None if row is None else (Digest(row["blob"]), row["error"])

    def layer_check_error(self, diff_id: Digest, blob: Digest) -> str:
        row = self.meta.one("SELECT error FROM unverified_layers WHERE diff_id=? AND blob=?",
                            (diff_id.value, blob.value))
        return row["error"] if row is not None else ""

    def layer_verified(self, diff_id: Digest, blob: Digest, diff_size: int,
                       content_size: int) -> None:
        """The blob gunzipped to the diff_id: the record becomes an ordinary one."""
        with self.meta.transaction() as db:
            cur = db.execute("DELETE FROM unverified_layers WHERE diff_id=? AND blob=?",
                             (diff_id.value, blob.value))
            if cur.rowcount:
                db.execute("UPDATE layers SET diff_size=?, content_size=? WHERE diff_id=? "
                           "AND blob=?", (diff_size, content_size, diff_id.value, blob.value))

    def layer_check_failed(self, diff_id: Digest, blob: Digest, error: str) -> None:
        with self.meta.transaction() as db:
            db.execute("UPDATE unverified_layers SET error=? WHERE diff_id=? AND blob=?",
                       (error, diff_id.value, blob.value))

    # ---- writes -------------------------------------------------------------------------
    def publish(self, config: ImageConfig, layers: Iterable[LayerRecord], *,
                parent: str = "", tags: Iterable[Reference] = (), manifest: str = "",
                repo_digest: Reference | None = None) -> builtins.list[tuple[str, str | None]]:
        """Record an image whose blobs are already stored, in one transaction; move tags to
        it. Returns (tag, previous image ID or None) for each tag that was set."""
        now = time.time()
        moved: builtins.list[tuple[str, str | None]] = []
        with self.meta.transaction() as db:
            for lay in layers:
                row = (lay.diff_id.value, lay.blob.value, lay.media_type, lay.blob_size,
                       lay.diff_size, lay.content_size)
                if not lay.verified:  # kept only if the diff_id has no record at all
                    if db.execute("INSERT OR IGNORE INTO layers VALUES (?,?,?,?,?,?)",
                                  row).rowcount:
                        db.execute("INSERT INTO unverified_layers VALUES (?,?,'')",
                                   (lay.diff_id.value, lay.blob.value))
                    continue
                # a verified record replaces an unverified one, never a verified one
                db.execute(
                    "INSERT INTO layers VALUES (?,?,?,?,?,?) ON CONFLICT(diff_id) DO UPDATE "
                    "SET blob=excluded.blob, media_type=excluded.media_type, "
                    "blob_size=excluded.blob_size, diff_size=excluded.diff_size, "
                    "content_size=excluded.content_size WHERE layers.diff_id IN "
                    "(SELECT diff_id FROM unverified_layers)", row)
                db.execute("DELETE FROM unverified_layers WHERE diff_id=?",
                           (lay.diff_id.value,))
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

    # ---- delete (docker 20.10 daemon/images/image_delete.go, rule for rule) -------------
    def delete(self, name: str, *, force: bool, users: UsersFn,
               prune: bool = True) -> builtins.list[tuple[str, str]]:
        """Untag and/or delete; returns ("Untagged"|"Deleted", text) lines in order.

        By name: remove that reference (and the same repository's digest references when
        it was the last tag of it); the image goes only when no reference is left, and
        then quietly (a conflict keeps it without an error). By ID: untag everything only
        when the image has at most one tag ("single reference"), else refuse without -f.
        Deleting an image also lists the layers (chain IDs) no other image holds, top
        first, and then prunes untagged parents that have no other child."""
        image_id = self.resolve(name)
        out: builtins.list[tuple[str, str]] = []
        refs = self._refs(image_id.value)
        quiet = False
        if not _is_id_ref(name, image_id):
            if not force and _is_single_reference(refs):
                using = users(image_id.value)
                if using:
                    raise Conflict(
                        f'conflict: unable to remove repository reference "{name}" (must '
                        f"force) - container {using[0][0][:12]} is using its referenced "
                        f"image {image_id.short}")
            ref = Reference.parse(name).with_default_tag()
            self._remove_refs([str(ref)])
            out.append(("Untagged", ref.familiar))
            refs = self._refs(image_id.value)
            if ref.digest is None and not any(
                    "@" not in r and Reference.parse(r).name == ref.name for r in refs):
                # the repository's last tag went: its digest references go with it
                same = [r for r in refs if Reference.parse(r).name == ref.name]
                out.extend(("Untagged", Reference.parse(r).familiar) for r in same)
                self._remove_refs(same)
                refs = [r for r in refs if r not in same]
            if refs:
                return out
            quiet = True
        elif _is_single_reference(refs):
            mask = _HARD if force else _HARD | _STOPPED
            conflict = self._conflict(image_id, mask, users)
            if conflict is not None:
                raise conflict[0]
            out.extend(("Untagged", Reference.parse(r).familiar) for r in refs)
            self._remove_refs(refs)
        self._delete_helper(image_id, out, users, force=force, prune=prune, quiet=quiet)
        return out

    def _delete_helper(self, image_id: Digest, out: builtins.list[tuple[str, str]], users: UsersFn,
                       *, force: bool, prune: bool, quiet: bool) -> None:
        mask = _HARD if force else _HARD | _SOFT
        conflict = self._conflict(image_id, mask, users)
        if conflict is not None:
            error, used = conflict
            if quiet and (not self._dangling(image_id.value) or used):
                return  # docker keeps the image silently after an untag or a prune
            raise error
        row = self.meta.one("SELECT parent FROM images WHERE id=?", (image_id.value,))
        parent = row["parent"] if row else ""
        config = self.load(image_id).config
        refs = self._refs(image_id.value)
        out.extend(("Untagged", Reference.parse(r).familiar) for r in refs)
        with self.meta.transaction() as db:
            db.execute("DELETE FROM tags WHERE image=?", (image_id.value,))
            db.execute("DELETE FROM repo_digests WHERE image=?", (image_id.value,))
            db.execute("DELETE FROM build_cache WHERE child=? OR parent=?",
                       (image_id.value, image_id.value))
            db.execute("DELETE FROM images WHERE id=?", (image_id.value,))
        out.append(("Deleted", image_id.value))
        out.extend(("Deleted", c) for c in self._released_chains(config))
        if not prune or not parent or not self.exists(parent):
            return
        self._delete_helper(Digest(parent), out, users, force=False, prune=True, quiet=True)

    def _conflict(self, image_id: Digest, mask: int, users: UsersFn
                  ) -> tuple[Conflict, bool] | None:
        """docker's checkImageDeleteConflict: (error, image used by a container)."""
        def err(hard: bool, why: str) -> Conflict:
            how = "cannot be forced" if hard else "must be forced"
            return Conflict(f"conflict: unable to delete {image_id.short} ({how}) - {why}")

        if mask & _CHILD and self.children(image_id):
            return err(True, "image has dependent child images"), False
        using = users(image_id.value) if mask & (_RUNNING | _STOPPED) else []
        running = [c for c, r in using if r]
        if mask & _RUNNING and running:
            return err(True, f"image is being used by running container {running[0][:12]}"
                       ), True
        if mask & _REFERENCE and self._has_refs(image_id.value):
            return err(False, "image is referenced in multiple repositories"), False
        stopped = [c for c, r in using if not r]
        if mask & _STOPPED and stopped:
            return err(False, f"image is being used by stopped container {stopped[0][:12]}"
                       ), True
        return None

    def _released_chains(self, config: ImageConfig) -> builtins.list[str]:
        """Chain IDs of ``config``'s layers that no remaining image holds, top first (the
        layers docker's layer store releases, printed as ``Deleted:`` lines)."""
        mine = chain_ids(config.diff_ids)
        if not mine:
            return []
        held: set[str] = set()
        for row in self.meta.query("SELECT id FROM images"):
            try:
                other = ImageConfig.parse(self.content.read(Digest(row["id"])))
            except ShaleError:
                continue
            held.update(c.value for c in chain_ids(other.diff_ids))
        out: builtins.list[str] = []
        for c in reversed(mine):
            if c.value in held:
                break  # a held chain holds every chain beneath it
            out.append(c.value)
        return out

    def _refs(self, image_id: str) -> builtins.list[str]:
        """Every tag and digest reference of an image (normalised names)."""
        return [r["name"] for r in self.meta.query(
            "SELECT name FROM tags WHERE image=? UNION ALL "
            "SELECT name FROM repo_digests WHERE image=? ORDER BY name",
            (image_id, image_id))]

    def _dangling(self, image_id: str) -> bool:
        return not self._has_refs(image_id) and not self.children(image_id)

    def _has_refs(self, image_id: str) -> bool:
        return bool(self.meta.one("SELECT 1 FROM tags WHERE image=?", (image_id,)) or
                    self.meta.one("SELECT 1 FROM repo_digests WHERE image=?", (image_id,)))

    def _remove_refs(self, names: builtins.list[str]) -> None:
        if not names:
            return
        with self.meta.transaction() as db:
            for n in names:
                db.execute("DELETE FROM tags WHERE name=?", (n,))
                db.execute("DELETE FROM repo_digests WHERE name=?", (n,))

    def dangling(self) -> builtins.list[str]:
        """Untagged images with no child (``images -f dangling=true``)."""
        rows = self.meta.query(
            "SELECT id FROM images i WHERE NOT EXISTS (SELECT 1 FROM tags t WHERE t.image=i.id)"
            " AND NOT EXISTS (SELECT 1 FROM repo_digests d WHERE d.image=i.id)"
            " AND NOT EXISTS (SELECT 1 FROM images c WHERE c.parent=i.id)")
        return [r["id"] for r in rows]

    def intermediate(self, image_id: str) -> bool:
        """Untagged but with children: hidden by ``images`` unless ``-a``."""
        return not self._has_refs(image_id) and bool(self.children(image_id))


# conflict kinds (docker's conflictType bits)
_CHILD, _RUNNING, _REFERENCE, _STOPPED = 1, 2, 4, 8
_HARD = _CHILD | _RUNNING
_SOFT = _REFERENCE | _STOPPED


def _is_single_reference(refs: list[str]) -> bool:
    """docker's isSingleReference: at most one tag, and every reference (tags and
    digests) in one repository. False for no references."""
    if len(refs) <= 1:
        return len(refs) == 1
    tag: str | None = None
    digest_repos: set[str] = set()
    for r in refs:
        if "@" in r:
            digest_repos.add(Reference.parse(r).name)
        elif tag is None:
            tag = r
        else:
            return False
    name = Reference.parse(tag or refs[0]).name
    return len(digest_repos) == 1 and name in digest_repos


def _is_hex(text: str) -> bool:
    return all(c in "0123456789abcdef" for c in text) and bool(text)


def _is_id_ref(name: str, image_id: Digest) -> bool:
    text = name[7:] if name.startswith("sha256:") else name
    return _is_hex(text) and image_id.hex.startswith(text)
