"""The instruction executors: what each Dockerfile instruction does to a stage.

Every executor builds the step's ``StepInputs`` (its cache key material), asks the builder
to ``probe`` the cache, and on a miss does the work and ``publish``es the step's image.
Builder-side ``$VAR`` expansion uses the stage's ARGs overridden by its ENV, and only in
the instructions BuildKit expands (ADD, COPY, ENV, EXPOSE, FROM, LABEL, STOPSIGNAL, USER,
VOLUME, WORKDIR, ARG defaults, ``--chown``/``--chmod``/``--mount`` values, unquoted
heredoc bodies of COPY/ADD).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import posixpath
from typing import TYPE_CHECKING

from shale.build import history as hist
from shale.build.cache import StepInputs
from shale.build.context import Context, Inline, Source
from shale.dockerfile import Heredoc, Instruction, Lexer
from shale.dockerfile.syntax import parse_heredoc
from shale.errors import DockerfileError

if TYPE_CHECKING:
    from shale.build.builder import Builder, StageState
    from shale.build.remote import Download


def dispatch(b: Builder, st: StageState, instr: Instruction) -> None:
    cmd = instr.cmd
    if cmd == "arg":
        arg(b, st, instr)
    elif cmd == "run":
        run(b, st, instr)
    elif cmd in ("copy", "add"):
        copy(b, st, instr)
    elif cmd == "workdir":
        workdir(b, st, instr)
    elif cmd == "maintainer":
        st.base = {**st.base, "author": instr.args[0]}
        commit_meta(b, st, instr.original, f"MAINTAINER {instr.args[0]}", cmd)
    elif cmd == "from":
        raise DockerfileError("FROM is not allowed here")
    else:
        meta(b, st, instr)


def commit_meta(b: Builder, st: StageState, line: str, text: str, kind: str) -> None:
    """A metadata step: probe ``SHELL #(nop)  TEXT``, else publish an empty-layer image."""
    created_by = f"{' '.join(st.shell)} #(nop)  {text}"
    extra = {"cmd_set": str(st.cmd_set)} if kind == "entrypoint" else {}
    inputs = StepInputs(kind, line, created_by, extra=extra)
    key, hit = b.probe(st, inputs)
    if hit is None:
        b.publish(st, key, inputs, created_by, hist.nop_probe(st.shell, text), None)


# ---- metadata ------------------------------------------------------------------------------
def meta(b: Builder, st: StageState, instr: Instruction) -> None:
    from shale.dockerfile import apply_config_change

    env = b.env(st)
    env_list = [f"{k}={v}" for k, v in env.items()]
    trial = json.loads(json.dumps(st.config))
    saved_env = list(trial.get("Env") or [])
    trial["Env"] = env_list  # apply_config_change expands with the config's Env
    apply_config_change(trial, instr, escape=b.df.escape, cmd_set=st.cmd_set)
    trial["Env"] = saved_env
    cmd = instr.cmd
    word = b.lex.process_word
    if cmd == "env":
        for k, v in instr.pairs():
            key, value = word(k, env_list), word(v, env_list)
            at = [i for i, e in enumerate(saved_env) if e.partition("=")[0] == key]
            if at:  # replaced in place, as docker does
                saved_env[at[0]] = f"{key}={value}"
            else:
                saved_env.append(f"{key}={value}")
        trial["Env"] = saved_env
    if cmd == "cmd":
        st.cmd_set = True
        if not instr.args:
            trial["Cmd"] = []  # docker keeps CMD [] as an empty list, not null
    if cmd == "healthcheck":
        old = (st.config.get("Healthcheck") or {}).get("Test") or []
        if old and old[0] != "NONE":
            b.say(f"Note: overriding previous HEALTHCHECK: {hist.go_v_list(old)}")
    st.config = trial
    commit_meta(b, st, instr.original, _meta_text(b, instr, trial, env_list), cmd)


