"""Logs: one line per connect, reject and disconnect, and never a session token."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import select
import subprocess
import sys
from collections.abc import Iterator

import aiohttp
import orjson
import pytest
import socketio
import structlog

from support.clients import NativeClient, SocketIOClient, connect
from support.gateway import REPO, start_gateway
from support.handshake import handshake
from yektaws.logging import configure_logging, get_logger, mask_secrets, mask_token


async def test_no_issued_token_reaches_the_log_even_at_debug(database_url: str, make_token):
    gateway = start_gateway({"DATABASE_URL": database_url, "LOG_LEVEL": "debug"})
    tokens = [make_token(user_id=n, logged_in=True) for n in range(6)]
    expired = make_token(user_id=99, ttl_seconds=-1)
    try:
        async with await NativeClient.open(f"{gateway.ws_url}/ws?token={tokens[0]}") as client:
            await client.request("status")
        headers = {"Authorization": f"Bearer {tokens[1]}"}
        async with await NativeClient.open(f"{gateway.ws_url}/x", headers=headers) as client:
            await client.request("info")
        protocols = ("yektaws.v1", f"bearer.{tokens[2]}")
        async with await NativeClient.open(f"{gateway.ws_url}/ws", protocols=protocols) as client:
            await client.expect("connected")
        async with await SocketIOClient.open(
            gateway.http_url, token=tokens[3], transports=["polling"]
        ) as client:
            await client.call("status")
        async with await SocketIOClient.open(f"{gateway.http_url}?token={tokens[4]}") as client:
            await client.call("echo", {"token": tokens[5]})
        async with aiohttp.ClientSession() as http:
            assert (await handshake(f"{gateway.http_url}/ws?token={expired}")).status == 401
            async with http.get(f"{gateway.http_url}/nope?token={tokens[0]}") as response:
                assert response.status == 404
        bad = socketio.AsyncClient(reconnection=False)
        with contextlib.suppress(socketio.exceptions.ConnectionError):
            await bad.connect(gateway.http_url, auth={"token": expired}, wait_timeout=3)
        await bad.disconnect()
    finally:
        assert gateway.stop() == 0
    text = gateway.log_text()
    for token in [*tokens, expired]:
        assert token not in text
    assert "connect" in {entry["event"] for entry in gateway.logs()}


async def test_one_line_per_connect_reject_disconnect(gateway, make_token) -> None:
    token = make_token(user_id=31, logged_in=True)
    async with await connect("native-websocket", gateway.http_url, token) as client:
        connected = await client.expect("connected")
    line = gateway.wait_for_log("connect", socketId=connected["socketId"])
    assert line["protocol"] == "native-websocket"
    assert line["userId"] == "31"
    assert line["peer"] == "127.0.0.1"
    gone = gateway.wait_for_log("disconnect", socketId=connected["socketId"])
    assert gone["reason"] == "client closed"
    assert gone["code"] == 1000
    assert (await handshake(f"{gateway.http_url}/ws")).status == 401
    assert gateway.wait_for_log("reject", reason="no_token")["protocol"] == "native-websocket"


def test_masking_processor_covers_every_place_a_token_hides() -> None:
    token = "AbCdEfGhIjKlMnOpQrStUvWxYz0123456789-_abcde"
    event = {
        "event": f"GET /ws?token={token}&x=1",
        "headers": {
            "Authorization": f"Bearer {token}",
            "Sec-WebSocket-Protocol": f"yektaws.v1, bearer.{token}",
        },
        "token": token,
        "nested": [{"sessionToken": token}],
        "url": "postgresql://app:pw123456@db/x",
    }
    masked = str(mask_secrets(None, "info", event))
    assert token not in masked
    assert "pw123456" not in masked
    assert mask_token(token) in masked
    assert mask_token(token) == "***bcde"


class _Writes:
    """A stand-in for stderr that records each write as the descriptor would receive it."""

    def __init__(self) -> None:
        self.writes: list[str] = []
        self.buffer = self  # the JSON format writes bytes to stderr.buffer

    def write(self, data: str | bytes) -> None:
        self.writes.append(data.decode() if isinstance(data, bytes) else data)

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return False


@contextlib.contextmanager
def logging_to(stderr: _Writes, fmt: str) -> Iterator[None]:
    """Configure the gateway's logging onto ``stderr`` for the block, as ``serve`` does."""
    root_handlers = logging.getLogger().handlers[:]
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr("sys.stderr", stderr)
            configure_logging("info", fmt)
            yield
    finally:
        structlog.reset_defaults()
        logging.getLogger().handlers[:] = root_handlers


@pytest.mark.parametrize("fmt", ["console", "json"])
def test_each_log_line_is_one_write(fmt: str) -> None:
    # `--workers N` share one stderr: a line written in two pieces (a message, then its newline,
    # as print() does) can have another worker's line land in between, which breaks both for
    # whoever reads the log, a JSON parser most of all. One write per line cannot be split.
    stderr = _Writes()
    with logging_to(stderr, fmt):
        get_logger("yektaws.test").info("own_line", n=1)
        logging.getLogger("aiohttp.server").warning("library line")
    assert len(stderr.writes) == 2, stderr.writes
    assert all(write.count("\n") == 1 and write.endswith("\n") for write in stderr.writes)


async def test_lines_of_one_loop_turn_leave_together_whole_and_in_order() -> None:
    # A storm logs a line per connect and per disconnect: they leave in a few writes, not one
    # each, but every write still holds whole lines and fits in one atomic pipe write.
    stderr = _Writes()
    with logging_to(stderr, "json"):
        log = get_logger("yektaws.test")
        for number in range(100):
            log.info("connect", n=number)
            if number == 50:
                logging.getLogger("aiohttp.server").warning("library line")
        assert stderr.writes == [] or all(len(w) <= select.PIPE_BUF for w in stderr.writes)
        await asyncio.sleep(0)  # the end of the turn
    lines = "".join(stderr.writes).splitlines()
    assert [orjson.loads(line).get("n") for line in lines] == [*range(51), None, *range(51, 100)]
    assert 1 < len(stderr.writes) < 20
    assert all(w.endswith("\n") and len(w) <= select.PIPE_BUF for w in stderr.writes)


def test_lines_of_the_last_loop_turn_are_written_at_exit() -> None:
    program = (
        "import asyncio, sys\n"
        "from yektaws.logging import configure_logging, get_logger\n"
        "configure_logging('info', 'json')\n"
        "loop = asyncio.new_event_loop()\n"
        "def last():\n"
        "    get_logger('t').info('last_words')\n"
        "    loop.stop()  # the turn that would write the line never comes\n"
        "loop.call_soon(last)\n"
        "loop.run_forever()\n"
        "sys.exit(3)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, timeout=30, cwd=REPO
    )
    assert result.returncode == 3
    assert orjson.loads(result.stderr.splitlines()[-1])["event"] == "last_words"
