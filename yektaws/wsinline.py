"""Client WebSocket messages taken as they are parsed, without aiohttp's ``receive()``.

aiohttp's reader parses frames in the protocol's ``data_received`` and puts each message in a
queue; the handler's task, waiting in ``receive()``, is woken through a future and an event-loop
turn per message. Under a closed-loop echo that wake-up (future, callback, task step, three
coroutine frames) cost as much as the rest of the message's handling together. An
:class:`InlineQueue` is that same queue with a *receiver*: while one is installed, a message
parsed while nothing is waiting in the queue is offered to it first, in the parsing callback, and
one it takes never enters the queue.

The receiver answers at once or declines: a message it declines (an event whose handler must wait,
a control frame) is queued as before, and from then on, until the reading task has caught up, every
later message is queued behind it, so a connection's messages are always handled in order. The
receiver is removed when something is queued and put back once the reader has caught up.

:meth:`InlineQueue.offer` needs no task while nothing waits: the queue calls back (in the
parsing callback) when something is queued, and the transport starts a task for it then, which
ends once it has caught up. An idle connection has no task at all: on an idle one, aiohttp's
``receive()`` and the reader's ``read()`` alone were two suspended coroutines, about 2 KiB
(tracemalloc, 2000 idle native connections), besides the task's own.

Every limit still holds: the frame guard and aiohttp's reader (message size, UTF-8, control frames,
the close handshake) run before a message exists, and a connection that is closing is never offered
one (errors and EOF take aiohttp's path: ``set_exception``/``feed_eof`` are untouched).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from aiohttp._websocket.reader import WebSocketDataQueue
from aiohttp.http_websocket import WSMessage

from yektaws.logging import get_logger

__all__ = ["InlineQueue", "Receiver"]

log = get_logger(__name__)

#: Takes one message (True) or declines it (False: it is queued for the reading task).
Receiver = Callable[[WSMessage], bool]

# aiohttp's own default for set_exception's cause (a private sentinel): "not given".
_NO_CAUSE: Any = object()


class InlineQueue(WebSocketDataQueue):
    """aiohttp's ``WebSocketDataQueue``, offering each message to a :data:`Receiver` first."""

    # Slots, not a __dict__: one queue per connection, most of them idle.
    __slots__ = ("_on_queued", "receiver")

    def __init__(self, protocol: Any, limit: int, *, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(protocol, limit, loop=loop)
        self.receiver: Receiver | None = None
        #: Called once, with the receiver removed, when something is queued (or the queue ends).
        self._on_queued: Callable[[], None] | None = None

    def feed_data(self, data: Any, size: int) -> None:
        receiver = self.receiver
        # Not while messages wait in the queue: they are older, and go first.
        if receiver is not None and not self._buffer:
            try:
                if receiver(data):
                    return
            except Exception:
                # A receiver's bug must not break the protocol callback it runs in: the message
                # then takes the task's path, which answers it (or reports the error) in order.
                log.exception("inline_receiver_failed")
        super().feed_data(data, size)
        self._wake()

    def feed_eof(self) -> None:
        super().feed_eof()
        self._wake()

    def set_exception(self, exc: BaseException, exc_cause: BaseException = _NO_CAUSE) -> None:
        if exc_cause is _NO_CAUSE:
            super().set_exception(exc)
        else:
            super().set_exception(exc, exc_cause)
        self._wake()

    def offer(self, receiver: Receiver, on_queued: Callable[[], None]) -> bool:
        """Hand messages to ``receiver`` from now on, until one is queued: then the receiver is
        removed and ``on_queued()`` called, once, in the callback that queued it.

        Returns False, installing nothing, when something is queued already (or the queue has
        ended): the caller reads that first. This is how a reader needs no task while it waits.
        """
        if self._buffer or self.is_eof():
            return False
        self.receiver, self._on_queued = receiver, on_queued
        return True

    def _wake(self) -> None:
        on_queued = self._on_queued
        if on_queued is not None:
            self.receiver = self._on_queued = None
            on_queued()
