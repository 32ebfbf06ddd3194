"""Protocol rules aiohttp does not enforce, enforced in front of it.

- :class:`FrameGuard`: RFC 6455 section 5.1 says a server MUST close the connection when a client
  frame is not masked, and section 7.4.1 forbids the status codes 1005, 1006 and 1015 in a close
  frame; aiohttp's reader accepts unmasked frames and close code 1006. The guard reads the frame
  headers of the incoming byte stream (and the two status bytes of a close frame, never other
  payloads) and fails the connection with 1002 at the first violation, before the reader sees it.
- :meth:`GuardedWebSocketResponse.close_within`: a server-initiated close that a reading client
  receives. aiohttp's own ``close()`` from another task than the read loop's drops the TCP
  connection right after writing the frame, and its caller's deadline ran before the frame was
  even out; a client still sending then met a reset that cost it the frame (1006 instead of the
  code the server chose). The close waits for the frame to leave (``frame_sent``: the transport
  buffer and the kernel's send queue), then for the client's answer, as RFC 6455 7.1.1 has it.
  A connection whose input failed (an oversize message, a broken frame) is closed the same way:
  its guard reads on and discards, watching for the client's close frame.
- :func:`header_deadline_factory`: aiohttp has no timeout for receiving a request's headers, so a
  client sending them a byte at a time (slowloris) holds a connection forever. Each new connection
  gets ``HANDSHAKE_TIMEOUT`` seconds to complete its first request's headers.

They reach into aiohttp internals (``RequestHandler._payload_parser``, ``_request_count``, the
response's ``_writer``, ``_closed``, ``_set_closed``), listed in :mod:`yektaws.compat`:
``tests/test_compat.py`` names any that an aiohttp upgrade removes, and ``tests/test_attacks.py``,
``tests/test_conformance.py`` and ``tests/test_chaos.py`` fail loudly if one changes meaning.
"""

from __future__ import annotations

import asyncio
import fcntl
import sys
import termios
from collections.abc import Callable
from typing import Any, cast

from aiohttp import WSCloseCode, WSMsgType, web
from aiohttp.helpers import DEFAULT_CHUNK_SIZE
from aiohttp.http_websocket import WebSocketError, WebSocketReader

from yektaws.deadlines import OrderedDeadlines
from yektaws.wsdetach import DetachedProtocol, detach
from yektaws.wsinline import InlineQueue

__all__ = [
    "CLOSE_ANSWER_TIMEOUT",
    "FrameGuard",
    "GuardedWebSocketResponse",
    "frame_sent",
    "header_deadline_factory",
]

_MASK_BIT = 0x80
_LENGTH_MASK = 0x7F
_OPCODE_MASK = 0x0F
_OPCODE_CLOSE = 0x8
# RFC 6455 7.4.1: codes an endpoint MUST NOT send. aiohttp refuses 1005 and 1015 but accepts 1006
# (a member of its WSCloseCode); aio-libs/aiohttp#13536 fixes that upstream, not yet released in
# 3.14.5. Autobahn case 7.9.5 checks it.
_RESERVED_CLOSE_CODES = frozenset({1005, 1006, 1015})

# What ends a closing handshake on the reading side.
_ENDING_MESSAGES = frozenset(
    {WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED, WSMsgType.ERROR}
)
#: How long a client whose close frame has reached its machine has to answer it, as long as the
#: websockets library and aiohttp's own close() wait (a client slowed down by its CPU reads its
#: backlog first, and its library reports 1006 if the connection is gone when it answers).
CLOSE_ANSWER_TIMEOUT = 10.0
# How often a close in progress looks whether its frame has left: no event says when the peer's
# TCP acknowledged it, so the send queue is polled, first soon (it is usually empty at once), then
# less often for a slow reader.
_SEND_POLL_FIRST = 0.005
#: Header deadlines this close together are enforced by the same timer.
_DEADLINE_SLACK = 0.1
_SEND_POLL_LONGEST = 0.2


