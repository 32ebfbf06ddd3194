"""The resume logic: which connection a handshake becomes, and what it is sent before live events.

The transports call :class:`Recovery` at three moments and carry positions; nothing else here is
theirs:

1. :meth:`Recovery.open`, after admission (the session is valid): a fresh recoverable connection,
   or the resumption of a saved one (same ``socketId``, same rooms, ``recovered``). A resume that
   cannot be honoured (unknown or expired ``pid``, another session's state, revoked meanwhile,
   trimmed log) becomes a fresh connection, and the reason is counted.
2. :meth:`Recovery.collect` and :meth:`Recovery.replay`, around the greeting (from
   :meth:`Gateway.accepted <yektaws.gateway.Gateway.accepted>`): the missed events are read, the
   greeting goes out, then each missed event once and in order, then the live events that arrived
   meanwhile (held by the connection since it was registered, so none falls between the read and
   the registration; duplicates are dropped by position).
3. :meth:`Recovery.ended`, when the connection is gone: its state is kept for a resume (abnormal
   end) or dropped (on purpose).

A resumed connection takes over: an older incarnation of the same socket still registered
anywhere in the cluster (a half-open TCP connection the node has not noticed yet) is dropped
without a word, and the handlers hear :meth:`Recovery.on_resumed` (an AI answer waiting for its
client stops its countdown).
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import Any

from redis.exceptions import RedisError

from yektaws.auth import token_digest
from yektaws.hub import Hub, rooms_of
from yektaws.logging import get_logger
from yektaws.metrics import Metrics
from yektaws.recovery.log import EventLog, LogEntry, PositionKey, position_key
from yektaws.recovery.states import SavedState, StateStore
from yektaws.recovery.streams import StreamRegistry
from yektaws.sessions import Session

__all__ = ["STORE_ERRORS", "Link", "Recovery", "ResumeRequest"]

log = get_logger("yektaws.recovery")

#: What a broken Redis raises through redis-py: a resume then becomes a plain connection.
STORE_ERRORS = (RedisError, OSError, TimeoutError)
#: Seconds one state or log operation may take before the connection goes on without recovery.
OPERATION_TIMEOUT = 2.0
#: Seconds between two readings of the log's size and age for the metrics.
STATS_INTERVAL = 5.0
#: Longest ``pid`` or ``offset`` a client may present (ours are far shorter).
MAX_HANDLE_CHARS = 64


@dataclass(frozen=True, slots=True)
class ResumeRequest:
    """What a client presents to resume: the state it held and the last position it saw.

    ``offset`` is ``None`` for a client that saw no position: it received no recoverable event,
    so it resumes from where its connection started (socket.io-client sends no offset then).
    """

    pid: str
    offset: str | None

    @classmethod
    def of(cls, pid: Any, offset: Any) -> ResumeRequest | None:
        """A request from untrusted values, or ``None`` when they are not one."""
        if not isinstance(pid, str) or not 0 < len(pid) <= MAX_HANDLE_CHARS:
            return None
        if offset is None:
            return cls(pid, None)
        if not isinstance(offset, str) or not 0 < len(offset) <= MAX_HANDLE_CHARS:
            return None
        try:
            position_key(offset)
        except ValueError:
            return None
        return cls(pid, offset)


Held = tuple[str, Any, str]


@dataclass(slots=True)
class Link:
    """A connection's tie to its saved state: carried as ``Connection.recovery``."""

    state: SavedState
    #: The greeting carries ``pid`` and the position (native); Socket.IO has its own place for
    #: them (the CONNECT packet, an argument appended to each event).
    handle_in_greeting: bool
    #: This connection resumed a saved one.
    recovered: bool
    #: The last position delivered (or the one the connection started from).
    position: str
    position_key: PositionKey
    #: Events that arrived before the replay finished, in arrival order; ``None`` after it.
    held: list[Held] | None = field(default_factory=list)
    #: The missed events, between :meth:`Recovery.collect` and :meth:`Recovery.replay`.
    missed: list[LogEntry] = field(default_factory=list)
    #: A resume elsewhere replaced this connection: its end must not touch the state.
    taken_over: bool = False

    @property
    def pid(self) -> str:
        return self.state.pid

    def advance(self, position: str) -> bool:
        """Move past ``position``; False if it was delivered already (a duplicate)."""
        key = position_key(position)
        if key <= self.position_key:
            return False
        self.position, self.position_key = position, key
        return True


