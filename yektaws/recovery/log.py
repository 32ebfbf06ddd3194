"""The recovery log: every recoverable event, in one order, with the position it got there.

A recoverable event is one pushed to a room (the server API's ``/emit``, the bus) or streamed by
an AI answer; a direct reply to a client's own request is not (Socket.IO does not store
acknowledged packets either). Each gets a *position* (an "offset" on the wire): an opaque string
``"<milliseconds>-<sequence>"``, increasing in the order the events were delivered. A client
that comes back says the last position it saw, and is sent what the log holds after it for its
rooms.

Two implementations, chosen by ``REDIS_URL``:

- :class:`MemoryLog`: an in-process ring, for one process.
- :class:`RedisLog`: one Redis Stream (``<REDIS_PREFIX>:recovery:log``) shared by every node.
  Appending and publishing on the bus are one Lua script, so the order in the stream is the
  order in which every node receives the events, and no event is in one without the other.

Both are trimmed by count (``RECOVERY_MAX_EVENTS``) and by age (``RECOVERY_WINDOW``). Whether a
position can still be served never errs towards a silent gap: a position after which some event
may have been trimmed is refused (the client reloads its state instead of missing something).
The ring knows the newest position it trimmed; the stream is judged by its first entry (see
:func:`_served`).
"""

from __future__ import annotations

import abc
import time
from collections import deque
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from typing import Any

import orjson
from redis import asyncio as aioredis

__all__ = [
    "START",
    "EventLog",
    "LogEntry",
    "MemoryLog",
    "RedisLog",
    "position_key",
]

#: The position before anything: a client that saw nothing yet resumes from here.
START = "0-0"
#: Entries read from Redis per round trip when replaying.
READ_PAGE = 500

PositionKey = tuple[int, int]


def position_key(position: str) -> PositionKey:
    """A position as a comparable pair; ``ValueError`` for anything that is not one."""
    milliseconds, sep, sequence = position.partition("-")
    if not sep or not milliseconds.isdigit() or not sequence.isdigit():
        raise ValueError(f"not a position: {position!r}")
    return int(milliseconds), int(sequence)


@dataclass(frozen=True, slots=True)
class LogEntry:
    """One recoverable event: where it went, what it was, and its position."""

    position: str
    room: str
    event: str
    data: Any
    #: The node that produced it (an AI answer's producer, the node the server API called).
    origin: str

    def message(self) -> dict[str, Any]:
        """The entry as the bus carries it (see :meth:`RedisLog.append`)."""
        return {
            "op": "emit",
            "offset": self.position,
            "from": self.origin,
            "to": self.room,
            "event": self.event,
            "data": self.data,
        }


class EventLog(abc.ABC):
    """The ordered, trimmed log of recoverable events."""

    def __init__(self, *, max_events: int, window: float) -> None:
        self.max_events = max_events
        self.window = window

    @abc.abstractmethod
    async def entries_after(self, position: str) -> AsyncIterator[LogEntry] | None:
        """Every entry after ``position``, oldest first; ``None`` if some may have been trimmed
        (or ``position`` is not one of this log's)."""

    async def serves(self, position: str) -> bool:
        """Whether everything after ``position`` is still here (a resume from it is exact)."""
        return await self.entries_after(position) is not None

    async def missed(self, position: str, rooms: Iterable[str]) -> list[LogEntry] | None:
        """The entries after ``position`` for any of ``rooms``; ``None`` when it cannot say."""
        wanted = set(rooms)
        entries = await self.entries_after(position)
        if entries is None:
            return None
        return [entry async for entry in entries if entry.room in wanted]

    @abc.abstractmethod
    async def stats(self) -> tuple[int, float]:
        """``(entries held, age in seconds of the oldest)``: the metrics' view."""


class MemoryLog(EventLog):
    """The log of one process: a ring of at most ``max_events`` entries younger than ``window``.

    Positions are ``"<start ms>-<n>"``: the process's start time keeps a position from an
    earlier process from ever matching one of this process's.
    """

    def __init__(self, *, max_events: int, window: float, origin: str) -> None:
        super().__init__(max_events=max_events, window=window)
        self._origin = origin
        self._epoch = int(time.time() * 1000)
        self._sequence = 0
        #: (sequence, monotonic time appended, entry)
        self._ring: deque[tuple[int, float, LogEntry]] = deque()
        #: The newest sequence number trimmed away (0: nothing yet).
        self._trimmed = 0

    @property
    def tail(self) -> str:
        """The position of the newest entry (or of the start, before any)."""
        return f"{self._epoch}-{self._sequence}"

    def append(self, room: str, event: str, data: Any) -> LogEntry:
        self._sequence += 1
        now = time.monotonic()
        entry = LogEntry(f"{self._epoch}-{self._sequence}", room, event, data, self._origin)
        self._ring.append((self._sequence, now, entry))
        self._trim(now)
        return entry

    def _trim(self, now: float) -> None:
        ring = self._ring
        oldest_allowed = now - self.window
        while ring and (len(ring) > self.max_events or ring[0][1] < oldest_allowed):
            self._trimmed = ring.popleft()[0]

    def _sequence_of(self, position: str) -> int | None:
        try:
            epoch, sequence = position_key(position)
        except ValueError:
            return None
        if (epoch, sequence) == (0, 0):
            return 0 if self._trimmed == 0 else None  # "nothing seen" is fine until a trim
        if epoch != self._epoch or sequence > self._sequence:
            return None
        return sequence

    async def entries_after(self, position: str) -> AsyncIterator[LogEntry] | None:
        self._trim(time.monotonic())
        sequence = self._sequence_of(position)
        if sequence is None or sequence < self._trimmed:
            return None
        selected = [entry for number, _, entry in self._ring if number > sequence]
        return _iterate(selected)

    async def stats(self) -> tuple[int, float]:
        self._trim(time.monotonic())
        if not self._ring:
            return 0, 0.0
        return len(self._ring), time.monotonic() - self._ring[0][1]


