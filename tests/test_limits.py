"""Every limit the contract and the settings name, crossed by a test (issue: hardening).

Each test starts a gateway with the limit set low, crosses it, checks the documented outcome
(status, close code, error code), and checks that an honest client is still served.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import zlib

import aiohttp
import pytest

from support.clients import NativeClient, SocketIOClient, connect
from support.gateway import Gateway
from support.handshake import handshake
from support.rawws import OP_CONTINUATION, OP_TEXT, RawConnection, close_frame, frame


async def still_serves(gateway: Gateway, token: str) -> None:
    async with await connect("native-websocket", gateway.http_url, token) as client:
        assert (await client.request("echo", "ok"))["received"] == "ok"


async def handshake_status(url: str, headers: dict[str, str] | None = None) -> tuple[int, str]:
    answer = await handshake(url, headers)
    return answer.status, answer.text


# -- sizes -------------------------------------------------------------------------------------


async def test_native_message_over_limit_closes_1009(gateway_factory, make_token) -> None:
    gateway = gateway_factory(MAX_MESSAGE_SIZE="4096")
    client = await NativeClient.open(f"{gateway.ws_url}/ws?token={make_token()}")
    await client.expect("connected")
    # A frame of exactly MAX_MESSAGE_SIZE bytes is answered; one byte more closes with 1009.
    padding = 4096 - len('{"event":"echo","data":""}')
    await client.send_frame('{"event":"echo","data":"' + "x" * padding + '"}')
    assert (await client.expect("echo_response"))["received"] == "x" * padding
    await client.send_frame('{"event":"echo","data":"' + "x" * (padding + 1) + '"}')
    assert await client.wait_closed() == 1009
    await client.close()
    await still_serves(gateway, make_token())


# What a client sends after its message failed: the rest of an oversize message in fragments,
# or frames after an unmasked one. A server that drops the connection at once meets these with a
# reset, and a reset can discard the close frame before the client has read it.
STILL_SENDING = {
    "oversize by fragments": (
        1009,
        [frame(OP_TEXT, b" " * 1000, fin=False)]
        + [frame(OP_CONTINUATION, b" " * 1000, fin=False)] * 100,
    ),
    "frames after an unmasked one": (
        1002,
        [frame(OP_TEXT, b'{"event":"ping"}', mask=False)]
        + [frame(OP_TEXT, b'{"event":"ping"}')] * 1000,
    ),
}


@pytest.mark.parametrize("failure", STILL_SENDING.values(), ids=STILL_SENDING.keys())
async def test_client_still_sending_after_failing_reads_the_close_code(
    gateway_factory, make_token, failure: tuple[int, list[bytes]]
) -> None:
    """The failed connection is read on until the client answers the close frame, then ended
    at once (not after the answer timeout): every try sees the code, none a reset."""
    code, frames = failure
    gateway = gateway_factory(MAX_MESSAGE_SIZE="4096")
    for _ in range(20):
        conn = await RawConnection.upgraded(gateway.port, f"/ws?token={make_token()}")
        try:
            assert (await conn.read_event())["event"] == "connected"
            for data in frames:
                await conn.send(data)  # a reset raises here
            assert await conn.close_code() == code
            await conn.send(close_frame(code))
            assert await conn.closed_by_server(timeout=5.0)  # the answer timeout is 10 s
        finally:
            await conn.close()
    await still_serves(gateway, make_token())


async def test_socketio_message_over_limit_disconnects(gateway_factory, make_token) -> None:
    gateway = gateway_factory(MAX_MESSAGE_SIZE="4096")
    client = await SocketIOClient.open(
        gateway.http_url, token=make_token(), transports=["websocket"]
    )
    await client.expect("connected")
    await client.send("echo", "x" * 5000)
    await asyncio.wait_for(client.disconnected.wait(), 5)
    await client.close()
    await still_serves(gateway, make_token())


async def test_socketio_polling_post_over_limit_gets_413(gateway_factory, make_token) -> None:
    gateway = gateway_factory(MAX_MESSAGE_SIZE="4096")
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{gateway.http_url}/socket.io/?EIO=4&transport=polling") as opened:
            sid = (await opened.text()).split('"sid":"')[1].split('"')[0]
        body = "4" + "2" + '["echo","' + "x" * 5000 + '"]'
        async with http.post(
            f"{gateway.http_url}/socket.io/?EIO=4&transport=polling&sid={sid}", data=body
        ) as response:
            assert response.status == 413
    await still_serves(gateway, make_token())


async def test_compressed_bomb_capped_when_compression_on(gateway_factory, make_token) -> None:
    gateway = gateway_factory(WEBSOCKET_COMPRESSION="true", MAX_MESSAGE_SIZE="65536")
    client = await NativeClient.open(f"{gateway.ws_url}/ws?token={make_token()}", compress=15)
    assert client.ws.compress == 15  # negotiated
    await client.expect("connected")
    bomb = '{"event":"echo","data":"' + "0" * 5_000_000 + '"}'
    assert len(zlib.compress(bomb.encode())) < 10_000  # tiny on the wire
    await client.ws.send_str(bomb)
    assert await client.wait_closed() == 1009
    await client.close()
    await still_serves(gateway, make_token())


async def test_compression_off_by_default(gateway: Gateway, make_token) -> None:
    client = await NativeClient.open(f"{gateway.ws_url}/ws?token={make_token()}", compress=15)
    async with client:
        assert client.ws.compress == 0


# -- rates -------------------------------------------------------------------------------------


async def test_event_flood_refused_then_closed_1008(gateway_factory, make_token) -> None:
    gateway = gateway_factory(
        RATE_LIMIT_PER_SECOND="5", RATE_LIMIT_BURST="10", RATE_LIMIT_STRIKES="20"
    )
    client = await NativeClient.open(f"{gateway.ws_url}/ws?token={make_token()}")
    await client.expect("connected")
    for n in range(40):
        await client.send("echo", n)
    assert await client.wait_closed() == 1008
    codes = [
        data.get("code")
        for event, data in [(f["event"], f["data"]) for f in client.frames]
        if event == "error"
    ]
    answered = [f for f in client.frames if f["event"] == "echo_response"]
    assert 10 <= len(answered) <= 12  # the burst (plus what refilled meanwhile)
    assert codes and set(codes) == {"rate_limited"}
    await client.close()
    await still_serves(gateway, make_token())


async def test_rate_limited_client_recovers_if_it_slows_down(gateway_factory, make_token):
    gateway = gateway_factory(
        RATE_LIMIT_PER_SECOND="20", RATE_LIMIT_BURST="5", RATE_LIMIT_STRIKES="50"
    )
    async with await connect("native-websocket", gateway.http_url, make_token()) as client:
        await client.expect("connected")
        for n in range(8):
            await client.send("echo", n)
        replies = [await client.next() for _ in range(8)]
        assert ("error", {"error": "Too many events, slow down", "code": "rate_limited"}) in replies
        await asyncio.sleep(0.5)
        assert (await client.request("echo", "later"))["received"] == "later"


async def test_socketio_event_flood_disconnects(gateway_factory, make_token) -> None:
    gateway = gateway_factory(
        RATE_LIMIT_PER_SECOND="5", RATE_LIMIT_BURST="5", RATE_LIMIT_STRIKES="10"
    )
    client = await SocketIOClient.open(
        gateway.http_url, token=make_token(), transports=["websocket"]
    )
    await client.expect("connected")
    for n in range(40):
        await client.send("echo", n)
    await asyncio.wait_for(client.disconnected.wait(), 5)
    await client.close()


# -- connection caps ----------------------------------------------------------------------------


async def test_per_user_cap_gives_429(gateway_factory, make_token) -> None:
    gateway = gateway_factory(MAX_CONNECTIONS_PER_USER="2")
    tokens = [make_token(user_id=500, logged_in=True) for _ in range(3)]
    first = await connect("native-websocket", gateway.http_url, tokens[0])
    second = await connect("socket.io", gateway.http_url, tokens[1])
    try:
        await first.expect("connected")
        await second.expect("connected")
        assert await handshake_status(f"{gateway.http_url}/ws?token={tokens[2]}") == (
            429,
            "Too many connections for this account",
        )
        await still_serves(gateway, make_token(user_id=501))
    finally:
        await first.close()
        await second.close()
    await asyncio.sleep(0.3)
    await still_serves(gateway, tokens[2])  # a slot freed up


async def test_per_address_cap_applies_before_any_database_work(gateway_factory, make_token):
    gateway = gateway_factory(MAX_CONNECTIONS_PER_ADDRESS="3", MAX_HANDSHAKES_PER_SECOND="1000")
    clients = [await connect("native-websocket", gateway.http_url, make_token()) for _ in range(3)]
    try:
        # An unknown token would be 401 after a lookup; the cap answers first, with no query.
        assert await handshake_status(f"{gateway.http_url}/ws?token={'z' * 43}") == (
            429,
            "Too many connections from this address",
        )
    finally:
        for client in clients:
            await client.close()


async def test_handshake_rate_queues_a_reconnect_storm(gateway_factory, make_token) -> None:
    gateway = gateway_factory(
        MAX_HANDSHAKES_PER_SECOND="20", HANDSHAKE_TIMEOUT="5", SESSION_CACHE_TTL="0"
    )
    tokens = [make_token() for _ in range(40)]
    started = time.monotonic()
    statuses = await asyncio.gather(
        *(handshake_status(f"{gateway.http_url}/ws?token={t}") for t in tokens)
    )
    elapsed = time.monotonic() - started
    assert [s for s, _ in statuses].count(101) == 40  # all admitted
    assert elapsed >= 0.8  # 40 lookups at 20/s, burst 20: the second half waited


async def test_handshake_rate_refuses_what_would_wait_too_long(gateway_factory, make_token):
    gateway = gateway_factory(
        MAX_HANDSHAKES_PER_SECOND="2", HANDSHAKE_TIMEOUT="0.5", SESSION_CACHE_TTL="0"
    )
    statuses = await asyncio.gather(
        *(handshake_status(f"{gateway.http_url}/ws?token={make_token()}") for _ in range(10))
    )
    refused = [text for status, text in statuses if status == 503]
    assert refused and set(refused) == {"Service temporarily unavailable, please retry"}


# -- time ----------------------------------------------------------------------------------------


async def test_slowloris_headers_are_cut(gateway_factory) -> None:
    gateway = gateway_factory(HANDSHAKE_TIMEOUT="1")
    reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
    started = time.monotonic()
    try:
        for byte in b"GET /ws HTTP/1.1\r\nHost: x\r\n":
            writer.write(bytes([byte]))
            await writer.drain()
            await asyncio.sleep(0.05)
            if reader.at_eof():
                break
        assert await asyncio.wait_for(reader.read(), 3) == b""
    finally:
        writer.close()
    assert time.monotonic() - started < 3


async def test_dead_native_peer_found_by_heartbeat(gateway_factory, make_token) -> None:
    gateway = gateway_factory(HEARTBEAT_INTERVAL="1")
    async with aiohttp.ClientSession() as http:
        ws = await http.ws_connect(f"{gateway.ws_url}/ws?token={make_token()}", autoping=False)
        started = time.monotonic()
        while (await ws.receive(timeout=5)).type not in (
            aiohttp.WSMsgType.CLOSE,
            aiohttp.WSMsgType.CLOSED,
        ):
            pass  # pings arrive and are ignored: this peer looks dead
        assert time.monotonic() - started < 3
    await still_serves(gateway, make_token())


async def test_live_idle_native_peer_survives_heartbeats(gateway_factory, make_token) -> None:
    gateway = gateway_factory(HEARTBEAT_INTERVAL="0.5")
    async with await connect("native-websocket", gateway.http_url, make_token()) as client:
        await client.expect("connected")
        await asyncio.sleep(2.5)  # five heartbeats, answered by aiohttp's autoping
        assert (await client.request("echo", 1))["received"] == 1


# -- memory: a client that does not read -----------------------------------------------------------


async def test_slow_reader_closed_1013_and_others_unaffected(gateway_factory, make_token) -> None:
    gateway = gateway_factory(
        MAX_OUTBOUND_BUFFER=str(64 * 1024),
        RATE_LIMIT_BURST="100000",
        RATE_LIMIT_PER_SECOND="100000",
        MAX_MESSAGE_SIZE=str(60 * 1024),
    )
    async with aiohttp.ClientSession() as http:
        ws = await http.ws_connect(f"{gateway.ws_url}/ws?token={make_token()}", max_msg_size=0)
        transport = ws._response.connection.transport  # stop reading at the TCP level
        transport.pause_reading()
        payload = '{"event":"echo","data":"' + "y" * 50_000 + '"}'
        with contextlib.suppress(ConnectionError):
            for _ in range(400):  # ~20 MB of replies the client never reads
                await ws.send_str(payload)
        transport.resume_reading()
        async for _ in ws:
            pass  # whatever was buffered before the server gave up
        assert ws.closed
    line = gateway.wait_for_log("disconnect", code=1013)
    assert line["reason"] == "client too slow to read"
    await still_serves(gateway, make_token())


# -- origin --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("origin", "status"),
    [
        (None, 101),
        ("https://app.yektayar.ir", 101),
        ("https://evil.example", 403),
        ("null", 403),
        ("https://app.yektayar.ir.evil.example", 403),
    ],
)
async def test_native_origin_check(gateway_factory, make_token, origin, status) -> None:
    gateway = gateway_factory(CORS_ORIGIN="https://app.yektayar.ir, https://panel.yektayar.ir")
    headers = {"Origin": origin} if origin else {}
    got, _ = await handshake_status(f"{gateway.http_url}/ws?token={make_token()}", headers)
    assert got == status


async def test_socketio_cors_follows_the_same_list(gateway_factory) -> None:
    gateway = gateway_factory(CORS_ORIGIN="https://app.yektayar.ir")
    url = f"{gateway.http_url}/socket.io/?EIO=4&transport=polling"
    async with aiohttp.ClientSession() as http:
        async with http.get(url, headers={"Origin": "https://app.yektayar.ir"}) as allowed:
            assert allowed.status == 200
            assert allowed.headers["Access-Control-Allow-Origin"] == "https://app.yektayar.ir"
            assert allowed.headers["Access-Control-Allow-Credentials"] == "true"
        async with http.get(url, headers={"Origin": "https://evil.example"}) as forged:
            assert forged.status == 403
            assert "Access-Control-Allow-Origin" not in forged.headers


async def test_wildcard_origin_never_with_credentials(gateway_factory) -> None:
    gateway = gateway_factory(CORS_ORIGIN="*")
    url = f"{gateway.http_url}/socket.io/?EIO=4&transport=polling"
    async with (
        aiohttp.ClientSession() as http,
        http.get(url, headers={"Origin": "https://x.example"}) as r,
    ):
        assert r.status == 200
        assert "Access-Control-Allow-Credentials" not in r.headers


async def test_empty_origin_list_allows_only_requests_without_origin(gateway, make_token) -> None:
    token = make_token()
    assert (await handshake_status(f"{gateway.http_url}/ws?token={token}"))[0] == 101
    headers = {"Origin": "https://app.yektayar.ir"}
    assert (await handshake_status(f"{gateway.http_url}/ws?token={token}", headers))[0] == 403


# -- ordering ------------------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", ["native-websocket", "socket.io"])
async def test_events_handled_in_arrival_order(gateway: Gateway, make_token, protocol) -> None:
    async with await connect(protocol, gateway.http_url, make_token()) as client:
        await client.expect("connected")
        for n in range(30):
            await client.send("echo", n)
        received = [(await client.expect("echo_response"))["received"] for _ in range(30)]
    assert received == list(range(30))