class FrameGuard:
    """Wraps aiohttp's ``WebSocketReader``; passes bytes through until a frame breaks a rule.

    Once the input has failed (a rule of ours, or the reader's own: size, UTF-8, opcodes) the
    reader takes nothing more, but the bytes are still read, so that what the client sends after
    the failure never meets a closed socket, and their frame headers still walked: the client's
    close frame, or its EOF, is the answer the failing side's close waits for
    (:meth:`watch_for_close`).
    """

    __slots__ = (
        "_header",
        "_on_peer_close",
        "_on_violation",
        "_parser",
        "_peer_closed",
        "_skip",
        "violated",
    )

    def __init__(self, parser: WebSocketReader, on_violation: Callable[[str], None]) -> None:
        self._parser = parser
        self._on_violation = on_violation
        self._header = bytearray()  # the start of a frame not yet complete enough to judge
        self._skip = 0  # payload bytes of the current frame still to pass by
        self.violated = False  # a frame broke the guard's rules: the reader is fed no more
        # A close frame's header has passed, or the stream ended.
        self._peer_closed = False
        self._on_peer_close: Callable[[], None] | None = None

    def feed_data(self, data: bytes) -> tuple[bool, bytes]:
        violation = self._violation(data)
        if self._on_peer_close is not None:  # a failed input's close is waiting for the answer
            self._notice_peer_close()
        if self.violated:
            return True, b""
        if violation is not None:
            self.violated = True
            self._on_violation(violation)
            return True, b""
        # After its own failure the reader parses nothing more (aiohttp's: it answers at once).
        return self._parser.feed_data(data)

    def feed_eof(self) -> None:
        self._parser.feed_eof()
        self._peer_closed = True
        self._notice_peer_close()

    def watch_for_close(self, on_peer_close: Callable[[], None]) -> None:
        """Call ``on_peer_close`` once the client's close frame, or its EOF, has come (at once if
        it already has). For a failed input, whose close frame the reader no longer parses."""
        self._on_peer_close = on_peer_close
        self._notice_peer_close()

    def _notice_peer_close(self) -> None:
        if self._peer_closed and self._on_peer_close is not None:
            callback, self._on_peer_close = self._on_peer_close, None
            callback()

    def _violation(self, data: bytes) -> str | None:
        """Advance through ``data``'s frames; what is wrong with the first bad one, if any.

        Headers are read in place (this runs for every read of every connection); only the
        start of a frame split across two reads is kept, a few bytes at most: a header, and
        for a close frame its two status bytes. A bad frame is walked past like any other, so
        that the frames after it still line up (the client's close frame among them).
        """
        if self._header:
            data = bytes(self._header) + data
            self._header.clear()
        position, size = self._skip, len(data)
        violation = None
        while position + 2 <= size:
            first, second = data[position], data[position + 1]
            length = second & _LENGTH_MASK
            extra = 2 if length == 126 else 8 if length == 127 else 0
            masked = second & _MASK_BIT
            payload_at = position + 2 + extra + (4 if masked else 0)  # length, masking key
            if not masked and violation is None:
                violation = "Received an unmasked frame"
            if first & _OPCODE_MASK == _OPCODE_CLOSE:
                self._peer_closed = True
                if masked and length >= 2:  # its status code
                    if payload_at + 2 > size:
                        break
                    key = data[payload_at - 4 : payload_at]
                    status = (data[payload_at] ^ key[0]) << 8 | (data[payload_at + 1] ^ key[1])
                    if status in _RESERVED_CLOSE_CODES and violation is None:
                        violation = f"Invalid close code: {status}"
            if payload_at > size:
                break
            if extra:
                length = int.from_bytes(data[position + 2 : position + 2 + extra], "big")
            position = payload_at + length
        if position >= size:
            self._skip = position - size
        else:
            self._skip = 0
            self._header += data[position:]
        return violation


