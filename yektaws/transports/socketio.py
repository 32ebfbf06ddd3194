"""The Socket.IO transport: python-socketio's ``AsyncServer``, bridged to the dispatcher.

python-socketio owns the Socket.IO and Engine.IO protocols (polling, websocket, the upgrade,
packets, acknowledgements, namespaces). This module configures it and bridges its three callbacks,
registered for every namespace (``namespaces='*'``) so that clients using ``/api`` as their
namespace (the YektaYar apps do) are served the same events:

- ``connect`` runs :class:`~yektaws.admission.Admission` and either registers a
  :class:`SocketIOConnection` or refuses with a CONNECT_ERROR (``{"message", "data"?}``);
- ``*`` (any event) goes to :meth:`Dispatcher.dispatch`; the direct reply is emitted as an event
  *and* returned as the acknowledgement; an event nobody handles is ignored, as Socket.IO does;
- ``disconnect`` releases the connection.

Where python-engineio's defaults deviate from the Engine.IO specification or from our limits, this
module closes the gap in front of it (:meth:`SocketIOTransport.handle`): the ``Origin`` check with
an empty allow-list, 413 for an oversize long-polling body, and an Engine.IO session that never
joins a namespace (or was refused) being closed after ``SOCKETIO_CONNECT_TIMEOUT``.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import TYPE_CHECKING, Any

import orjson
import socketio
from aiohttp import web
from engineio.async_drivers import aiohttp as engineio_aiohttp
from socketio import packet as sio_packet
from socketio.exceptions import ConnectionRefusedError as SocketIORefused

from yektaws.admission import Rejection
from yektaws.auth import socketio_token
from yektaws.connection import CloseReason, Connection
from yektaws.dispatcher import ErrorCode
from yektaws.forwarded import client_view
from yektaws.guards import GuardedWebSocketResponse

if TYPE_CHECKING:
    from yektaws.gateway import Gateway

__all__ = ["SocketIOConnection", "SocketIOTransport"]

# A Socket.IO client's unsent packets are counted, not weighed: MAX_OUTBOUND_BUFFER is divided by
# this nominal packet size to give the queue's limit.
_NOMINAL_PACKET_BYTES = 1024

# Until the refusal packet has gone out, the Engine.IO session of a refused client is kept.
_REFUSED_SESSION_GRACE = 1.0


# Closes after which the client should come back (to another node): not its own fault.
_RECONNECT_ELSEWHERE = frozenset({CloseReason.GOING_AWAY, CloseReason.TOO_SLOW})


class _OrjsonCodec:
    """python-socketio's ``json`` hook: orjson behind the ``dumps``/``loads`` names it calls."""

    @staticmethod
    def dumps(obj: Any, **_options: Any) -> str:
        # python-socketio passes json.dumps options (separators); orjson is always compact.
        return orjson.dumps(obj).decode()

    @staticmethod
    def loads(text: str | bytes, **_options: Any) -> Any:
        return orjson.loads(text)


class _EngineIOWebSocket(engineio_aiohttp.WebSocket):
    """python-engineio's aiohttp WebSocket, with our limits.

    The stock one accepts permessage-deflate (aiohttp's default) and unmasked client frames; this
    one negotiates compression only when ``WEBSOCKET_COMPRESSION`` is on and fails unmasked frames,
    exactly like the native transport.
    """

    compress = False

    async def __call__(self, environ: dict[str, Any]) -> web.WebSocketResponse:
        request = environ["aiohttp.request"]
        self._sock = GuardedWebSocketResponse(
            max_msg_size=self.server.max_http_buffer_size, compress=self.compress
        )
        await self._sock.prepare(request)
        self.environ = environ
        await self.handler(self)
        return self._sock


