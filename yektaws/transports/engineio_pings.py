"""The Engine.IO server's pings, for every session of one server, sent by one timer.

python-engineio pings each session from a task of its own: after each PONG (and at the
handshake) ``AsyncSocket.schedule_ping`` starts ``_send_ping``, which sleeps ``pingInterval`` and
then sends a PING. An idle Socket.IO connection therefore always holds a sleeping task (a task,
a coroutine, its frame, a future and a timer: ~1.5 KB), and a server with 50,000 of them wakes
2,000 tasks a second at the default 25 s.

:class:`EngineIOPings` takes those pings over: ``_send_ping`` tasks are not started, the socket
is put in an :class:`~yektaws.deadlines.OrderedDeadlines` instead (every ping falls the same
``pingInterval`` after its schedule, so one timer keeps them all), and when its time comes the
PING is sent as ``_send_ping`` would: only if the socket is neither closing nor closed, with
``last_ping`` set to the time it left, which the ping-timeout checks (python-engineio's service
task, :mod:`yektaws.transports.engineio_guards`) read as before. Nothing else changes: the PONG
still reschedules through ``schedule_ping``, whose "one ping cycle at a time" rule is its own.

The hook is the server's ``start_background_task``, replaced on this one server instance (see
:mod:`yektaws.compat`): every other background task it starts is started as before.
"""

from __future__ import annotations

import asyncio
import time
import weakref
from typing import Any

import engineio
from engineio import packet as eio_packet
from engineio.async_socket import AsyncSocket

from yektaws.deadlines import OrderedDeadlines
from yektaws.transports.engineio_ws import DirectSendQueue

__all__ = ["EngineIOPings"]

#: Pings due this close together leave in the same timer callback (a ping at most this late).
_SLACK = 0.005


class EngineIOPings:
    """Sends the pings of ``eio``'s sessions from one timer (see the module docstring)."""

    def __init__(self, eio: engineio.AsyncServer) -> None:
        self._due: OrderedDeadlines[weakref.ref[Any]] = OrderedDeadlines(
            eio.ping_interval, _ping, slack=_SLACK
        )
        start_background_task = eio.start_background_task

        def start_unless_ping(target: Any, *args: Any, **kwargs: Any) -> Any:
            if getattr(target, "__func__", None) is AsyncSocket._send_ping:
                # Weakly: a session that ends is freed at once, not when its ping was due.
                self._due.add(weakref.ref(target.__self__))
                return None  # schedule_ping ignores what it would get
            return start_background_task(target, *args, **kwargs)

        eio.start_background_task = start_unless_ping

    def __len__(self) -> int:
        """How many pings are scheduled."""
        return len(self._due)

    def stop(self) -> None:
        self._due.cancel()


def _ping(socket_ref: weakref.ref[Any]) -> None:
    """``AsyncSocket._send_ping`` once its sleep is over, without a task."""
    socket = socket_ref()
    if socket is None or socket.closing or socket.closed:
        return
    socket.last_ping = time.time()
    ping = eio_packet.Packet(eio_packet.PING)
    queue = socket.queue
    if isinstance(queue, DirectSendQueue) and queue.compresses:
        # aiohttp's writer compresses, and may wait for the transport: a task of its own.
        asyncio.get_running_loop().create_task(queue.put(ping))
    else:
        queue.put_nowait(ping)  # the polling queue, or written at the end of this loop turn
