"""Long answers in progress, per socket, and the node producing each.

A resumed client is sent what it missed and then the live rest of every answer still being
produced, wherever its producer runs. If the producer's node died (a SIGKILL, a crash), nothing
would ever come: the client would wait forever. So each producer registers its answers here, and
the node where the socket resumes asks which of them lost their producer
(:meth:`StreamRegistry.orphans`), once at the resume and then while any stays open.

- :class:`MemoryStreams`: one process. A resumed socket is served by the process that produces
  its answers, and if that process died its memory is gone with it: nothing to register.
- :class:`RedisStreams`: a hash per socket, ``<REDIS_PREFIX>:recovery:streams:<socketId>``,
  ``streamId -> {"node", "language"}``; a producer is alive while the bus says its node is.
"""

from __future__ import annotations

import abc
from collections.abc import Awaitable, Callable

import orjson
from redis import asyncio as aioredis

__all__ = ["MemoryStreams", "RedisStreams", "StreamRegistry"]

#: Seconds a socket's registry outlives its last change: a producer that died cannot clean up.
REGISTRY_TTL = 24 * 3600


class StreamRegistry(abc.ABC):
    """Which answers of a socket are being produced, and by whom."""

    @abc.abstractmethod
    async def opened(self, socket_id: str, stream_id: str, language: str) -> None:
        """This node started producing ``stream_id`` for ``socket_id``."""

    @abc.abstractmethod
    async def closed(self, socket_id: str, stream_id: str) -> None:
        """``stream_id`` ended (its last event was sent)."""

    @abc.abstractmethod
    async def producer(self, socket_id: str, stream_id: str) -> str | None:
        """The node producing ``stream_id`` for ``socket_id``, if it is registered."""

    @abc.abstractmethod
    async def orphans(self, socket_id: str) -> tuple[dict[str, str], int]:
        """``({streamId: language} whose producer is gone, streams still open)``; each orphan
        is reported to one caller only (it is removed)."""


class MemoryStreams(StreamRegistry):
    """One process: no answer can outlive its producer and still be resumed."""

    async def opened(self, socket_id: str, stream_id: str, language: str) -> None:
        pass

    async def closed(self, socket_id: str, stream_id: str) -> None:
        pass

    async def producer(self, socket_id: str, stream_id: str) -> str | None:
        return None

    async def orphans(self, socket_id: str) -> tuple[dict[str, str], int]:
        return {}, 0


class RedisStreams(StreamRegistry):
    """The cluster's registry (see the module docstring)."""

    def __init__(
        self,
        redis: aioredis.Redis,
        prefix: str,
        node: str,
        alive: Callable[[list[str]], Awaitable[list[bool]]],
    ) -> None:
        self._redis = redis
        self._prefix = f"{prefix}:recovery:streams:"
        self._node = node
        self._alive = alive

    async def opened(self, socket_id: str, stream_id: str, language: str) -> None:
        key = self._prefix + socket_id
        value = orjson.dumps({"node": self._node, "language": language})
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hset(key, stream_id, value)
            pipe.expire(key, REGISTRY_TTL)
            await pipe.execute()

    async def closed(self, socket_id: str, stream_id: str) -> None:
        await self._redis.hdel(self._prefix + socket_id, stream_id)

    async def producer(self, socket_id: str, stream_id: str) -> str | None:
        raw = await self._redis.hget(self._prefix + socket_id, stream_id)
        return None if raw is None else str(orjson.loads(raw)["node"])

    async def orphans(self, socket_id: str) -> tuple[dict[str, str], int]:
        key = self._prefix + socket_id
        raw = await self._redis.hgetall(key)
        streams = {_text(k): orjson.loads(v) for k, v in raw.items()}
        if not streams:
            return {}, 0
        producers = sorted({entry["node"] for entry in streams.values()})
        living = dict(zip(producers, await self._alive(producers), strict=True))
        orphans = {}
        for stream_id, entry in streams.items():
            # HDEL answers 1 to one caller only: an orphan is announced once.
            if not living[entry["node"]] and await self._redis.hdel(key, stream_id):
                orphans[stream_id] = entry["language"]
        return orphans, len(streams) - len(orphans)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
