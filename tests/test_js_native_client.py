"""The native client library (clients/js) against the real gateway, in Chromium and in Node.

Each scenario runs twice, with the same library file: in Debian's headless Chromium (a page
served from 127.0.0.1, so its origin is in the gateway's ``CORS_ORIGIN``, and the browser's own
``WebSocket`` carrying the token as a subprotocol) and in Node with the ``ws`` package. Both run
tests/js/native_harness.mjs, which turns everything the client does into JSON lines read here.
Connections are cut by a TCP proxy the way a phone changing networks cuts them (a reset, no
close frame); pushes go through the server API while the client is away, and the client must
come back by itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import uuid
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from aiohttp import web
from aiohttp.test_utils import TestServer

from fake_model import FakeModel
from support.browser import Browser, Page
from support.cluster import API_KEY, call_api, two_nodes
from support.gateway import Gateway, free_port, start_gateway
from support.node import JS_DIR
from support.node import _require_node as node_binary
from support.tcpproxy import CuttableProxy, SilenceableProxy

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(90)]

CLIENT_DIR = Path(__file__).resolve().parents[1] / "clients" / "js"
MakeToken = Callable[..., str]

#: Seconds between two looks at the page's lines.
POLL_INTERVAL = 0.02
#: Fast retries, so that a test waits for behaviour rather than for the default backoff.
FAST_RECONNECT = {"minDelay": 100, "maxDelay": 300, "jitter": 0.5}

PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>native client</title></head><body>
<script type="module">
  import { YektaClient } from "/client/index.js";
  import { command, start } from "/harness/native_harness.mjs";
  window.lines = [];
  const sink = (line) => window.lines.push(line);
  window.startClient = (options) => {
    window.client = start(YektaClient, WebSocket, options, sink);
  };
  window.command = (cmd) => command(window.client, cmd, sink);
  window.harnessReady = true;
</script>
</body></html>
"""


# -- the page, the gateways ------------------------------------------------------------------------


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def site() -> AsyncIterator[str]:
    """The test page, the library (clients/js) and the harness, served from 127.0.0.1."""
    files = {
        "client": {"index.js": CLIENT_DIR / "index.js"},
        "harness": {"native_harness.mjs": JS_DIR / "native_harness.mjs"},
    }

    async def page(request: web.Request) -> web.Response:
        return web.Response(text=PAGE, content_type="text/html")

    async def script(request: web.Request) -> web.Response:
        path = files.get(request.match_info["folder"], {}).get(request.match_info["name"])
        if path is None:
            raise web.HTTPNotFound()
        # A module script must come with a JavaScript type, or the browser refuses to run it.
        return web.Response(text=path.read_text(), content_type="text/javascript")

    app = web.Application()
    app.router.add_get("/", page)
    app.router.add_get("/{folder}/{name}", script)
    async with TestServer(app, host="127.0.0.1", port=free_port()) as server:
        yield str(server.make_url("/"))


def _gateway(database_url: str, site: str, **env: str) -> Gateway:
    return start_gateway(
        {
            "DATABASE_URL": database_url,
            "ADMIN_API_KEY": API_KEY,
            "ADMIN_PORT": str(free_port()),
            "CORS_ORIGIN": site.rstrip("/"),  # the page's origin: browsers always send Origin
            **env,
        }
    )


@pytest.fixture(scope="module")
def gateway(database_url: str, site: str) -> Iterator[Gateway]:
    process = _gateway(database_url, site)
    yield process
    process.stop()


@pytest.fixture(scope="module")
def strict(database_url: str, site: str) -> Iterator[Gateway]:
    """A gateway that keeps a lost connection's state for 2 seconds only."""
    process = _gateway(database_url, site, RECOVERY_WINDOW="2")
    yield process
    process.stop()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def chromium() -> AsyncIterator[Browser]:
    """One headless Chromium for the module; every test opens a page of its own."""
    async with Browser() as running:
        yield running


@pytest.fixture
def proxy_to(request: pytest.FixtureRequest) -> Callable[..., Any]:
    def make(gateway: Gateway, kind: type[SilenceableProxy] = CuttableProxy) -> Any:
        proxy = kind(gateway.port)
        request.addfinalizer(proxy.close)
        return proxy

    return make


