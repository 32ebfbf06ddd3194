"""Finding a client's session token, and turning it into a :class:`~yektaws.sessions.Session`.

Where the token is read from (first match wins, CONTRACT section 2):

- Socket.IO: ``auth.token`` in the CONNECT packet, the ``token`` query parameter, then
  ``Authorization: Bearer``;
- native: the ``token`` query parameter, ``Authorization`` (``Bearer <t>`` with the scheme in any
  case, or a bare token as the old server allowed), then a ``Sec-WebSocket-Protocol`` entry
  ``bearer.<token>`` offered next to ``yektaws.v1``, the one way a browser can avoid putting the
  token in the URL.

:class:`Authenticator` asks the store, behind three protections: a process-wide token bucket on
lookups (a reconnect storm queues instead of exhausting the pool), a short positive cache (the same
users reconnecting do not become the same queries again), and a batched, throttled refresh of
``last_activity_at`` that never sits on the handshake path. Lookups themselves are grouped
(:class:`_LookupGroups`): the tokens of handshakes arriving while a query is out are asked for
together in the next one.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from yektaws.logging import get_logger
from yektaws.metrics import Metrics
from yektaws.ratelimit import TokenBucket
from yektaws.sessions import Session, SessionStore, StoreUnavailable

__all__ = [
    "NATIVE_SUBPROTOCOL",
    "Authenticator",
    "NativeCredentials",
    "native_credentials",
    "socketio_handshake_token",
    "socketio_token",
    "token_digest",
]

log = get_logger(__name__)

#: Least seconds between two log lines saying why session lookups fail (the others are counted).
STORE_FAILURE_LOG_INTERVAL = 10.0
#: Most tokens one lookup query asks for; more waiting go in the queries after it.
LOOKUP_GROUP_MAX = 200

#: The subprotocol a native client offers beside ``bearer.<token>``; the server selects it.
NATIVE_SUBPROTOCOL = "yektaws.v1"
_BEARER_SUBPROTOCOL_PREFIX = "bearer."


def token_digest(token: str) -> str:
    """A token's SHA-256 digest: how a token is named outside the session store and this process
    (the bus, saved connection states), so that it never travels or rests in clear."""
    return hashlib.sha256(token.encode()).hexdigest()


def _bearer(header: str | None) -> str | None:
    """The token in an ``Authorization`` value: ``Bearer <t>`` (any case) or a bare ``<t>``."""
    if not header:
        return None
    scheme, _, rest = header.strip().partition(" ")
    if rest and scheme.lower() == "bearer":
        return rest.strip() or None
    return None if rest else scheme or None


@dataclass(frozen=True, slots=True)
class NativeCredentials:
    """What a native handshake offered: the token, and whether it came as a subprotocol."""

    token: str | None
    via_subprotocol: bool


def native_credentials(request: web.BaseRequest) -> NativeCredentials:
    """Read the token of a native WebSocket handshake (CONTRACT section 2 order)."""
    token = request.query.get("token") or _bearer(request.headers.get("Authorization"))
    if token:
        return NativeCredentials(token, via_subprotocol=False)
    offered = [
        entry.strip()
        for header in request.headers.getall("Sec-WebSocket-Protocol", ())
        for entry in header.split(",")
    ]
    if NATIVE_SUBPROTOCOL in offered:
        for entry in offered:
            if entry.startswith(_BEARER_SUBPROTOCOL_PREFIX):
                token = entry[len(_BEARER_SUBPROTOCOL_PREFIX) :]
                return NativeCredentials(token or None, via_subprotocol=True)
    return NativeCredentials(None, via_subprotocol=False)


def socketio_handshake_token(request: web.BaseRequest) -> str | None:
    """The token an Engine.IO handshake request carries (query, then ``Authorization``): read
    when the session opens, used by its CONNECTs that bring none (:func:`socketio_token`)."""
    return request.query.get("token") or _bearer(request.headers.get("Authorization"))


def socketio_token(auth: Any, handshake_token: str | None) -> str | None:
    """Read the token of a Socket.IO CONNECT (CONTRACT section 2 order): its ``auth``, then the
    handshake request's (:func:`socketio_handshake_token`)."""
    if isinstance(auth, dict):
        token = auth.get("token")
        if isinstance(token, str) and token:
            return token
    return handshake_token


class InvalidToken(Exception):
    """No valid session has this token."""


class HandshakeBusy(Exception):
    """The process-wide lookup rate was exhausted for longer than the handshake may wait."""


class _PositiveCache:
    """Valid sessions seen in the last ``ttl`` seconds, at most ``size`` of them (oldest out)."""

    def __init__(self, ttl: float, size: int) -> None:
        self._ttl = ttl
        self._size = size
        self._entries: OrderedDict[str, tuple[float, Session]] = OrderedDict()

    def get(self, token: str) -> Session | None:
        entry = self._entries.get(token)
        if entry is None:
            return None
        if entry[0] < time.monotonic():
            del self._entries[token]
            return None
        return entry[1]

    def put(self, session: Session) -> None:
        if self._ttl <= 0:
            return
        self._entries[session.token] = (time.monotonic() + self._ttl, session)
        self._entries.move_to_end(session.token)
        while len(self._entries) > self._size:
            self._entries.popitem(last=False)

    def forget(self, token: str) -> None:
        self._entries.pop(token, None)


