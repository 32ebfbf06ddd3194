"""The native transport: plain RFC 6455 WebSocket clients (browsers, wscat, aiohttp, websockets).

The handshake is checked before anything is upgraded (HTTP/1.1, ``Sec-WebSocket-Version: 13``,
``Origin``, then :class:`~yektaws.admission.Admission`); a refusal is an ordinary HTTP response
with a status and a one-line text, so ``wscat`` and browsers show why.

After the upgrade, frames are JSON objects ``{"event", "data", "id"?}`` (CONTRACT section 3):
decoded once with orjson, handed to the dispatcher, and the reply encoded once and written as a
text frame. Once upgraded, the socket leaves aiohttp's request (:mod:`yektaws.wsdetach`): the
handler returns, and without compression every frame is answered in the callback that parsed it
(:mod:`yektaws.wsinline`). A connection has a task only while something must wait (a coroutine
handler, the rate limit's refusal, control frames, the close; with compression, always): it
handles what was queued, in order, and ends. Limits, all from settings:

- a message over ``MAX_MESSAGE_SIZE`` closes with 1009, enforced by aiohttp's reader before the
  message is buffered (and after decompression, if compression is on);
- a silent peer is pinged, and one that stays silent is dropped: :class:`Heartbeat` finds a dead
  peer within 1.5 x ``HEARTBEAT_INTERVAL``;
- an unmasked client frame fails the connection with 1002 (RFC 6455 section 5.1), see
  :mod:`yektaws.guards`;
- a client whose unread output exceeds ``MAX_OUTBOUND_BUFFER`` is closed with 1013: writes never
  wait for a slow reader, so nothing else (an AI stream, a push to a room) waits for it either;
- server shutdown closes with 1001.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import WSCloseCode, WSMsgType, web
from aiohttp.http import HttpVersion11
from aiohttp.http_websocket import WSMessage

from yektaws.admission import Rejection
from yektaws.auth import NATIVE_SUBPROTOCOL, native_credentials
from yektaws.connection import CloseReason, Connection, Encoder
from yektaws.dispatcher import LATER, Dispatcher, Reply
from yektaws.forwarded import client_view
from yektaws.guards import GuardedWebSocketResponse
from yektaws.recovery import ResumeRequest
from yektaws.wsframe import text_frame

if TYPE_CHECKING:
    from yektaws.gateway import Gateway

__all__ = ["NativeConnection", "NativeTransport", "decode_frame"]

# How long a close may go without progress (its frame not moving out, then no answer to it) before
# the TCP connection is dropped (see GuardedWebSocketResponse.close_within).
_CLOSE_TIMEOUT = 2.0


class FrameError(ValueError):
    """The frame is not a JSON object with an event."""


Frame = tuple[Any, Any, str | int | None]


def decode_frame(payload: str | bytes) -> Frame:
    """``(event, data, id)`` from a frame's payload, or :class:`FrameError`.

    ``event`` is returned as found (possibly missing or not a string): telling an unknown event
    apart from a broken frame is the dispatcher's job.
    """
    try:
        message = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        raise FrameError("not JSON") from exc
    if not isinstance(message, dict):
        raise FrameError("not a JSON object")
    frame_id = message.get("id")
    if frame_id is not None and (isinstance(frame_id, bool) or not isinstance(frame_id, str | int)):
        raise FrameError("id must be a string or a number")
    return message.get("event"), message.get("data"), frame_id


def _well_formed(payload: str | bytes) -> Frame | None:
    """:func:`decode_frame`, with ``None`` for a broken frame (answered ``bad_frame``)."""
    try:
        return decode_frame(payload)
    except FrameError:
        return None


def encode_frame(
    event: str, data: Any, frame_id: str | int | None = None, position: str | None = None
) -> bytes:
    """A server frame: ``id`` on a direct reply, ``offset`` on a recoverable event."""
    if position is not None:
        return orjson.dumps({"event": event, "data": data, "offset": position})
    if frame_id is None:
        return orjson.dumps({"event": event, "data": data})
    return orjson.dumps({"event": event, "data": data, "id": frame_id})


def _event_payload(event: str, data: Any, position: str | None) -> bytes:
    """An event's frame payload (:func:`encode_frame`), the encoder of compressed connections:
    aiohttp's writer frames and compresses it per connection."""
    return encode_frame(event, data, position=position)


