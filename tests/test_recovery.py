"""Recovery: no recoverable event lost across a dropped connection, on both protocols.

Real gateways (one process on the in-memory log, or two nodes on one Redis), real clients
(aiohttp's WebSocket client for native; the official socket.io-client 4.8 in Node, reconnecting
by itself), and a TCP proxy between them that cuts connections the way a phone changing networks
does: a reset, no WebSocket close. Pushes go through the server API while the client is away.
"""

from __future__ import annotations

import asyncio
import json
import signal
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from fake_model import FakeModel
from support.cluster import API_KEY, call_api, start_node
from support.database import delete_session
from support.gateway import Gateway, free_port, start_gateway
from support.node import _require_node as node_binary
from support.recovery import RecoveringClient as Native
from support.tcpproxy import CuttableProxy, SilenceableProxy

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(90)]

JS = Path(__file__).parent / "js"
FINAL = ("ai:response:complete", "ai:response:error")
MakeToken = Callable[..., str]


# -- fixtures -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def single(database_url: str) -> Iterator[Gateway]:
    """One process: the recovery log and the saved states in memory."""
    process = start_gateway(
        {"DATABASE_URL": database_url, "ADMIN_API_KEY": API_KEY, "ADMIN_PORT": str(free_port())}
    )
    yield process
    process.stop()


@pytest.fixture(scope="module")
def cluster(database_url: str, redis_url: str, fake: FakeModel) -> Iterator[list[Gateway]]:
    """Two nodes on one Redis (the log is a Redis Stream, states are Redis keys)."""
    prefix = f"yektaws-test-{uuid.uuid4().hex[:12]}"
    env = {"AI_BASE_URL": fake.base_url, "AI_MODEL": "fake-model", "AI_RESUME_WINDOW": "3"}
    nodes = [start_node(database_url, redis_url, prefix, **env)]
    try:
        nodes.append(start_node(database_url, redis_url, prefix, **env))
    except BaseException:
        nodes[0].stop()
        raise
    yield nodes
    for node in nodes:
        node.stop()


@pytest.fixture(params=["single", "cluster"])
def topology(request: pytest.FixtureRequest) -> tuple[Gateway, Gateway]:
    """``(where the client connects first, where it resumes)``."""
    if request.param == "single":
        gateway = request.getfixturevalue("single")
        return gateway, gateway
    node_a, node_b = request.getfixturevalue("cluster")
    return node_a, node_b


@pytest.fixture
def proxy_to(request: pytest.FixtureRequest) -> Callable[[Gateway], CuttableProxy]:
    def make(gateway: Gateway) -> CuttableProxy:
        proxy = CuttableProxy(gateway.port)
        request.addfinalizer(proxy.close)
        return proxy

    return make


# -- helpers ------------------------------------------------------------------------------------


async def push(node: Gateway, room: str, n: int, event: str = "notice") -> None:
    status, body = await call_api(
        node, "POST", "/emit", {"to": room, "event": event, "data": {"n": n}}
    )
    assert status == 200, body


