"""Docker's boolean flags: ``--rm``, ``--rm=true`` and ``--rm=false`` all work, and a bare
flag never takes the next word as its value (``build --pull CONTEXT``, ``commit -p CTR``).
argparse has no such kind: the flag is a store_true plus a hidden negative twin, and the
verb's parser rewrites ``--flag=VALUE`` into one of the two before parsing.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

_TRUE = ("1", "t", "true")     # Go's strconv.ParseBool, case-insensitive here
_FALSE = ("0", "f", "false")


def docker_bool(p: argparse.ArgumentParser, *names: str, default: bool,
                help: str | None = None) -> None:
    long = next(n for n in names if n.startswith("--"))
    dest = long[2:].replace("-", "_")
    negative = f"--shale-not-{long[2:]}"
    p.add_argument(*names, dest=dest, action="store_true", default=default, help=help)
    p.add_argument(negative, dest=dest, action="store_false", help=argparse.SUPPRESS)
    table: dict[str, tuple[str, str]] = p.__dict__.setdefault("docker_bools", {})
    for n in names:
        table[n] = (n, negative)


def rewrite(p: argparse.ArgumentParser, args: Sequence[str]) -> list[str]:
    """``--flag=VALUE`` of a docker_bool flag as the flag or its negative twin."""
    table: dict[str, tuple[str, str]] = p.__dict__.get("docker_bools", {})
    if not table:
        return list(args)
    out: list[str] = []
    for a in args:
        if a == "--":
            out += args[len(out):]
            break
        name, eq, value = a.partition("=")
        if eq and name in table:
            v = value.lower()
            if v not in _TRUE + _FALSE:
                p.error(f'invalid argument "{value}" for "{name}" flag: strconv.ParseBool: '
                        f'parsing "{value}": invalid syntax')
            out.append(table[name][0] if v in _TRUE else table[name][1])
        else:
            out.append(a)
    return out