class GuardedWebSocketResponse(web.WebSocketResponse):
    """A ``WebSocketResponse`` whose incoming frames pass a :class:`FrameGuard` first, and whose
    server-initiated close is a complete closing handshake (:meth:`close_within`).

    ``max_message_size`` is the largest message accepted, inclusive: aiohttp's reader refuses an
    uncompressed message of exactly ``max_msg_size`` bytes (its test is ``>=``), so it is given
    one byte more.
    """

    def __init__(self, *, max_message_size: int, detachable: bool = False, **kwargs: Any) -> None:
        super().__init__(max_msg_size=max_message_size + 1, **kwargs)
        #: Built by prepare() when the socket is to leave aiohttp's handler (:meth:`detach`).
        self._detached: DetachedProtocol | None = None
        self._detachable = detachable
        #: Our close frame has been written: nothing but the peer's answer is awaited.
        self._close_sent = False
        self._peer_closed: asyncio.Future[None] | None = None
        self._handshake_done: asyncio.Future[None] | None = None
        self._handler_task: asyncio.Task[Any] | None = None
        self._guard: FrameGuard | None = None  # by prepare()

    async def close_within(
        self, timeout: float, transport: asyncio.Transport, code: int = 1000, text: str = ""
    ) -> None:
        """Close with ``code`` and ``text`` so that a client that reads receives them.

        aiohttp's ``close()``, called while a read loop waits in ``receive()``, closes the TCP
        connection as soon as the frame is written: a client still sending (pings, events) then
        meets a reset, and a reset discards what the server had not yet sent, the close frame with
        it (the client saw 1006). Here, as RFC 6455 section 7.1.1 has it, the connection is only
        closed once the peer has answered with its own close frame (or gone):

        1. the close frame is written after everything queued before it;
        2. the frame is *out*: the transport's buffer and the kernel's send queue are empty, so it
           has reached the client's machine. ``timeout`` counts from the last byte that moved, so
           a slow client that keeps reading is waited for, one that stopped is dropped;
        3. the peer has :data:`CLOSE_ANSWER_TIMEOUT` to answer with its close frame (or EOF),
           and is read on meanwhile (what it still sends must not meet a closed socket, whose
           reset its library may act on before reading the frame); then the connection is
           closed with a FIN, never a reset: the frame already on its machine stays readable.

        Concurrent calls share one handshake; this never raises.
        """
        if self._handshake_done is not None:
            await asyncio.shield(self._handshake_done)
            return
        if self._closed or self._writer is None:
            return
        await self._close_once(timeout, transport, code, text)

    async def _close_once(
        self,
        timeout: float,
        transport: asyncio.Transport,
        code: int,
        text: str,
        *,
        input_failed: bool = False,
    ) -> None:
        loop = asyncio.get_running_loop()
        self._close_sent = True
        self._peer_closed = loop.create_future()
        self._handshake_done = loop.create_future()
        try:
            await self._close_handshake(timeout, transport, code, text, input_failed)
        except Exception:  # the connection broke under us (reset, closed): nothing left to save
            transport.abort()
        finally:
            self._handshake_done.set_result(None)

    async def _close_handshake(
        self, timeout: float, transport: asyncio.Transport, code: int, text: str, input_failed: bool
    ) -> None:
        assert self._writer is not None and self._peer_closed is not None
        if transport.is_closing():
            return
        await self._writer.close(code, text.encode())
        if not await frame_sent(transport, timeout):
            transport.abort()  # the client reads nothing: the frame cannot reach it
            return
        # From here the frame is on the client's machine; it is read on until it answers. A
        # failed input is read by its guard, which no read loop could be (the reader is done).
        reading = None
        if input_failed and self._guard is not None:
            self._guard.watch_for_close(self._answered)
        elif asyncio.current_task() is self._handler_task:  # no read loop runs but ours
            reading = asyncio.get_running_loop().create_task(self._read_until_close())
        try:
            async with asyncio.timeout(CLOSE_ANSWER_TIMEOUT):
                await asyncio.shield(self._peer_closed)
        except TimeoutError:
            pass  # a FIN all the same, not a reset: the frame stays readable for the client
        finally:
            if reading is not None:
                reading.cancel()
        transport.close()

    async def _read_until_close(self) -> None:
        assert self._peer_closed is not None
        while not self._peer_closed.done():
            message = await self.receive()
            if message.type in _ENDING_MESSAGES:
                return

    def _answered(self) -> None:
        if self._peer_closed is not None and not self._peer_closed.done():
            self._peer_closed.set_result(None)

    async def _close_failed(self, failure: WebSocketError, message: bytes) -> bool:
        """Fail the connection (``receive()`` calls this when the input broke a rule) with the
        closing handshake of :meth:`close_within`. aiohttp's own close() dropped the connection
        as soon as the frame was written: a client still sending (the rest of an oversize
        message) met a reset, which can discard the close frame before its library reads it."""
        self._exception = failure  # as aiohttp's close() leaves it: the transports read its code
        self._set_closed()
        transport = self._socket_transport
        if transport is not None:
            await self._close_once(
                self._timeout, transport, failure.code, message.decode(), input_failed=True
            )
        return True

    async def close(
        self, *, code: int = WSCloseCode.OK, message: bytes = b"", drain: bool = True
    ) -> bool:
        # What the reader (or the guard) failed the input with: nothing else sets it.
        failure = self._reader.exception() if self._reader is not None else None
        if isinstance(failure, WebSocketError) and not self._close_sent:
            return await self._close_failed(failure, message)
        if not self._close_sent:
            try:
                return await super().close(code=code, message=message, drain=drain)
            finally:
                # aiohttp keeps what broke the connection (mostly "cannot write to closing
                # transport": the client left first), and its traceback, and that of the
                # exception it was raised in, hold the frames of close() and receive() and so
                # this response: a cycle per lost connection, freed only by a full collection.
                # The exceptions are kept; their tracebacks nobody reads.
                _drop_tracebacks(self.exception())
        # Our frame is out: aiohttp calls this when the peer's close frame (or its EOF, or a
        # broken frame) arrives, which completes the handshake; no second close frame is sent.
        self._answered()
        if self._closed:
            return False
        self._set_closed()
        return True

    async def ping(self, message: bytes = b"") -> None:
        if not self._close_sent:  # RFC 6455 5.5.1: nothing is sent after a close frame
            await super().ping(message)

    async def pong(self, message: bytes = b"") -> None:
        if not self._close_sent:
            await super().pong(message)

    def detach(self, request: web.BaseRequest) -> None:
        """Let the handler return while the socket lives on (:mod:`yektaws.wsdetach`).

        Only for a response built ``detachable=True`` and prepared; from here on its close, its
        reading and its end are the caller's, not aiohttp's.
        """
        assert self._detached is not None, "detachable=True, and prepare() first"
        detach(self, request, self._detached)
        self._handler_task = None  # the handler returns: it is not the socket's reader

    @property
    def _socket_transport(self) -> asyncio.Transport | None:
        """The connection's transport: the request's, or once detached the detached protocol's
        (a detached socket has no request any more). None once it is gone."""
        if self._detached is not None:
            return self._detached.transport
        return self._req.transport if self._req is not None else None

    def _close_transport(self) -> None:
        # aiohttp closes the transport through the request, which a detached socket has no more.
        transport = self._socket_transport
        if transport is not None:
            transport.close()

    @property
    def inline_queue(self) -> InlineQueue:
        """The message queue (after ``prepare()``), where a transport installs its receiver."""
        assert isinstance(self._reader, InlineQueue), "prepare() first"
        return self._reader

    def _post_start(self, request: web.BaseRequest, protocol: str | None, writer: Any) -> None:
        # aiohttp's own (3.14), with two differences: the queue is an InlineQueue, and the
        # FrameGuard is in front of the reader before set_parser() feeds it the bytes that came
        # with the handshake (wrapping the reader afterwards let those pass unguarded).
        self._ws_protocol = protocol
        self._writer = writer
        self._reset_heartbeat()
        self._handler_task = asyncio.current_task()
        assert self._loop is not None
        # A socket to be detached has its own protocol from the start: the queue pauses and
        # resumes reading through it, before and after detach().
        flow_control: Any = request._protocol
        if self._detachable and request.transport is not None:
            flow_control = self._detached = DetachedProtocol(self._loop, request.transport)
        queue = self._reader = InlineQueue(flow_control, DEFAULT_CHUNK_SIZE, loop=self._loop)
        self._parser = WebSocketReader(
            queue, self._max_msg_size, compress=bool(self._compress), decode_text=self._decode_text
        )

        def fail(violation: str) -> None:
            queue.set_exception(WebSocketError(WSCloseCode.PROTOCOL_ERROR, violation))

        on_data = None if self._heartbeat is None else self._on_data_received
        self._guard = FrameGuard(self._parser, fail)
        # The protocols call only feed_data() and feed_eof(), which a FrameGuard has.
        guarded = cast(WebSocketReader, self._guard)
        if self._detached is not None:
            self._detached.attach_reader(guarded)
        request.protocol.set_parser(guarded, data_received_cb=on_data)
        request.protocol.keep_alive(False)  # as aiohttp's own: no HTTP keep-alive timer


