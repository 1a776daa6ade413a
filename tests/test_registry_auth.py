"""The registry client's auth flow (a transport function stands in for the registry and the
token server, on hosts that cannot exist here: challenges, scopes, token cache, expiry,
refresh, redirects) and docker's credential file (real files, a real credential-helper
executable)."""

from __future__ import annotations

import base64
import json
import os
import re
import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from shale import auth, registry
from shale.auth import Credentials
from shale.digest import Digest
from shale.errors import RegistryError
from shale.httpclient import ConnectError, ReadError, Request, Response
from shale.registry import Registry
from shale.registry_http import _merge_scopes, is_insecure, is_loopback, parse_challenge

REALM = "https://auth.example.test/token"
HOST = "reg.example.test"


class FakeRegistry:
    """A bearer-token registry and its token server, recording every request."""

    def __init__(self, *, grant: Callable[[str, str], bool] | None = None,
                 expires_in: int = 300, users: dict[str, str] | None = None) -> None:
        self.requests: list[Request] = []
        self.token_requests: list[dict[str, list[str]]] = []
        self.grant = grant or (lambda user, action: True)
        self.expires_in = expires_in
        self.users = users if users is not None else {"alice": "secret"}
        self.issued = 0

    def handler(self, req: Request) -> Response:
        self.requests.append(req)
        url = urlsplit(str(req.url))
        if url.netloc == "auth.example.test":
            return self._token(req)
        return self._registry(req, url.path)

    def _token(self, req: Request) -> Response:
        q = parse_qs(urlsplit(str(req.url)).query)
        self.token_requests.append(q)
        user = ""
        header = req.headers.get("authorization", "")
        if header.startswith("Basic "):
            u, _, p = base64.b64decode(header[6:]).decode().partition(":")
            if self.users.get(u) != p:
                return Response(401, json={"details": "bad creds"})
            user = u
        granted = []
        for scope in q.get("scope", []):
            typ, name, actions = scope.split(":")
            acts = [a for a in actions.split(",") if self.grant(user, a)]
            granted.append(f"{typ}:{name}:{','.join(sorted(acts))}")
        self.issued += 1
        token = f"tok{self.issued}|{user}|{' '.join(granted)}"
        return Response(200, json={"token": token, "expires_in": self.expires_in})

    def _registry(self, req: Request, path: str) -> Response:
        header = req.headers.get("authorization", "")
        if path == "/v2/":
            need = ""
        else:
            m = re.match(r"/v2/(.+?)/(?:manifests|blobs|tags)/", path)
            assert m is not None, path
            repo = m.group(1)
            action = "push" if req.method in ("POST", "PUT", "PATCH") else "pull"
            need = f"repository:{repo}:{action}"
        challenge = f'Bearer realm="{REALM}",service="{HOST}"'
        if need:
            acts = "pull,push" if need.endswith("push") else "pull"
            challenge += f',scope="{need.rsplit(":", 1)[0]}:{acts}"'
        if not header.startswith("Bearer "):
            return Response(401, headers={"WWW-Authenticate": challenge},
                                  json={"errors": [{"code": "UNAUTHORIZED",
                                                    "message": "authentication required"}]})
        granted = header[7:].split("|", 2)[2].split()
        typ_name, _, action = need.rpartition(":")
        ok = not need or any(g.rpartition(":")[0] == typ_name and
                             action in g.rpartition(":")[2].split(",") for g in granted)
        if not ok:
            return Response(401, headers={
                "WWW-Authenticate": challenge + ',error="insufficient_scope"'},
                json={"errors": [{"code": "DENIED",
                                  "message": "requested access to the resource is denied"}]})
        if path.endswith("/manifests/1"):
            body = b'{"schemaVersion":2}'
            return Response(200, content=body, headers={
                "Content-Type": "application/vnd.oci.image.manifest.v1+json",
                "Docker-Content-Digest": Digest.of_bytes(body).value})
        if req.method == "POST":
            return Response(202, headers={"Location": f"/v2/{repo}/blobs/uploads/u1"})
        return Response(200, json={})

    def client(self, creds: Credentials | None = None) -> Registry:
        return Registry(HOST, creds, transport=self.handler)


