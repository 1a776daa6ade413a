"""``shale.httpclient`` against real servers on 127.0.0.1: a ``ThreadingHTTPServer`` that
counts its connections, and raw socket servers for the misbehaving cases (a keep-alive
connection closed after one answer, a body cut short, an answer that never comes)."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from shale.httpclient import (
    Client,
    ConnectError,
    ReadError,
    Request,
    Response,
    TimeoutException,
)

BIG = bytes(range(256)) * 4096  # 1 MiB: more than one READ_SIZE piece
CHUNKS = [b"first,", b"x" * 5000, b",last"]


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 64

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.lock = threading.Lock()
        self.conns = 0

    def get_request(self) -> tuple[socket.socket, Any]:
        req = super().get_request()
        with self.lock:
            self.conns += 1
        return req

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client hanging up on a big body is expected here

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # no 40 ms delayed-ACK stalls between head and body
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _answer(self, status: int, body: bytes, reason: str | None = None,
                **headers: str) -> None:
        self.send_response(status, reason)
        self.send_header("Content-Length", str(len(body)))
        for k, v in headers.items():
            self.send_header(k.replace("_", "-"), v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def do_HEAD(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "1234")
        self.end_headers()

    def do_GET(self) -> None:
        if self.path == "/json":
            self._answer(200, b'{"a": [1, 2], "b": "c"}', Content_Type="application/json",
                         X_Thing="yes")
        elif self.path == "/teapot":
            self._answer(418, b"short", "Short And Stout")
        elif self.path == "/big":
            self._answer(200, BIG)
        elif self.path == "/chunked":
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for c in CHUNKS:
                self.wfile.write(b"%x\r\n%s\r\n" % (len(c), c))
                self.wfile.flush()
            self.wfile.write(b"0\r\n\r\n")
        else:
            self._answer(200, self.path.encode())

    def do_PUT(self) -> None:
        te = self.headers.get("Transfer-Encoding")
        cl = self.headers.get("Content-Length")
        if te == "chunked":
            parts = []
            while size := int(self.rfile.readline().split(b";")[0], 16):
                parts.append(self.rfile.read(size))
                assert self.rfile.readline() == b"\r\n"
            while self.rfile.readline() not in (b"\r\n", b""):
                pass  # trailers
            body = b"".join(parts)
        else:
            body = self.rfile.read(int(cl or 0))
        echo = {"te": te, "cl": cl, "body": body.decode("latin-1")}
        self._answer(200, json.dumps(echo).encode(), Content_Type="application/json")

    do_POST = do_PUT


@pytest.fixture
def server() -> Iterator[_Server]:
    srv = _Server()
    t = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.02},
                         daemon=True)
    t.start()
    try:
        yield srv
    finally:
        srv.shutdown()
        srv.server_close()
        t.join(5)


@pytest.fixture
def client() -> Iterator[Client]:
    c = Client(timeout=10.0, connect_timeout=5.0)
    try:
        yield c
    finally:
        c.close()


class _RawServer:
    """Accepts connections on 127.0.0.1 and runs ``handle(sock)`` for each in a thread."""

    def __init__(self, handle: Callable[[socket.socket], None]) -> None:
        self.handle = handle
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.conns = 0
        self.stop = threading.Event()
        self.threads: list[threading.Thread] = []
        self.acceptor = threading.Thread(target=self._accept, daemon=True)
        self.acceptor.start()

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self.listener.accept()
            except OSError:
                return  # closed
            self.conns += 1
            t = threading.Thread(target=self._run, args=(sock,), daemon=True)
            self.threads.append(t)
            t.start()

    def _run(self, sock: socket.socket) -> None:
        with sock:
            try:
                self.handle(sock)
            except OSError:
                pass

    def close(self) -> None:
        self.stop.set()
        self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()
        self.acceptor.join(5)
        for t in self.threads:
            t.join(5)


def _read_request(sock: socket.socket) -> bytes | None:
    """One request's head and its Content-Length body (None: the client hung up)."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        got = sock.recv(65536)
        if not got:
            return None
        buf += got
    head, _, body = buf.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(body) < length:
        got = sock.recv(65536)
        if not got:
            return None
        body += got
    return body