def _meta_text(b: Builder, instr: Instruction, config: dict[str, object],
               env: list[str]) -> str:
    cmd = instr.cmd
    word = b.lex.process_word
    if cmd in ("cmd", "entrypoint"):
        value = config.get(cmd.capitalize()) or []
        assert isinstance(value, list)
        return f"{cmd.upper()} {hist.go_q_list(value)}"
    if cmd in ("env", "label"):
        return cmd.upper() + "".join(f" {word(k, env)}={word(v, env)}"
                                     for k, v in instr.pairs())
    if cmd == "expose":
        # moby sorts the words as written, then expands them
        return "EXPOSE " + " ".join(w for a in sorted(instr.args)
                                    for w in b.lex.process_words(a, env))
    if cmd == "volume":
        return "VOLUME " + hist.go_v_list([word(v, env) for v in instr.args])
    if cmd in ("user", "stopsignal"):
        return f"{cmd.upper()} {word(instr.args[0], env)}"
    if cmd == "healthcheck":
        hc = config.get("Healthcheck")
        assert isinstance(hc, dict)
        return hist.healthcheck_text(hc)
    if cmd == "shell":
        return "SHELL " + hist.go_v_list(list(instr.args))
    if cmd == "onbuild":
        return "ONBUILD " + instr.args[0]
    raise DockerfileError(f"unknown instruction: {cmd.upper()}")


def arg(b: Builder, st: StageState, instr: Instruction) -> None:
    """ARG: in scope to the end of the stage; value = --build-arg, else the default, else
    the global (pre-FROM) value of the same name. History shows the Dockerfile default."""
    from shale.build.builder import arg_decls

    env = b.env(st)
    parts = []
    for key, default in arg_decls(instr):
        st.declared[key] = None
        dflt = b.expand_word(instr, default, env) if default is not None else None
        value = b.build_arg(key)
        if value is None:
            value = dflt if dflt is not None else b.meta.get(key)
        if value is not None:
            st.args[key] = value
            if key not in {e.partition("=")[0] for e in st.config.get("Env") or []}:
                env[key] = value
        parts.append(key if dflt is None else f"{key}={dflt}")
    commit_meta(b, st, instr.original, "ARG " + " ".join(parts), "arg")


# ---- WORKDIR -------------------------------------------------------------------------------
def workdir(b: Builder, st: StageState, instr: Instruction) -> None:
    """WORKDIR: a layer creating the directory (root-owned 0755, as the classic builder
    makes it) when the image lacks it, else an empty layer."""
    from shale.build.copy import mkdir_layer
    from shale.build.imaging import image_view, resolve_in
    from shale.dockerfile._go import clean_path

    path = b.expand_word(instr, instr.args[0], b.env(st))
    if not path:
        raise DockerfileError("cannot normalize nothing")
    cur = st.config.get("WorkingDir") or ""
    new = clean_path(path if path.startswith("/") else f"/{cur}/{path}")
    st.config["WorkingDir"] = new
    text = f"WORKDIR {new}"
    created_by = f"{' '.join(st.shell)} #(nop) {text}"
    inputs = StepInputs("workdir", instr.original, text)
    key, hit = b.probe(st, inputs)
    if hit is not None:
        return
    layer = None
    with image_view(b.engine, st.image) as view:
        real, found = resolve_in(view, new)
        if found is None:
            layer = mkdir_layer(b.engine, view, real)
    b.publish(st, key, inputs, created_by, hist.nop_probe_one(st.shell, text), layer)


# ---- COPY / ADD ----------------------------------------------------------------------------
_UNSUPPORTED = ("keep-git-dir",)


