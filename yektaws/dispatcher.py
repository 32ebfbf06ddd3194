"""The :class:`Dispatcher`: one registry from event name to handler, for both protocols.

A transport turns what arrived into ``(event, data)`` and calls :meth:`Dispatcher.dispatch` with
the protocol-neutral :class:`~yektaws.connection.Connection`; what comes back is the direct
:class:`Reply` (or ``None``), which the transport delivers its own way (a frame carrying the
request's ``id`` on native WebSocket, an event plus the acknowledgement on Socket.IO).

The dispatcher also owns what every event goes through whatever its handler: the per-connection
rate limit, the order of events (a handler runs to completion before the next event of the same
connection starts, unless it was registered ``concurrent=True``), and turning a handler's failure
into an error reply instead of a closed connection.

A handler is a coroutine function, or a plain function when it never waits (``echo``, ``ping``:
most events). A transport that handles frames in the callback that parsed them (both do, on a
websocket) asks :meth:`Dispatcher.dispatch_now` first: it answers every event that needs no
waiting without a coroutine, a task or an event-loop turn, and says :data:`LATER` for the others,
which the transport then passes to :meth:`Dispatcher.dispatch` from its task, in order.
"""

from __future__ import annotations

import enum
import inspect
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final, Literal, TypeVar, cast

from yektaws.connection import CloseReason, Connection
from yektaws.logging import get_logger
from yektaws.metrics import Metrics

__all__ = ["LATER", "BadRequest", "Dispatcher", "ErrorCode", "Handler", "PlainHandler", "Reply"]

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
#: A handler that never waits: it runs in the transport's receive callback (see the module doc).
PlainHandler = Callable[[Connection, Any], Reply | None]
_AnyHandler = TypeVar("_AnyHandler", Handler, PlainHandler)
ConnectHook = Callable[[Connection], Awaitable[Reply | None]]
DisconnectHook = Callable[[Connection, bool], None]


def error_reply(code: ErrorCode, message: str) -> Reply:
    return Reply("error", {"error": message, "code": code.value}, error_code=code)


class _Later(enum.Enum):
    LATER = "later"


#: :meth:`Dispatcher.dispatch_now`'s answer for an event that cannot be answered without waiting.
LATER: Final = _Later.LATER

Answer = Reply | None | Literal[_Later.LATER]


@dataclass(frozen=True, slots=True)
class _Route:
    """One event's handler: exactly one of ``plain`` and ``coroutine`` is set."""

    plain: PlainHandler | None
    coroutine: Handler | None
    concurrent: bool

    @classmethod
    def of(cls, event: str, handler: Handler | PlainHandler, concurrent: bool) -> _Route:
        if inspect.iscoroutinefunction(handler):
            return cls(None, handler, concurrent)
        if concurrent:
            raise ValueError(f"a concurrent handler must be a coroutine function ({event!r})")
        return cls(cast(PlainHandler, handler), None, False)

    @property
    def waits(self) -> bool:
        """Run in order and may wait: only :meth:`Dispatcher.dispatch` can run it."""
        return self.plain is None and not self.concurrent


