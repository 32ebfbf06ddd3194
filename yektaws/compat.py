"""The private and undocumented parts of our dependencies that yektaws relies on, in one list.

Public APIs are pinned down by the test suite's behaviour; the names below are not part of any
library's contract, and a release may rename or remove one without notice. The hot paths and
guards use them directly (an indirection would cost on every frame), and :data:`INTERNALS`
records each: the class or module that holds it, where yektaws uses it and why, and, for a
callable yektaws overrides or calls positionally, the parameters it relies on.

``tests/test_compat.py`` checks every entry against the installed versions, so an upgrade that
removes or reshapes one (``scripts/test --latest`` runs against the newest allowed releases)
fails with a message naming the entry, before a deploy meets it. A new use of a private name
belongs here in the same change.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

__all__ = ["INTERNALS", "Internal", "resolve"]


@dataclass(frozen=True, slots=True)
class Internal:
    """One private or undocumented attribute yektaws touches."""

    #: ``module:QualifiedName`` of the class (or module) that holds it.
    owner: str
    #: The attribute's name.
    name: str
    #: The yektaws modules that use it (paths from the repository root).
    used_in: tuple[str, ...]
    #: Why yektaws needs it, and what breaks without it.
    why: str
    #: Set in ``__init__``: only an instance has it, not the class.
    instance: bool = False
    #: For a callable: its first parameters (after ``self``), in order, as yektaws relies on them.
    parameters: tuple[str, ...] | None = None
    #: For a mapping: keys yektaws reads or replaces.
    keys: tuple[str, ...] = ()

    @property
    def label(self) -> str:
        return f"{self.owner}.{self.name}"


def resolve(owner: str) -> Any:
    """The object ``module:QualifiedName`` names."""
    module_name, _, qualified = owner.partition(":")
    found: Any = importlib.import_module(module_name)
    for part in filter(None, qualified.split(".")):
        found = getattr(found, part)
    return found


_GUARDS = ("yektaws/guards.py",)
_INLINE = ("yektaws/wsinline.py",)
_DETACH = ("yektaws/wsdetach.py",)
_SOCKETIO_INLINE = ("yektaws/transports/socketio.py",)
_ENGINEIO_WS = ("yektaws/transports/engineio_ws.py",)
_SOCKETIO = ("yektaws/transports/socketio.py",)
_PINGS = ("yektaws/transports/engineio_pings.py",)

INTERNALS: tuple[Internal, ...] = (
    # -- aiohttp --------------------------------------------------------------------------------
    Internal(
        "aiohttp.web_ws:WebSocketResponse",
        "_post_start",
        _GUARDS,
        "GuardedWebSocketResponse replaces it (aiohttp's own body, with an InlineQueue for the "
        "message queue and the FrameGuard in front of the reader before the bytes that came "
        "with the handshake are fed to it).",
        parameters=("request", "protocol", "writer"),
    ),
    *(
        Internal(
            "aiohttp.web_ws:WebSocketResponse",
            name,
            _GUARDS,
            "Set by _post_start, which GuardedWebSocketResponse replaces: the replacement sets "
            "it as aiohttp's own does.",
        )
        for name in ("_ws_protocol", "_writer", "_parser", "_reset_heartbeat", "_loop")
    ),
    *(
        Internal(
            "aiohttp.web_ws:WebSocketResponse",
            name,
            _GUARDS,
            "Read by the replaced _post_start, to build the reader as aiohttp's own does.",
            instance=True,
        )
        for name in ("_max_msg_size", "_compress", "_decode_text", "_heartbeat")
    ),
    Internal(
        "aiohttp.web_ws:WebSocketResponse",
        "_on_data_received",
        _GUARDS,
        "The protocol's data_received callback aiohttp's _post_start passes when a heartbeat "
        "is set; the replacement passes it the same way.",
    ),
    Internal(
        "aiohttp.web_request:BaseRequest",
        "_protocol",
        _GUARDS,
        "The protocol the message queue pauses and resumes (flow control), as aiohttp's own "
        "_post_start gives it.",
        instance=True,
    ),
    Internal(
        "aiohttp.web_protocol:RequestHandler",
        "set_parser",
        _GUARDS,
        "How the replaced _post_start installs the (guarded) reader, and how the bytes that "
        "came with the handshake reach it.",
        parameters=("parser", "data_received_cb"),
    ),
    Internal(
        "aiohttp._websocket.reader:WebSocketDataQueue",
        "feed_data",
        _INLINE,
        "InlineQueue overrides it: where the reader hands over each parsed message, which the "
        "receiver takes or the queue keeps.",
        parameters=("data", "size"),
    ),
    Internal(
        "aiohttp._websocket.reader:WebSocketDataQueue",
        "_buffer",
        _INLINE,
        "The messages waiting for receive(): while any wait, a new one is queued behind them "
        "instead of offered to the receiver, so a connection's messages stay in order.",
    ),
    Internal(
        "aiohttp.web_ws:WebSocketResponse",
        "_reader",
        _GUARDS,
        "The message queue a FrameGuard violation fails (set_exception), which makes aiohttp "
        "close the connection with 1002.",
    ),
    Internal(
        "aiohttp._websocket.reader:WebSocketDataQueue",
        "set_exception",
        _GUARDS,
        "How a FrameGuard violation reaches receive(): an error message, then the close.",
        parameters=("exc",),
    ),
    Internal(
        "aiohttp.web_protocol:RequestHandler",
        "_payload_parser",
        _GUARDS,
        "The object the protocol feeds every byte read from the socket (the WebSocketReader "
        "after an upgrade); the guard replaces it with a FrameGuard that wraps it, to refuse "
        "unmasked frames and reserved close codes (RFC 6455 5.1, 7.4.1).",
    ),
    Internal(
        "aiohttp.http_websocket:WebSocketReader",
        "feed_data",
        _GUARDS,
        "What the protocol calls on _payload_parser for each read; FrameGuard passes the bytes "
        "on and returns its (done, tail) answer.",
        parameters=("data",),
    ),
    Internal(
        "aiohttp.http_websocket:WebSocketReader",
        "feed_eof",
        _GUARDS,
        "The other call the protocol makes on _payload_parser; FrameGuard forwards it.",
    ),
    Internal(
        "aiohttp.web_protocol:RequestHandler",
        "_request_count",
        _GUARDS,
        "header_deadline_factory closes a connection still at 0 requests after "
        "HANDSHAKE_TIMEOUT: aiohttp has no deadline for request headers (slowloris).",
    ),
    Internal(
        "aiohttp.web_server:Server",
        "request_factory",
        _GUARDS,
        "A constructor parameter, not a documented attribute: each RequestHandler reads it "
        "when it is made. header_deadline_factory wraps it to know when a connection's first "
        "request is in and let its deadline drop the handler.",
        instance=True,
        parameters=("message", "payload", "protocol", "writer", "task"),
    ),
    Internal(
        "aiohttp.web_ws:WebSocketResponse",
        "_close_transport",
        _GUARDS,
        "How aiohttp closes the socket after a close or an error, through the request; "
        "GuardedWebSocketResponse overrides it for a detached socket, which has no request.",
    ),
    *(
        Internal(
            "aiohttp.web_ws:WebSocketResponse",
            name,
            _DETACH,
            "detach() points the response at the detached protocol: its end counts as sent "
            "(aiohttp's end of the request writes no close frame), its request is dropped (the "
            "handler, headers and URL are freed), its payload writer drains on the new protocol.",
        )
        for name in ("_eof_sent", "_req", "_payload_writer")
    ),
    Internal(
        "aiohttp._websocket.writer:WebSocketWriter",
        "protocol",
        _DETACH,
        "The protocol whose write flow control (_paused, _drain_helper) the writer waits on; "
        "detach() points it at the detached protocol, which the transport now pauses.",
        instance=True,
    ),
    Internal(
        "aiohttp.http_writer:StreamWriter",
        "_protocol",
        _DETACH,
        "The same for the response's payload writer, whose drain() the close waits on.",
        instance=True,
    ),
    *(
        Internal(
            "aiohttp.web_protocol:RequestHandler",
            name,
            _DETACH,
            "detach() retires the handler of a detached socket: no transport (its end closes "
            "none), no parsers (the HTTP parser points back at it: a cycle the garbage "
            "collector would free late), out of the server's list of connections (_manager), "
            "and its write-paused state (_paused) carried to the new protocol.",
        )
        for name in ("_parser", "_payload_parser", "_manager", "_paused")
    ),
    # -- python-engineio ------------------------------------------------------------------------
    Internal(
        "socketio.async_manager:AsyncManager",
        "sid_from_eio_sid",
        _SOCKETIO_INLINE,
        "The inline event path finds the socket of an Engine.IO session on a namespace.",
        parameters=("eio_sid", "namespace"),
    ),
    Internal(
        "socketio.async_manager:AsyncManager",
        "is_connected",
        _SOCKETIO_INLINE,
        "The inline event path answers only sockets python-socketio counts as connected (not "
        "while joining or leaving), as its own _handle_event does.",
        parameters=("sid", "namespace"),
    ),
    Internal(
        "engineio.async_server:AsyncServer",
        "_async",
        _SOCKETIO,
        "The async driver table; its 'websocket' entry is replaced by EngineIOWebSocket, the "
        "driver that runs Engine.IO websockets without a task and a timer per message.",
        instance=True,
        keys=("websocket",),
    ),
    Internal(
        "engineio.async_server:AsyncServer",
        "handlers",
        (*_SOCKETIO, *_ENGINEIO_WS),
        "python-socketio's Engine.IO callbacks: wrapped (sessions that never join a namespace, "
        "malformed packets, hanging polls), and 'message' called directly by the websocket "
        "reader.",
        instance=True,
        keys=("connect", "disconnect", "message"),
    ),
    Internal(
        "engineio.async_server:AsyncServer",
        "sockets",
        _SOCKETIO,
        "The Engine.IO sessions by sid: a client's transport, backlog and closed state; an "
        "ended session is deleted from it at once (python-engineio's sweep would keep it, and "
        "its transport and websocket, for up to pingTimeout).",
        instance=True,
    ),
    Internal(
        "engineio.async_server:AsyncServer",
        "generate_id",
        _SOCKETIO,
        "Replaced under --workers so that session ids carry the worker (w<i>.) for the proxy's "
        "polling affinity.",
    ),
    Internal(
        "engineio.async_server:AsyncServer",
        "max_http_buffer_size",
        _ENGINEIO_WS,
        "The largest message; our websocket driver gives it to GuardedWebSocketResponse.",
        instance=True,
    ),
    Internal(
        "engineio.async_server:AsyncServer",
        "reason",
        _ENGINEIO_WS,
        "reason.TRANSPORT_CLOSE: the disconnect reason our reader reports when a websocket ends.",
    ),
    Internal(
        "engineio.async_drivers.aiohttp:WebSocket",
        "__init__",
        _ENGINEIO_WS,
        "EngineIOWebSocket subclasses the aiohttp driver; python-engineio instantiates it as "
        "driver(socket._websocket_handler, server).",
        parameters=("handler", "server"),
    ),
    Internal(
        "engineio.async_drivers.aiohttp:WebSocket",
        "handler",
        _ENGINEIO_WS,
        "A bound method of the AsyncSocket being upgraded: handler.__self__ is that socket.",
        instance=True,
    ),
    Internal(
        "engineio.async_drivers.aiohttp:WebSocket",
        "_sock",
        _ENGINEIO_WS,
        "The driver's websocket, set as the stock driver sets it (python-engineio reads it).",
        instance=True,
    ),
    Internal(
        "engineio.async_socket:AsyncSocket",
        "queue",
        (*_SOCKETIO, *_ENGINEIO_WS),
        "The outgoing queue: replaced by DirectSendQueue once upgraded, weighed for "
        "MAX_OUTBOUND_BUFFER, given None to end a hanging poll.",
        instance=True,
    ),
    Internal(
        "engineio.async_socket:AsyncSocket",
        "upgrading",
        _ENGINEIO_WS,
        "Set during the upgrade handshake: python-engineio holds polling sends while it is.",
        instance=True,
    ),
    Internal(
        "engineio.async_socket:AsyncSocket",
        "upgraded",
        (*_SOCKETIO, *_ENGINEIO_WS),
        "Set when the upgrade completes; read for the connection's transport name.",
        instance=True,
    ),
    Internal(
        "engineio.async_socket:AsyncSocket",
        "connected",
        _ENGINEIO_WS,
        "False for a websocket-only session, which our driver then opens itself.",
        instance=True,
    ),
    Internal(
        "engineio.async_socket:AsyncSocket",
        "closed",
        _SOCKETIO,
        "No event is sent to a closed session.",
        instance=True,
    ),
    Internal(
        "engineio.async_socket:AsyncSocket",
        "receive",
        _ENGINEIO_WS,
        "Packets other than MESSAGE (ping replies, close) go through the socket as before.",
        parameters=("pkt",),
    ),
    Internal(
        "engineio.async_socket:AsyncSocket",
        "close",
        _ENGINEIO_WS,
        "Called when our websocket reader ends, with the keyword arguments named here.",
        parameters=("wait", "abort", "reason"),
    ),
    Internal(
        "engineio.async_socket:AsyncSocket",
        "_send_ping",
        _PINGS,
        "The task schedule_ping starts through start_background_task: EngineIOPings knows it "
        "by this function and keeps the ping in one timer for all sessions instead.",
    ),
    *(
        Internal(
            "engineio.async_socket:AsyncSocket",
            name,
            _PINGS,
            "What _send_ping reads and sets, read and set the same way by EngineIOPings: no "
            "ping to a closing or closed session, last_ping its time (the ping deadline).",
            instance=True,
        )
        for name in ("closing", "last_ping")
    ),
    # -- python-socketio ------------------------------------------------------------------------
    Internal(
        "socketio.packet:Packet",
        "__init__",
        _SOCKETIO,
        "_Packet (orjson encoding) subclasses it and passes these arguments positionally.",
        parameters=("packet_type", "data", "namespace", "id", "binary", "encoded_packet"),
    ),
    Internal(
        "socketio.async_server:AsyncServer",
        "_handle_connect",
        _SOCKETIO,
        "Overridden: the transport answers a namespace CONNECT itself (the socket id must be "
        "chosen before python-socketio names it, and the reply carries the recovery pid).",
        parameters=("eio_sid", "namespace", "data"),
    ),
    Internal(
        "socketio.async_server:AsyncServer",
        "_send_packet",
        _SOCKETIO,
        "Sends the CONNECT and CONNECT_ERROR replies of that handshake.",
        parameters=("eio_sid", "pkt"),
    ),
    Internal(
        "socketio.async_manager:AsyncManager",
        "pre_connect",
        _SOCKETIO,
        "Names and registers the socket (calling eio.generate_id first, which hands it the "
        "reserved id of a resumed socket).",
        parameters=("eio_sid", "namespace"),
    ),
    Internal(
        "socketio.async_manager:AsyncManager",
        "connect",
        _SOCKETIO,
        "Marks the socket connected once the CONNECT reply is out.",
        parameters=("sid", "namespace"),
    ),
    # -- aiosqlite ------------------------------------------------------------------------------
    Internal(
        "aiosqlite:Connection",
        "_thread",
        ("yektaws/sessions/embedded.py",),
        "The SQLite worker thread, made a daemon so that a store left open cannot keep the "
        "process from exiting (aiosqlite >= 0.22; before, the Connection was the thread).",
        instance=True,
    ),
)
