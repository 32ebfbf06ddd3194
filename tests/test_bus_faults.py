"""Broker faults: Redis restarted under running gateways, and a subscription gone silent.

Each test runs its own throwaway ``redis-server`` (or a proxy in front of one), so stopping it
disturbs no other test.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import aiohttp
import pytest

from support.clients import ProtocolClient, connect
from support.cluster import call_api, start_node, wait_for_broker
from support.gateway import Gateway
from support.redis import RedisServer
from support.tcpproxy import SilenceableProxy

pytestmark = pytest.mark.timeout(90)

#: What "within a few seconds" means for delivery to resume after the broker is back.
RECOVERY_BOUND = 8.0


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


async def first_delivery(
    sender: Gateway, receiver: ProtocolClient, room: str, timeout: float
) -> float:
    """Emit to ``room`` through ``sender`` every 0.25 s until ``receiver`` gets one; seconds."""
    started = time.monotonic()
    attempt = 0
    while time.monotonic() - started < timeout:
        attempt += 1
        await call_api(sender, "POST", "/emit", {"to": room, "event": "probe", "data": attempt})
        try:
            await receiver.expect("probe", timeout=0.25)
            return time.monotonic() - started
        except TimeoutError:
            continue
    raise AssertionError(f"nothing delivered within {timeout}s")


@pytest.fixture
def nodes(
    database_url: str, redis_server: RedisServer, redis_prefix: str
) -> Iterator[tuple[Gateway, Gateway]]:
    node_a = start_node(database_url, redis_server.url, redis_prefix)
    node_b = start_node(database_url, redis_server.url, redis_prefix)
    yield node_a, node_b
    node_a.stop()
    node_b.stop()


async def test_redis_restart_degrades_then_delivery_resumes(
    nodes: tuple[Gateway, Gateway], redis_server: RedisServer, make_token: Callable[..., str]
) -> None:
    node_a, node_b = nodes
    token = make_token(user_id=55, logged_in=True)
    async with (
        await connect("native-websocket", node_a.http_url, token) as on_a,
        await connect("socket.io", node_b.http_url, token) as on_b,
    ):
        await on_a.expect("connected")
        await on_b.expect("connected")

        redis_server.stop()
        for node in nodes:
            await wait_for_broker(node, "degraded", timeout=5)
        # Local delivery does not need the broker; the caller is told the rest did not go out.
        status, body = await call_api(
            node_a, "POST", "/emit", {"to": "user:55", "event": "local", "data": 1}
        )
        assert status == 200
        assert (body["localConnections"], body["broker"]) == (1, "unavailable")
        assert await on_a.expect("local") == 1
        async with aiohttp.ClientSession() as http, http.get(f"{node_a.http_url}/health") as live:
            assert live.status == 200

        redis_server.start()
        resumed = await first_delivery(node_a, on_b, "user:55", timeout=RECOVERY_BOUND)
        for node in nodes:
            await wait_for_broker(node, "ok", timeout=RECOVERY_BOUND)
        # Every later message arrives, on both nodes.
        for n in range(20):
            await call_api(node_b, "POST", "/emit", {"to": "user:55", "event": "later", "data": n})
        for client in (on_a, on_b):
            assert [await client.expect("later") for _ in range(20)] == list(range(20))
    assert resumed < RECOVERY_BOUND
    assert node_b.wait_for_log("bus_subscription_lost")
    assert node_b.process.poll() is None and node_a.process.poll() is None


async def test_silent_subscription_is_noticed_and_replaced(
    database_url: str, redis_server: RedisServer, redis_prefix: str, make_token: Callable[..., str]
) -> None:
    proxy = SilenceableProxy(redis_server.port)
    node_a = start_node(database_url, redis_server.url, redis_prefix)
    node_b = start_node(database_url, f"redis://127.0.0.1:{proxy.port}/0", redis_prefix)
    try:
        token = make_token(user_id=56, logged_in=True)
        async with await connect("socket.io", node_b.http_url, token) as on_b:
            await on_b.expect("connected")
            await first_delivery(node_a, on_b, "user:56", timeout=5)

            # B's connections stay open and hear nothing: no error will ever tell it.
            assert proxy.silence() >= 1
            silenced = time.monotonic()
            await wait_for_broker(node_b, "degraded", timeout=6)
            node_b.wait_for_log("bus_subscription_silent", timeout=6)
            resumed = await first_delivery(node_a, on_b, "user:56", timeout=RECOVERY_BOUND)
            await wait_for_broker(node_b, "ok", timeout=RECOVERY_BOUND)
        assert time.monotonic() - silenced < 2 * RECOVERY_BOUND
        assert resumed < RECOVERY_BOUND
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"{node_b.http_url}/metrics") as response,
        ):
            metrics = await response.text()
        assert 'yektaws_bus_resubscribes_total{cause="silent"} 1.0' in metrics
    finally:
        node_a.stop()
        node_b.stop()
        proxy.close()
