"""RUN: the command line (shell/exec form, heredocs), ``--mount``s, and the container it
runs in.

A RUN executes in a container of the default runtime on the previous step's image, with
the image's Env (plus the stage's build args), WorkingDir and User, on the default bridge
(as docker's classic builder) unless ``--network`` says otherwise. Its output goes to the
build's stdout (stderr too, as docker's build stream does); with ``-q`` it is kept and
shown only if the step fails. The layer is the container's writable layer, read through
the snapshotter's own diff.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import os
import posixpath
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shale.build.imaging import image_view
from shale.build.runspec import PIPES, Command, MountSpec
from shale.errors import DockerfileError
from shale.fileutil import scratch
from shale.images import Image, LayerRecord
from shale.record import field, record

if TYPE_CHECKING:
    from shale.build.context import Context
    from shale.build.secrets import Session
    from shale.engine import Engine

# ---- running -------------------------------------------------------------------------------
@record
class RunRequest:
    parent: Image
    command: Command
    env: list[str]               # build args for the container (not in the image)
    network: str
    workdir: str
    mounts: list[MountSpec]
    ctx: Context
    source_image: Callable[[str], Image | None]   # --mount from= (stage, index or image)
    quiet: bool = False
    adopt: bool = False          # the container is removed after: reuse its layer dir
    session: Session | None = None  # build --secret / --ssh
    options: dict[str, Any] = field(default_factory=dict)  # build --memory, --add-host...


@record
class RunResult:
    code: int
    container: str
    layer: LayerRecord | None
    output: bytes = b""


def execute(engine: Engine, req: RunRequest) -> RunResult:
    """Run the step's container; the caller removes it (or leaves it, on failure)."""
    with contextlib.ExitStack() as stack:
        volumes: list[str] = []
        tmpfs: list[str] = []
        if req.command.script is not None:
            name, data = req.command.script
            d = Path(stack.enter_context(scratch("shale-pipes-")))
            (d / name).write_bytes(data)
            os.chmod(d / name, 0o755)
            volumes.append(f"{d}:{PIPES}:ro")
        env = list(req.env)
        for m in req.mounts:
            target = posixpath.normpath(posixpath.join(req.workdir or "/", m.target))
            if m.type == "tmpfs":
                tmpfs.append(f"{target}:size={m.size}" if m.size else target)
                continue
            if m.type in ("secret", "ssh"):
                volumes += _session_mount(req, m, target, env, stack)
                continue
            host = _mount_source(engine, req, m, stack)
            ro = m.readonly if m.readonly is not None else m.type == "bind"
            volumes.append(f"{host}:{target}:ro" if ro else f"{host}:{target}")
        return _run_container(engine, req, volumes, tmpfs, env)


def _session_mount(req: RunRequest, m: MountSpec, target: str, env: list[str],
                   stack: contextlib.ExitStack) -> list[str]:
    """A secret (a private tmpfs file, read-only, and/or a variable) or an ssh agent's
    socket (plus ``SSH_AUTH_SOCK``); nothing when the build was not given it and the
    mount is not ``required``, as BuildKit."""
    from shale.build.secrets import Session, private_dir, secret_file

    session = req.session or Session()
    if m.type == "ssh":
        sock = session.agent(m.id, m.required)
        if sock is None:
            return []
        env.append(f"SSH_AUTH_SOCK={target}")
        return [f"{sock}:{target}"]
    data = session.secret(m.id, m.required)
    if data is None:
        return []
    if m.env:
        env.append(f"{m.env}={data.decode(errors='surrogateescape')}")
    if not m.target:
        return []
    tmp = Path(stack.enter_context(private_dir()))
    return [f"{secret_file(data, m.mode, m.uid, m.gid, tmp)}:{target}:ro"]


def _mount_source(engine: Engine, req: RunRequest, m: MountSpec,
                  stack: contextlib.ExitStack) -> Path:
    if m.type == "cache":
        return _cache_dir(engine, m, stack)
    root: Path | None = req.ctx.root
    if m.src_from:
        img = req.source_image(m.src_from)
        root = stack.enter_context(image_view(engine, img))
        if root is None:  # an empty image: an empty directory
            root = Path(stack.enter_context(tempfile.TemporaryDirectory()))
    assert root is not None
    from shale.fsroot import Root

    with Root(root) as r:
        real = r.resolve(m.source or "/")
    host = root / real.lstrip("/")
    if not host.exists():
        raise DockerfileError(f"failed to compute cache key: \"/{m.source.lstrip('/')}\" "
                              "not found: not found")
    if m.readonly is False:
        # rw bind mounts are scratch space: writes go to a copy and are thrown away
        tmp = Path(stack.enter_context(scratch("shale-rw-")))
        subprocess.run(["cp", "-a", f"{host}/." if host.is_dir() else str(host), str(tmp)],
                       check=True)
        return tmp if host.is_dir() else tmp / host.name
    return host


