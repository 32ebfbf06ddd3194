"""WebSockets leave aiohttp's request machinery after the handshake (yektaws.wsdetach): native
ones, and Socket.IO's upgraded ones.

What a user would notice if it broke: memory per idle connection (aiohttp's handler, parser and
parsed request, ~10 KB, kept for the life of every socket, or left in reference cycles that an
idle server seldom collects), and connections that stop working or stop closing properly once
their HTTP handler has returned.
"""

from __future__ import annotations

import asyncio
import json
import socket
import struct
import tempfile
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import orjson
import pytest

from support.gateway import REPO, Gateway, start_gateway
from support.rawws import OP_CLOSE, OP_TEXT, RawConnection, frame

PROBE = REPO / "bench" / "memory" / "probe.py"
IDLE = 200
#: HANDSHAKE_TIMEOUT here: longer than any test, so that no header deadline frees a handler.
HEADER_DEADLINE = 60.0
#: SOCKETIO_CONNECT_TIMEOUT here: an Engine.IO session that joins no namespace ends this soon.
CONNECT_TIMEOUT = 1.0
#: What an ended long-polling session's packets wait for a poll (engineio_ws._UNPOLLED_GRACE).
UNPOLLED_GRACE = 1.0
#: aiohttp objects of one HTTP request; a detached socket keeps none of them.
REQUEST_MACHINERY = ("RequestHandler", "HttpRequestParser", "Request")
#: What one Socket.IO websocket is made of, from the Engine.IO session to the TCP transport.
SOCKET_MACHINERY = ("AsyncSocket", "GuardedWebSocketResponse", "DirectSendQueue", "TCPTransport")


def ask(path: str, *command: str) -> dict:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(path)
        stream = sock.makefile("rw")
        stream.write(" ".join(command) + "\n")
        stream.flush()
        return json.loads(stream.readline())


@pytest.fixture
def probed(database_url: str) -> Iterator[tuple[Gateway, str]]:
    probe = str(Path(tempfile.mkdtemp(prefix="yektaws-detach-")) / "probe.sock")
    env = {
        "DATABASE_URL": database_url,
        "YEKTAWS_MEMPROBE": probe,
        "MAX_CONNECTIONS_PER_ADDRESS": "1000",
        "MAX_CONNECTIONS_PER_USER": "1000",
        "MAX_HANDSHAKES_PER_SECOND": "1000",
        "HANDSHAKE_TIMEOUT": str(HEADER_DEADLINE),
        "SOCKETIO_CONNECT_TIMEOUT": str(CONNECT_TIMEOUT),
    }
    gateway = start_gateway(env, entry=[str(PROBE)])
    yield gateway, probe
    gateway.stop()


async def open_native(gateway: Gateway, token: str) -> list[RawConnection]:
    """:data:`IDLE` native connections with ``token``, each greeted."""
    connections = []
    for _ in range(IDLE):
        ws = await RawConnection.upgraded(gateway.port, f"/ws?token={token}")
        assert (await ws.read_event())["event"] == "connected"
        connections.append(ws)
    return connections


async def open_socketio(gateway: Gateway, token: bytes) -> list[RawConnection]:
    """:data:`IDLE` Socket.IO websockets with ``token``, each in the main namespace and greeted."""
    sockets = []
    for _ in range(IDLE):
        ws = await RawConnection.upgraded(gateway.port, "/socket.io/?EIO=4&transport=websocket")
        assert (await ws.read_frame())[1].startswith(b"0{")
        await ws.send(frame(OP_TEXT, b'40{"token":"%s"}' % token))
        assert (await ws.read_frame())[1].startswith(b'40{"sid"')
        assert (await ws.read_frame())[1].startswith(b'42["connected"')
        sockets.append(ws)
    return sockets


async def test_idle_native_connections_keep_no_http_request_alive(
    probed: tuple[Gateway, str], make_token
) -> None:
    gateway, probe = probed
    token = make_token(user_id=7, logged_in=True)
    connections = await open_native(gateway, token)
    try:
        # At once: neither the handler task nor the connection's header deadline holds them.
        live = ask(probe, "live", *REQUEST_MACHINERY)["live"]
        # A handful at most: the probe's own /health polls may be in flight.
        assert all(count < 5 for count in live.values()), live

        # Detached, every one still answers, in order, and closes with the client's code.
        for number, ws in enumerate(connections):
            await ws.send(frame(OP_TEXT, orjson.dumps({"event": "echo", "data": number, "id": 1})))
        for number, ws in enumerate(connections):
            reply = await ws.read_event()
            assert (reply["event"], reply["id"], reply["data"]["received"]) == (
                "echo_response",
                1,
                number,
            )
        # ...and completes the client's closing handshake, with no handler task left to do it.
        for ws in connections:
            await ws.send(frame(OP_CLOSE, struct.pack("!H", 1000)))
        assert [await ws.close_code() for ws in connections] == [1000] * IDLE
    finally:
        for ws in connections:
            await ws.close()
    await asyncio.sleep(0.5)
    log = gateway.log_text()
    codes = [json.loads(line).get("code") for line in log.splitlines() if '"disconnect"' in line]
    assert codes == [1000] * IDLE  # each released once, with the client's close code
    assert "Traceback" not in log


