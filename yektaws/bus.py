"""The bus: emits, disconnects and queries (presence, stats) that reach every gateway process.

One bus serves both protocols. Every message names rooms, users, socket ids or tokens, never a
protocol, and each process applies it to its own :class:`~yektaws.hub.Hub`, which holds its
native and Socket.IO connections alike. That is why python-socketio's ``AsyncRedisManager`` is not
used: it would reach Socket.IO clients only, on a channel of its own, next to this one.

- :class:`LocalBus` (no ``REDIS_URL``): one process, the hub is the whole cluster.
- :class:`RedisBus`: Redis pub/sub on one channel, ``<REDIS_PREFIX>:bus``. The process that
  publishes applies the message to its own hub first, directly, so local delivery never waits on
  the broker and keeps working without it; every other process applies what it receives.
  Queries are request and response (:meth:`Bus.ask`): the asker publishes a query naming its
  reply channel, every live process answers (presence: its connections of one user; the
  operator console adds its own questions, :attr:`LocalNode.answers`), and the asker gathers
  answers until every live process has answered or :data:`QUERY_TIMEOUT` has passed. Live
  processes are known from the keys ``<REDIS_PREFIX>:node:<id>``, which each refreshes with a
  TTL. A node that does not know a question stays silent, and the answer is marked incomplete.

Broker faults: a failed publish is logged and counted, and the message is delivered locally only
(the caller is told so). The subscription is re-established with exponential backoff up to
:data:`BACKOFF_MAX`. A watchdog publishes a ping to its own process every
:data:`PING_INTERVAL`; a ping not back within :data:`PING_TIMEOUT` means the subscription went
silent (connected, receiving nothing), and it is torn down and made again. Until the pings come
back the bus reports itself ``degraded``.

Pub/sub keeps nothing: a process that is not subscribed when a message is published misses it.
``PUBLISH`` says how many subscribers received a message, so a publish that reached fewer
processes than are alive is logged (``bus_partial_delivery``) rather than lost in silence.

With connection-state recovery on (:mod:`yektaws.recovery`), emits are recoverable events: each
is appended to the recovery log and published in one step (:meth:`RedisLog.append
<yektaws.recovery.RedisLog.append>`), and every process, the emitting one included, applies emits
from the subscription in log order, skipping any position it has applied already. A process
whose subscription was down reads what it missed from the log when it subscribes again, so its
connected clients lose nothing either. Only when Redis cannot be reached at all is an emit
delivered to this process's clients directly, live and without a position.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import enum
import os
import socket
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
from aiohttp import web
from redis import asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from yektaws.auth import token_digest
from yektaws.connection import CloseReason
from yektaws.gateway import Gateway
from yektaws.logging import get_logger
from yektaws.metrics import Metrics
from yektaws.recovery import START, EventLog, MemoryLog, Recovery, RedisLog, position_key
from yektaws.settings import Settings

__all__ = [
    "BUS_KEY",
    "Answers",
    "Bus",
    "Delivery",
    "LocalBus",
    "LocalNode",
    "Presence",
    "RedisBus",
    "Target",
    "TargetKind",
    "node_id",
    "open_bus",
]

log = get_logger(__name__)

#: Seconds between two watchdog rounds: a self-ping and a refresh of this node's key.
PING_INTERVAL = 1.0
#: Seconds a self-ping may take to come back before the subscription counts as silent.
PING_TIMEOUT = 3.0
#: Seconds this node's key lives without a refresh: a node that died leaves presence this fast.
NODE_TTL = 5
#: Seconds a query (presence, stats) waits for the other nodes.
QUERY_TIMEOUT = 1.0
#: Seconds one publish or key command may take; the broker counts as down beyond that.
COMMAND_TIMEOUT = 1.0
#: First and longest wait between two attempts to subscribe again.
BACKOFF_MIN = 0.1
BACKOFF_MAX = 2.0
#: Seconds start() waits for the first subscription before serving anyway, degraded.
START_WAIT = 3.0
#: Longest wait for one message from the subscription before looking at the watchdog's verdict.
_POLL = 0.5


def node_id() -> str:
    """This process's name in the cluster: ``<hostname>:<pid>``, unique among live processes."""
    return f"{socket.gethostname()}:{os.getpid()}"