def _event_frame(event: str, data: Any, position: str | None) -> bytes:
    """An event's whole text frame, the encoder of connections without compression: built once,
    written as it is to every such connection an emit reaches."""
    return text_frame(encode_frame(event, data, position=position))


def resume_request(request: web.BaseRequest) -> tuple[bool, ResumeRequest | None]:
    """``(wants recovery, resume request)`` from a native handshake's query string.

    ``recover=1`` asks for a recoverable connection; ``resume=<pid>&offset=<position>`` resumes
    one (and implies it). Clients that ask for neither see no recovery fields at all.
    """
    query = request.query
    if "resume" in query or "offset" in query:
        return True, ResumeRequest.of(query.get("resume"), query.get("offset"))
    return query.get("recover", "").lower() in {"1", "true", "yes", "on"}, None


class NativeConnection(Connection):
    """A :class:`~yektaws.connection.Connection` over an aiohttp ``WebSocketResponse``."""

    protocol = "native-websocket"
    __slots__ = (
        "_max_outbound",
        "_native",
        "_transport",
        "_ws",
        "close_code",
        "close_reason",
        "heard",
        "pinged",
        "reading",
        "released",
    )

    def __init__(
        self,
        ws: GuardedWebSocketResponse,
        transport: asyncio.Transport,
        *,
        native: NativeTransport,
        max_outbound: int,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self._native = native
        self._ws = ws
        self._transport = transport
        self._max_outbound = max_outbound
        self.close_code: int | None = None
        self.close_reason: str = ""
        #: Set by every frame received; cleared by each heartbeat sweep.
        self.heard = True
        #: A ping went out and nothing has been heard since.
        self.pinged = False
        #: The task handling queued frames, while there are any (see NativeTransport).
        self.reading: asyncio.Task[None] | None = None
        #: The transport has reported the connection's end (once).
        self.released = False

    @property
    def transport(self) -> str:
        return "websocket"

    # Bound methods, not partials, while the connection is idle: ~270 bytes less per connection.

    def take_now(self, message: WSMessage) -> bool:
        """The connection's :data:`~yektaws.wsinline.Receiver` (see :func:`_take_now`)."""
        return _take_now(self._native.dispatcher, self, message)

    def read_later(self) -> None:
        """Start the task that handles what was queued (:meth:`NativeTransport.read_queued`)."""
        self.reading = asyncio.get_running_loop().create_task(
            self._native.read_queued(self, self._ws)
        )

    @property
    def encoder(self) -> Encoder:
        return _event_payload if self._ws.compress else _event_frame

    async def _send_encoded(self, payload: bytes) -> None:
        if self._ws.compress:
            await self.send_raw(payload)
        elif self._has_room(len(payload)):
            self._transport.write(payload)  # a whole frame already (_event_frame)

    async def reply(self, reply: Reply, frame_id: str | int | None) -> None:
        """Send the direct answer to a frame, carrying the frame's ``id`` when it had one."""
        if self._ws.compress:
            if not self.closed:
                self._metrics.event_out(reply.event)
                await self.send_raw(encode_frame(reply.event, reply.data, frame_id))
            return
        self.reply_now(reply, frame_id)

    def reply_now(self, reply: Reply, frame_id: str | int | None) -> None:
        """:meth:`reply` on a connection without compression, where nothing waits."""
        if self.closed:
            return
        self._metrics.event_out(reply.event)
        self.write(encode_frame(reply.event, reply.data, frame_id))

    async def send_raw(self, payload: bytes) -> None:
        """Write one text message, or close the connection if the client has fallen behind."""
        if self._ws.compress:
            if not self._has_room(len(payload)):
                return
            await self._ws.send_frame(payload, WSMsgType.TEXT)  # aiohttp's writer compresses
        else:
            self.write(payload)

    def write(self, payload: bytes) -> None:
        """:meth:`send_raw` without compression: framed here and written straight to the
        transport (aiohttp's writer costs more Python per frame than the rest of an echo, see
        :mod:`yektaws.wsframe`)."""
        if self._has_room(len(payload)):
            self._transport.write(text_frame(payload))

    def _has_room(self, size: int) -> bool:
        """Whether ``size`` more bytes may be queued for the client; one that has fallen
        ``MAX_OUTBOUND_BUFFER`` behind is closed instead (1013)."""
        transport = self._transport
        if self.closed or transport.is_closing():
            return False
        if transport.get_write_buffer_size() + size > self._max_outbound:
            self._close_now(CloseReason.TOO_SLOW)
            return False
        return True

    async def ping(self) -> None:
        """Ask a silent peer for a sign of life (the answer sets :attr:`heard`)."""
        self.pinged = True
        if self._transport.get_write_buffer_size() == 0:
            # An empty buffer: the write cannot wait. A peer with unread output gets no ping
            # and is dropped at the next sweep unless it speaks.
            await self._ws.ping()

    async def abandon(self) -> None:
        self.closed = True
        self.close_code, self.close_reason = CloseReason.DEAD_PEER.code, "resumed elsewhere"
        self._transport.abort()

    async def close(self, reason: CloseReason, text: str | None = None) -> None:
        self._close_now(reason, text)

    def _close_now(self, reason: CloseReason, text: str | None = None) -> None:
        if self.closed:
            return
        self.closed = True
        self.end_reason = reason
        self.close_code, self.close_reason = reason.code, text or reason.text
        if reason is CloseReason.DEAD_PEER:
            self._transport.abort()  # nobody is there to read a close frame
            return
        # The close runs on its own: the caller may be the reader itself (rate limit) or an emitter
        # that must not wait for a client that is not reading.
        asyncio.get_running_loop().create_task(
            self._ws.close_within(_CLOSE_TIMEOUT, self._transport, reason.code, self.close_reason)
        )


class NativeTransport:
    """Accepts native WebSocket handshakes and runs each connection's read loop."""

    def __init__(self, gateway: Gateway) -> None:
        self._gateway = gateway
        self.dispatcher = gateway.dispatcher
        settings = gateway.settings
        self.heartbeat = Heartbeat(settings.heartbeat_interval)
        self._max_message = settings.max_message_size
        self._max_outbound = settings.max_outbound_buffer
        self._compress = settings.websocket_compression
        self._trusted = settings.trusted_proxies
        self._rate = settings.rate_limit_per_second
        self._burst = settings.rate_limit_burst

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """The endpoint for every native upgrade request, whatever its path."""
        gateway = self._gateway
        if request.version != HttpVersion11:
            return _refuse(400, "WebSocket requires HTTP/1.1")
        if request.headers.get("Sec-WebSocket-Version", "").strip() != "13":
            return _refuse(426, "Unsupported WebSocket version", {"Sec-WebSocket-Version": "13"})
        client = client_view(request, self._trusted)
        credentials = native_credentials(request)
        try:
            gateway.admission.check_origin(request.headers.get("Origin"))
            gateway.admission.check_descriptors()
            session = await gateway.admission.admit(token=credentials.token, peer=client.address)
        except Rejection as rejection:
            refusal = rejection.refusal
            gateway.rejected(NativeConnection.protocol, client.address, refusal.reason)
            headers = {"Retry-After": str(refusal.retry_after)} if refusal.retry_after else None
            return _refuse(refusal.status, refusal.message, headers)

        recovery = gateway.recovery
        wants_recovery, resume = resume_request(request)
        link = None
        if recovery is not None and wants_recovery:
            link = await recovery.open(
                session,
                protocol=NativeConnection.protocol,
                request=resume,
                handle_in_greeting=True,
                new_socket_id=_new_socket_id,
            )

        transport = request.transport
        if transport is None:  # the client is already gone
            if recovery is not None:
                recovery.ended(link, resumable=True, cause="lost")
            return _refuse(400, "Connection closed")
        ws = GuardedWebSocketResponse(
            protocols=(NATIVE_SUBPROTOCOL,) if credentials.via_subprotocol else (),
            # Pings and pongs are ours (see Heartbeat): aiohttp's heartbeat schedules a callback
            # on every read, a tenth of the cost of an echo.
            autoping=False,
            max_message_size=self._max_message,
            compress=self._compress,
            detachable=True,
        )
        conn = NativeConnection(
            ws,
            transport,
            native=self,
            max_outbound=self._max_outbound,
            socket_id=link.state.socket_id if link is not None else _new_socket_id(),
            session=session,
            recovery=link,
            peer=client.address,
            events_per_second=self._rate,
            event_burst=self._burst,
            metrics=gateway.metrics,
        )
        # Registered before the upgrade completes so that the per-owner cap counts it at once.
        gateway.hub.add(conn)
        self.heartbeat.watch(conn)
        try:
            await ws.prepare(request)
            # Let the transport buffer up to our own limit before it pushes back, so sends never
            # wait: a client that falls that far behind is closed instead.
            transport.set_write_buffer_limits(high=self._max_outbound)
            await gateway.accepted(conn, transport="websocket")
        except BaseException:
            self._released(conn, ws)
            raise
        # From here the socket is read where its frames are parsed, and by a task only while
        # something waits (see read_queued); this handler, and aiohttp's request with it, ends.
        ws.detach(request)
        self._read_inline(conn, ws)
        return ws

    def _read_inline(self, conn: NativeConnection, ws: GuardedWebSocketResponse) -> None:
        """Answer ``conn``'s frames as they are parsed; start its task for the first one that
        cannot be (or at once, if one is already queued)."""
        if not self._offer(conn, ws):
            conn.read_later()

    def _offer(self, conn: NativeConnection, ws: GuardedWebSocketResponse) -> bool:
        """Whether ``conn``'s frames are now read inline (nothing queued, no compression)."""
        if ws.compress:  # replies go through aiohttp's writer, which may wait: the task reads
            return False
        return ws.inline_queue.offer(conn.take_now, conn.read_later)

    async def read_queued(self, conn: NativeConnection, ws: GuardedWebSocketResponse) -> None:
        """``conn``'s task: handle what was queued, in order, until nothing is (then the frames
        are read inline again) or the connection has ended."""
        try:
            while await self._handle_queued(conn, ws, await ws.receive()):
                if self._offer(conn, ws):
                    return
        except BaseException:
            self._released(conn, ws)
            raise
        finally:
            conn.reading = None
        self._released(conn, ws)

    async def _handle_queued(
        self, conn: NativeConnection, ws: GuardedWebSocketResponse, message: WSMessage
    ) -> bool:
        """Handle one queued message; False once it was the connection's end.

        The end is what aiohttp reports (a close frame, an error, EOF), even after the server
        decided to close: the server's close frame goes out on a task of its own
        (:meth:`NativeConnection.close`), which the client's answer completes.
        """
        conn.heard = True
        kind = message.type
        if kind is WSMsgType.TEXT or kind is WSMsgType.BINARY:
            if conn.closed:
                return True  # closing: what the client still sends is not answered
            dispatcher = self._gateway.dispatcher
            frame = _well_formed(message.data)
            if frame is None:
                reply = await dispatcher.refuse_frame(conn)
            else:
                reply = await dispatcher.dispatch(conn, frame[0], frame[1])
            if reply is not None:
                await conn.reply(reply, frame[2] if frame is not None else None)
        elif kind is WSMsgType.PING:
            await ws.pong(message.data)
        elif kind is WSMsgType.PONG:
            conn.pinged = False
        elif kind is WSMsgType.ERROR:
            # aiohttp has already sent the close frame (1009 for an oversize message, 1002
            # for a protocol violation): the client broke a rule, it has nothing to resume.
            code = getattr(ws.exception(), "code", None)
            if code == CloseReason.TOO_BIG.code:
                conn.close_code, conn.close_reason = CloseReason.TOO_BIG.value
                conn.end_reason = CloseReason.TOO_BIG
            elif code is not None:
                conn.left_on_purpose = True
            return False
        else:  # CLOSE, CLOSING, CLOSED
            if kind is WSMsgType.CLOSE and not conn.closed:
                conn.left_on_purpose = True  # the client's close frame: no resume expected
            return False
        return True

    def _released(self, conn: NativeConnection, ws: GuardedWebSocketResponse) -> None:
        """The connection's end: once, whoever saw it (its task, or a failed start)."""
        if conn.released:
            return
        conn.released = conn.closed = True
        self.heartbeat.forget(conn)
        code = conn.close_code or ws.close_code or WSCloseCode.ABNORMAL_CLOSURE
        self._gateway.released(conn, code=int(code), reason=conn.close_reason or _close_text(ws))


def _take_now(dispatcher: Dispatcher, conn: NativeConnection, message: WSMessage) -> bool:
    """The connection's :data:`~yektaws.wsinline.Receiver`: answer a data message where it was
    parsed, or decline it (False) for the read loop: control frames, the close, and events the
    dispatcher cannot answer without waiting."""
    kind = message.type
    if kind is not WSMsgType.TEXT and kind is not WSMsgType.BINARY:
        return False
    conn.heard = True
    if conn.closed:
        return True  # closing: what the client still sends is not answered
    frame = _well_formed(message.data)
    if frame is None:
        answer = dispatcher.refuse_frame_now(conn)
    else:
        answer = dispatcher.dispatch_now(conn, frame[0], frame[1])
    if answer is LATER:
        return False
    if answer is not None:
        conn.reply_now(answer, frame[2] if frame is not None else None)
    return True


class Heartbeat:
    """Finds dead native peers with one sweep every half ``HEARTBEAT_INTERVAL``, for all of them.

    A connection heard from since the last sweep is fine; a silent one is pinged; one still silent
    at the next sweep is dropped (:attr:`CloseReason.DEAD_PEER`). The per-frame cost is one
    attribute store in the read loop, where aiohttp's own heartbeat schedules a callback per read.
    """

    def __init__(self, interval: float) -> None:
        self._period = interval / 2
        self._connections: set[NativeConnection] = set()
        self._task: asyncio.Task[None] | None = None

    def watch(self, conn: NativeConnection) -> None:
        self._connections.add(conn)
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._sweep_forever())

    def forget(self, conn: NativeConnection) -> None:
        self._connections.discard(conn)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(self._period)
            await self.sweep()

    async def sweep(self) -> None:
        for conn in list(self._connections):
            if conn.closed:
                continue
            if conn.heard:
                conn.heard = False
                conn.pinged = False
            elif conn.pinged:
                await conn.close(CloseReason.DEAD_PEER)
            else:
                await conn.ping()


def _new_socket_id() -> str:
    return uuid.uuid4().hex[:20]


def _refuse(status: int, text: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(status=status, text=text, headers=headers)


def _close_text(ws: web.WebSocketResponse) -> str:
    if ws.close_code == WSCloseCode.OK:
        return "client closed"
    if ws.close_code is None:
        return "connection lost"
    return f"closed with {ws.close_code}"
