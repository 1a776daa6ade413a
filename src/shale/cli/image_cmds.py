"""Image verbs: images, tag, rmi, inspect, history, save, load, import, image prune,
system df|check|prune."""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import TYPE_CHECKING, Any, BinaryIO

from shale.errors import InvalidArgument, ShaleError

if TYPE_CHECKING:
    from shale.engine import Engine
    from shale.images import Image


def register(sub: argparse._SubParsersAction[Any]) -> None:
    _add_images(sub.add_parser("images", help="list images"))
    p = sub.add_parser("tag", help="create a tag TARGET that refers to SOURCE")
    p.add_argument("source")
    p.add_argument("target")
    p.set_defaults(handler=cmd_tag)
    _add_rmi(sub.add_parser("rmi", help="remove one or more images"))
    p = sub.add_parser("inspect", help="low-level information on images")
    p.add_argument("-f", "--format", default=None)
    p.add_argument("--type", default=None, choices=["image", "container"])
    p.add_argument("names", nargs="+", metavar="NAME")
    p.set_defaults(handler=cmd_inspect)
    _add_history(sub.add_parser("history", help="show the history of an image"))
    p = sub.add_parser("save", help="save images to a tar archive (stdout by default)")
    p.add_argument("-o", "--output", default=None)
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.set_defaults(handler=cmd_save)
    p = sub.add_parser("load", help="load images from a tar archive (stdin by default)")
    p.add_argument("-i", "--input", default=None)
    p.add_argument("-q", "--quiet", action="store_true")
    p.set_defaults(handler=cmd_load)
    p = sub.add_parser("import", help="import a rootfs tarball as a one-layer image")
    p.add_argument("-c", "--change", action="append", default=[])
    p.add_argument("-m", "--message", default="")
    p.add_argument("--platform", default=None)
    p.add_argument("file", metavar="file|-")
    p.add_argument("reference", nargs="?", default=None, metavar="REPOSITORY[:TAG]")
    p.set_defaults(handler=cmd_import)
    _add_image_group(sub.add_parser("image", help="manage images"))
    _add_system(sub.add_parser("system", help="manage shale"))


def _add_images(p: argparse.ArgumentParser) -> None:
    p.add_argument("-a", "--all", action="store_true")
    p.add_argument("-q", "--quiet", action="store_true")
    p.add_argument("--digests", action="store_true")
    p.add_argument("--no-trunc", action="store_true")
    p.add_argument("--format", default=None)
    p.add_argument("-f", "--filter", action="append", default=[])
    p.add_argument("repository", nargs="?", default=None)
    p.set_defaults(handler=cmd_images)


def _add_rmi(p: argparse.ArgumentParser) -> None:
    p.add_argument("-f", "--force", action="store_true")
    p.add_argument("--no-prune", action="store_true")
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.set_defaults(handler=cmd_rmi)


def _add_history(p: argparse.ArgumentParser) -> None:
    p.add_argument("--no-trunc", action="store_true")
    p.add_argument("-q", "--quiet", action="store_true")
    p.add_argument("-H", "--human", default="true")
    p.add_argument("--format", default=None)
    p.add_argument("image")
    p.set_defaults(handler=cmd_history)


def _add_image_group(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="image_verb", metavar="COMMAND")
    _add_images(sub.add_parser("ls", aliases=["list"], help="list images"))
    _add_rmi(sub.add_parser("rm", aliases=["remove"], help="remove images"))
    _add_history(sub.add_parser("history", help="show history"))
    q = sub.add_parser("inspect", help="inspect images")
    q.add_argument("-f", "--format", default=None)
    q.add_argument("names", nargs="+", metavar="NAME")
    q.set_defaults(handler=cmd_inspect, type="image")
    q = sub.add_parser("prune", help="remove dangling images")
    q.add_argument("-a", "--all", action="store_true")
    q.add_argument("-f", "--force", action="store_true")
    q.set_defaults(handler=cmd_image_prune)


def _add_system(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="system_verb", metavar="COMMAND")
    q = sub.add_parser("df", help="disk usage")
    q.add_argument("-v", "--verbose", action="store_true")
    q.add_argument("--format", default=None)
    q.set_defaults(handler=cmd_system_df)
    q = sub.add_parser("check", help="verify every blob and reference")
    q.set_defaults(handler=cmd_system_check)
    q = sub.add_parser("prune", help="remove unused data")
    q.add_argument("-a", "--all", action="store_true")
    q.add_argument("-f", "--force", action="store_true")
    q.set_defaults(handler=cmd_image_prune)


