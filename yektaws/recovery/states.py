"""Saved connection states: what a resumed connection gets back, for ``RECOVERY_WINDOW``.

A state is written when a recoverable connection opens, not only when it ends: a node killed
with SIGKILL saves nothing at the end, and its clients must still be able to resume elsewhere.
While the connection lives its state is kept fresh (:meth:`StateStore.refresh`, batched); when it
ends abnormally (transport lost, ping timeout, the drain of a deploy) the state records the last
position delivered and expires ``RECOVERY_WINDOW`` later; when it ends on purpose (the client
closed, the session expired or was revoked, the server API disconnected it) the state is dropped
and nobody can resume it.

Each open connection is one *incarnation* of its state: ending or taking a state names the
incarnation, so the late end of a connection that was already taken over by a resume elsewhere
cannot drop or overwrite its successor's state.

Revocations: the server API may end a user's, a token's or a socket's connections while some of
them are away. :meth:`StateStore.revoke` remembers that for ``RECOVERY_WINDOW``, and a state saved
before the revocation is not resumed.

A state never holds a token in clear: only its SHA-256 digest, to check that the client resuming
presents the same session.

- :class:`MemoryStates`: in this process (no ``REDIS_URL``).
- :class:`RedisStates`: keys ``<REDIS_PREFIX>:recovery:state:<pid>`` (any node can resume).
"""

from __future__ import annotations

import abc
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import asdict, dataclass, replace
from typing import Any

import orjson
from redis import asyncio as aioredis

__all__ = ["MemoryStates", "RedisStates", "SavedState", "StateStore"]


@dataclass(frozen=True, slots=True)
class SavedState:
    """What a resume restores. ``pid`` is the client's handle on it (opaque, unguessable)."""

    pid: str
    incarnation: str
    socket_id: str
    protocol: str
    #: The Socket.IO namespace (``""`` for native connections).
    namespace: str
    user_id: str | None
    token_digest: str
    rooms: tuple[str, ...]
    #: The node that holds (or last held) the connection.
    node: str
    #: Wall-clock time the incarnation began (compared with revocations).
    since: float
    #: The position the incarnation started from: where a client that holds no position (it
    #: received no recoverable event) resumes from.
    start: str
    #: The last position delivered, recorded when the connection ended.
    offset: str | None = None

    def to_json(self) -> bytes:
        return orjson.dumps(asdict(self))

    @classmethod
    def from_json(cls, raw: bytes | str) -> SavedState:
        fields = orjson.loads(raw)
        fields["rooms"] = tuple(fields["rooms"])
        return cls(**fields)

    def revoked_by(self, revocations: dict[str, float]) -> bool:
        """Whether any of ``revocations`` (target key -> when) came after this incarnation."""
        return any(revocations.get(key, 0.0) >= self.since for key in revocation_keys_of(self))


def revocation_keys_of(state: SavedState) -> list[str]:
    keys = [f"socket:{state.socket_id}", f"token:{state.token_digest}"]
    if state.user_id is not None:
        keys.append(f"user:{state.user_id}")
    return keys


class StateStore(abc.ABC):
    """Where saved states live for ``window`` seconds after their connection ended."""

    def __init__(self, window: float) -> None:
        self.window = window

    @abc.abstractmethod
    async def save(self, state: SavedState) -> None:
        """Record the state of a connection that just opened (kept while it lives)."""

    @abc.abstractmethod
    async def refresh(self, states: Iterable[SavedState]) -> None:
        """Keep the states of live connections from expiring (called periodically)."""

    @abc.abstractmethod
    async def suspend(self, state: SavedState, offset: str | None) -> None:
        """The connection ended abnormally: keep the state ``window`` seconds, with ``offset``."""

    @abc.abstractmethod
    async def drop(self, state: SavedState) -> None:
        """The connection ended on purpose: nobody may resume it."""

    @abc.abstractmethod
    async def get(self, pid: str) -> SavedState | None:
        """The state named ``pid``, if it is still kept."""

    @abc.abstractmethod
    async def take(self, state: SavedState, successor: SavedState) -> bool:
        """Replace ``state`` by ``successor`` if nobody else took it first; True if we did."""

    @abc.abstractmethod
    async def revoke(self, key: str) -> None:
        """Remember for ``window`` seconds that connections named by ``key`` were ended."""

    @abc.abstractmethod
    async def revocations(self, state: SavedState) -> dict[str, float]:
        """The revocations that could concern ``state`` (key -> when)."""


