"""Distribution-API plumbing beside ``registry.Registry``: auth challenges, error
text, insecure/loopback rules, TLS contexts, scope merging, and ``BlobReader`` (a blob
GET that resumes with ``Range`` after a dropped connection)."""

from __future__ import annotations

import contextlib
import io
import ipaddress
import json
import os
import re
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from shale.digest import Digest
from shale.errors import DigestMismatch, RegistryError
from shale.record import record

if TYPE_CHECKING:
    from shale.httpclient import Response
    from shale.registry import Registry

CHUNK = 1 << 20
RESUME_TRIES = 5


Body = bytes | Callable[[], Iterable[bytes]] | None


@record(frozen=True)
class Challenge:
    scheme: str                      # "basic" or "bearer"
    params: dict[str, str]

    @property
    def realm(self) -> str:
        return self.params.get("realm", "")

    @property
    def service(self) -> str:
        return self.params.get("service", "")

    @property
    def scope(self) -> str:
        return self.params.get("scope", "")

    @property
    def error(self) -> str:
        return self.params.get("error", "")


_PARAM = re.compile(r'\s*([A-Za-z0-9_.-]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]*))\s*,?')


def parse_challenge(header: str) -> Challenge | None:
    """The first challenge of a ``WWW-Authenticate`` header (RFC 7235)."""
    header = header.strip()
    if not header:
        return None
    scheme, _, rest = header.partition(" ")
    params: dict[str, str] = {}
    pos = 0
    while pos < len(rest):
        m = _PARAM.match(rest, pos)
        if m is None or m.end() == pos:
            break
        value = m.group(2) if m.group(2) is not None else m.group(3) or ""
        params[m.group(1).lower()] = re.sub(r"\\(.)", r"\1", value)
        pos = m.end()
    return Challenge(scheme.lower(), params)


def is_loopback(host: str) -> bool:
    name = _host_only(host)
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def _host_only(host: str) -> str:
    if host.startswith("["):
        return host[1:].split("]", 1)[0]
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def is_insecure(host: str, insecure: Sequence[str]) -> bool:
    """``host`` matches an ``--insecure-registry`` entry: ``host[:port]`` or a CIDR."""
    name = _host_only(host)
    for entry in insecure:
        entry = entry.strip().removeprefix("http://").removeprefix("https://").rstrip("/")
        if entry in (host, name):
            return True
        if "/" in entry:
            with contextlib.suppress(ValueError):
                if ipaddress.ip_address(name) in ipaddress.ip_network(entry, strict=False):
                    return True
    return False


def error_text(resp: Response) -> str:
    """docker's rendering of a registry error: ``code words: message``; a bearer
    challenge's ``error`` comes first, as docker's client reads it (RFC 6750 3.1)."""
    ch = parse_challenge(resp.headers.get("www-authenticate", ""))
    if ch is not None and ch.scheme == "bearer" and ch.error in ("insufficient_scope",
                                                                 "invalid_token"):
        if ch.error == "insufficient_scope":
            text = "denied: " + (ch.params.get("error_description") or
                                 "requested access to the resource is denied")
            return f"{text} (insufficient_scope)"
        return "unauthorized: " + (ch.params.get("error_description") or
                                   "authentication required")
    try:
        data = json.loads(resp.read() or b"{}")
    except ValueError:
        data = {}
    errors = data.get("errors") if isinstance(data, dict) else None
    if isinstance(errors, list) and errors:
        parts = []
        for e in errors:
            if not isinstance(e, dict):
                continue
            code = str(e.get("code") or "unknown").lower().replace("_", " ")
            msg = str(e.get("message") or "")
            parts.append(f"{code}: {msg}" if msg else code)
        if parts:
            return "; ".join(parts)
    if resp.status_code == 401:
        return "unauthorized: authentication required"
    if resp.status_code == 403:
        return "denied: requested access to the resource is denied"
    if resp.status_code == 404:
        return "not found"
    return f"unexpected HTTP status {resp.status_code} {resp.reason_phrase}".rstrip()


