"""Chaos under ``yektaws serve --workers 2``: a worker SIGKILLed while its clients stream.

The real supervisor and its two workers on one Redis, recovery on (the log is a Redis Stream);
the stock socket.io-client and the gateway's own native client library, in Node
(``tests/js/fleet.mjs``), connected through the shared port so that the kernel spreads them over
both workers; pushes through the server API and an AI answer from the fake model streaming to
every client. Then one worker gets SIGKILL: no drain, no close frame, its memory gone.

What its clients must see: they reconnect by themselves (to the surviving worker or to the one
the supervisor starts again), resume on the same ``socketId``, and have every push exactly once
and in order; the answer whose producer died ends with ``ai:response:error`` code
``interrupted`` after the chunks it had, each once; a new answer on the resumed connection
completes. The surviving worker's clients notice nothing. The supervisor starts the killed
worker again, and a SIGTERM afterwards still drains both.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

from fake_model import FakeModel
from support.cluster import API_KEY, admin_port, call_api
from support.gateway import Gateway, children, free_port, free_port_pair, start_gateway
from support.node import JS_DIR
from support.node import _require_node as node_binary

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(180)]

PROTOCOLS = ("native", "socket.io")
#: Every client is one of this user's connections: one push to ``user:<USER>`` reaches all.
USER = 7070
#: Clients of each protocol wanted on each worker, and the most the test opens to get there.
PER_WORKER_AND_PROTOCOL = 2
MAX_CLIENTS = 40
PUSH_INTERVAL = 0.05
#: The answer every client is streaming when the worker dies: 100 chunks over 10 s, so that the
#: kill (once each client had CHUNKS_BEFORE_KILL of them) always comes mid-answer.
LONG_ANSWER = (100, "[[chunks=100 delay=0.1]]")
CHUNKS_BEFORE_KILL = 3
#: The answer each resumed client asks for afterwards.
SHORT_ANSWER = (5, "[[chunks=5 delay=0.05]]")
#: How long the killed worker's clients may take to be back, and every answer to end: the dead
#: producer's answers end once its node key expires (bus.NODE_TTL, 5 s) and the node where the
#: client resumed next looks (every 2 s).
RESUME_TIMEOUT = 20.0
ANSWER_TIMEOUT = 30.0
FINAL = ("ai:response:complete", "ai:response:error")
PUSH = "chaos:push"


def full_text(chunks: int) -> str:
    return "".join(f"chunk-{i} " for i in range(chunks))


# -- the clients ------------------------------------------------------------------------------


@dataclass
class Seen:
    """What one client's app saw, across all its connections."""

    protocol: str
    connects: list[tuple[str, bool]] = field(default_factory=list)
    disconnects: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    events: list[tuple[str, Any, str | None]] = field(default_factory=list)

    @property
    def socket_id(self) -> str:
        return self.connects[0][0]

    def pushes(self) -> list[int]:
        return [data["n"] for name, data, _ in self.events if name == PUSH]

    def answer(self, tag: str) -> list[tuple[str, Any, str | None]]:
        return [
            (name, data, offset)
            for name, data, offset in self.events
            if name.startswith("ai:response:") and data.get("messageId") == tag
        ]

    def answer_ended(self, tag: str) -> bool:
        return any(name in FINAL for name, _, _ in self.answer(tag))

    def answer_text(self, tag: str) -> str:
        return "".join(
            data["chunk"] for name, data, _ in self.answer(tag) if name.endswith("chunk")
        )

    def check_complete(self, tag: str, chunks: int) -> None:
        """The answer came whole: every chunk once, in order, then its completion."""
        name, data, _ = self.answer(tag)[-1]
        assert name == "ai:response:complete", (self.protocol, name, data)
        assert self.answer_text(tag) == data["fullResponse"] == full_text(chunks)

    def check_interrupted(self, tag: str, chunks: int) -> None:
        """The answer whose producer died: the chunks it had, each once and in order, then
        ``interrupted``, with a text to show the user."""
        answer = self.answer(tag)
        names = [name for name, _, _ in answer]
        assert names[0] == "ai:response:start" and names[-1] == "ai:response:error", names
        assert set(names[1:-1]) <= {"ai:response:chunk"}, names
        error = answer[-1][1]
        assert (error["code"], error["retryable"]) == ("interrupted", True), error
        assert "interrupted" in error["error"]  # English, as the request asked
        text = self.answer_text(tag)
        prefixes = [full_text(n) for n in range(CHUNKS_BEFORE_KILL, chunks)]
        assert text in prefixes, f"{self.protocol}: chunks lost, doubled or reordered: {text!r}"
        offsets = [offset for _, _, offset in answer]
        assert None not in offsets and len(set(offsets)) == len(offsets), offsets


