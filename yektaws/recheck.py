"""Live session checks: sessions that end while connected end their connections.

Every ``SESSION_RECHECK_INTERVAL`` seconds the distinct tokens behind this process's open
connections are checked against the store in batches of ``SESSION_RECHECK_BATCH`` (one query per
batch, never one per connection). Connections whose session expired or was deleted are closed
with :attr:`~yektaws.connection.CloseReason.SESSION_EXPIRED` (native 4001; Socket.IO
``session:expired`` then a disconnect), and their tokens leave the positive cache.

A round that cannot reach the store closes nothing: an outage must not log everyone out.
"""

from __future__ import annotations

import asyncio
import contextlib

from yektaws.connection import CloseReason
from yektaws.gateway import Gateway
from yektaws.logging import get_logger
from yektaws.sessions import StoreUnavailable

__all__ = ["SessionRechecker"]

log = get_logger(__name__)


class SessionRechecker:
    """Runs :meth:`check_once` every ``interval`` seconds."""

    def __init__(self, gateway: Gateway, *, interval: float, batch: int) -> None:
        self._gateway = gateway
        self._interval = interval
        self._batch = batch
        self._task: asyncio.Task[None] | None = None
        #: Queries made by the last round (for tests and logs).
        self.last_round_queries = 0

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            try:
                await self.check_once()
            except StoreUnavailable as exc:
                log.warning("session_recheck_skipped", error=str(exc))

    async def check_once(self) -> int:
        """Re-check every open connection's session now; return how many were closed."""
        gateway = self._gateway
        tokens = sorted({conn.token for conn in gateway.hub})
        ended: set[str] = set()
        queries = 0
        for start in range(0, len(tokens), self._batch):
            batch = tokens[start : start + self._batch]
            valid = await gateway.store.valid_tokens(batch)
            queries += 1
            ended.update(token for token in batch if token not in valid)
        self.last_round_queries = queries
        closed = 0
        for conn in gateway.hub:
            if conn.token in ended and not conn.closed:
                await conn.close(CloseReason.SESSION_EXPIRED)
                closed += 1
        for token in ended:
            gateway.authenticator.forget(token)
        if tokens:
            log.info("session_recheck", tokens=len(tokens), queries=queries, closed=closed)
        return closed