class TargetKind(enum.Enum):
    """What a ``/disconnect`` names (the JSON field of the request)."""

    USER = "user"
    SOCKET_ID = "socketId"
    TOKEN = "token"


@dataclass(frozen=True, slots=True)
class Target:
    """The connections a disconnect closes. A token travels only as its SHA-256 digest."""

    kind: TargetKind
    value: str

    @classmethod
    def of_token(cls, token: str) -> Target:
        return cls(TargetKind.TOKEN, token_digest(token))


@dataclass(frozen=True, slots=True)
class Delivery:
    """What an emit or disconnect did: connections reached here, and the broadcast's fate.

    ``broker`` is ``"none"`` without a broker, ``"ok"`` when the message was published (to
    ``receivers`` subscribed processes, this one included), ``"unavailable"`` when publishing
    failed and only this process acted on it.
    """

    local: int
    broker: str
    receivers: int | None = None


#: A question a node answers: it takes the query message (its arguments) and returns JSON data.
Answerer = Callable[[dict[str, Any]], Any]


@dataclass(slots=True)
class Answers:
    """What the nodes answered to one query: node id -> answer, this node first.

    ``missing`` names the live nodes that did not answer in time (or do not know the question);
    ``complete`` is false then, and also when the live nodes could not be listed at all.
    """

    by_node: dict[str, Any]
    missing: list[str]
    complete: bool


@dataclass(slots=True)
class Presence:
    """A user's connections across the cluster, and whether every live node answered."""

    connections: list[dict[str, Any]]
    nodes: list[str]
    complete: bool


class LocalNode:
    """What any node does with a bus message: apply it to this process's hub."""

    def __init__(self, gateway: Gateway, node: str) -> None:
        self.gateway = gateway
        self.id = node
        #: The questions this node answers for the cluster (:meth:`Bus.ask`), by name.
        self.answers: dict[str, Answerer] = {"presence": lambda query: self.presence(query["user"])}

    def answer(self, kind: str, query: dict[str, Any]) -> Any:
        return self.answers[kind](query)

    async def emit(self, room: str, event: str, data: Any, position: str | None = None) -> int:
        return await self.gateway.hub.emit(room, event, data, position)

    async def disconnect(self, target: Target, reason: str | None) -> int:
        """Close every connection here that ``target`` names; returns how many."""
        hub = self.gateway.hub
        if target.kind is TargetKind.USER:
            matches = hub.members(f"user:{target.value}")
        elif target.kind is TargetKind.SOCKET_ID:
            conn = hub.get(target.value)
            matches = [conn] if conn is not None else []
        else:
            matches = [conn for conn in hub if token_digest(conn.token) == target.value]
            for token in {conn.token for conn in matches}:
                self.gateway.authenticator.forget(token)
        for conn in matches:
            await conn.close(CloseReason.SESSION_EXPIRED, reason)
        return len(matches)

    def presence(self, user_id: str) -> list[dict[str, Any]]:
        return [
            {
                "socketId": conn.id,
                "protocol": conn.protocol,
                "transport": conn.transport,
                "node": self.id,
                "connectedAt": _iso(conn.connected_at),
            }
            for conn in self.gateway.hub.members(f"user:{user_id}")
            if not conn.closed
        ]


