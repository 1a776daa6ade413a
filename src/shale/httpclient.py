"""The registry client's HTTP/1.1 transport: the standard library's ``http.client`` with a
thread-safe pool of keep-alive connections.

Why not httpx: a ``shale pull`` or ``push`` is a short process, and importing httpx with
httpcore and h11 took ~50 ms of each start (a third of a 200 MB pull from a local registry);
``http.client`` costs ~5 ms, speaks HTTP/1.1 (all a registry needs: blobs are single large
streams), and reads a body straight from the socket in 256 KiB pieces (``read1``) with no
copying in Python. What this module adds is small: the pool, the streamed/non-streamed
response, error classes, and a ``transport`` hook through which tests play a registry on
hosts that cannot exist here.

- ``Client.send`` follows no redirects (the registry client does, by hand) and never
  decodes a ``Content-Encoding`` (it asks for ``identity``).
- A body is ``bytes``, ``None`` or an iterable of ``bytes`` (sent with
  ``Transfer-Encoding: chunked`` unless the caller gave a ``Content-Length``).
- A kept-alive connection the server has closed meanwhile is replaced once, transparently,
  when the request can be sent again (its body is not a one-shot iterator).
- Errors are ``TransportError`` subclasses: ``ConnectError`` (DNS, refused, TLS handshake),
  ``TimeoutException`` and ``ReadError`` (a connection that broke or ended early).
"""

from __future__ import annotations

import http.client
import json as _json
import socket
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any
from urllib.parse import urlsplit

READ_SIZE = 256 << 10  # socket reads of a streamed body
MAX_IDLE = 16          # kept-alive connections per host


class TransportError(Exception):
    """The request could not be made or its answer not read."""


class ConnectError(TransportError):
    """No connection: name resolution, refused, unreachable, TLS handshake."""


class TimeoutException(TransportError):
    """The server did not answer in time."""


class ReadError(TransportError):
    """The connection broke (or ended early) while the answer was read."""


class Headers:
    """Case-insensitive header map (the first value of a repeated header wins)."""

    def __init__(self, items: Mapping[str, str] | Iterable[tuple[str, str]] = ()) -> None:
        self._d: dict[str, str] = {}
        pairs = items.items() if isinstance(items, Mapping) else items
        for k, v in pairs:
            self._d.setdefault(k.lower(), v)

    def get(self, name: str, default: Any = None) -> Any:
        return self._d.get(name.lower(), default)

    def __getitem__(self, name: str) -> str:
        return self._d[name.lower()]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._d

    def items(self) -> list[tuple[str, str]]:
        return list(self._d.items())


class Request:
    """What ``transport`` handlers see."""

    def __init__(self, method: str, url: str, headers: Mapping[str, str], content: bytes
                 ) -> None:
        self.method, self.url, self.headers, self.content = method, url, Headers(headers), content


class Response:
    """An answer: ``status_code``, ``reason_phrase``, ``headers``; the body through
    ``read()``/``content`` (whole) or ``iter_bytes()`` (as it arrives). Tests make one with
    ``content=``, ``json=`` or ``stream=`` (an iterator that may raise ``ReadError``)."""

    def __init__(self, status_code: int, *, headers: Mapping[str, str] | None = None,
                 content: bytes = b"", json: Any = None, stream: Iterable[bytes] | None = None,
                 reason_phrase: str = "") -> None:
        hdrs = dict(headers or {})
        if json is not None:
            content = _json.dumps(json).encode()
            hdrs.setdefault("Content-Type", "application/json")
        self.status_code = status_code
        self.reason_phrase = reason_phrase or http.client.responses.get(status_code, "")
        self.headers = Headers(hdrs)
        self._chunks: Iterator[bytes] | None = iter(stream) if stream is not None else None
        self._content: bytes | None = None if stream is not None else content
        self._on_close: Callable[[], None] | None = None

    def iter_bytes(self) -> Iterator[bytes]:
        if self._content is not None:
            if self._content:
                yield self._content
            return
        assert self._chunks is not None
        try:
            yield from self._chunks
        finally:
            self._chunks = iter(())

    def read(self) -> bytes:
        if self._content is None:
            self._content = b"".join(self.iter_bytes())
        return self._content

    @property
    def content(self) -> bytes:
        return self.read()

    def json(self) -> Any:
        return _json.loads(self.read())

    def close(self) -> None:
        if self._on_close is not None:
            on_close, self._on_close = self._on_close, None
            on_close()


Transport = Callable[[Request], Response]
Body = bytes | Iterable[bytes] | None