def _cache_dir(engine: Engine, m: MountSpec, stack: contextlib.ExitStack) -> Path:
    """A cache mount's directory in the store (``build/cache/<id>``), kept across builds.
    ``locked`` serialises its users; ``private`` takes a fresh one while it is busy."""
    ident = m.id or m.target
    base = engine.root / "build" / "cache"
    base.mkdir(parents=True, exist_ok=True)
    d = base / hashlib.sha256(ident.encode()).hexdigest()[:32]
    if not d.exists():
        tmp = Path(tempfile.mkdtemp(dir=base, prefix=".new-"))
        os.chmod(tmp, m.mode)
        os.chown(tmp, m.uid, m.gid)
        try:
            os.rename(tmp, d)
        except OSError:  # another build made it first
            tmp.rmdir()
    if m.sharing == "shared":
        return d
    fd = os.open(base / f"{d.name}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    stack.callback(os.close, fd)
    if m.sharing == "locked":
        fcntl.flock(fd, fcntl.LOCK_EX)
        return d
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return d
    except BlockingIOError:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(dir=base, prefix=".p-")))
        os.chmod(tmp, m.mode)
        os.chown(tmp, m.uid, m.gid)
        return tmp


@contextlib.contextmanager
def _output(quiet: bool) -> Iterator[io.BytesIO | None]:
    """Route the container's stdout and stderr to our stdout, or into a buffer with -q."""
    saved = sys.stdout, sys.stderr
    buf = io.BytesIO() if quiet else None
    wrapper = io.TextIOWrapper(buf, write_through=True) if buf is not None else None
    sys.stdout.flush()
    if wrapper is not None:
        sys.stdout = sys.stderr = wrapper
    else:
        sys.stderr = sys.stdout
    try:
        yield buf
    finally:
        sys.stdout, sys.stderr = saved
        if wrapper is not None:
            wrapper.detach()  # the buffer outlives the wrapper


def _run_container(engine: Engine, req: RunRequest, volumes: list[str], tmpfs: list[str],
                   env: list[str]) -> RunResult:
    from shale import attach
    from shale.container_ops import RunOptions, create, start, wait_stopped
    from shale.monitor_spawn import read_status

    opts = RunOptions(image=req.parent.id.value, cmd=req.command.argv, entrypoint="",
                      env=env, network=req.network or "default",  # docker's: the bridge
                      volumes=volumes, tmpfs=tmpfs, attach_stdio=True, **req.options)
    c = create(engine, opts)
    if not req.quiet:
        print(f" ---> Running in {c.short_id}", flush=True)
    with _output(req.quiet) as buf:
        status = start(engine, c, attached=True)
        try:
            kind, code, msg = read_status(status)
            if kind != "L":
                raise DockerfileError(msg)
            sock = attach.connect(c.attach_socket, stdin=False)
            kind, code, msg = read_status(status)
            if kind == "E":  # the command never started: say why, as docker's output does
                sock.close()
                print(f"failed to start the step's container: {msg}", flush=True)
                return RunResult(code, c.id, None, buf.getvalue() if buf else b"")
        finally:
            os.close(status)
        try:
            result = attach.AttachClient(sock, tty=False, stdin=False, sig_proxy=True).run()
        finally:
            sock.close()
    wait_stopped(engine, c, 30)
    out = buf.getvalue() if buf is not None else b""
    code = int(result.get("ExitCode", 1))
    if code != 0:
        return RunResult(code, c.id, None, out)
    extra = _mountpoints(engine, req)
    layer = _container_layer(engine, c.id, extra)
    if req.adopt:
        _adopt(engine, req.parent, c.snapshot_key, layer, extra)
    return RunResult(0, c.id, layer, out)


def _adopt(engine: Engine, parent: Image, ctr_key: str, layer: LayerRecord,
           extra_dirs: list[str]) -> None:
    """Commit the step's container layer as the new layer's snapshot (named by its chain
    ID, as ``unpack`` names them), so the next step does not extract the tar just written
    (for a 1 GB apt layer: seconds). Overlay only, where the container's upper dir *is*
    the layer in the snapshot format: hard-linked, never copied. Only for containers the
    build removes right away, so nothing can write to the shared files later."""
    from shale.digest import EMPTY_LAYER_DIFF_ID, chain_ids
    from shale.errors import NotFound
    from shale.snapshots import Kind

    snap = engine.snapshots
    if snap.layer_format != "overlay" or layer.diff_id.value == EMPTY_LAYER_DIFF_ID:
        return
    chains = chain_ids([*parent.config.diff_ids, layer.diff_id])
    name, parent_chain = chains[-1].value, chains[-2].value if len(chains) > 1 else ""
    try:
        if snap.stat(name).kind == Kind.COMMITTED:
            return
    except NotFound:
        pass
    from shale.unpack import commit_filled

    def fill(key: str) -> None:
        dest = snap.layer_dir(key)
        subprocess.run(["cp", "-al", f"{snap.layer_dir(ctr_key)}/.", str(dest)],
                       check=True, capture_output=True)
        for d in extra_dirs:  # what _container_layer added to the tar
            os.makedirs(dest / d, mode=0o755, exist_ok=True)
        _drop_overlay_state(dest)

    with engine.lock():
        commit_filled(snap, name, parent_chain, fill)


