"""The build cache: (parent image ID, step key) -> child image ID in the store's database,
and the inputs behind each key, kept so that a later miss can say what changed.

A step's key covers the parent image ID, the instruction after expansion, the build args
it sees, its flags, and for COPY/ADD every source file's sum (content, mode, owner; never
mtimes). The index is one SQLite lookup and works across processes; the inputs live as
small JSON files under ``<root>/build/inputs/`` (named by key), which ``prune`` trims to
the keys still indexed.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from typing import TYPE_CHECKING

from shale.errors import NotFound, ShaleError
from shale.images import Image
from shale.record import asdict, field, record

if TYPE_CHECKING:
    from shale.engine import Engine

_MAX_NAMED = 5
_KEEP_UNINDEXED = 600.0  # seconds: a concurrent build may not have indexed its key yet


@record
class StepInputs:
    """What a step's key is made of: ``kind`` (the keyword), ``line`` (the Dockerfile text,
    to pair a step with its earlier run), ``text`` (the step after expansion), ``args``
    (build args), ``files`` (COPY/ADD: path -> sum) and ``extra`` (flags, mounts, ...)."""

    kind: str
    line: str
    text: str
    args: dict[str, str] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)
    extra: dict[str, str] = field(default_factory=dict)

    def key(self, parent: str) -> str:
        files = hashlib.sha256(json.dumps(sorted(self.files.items())).encode()).hexdigest()
        blob = json.dumps([parent, self.kind, self.text, sorted(self.args.items()), files,
                           sorted(self.extra.items())])
        return hashlib.sha256(blob.encode()).hexdigest()


class CacheIndex:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.dir = engine.root / "build" / "inputs"

    def lookup(self, parent: str, key: str) -> Image | None:
        """The cached child of ``parent`` (an image ID, "" for scratch) for ``key``."""
        row = self.engine.meta.one("SELECT child FROM build_cache WHERE parent=? AND key=?",
                                   (parent, key))
        if row is None:
            return None
        try:
            return self.engine.images.load(row["child"])
        except (NotFound, ShaleError):
            return None  # the child was deleted; the row goes with the next remember

    def remember(self, parent: str, key: str, child: Image, inputs: StepInputs) -> None:
        with self.engine.meta.transaction() as db:
            db.execute("INSERT OR REPLACE INTO build_cache VALUES (?,?,?)",
                       (parent, key, child.id.value))
        # after the row: a concurrent prune keeps files whose key is indexed
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = self.dir / f".{key}.{os.getpid()}"
        tmp.write_text(json.dumps(asdict(inputs)))
        os.replace(tmp, self.dir / f"{key}.json")

    def _inputs(self, key: str) -> StepInputs | None:
        try:
            return StepInputs(**json.loads((self.dir / f"{key}.json").read_text()))
        except (OSError, ValueError, TypeError):
            return None

    # ---- explain ---------------------------------------------------------------------------
    def explain(self, parent: str, inputs: StepInputs, parent_desc: str) -> str:
        """Why ``inputs`` has no cached child on ``parent``: the closest earlier step built
        on the same parent (same Dockerfile line, else same instruction) and what differs."""
        rows = self.engine.meta.query("SELECT key FROM build_cache WHERE parent=?", (parent,))
        earlier = [x for x in (self._inputs(r["key"]) for r in rows) if x is not None]
        if not earlier:
            return f"nothing was built on {parent_desc} before (a new or changed parent)"
        same = [x for x in earlier if x.line == inputs.line] or \
            [x for x in earlier if x.kind == inputs.kind]
        if not same:
            others = ", ".join(sorted({x.line for x in earlier}))[:120]
            return f"no earlier {inputs.kind.upper()} on {parent_desc}; what ran on it " \
                   f"before: {others}"
        reasons = min((diff(x, inputs) for x in same), key=len)
        return "; ".join(reasons) if reasons else \
            "an identical step was cached but its image is gone"

    def prune(self) -> None:
        """Drop inputs files whose key is no longer indexed (their images were deleted)."""
        try:
            names = os.listdir(self.dir)
        except FileNotFoundError:
            return
        keys = {r["key"] for r in self.engine.meta.query("SELECT key FROM build_cache")}
        now = time.time()
        for n in names:
            if n.endswith(".json") and n[:-5] not in keys:
                p = self.dir / n
                with contextlib.suppress(OSError):
                    if now - p.stat().st_mtime > _KEEP_UNINDEXED:
                        p.unlink()


def _names(paths: list[str]) -> str:
    shown = ", ".join(paths[:_MAX_NAMED])
    return shown + (f" and {len(paths) - _MAX_NAMED} more" if len(paths) > _MAX_NAMED else "")


def diff(old: StepInputs, new: StepInputs) -> list[str]:
    """Human reasons why ``new`` differs from ``old`` (empty: they are the same)."""
    out: list[str] = []
    for k in sorted(set(old.args) | set(new.args)):
        a, b = old.args.get(k), new.args.get(k)
        if a != b:
            out.append(f"build arg {k} is new ({b!r})" if a is None else
                       f"build arg {k} is gone (was {a!r})" if b is None else
                       f"build arg {k} changed: {a!r} -> {b!r}")
    changed = sorted(p for p in set(old.files) & set(new.files) if old.files[p] != new.files[p])
    added = sorted(set(new.files) - set(old.files))
    removed = sorted(set(old.files) - set(new.files))
    if changed:
        out.append(f"source changed: {_names(changed)}")
    if added:
        out.append(f"source added: {_names(added)}")
    if removed:
        out.append(f"source removed: {_names(removed)}")
    if old.text != new.text and not out:
        out.append(f"the instruction was {old.text!r}, now {new.text!r}")
    for k in sorted(set(old.extra) | set(new.extra)):
        if old.extra.get(k) != new.extra.get(k):
            out.append(f"{k} was {old.extra.get(k)!r}, now {new.extra.get(k)!r}")
    return out
