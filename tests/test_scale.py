"""50,000 idle native connections in one gateway process: accepted, pinged, drained on SIGTERM.

Marked ``scale`` (``scripts/test --scale``, and ``--full``). One ``yektaws serve`` on PostgreSQL;
the clients are the benchmark's C load client (``bench/client/load.c``, mode ``hold``) in several
processes, each bound to a source address of its own (127.0.0.2, 127.0.0.3, ...): one source
address has only ``net.ipv4.ip_local_port_range`` ephemeral ports towards the gateway's one port
(about 28,000), and one process only ``RLIMIT_NOFILE`` descriptors. Each client authenticates
with a session token, answers every ping and the server's close frame, and counts both.

What is asserted is what the users and the operator would see: every connection accepted and
greeted; every one pinged at ``HEARTBEAT_INTERVAL`` and still open after several rounds (its
pongs count); on SIGTERM every client gets close code 1001 and the process exits 0 within
``DRAIN_TIMEOUT``; no traceback. The figures (accept time, RSS per connection, drain time) are
printed (``-s``) and kept in the README's Reliability section.

The gateway needs a descriptor per connection and some more: the test raises ``RLIMIT_NOFILE``
to its hard limit (children inherit it) and skips, saying why, where the hard limit is too low.
``YEKTAWS_SCALE_CONNECTIONS`` sets another count (e.g. a smaller one where the limit is low).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import re
import resource
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from support.gateway import REPO, Gateway, start_gateway
from support.processes import rss_kib

CONNECTIONS = int(os.environ.get("YEKTAWS_SCALE_CONNECTIONS", "50000"))
#: Descriptors the gateway needs beyond its connections: yektaws.descriptors.DESCRIPTOR_RESERVE
#: (64) kept free, the pool, the log, the listeners, and handshakes admitted between two counts.
GATEWAY_HEADROOM = 1024
#: Most connections one client process holds (well within one source address's ports).
PER_CLIENT = 12_500
#: Sessions the connections share (as many users), and so the cap per user.
SESSIONS = 50
HEARTBEAT_INTERVAL = 5.0
#: Ping rounds to wait for once all are open: each connection is pinged once per interval.
PING_ROUNDS = 3
DRAIN_TIMEOUT = 30.0
DRAIN_SPREAD = 2.0
#: How long opening every connection may take (the C client's open_seconds), niced included.
OPEN_TIMEOUT = 600.0
#: A sanity bound on the gateway's memory per idle connection (README: ~19 KiB at 5000).
MAX_KIB_PER_CONNECTION = 48

LOAD_SOURCE = REPO / "bench" / "client" / "load.c"
LOAD_BINARY = REPO / "bench" / "build" / "load"

pytestmark = [pytest.mark.scale, pytest.mark.timeout(OPEN_TIMEOUT + 300)]


def raise_descriptor_limit(needed: int) -> int:
    """Raise this process's RLIMIT_NOFILE (inherited by the gateway) to ``needed`` or more, or
    skip the test saying why; returns the soft limit now in force."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard < needed:
        # Raising the hard limit needs CAP_SYS_RESOURCE, which containers often drop.
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (needed, needed))
            return needed
        pytest.skip(
            f"RLIMIT_NOFILE hard limit is {hard}: {CONNECTIONS:,} connections need "
            f"{needed:,} descriptors in the gateway process and this process may not raise it "
            f"(ulimit -Hn {needed}, systemd LimitNOFILE=; or YEKTAWS_SCALE_CONNECTIONS="
            f"{max(1000, hard - GATEWAY_HEADROOM)})"
        )
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def ephemeral_ports() -> int:
    low, high = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    return high - low + 1


def build_load_client() -> Path:
    """``bench/build/load``, built as ``bench/run`` builds it when missing or out of date."""
    if not LOAD_BINARY.exists() or LOAD_BINARY.stat().st_mtime < LOAD_SOURCE.stat().st_mtime:
        LOAD_BINARY.parent.mkdir(exist_ok=True)
        subprocess.run(
            ["gcc", "-O2", "-Wall", "-Wextra", "-o", str(LOAD_BINARY), str(LOAD_SOURCE)],
            check=True,
        )
    return LOAD_BINARY


class HoldingClient:
    """One load client process in ``hold`` mode: its JSON lines, read as they come."""

    def __init__(self, process: asyncio.subprocess.Process, source: str, count: int) -> None:
        self.process = process
        self.source = source
        self.count = count

    @classmethod
    async def start(cls, port: int, source: str, count: int, tokens: Path) -> HoldingClient:
        process = await asyncio.create_subprocess_exec(
            str(build_load_client()),
            "mode=hold",
            "proto=native",
            "check=yektaws",
            f"port={port}",
            f"conns={count}",
            f"source={source}",
            f"tokens={tokens}",
            f"open_seconds={OPEN_TIMEOUT}",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        return cls(process, source, count)

    async def line(self, phase: str, timeout: float) -> dict[str, Any]:
        assert self.process.stdout is not None
        raw = await asyncio.wait_for(self.process.stdout.readline(), timeout)
        assert raw, f"load client on {self.source} exited ({await self.process.wait()})"
        line: dict[str, Any] = json.loads(raw)
        assert line["phase"] == phase, line
        return line

    async def report(self) -> dict[str, Any]:
        assert self.process.stdin is not None
        self.process.stdin.write(b"report\n")
        await self.process.stdin.drain()
        return await self.line("report", 10)

    async def stop(self) -> None:
        if self.process.returncode is None:
            self.process.kill()
            await self.process.wait()


_OPEN = re.compile(rb'^yektaws_connections_open\{protocol="native-websocket"\} (\S+)$', re.M)


async def open_connections(gateway: Gateway) -> int:
    """The gateway's own count of open native connections (``/metrics``)."""
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"{gateway.http_url}/metrics") as response,
    ):
        match = _OPEN.search(await response.read())
        return int(float(match.group(1))) if match else 0


