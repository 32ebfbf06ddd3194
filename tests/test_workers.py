"""``yektaws serve --workers N``: supervision, and long-polling behind the shipped nginx site."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import aiohttp
import orjson
import pytest
import socketio

from support.cluster import API_KEY, call_api
from support.gateway import REPO, Gateway, children, free_port, free_port_pair, start_gateway
from support.proxies import Nginx, make_self_signed
from support.rawws import OP_TEXT, frame, upgrade_request
from support.redis import RedisServer
from yektaws.workers import RESTART_BACKOFF_MIN, STOP_MARGIN

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


def restarted_worker(gateway: Gateway) -> dict[str, object]:
    """The ``worker_started`` entry of the first restart (the third start of two workers)."""
    deadline = time.monotonic() + 10
    while len(started := workers_started(gateway)) < 3:
        assert time.monotonic() < deadline, started
        time.sleep(0.1)
    return started[2]


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
        restarted_worker(gateway)
        started = workers_started(gateway)
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


async def test_new_connections_are_spread_evenly_and_skip_a_worker_that_is_down(
    database_url: str, redis_url: str, redis_prefix: str
) -> None:
    # WebSocket connections last for hours: whichever worker takes a new one keeps it. One
    # listening socket shared by the workers went mostly to the same one under light load (two
    # thirds of the handshakes, or all of a test's when the machine was busy).
    gateway = start_workers(database_url, redis_url, redis_prefix, free_port_pair())
    handshake = f"{gateway.http_url}/socket.io/?EIO=4&transport=polling"
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as http:

            async def worker_of_next_session() -> str:
                """The worker that takes a new Engine.IO session, on a new connection."""
                async with http.get(handshake) as response:
                    body = await response.text()
                return orjson.loads(body[1:])["sid"].split(".")[0]

            spread = Counter([await worker_of_next_session() for _ in range(200)])
            assert 70 <= spread["w0"] <= 130 and spread["w0"] + spread["w1"] == 200, spread

            os.kill(children(gateway.pid)[0], signal.SIGKILL)
            await gateway.wait_for_log_async("worker_exited", worker=0)
            # Until worker 0 is back (RESTART_BACKOFF_MIN), new connections go to worker 1 at
            # once: none waits in the dead worker's queue for the restart.
            for _ in range(20):
                async with asyncio.timeout(RESTART_BACKOFF_MIN * 0.8):
                    assert await worker_of_next_session() in ("w0", "w1")
            node = f"{socket.gethostname()}:{restarted_worker(gateway)['pid']}"
            await gateway.wait_for_log_async("listening", timeout=10, node=node)
            assert {await worker_of_next_session() for _ in range(40)} == {"w0", "w1"}
    finally:
        code = gateway.stop()
    assert code == 0


def test_a_second_gateway_on_the_same_port_is_refused(
    database_url: str, redis_url: str, redis_prefix: str
) -> None:
    # The workers' sockets share the port with SO_REUSEPORT, which another instance of ours
    # (same user, same option) could join unnoticed, taking half of the new connections.
    gateway = start_workers(database_url, redis_url, redis_prefix, free_port_pair())
    try:
        for workers in ("2", "1"):
            second = yektaws_serve(
                "--port",
                str(gateway.port),
                "--workers",
                workers,
                REDIS_URL=redis_url,
                WORKER_BASE_PORT=str(free_port_pair()),
            )
            assert second.returncode == 1, second.stderr
            assert f"cannot listen on 127.0.0.1:{gateway.port}" in second.stderr
    finally:
        gateway.stop()


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


# -- a supervisor that disappears -------------------------------------------------------------

#: DRAIN_TIMEOUT of the orphan tests: small, so that the bound below is quick to wait for.
ORPHAN_DRAIN_TIMEOUT = 1.0
#: What a worker whose supervisor was SIGKILLed may take to be gone: it notices within a second
#: (server._ORPHAN_CHECK), then allows itself DRAIN_TIMEOUT + STOP_MARGIN; and a little slack.
ORPHAN_EXIT_BOUND = 1.0 + ORPHAN_DRAIN_TIMEOUT + STOP_MARGIN + 2.0
#: Pushed to every client before the kill: a client that does not read has it queued.
PUSHES, PUSH_BYTES = 40, 16 * 1024


def exited(pid: int) -> bool:
    """Whether ``pid`` is gone (a zombie counts: an orphan is reaped by whoever adopted it)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat[stat.rindex(")") + 2] == "Z"