async def _iterate(entries: list[LogEntry]) -> AsyncIterator[LogEntry]:
    for entry in entries:
        yield entry


# The count trim is approximate (whole stream nodes: cheaper, and it only ever keeps more), the
# age trim exact (it removes from the head, so it is cheap too). KEYS[1] the stream, KEYS[2] the
# bus channel; ARGV[1] max entries, ARGV[2] window in ms,
# ARGV[3] the message as a JSON object (without its offset). Returns the new entry's id and how
# many subscribers the publish reached.
# The id is spliced into the published JSON as its first member, so the bus message carries it.
_APPEND = """
local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', 'm', ARGV[3])
local ms = tonumber(string.match(id, '^(%d+)-'))
redis.call('XTRIM', KEYS[1], 'MINID', tostring(ms - tonumber(ARGV[2])))
local message = '{"offset":"' .. id .. '",' .. string.sub(ARGV[3], 2)
local receivers = redis.call('PUBLISH', KEYS[2], message)
return {id, receivers}
"""


class RedisLog(EventLog):
    """The log of the cluster: one Redis Stream, appended to and published from in one script."""

    def __init__(
        self, redis: aioredis.Redis, prefix: str, *, max_events: int, window: float
    ) -> None:
        super().__init__(max_events=max_events, window=window)
        self._redis = redis
        self.key = f"{prefix}:recovery:log"
        self._append = redis.register_script(_APPEND)

    async def append(self, channel: str, message: dict[str, Any]) -> tuple[str, int]:
        """Append ``message`` (a bus ``emit``) and publish it on ``channel``: ``(its position,
        subscribers reached)``.

        Raises what redis-py raises when Redis cannot be reached: the caller delivers locally.
        """
        payload = orjson.dumps(message)
        position, receivers = await self._append(
            keys=[self.key, channel],
            args=[self.max_events, int(self.window * 1000), payload],
        )
        return _text(position), int(receivers)

    async def tail(self) -> str:
        """The stream's newest id (``START`` when there is no stream yet)."""
        info = await self._info()
        return START if info is None else info["last-generated-id"]

    async def _info(self) -> dict[str, Any] | None:
        try:
            raw = await self._redis.xinfo_stream(self.key)
        except aioredis.ResponseError:  # no such key: nothing was ever appended (or it expired)
            return None
        return {
            _text(key): _text(value) if isinstance(value, bytes) else value
            for key, value in raw.items()
        }

    async def entries_after(self, position: str) -> AsyncIterator[LogEntry] | None:
        try:
            wanted = position_key(position)
        except ValueError:
            return None
        info = await self._info()
        if info is None:
            return _iterate([]) if wanted == (0, 0) else None
        return self._read_from(position) if _served(wanted, info) else None

    async def _read_from(self, position: str) -> AsyncIterator[LogEntry]:
        after = position
        while True:
            page = await self._redis.xrange(self.key, min=f"({after}", max="+", count=READ_PAGE)
            if not page:
                return
            for raw_id, fields in page:
                after = _text(raw_id)
                yield entry_from_message(after, orjson.loads((fields or {})[b"m"]))
            if len(page) < READ_PAGE:
                return

    async def stats(self) -> tuple[int, float]:
        info = await self._info()
        if info is None or not info.get("length"):
            return 0, 0.0
        first = info.get("first-entry")
        if not first:
            return int(info["length"]), 0.0
        first_ms = position_key(_text(first[0]))[0]
        return int(info["length"]), max(0.0, time.time() - first_ms / 1000)


def _served(wanted: PositionKey, info: dict[str, Any]) -> bool:
    """Whether every entry after ``wanted`` is still in the stream ``info`` describes.

    Trimming removes entries from the head only, and Redis does not record the newest entry it
    trimmed (``max-deleted-entry-id`` counts XDEL alone). So a position is served when nothing
    was ever removed, or when it is still in the stream (every later entry then is too); a
    position already trimmed may have had neighbours trimmed after it, and is refused.
    """
    last = position_key(info["last-generated-id"])
    if wanted > last or wanted < position_key(info.get("max-deleted-entry-id") or START):
        return False
    if int(info.get("entries-added", 0)) == int(info.get("length", 0)):
        return True  # nothing was ever trimmed
    first = info.get("first-entry")
    if not first:  # everything aged out: only the very last position lost nothing after it
        return wanted == last
    return wanted >= position_key(_text(first[0]))


def entry_from_message(position: str, message: dict[str, Any]) -> LogEntry:
    """A :class:`LogEntry` from a bus ``emit`` message (as stored, or as published)."""
    return LogEntry(position, message["to"], message["event"], message.get("data"), message["from"])


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