# ---- images ------------------------------------------------------------------------------
def _image_rows(engine: Engine, ns: argparse.Namespace) -> list[dict[str, Any]]:
    from shale.cli.table import human_duration_ago, human_size
    from shale.oci import parse_time
    from shale.refs import Reference, familiar_match

    now = time.time()
    rows: list[dict[str, Any]] = []
    filters = _parse_filters(ns.filter)
    for img in engine.list_images(all=ns.all):
        if not _image_matches(engine, img, filters):
            continue
        created = parse_time(img.config.created)
        nbytes = engine.image_size(img)
        size = human_size(nbytes)
        iid = img.id.value if ns.no_trunc else img.id.short
        base = {"ID": iid, "CreatedSince": human_duration_ago(created, now),
                "CreatedAt": _created_at(created), "Size": size,
                "VirtualSize": _human_size4(nbytes),
                "SharedSize": "N/A", "UniqueSize": "N/A", "Containers": "N/A"}
        digests = {Reference.parse(d).name: d.split("@", 1)[1] for d in img.repo_digests}
        refs = [Reference.parse(t) for t in img.tags]
        if ns.repository:
            refs = [r for r in refs if familiar_match(ns.repository, r)]
            if not refs:
                continue
        if not refs:
            for name, dg in digests.items():
                rows.append({**base, "Repository": Reference.parse(name).repository,
                             "Tag": "<none>", "Digest": dg})
            if not digests:
                rows.append({**base, "Repository": "<none>", "Tag": "<none>",
                             "Digest": "<none>"})
            continue
        for r in refs:
            rows.append({**base, "Repository": r.repository, "Tag": r.tag or "latest",
                         "Digest": digests.get(r.name, "<none>")})
    return rows


def _parse_filters(items: list[str]) -> dict[str, list[str]]:
    """docker's filter checks and messages: no '=' is a usage error of the flag (125); an
    unknown key or a dangling value other than true/false is refused by the engine."""
    from shale.cli import UsageError

    out: dict[str, list[str]] = {}
    for it in items:
        key, sep, value = it.partition("=")
        if not sep:
            raise UsageError(f'invalid argument "{it}" for "-f, --filter" flag: bad format '
                             "of filter (expected name=value)")
        if key not in ("dangling", "label", "reference", "before", "since"):
            raise InvalidArgument(f"Invalid filter '{key}'")
        out.setdefault(key, []).append(value)
    for v in out.get("dangling", []):
        if v not in ("true", "false"):
            raise InvalidArgument(f"Invalid filter 'dangling=[{' '.join(out['dangling'])}]'")
    return out


def _image_matches(engine: Engine, img: Image, filters: dict[str, list[str]]) -> bool:
    from shale.oci import parse_time
    from shale.refs import Reference, familiar_match

    for v in filters.get("dangling", []):
        # docker 20.10's images.go: =true looks only at images without children (Heads)
        # and drops tagged ones; =false drops every image without references
        if v == "true" and (img.tags or engine.images.children(img.id)):
            return False
        if v == "false" and not img.tags and not img.repo_digests:
            return False
    labels = img.config.config.get("Labels") or {}
    for v in filters.get("label", []):
        k, sep, val = v.partition("=")
        if k not in labels or (sep and labels[k] != val):
            return False
    pats = filters.get("reference", [])
    if pats and not any(familiar_match(p, Reference.parse(t)) for p in pats for t in img.tags):
        return False
    created = parse_time(img.config.created)
    for v in filters.get("before", []):
        if not created < parse_time(engine.image(v).config.created):
            return False
    for v in filters.get("since", []):
        if not created > parse_time(engine.image(v).config.created):
            return False
    return True