def _drop_overlay_state(root: Path) -> None:
    """Remove overlayfs bookkeeping of the container's mount from directories (origin,
    impure...): only whiteouts and opaque markers belong in a layer."""
    for dirpath, _dirs, _files in os.walk(root):
        for attr in os.listxattr(dirpath, follow_symlinks=False):
            if attr.startswith("trusted.overlay.") and attr != "trusted.overlay.opaque":
                with contextlib.suppress(OSError):
                    os.removexattr(dirpath, attr, follow_symlinks=False)


def _mountpoints(engine: Engine, req: RunRequest) -> list[str]:
    """The image's VOLUME paths missing from it: docker creates them in the step's
    container layer (its init layer holds only /dev, /proc, /etc/hosts...), so they
    land in the image; ours are stubs in the init layer, so the layer gets them here."""
    from shale.build.imaging import resolve_in

    volumes = sorted(req.parent.config.config.get("Volumes") or {})
    if not volumes:
        return []
    missing: dict[str, None] = {}
    with image_view(engine, req.parent) as view:
        for v in volumes:
            cur = ""
            for part in v.strip("/").split("/"):
                cur = f"{cur}/{part}" if cur else part
                real, st = resolve_in(view, cur)
                if st is None:
                    missing[real.strip("/")] = None
    return list(missing)


def _container_layer(engine: Engine, cid: str, extra_dirs: list[str]) -> LayerRecord:
    """The container's changes as a layer, written straight into the content store (plus
    ``extra_dirs``, root-owned 0755 directories, appended)."""
    from shale import oci
    from shale import tarwriter as tw
    from shale.changes_ops import write_container_layer
    from shale.containers import ContainerStore

    c = ContainerStore(engine).get(cid)
    with engine.lock(), engine.content.writer() as w:
        if not extra_dirs:
            digest, size, content = write_container_layer(engine, c, w)  # type: ignore[arg-type]
        else:
            with tempfile.TemporaryFile(dir=engine.root) as tmp:
                _, _, content = write_container_layer(engine, c, tmp)  # type: ignore[arg-type]
                end = tmp.tell() - 2 * tw.BLOCK  # the tar's two zero blocks come last
                tmp.seek(0)
                tar = tw.TarWriter(w)  # type: ignore[arg-type]
                while end > 0 and (chunk := tmp.read(min(end, 1 << 20))):
                    tar.write(chunk)
                    end -= len(chunk)
                now = int(time.time())
                for d in extra_dirs:
                    tar.write(tw.header(d + "/", tw.DIR, mode=0o755, uid=0, gid=0, mtime=now))
                digest, size = tar.close()
        w.commit(digest, size, what="build layer")
    return LayerRecord(digest, digest, oci.OCI_LAYER, size, size, content)


def remove_container(engine: Engine, cid: str) -> None:
    from shale.container_ops import remove_container as remove
    from shale.containers import ContainerStore
    from shale.errors import ShaleError

    with contextlib.suppress(ShaleError):
        remove(engine, ContainerStore(engine).get(cid), force=True, volumes=True)


class Reaper:
    """Removes finished step containers in the background while the build goes on
    (unmounting and deleting a container's snapshots is most of a RUN's overhead). Each
    removal has its own Engine: a database connection is not shared between threads.
    ``wait`` joins them all; the build calls it before it returns or fails."""

    def __init__(self, engine: Engine) -> None:
        self.root = engine.root
        self.driver = engine.driver
        self.threads: list[threading.Thread] = []

    def remove(self, cid: str) -> None:
        t = threading.Thread(target=self._remove, args=(cid,), daemon=True)
        t.start()
        self.threads.append(t)

    def _remove(self, cid: str) -> None:
        from shale.engine import Engine

        eng = Engine(self.root, self.driver)
        try:
            remove_container(eng, cid)
        finally:
            eng.close()

    def wait(self) -> None:
        for t in self.threads:
            t.join()
        self.threads.clear()
