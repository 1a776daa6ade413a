"""``shale build``: docker's classic builder output over ``shale.build``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shale.cli.flags import docker_bool
from shale.errors import InvalidArgument

if TYPE_CHECKING:
    from typing import BinaryIO

    from shale.build.output import Output
    from shale.build.secrets import Session
    from shale.engine import Engine


def register(sub: argparse._SubParsersAction[Any]) -> None:
    p = sub.add_parser("build", help="build an image from a Dockerfile")
    p.add_argument("-t", "--tag", action="append", default=[])
    p.add_argument("-f", "--file", default=None)
    p.add_argument("--build-arg", action="append", default=[])
    p.add_argument("--target", default="")
    docker_bool(p, "--no-cache", default=False)
    docker_bool(p, "--pull", default=False)
    docker_bool(p, "-q", "--quiet", default=False)
    p.add_argument("--iidfile", default=None)
    p.add_argument("--label", action="append", default=[])
    p.add_argument("--network", default="default")
    docker_bool(p, "--rm", default=True)
    docker_bool(p, "--force-rm", default=False)
    p.add_argument("--progress", default="auto", choices=["auto", "plain", "tty"])
    p.add_argument("--explain", action="store_true",
                   help="say why each step missed the cache")
    p.add_argument("--platform", default="")
    p.add_argument("-o", "--output", default=None, metavar="DIR|-|type=...,dest=...",
                   help="also export: a directory, a tar, or an archive (BuildKit's -o)")
    # what RUN steps' containers get, as docker's builder passes them on
    p.add_argument("--add-host", action="append", default=[], metavar="HOST:IP")
    p.add_argument("--ulimit", action="append", default=[])
    p.add_argument("-m", "--memory", default="")
    p.add_argument("--memory-swap", default="")
    p.add_argument("-c", "--cpu-shares", default="")
    p.add_argument("--cpuset-cpus", default="")
    p.add_argument("--cpu-period", default="")
    p.add_argument("--cpu-quota", default="")
    # accepted for docker's command lines, nothing to do here (one store, no daemon)
    p.add_argument("--cache-from", action="append", default=[], help=argparse.SUPPRESS)
    p.add_argument("--isolation", default="", help=argparse.SUPPRESS)
    docker_bool(p, "--load", default=False)
    docker_bool(p, "--compress", default=False)
    docker_bool(p, "--disable-content-trust", default=True)
    p.add_argument("--secret", action="append", default=[],
                   help="id=ID[,src=PATH|env=VAR]: for RUN --mount=type=secret")
    p.add_argument("--ssh", action="append", default=[],
                   help="default|ID=SOCKET: an ssh agent for RUN --mount=type=ssh")
    p.add_argument("context", metavar="PATH|-")
    p.set_defaults(handler=cmd_build)


def _pairs(items: list[str]) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for a in items:
        k, sep, v = a.partition("=")
        out[k] = v if sep else None
    return out


def _session(ns: argparse.Namespace) -> Session | None:
    if not ns.secret and not ns.ssh:
        return None
    from shale.build.secrets import Session, parse_secret, parse_ssh

    return Session({(s := parse_secret(x)).id: s for x in ns.secret},
                   dict(parse_ssh(x) for x in ns.ssh))


def _run_options(ns: argparse.Namespace) -> dict[str, Any]:
    """The RUN containers' limits and extra hosts, parsed as ``run`` parses them."""
    from shale.cli.run_cmds import parse_limits
    from shale.container_ops import parse_extra_host

    cpus = ""
    if ns.cpu_quota and ns.cpu_period:
        from fractions import Fraction

        try:
            cpus = str(float(Fraction(int(ns.cpu_quota), int(ns.cpu_period))))
        except (ValueError, ZeroDivisionError):
            raise InvalidArgument(f"invalid --cpu-quota/--cpu-period: {ns.cpu_quota}/"
                                  f"{ns.cpu_period}") from None
    out = parse_limits(argparse.Namespace(**{**vars(ns), "cpus": cpus, "pids_limit": ""}))
    out = {k: v for k, v in out.items() if v}
    if ns.add_host:  # a bad one fails before any step
        out["extra_hosts"] = [parse_extra_host(h) for h in ns.add_host]
    if ns.ulimit:
        out["ulimits"] = list(ns.ulimit)
    return out


