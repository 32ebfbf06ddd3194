"""The soak run behind ``scripts/soak``: mixed load on a real gateway for minutes, then a verdict.

One gateway (``yektaws serve``, or ``--workers 2`` over Redis) on a PostgreSQL database of its
own, the fake model (``tests/fake_model.py``) as its AI upstream, the server API on. Clients are
aiohttp and the standard library only, all in this process:

- **stable clients**, native and Socket.IO (Engine.IO 4 over a websocket, spoken here), connected
  for the whole run as one user; each asks ``echo`` every second and checks the answer;
- **pushes** through the server API (``POST /emit`` to that user's room), each with a sequence
  number, :data:`PUSH_RATE` per second: every stable client must get every one exactly once, in
  order;
- **resuming clients**, native (``recover=1``) and Socket.IO (its ``pid``/``offset``), connected
  as the same user and cut at every reconnect storm: the TCP connection ends under them without a
  close frame, and after a moment away (:data:`AWAY_SECONDS`) they resume, landing on whichever
  process the kernel picks; each resume must be honoured (same ``socketId``) and every push must
  reach each of them exactly once, in order, across all its connections;
- **AI streams**: short-lived connections of both protocols asking ``ai:chat`` of the fake model,
  checking start, the chunks and the complete answer;
- **reconnect storms**: every :data:`STORM_EVERY` seconds, :data:`STORM_SIZE` connections of each
  protocol opened at once, greeted, closed (and the resuming clients cut meanwhile);
- **abusive clients**: oversize frames (1009), garbage (``bad_frame``), event floods (1008), an
  unmasked frame over a raw socket (1002), garbage instead of HTTP (400), a broken Socket.IO
  packet (the session ends); each must get its documented outcome.

Every minute one line: the gateway's RSS and open descriptors (per process), event-loop lag (from
``/metrics``), handshakes, resumes, pushes, AI answers, abuses answered, errors. At the end it
exits 1 if any process's RSS grew by more than :data:`RSS_GROWTH_LIMIT` from the end of the
warm-up (the first :data:`WARMUP_MINUTES`, over which caches, pools and allocator arenas fill; a
run not at least a minute longer reports RSS without judging it) to the end, if any stable or
resuming client missed or got twice a push, or if the gateway's log has a traceback; errors seen
by clients (a resume not honoured among them) are reported and fail the run too.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import os
import random
import re
import secrets
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson

from support.cluster import API_KEY
from support.database import configured_server_url, insert_session, temporary_database
from support.gateway import REPO, Gateway, children, free_port, free_port_pair, start_gateway
from support.processes import rss_kib
from support.redis import SHARED_URL, RedisServer, answers

#: Stable clients of each protocol.
STABLE_CLIENTS = 20
#: Pushes per second through the server API.
PUSH_RATE = 10
#: Seconds between two echoes of a stable client.
ECHO_INTERVAL = 1.0
#: AI streams asked at once (each on a connection of its own, protocols alternating).
AI_STREAMS = 4
AI_CHUNKS = 5
#: What the fake model answers with AI_CHUNKS chunks.
AI_ANSWER = "".join(f"chunk-{n} " for n in range(AI_CHUNKS))
#: A reconnect storm: this many connections of each protocol, every STORM_EVERY seconds.
STORM_SIZE = 100
STORM_EVERY = 60.0
STORM_CONCURRENCY = 50
#: Clients of each protocol that ask for recovery and, at every reconnect storm, are cut (their
#: TCP connection ends under them, no close frame) and resume after a moment away, landing on
#: any process: their pushes are judged across all their connections.
RESUMING_CLIENTS = 10
#: Seconds a cut client stays away (at random between the two).
AWAY_SECONDS = (0.2, 2.0)
#: Seconds between two abuses.
ABUSE_EVERY = 2.0
#: Largest allowed RSS growth of a process from the end of the warm-up to the end.
RSS_GROWTH_LIMIT = 0.05
WARMUP_MINUTES = 5
SAMPLE_EVERY = 60.0
#: After the load stops, how long the last pushes may take to arrive.
SETTLE = 3.0
#: The soak user: every stable client is one of its connections.
USER = 900
MAX_MESSAGE = 65536
ANSWER_TIMEOUT = 10.0

#: The minute line's columns (several processes: one figure each, joined by + or /).
COLUMNS = (
    "min",
    "RSS MiB",
    "fds",
    "loop lag ms",
    "storm handshakes",
    "resumes",
    "pushes",
    "echoes",
    "AI answers",
    "abuses answered",
    "errors",
)

_LAG = re.compile(rb"^yektaws_event_loop_lag_seconds (\S+)$", re.MULTILINE)


@dataclass
class Tally:
    """What happened since the last minute line, and over the whole run."""

    minute: collections.Counter[str] = field(default_factory=collections.Counter)
    total: collections.Counter[str] = field(default_factory=collections.Counter)
    errors: collections.Counter[str] = field(default_factory=collections.Counter)
    first_errors: list[str] = field(default_factory=list)

    def count(self, what: str, n: int = 1) -> None:
        self.minute[what] += n
        self.total[what] += n

    def error(self, what: str, detail: object = "") -> None:
        self.count("errors")
        self.errors[what] += 1
        if len(self.first_errors) < 10:
            self.first_errors.append(f"{what}: {detail!r}"[:300])


# -- clients ---------------------------------------------------------------------------------


#: What a client presents about recovery: ``None`` (nothing: the protocol's default), ``{}``
#: (native: ask for it), or ``{"pid": ..., "offset": ...}`` to resume (offset may be absent).
Recovery = dict[str, str] | None


class NativeApp:
    """A native client: JSON frames over aiohttp's websocket."""

    protocol = "native"

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.events: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        self.closed = asyncio.get_running_loop().create_future()
        #: The ``connected`` greeting's data, once read.
        self.greeting: dict[str, Any] = {}
        #: The position of the last recoverable event read (where a resume starts from).
        self.offset: str | None = None
        self._reader = asyncio.get_running_loop().create_task(self._read())

    @classmethod
    async def open(
        cls, http: aiohttp.ClientSession, base: str, token: str, recovery: Recovery = None
    ) -> NativeApp:
        """A connected client, its ``connected`` greeting read."""
        app = cls(await cls._handshake(http, base.replace("http", "ws", 1), token, recovery))
        app.greeting = await app.expect("connected")
        return app

    @staticmethod
    async def _handshake(
        http: aiohttp.ClientSession, base: str, token: str, recovery: Recovery
    ) -> aiohttp.ClientWebSocketResponse:
        query = f"token={token}"
        if recovery == {}:
            query += "&recover=1"
        elif recovery:
            query += "".join(f"&{key}={value}" for key, value in recovery.items())
        return await http.ws_connect(f"{base}/ws?{query}")

    @property
    def pid(self) -> str:
        """The handle a resume presents (native: in the greeting)."""
        return str(self.greeting["recovery"]["pid"])

    async def _read(self) -> None:
        try:
            async for message in self.ws:
                if message.type is aiohttp.WSMsgType.TEXT:
                    frame = orjson.loads(message.data)
                    self.offset = frame.get("offset", self.offset)
                    self.events.put_nowait((frame.get("event"), frame.get("data")))
        finally:
            self.closed.done() or self.closed.set_result(self.ws.close_code)

    async def cut(self) -> None:
        """End the connection as a network that vanished does: the TCP connection goes, no
        close frame (the server keeps the state for a resume); wait until the reader saw it."""
        sock = self.ws.get_extra_info("socket")
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
        await asyncio.wait_for(self.closed, ANSWER_TIMEOUT)

    async def emit(self, event: str, data: Any = None) -> None:
        await self.ws.send_bytes(orjson.dumps({"event": event, "data": data}), compress=None)

    async def expect(self, name: str, timeout: float = ANSWER_TIMEOUT) -> Any:
        async with asyncio.timeout(timeout):
            while True:
                event, data = await self.events.get()
                if event == name:
                    return data

    async def close(self) -> None:
        await self.ws.close()
        self._reader.cancel()