class Recovery:
    """Connection-state recovery for one process (see the module docstring)."""

    def __init__(
        self,
        *,
        log: EventLog,
        states: StateStore,
        streams: StreamRegistry,
        hub: Hub,
        metrics: Metrics,
        node: str,
        position: Callable[[], str],
        window: float,
    ) -> None:
        self.log = log
        self.states = states
        #: Answers in progress per socket (the AI handler registers its own).
        self.streams = streams
        self._hub = hub
        self._metrics = metrics
        self._node = node
        self._position = position
        self.window = window
        #: Tells the other nodes that a socket resumed here (set by the bus).
        self.announce: Callable[[str], Awaitable[None]] | None = None
        self._resumed_hooks: list[Callable[[str, bool], None]] = []
        #: pid -> state of every recoverable connection open here.
        self._live: dict[str, SavedState] = {}
        self._background: set[asyncio.Task[None]] = set()
        self._refresher: asyncio.Task[None] | None = None

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> None:
        self._refresher = asyncio.get_running_loop().create_task(self._refresh_forever())

    async def stop(self) -> None:
        if self._refresher is not None:
            self._refresher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._refresher
        # The last state writes (the drain's suspends) must land before the process exits.
        if self._background:
            await asyncio.wait(self._background, timeout=OPERATION_TIMEOUT)

    def on_resumed(self, hook: Callable[[str, bool], None]) -> None:
        """Call ``hook(socket_id, here)`` whenever a socket resumes, here or on another node."""
        self._resumed_hooks.append(hook)

    # -- 1. the handshake ------------------------------------------------------------------------

    async def open(
        self,
        session: Session,
        *,
        protocol: str,
        namespace: str = "",
        request: ResumeRequest | None,
        handle_in_greeting: bool,
        new_socket_id: Callable[[], str],
    ) -> Link | None:
        """The link of a new connection (``None``: it goes on without recovery, store down)."""
        try:
            async with asyncio.timeout(OPERATION_TIMEOUT):
                if request is not None:
                    link = await self._resume(
                        session, protocol, namespace, request, handle_in_greeting
                    )
                    if link is not None:
                        return link
                return await self._fresh(
                    session, protocol, namespace, handle_in_greeting, new_socket_id
                )
        except STORE_ERRORS as exc:
            self._metrics.recoveries.labels(protocol, "unavailable").inc()
            log.warning("recovery_unavailable", protocol=protocol, error=type(exc).__name__)
            return None

    async def _fresh(
        self,
        session: Session,
        protocol: str,
        namespace: str,
        handle_in_greeting: bool,
        new_socket_id: Callable[[], str],
    ) -> Link:
        socket_id = new_socket_id()
        position = self._position()
        state = SavedState(
            pid=secrets.token_urlsafe(18),
            incarnation=secrets.token_hex(8),
            socket_id=socket_id,
            protocol=protocol,
            namespace=namespace,
            user_id=session.user_id,
            token_digest=token_digest(session.token),
            rooms=tuple(rooms_of(socket_id, session.user_id)),
            node=self._node,
            since=time.time(),
            start=position,
        )
        await self.states.save(state)
        self._live[state.pid] = state
        return Link(state, handle_in_greeting, False, position, position_key(position))

    async def _resume(
        self,
        session: Session,
        protocol: str,
        namespace: str,
        request: ResumeRequest,
        handle_in_greeting: bool,
    ) -> Link | None:
        state = await self.states.get(request.pid)
        if state is None:
            self._count(protocol, "unknown")  # never existed, or its window passed
            return None
        position = request.offset or state.start
        outcome = await self._refusal(state, session, protocol, namespace, position)
        if outcome is not None:
            self._count(protocol, outcome)
            return None
        successor = replace(
            state,
            incarnation=secrets.token_hex(8),
            node=self._node,
            since=time.time(),
            start=position,
        )
        if not await self.states.take(state, successor):
            self._count(protocol, "taken")  # another handshake with the same pid won
            return None
        self._live[successor.pid] = successor
        await self._take_over(successor.socket_id)
        return Link(successor, handle_in_greeting, True, position, position_key(position))

    async def _refusal(
        self, state: SavedState, session: Session, protocol: str, namespace: str, position: str
    ) -> str | None:
        """Why ``state`` cannot be resumed from ``position`` by this handshake, or ``None``."""
        if state.token_digest != token_digest(session.token):
            return "session_mismatch"
        if state.protocol != protocol or state.namespace != namespace:
            return "protocol_mismatch"
        if state.revoked_by(await self.states.revocations(state)):
            return "revoked"
        if not await self.log.serves(position):
            return "trimmed"
        return None

    def _count(self, protocol: str, outcome: str) -> None:
        self._metrics.recoveries.labels(protocol, outcome).inc()
        log.info("resume_refused", protocol=protocol, outcome=outcome)

    async def _take_over(self, socket_id: str) -> None:
        self.resumed_elsewhere(socket_id, here=True)
        if self.announce is not None:
            await self.announce(socket_id)

    def resumed_elsewhere(self, socket_id: str, *, here: bool = False) -> None:
        """A socket resumed (``here``, or on another node): drop an older incarnation of it
        that this node still holds, and tell the hooks."""
        old = self._hub.get(socket_id)
        if old is not None:
            if old.recovery is not None:
                old.recovery.taken_over = True
                self._live.pop(old.recovery.pid, None)
            self._hub.remove(old)
            self._spawn(old.abandon())
        for hook in self._resumed_hooks:
            hook(socket_id, here)

    # -- 2. around the greeting -------------------------------------------------------------------

    async def collect(self, link: Link, protocol: str) -> None:
        """Read what a resumed connection missed (its held buffer catches what comes meanwhile)."""
        if not link.recovered:
            return
        try:
            async with asyncio.timeout(OPERATION_TIMEOUT):
                missed = await self.log.missed(link.position, link.state.rooms)
        except STORE_ERRORS as exc:
            log.warning("recovery_read_failed", error=type(exc).__name__)
            missed = None
        if missed is None:  # trimmed (or unreadable) since the handshake looked
            link.recovered = False
            self._count(protocol, "trimmed")
            return
        link.missed = missed
        self._metrics.recoveries.labels(protocol, "recovered").inc()
        log.info("resumed", socketId=link.state.socket_id, protocol=protocol, missed=len(missed))

    async def replay(self, conn: Any) -> None:
        """Send the missed events, then what was held, then let live events through."""
        link: Link | None = conn.recovery
        if link is None:
            return
        missed, link.missed = link.missed, []
        for entry in missed:
            await conn.deliver(entry.event, entry.data, entry.position, replaying=True)
        if missed:
            self._metrics.recovery_replayed.labels(conn.protocol).inc(len(missed))
        while link.held:
            held, link.held = link.held, []
            for event, data, position in held:
                await conn.deliver(event, data, position, replaying=True)
        link.held = None

    # -- 3. the end -------------------------------------------------------------------------------

    def ended(self, link: Link | None, *, resumable: bool, cause: str) -> None:
        """Keep (``resumable``) or drop the state of a connection that has ended."""
        if link is None or link.taken_over:
            return
        self._live.pop(link.pid, None)
        if resumable:
            self._metrics.recovery_saved.labels(cause).inc()
            self._spawn(self.states.suspend(link.state, link.position))
        else:
            self._spawn(self.states.drop(link.state))

    async def revoke(self, key: str) -> None:
        """Connections named by ``key`` (``user:<id>``, ``token:<digest>``, ``socket:<id>``) were
        ended by the server API: their saved states must not be resumed."""
        with contextlib.suppress(*STORE_ERRORS):
            async with asyncio.timeout(OPERATION_TIMEOUT):
                await self.states.revoke(key)

    # -- background work ---------------------------------------------------------------------------

    def _spawn(self, work: Awaitable[Any]) -> None:
        async def run() -> None:
            try:
                async with asyncio.timeout(OPERATION_TIMEOUT):
                    await work
            except STORE_ERRORS as exc:
                log.warning("recovery_state_write_failed", error=type(exc).__name__)

        task = asyncio.get_running_loop().create_task(run())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _refresh_forever(self) -> None:
        # Live states are refreshed three times per window, so none expires under a live
        # connection; the log's figures for the metrics are read more often.
        refresh_every = max(1.0, self.window / 3)
        refreshed = asyncio.get_running_loop().time()
        while True:
            await asyncio.sleep(min(STATS_INTERVAL, refresh_every))
            try:
                async with asyncio.timeout(OPERATION_TIMEOUT * 5):
                    now = asyncio.get_running_loop().time()
                    if now - refreshed >= refresh_every:
                        await self.states.refresh(list(self._live.values()))
                        refreshed = now
                    entries, age = await self.log.stats()
            except STORE_ERRORS as exc:
                log.warning("recovery_refresh_failed", error=type(exc).__name__)
                continue
            self._metrics.recovery_log_entries.set(entries)
            self._metrics.recovery_log_age_seconds.set(age)