async def end_half_lost(connections: list[RawConnection], goodbye: bytes) -> None:
    """End every other connection as a lost one (a reset), the rest with ``goodbye`` and a FIN."""
    for number, ws in enumerate(connections):
        if number % 2:
            ws.abort()  # the way a mobile client's connection ends
        else:
            await ws.send(goodbye)
            await ws.close()


async def test_ended_socketio_sessions_are_freed_at_once(probed: tuple[Gateway, str], make_token):
    # python-engineio keeps an ended session in its table until a sweep that passes once per
    # pingTimeout (20 s), and the ping schedule held each socket until its next ping (25 s):
    # in a reconnect storm every ended connection, transport and websocket included, stayed in
    # memory that long (and made each full collection slower). Now they go when they end.
    gateway, probe = probed
    token = make_token(user_id=9, logged_in=True).encode()
    sockets = await open_socketio(gateway, token)
    before = ask(probe, "live", *SOCKET_MACHINERY)["live"]
    assert before["AsyncSocket"] >= IDLE, before  # the probe counts what it should
    await end_half_lost(sockets, frame(OP_TEXT, b"1"))  # an Engine.IO CLOSE
    await asyncio.sleep(1.0)
    live = ask(probe, "live", *SOCKET_MACHINERY)["live"]
    assert all(count < 5 for count in live.values()), live
    assert gateway.log_text().count('"disconnect"') == IDLE


async def test_ended_native_connections_are_freed_at_once(probed: tuple[Gateway, str], make_token):
    # A lost connection left aiohttp's exception (and its traceback, which holds the response)
    # and the detached protocol's reader in reference cycles: freed only by a full collection,
    # which an idle server seldom runs.
    gateway, probe = probed
    token = make_token(user_id=10, logged_in=True)
    connections = await open_native(gateway, token)
    machinery = ("GuardedWebSocketResponse", "DetachedProtocol", "TCPTransport")
    assert ask(probe, "live", *machinery)["live"]["DetachedProtocol"] >= IDLE
    await end_half_lost(connections, frame(OP_CLOSE, struct.pack("!H", 1000)))
    await asyncio.sleep(1.0)
    live = ask(probe, "live", *machinery)["live"]
    assert all(count < 5 for count in live.values()), live
    assert gateway.log_text().count('"disconnect"') == IDLE


async def test_abandoned_polling_sessions_are_freed(probed: tuple[Gateway, str]) -> None:
    # A client that opens an Engine.IO session over long-polling and is gone before it joins a
    # namespace (a page closed mid-handshake, a scanner) has its session closed after
    # SOCKETIO_CONNECT_TIMEOUT. python-engineio's close waited for a poll that would never come:
    # each such session stayed in memory with its closing task until a full collection, which
    # destroyed the task and logged an error for it.
    gateway, probe = probed
    handshake = f"http://127.0.0.1:{gateway.port}/socket.io/?EIO=4&transport=polling"
    async with aiohttp.ClientSession() as http:
        for _ in range(IDLE):
            async with http.get(handshake) as response:
                assert (await response.text()).startswith("0{")
    assert ask(probe, "live", "AsyncSocket")["live"]["AsyncSocket"] >= IDLE

    await asyncio.sleep(CONNECT_TIMEOUT + UNPOLLED_GRACE + 0.5)

    assert ask(probe, "live", "AsyncSocket")["live"]["AsyncSocket"] < 5
    ask(probe, "types")  # a full collection: whatever only a reference cycle held goes now
    await asyncio.sleep(0.2)
    log = gateway.log_text()
    assert "Task was destroyed" not in log
    assert "Traceback" not in log


async def test_idle_socketio_websockets_keep_no_http_request_alive(
    probed: tuple[Gateway, str], make_token
) -> None:
    gateway, probe = probed
    token = make_token(user_id=8, logged_in=True).encode()
    sockets = await open_socketio(gateway, token)
    try:
        # At once: neither the handler task nor the connection's header deadline holds them.
        live = ask(probe, "live", *REQUEST_MACHINERY)["live"]
        assert all(count < 5 for count in live.values()), live

        # Detached, each still acknowledges its events (read inline), and a packet that must
        # wait for a task (an Engine.IO ping answer is not one: a CLOSE is) still ends it.
        for number, ws in enumerate(sockets):
            await ws.send(frame(OP_TEXT, b'42%d["echo",%d]' % (number, number)))
        for number, ws in enumerate(sockets):
            frames = []
            while not frames or not frames[-1].startswith(b"43%d[" % number):  # up to the ack
                _, payload = await ws.read_frame()
                if payload == b"2":  # a server ping on the way: answered as a client does
                    await ws.send(frame(OP_TEXT, b"3"))
                else:
                    frames.append(payload)
            assert frames[0].startswith(b'42["echo_response",{"received":%d,' % number), frames
        for ws in sockets:
            await ws.send(frame(OP_TEXT, b"1"))  # Engine.IO CLOSE
        codes = {await ws.close_code() for ws in sockets}  # the server's close frame
        assert codes == {1000}, codes
    finally:
        for ws in sockets:
            await ws.close()
    await asyncio.sleep(0.5)
    log = gateway.log_text()
    assert log.count('"disconnect"') == IDLE
    assert "Traceback" not in log
