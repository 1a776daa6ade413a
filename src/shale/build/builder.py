"""The builder: Dockerfile stages -> intermediate images, with docker's classic output and
a cache index in the store.

The language is BuildKit's (heredocs, ``--mount``, ``--chmod``, ARG inheritance between
stages, only the stages the target needs); the layer model, the intermediate images, the
history strings and the failure behaviour are the classic builder's:

- every step yields an image whose parent is the previous step's (a filesystem step one
  layer, a metadata step an ``empty_layer`` history entry), printed as `` ---> <id>``;
- a step's cache key is its parent's ID plus its inputs (``cache.StepInputs``); the first
  miss turns the cache off for the rest of the stage;
- a failed RUN leaves the last good step's image and the failed container, and the build
  exits with the RUN's code; nothing is tagged.

Instruction executors live in ``steps.py``; this module drives stages and the cache.
"""

from __future__ import annotations

import json
import os
import sys
from typing import TYPE_CHECKING, Any

from shale import oci
from shale.build import imaging
from shale.build.cache import CacheIndex, StepInputs
from shale.build.context import Context
from shale.dockerfile import Dockerfile, Instruction, Stage
from shale.errors import DockerfileError, InvalidArgument, NotFound, ShaleError
from shale.images import Image, LayerRecord
from shale.record import field, record

if TYPE_CHECKING:
    from shale.build.run import Reaper
    from shale.build.secrets import Session
    from shale.engine import Engine

PROXY_ARGS = frozenset(("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "FTP_PROXY",
                        "ftp_proxy", "NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy"))


def platform_args() -> dict[str, str]:
    """BuildKit's automatic platform args (global scope: usable in FROM, and in a stage
    once declared with ``ARG NAME``)."""
    os_name, arch = oci.host_platform()
    plat = f"{os_name}/{arch}"
    out: dict[str, str] = {}
    for prefix in ("TARGET", "BUILD"):
        out |= {f"{prefix}PLATFORM": plat, f"{prefix}OS": os_name, f"{prefix}ARCH": arch,
                f"{prefix}VARIANT": ""}
    return out


class BuildFailed(ShaleError):
    """A RUN returned non-zero: the build exits with its code, as docker's does.
    ``image`` is the last good step's image, ``container`` the failed step's container."""

    def __init__(self, message: str, code: int, image: str = "", container: str = "",
                 output: bytes = b"") -> None:
        super().__init__(message)
        self.exit_code = code
        self.image = image
        self.container = container
        self.output = output


@record
class BuildOptions:
    tags: list[str] = field(default_factory=list)
    build_args: dict[str, str | None] = field(default_factory=dict)
    target: str = ""
    no_cache: bool = False
    quiet: bool = False
    labels: dict[str, str] = field(default_factory=dict)
    network: str = "default"
    rm: bool = True
    force_rm: bool = False
    explain: bool = False
    platform: str = ""
    session: Session | None = None  # --secret, --ssh
    pull: bool = False               # --pull: fetch every base image anew
    run_options: dict[str, Any] = field(default_factory=dict)  # RUN containers' limits...


@record
class StageState:
    """One stage being built: its current image and the config being accumulated."""

    stage: Stage
    image: Image | None
    base: dict[str, Any]            # the current image's config data (or scratch's)
    config: dict[str, Any]          # its runtime config, changed by each step
    args: dict[str, str] = field(default_factory=dict)       # ARGs in scope, with a value
    declared: dict[str, None] = field(default_factory=dict)  # ARG names declared, in order
    cache_on: bool = True
    missed_at: int = 0
    cmd_set: bool = False
    base_desc: str = ""             # "the base image busybox (38b04571418f)", for --explain
    base_id: str = ""

    @property
    def shell(self) -> list[str]:
        return list(self.config.get("Shell") or ["/bin/sh", "-c"])

    @property
    def parent_id(self) -> str:
        return self.image.id.value if self.image is not None else ""