# -- the library, in each runtime ------------------------------------------------------------------


class JsClient(ABC):
    """A YektaClient running somewhere, seen through the lines its harness writes.

    Every line read is kept in :attr:`lines`; :meth:`until` walks them with a cursor, so a line
    read while a command waited for its outcome is still found by the next :meth:`until`.
    """

    def __init__(self) -> None:
        self.lines: list[dict[str, Any]] = []
        self._cursor = 0
        self._tags = 0

    @abstractmethod
    async def _read(self, timeout: float) -> dict[str, Any]:
        """The next line the harness wrote."""

    @abstractmethod
    async def _command(self, command: dict[str, Any]) -> None: ...

    @abstractmethod
    async def stop(self) -> None: ...

    async def _first(
        self, start: int, match: Callable[[dict[str, Any]], bool], timeout: float
    ) -> int:
        """The index of the first line from ``start`` that ``match`` accepts, reading as needed."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        index = start
        while True:
            while index < len(self.lines):
                if match(self.lines[index]):
                    return index
                index += 1
            left = deadline - loop.time()
            if left <= 0:
                recent = "\n".join(map(json.dumps, self.lines[start:][-20:]))
                raise TimeoutError(f"no such line within {timeout}s; since the cursor:\n{recent}")
            self.lines.append(await self._read(left))

    async def until(
        self, kind: str, timeout: float = 10.0, **fields: Any
    ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """The next line of ``kind`` (with ``fields``), and the lines before it."""

        def match(line: dict[str, Any]) -> bool:
            return line["type"] == kind and all(line.get(k) == v for k, v in fields.items())

        index = await self._first(self._cursor, match, timeout)
        before = self.lines[self._cursor : index]
        self._cursor = index + 1
        return self.lines[index], before

    async def quiet(self, seconds: float = 1.0) -> list[dict[str, Any]]:
        """The lines written within the next ``seconds`` (none, for a client that stopped)."""
        fresh: list[dict[str, Any]] = []
        deadline = asyncio.get_running_loop().time() + seconds
        with contextlib.suppress(TimeoutError):
            while (left := deadline - asyncio.get_running_loop().time()) > 0:
                fresh.append(await self._read(left))
        self.lines.extend(fresh)
        return fresh

    async def command(self, op: str, **fields: Any) -> dict[str, Any]:
        """Run one command (request, send, close, state); returns the line of its outcome."""
        self._tags += 1
        tag = self._tags
        await self._command({"op": op, "tag": tag, **fields})
        index = await self._first(0, lambda line: line.get("tag") == tag, 15)
        return self.lines[index]

    def events(self, name: str) -> list[Any]:
        """The data of every ``name`` event read so far, in order."""
        return [line["data"] for line in self.lines if line.get("name") == name]

    async def request(self, event: str, data: Any = None) -> dict[str, Any]:
        """``{type: "reply", data}`` or ``{type: "rejected", code, retryable, sent}``."""
        return await self.command("request", event=event, data=data)


class NodeClient(JsClient):
    """tests/js/native_client.mjs: the library with the ``ws`` package as its WebSocket."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        super().__init__()
        self.process = process

    @classmethod
    async def start(cls, options: dict[str, Any]) -> NodeClient:
        process = await asyncio.create_subprocess_exec(
            node_binary(),
            str(JS_DIR / "native_client.mjs"),
            json.dumps(options),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            cwd=JS_DIR,
        )
        return cls(process)

    async def _read(self, timeout: float) -> dict[str, Any]:
        assert self.process.stdout is not None
        raw = await asyncio.wait_for(self.process.stdout.readline(), timeout)
        assert raw, f"the Node client exited with {await self.process.wait()}"
        return json.loads(raw)

    async def _command(self, command: dict[str, Any]) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps(command).encode() + b"\n")
        await self.process.stdin.drain()

    async def stop(self) -> None:
        if self.process.returncode is None:
            self.process.kill()
            await self.process.wait()