class BlobReader(io.RawIOBase):
    """A blob's bytes as a stream. A connection that drops (or ends early) is reopened
    with ``Range: bytes=N-`` and reading goes on where it stopped; a registry that answers
    a range with the whole blob (200) has the first N bytes skipped."""

    def __init__(self, reg: Registry, repo: str, digest: Digest, size: int,
                 on_data: Callable[[int], None] | None) -> None:
        super().__init__()
        self.reg, self.repo, self.digest, self.size = reg, repo, digest, size
        self.offset = 0
        self._on_data = on_data
        self._resp: Response | None = None
        self._iter: Iterator[bytes] | None = None
        self._buf = b""
        self._skip = 0
        self._tries = 0
        self._done = False

    def readable(self) -> bool:
        return True

    def _open(self) -> None:
        headers = {"Accept-Encoding": "identity"}
        if self.offset:
            headers["Range"] = f"bytes={self.offset}-"
        resp = self.reg.request("GET", self.reg.url(f"{self.repo}/blobs/{self.digest}"),
                                scopes=[f"repository:{self.repo}:pull"], headers=headers,
                                stream=True)
        if resp.status_code == 404:
            resp.read()
            resp.close()
            raise RegistryError(f"{self.reg.domain}/{self.repo}: blob {self.digest}: "
                                f"{error_text(resp)}")
        if resp.status_code >= 400:
            resp.read()
            resp.close()
            raise RegistryError(f"{self.reg.domain}/{self.repo}: blob {self.digest}: "
                                f"{error_text(resp)}")
        self._skip = 0
        if self.offset:
            if resp.status_code == 206:
                m = re.match(r"bytes (\d+)-", resp.headers.get("content-range", ""))
                if m is None or int(m.group(1)) != self.offset:
                    resp.close()
                    raise RegistryError(f"blob {self.digest}: bad Content-Range on resume")
            else:
                self._skip = self.offset
            self.reg.stats.resumed += 1
        self._resp = resp
        self._iter = resp.iter_bytes()  # as received: a cut keeps what arrived

    def _next_chunk(self) -> bytes:
        from shale.httpclient import TransportError

        while True:
            if self._iter is None:
                self._open()
            assert self._iter is not None
            try:
                chunk = next(self._iter)
            except StopIteration:
                self._close_resp()
                if self.size >= 0 and self.offset < self.size:
                    self._retry(RegistryError(f"blob {self.digest}: connection closed at "
                                              f"{self.offset} of {self.size} bytes"))
                    continue
                return b""
            except TransportError as e:
                self._close_resp()
                self._retry(_transport_error("GET", self.reg.url(
                    f"{self.repo}/blobs/{self.digest}"), e))
                continue
            if self._skip:
                cut = min(self._skip, len(chunk))
                chunk, self._skip = chunk[cut:], self._skip - cut
                if not chunk:
                    continue
            if 0 <= self.size < self.offset + len(chunk):
                raise DigestMismatch(f"blob {self.digest}: longer than its {self.size} bytes")
            self.offset += len(chunk)
            if self._on_data is not None:
                self._on_data(len(chunk))
            return chunk

    def _retry(self, err: RegistryError) -> None:
        self._tries += 1
        if self._tries > RESUME_TRIES:
            raise err
        time.sleep(min(0.2 * self._tries, 1.0))

    def _close_resp(self) -> None:
        if self._resp is not None:
            self._resp.close()
        self._resp, self._iter = None, None

    def chunks(self) -> Iterator[bytes]:
        """The rest of the blob in the pieces it arrives in (resumed as ``read`` is), with
        no copying: what a pull that only stores and hashes the blob reads."""
        if self._buf:
            buf, self._buf = self._buf, b""
            yield buf
        while not self._done:
            chunk = self._next_chunk()
            if not chunk:
                self._done = True
                return
            yield chunk

    def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
        if not self._buf:
            if self._done:
                return 0
            self._buf = self._next_chunk()
            if not self._buf:
                self._done = True
                return 0
        view = memoryview(b).cast("B")
        n = min(len(view), len(self._buf))
        view[:n] = self._buf[:n]
        self._buf = self._buf[n:]
        return n

    def close(self) -> None:
        self._close_resp()
        super().close()


def _clock() -> float:
    return time.time()


def _rechunk(chunks: Iterable[bytes], size: int) -> Iterator[bytes]:
    buf = bytearray()
    for c in chunks:
        buf += c
        while len(buf) >= size:
            yield bytes(buf[:size])
            del buf[:size]
    if buf:
        yield bytes(buf)


def _merge_scopes(scopes: Sequence[str]) -> list[str]:
    """Scopes for one token: actions of the same resource joined (``pull`` + ``push``)."""
    merged: dict[str, list[str]] = {}
    for s in scopes:
        for one in s.split():
            typ, _, rest = one.partition(":")
            name, _, actions = rest.rpartition(":")
            acts = merged.setdefault(f"{typ}:{name}", [])
            acts.extend(a for a in actions.split(",") if a and a not in acts)
    return [f"{k}:{','.join(sorted(v))}" for k, v in merged.items()]


def _transport_error(method: str, url: str, e: Exception) -> RegistryError:
    from shale.httpclient import ConnectError, TimeoutException

    reason = str(e) or type(e).__name__
    m = re.search(r"\[Errno -?\d+\] (.*)", reason)
    if m:
        reason = m.group(1)
    if isinstance(e, ConnectError):
        where = urlsplit(url)
        port = where.port or (443 if where.scheme == "https" else 80)
        reason = reason[0].lower() + reason[1:] if reason else reason
        reason = f"dial tcp {where.hostname}:{port}: connect: {reason}"
    elif isinstance(e, TimeoutException):
        reason = f"timeout: {reason}"
    return RegistryError(f'{method.title()} "{url}": {reason}')


def _tls_context(host: str) -> Any:
    """The system's CAs, plus docker's per-registry ``/etc/docker/certs.d/<host>/*.crt``
    (and a client certificate pair ``*.cert``/``*.key`` there)."""
    import ssl

    ctx = ssl.create_default_context()
    d = Path("/etc/docker/certs.d") / host
    if d.is_dir():
        for p in sorted(d.iterdir()):
            if p.suffix == ".crt":
                ctx.load_verify_locations(cafile=str(p))
            elif p.suffix == ".cert" and p.with_suffix(".key").exists():
                ctx.load_cert_chain(str(p), str(p.with_suffix(".key")))
    return ctx


def insecure_from_config(root: Path) -> list[str]:
    """``insecure-registries`` of ``<root>/daemon.json`` (docker's key), plus
    ``$SHALE_INSECURE_REGISTRIES`` (comma separated)."""
    out: list[str] = []
    path = root / "daemon.json"
    if path.exists():
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise RegistryError(f"{path}: {e}") from None
        items = data.get("insecure-registries") if isinstance(data, dict) else None
        if isinstance(items, list):
            out.extend(str(x) for x in items)
    env = os.environ.get("SHALE_INSECURE_REGISTRIES", "")
    out.extend(x.strip() for x in env.split(",") if x.strip())
    return out
