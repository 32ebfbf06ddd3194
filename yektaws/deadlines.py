"""Deadlines that all fall the same delay after they are set, kept by one timer for all of them.

A timer per connection (``call_later``: a handle, a uvloop timer and a bound callback, ~480 bytes
by tracemalloc; or a sleeping task: a task, a coroutine, a future and a timer, ~1.5 KB) lives as
long as its delay with every connection. When every deadline is the same ``delay`` after its
start, they fall in the order they were set: a deque of ``(when, item)`` and one timer, which
handles the deadlines of each ``slack`` seconds together, cost a tuple per connection.

Used for the request-header deadline of every new connection (:mod:`yektaws.guards`), the
Engine.IO server pings (:mod:`yektaws.transports.engineio_pings`) and the time an Engine.IO
session has to join a namespace (:mod:`yektaws.transports.socketio`).

An item is held until it is due, so what it references lives that long: an item that must not
keep a connection alive is a weak reference or an id (the pings hold weak references to their
sessions, the namespace deadline holds session ids).
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Callable
from typing import Generic, TypeVar

__all__ = ["OrderedDeadlines"]

T = TypeVar("T")


class OrderedDeadlines(Generic[T]):
    """Calls ``on_due(item)`` ``delay`` seconds (at most ``slack`` more) after :meth:`add`.

    ``on_due`` runs in the timer's callback: it must not raise (what it raises is reported by
    the event loop's exception handler, and the items due with it are still handled) and must
    not wait. Items are held until due: an item that no longer needs its deadline is told so by
    its own state, which ``on_due`` reads.
    """

    def __init__(self, delay: float, on_due: Callable[[T], None], *, slack: float) -> None:
        self._delay = delay
        self._on_due = on_due
        self._slack = slack
        self._pending: collections.deque[tuple[float, T]] = collections.deque()
        self._timer: asyncio.TimerHandle | None = None

    def __len__(self) -> int:
        return len(self._pending)

    def add(self, item: T) -> None:
        loop = asyncio.get_running_loop()
        self._pending.append((loop.time() + self._delay, item))
        if self._timer is None:
            self._timer = loop.call_at(self._pending[0][0], self._expire)

    def cancel(self) -> None:
        """Forget every pending deadline (at shutdown)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._pending.clear()

    def _expire(self) -> None:
        loop = asyncio.get_running_loop()
        pending = self._pending
        try:
            now = loop.time()
            while pending and pending[0][0] <= now:
                self._on_due(pending.popleft()[1])
        finally:
            self._timer = (
                loop.call_at(pending[0][0] + self._slack, self._expire) if pending else None
            )