class BrowserClient(JsClient):
    """The library in a Chromium page, with the browser's own WebSocket."""

    def __init__(self, page: Page) -> None:
        super().__init__()
        self.page = page
        self._buffer: list[dict[str, Any]] = []
        self._fetched = 0

    @classmethod
    async def start(cls, browser: Browser, site: str, options: dict[str, Any]) -> BrowserClient:
        page = await browser.new_page()
        await page.goto(site)
        await page.wait_for("window.harnessReady === true")
        await page.evaluate(f"window.startClient({json.dumps(options)})")
        return cls(page)

    async def _read(self, timeout: float) -> dict[str, Any]:
        # A deadline of its own rather than asyncio.timeout() around the polling: on Python 3.11
        # a cancellation that lands as a DevTools reply completes is lost inside wait_for
        # (CPython gh-86296), and the timeout would then never fire.
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not self._buffer:
            fresh = await self.page.evaluate(f"window.lines.slice({self._fetched})")
            self._fetched += len(fresh)
            self._buffer.extend(fresh)
            if not fresh:
                if loop.time() >= deadline:
                    raise TimeoutError(f"no line from the page within {timeout}s")
                await asyncio.sleep(POLL_INTERVAL)
        return self._buffer.pop(0)

    async def _command(self, command: dict[str, Any]) -> None:
        # Not awaited in the page: a request's outcome arrives as a line, like everything else.
        await self.page.evaluate(f"void window.command({json.dumps(command)})")

    async def stop(self) -> None:
        await self.page.evaluate("window.client && window.client.close()")
        await self.page.close()


Launch = Callable[..., Any]


@pytest.fixture(params=["chromium", "node"])
def runtime(request: pytest.FixtureRequest) -> Browser | None:
    """Where the library runs: the module's Chromium, or Node (``None``)."""
    return request.getfixturevalue("chromium") if request.param == "chromium" else None


@pytest_asyncio.fixture(loop_scope="module")
async def launch(runtime: Browser | None, site: str) -> AsyncIterator[Launch]:
    """``await launch(port, token, **options)``: a started client in this test's runtime."""
    started: list[JsClient] = []

    async def start(port: int, token: str, **options: Any) -> JsClient:
        config = {"url": f"ws://127.0.0.1:{port}/ws", "token": token, "options": options}
        if runtime is not None:
            client: JsClient = await BrowserClient.start(runtime, site, config)
        else:
            client = await NodeClient.start(config)
        started.append(client)
        return client

    yield start
    for client in started:
        await client.stop()


async def push(gateway: Gateway, to: str, n: int) -> None:
    status, body = await call_api(
        gateway, "POST", "/emit", {"to": to, "event": "notice", "data": {"n": n}}
    )
    assert status == 200, body


def notices(lines: list[dict[str, Any]]) -> list[int]:
    return [
        line["data"]["n"] for line in lines if line["type"] == "event" and line["name"] == "notice"
    ]


# -- requests ------------------------------------------------------------------------------------


async def test_requests_resolve_with_their_reply_and_reject_with_the_error_code(
    launch: Launch, gateway: Gateway, make_token: MakeToken
) -> None:
    client = await launch(gateway.port, make_token(user_id=5101, logged_in=True))
    connected, _ = await client.until("connected")
    assert connected["recovered"] is False
    await client.until("connect_resolved", socketId=connected["socketId"])

    echo = await client.request("echo", {"hello": "world"})
    assert echo["type"] == "reply"
    assert echo["data"]["received"] == {"hello": "world"}
    assert echo["data"]["socketId"] == connected["socketId"]

    unknown = await client.request("no:such:event", {})
    assert unknown == {
        "type": "rejected",
        "tag": unknown["tag"],
        "code": "unknown_event",
        "retryable": False,
        "sent": True,
    }
    bad = await client.request("ai:cancel", {"messageId": 5})
    assert (bad["type"], bad["code"]) == ("rejected", "bad_request")

    # Replies to requests are theirs alone: the app's event listeners never saw them.
    assert [line for line in client.lines if line["type"] == "event"] == []
    sent = await client.command("send", event="echo", data={"n": 1})
    assert sent["ok"] is True
    event, _ = await client.until("event", name="echo_response")
    assert event["data"]["received"] == {"n": 1}


# -- recovery ------------------------------------------------------------------------------------