def test_parse_challenge_forms() -> None:
    ch = parse_challenge('Bearer realm="https://a/token",service="reg",'
                         'scope="repository:x/y:pull,push",error="insufficient_scope"')
    assert ch is not None and ch.scheme == "bearer"
    assert (ch.realm, ch.service, ch.scope, ch.error) == (
        "https://a/token", "reg", "repository:x/y:pull,push", "insufficient_scope")
    basic = parse_challenge('Basic realm="basic-realm"')
    assert basic is not None and (basic.scheme, basic.realm) == ("basic", "basic-realm")
    unquoted = parse_challenge("Bearer realm=https://a/t, service=s")
    assert unquoted is not None and (unquoted.realm, unquoted.service) == ("https://a/t", "s")
    assert parse_challenge("") is None


def test_scopes_merge_actions_of_one_repository() -> None:
    assert _merge_scopes(["repository:a:pull", "repository:a:push",
                          "repository:b:pull"]) == ["repository:a:pull,push",
                                                    "repository:b:pull"]
    assert _merge_scopes(["repository:a:pull,push repository:c:pull"]) == [
        "repository:a:pull,push", "repository:c:pull"]


def test_loopback_and_insecure_hosts() -> None:
    for h in ("localhost:5000", "127.0.0.1:5000", "127.3.4.5", "[::1]:5000", "localhost"):
        assert is_loopback(h), h
    for h in ("10.0.0.1:5000", "example.com", "reg.example.test:443"):
        assert not is_loopback(h), h
    assert is_insecure("reg.local:5000", ["reg.local:5000"])
    assert is_insecure("10.1.2.3:5000", ["10.0.0.0/8"])
    assert not is_insecure("reg.local:5000", ["other:5000", "192.168.0.0/16"])
    reg = Registry("127.0.0.1:5000", transport=lambda r: Response(200))
    assert reg.base == "http://127.0.0.1:5000"
    reg.close()
    reg = Registry(HOST, transport=lambda r: Response(200))
    assert reg.base == f"https://{HOST}"
    reg.close()
    assert Registry("docker.io").host == "registry-1.docker.io"


def test_bearer_token_for_the_scope_then_cached() -> None:
    fake = FakeRegistry()
    with fake.client(Credentials("alice", "secret")) as reg:
        m = reg.get_manifest("team/app", "1")
        assert m.raw == b'{"schemaVersion":2}'
        assert m.media_type == "application/vnd.oci.image.manifest.v1+json"
        assert reg.blob_exists("team/app", Digest.of_bytes(b"x"))
    # one token for the repository's pull scope, asked with the user's basic credentials
    assert len(fake.token_requests) == 1
    q = fake.token_requests[0]
    assert q["scope"] == ["repository:team/app:pull"]
    assert q["service"] == [HOST] and q["account"] == ["alice"]
    # every manifest request carried the full Accept list
    accepts = [r.headers.get("accept", "") for r in fake.requests if "/manifests/" in
               str(r.url)]
    assert accepts and all(a == registry.MANIFEST_ACCEPT for a in accepts)


def test_push_scope_and_mount_source_in_one_token() -> None:
    fake = FakeRegistry()
    with fake.client(Credentials("alice", "secret")) as reg:
        mounted, location = reg.start_upload("dst", mount=Digest.of_bytes(b"x"),
                                             mount_from="src/repo")
    assert not mounted and location == f"https://{HOST}/v2/dst/blobs/uploads/u1"
    assert sorted(fake.token_requests[-1]["scope"]) == ["repository:dst:pull,push",
                                                        "repository:src/repo:pull"]


