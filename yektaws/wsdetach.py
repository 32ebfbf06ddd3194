"""A WebSocket that leaves aiohttp's request machinery once its handshake is done.

aiohttp serves a WebSocket from inside the HTTP request that opened it: for the life of the
connection its ``RequestHandler`` (the HTTP parser, the parsed request with its headers and URL,
a message deque), two tasks and every coroutine of the middleware chain and the handler stay
alive, waiting for the handler to return. That is ~10 KB per idle connection (tracemalloc, 2000
idle native connections: 18.2 KB in all), more than everything the gateway itself keeps.

:func:`detach` ends that after ``WebSocketResponse.prepare()``: the transport is given a small
protocol of its own (:class:`DetachedProtocol`) that feeds the same frame reader, the response's
writers are pointed at it, and aiohttp's handler is told to forget the transport, so the handler
may return at once. aiohttp then finishes the request as it finishes any other (no close frame:
the response reports its end as already sent) and drops everything it held; the WebSocket goes on
with the reader, the queue, the writers and the response object, whose ``receive()``, ``ping()``,
``close()`` work as before. Nobody waits in a task meanwhile: a transport reads messages where
they are parsed (:mod:`yektaws.wsinline`) and starts a task only for what must wait.

What aiohttp's handler did for the connection after the upgrade, the detached protocol does:
``data_received`` feeds the reader (which, after its first error, takes the bytes unparsed until
the client's close frame: :class:`~yektaws.guards.FrameGuard`), ``connection_lost`` feeds it EOF
and wakes a writer waiting to drain; flow control in both directions is aiohttp's own
:class:`~aiohttp.base_protocol.BaseProtocol`. A detached socket is not in aiohttp's list of
connections: the application closes it at shutdown (``yektaws.app``), as it closes every
connection.

The private attributes this touches are listed, with why, in :mod:`yektaws.compat`.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web
from aiohttp.base_protocol import BaseProtocol

__all__ = ["DetachedProtocol", "detach"]


class DetachedProtocol(BaseProtocol):
    """The transport's protocol after :func:`detach`: bytes in to the frame reader, flow control.

    Built with the reader (before the handshake's tail is fed to it) so that the message queue
    pauses and resumes reading through it from the start; it receives bytes once :func:`detach`
    has made it the transport's protocol.
    """

    __slots__ = ("_reader",)

    def __init__(self, loop: asyncio.AbstractEventLoop, transport: asyncio.Transport) -> None:
        super().__init__(loop)
        self._upgraded = True  # BaseProtocol: pausing never touches an HTTP parser
        self.transport = transport
        self._reader: Any = None

    def attach_reader(self, reader: Any) -> None:
        """The frame reader (``feed_data``/``feed_eof``, e.g. a guarded ``WebSocketReader``)."""
        self._reader = reader

    def data_received(self, data: bytes) -> None:
        if data and self._reader is not None:
            # After a failed frame the guard takes the bytes without parsing them, watching
            # for the client's close (the response answers the failure with its close frame).
            self._reader.feed_data(data)

    def eof_received(self) -> bool | None:
        return None  # the transport closes itself; connection_lost() follows

    def connection_lost(self, exc: BaseException | None) -> None:
        super().connection_lost(exc)  # wakes a writer waiting to drain
        reader, self._reader = self._reader, None
        if reader is not None:
            # Let go of the reader: its queue points back at this protocol (flow control), and
            # the pair would otherwise wait for a full collection instead of going now.
            reader.feed_eof()


def detach(ws: web.WebSocketResponse, request: web.BaseRequest, protocol: DetachedProtocol) -> None:
    """Move the prepared ``ws`` off ``request``'s handler onto ``protocol`` (see the module).

    After this the handler that prepared ``ws`` returns it at once; aiohttp's end of the request
    neither writes to it nor closes it.
    """
    handler: Any = request.protocol
    transport = protocol.transport
    assert transport is not None, "detach() a prepared, connected WebSocket"
    protocol._paused = handler._paused  # a write-paused transport does not say so twice
    transport.set_protocol(protocol)
    ws._writer.protocol = protocol  # type: ignore[union-attr]  # drain waits on the new one
    ws._payload_writer._protocol = protocol  # type: ignore[union-attr]
    # aiohttp's write_eof() would send a close frame when the handler returns.
    ws._eof_sent = True
    ws._req = None  # the request, its headers and its handler are no longer needed
    # The handler's end closes the transport it knows of, unless it knows of none; it must
    # also leave aiohttp's list of connections, which shutdown waits for.
    handler.transport = None
    # Its HTTP parser points back at it: left in place, the pair (and the request's headers and
    # URL with them) would wait for the cyclic garbage collector, which an idle server seldom
    # runs, instead of being freed when the handler returns. (Without a parser, the handler's
    # end does not take the socket for a declined upgrade either.)
    handler._parser = None
    handler._payload_parser = None
    if handler._manager is not None:
        handler._manager.connection_lost(handler, None)
