"""Chaos against real processes: what users see when the machine, a dependency or a limit fails.

Each test runs the real gateway as a subprocess and breaks one thing for real: the CPU, the
process's file descriptors, PostgreSQL, Redis, the disk under the embedded store. The assertions
are the ones a user or an operator would make: the right answer for each client, the process still
serving, no traceback flood in its log, and recovery once the fault is gone.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable

import aiohttp
import pytest

from support.cluster import API_KEY, call_api
from support.cpuload import cpu_load
from support.gateway import Gateway, free_port, start_gateway

pytestmark = pytest.mark.timeout(180)


def tracebacks(gateway: Gateway) -> int:
    return gateway.log_text().count("Traceback")


# -- a close code the server chose, under CPU load --------------------------------------------

CLOSED_CLIENTS = 100
# Pushes waiting for each client when it is closed, and how slowly it reads them: each takes
# READ_PAUSE to process, as on a machine whose CPU is taken (the load below makes it slower still).
# Reading the backlog takes longer than the old close deadline (2 s, counted before the frame was
# even out), well within the time a reading client now has.
BACKLOG_PUSHES = 12
PUSH_BYTES = 48_000
READ_PAUSE = 0.25
# Live apps talk while they are closed: a ping event this often.
CHATTER_INTERVAL = 0.1


async def closed_while_reading(
    http: aiohttp.ClientSession, url: str, opened: asyncio.Event, count: list[int]
) -> tuple[int | None, str | None, int]:
    """One app: connects, chatters, reads everything at its own pace; returns the close code and
    reason its library reports, and how many pushes it read first."""
    ws = await http.ws_connect(url)
    count[0] += 1
    if count[0] == CLOSED_CLIENTS:
        opened.set()

    async def chatter() -> None:
        while not ws.closed:
            try:
                await ws.send_str('{"event": "ping"}')
            except ConnectionError:
                return
            await asyncio.sleep(CHATTER_INTERVAL)

    chatting = asyncio.create_task(chatter())
    pushes, reason = 0, None
    try:
        while True:
            message = await ws.receive()
            if message.type is aiohttp.WSMsgType.TEXT:
                pushes += '"event":"bulk"' in message.data
                await asyncio.sleep(READ_PAUSE)
            elif message.type is aiohttp.WSMsgType.CLOSE:
                reason = message.extra
            elif message.type in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR):
                return ws.close_code, reason, pushes
    finally:
        chatting.cancel()


async def test_server_close_code_reaches_reading_clients_under_cpu_load(
    database_url: str, make_token: Callable[..., str]
) -> None:
    gateway = start_gateway(
        {
            "DATABASE_URL": database_url,
            "ADMIN_API_KEY": API_KEY,
            "ADMIN_PORT": str(free_port()),
            "MAX_CONNECTIONS_PER_USER": str(CLOSED_CLIENTS),
            "MAX_CONNECTIONS_PER_ADDRESS": str(CLOSED_CLIENTS),
        }
    )
    try:
        token = make_token(user_id=4001, logged_in=True)
        opened, count = asyncio.Event(), [0]
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=connector) as http:
            url = f"{gateway.ws_url}/ws?token={token}"
            apps = [
                asyncio.create_task(closed_while_reading(http, url, opened, count))
                for _ in range(CLOSED_CLIENTS)
            ]
            await asyncio.wait_for(opened.wait(), 30)
            with cpu_load():
                for seq in range(BACKLOG_PUSHES):
                    status, _ = await call_api(
                        gateway,
                        "POST",
                        "/emit",
                        {
                            "to": "user:4001",
                            "event": "bulk",
                            "data": {"seq": seq, "pad": "x" * PUSH_BYTES},
                        },
                    )
                    assert status == 200
                status, body = await call_api(
                    gateway, "POST", "/disconnect", {"user": 4001, "reason": "logged out"}
                )
                assert (status, body["localConnections"]) == (200, CLOSED_CLIENTS)
                outcomes = await asyncio.wait_for(asyncio.gather(*apps), 60)
        assert Counter(code for code, _, _ in outcomes) == {4001: CLOSED_CLIENTS}
        assert outcomes == [(4001, "logged out", BACKLOG_PUSHES)] * CLOSED_CLIENTS
        disconnects = [e for e in gateway.logs() if e.get("event") == "disconnect"]
        assert {(e["code"], e["reason"]) for e in disconnects} == {(4001, "logged out")}
        assert tracebacks(gateway) == 0
    finally:
        gateway.stop()