@pytest.fixture
async def clients_of() -> AsyncIterator[Callable[..., Any]]:
    started: list[HoldingClient] = []

    async def start(*args: Any) -> HoldingClient:
        started.append(await HoldingClient.start(*args))
        return started[-1]

    yield start
    for client in started:
        await client.stop()


async def test_idle_connections_accepted_pinged_and_drained(
    make_token: Callable[..., str], database_url: str, tmp_path: Path, clients_of: Any
) -> None:
    raise_descriptor_limit(CONNECTIONS + GATEWAY_HEADROOM)
    per_client = min(PER_CLIENT, ephemeral_ports() - 1000)
    shares = [per_client] * (CONNECTIONS // per_client)
    if CONNECTIONS % per_client:
        shares.append(CONNECTIONS % per_client)
    tokens = tmp_path / "tokens"
    tokens.write_text(
        "".join(f"{make_token(user_id=9000 + n, logged_in=True)}\n" for n in range(SESSIONS))
    )
    cap = str(math.ceil(CONNECTIONS / SESSIONS) + 1)
    gateway = start_gateway(
        {
            "DATABASE_URL": database_url,
            "HEARTBEAT_INTERVAL": str(HEARTBEAT_INTERVAL),
            "DRAIN_TIMEOUT": str(DRAIN_TIMEOUT),
            "DRAIN_SPREAD": str(DRAIN_SPREAD),
            "MAX_CONNECTIONS_PER_USER": cap,
            "MAX_CONNECTIONS_PER_ADDRESS": str(per_client),
        }
    )
    try:
        baseline = rss_kib(gateway.pid)
        started = time.monotonic()
        clients = [
            await clients_of(gateway.port, f"127.0.0.{2 + index}", share, tokens)
            for index, share in enumerate(shares)
        ]
        ready = [await client.line("ready", OPEN_TIMEOUT) for client in clients]
        accept_seconds = time.monotonic() - started
        assert [line["open"] for line in ready] == shares
        assert await open_connections(gateway) == CONNECTIONS
        accepted_rss = rss_kib(gateway.pid)

        await asyncio.sleep(PING_ROUNDS * HEARTBEAT_INTERVAL)
        reports = [await client.report() for client in clients]
        settled_rss = rss_kib(gateway.pid)
        # Every connection was pinged, answered, and is still open: none was found dead.
        assert [r["pinged"] for r in reports] == shares, reports
        assert [r["open"] for r in reports] == shares, reports
        pings = sum(r["pings"] for r in reports)
        assert pings >= (PING_ROUNDS - 1) * CONNECTIONS, reports
        assert await open_connections(gateway) == CONNECTIONS

        signalled = time.monotonic()
        gateway.process.send_signal(signal.SIGTERM)
        results = [await client.line("result", DRAIN_TIMEOUT + 10) for client in clients]
        clients_closed = time.monotonic() - signalled
        code = await asyncio.to_thread(gateway.process.wait, DRAIN_TIMEOUT + 10)
        drain_seconds = time.monotonic() - signalled
    finally:
        gateway.stop(signal.SIGKILL)

    per_connection = (settled_rss - baseline) / CONNECTIONS
    print(
        f"\n{CONNECTIONS:,} idle connections from {len(clients)} clients "
        f"({', '.join(c.source for c in clients)}): accepted in {accept_seconds:.1f} s "
        f"({CONNECTIONS / accept_seconds:,.0f}/s); RSS {baseline / 1024:.1f} MiB before, "
        f"{accepted_rss / 1024:.1f} MiB accepted, {settled_rss / 1024:.1f} MiB after "
        f"{PING_ROUNDS} ping rounds: {per_connection:.1f} KiB per connection; {pings:,} pings "
        f"answered; SIGTERM: every client closed after {clients_closed:.1f} s, process exited "
        f"{code} after {drain_seconds:.1f} s (DRAIN_TIMEOUT {DRAIN_TIMEOUT:g} s)"
    )
    for result, share in zip(results, shares, strict=True):
        assert result["closes"] == {"1001": share}, result
        assert (result["errors"], result["firstError"]) == (0, None), result
    assert code == 0
    assert drain_seconds < DRAIN_TIMEOUT
    assert per_connection < MAX_KIB_PER_CONNECTION
    assert "Traceback" not in gateway.log_text()