class NodeSocketIO:
    """socket.io-client 4.8 in Node (tests/js/recover.mjs), reading what it prints."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process

    @classmethod
    async def start(cls, url: str, token: str) -> NodeSocketIO:
        options = json.dumps({"url": url, "token": token, "path": "/ws", "timeoutMs": 60000})
        process = await asyncio.create_subprocess_exec(
            node_binary(),
            str(JS / "recover.mjs"),
            options,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            cwd=JS,
        )
        return cls(process)

    async def line(self, timeout: float = 10.0) -> dict[str, Any]:
        assert self.process.stdout is not None
        raw = await asyncio.wait_for(self.process.stdout.readline(), timeout)
        assert raw, "the Node client exited"
        return json.loads(raw)

    async def until(self, kind: str, timeout: float = 10.0) -> tuple[dict[str, Any], list[Any]]:
        """The next line of ``kind``, and every line before it."""
        before = []
        async with asyncio.timeout(timeout):
            while (line := await self.line()).get("type") != kind:
                before.append(line)
        return line, before

    async def stop(self) -> None:
        if self.process.returncode is None:
            self.process.kill()
            await self.process.wait()


def notices(lines: list[dict[str, Any]]) -> list[int]:
    return [line["args"][0]["n"] for line in lines if line.get("name") == "notice"]


# -- native -------------------------------------------------------------------------------------


async def test_native_resume_delivers_each_missed_event_once_in_order_then_live_ones(
    topology: tuple[Gateway, Gateway], proxy_to: Callable[..., CuttableProxy], make_token: MakeToken
) -> None:
    first, second = topology
    user = f"user:{(user_id := 9100 + hash(first.port) % 800)}"
    token = make_token(user_id=user_id, logged_in=True)
    proxy = proxy_to(first)
    client = Native()
    hello = await client.connect(proxy.port, token)
    assert hello["recovered"] is False
    await push(first, user, 1)
    assert await client.notices(1) == [1]

    proxy.cut()
    await first.wait_for_log_async("disconnect", socketId=hello["socketId"])
    for n in (2, 3, 4):
        await push(second, user, n)

    again = await client.connect(second.port, token, resume=True)
    assert again["recovered"] is True
    assert again["socketId"] == hello["socketId"]
    assert await client.notices(3) == [2, 3, 4]
    await push(first, user, 5)
    assert await client.notices(1) == [5]
    await client.quiet()
    offsets = [frame["offset"] for frame in client.frames if frame["event"] == "notice"]
    assert len(offsets) == len(set(offsets)) == 5
    await client.close()


async def test_native_clients_that_do_not_ask_see_no_recovery_fields(
    single: Gateway, make_token: MakeToken
) -> None:
    import aiohttp

    token = make_token(user_id=9001, logged_in=True)
    async with (
        aiohttp.ClientSession() as http,
        http.ws_connect(f"ws://127.0.0.1:{single.port}/ws?token={token}") as ws,
    ):
        hello = await ws.receive_json()
        assert set(hello) == {"event", "data"}
        assert set(hello["data"]) == {"message", "socketId", "isLoggedIn", "protocol"}
        await push(single, "user:9001", 1)
        assert await ws.receive_json() == {"event": "notice", "data": {"n": 1}}


# -- Socket.IO: the stock client ------------------------------------------------------------------


async def test_socketio_client_recovers_with_same_id_and_every_missed_event(
    topology: tuple[Gateway, Gateway], proxy_to: Callable[..., CuttableProxy], make_token: MakeToken
) -> None:
    first, second = topology
    user_id = 9900 + hash(first.port) % 90
    user = f"user:{user_id}"
    proxy = proxy_to(first)
    client = await NodeSocketIO.start(f"http://127.0.0.1:{proxy.port}", make_token(user_id=user_id))
    try:
        connect, _ = await client.until("connect")
        assert connect["recovered"] is False
        greeting = await client.line()
        assert greeting["name"] == "connected" and len(greeting["args"]) == 1
        await push(first, user, 0)
        live = await client.line()
        assert notices([live]) == [0] and isinstance(live["args"][-1], str)  # its offset

        proxy.cut()
        await first.wait_for_log_async("disconnect", socketId=connect["id"])
        for n in (1, 2, 3):
            await push(second, user, n)
        proxy.retarget(second.port)
        proxy.mend()

        again, before = await client.until("connect")
        assert notices(before) == []
        assert again["recovered"] is True
        assert again["id"] == connect["id"]
        greeting = await client.line()
        assert greeting["name"] == "connected" and greeting["args"][0]["recovered"] is True
        missed = [await client.line() for _ in range(3)]
        assert notices(missed) == [1, 2, 3]
        await push(first, user, 4)
        assert notices([await client.line()]) == [4]
    finally:
        await client.stop()


async def test_socketio_client_that_received_nothing_yet_still_recovers(
    single: Gateway, proxy_to: Callable[..., CuttableProxy], make_token: MakeToken
) -> None:
    proxy = proxy_to(single)
    client = await NodeSocketIO.start(f"http://127.0.0.1:{proxy.port}", make_token(user_id=9801))
    try:
        connect, _ = await client.until("connect")
        await client.line()  # the greeting: no recoverable event, so no offset yet
        proxy.cut()
        await single.wait_for_log_async("disconnect", socketId=connect["id"])
        await push(single, "user:9801", 1)
        proxy.mend()
        again, _ = await client.until("connect")
        assert (again["recovered"], again["id"]) == (True, connect["id"])
        await client.line()  # the greeting
        assert notices([await client.line()]) == [1]
    finally:
        await client.stop()


# -- across a graceful restart ---------------------------------------------------------------------


async def test_a_deploy_loses_nothing(
    database_url: str, redis_url: str, make_token: MakeToken
) -> None:
    prefix = f"yektaws-test-{uuid.uuid4().hex[:12]}"
    old = start_node(database_url, redis_url, prefix)
    survivor = start_node(database_url, redis_url, prefix)
    try:
        token = make_token(user_id=8800, logged_in=True)
        client = Native()
        hello = await client.connect(old.port, token)
        assert old.stop() == 0  # SIGTERM: the drain closes with 1001 and keeps the state
        for n in (1, 2):
            await push(survivor, "user:8800", n)
        new = start_node(database_url, redis_url, prefix)
        try:
            again = await client.connect(new.port, token, resume=True)
            assert (again["recovered"], again["socketId"]) == (True, hello["socketId"])
            assert await client.notices(2) == [1, 2]
        finally:
            await client.close()
            new.stop()
    finally:
        survivor.stop()
        old.stop()


# -- resumes that cannot be honoured ---------------------------------------------------------------


@pytest.fixture(scope="module")
def strict(database_url: str) -> Iterator[Gateway]:
    """A gateway that keeps little: 3 events, for 2 seconds."""
    process = start_gateway(
        {
            "DATABASE_URL": database_url,
            "ADMIN_API_KEY": API_KEY,
            "ADMIN_PORT": str(free_port()),
            "RECOVERY_MAX_EVENTS": "3",
            "RECOVERY_WINDOW": "2",
        }
    )
    yield process
    process.stop()


async def _away(gateway: Gateway, token: str, proxy: CuttableProxy) -> tuple[Native, str]:
    client = Native()
    hello = await client.connect(proxy.port, token)
    proxy.cut()
    await gateway.wait_for_log_async("disconnect", socketId=hello["socketId"])
    return client, hello["socketId"]


@pytest.mark.parametrize("case", ["window passed", "log trimmed", "unknown pid", "server API"])
async def test_a_resume_that_cannot_be_honoured_connects_fresh(
    case: str, strict: Gateway, proxy_to: Callable[..., CuttableProxy], make_token: MakeToken
) -> None:
    user_id = {"window passed": 7701, "log trimmed": 7702, "unknown pid": 7703}.get(case, 7704)
    token = make_token(user_id=user_id, logged_in=True)
    client, socket_id = await _away(strict, token, proxy_to(strict))
    if case == "window passed":
        await asyncio.sleep(2.5)
    elif case == "log trimmed":
        for n in range(5):
            await push(strict, f"user:{user_id}", n)
    elif case == "unknown pid":
        client.pid = "never-issued"
    else:
        status, _ = await call_api(strict, "POST", "/disconnect", {"user": str(user_id)})
        assert status == 200

    again = await client.connect(strict.port, token, resume=True)

    assert again["recovered"] is False
    assert again["socketId"] != socket_id
    await client.quiet()  # no replay, not even a partial one
    await client.close()


async def test_a_client_that_closed_on_purpose_cannot_resume(
    single: Gateway, make_token: MakeToken
) -> None:
    token = make_token(user_id=7705, logged_in=True)
    client = Native()
    hello = await client.connect(single.port, token)
    await client.close()  # a close frame: the user logged out, or the app closed the socket
    await single.wait_for_log_async("disconnect", socketId=hello["socketId"])
    again = await client.connect(single.port, token, resume=True)
    assert (again["recovered"], again["socketId"] != hello["socketId"]) == (False, True)
    await client.close()


async def test_a_session_ended_meanwhile_is_refused(
    single: Gateway,
    proxy_to: Callable[..., CuttableProxy],
    make_token: MakeToken,
    database_url: str,
) -> None:
    import aiohttp

    token = make_token(user_id=7706, logged_in=True)
    client, _ = await _away(single, token, proxy_to(single))
    delete_session(database_url, token)
    await asyncio.sleep(5.5)  # the gateway's positive session cache (SESSION_CACHE_TTL) expires
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await client.connect(single.port, token, resume=True)
    assert refused.value.status == 401
    await client.close()


# -- AI answers ------------------------------------------------------------------------------------


async def test_an_ai_answer_survives_a_cut_and_finishes_on_the_other_node(
    cluster: list[Gateway], proxy_to: Callable[..., CuttableProxy], make_token: MakeToken
) -> None:
    node_a, node_b = cluster
    token = make_token(user_id=6601, logged_in=True)
    proxy = proxy_to(node_a)
    client = Native()
    await client.connect(proxy.port, token)
    tag = await client.ask_ai("[[chunks=20 delay=0.1]]")
    while (await client.next())["event"] != "ai:response:chunk":
        pass  # the second chunk
    proxy.cut()
    await asyncio.sleep(1.0)

    again = await client.connect(node_b.port, token, resume=True)
    assert again["recovered"] is True
    while (await client.next(timeout=10))["event"] not in FINAL:
        pass

    answer = [f for f in client.frames if f["data"].get("messageId") == tag]
    assert answer[0]["event"] == "ai:response:start"
    assert answer[-1]["event"] == "ai:response:complete"
    chunks = "".join(f["data"]["chunk"] for f in answer if f["event"] == "ai:response:chunk")
    assert chunks == answer[-1]["data"]["fullResponse"]
    assert chunks == "".join(f"chunk-{i} " for i in range(20))  # nothing missing or doubled
    offsets = [f["offset"] for f in answer]
    assert offsets == sorted(set(offsets), key=lambda o: tuple(map(int, o.split("-"))))
    await client.close()


async def test_ai_cancel_from_the_node_it_resumed_on_stops_the_answer_on_its_producer(
    cluster: list[Gateway],
    proxy_to: Callable[..., CuttableProxy],
    make_token: MakeToken,
    fake: FakeModel,
) -> None:
    node_a, node_b = cluster
    token = make_token(user_id=6604, logged_in=True)
    proxy = proxy_to(node_a)
    client = Native()
    await client.connect(proxy.port, token)
    tag = await client.ask_ai("[[chunks=200 delay=0.1]]")
    proxy.cut()
    assert (await client.connect(node_b.port, token, resume=True))["recovered"] is True

    await client._ws.send_json({"event": "ai:cancel", "data": {"messageId": tag}})
    while (frame := await client.next())["event"] == "ai:response:chunk":
        pass
    assert frame["event"] == "ai:response:error"
    assert (frame["data"]["messageId"], frame["data"]["code"]) == (tag, "cancelled")
    request = next(r for r in fake.requests if tag in r.body["messages"][-1]["content"])
    await asyncio.wait_for(request.disconnected.wait(), 2)
    await client.quiet()
    await client.close()


async def test_an_ai_answer_nobody_resumes_is_cancelled_when_its_window_ends(
    cluster: list[Gateway],
    proxy_to: Callable[..., CuttableProxy],
    make_token: MakeToken,
    fake: FakeModel,
) -> None:
    node_a, _ = cluster
    proxy = proxy_to(node_a)
    client = Native()
    await client.connect(proxy.port, make_token(user_id=6602))
    tag = await client.ask_ai("[[chunks=200 delay=0.1]]")
    proxy.cut()
    request = next(r for r in fake.requests if tag in r.body["messages"][-1]["content"])
    await asyncio.sleep(1.5)
    assert not request.disconnected.is_set()  # still streaming: the client may come back
    await asyncio.wait_for(request.disconnected.wait(), 5)  # AI_RESUME_WINDOW=3 passed
    entry = await node_a.wait_for_log_async("ai_chat", messageId=tag)
    assert entry["outcome"] == "abandoned"
    await client.close()


async def test_an_answer_whose_producer_was_killed_ends_interrupted_not_hanging(
    database_url: str, redis_url: str, fake: FakeModel, make_token: MakeToken
) -> None:
    prefix = f"yektaws-test-{uuid.uuid4().hex[:12]}"
    env = {"AI_BASE_URL": fake.base_url, "AI_MODEL": "fake-model"}
    producer = start_node(database_url, redis_url, prefix, **env)
    other = start_node(database_url, redis_url, prefix, **env)
    try:
        token = make_token(user_id=6603, logged_in=True)
        client = Native()
        await client.connect(producer.port, token)
        tag = await client.ask_ai("[[chunks=100 delay=0.1]]")
        producer.stop(signal.SIGKILL)

        again = await client.connect(other.port, token, resume=True)
        assert again["recovered"] is True  # the state was saved at connect: a SIGKILL keeps it
        while (frame := await client.next(timeout=20))["event"] != "ai:response:error":
            assert frame["event"] == "ai:response:chunk", frame
        assert frame["data"]["messageId"] == tag
        assert (frame["data"]["code"], frame["data"]["retryable"]) == ("interrupted", True)
        await client.quiet()
        await client.close()
    finally:
        other.stop()
        producer.stop(signal.SIGKILL)


@pytest.mark.parametrize("where", ["same node", "other node"])
async def test_a_resume_before_the_gateway_noticed_the_drop_takes_over_and_keeps_the_answer(
    where: str, cluster: list[Gateway], make_token: MakeToken
) -> None:
    """A dead path the gateway has not noticed yet (no reset, no close: silence): the client
    resumes at once, the old connection is dropped, and the answer streams on to the new one,
    past AI_RESUME_WINDOW (3 s here)."""
    node_a, node_b = cluster
    token = make_token(user_id=6605, logged_in=True)
    proxy = SilenceableProxy(node_a.port)
    old, new = Native(), Native()
    try:
        first = await old.connect(proxy.port, token)
        tag = await old.ask_ai("[[chunks=60 delay=0.1]]")
        proxy.silence()
        new.pid, new.offset = old.pid, old.offset
        target = node_a if where == "same node" else node_b
        again = await new.connect(target.port, token, resume=True)
        assert (again["recovered"], again["socketId"]) == (True, first["socketId"])
        while (frame := await new.next(timeout=10))["event"] not in FINAL:
            pass
        assert frame["event"] == "ai:response:complete", frame
        seen = [*old.frames, *new.frames]
        chunks = "".join(
            f["data"]["chunk"]
            for f in seen
            if f["event"] == "ai:response:chunk" and f["data"]["messageId"] == tag
        )
        assert chunks == "".join(f"chunk-{i} " for i in range(60))  # nothing lost or doubled
    finally:
        await new.close()
        proxy.close()
        await old.close()