async def wait_exited(pids: list[int], bound: float) -> float:
    """Seconds until every process of ``pids`` has exited; fails after ``bound``."""
    started = time.monotonic()
    while not all(exited(pid) for pid in pids):
        alive = [pid for pid in pids if not exited(pid)]
        assert time.monotonic() - started < bound, f"workers {alive} still alive after {bound}s"
        await asyncio.sleep(0.1)
    return time.monotonic() - started


def kill_leftovers(pids: list[int]) -> None:
    for pid in pids:
        if not exited(pid):
            os.kill(pid, signal.SIGKILL)


def non_reading_socket(port: int, request: bytes) -> socket.socket:
    """A connection that sends ``request`` and never reads: the server's writes back up."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    sock.sendall(request)
    return sock


def closed_by_server(sock: socket.socket, timeout: float) -> bool:
    """Whether the server has ended ``sock`` (EOF or reset once what it had sent is read)."""
    sock.settimeout(timeout)
    try:
        while sock.recv(1 << 16):
            pass
    except ConnectionError:
        pass
    except TimeoutError:
        return False
    return True


@pytest.mark.parametrize("redis", ["up", "down"])
async def test_workers_exit_when_the_supervisor_is_killed(
    database_url: str, redis_url: str, make_token: Callable[..., str], redis: str
) -> None:
    """SIGKILL of the supervisor with every kind of client on both workers, one of them not
    reading while pushes pile up for it: each worker drains and exits within DRAIN_TIMEOUT and
    the margin, and every client sees its connection end. With Redis stopped just before the
    kill too (the bus's own shutdown then meets a broker that is gone)."""
    own_redis = RedisServer() if redis == "down" else None
    if own_redis is not None:
        own_redis.start()
    base = free_port_pair()
    gateway = start_gateway(
        {
            "DATABASE_URL": database_url,
            "REDIS_URL": own_redis.url if own_redis is not None else redis_url,
            "REDIS_PREFIX": f"yektaws-test-{uuid.uuid4().hex[:12]}",
            "WORKER_BASE_PORT": str(base),
            "ADMIN_API_KEY": API_KEY,
            "ADMIN_PORT": str(free_port()),
            "DRAIN_TIMEOUT": str(ORPHAN_DRAIN_TIMEOUT),
            "DRAIN_SPREAD": "0.2",
        },
        args=["--workers", "2"],
    )
    pids: list[int] = []
    opened: list[socketio.AsyncClient] = []
    sessions: list[aiohttp.ClientSession] = []
    raw: list[socket.socket] = []
    try:
        pids = [e["pid"] for e in sorted(workers_started(gateway), key=lambda e: e["worker"])]
        token = make_token(user_id=91, logged_in=True)
        # Socket.IO over websocket on the shared port, over long-polling on each worker's own.
        for transport, url in [
            ("websocket", gateway.http_url),
            ("websocket", gateway.http_url),
            ("polling", f"http://127.0.0.1:{base}"),
            ("polling", f"http://127.0.0.1:{base + 1}"),
        ]:
            client = socketio.AsyncClient(reconnection=False)
            await client.connect(url, transports=[transport], auth={"token": token})
            opened.append(client)
        native = []
        for _ in range(2):
            sessions.append(aiohttp.ClientSession())
            native.append(await sessions[-1].ws_connect(f"{gateway.ws_url}/ws?token={token}"))
        raw.append(non_reading_socket(gateway.port, upgrade_request(f"/ws?token={token}")))
        raw.append(
            non_reading_socket(
                gateway.port, upgrade_request("/socket.io/?EIO=4&transport=websocket")
            )
        )
        await asyncio.sleep(0.3)  # the Engine.IO open packet has been sent: join the namespace
        raw[-1].sendall(frame(OP_TEXT, b'40{"token":"%s"}' % token.encode()))
        wanted = len(opened) + len(native) + len(raw)
        for _ in range(100):
            _, listed = await call_api(gateway, "GET", "/users/91/connections")
            if len(listed["connections"]) == wanted:
                break
            await asyncio.sleep(0.05)
        assert len(listed["connections"]) == wanted, listed
        for n in range(PUSHES):
            body = {
                "to": "user:91",
                "event": "orphan:push",
                "data": {"n": n, "pad": "x" * PUSH_BYTES},
            }
            status, _ = await call_api(gateway, "POST", "/emit", body)
            assert status == 200
        if own_redis is not None:
            own_redis.stop()

        os.kill(gateway.pid, signal.SIGKILL)
        gateway.process.wait()
        seconds = await wait_exited(pids, ORPHAN_EXIT_BOUND)

        for client in opened:
            for _ in range(50):
                if not client.connected:
                    break
                await asyncio.sleep(0.1)
            assert not client.connected
        for ws in native:
            async with asyncio.timeout(5):
                while (await ws.receive()).type not in (
                    aiohttp.WSMsgType.CLOSE,
                    aiohttp.WSMsgType.CLOSED,
                    aiohttp.WSMsgType.ERROR,
                ):
                    pass
        assert all(closed_by_server(sock, 5) for sock in raw)
    finally:
        kill_leftovers(pids)
        for client in opened:
            await client.disconnect()
        for http in sessions:
            await http.close()
        for sock in raw:
            sock.close()
        gateway.stop(signal.SIGKILL)
        if own_redis is not None:
            own_redis.stop()
    gone = {entry["parent"] for entry in gateway.logs() if entry.get("event") == "supervisor_gone"}
    assert len([e for e in gateway.logs() if e.get("event") == "supervisor_gone"]) == 2
    assert gone == {gateway.pid}
    forced = [e for e in gateway.logs() if e.get("event") == "forced_exit"]
    print(f"workers gone {seconds:.1f}s after the supervisor, {len(forced)} of them forced")


def test_workers_exit_when_the_supervisor_is_killed_and_nobody_reads_their_log(
    database_url: str, redis_url: str, redis_prefix: str
) -> None:
    """The workers' stderr is the supervisor's: a pipe whose reader is alive but no longer reads
    (a log collector stuck, a harness that killed the supervisor and kept the pipe) fills up and
    blocks the worker's event loop inside a log write, for good. The worker still exits, forced,
    within the bound."""
    admin = free_port()
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "AI_BASE_URL": "",
        "LOG_FORMAT": "json",
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "REDIS_PREFIX": redis_prefix,
        "WORKER_BASE_PORT": str(free_port_pair()),
        "ADMIN_API_KEY": API_KEY,
        "ADMIN_PORT": str(admin),
        "DRAIN_TIMEOUT": str(ORPHAN_DRAIN_TIMEOUT),
    }
    port = free_port()
    supervisor = subprocess.Popen(
        [sys.executable, "-m", "yektaws", "serve", "--port", str(port), "--workers", "2"],
        env=env,
        stdout=subprocess.PIPE,  # never read below
        stderr=subprocess.STDOUT,
    )
    pids: list[int] = []
    try:
        deadline = time.monotonic() + 20
        while len(pids) < 2 or not answers_health(port):
            assert time.monotonic() < deadline, "the workers never served"
            time.sleep(0.1)
            pids = children(supervisor.pid)
        # Every push is logged: push until the log pipe is full and a worker no longer answers.
        body = json.dumps({"to": "user:1", "event": "e", "data": "x" * 200}).encode()
        headers = {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"}
        for _ in range(5000):
            request = urllib.request.Request(f"http://127.0.0.1:{admin}/emit", body, headers)
            try:
                urllib.request.urlopen(request, timeout=1).close()
            except OSError:
                break
        else:
            pytest.fail("the log pipe never filled up")

        supervisor.kill()
        supervisor.wait()
        asyncio.run(wait_exited(pids, ORPHAN_EXIT_BOUND))
    finally:
        kill_leftovers(pids)
        if supervisor.poll() is None:
            supervisor.kill()
            supervisor.wait()
        assert supervisor.stdout is not None
        supervisor.stdout.close()


def answers_health(port: int) -> bool:
    try:
        urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1).close()
    except OSError:
        return False
    return True
