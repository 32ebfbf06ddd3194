"""The :class:`Gateway`: what both transports share, and the one place a connection's life is told.

It holds the parts that do not depend on a protocol (settings, session store, admission, hub,
dispatcher) and records the three moments of a connection's life, once for both protocols: a
handshake refused (:meth:`Gateway.rejected`), a connection accepted (:meth:`Gateway.accepted`),
a connection ended (:meth:`Gateway.released`). Each writes exactly one log line.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

from yektaws.admission import Admission, OriginPolicy
from yektaws.auth import Authenticator
from yektaws.connection import CloseReason, Connection
from yektaws.dispatcher import Dispatcher
from yektaws.hub import Hub
from yektaws.logging import get_logger
from yektaws.metrics import Metrics
from yektaws.sessions import SessionStore
from yektaws.settings import Settings

if TYPE_CHECKING:
    from yektaws.recovery import Recovery

__all__ = ["Gateway"]

log = get_logger("yektaws.connections")

# How often wait_released() looks whether the closes have finished.
_RELEASE_POLL = 0.05


class Gateway:
    """The protocol-neutral core that the transports are built on."""

    def __init__(
        self,
        settings: Settings,
        store: SessionStore,
        dispatcher: Dispatcher,
        metrics: Metrics,
    ) -> None:
        self.settings = settings
        self.store = store
        self.dispatcher = dispatcher
        self.metrics = metrics
        self.hub = Hub()
        metrics.count_open_connections(self.hub.count_by_protocol)
        self.origins = OriginPolicy(settings.cors_origin)
        self.authenticator = Authenticator(
            store,
            lookups_per_second=settings.max_handshakes_per_second,
            wait_limit=settings.handshake_timeout,
            cache_ttl=settings.session_cache_ttl,
            cache_size=settings.session_cache_size,
            touch_interval=settings.session_touch_interval,
            metrics=metrics,
        )
        self.draining = False
        #: Connection-state recovery (``None`` with ``RECOVERY_WINDOW=0``); set by the app.
        self.recovery: Recovery | None = None
        self._background: list[asyncio.Task[None]] = []
        self.admission = Admission(
            authenticator=self.authenticator,
            hub=self.hub,
            origins=self.origins,
            max_per_address=settings.max_connections_per_address,
            max_per_owner=settings.max_connections_per_user,
            is_draining=lambda: self.draining,
        )

    # -- start and stop ------------------------------------------------------------------------

    async def start(self) -> None:
        """Open the store and start the background work (activity refresh, loop-lag probe)."""
        await self.store.open()
        self.authenticator.start()
        self._background.append(asyncio.create_task(self.metrics.watch_loop_lag()))

    async def stop(self) -> None:
        for task in self._background:
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        self._background.clear()
        await self.authenticator.stop()
        await self.store.close()

    # -- a connection's life ---------------------------------------------------------------------

    def rejected(self, protocol: str, peer: str, reason: str) -> None:
        self.metrics.rejects.labels(protocol, reason).inc()
        log.info("reject", protocol=protocol, peer=peer, reason=reason)

    async def accepted(self, conn: Connection, *, transport: str) -> None:
        """Log the new connection and greet it (the dispatcher's connect hooks); a resumed one
        is then sent what it missed, before any live event."""
        link = conn.recovery
        if link is not None and self.recovery is not None:
            await self.recovery.collect(link, conn.protocol)
        self.metrics.connects.labels(conn.protocol).inc()
        log.info(
            "connect",
            socketId=conn.id,
            protocol=conn.protocol,
            transport=transport,
            userId=conn.user_id,
            peer=conn.peer,
            recovered=None if link is None else link.recovered,
        )
        await self.dispatcher.connected(conn)
        if self.recovery is not None:
            await self.recovery.replay(conn)

    def released(self, conn: Connection, *, code: int | None, reason: str) -> None:
        """Forget an ended connection, keep or drop its saved state, stop the work it started
        (the dispatcher's disconnect hooks may let some of it outlive the connection)."""
        self.hub.remove(conn)
        link = conn.recovery
        # A connection taken over by its own resume goes on in its successor, whatever its end.
        resumable = link is not None and (link.taken_over or conn.resumable)
        if self.recovery is not None:
            self.recovery.ended(link, resumable=resumable, cause=_cause(conn))
        self.dispatcher.disconnected(conn, resumable=resumable)
        conn.cancel_tasks()
        self.metrics.disconnects.labels(conn.protocol, str(code) if code else "none").inc()
        log.info(
            "disconnect",
            socketId=conn.id,
            protocol=conn.protocol,
            userId=conn.user_id,
            peer=conn.peer,
            code=code,
            reason=reason,
            seconds=round(time.time() - conn.connected_at, 3),
        )

    async def close_all(self, reason: CloseReason) -> None:
        for conn in self.hub:
            await conn.close(reason)

    async def wait_released(self, timeout: float) -> int:
        """Wait until every connection has been released, at most ``timeout`` seconds; returns
        how many remain. Closes finish on the connections' own tasks (a closing handshake waits
        for the client's answer), which nothing else waits for."""
        loop = asyncio.get_running_loop()
        until = loop.time() + timeout
        while len(self.hub) and loop.time() < until:
            await asyncio.sleep(_RELEASE_POLL)
        return len(self.hub)


def _cause(conn: Connection) -> str:
    """A bounded label for why a resumable connection ended (the saved-states metric)."""
    if conn.end_reason is CloseReason.GOING_AWAY:
        return "drain"
    if conn.end_reason is not None:
        return conn.end_reason.name.lower()
    return "lost"
