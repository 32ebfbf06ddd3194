"""The :class:`Dispatcher`: one registry from event name to handler, for both protocols.

A transport turns what arrived into ``(event, data)`` and calls :meth:`Dispatcher.dispatch` with
the protocol-neutral :class:`~yektaws.connection.Connection`; what comes back is the direct
:class:`Reply` (or ``None``), which the transport delivers its own way (a frame carrying the
request's ``id`` on native WebSocket, an event plus the acknowledgement on Socket.IO).

The dispatcher also owns what every event goes through whatever its handler: the per-connection
rate limit, the order of events (a handler runs to completion before the next event of the same
connection starts, unless it was registered ``concurrent=True``), and turning a handler's failure
into an error reply instead of a closed connection.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from yektaws.connection import CloseReason, Connection
from yektaws.logging import get_logger
from yektaws.metrics import Metrics

__all__ = ["BadRequest", "Dispatcher", "ErrorCode", "Handler", "Reply"]

log = get_logger(__name__)


class ErrorCode(enum.StrEnum):
    """The ``code`` of an ``error`` event (CONTRACT section 3)."""

    BAD_FRAME = "bad_frame"
    UNKNOWN_EVENT = "unknown_event"
    BAD_REQUEST = "bad_request"
    RATE_LIMITED = "rate_limited"
    INTERNAL = "internal_error"


@dataclass(frozen=True, slots=True)
class Reply:
    """The direct answer to one event."""

    event: str
    data: Any
    #: Set on ``error`` replies, so a transport can apply its protocol's rule for them.
    error_code: ErrorCode | None = None


class BadRequest(Exception):
    """Raised by a handler for ``data`` it cannot accept; the message names the field."""


Handler = Callable[[Connection, Any], Awaitable[Reply | None]]
ConnectHook = Callable[[Connection], Awaitable[Reply | None]]
DisconnectHook = Callable[[Connection, bool], None]


def error_reply(code: ErrorCode, message: str) -> Reply:
    return Reply("error", {"error": message, "code": code.value}, error_code=code)


@dataclass(frozen=True, slots=True)
class _Route:
    handler: Handler
    concurrent: bool


class Dispatcher:
    """Routes ``{"event", "data"}`` pairs from any transport to the handler registered for them."""

    def __init__(self, *, rate_limit_strikes: int, metrics: Metrics) -> None:
        self._routes: dict[str, _Route] = {}
        self._on_connect: list[ConnectHook] = []
        self._on_disconnect: list[DisconnectHook] = []
        self._strikes_allowed = rate_limit_strikes
        self._metrics = metrics

    # -- registration --------------------------------------------------------------------------

    def on(self, event: str, *, concurrent: bool = False) -> Callable[[Handler], Handler]:
        """Register the decorated coroutine as the handler of ``event``.

        ``concurrent=True`` is for long handlers (AI streams): they run as a task of their own, so
        later events of the same connection are not held up behind them; they send their results
        with :meth:`Connection.emit` and return nothing.
        """

        def register(handler: Handler) -> Handler:
            if event in self._routes:
                raise ValueError(f"event {event!r} already has a handler")
            self._routes[event] = _Route(handler, concurrent)
            return handler

        return register

    def on_connect(self, hook: ConnectHook) -> ConnectHook:
        """Register a coroutine run once per new connection; its reply is sent to the client."""
        self._on_connect.append(hook)
        return hook

    def on_disconnect(self, hook: DisconnectHook) -> DisconnectHook:
        """Register a function called once per ended connection, with whether it may resume."""
        self._on_disconnect.append(hook)
        return hook

    def handles(self, event: str) -> bool:
        return event in self._routes

    @property
    def events(self) -> list[str]:
        return sorted(self._routes)

    # -- dispatching ---------------------------------------------------------------------------

    async def connected(self, conn: Connection) -> None:
        """Run the connect hooks for a connection that has just been accepted."""
        for hook in self._on_connect:
            reply = await hook(conn)
            if reply is not None:
                await conn.greet(reply.event, reply.data)

    def disconnected(self, conn: Connection, *, resumable: bool) -> None:
        """Run the disconnect hooks of a connection that has ended (before its tasks are
        cancelled); ``resumable``: its client may come back and resume it."""
        for hook in self._on_disconnect:
            hook(conn, resumable)

    async def dispatch(self, conn: Connection, event: Any, data: Any) -> Reply | None:
        """Handle one event from ``conn``; return the direct reply, if any."""
        if not conn.rate.try_take():
            return await self._over_rate(conn)
        conn.rate_strikes = 0
        route = self._routes.get(event) if isinstance(event, str) else None
        if route is None:
            self._metrics.event_in("unknown")  # never the client's string: labels stay bounded
            name = event if isinstance(event, str) and event else "undefined"
            return error_reply(ErrorCode.UNKNOWN_EVENT, f"Unknown event type: {name}")
        self._metrics.event_in(event)
        if route.concurrent:
            conn.start_task(self._run_detached(route.handler, conn, event, data))
            return None
        started = time.perf_counter()
        reply = await self._run(route.handler, conn, event, data)
        self._metrics.handler_time(event, time.perf_counter() - started)
        return reply

    async def refuse_frame(self, conn: Connection) -> Reply | None:
        """The answer to a frame that is not an event at all (charged like an event)."""
        if not conn.rate.try_take():
            return await self._over_rate(conn)
        conn.rate_strikes = 0
        return error_reply(ErrorCode.BAD_FRAME, "Failed to process message")

    async def _over_rate(self, conn: Connection) -> Reply | None:
        """Refuse an event over the rate limit; close a client that keeps going (no reply)."""
        conn.rate_strikes += 1
        if conn.rate_strikes >= self._strikes_allowed:
            log.warning("rate_limit_close", socketId=conn.id, strikes=conn.rate_strikes)
            await conn.close(CloseReason.POLICY)
            return None
        return error_reply(ErrorCode.RATE_LIMITED, "Too many events, slow down")

    @staticmethod
    async def _run(handler: Handler, conn: Connection, event: str, data: Any) -> Reply | None:
        try:
            reply = await handler(conn, data)
        except BadRequest as exc:
            return error_reply(ErrorCode.BAD_REQUEST, str(exc))
        except Exception:
            log.exception("handler_failed", event=event, socketId=conn.id)
            return error_reply(ErrorCode.INTERNAL, "Internal server error")
        return reply

    @classmethod
    async def _run_detached(cls, handler: Handler, conn: Connection, event: str, data: Any) -> None:
        # A concurrent handler's caller has moved on, so its reply (an error, typically) is
        # delivered as an ordinary event.
        reply = await cls._run(handler, conn, event, data)
        if reply is not None and not conn.closed:
            await conn.emit(reply.event, reply.data)
