"""What a build takes from outside its context: ``ADD http(s)://...`` (with BuildKit's
``--checksum``), and ``RUN --mount=type=secret|ssh`` fed by ``build --secret|--ssh``.

The remote files come from a real HTTP server on 127.0.0.1 started here (``serve``, also
used by ``test_build_diff.py``, where docker's classic builder fetches the same URLs).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import socket
import tarfile
import tempfile
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from container_fixtures import Shale, needs_root
from test_build import base_tar as base_tar  # re-exported: the sh fixture needs it
from test_build import build, cat, ok
from test_build import sh as sh

LAST_MODIFIED = "Wed, 01 Nov 2023 10:00:00 GMT"
LAST_MODIFIED_EPOCH = 1698832800


def _tar() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        ti = tarfile.TarInfo("inside")
        ti.size = 2
        tf.addfile(ti, io.BytesIO(b"in"))
    return buf.getvalue()


def default_files() -> dict[str, bytes]:
    return {"/f.txt": b"hello remote\n", "/t.tar": _tar(), "/dl/": b"disposition\n",
            "/slash/": b"no name\n"}


@contextlib.contextmanager
def serve(files: dict[str, bytes] | None = None) -> Iterator[str]:
    """An HTTP server on 127.0.0.1: ``files`` by path (Last-Modified fixed), ``/dl/`` with
    a Content-Disposition file name, ``/redirect`` -> ``/f.txt``, anything else 404."""
    table = files if files is not None else default_files()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path == "/redirect":
                self.send_response(302)
                self.send_header("Location", "/f.txt")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            body = table.get(self.path)
            if body is None:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Last-Modified", LAST_MODIFIED)
            if self.path == "/dl/":
                self.send_header("Content-Disposition", 'attachment; filename="named.bin"')
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def docker_tarsum(name: str, data: bytes, mode: int = 0o100600) -> str:
    """docker's hash of a downloaded file (tarsum v1 with the host's owner names)."""
    h = hashlib.sha256()
    for k, v in (("name", name), ("mode", str(mode)), ("uid", "0"), ("gid", "0"),
                 ("size", str(len(data))), ("typeflag", "0"), ("linkname", ""),
                 ("uname", "root"), ("gname", "root"), ("devmajor", "0"), ("devminor", "0")):
        h.update((k + v).encode())
    h.update(data)
    return h.hexdigest()


pytestmark = needs_root


@pytest.fixture
def files() -> Iterator[tuple[str, dict[str, bytes]]]:
    table = default_files()
    with serve(table) as url:
        yield url, table


# ---- ADD <url> -----------------------------------------------------------------------------
def test_add_url_names_modes_and_mtimes(sh: Shale, tmp_path: Path,
                                        files: tuple[str, dict[str, bytes]]) -> None:
    url, table = files
    df = (f"FROM busybox\nADD {url}/f.txt {url}/t.tar /d/\nADD {url}/f.txt /renamed\n"
          f"ADD {url}/dl/ /cd/\nADD {url}/redirect /r/\n"
          f"ADD --chown=1000:10 --chmod=640 {url}/f.txt /owned\n")
    ok(build(sh, tmp_path, df, {}, "-t", "rem"))
    out = sh.ok("run", "--rm", "rem", "stat", "-c", "%n %a %u:%g %Y %s", "/d/f.txt", "/d/t.tar",
                "/renamed", "/cd/named.bin", "/r/redirect", "/owned")
    m = LAST_MODIFIED_EPOCH
    assert out.splitlines() == [
        f"/d/f.txt 600 0:0 {m} 13", f"/d/t.tar 600 0:0 {m} {len(table['/t.tar'])}",
        f"/renamed 600 0:0 {m} 13", f"/cd/named.bin 600 0:0 {m} 12",
        f"/r/redirect 600 0:0 {m} 13", f"/owned 640 1000:10 {m} 13"]
    assert cat(sh, "rem", "/renamed") == "hello remote\n"
    assert sh("run", "--rm", "rem", "ls", "/d/inside").code != 0  # a remote tar stays a tar
    hist = sh.ok("history", "--no-trunc", "--format", "{{.CreatedBy}}", "rem").splitlines()
    assert f"/bin/sh -c #(nop) ADD {docker_tarsum('f.txt', table['/f.txt'])} in /renamed " \
        in hist


def test_add_url_cache_follows_the_content(sh: Shale, tmp_path: Path,
                                           files: tuple[str, dict[str, bytes]]) -> None:
    url, table = files
    df = f"FROM busybox\nADD {url}/f.txt /f\nRUN cat /f > /g\n"
    first = ok(build(sh, tmp_path, df, {}, "-q"))
    again = ok(sh("build", "-q", str(tmp_path / "ctx")))
    assert again == first  # fetched again, same content: all cache hits
    table["/f.txt"] = b"changed\n"
    out = ok(sh("build", "--explain", "-t", "ch", str(tmp_path / "ctx")))
    assert "Using cache" not in out and cat(sh, "ch", "/g") == "changed\n"


def test_add_url_checksum(sh: Shale, tmp_path: Path,
                          files: tuple[str, dict[str, bytes]]) -> None:
    url, table = files
    good = "sha256:" + hashlib.sha256(table["/f.txt"]).hexdigest()
    ok(build(sh, tmp_path, f"FROM busybox\nADD --checksum={good} {url}/f.txt /f\n", {},
             "-t", "sum"))
    assert cat(sh, "sum", "/f") == "hello remote\n"
    bad = "sha256:" + "0" * 64
    res = build(sh, tmp_path / "2", f"FROM busybox\nADD --checksum={bad} {url}/f.txt /f\n",
                {}, "-t", "badsum")
    assert res.code == 1 and "Dockerfile:2:" in res.err and "digest mismatch" in res.err
    assert sh("image", "inspect", "badsum").code != 0
    res = build(sh, tmp_path / "3", f"FROM busybox\nADD --checksum={good} local /f\n",
                {"local": b"x"})
    assert res.code == 1 and "checksum can't be specified for non-HTTP(S) sources" in res.err
    res = build(sh, tmp_path / "4", f"FROM busybox\nADD --checksum=md5:12 {url}/f.txt /f\n")
    assert res.code == 1 and "invalid checksum digest format" in res.err


def test_add_url_errors(sh: Shale, tmp_path: Path,
                        files: tuple[str, dict[str, bytes]]) -> None:
    url, _ = files
    res = build(sh, tmp_path, f"FROM busybox\nADD {url}/missing /m\n", {}, "-t", "nf")
    assert res.code == 1 and "Dockerfile:2:" in res.err and "status 404" in res.err
    assert sh("image", "inspect", "nf").code != 0
    res = build(sh, tmp_path / "2", f"FROM busybox\nADD {url}/slash/ /dir/\n")
    assert res.code == 1 and "cannot determine filename" in res.err
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    res = build(sh, tmp_path / "3", f"FROM busybox\nADD http://127.0.0.1:{port}/x /x\n")
    assert res.code == 1 and "Dockerfile:2:" in res.err and "Traceback" not in res.err
    res = build(sh, tmp_path / "4", f"FROM busybox\nCOPY {url}/f.txt /f\n")
    assert res.code == 1 and "source can't be a URL for COPY" in res.err
    assert sh.ok("system", "check").strip() == "no problems found"


# ---- RUN --mount=type=secret ---------------------------------------------------------------
SECRETS = """\
FROM busybox
RUN --mount=type=secret,id=tok stat -c '%a %u:%g' /run/secrets/tok > /st \\
 && cat /run/secrets/tok > /copied
