"""``yektaws serve --workers N``: supervision, and long-polling behind the shipped nginx site."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import socketio

from support.cluster import API_KEY, call_api
from support.gateway import REPO, Gateway, children, free_port, free_port_pair, start_gateway
from support.proxies import Nginx, make_self_signed

pytestmark = pytest.mark.timeout(90)

ROUND_TRIPS = 100


def yektaws_serve(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "yektaws", "serve", *args],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "PYTHONPATH": str(REPO), "AI_BASE_URL": "", **env},
    )


def start_workers(database_url: str, redis_url: str, prefix: str, base: int) -> Gateway:
    return start_gateway(
        {
            "DATABASE_URL": database_url,
            "REDIS_URL": redis_url,
            "REDIS_PREFIX": prefix,
            "WORKER_BASE_PORT": str(base),
            "ADMIN_API_KEY": API_KEY,
            "ADMIN_PORT": str(free_port()),
            # The round trips below are as fast as polling allows; the rate limit is not tested.
            "RATE_LIMIT_PER_SECOND": "10000",
            "RATE_LIMIT_BURST": "10000",
        },
        args=["--workers", "2"],
    )


def workers_started(gateway: Gateway) -> list[dict[str, object]]:
    return [entry for entry in gateway.logs() if entry.get("event") == "worker_started"]


def test_more_than_one_worker_needs_redis() -> None:
    result = yektaws_serve("--port", str(free_port()), "--workers", "2")

    assert result.returncode == 2
    assert "--workers above 1 needs REDIS_URL" in result.stderr


def test_worker_ports_may_not_clash_with_the_server_api() -> None:
    port = free_port()
    result = yektaws_serve(
        "--port",
        str(free_port()),
        "--workers",
        "2",
        REDIS_URL="redis://127.0.0.1:6379/0",
        ADMIN_API_KEY="k",
        ADMIN_PORT=str(port + 1),
        WORKER_BASE_PORT=str(port),
    )

    assert result.returncode == 2
    assert f"server API and worker 1 would both use port {port + 1}" in result.stderr


def test_a_crashed_worker_is_restarted_and_sigterm_drains_all(
    database_url: str, redis_url: str, redis_prefix: str
) -> None:
    gateway = start_workers(database_url, redis_url, redis_prefix, free_port_pair())
    try:
        first = children(gateway.pid)
        assert len(first) == 2
        os.kill(first[0], signal.SIGKILL)
        gateway.wait_for_log("worker_exited", code=-signal.SIGKILL)
        deadline = time.monotonic() + 10
        while len(started := workers_started(gateway)) < 3 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert [entry["worker"] for entry in started] == [0, 1, 0]
        assert started[-1]["pid"] not in first
        assert sorted(children(gateway.pid)) == sorted([first[1], started[-1]["pid"]])
        gateway.wait_for_log(
            "listening", timeout=10, node=f"{socket.gethostname()}:{started[-1]['pid']}"
        )
    finally:
        code = gateway.stop()
    assert code == 0
    assert gateway.wait_for_log("workers_stopped")["exitCodes"] == [0, 0]


async def test_polling_clients_keep_their_worker_behind_nginx(
    database_url: str,
    redis_url: str,
    redis_prefix: str,
    make_token: Callable[..., str],
    tmp_path: Path,
) -> None:
    if not Nginx.available():
        pytest.skip("nginx is not installed (scripts/ensure-proxies installs it)")
    base = free_port_pair()
    gateway = start_workers(database_url, redis_url, redis_prefix, base)
    proxy = Nginx(
        tmp_path / "nginx",
        gateway_port=gateway.port,
        tls=make_self_signed(tmp_path / "tls"),
        worker_base_port=base,
    )
    clients: dict[str, socketio.AsyncClient] = {}  # one per worker, by sid prefix
    opened: list[socketio.AsyncClient] = []
    try:
        proxy.start()
        token = make_token(user_id=90, logged_in=True)
        # New handshakes are spread by the kernel over the workers; open clients until each
        # worker holds one.
        for _ in range(20):
            client = socketio.AsyncClient(ssl_verify=False, reconnection=False)
            await client.connect(
                proxy.https_url, transports=["polling"], auth={"token": token}, wait_timeout=10
            )
            opened.append(client)
            clients.setdefault(client.eio.sid.split(".")[0] + ".", client)
            if len(clients) == 2:
                break
        assert sorted(clients) == ["w0.", "w1."]

        async def round_trips(client: socketio.AsyncClient) -> list[object]:
            return [
                (await client.call("echo", {"n": n}, timeout=10))["received"]
                for n in range(ROUND_TRIPS)
            ]

        results = await asyncio.gather(*(round_trips(c) for c in clients.values()))

        assert results == [[{"n": n} for n in range(ROUND_TRIPS)]] * 2
        assert all(client.connected and client.transport() == "polling" for client in opened)
        # One user's connections on both workers, seen through either worker's bus.
        _, listed = await call_api(gateway, "GET", "/users/90/connections")
        assert listed["complete"] is True
        assert len(listed["connections"]) == len(opened)
        assert len({c["node"] for c in listed["connections"]}) == 2
    finally:
        for client in opened:
            await client.disconnect()
        proxy.stop()
        gateway.stop()
    assert "Invalid session" not in gateway.log_text()
    statuses = [
        line.split('" ')[1].split()[0] for line in proxy.access_log.read_text().splitlines()
    ]
    assert statuses and set(statuses) <= {"200", "101"}, statuses