def copy(b: Builder, st: StageState, instr: Instruction) -> None:
    from shale.build.context import summary
    from shale.build.imaging import image_view

    for name in _UNSUPPORTED:
        if name in instr.flags:
            raise DockerfileError(f"{instr.keyword} --{name} is not supported yet")
    env = b.env(st)
    raw_srcs, raw_dest = instr.args[:-1], instr.args[-1]
    dest = b.expand_word(instr, raw_dest, env)
    docs = list(instr.heredocs)
    inline: list[Inline] = []
    srcs: list[str] = []
    for raw in raw_srcs:
        if parse_heredoc(raw) is not None and docs:
            inline.append(_inline(docs.pop(0), env))
        else:
            srcs.append(b.expand_word(instr, raw, env))
    _check_remote(instr, srcs)
    urls = [x for x in srcs if _is_remote(x)]
    srcs = [x for x in srcs if not _is_remote(x)]
    chown = b.expand_word(instr, instr.flag("chown"), env)
    chmod = b.expand_word(instr, instr.flag("chmod"), env)
    ref = instr.flag("from")
    extract = instr.cmd == "add" and instr.flag("unpack") != "false"
    workdir = st.config.get("WorkingDir") or ""
    with contextlib.ExitStack() as stack:
        src_id = ""
        ctx = b.ctx
        if ref:
            img = b.stage_image(ref, st)
            src_id = img.id.value if img is not None else "scratch"
            view = stack.enter_context(image_view(b.engine, img))
            ctx = Context(view, owned=True) if view is not None else _empty_context(stack)
        what = f"{instr.keyword} failed"
        excludes = [b.expand_word(instr, x, env) for x in instr.flags.get("exclude", [])]
        if excludes:
            ctx = ctx.excluding(excludes)
        parents = instr.flag("parents").lower() == "true"
        placed: dict[str, tuple[str, str]] = {}  # --parents: source -> (pivot, path below)
        sources: list[Source] = [s for src in srcs
                                 for s in _lookup(ctx, src, what, placed if parents else None)]
        downloads = _download(urls, instr.flag("checksum"), stack)
        text = hist.copy_text(instr.cmd, summary(ctx, sources, inline,
                                                 [d.hash for d in downloads]),
                              dest, chown, chmod)
        files = ctx.file_sums(sources) | {d.url: d.digest for d in downloads}
        files |= {f"<<{d.name}": hashlib.sha256(d.data).hexdigest() for d in inline}
        inputs = StepInputs(instr.cmd, instr.original, text, files=files,
                            extra={"from": src_id, "workdir": workdir,
                                   "unpack": str(extract)}
                            | ({"exclude": "\n".join(excludes)} if excludes else {})
                            | ({"parents": repr(sorted(placed.values()))} if parents else {}))
        key, hit = b.probe(st, inputs)
        if hit is not None:
            return
        from shale.build.copy import CopyPlan, parse_chmod, plan_layer, write_layer
        from shale.build.imaging import lookup_ids

        plan = CopyPlan(instr.cmd, ctx, sources, dest, workdir, None,
                        parse_chmod(chmod) if chmod else None, bool(ref) and not chown,
                        inline, extract, [d.source for d in downloads],
                        placed if parents else None)
        with image_view(b.engine, st.image) as dest_view:
            if chown:
                plan.chown = lookup_ids(dest_view, chown)
            layer = write_layer(b.engine, plan_layer(plan, dest_view))
        created_by = f"{' '.join(st.shell)} #(nop) {text}"
        b.publish(st, key, inputs, created_by, hist.nop_probe_one(st.shell, text), layer)


def _lookup(ctx: Context, src: str, what: str, placed: dict[str, tuple[str, str]] | None
            ) -> list[Source]:
    """A source's matches; with ``--exclude``, those a wildcard matched are dropped when
    the patterns match their path (a source named in full is always copied). With
    ``--parents`` (``placed``), each match's path below the pivot (``/./``, else the
    root) is recorded: it keeps that path under the destination, as ``cp --parents``."""
    pivot = ""
    if placed is not None:
        head, sep, tail = src.lstrip("/").removeprefix("./").partition("/./")
        if sep:
            pivot, src = posixpath.normpath("/" + head).lstrip("/"), f"{head}/{tail}"
    found = ctx.lookup_paths(src, what, doublestar=placed is not None)
    if ctx.exclude is not None and any(c in src for c in "*?["):
        found = [(m, s) for m, s in found if not ctx.exclude.matches(m)]
        if not found:
            raise DockerfileError(f"{what}: no source files were specified")
    if placed is not None:
        for matched, s in found:
            placed[s.rel] = pivot, posixpath.relpath(matched, pivot) if pivot else matched
    return [s for _, s in found]


def _inline(doc: Heredoc, env: dict[str, str]) -> Inline:
    data = doc.body
    if doc.expand:
        # BuildKit expands a COPY heredoc as raw text: quotes are not processed
        data = Lexer("\\", skip_process_quotes=True).process_word(data, env)
    return Inline(doc.name, data.encode())