def _created_at(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S +0000 UTC", time.gmtime(ts))


def cmd_images(engine: Engine, ns: argparse.Namespace) -> int:
    rows = _image_rows(engine, ns)
    if ns.quiet:
        seen: list[str] = []
        for r in rows:
            if r["ID"] not in seen:
                seen.append(r["ID"])
        out = "\n".join(seen)
        if out:
            print(out)
        return 0
    if ns.format:
        _print_format(ns.format, rows, {"ID": "IMAGE ID", "CreatedSince": "CREATED",
                                        "CreatedAt": "CREATED AT"})
        return 0
    from shale.cli.table import render_table

    cols = ["REPOSITORY", "TAG"] + (["DIGEST"] if ns.digests else []) + \
        ["IMAGE ID", "CREATED", "SIZE"]
    table = [[r["Repository"], r["Tag"]] + ([r["Digest"]] if ns.digests else []) +
             [r["ID"], r["CreatedSince"], r["Size"]] for r in rows]
    sys.stdout.write(render_table(cols, table))
    return 0


def _print_format(template: str, rows: list[dict[str, Any]], headers: dict[str, str]) -> None:
    if template == "json":
        for r in rows:
            print(_go_json(r))
        return
    from shale.cli.format import render

    sys.stdout.write(render(template, rows, headers))


def _go_json(obj: Any) -> str:
    """``{{json .}}`` as Go's encoding/json writes it: map keys sorted, UTF-8 kept, and
    ``<``, ``>``, ``&``, U+2028, U+2029 escaped (so ``<none>`` is ``\\u003cnone\\u003e``)."""
    text = json.dumps(obj, separators=(",", ":"), sort_keys=True, ensure_ascii=False)
    for ch, esc in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"),
                    ("\u2028", "\\u2028"), ("\u2029", "\\u2029")):
        text = text.replace(ch, esc)
    return text


def _human_size4(size: float) -> str:
    """go-units ``HumanSize`` (4 significant digits): the CLI's VirtualSize column."""
    units = ("B", "kB", "MB", "GB", "TB", "PB", "EB", "ZB", "YB")
    value, unit = float(size), 0
    while value >= 1000.0 and unit < len(units) - 1:
        value /= 1000.0
        unit += 1
    return f"{value:.4g}{units[unit]}"


# ---- tag / rmi ---------------------------------------------------------------------------
def cmd_tag(engine: Engine, ns: argparse.Namespace) -> int:
    from shale.refs import Reference

    Reference.parse(ns.target)  # docker checks the new name before it looks the image up
    engine.tag(ns.source, ns.target)
    return 0


def cmd_rmi(engine: Engine, ns: argparse.Namespace) -> int:
    code = 0
    for name in ns.images:
        try:
            for kind, text in engine.remove_image(name, force=ns.force,
                                                  prune=not ns.no_prune):
                print(f"{kind}: {text}")
        except ShaleError as e:
            print(f"Error: {e}", file=sys.stderr)
            code = 1
    return code


# ---- inspect -----------------------------------------------------------------------------
def cmd_inspect(engine: Engine, ns: argparse.Namespace) -> int:
    from shale.cli.inspect_image import image_inspect

    out: list[dict[str, Any]] = []
    missing: list[str] = []
    for name in ns.names:
        try:
            if ns.type != "image":
                found = _try_container(engine, name)
                if found is not None:
                    out.append(found)
                    continue
            if ns.type == "container":
                raise ShaleError(name)
            out.append(image_inspect(engine, engine.image(name)))
        except ShaleError:
            missing.append(name)
    print_inspect(out, ns.format)
    for name in missing:
        print(f"Error: No such object: {name}", file=sys.stderr)
    return 1 if missing else 0


def print_inspect(out: list[dict[str, Any]], fmt: str | None) -> None:
    """docker inspect output: an indented JSON list, or the template once per object."""
    if fmt:
        from shale.cli.format import Template

        tpl = Template(fmt)
        for item in out:
            sys.stdout.write(tpl.execute(item) + "\n")
    else:
        print(json.dumps(out, indent=4, ensure_ascii=False))


def _try_container(engine: Engine, name: str) -> dict[str, Any] | None:
    from shale.cli.container_cmds import container_inspect
    from shale.containers import ContainerStore

    try:
        return container_inspect(engine, ContainerStore(engine).get(name))
    except ShaleError:
        return None


