"""pull, push, login and logout against real registries: Debian's ``docker-registry``
(distribution 2.8) started here on 127.0.0.1 with a free port, three ways: no auth, htpasswd
(bcrypt) and token auth (a small token server below, RS256 JWTs signed by ``openssl``).
Interop with docker 20.10 and skopeo runs for real (``docker`` tests).
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import parse_qs, urlsplit

import pytest
from conftest import Cli, Docker, run_shale
from helpers import (
    arch_image,
    assert_image_valid,
    blob_listing,
    docker_25_archive,
    ingest_listing,
    read_archive,
    sha256,
    simple_layer,
)

from shale.digest import Digest
from shale.engine import Engine
from shale.refs import Reference
from shale.registry import Registry

REGISTRY_BIN = shutil.which("docker-registry") or shutil.which("registry")
pytestmark = pytest.mark.skipif(REGISTRY_BIN is None, reason="docker-registry not installed")
IS_ROOT = os.geteuid() == 0


# ------------------------------------------------------------------------ registries
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RegistryProc:
    """``docker-registry serve`` on 127.0.0.1:<free port>, its config written as JSON
    (YAML's subset), stopped by its own PID."""

    def __init__(self, base: Path, auth: dict[str, Any] | None = None) -> None:
        self.dir = base
        self.data = base / "data"
        self.port = free_port()
        self.host = f"127.0.0.1:{self.port}"
        config: dict[str, Any] = {
            "version": 0.1,
            "log": {"level": "warn", "accesslog": {"disabled": False}},
            "storage": {"filesystem": {"rootdirectory": str(self.data)},
                        "delete": {"enabled": True}, "cache": {"blobdescriptor": "inmemory"}},
            "http": {"addr": self.host},
            "health": {"storagedriver": {"enabled": False}},
        }
        if auth:
            config["auth"] = auth
        (base / "config.yml").write_text(json.dumps(config))
        self.log = open(base / "registry.log", "wb")  # noqa: SIM115 (closed by stop)
        assert REGISTRY_BIN is not None
        self.proc = subprocess.Popen([REGISTRY_BIN, "serve", str(base / "config.yml")],
                                     stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.time() + 20
        while time.time() < deadline:
            try:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
                conn.request("GET", "/v2/")
                conn.getresponse().read()
                conn.close()
                return
            except OSError:
                if self.proc.poll() is not None:
                    break
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"registry did not start: {(base / 'registry.log').read_text()}")

    def blob_path(self, digest: str) -> Path:
        hexpart = digest.removeprefix("sha256:")
        return (self.data / "docker/registry/v2/blobs/sha256" / hexpart[:2] / hexpart /
                "data")

    def access_log(self) -> str:
        self.log.flush()
        return (self.dir / "registry.log").read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryProc]:
    reg = RegistryProc(tmp_path_factory.mktemp("registry"))
    yield reg
    reg.stop()


@pytest.fixture(scope="module")
def registry2(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryProc]:
    reg = RegistryProc(tmp_path_factory.mktemp("registry2"))
    yield reg
    reg.stop()


@pytest.fixture(scope="module")
def htpasswd_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryProc]:
    if shutil.which("htpasswd") is None:
        pytest.skip("htpasswd (apache2-utils) not installed")
    base = tmp_path_factory.mktemp("registry-htpasswd")
    line = subprocess.run(["htpasswd", "-Bbn", "alice", "secret"], capture_output=True,
                          check=True, text=True).stdout.strip()
    (base / "htpasswd").write_text(line + "\n")
    reg = RegistryProc(base, {"htpasswd": {"realm": "basic-realm",
                                           "path": str(base / "htpasswd")}})
    yield reg
    reg.stop()