class SocketIOConnection(Connection):
    """A :class:`~yektaws.connection.Connection` on one Socket.IO namespace."""

    protocol = "socket.io"

    def __init__(
        self,
        server: socketio.AsyncServer,
        *,
        namespace: str,
        eio_sid: str,
        max_queued_packets: int,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self._server = server
        self.namespace = namespace
        self.eio_sid = eio_sid
        self._max_queued = max_queued_packets
        self.close_reason = ""

    @property
    def transport(self) -> str:
        socket = self._server.eio.sockets.get(self.eio_sid)
        return "websocket" if socket is not None and socket.upgraded else "polling"

    async def _send_event(self, event: str, data: Any) -> None:
        socket = self._server.eio.sockets.get(self.eio_sid)
        if socket is None or socket.closed:
            return
        if socket.queue.qsize() >= self._max_queued:
            await self.close(CloseReason.TOO_SLOW)
            return
        # Encoded here and handed to Engine.IO directly: AsyncServer.emit would look the client up
        # in its rooms and start a task per recipient, for one recipient we already know.
        encoded = sio_packet.Packet(
            sio_packet.EVENT, data=[event, data], namespace=self.namespace
        ).encode()
        await self._server.eio.send(self.eio_sid, encoded)

    async def close(self, reason: CloseReason, text: str | None = None) -> None:
        if self.closed:
            return
        text = text or reason.text
        if reason is CloseReason.SESSION_EXPIRED:
            await self.emit("session:expired", {"reason": text})
        self.closed = True
        self.close_reason = text
        if reason in _RECONNECT_ELSEWHERE:
            # Ending the Engine.IO session reads as "transport close" to the client, which
            # reconnects (to another node); a namespace disconnect reads as "io server
            # disconnect", after which Socket.IO clients deliberately stay away.
            closing = self._server.eio.disconnect(self.eio_sid)
        else:
            closing = self._server.disconnect(self.id, namespace=self.namespace)
        # Runs on its own so that a caller inside this client's event handler (the rate limit)
        # does not wait on its own read loop.
        asyncio.get_running_loop().create_task(closing)


class SocketIOTransport:
    """Owns the ``AsyncServer`` and bridges it to the gateway."""

    def __init__(self, gateway: Gateway, *, sid_prefix: str = "") -> None:
        self._gateway = gateway
        settings = gateway.settings
        origins = gateway.origins
        self._max_body = settings.max_message_size
        self._trusted = settings.trusted_proxies
        self._connect_timeout = settings.socketio_connect_timeout
        self._max_queued = max(16, settings.max_outbound_buffer // _NOMINAL_PACKET_BYTES)
        self._rate = settings.rate_limit_per_second
        self._burst = settings.rate_limit_burst
        self._connections: dict[str, SocketIOConnection] = {}
        #: Namespaces joined per Engine.IO session, to find sessions that joined none.
        self._joined: Counter[str] = Counter()
        self.server = socketio.AsyncServer(
            async_mode="aiohttp",
            namespaces="*",
            # Origins are checked in handle() before python-engineio sees the request; the list
            # here only shapes the CORS response headers. '*' never goes out with credentials.
            cors_allowed_origins=origins.for_socketio() or [],
            cors_credentials=not origins.any_origin,
            max_http_buffer_size=settings.max_message_size,
            ping_interval=settings.socketio_ping_interval,
            ping_timeout=settings.socketio_ping_timeout,
            transports=["polling", "websocket"],
            # Events of one client are handled in arrival order, in its own read loop; long
            # handlers (AI streams) run concurrently because the dispatcher starts them as tasks.
            async_handlers=False,
            json=_OrjsonCodec,
            logger=False,
            engineio_logger=False,
        )
        websocket_class = type(
            "EngineIOWebSocket", (_EngineIOWebSocket,), {"compress": settings.websocket_compression}
        )
        # The driver table is shared by every server of the process: replace it, do not mutate it.
        self.server.eio._async = {**self.server.eio._async, "websocket": websocket_class}
        if sid_prefix:
            # Polling affinity under --workers: the proxy sends `sid=w<i>.…` back to worker i.
            # "." never occurs in python-engineio's own ids (base64url), so no unprefixed id can
            # be mistaken for a worker's.
            generate_id = self.server.eio.generate_id
            self.server.eio.generate_id = lambda: sid_prefix + generate_id()
        self.server.on("connect", self._on_connect, namespace="*")
        self.server.on("disconnect", self._on_disconnect, namespace="*")
        self.server.on("*", self._on_event, namespace="*")
        self._wrap_engineio_handlers()

    # -- HTTP entry point ------------------------------------------------------------------------

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """The endpoint for every Socket.IO request (``/socket.io/`` or any path with ``EIO``)."""
        if not self._gateway.origins.allows(request.headers.get("Origin")):
            self._gateway.rejected(SocketIOConnection.protocol, request.remote or "", "origin")
            return web.Response(status=403, text="Origin not allowed")
        if request.method == "POST" and (request.content_length or 0) > self._max_body:
            # python-engineio would read nothing and answer nothing; the spec wants 413.
            return web.Response(status=413, text="Payload too large")
        return await self.server.handle_request(request)

    # -- python-socketio callbacks ---------------------------------------------------------------

    async def _on_connect(
        self, namespace: str, sid: str, environ: dict[str, Any], auth: Any
    ) -> bool:
        request: web.Request = environ["aiohttp.request"]
        client = client_view(request, self._trusted)
        eio_sid = self.server.manager.eio_sid_from_sid(sid, namespace)
        try:
            session = await self._gateway.admission.admit(
                token=socketio_token(auth, request), peer=client.address
            )
        except Rejection as rejection:
            refusal = rejection.refusal
            self._gateway.rejected(SocketIOConnection.protocol, client.address, refusal.reason)
            asyncio.get_running_loop().call_later(
                _REFUSED_SESSION_GRACE, self._close_if_unjoined, eio_sid
            )
            if refusal.retryable:
                raise SocketIORefused(refusal.message, {"retryable": True}) from None
            raise SocketIORefused(refusal.message) from None
        conn = SocketIOConnection(
            self.server,
            namespace=namespace,
            eio_sid=eio_sid,
            max_queued_packets=self._max_queued,
            socket_id=sid,
            session=session,
            peer=client.address,
            events_per_second=self._rate,
            event_burst=self._burst,
            metrics=self._gateway.metrics,
        )
        self._connections[sid] = conn
        self._joined[eio_sid] += 1
        self._gateway.hub.add(conn)
        # python-socketio sends the CONNECT packet after this callback returns; the welcome
        # event must follow it, so it is sent from a task that runs after that.
        conn.start_task(self._gateway.accepted(conn, transport=conn.transport))
        return True

    async def _on_event(self, event: str, namespace: str, sid: str, *args: Any) -> Any:
        conn = self._connections.get(sid)
        if conn is None or conn.closed:
            return self.server.not_handled
        reply = await self._gateway.dispatcher.dispatch(conn, event, args[0] if args else None)
        if reply is None:
            return None
        if reply.error_code is ErrorCode.UNKNOWN_EVENT:
            return self.server.not_handled  # Socket.IO ignores events nobody handles
        await conn.emit(reply.event, reply.data)
        return reply.data

    async def _on_disconnect(self, namespace: str, sid: str, reason: Any) -> None:
        conn = self._connections.pop(sid, None)
        if conn is None:
            return
        conn.closed = True
        self._joined[conn.eio_sid] -= 1
        if self._joined[conn.eio_sid] <= 0:
            del self._joined[conn.eio_sid]
        self._gateway.released(conn, code=None, reason=conn.close_reason or str(reason))

    # -- Engine.IO sessions: the ones that never join a namespace, and the ones that end --------

    def _wrap_engineio_handlers(self) -> None:
        eio = self.server.eio
        socketio_connect = eio.handlers["connect"]
        socketio_disconnect = eio.handlers["disconnect"]

        async def on_engineio_connect(eio_sid: str, environ: dict[str, Any]) -> Any:
            result = await socketio_connect(eio_sid, environ)
            asyncio.get_running_loop().call_later(
                self._connect_timeout, self._close_if_unjoined, eio_sid
            )
            return result

        async def on_engineio_disconnect(eio_sid: str, reason: Any) -> Any:
            socket = eio.sockets.get(eio_sid)
            result = await socketio_disconnect(eio_sid, reason)
            if socket is not None and not socket.upgraded:
                # A client that closes a polling session (or is closed) may have a GET waiting
                # for packets; python-engineio leaves it hanging until the ping timeout. An
                # empty payload ends it now.
                socket.queue.put_nowait(None)
            return result

        eio.on("connect", on_engineio_connect)
        eio.on("disconnect", on_engineio_disconnect)

    def _close_if_unjoined(self, eio_sid: str) -> None:
        if eio_sid not in self.server.eio.sockets or self._joined[eio_sid] > 0:
            return
        asyncio.get_running_loop().create_task(self.server.eio.disconnect(eio_sid))

    # -- lifecycle -------------------------------------------------------------------------------

    def connections(self) -> list[Connection]:
        return list(self._connections.values())

    async def shutdown(self) -> None:
        await self.server.shutdown()
