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
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, ClassVar

from yektaws.logging import get_logger, mask_token
from yektaws.metrics import Metrics
from yektaws.ratelimit import TokenBucket
from yektaws.sessions import Session

if TYPE_CHECKING:
    from yektaws.recovery import Link

__all__ = ["CloseReason", "Connection", "Encoder", "Encodings"]

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
    def resumable(self) -> bool:
        """Whether the client may resume afterwards: the server ended it, not the client's fault
        and not the end of its session."""
        return self in _RESUMABLE

    @property
    def text(self) -> str:
        return self.value[1]


_RESUMABLE = frozenset({CloseReason.GOING_AWAY, CloseReason.DEAD_PEER, CloseReason.TOO_SLOW})

#: How a kind of connection puts an event on the wire: ``(event, data, position)`` to what its
#: transport writes (``position``: the recovery-log offset the event shows, or None). Hashable:
#: equal encoders make the same bytes of the same event, which is what lets :class:`Encodings`
#: share them.
Encoder = Callable[[str, Any, str | None], Any]


class Encodings:
    """The wire forms of one event sent to many connections, each encoded once.

    The hub makes one per emit to a room; every member asks it for the form its own
    :attr:`Connection.encoder` makes, with or without the position it shows, and all members
    asking for the same form get the same object (the same bytes). Only the transports know what
    a form is: this class only remembers them.
    """

    __slots__ = ("_data", "_event", "_forms")

    def __init__(self, event: str, data: Any) -> None:
        self._event = event
        self._data = data
        self._forms: dict[tuple[Encoder, str | None], Any] = {}

    def form(self, encoder: Encoder, position: str | None) -> Any:
        """``encoder``'s wire form of the event showing ``position``, encoded on first use."""
        key = (encoder, position)
        found = self._forms.get(key)
        if found is None:
            found = self._forms[key] = encoder(self._event, self._data, position)
        return found


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
        "end_reason",
        "id",
        "left_on_purpose",
        "peer",
        "rate",
        "rate_strikes",
        "recovery",
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
        recovery: Link | None = None,
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
        #: Why the server ended the connection, once it did.
        self.end_reason: CloseReason | None = None
        #: The client ended it deliberately (a close frame, a Socket.IO disconnect).
        self.left_on_purpose = False
        #: The tie to a saved state, on a recoverable connection (see :mod:`yektaws.recovery`).
        self.recovery = recovery
        self._metrics = metrics
        # Made by the first start_task(): most connections never start one (a set is 216 bytes).
        self._tasks: set[asyncio.Task[Any]] | None = None

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

    async def emit(self, event: str, data: Any, encodings: Encodings | None = None) -> None:
        """Send ``event`` with ``data``. Never waits on a slow client: one too slow is closed.

        ``encodings``: the event is going to many connections (a room), which share its
        encoding (see :class:`Encodings`).
        """
        if self.closed:
            return
        self._metrics.event_out(event)
        await self._send_encoded(self._encode(event, data, None, encodings))

    async def greet(self, event: str, data: Any) -> None:
        """Send the connection's first event; where the greeting carries the recovery handle
        (native), it also carries the position the connection starts from. (A Socket.IO client
        that received no recoverable event resumes without an offset, from that same position;
        no position on its greeting keeps python-socketio handlers of one argument working.)"""
        if self.closed:
            return
        self._metrics.event_out(event)
        link = self.recovery
        shown = link.position if link is not None and link.handle_in_greeting else None
        await self._send_encoded(self.encoder(event, data, shown))

    async def deliver(
        self,
        event: str,
        data: Any,
        position: str,
        *,
        replaying: bool = False,
        encodings: Encodings | None = None,
    ) -> None:
        """Send a recoverable event found at ``position`` in the recovery log.

        Until its replay is done a resumed connection holds live events back (they follow the
        missed ones); an event already delivered, by the replay or live, is not sent again.
        Only recoverable connections show the position; ``encodings`` as for :meth:`emit`.
        """
        link = self.recovery
        if link is None:
            await self.emit(event, data, encodings)
            return
        if link.held is not None and not replaying:
            link.held.append((event, data, position))
            return
        if self.closed or not link.advance(position):
            return
        self._metrics.event_out(event)
        await self._send_encoded(self._encode(event, data, position, encodings))

    def _encode(
        self, event: str, data: Any, position: str | None, encodings: Encodings | None
    ) -> Any:
        encoder = self.encoder
        if encodings is None:
            return encoder(event, data, position)
        return encodings.form(encoder, position)

    @property
    @abstractmethod
    def encoder(self) -> Encoder:
        """How this connection's events are encoded; connections whose events are the same
        bytes on the wire return equal encoders (the same function, or equal objects)."""

    @abstractmethod
    async def _send_encoded(self, payload: Any) -> None:
        """Write one event as :attr:`encoder` made it (possibly shared with other connections:
        never modify it). Never waits on a slow client: one too far behind is closed."""

    @abstractmethod
    async def close(self, reason: CloseReason, text: str | None = None) -> None:
        """End the connection for ``reason`` (idempotent).

        ``text`` replaces the reason's own words where the client sees them (the native close
        frame, the ``session:expired`` payload): the server API passes its caller's ``reason``.
        """

    @abstractmethod
    async def abandon(self) -> None:
        """Drop the connection at once, without a word: a resumed successor has replaced it."""

    @property
    def resumable(self) -> bool:
        """Whether the end of this connection leaves a state to resume (an abnormal end)."""
        if self.end_reason is not None:
            return self.end_reason.resumable
        return not self.left_on_purpose

    # -- work running on behalf of the connection ---------------------------------------------

    def start_task(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        """Run ``coro`` alongside the connection; it is cancelled when the connection ends."""
        task = asyncio.get_running_loop().create_task(coro)
        if self._tasks is None:
            self._tasks = set()
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    @property
    def running_tasks(self) -> int:
        return len(self._tasks) if self._tasks is not None else 0

    def release_task(self, task: asyncio.Task[Any]) -> None:
        """Stop tying ``task`` to the connection: it outlives it (an AI answer being resumed)."""
        if self._tasks is not None:
            self._tasks.discard(task)

    def cancel_tasks(self) -> None:
        """Cancel everything started with :meth:`start_task` (called by the transport on close)."""
        for task in list(self._tasks or ()):
            task.cancel()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.id} user={self.user_id} peer={self.peer}>"
