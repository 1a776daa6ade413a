"""The userspace port proxy, run inside the container's monitor (no extra process).

Connections to a published port from the host itself (127.0.0.1, or the host's own
addresses) never traverse PREROUTING, so the iptables DNAT does not see them: as docker's
``docker-proxy``, the monitor holds the host socket (bound by the CLI) and relays each
TCP connection or UDP flow to the container's address. It runs in the monitor's selector
loop, single-threaded: every socket is non-blocking and registered with a callback
``(kind="proxy", callback)``; the monitor calls ``callback(mask)`` when it is ready.
"""

from __future__ import annotations

import contextlib
import errno
import selectors
import socket
import time
from collections.abc import Callable

READ, WRITE = selectors.EVENT_READ, selectors.EVENT_WRITE
CHUNK = 65536
BUFFER_LIMIT = 1 << 20  # per direction: stop reading when the other side is this far behind
UDP_IDLE = 90.0         # docker-proxy's UDP flow timeout


class _Reg:
    """A socket's registration, kept in step with the events it wants."""

    def __init__(self, sel: selectors.BaseSelector, sock: socket.socket,
                 callback: Callable[[int], None]) -> None:
        self.sel, self.sock, self.callback, self.events = sel, sock, callback, 0

    def want(self, events: int) -> None:
        if events == self.events or self.sock.fileno() < 0:
            return
        data = ("proxy", self.callback)
        if not self.events:
            self.sel.register(self.sock, events, data)
        elif not events:
            self.sel.unregister(self.sock)
        else:
            self.sel.modify(self.sock, events, data)
        self.events = events

    def close(self) -> None:
        self.want(0)
        self.sock.close()


class _TcpPair:
    """One relayed connection: client <-> container, with half-close and back-pressure."""

    def __init__(self, owner: PortProxy, client: socket.socket) -> None:
        self.owner = owner
        self.up = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        client.setblocking(False)
        self.up.setblocking(False)
        self.a = _Reg(owner.sel, client, self._on_client)
        self.b = _Reg(owner.sel, self.up, self._on_upstream)
        self.to_b, self.to_a = bytearray(), bytearray()
        self.eof_a = self.eof_b = False
        self.connected = False
        self.closed = False
        err = self.up.connect_ex(owner.target)
        if err not in (0, errno.EINPROGRESS):
            self.close()
            return
        self._update()

    def _update(self) -> None:
        if self.closed:
            return
        if self.eof_a and self.eof_b and not self.to_a and not self.to_b:
            self.close()
            return
        a = (READ if self.connected and not self.eof_a and len(self.to_b) < BUFFER_LIMIT
             else 0) | (WRITE if self.to_a else 0)
        b = (READ if self.connected and not self.eof_b and len(self.to_a) < BUFFER_LIMIT
             else 0) | (WRITE if self.to_b or not self.connected else 0)
        self.a.want(a)
        self.b.want(b)

    def _on_client(self, mask: int) -> None:
        if self.closed:  # closed by an earlier event of the same select round
            return
        self._step(mask, self.a.sock, self.b.sock, self.to_b, self.to_a, client=True)

    def _on_upstream(self, mask: int) -> None:
        if self.closed:
            return
        if not self.connected and mask & WRITE:
            if self.up.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
                self.close()  # refused: the client sees its connection closed
                return
            self.connected = True
        self._step(mask, self.b.sock, self.a.sock, self.to_a, self.to_b, client=False)

    def _step(self, mask: int, me: socket.socket, other: socket.socket, outgoing: bytearray,
              incoming: bytearray, client: bool) -> None:
        try:
            if mask & READ:
                data = me.recv(CHUNK)
                if data:
                    outgoing += data
                else:
                    self._eof(client)
            if mask & WRITE and incoming:
                sent = me.send(incoming)
                del incoming[:sent]
            self._flush_eof(me, other, outgoing, client)
        except (BlockingIOError, InterruptedError):
            pass
        except OSError:
            self.close()
            return
        self._update()

    def _eof(self, client: bool) -> None:
        if client:
            self.eof_a = True
        else:
            self.eof_b = True

    def _flush_eof(self, me: socket.socket, other: socket.socket, outgoing: bytearray,
                   client: bool) -> None:
        """Pass a half-close on once everything before it went through."""
        if (self.eof_a if client else self.eof_b) and not outgoing:
            with contextlib.suppress(OSError):
                other.shutdown(socket.SHUT_WR)
        # what we owe ``me`` is flushed and the other side ended: end ``me`` too
        owed_done = not (self.to_a if client else self.to_b)
        if owed_done and (self.eof_b if client else self.eof_a):
            with contextlib.suppress(OSError):
                me.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.a.close()
            self.b.close()
            self.owner.pairs.discard(self)


class _UdpFlow:
    """Datagrams of one client address, relayed through a socket connected to the
    container, replies sent back from the published socket."""

    def __init__(self, owner: PortProxy, client: tuple[str, int]) -> None:
        self.owner, self.client = owner, client
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setblocking(False)
        sock.connect(owner.target)
        self.reg = _Reg(owner.sel, sock, self._on_reply)
        self.reg.want(READ)
        self.last = time.monotonic()

    def send(self, data: bytes) -> None:
        self.last = time.monotonic()
        with contextlib.suppress(OSError):
            self.reg.sock.send(data)

    def _on_reply(self, _mask: int) -> None:
        try:
            data = self.reg.sock.recv(CHUNK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:  # ICMP unreachable from the container: drop the flow
            self.close()
            return
        self.last = time.monotonic()
        with contextlib.suppress(OSError):
            self.owner.listener.sock.sendto(data, self.client)

    def close(self) -> None:
        self.reg.close()
        self.owner.flows.pop(self.client, None)


class PortProxy:
    """Relays one published host socket to ``target`` (the container's address, port)."""

    def __init__(self, sel: selectors.BaseSelector, sock: socket.socket, proto: str,
                 target: tuple[str, int]) -> None:
        self.sel, self.proto, self.target = sel, proto, target
        sock.setblocking(False)
        self.listener = _Reg(sel, sock, self._on_listener)
        self.pairs: set[_TcpPair] = set()
        self.flows: dict[tuple[str, int], _UdpFlow] = {}

    def start(self) -> None:
        """Serve (the container runs)."""
        self.listener.want(READ)

    def stop(self) -> None:
        """Stop serving and drop every relayed connection (the container exited). The
        host socket stays bound: a restart by policy serves it again."""
        self.listener.want(0)
        for pair in list(self.pairs):
            pair.close()
        for flow in list(self.flows.values()):
            flow.close()

    def close(self) -> None:
        self.stop()
        self.listener.close()

    def _on_listener(self, _mask: int) -> None:
        if self.proto == "tcp":
            with contextlib.suppress(BlockingIOError, InterruptedError, OSError):
                client, _ = self.listener.sock.accept()
                pair = _TcpPair(self, client)
                if not pair.closed:
                    self.pairs.add(pair)
            return
        try:
            data, addr = self.listener.sock.recvfrom(CHUNK)
        except (BlockingIOError, InterruptedError, OSError):
            return
        self._expire()
        flow = self.flows.get(addr)
        if flow is None:
            flow = self.flows[addr] = _UdpFlow(self, addr)
        flow.send(data)

    def _expire(self) -> None:
        now = time.monotonic()
        for flow in [f for f in self.flows.values() if now - f.last > UDP_IDLE]:
            flow.close()
