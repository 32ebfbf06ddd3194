"""The Socket.IO transport: python-socketio's ``AsyncServer``, bridged to the dispatcher.

python-socketio owns the Socket.IO and Engine.IO protocols (polling, websocket, the upgrade,
packets, acknowledgements, namespaces). This module configures it and bridges its three callbacks,
registered for every namespace (``namespaces='*'``) so that clients using ``/api`` as their
namespace (the YektaYar apps do) are served the same events:

- a namespace CONNECT runs :class:`~yektaws.admission.Admission`, then
  :class:`~yektaws.recovery.Recovery` (which may resume a saved connection: same ``sid``, its
  rooms, the events it missed), and either registers a :class:`SocketIOConnection` and answers
  CONNECT ``{"sid", "pid"?}`` or refuses with a CONNECT_ERROR (``{"message", "data"?}``). This
  step replaces python-socketio's own (:class:`_Server`), because the socket's id must be chosen
  before python-socketio names it, and the reply must carry the ``pid`` of Socket.IO's
  connection state recovery, which python-socketio does not implement;
- ``*`` (any event) goes to :meth:`Dispatcher.dispatch`; the direct reply is emitted as an event
  *and* returned as the acknowledgement; an event nobody handles is ignored, as Socket.IO does;
- ``disconnect`` releases the connection.

Where python-engineio's defaults deviate from the Engine.IO specification or from our limits, this
module closes the gap in front of it (:meth:`SocketIOTransport.handle`): the ``Origin`` check with
an empty allow-list, the protocol corners of :mod:`yektaws.transports.engineio_guards` (methods,
oversize bodies, polling after an upgrade, a second websocket, ping deadlines, the handshake's
``pingInterval``), and an Engine.IO session that never joins a namespace (or was refused) being
closed after ``SOCKETIO_CONNECT_TIMEOUT``.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson
import socketio
from aiohttp import web
from socketio import packet as sio_packet
from socketio.exceptions import ConnectionRefusedError as SocketIORefused

from yektaws.admission import Rejection
from yektaws.auth import socketio_handshake_token, socketio_token
from yektaws.connection import CloseReason, Connection, Encoder
from yektaws.deadlines import OrderedDeadlines
from yektaws.dispatcher import ErrorCode
from yektaws.forwarded import ClientView, client_view
from yektaws.logging import get_logger
from yektaws.recovery import ResumeRequest
from yektaws.transports.engineio_guards import EngineIOGuards
from yektaws.transports.engineio_pings import EngineIOPings
from yektaws.transports.engineio_ws import (
    DirectSendQueue,
    release_transport,
    websocket_driver,
)
from yektaws.transports.socketio_inline import InlineEvents, encode_event
from yektaws.wsframe import text_frame

if TYPE_CHECKING:
    from yektaws.gateway import Gateway

__all__ = ["SocketIOConnection", "SocketIOTransport"]

log = get_logger(__name__)

# A long-polling client's unsent packets are counted, not weighed: each counts as this many bytes
# against MAX_OUTBOUND_BUFFER. (On a websocket the transport's buffer is weighed exactly.)
_NOMINAL_PACKET_BYTES = 1024

# Until the refusal packet has gone out, the Engine.IO session of a refused client is kept.
_REFUSED_SESSION_GRACE = 1.0
# Engine.IO sessions whose time to join a namespace ends this close together are looked at in the
# same timer callback.
_UNJOINED_SLACK = 0.05


# Closes after which the client should come back (to another node): not its own fault.
_RECONNECT_ELSEWHERE = frozenset({CloseReason.GOING_AWAY, CloseReason.TOO_SLOW})

# The environ key (python-socketio keeps each session's environ) of what its CONNECTs need.
_HANDSHAKE = "yektaws.handshake"


@dataclass(frozen=True, slots=True)
class _Handshake:
    """What an Engine.IO session's handshake request told: who the client is, its token."""

    client: ClientView
    token: str | None


# What python-engineio appends to the first report of each kind of client error.
_ONCE_SUFFIX = " (further occurrences of this error will be logged with level INFO)"
# How python-engineio reports a long-polling POST it failed to handle.
_BAD_POLLING_BODY = "post request handler error"