def _iso(at: float) -> str:
    # The contract's timestamp shape (ISO 8601 UTC, milliseconds, Z) for a past moment.
    return datetime.fromtimestamp(at, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class Bus(abc.ABC):
    """Delivery to every matching connection of the cluster, whatever its protocol."""

    def __init__(self, local: LocalNode) -> None:
        self.local = local
        #: Connection-state recovery, when it is on (set by the application).
        self.recovery: Recovery | None = None
        #: The recovery log, when recovery is on.
        self.log: EventLog | None = None
        self._signals: dict[str, Callable[[dict[str, Any]], Awaitable[None]]] = {}

    @property
    def node_id(self) -> str:
        return self.local.id

    @property
    @abc.abstractmethod
    def position(self) -> str:
        """The newest recovery-log position applied here: where a new connection starts."""

    def on_signal(self, name: str, handler: Callable[[dict[str, Any]], Awaitable[None]]) -> None:
        """Call ``handler(payload)`` for each signal ``name`` sent from another node."""
        self._signals[name] = handler

    async def signal(self, name: str, payload: dict[str, Any]) -> bool:
        """Send ``payload`` to the ``name`` handlers of the other nodes; False if it could not
        go (no other nodes: a local bus; or no broker)."""
        return False

    async def _revoke(self, target: Target) -> None:
        """Keep the saved states ``target`` names from being resumed (the server API ended
        those connections on purpose, some of them maybe while their clients were away)."""
        if self.recovery is not None:
            name = {TargetKind.USER: "user", TargetKind.SOCKET_ID: "socket"}.get(
                target.kind, "token"
            )
            await self.recovery.revoke(f"{name}:{target.value}")

    @property
    @abc.abstractmethod
    def state(self) -> str:
        """``"local"`` (no broker), ``"ok"``, or ``"degraded"`` (local delivery only)."""

    async def start(self) -> None:  # noqa: B027 - a bus without a broker has nothing to do
        """Connect to the broker, if any."""

    async def stop(self) -> None:  # noqa: B027
        """Leave the cluster."""

    @abc.abstractmethod
    async def emit(self, room: str, event: str, data: Any) -> Delivery:
        """Send ``event`` to every connection in ``room`` on every node."""

    @abc.abstractmethod
    async def disconnect(self, target: Target, reason: str | None) -> Delivery:
        """Close every connection ``target`` names on every node (native 4001, ``reason``)."""

    @abc.abstractmethod
    async def ask(self, kind: str, query: dict[str, Any]) -> Answers:
        """Every live node's answer to the question ``kind`` (see :attr:`LocalNode.answers`).

        ``query`` travels as the message itself, so its keys must not be ``op``, ``from``,
        ``query`` or ``reply``.
        """

    async def presence(self, user_id: str) -> Presence:
        """The connections of ``user_id`` on every node."""
        answers = await self.ask("presence", {"user": user_id})
        connections = [conn for node in answers.by_node.values() for conn in node]
        return Presence(connections, list(answers.by_node), complete=answers.complete)


class LocalBus(Bus):
    """One process: the hub is the whole cluster (and the recovery log is in memory)."""

    def __init__(self, local: LocalNode, log: MemoryLog | None = None) -> None:
        super().__init__(local)
        self.log: MemoryLog | None = log

    @property
    def state(self) -> str:
        return "local"

    @property
    def position(self) -> str:
        return START if self.log is None else self.log.tail

    async def emit(self, room: str, event: str, data: Any) -> Delivery:
        if self.log is None:
            return Delivery(await self.local.emit(room, event, data), "none")
        entry = self.log.append(room, event, data)
        return Delivery(await self.local.emit(room, event, data, entry.position), "none")

    async def disconnect(self, target: Target, reason: str | None) -> Delivery:
        await self._revoke(target)
        return Delivery(await self.local.disconnect(target, reason), "none")

    async def ask(self, kind: str, query: dict[str, Any]) -> Answers:
        return Answers({self.node_id: self.local.answer(kind, query)}, [], complete=True)


class _Stale(Exception):
    """The watchdog found the subscription silent: tear it down and subscribe again."""


@dataclass
class _Query:
    """A query waiting for the other nodes' answers."""

    expected: set[str]
    answers: dict[str, Any] = field(default_factory=dict)
    done: asyncio.Event = field(default_factory=asyncio.Event)


class RedisBus(Bus):
    """The bus over Redis pub/sub (see the module docstring)."""

    def __init__(
        self,
        local: LocalNode,
        url: str,
        prefix: str,
        metrics: Metrics,
        *,
        recovery_window: float = 0,
        recovery_max_events: int = 0,
    ) -> None:
        super().__init__(local)
        self._metrics = metrics
        # No retries inside redis-py: a command fails fast and the bus decides what to do
        # (deliver locally, back off, resubscribe); hidden retries would stall every emit.
        self._redis: aioredis.Redis | None = aioredis.Redis.from_url(
            url,
            socket_timeout=COMMAND_TIMEOUT,
            socket_connect_timeout=COMMAND_TIMEOUT,
            retry=Retry(NoBackoff(), 0),
        )
        #: The recovery log (``None`` with recovery off): emits are appended and published in one.
        self.log: RedisLog | None = (
            RedisLog(self._redis, prefix, max_events=recovery_max_events, window=recovery_window)
            if recovery_window > 0
            else None
        )
        #: The newest log position applied to this process's clients (None: not known yet).
        self._applied: str | None = None
        self.channel = f"{prefix}:bus"
        self._node_prefix = f"{prefix}:node:"
        self._node_key = f"{prefix}:node:{local.id}"
        self._reply_channel = f"{prefix}:reply:{local.id}"
        self._tasks: list[asyncio.Task[None]] = []
        self._queries: dict[str, _Query] = {}
        self._healthy = asyncio.Event()
        self._stale = False
        #: The self-ping in flight: its nonce and when it was sent.
        self._ping: tuple[str, float] | None = None

    @property
    def state(self) -> str:
        return "ok" if self._healthy.is_set() else "degraded"

    @property
    def redis(self) -> aioredis.Redis:
        if self._redis is None:
            raise RuntimeError("the bus is not started")
        return self._redis

    # -- start and stop ------------------------------------------------------------------------

    @property
    def position(self) -> str:
        return self._applied or START

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._subscribe_forever()), loop.create_task(self._watch())]
        try:
            async with asyncio.timeout(START_WAIT):
                await self._healthy.wait()
        except TimeoutError:
            log.warning("bus_degraded_at_start", channel=self.channel)

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        if self._redis is not None:
            with contextlib.suppress(RedisError, OSError, TimeoutError):
                async with asyncio.timeout(COMMAND_TIMEOUT):
                    await self._redis.delete(self._node_key)
            await self._redis.aclose()
            self._redis = None

    # -- the operations ------------------------------------------------------------------------

    async def emit(self, room: str, event: str, data: Any) -> Delivery:
        message = {"to": room, "event": event, "data": data}
        if self.log is None:
            local = await self.local.emit(room, event, data)
            return await self._broadcast("emit", local, message)
        # Applied here too when it comes back through the subscription, in log order.
        local = len(self.local.gateway.hub.members(room))
        try:
            async with asyncio.timeout(COMMAND_TIMEOUT):
                _, receivers = await self.log.append(
                    self.channel, {"op": "emit", "from": self.node_id, **message}
                )
        except (RedisError, OSError, TimeoutError) as exc:
            self._publish_failed("emit", exc)
            return Delivery(await self.local.emit(room, event, data), "unavailable")
        self._metrics.bus_published.labels("emit").inc()
        return Delivery(local, "ok", receivers)

    async def nodes_alive(self, nodes: list[str]) -> list[bool]:
        """Whether each of ``nodes`` is still in the cluster (its key has not expired)."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for node in nodes:
                pipe.exists(self._node_prefix + node)
            return [bool(found) for found in await pipe.execute()]

    async def signal(self, name: str, payload: dict[str, Any]) -> bool:
        message = {"name": name, "payload": payload}
        return await self._publish(self.channel, "signal", message) is not None

    async def announce_resumed(self, socket_id: str) -> None:
        """Tell every node that ``socket_id`` resumed here (an older incarnation must go)."""
        await self._publish(self.channel, "resumed", {"socket": socket_id})

    async def disconnect(self, target: Target, reason: str | None) -> Delivery:
        await self._revoke(target)
        local = await self.local.disconnect(target, reason)
        message = {"kind": target.kind.value, "value": target.value, "reason": reason}
        return await self._broadcast("disconnect", local, message)

    async def ask(self, kind: str, query: dict[str, Any]) -> Answers:
        here = self.local.answer(kind, query)
        try:
            async with asyncio.timeout(COMMAND_TIMEOUT):
                expected = {
                    key.decode().removeprefix(self._node_prefix)
                    async for key in self.redis.scan_iter(match=f"{self._node_prefix}*")
                }
        except (RedisError, OSError, TimeoutError) as exc:
            log.warning("bus_query_failed", kind=kind, error=type(exc).__name__)
            return Answers({self.node_id: here}, [], complete=False)
        expected.discard(self.node_id)
        query_id = uuid.uuid4().hex
        waiting = self._queries[query_id] = _Query(expected)
        try:
            message = {**query, "query": query_id, "reply": self._reply_channel}
            if expected and await self._publish(self.channel, kind, message) is not None:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(QUERY_TIMEOUT):
                        await waiting.done.wait()
        finally:
            del self._queries[query_id]
        others = {node: waiting.answers[node] for node in sorted(waiting.answers)}
        missing = sorted(expected - waiting.answers.keys())
        return Answers({self.node_id: here, **others}, missing, complete=not missing)

    # -- publishing ----------------------------------------------------------------------------

    async def _broadcast(self, kind: str, local: int, message: dict[str, Any]) -> Delivery:
        receivers = await self._publish(self.channel, kind, message)
        if receivers is None:
            return Delivery(local, "unavailable")
        return Delivery(local, "ok", receivers)

    async def _publish(self, channel: str, kind: str, message: dict[str, Any]) -> int | None:
        """Publish; return how many subscribers received it, or ``None`` when it failed."""
        payload = orjson.dumps({"op": kind, "from": self.node_id, **message})
        try:
            async with asyncio.timeout(COMMAND_TIMEOUT):
                receivers = int(await self.redis.publish(channel, payload))
        except (RedisError, OSError, TimeoutError) as exc:
            self._publish_failed(kind, exc)
            return None
        self._metrics.bus_published.labels(kind).inc()
        return receivers

    def _publish_failed(self, kind: str, exc: BaseException) -> None:
        self._metrics.bus_publish_errors.inc()
        self._healthy.clear()
        log.warning("bus_publish_failed", kind=kind, error=type(exc).__name__)

    # -- the subscription ----------------------------------------------------------------------

    async def _subscribe_forever(self) -> None:
        backoff = BACKOFF_MIN
        while True:
            pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self.channel, self._reply_channel)
                self._stale = False
                self._ping = None
                log.info("bus_subscribed", channel=self.channel, node=self.node_id)
                backoff = BACKOFF_MIN
                await self._catch_up()
                await self._send_ping()  # healthy as soon as it comes back, not a round later
                await self._receive(pubsub)
            except _Stale:
                self._metrics.bus_resubscribes.labels("silent").inc()
                log.warning("bus_subscription_silent", channel=self.channel)
            except (RedisError, OSError, TimeoutError) as exc:
                self._metrics.bus_resubscribes.labels("error").inc()
                log.warning("bus_subscription_lost", error=type(exc).__name__, retryIn=backoff)
            finally:
                self._healthy.clear()
                with contextlib.suppress(RedisError, OSError, TimeoutError):
                    async with asyncio.timeout(COMMAND_TIMEOUT):
                        await pubsub.aclose()
                    # Every pooled connection goes too: one that went silent under the
                    # subscription may be as silent under a publish, and would come back.
                    async with asyncio.timeout(COMMAND_TIMEOUT):
                        await self.redis.connection_pool.disconnect()
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, BACKOFF_MAX)

    async def _receive(self, pubsub: aioredis.client.PubSub) -> None:
        while True:
            if self._stale:
                raise _Stale
            # The outer timeout bounds a read that redis-py's own timeout would not end (a
            # connection that stalls half-way through a reply).
            async with asyncio.timeout(_POLL + COMMAND_TIMEOUT):
                message = await pubsub.get_message(timeout=_POLL)
            if message is None or message.get("type") != "message":
                continue
            try:
                await self._apply(orjson.loads(message["data"]))
            except Exception:
                # A malformed message from a peer (another version, a stray publisher) must not
                # end the subscription that every later message needs.
                log.exception("bus_message_failed", channel=str(message.get("channel")))

    async def _catch_up(self) -> None:
        """Apply the emits published while this process was not subscribed (from the log)."""
        if self.log is None:
            return
        if self._applied is None:  # a process that just started owes nobody anything older
            self._applied = await self.log.tail()
            return
        entries = await self.log.entries_after(self._applied)
        if entries is None:
            log.warning("bus_catch_up_trimmed", since=self._applied)
            self._applied = await self.log.tail()
            return
        caught_up = 0
        async for entry in entries:
            await self._apply_logged(entry.message())
            caught_up += 1
        if caught_up:
            log.info("bus_caught_up", events=caught_up)

    async def _apply_logged(self, message: dict[str, Any]) -> None:
        """Apply an emit that has a log position, unless it has been applied already."""
        position = message["offset"]
        if self._applied is not None and position_key(position) <= position_key(self._applied):
            return
        self._applied = position
        if message["from"] != self.node_id:
            self._metrics.bus_received.labels("emit").inc()
        await self.local.emit(message["to"], message["event"], message.get("data"), position)

    async def _apply(self, message: dict[str, Any]) -> None:
        kind = message["op"]
        sender = message["from"]
        if kind == "emit" and "offset" in message:
            await self._apply_logged(message)
            return
        if kind == "ping":
            if sender == self.node_id and self._ping and message["nonce"] == self._ping[0]:
                self._ping = None
                self._healthy.set()
            return
        if sender == self.node_id:
            return  # applied locally before it was published
        self._metrics.bus_received.labels(kind).inc()
        if kind == "emit":
            await self.local.emit(message["to"], message["event"], message["data"])
        elif kind == "disconnect":
            target = Target(TargetKind(message["kind"]), message["value"])
            await self.local.disconnect(target, message["reason"])
        elif kind == "resumed":
            if self.recovery is not None:
                self.recovery.resumed_elsewhere(message["socket"])
        elif kind == "signal":
            handler = self._signals.get(message["name"])
            if handler is not None:
                await handler(message["payload"])
        elif kind in self.local.answers:
            answer = {"query": message["query"], "answer": self.local.answer(kind, message)}
            await self._publish(message["reply"], f"{kind}-answer", answer)
        elif kind.endswith("-answer"):
            query = self._queries.get(message["query"])
            if query is not None:
                query.answers[sender] = message["answer"]
                if query.expected <= query.answers.keys():
                    query.done.set()

    # -- the watchdog --------------------------------------------------------------------------

    async def _watch(self) -> None:
        while True:
            now = time.monotonic()
            if self._ping is not None and now - self._ping[1] > PING_TIMEOUT and not self._stale:
                self._stale = True
                self._healthy.clear()
            try:
                async with asyncio.timeout(COMMAND_TIMEOUT):
                    await self.redis.set(self._node_key, b"1", ex=NODE_TTL)
            except (RedisError, OSError, TimeoutError):
                self._healthy.clear()  # the publish below says the rest
            if self._ping is None:
                await self._send_ping()
            await asyncio.sleep(PING_INTERVAL)

    async def _send_ping(self) -> None:
        nonce = uuid.uuid4().hex
        self._ping = (nonce, time.monotonic())
        if await self._publish(self.channel, "ping", {"nonce": nonce}) is None:
            self._ping = None  # nothing in flight: the next round tries again


def open_bus(gateway: Gateway, settings: Settings) -> Bus:
    """:class:`RedisBus` when ``REDIS_URL`` is set, else :class:`LocalBus`; each with its
    recovery log when ``RECOVERY_WINDOW`` is not 0."""
    local = LocalNode(gateway, node_id())
    window, max_events = settings.recovery_window, settings.recovery_max_events
    if settings.redis_url:
        return RedisBus(
            local,
            settings.redis_url,
            settings.redis_prefix,
            gateway.metrics,
            recovery_window=window,
            recovery_max_events=max_events,
        )
    log = MemoryLog(max_events=max_events, window=window, origin=local.id) if window > 0 else None
    return LocalBus(local, log)


BUS_KEY = web.AppKey("bus", Bus)
