"""Attach protocol between a CLI and a container's monitor, over ``attach.sock``.

Frames, both ways: 8-byte header ``[kind, 0, 0, 0, size (u32, big endian)]`` + payload, as
docker multiplexes stdio. Monitor -> client: 1 stdout, 2 stderr, 3 exit (JSON ``{"ExitCode",
"Error"}``, the last frame). Client -> monitor: 0 stdin data, 4 stdin closed, 5 resize
("rows cols"), 6 signal ("N"), 7 hello (JSON ``{"stdin": bool, "size": [rows, cols]}``, the
first frame; the first client's hello comes before the container starts).
With a tty the container's output arrives as kind 1 only (stdout and stderr are one stream).
"""

from __future__ import annotations

import _socket  # not socket: its enums and helpers cost ~2.5 ms on every `run`
import contextlib
import json
import os
import select
import signal
import struct
import sys
from pathlib import Path
from typing import Any

STDIN, STDOUT, STDERR, EXIT, STDIN_EOF, RESIZE, SIGNAL, HELLO = 0, 1, 2, 3, 4, 5, 6, 7
_HDR = struct.Struct(">BxxxI")


def frame(kind: int, payload: bytes) -> bytes:
    return _HDR.pack(kind, len(payload)) + payload


class FrameReader:
    """Incremental frame parser for a non-blocking byte stream."""

    def __init__(self) -> None:
        self.buf = bytearray()

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        self.buf += data
        out = []
        while len(self.buf) >= 8:
            kind, size = _HDR.unpack_from(self.buf)
            if len(self.buf) < 8 + size:
                break
            out.append((kind, bytes(self.buf[8:8 + size])))
            del self.buf[:8 + size]
        return out


def connect(path: Path, stdin: bool, timeout: float = 10.0,
            size: tuple[int, int] | None = None) -> _socket.socket:
    s = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    s.settimeout(timeout)
    # the path may be long: connect through /proc/self/fd of the directory
    dfd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        s.connect(f"/proc/self/fd/{dfd}/{path.name}")
    finally:
        os.close(dfd)
    s.settimeout(None)
    hello: dict[str, Any] = {"stdin": stdin}
    if size:
        hello["size"] = list(size)  # a tty gets the terminal's size before it starts
    s.sendall(frame(HELLO, json.dumps(hello).encode()))
    return s


def terminal_size() -> tuple[int, int] | None:
    """(rows, cols) of the terminal on stdin or stdout, None without one."""
    for fd in (0, 1):
        if os.isatty(fd):
            return _winsize(fd)
    return None


def _winsize(fd: int) -> tuple[int, int] | None:
    import fcntl
    import termios

    try:
        data = fcntl.ioctl(fd, termios.TIOCGWINSZ, b"\0" * 8)
    except OSError:
        return None
    rows, cols = struct.unpack("HHHH", data)[:2]
    return rows, cols


class AttachClient:
    """Pumps the CLI's stdio to and from a monitor until the exit frame; returns the exit
    code. With ``tty`` the local terminal is put in raw mode (restored on the way out) and
    window-size changes follow; ``sig_proxy`` forwards signals to the container."""

    def __init__(self, sock: _socket.socket, *, tty: bool, stdin: bool,
                 sig_proxy: bool = True) -> None:
        self.sock = sock
        self.tty = tty
        self.stdin = stdin
        self.sig_proxy = sig_proxy and not tty
        self.exit: dict[str, Any] | None = None

    def run(self) -> dict[str, Any]:
        old_term = None
        in_fd = sys.stdin.fileno() if self.stdin else -1
        if self.tty and self.stdin and os.isatty(in_fd):
            import termios
            import tty as ttymod

            old_term = termios.tcgetattr(in_fd)
            ttymod.setraw(in_fd, termios.TCSANOW)  # keep typeahead (TCSAFLUSH drops it)
        rd, wr = os.pipe()  # self-pipe: signals wake the select loop
        os.set_blocking(wr, False)
        old_handlers = self._install_signals(wr)
        try:
            self._send_resize()
            self._loop(in_fd, rd)
        finally:
            for sig, h in old_handlers.items():
                signal.signal(sig, h)
            if old_term is not None:
                import termios

                termios.tcsetattr(in_fd, termios.TCSADRAIN, old_term)
            os.close(rd)
            os.close(wr)
        return self.exit or {"ExitCode": 125, "Error": "lost connection to the container"}

    def _install_signals(self, wake: int) -> dict[int, Any]:
        handlers: dict[int, Any] = {}
        sigs = [signal.SIGWINCH] if self.tty else []
        if self.sig_proxy:
            sigs += [signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT,
                     signal.SIGUSR1, signal.SIGUSR2]

        def on_signal(signum: int, _frame: Any) -> None:
            with contextlib.suppress(BlockingIOError):
                os.write(wake, bytes([signum]))

        for s in sigs:
            handlers[s] = signal.signal(s, on_signal)
        return handlers

    def _send_resize(self) -> None:
        if not self.tty:
            return
        for fd in (0, 1):
            if os.isatty(fd):
                ws = _winsize(fd)
                if ws:
                    self.sock.sendall(frame(RESIZE, f"{ws[0]} {ws[1]}".encode()))
                return

    def _loop(self, in_fd: int, wake: int) -> None:
        reader = FrameReader()
        watch = [self.sock.fileno(), wake] + ([in_fd] if in_fd >= 0 else [])
        out = sys.stdout.buffer
        err = sys.stderr.buffer
        while self.exit is None:
            ready, _, _ = select.select(watch, [], [])
            if wake in ready:
                for signum in os.read(wake, 64):
                    if signum == signal.SIGWINCH:
                        self._send_resize()
                    else:
                        self.sock.sendall(frame(SIGNAL, str(signum).encode()))
            if in_fd in ready:
                data = os.read(in_fd, 65536)
                if data:
                    self.sock.sendall(frame(STDIN, data))
                else:
                    self.sock.sendall(frame(STDIN_EOF, b""))
                    watch.remove(in_fd)
            if self.sock.fileno() in ready:
                data = self.sock.recv(1 << 16)
                if not data:
                    return
                for kind, payload in reader.feed(data):
                    if kind == STDOUT:
                        out.write(payload)
                        out.flush()
                    elif kind == STDERR:
                        err.write(payload)
                        err.flush()
                    elif kind == EXIT:
                        self.exit = json.loads(payload)
