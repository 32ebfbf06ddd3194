"""Socket.IO EVENT packets on an upgraded websocket, answered where they were parsed.

python-socketio answers an event through a stack of coroutines (Engine.IO's message handler, the
packet decode, ``_handle_event``, ``_trigger_event``, the handler, then the acknowledgement through
``_send_packet`` and Engine.IO's ``send``), every one of them awaited, after a task wake-up for the
websocket message itself. Profiled under a closed-loop echo, that machinery cost more than
everything the gateway does for the event. Nearly all traffic on an established connection is one
packet shape, an Engine.IO MESSAGE carrying a Socket.IO EVENT::

    42[/namespace,][ack id]["event", data, ...]

:class:`InlineEvents` reads that shape in the callback that parsed the websocket message (an
:class:`~yektaws.wsinline.InlineQueue` receiver), asks :meth:`Dispatcher.dispatch_now
<yektaws.dispatcher.Dispatcher.dispatch_now>` for the answer, and writes the reply event and the
acknowledgement (``43[/namespace,]<id>[data]``) to the socket's
:class:`~yektaws.transports.engineio_ws.DirectSendQueue`, which sends both in one write, at once.

Whatever it does not recognise, it declines, and python-socketio handles that packet as it always
did: other packet types (BINARY_EVENT, DISCONNECT, a second CONNECT), a namespace the socket has
not joined (or is still joining), names python-socketio reserves, undecodable JSON, a socket
Engine.IO is closing, and events whose handler must wait or that the rate limit refuses. Only
websockets without compression take this path; long-polling never does.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import WSMsgType
from aiohttp.http_websocket import WSMessage

from yektaws.dispatcher import LATER, Dispatcher, ErrorCode
from yektaws.transports.engineio_ws import DirectSendQueue
from yektaws.wsinline import Receiver

if TYPE_CHECKING:
    from yektaws.transports.socketio import SocketIOConnection

__all__ = ["InlineEvents", "encode_ack", "encode_event", "parse_event"]

# "4" (Engine.IO MESSAGE) "2" (Socket.IO EVENT), an optional namespace up to its comma, an optional
# acknowledgement id. A namespace carrying a query ("/api?x=1,") is left to python-socketio, which
# strips the query; so is an id in digits other than ASCII's.
_EVENT_HEAD = re.compile(r"42(?:(/[^,?]*),)?([0-9]*)")

#: Event names with a meaning of their own to python-socketio or Socket.IO clients: never ours.
RESERVED_EVENTS = frozenset(
    {"connect", "connect_error", "disconnect", "disconnecting", "newListener", "removeListener"}
)


def parse_event(text: str) -> tuple[str, int | None, str, Any] | None:
    """``(namespace, ack id, event, data)`` of an EVENT message in the common shape, or ``None``.

    ``data`` is the event's first argument (``None`` without one), as the dispatcher takes it.
    """
    head = _EVENT_HEAD.match(text)
    if head is None:
        return None
    try:
        arguments = orjson.loads(text[head.end() :])
    except orjson.JSONDecodeError:
        return None
    if not isinstance(arguments, list) or not arguments or not isinstance(arguments[0], str):
        return None
    namespace, digits = head.group(1, 2)
    return (
        namespace or "/",
        int(digits) if digits else None,
        arguments[0],
        arguments[1] if len(arguments) > 1 else None,
    )


def _prefix(kind: bytes, namespace: str) -> bytes:
    return kind if namespace == "/" else kind + namespace.encode() + b","


def encode_event(namespace: str, arguments: list[Any]) -> bytes:
    """The Engine.IO message text of a Socket.IO EVENT (no attachments)."""
    return _prefix(b"42", namespace) + orjson.dumps(arguments)


def encode_ack(namespace: str, ack_id: int, arguments: list[Any]) -> bytes:
    """The Engine.IO message text of a Socket.IO ACK for ``ack_id``."""
    return _prefix(b"43", namespace) + str(ack_id).encode() + orjson.dumps(arguments)


class InlineEvents:
    """Makes the receiver of each upgraded socket; see the module docstring."""

    def __init__(
        self,
        dispatcher: Dispatcher,
        connection: Callable[[str, str], SocketIOConnection | None],
    ) -> None:
        self._dispatcher = dispatcher
        #: ``(eio_sid, namespace)`` -> the connection python-socketio counts as connected there.
        self._connection = connection

    def receiver(self, socket: Any, queue: DirectSendQueue) -> Receiver:
        """The receiver for Engine.IO ``socket``, whose packets go out through ``queue``."""
        return partial(self._take, socket, queue)

    def _take(self, socket: Any, queue: DirectSendQueue, message: WSMessage) -> bool:
        if message.type is not WSMsgType.TEXT or socket.closed:
            return False
        parsed = parse_event(message.data)
        if parsed is None:
            return False
        namespace, ack_id, event, data = parsed
        conn = self._connection(socket.sid, namespace)
        if conn is None or conn.closed or event in RESERVED_EVENTS:
            return False
        answer = self._dispatcher.dispatch_now(conn, event, data)
        if answer is LATER:
            return False
        packets: list[bytes] = []
        if answer is None:
            acknowledged: list[Any] = []
        elif answer.error_code is ErrorCode.UNKNOWN_EVENT:
            return True  # Socket.IO ignores an event nobody handles: no reply, no ack
        else:
            event_packet = conn.event_now(queue, answer.event, answer.data)
            if event_packet is not None:
                packets.append(event_packet)
            acknowledged = [answer.data]
        if ack_id is not None:
            packets.append(encode_ack(namespace, ack_id, acknowledged))
        queue.send_now(packets)
        return True
