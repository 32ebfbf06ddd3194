"""A TCP proxy whose open connections can be made to go silent while they stay connected.

This is the fault a watchdog exists for: a NAT entry or a firewall state dropped without a reset,
so the client's socket stays open and simply never receives anything again. Connections made
after :meth:`SilenceableProxy.silence` pass normally.
"""

from __future__ import annotations

import socket
import threading

from support.gateway import free_port

__all__ = ["SilenceableProxy"]

_CHUNK = 65536


class _Pair:
    def __init__(self, client: socket.socket, upstream: socket.socket) -> None:
        self.client = client
        self.upstream = upstream
        self.silent = False

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
        """Drop, from now on, everything sent either way on the connections open now."""
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
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
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
        pair.close()
