"""A client of the OCI distribution API (and docker's token auth), over ``httpclient``.

One ``Registry`` per registry host, shared by the threads of a pull or push (its HTTP client
is thread-safe; the token cache has a lock). What it does, in the spec's terms:

- ``ping``: ``GET /v2/``; a 401 teaches the auth scheme (``WWW-Authenticate``).
- auth: Basic (credentials on every request) or Bearer: a token per (realm, service,
  scopes) from ``GET realm?service=&scope=...`` (Basic credentials when known) or, with an
  identity token, the OAuth2 ``POST realm`` form; cached until shortly before it expires,
  fetched again after. A 401 on a request asks once more for the scopes the registry names
  in its challenge; a second 401 is the error (``insufficient_scope``, ``denied``).
- manifests: HEAD and GET with the full Accept list (OCI and Docker, images and indexes: a
  registry asked without it converts to schema1 and the digest changes), digest checked.
- blobs: GET streamed and resumed with ``Range`` after a dropped connection; redirects
  followed by hand so that ``Authorization`` never goes to another host.
- uploads: monolithic (``POST`` then ``PUT ?digest=``), one streaming ``PATCH`` (digest known
  only at the end), chunked ``PATCH`` with ``Content-Range`` (always the newest
  ``Location``), cross-repository mount (``201`` done, ``202`` an open session that is
  used), and the single ``POST ?digest=`` that distribution 2.8 answers with ``202``,
  dropping the body: the client then PUTs it.

Plain HTTP for localhost and 127.0.0.0/8 (as docker); other hosts use TLS with the system's
CAs (plus ``/etc/docker/certs.d/<host>/ca.crt``), or, when listed as insecure, TLS without
verification falling back to plain HTTP. The HTTP client is imported here only: ``shale run``
never pays for it.
"""

from __future__ import annotations

import base64
import contextlib
import json
import re
import threading
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode, urljoin, urlsplit

from shale import oci
from shale.auth import HUB_DOMAINS, Credentials
from shale.digest import Digest
from shale.errors import DigestMismatch, RegistryError
from shale.record import field, record
from shale.registry_http import (
    BlobReader,
    Body,
    Challenge,
    _clock,
    _merge_scopes,
    _rechunk,
    _tls_context,
    _transport_error,
    error_text,
    is_insecure,
    is_loopback,
    parse_challenge,
)

if TYPE_CHECKING:
    from shale.httpclient import Response, Transport

MANIFEST_ACCEPT = ", ".join((oci.OCI_INDEX, oci.OCI_MANIFEST, oci.DOCKER_LIST,
                             oci.DOCKER_MANIFEST))
USER_AGENT = "shale/0.1.0"
MAX_MANIFEST = 4 << 20
CHUNK = 1 << 20
RESUME_TRIES = 5
TOKEN_DEFAULT_TTL = 60
TOKEN_MARGIN = 10  # refresh this many seconds before a token expires


@record
class _Token:
    value: str
    expires: float


@record
class ManifestResult:
    raw: bytes
    media_type: str
    digest: Digest


@record
class UploadStats:
    """What a client did, for tests and the bench (no locking needed: ints under the GIL)."""
    requests: dict[str, int] = field(default_factory=dict)
    resumed: int = 0
    single_post_fallbacks: int = 0

    def count(self, method: str) -> None:
        self.requests[method] = self.requests.get(method, 0) + 1