class MemoryStates(StateStore):
    """States of this process's connections, in a dict.

    Every suspended state lives the same ``window``, so expiries come in the order they were
    set: a FIFO of them makes each sweep cost only what has expired, not one pass over every
    state at each handshake.
    """

    def __init__(self, window: float) -> None:
        super().__init__(window)
        #: pid -> (state, monotonic expiry; None while the connection lives)
        self._states: dict[str, tuple[SavedState, float | None]] = {}
        self._expiring: deque[tuple[float, str]] = deque()
        self._revoked: dict[str, float] = {}  # key -> when (wall clock)
        self._revocations_expiring: deque[tuple[float, str, float]] = deque()

    def _sweep(self) -> None:
        now = time.monotonic()
        expiring = self._expiring
        while expiring and expiring[0][0] <= now:
            expires, pid = expiring.popleft()
            held = self._states.get(pid)
            if held is not None and held[1] == expires:
                del self._states[pid]
        revoking = self._revocations_expiring
        while revoking and revoking[0][0] <= now:
            _, key, when = revoking.popleft()
            if self._revoked.get(key) == when:
                del self._revoked[key]

    def __len__(self) -> int:
        self._sweep()
        return len(self._states)

    async def save(self, state: SavedState) -> None:
        self._sweep()
        self._states[state.pid] = (state, None)

    async def refresh(self, states: Iterable[SavedState]) -> None:
        self._sweep()  # live states do not expire here: nothing else to do

    def _current(self, state: SavedState) -> bool:
        held = self._states.get(state.pid)
        return held is not None and held[0].incarnation == state.incarnation

    async def suspend(self, state: SavedState, offset: str | None) -> None:
        if self._current(state):
            expires = time.monotonic() + self.window
            self._states[state.pid] = (replace(state, offset=offset), expires)
            self._expiring.append((expires, state.pid))

    async def drop(self, state: SavedState) -> None:
        if self._current(state):
            del self._states[state.pid]

    async def get(self, pid: str) -> SavedState | None:
        self._sweep()
        held = self._states.get(pid)
        return None if held is None else held[0]

    async def take(self, state: SavedState, successor: SavedState) -> bool:
        if not self._current(state):
            return False
        self._states[state.pid] = (successor, None)
        return True

    async def revoke(self, key: str) -> None:
        when = time.time()
        self._revoked[key] = when
        self._revocations_expiring.append((time.monotonic() + self.window, key, when))

    async def revocations(self, state: SavedState) -> dict[str, float]:
        self._sweep()
        return {
            key: self._revoked[key] for key in revocation_keys_of(state) if key in self._revoked
        }


# KEYS[1] the state; ARGV[1] the incarnation expected, ARGV[2] the new value ("" deletes),
# ARGV[3] its time to live in ms. Compare-and-set: a state is changed only by its incarnation.
_COMPARE_AND_SET = """
local current = redis.call('GET', KEYS[1])
if not current then return 0 end
if cjson.decode(current)['incarnation'] ~= ARGV[1] then return 0 end
if ARGV[2] == '' then
  redis.call('DEL', KEYS[1])
else
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
end
return 1
"""


class RedisStates(StateStore):
    """States in Redis, so that a connection may resume on any node, after a restart too."""

    def __init__(self, redis: aioredis.Redis, prefix: str, window: float) -> None:
        super().__init__(window)
        self._redis = redis
        self._prefix = f"{prefix}:recovery:"
        self._compare_and_set = redis.register_script(_COMPARE_AND_SET)

    def _key(self, pid: str) -> str:
        return f"{self._prefix}state:{pid}"

    @property
    def _ttl_ms(self) -> int:
        return max(1, int(self.window * 1000))

    async def save(self, state: SavedState) -> None:
        await self._redis.set(self._key(state.pid), state.to_json(), px=self._ttl_ms)

    async def refresh(self, states: Iterable[SavedState]) -> None:
        async with self._redis.pipeline(transaction=False) as pipe:
            for state in states:
                pipe.pexpire(self._key(state.pid), self._ttl_ms)
            await pipe.execute()

    async def _replace(self, state: SavedState, value: bytes) -> bool:
        changed = await self._compare_and_set(
            keys=[self._key(state.pid)], args=[state.incarnation, value, self._ttl_ms]
        )
        return bool(changed)

    async def suspend(self, state: SavedState, offset: str | None) -> None:
        await self._replace(state, replace(state, offset=offset).to_json())

    async def drop(self, state: SavedState) -> None:
        await self._replace(state, b"")

    async def get(self, pid: str) -> SavedState | None:
        raw = await self._redis.get(self._key(pid))
        return None if raw is None else SavedState.from_json(raw)

    async def take(self, state: SavedState, successor: SavedState) -> bool:
        return await self._replace(state, successor.to_json())

    async def revoke(self, key: str) -> None:
        await self._redis.set(f"{self._prefix}revoked:{key}", repr(time.time()), px=self._ttl_ms)

    async def revocations(self, state: SavedState) -> dict[str, float]:
        keys = revocation_keys_of(state)
        values: list[Any] = await self._redis.mget([f"{self._prefix}revoked:{k}" for k in keys])
        return {key: float(value) for key, value in zip(keys, values, strict=True) if value}
