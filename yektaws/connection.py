"""The protocol-neutral connection that handlers see, whatever transport carries it.

A :class:`Connection` knows who is connected (its :class:`~yektaws.sessions.Session`), how
(``protocol``, ``transport``, ``peer``), which rooms it is in, and how to send an event to it. The
native and Socket.IO transports each subclass it once; handlers use only what is defined here.
"""

from __future__ import annotations

import asyncio
import enum
import time
from abc import ABC, abstractmethod
from collections.abc import Coroutine
from typing import Any, ClassVar

from yektaws.logging import get_logger, mask_token
from yektaws.metrics import Metrics
from yektaws.ratelimit import TokenBucket
from yektaws.sessions import Session

__all__ = ["CloseReason", "Connection"]

log = get_logger(__name__)


class CloseReason(enum.Enum):
    """Why the server ends a connection: one name, a WebSocket close code, and a short reason.

    The native transport sends the code and text in its close frame; the Socket.IO transport
    disconnects (and for :attr:`SESSION_EXPIRED` first emits ``session:expired``).
    """

    GOING_AWAY = (1001, "server shutting down")
    #: No close frame is sent for this one (1006 never travels on the wire): the peer is gone.
    DEAD_PEER = (1006, "no answer to ping")
    POLICY = (1008, "rate limit exceeded")
    TOO_BIG = (1009, "message too big")
    TOO_SLOW = (1013, "client too slow to read")
    SESSION_EXPIRED = (4001, "session expired")

    @property
    def code(self) -> int:
        return self.value[0]

    @property
    def text(self) -> str:
        return self.value[1]


class Connection(ABC):
    """One authenticated client connection, on either protocol."""

    #: ``"native-websocket"`` or ``"socket.io"``: the value clients see in payloads.
    protocol: ClassVar[str]

    # Slots: one of these lives as long as each connection, thousands at a time.
    __slots__ = (
        "__weakref__",
        "_metrics",
        "_tasks",
        "closed",
        "connected_at",
        "id",
        "peer",
        "rate",
        "rate_strikes",
        "rooms",
        "session",
    )

    def __init__(
        self,
        *,
        socket_id: str,
        session: Session,
        peer: str,
        events_per_second: float,
        event_burst: int,
        metrics: Metrics,
    ) -> None:
        self.id = socket_id
        self.session = session
        self.peer = peer
        self.connected_at = time.time()
        self.rooms: set[str] = set()
        self.rate = TokenBucket(events_per_second, event_burst)
        #: Events refused for rate in a row; reset by the next accepted event.
        self.rate_strikes = 0
        self.closed = False
        self._metrics = metrics
        self._tasks: set[asyncio.Task[Any]] = set()

    # -- who ---------------------------------------------------------------------------------

    @property
    def user_id(self) -> str | None:
        return self.session.user_id

    @property
    def is_logged_in(self) -> bool:
        return self.session.is_logged_in

    @property
    def token(self) -> str:
        return self.session.token

    @property
    def masked_token(self) -> str:
        return mask_token(self.session.token)

    @property
    @abstractmethod
    def transport(self) -> str:
        """The carrier as the client negotiated it: ``websocket`` or ``polling``."""

    # -- sending -----------------------------------------------------------------------------

    async def emit(self, event: str, data: Any) -> None:
        """Send ``event`` with ``data``. Never waits on a slow client: one too slow is closed."""
        if self.closed:
            return
        self._metrics.event_out(event)
        await self._send_event(event, data)

    @abstractmethod
    async def _send_event(self, event: str, data: Any) -> None:
        """The transport's way of sending one event."""

    @abstractmethod
    async def close(self, reason: CloseReason, text: str | None = None) -> None:
        """End the connection for ``reason`` (idempotent).

        ``text`` replaces the reason's own words where the client sees them (the native close
        frame, the ``session:expired`` payload): the server API passes its caller's ``reason``.
        """

    # -- work running on behalf of the connection ---------------------------------------------

    def start_task(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        """Run ``coro`` alongside the connection; it is cancelled when the connection ends."""
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    @property
    def running_tasks(self) -> int:
        return len(self._tasks)

    def cancel_tasks(self) -> None:
        """Cancel everything started with :meth:`start_task` (called by the transport on close)."""
        for task in list(self._tasks):
            task.cancel()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.id} user={self.user_id} peer={self.peer}>"