def test_expired_token_is_fetched_again(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeRegistry(expires_in=60)
    now = [1000.0]
    monkeypatch.setattr(registry, "_clock", lambda: now[0])
    with fake.client() as reg:
        reg.get_manifest("app", "1")
        reg.get_manifest("app", "1")
        assert fake.issued == 1
        now[0] += 55  # within TOKEN_MARGIN of the 60 s expiry: refreshed before use
        reg.get_manifest("app", "1")
        assert fake.issued == 2
        # a token the registry refuses (revoked, expired early) is replaced once
        reg._tokens = {k: registry._Token("bogus|x|", v.expires)
                       for k, v in reg._tokens.items()}
        reg.get_manifest("app", "1")
        assert fake.issued == 3


def test_anonymous_pull_but_push_is_insufficient_scope() -> None:
    fake = FakeRegistry(grant=lambda user, action: bool(user) or action == "pull")
    with fake.client() as reg:
        reg.get_manifest("app", "1")
        with pytest.raises(RegistryError, match="denied: requested access to the resource"):
            reg.start_upload("app")
    assert "account" not in fake.token_requests[0]


def test_wrong_password_at_the_token_server() -> None:
    fake = FakeRegistry()
    with fake.client(Credentials("alice", "wrong")) as reg, \
            pytest.raises(RegistryError, match="incorrect username or password"):
        reg.login()
    with fake.client(Credentials("alice", "secret")) as reg:
        reg.login()
    q = fake.token_requests[-1]
    assert q["offline_token"] == ["true"] and "scope" not in q


def test_identity_token_uses_oauth_post_and_falls_back_to_get() -> None:
    seen: list[tuple[str, bytes]] = []

    def handler(req: Request) -> Response:
        url = str(req.url)
        if url.startswith(REALM):
            seen.append((req.method, req.content if req.method == "POST" else b""))
            if req.method == "POST":
                form = parse_qs(req.content.decode())
                assert form["grant_type"] == ["refresh_token"]
                assert form["refresh_token"] == ["rt-123"]
                return Response(200, json={"access_token": "AT", "expires_in": 300})
            return Response(200, json={"token": "GT"})
        if req.headers.get("authorization") in ("Bearer AT", "Bearer GT"):
            return Response(200, json={})
        return Response(401, headers={
            "WWW-Authenticate": f'Bearer realm="{REALM}",service="s",scope="repository:a:pull"'})

    with Registry(HOST, Credentials("", "", "rt-123"),
                  transport=handler) as reg:
        assert reg.blob_exists("a", Digest.of_bytes(b"x"))
    assert [m for m, _ in seen] == ["POST"]

    def no_oauth(req: Request) -> Response:
        if str(req.url).startswith(REALM) and req.method == "POST":
            return Response(404)
        return handler(req)

    seen.clear()
    with Registry(HOST, Credentials("", "", "rt-123"),
                  transport=no_oauth) as reg:
        assert reg.blob_exists("a", Digest.of_bytes(b"x"))
    assert [m for m, _ in seen] == ["GET"]


def test_basic_auth_challenge() -> None:
    auth_headers: list[str | None] = []

    def handler(req: Request) -> Response:
        h = req.headers.get("authorization")
        auth_headers.append(h)
        good = "Basic " + base64.b64encode(b"bob:pw").decode()
        if h != good:
            return Response(401, headers={"WWW-Authenticate": 'Basic realm="r"'})
        return Response(200, json={})

    with Registry(HOST, Credentials("bob", "pw"),
                  transport=handler) as reg:
        reg.login()
        assert reg.blob_exists("x", Digest.of_bytes(b"x"))
    assert auth_headers[0] is None and auth_headers[-1] is not None
    with Registry(HOST, Credentials("bob", "nope"),
                  transport=handler) as reg, \
            pytest.raises(RegistryError, match="401 Unauthorized"):
        reg.login()


def test_redirect_drops_authorization_for_another_host() -> None:
    seen: dict[str, str | None] = {}
    data = b"blob bytes"
    digest = Digest.of_bytes(data)

    def handler(req: Request) -> Response:
        url = urlsplit(str(req.url))
        seen[f"{url.netloc}{url.path}"] = req.headers.get("authorization")
        if url.netloc == "cdn.example.test":
            return Response(200, content=data)
        if url.path == "/v2/":
            return Response(401, headers={"WWW-Authenticate": 'Basic realm="r"'})
        if url.path.endswith("/same"):
            return Response(307, headers={"Location": f"/v2/a/blobs/{digest}"})
        if url.path.endswith(f"/blobs/{digest}") and "hop" not in url.query:
            return Response(307, headers={
                "Location": "https://cdn.example.test/blob?sig=1"})
        return Response(200, content=data)

    with Registry(HOST, Credentials("bob", "pw"),
                  transport=handler) as reg:
        assert reg.get_blob("a", digest) == data
        resp = reg.request("GET", reg.url("a/blobs/same"))
        resp.close()
    assert seen[f"{HOST}/v2/a/blobs/{digest}"] is not None
    assert seen["cdn.example.test/blob"] is None
    assert seen[f"{HOST}/v2/a/blobs/same"] is not None


def test_blob_resume_with_range_after_a_cut() -> None:
    data = os.urandom(3 << 20)
    digest = Digest.of_bytes(data)
    ranges: list[str | None] = []

    def cut(body: bytes) -> Iterator[bytes]:
        yield body[:1 << 20]
        raise ReadError("connection reset by peer")

    def handler(req: Request) -> Response:
        if urlsplit(req.url).path == "/v2/":
            return Response(200)
        rng = req.headers.get("range")
        ranges.append(rng)
        if rng is None:
            return Response(200, stream=cut(data))
        start = int(rng.split("=")[1].rstrip("-"))
        if len(ranges) == 2:  # a server that ignores Range once: the client skips
            return Response(200, content=data)
        return Response(206, content=data[start:], headers={
            "Content-Range": f"bytes {start}-{len(data) - 1}/{len(data)}"})

    with Registry(HOST, transport=handler) as reg:
        reader = reg.open_blob("a", digest, len(data))
        got = reader.read()
        reader.close()
        assert got == data
    assert ranges == [None, "bytes=1048576-"]


# ------------------------------------------------------------------- credential store
@pytest.fixture
def docker_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    d = tmp_path / "dockercfg"
    monkeypatch.setenv("DOCKER_CONFIG", str(d))
    return d


def test_config_json_auths_round_trip(docker_config: Path) -> None:
    docker_config.mkdir()
    (docker_config / "config.json").write_text(json.dumps(
        {"auths": {"other:5000": {"auth": "eDp5"}}, "psFormat": "table {{.ID}}"}))
    auth.store_credentials("127.0.0.1:5000", Credentials("alice", "s3:cr=t"))
    data = json.loads((docker_config / "config.json").read_text())
    assert data["psFormat"] == "table {{.ID}}" and data["auths"]["other:5000"]
    assert base64.b64decode(data["auths"]["127.0.0.1:5000"]["auth"]) == b"alice:s3:cr=t"
    assert stat.S_IMODE((docker_config / "config.json").stat().st_mode) == 0o600
    assert auth.get_credentials("127.0.0.1:5000") == Credentials("alice", "s3:cr=t")
    assert auth.get_credentials("other:5000") == Credentials("x", "y")
    assert not auth.get_credentials("nowhere:1")
    # docker Hub lives under its legacy key
    auth.store_credentials("docker.io", Credentials("hubuser", "pw"))
    data = json.loads((docker_config / "config.json").read_text())
    assert "https://index.docker.io/v1/" in data["auths"]
    assert auth.get_credentials("docker.io").username == "hubuser"
    assert auth.erase_credentials("127.0.0.1:5000")
    assert not auth.erase_credentials("127.0.0.1:5000")
    assert not auth.get_credentials("127.0.0.1:5000")


def test_config_keys_with_scheme_are_found(docker_config: Path) -> None:
    docker_config.mkdir()
    (docker_config / "config.json").write_text(json.dumps({"auths": {
        "https://reg.example.test/v2/": {"username": "u", "password": "p"}}}))
    assert auth.get_credentials("reg.example.test") == Credentials("u", "p")


def test_credential_helpers(docker_config: Path, tmp_path: Path,
                            monkeypatch: pytest.MonkeyPatch) -> None:
    """A real ``docker-credential-*`` executable: credHelpers beats credsStore, which
    beats auths; store and erase go to the helper."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    store = tmp_path / "helper-store.json"
    store.write_text("{}")
    for name in ("shaletest", "other"):
        script = bindir / f"docker-credential-{name}"
        script.write_text(f"""#!/usr/bin/env python3
import json, sys
store = json.load(open({str(store)!r}))
verb = sys.argv[1]
if verb == "get":
    server = sys.stdin.read().strip()
    if "{name}:" + server not in store:
        print("credentials not found in native keychain"); sys.exit(1)
    user, secret = store["{name}:" + server]
    print(json.dumps({{"ServerURL": server, "Username": user, "Secret": secret}}))
elif verb == "store":
    req = json.load(sys.stdin)
    store["{name}:" + req["ServerURL"]] = [req["Username"], req["Secret"]]
    json.dump(store, open({str(store)!r}, "w"))
elif verb == "erase":
    store.pop("{name}:" + sys.stdin.read().strip(), None)
    json.dump(store, open({str(store)!r}, "w"))
""")
        script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}:{os.environ['PATH']}")
    docker_config.mkdir()
    (docker_config / "config.json").write_text(json.dumps({
        "auths": {"a.test": {"auth": base64.b64encode(b"file:pw").decode()}},
        "credsStore": "shaletest", "credHelpers": {"b.test": "other"}}))
    assert not auth.get_credentials("a.test")  # credsStore wins over auths
    auth.store_credentials("a.test", Credentials("alice", "pw1"))
    auth.store_credentials("b.test", Credentials("bob", "pw2"))
    saved = json.loads(store.read_text())
    assert saved == {"shaletest:a.test": ["alice", "pw1"], "other:b.test": ["bob", "pw2"]}
    assert auth.get_credentials("a.test") == Credentials("alice", "pw1")
    assert auth.get_credentials("b.test") == Credentials("bob", "pw2")
    assert auth.erase_credentials("b.test")
    assert not auth.get_credentials("b.test")
    (docker_config / "config.json").write_text(json.dumps({"credsStore": "missing"}))
    with pytest.raises(RegistryError, match="docker-credential-missing not found"):
        auth.get_credentials("a.test")


def test_insecure_registry_falls_back_to_plain_http() -> None:
    seen: list[str] = []

    def handler(req: Request) -> Response:
        url = urlsplit(req.url)
        seen.append(f"{url.scheme}://{url.hostname}{url.path}")
        if url.scheme == "https":
            raise ConnectError("[SSL: WRONG_VERSION_NUMBER] wrong version number")
        return Response(200, json={})

    with Registry(HOST, insecure=[HOST], transport=handler) as reg:
        assert reg.blob_exists("a", Digest.of_bytes(b"x"))
        assert reg.base == f"http://{HOST}"
    assert seen[0] == f"https://{HOST}/v2/" and seen[1:] == [
        f"http://{HOST}/v2/", f"http://{HOST}/v2/a/blobs/{Digest.of_bytes(b'x')}"]
    # not listed: TLS only, and the failure is one clear error
    seen.clear()
    with Registry(HOST, transport=handler) as reg, \
            pytest.raises(RegistryError, match=f'Get "https://{HOST}/v2/": dial tcp'):
        reg.blob_exists("a", Digest.of_bytes(b"x"))
