"""``ADD http(s)://...``: download a remote source for one step, as docker's classic
builder does: the file is fetched on every build (its content, not the URL, goes into
the cache key, so an unchanged file still hits), named after the URL's last path
component (else the ``Content-Disposition`` file name), mode 0600, its mtime the
``Last-Modified`` header's (else the epoch), never unpacked. ``--checksum`` (BuildKit)
checks its digest before anything is written.
"""

from __future__ import annotations

import calendar
import email.utils
import hashlib
import os
import posixpath
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import unquote, urljoin, urlsplit

from shale.build.context import Source, _tarsum
from shale.errors import DockerfileError
from shale.record import record

if TYPE_CHECKING:
    from shale.httpclient import Client, Response

MAX_REDIRECTS = 10  # Go's http.Client


@record
class Download:
    url: str
    source: Source   # the file (in a temp dir), named as it is copied
    digest: str      # sha256:<hex> of its content

    @property
    def hash(self) -> str:
        """The tarsum, as docker's lazy source hashes the downloaded file (``created_by``
        shows it bare: ``ADD <hash> in /dest ``, no ``file:``)."""
        return _tarsum(self.source, owned=True)


def fetch(url: str, tmpdir: Path, checksum: str = "") -> Download:
    """Download ``url`` into its own directory under ``tmpdir``."""
    from shale import httpclient

    algo, want = _checksum(checksum) if checksum else ("sha256", "")
    client = httpclient.Client(timeout=300.0)
    try:
        resp = _get(client, url)
        name = _filename(url, resp.headers.get("content-disposition", ""))
        d = Path(os.path.join(tmpdir, str(len(os.listdir(tmpdir)))))
        d.mkdir()
        path = d / (name or "__unnamed__")
        sha = hashlib.sha256()
        h = sha if algo == "sha256" else hashlib.new(algo)  # --checksum's, often the same
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            for chunk in resp.iter_bytes():
                sha.update(chunk)
                if h is not sha:
                    h.update(chunk)
                os.write(fd, chunk)
        except httpclient.TransportError as e:
            raise DockerfileError(f"ADD {url}: download failed: {e}") from None
        finally:
            os.close(fd)
            resp.close()
    finally:
        client.close()
    if want and h.hexdigest() != want:
        raise DockerfileError(f"ADD {url}: digest mismatch {algo}:{h.hexdigest()}: "
                              f"{checksum} expected")
    mtime = _mtime(resp.headers.get("last-modified", ""))
    os.utime(path, (mtime, mtime))
    os.chmod(path, 0o600)
    return Download(url, Source(name, path, os.lstat(path), name), "sha256:" + sha.hexdigest())


def _get(client: Client, url: str) -> Response:
    from shale import httpclient

    for _ in range(MAX_REDIRECTS + 1):
        try:
            resp = client.send("GET", url, {"User-Agent": "shale"}, stream=True)
        except httpclient.TransportError as e:
            raise DockerfileError(f"ADD {url}: {e or type(e).__name__}") from None
        if resp.status_code in (301, 302, 303, 307, 308) and resp.headers.get("location"):
            resp.close()
            url = urljoin(url, resp.headers["location"])
            continue
        if resp.status_code >= 400:
            resp.close()
            raise DockerfileError(f"ADD failed: failed to GET {url} with status "
                                  f"{resp.status_code} {resp.reason_phrase}")
        return resp
    raise DockerfileError(f"ADD {url}: stopped after {MAX_REDIRECTS} redirects")


def _checksum(spec: str) -> tuple[str, str]:
    algo, sep, hexd = spec.partition(":")
    sizes = {"sha256": 64, "sha384": 96, "sha512": 128}
    if not sep or algo not in sizes or len(hexd) != sizes[algo] or \
            any(c not in "0123456789abcdef" for c in hexd):
        raise DockerfileError(f"invalid checksum digest format: {spec!r} (want "
                              "sha256:<64 hex digits>)")
    return algo, hexd


def _filename(url: str, disposition: str) -> str:
    """The classic builder's ``getFilenameForDownload``: the URL path's last component,
    else the ``Content-Disposition`` file name, else none."""
    path = unquote(urlsplit(url).path)
    if path and not path.endswith("/"):
        base = posixpath.basename(path)
        if base not in ("", ".", "..") and "\0" not in base:
            return base
    if disposition:
        from email.message import Message

        msg = Message()
        msg["content-disposition"] = disposition
        fname = msg.get_param("filename", header="content-disposition")
        if isinstance(fname, str) and fname and not fname.endswith("/"):
            base = posixpath.basename(fname.replace("\\", "/"))
            if base not in (".", "..") and "\0" not in base:
                return base
    return ""


def _mtime(header: str) -> int:
    if not header:
        return 0
    try:
        parsed = email.utils.parsedate_tz(header)
    except (TypeError, ValueError):
        return 0
    if parsed is None:
        return 0
    return max(0, calendar.timegm(parsed[:9]) - (parsed[9] or 0))