class _LookupGroups:
    """Session lookups, one query for all the tokens that are waiting (group commit).

    A query's cost in the gateway is mostly per query (a pool connection, the round trip, aiopg's
    futures and timeouts), hardly per row. So at most one query is out at a time: the first
    lookup starts one at the next event-loop turn, with whatever else arrived in that turn, and
    lookups arriving while it runs wait for the next one, which asks for all of them (up to
    :data:`LOOKUP_GROUP_MAX`). Alone, a lookup costs one turn more than a direct query; in a
    reconnect storm the queries grow instead of multiplying. A failed query fails every lookup
    it carried, each with its own :class:`StoreUnavailable`.
    """

    def __init__(self, store: SessionStore) -> None:
        self._store = store
        self._waiting: dict[str, list[asyncio.Future[Session | None]]] = {}
        self._task: asyncio.Task[None] | None = None

    async def lookup(self, token: str) -> Session | None:
        loop = asyncio.get_running_loop()
        answer: asyncio.Future[Session | None] = loop.create_future()
        self._waiting.setdefault(token, []).append(answer)
        if self._task is None:
            self._task = loop.create_task(self._run())
        return await answer

    async def _run(self) -> None:
        try:
            while self._waiting:
                tokens = list(self._waiting)[:LOOKUP_GROUP_MAX]
                group = {token: self._waiting.pop(token) for token in tokens}
                try:
                    found = await self._store.lookup_many(tokens)
                except StoreUnavailable as exc:
                    for answers in group.values():
                        for answer in answers:
                            if not answer.done():
                                answer.set_exception(StoreUnavailable(str(exc)))
                    continue
                for token, answers in group.items():
                    for answer in answers:
                        if not answer.done():  # its handshake may have been abandoned
                            answer.set_result(found.get(token))
        finally:
            self._task = None


class _ActivityRecorder:
    """Refreshes ``last_activity_at`` in batches, at most once per ``interval`` per token."""

    def __init__(self, store: SessionStore, interval: float) -> None:
        self._store = store
        self._interval = interval
        self._last: dict[str, float] = {}
        self._pending: set[str] = set()
        self._wakeup = asyncio.Event()

    def note(self, token: str) -> None:
        now = time.monotonic()
        if now - self._last.get(token, -self._interval) >= self._interval:
            self._last[token] = now
            self._pending.add(token)
            self._wakeup.set()

    async def run(self) -> None:
        """Flush forever; started by the application, cancelled at shutdown."""
        while True:
            await self._wakeup.wait()
            # Gather the handshakes of the next moment into the same statement.
            await asyncio.sleep(1.0)
            self._wakeup.clear()
            batch, self._pending = list(self._pending), set()
            try:
                await self._store.touch(batch)
            except StoreUnavailable as exc:
                # Losing one refresh is harmless; it is retried at the next connect.
                log.warning("activity_refresh_failed", tokens=len(batch), error=str(exc))
            cutoff = time.monotonic() - self._interval
            self._last = {t: at for t, at in self._last.items() if at > cutoff}


class Authenticator:
    """Resolves tokens to sessions through the store, the cache and the lookup rate."""

    def __init__(
        self,
        store: SessionStore,
        *,
        lookups_per_second: float,
        wait_limit: float,
        cache_ttl: float,
        cache_size: int,
        touch_interval: float,
        metrics: Metrics,
    ) -> None:
        self.store = store
        self._metrics = metrics
        self._lookups = TokenBucket(lookups_per_second, burst=max(1.0, lookups_per_second))
        self._wait_limit = wait_limit
        self._cache = _PositiveCache(cache_ttl, cache_size)
        self._groups = _LookupGroups(store)
        self._activity = _ActivityRecorder(store, touch_interval)
        self._activity_task: asyncio.Task[None] | None = None
        self._failure_logged_at = -STORE_FAILURE_LOG_INTERVAL
        self._failures_unlogged = 0

    def start(self) -> None:
        self._activity_task = asyncio.get_running_loop().create_task(self._activity.run())

    async def stop(self) -> None:
        if self._activity_task is not None:
            self._activity_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._activity_task

    def _report_store_failure(self, exc: StoreUnavailable) -> None:
        """Log why the store failed, once per :data:`STORE_FAILURE_LOG_INTERVAL`: clients are
        told to retry, the operator needs the cause, and a storm must not flood the log."""
        now = time.monotonic()
        if now - self._failure_logged_at < STORE_FAILURE_LOG_INTERVAL:
            self._failures_unlogged += 1
            return
        log.warning("session_store_failed", error=str(exc), notLogged=self._failures_unlogged)
        self._failure_logged_at, self._failures_unlogged = now, 0

    async def authenticate(self, token: str) -> Session:
        """The session behind ``token``.

        Raises :class:`InvalidToken`, :class:`HandshakeBusy` or
        :class:`~yektaws.sessions.StoreUnavailable`.
        """
        session = self._cache.get(token)
        if session is None:
            if not await self._lookups.take(self._wait_limit):
                raise HandshakeBusy
            started = time.perf_counter()
            try:
                session = await self._groups.lookup(token)
            except StoreUnavailable as exc:
                self._metrics.store_errors.inc()
                self._report_store_failure(exc)
                raise
            finally:
                self._metrics.store_seconds.observe(time.perf_counter() - started)
            if session is None:
                raise InvalidToken
            self._cache.put(session)
        self._activity.note(token)
        return session

    def forget(self, token: str) -> None:
        """Drop ``token`` from the cache (it was found revoked)."""
        self._cache.forget(token)