def _empty_context(stack: contextlib.ExitStack) -> Context:
    import tempfile
    from pathlib import Path

    return Context(Path(stack.enter_context(tempfile.TemporaryDirectory())), owned=True)


def _is_remote(src: str) -> bool:
    return src.startswith(("http://", "https://"))


def _check_remote(instr: Instruction, srcs: list[str]) -> None:
    for s in srcs:
        remote = _is_remote(s)
        git = s.startswith(("git@", "git://")) or (remote and s.split("#")[0].endswith(".git"))
        if instr.cmd == "copy" and (remote or git):
            raise DockerfileError(f"source can't be a URL for COPY: {s}")
        if git:
            raise DockerfileError(f"ADD {s}: git sources are not supported (clone the "
                                  "repository into the build context and COPY it)")
    if instr.flag("checksum") and not (srcs and all(_is_remote(s) for s in srcs)):
        raise DockerfileError("checksum can't be specified for non-HTTP(S) sources")


def _download(urls: list[str], checksum: str, stack: contextlib.ExitStack) -> list[Download]:
    if not urls:
        return []
    from pathlib import Path

    from shale.build.remote import fetch
    from shale.fileutil import scratch

    tmp = Path(stack.enter_context(scratch("shale-remote-")))
    return [fetch(u, tmp, checksum) for u in urls]


# ---- RUN -----------------------------------------------------------------------------------
def run(b: Builder, st: StageState, instr: Instruction) -> None:
    from shale.build.builder import PROXY_ARGS, run_failed
    from shale.build.runspec import command, parse_mount

    if st.image is None:
        raise DockerfileError("RUN needs an image to run in: this stage is still empty "
                              "(FROM scratch)")
    security = instr.flag("security")
    if security not in ("", "sandbox"):
        raise DockerfileError(f"RUN --security={security} is not supported")
    if instr.flag("network") not in ("", "default", "none", "host"):
        raise DockerfileError(f"unsupported network mode \"{instr.flag('network')}\"")
    network = instr.flag("network") or b.opts.network
    env = b.env(st)
    mounts = [parse_mount(m, lambda w: b.expand_word(instr, w, env))
              for m in instr.flags.get("mount", [])]
    cmd = command(instr, st.shell)
    env_keys = {e.partition("=")[0] for e in st.config.get("Env") or []}
    allowed = {k: v for k, v in st.args.items() if k not in env_keys}
    proxies = {k: v for k in sorted(PROXY_ARGS) if k not in allowed and k not in env_keys
               and (v := b.build_arg(k)) is not None}
    created_by, probe_cmd = hist.run_text([f"{k}={v}" for k, v in allowed.items()],
                                          bool(allowed or proxies), cmd.argv)
    extra = {"network": network, "mounts": ";".join(m.key() for m in mounts)}
    if cmd.script is not None:
        extra["script"] = hashlib.sha256(cmd.script[1]).hexdigest()
    inputs = StepInputs("run", instr.original, " ".join(cmd.argv), args=allowed, extra=extra)
    key, hit = b.probe(st, inputs)
    if hit is not None:
        return
    from shale.build.run import RunRequest, execute, remove_container

    req = RunRequest(st.image, cmd, [f"{k}={v}" for k, v in {**allowed, **proxies}.items()],
                     network, st.config.get("WorkingDir") or "", mounts, b.ctx,
                     lambda ref: b.stage_image(ref, st), b.opts.quiet, adopt=b.opts.rm,
                     session=b.opts.session, options=b.opts.run_options)
    res = execute(b.engine, req)
    if res.code != 0:
        # a kept container would keep a secret variable in its config: not that one
        if b.opts.force_rm or any(m.type == "secret" and m.env for m in mounts):
            b.say(f"Removing intermediate container {res.container[:12]}")
            remove_container(b.engine, res.container)
        raise run_failed(cmd.argv, res.code, st.image, res.container, res.output)
    if b.opts.rm:
        b.say(f"Removing intermediate container {res.container[:12]}")
        b.reaper.remove(res.container)
    b.publish(st, key, inputs, created_by, probe_cmd, res.layer, res.container)
