"""``--user`` resolution against a container's own /etc/passwd and /etc/group, as docker
(runc's ``libcontainer/user.GetExecUser``) does it:

- ``""`` means uid 0; ``name`` or ``uid``, optionally ``:group`` or ``:gid``;
- a numeric uid or gid need not exist in the files (home is then ``/``, gid 0);
- an unknown *name* is an error: ``unable to find user NAME: no matching entries in passwd
  file`` (and the same for groups);
- supplementary groups are every /etc/group entry listing the user by name, and only when no
  group was given explicitly.

The files are read with ``openat2(RESOLVE_IN_ROOT)``: a container may plant
``/etc/passwd -> /host/file`` and must not make the engine read the host's file.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path
from typing import NamedTuple

from shale.errors import InvalidArgument
from shale.fsroot import Root

_MAX_SIZE = 16 << 20


class ExecUser(NamedTuple):
    uid: int
    gid: int
    additional_gids: list[int]
    home: str


class _Passwd(NamedTuple):
    name: str
    uid: int
    gid: int
    home: str


class _Group(NamedTuple):
    name: str
    gid: int
    members: list[str]


def read_in_root(rootfs: Path, relpath: str) -> bytes | None:
    """The file at ``relpath`` with symlinks resolved inside ``rootfs``; None if missing.
    (``fsroot.Root.read_file`` plus what a hostile image needs: a FIFO or device planted as
    /etc/passwd is never opened for reading, and the size is capped.)"""
    with Root(rootfs) as root:
        try:
            pfd = root.open(relpath, os.O_PATH)
        except OSError as e:
            if e.errno in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP):
                return None  # missing, or a link loop: as if the file were not there
            raise
    try:
        if not stat.S_ISREG(os.fstat(pfd).st_mode):
            return None
        fd = os.open(f"/proc/self/fd/{pfd}", os.O_RDONLY | os.O_CLOEXEC)
    finally:
        os.close(pfd)
    with open(fd, "rb") as f:
        return f.read(_MAX_SIZE)


def _fields(data: bytes | None, count: int) -> list[list[str]]:
    rows = []
    for raw in (data or b"").decode("utf-8", "replace").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split(":")
        rows.append(parts + [""] * (count - len(parts)))
    return rows


def _int(text: str) -> int | None:
    try:
        value = int(text)
    except ValueError:
        return None
    return value if 0 <= value < 2**31 else None


def parse_passwd(data: bytes | None) -> list[_Passwd]:
    out = []
    for f in _fields(data, 7):
        uid, gid = _int(f[2]), _int(f[3])
        if uid is not None:
            out.append(_Passwd(f[0], uid, gid or 0, f[5]))
    return out


def parse_group(data: bytes | None) -> list[_Group]:
    out = []
    for f in _fields(data, 4):
        gid = _int(f[2])
        if gid is not None:
            out.append(_Group(f[0], gid, [m for m in f[3].split(",") if m]))
    return out


def _find_user(users: list[_Passwd], arg: str) -> _Passwd | None:
    if arg == "":
        return next((u for u in users if u.uid == 0), None)
    uid = _int(arg)
    if uid is not None:  # a numeric argument is always a uid, never a name
        return next((u for u in users if u.uid == uid), None)
    return next((u for u in users if u.name == arg), None)


def resolve(passwd: bytes | None, group: bytes | None, spec: str) -> ExecUser:
    """Resolve ``spec`` against the contents of passwd and group (None: file missing)."""
    user_arg, _, group_arg = spec.partition(":")
    users = parse_passwd(passwd)
    found = _find_user(users, user_arg)
    if found is not None:
        uid, gid, home, name = found.uid, found.gid, found.home or "/", found.name
    else:
        numeric = _int(user_arg) if user_arg else 0
        if numeric is None:
            raise InvalidArgument(
                f"unable to find user {user_arg}: no matching entries in passwd file")
        uid, gid, home, name = numeric, 0, "/", ""
    groups = parse_group(group)
    if group_arg:
        gid_num = _int(group_arg)
        match = next((g for g in groups
                      if (g.gid == gid_num if gid_num is not None else g.name == group_arg)),
                     None)
        if match is None and gid_num is None:
            raise InvalidArgument(
                f"unable to find group {group_arg}: no matching entries in group file")
        gid = match.gid if match else int(group_arg)
        return ExecUser(uid, gid, [gid], home)  # docker: -u 1000:10 gives groups=10
    extra = [g.gid for g in groups if name and name in g.members] if name else []
    if gid not in extra:
        # measured on docker 20.10: `-u app` gives groups=10(wheel),1000(app): the
        # primary group follows the member groups in the supplementary list
        extra.append(gid)
    return ExecUser(uid, gid, extra, home)


def resolve_user(rootfs: Path, spec: str) -> ExecUser:
    """``docker run -u SPEC``: (uid, gid, supplementary gids, home) from the image's files."""
    return resolve(read_in_root(rootfs, "etc/passwd"), read_in_root(rootfs, "etc/group"), spec)


def home_of(passwd: bytes | None, uid: int) -> str:
    """HOME for a uid, as runc sets it when the process env has none: ``/`` if unknown."""
    return next((u.home or "/" for u in parse_passwd(passwd) if u.uid == uid), "/")