async def test_after_a_cut_it_reconnects_by_itself_and_misses_nothing(
    launch: Launch, gateway: Gateway, proxy_to: Callable[..., Any], make_token: MakeToken
) -> None:
    user_id = 5200 + free_port() % 700
    proxy = proxy_to(gateway)
    client = await launch(
        proxy.port, make_token(user_id=user_id, logged_in=True), reconnect=FAST_RECONNECT
    )
    first, _ = await client.until("connected")
    await push(gateway, f"user:{user_id}", 1)
    await client.until("event", name="notice")

    proxy.cut()  # a reset, no close frame; new connections are refused until mend()
    await gateway.wait_for_log_async("disconnect", socketId=first["socketId"])
    for n in (2, 3, 4):
        await push(gateway, f"user:{user_id}", n)
    dropped, _ = await client.until("disconnected")
    assert (dropped["code"], dropped["willReconnect"]) == (1006, True)
    await client.until("reconnecting")  # it keeps trying while the path is down
    proxy.mend()

    again, between = await client.until("connected")
    assert notices(between) == []  # nothing is given to the app before the greeting
    assert again["recovered"] is True
    assert again["socketId"] == first["socketId"]
    replayed = [(await client.until("event", name="notice"))[0] for _ in range(3)]
    assert notices(replayed) == [2, 3, 4]
    await push(gateway, f"user:{user_id}", 5)
    await client.until("event", name="notice")
    await client.quiet(0.5)
    assert notices(client.lines) == [1, 2, 3, 4, 5]  # each exactly once, in order

    state = await client.command("state")
    assert (state["state"], state["recovered"], state["socketId"]) == (
        "open",
        True,
        first["socketId"],
    )
    last = [line for line in client.lines if line["type"] == "event"][-1]
    assert state["lastOffset"] == last["offset"]


async def test_a_resume_refused_after_the_window_connects_fresh_and_says_so(
    launch: Launch, strict: Gateway, proxy_to: Callable[..., Any], make_token: MakeToken
) -> None:
    user_id = 5900 + free_port() % 90
    proxy = proxy_to(strict)
    client = await launch(
        proxy.port, make_token(user_id=user_id, logged_in=True), reconnect=FAST_RECONNECT
    )
    first, _ = await client.until("connected")
    proxy.cut()
    await strict.wait_for_log_async("disconnect", socketId=first["socketId"])
    await push(strict, f"user:{user_id}", 1)
    await asyncio.sleep(2.5)  # RECOVERY_WINDOW=2 passes
    proxy.mend()

    again, _ = await client.until("connected", timeout=15)
    assert again["recovered"] is False  # the app must reload its state from the API
    assert again["socketId"] != first["socketId"]
    await client.quiet(0.5)
    assert notices(client.lines) == []  # no replay, not even a partial one
    await push(strict, f"user:{user_id}", 2)
    live, _ = await client.until("event", name="notice")
    assert live["data"] == {"n": 2}


async def test_a_silent_connection_is_found_out_and_resumed(
    launch: Launch, gateway: Gateway, proxy_to: Callable[..., Any], make_token: MakeToken
) -> None:
    """A path that vanished without a reset: only the client's own ping can tell."""
    user_id = 5300 + free_port() % 600
    proxy = proxy_to(gateway, SilenceableProxy)
    client = await launch(
        proxy.port,
        make_token(user_id=user_id, logged_in=True),
        reconnect=FAST_RECONNECT,
        pingInterval=400,
        pingTimeout=400,
        requestTimeout=30000,
    )
    first, _ = await client.until("connected")
    assert proxy.silence() == 1  # later connections pass again
    await push(gateway, f"user:{user_id}", 1)  # the gateway writes it into the void

    in_flight = await client.request("echo", {"n": 1})
    # Never resent: the echo may have been handled, and another request might not be harmless.
    assert in_flight == {
        "type": "rejected",
        "tag": in_flight["tag"],
        "code": "connection_lost",
        "retryable": True,
        "sent": True,
    }
    dropped, _ = await client.until("disconnected")
    assert (dropped["code"], dropped["reason"]) == (1006, "no answer to ping")
    again, _ = await client.until("connected")
    assert (again["recovered"], again["socketId"]) == (True, first["socketId"])
    missed, _ = await client.until("event", name="notice")
    assert missed["data"] == {"n": 1}
    # The gateway still had the silent connection: the resume took it over.
    await gateway.wait_for_log_async(
        "disconnect", socketId=first["socketId"], reason="resumed elsewhere"
    )