class _QuietLogger:
    """The logger python-socketio and python-engineio are given: their per-packet INFO lines
    cost a call each even when filtered, so below WARNING nothing is called at all; warnings and
    errors reach the standard logger (and so the gateway's masked log output), except that a
    client's mistake is a warning (see :meth:`error` and :meth:`exception`)."""

    def __init__(self, name: str) -> None:
        target = logging.getLogger(name)
        self._target = target
        self.warning = target.warning
        self.critical = target.critical

    def error(self, message: Any, *args: Any, **kwargs: Any) -> None:
        # python-engineio reports a client's mistake (an unknown session id, transport or
        # protocol version, all answered 400) as an error the first time per kind in a process,
        # then at INFO: after every deploy, error lines nobody has to act on.
        if isinstance(message, str) and message.endswith(_ONCE_SUFFIX):
            self._target.warning(message[: -len(_ONCE_SUFFIX)], *args, **kwargs)
        else:
            self._target.error(message, *args, **kwargs)

    def exception(self, message: Any, *args: Any, **kwargs: Any) -> None:
        # A long-polling body that is not Engine.IO (undecodable, or a packet type beyond the
        # seven there are) fails in python-engineio's decoding, which logs the traceback as its
        # own error, drops the body and answers ok: per request, whoever sends it. One line.
        error = sys.exc_info()[1]
        if message == _BAD_POLLING_BODY and isinstance(error, ValueError | IndexError):
            self._target.warning("%s: not Engine.IO (%s)", message, type(error).__name__)
        else:
            self._target.exception(message, *args, **kwargs)

    def debug(self, *args: Any, **kwargs: Any) -> None:
        pass

    info = debug

    def isEnabledFor(self, level: int) -> bool:
        return level >= logging.WARNING


class _OrjsonCodec:
    """python-socketio's ``json`` hook: orjson behind the ``dumps``/``loads`` names it calls."""

    @staticmethod
    def dumps(obj: Any, **_options: Any) -> str:
        # python-socketio passes json.dumps options (separators); orjson is always compact.
        return orjson.dumps(obj).decode()

    @staticmethod
    def loads(text: str | bytes, **_options: Any) -> Any:
        return orjson.loads(text)


class _Packet(sio_packet.Packet):
    """python-socketio's packet, with its JSON work done once, by orjson.

    The stock packet walks the data recursively (through ``functools.reduce``) to find binary
    attachments, then encodes it; profiled, that walk cost more than the encoding. orjson refuses
    bytes, so one ``orjson.dumps`` both proves the data has no attachments and produces the text
    the packet sends. Data with bytes (binary events) takes the stock path.
    """

    def __init__(
        self,
        packet_type: int = sio_packet.EVENT,
        data: Any = None,
        namespace: str | None = None,
        id: int | None = None,
        binary: bool | None = None,
        encoded_packet: str | bytes | None = None,
    ) -> None:
        self._json: str | None = None
        if data is not None and binary is None and encoded_packet is None:
            try:
                self._json = orjson.dumps(data).decode()
                binary = False
            except TypeError:
                pass  # bytes inside (or another type orjson refuses): the stock detection
        super().__init__(packet_type, data, namespace, id, binary, encoded_packet)

    def encode(self) -> Any:
        if self._json is None:
            return super().encode()
        encoded = str(self.packet_type)
        if self.namespace is not None and self.namespace != "/":
            encoded += self.namespace + ","
        if self.id is not None:
            encoded += str(self.id)
        return encoded + self._json


class _EventPacket:
    """One Socket.IO EVENT packet, encoded once for every connection of a namespace it goes to.

    ``parts`` is what python-engineio is given to send (the packet text; with binary attachments,
    the attachments after it); :meth:`frame` the websocket frame an upgraded socket is written
    directly, built on first use.
    """

    __slots__ = ("_frame", "parts")

    def __init__(self, encoded: str | list[str | bytes]) -> None:
        self.parts: list[str | bytes] = [encoded] if isinstance(encoded, str) else encoded
        self._frame: bytes | None = None

    def frame(self) -> bytes | None:
        """The Engine.IO MESSAGE of the packet as one text frame; None with attachments."""
        if self._frame is None and len(self.parts) == 1 and isinstance(self.parts[0], str):
            self._frame = text_frame(b"4" + self.parts[0].encode())
        return self._frame


@dataclass(frozen=True, slots=True)
class _EventEncoder:
    """The encoder of a namespace's connections: equal for one namespace, so an emit to a room
    encodes its packet once per namespace (and position) whatever the number of members."""

    namespace: str

    def __call__(self, event: str, data: Any, position: str | None) -> _EventPacket:
        # A recoverable event carries its position as a last argument, where socket.io-client
        # (4.6+) reads the offset it presents when it reconnects.
        arguments = [event, data] if position is None else [event, data, position]
        return _EventPacket(
            _Packet(sio_packet.EVENT, data=arguments, namespace=self.namespace).encode()
        )


