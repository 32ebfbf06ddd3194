"""The recovery log and the saved states on their own: each limit crossed, in memory and on a
real Redis (the same assertions for both implementations)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace

import orjson
import pytest
import pytest_asyncio
from redis import asyncio as aioredis

from yektaws.recovery import (
    START,
    EventLog,
    MemoryLog,
    MemoryStates,
    RedisLog,
    RedisStates,
    SavedState,
    StateStore,
    position_key,
)


@pytest_asyncio.fixture
async def redis(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_url)
    yield client
    await client.aclose()


class _Appender:
    """Appends through either log's own path (the Redis one publishes on a channel too)."""

    def __init__(self, log: EventLog, channel: str) -> None:
        self.log = log
        self.channel = channel

    async def __call__(self, room: str, n: int) -> str:
        if isinstance(self.log, MemoryLog):
            return self.log.append(room, "notice", {"n": n}).position
        assert isinstance(self.log, RedisLog)
        message = {"op": "emit", "from": "test", "to": room, "event": "notice", "data": {"n": n}}
        position, _ = await self.log.append(self.channel, message)
        return position


@pytest_asyncio.fixture(params=["memory", "redis"])
async def make_log(request: pytest.FixtureRequest, redis_url: str) -> AsyncIterator:
    clients = []

    def make(max_events: int = 100, window: float = 60.0) -> _Appender:
        prefix = f"yektaws-test-{uuid.uuid4().hex[:12]}"
        if request.param == "memory":
            return _Appender(MemoryLog(max_events=max_events, window=window, origin="t"), "")
        client = aioredis.Redis.from_url(redis_url)
        clients.append(client)
        return _Appender(
            RedisLog(client, prefix, max_events=max_events, window=window), f"{prefix}:bus"
        )

    yield make
    for client in clients:
        await client.aclose()


async def test_missed_events_are_those_after_the_position_for_the_rooms_asked(make_log) -> None:
    append = make_log()
    first = await append("user:1", 1)
    await append("user:2", 2)
    await append("user:1", 3)
    await append("sock", 4)
    missed = await append.log.missed(first, ["user:1", "sock"])
    assert [entry.data["n"] for entry in missed] == [3, 4]
    positions = [position_key(entry.position) for entry in missed]
    assert positions == sorted(positions) and positions[0] > position_key(first)


async def test_a_position_older_than_a_count_trim_is_refused(make_log) -> None:
    append = make_log(max_events=3)
    old = await append("r", 0)
    for n in range(1, 200):  # far past the limit: Redis trims whole nodes of its stream
        kept = await append("r", n)
    assert not await append.log.serves(old)
    assert await append.log.missed(old, ["r"]) is None
    assert await append.log.serves(kept)
    assert await append.log.missed(kept, ["r"]) == []


async def test_a_position_older_than_the_window_is_refused(make_log) -> None:
    append = make_log(window=0.5)
    old = await append("r", 0)
    for n in range(1, 4):
        await append("r", n)  # events after `old` that age out with it
    await asyncio.sleep(0.7)
    recent = await append("r", 4)
    assert not await append.log.serves(old)
    assert await append.log.serves(recent)


async def test_foreign_or_malformed_positions_are_refused(make_log) -> None:
    append = make_log()
    await append("r", 1)
    for position in ["99999999999999-0", "nonsense", "1-2-3", ""]:
        assert not await append.log.serves(position), position


async def test_the_start_is_served_until_something_is_trimmed(make_log) -> None:
    append = make_log(max_events=2)
    # Where a fresh connection starts: the ring's tail in one process, the stream's start.
    start = append.log.tail if isinstance(append.log, MemoryLog) else START
    await append("r", 1)
    assert [e.data["n"] for e in await append.log.missed(start, ["r"])] == [1]


async def test_redis_append_publishes_the_event_with_its_position(
    redis: aioredis.Redis, redis_url: str
) -> None:
    prefix = f"yektaws-test-{uuid.uuid4().hex[:12]}"
    log = RedisLog(redis, prefix, max_events=10, window=60)
    pubsub = redis.pubsub(ignore_subscribe_messages=True)
    await pubsub.subscribe(f"{prefix}:bus")
    position, receivers = await log.append(
        f"{prefix}:bus", {"op": "emit", "from": "n", "to": "r", "event": "e", "data": [1]}
    )
    message = None
    async with asyncio.timeout(3):
        while message is None:
            message = await pubsub.get_message(timeout=1)
    assert receivers == 1
    assert orjson.loads(message["data"]) == {
        "offset": position,
        "op": "emit",
        "from": "n",
        "to": "r",
        "event": "e",
        "data": [1],
    }
    await pubsub.aclose()


# -- saved states --------------------------------------------------------------------------------


@pytest_asyncio.fixture(params=["memory", "redis"])
async def states(request: pytest.FixtureRequest, redis: aioredis.Redis) -> StateStore:
    if request.param == "memory":
        return MemoryStates(window=1.0)
    return RedisStates(redis, f"yektaws-test-{uuid.uuid4().hex[:12]}", window=1.0)


def a_state(**changes: object) -> SavedState:
    state = SavedState(
        pid=uuid.uuid4().hex,
        incarnation="one",
        socket_id="s1",
        protocol="native-websocket",
        namespace="",
        user_id="42",
        token_digest="d" * 64,
        rooms=("s1", "user:42"),
        node="n1",
        since=time.time(),
        start="5-0",
    )
    return replace(state, **changes)  # type: ignore[arg-type]


async def test_a_live_state_stays_and_a_suspended_one_expires(states: StateStore) -> None:
    live, lost = a_state(), a_state()
    await states.save(live)
    await states.save(lost)
    await states.suspend(lost, "7-0")
    assert (await states.get(lost.pid)).offset == "7-0"
    await asyncio.sleep(0.6)
    await states.refresh([live])  # a live connection's state is refreshed while it lives
    await asyncio.sleep(0.6)
    assert await states.get(lost.pid) is None
    assert await states.get(live.pid) == live


async def test_only_the_current_incarnation_changes_a_state(states: StateStore) -> None:
    state = a_state()
    await states.save(state)
    successor = replace(state, incarnation="two", node="n2")
    assert await states.take(state, successor)
    assert not await states.take(state, replace(state, incarnation="three"))  # taken already
    await states.drop(state)  # the late end of the replaced connection
    await states.suspend(state, "9-0")
    assert await states.get(state.pid) == successor
    await states.drop(successor)
    assert await states.get(state.pid) is None


async def test_a_revocation_after_the_state_began_refuses_it(states: StateStore) -> None:
    before = a_state()
    await states.revoke("user:42")
    await asyncio.sleep(0.01)
    after = a_state(since=time.time())
    assert before.revoked_by(await states.revocations(before))
    assert not after.revoked_by(await states.revocations(after))
    assert not a_state(user_id="43").revoked_by(await states.revocations(a_state(user_id="43")))
