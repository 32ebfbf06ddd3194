"""The everyday events: ``connected``, ``ping``, ``status``, ``echo``, ``info``, ``message``.

Payloads are CONTRACT section 4's, identical on both protocols apart from ``protocol``. Handlers
see only the protocol-neutral :class:`~yektaws.connection.Connection`. None of the event handlers
waits for anything, so they are plain functions: the transports run them where the frame was
parsed (see :mod:`yektaws.dispatcher`).
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

from yektaws import __version__
from yektaws.connection import Connection
from yektaws.dispatcher import Dispatcher, Reply

__all__ = ["SERVER_NAME", "register", "timestamp"]

SERVER_NAME = "YektaYar WebSocket Server"
DESCRIPTION = "Real-time gateway of YektaYar: Socket.IO and native WebSocket on one port"


class _Clock:
    """Formats now as ISO 8601 UTC with milliseconds, once per millisecond.

    Under load many replies share a millisecond; formatting a datetime costs more than the rest
    of an echo's handler, so the text of the current millisecond is kept.
    """

    __slots__ = ("_millisecond", "_text")

    def __init__(self) -> None:
        self._millisecond = -1
        self._text = ""

    def __call__(self) -> str:
        millisecond = time.time_ns() // 1_000_000
        if millisecond != self._millisecond:
            moment = datetime.fromtimestamp(millisecond / 1000, UTC)
            self._text = moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")
            self._millisecond = millisecond
        return self._text


#: Now, as ISO 8601 UTC with milliseconds and ``Z`` (``2026-11-26T12:44:36.769Z``).
timestamp = _Clock()


async def connected(conn: Connection) -> Reply:
    data: dict[str, Any] = {
        "message": "Connected to YektaYar server",
        "socketId": conn.id,
        "isLoggedIn": conn.is_logged_in,
        "protocol": conn.protocol,
    }
    link = conn.recovery
    if link is not None:
        # A client that asked for recovery learns how to resume (where its transport has no
        # place of its own for that) and whether this connection resumed an earlier one.
        if link.handle_in_greeting:
            data["recovered"] = link.recovered
            data["recovery"] = {"pid": link.pid, "offset": link.position}
        elif link.recovered:
            data["recovered"] = True
    return Reply("connected", data)


def ping(conn: Connection, data: Any) -> Reply:
    return Reply("pong", {"timestamp": timestamp()})


def status(conn: Connection, data: Any) -> Reply:
    return Reply(
        "status_response",
        {
            "server": {
                "name": SERVER_NAME,
                "version": __version__,
                "status": "running",
                "timestamp": timestamp(),
            },
            "connection": {
                "socketId": conn.id,
                "userId": conn.user_id,
                "isLoggedIn": conn.is_logged_in,
                "protocol": conn.protocol,
                "sessionToken": conn.masked_token,
                "rooms": sorted(conn.rooms),
            },
        },
    )


def echo(conn: Connection, data: Any) -> Reply:
    return Reply("echo_response", {"received": data, "timestamp": timestamp(), "socketId": conn.id})


def make_info(features: dict[str, bool]) -> Any:
    """The ``info`` handler, closed over the features this server was started with."""

    def info(conn: Connection, data: Any) -> Reply:
        return Reply(
            "info_response",
            {
                "server": {
                    "name": SERVER_NAME,
                    "version": __version__,
                    "description": DESCRIPTION,
                    "features": features,
                },
                "websocket": {
                    "connected": True,
                    "protocol": conn.protocol,
                    "transport": conn.transport,
                },
                "session": {
                    "authenticated": conn.is_logged_in,
                    "userId": conn.user_id if conn.user_id is not None else "anonymous",
                    "sessionToken": conn.masked_token,
                },
                "timestamp": timestamp(),
            },
        )

    return info


def message(conn: Connection, data: Any) -> Reply:
    return Reply(
        "message_received",
        {
            "success": True,
            "message": "Message received successfully",
            "data": data,
            "timestamp": timestamp(),
        },
    )


def register(dispatcher: Dispatcher, *, features: dict[str, bool]) -> None:
    """Register this module's events on ``dispatcher``."""
    dispatcher.on_connect(connected)
    dispatcher.on("ping")(ping)
    dispatcher.on("status")(status)
    dispatcher.on("echo")(echo)
    dispatcher.on("info")(make_info(features))
    dispatcher.on("message")(message)
