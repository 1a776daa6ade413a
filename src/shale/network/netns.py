"""Per-container network namespaces, pinned by a bind mount of their nsfs file.

No fork and no ``ip netns``: the calling process ``unshare(CLONE_NEWNET)``s, opens a netlink
socket there (a socket keeps working in the namespace it was made in), bind-mounts
``/proc/thread-self/ns/net`` on the pin file, and ``setns`` back to the namespace it came
from. Unsharing only the network namespace is allowed in a threaded process too, and it
touches nothing but the calling thread. Both runtimes then join the namespace by path
(``{"type": "network", "path": ...}`` in config.json).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from shale.network.netlink import Netlink
from shale.runtime import linux

LOOPBACK_INDEX = 1  # lo is the first link of every new namespace


@contextlib.contextmanager
def _host_return() -> Iterator[None]:
    """Whatever happens inside, the thread ends up back in the namespace it started in."""
    host = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        yield
    finally:
        try:
            linux.setns(host, linux.CLONE_NEWNET)
        finally:
            os.close(host)


def create(path: Path) -> tuple[int, Netlink]:
    """A new network namespace with ``lo`` up, pinned at ``path`` (which must not exist).
    Returns an fd of the namespace and a netlink socket inside it; the caller closes both."""
    path.parent.mkdir(parents=True, exist_ok=True)
    os.close(os.open(path, os.O_RDONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o444))
    nl: Netlink | None = None
    try:
        with _host_return():
            linux.unshare(linux.CLONE_NEWNET)
            _disable_ipv6()
            nl = Netlink()
            nl.set_up(LOOPBACK_INDEX)
            linux.mount("/proc/thread-self/ns/net", str(path), None, linux.MS_BIND)
        return os.open(path, os.O_RDONLY | os.O_CLOEXEC), nl
    except BaseException:
        if nl is not None:
            nl.close()
        remove(path)
        raise


def _disable_ipv6() -> None:
    """As docker does for a network without IPv6: no link-local addresses, router
    solicitations or DAD on the container's interfaces (/proc/sys/net is the namespace of
    whoever opens it: ours, now)."""
    for conf in ("all", "default"):
        with contextlib.suppress(OSError), \
                open(f"/proc/sys/net/ipv6/conf/{conf}/disable_ipv6", "w") as f:
            f.write("1")


def open_netlink(path: str | Path) -> tuple[int, Netlink]:
    """An fd of the namespace pinned at ``path`` and a netlink socket inside it."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        with _host_return():
            linux.setns(fd, linux.CLONE_NEWNET)
            nl = Netlink()
    except BaseException:
        os.close(fd)
        raise
    return fd, nl


def remove(path: str | Path) -> None:
    """Unpin and delete; the namespace itself goes when its last process does."""
    with contextlib.suppress(OSError):
        linux.umount2(str(path), linux.MNT_DETACH)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def is_pinned(path: str | Path) -> bool:
    """True if ``path`` is a live namespace pin (a bind of an nsfs file), not a stale file
    left by a reboot or a crash between creating the file and mounting on it."""
    try:
        return os.stat(path).st_dev != os.stat(os.path.dirname(path)).st_dev
    except OSError:
        return False