RUN --mount=type=secret,id=tok,target=/etc/app/key,mode=0440,uid=1000 \\
    stat -c '%a %u' /etc/app/key > /st2
RUN --mount=type=secret,id=fromenv,env=TOKEN sh -c 'echo "$TOKEN" > /env; \\
    ls /run/secrets 2>&1 > /ls || true'
RUN --mount=type=secret,id=absent sh -c 'test -e /run/secrets/absent; echo $? > /absent'
"""


def test_secrets_reach_the_step_and_never_the_image(sh: Shale, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    secret = tmp_path / "tok.txt"
    secret.write_text("s3cr3t-value")
    monkeypatch.setenv("SHALE_TEST_TOKEN", "from-the-env")
    # what a killed build left: a dead process's secret directory is removed
    shm = Path("/dev/shm") if os.access("/dev/shm", os.W_OK) else Path(tempfile.gettempdir())
    stale = shm / "shale-secrets-999999999-x"
    stale.mkdir(exist_ok=True)
    (stale / "left").write_text("old secret")
    args = ("--secret", f"id=tok,src={secret}", "--secret", "id=fromenv,env=SHALE_TEST_TOKEN")
    out = ok(build(sh, tmp_path, SECRETS, {}, "-t", "sec", *args))
    assert not stale.exists()
    assert not [p for p in shm.glob(f"shale-secrets-{os.getpid()}-*")]  # ours are gone too
    assert "s3cr3t" not in out and "from-the-env" not in out
    assert cat(sh, "sec", "/st") == "400 0:0\n"
    assert cat(sh, "sec", "/copied") == "s3cr3t-value"  # the step copied it on purpose
    assert cat(sh, "sec", "/st2") == "440 1000\n"
    assert cat(sh, "sec", "/env") == "from-the-env\n"
    assert cat(sh, "sec", "/absent") == "1\n"   # not given, not required: no mount
    # the mount points and files are not in the image, nor the value in its metadata
    assert sh("run", "--rm", "sec", "ls", "/run/secrets").code != 0
    assert sh("run", "--rm", "sec", "ls", "/etc/app").code != 0
    code, raw, err = sh.cli.binary("save", "sec")
    assert code == 0, err
    assert raw.count(b"s3cr3t-value") == 1  # only the file the step wrote itself
    assert b"from-the-env" in raw  # /env, written by the step
    assert b"SHALE_TEST_TOKEN" not in raw and str(secret).encode() not in raw
    # a secret's value is not in the cache key: a new value reuses the steps
    secret.write_text("rotated")
    again = ok(sh("build", "-t", "sec2", *args, str(tmp_path / "ctx")))
    assert "Running in" not in again


def test_secret_errors(sh: Shale, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    df = "FROM busybox\nRUN --mount=type=secret,id=must,required cat /run/secrets/must\n"
    res = build(sh, tmp_path, df, {}, "-t", "req")
    assert res.code == 1 and "secret must: not found" in res.err
    # a failed step's container is kept for debugging, but not one holding a secret variable
    monkeypatch.setenv("SHALE_TEST_E", "hidden-value")
    res = build(sh, tmp_path / "1", "FROM busybox\nRUN --mount=type=secret,id=e,env=E false\n",
                {}, "--secret", "id=e,env=SHALE_TEST_E")
    assert res.code == 1 and "returned a non-zero code: 1" in res.err
    assert sh.ok("ps", "-aq") == ""
    res = build(sh, tmp_path / "2", "FROM busybox\nRUN true\n", {}, "--secret",
                f"id=x,src={tmp_path}/nope")
    assert res.code == 1 and "failed to stat" in res.err
    big = tmp_path / "big"
    big.write_bytes(b"x" * (500 * 1024 + 1))
    res = build(sh, tmp_path / "3", "FROM busybox\nRUN true\n", {}, "--secret",
                f"id=big,src={big}")
    assert res.code == 1 and "too big" in res.err
    res = build(sh, tmp_path / "4", "FROM busybox\nRUN --mount=type=secret,source=x,id=a true\n")
    assert res.code == 1 and "Dockerfile:2:" in res.err


# ---- RUN --mount=type=ssh ------------------------------------------------------------------
def test_ssh_agent_socket(sh: Shale, tmp_path: Path) -> None:
    """The agent's socket is bound into the step and SSH_AUTH_SOCK names it (a listening
    socket stands in for ssh-agent; busybox has no client to talk to it)."""
    path = tmp_path / "agent.sock"
    srv = socket.socket(socket.AF_UNIX)
    srv.bind(str(path))
    srv.listen(1)
    df = ("FROM busybox\nRUN --mount=type=ssh sh -c 'echo \"$SSH_AUTH_SOCK\" > /where; "
          "test -S \"$SSH_AUTH_SOCK\" && echo socket > /kind; true'\n"
          "RUN --mount=type=ssh,id=other sh -c 'echo \"[$SSH_AUTH_SOCK]\" > /none'\n")
    try:
        ok(build(sh, tmp_path, df, {}, "-t", "ssh", "--ssh", f"default={path}"))
    finally:
        srv.close()
    assert cat(sh, "ssh", "/where") == "/run/buildkit/ssh_agent.0\n"
    assert cat(sh, "ssh", "/kind") == "socket\n"
    assert cat(sh, "ssh", "/none") == "[]\n"
    assert sh("run", "--rm", "ssh", "ls", "/run/buildkit").code != 0
    res = build(sh, tmp_path / "2", "FROM busybox\nRUN true\n", {}, "--ssh",
                f"default={tmp_path}")
    assert res.code == 1 and "not an agent socket" in res.err


@pytest.mark.parametrize(("url", "disposition", "name"), [
    ("http://h/dir/file.tgz", "", "file.tgz"),
    ("http://h/dir/", 'attachment; filename="named.bin"', "named.bin"),
    ("http://h/a/..%2F..%2Fevil", "", "evil"),                 # never a path
    ("http://h/x/", 'attachment; filename="../../etc/passwd"', "passwd"),
    ("http://h/..", "", ""), ("http://h/%2e%2e", "", ""), ("http://h/a%00b", "", ""),
    ("http://h/x/", 'attachment; filename=".."', ""), ("http://h/", "", ""),
])
def test_download_names_are_plain_file_names(url: str, disposition: str, name: str) -> None:
    from shale.build.remote import _filename

    assert _filename(url, disposition) == name