@pytest.fixture
def raw_server() -> Iterator[Callable[[Callable[[socket.socket], None]], _RawServer]]:
    made: list[_RawServer] = []

    def make(handle: Callable[[socket.socket], None]) -> _RawServer:
        made.append(_RawServer(handle))
        return made[-1]

    try:
        yield make
    finally:
        for s in made:
            s.close()


# ------------------------------------------------------------------------------- tests
def test_get_non_streamed(server: _Server, client: Client) -> None:
    r = client.send("GET", server.url + "/json", {})
    assert (r.status_code, r.reason_phrase) == (200, "OK")
    assert r.headers.get("CONTENT-type") == "application/json"
    assert r.headers["x-thing"] == "yes"
    assert "X-THING" in r.headers and "x-missing" not in r.headers
    assert r.headers.get("x-missing", "dflt") == "dflt"
    assert r.content == r.read() == b'{"a": [1, 2], "b": "c"}'
    assert r.json() == {"a": [1, 2], "b": "c"}
    r = client.send("GET", server.url + "/teapot", {})
    assert (r.status_code, r.reason_phrase, r.content) == (418, "Short And Stout", b"short")
    assert server.conns == 1


def test_keepalive_reuse_and_streamed(server: _Server, client: Client) -> None:
    assert client.send("GET", server.url + "/a", {}).content == b"/a"
    assert client.send("GET", server.url + "/b?q=1", {}).content == b"/b?q=1"
    r = client.send("GET", server.url + "/big", {}, stream=True)
    pieces = list(r.iter_bytes())
    r.close()
    assert len(pieces) > 1 and b"".join(pieces) == BIG
    assert client.send("GET", server.url + "/c", {}).content == b"/c"
    assert server.conns == 1


def test_streamed_closed_early_drops_connection(server: _Server, client: Client) -> None:
    r = client.send("GET", server.url + "/big", {}, stream=True)
    first = next(r.iter_bytes())  # the rest left unread
    assert 0 < len(first) < len(BIG) and BIG.startswith(first)
    r.close()
    assert server.conns == 1
    assert client.send("GET", server.url + "/after", {}).content == b"/after"
    assert server.conns == 2
    assert client.send("GET", server.url + "/again", {}).content == b"/again"
    assert server.conns == 2


def test_head_then_reuse(server: _Server, client: Client) -> None:
    r = client.send("HEAD", server.url + "/blob", {})
    assert r.status_code == 200
    assert r.headers["content-length"] == "1234"
    assert r.content == b""
    r = client.send("HEAD", server.url + "/blob", {}, stream=True)
    assert list(r.iter_bytes()) == []
    r.close()
    assert client.send("GET", server.url + "/next", {}).content == b"/next"
    assert server.conns == 1


def test_chunked_response(server: _Server, client: Client) -> None:
    r = client.send("GET", server.url + "/chunked", {}, stream=True)
    assert r.headers["transfer-encoding"] == "chunked"
    assert b"".join(r.iter_bytes()) == b"".join(CHUNKS)
    r.close()
    r = client.send("GET", server.url + "/chunked", {}, stream=True)
    assert r.read() == b"".join(CHUNKS)
    r.close()
    assert client.send("GET", server.url + "/chunked", {}).content == b"".join(CHUNKS)
    assert server.conns == 1


def test_request_bodies(server: _Server, client: Client) -> None:
    def put(headers: dict[str, str], body: Any) -> Any:
        r = client.send("PUT", server.url + "/echo", headers, body)
        assert r.status_code == 200
        return r.json()

    raw = bytes(range(256)) * 3
    assert put({}, raw) == {"te": None, "cl": "768", "body": raw.decode("latin-1")}
    gen = (p for p in [b"he", b"", b"llo", b" world"])
    assert put({}, gen) == {"te": "chunked", "cl": None, "body": "hello world"}
    gen = (p for p in [b"abc", b"def"])
    assert put({"Content-Length": "6"}, gen) == {"te": None, "cl": "6", "body": "abcdef"}
    assert put({}, None) == {"te": None, "cl": "0", "body": ""}
    r = client.send("POST", server.url + "/echo", {}, [b"li", b"st"])
    assert r.json() == {"te": "chunked", "cl": None, "body": "list"}
    assert server.conns == 1  # every body was read exactly: the connection stayed usable


