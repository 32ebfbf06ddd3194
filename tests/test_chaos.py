"""Chaos against real processes: what users see when the machine, a dependency or a limit fails.

Each test runs the real gateway as a subprocess and breaks one thing for real: the CPU, the
process's file descriptors, PostgreSQL, Redis, the disk under the embedded store. The assertions
are the ones a user or an operator would make: the right answer for each client, the process still
serving, no traceback flood in its log, and recovery once the fault is gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import aiohttp
import orjson
import pytest
import socketio

from support.clients import connect
from support.cluster import API_KEY, call_api, start_node, wait_for_broker
from support.cpuload import cpu_load
from support.database import insert_session, temporary_database
from support.gateway import Gateway, free_port, start_gateway
from support.postgres import PostgresCluster
from support.rawws import OP_TEXT, RawConnection, Response, frame, upgrade_request
from support.redis import RedisServer
from yektaws.descriptors import DESCRIPTOR_RESERVE
from yektaws.sessions.postgres import FAILURE_HOLD

pytestmark = pytest.mark.timeout(180)


def tracebacks(gateway: Gateway) -> int:
    return gateway.log_text().count("Traceback")


def noise(gateway: Gateway) -> list[str]:
    """Log lines that are not the gateway's JSON, or are errors: what an operator would be
    paged for, or could not parse."""
    lines = []
    for line in gateway.log_text().splitlines():
        try:
            entry = orjson.loads(line)
        except orjson.JSONDecodeError:
            lines.append(line)
            continue
        if entry.get("level") in ("error", "critical"):
            lines.append(line)
    return lines


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


# -- the file-descriptor limit ------------------------------------------------------------------

FD_LIMIT = 256
RETRY_TEXT = "Service temporarily unavailable, please retry"


def open_descriptors(gateway: Gateway) -> int:
    return len(os.listdir(f"/proc/{gateway.pid}/fd"))


async def native_upgrade(gateway: Gateway, token: str) -> tuple[RawConnection, Response]:
    conn = await RawConnection.open(gateway.port)
    return conn, await conn.request(upgrade_request(f"/ws?token={token}"))


async def echoes(conn: RawConnection, text: str) -> bool:
    await conn.send(frame(OP_TEXT, orjson.dumps({"event": "echo", "data": text})))
    while True:
        reply = await conn.read_event()
        if reply["event"] == "echo_response":
            return reply["data"]["received"] == text


async def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"not within {timeout}s: {what}"
        await asyncio.sleep(0.05)


async def test_descriptor_limit_refuses_new_handshakes_and_recovers(
    database_url: str, make_token: Callable[..., str]
) -> None:
    gateway = start_gateway(
        {
            "DATABASE_URL": database_url,
            "MAX_CONNECTIONS_PER_USER": str(FD_LIMIT),
            "MAX_CONNECTIONS_PER_ADDRESS": str(FD_LIMIT),
            "HANDSHAKE_TIMEOUT": "2",
        },
        preexec=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (FD_LIMIT, FD_LIMIT)),
    )
    token = make_token(user_id=256, logged_in=True)
    accepted: list[RawConnection] = []
    idle: list[RawConnection] = []
    try:
        # Connections until the gateway refuses: 503 with Retry-After, before it runs out.
        while True:
            conn, answer = await native_upgrade(gateway, token)
            if answer.status != 101:
                conn.abort()
                break
            assert (await conn.read_event())["event"] == "connected"
            accepted.append(conn)
            assert len(accepted) < FD_LIMIT, "never refused"
        assert (answer.status, answer.text) == (503, RETRY_TEXT)
        assert int(answer.headers["retry-after"]) > 0
        assert len(accepted) > FD_LIMIT - DESCRIPTOR_RESERVE - 40  # the reserve, not less
        async with aiohttp.ClientSession() as http:
            url = f"{gateway.http_url}/socket.io/?EIO=4&transport=polling"
            async with http.get(url) as response:  # a new Socket.IO session: refused as well
                assert response.status == 503
                assert int(response.headers["Retry-After"]) > 0
        for conn in (accepted[0], accepted[len(accepted) // 2], accepted[-1]):
            assert await echoes(conn, "still served")

        # The limit itself: connections that send nothing take the last descriptors. Accepting
        # fails in the kernel; the gateway goes on serving what it has.
        while open_descriptors(gateway) < FD_LIMIT and len(idle) < FD_LIMIT:
            idle.append(await RawConnection.open(gateway.port))
            await asyncio.sleep(0.01)
        await wait_for(lambda: open_descriptors(gateway) >= FD_LIMIT - 1, 5, "fds exhausted")
        assert await echoes(accepted[1], "served at the limit")
        assert gateway.process.poll() is None
        # The header deadline ends the silent ones; handshakes are refused again, cleanly.
        await wait_for(lambda: open_descriptors(gateway) < FD_LIMIT - 8, 10, "idle ones closed")
        conn, answer = await native_upgrade(gateway, token)
        conn.abort()
        assert answer.status == 503

        # Connections close: the budget is back, handshakes succeed.
        for conn in accepted[: len(accepted) // 2]:
            conn.abort()
        del accepted[: len(accepted) // 2]
        await wait_for(
            lambda: open_descriptors(gateway) < FD_LIMIT - DESCRIPTOR_RESERVE - 20, 10, "release"
        )
        conn, answer = await native_upgrade(gateway, token)
        assert answer.status == 101
        assert (await conn.read_event())["event"] == "connected"
        accepted.append(conn)
        assert await echoes(accepted[0], "after")
    finally:
        for conn in accepted + idle:
            conn.abort()
        gateway.stop()
    assert tracebacks(gateway) == 0
    complaints = [e for e in gateway.logs() if e.get("level") in ("warning", "error", "critical")]
    assert len(complaints) <= 5, complaints[:10]
    refusals = [e for e in gateway.logs() if e.get("event") == "reject"]
    assert refusals and {e["reason"] for e in refusals} == {"fd_limit"}


# -- PostgreSQL restarted during a handshake storm --------------------------------------------

STORM_WORKERS = 8
#: How long the storm against a database that is down lasts.
STORM_SECONDS = 2.0
#: After PostgreSQL is back, how long until every handshake succeeds again.
DATABASE_RECOVERY = 5.0


async def test_postgres_restart_during_handshake_storm(own_postgres: PostgresCluster) -> None:
    with temporary_database(own_postgres.url) as url:
        tokens = [insert_session(url, user_id=n, logged_in=True) for n in range(40)]
        gateway = start_gateway(
            # Every handshake asks the database: no cache to hide the outage.
            {"DATABASE_URL": url, "SESSION_CACHE_TTL": "0", "SESSION_STORE_TIMEOUT": "2"}
        )
        outcomes: list[tuple[float, str, object]] = []  # (when, protocol, outcome)
        storming = True

        async def native_worker(n: int) -> None:
            while storming:
                conn, answer = await native_upgrade(gateway, tokens[n % len(tokens)])
                if answer.status == 101:
                    assert (await conn.read_event())["event"] == "connected"
                conn.abort()
                outcomes.append((time.monotonic(), "native", answer.status))
                n += STORM_WORKERS

        async def socketio_worker(n: int) -> None:
            while storming:
                client = socketio.AsyncClient(reconnection=False)
                refusals: list[object] = []
                client.on("connect_error", refusals.append)
                try:
                    await client.connect(
                        gateway.http_url,
                        auth={"token": tokens[n % len(tokens)]},
                        transports=["websocket"],
                        wait_timeout=5,
                    )
                except socketio.exceptions.ConnectionError:
                    outcomes.append((time.monotonic(), "socket.io", repr(refusals)))
                else:
                    outcomes.append((time.monotonic(), "socket.io", "connected"))
                await client.disconnect()
                n += 1

        try:
            workers = [asyncio.create_task(native_worker(n)) for n in range(STORM_WORKERS)]
            workers.append(asyncio.create_task(socketio_worker(0)))
            await asyncio.sleep(1)
            down_at = time.monotonic()
            own_postgres.stop()
            await asyncio.sleep(2)
            own_postgres.start()
            up_at = time.monotonic()
            await asyncio.sleep(DATABASE_RECOVERY + 2)
            storming = False
            await asyncio.wait_for(asyncio.gather(*workers), 30)
        finally:
            gateway.stop()

    native = [(at, status) for at, protocol, status in outcomes if protocol == "native"]
    assert {status for _, status in native} <= {101, 503}, Counter(s for _, s in native)
    assert any(status == 503 for at, status in native if down_at <= at <= up_at + 1)
    late = [status for at, status in native if at > up_at + DATABASE_RECOVERY]
    assert late and set(late) == {101}, Counter(late)
    sio = Counter(outcome for _, protocol, outcome in outcomes if protocol == "socket.io")
    retry = repr([{"message": RETRY_TEXT, "data": {"retryable": True}}])
    assert set(sio) <= {"connected", retry}, sio  # never "Invalid or expired session token"
    assert sio["connected"] > 0
    assert tracebacks(gateway) == 0
    # aiopg reported every failed connection attempt twice at error level, and warned raw.
    assert noise(gateway) == [], noise(gateway)[:3]
    failures = [e for e in gateway.logs() if e.get("event") == "session_store_failed"]
    assert 1 <= len(failures) <= 3  # the cause, said once per interval, not per handshake


async def test_a_database_that_is_down_is_not_stormed_with_connection_attempts() -> None:
    # A PostgreSQL that accepts and hangs up at once, as a crashed or restarting one does,
    # counting what it is asked. Before, one gateway asked it about 1,500 times a second
    # (once per handshake and once more on a fresh connection): from every worker of every node
    # at once, a database starting up forks a backend for each attempt.
    attempts = 0

    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal attempts
        attempts += 1
        writer.close()

    database = await asyncio.start_server(hang_up, "127.0.0.1", 0)
    port = database.sockets[0].getsockname()[1]
    gateway = start_gateway(
        {"DATABASE_URL": f"postgresql://postgres@127.0.0.1:{port}/down", "SESSION_CACHE_TTL": "0"}
    )
    statuses: Counter[int] = Counter()
    try:
        attempts = 0  # from here on, only the storm's
        storm_until = time.monotonic() + STORM_SECONDS

        async def native_worker(n: int) -> None:
            while time.monotonic() < storm_until:
                conn, answer = await native_upgrade(gateway, f"token-{n}")
                conn.abort()
                statuses[answer.status] += 1

        await asyncio.gather(*(native_worker(n) for n in range(STORM_WORKERS)))
    finally:
        gateway.stop()
        database.close()
    assert set(statuses) == {503} and statuses[503] > 100, statuses  # retryable, quickly
    # One statement per FAILURE_HOLD (and its retry on a fresh connection), and the slack of
    # the last round's.
    assert attempts <= 2 * STORM_SECONDS / FAILURE_HOLD + 6, attempts
    assert noise(gateway) == [], noise(gateway)[:3]


# -- Redis stopped and restarted during pushes ------------------------------------------------

PUSH_INTERVAL = 0.02


async def test_redis_restart_during_pushes_loses_no_local_push(
    database_url: str, redis_prefix: str, make_token: Callable[..., str]
) -> None:
    with RedisServer() as redis_server:
        gateway = start_node(database_url, redis_server.url, redis_prefix)
        token = make_token(user_id=6379, logged_in=True)
        sent: list[int] = []
        statuses: Counter[int] = Counter()
        try:
            clients = [
                await connect("native-websocket", gateway.http_url, token),
                await connect("socket.io", gateway.http_url, token),
            ]
            for client in clients:
                await client.expect("connected")
            pushing = True

            async def pusher() -> None:
                while pushing:
                    seq = len(sent)
                    status, _ = await call_api(
                        gateway, "POST", "/emit", {"to": "user:6379", "event": "push", "data": seq}
                    )
                    statuses[status] += 1
                    sent.append(seq)
                    await asyncio.sleep(PUSH_INTERVAL)

            task = asyncio.create_task(pusher())
            await asyncio.sleep(0.5)
            redis_server.stop()
            await wait_for_broker(gateway, "degraded", timeout=5)
            degraded_at = len(sent)
            await asyncio.sleep(0.5)
            redis_server.start()
            await wait_for_broker(gateway, "ok", timeout=10)
            await asyncio.sleep(0.5)
            pushing = False
            await task
            for client in clients:
                received = [await client.expect("push") for _ in sent]
                assert received == sent  # each once, in order, through the outage
                with pytest.raises(TimeoutError):
                    await client.expect("push", timeout=0.3)  # and nothing twice
                await client.close()
        finally:
            gateway.stop()
    assert statuses == {200: len(sent)}
    assert 0 < degraded_at < len(sent)
    assert tracebacks(gateway) == 0


# -- a disk-full embedded store ---------------------------------------------------------------

TINY_DISK = "512k"


@contextlib.contextmanager
def tiny_disk() -> Iterator[Path]:
    """A tmpfs of :data:`TINY_DISK` (needs root: mount); skips the test where it cannot mount."""
    directory = Path(tempfile.mkdtemp(prefix="yektaws-tinydisk-"))
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={TINY_DISK}", "tmpfs", str(directory)],
        capture_output=True,
    )
    if mounted.returncode != 0:
        directory.rmdir()
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield directory
    finally:
        subprocess.run(["umount", "-l", str(directory)], check=False)
        directory.rmdir()


def fill(directory: Path) -> Path:
    """Write a file until the filesystem is full; returns it."""
    filler = directory / "filler"
    descriptor = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:
        while True:
            os.write(descriptor, b"\0" * 4096)
    except OSError as exc:
        assert exc.errno == errno.ENOSPC
    finally:
        os.close(descriptor)
    return filler


def yektaws_cli(gateway_env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "yektaws", *args],
        env=gateway_env,
        capture_output=True,
        text=True,
        timeout=30,
    )


async def test_full_disk_under_the_embedded_store() -> None:
    with tiny_disk() as disk:
        gateway = start_gateway({"EMBEDDED_DB_PATH": str(disk / "sessions.db")})
        try:
            created = yektaws_cli(
                gateway.env, "sessions", "create", "--user-id", "7", "--logged-in"
            )
            assert created.returncode == 0, created.stderr
            token = created.stdout.strip()
            filler = fill(disk)

            refused = yektaws_cli(gateway.env, "sessions", "create", "--user-id", "8")
            assert refused.returncode == 1
            assert refused.stdout == ""
            assert "disk full" in refused.stderr and "Traceback" not in refused.stderr
            assert len(refused.stderr.strip().splitlines()) == 1, refused.stderr
            # The gateway still reads its sessions; writing one's activity fails and says why.
            for _ in range(2):
                conn, answer = await native_upgrade(gateway, token)
                assert answer.status == 101
                assert await echoes(conn, "disk full")
                conn.abort()
            failed = gateway.wait_for_log("activity_refresh_failed", timeout=10)
            assert "disk full" in failed["error"]
            assert gateway.process.poll() is None

            filler.unlink()  # space again: writes work at once
            again = yektaws_cli(gateway.env, "sessions", "create", "--user-id", "9")
            assert again.returncode == 0, again.stderr
            conn, answer = await native_upgrade(gateway, again.stdout.strip())
            assert answer.status == 101
            conn.abort()
        finally:
            gateway.stop()
        assert tracebacks(gateway) == 0

        # Starting on a full disk: a one-line reason and exit status 1, promptly.
        fill(disk)
        env = {**gateway.env, "EMBEDDED_DB_PATH": str(disk / "fresh.db")}
        started = time.monotonic()
        serve = yektaws_cli(env, "serve", "--host", "127.0.0.1", "--port", str(free_port()))
        assert serve.returncode == 1
        assert time.monotonic() - started < 20
        assert "session store unusable" in serve.stderr and "disk full" in serve.stderr
        assert "Traceback" not in serve.stderr + serve.stdout