class SocketIOApp(NativeApp):
    """A Socket.IO client: Engine.IO 4 packets over aiohttp's websocket, pings answered."""

    protocol = "socket.io"

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        #: The namespace CONNECT's answer: ``{"sid", "pid"?}``.
        self.handle: dict[str, Any] = {}
        super().__init__(ws)

    @staticmethod
    async def _handshake(
        http: aiohttp.ClientSession, base: str, token: str, recovery: Recovery
    ) -> aiohttp.ClientWebSocketResponse:
        ws = await http.ws_connect(f"{base}/socket.io/?EIO=4&transport=websocket")
        opening = await ws.receive_str(timeout=ANSWER_TIMEOUT)
        if not opening.startswith("0{"):
            raise ConnectionError(f"no Engine.IO OPEN: {opening[:80]}")
        # Recovery is Socket.IO's own (pid and offset in the CONNECT auth), on unless refused.
        await ws.send_str("40" + orjson.dumps({"token": token, **(recovery or {})}).decode())
        return ws

    @property
    def pid(self) -> str:
        return str(self.handle["pid"])

    async def _read(self) -> None:
        try:
            async for message in self.ws:
                if message.type is not aiohttp.WSMsgType.TEXT:
                    continue
                packet: str = message.data
                if packet == "2":
                    await self.ws.send_str("3")
                elif packet.startswith("42"):
                    event, *args = orjson.loads(packet[2:])
                    # A recoverable event's position comes last, after its data.
                    if len(args) == 2 and isinstance(args[1], str):
                        self.offset = args[1]
                    self.events.put_nowait((event, args[0] if args else None))
                elif packet.startswith("40"):
                    self.handle = orjson.loads(packet[2:])
                elif packet.startswith("44"):
                    self.events.put_nowait(("connect_error", orjson.loads(packet[2:])))
                elif packet in ("1", "41"):
                    break
        finally:
            self.closed.done() or self.closed.set_result(self.ws.close_code)

    async def emit(self, event: str, data: Any = None) -> None:
        await self.ws.send_str("42" + orjson.dumps([event, data]).decode())