def cmd_build(engine: Engine, ns: argparse.Namespace) -> int:
    from shale.build.output import parse as parse_output

    out = parse_output(ns.output) if ns.output else None
    if out is None or out.dest != "-":
        return _build(engine, ns, out, None)
    import contextlib

    stdout = sys.stdout.buffer  # the tar's; the build's own output goes to stderr
    with contextlib.redirect_stdout(sys.stderr):
        return _build(engine, ns, out, stdout)


def _build(engine: Engine, ns: argparse.Namespace, out: Output | None,
           stdout: BinaryIO | None) -> int:
    from shale.build import Builder, BuildFailed, BuildOptions
    from shale.build.context import Context, dockerfile_path, read_dockerfile
    from shale.dockerfile import parse
    from shale.refs import Reference

    tags = [Reference.parse(t).with_default_tag() for t in ns.tag]
    if ns.network not in ("default", "bridge", "host", "none") and \
            not ns.network.startswith("container:"):
        from shale.network.store import NetworkStore

        NetworkStore(engine).get(ns.network)  # an unknown network fails before any step
    stdin = sys.stdin.buffer
    if ns.context == "-":
        if ns.file == "-":
            raise InvalidArgument("invalid argument: can't use stdin for both build context "
                                  "and dockerfile")
        ctx = Context.from_tar(stdin, ns.file)
        df_path: Path | None = dockerfile_path(ctx.root, ns.file, inside=True)
    else:
        root = Path(ns.context)
        if not root.is_dir():
            raise InvalidArgument(f"unable to prepare context: path {ns.context!r} not found")
        df_path = None if ns.file == "-" else dockerfile_path(root.absolute(), ns.file)
        ctx = Context.open(root, df_path)
    try:
        df = parse(read_dockerfile(df_path, stdin),
                   "Dockerfile" if df_path is None else df_path.name)
        if not ns.quiet:  # in the build output, as docker's daemon streams them
            for w in df.warnings:
                print(f"[WARNING]: {w}")
        opts = BuildOptions(tags=ns.tag, build_args=_pairs(ns.build_arg), target=ns.target,
                            no_cache=ns.no_cache, quiet=ns.quiet,
                            labels={k: v or "" for k, v in _pairs(ns.label).items()},
                            network=ns.network, rm=ns.rm,
                            force_rm=ns.force_rm,
                            explain=ns.explain or ns.progress == "plain",
                            platform=ns.platform, session=_session(ns),
                            pull=ns.pull, run_options=_run_options(ns))
        try:
            image = Builder(engine, ctx, df, opts).build()
        except BuildFailed as e:
            return _failed(e, ns.quiet)
    finally:
        ctx.close()
    for t in tags:
        engine.images.tag(image.id, t)
    if out is not None:
        from shale.build.output import export

        export(engine, image, out, [str(t) for t in tags], stdout)
    if ns.iidfile:
        Path(ns.iidfile).write_text(image.id.value)
    if ns.quiet:
        print(image.id.value)
        return 0
    print(f"Successfully built {image.id.short}")
    for t in tags:
        print(f"Successfully tagged {t.familiar}")
    return 0


def _failed(e: Exception, quiet: bool) -> int:
    """docker's message for a failed RUN (no ``Error:`` prefix), then where to debug it."""
    from shale.build import BuildFailed

    assert isinstance(e, BuildFailed)
    sys.stdout.flush()
    if quiet and e.output:
        sys.stderr.buffer.write(e.output)
        sys.stderr.flush()
    print(str(e), file=sys.stderr)
    if e.image:
        short = e.image.removeprefix("sha256:")[:12]
        print(f"The last good step is image {short} (debug it: shale run -it {short} sh); "
              f"the failed step's container {e.container[:12]} is kept unless --force-rm.",
              file=sys.stderr)
    return e.exit_code
