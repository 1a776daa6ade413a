"""Mounts: the only thing snapshotters hand out, plus helpers to mount and unmount them.

A ``Mount`` is a description (type, source, options), as in containerd: nothing is mounted
until ``mount_all`` is called with a target. Overlay mounts with many lower dirs go through
the new mount API (``fsopen``/``fsconfig`` with ``lowerdir+``) so ``mount(2)``'s silent
truncation of its data at one page can never drop a layer.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Mount:
    """One mount. For overlay: ``options`` holds ``lowerdir=a:b`` (highest first),
    ``upperdir=``, ``workdir=`` and flags; for a bind: ``type="bind"``, options ``rbind``/``ro``."""

    type: str
    source: str
    options: tuple[str, ...] = field(default_factory=tuple)

    @property
    def readonly(self) -> bool:
        return "ro" in self.options

    def option(self, key: str) -> str | None:
        prefix = key + "="
        for opt in self.options:
            if opt.startswith(prefix):
                return opt[len(prefix):]
        return None