class Builder:
    def __init__(self, engine: Engine, ctx: Context, df: Dockerfile, opts: BuildOptions
                 ) -> None:
        self.engine = engine
        self.ctx = ctx
        self.df = df
        self.opts = opts
        from shale.dockerfile.checks import VarLexer

        self.lex = VarLexer(df.escape)
        self.index = CacheIndex(engine)
        self.built: dict[int, StageState] = {}
        self.consumed: set[str] = set()
        self.step_no = 0
        self.total = 0
        self.hide_ids = False  # while ONBUILD triggers run: only the last ID is printed
        self._reaper: Reaper | None = None

    # ---- output --------------------------------------------------------------------------
    def say(self, text: str) -> None:
        if not self.opts.quiet:
            print(text, flush=True)

    def where(self, instr: Instruction) -> str:
        return f"{self.df.filename}:{instr.line}"

    # ---- driver --------------------------------------------------------------------------
    def build(self) -> Image:
        try:
            return self._build()
        finally:
            if self._reaper is not None:
                self._reaper.wait()

    @property
    def reaper(self) -> Reaper:
        """Removes step containers in the background (made on first use: a build that runs
        nothing never imports the container machinery)."""
        if self._reaper is None:
            from shale.build.run import Reaper

            self._reaper = Reaper(self.engine)
        return self._reaper

    def _build(self) -> Image:
        from shale.build import steps
        from shale.dockerfile import checks

        cfg = checks.config(self.df.directives.get("check", ""),
                            self.opts.build_args.get("BUILDKIT_DOCKERFILE_CHECK"))
        found = checks.run(self.df, cfg)
        if found and cfg.error:
            raise checks.failure(self.df.filename, found)
        stages = self.needed_stages()
        self.total = sum(1 + len(s.instructions) for s in stages) + len(self.opts.labels)
        self.meta = self._meta_args()
        st: StageState | None = None
        for stage in stages:
            st = self._from(stage)
            for instr in stage.instructions:
                self.step(st, instr)
            if stage is stages[-1]:
                for k in sorted(self.opts.labels):
                    label = f"LABEL {k}={self.opts.labels[k]}"
                    self._count(label)
                    st.config["Labels"] = {**(st.config.get("Labels") or {}),
                                           k: self.opts.labels[k]}
                    steps.commit_meta(self, st, label, label, "label")
            self.built[stage.index] = st
        assert st is not None
        if st.image is None:
            raise DockerfileError("the build produced no image: a scratch stage with no "
                                  "filesystem step")
        unused = sorted(a for a in self.opts.build_args if a not in self.consumed
                        and a not in PROXY_ARGS and a != "BUILDKIT_DOCKERFILE_CHECK")
        if unused:
            self.say(f"[Warning] One or more build-args [{' '.join(unused)}] were not "
                     "consumed")
        late = checks.select(list(self.lex.found.values()), cfg)
        if late and cfg.error:  # known only now: the image is built, but not tagged
            raise checks.failure(self.df.filename, late)
        found = sorted(found + late, key=lambda v: v.line)
        if found and not self.opts.quiet:  # BuildKit's build checks, after the build
            print(checks.report(found), file=sys.stderr, flush=True)
        self.index.prune()
        return st.image

    def needed_stages(self) -> list[Stage]:
        """The target stage and, recursively, the stages it needs (BuildKit's rule; the
        classic builder builds every stage up to the target)."""
        stages = list(self.df.stages)
        if self.opts.target:
            idx = next((s.index for s in stages if s.name == self.opts.target.lower()), None)
            if idx is None:
                raise DockerfileError(f"failed to reach build target {self.opts.target} in "
                                      "Dockerfile")
            stages = stages[:idx + 1]
        needed = {stages[-1].index}
        for s in reversed(stages):
            if s.index in needed:
                needed.update(self._deps(s))
        return [s for s in stages if s.index in needed]

    def _deps(self, s: Stage) -> list[int]:
        refs = [s.base]
        for i in s.instructions:
            if i.cmd in ("copy", "add") and i.flag("from"):
                refs.append(i.flag("from"))
            for m in i.flags.get("mount", []) if i.cmd == "run" else []:
                refs += [f.partition("=")[2] for f in m.split(",")
                         if f.partition("=")[0].strip() == "from"]
        return [o.index for r in refs for o in self.df.stages
                if o.index < s.index and (o.name == r.lower() or str(o.index) == r)]

    def _count(self, text: str) -> None:
        self.step_no += 1
        self.say(f"Step {self.step_no}/{self.total} : {text}")

    # ---- args ----------------------------------------------------------------------------
    def build_arg(self, key: str) -> str | None:
        """The ``--build-arg`` value of ``key`` (``--build-arg K`` alone: from our env)."""
        if key not in self.opts.build_args:
            return None
        self.consumed.add(key)
        value = self.opts.build_args[key]
        return value if value is not None else os.environ.get(key)

    def _meta_args(self) -> dict[str, str]:
        env = platform_args()
        for instr in self.df.meta_args:
            for key, default in arg_decls(instr):
                value = self.build_arg(key)
                if value is None and default is not None:
                    value = self.expand_word(instr, default, env)
                if value is not None:
                    env[key] = value
                else:
                    env.pop(key, None)
        return env

    # ---- stages --------------------------------------------------------------------------
    def _from(self, stage: Stage) -> StageState:
        instr = stage.from_instruction
        self._count(instr.original)
        name = self.expand_word(instr, stage.base, self.meta)
        if not name:
            raise DockerfileError(f"{self.where(instr)}: base name ({stage.base}) should "
                                  "not be blank")
        self._check_platform(instr)
        prev = next((s for i, s in self.built.items() if s.stage.name == name.lower()
                     and i < stage.index), None)
        args: dict[str, str] = {}
        declared: dict[str, None] = {}
        if prev is not None:
            image, desc = prev.image, f"stage {prev.stage.name}"
            args, declared = dict(prev.args), dict(prev.declared)  # BuildKit inherits them
        elif name.lower() == "scratch":
            image, desc = None, "scratch"
        else:
            image = self._base_image(instr, name)
            desc = f"the base image {name}"
        base = dict(image.config.data) if image is not None else imaging.scratch_data()
        st = StageState(stage, image, base, imaging.stage_config(base), args, declared,
                        base_desc=f"{desc} ({image.id.short if image else 'empty'})",
                        base_id=image.id.value if image else "")
        st.cache_on = not self.opts.no_cache
        triggers = list(st.config.get("OnBuild") or [])
        st.config["OnBuild"] = None
        if triggers:
            self._onbuild(st, triggers)
        self.say(f" ---> {st.image.id.short}" if st.image is not None else " ---> ")
        return st

    def _base_image(self, instr: Instruction, name: str) -> Image:
        """The stage's base from the store, pulled from its registry when it is not there
        (or always, with ``--pull``), as docker's builder does."""
        try:
            return self._image(name)
        except ShaleError as e:
            raise DockerfileError(f"{self.where(instr)}: {name}: not in this store, and "
                                  f"pulling it failed: {e}") from None

    def _image(self, name: str) -> Image:
        if not self.opts.pull:
            try:
                return self.engine.image(name)
            except NotFound:
                pass
        from shale.refs import Reference
        from shale.registry_http import insecure_from_config

        ref = Reference.parse(name)
        if ref.digest is None:
            ref = ref.with_default_tag()
        self.say(f"{ref.tag or ref.digest}: Pulling from {ref.path}")
        result = self.engine.pull(ref, platform=self.opts.platform or None,
                                  insecure=tuple(insecure_from_config(self.engine.root)))[0]
        news = "Image is up to date" if result.up_to_date else "Downloaded newer image"
        self.say(f"Digest: {result.repo_digest.rpartition('@')[2]}")
        self.say(f"Status: {news} for {ref.familiar}")
        return self.engine.image(str(ref))

    def _check_platform(self, instr: Instruction) -> None:
        want = instr.flag("platform") or self.opts.platform
        if not want:
            return
        value = self.expand_word(instr, want, self.meta)
        os_name, arch = oci.host_platform()
        if value.split("/")[:2] != [os_name, arch]:
            raise DockerfileError(f"{self.where(instr)}: platform {value} is not supported "
                                  f"here: shale builds for {os_name}/{arch} only")

    def _onbuild(self, st: StageState, triggers: list[str]) -> None:
        from shale.dockerfile import parse

        self.say(f"# Executing {len(triggers)} build trigger"
                 f"{'s' if len(triggers) > 1 else ''}")
        self.hide_ids = True
        try:
            for t in triggers:
                try:
                    instrs = parse(f"FROM scratch\n{t}", "ONBUILD").stages[0].instructions
                except DockerfileError as e:
                    raise DockerfileError(f"ONBUILD trigger {t!r} of the base image: {e}"
                                          ) from None
                for instr in instrs:
                    self.step(st, instr, counted=False)
        finally:
            self.hide_ids = False

    # ---- one step ------------------------------------------------------------------------
    def step(self, st: StageState, instr: Instruction, counted: bool = True) -> None:
        from shale.build import steps

        if counted:
            self._count(instr.original)
        self.lex.current = instr
        self.lex.known = set(st.declared) | PROXY_ARGS
        try:
            steps.dispatch(self, st, instr)
        except BuildFailed:
            raise
        except InvalidArgument as e:  # Dockerfile errors, and expansion errors (${v:?})
            text = str(e)
            if not text.startswith((f"{self.df.filename}:", "ONBUILD")):
                text = f"{self.where(instr)}: {text}"
            raise DockerfileError(text) from None
        finally:
            self.lex.current = None

    def env(self, st: StageState) -> dict[str, str]:
        """What builder-side expansion sees: the stage's ARGs, overridden by its ENV."""
        env = dict(st.args)
        for e in st.config.get("Env") or []:
            k, _, v = e.partition("=")
            env[k] = v
        return env

    def expand_word(self, instr: Instruction, word: str, env: dict[str, str]) -> str:
        from shale.dockerfile import ExpansionError

        try:
            return self.lex.process_word(word, env)
        except ExpansionError as e:
            raise DockerfileError(f"{self.where(instr)}: {e}") from None

    # ---- cache and commit ----------------------------------------------------------------
    def probe(self, st: StageState, inputs: StepInputs) -> tuple[str, Image | None]:
        """The step's key, and its cached image (printed and made current) if there is one;
        on a miss the cache goes off for the rest of the stage (and ``--explain`` says why)."""
        key = inputs.key(st.parent_id)
        if st.cache_on:
            hit = self.index.lookup(st.parent_id, key)
            if hit is not None:
                self.say(" ---> Using cache")
                self.use(st, hit)
                return key, hit
        if self.opts.explain:
            self.say(f" ---> Cache miss: {self._why(st, inputs)}")
        if st.cache_on:
            st.missed_at = self.step_no
        st.cache_on = False
        return key, None

    def _why(self, st: StageState, inputs: StepInputs) -> str:
        if self.opts.no_cache:
            return "--no-cache"
        if not st.cache_on:
            return f"step {st.missed_at} missed, so the rest of this stage runs again"
        on = st.base_desc if st.parent_id == st.base_id else \
            f"image {st.parent_id.removeprefix('sha256:')[:12]} (the previous step)"
        return self.index.explain(st.parent_id, inputs, on)

    def use(self, st: StageState, img: Image) -> None:
        st.image = img
        st.base = dict(img.config.data)
        st.config = json.loads(json.dumps(img.config.config))
        if not self.hide_ids:
            self.say(f" ---> {img.id.short}")

    def publish(self, st: StageState, key: str, inputs: StepInputs, created_by: str,
                probe_cmd: list[str], layer: LayerRecord | None, container: str = "") -> None:
        parent = st.image
        img = imaging.child_image(self.engine, parent, st.base, st.config, created_by,
                                  probe_cmd, layer, container)
        self.index.remember(parent.id.value if parent is not None else "", key, img, inputs)
        self.use(st, img)

    def stage_image(self, ref: str, current: StageState) -> Image | None:
        """``--from=`` a stage (by name or index) or an image."""
        r = ref.lower()
        for s in self.df.stages:
            if s.name == r or str(s.index) == r:
                if s.index == current.stage.index:
                    raise DockerfileError(f"invalid from flag value {ref}: refers to current "
                                          "build stage")
                if s.index in self.built:
                    return self.built[s.index].image
                raise DockerfileError(f"invalid from flag value {ref}: stage {s.index} is "
                                      "defined after this one")
        try:
            return self._image(ref)
        except ShaleError as e:
            raise DockerfileError(f"invalid from flag value {ref}: no stage of that name, not "
                                  f"in this store, and pulling it failed: {e}") from None


def arg_decls(instr: Instruction) -> list[tuple[str, str | None]]:
    """``ARG a b=1`` -> [("a", None), ("b", "1")] (defaults unexpanded)."""
    out = []
    for a in instr.args:
        key, sep, default = a.partition("=")
        out.append((key, default if sep else None))
    return out


def run_failed(cmd: list[str], code: int, image: Image | None, cid: str,
               output: bytes) -> BuildFailed:
    return BuildFailed(f"The command '{' '.join(cmd)}' returned a non-zero code: {code}",
                       code, image.id.value if image is not None else "", cid, output)