async def frame_sent(transport: asyncio.Transport, stall_timeout: float) -> bool:
    """Wait until everything written to ``transport`` has left this machine: its buffer is empty
    and the kernel's send queue too (where it can be read: Linux ``SIOCOUTQ``). False once
    ``stall_timeout`` passes without a byte moving, or if the connection is lost."""
    loop = asyncio.get_running_loop()
    outq = _kernel_send_queue(transport)
    stalled_at = loop.time() + stall_timeout
    interval = _SEND_POLL_FIRST
    last = None
    while not transport.is_closing():
        pending = transport.get_write_buffer_size() + outq()
        if pending == 0:
            return True
        now = loop.time()
        if last is None or pending < last:
            last, stalled_at = pending, now + stall_timeout
        elif now >= stalled_at:
            return False
        await asyncio.sleep(interval)
        interval = min(interval * 2, _SEND_POLL_LONGEST)
    return False


def _kernel_send_queue(transport: asyncio.Transport) -> Callable[[], int]:
    """A function giving the bytes the kernel has not yet had acknowledged on this connection."""
    sock = transport.get_extra_info("socket")
    if sock is None or not hasattr(termios, "TIOCOUTQ"):
        return lambda: 0
    fd = sock.fileno()
    buffer = bytearray(4)

    def outq() -> int:
        try:
            fcntl.ioctl(fd, termios.TIOCOUTQ, buffer)
        except OSError:
            return 0  # closed meanwhile: is_closing() says so next
        return int.from_bytes(buffer, sys.byteorder)

    return outq


