"""Engine.IO's websocket transport, driven our way (python-socketio still owns the protocol).

python-engineio runs each websocket with a reader that starts a task and a timer for every
incoming message, and a writer task that wakes for every outgoing packet through a queue. Profiled
under a closed-loop echo, that machinery cost more than the Socket.IO protocol itself. This module
is the aiohttp websocket driver python-engineio calls for the transport (``_async['websocket']``),
and it runs the same session with less:

- once upgraded, the websocket leaves aiohttp's request (:mod:`yektaws.wsdetach`; the request is
  dropped from the session's environ too) and has no task while nothing waits: the common EVENT
  packets are answered where they were parsed (:mod:`yektaws.transports.socketio_inline`), and
  what they decline starts a task (:class:`_PacketReader`) that hands MESSAGE packets straight to
  python-socketio's message handler (other packet types go through the socket as before) and
  ends once it has caught up;
- once upgraded, the socket's outgoing queue is replaced by :class:`DirectSendQueue`, which frames
  each packet and writes it at the end of the event-loop turn, several packets in one write: no
  writer task, no queue, no timer.

What does not change: the packets, the upgrade handshake (probe PING/PONG, NOOP to end the poll,
UPGRADE), ping/pong and ping timeouts (python-engineio's service task still closes silent
sockets), and every callback python-socketio receives. Whenever python-engineio closes a session
(a CLOSE packet, or a ping timeout, whose CLOSE packet python-engineio drops),
:func:`release_transport` closes the websocket. An upgrade is claimed before its first ``await``:
a second websocket for the same session is refused (:func:`close_duplicate_websocket`), and
polling requests can wait for the upgrade to settle (:func:`upgrade_settled`).

It also applies the gateway's limits: the guarded response (unmasked frames fail with 1002),
compression only when ``WEBSOCKET_COMPRESSION`` is on, and a transport buffer allowed to grow to
``MAX_OUTBOUND_BUFFER`` so that writes never wait (a client that falls that far behind is closed
by :class:`~yektaws.transports.socketio.SocketIOConnection`).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

from aiohttp import WSCloseCode, WSMsgType, web
from engineio import exceptions as eio_exceptions
from engineio import packet as eio_packet
from engineio.async_drivers import aiohttp as engineio_aiohttp

from yektaws.guards import GuardedWebSocketResponse
from yektaws.logging import get_logger
from yektaws.wsframe import binary_frame, text_frame
from yektaws.wsinline import Receiver

__all__ = [
    "DirectSendQueue",
    "EngineIOWebSocket",
    "close_duplicate_websocket",
    "release_transport",
    "upgrade_settled",
    "websocket_driver",
]

log = get_logger(__name__)

# How long a closing websocket may go without progress (its close frame not moving out, then no
# answer to it) before its TCP connection is dropped (see GuardedWebSocketResponse.close_within).
_CLOSE_TIMEOUT = 2.0

# How long the packets of an ended long-polling session wait for the poll that was already
# waiting to take them (it does within a few event-loop turns) before they are dropped.
_UNPOLLED_GRACE = 1.0

# A refused second websocket is closed before it may send anything: no message is accepted.
_DUPLICATE_MAX_MESSAGE = 125

#: Upgrades in progress: set once each has succeeded or failed (see upgrade_settled).
_UPGRADES: dict[Any, asyncio.Event] = {}


class DirectSendQueue:
    """An upgraded socket's outgoing "queue": packets put are written to the websocket directly.

    It implements the part of :class:`asyncio.Queue` python-engineio uses on an upgraded socket.
    Packets put during one event-loop turn are framed and joined, and leave in one write at the
    end of the turn (an event and its acknowledgement: one ``send()`` instead of two). With
    permessage-deflate on, frames go through aiohttp's writer instead, which compresses them.
    """

    def __init__(self, ws: GuardedWebSocketResponse, transport: asyncio.Transport) -> None:
        self._ws = ws
        #: The TCP transport: its write buffer (plus :attr:`pending`) is this client's backlog.
        self.transport = transport
        self._frames: list[bytes] = []
        #: Bytes framed but not yet handed to the transport.
        self.pending = 0
        self._close_after_flush = False
        self._ended = False

    @property
    def compresses(self) -> bool:
        """Whether packets go through aiohttp's writer (permessage-deflate): :meth:`put` may
        wait then, and :meth:`put_nowait` would send them uncompressed."""
        return bool(self._ws.compress)

    def adopt(self, queue: asyncio.Queue[Any]) -> None:
        """Take over what the polling transport had queued, in order, before anything newer."""
        while not queue.empty():
            self.put_nowait(queue.get_nowait())

    async def put(self, pkt: Any) -> None:
        if pkt is not None and self._ws.compress:
            await _send_through_aiohttp(self._ws, self.transport, pkt)
            return
        self.put_nowait(pkt)

    def put_nowait(self, pkt: Any) -> None:
        if pkt is None or self._ended or self.transport.is_closing():
            return  # None: python-engineio's "stop writing" marker
        encoded = pkt.encode()
        if isinstance(encoded, bytes):
            self._add(binary_frame(encoded))
        else:
            self._add(text_frame(encoded.encode()))
        if pkt.packet_type == eio_packet.CLOSE:
            # python-engineio closed the socket (ping timeout, server disconnect): end the
            # websocket too, or a dead peer's reader would wait forever.
            self._close_after_flush = True

    def put_frame(self, frame: bytes) -> bool:
        """Queue a text frame built once for many sockets (an event to a room), in order with
        the packets put; False with permessage-deflate, where each socket's frames are its own
        (:meth:`put` the packet then)."""
        if self._ws.compress:
            return False
        if not (self._ended or self.transport.is_closing()):
            self._add(frame)
        return True

    def send_now(self, texts: list[bytes]) -> None:
        """Send Engine.IO text packets already encoded (UTF-8) in one write, now.

        The inline event path's answer (an event and its ack) leaves at once rather than at the
        end of the event-loop turn: under load a turn reads hundreds of connections, and a
        reply held for the turn's end waited behind all of them (p99). Behind packets already
        waiting for that end, they wait too, to keep the order.
        """
        if self._ended or self.transport.is_closing() or not texts:
            return
        if self._frames:
            for text in texts:
                self._add(text_frame(text))
        else:
            self.transport.write(b"".join([text_frame(text) for text in texts]))

    def _add(self, frame: bytes) -> None:
        if not self._frames:
            asyncio.get_running_loop().call_soon(self._flush)
        self._frames.append(frame)
        self.pending += len(frame)

    def close_soon(self) -> None:
        """Close the websocket once what is queued (a CLOSE packet put this turn too) is out."""
        if self.transport.is_closing() or self._close_after_flush:
            return
        self._close_after_flush = True
        if not self._frames:
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        data = b"".join(self._frames)
        self._frames.clear()
        self.pending = 0
        if not self.transport.is_closing():
            self.transport.write(data)
        if self._close_after_flush:
            self._ended = True  # the close frame is the last thing sent
            asyncio.get_running_loop().create_task(
                self._ws.close_within(_CLOSE_TIMEOUT, self.transport)
            )

    # The rest of asyncio.Queue that python-engineio may call on an upgraded socket.
    def qsize(self) -> int:
        return len(self._frames)

    def empty(self) -> bool:
        return not self._frames

    def task_done(self) -> None:
        pass

    async def join(self) -> None:
        return None


async def _send_through_aiohttp(
    ws: GuardedWebSocketResponse, transport: asyncio.Transport, pkt: Any
) -> None:
    encoded = pkt.encode()
    try:
        if isinstance(encoded, bytes):
            await ws.send_bytes(encoded)
        else:
            await ws.send_str(encoded)
    except ConnectionError:
        return
    if pkt.packet_type == eio_packet.CLOSE:
        asyncio.get_running_loop().create_task(ws.close_within(_CLOSE_TIMEOUT, transport))


class EngineIOWebSocket(engineio_aiohttp.WebSocket):
    """The driver python-engineio instantiates for each websocket (see the module docstring)."""

    #: Set per server by :func:`websocket_driver`.
    compress: bool = False
    max_outbound: int = 1 << 20
    #: Makes the receiver that answers an upgraded socket's events inline (see
    #: :mod:`yektaws.transports.socketio_inline`); None: every packet takes the reading task.
    inline: Callable[[Any, DirectSendQueue], Receiver] | None = None

    async def __call__(self, environ: dict[str, Any]) -> web.StreamResponse:
        request: web.Request = environ["aiohttp.request"]
        socket = self.handler.__self__  # the engineio AsyncSocket whose handler this replaces
        settled: asyncio.Event | None = None
        if socket.connected:  # an upgrade from polling
            if socket.upgrading or socket.upgraded:
                return await close_duplicate_websocket(request, upgraded=socket.upgraded)
            # Claimed before the first await, so that a rival upgrade for the same session is
            # refused; python-engineio also holds polling sends while this is set.
            socket.upgrading = True
            settled = _UPGRADES[socket] = asyncio.Event()
        ws = GuardedWebSocketResponse(
            max_message_size=self.server.max_http_buffer_size,
            compress=self.compress,
            # WebSocket pings are answered in _next_packet: with aiohttp's autoping, receive()
            # answers them itself and waits on for the next message, inside receive(), where the
            # inline receiver is not installed (see yektaws.wsinline).
            autoping=False,
            detachable=True,
        )
        self._sock = ws
        try:
            transport = request.transport
            if transport is None:  # the client is already gone
                return ws
            await ws.prepare(request)
            transport.set_write_buffer_limits(high=self.max_outbound)
            self.environ = environ
            direct = DirectSendQueue(ws, transport)
            opened = await self._open(socket, ws, direct)
        finally:
            if settled is not None:
                socket.upgrading = False
                del _UPGRADES[socket]
                settled.set()
        if not opened:
            await ws.close_within(_CLOSE_TIMEOUT, transport)
            return ws
        inline = None if ws.compress or self.inline is None else self.inline(socket, direct)
        # From here the websocket outlives this request (yektaws.wsdetach), and the request is
        # no longer needed: python-socketio keeps the environ of a websocket-only session, which
        # would keep the request, its headers and its handler alive with it.
        ws.detach(request)
        environ.pop("aiohttp.request", None)
        _PacketReader(self.server, socket, ws, transport, inline).start()
        return ws

    async def _open(
        self, socket: Any, ws: GuardedWebSocketResponse, direct: DirectSendQueue
    ) -> bool:
        """Finish the upgrade from polling, or start a websocket-only session; False on failure."""
        if not socket.connected:
            socket.connected = True
            socket.upgraded = True
            polling_queue, socket.queue = socket.queue, direct
            direct.adopt(polling_queue)
            return True
        probe = await _next_packet(ws)
        if probe is None or probe.packet_type != eio_packet.PING or probe.data != "probe":
            return False
        await ws.send_str(eio_packet.Packet(eio_packet.PONG, data="probe").encode())
        await socket.queue.put(eio_packet.Packet(eio_packet.NOOP))  # ends the pending poll
        upgrade = await _next_packet(ws)
        if upgrade is None or upgrade.packet_type != eio_packet.UPGRADE:
            return False
        polling_queue, socket.queue = socket.queue, direct
        socket.upgraded = True
        direct.adopt(polling_queue)
        return True


class _PacketReader:
    """Reads a detached Engine.IO websocket: inline while nothing waits, with a task otherwise.

    Packets the inline receiver declines (and, with compression, all of them) are handled in
    order by a task that ends once nothing is queued; at the websocket's end the session is
    closed as python-engineio's own reader closes it.
    """

    __slots__ = ("_inline", "_on_message", "_server", "_socket", "_transport", "_ws", "task")

    def __init__(
        self,
        server: Any,
        socket: Any,
        ws: GuardedWebSocketResponse,
        transport: asyncio.Transport,
        inline: Receiver | None,
    ) -> None:
        self._server = server
        self._socket = socket
        self._ws = ws
        self._transport = transport
        self._inline = inline
        self._on_message = server.handlers.get("message")
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if not self._offer():
            self._read_later()

    def _offer(self) -> bool:
        if self._inline is None:
            return False
        return self._ws.inline_queue.offer(self._inline, self._read_later)

    def _read_later(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self._read_queued())

    async def _read_queued(self) -> None:
        ws = self._ws
        ended = True
        try:
            while True:
                message = await ws.receive()
                kind = message.type
                if kind is WSMsgType.TEXT or kind is WSMsgType.BINARY:
                    if not await self._handle(message.data):
                        break
                elif kind is WSMsgType.PING:
                    await ws.pong(message.data)
                elif kind is not WSMsgType.PONG:
                    break  # closing or closed
                if self._offer():
                    ended = False  # read inline again until something is queued
                    return
        finally:
            self.task = None
            if ended:
                reason = self._server.reason.TRANSPORT_CLOSE
                await self._socket.close(wait=False, abort=True, reason=reason)
                await ws.close_within(_CLOSE_TIMEOUT, self._transport)

    async def _handle(self, data: str | bytes) -> bool:
        """Handle one Engine.IO packet; False once the session is closed under it."""
        socket = self._socket
        if socket.closed:
            return True  # closing: read on until the client's close frame, answer nothing
        try:
            pkt = eio_packet.Packet(encoded_packet=data)
        except Exception:
            return True  # undecodable: ignored, as python-engineio ignores unknown packets
        if not 0 <= pkt.packet_type < len(eio_packet.packet_names):
            # Ignored too; python-engineio would fail on it naming it for its log (a
            # traceback in ours for every such packet a client sends).
            return True
        try:
            if pkt.packet_type == eio_packet.MESSAGE and self._on_message is not None:
                await self._on_message(socket.sid, pkt.data)
            else:
                await socket.receive(pkt)
        except eio_exceptions.UnknownPacketError:
            pass
        except eio_exceptions.SocketIsClosedError:
            return False
        except Exception:
            # As python-engineio does: a faulty packet must not end the session.
            log.exception("engineio_receive_failed", sid=socket.sid)
        return True


async def _next_packet(ws: GuardedWebSocketResponse) -> eio_packet.Packet | None:
    """The next Engine.IO packet from ``ws`` during the upgrade, or None once it is closing or
    closed."""
    while True:
        message = await ws.receive()
        if message.type is WSMsgType.TEXT or message.type is WSMsgType.BINARY:
            try:
                return eio_packet.Packet(encoded_packet=message.data)
            except Exception:
                continue  # undecodable: ignored, as python-engineio ignores unknown packets
        if message.type is WSMsgType.PING:
            await ws.pong(message.data)
            continue
        if message.type is WSMsgType.PONG:
            continue
        return None


def release_transport(socket: Any) -> None:
    """python-engineio has closed ``socket``: end what its transport still holds open.

    A websocket is closed (python-engineio's ping-timeout close loses its CLOSE packet: its
    ``send`` re-checks the ping deadline and drops the packet, so without this a dead peer's
    websocket stayed open). A long-poll that is waiting gets a NOOP, as Node's server ends it;
    a CLOSE packet queued behind it travels in the same response; after :data:`_UNPOLLED_GRACE`,
    what no poll took is dropped (:func:`_discard_unpolled`).
    """
    queue = socket.queue
    if isinstance(queue, DirectSendQueue):
        queue.close_soon()
    else:
        queue.put_nowait(eio_packet.Packet(eio_packet.NOOP))
        asyncio.get_running_loop().call_later(_UNPOLLED_GRACE, _discard_unpolled, queue)


def _discard_unpolled(queue: asyncio.Queue[Any]) -> None:
    """Drop what an ended long-polling session still has queued: no poll will take it.

    python-engineio's ``disconnect()`` queues a CLOSE packet and waits until every queued packet
    has been polled. The session has left the table by then (see ``on_engineio_disconnect``), so
    only a poll already waiting can take them, which it does within a few event-loop turns. For a
    client that was gone (an abandoned handshake, a lost phone) the wait never ended: the task
    and the session it holds stayed until a full collection destroyed them, logging
    "Task was destroyed but it is pending!" for each.
    """
    while not queue.empty():
        queue.get_nowait()
        queue.task_done()


async def upgrade_settled(socket: Any, timeout: float) -> None:
    """Wait until the upgrade in progress on ``socket`` (if any) has succeeded or failed, for at
    most ``timeout`` seconds."""
    settled = _UPGRADES.get(socket)
    if settled is None:
        return
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout):
            await settled.wait()


async def close_duplicate_websocket(request: web.Request, *, upgraded: bool) -> web.StreamResponse:
    """Complete the handshake of a second websocket for one Engine.IO session and close it at
    once with 1008 and the reason, as Node's engine.io server closes it; the session is left
    alone."""
    ws = GuardedWebSocketResponse(max_message_size=_DUPLICATE_MAX_MESSAGE)
    transport = request.transport
    if transport is None:  # the client is already gone
        return ws
    await ws.prepare(request)
    reason = "Session already upgraded" if upgraded else "Upgrade already in progress"
    await ws.close_within(_CLOSE_TIMEOUT, transport, WSCloseCode.POLICY_VIOLATION, reason)
    return ws


def websocket_driver(
    *,
    compress: bool,
    max_outbound: int,
    inline: Callable[[Any, DirectSendQueue], Receiver] | None = None,
) -> type[EngineIOWebSocket]:
    """The driver class for one server, carrying its settings."""
    return type(
        "EngineIOWebSocket",
        (EngineIOWebSocket,),
        {"compress": compress, "max_outbound": max_outbound, "inline": inline},
    )