class Registry:
    """A client of one registry host."""

    def __init__(self, domain: str, credentials: Credentials | None = None, *,
                 insecure: Sequence[str] = (), timeout: float = 120.0,
                 transport: Transport | None = None) -> None:
        from shale.httpclient import Client

        self.domain = domain
        self.host = "registry-1.docker.io" if domain in HUB_DOMAINS else domain
        self.credentials = credentials if credentials is not None else Credentials()
        self._insecure = is_insecure(self.host, insecure)
        self.scheme = "http" if is_loopback(self.host) else "https"
        # plain HTTP on loopback: no TLS context to build (it costs ~70 ms of CA loading)
        self._tls_verify: Any = False if self._insecure or self.scheme == "http" else \
            _tls_context(self.host)
        self._client = Client(verify=self._tls_verify, timeout=timeout, connect_timeout=15.0,
                              headers={"User-Agent": USER_AGENT}, transport=transport)
        self._challenge: Challenge | None = None
        self._tokens: dict[tuple[str, str, tuple[str, ...]], _Token] = {}
        self._lock = threading.Lock()
        self._pinged = False
        self.refresh_token = ""
        self.stats = UploadStats()

    # ---- plumbing --------------------------------------------------------------------
    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> Registry:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def base(self) -> str:
        return f"{self.scheme}://{self.host}"

    def url(self, path: str) -> str:
        return f"{self.base}/v2/{path}"

    def _send(self, method: str, url: str, headers: dict[str, str], body: Body,
              stream: bool) -> Response:
        """One request, following redirects by hand: ``Authorization`` never crosses to
        another host."""
        from shale.httpclient import TransportError

        origin = urlsplit(url).netloc
        for _ in range(10):
            content = body() if callable(body) else body
            self.stats.count(method)
            try:
                resp = self._client.send(method, url, headers, content, stream=stream)
            except TransportError as e:
                raise _transport_error(method, url, e) from None
            if resp.status_code in (301, 302, 303, 307, 308) and "location" in resp.headers:
                resp.close()
                url = urljoin(url, resp.headers["location"])
                if urlsplit(url).netloc != origin:
                    headers = {k: v for k, v in headers.items()
                               if k.lower() != "authorization"}
                if resp.status_code == 303 or (resp.status_code in (301, 302)
                                               and method == "POST"):
                    method, body = "GET", None
                continue
            return resp
        raise RegistryError(f'{method.title()} "{url}": stopped after 10 redirects')

    def request(self, method: str, url: str, *, scopes: Sequence[str] = (),
                headers: dict[str, str] | None = None, body: Body = None,
                stream: bool = False, retry_auth: bool = True) -> Response:
        """A request with auth; a 401 is answered once (new token, basic credentials)."""
        if not self._pinged:
            before = self.base
            self.ping()
            if self.base != before and url.startswith(before + "/"):
                url = self.base + url[len(before):]  # an insecure registry fell back to HTTP
        for attempt in (0, 1):
            hdrs = dict(headers or {})
            hdrs.update(self._auth_headers(scopes, force=attempt > 0))
            resp = self._send(method, url, hdrs, body, stream)
            if resp.status_code != 401 or attempt or not retry_auth:
                return resp
            ch = parse_challenge(resp.headers.get("www-authenticate", ""))
            if ch is None:
                return resp
            resp.read()
            resp.close()
            with self._lock:
                self._challenge = ch
            if ch.scheme == "bearer" and ch.scope:
                scopes = _merge_scopes([*scopes, ch.scope])
            elif ch.scheme == "basic" and not self.credentials:
                return resp
        raise AssertionError("unreachable")

    def _auth_headers(self, scopes: Sequence[str], force: bool = False) -> dict[str, str]:
        ch = self._challenge
        if ch is None:
            return {}
        if ch.scheme == "basic":
            if not self.credentials.username:
                return {}
            raw = f"{self.credentials.username}:{self.credentials.password}".encode()
            return {"Authorization": "Basic " + base64.b64encode(raw).decode()}
        if ch.scheme == "bearer":
            return {"Authorization": "Bearer " + self.token(ch, scopes, force=force)}
        return {}

    # ---- auth ------------------------------------------------------------------------
    def ping(self) -> None:
        """``GET /v2/``: learn the auth scheme. For an insecure registry, fall back to
        plain HTTP when TLS does not answer."""
        try:
            resp = self._send("GET", self.url(""), {}, None, False)
        except RegistryError:
            if not (self._insecure and self.scheme == "https"):
                raise
            self.scheme = "http"
            resp = self._send("GET", self.url(""), {}, None, False)
        self._pinged = True
        if resp.status_code == 401:
            self._challenge = parse_challenge(resp.headers.get("www-authenticate", ""))
            return
        if resp.status_code >= 400:
            raise RegistryError(f'Get "{self.url("")}": {error_text(resp)}')

    def login(self) -> None:
        """Check the credentials (docker login): Basic against ``/v2/``, Bearer at the token
        server (asking for an offline refresh token, kept in ``refresh_token``)."""
        self.ping()
        ch = self._challenge
        if ch is None:
            return  # an open registry accepts anyone
        if ch.scheme == "basic":
            resp = self._send("GET", self.url(""), self._auth_headers(()), None, False)
            if resp.status_code == 401:
                raise RegistryError(f'login attempt to {self.url("")} failed with status: '
                                    "401 Unauthorized")
            if resp.status_code >= 400:
                raise RegistryError(f'Get "{self.url("")}": {error_text(resp)}')
            return
        if ch.scheme == "bearer":
            self._fetch_token(ch, (), offline=True)
            return
        raise RegistryError(f"unsupported auth scheme {ch.scheme!r} at {self.host}")

    def token(self, ch: Challenge, scopes: Sequence[str], force: bool = False) -> str:
        key = (ch.realm, ch.service, tuple(sorted(set(scopes))))
        with self._lock:
            tok = self._tokens.get(key)
            if tok is not None and not force and tok.expires - TOKEN_MARGIN > _clock():
                return tok.value
        value, ttl = self._fetch_token(ch, key[2])
        with self._lock:
            self._tokens[key] = _Token(value, _clock() + ttl)
        return value

    def _fetch_token(self, ch: Challenge, scopes: Sequence[str], offline: bool = False
                     ) -> tuple[str, float]:
        if not ch.realm:
            raise RegistryError(f"{self.host}: bearer challenge without a realm")
        creds = self.credentials
        refresh = creds.identity_token or self.refresh_token
        if refresh:
            resp = self._send("POST", ch.realm, {
                "Content-Type": "application/x-www-form-urlencoded"}, urlencode({
                    "grant_type": "refresh_token", "refresh_token": refresh,
                    "service": ch.service, "client_id": "shale",
                    "scope": " ".join(scopes)}).encode(), False)
            if resp.status_code not in (404, 405):
                return self._token_answer(resp, ch)
        query: list[tuple[str, str]] = []
        if ch.service:
            query.append(("service", ch.service))
        query += [("scope", s) for s in scopes]
        headers: dict[str, str] = {}
        if creds.username:
            query.append(("account", creds.username))
            raw = f"{creds.username}:{creds.password}".encode()
            headers["Authorization"] = "Basic " + base64.b64encode(raw).decode()
        if offline:
            query += [("client_id", "shale"), ("offline_token", "true")]
        sep = "&" if "?" in ch.realm else "?"
        url = ch.realm + (sep + urlencode(query) if query else "")
        return self._token_answer(self._send("GET", url, headers, None, False), ch)

    def _token_answer(self, resp: Response, ch: Challenge) -> tuple[str, float]:
        if resp.status_code == 401:
            raise RegistryError(f"Get \"{ch.realm}\": unauthorized: incorrect username or "
                                "password")
        if resp.status_code >= 400:
            raise RegistryError(f"token server {ch.realm}: {error_text(resp)}")
        try:
            data = json.loads(resp.read())
        except ValueError:
            raise RegistryError(f"token server {ch.realm}: invalid JSON answer") from None
        tok = (data.get("token") or data.get("access_token")) if isinstance(data, dict) \
            else None
        if not isinstance(tok, str) or not tok:
            raise RegistryError(f"token server {ch.realm}: no token in the answer")
        if isinstance(data.get("refresh_token"), str) and data["refresh_token"]:
            self.refresh_token = str(data["refresh_token"])
        try:
            ttl = float(data.get("expires_in") or TOKEN_DEFAULT_TTL)
        except (TypeError, ValueError):
            ttl = TOKEN_DEFAULT_TTL
        return tok, max(ttl, 1.0)

    # ---- manifests -------------------------------------------------------------------
    def head_manifest(self, repo: str, ref: str) -> tuple[Digest, str] | None:
        """(digest, media type) of a manifest, or None when the registry cannot say
        (no ``Docker-Content-Digest`` on HEAD): the caller GETs it instead."""
        resp = self.request("HEAD", self.url(f"{repo}/manifests/{ref}"),
                            scopes=[f"repository:{repo}:pull"],
                            headers={"Accept": MANIFEST_ACCEPT})
        if resp.status_code >= 400:
            return None  # a HEAD has no error body: the GET that follows tells why
        dig = resp.headers.get("docker-content-digest", "")
        if not dig.startswith("sha256:"):
            return None
        return Digest(dig), resp.headers.get("content-type", "").split(";")[0].strip()

    def get_manifest(self, repo: str, ref: str) -> ManifestResult:
        resp = self.request("GET", self.url(f"{repo}/manifests/{ref}"),
                            scopes=[f"repository:{repo}:pull"],
                            headers={"Accept": MANIFEST_ACCEPT}, stream=True)
        try:
            if resp.status_code == 404:
                raise self._manifest_unknown(repo, ref, resp)
            if resp.status_code >= 400:
                raise RegistryError(f"{self.domain}/{repo}:{ref}: {error_text(resp)}")
            raw = b""
            for chunk in resp.iter_bytes():
                raw += chunk
                if len(raw) > MAX_MANIFEST:
                    raise RegistryError(f"{self.domain}/{repo}:{ref}: manifest larger "
                                        "than 4 MiB")
        finally:
            resp.close()
        digest = Digest.of_bytes(raw)
        if ref.startswith("sha256:") and digest.value != ref:
            raise DigestMismatch(f"manifest verification failed for digest {ref}")
        header = resp.headers.get("docker-content-digest", "")
        if header.startswith("sha256:") and header != digest.value and \
                not ref.startswith("sha256:"):
            raise DigestMismatch(f"{self.domain}/{repo}:{ref}: manifest digest "
                                 f"{digest} does not match the registry's {header}")
        mt = resp.headers.get("content-type", "").split(";")[0].strip()
        with contextlib.suppress(ValueError):
            body_mt = json.loads(raw).get("mediaType")
            if isinstance(body_mt, str) and body_mt:
                mt = body_mt
        return ManifestResult(raw, mt, digest)

    def _manifest_unknown(self, repo: str, ref: str, resp: Response) -> RegistryError:
        sep = "@" if ref.startswith("sha256:") else ":"
        return RegistryError(f"manifest for {self.domain}/{repo}{sep}{ref} not found: "
                             f"{error_text(resp)}")

    def put_manifest(self, repo: str, ref: str, raw: bytes, media_type: str) -> Digest:
        resp = self.request("PUT", self.url(f"{repo}/manifests/{ref}"),
                            scopes=[f"repository:{repo}:pull,push"],
                            headers={"Content-Type": media_type}, body=raw)
        if resp.status_code not in (200, 201, 202):
            raise RegistryError(f"{self.domain}/{repo}:{ref}: {error_text(resp)}")
        digest = Digest.of_bytes(raw)
        header = resp.headers.get("docker-content-digest", "")
        if header.startswith("sha256:") and header != digest.value:
            raise RegistryError(f"{self.domain}/{repo}:{ref}: the registry stored the "
                                f"manifest as {header}, not {digest}")
        return digest

    def list_tags(self, repo: str) -> list[str]:
        tags: list[str] = []
        url: str | None = self.url(f"{repo}/tags/list")
        while url:
            resp = self.request("GET", url, scopes=[f"repository:{repo}:pull"])
            if resp.status_code >= 400:
                raise RegistryError(f"{self.domain}/{repo}: {error_text(resp)}")
            data = json.loads(resp.read() or b"{}")
            tags.extend(str(t) for t in (data.get("tags") or []))
            url = None
            m = re.search(r"<([^>]+)>\s*;\s*rel=\"?next\"?", resp.headers.get("link", ""))
            if m:
                url = urljoin(self.base + "/", m.group(1))
        return tags

    # ---- blobs -----------------------------------------------------------------------
    def blob_exists(self, repo: str, digest: Digest) -> bool:
        resp = self.request("HEAD", self.url(f"{repo}/blobs/{digest}"),
                            scopes=[f"repository:{repo}:pull"])
        if resp.status_code == 404:
            return False
        if resp.status_code >= 400:
            raise RegistryError(f"{self.domain}/{repo}: blob {digest}: {error_text(resp)}")
        return True

    def open_blob(self, repo: str, digest: Digest, size: int = -1,
                  on_data: Callable[[int], None] | None = None) -> BlobReader:
        return BlobReader(self, repo, digest, size, on_data)

    def get_blob(self, repo: str, digest: Digest, limit: int = 64 << 20) -> bytes:
        """A small blob (a config) in memory, verified."""
        parts: list[bytes] = []
        got = 0
        with self.open_blob(repo, digest) as r:
            while got <= limit and (part := r.read(limit + 1 - got)):
                parts.append(part)
                got += len(part)
        data = b"".join(parts)
        if len(data) > limit:
            raise RegistryError(f"blob {digest} is larger than {limit} bytes")
        if Digest.of_bytes(data) != digest:
            raise DigestMismatch(f"blob {digest}: digest mismatch: got "
                                 f"{Digest.of_bytes(data)}")
        return data

    # ---- uploads ---------------------------------------------------------------------
    def _push_scopes(self, repo: str, mount_from: str = "") -> list[str]:
        scopes = [f"repository:{repo}:pull,push"]
        if mount_from:
            scopes.append(f"repository:{mount_from}:pull")
        return scopes

    def start_upload(self, repo: str, mount: Digest | None = None, mount_from: str = ""
                     ) -> tuple[bool, str]:
        """``POST .../blobs/uploads/`` (with ``?mount=&from=``): (mounted, location). A
        refused mount (202) hands back an open session, used for the upload."""
        query = ""
        if mount is not None:
            query = "?" + urlencode({"mount": mount.value, "from": mount_from})
        resp = self.request("POST", self.url(f"{repo}/blobs/uploads/") + query,
                            scopes=self._push_scopes(repo, mount_from),
                            headers={"Content-Length": "0"}, body=b"")
        if resp.status_code == 201 and mount is not None:
            return True, resp.headers.get("location", "")
        if resp.status_code != 202:
            raise RegistryError(f"{self.domain}/{repo}: starting an upload: "
                                f"{error_text(resp)}")
        return False, self._location(resp, self.url(f"{repo}/blobs/uploads/"))

    def _location(self, resp: Response, url: str) -> str:
        loc = str(resp.headers.get("location") or "")
        if not loc:
            raise RegistryError(f"{self.domain}: upload answer without a Location")
        return urljoin(url, loc)

    @staticmethod
    def _with_digest(location: str, digest: Digest) -> str:
        sep = "&" if urlsplit(location).query else "?"
        return f"{location}{sep}{urlencode({'digest': digest.value})}"

    def put_upload(self, repo: str, location: str, digest: Digest, size: int,
                   body: Body) -> None:
        """Finish an upload session with the whole blob (or, ``size`` 0 and no body, with
        what PATCHes sent)."""
        headers = {"Content-Type": "application/octet-stream", "Content-Length": str(size)}
        resp = self.request("PUT", self._with_digest(location, digest),
                            scopes=self._push_scopes(repo), headers=headers,
                            body=body if body is not None else b"")
        if resp.status_code not in (201, 204):
            raise RegistryError(f"{self.domain}/{repo}: uploading {digest}: "
                                f"{error_text(resp)}")
        resp.read()

    def patch_stream(self, repo: str, location: str, chunks: Iterable[bytes]) -> str:
        """One streaming PATCH without Content-Range (what docker and skopeo do when the
        digest is known only at the end); returns the new location."""
        resp = self.request("PATCH", location, scopes=self._push_scopes(repo),
                            headers={"Content-Type": "application/octet-stream"},
                            body=lambda: chunks, retry_auth=False)
        if resp.status_code != 202:
            raise RegistryError(f"{self.domain}/{repo}: uploading: {error_text(resp)}")
        return self._location(resp, location)

    def patch_chunks(self, repo: str, location: str, chunks: Iterable[bytes]) -> str:
        """Chunked upload: a PATCH per chunk with ``Content-Range`` (inclusive, no unit),
        always to the newest ``Location`` (distribution changes ``_state`` every time);
        the offset is our own (distribution 2.8 ignores ``Content-Range``)."""
        offset = 0
        for chunk in chunks:
            end = offset + len(chunk) - 1
            resp = self.request("PATCH", location, scopes=self._push_scopes(repo), headers={
                "Content-Type": "application/octet-stream", "Content-Length": str(len(chunk)),
                "Content-Range": f"{offset}-{end}"}, body=chunk)
            if resp.status_code != 202:
                raise RegistryError(f"{self.domain}/{repo}: uploading chunk {offset}-{end}:"
                                    f" {error_text(resp)}")
            got = resp.headers.get("range", "")
            if got and got != f"0-{end}":
                raise RegistryError(f"{self.domain}/{repo}: the registry holds {got} after "
                                    f"chunk {offset}-{end}")
            location = self._location(resp, location)
            offset = end + 1
        return location

    def cancel_upload(self, repo: str, location: str) -> None:
        with contextlib.suppress(RegistryError):
            self.request("DELETE", location, scopes=self._push_scopes(repo)).close()

    def upload_blob(self, repo: str, digest: Digest, size: int, body: Callable[[], Iterable[bytes]],
                    *, location: str = "", chunk_size: int = 0) -> None:
        """Upload a blob whose digest is known: monolithic ``PUT``, or chunked PATCHes."""
        if not location:
            _, location = self.start_upload(repo)
        if chunk_size > 0 and size > chunk_size:
            location = self.patch_chunks(repo, location, _rechunk(body(), chunk_size))
            self.put_upload(repo, location, digest, 0, None)
        else:
            self.put_upload(repo, location, digest, size, body)

    def post_blob(self, repo: str, digest: Digest, data: bytes) -> None:
        """The single-request upload (``POST ?digest=`` with the body). A registry without
        it (distribution 2.8) answers 202 with a session and drops the body: PUT it then."""
        url = self.url(f"{repo}/blobs/uploads/") + "?" + urlencode({"digest": digest.value})
        resp = self.request("POST", url, scopes=self._push_scopes(repo), headers={
            "Content-Type": "application/octet-stream",
            "Content-Length": str(len(data))}, body=data)
        resp.read()
        if resp.status_code == 201:
            return
        if resp.status_code != 202:
            raise RegistryError(f"{self.domain}/{repo}: uploading {digest}: "
                                f"{error_text(resp)}")
        self.stats.single_post_fallbacks += 1
        location = self._location(resp, url)
        self.put_upload(repo, location, digest, len(data), data)


