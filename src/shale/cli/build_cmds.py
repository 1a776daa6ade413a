"""``shale build``: docker's classic builder output over ``shale.build``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shale.errors import InvalidArgument

if TYPE_CHECKING:
    from shale.engine import Engine


def register(sub: argparse._SubParsersAction[Any]) -> None:
    p = sub.add_parser("build", help="build an image from a Dockerfile")
    p.add_argument("-t", "--tag", action="append", default=[])
    p.add_argument("-f", "--file", default=None)
    p.add_argument("--build-arg", action="append", default=[])
    p.add_argument("--target", default="")
    p.add_argument("--no-cache", action="store_true")
    p.add_argument("--pull", nargs="?", const="true", default="false")
    p.add_argument("-q", "--quiet", action="store_true")
    p.add_argument("--iidfile", default=None)
    p.add_argument("--label", action="append", default=[])
    p.add_argument("--network", default="default")
    p.add_argument("--rm", nargs="?", const="true", default="true")
    p.add_argument("--force-rm", action="store_true")
    p.add_argument("--progress", default="auto")
    p.add_argument("--explain", action="store_true")
    p.add_argument("--platform", default=None)
    p.add_argument("context", metavar="PATH|-")
    p.set_defaults(handler=cmd_build)


def cmd_build(engine: Engine, ns: argparse.Namespace) -> int:
    from shale.build import Builder, BuildOptions
    from shale.build.context import Context, open_dockerfile
    from shale.dockerfile import parse
    from shale.refs import Reference

    tags = [Reference.parse(t).with_default_tag() for t in ns.tag]
    args: dict[str, str | None] = {}
    for a in ns.build_arg:
        k, sep, v = a.partition("=")
        args[k] = v if sep else None
    labels = dict(x.partition("=")[::2] for x in ns.label)
    if ns.context == "-":
        if ns.file == "-":
            raise InvalidArgument("invalid argument: can't use stdin for both build context "
                                  "and dockerfile")
        ctx = Context.from_tar(sys.stdin.buffer)
    else:
        root = Path(ns.context)
        if not root.is_dir():
            raise InvalidArgument(f"unable to prepare context: path {ns.context!r} not found")
        ctx = Context(root, Path(ns.file).name if ns.file and ns.file != "-" else "Dockerfile")
    try:
        text, fname = open_dockerfile(ctx.root, ns.file)
        df = parse(text, fname)
        opts = BuildOptions(tags=ns.tag, build_args=args, target=ns.target,
                            no_cache=ns.no_cache, quiet=ns.quiet, labels=labels,
                            network=ns.network, rm=ns.rm.lower() != "false",
                            force_rm=ns.force_rm, explain=ns.explain or ns.progress == "plain")
        image = Builder(engine, ctx, df, opts).build()
    finally:
        ctx.close()
    for t in tags:
        engine.images.tag(image.id, t)
    if ns.iidfile:
        Path(ns.iidfile).write_text(image.id.value)
    if ns.quiet:
        print(image.id.value)
        return 0
    print(f"Successfully built {image.id.short}")
    for t in tags:
        print(f"Successfully tagged {t.familiar}")
    return 0