class TokenServer:
    """Docker's token auth for the tests: RS256 JWTs with an ``x5c`` header (distribution
    checks it against ``rootcertbundle``). alice/secret gets what she asks for; anyone
    else gets pull only. Every token request is recorded."""

    SERVICE, ISSUER = "shale-test-registry", "shale-test-issuer"
    USERS: ClassVar[dict[str, str]] = {"alice": "secret"}

    def __init__(self, base: Path) -> None:
        self.key, self.cert = base / "token.key", base / "token.crt"
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes",
                        "-keyout", str(self.key), "-out", str(self.cert), "-days", "2",
                        "-subj", "/CN=shale-test-issuer"], capture_output=True, check=True)
        der = subprocess.run(["openssl", "x509", "-in", str(self.cert), "-outform", "DER"],
                             capture_output=True, check=True).stdout
        self.x5c = base64.b64encode(der).decode()
        self.requests: list[dict[str, Any]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                q = parse_qs(urlsplit(self.path).query)
                user = ""
                header = self.headers.get("Authorization", "")
                if header.startswith("Basic "):
                    u, _, p = base64.b64decode(header[6:]).decode().partition(":")
                    if server.USERS.get(u) != p:
                        self.send_response(401)
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    user = u
                server.requests.append({"user": user, "scope": q.get("scope", []),
                                        "query": q})
                access = []
                for scope in q.get("scope", []):
                    typ, name, actions = scope.split(":", 2)
                    acts = [a for a in actions.split(",") if a and (user or a == "pull")]
                    access.append({"type": typ, "name": name, "actions": acts})
                tok = server.make_token(user, access)
                body = json.dumps({"token": tok, "access_token": tok, "expires_in": 300}
                                  ).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.realm = f"http://127.0.0.1:{self.httpd.server_address[1]}/token"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def make_token(self, sub: str, access: list[dict[str, Any]]) -> str:
        def b64u(b: bytes) -> str:
            return base64.urlsafe_b64encode(b).rstrip(b"=").decode()

        now = int(time.time())
        header = {"typ": "JWT", "alg": "RS256", "x5c": [self.x5c]}
        claims = {"iss": self.ISSUER, "sub": sub, "aud": self.SERVICE, "exp": now + 300,
                  "nbf": now - 10, "iat": now, "jti": uuid.uuid4().hex, "access": access}
        signing = f"{b64u(json.dumps(header).encode())}.{b64u(json.dumps(claims).encode())}"
        sig = subprocess.run(["openssl", "dgst", "-sha256", "-sign", str(self.key)],
                             input=signing.encode(), capture_output=True, check=True).stdout
        return f"{signing}.{b64u(sig)}"

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def token_registry(tmp_path_factory: pytest.TempPathFactory
                   ) -> Iterator[tuple[RegistryProc, TokenServer]]:
    if shutil.which("openssl") is None:
        pytest.skip("openssl not installed")
    base = tmp_path_factory.mktemp("registry-token")
    tokens = TokenServer(base)
    reg = RegistryProc(base, {"token": {"realm": tokens.realm, "service": tokens.SERVICE,
                                        "issuer": tokens.ISSUER,
                                        "rootcertbundle": str(tokens.cert)}})
    yield reg, tokens
    reg.stop()
    tokens.stop()


@pytest.fixture(autouse=True)
def docker_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private docker config dir per test: logins never touch the real one."""
    d = tmp_path / "docker-config"
    monkeypatch.setenv("DOCKER_CONFIG", str(d))
    return d


# --------------------------------------------------------------------------- helpers
def other_cli(tmp_path: Path, name: str = "root2") -> Cli:
    return Cli(tmp_path / name)


def load_image(cli: Cli, tag: str, layers: list[bytes], **kw: Any) -> str:
    """Load a hand-made image (uncompressed layers, as docker save writes) and tag it."""
    img = arch_image(layers, ["shaletest-reg/tmp:1"], **kw)
    cli.ok("load", "-q", stdin=docker_25_archive([img]))
    cli.ok("tag", "shaletest-reg/tmp:1", tag)
    cli.ok("rmi", "shaletest-reg/tmp:1")
    return img.id


def unique_layers(n: int, size: int = 4096) -> list[bytes]:
    salt = uuid.uuid4().hex
    return [simple_layer({f"data/{salt}/{i}.bin": os.urandom(size),
                          f"etc/layer{i}": f"{salt} {i}\n".encode()}) for i in range(n)]


def one_line_error(res: Any, *needles: str) -> None:
    assert res.code == 1, res
    lines = res.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), res.err
    assert "Traceback" not in res.err
    for n in needles:
        assert n in res.err, res.err


# ----------------------------------------------------------------- no-auth registry
def test_push_then_pull_into_a_fresh_store_and_run(cli: Cli, tmp_path: Path,
                                                   registry: RegistryProc,
                                                   busybox_tar: Path) -> None:
    name = f"{registry.host}/rt/busybox:1"
    image_id = cli.ok("import", str(busybox_tar), name).strip()
    out = cli.ok("push", name)
    lines = out.splitlines()
    assert lines[0] == f"The push refers to repository [{registry.host}/rt/busybox]"
    assert lines[-2].endswith(": Pushed")
    digest = lines[-1].split()[2]
    assert lines[-1] == f"1: digest: {digest} size: {lines[-1].split()[-1]}"
    # a second store pulls it: same image ID, the registry's digest recorded
    cli2 = other_cli(tmp_path)
    out = cli2.ok("pull", name)
    assert out.splitlines()[0] == "1: Pulling from rt/busybox"
    assert out.splitlines()[-3:] == [f"Digest: {digest}",
                                     f"Status: Downloaded newer image for {name}", name]
    assert cli2.ok("inspect", "-f", "{{.Id}} {{json .RepoDigests}}", name).strip() == \
        f'{image_id} ["{registry.host}/rt/busybox@{digest}"]'
    table = cli2.ok("images", "--digests", f"{registry.host}/rt/busybox")
    assert digest in table
    eng = Engine(tmp_path / "root2")
    try:
        img = eng.images.get(name)
        assert_image_valid(eng, img)
        (lay,) = eng.images.layers(img)
        assert lay.blob != lay.diff_id and lay.media_type.endswith("gzip")  # kept as pulled
        assert img.manifest == digest
    finally:
        eng.close()
    # pulling again downloads nothing
    out = cli2.ok("pull", name)
    assert f"Status: Image is up to date for {name}" in out
    # a pulled image is pushed with its own manifest (same digest), its blobs mounted
    cli2.ok("tag", name, f"{registry.host}/rt/copy:2")
    out = cli2.ok("push", f"{registry.host}/rt/copy:2")
    assert "Mounted from rt/busybox" in out and out.endswith(f"2: digest: {digest} size: "
                                                             f"{lines[-1].split()[-1]}\n")
    if IS_ROOT:
        res = run_shale(tmp_path / "root2", "run", "--rm", name, "sh", "-c",
                        "echo pulled and running")
        assert res.returncode == 0, res.stderr
        assert res.stdout == b"pulled and running\n"


def test_repush_is_stable_and_compresses_once(cli: Cli, engine: Engine,
                                              registry: RegistryProc,
                                              registry2: RegistryProc) -> None:
    """load (uncompressed layers) -> push compresses each layer once and records it; a
    repush says the layers exist, a push to another repository mounts them, a push to
    another registry sends the same bytes: one manifest digest everywhere."""
    layers = unique_layers(3, 64 << 10)
    name = f"{registry.host}/stable/a:1"
    load_image(cli, name, layers)
    before = blob_listing(cli.root)
    ref = Reference.parse(name)
    (first,) = engine.push(ref)
    assert first.compressed == 3 and first.uploaded == 3
    rows = engine.meta.query("SELECT * FROM layer_blobs")
    assert sorted(r["diff_id"] for r in rows) == sorted(sha256(x) for x in layers)
    added = set(blob_listing(cli.root)) - set(before)
    assert added == {r["digest"][7:] for r in rows} | {first.digest.hex}
    out = cli.ok("push", name)
    assert out.count("Layer already exists") == 3 and "Pushed" not in out
    assert f"1: digest: {first.digest} size: {first.size}" in out
    cli.ok("tag", name, f"{registry.host}/stable/b:7")
    out = cli.ok("push", f"{registry.host}/stable/b:7")
    assert out.count("Mounted from stable/a") == 3, out
    assert f"7: digest: {first.digest}" in out
    cli.ok("tag", name, f"{registry2.host}/elsewhere:1")
    (other,) = engine.push(Reference.parse(f"{registry2.host}/elsewhere:1"))
    assert other.compressed == 0 and other.uploaded == 3 and other.digest == first.digest
    assert len(engine.meta.query("SELECT * FROM layer_blobs")) == 3
    digests = json.loads(cli.ok("inspect", "-f", "{{json .RepoDigests}}", name))
    assert f"{registry.host}/stable/a@{first.digest}" in digests
    assert f"{registry2.host}/elsewhere@{first.digest}" in digests
    # the registry holds exactly the bytes shale stored
    for r in rows:
        assert registry.blob_path(r["digest"]).read_bytes() == \
            engine.content.path(Digest(r["digest"])).read_bytes()


def test_pull_then_save_writes_uncompressed_layers_matching_diff_ids(
        cli: Cli, tmp_path: Path, registry: RegistryProc) -> None:
    layers = unique_layers(2, 32 << 10)
    name = f"{registry.host}/save/a:1"
    image_id = load_image(cli, name, layers)
    cli.ok("push", name)
    cli2 = other_cli(tmp_path)
    cli2.ok("pull", "-q", name)
    code, data, err = cli2.binary("save", name)
    assert code == 0, err
    members = read_archive(data)
    (entry,) = json.loads(members["manifest.json"])
    config = json.loads(members[entry["Config"]])
    assert sha256(members[entry["Config"]]) == image_id
    assert [sha256(members[p]) for p in entry["Layers"]] == config["rootfs"]["diff_ids"]
    assert [members[p] for p in entry["Layers"]] == layers
    # and it loads back into a third store as the same image
    cli3 = other_cli(tmp_path, "root3")
    assert cli3.ok("load", stdin=data) == f"Loaded image: {name}\n"
    assert cli3.ok("inspect", "-f", "{{.Id}}", name).strip() == image_id


def test_pull_by_digest_and_all_tags(cli: Cli, tmp_path: Path, registry: RegistryProc) -> None:
    repo = f"{registry.host}/tags/app"
    load_image(cli, f"{repo}:1", unique_layers(1))
    load_image(cli, f"{repo}:2", unique_layers(1))
    out = cli.ok("push", "-a", repo)
    assert out.count("The push refers to repository") == 1 and out.count(": digest: ") == 2
    d1 = next(x.split()[2] for x in out.splitlines() if x.startswith("1: digest: "))
    cli2 = other_cli(tmp_path)
    out = cli2.ok("pull", f"{repo}@{d1}")
    assert out.splitlines()[-1] == f"{repo}@{d1}"
    assert cli2.ok("images", "--format", "{{.Repository}} {{.Tag}} {{.Digest}}") == \
        f"{repo} <none> {d1}\n"
    cli3 = other_cli(tmp_path, "root3")
    out = cli3.ok("pull", "-a", repo)
    assert out.splitlines()[-1] == repo
    assert sorted(cli3.ok("images", "--format", "{{.Tag}}").split()) == ["1", "2"]
    res = cli3("pull", "-a", f"{repo}:1")
    one_line_error(res, "tag can't be used with --all-tags")


def _put_image(reg: Registry, repo: str, arch: str) -> tuple[str, int, str]:
    """A one-layer image pushed by hand; returns the manifest (digest, size, config id)."""
    import gzip

    layer = simple_layer({f"etc/arch-{arch}": arch.encode()})
    gz = gzip.compress(layer, mtime=0)
    config = json.dumps({"architecture": arch, "os": "linux", "config": {},
                         "rootfs": {"type": "layers", "diff_ids": [sha256(layer)]}}).encode()
    reg.upload_blob(repo, Digest(sha256(gz)), len(gz), lambda: [gz])
    reg.post_blob(repo, Digest(sha256(config)), config)
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": sha256(config), "size": len(config)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    "digest": sha256(gz), "size": len(gz)}]}).encode()
    reg.put_manifest(repo, sha256(manifest), manifest,
                     "application/vnd.oci.image.manifest.v1+json")
    return sha256(manifest), len(manifest), sha256(config)


def test_layers_already_here_are_not_downloaded(cli: Cli, tmp_path: Path,
                                               registry: RegistryProc) -> None:
    base, top1, top2 = unique_layers(3, 16 << 10)
    load_image(cli, f"{registry.host}/share/a:1", [base, top1])
    load_image(cli, f"{registry.host}/share/b:1", [base, top2])
    cli.ok("push", f"{registry.host}/share/a:1")
    cli.ok("push", f"{registry.host}/share/b:1")
    cli2 = other_cli(tmp_path)
    assert cli2.ok("pull", f"{registry.host}/share/a:1").count("Pull complete") == 2
    out = cli2.ok("pull", f"{registry.host}/share/b:1")
    assert out.count("Already exists") == 1 and out.count("Pull complete") == 1, out
    eng = Engine(tmp_path / "root2")
    try:
        for n in ("a", "b"):
            assert_image_valid(eng, eng.images.get(f"{registry.host}/share/{n}:1"))
    finally:
        eng.close()


def test_index_picks_the_platform(tmp_path: Path, registry: RegistryProc) -> None:
    from shale import oci

    if oci.host_platform() != ("linux", "amd64"):
        pytest.skip("the default platform case assumes linux/amd64")
    repo = "multi/app"
    with Registry(registry.host) as reg:
        amd = _put_image(reg, repo, "amd64")
        arm = _put_image(reg, repo, "arm64")
        index = json.dumps({"schemaVersion": 2,
                            "mediaType": "application/vnd.oci.image.index.v1+json",
                            "manifests": [
                                {"mediaType": "application/vnd.oci.image.manifest.v1+json",
                                 "digest": arm[0], "size": arm[1],
                                 "platform": {"architecture": "arm64", "os": "linux",
                                              "variant": "v8"}},
                                {"mediaType": "application/vnd.oci.image.manifest.v1+json",
                                 "digest": amd[0], "size": amd[1],
                                 "platform": {"architecture": "amd64", "os": "linux"}}]}
                           ).encode()
        reg.put_manifest(repo, "1", index, "application/vnd.oci.image.index.v1+json")
    name = f"{registry.host}/{repo}:1"
    cli = other_cli(tmp_path, "a")
    cli.ok("pull", name)
    assert cli.ok("inspect", "-f", "{{.Id}} {{.Architecture}} {{json .RepoDigests}}",
                  name).strip() == (f'{amd[2]} amd64 ["{registry.host}/{repo}@'
                                    f'{sha256(index)}"]')
    cli = other_cli(tmp_path, "b")
    cli.ok("pull", "--platform", "linux/arm64", name)
    assert cli.ok("inspect", "-f", "{{.Id}} {{.Architecture}}", name).strip() == \
        f"{arm[2]} arm64"
    res = cli("pull", "--platform", "linux/s390x", name)
    one_line_error(res, "no matching manifest for linux/s390x in the manifest list entries")
    # a single-platform image asked for another platform is refused, as docker does
    res = cli("pull", "--platform", "linux/arm64", f"{registry.host}/{repo}@{amd[0]}")
    one_line_error(res, "does not match the specified platform: wanted linux/arm64, "
                   "actual: linux/amd64")


def test_chunked_upload_and_the_single_post_quirk(cli: Cli, engine: Engine, tmp_path: Path,
                                                  registry: RegistryProc) -> None:
    data = os.urandom(300 << 10)
    digest = Digest(sha256(data))
    small = b'{"small": "blob", "salt": "' + uuid.uuid4().hex.encode() + b'"}'
    with Registry(registry.host) as reg:
        # distribution 2.8 answers POST ?digest= with 202 and drops the body: PUT follows
        reg.post_blob("quirks/a", Digest(sha256(small)), small)
        assert reg.stats.single_post_fallbacks == 1
        assert reg.get_blob("quirks/a", Digest(sha256(small))) == small
        patches = reg.stats.requests.get("PATCH", 0)
        reg.upload_blob("quirks/a", digest, len(data), lambda: [data], chunk_size=64 << 10)
        assert reg.stats.requests["PATCH"] - patches == 5  # 4 x 64 KiB + the rest
        assert reg.get_blob("quirks/a", digest) == data
        # the upload session really is chunked with our own offsets: a stale location 404s
        _, loc = reg.start_upload("quirks/a")
        new_loc = reg.patch_chunks("quirks/a", loc, [b"abc"])
        assert new_loc != loc
        reg.cancel_upload("quirks/a", new_loc)
    # a whole push in chunks (layers compressed on the fly, then PATCHed in 16 KiB pieces)
    name = f"{registry.host}/quirks/img:1"
    image_id = load_image(cli, name, unique_layers(2, 100 << 10))
    (res,) = engine.push(Reference.parse(name), chunk_size=16 << 10)
    assert res.compressed == 2
    cli2 = other_cli(tmp_path)
    cli2.ok("pull", name)
    assert cli2.ok("inspect", "-f", "{{.Id}}", name).strip() == image_id


class FlakyProxy:
    """An HTTP proxy to the registry that cuts the first GET of every blob in the middle
    (full Content-Length announced, half the body sent, connection closed)."""

    def __init__(self, target_port: int) -> None:
        self.cut: set[str] = set()
        self.ranges: list[str] = []
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _forward(self) -> None:
                conn = http.client.HTTPConnection("127.0.0.1", target_port, timeout=30)
                headers = {k: v for k, v in self.headers.items() if k.lower() != "host"}
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                conn.request(self.command, self.path, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                conn.close()
                is_blob = self.command == "GET" and "/blobs/sha256:" in self.path
                if is_blob and self.headers.get("Range"):
                    proxy.ranges.append(self.headers["Range"])
                first = is_blob and not self.headers.get("Range") and \
                    self.path not in proxy.cut and len(data) > 1024
                self.send_response(resp.status)
                for k, v in resp.getheaders():
                    if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                if first:
                    proxy.cut.add(self.path)
                    self.send_header("Connection", "close")
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(data[:len(data) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    with contextlib.suppress(OSError):
                        self.connection.shutdown(socket.SHUT_RDWR)
                    return
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            do_GET = do_HEAD = _forward

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.host = f"127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.mark.parametrize("verify", ["0", "1"])  # diff_ids at first use / in the pull
def test_pull_resumes_an_interrupted_blob_with_range(cli: Cli, tmp_path: Path,
                                                     registry: RegistryProc, verify: str,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from shale.pull import pull

    monkeypatch.setenv("SHALE_PULL_VERIFY", verify)
    layers = unique_layers(2, 512 << 10)
    image_id = load_image(cli, f"{registry.host}/resume/a:1", layers)
    cli.ok("push", f"{registry.host}/resume/a:1")
    proxy = FlakyProxy(registry.port)
    try:
        eng = Engine(tmp_path / "root2")
        try:
            with Registry(proxy.host) as reg:
                result = pull(eng, Reference.parse(f"{proxy.host}/resume/a:1"),
                              registry=reg)
                assert reg.stats.resumed == 2
            assert result.image_id.value == image_id and result.layers_pulled == 2
            img = eng.images.get(f"{proxy.host}/resume/a:1")
            assert [x.verified for x in eng.images.layers(img)] == [verify == "1"] * 2
            assert_image_valid(eng, img)
        finally:
            eng.close()
        assert len(proxy.cut) == 2
        assert all(r.startswith("bytes=") and r != "bytes=0-" for r in proxy.ranges)
    finally:
        proxy.stop()


@pytest.mark.parametrize("verify", ["0", "1"])
def test_digest_mismatch_aborts_and_stores_nothing(cli: Cli, tmp_path: Path,
                                                   registry: RegistryProc, verify: str,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHALE_PULL_VERIFY", verify)
    name = f"{registry.host}/corrupt/{verify}:1"
    load_image(cli, name, unique_layers(2, 200 << 10))
    cli.ok("push", name)
    rows = Engine(cli.root).meta.query("SELECT digest FROM layer_blobs")
    victim = registry.blob_path(rows[0]["digest"])
    if not victim.exists():
        victim = registry.blob_path(rows[1]["digest"])
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, other bytes
    victim.write_bytes(bytes(data))
    root2 = tmp_path / "root2"
    cli2 = Cli(root2)
    res = cli2("pull", name)
    one_line_error(res, "verification failed for digest")
    assert blob_listing(root2) == {} and ingest_listing(root2) == []
    assert cli2.ok("images", "-aq") == ""
    assert cli2.ok("system", "check") == "no problems found\n"


def test_errors_are_one_line_and_exit_1(cli: Cli, registry: RegistryProc,
                                        busybox_tar: Path) -> None:
    res = cli("pull", f"{registry.host}/nothere/x:1")
    one_line_error(res, f"manifest for {registry.host}/nothere/x:1 not found: "
                   "manifest unknown")
    res = cli("pull", f"{registry.host}/nothere/x")
    one_line_error(res, "nothere/x:latest not found")
    down = f"127.0.0.1:{free_port()}"
    res = cli("pull", f"{down}/x:1")
    one_line_error(res, f'Get "http://{down}/v2/"', "connection refused")
    res = cli("push", f"{registry.host}/nolocal/x:1")
    one_line_error(res, f"An image does not exist locally with the tag: "
                   f"{registry.host}/nolocal/x:1")
    res = cli("pull", "Bad/Name")
    one_line_error(res, "invalid reference format")
    cli.ok("import", str(busybox_tar), f"{down}/x:1")
    res = cli("push", f"{down}/x:1")
    one_line_error(res, "connection refused")
    assert blob_listing(cli.root) and ingest_listing(cli.root) == []
    assert cli.ok("images", "--format", "{{.Repository}}:{{.Tag}}") == f"{down}/x:1\n"


# ------------------------------------------------------------------ htpasswd registry
def test_htpasswd_login_push_pull_logout(cli: Cli, tmp_path: Path, docker_config: Path,
                                         htpasswd_registry: RegistryProc) -> None:
    host = htpasswd_registry.host
    name = f"{host}/private/a:1"
    image_id = load_image(cli, name, unique_layers(1))
    res = cli("push", name)
    one_line_error(res, "unauthorized: authentication required")
    res = cli("login", "-u", "alice", "--password-stdin", host, stdin=b"wrong\n")
    one_line_error(res, "401 Unauthorized")
    assert not (docker_config / "config.json").exists()
    assert cli.ok("login", "-u", "alice", "--password-stdin", host,
                  stdin=b"secret\n") == "Login Succeeded\n"
    cfg = json.loads((docker_config / "config.json").read_text())
    assert base64.b64decode(cfg["auths"][host]["auth"]) == b"alice:secret"
    # stored credentials are tried first when none are given
    assert cli.ok("login", host) == ("Authenticating with existing credentials...\n"
                                     "Login Succeeded\n")
    cli.ok("push", name)
    cli2 = other_cli(tmp_path)
    cli2.ok("pull", name)
    assert cli2.ok("inspect", "-f", "{{.Id}}", name).strip() == image_id
    assert cli.ok("logout", host) == f"Removing login credentials for {host}\n"
    assert cli.ok("logout", host) == f"Not logged in to {host}\n"
    res = Cli(tmp_path / "root3")("pull", name)
    one_line_error(res, "unauthorized: authentication required")
    res = cli("login", host)
    one_line_error(res, "Cannot perform an interactive login from a non TTY device")


# --------------------------------------------------------------------- token registry
def test_token_auth_scopes_anonymous_pull_and_insufficient_scope(
        cli: Cli, tmp_path: Path, docker_config: Path,
        token_registry: tuple[RegistryProc, TokenServer]) -> None:
    reg, tokens = token_registry
    name = f"{reg.host}/tok/app:1"
    image_id = load_image(cli, name, unique_layers(2))
    res = cli("push", name)  # anonymous: the token server grants pull only
    one_line_error(res, "denied: requested access to the resource is denied "
                   "(insufficient_scope)")
    res = cli("login", "-u", "alice", "--password-stdin", reg.host, stdin=b"nope")
    one_line_error(res, "incorrect username or password")
    cli.ok("login", "-u", "alice", "--password-stdin", reg.host, stdin=b"secret")
    tokens.requests.clear()
    out = cli.ok("push", name)
    assert out.count(": Pushed") == 2
    asked = [s for r in tokens.requests for s in r["scope"]]
    assert "repository:tok/app:pull,push" in asked
    assert all(r["user"] == "alice" for r in tokens.requests)
    # a push to a second repository mounts, with both scopes in one token request
    cli.ok("tag", name, f"{reg.host}/tok/copy:1")
    tokens.requests.clear()
    out = cli.ok("push", f"{reg.host}/tok/copy:1")
    assert out.count("Mounted from tok/app") == 2, out
    assert any(sorted(r["scope"]) == ["repository:tok/app:pull", "repository:tok/copy:pull,push"]
               for r in tokens.requests), tokens.requests
    # anonymous pull works: a token with pull scope only
    cli.ok("logout", reg.host)
    tokens.requests.clear()
    cli2 = other_cli(tmp_path)
    cli2.ok("pull", name)
    assert cli2.ok("inspect", "-f", "{{.Id}}", name).strip() == image_id
    assert tokens.requests and all(r["user"] == "" for r in tokens.requests)
    # one token served the whole pull (cached per scope set)
    assert len(tokens.requests) == 1


# --------------------------------------------- diff_ids checked at first use (layercheck)
def _put_raw_image(reg: Registry, repo: str, tag: str, blobs: list[bytes],
                   diff_ids: list[str]) -> str:
    """An image pushed by hand with exactly these layer blobs and these diff_id claims (a
    registry never checks them): returns its image ID."""
    for b in blobs:
        reg.upload_blob(repo, Digest(sha256(b)), len(b), lambda b=b: [b])
    config = json.dumps({"architecture": "amd64", "os": "linux",
                         "config": {"Cmd": ["/bin/sh"]},
                         "rootfs": {"type": "layers", "diff_ids": diff_ids}}).encode()
    reg.post_blob(repo, Digest(sha256(config)), config)
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
        "config": {"mediaType": "application/vnd.docker.container.image.v1+json",
                   "digest": sha256(config), "size": len(config)},
        "layers": [{"mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip",
                    "digest": sha256(b), "size": len(b)} for b in blobs]}).encode()
    reg.put_manifest(repo, tag, manifest, "application/vnd.docker.distribution.manifest.v2+json")
    return sha256(config)


def _gz(data: bytes) -> bytes:
    import gzip

    return gzip.compress(data, compresslevel=1, mtime=0)


def _unverified(root: Path) -> dict[str, tuple[str, str]]:
    eng = Engine(root)
    try:
        return {r["diff_id"]: (r["blob"], r["error"])
                for r in eng.meta.query("SELECT * FROM unverified_layers")}
    finally:
        eng.close()


def test_pull_stores_blobs_verified_and_diff_ids_at_first_use(cli: Cli, tmp_path: Path,
                                                              registry: RegistryProc) -> None:
    layers = unique_layers(2, 64 << 10)
    name = f"{registry.host}/lazy/a:1"
    load_image(cli, name, layers)
    cli.ok("push", name)
    want_size = cli.ok("images", "--format", "{{.Size}}", name)
    cli2 = other_cli(tmp_path)
    cli2.ok("pull", "-q", name)
    root2 = tmp_path / "root2"
    eng = Engine(root2)
    try:
        img = eng.images.get(name)
        recs = eng.images.layers(img)
        # kept as pulled, blob digests checked, the diff_id claims not yet: unverified,
        # never a stand-in for another image's layer, sizes unknown
        assert [r.verified for r in recs] == [False, False]
        assert [r.diff_size for r in recs] == [-1, -1]
        assert not any(eng.images.has_layer(r.diff_id) for r in recs)
        assert_image_valid(eng, img)
    finally:
        eng.close()
    assert cli2.ok("system", "check") == "no problems found\n"
    # pulling again: up to date (the unverified layers count for their own image)
    assert "Image is up to date" in cli2.ok("pull", name)
    # the size columns verify them (one gunzip each) and show docker's sizes
    assert cli2.ok("images", "--format", "{{.Size}}", name) == want_size
    assert _unverified(root2) == {}
    eng = Engine(root2)
    try:
        recs = eng.images.layers(eng.images.get(name))
        assert [r.diff_size for r in recs] == [len(x) for x in layers]
        assert all(r.verified and eng.images.has_layer(r.diff_id) for r in recs)
    finally:
        eng.close()


@pytest.mark.skipif(not IS_ROOT, reason="unpacks a container")
def test_first_run_checks_the_diff_ids_while_unpacking(tmp_path: Path, registry: RegistryProc,
                                                       busybox_tar: Path) -> None:
    tar = busybox_tar.read_bytes()
    with Registry(registry.host) as reg:
        _put_raw_image(reg, "lazy/run", "1", [_gz(tar)], [sha256(tar)])
    name = f"{registry.host}/lazy/run:1"
    root2 = tmp_path / "root2"
    Cli(root2).ok("pull", "-q", name)
    assert len(_unverified(root2)) == 1
    res = run_shale(root2, "run", "--rm", name, "echo", "checked")
    assert res.returncode == 0 and res.stdout == b"checked\n", res.stderr
    assert _unverified(root2) == {}  # the unpack verified it, and recorded its sizes
    eng = Engine(root2)
    try:
        (lay,) = eng.images.layers(eng.images.get(name))
        assert lay.verified and lay.diff_size == len(tar) and lay.content_size > 0
    finally:
        eng.close()


def test_diff_id_mismatch_is_never_used_and_stays_consistent(
        cli: Cli, tmp_path: Path, registry: RegistryProc, registry2: RegistryProc,
        busybox_tar: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A runnable layer whose config claims another diff_id: the pull (blob digests
    fine) stores it unverified; every use fails with one line, nothing is unpacked, saved
    or pushed; ``system check`` names it; ``rmi`` leaves a clean store. With
    ``SHALE_PULL_VERIFY=1`` the pull itself fails and stores nothing."""
    tar = busybox_tar.read_bytes()
    lie = sha256(tar + b"\0" * 1024)
    with Registry(registry.host) as reg:
        _put_raw_image(reg, "lazy/bad", "1", [_gz(tar)], [lie])
    name = f"{registry.host}/lazy/bad:1"
    root2 = tmp_path / "root2"
    cli2 = Cli(root2)
    cli2.ok("pull", "-q", name)
    expect = f"invalid diffID: expected {lie}, got {sha256(tar)}"
    if IS_ROOT:
        res = run_shale(root2, "run", "--rm", name, "true")
        assert res.returncode == 125, res
        err = res.stderr.decode()
        assert err.count("\n") == 1 and expect in err and "Traceback" not in err, err
        eng = Engine(root2)
        try:  # no snapshot of it, not even a half-filled one
            assert [i.name for i in eng.snapshots.walk()] == []
        finally:
            eng.close()
    res = cli2("save", "-o", str(tmp_path / "x.tar"), name)
    one_line_error(res, expect)
    assert not (tmp_path / "x.tar").exists()
    assert next(iter(_unverified(root2).values()))[1]  # recorded: later uses fail fast
    cli2.ok("tag", name, f"{registry2.host}/lazy/copy:1")
    res = cli2("push", f"{registry2.host}/lazy/copy:1")
    one_line_error(res, expect)
    res = cli2("pull", name)  # the same bad blob for the same claim: the pull fails too
    one_line_error(res, expect)
    assert name in cli2.ok("images", "--format", "{{.Repository}}:{{.Tag}}")
    res = cli2("system", "check")
    assert res.code == 1 and res.out.count("\n") == 1 and expect in res.out, res
    cli2.ok("rmi", name, f"{registry2.host}/lazy/copy:1")
    assert cli2.ok("system", "check") == "no problems found\n"
    assert blob_listing(root2) == {} and ingest_listing(root2) == []
    assert _unverified(root2) == {}
    # checked during the pull: exit 1, nothing stored
    monkeypatch.setenv("SHALE_PULL_VERIFY", "1")
    root3 = tmp_path / "root3"
    res = Cli(root3)("pull", name)
    one_line_error(res, f"invalid diffID: expected {lie}, got {sha256(tar)}")
    assert blob_listing(root3) == {} and ingest_listing(root3) == []
    assert Cli(root3).ok("system", "check") == "no problems found\n"


def test_corrupt_gzip_with_a_valid_digest(tmp_path: Path, registry: RegistryProc,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    layer = simple_layer({"etc/x": b"x" * 5000})
    gz = bytearray(_gz(layer))
    gz[len(gz) // 2] ^= 0xFF  # the registry stores and serves it as pushed
    with Registry(registry.host) as reg:
        _put_raw_image(reg, "lazy/gz", "1", [bytes(gz)], [sha256(layer)])
    name = f"{registry.host}/lazy/gz:1"
    cli2 = other_cli(tmp_path)
    cli2.ok("pull", "-q", name)
    res = cli2("save", "-o", str(tmp_path / "x.tar"), name)
    one_line_error(res, "does not decompress")
    res = cli2("system", "check")
    assert res.code == 1 and "does not decompress" in res.out
    monkeypatch.setenv("SHALE_PULL_VERIFY", "1")
    cli3 = other_cli(tmp_path, "root3")
    res = cli3("pull", name)
    one_line_error(res, f"layer {sha256(bytes(gz))[7:19]}")
    assert blob_listing(cli3.root) == {} and ingest_listing(cli3.root) == []
    assert cli3.ok("system", "check") == "no problems found\n"


def test_an_unverified_layer_never_stands_in_for_another_image(tmp_path: Path,
                                                               registry: RegistryProc) -> None:
    """bad claims diff_id D for a blob that is something else; good has a true blob of D.
    Whichever comes first, good gets its own (verified) blob and bad never gets D's
    content through a lie."""
    real = simple_layer({"etc/real": b"real content\n"})
    other = simple_layer({"etc/other": b"other content\n"})
    d = sha256(real)
    with Registry(registry.host) as reg:
        _put_raw_image(reg, "lazy/good", "1", [_gz(real)], [d])
        _put_raw_image(reg, "lazy/liar", "1", [_gz(other)], [d])
    good, liar = f"{registry.host}/lazy/good:1", f"{registry.host}/lazy/liar:1"
    # the liar first: its unverified record does not satisfy good's lookup; good's blob is
    # downloaded, checked in the pull (it replaces the unverified record), and good works
    cli2 = other_cli(tmp_path)
    cli2.ok("pull", "-q", liar)
    out = cli2.ok("pull", good)
    assert "Pull complete" in out and "Already exists" not in out, out
    assert _unverified(cli2.root) == {}
    code, data, err = cli2.binary("save", good)
    assert code == 0, err
    members = read_archive(data)
    (entry,) = json.loads(members["manifest.json"])
    assert [members[p] for p in entry["Layers"]] == [real]
    assert cli2.ok("system", "check") == "no problems found\n"
    # good first (unverified), then the liar: its blob must be checked in its pull, fails
    cli3 = other_cli(tmp_path, "root3")
    cli3.ok("pull", "-q", good)
    res = cli3("pull", liar)
    one_line_error(res, f"invalid diffID: expected {d}, got {sha256(other)}")
    assert list(_unverified(cli3.root)) == [d]  # good's own record, untouched
    assert cli3.ok("images", "--format", "{{.Repository}}") == f"{registry.host}/lazy/good\n"
    code, data, err = cli3.binary("save", good)
    assert code == 0, err
    assert cli3.ok("system", "check") == "no problems found\n"


# ---------------------------------------------------------------- docker and skopeo
@pytest.mark.docker
def test_docker_push_shale_pull_and_run(tmp_path: Path, docker: Docker,
                                        registry: RegistryProc, busybox_tar: Path) -> None:
    tag = f"shaletest-regin-{uuid.uuid4().hex[:8]}:1"
    docker.track(tag)
    docker("import", str(busybox_tar), tag)
    # a second layer through a build, so the image has two
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text(f"FROM {tag}\nRUN echo from-docker > /etc/motd\n")
    name = f"{registry.host}/fromdocker/shaletest-img-{uuid.uuid4().hex[:8]}:1"
    docker.track(name)
    docker.track_descendants(docker.out("image", "inspect", "-f", "{{.Id}}", tag).strip())
    docker("build", "-q", "-t", name, str(ctx))
    docker("push", name)
    docker_id = docker.out("image", "inspect", "-f", "{{.Id}}", name).strip()
    docker_digest = docker.out("image", "inspect", "-f", "{{index .RepoDigests 0}}",
                               name).strip()
    cli = other_cli(tmp_path)
    cli.ok("pull", name)
    assert cli.ok("inspect", "-f", "{{.Id}} {{index .RepoDigests 0}}", name).strip() == \
        f"{docker_id} {docker_digest}"
    if IS_ROOT:
        res = run_shale(tmp_path / "root2", "run", "--rm", name, "cat", "/etc/motd")
        assert res.returncode == 0, res.stderr
        assert res.stdout == b"from-docker\n"


@pytest.mark.docker
def test_shale_push_docker_pull_and_run_and_skopeo_inspect(
        cli: Cli, tmp_path: Path, docker: Docker, registry: RegistryProc,
        busybox_tar: Path) -> None:
    name = f"{registry.host}/fromshale/shaletest-img-{uuid.uuid4().hex[:8]}:1"
    image_id = cli.ok("import", "-c", 'CMD ["echo", "hello from shale"]', str(busybox_tar),
                      name).strip()
    digest = cli.ok("push", name).splitlines()[-1].split()[2]
    docker.track(name)
    docker("pull", name)
    assert docker.out("image", "inspect", "-f", "{{.Id}} {{index .RepoDigests 0}}",
                      name).strip() == f"{image_id} {name.rsplit(':', 1)[0]}@{digest}"
    assert docker("run", "--rm", name).stdout == b"hello from shale\n"
    if shutil.which("skopeo") is None:
        return
    info = json.loads(subprocess.run(
        ["skopeo", "inspect", "--tls-verify=false", f"docker://{name}"],
        capture_output=True, check=True).stdout)
    assert info["Digest"] == digest and info["Architecture"] == "amd64"
    raw = subprocess.run(["skopeo", "inspect", "--raw", "--tls-verify=false",
                          f"docker://{name}"], capture_output=True, check=True).stdout
    assert sha256(raw) == digest
    assert info["Layers"] == [x["digest"] for x in json.loads(raw)["layers"]]
    cfg = subprocess.run(["skopeo", "inspect", "--config", "--raw", "--tls-verify=false",
                          f"docker://{name}"], capture_output=True, check=True).stdout
    assert sha256(cfg) == image_id


@pytest.mark.docker
def test_logins_are_shared_with_docker(cli: Cli, tmp_path: Path, docker: Docker,
                                       docker_config: Path,
                                       htpasswd_registry: RegistryProc,
                                       busybox_tar: Path) -> None:
    host = htpasswd_registry.host
    name = f"{host}/shared/shaletest-img-{uuid.uuid4().hex[:8]}:1"
    cli.ok("login", "-u", "alice", "--password-stdin", host, stdin=b"secret")
    image_id = cli.ok("import", str(busybox_tar), name).strip()
    cli.ok("push", name)
    docker.track(name)
    # docker reads the login shale wrote
    docker("--config", str(docker_config), "pull", name)
    assert docker.out("image", "inspect", "-f", "{{.Id}}", name).strip() == image_id
    # and shale reads the one docker writes
    other = tmp_path / "docker-only"
    docker("--config", str(other), "login", "-u", "alice", "--password-stdin", host,
           stdin=b"secret")
    env = {**os.environ, "DOCKER_CONFIG": str(other)}
    res = subprocess.run([sys.executable, "-c",
                          "import sys; from shale.cli import main; sys.exit(main())",
                          "--root", str(tmp_path / "root2"), "pull", "-q", name],
                         capture_output=True, env=env, timeout=120, check=False)
    assert res.returncode == 0, res.stderr
    assert res.stdout.decode() == name + "\n"