class _Server(socketio.AsyncServer):
    """python-socketio's server, with the namespace CONNECT handed to the transport."""

    connect_handler: Callable[[str, str, Any], Awaitable[None]]

    async def _handle_connect(self, eio_sid: str, namespace: str | None, data: Any) -> None:
        await self.connect_handler(eio_sid, namespace or "/", data)


class SocketIOConnection(Connection):
    """A :class:`~yektaws.connection.Connection` on one Socket.IO namespace."""

    protocol = "socket.io"
    __slots__ = ("_max_outbound", "_server", "close_reason", "eio_sid", "namespace")

    def __init__(
        self,
        server: socketio.AsyncServer,
        *,
        namespace: str,
        eio_sid: str,
        max_outbound: int,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self._server = server
        self.namespace = namespace
        self.eio_sid = eio_sid
        self._max_outbound = max_outbound
        self.close_reason = ""

    @property
    def transport(self) -> str:
        socket = self._server.eio.sockets.get(self.eio_sid)
        return "websocket" if socket is not None and socket.upgraded else "polling"

    @property
    def encoder(self) -> Encoder:
        return _EventEncoder(self.namespace)

    async def _send_encoded(self, payload: _EventPacket) -> None:
        socket = self._server.eio.sockets.get(self.eio_sid)
        if socket is None or socket.closed:
            return
        queue = socket.queue
        if self._backlog(queue) > self._max_outbound:
            await self.close(CloseReason.TOO_SLOW)
            return
        # Handed to Engine.IO directly: AsyncServer.emit would look the client up in its rooms
        # and start a task per recipient, for one recipient we already know. An upgraded
        # websocket without compression takes the frame itself, as the inline path's replies
        # do: the same bytes for every socket, no packet object, no coroutine of Engine.IO's.
        frame = payload.frame() if isinstance(queue, DirectSendQueue) else None
        if frame is not None and queue.put_frame(frame):
            return
        for part in payload.parts:
            await self._server.eio.send(self.eio_sid, part)

    def event_now(self, queue: DirectSendQueue, event: str, data: Any) -> bytes | None:
        """:meth:`emit` on an upgraded websocket whose packets go out through ``queue``, for the
        inline path (:mod:`yektaws.transports.socketio_inline`), which sends it: the encoded
        packet, or None when nothing is to be sent (closed, or too far behind: closed now)."""
        if self.closed:
            return None
        if self._backlog(queue) > self._max_outbound:
            asyncio.get_running_loop().create_task(self.close(CloseReason.TOO_SLOW))
            return None
        self._metrics.event_out(event)
        return encode_event(self.namespace, [event, data])

    @staticmethod
    def _backlog(queue: DirectSendQueue | asyncio.Queue[Any]) -> int:
        """Bytes (websocket) or nominal bytes (polling packets) waiting for this client."""
        if isinstance(queue, DirectSendQueue):
            return queue.transport.get_write_buffer_size() + queue.pending
        return queue.qsize() * _NOMINAL_PACKET_BYTES

    async def abandon(self) -> None:
        self.closed = True
        self.close_reason = "resumed elsewhere"
        await self._server.eio.disconnect(self.eio_sid)

    async def close(self, reason: CloseReason, text: str | None = None) -> None:
        if self.closed:
            return
        text = text or reason.text
        if reason is CloseReason.SESSION_EXPIRED:
            await self.emit("session:expired", {"reason": text})
        self.closed = True
        self.end_reason = reason
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
        self._trusted = settings.trusted_proxies
        #: Engine.IO sessions (ids) to close if they have joined no namespace by then: one timer
        #: for all of them, not a timer per session living SOCKETIO_CONNECT_TIMEOUT.
        self._unjoined: OrderedDeadlines[str] = OrderedDeadlines(
            settings.socketio_connect_timeout, self._close_if_unjoined, slack=_UNJOINED_SLACK
        )
        self._max_outbound = settings.max_outbound_buffer
        self._rate = settings.rate_limit_per_second
        self._burst = settings.rate_limit_burst
        self._connections: dict[str, SocketIOConnection] = {}
        #: Namespaces joined per Engine.IO session, to find sessions that joined none.
        self._joined: Counter[str] = Counter()
        self._sid_prefix = sid_prefix
        #: The id the next Socket.IO socket gets (see _connect); None: a new one.
        self._reserved_sid: str | None = None
        self.server = _Server(
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
            serializer=_Packet,
            logger=_QuietLogger("socketio.server"),
            engineio_logger=_QuietLogger("engineio.server"),
        )
        driver = websocket_driver(
            compress=settings.websocket_compression,
            max_outbound=settings.max_outbound_buffer,
            inline=InlineEvents(gateway.dispatcher, self._connection_on).receiver,
        )
        # The driver table is shared by every server of the process: replace it, do not mutate it.
        self.server.eio._async = {**self.server.eio._async, "websocket": driver}
        self._guards = EngineIOGuards(self.server.eio, max_body=settings.max_message_size)
        self.pings = EngineIOPings(self.server.eio)
        self._generate_id = self.server.eio.generate_id
        self.server.eio.generate_id = self._next_id
        self.server.connect_handler = self._connect
        self.server.on("disconnect", self._on_disconnect, namespace="*")
        self.server.on("*", self._on_event, namespace="*")
        self._wrap_engineio_handlers()

    # -- HTTP entry point ------------------------------------------------------------------------

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """The endpoint for every Socket.IO request (``/socket.io/`` or any path with ``EIO``)."""
        try:
            self._gateway.admission.check_origin(request.headers.get("Origin"))
            if "sid" not in request.query:  # a new Engine.IO session
                self._gateway.admission.check_descriptors()
        except Rejection as rejection:
            refusal = rejection.refusal
            peer = client_view(request, self._trusted).address
            self._gateway.rejected(SocketIOConnection.protocol, peer, refusal.reason)
            headers = {"Retry-After": str(refusal.retry_after)} if refusal.retry_after else None
            return web.Response(status=refusal.status, text=refusal.message, headers=headers)
        return await self._guards.handle(request)

    # -- ids ---------------------------------------------------------------------------------------

    def _new_id(self) -> str:
        # Polling affinity under --workers: the proxy sends `sid=w<i>.…` back to worker i. "."
        # never occurs in python-engineio's own ids (base64url), so no unprefixed id can be
        # mistaken for a worker's.
        return self._sid_prefix + str(self._generate_id())

    def _next_id(self) -> str:
        """python-engineio's id generator, as python-socketio's manager calls it for a socket."""
        reserved, self._reserved_sid = self._reserved_sid, None
        return reserved or self._new_id()

    # -- the namespace CONNECT and python-socketio's callbacks ------------------------------------

    async def _connect(self, eio_sid: str, namespace: str, auth: Any) -> None:
        """Admit (or refuse) a CONNECT to ``namespace``, resuming a saved socket if asked."""
        server = self.server
        gateway = self._gateway
        environ = server.environ.get(eio_sid)
        if environ is None:  # the Engine.IO session ended meanwhile
            return
        handshake: _Handshake = environ[_HANDSHAKE]
        client = handshake.client
        try:
            session = await gateway.admission.admit(
                token=socketio_token(auth, handshake.token), peer=client.address
            )
        except Rejection as rejection:
            refusal = rejection.refusal
            gateway.rejected(SocketIOConnection.protocol, client.address, refusal.reason)
            asyncio.get_running_loop().call_later(
                _REFUSED_SESSION_GRACE, self._close_if_unjoined, eio_sid
            )
            error = SocketIORefused(
                refusal.message, *([{"retryable": True}] if refusal.retryable else [])
            ).error_args
            await self._send(eio_sid, sio_packet.CONNECT_ERROR, error, namespace)
            return
        link = None
        options = auth if isinstance(auth, dict) else {}
        # `auth.recovery: false` opts out (no pid, no offsets: for clients whose handlers take
        # exactly one argument, such as some python-socketio apps).
        if gateway.recovery is not None and options.get("recovery") is not False:
            resume = (
                ResumeRequest.of(options["pid"], options.get("offset"))
                if ("pid" in options)
                else None
            )
            link = await gateway.recovery.open(
                session,
                protocol=SocketIOConnection.protocol,
                namespace=namespace,
                request=resume,
                handle_in_greeting=False,
                new_socket_id=self._new_id,
            )
        # pre_connect names the socket by calling generate_id before its first await, so the
        # reserved id cannot be taken by anything else in between.
        self._reserved_sid = None if link is None else link.state.socket_id
        sid = await server.manager.pre_connect(eio_sid, namespace)
        self._reserved_sid = None
        if sid is None:  # this Engine.IO session is in that namespace already
            if gateway.recovery is not None:
                gateway.recovery.ended(link, resumable=False, cause="refused")
            await self._send(eio_sid, sio_packet.CONNECT_ERROR, "Unable to connect", namespace)
            return
        conn = SocketIOConnection(
            server,
            namespace=namespace,
            eio_sid=eio_sid,
            max_outbound=self._max_outbound,
            socket_id=sid,
            session=session,
            recovery=link,
            peer=client.address,
            events_per_second=self._rate,
            event_burst=self._burst,
            metrics=gateway.metrics,
        )
        self._connections[sid] = conn
        self._joined[eio_sid] += 1
        gateway.hub.add(conn)
        await self._send(
            eio_sid,
            sio_packet.CONNECT,
            {"sid": sid} if link is None else {"sid": sid, "pid": link.pid},
            namespace,
        )
        await server.manager.connect(sid, namespace)
        await gateway.accepted(conn, transport=conn.transport)

    def _connection_on(self, eio_sid: str, namespace: str) -> SocketIOConnection | None:
        """The connection of Engine.IO session ``eio_sid`` on ``namespace``, if python-socketio
        counts it as connected there (not while it is still joining or leaving)."""
        manager = self.server.manager
        sid = manager.sid_from_eio_sid(eio_sid, namespace)
        if sid is None or not manager.is_connected(sid, namespace):
            return None
        return self._connections.get(sid)

    async def _send(self, eio_sid: str, kind: int, data: Any, namespace: str) -> None:
        await self.server._send_packet(
            eio_sid, self.server.packet_class(kind, data=data, namespace=namespace)
        )

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
        # A DISCONNECT from the client (or python-socketio's own, for a broken packet) is the
        # end of it; a lost transport or a ping timeout may be resumed.
        conn.left_on_purpose = reason in (
            self.server.reason.CLIENT_DISCONNECT,
            self.server.reason.SERVER_DISCONNECT,
        )
        self._joined[conn.eio_sid] -= 1
        if self._joined[conn.eio_sid] <= 0:
            del self._joined[conn.eio_sid]
        self._gateway.released(conn, code=None, reason=conn.close_reason or str(reason))

    # -- Engine.IO sessions: the ones that never join a namespace, and the ones that end --------

    def _wrap_engineio_handlers(self) -> None:
        eio = self.server.eio
        socketio_connect = eio.handlers["connect"]
        socketio_disconnect = eio.handlers["disconnect"]
        socketio_message = eio.handlers["message"]

        async def on_engineio_connect(eio_sid: str, environ: dict[str, Any]) -> Any:
            # What the session's CONNECTs need of the handshake request, read now: the websocket
            # driver drops the request from the environ once upgraded (see engineio_ws).
            request: web.Request = environ["aiohttp.request"]
            environ[_HANDSHAKE] = _Handshake(
                client_view(request, self._trusted), socketio_handshake_token(request)
            )
            result = await socketio_connect(eio_sid, environ)
            self._unjoined.add(eio_sid)
            return result

        async def on_engineio_message(eio_sid: str, data: Any) -> Any:
            try:
                return await socketio_message(eio_sid, data)
            except (ValueError, TypeError, KeyError, IndexError, AttributeError) as exc:
                # A malformed Socket.IO packet. python-engineio would log a traceback per
                # packet (a client could flood the log with them): one line, and the session
                # ends, as the JavaScript server ends it on a parse error.
                log.warning("socketio_bad_packet", eio_sid=eio_sid, error=type(exc).__name__)
                asyncio.get_running_loop().create_task(eio.disconnect(eio_sid))
                return None

        async def on_engineio_disconnect(eio_sid: str, reason: Any) -> Any:
            socket = eio.sockets.get(eio_sid)
            result = await socketio_disconnect(eio_sid, reason)
            if socket is not None:
                # python-engineio leaves a waiting long-poll hanging until the ping timeout, and
                # a ping-timed-out websocket open: both are ended now.
                release_transport(socket)
                # It also keeps an ended session in `sockets` until its sweep passes by (one
                # pass per pingTimeout), and with it the transport, the reader and the
                # websocket: dropped now, so that a reconnect storm does not hold every ended
                # connection in memory for 20 s. (Every use of `sockets` allows for a missing
                # session, which is what a client asking after this one gets: 400.)
                if eio.sockets.get(eio_sid) is socket:
                    del eio.sockets[eio_sid]
            return result

        eio.on("connect", on_engineio_connect)
        eio.on("disconnect", on_engineio_disconnect)
        eio.on("message", on_engineio_message)

    def _close_if_unjoined(self, eio_sid: str) -> None:
        if eio_sid not in self.server.eio.sockets or self._joined[eio_sid] > 0:
            return
        asyncio.get_running_loop().create_task(self.server.eio.disconnect(eio_sid))

    # -- lifecycle -------------------------------------------------------------------------------

    def connections(self) -> list[Connection]:
        return list(self._connections.values())

    async def shutdown(self) -> None:
        self.pings.stop()
        self._unjoined.cancel()
        await self.server.shutdown()