def _drop_tracebacks(exc: BaseException | None) -> None:
    """Clear the tracebacks of ``exc`` and of the exceptions it was raised from or in."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        exc.__traceback__ = None
        exc = exc.__cause__ or exc.__context__


class _HeaderWait:
    """One connection's header deadline, holding its protocol until the first request is in."""

    __slots__ = ("protocol",)

    def __init__(self, protocol: Any) -> None:
        self.protocol: Any = protocol


def header_deadline_factory(server: web.Server, timeout: float) -> Callable[[], asyncio.Protocol]:
    """Wrap aiohttp's protocol factory so that a connection must send full headers in time.

    One timer for all connections (:class:`~yektaws.deadlines.OrderedDeadlines`): a timer per
    connection lived ``HANDSHAKE_TIMEOUT`` seconds with every new one, idle WebSockets included.
    A deadline lets go of its connection's protocol (aiohttp's ``RequestHandler``) as soon as the
    first request's headers are parsed (``server.request_factory`` is told), not when it falls
    due: it held every handler ``HANDSHAKE_TIMEOUT`` seconds after its upgrade, ended or not,
    which after a storm of 8,000 native handshakes was 17 MB of the server's RSS (85 MB with, 68
    without).
    """
    waiting: dict[int, _HeaderWait] = {}  # by id() of the protocol, which a wait keeps alive

    def due(wait: _HeaderWait) -> None:
        protocol, wait.protocol = wait.protocol, None
        if protocol is None:
            return  # its request came in time
        del waiting[id(protocol)]
        transport = protocol.transport
        if transport is not None and protocol._request_count == 0 and not transport.is_closing():
            transport.close()

    deadlines: OrderedDeadlines[_HeaderWait] = OrderedDeadlines(timeout, due, slack=_DEADLINE_SLACK)
    make_request = server.request_factory

    def request_factory(
        message: Any, payload: Any, protocol: Any, writer: Any, task: Any
    ) -> web.BaseRequest:
        wait = waiting.pop(id(protocol), None)
        if wait is not None:
            wait.protocol = None
        return make_request(message, payload, protocol, writer, task)

    # Read by each RequestHandler when it is made: set before the first connection.
    server.request_factory = request_factory

    def factory() -> asyncio.Protocol:
        protocol = server()
        wait = _HeaderWait(protocol)
        waiting[id(protocol)] = wait
        deadlines.add(wait)
        return protocol

    return factory