def test_stale_keepalive_replaced(raw_server: Any, client: Client) -> None:
    bodies: list[bytes | None] = []
    answered = threading.Event()

    def once(sock: socket.socket) -> None:  # answers with keep-alive, then hangs up
        bodies.append(_read_request(sock))
        sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n"
                     b"Connection: keep-alive\r\n\r\nok")
        sock.shutdown(socket.SHUT_WR)
        answered.set()

    srv = raw_server(once)
    assert client.send("POST", srv.url + "/x", {}, b"hello").content == b"ok"
    assert answered.wait(5)
    time.sleep(0.05)  # let the FIN arrive
    answered.clear()
    r = client.send("POST", srv.url + "/x", {}, b"again")
    assert (r.status_code, r.content) == (200, b"ok")
    assert srv.conns == 2
    assert bodies == [b"hello", b"again"]


def test_body_cut_short(raw_server: Any, client: Client) -> None:
    def short(sock: socket.socket) -> None:
        _read_request(sock)
        sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789")

    srv = raw_server(short)
    r = client.send("GET", srv.url + "/blob", {}, stream=True)
    got: list[bytes] = []
    with pytest.raises(ReadError):
        for piece in r.iter_bytes():
            got.append(piece)
    r.close()
    assert b"".join(got) == b"0123456789"
    with pytest.raises(ReadError):
        client.send("GET", srv.url + "/blob", {})
    assert srv.conns == 2


def test_connection_refused(client: Client) -> None:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    with pytest.raises(ConnectError):
        client.send("GET", f"http://127.0.0.1:{port}/", {})


def test_read_timeout(raw_server: Any) -> None:
    def silent(sock: socket.socket) -> None:
        _read_request(sock)
        srv.stop.wait(10)

    srv = raw_server(silent)
    c = Client(timeout=0.3)
    try:
        t0 = time.monotonic()
        with pytest.raises(TimeoutException):
            c.send("GET", srv.url + "/", {})
        assert 0.25 < time.monotonic() - t0 < 3
    finally:
        c.close()


def test_transport_hook() -> None:
    seen: list[Request] = []

    def fn(req: Request) -> Response:
        seen.append(req)
        return Response(201, headers={"Location": "/v2/x/blobs/1"}, json={"ok": True})

    c = Client(headers={"User-Agent": "shale-test", "X-Default": "d"}, transport=fn)
    r = c.send("PUT", "https://registry.invalid/v2/x?digest=1", {"X-Extra": "e"},
               iter([b"ab", b"cd"]))
    assert (r.status_code, r.reason_phrase) == (201, "Created")
    assert r.headers["location"] == "/v2/x/blobs/1"
    assert r.headers["content-type"] == "application/json"
    assert r.json() == {"ok": True}
    [req] = seen
    assert (req.method, req.url) == ("PUT", "https://registry.invalid/v2/x?digest=1")
    assert req.headers["user-agent"] == "shale-test"
    assert (req.headers.get("x-default"), req.headers.get("X-EXTRA")) == ("d", "e")
    assert req.content == b"abcd"
    c.send("GET", "https://registry.invalid/v2/", {})
    assert (seen[1].method, seen[1].content) == ("GET", b"")


def test_transport_stream_error() -> None:
    def gen() -> Iterator[bytes]:
        yield b"abc"
        raise ReadError("cut")

    c = Client(transport=lambda req: Response(200, stream=gen()))
    r = c.send("GET", "https://registry.invalid/blob", {}, stream=True)
    got: list[bytes] = []
    with pytest.raises(ReadError, match="cut"):
        for piece in r.iter_bytes():
            got.append(piece)
    assert got == [b"abc"]
    with pytest.raises(ReadError, match="cut"):
        c.send("GET", "https://registry.invalid/blob", {})


def test_threads_share_client(server: _Server, client: Client) -> None:
    errors: list[str] = []

    def worker(n: int) -> None:
        for i in range(20):
            path = f"/t{n}/{i}"
            try:
                r = client.send("GET", server.url + path, {})
                if (r.status_code, r.content) != (200, path.encode()):
                    errors.append(f"{path}: {r.status_code} {r.content!r}")
            except Exception as e:
                errors.append(f"{path}: {e!r}")

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert errors == []
    assert 1 <= server.conns <= 16 + 8
