"""Small file helpers: atomic output files, scratch directories a killed process's
successor cleans up."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO


@contextlib.contextmanager
def atomic_output(path: str | Path, durable: bool = True) -> Iterator[BinaryIO]:
    """Write to a temp file beside ``path`` and rename it into place only on success, so a
    failed or killed ``save -o`` never leaves a truncated archive under the final name."""
    target = Path(path)
    # a unique temp name without importing tempfile (costly on every `run`)
    tmp = str(target.parent / f".{target.name}.{os.getpid()}.{os.urandom(6).hex()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            if durable:
                os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.rename(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write(path: Path, data: bytes, mode: int = 0o644, durable: bool = True) -> None:
    """Replace ``path`` atomically. ``durable=False`` skips the fsync: for files rewritten
    often and rebuilt on demand (container state, bundles), a rename is enough to survive a
    killed process."""
    with atomic_output(path, durable) as f:
        f.write(data)
    os.chmod(path, mode)


def scratch_dir(prefix: str, base: str | None = None) -> str:
    """A new private directory ``<base>/<prefix><pid>-<random>`` (base: the temp dir).
    Those of the same prefix whose process is gone (killed mid-build) are removed first,
    unless something is mounted on them."""
    import shutil
    import tempfile

    base = base or tempfile.gettempdir()
    with contextlib.suppress(OSError):
        for name in os.listdir(base):
            pid = name[len(prefix):].partition("-")[0]
            if name.startswith(prefix) and pid.isdigit() and \
                    not os.path.exists(f"/proc/{pid}"):
                path = os.path.join(base, name)
                if not os.path.ismount(path):
                    shutil.rmtree(path, ignore_errors=True)
    return tempfile.mkdtemp(prefix=f"{prefix}{os.getpid()}-", dir=base)


@contextlib.contextmanager
def scratch(prefix: str, base: str | None = None) -> Iterator[str]:
    """``scratch_dir``, removed at the end."""
    import shutil

    path = scratch_dir(prefix, base)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
