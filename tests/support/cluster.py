"""Gateways that form a cluster over Redis, and a client for their server API."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Iterator
from typing import Any

import aiohttp

from support.gateway import Gateway, free_port, start_gateway

__all__ = [
    "API_KEY",
    "admin_port",
    "call_api",
    "ready",
    "start_node",
    "two_nodes",
    "wait_for_broker",
]

#: The server API key of every node these tests start.
API_KEY = "test-admin-key-0123456789"


def start_node(
    database_url: str, redis_url: str, prefix: str, args: list[str] | None = None, **env: str
) -> Gateway:
    """A gateway on PostgreSQL that joins the cluster ``prefix`` on ``redis_url``."""
    return start_gateway(
        {
            "DATABASE_URL": database_url,
            "REDIS_URL": redis_url,
            "REDIS_PREFIX": prefix,
            "ADMIN_API_KEY": API_KEY,
            "ADMIN_PORT": str(free_port()),
            **env,
        },
        args=args,
    )


@contextlib.contextmanager
def two_nodes(database_url: str, redis_url: str, **env: str) -> Iterator[tuple[Gateway, Gateway]]:
    """Nodes A and B of one cluster of their own (a fresh prefix, settings ``env`` on both),
    stopped afterwards."""
    prefix = f"yektaws-test-{uuid.uuid4().hex[:12]}"
    node_a = start_node(database_url, redis_url, prefix, **env)
    try:
        node_b = start_node(database_url, redis_url, prefix, **env)
    except BaseException:
        node_a.stop()
        raise
    try:
        yield node_a, node_b
    finally:
        node_a.stop()
        node_b.stop()


def admin_port(gateway: Gateway) -> int:
    return int(gateway.env["ADMIN_PORT"])


async def call_api(
    gateway: Gateway,
    method: str,
    path: str,
    body: Any = None,
    *,
    key: str | None = API_KEY,
    raw: bytes | None = None,
) -> tuple[int, Any]:
    """``(status, JSON body)`` of one server API request to ``gateway``."""
    headers = {"Authorization": f"Bearer {key}"} if key is not None else {}
    url = f"http://127.0.0.1:{admin_port(gateway)}{path}"
    async with (
        aiohttp.ClientSession() as http,
        http.request(
            method, url, json=body if raw is None else None, data=raw, headers=headers
        ) as response,
    ):
        return response.status, await response.json(content_type=None)


async def ready(gateway: Gateway) -> tuple[int, dict[str, str]]:
    async with aiohttp.ClientSession() as http, http.get(f"{gateway.http_url}/ready") as response:
        return response.status, (await response.json())["checks"]


async def wait_for_broker(gateway: Gateway, state: str, timeout: float) -> float:
    """Seconds until ``/ready`` reports the broker ``state`` (asserting it stays 200)."""
    started = time.monotonic()
    while True:
        status, checks = await ready(gateway)
        assert status == 200, checks  # a broker fault never fails readiness
        if checks["broker"] == state:
            return time.monotonic() - started
        assert time.monotonic() - started < timeout, f"broker still {checks['broker']}"
        await asyncio.sleep(0.1)