class Fleet:
    """``tests/js/fleet.mjs``: clients of both libraries in one Node process."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.seen: list[Seen] = []
        self._changed = asyncio.Event()
        self._reader = asyncio.get_running_loop().create_task(self._read())

    @classmethod
    async def start(cls, url: str) -> Fleet:
        process = await asyncio.create_subprocess_exec(
            node_binary(),
            str(JS_DIR / "fleet.mjs"),
            json.dumps({"url": url}),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            cwd=JS_DIR,
        )
        return cls(process)

    async def _read(self) -> None:
        assert self.process.stdout is not None
        while raw := await self.process.stdout.readline():
            line = json.loads(raw)
            seen = self.seen[line["c"]]
            kind = line["type"]
            if kind == "connect":
                seen.connects.append((line["id"], line["recovered"]))
            elif kind == "event":
                seen.events.append((line["name"], line["data"], line["offset"]))
            elif kind == "disconnect":
                seen.disconnects.append(line["reason"])
            else:
                seen.errors.append(f"{kind}: {line.get('message')}")
            self._changed.set()

    async def _command(self, **command: Any) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps(command).encode() + b"\n")
        await self.process.stdin.drain()

    async def open(self, protocol: str, token: str) -> int:
        """A new client; returns its number once it is connected."""
        number = len(self.seen)
        self.seen.append(Seen(protocol))
        await self._command(op="open", c=number, protocol=protocol, token=token)
        await self.until(lambda: bool(self.seen[number].connects), 10, f"client {number} up")
        return number

    async def emit(self, number: int, event: str, data: Any) -> None:
        await self._command(op="emit", c=number, event=event, data=data)

    async def ask(self, number: int, directive: str) -> str:
        """Ask client ``number`` for an AI answer following ``directive``; its messageId."""
        tag = f"chaos-{number}-{uuid.uuid4().hex[:6]}"
        data = {"message": f"{tag} {directive}", "messageId": tag, "locale": "en"}
        await self.emit(number, "ai:chat", data)
        return tag

    async def until(self, condition: Callable[[], bool], timeout: float, what: str) -> None:
        """Wait until ``condition()`` holds, re-evaluated whenever a client saw something."""
        deadline = time.monotonic() + timeout
        while not condition():
            if self._reader.done():  # Node exited, or printed what this side cannot read
                self._reader.result()
                raise AssertionError(f"the fleet ended (exit code {self.process.returncode})")
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"not within {timeout}s: {what}"
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), min(remaining, 0.5))

    async def stop(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()
        try:
            await asyncio.wait_for(self.process.wait(), 5)
        except TimeoutError:
            self.process.kill()
            await self.process.wait()
        self._reader.cancel()


@pytest_asyncio.fixture(loop_scope="module")
async def fleet_of() -> AsyncIterator[Callable[..., Any]]:
    started: list[Fleet] = []

    async def start(url: str) -> Fleet:
        started.append(await Fleet.start(url))
        return started[-1]

    yield start
    for fleet in started:
        await fleet.stop()


# -- pushes -----------------------------------------------------------------------------------


@dataclass
class Pusher:
    """Pushes numbered events through the server API's shared port, as another service does.

    A push whose request failed (the worker that accepted it was killed) may or may not have
    been emitted: it is ``uncertain``, and may arrive at most once. Every push answered 200 must
    arrive exactly once.
    """

    gateway: Gateway
    acked: list[int] = field(default_factory=list)
    uncertain: list[int] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    running: bool = True

    async def run(self) -> None:
        url = f"http://127.0.0.1:{admin_port(self.gateway)}/emit"
        headers = {"Authorization": f"Bearer {API_KEY}"}
        # A connection per push: a kept-alive one would tie every push to one worker.
        connector = aiohttp.TCPConnector(force_close=True)
        timeout = aiohttp.ClientTimeout(total=5)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http:
            n = 0
            while self.running:
                body = {"to": f"user:{USER}", "event": PUSH, "data": {"n": n}}
                try:
                    async with http.post(url, json=body, headers=headers) as response:
                        ok = response.status == 200
                        detail = f"{response.status} {await response.text()}"
                except (aiohttp.ClientError, TimeoutError) as exc:
                    ok, detail = False, repr(exc)
                if ok:
                    self.acked.append(n)
                else:
                    self.uncertain.append(n)
                    self.failures.append(detail)
                n += 1
                await asyncio.sleep(PUSH_INTERVAL)


def check_pushes(seen: Seen, pusher: Pusher) -> None:
    """Every acknowledged push exactly once, in order; an uncertain one at most once."""
    got = seen.pushes()
    assert got == sorted(set(got)), f"{seen.protocol} {seen.socket_id}: doubled or out of order"
    missing = sorted(set(pusher.acked) - set(got))
    assert not missing, f"{seen.protocol} {seen.socket_id} lost pushes {missing}"
    assert set(got) <= set(pusher.acked) | set(pusher.uncertain)


# -- the gateway ------------------------------------------------------------------------------


@pytest.fixture
def workers(
    database_url: str, redis_url: str, redis_prefix: str, fake: FakeModel
) -> Iterator[Gateway]:
    gateway = start_gateway(
        {
            "DATABASE_URL": database_url,
            "REDIS_URL": redis_url,
            "REDIS_PREFIX": redis_prefix,
            "WORKER_BASE_PORT": str(free_port_pair()),
            "ADMIN_API_KEY": API_KEY,
            "ADMIN_PORT": str(free_port()),
            "AI_BASE_URL": fake.base_url,
            "AI_MODEL": "fake-model",
            "MAX_CONNECTIONS_PER_USER": str(MAX_CLIENTS * 2),
        },
        args=["--workers", "2"],
        ready_timeout=30,
    )
    yield gateway
    gateway.stop(signal.SIGKILL)  # only if the test did not stop it


def log_entries(gateway: Gateway, event: str) -> list[dict[str, Any]]:
    return [entry for entry in gateway.logs() if entry.get("event") == event]


def node_of(pid: int) -> str:
    """The name a worker has in the cluster (and in presence answers)."""
    return f"{socket.gethostname()}:{pid}"


async def worker_pids(gateway: Gateway) -> list[int]:
    """The PIDs of workers 0 and 1, once both listen."""
    for _ in range(200):
        if len(started := log_entries(gateway, "worker_started")) == 2:
            break
        await asyncio.sleep(0.05)
    pids = [entry["pid"] for entry in sorted(started, key=lambda e: e["worker"])]
    await wait_listening(gateway, pids)
    return pids


async def wait_listening(gateway: Gateway, pids: list[int], timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    wanted = {node_of(pid) for pid in pids}
    while not wanted <= {entry.get("node") for entry in log_entries(gateway, "listening")}:
        assert time.monotonic() < deadline, f"workers {pids} not listening"
        await asyncio.sleep(0.1)


async def where(gateway: Gateway) -> dict[str, str]:
    """socketId -> node of every connection of the test's user, from the server API."""
    status, body = await call_api(gateway, "GET", f"/users/{USER}/connections")
    assert status == 200 and body["complete"] is True, body
    return {conn["socketId"]: conn["node"] for conn in body["connections"]}