class Client:
    """Requests to any number of hosts; safe to share between threads."""

    def __init__(self, *, verify: Any = True, timeout: float = 120.0,
                 connect_timeout: float = 15.0, headers: Mapping[str, str] | None = None,
                 transport: Transport | None = None) -> None:
        self._verify = verify  # an ssl.SSLContext, True (system CAs) or False
        self._timeout, self._connect_timeout = timeout, connect_timeout
        self._headers = dict(headers or {})
        self._transport = transport
        self._idle: dict[tuple[str, str], list[http.client.HTTPConnection]] = {}
        self._lock = threading.Lock()
        self._ssl: Any = None

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, {}
        for conns in idle.values():
            for c in conns:
                c.close()

    def send(self, method: str, url: str, headers: Mapping[str, str], body: Body = None,
             *, stream: bool = False) -> Response:
        hdrs = {**self._headers, **headers}
        if self._transport is not None:
            data = body if isinstance(body, bytes) or body is None else b"".join(body)
            resp = self._transport(Request(method, url, hdrs, data or b""))
        else:
            resp = self._send(method, url, hdrs, body)
        if not stream:
            try:
                resp.read()
            finally:
                resp.close()
        return resp

    # ---- the real thing ------------------------------------------------------------------
    def _send(self, method: str, url: str, headers: dict[str, str], body: Body) -> Response:
        parts = urlsplit(url)
        key = (parts.scheme, parts.netloc)
        path = parts.path or "/"
        if parts.query:
            path += "?" + parts.query
        headers.setdefault("Accept-Encoding", "identity")
        again = isinstance(body, bytes | type(None) | list | tuple)
        while True:
            conn, reused = self._take(key, parts.hostname or "", parts.port)
            try:
                conn.request(method, path, body=body, headers=headers)  # type: ignore[arg-type]
                raw = conn.getresponse()
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError
                    ) as e:
                conn.close()
                if reused and again:
                    continue  # a kept-alive connection the server had closed: once more
                raise ReadError(str(e) or type(e).__name__) from None
            except BaseException as e:
                connecting = conn.sock is None
                conn.close()
                raise _mapped(e, connecting=connecting) from None
            return self._wrap(key, conn, raw, method)

    def _wrap(self, key: tuple[str, str], conn: http.client.HTTPConnection,
              raw: http.client.HTTPResponse, method: str) -> Response:
        resp = Response(raw.status, headers=dict(raw.getheaders()[::-1]), stream=(),
                        reason_phrase=raw.reason)
        state = {"done": False}

        def chunks() -> Iterator[bytes]:
            try:
                while piece := raw.read1(READ_SIZE):
                    yield piece
            except BaseException as e:
                raise _mapped(e, connecting=False) from None
            if raw.length:  # Content-Length not reached: the server hung up early
                raise ReadError(f"connection closed with {raw.length} bytes unread")
            raw.read()  # read1 leaves a finished response open: the connection waits on it
            state["done"] = True

        def release() -> None:
            if state["done"] and not raw.will_close:
                self._give_back(key, conn)
            else:
                conn.close()

        if method == "HEAD" or raw.length == 0:
            raw.read()
            state["done"] = True
        resp._chunks = chunks()
        resp._on_close = release
        return resp

    def _take(self, key: tuple[str, str], host: str, port: int | None
              ) -> tuple[http.client.HTTPConnection, bool]:
        with self._lock:
            idle = self._idle.get(key)
            if idle:
                return idle.pop(), True
        conn: http.client.HTTPConnection
        if key[0] == "https":
            conn = http.client.HTTPSConnection(host, port, timeout=self._connect_timeout,
                                               context=self._ssl_context())
        else:
            conn = http.client.HTTPConnection(host, port, timeout=self._connect_timeout)
        try:
            conn.connect()
        except BaseException as e:
            conn.close()
            raise _mapped(e, connecting=True) from None
        if conn.sock is not None:
            conn.sock.settimeout(self._timeout)
            conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return conn, False

    def _give_back(self, key: tuple[str, str], conn: http.client.HTTPConnection) -> None:
        with self._lock:
            idle = self._idle.setdefault(key, [])
            if len(idle) < MAX_IDLE:
                idle.append(conn)
                return
        conn.close()

    def _ssl_context(self) -> Any:
        import ssl

        if self._ssl is None:
            if self._verify is False:
                ctx = ssl.create_default_context()
                ctx.check_hostname = False
                ctx.verify_mode = ssl.CERT_NONE
                self._ssl = ctx
            elif self._verify is True:
                self._ssl = ssl.create_default_context()
            else:
                self._ssl = self._verify
        return self._ssl


def _mapped(e: BaseException, *, connecting: bool) -> BaseException:
    """An error of the socket layer as one of ours (others pass through unchanged)."""
    import ssl

    if isinstance(e, TransportError):
        return e
    if isinstance(e, TimeoutError | socket.timeout):
        return TimeoutException(str(e) or "timed out")
    if isinstance(e, ssl.SSLError) or (connecting and isinstance(e, OSError)):
        return ConnectError(str(e) or type(e).__name__)
    if isinstance(e, OSError | http.client.HTTPException):
        return ReadError(str(e) or type(e).__name__)
    return e
