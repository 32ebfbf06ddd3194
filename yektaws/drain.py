"""The graceful drain that a SIGTERM (or SIGINT) starts: a deploy that users do not notice.

In order:

1. ``/ready`` turns 503 and new handshakes are refused (``draining``), so the load balancer and
   reconnecting clients go elsewhere; systemd is told ``STOPPING=1``.
2. Connections with nothing running are closed with 1001 ("server shutting down"; Socket.IO:
   the Engine.IO session ends, which clients read as a reason to reconnect), spread over
   ``DRAIN_SPREAD`` seconds so that thousands of clients do not reconnect in one millisecond.
3. Connections still streaming an AI answer keep it until it ends or until ``DRAIN_TIMEOUT``
   (counted from the signal), then are closed the same way.

A second signal during the drain ends the process at once (see :mod:`yektaws.cli`).
"""

from __future__ import annotations

import asyncio

from yektaws.connection import CloseReason, Connection
from yektaws.gateway import Gateway
from yektaws.logging import get_logger

__all__ = ["drain"]

log = get_logger(__name__)

# Closes are sent in this many waves over DRAIN_SPREAD (fewer for few connections).
_WAVES = 20
# How often the drain looks whether the remaining AI answers have ended.
_POLL_INTERVAL = 0.05
# After the last close, how long the drain waits for the transports to report them done.
_SETTLE_TIMEOUT = 3.0


async def drain(gateway: Gateway, *, timeout: float, spread: float) -> None:
    """Close every connection of ``gateway`` as described above; returns when all are gone."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    gateway.draining = True
    connections = list(gateway.hub)
    idle = [conn for conn in connections if not conn.running_tasks]
    busy = [conn for conn in connections if conn.running_tasks]
    log.info("drain_started", connections=len(connections), streaming=len(busy))

    waves = min(_WAVES, len(idle))
    pause = min(spread, max(0.0, deadline - loop.time())) / max(1, waves)
    for wave in range(waves):
        # Readiness has already turned: wait before each wave, the first included.
        await asyncio.sleep(pause)
        await _close(idle[wave::waves])

    while any(conn.running_tasks and not conn.closed for conn in busy):
        if loop.time() >= deadline:
            log.warning("drain_timeout", streaming=sum(1 for c in busy if c.running_tasks))
            break
        await asyncio.sleep(_POLL_INTERVAL)
    await gateway.close_all(CloseReason.GOING_AWAY)  # the busy ones, and any that slipped in

    remaining = await gateway.wait_released(_SETTLE_TIMEOUT)
    log.info("drain_finished", remaining=remaining)


async def _close(connections: list[Connection]) -> None:
    for conn in connections:
        await conn.close(CloseReason.GOING_AWAY)