class Dispatcher:
    """Routes ``{"event", "data"}`` pairs from any transport to the handler registered for them."""

    def __init__(self, *, rate_limit_strikes: int, metrics: Metrics) -> None:
        self._routes: dict[str, _Route] = {}
        self._on_connect: list[ConnectHook] = []
        self._on_disconnect: list[DisconnectHook] = []
        self._strikes_allowed = rate_limit_strikes
        self._metrics = metrics

    # -- registration --------------------------------------------------------------------------

    def on(self, event: str, *, concurrent: bool = False) -> Callable[[_AnyHandler], _AnyHandler]:
        """Register the decorated function as the handler of ``event``.

        A coroutine function may wait (a database, the bus); a plain function must not block, and
        is run where the frame was parsed. ``concurrent=True`` is for long coroutines (AI
        streams): they run as a task of their own, so later events of the same connection are not
        held up behind them; they send their results with :meth:`Connection.emit` and return
        nothing.
        """

        def register(handler: _AnyHandler) -> _AnyHandler:
            if event in self._routes:
                raise ValueError(f"event {event!r} already has a handler")
            self._routes[event] = _Route.of(event, handler, concurrent)
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

    def dispatch_now(self, conn: Connection, event: Any, data: Any) -> Answer:
        """Handle one event from ``conn`` without waiting, if it can be: return the direct reply
        (or ``None``), or :data:`LATER` for an event that must go to :meth:`dispatch` (its handler
        is a coroutine, or the rate limit refuses it: refusals may close the connection)."""
        route = self._routes.get(event) if isinstance(event, str) else None
        if route is not None and route.waits:
            return LATER
        if not conn.rate.try_take():
            return LATER
        conn.rate_strikes = 0
        if route is None:
            self._metrics.event_in("unknown")  # never the client's string: labels stay bounded
            name = event if isinstance(event, str) and event else "undefined"
            return error_reply(ErrorCode.UNKNOWN_EVENT, f"Unknown event type: {name}")
        self._metrics.event_in(event)
        if route.plain is None:  # concurrent (dispatch_now answered LATER for the others)
            assert route.coroutine is not None
            conn.start_task(self._run_detached(route.coroutine, conn, event, data))
            return None
        started = time.perf_counter()
        try:
            reply = route.plain(conn, data)
        except Exception as exc:
            reply = self._failed(exc, conn, event)
        self._metrics.handler_time(event, time.perf_counter() - started)
        return reply

    async def dispatch(self, conn: Connection, event: Any, data: Any) -> Reply | None:
        """Handle one event from ``conn``; return the direct reply, if any."""
        answer = self.dispatch_now(conn, event, data)
        if answer is not LATER:
            return answer
        if not conn.rate.try_take():
            return await self._over_rate(conn)
        conn.rate_strikes = 0
        # dispatch_now answered every other case: this is a coroutine handler, run in order.
        handler = self._routes[event].coroutine
        assert handler is not None
        self._metrics.event_in(event)
        started = time.perf_counter()
        reply = await self._run(handler, conn, event, data)
        self._metrics.handler_time(event, time.perf_counter() - started)
        return reply

    def refuse_frame_now(self, conn: Connection) -> Answer:
        """The answer to a frame that is not an event at all (charged like an event), or
        :data:`LATER` when the rate limit refuses it (see :meth:`refuse_frame`)."""
        if not conn.rate.try_take():
            return LATER
        conn.rate_strikes = 0
        return error_reply(ErrorCode.BAD_FRAME, "Failed to process message")

    async def refuse_frame(self, conn: Connection) -> Reply | None:
        """:meth:`refuse_frame_now`, with the rate limit's refusal (which may close) applied."""
        answer = self.refuse_frame_now(conn)
        if answer is not LATER:
            return answer
        return await self._over_rate(conn)

    async def _over_rate(self, conn: Connection) -> Reply | None:
        """Refuse an event over the rate limit; close a client that keeps going (no reply)."""
        conn.rate_strikes += 1
        if conn.rate_strikes >= self._strikes_allowed:
            log.warning("rate_limit_close", socketId=conn.id, strikes=conn.rate_strikes)
            await conn.close(CloseReason.POLICY)
            return None
        return error_reply(ErrorCode.RATE_LIMITED, "Too many events, slow down")

    @classmethod
    async def _run(cls, handler: Handler, conn: Connection, event: str, data: Any) -> Reply | None:
        try:
            return await handler(conn, data)
        except Exception as exc:
            return cls._failed(exc, conn, event)

    @staticmethod
    def _failed(exc: Exception, conn: Connection, event: str) -> Reply:
        """A handler's failure as the client sees it: its own words for a bad request, nothing of
        the server's insides otherwise (those go to the log)."""
        if isinstance(exc, BadRequest):
            return error_reply(ErrorCode.BAD_REQUEST, str(exc))
        log.error("handler_failed", event=event, socketId=conn.id, exc_info=exc)
        return error_reply(ErrorCode.INTERNAL, "Internal server error")

    @classmethod
    async def _run_detached(cls, handler: Handler, conn: Connection, event: str, data: Any) -> None:
        # A concurrent handler's caller has moved on, so its reply (an error, typically) is
        # delivered as an ordinary event.
        reply = await cls._run(handler, conn, event, data)
        if reply is not None and not conn.closed:
            await conn.emit(reply.event, reply.data)