# ---- history -----------------------------------------------------------------------------
def cmd_history(engine: Engine, ns: argparse.Namespace) -> int:
    from shale.cli.table import human_duration_ago, human_size, render_table

    human = ns.human.lower() not in ("false", "0")
    now = time.time()
    rows = []
    for h in engine.history(ns.image):
        iid = h.id if ns.no_trunc or h.id == "<missing>" else h.id[7:19]
        created_by = h.created_by.replace("\t", " ")
        if not ns.no_trunc and len(created_by) > 45:
            created_by = created_by[:44] + "…"
        created_at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(h.created))
        # -H=false: docker shows the RFC 3339 time under "CREATED AT" and sizes in bytes
        rows.append({"ID": iid, "CreatedSince": human_duration_ago(h.created, now)
                     if human else created_at, "CreatedAt": created_at,
                     "CreatedBy": created_by, "Size": human_size(h.size) if human
                     else str(h.size), "Comment": h.comment})
    if ns.quiet:
        print("\n".join(r["ID"] for r in rows))
        return 0
    if ns.format:
        _print_format(ns.format, rows, {"ID": "IMAGE", "CreatedSince": "CREATED",
                                        "CreatedBy": "CREATED BY"})
        return 0
    cols = ["IMAGE", "CREATED" if human else "CREATED AT", "CREATED BY", "SIZE", "COMMENT"]
    table = [[r["ID"], r["CreatedSince"], r["CreatedBy"], r["Size"], r["Comment"]]
             for r in rows]
    sys.stdout.write(render_table(cols, table))
    return 0


# ---- save / load / import ----------------------------------------------------------------
def cmd_save(engine: Engine, ns: argparse.Namespace) -> int:
    from shale.cli.progress import Progress

    if ns.output is None:
        if sys.stdout.isatty():
            raise InvalidArgument("cowardly refusing to save to a terminal. Use the -o flag "
                                  "or redirect")
        with Progress("Saving") as prog:
            engine.save(ns.images, sys.stdout.buffer, prog.advance)
        return 0
    from shale.fileutil import atomic_output

    with atomic_output(ns.output) as f, Progress("Saving") as prog:
        engine.save(ns.images, f, prog.advance)
    return 0


def cmd_load(engine: Engine, ns: argparse.Namespace) -> int:
    from shale.cli.progress import Progress

    src: BinaryIO
    if ns.input is None:
        if sys.stdin.isatty():
            raise InvalidArgument("requested load from stdin, but stdin is empty")
        src = sys.stdin.buffer
        with Progress("Loading", quiet=ns.quiet) as prog:
            res = engine.load(src, prog.advance)
    else:
        with open(ns.input, "rb") as f, Progress("Loading", quiet=ns.quiet) as prog:
            res = engine.load(f, prog.advance)
    for line in res.lines:
        print(line)
    return 0


def cmd_import(engine: Engine, ns: argparse.Namespace) -> int:
    if ns.file == "-":
        image_id = engine.import_image(sys.stdin.buffer, ns.reference, ns.change, ns.message)
    else:
        try:
            f = open(ns.file, "rb")  # noqa: SIM115
        except OSError as e:
            raise InvalidArgument(f"open {ns.file}: {e.strerror}") from None
        with f:
            image_id = engine.import_image(f, ns.reference, ns.change, ns.message)
    print(image_id)
    return 0


# ---- prune / system ----------------------------------------------------------------------
def cmd_image_prune(engine: Engine, ns: argparse.Namespace) -> int:
    from shale.cli.table import human_size

    lines, reclaimed = engine.prune_images(all=ns.all)
    if lines:
        print("Deleted Images:")
        for kind, text in lines:
            print(f"{kind.lower()}: {text}")
        print()
    print(f"Total reclaimed space: {human_size(reclaimed)}")
    return 0


def cmd_system_df(engine: Engine, ns: argparse.Namespace) -> int:
    from shale.cli.table import human_size, render_table

    df = engine.system_df()
    pct = f" ({df['reclaimable'] * 100 // df['size']}%)" if df["size"] else ""
    rows = [["Images", str(df["images"]), str(df["active"]), human_size(df["size"]),
             human_size(df["reclaimable"]) + pct]]
    sys.stdout.write(render_table(["TYPE", "TOTAL", "ACTIVE", "SIZE", "RECLAIMABLE"], rows))
    return 0


def cmd_system_check(engine: Engine, ns: argparse.Namespace) -> int:
    problems = engine.check()
    for p in problems:
        print(p)
    if problems:
        print(f"{len(problems)} problem(s) found", file=sys.stderr)
        return 1
    print("no problems found")
    return 0