async def test_a_deploy_moves_it_to_another_node_and_loses_nothing(
    launch: Launch,
    site: str,
    database_url: str,
    redis_url: str,
    proxy_to: Callable[..., Any],
    make_token: MakeToken,
) -> None:
    """SIGTERM drains with 1001; the client comes back through the load balancer (the proxy,
    now pointing at the other node of the cluster) and resumes there."""
    env = {"CORS_ORIGIN": site.rstrip("/"), "DRAIN_SPREAD": "0.2"}
    with two_nodes(database_url, redis_url, **env) as (old, other):
        user_id = 5500 + free_port() % 400
        proxy = proxy_to(old)
        # A fixed 1.5 s pause before coming back, so that the pushes below fall in the gap.
        pause = {"minDelay": 1500, "maxDelay": 1500, "jitter": 0}
        client = await launch(proxy.port, make_token(user_id=user_id), reconnect=pause)
        first, _ = await client.until("connected")
        proxy.retarget(other.port)
        assert await asyncio.to_thread(old.stop) == 0
        dropped, _ = await client.until("disconnected")
        assert (dropped["code"], dropped["willReconnect"]) == (1001, True)
        for n in (1, 2):
            await push(other, f"user:{user_id}", n)

        again, _ = await client.until("connected")
        assert (again["recovered"], again["socketId"]) == (True, first["socketId"])
        await push(other, f"user:{user_id}", 3)
        for _ in range(3):
            await client.until("event", name="notice")
        assert notices(client.lines) == [1, 2, 3]


@pytest.mark.parametrize("where", ["same node", "other node"])
async def test_an_ai_answer_survives_a_resume_that_takes_over_a_silent_connection(
    where: str,
    database_url: str,
    redis_url: str,
    site: str,
    fake: FakeModel,
    proxy_to: Callable[..., Any],
    make_token: MakeToken,
) -> None:
    """The client finds out a dead path long before the gateway (whose own ping takes up to
    1.5 x HEARTBEAT_INTERVAL), so it resumes while the old connection is still registered on
    the node producing the answer: the resume takes that connection over, there or from the
    other node. The answer must stream on to the end, not be abandoned AI_RESUME_WINDOW after
    the takeover as if nobody had resumed.

    Fails on branch ``recovery`` (outcome ``abandoned``, half the chunks): the takeover runs
    the resume hooks first (no countdown to stop yet), then the old connection's end reaches
    the AI handler as a resumable loss and starts a countdown nobody will stop."""
    env = {"AI_BASE_URL": fake.base_url, "AI_MODEL": "fake-model", "AI_RESUME_WINDOW": "2"}
    with two_nodes(database_url, redis_url, **env) as (producer, other):
        proxy = proxy_to(producer)
        client = await NodeClient.start(
            {
                "url": f"ws://127.0.0.1:{proxy.port}/ws",
                "token": make_token(user_id=5600, logged_in=True),
                "options": {"reconnect": FAST_RECONNECT, "pingInterval": 300, "pingTimeout": 300},
            }
        )
        try:
            first, _ = await client.until("connected")
            tag = uuid.uuid4().hex[:8]
            message = f"{tag} [[chunks=60 delay=0.1]]"  # six seconds of answer
            await client.command(
                "send", event="ai:chat", data={"message": message, "messageId": tag}
            )
            await client.until("event", name="ai:response:chunk")
            proxy.silence()
            if where == "other node":
                proxy.retarget(other.port)

            again, _ = await client.until("connected")
            assert (again["recovered"], again["socketId"]) == (True, first["socketId"])
            await producer.wait_for_log_async(
                "disconnect", socketId=first["socketId"], reason="resumed elsewhere"
            )
            entry = await producer.wait_for_log_async("ai_chat", timeout=20, messageId=tag)
            assert entry["outcome"] == "complete", entry  # "abandoned": cancelled by mistake
            end, _ = await client.until("event", name="ai:response:complete")
            chunks = "".join(data["chunk"] for data in client.events("ai:response:chunk"))
            assert chunks == end["data"]["fullResponse"]
            assert chunks == "".join(f"chunk-{i} " for i in range(60))
        finally:
            await client.stop()


