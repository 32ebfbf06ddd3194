"""A TCP proxy whose open connections can be made to go silent while they stay connected.

This is the fault a watchdog exists for: a NAT entry or a firewall state dropped without a reset,
so the client's socket stays open and simply never receives anything again. Connections made
after :meth:`SilenceableProxy.silence` pass normally.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading

from support.gateway import free_port

__all__ = ["CuttableProxy", "SilenceableProxy"]

_CHUNK = 65536


class _Pair:
    def __init__(self, client: socket.socket, upstream: socket.socket) -> None:
        self.client = client
        self.upstream = upstream
        self.silent = False
        #: Being cut: the one cutting closes the sockets, not the pump threads.
        self.cutting = False

    def close(self) -> None:
        for sock in (self.client, self.upstream):
            sock.close()


class SilenceableProxy:
    """Forwards ``127.0.0.1:<port>`` to ``127.0.0.1:<target_port>``, one thread per direction."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self._listener = socket.create_server(("127.0.0.1", self.port))
        self._pairs: list[_Pair] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def silence(self) -> int:
        """Drop, from now on, everything sent either way on the connections open now, their
        ends included (a side that closes is not heard of by the other)."""
        with self._lock:
            for pair in self._pairs:
                pair.silent = True
            return len(self._pairs)

    def close(self) -> None:
        self._listener.close()
        with self._lock:
            for pair in self._pairs:
                pair.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if self._admits(client):
                self._forward(client)

    def _admits(self, client: socket.socket) -> bool:
        return True

    def _forward(self, client: socket.socket) -> None:
        try:
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
        except OSError:
            client.close()
            return
        pair = _Pair(client, upstream)
        with self._lock:
            self._pairs.append(pair)
        for source, sink in ((client, upstream), (upstream, client)):
            threading.Thread(target=self._pump, args=(pair, source, sink), daemon=True).start()

    @staticmethod
    def _pump(pair: _Pair, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(_CHUNK):
                if not pair.silent:
                    sink.sendall(data)
        except OSError:
            pass
        if pair.silent:
            # The path is gone: not even the end of one side reaches the other, which stays
            # open until the proxy closes (a client giving up on a dead connection must not
            # tell the server).
            source.close()
        elif not pair.cutting:
            pair.close()


class CuttableProxy(SilenceableProxy):
    """A proxy whose connections can be cut the way a phone changing networks cuts them: reset,
    no WebSocket close, and no way back in (new connections are reset too) until :meth:`mend`.
    :meth:`retarget` sends later connections to another server (the client "lands" elsewhere)."""

    def __init__(self, target_port: int) -> None:
        self._down = False
        super().__init__(target_port)

    def cut(self) -> int:
        """Reset every open connection and refuse new ones; returns how many were cut."""
        self._down = True
        with self._lock:
            pairs, self._pairs = self._pairs, []
        for pair in pairs:
            pair.cutting = True
            _reset(pair.client, pair.upstream)
            pair.close()
        return len(pairs)

    def mend(self) -> None:
        self._down = False

    def retarget(self, port: int) -> None:
        self.target_port = port

    def _admits(self, client: socket.socket) -> bool:
        if self._down:
            _reset(client)
            client.close()  # no pump thread owns this one
        return not self._down


def _reset(*sockets: socket.socket) -> None:
    """Make the sockets' closes resets, as a vanished network path ends a connection.

    SO_LINGER 0 makes the last close send a reset; SHUT_RD first wakes a pump thread blocked in
    ``recv()`` without sending anything (a socket closed while a thread is inside ``recv()`` on
    it stays open in the kernel until that call returns, and its peer would never hear of it).
    """
    for sock in sockets:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.shutdown(socket.SHUT_RD)