APPS: tuple[type[NativeApp], ...] = (NativeApp, SocketIOApp)


@dataclass
class Resuming:
    """One app that resumes after every cut: its pushes and position, across its connections."""

    kind: type[NativeApp]
    token: str
    app: NativeApp
    socket_id: str
    pid: str
    offset: str | None = None
    pushes: list[int] = field(default_factory=list)

    def collect(self) -> None:
        """Take what the current connection has read: its pushes, and its position."""
        while not self.app.events.empty():
            event, data = self.app.events.get_nowait()
            if event == "soak:push":
                self.pushes.append(data["seq"])
        self.offset = self.app.offset or self.offset

    def resume_with(self) -> dict[str, str]:
        return {"resume" if self.kind is NativeApp else "pid": self.pid} | (
            {"offset": self.offset} if self.offset is not None else {}
        )


# -- the load --------------------------------------------------------------------------------


class Soak:
    def __init__(self, gateway: Gateway, http: aiohttp.ClientSession, tokens: list[str]) -> None:
        self.gateway = gateway
        self.http = http
        self.tokens = tokens
        self.tally = Tally()
        self.running = True
        self.stopped = asyncio.Event()
        self.stable: list[NativeApp] = []
        self.resuming: list[Resuming] = []
        self.received: dict[int, list[int]] = {}
        self.pushed: list[int] = []
        #: Stable clients the server closed during the run: their pushes cannot be judged.
        self.closed_early: set[int] = set()
        self._token_turn = 0
        self._abuse_turn = 0

    def token(self) -> str:
        self._token_turn += 1
        return self.tokens[self._token_turn % len(self.tokens)]

    async def pause(self, seconds: float) -> None:
        """Sleep, but not past the end of the run."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stopped.wait(), seconds)

    async def forever(self, name: str, step: Callable[[], Awaitable[None]], pause: float) -> None:
        while self.running:
            try:
                await step()
            except Exception as exc:  # a soak reports what went wrong and goes on
                self.tally.error(name, exc)
            await asyncio.sleep(pause)

    # stable clients and pushes

    async def connect_stable(self) -> None:
        for number in range(STABLE_CLIENTS * 2):
            app = await APPS[number % 2].open(self.http, self.gateway.http_url, self.token())
            self.stable.append(app)
            self.received[id(app)] = []

    async def stable_client(self, app: NativeApp) -> None:
        pushes = self.received[id(app)]
        turn = 0
        while self.running and not app.closed.done():
            turn += 1
            try:
                await app.emit("echo", {"turn": turn})
                deadline = time.monotonic() + ANSWER_TIMEOUT
                while True:
                    event, data = await asyncio.wait_for(
                        app.events.get(), max(0.01, deadline - time.monotonic())
                    )
                    if event == "soak:push":
                        pushes.append(data["seq"])
                    elif event == "echo_response":
                        if data["received"] != {"turn": turn}:
                            self.tally.error("echo mismatch", data)
                        break
                self.tally.count("echoes")
            except (TimeoutError, ConnectionError) as exc:
                self.tally.error(f"stable {app.protocol} echo", exc)
            await asyncio.sleep(ECHO_INTERVAL)
        if app.closed.done() and self.running:
            self.closed_early.add(id(app))
            self.tally.error(f"stable {app.protocol} client closed", app.closed.result())

    async def drain_pushes(self) -> None:
        for app in self.stable:
            while not app.events.empty():
                event, data = app.events.get_nowait()
                if event == "soak:push":
                    self.received[id(app)].append(data["seq"])
        for client in self.resuming:
            client.collect()

    # clients that are cut and resume

    async def connect_resuming(self) -> None:
        for number in range(RESUMING_CLIENTS * 2):
            kind, token = APPS[number % 2], self.token()
            app = await kind.open(self.http, self.gateway.http_url, token, recovery={})
            self.resuming.append(Resuming(kind, token, app, app.greeting["socketId"], app.pid))

    async def cut_all(self) -> None:
        before = await self.nodes()
        jobs = [self.cut_and_resume(client) for client in self.resuming]
        for outcome in await asyncio.gather(*jobs, return_exceptions=True):
            if isinstance(outcome, BaseException):
                self.tally.error("resume", outcome)
        after = await self.nodes()
        moved = [c for c in self.resuming if before.get(c.socket_id) != after.get(c.socket_id)]
        self.tally.count("resumes on another process", len(moved))

    async def cut_and_resume(self, client: Resuming) -> None:
        protocol = client.kind.protocol
        if client.app.closed.done():  # the server closed it since the last cut
            self.tally.error(f"resuming {protocol} client closed", client.app.closed.result())
        else:
            await client.app.cut()
        client.collect()
        await client.app.close()
        await asyncio.sleep(random.uniform(*AWAY_SECONDS))
        app = await client.kind.open(
            self.http, self.gateway.http_url, client.token, client.resume_with()
        )
        client.app = app
        greeting = app.greeting
        if (greeting.get("recovered"), greeting["socketId"]) != (True, client.socket_id):
            self.tally.error(f"{protocol} resume not honoured", greeting)
            client.socket_id, client.pid = greeting["socketId"], app.pid
        self.tally.count("resumes")

    async def server_api(self, method: str, path: str, body: Any = None) -> Any:
        """The JSON answer of a server API request (an error unless it is 200)."""
        headers = {"Authorization": f"Bearer {API_KEY}"}
        url = f"http://127.0.0.1:{self.gateway.env['ADMIN_PORT']}{path}"
        async with self.http.request(method, url, json=body, headers=headers) as response:
            answer = await response.json(content_type=None)
        if response.status != 200:
            raise RuntimeError(f"{path} answered {response.status}: {answer}")
        return answer

    async def push(self) -> None:
        seq = len(self.pushed)
        body = {"to": f"user:{USER}", "event": "soak:push", "data": {"seq": seq}}
        await self.server_api("POST", "/emit", body)
        self.pushed.append(seq)
        self.tally.count("pushes")

    async def nodes(self) -> dict[str, str]:
        """socketId -> the process holding it, for every connection of the soak user."""
        answer = await self.server_api("GET", f"/users/{USER}/connections")
        return {conn["socketId"]: conn["node"] for conn in answer["connections"]}

    # AI, storms, abuse

    async def ai_stream(self, number: int) -> None:
        app = await APPS[number % 2].open(self.http, self.gateway.http_url, self.token())
        try:
            message_id = f"soak-{secrets.token_hex(6)}"
            await app.emit(
                "ai:chat",
                {
                    "message": f"hello [[chunks={AI_CHUNKS} delay=0.05]]",
                    "messageId": message_id,
                    "locale": "en",
                },
            )
            started = await app.expect("ai:response:start")
            assert started["messageId"] == message_id, started
            chunks = []
            while True:
                event, data = await asyncio.wait_for(app.events.get(), ANSWER_TIMEOUT)
                if event == "ai:response:chunk":
                    chunks.append(data["chunk"])
                elif event == "ai:response:complete":
                    # The model's pieces, each once and in order; the gateway may join pieces
                    # that come close together into one chunk (AI_CHUNK_INTERVAL).
                    assert data["fullResponse"] == "".join(chunks) == AI_ANSWER, (data, chunks)
                    break
                elif event == "ai:response:error":
                    raise AssertionError(f"ai error {data}")
            self.tally.count("ai answers")
        finally:
            await app.close()

    async def storm(self) -> None:
        limit = asyncio.Semaphore(STORM_CONCURRENCY)

        async def one(kind: type[NativeApp]) -> None:
            async with limit:
                app = await kind.open(self.http, self.gateway.http_url, self.token())
                await app.close()
                self.tally.count("storm handshakes")

        jobs = [one(kind) for kind in APPS for _ in range(STORM_SIZE)]
        for outcome in await asyncio.gather(*jobs, return_exceptions=True):
            if isinstance(outcome, BaseException):
                self.tally.error("storm handshake", outcome)

    async def abuse(self) -> None:
        self._abuse_turn += 1
        await ABUSES[self._abuse_turn % len(ABUSES)](self)
        self.tally.count("abuses answered")

    async def oversize(self) -> None:
        app = await NativeApp.open(self.http, self.gateway.http_url, self.token())
        await app.ws.send_str("x" * (MAX_MESSAGE + 1))
        assert await asyncio.wait_for(app.closed, ANSWER_TIMEOUT) == 1009

    async def garbage(self) -> None:
        app = await NativeApp.open(self.http, self.gateway.http_url, self.token())
        try:
            await app.ws.send_str("{not json")
            assert (await app.expect("error"))["code"] == "bad_frame"
        finally:
            await app.close()

    async def flood(self) -> None:
        app = await NativeApp.open(self.http, self.gateway.http_url, self.token())
        with contextlib.suppress(ConnectionError):  # closed while still flooding
            for _ in range(400):
                await app.emit("ping")
        assert await asyncio.wait_for(app.closed, ANSWER_TIMEOUT) == 1008

    async def unmasked(self) -> None:
        def attempt() -> bytes:
            with socket.create_connection(("127.0.0.1", self.gateway.port), timeout=5) as sock:
                sock.sendall(_upgrade_request(f"/ws?token={self.token()}"))
                _read_response_head(sock)
                sock.sendall(bytes([0x81, 5]) + b"hello")  # a text frame without a mask
                return _read_until_close(sock)

        tail = await asyncio.to_thread(attempt)
        assert struct.pack("!BBH", 0x88, 2, 1002) in tail or b"\x03\xea" in tail, tail[-20:]

    async def not_http(self) -> None:
        def attempt() -> bytes:
            with socket.create_connection(("127.0.0.1", self.gateway.port), timeout=5) as sock:
                sock.sendall(b"\x16\x03\x01 this is not HTTP\r\n\r\n")
                return _read_until_close(sock)

        answer = await asyncio.to_thread(attempt)
        assert answer.split(b"\r\n", 1)[0].split()[1:2] == [b"400"], answer[:40]

    async def bad_socketio_packet(self) -> None:
        app = await SocketIOApp.open(self.http, self.gateway.http_url, self.token())
        await app.ws.send_str("42not-json")
        await asyncio.wait_for(app.closed, ANSWER_TIMEOUT)

    # the minute lines

    def sample(self, processes: list[int]) -> dict[str, Any]:
        return {
            "rss": [rss_kib(pid) / 1024 for pid in processes],
            "fds": [len(os.listdir(f"/proc/{pid}/fd")) for pid in processes],
        }


ABUSES: list[Callable[[Soak], Awaitable[None]]] = [
    Soak.oversize,
    Soak.garbage,
    Soak.flood,
    Soak.unmasked,
    Soak.not_http,
    Soak.bad_socketio_packet,
]


def _upgrade_request(path: str) -> bytes:
    key = "dGhlIHNhbXBsZSBub25jZQ=="
    return (
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    ).encode()


def _read_response_head(sock: socket.socket) -> bytes:
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(4096)
        if not chunk:
            break
        head += chunk
    return head


def _read_until_close(sock: socket.socket) -> bytes:
    data = b""
    with contextlib.suppress(OSError):
        while chunk := sock.recv(65536):
            data += chunk
    return data


async def _loop_lags(http: aiohttp.ClientSession, ports: list[int]) -> list[float]:
    lags = []
    for port in ports:
        async with http.get(f"http://127.0.0.1:{port}/metrics") as response:
            match = _LAG.search(await response.read())
            lags.append(float(match.group(1)) * 1000 if match else float("nan"))
    return lags


# -- the run ---------------------------------------------------------------------------------


def _gateway_env(database_url: str, model_port: int) -> dict[str, str]:
    return {
        "DATABASE_URL": database_url,
        "ADMIN_API_KEY": API_KEY,
        "ADMIN_PORT": str(free_port()),
        "AI_BASE_URL": f"http://127.0.0.1:{model_port}/v1",
        "MAX_MESSAGE_SIZE": str(MAX_MESSAGE),
        "MAX_CONNECTIONS_PER_USER": "1000",
        "MAX_CONNECTIONS_PER_ADDRESS": "2000",
    }


async def soak(minutes: float, workers: int) -> int:
    warmup = WARMUP_MINUTES
    redis: RedisServer | None = None
    model = None
    with temporary_database(configured_server_url()) as database_url:
        tokens = [insert_session(database_url, user_id=USER, logged_in=True) for _ in range(50)]
        model_port = free_port()
        model = subprocess.Popen(
            [sys.executable, str(REPO / "tests" / "fake_model.py"), "--port", str(model_port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        env = _gateway_env(database_url, model_port)
        args: list[str] = []
        if workers > 1:
            if answers():
                redis_url = SHARED_URL
            else:
                redis = RedisServer()
                redis.start()
                redis_url = redis.url
            base = free_port_pair()
            env |= {
                "REDIS_URL": redis_url,
                "REDIS_PREFIX": f"yektaws-soak-{secrets.token_hex(4)}",
                "WORKER_BASE_PORT": str(base),
            }
            args = ["--workers", str(workers)]
        gateway = start_gateway(env, args=args, ready_timeout=60)
        try:
            return await _run(gateway, tokens, minutes, warmup, workers)
        finally:
            gateway.stop()
            model.terminate()
            model.wait(10)
            if redis is not None:
                redis.stop()
            print(f"gateway log: {gateway.log_path}")


async def _run(
    gateway: Gateway, tokens: list[str], minutes: float, warmup: float, workers: int
) -> int:
    if workers > 1:
        await _wait_for_workers(gateway, workers)
        processes = sorted(children(gateway.pid))
        base = int(gateway.env["WORKER_BASE_PORT"])
        metric_ports = [base + index for index in range(workers)]
    else:
        processes, metric_ports = [gateway.pid], [gateway.port]
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as http:
        load = Soak(gateway, http, tokens)
        await load.connect_stable()
        await load.connect_resuming()
        tasks = [asyncio.create_task(load.stable_client(app)) for app in load.stable]
        tasks.append(asyncio.create_task(load.forever("push", load.push, 1 / PUSH_RATE)))
        for number in range(AI_STREAMS):
            step = _bound(load.ai_stream, number)
            tasks.append(asyncio.create_task(load.forever("ai stream", step, 0.5)))
        tasks.append(asyncio.create_task(load.forever("abuse", load.abuse, ABUSE_EVERY)))
        storms = asyncio.create_task(_storms(load))

        print(
            f"soak: {minutes:g} min, {'one process' if workers == 1 else f'{workers} workers'}, "
            f"{len(load.stable)} stable clients, {len(load.resuming)} cut and resumed at each "
            f"storm, {PUSH_RATE} pushes/s; RSS baseline at minute {warmup:g}"
        )
        print(" | ".join(COLUMNS))
        samples: list[dict[str, Any]] = []
        started = time.monotonic()
        end = started + minutes * 60
        next_sample = started + min(SAMPLE_EVERY, minutes * 60)
        while time.monotonic() < end:
            await asyncio.sleep(max(0.0, min(next_sample, end) - time.monotonic()))
            sample = load.sample(processes)
            sample["lag"] = await _loop_lags(http, metric_ports)
            sample["minute"] = (time.monotonic() - started) / 60
            samples.append(sample)
            _print_minute(sample, load.tally)
            next_sample += SAMPLE_EVERY
        load.running = False
        load.stopped.set()
        await storms  # a storm under way ends, and its cut clients are back, before the verdict
        await asyncio.sleep(SETTLE)
        await load.drain_pushes()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for app in [*load.stable, *(client.app for client in load.resuming)]:
            await app.close()
    return _verdict(load, samples, warmup, gateway)


def _bound(step: Callable[[int], Awaitable[None]], number: int) -> Callable[[], Awaitable[None]]:
    return lambda: step(number)


async def _storms(load: Soak) -> None:
    """Every STORM_EVERY: a reconnect storm, and meanwhile every resuming client cut."""
    await load.pause(STORM_EVERY / 2)
    while load.running:
        await asyncio.gather(load.storm(), load.cut_all())
        await load.pause(STORM_EVERY)


async def _wait_for_workers(gateway: Gateway, workers: int) -> None:
    deadline = time.monotonic() + 60
    while len([e for e in gateway.logs() if e.get("event") == "listening"]) < workers:
        if time.monotonic() > deadline:
            raise RuntimeError("the workers did not all start")
        await asyncio.sleep(0.2)


def _print_minute(sample: dict[str, Any], tally: Tally) -> None:
    minute, counts = tally.minute, dict(tally.minute)
    rss = " + ".join(f"{value:.1f}" for value in sample["rss"])
    fds = " + ".join(str(value) for value in sample["fds"])
    lag = " / ".join(f"{value:.1f}" for value in sample["lag"])
    handshakes = counts.get("storm handshakes", 0)
    print(
        f"{sample['minute']:4.1f} | {rss} | {fds} | {lag} | {handshakes} | "
        f"{counts.get('resumes', 0)} | "
        f"{counts.get('pushes', 0)} | {counts.get('echoes', 0)} | {counts.get('ai answers', 0)} | "
        f"{counts.get('abuses answered', 0)} | {counts.get('errors', 0)}",
        flush=True,
    )
    minute.clear()


def _verdict(load: Soak, samples: list[dict[str, Any]], warmup: float, gateway: Gateway) -> int:
    failures = []
    final = samples[-1]
    baseline = next((s for s in samples if s["minute"] >= warmup - 1e-6), None)
    judged = baseline is not None and final["minute"] - baseline["minute"] >= 1 - 1e-6
    if not judged:
        baseline = samples[0]
    for index, (before, after) in enumerate(zip(baseline["rss"], final["rss"], strict=True)):
        growth = (after - before) / before
        print(
            f"process {index}: RSS {before:.1f} MiB at minute {baseline['minute']:.1f}, "
            f"{after:.1f} MiB at the end ({growth:+.1%})"
            + ("" if judged else f"; not judged: the run ends within the {warmup}-minute warm-up")
        )
        if judged and growth > RSS_GROWTH_LIMIT:
            failures.append(f"process {index} RSS grew {growth:+.1%} after the warm-up")
    pushed = load.pushed
    # A stable client the server closed is reported as an error already, its pushes not judged.
    stable = [
        (app.protocol, load.received[id(app)])
        for app in load.stable
        if id(app) not in load.closed_early
    ]
    resuming = [(f"resuming {c.kind.protocol}", c.pushes) for c in load.resuming]
    intact = {}
    for group, clients in (("stable", stable), ("resuming", resuming)):
        intact[group] = 0
        for name, got in clients:
            if got == pushed:
                intact[group] += 1
                continue
            counts = collections.Counter(got)
            lost = len(set(pushed) - set(got))
            doubled = sum(1 for n in counts.values() if n > 1)
            failures.append(f"{name} client: {lost} pushes lost, {doubled} doubled")
    print(
        f"pushes: {len(pushed)} sent, delivered intact to {intact['stable']}/{len(load.stable)} "
        f"clients that stayed connected and to {intact['resuming']}/{len(load.resuming)} that "
        f"were cut and resumed {load.tally.total['resumes']} times"
    )
    tracebacks = gateway.log_text().count("Traceback")
    if tracebacks:
        failures.append(f"{tracebacks} tracebacks in the gateway log")
    entries = gateway.logs()
    levels = collections.Counter(e.get("level") for e in entries)
    complaints = collections.Counter(
        e.get("event") for e in entries if e.get("level") in ("warning", "error", "critical")
    )
    print(f"gateway log: {dict(levels)}; warnings and errors: {dict(complaints)}")
    print(f"totals: {dict(load.tally.total)}")
    if load.tally.errors:
        failures.append(f"client errors: {dict(load.tally.errors)}")
        for line in load.tally.first_errors:
            print(f"  error {line}")
    for failure in failures:
        print(f"FAIL {failure}")
    print("PASS" if not failures else "FAIL")
    return 1 if failures else 0


def main() -> None:
    parser = argparse.ArgumentParser(prog="scripts/soak", description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=30, help="length of the run (30)")
    parser.add_argument("--workers", type=int, default=1, help="gateway processes (1)")
    options = parser.parse_args()
    sys.exit(asyncio.run(soak(options.minutes, options.workers)))


if __name__ == "__main__":
    main()