# -- when it stops for good ------------------------------------------------------------------------


async def test_a_session_ended_by_the_server_api_stops_it_for_good(
    launch: Launch, gateway: Gateway, make_token: MakeToken
) -> None:
    user_id = 5400 + free_port() % 500
    client = await launch(
        gateway.port, make_token(user_id=user_id, logged_in=True), reconnect=FAST_RECONNECT
    )
    await client.until("connected")
    status, _ = await call_api(
        gateway, "POST", "/disconnect", {"user": str(user_id), "reason": "logged out elsewhere"}
    )
    assert status == 200

    error, _ = await client.until("error")
    assert (error["code"], error["message"]) == ("session_expired", "logged out elsewhere")
    ended, _ = await client.until("disconnected")
    assert ended == {
        "type": "disconnected",
        "code": 4001,
        "reason": "logged out elsewhere",
        "willReconnect": False,
        "error": "session_expired",
    }
    assert await client.quiet(1.5) == []  # no reconnect attempt
    state = await client.command("state")
    assert (state["state"], state["recovery"]) == ("closed", None)
    rejected = await client.request("echo", {})
    assert (rejected["code"], rejected["sent"]) == ("not_connected", False)


async def test_a_refused_token_stops_it_where_the_status_can_be_seen(
    launch: Launch, gateway: Gateway, request: pytest.FixtureRequest
) -> None:
    """Node's ws sees the 401 and stops; a browser sees a handshake that failed, and retries
    until ``maxAttempts`` (a 503 or 429 looks the same to it, and those must be retried)."""
    runtime = request.node.callspec.params["runtime"]
    client = await launch(
        gateway.port, "not-a-session-token", reconnect={**FAST_RECONNECT, "maxAttempts": 2}
    )
    rejected, before = await client.until("connect_rejected")
    retries = [line["attempt"] for line in before if line["type"] == "reconnecting"]
    if runtime == "node":
        assert (rejected["code"], retries) == ("unauthorized", [])
    else:
        assert (rejected["code"], retries) == ("reconnect_failed", [1, 2])
    ended = [line for line in before if line["type"] == "disconnected"]
    assert [(line["willReconnect"], line["error"]) for line in ended] == [(False, rejected["code"])]


# -- the package -----------------------------------------------------------------------------------


async def _run(*command: str, cwd: Path) -> str:
    """Run a Node tool to its end; its standard output, or the failure with both outputs."""
    process = await asyncio.create_subprocess_exec(
        *command,
        cwd=cwd,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, f"{command} failed:\n{out.decode()}\n{err.decode()}"
    return out.decode()


async def test_the_package_holds_the_module_its_types_and_its_readme() -> None:
    node_binary()  # skips without Node and tests/js/node_modules, like every Node test
    npm = shutil.which("npm")
    assert npm is not None, "npm comes with Node.js (scripts/test installs both)"
    out = await _run(npm, "pack", "--dry-run", "--json", "--loglevel=error", cwd=CLIENT_DIR)
    (packed,) = json.loads(out)
    assert sorted(entry["path"] for entry in packed["files"]) == [
        "README.md",
        "index.d.ts",
        "index.js",
        "package.json",
    ]
    manifest = json.loads((CLIENT_DIR / "package.json").read_text())
    assert manifest["type"] == "module"
    assert manifest["exports"]["."] == {"types": "./index.d.ts", "default": "./index.js"}
    assert "dependencies" not in manifest


async def test_the_types_check_as_an_app_uses_them() -> None:
    """tests/js/native_client_types.ts, strict, through the package's exports; its
    ``@ts-expect-error`` lines prove that wrong uses are caught."""
    node_binary()
    await _run(
        str(JS_DIR / "node_modules" / ".bin" / "tsc"),
        "--noEmit",
        "--strict",
        "--target",
        "es2022",
        "--module",
        "nodenext",
        "--moduleResolution",
        "nodenext",
        "--lib",
        "es2022,dom",
        "native_client_types.ts",
        cwd=JS_DIR,
    )