async def spread_over(
    gateway: Gateway, fleet: Fleet, pids: list[int], token: Callable[[], str]
) -> dict[int, str]:
    """Open clients, protocols alternating, until each worker holds enough of each; returns
    client number -> node."""
    nodes: dict[int, str] = {}
    while True:
        counts = {
            (node_of(pid), protocol): sum(
                1 for c, node in nodes.items() if node == node_of(pid)
                and fleet.seen[c].protocol == protocol
            )
            for pid in pids
            for protocol in PROTOCOLS
        }  # fmt: skip
        if min(counts.values()) >= PER_WORKER_AND_PROTOCOL:
            return nodes
        assert len(fleet.seen) < MAX_CLIENTS, f"the kernel kept clients on one worker: {counts}"
        number = await fleet.open(PROTOCOLS[len(fleet.seen) % 2], token())
        socket_id = fleet.seen[number].socket_id
        for _ in range(50):  # presence follows the greeting by a moment
            if socket_id in (located := await where(gateway)):
                break
            await asyncio.sleep(0.05)
        nodes[number] = located[socket_id]


# -- the test ---------------------------------------------------------------------------------


async def test_sigkill_of_a_worker_loses_no_push_and_ends_its_answers_as_interrupted(
    workers: Gateway, fleet_of: Callable[..., Any], make_token: Callable[..., str]
) -> None:
    gateway = workers
    pids = await worker_pids(gateway)

    fleet = await fleet_of(gateway.http_url)
    nodes = await spread_over(
        gateway, fleet, pids, lambda: make_token(user_id=USER, logged_in=True)
    )
    victim = pids[0]
    on_victim = [c for c, node in nodes.items() if node == node_of(victim)]
    elsewhere = [c for c in nodes if c not in on_victim]

    pusher = Pusher(gateway)
    pushing = asyncio.create_task(pusher.run())
    long_chunks, long_directive = LONG_ANSWER
    first = {c: await fleet.ask(c, long_directive) for c in nodes}

    def chunks_so_far(c: int) -> int:
        return sum(1 for name, _, _ in fleet.seen[c].answer(first[c]) if name.endswith("chunk"))

    await fleet.until(
        lambda: all(chunks_so_far(c) >= CHUNKS_BEFORE_KILL for c in nodes), 20, "answers flow"
    )
    os.kill(victim, signal.SIGKILL)
    killed_at = time.monotonic()

    # Its clients come back, each on its own socketId, resumed.
    await fleet.until(
        lambda: all(len(fleet.seen[c].connects) >= 2 for c in on_victim),
        RESUME_TIMEOUT,
        "the killed worker's clients reconnected",
    )
    resumed_after = time.monotonic() - killed_at
    second = {}
    short_chunks, short_directive = SHORT_ANSWER
    for c in on_victim:
        second[c] = await fleet.ask(c, short_directive)
    await fleet.until(
        lambda: (
            all(fleet.seen[c].answer_ended(first[c]) for c in nodes)
            and all(fleet.seen[c].answer_ended(second[c]) for c in on_victim)
        ),
        ANSWER_TIMEOUT,
        "every answer ended",
    )
    await asyncio.sleep(0.5)
    pusher.running = False
    await pushing
    last = pusher.acked[-1]
    await fleet.until(
        lambda: all(last in fleet.seen[c].pushes() for c in nodes), 10, "the last push arrived"
    )
    await asyncio.sleep(0.3)  # nothing more, and nothing twice, may come
    print(
        f"clients: {len(on_victim)} on the killed worker, {len(elsewhere)} elsewhere; resumed "
        f"within {resumed_after:.2f} s; pushes: {len(pusher.acked)} acknowledged, "
        f"{len(pusher.uncertain)} uncertain ({pusher.failures})"
    )

    for c in on_victim:
        seen = fleet.seen[c]
        assert seen.connects == [(seen.socket_id, False), (seen.socket_id, True)], seen.connects
        assert seen.errors == [], seen.errors
        check_pushes(seen, pusher)
        seen.check_interrupted(first[c], long_chunks)
        seen.check_complete(second[c], short_chunks)  # the resumed connection serves answers
    for c in elsewhere:
        seen = fleet.seen[c]
        assert seen.connects == [(seen.socket_id, False)] and seen.disconnects == []
        check_pushes(seen, pusher)
        seen.check_complete(first[c], long_chunks)

    # A request caught by the kill may have failed; everything else was answered.
    assert len(pusher.uncertain) <= 3, pusher.failures
    assert len(pusher.acked) > 50

    # The supervisor saw the worker die and started it again; every client is on a live worker.
    assert gateway.wait_for_log("worker_exited", pid=victim)["code"] == -signal.SIGKILL
    restarted = log_entries(gateway, "worker_started")[-1]
    assert (restarted["worker"], len(log_entries(gateway, "worker_started"))) == (0, 3)
    assert sorted(children(gateway.pid)) == sorted([pids[1], restarted["pid"]])
    await wait_listening(gateway, [restarted["pid"]])
    located = await where(gateway)
    assert {fleet.seen[c].socket_id for c in nodes} <= set(located)
    assert set(located.values()) <= {node_of(pids[1]), node_of(restarted["pid"])}
    landed = [located[fleet.seen[c].socket_id] for c in on_victim]
    print(f"resumed on the surviving worker: {landed.count(node_of(pids[1]))} of {len(landed)}")

    await fleet.stop()
    assert gateway.stop() == 0
    assert gateway.wait_for_log("workers_stopped")["exitCodes"] == [0, 0]
    assert "Traceback" not in gateway.log_text()
