"""The Engine.IO v4 and Socket.IO v5 protocols on the wire, as their specifications write them.

Written from the engine.io-protocol (v4) and socket.io-protocol (v5) documents, with raw HTTP
long-polling requests and raw WebSocket frames, so that what is checked is the protocol itself,
not what one client library tolerates:

- Engine.IO packets: ``0`` open, ``1`` close, ``2`` ping, ``3`` pong, ``4`` message, ``5``
  upgrade, ``6`` noop; a polling payload joins packets with the record separator ``\\x1e``;
- Socket.IO packets inside a message: ``0`` CONNECT, ``1`` DISCONNECT, ``2`` EVENT, ``3`` ACK,
  ``4`` CONNECT_ERROR, with an optional ``/namespace,`` and an ack id before the JSON.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator

import aiohttp
import orjson
import pytest

from support.gateway import Gateway, start_gateway
from support.rawws import OP_CLOSE, OP_TEXT, RawConnection, close_frame, frame

MAX_MESSAGE = 8192
PING_INTERVAL = 1.0
PING_TIMEOUT = 3.0
CONNECT_TIMEOUT = 1.0
SEPARATOR = "\x1e"


@pytest.fixture(scope="module")
def gateway(database_url: str) -> Iterator[Gateway]:
    process = start_gateway(
        {
            "DATABASE_URL": database_url,
            "MAX_MESSAGE_SIZE": str(MAX_MESSAGE),
            "SOCKETIO_PING_INTERVAL": str(PING_INTERVAL),
            "SOCKETIO_PING_TIMEOUT": str(PING_TIMEOUT),
            "SOCKETIO_CONNECT_TIMEOUT": str(CONNECT_TIMEOUT),
        }
    )
    yield process
    process.stop()


class Polling:
    """One Engine.IO session over HTTP long-polling, spoken packet by packet."""

    def __init__(self, http: aiohttp.ClientSession, base: str) -> None:
        self.http = http
        self.base = base
        self.sid = ""
        self.handshake: dict = {}
        self.pending: list[str] = []  # packets received but not yet read

    @property
    def url(self) -> str:
        return f"{self.base}/socket.io/?EIO=4&transport=polling&sid={self.sid}"

    async def open(self) -> None:
        async with self.http.get(f"{self.base}/socket.io/?EIO=4&transport=polling") as response:
            assert response.status == 200
            body = await response.text()
        assert body[0] == "0", body  # the OPEN packet
        self.handshake = orjson.loads(body[1:])
        self.sid = self.handshake["sid"]

    async def post(self, *packets: str) -> int:
        async with self.http.post(self.url, data=SEPARATOR.join(packets).encode()) as response:
            await response.read()
            return response.status

    async def get(self) -> tuple[int, list[str]]:
        async with self.http.get(self.url) as response:
            body = await response.text()
            return response.status, body.split(SEPARATOR) if response.status == 200 else [body]

    async def next(self, timeout: float = 5.0) -> str:
        """The next packet that is not a ping (pings are answered, as a live client does)."""
        async with asyncio.timeout(timeout):
            while True:
                if not self.pending:
                    status, packets = await self.get()
                    assert status == 200, packets
                    self.pending.extend(packets)
                packet = self.pending.pop(0)
                if packet == "2":
                    assert await self.post("3") == 200
                    continue
                return packet

    async def connect(self, token: str, namespace: str = "") -> str:
        """Socket.IO CONNECT with ``auth.token``; returns the CONNECT (or CONNECT_ERROR) reply."""
        prefix = f"{namespace}," if namespace else ""
        assert await self.post(f"40{prefix}" + orjson.dumps({"token": token}).decode()) == 200
        return await self.next()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
async def polling(gateway: Gateway, http: aiohttp.ClientSession) -> Polling:
    session = Polling(http, gateway.http_url)
    await session.open()
    return session


def decode_event(packet: str, prefix: str = "42") -> list:
    assert packet.startswith(prefix), packet
    return orjson.loads(packet[len(prefix) :])


# -- Engine.IO -----------------------------------------------------------------------------------


async def test_polling_handshake_fields(polling: Polling) -> None:
    handshake = polling.handshake
    assert set(handshake) >= {"sid", "upgrades", "pingInterval", "pingTimeout", "maxPayload"}
    assert isinstance(handshake["sid"], str) and handshake["sid"]
    assert handshake["upgrades"] == ["websocket"]
    assert handshake["pingInterval"] == PING_INTERVAL * 1000
    assert handshake["pingTimeout"] == PING_TIMEOUT * 1000
    assert handshake["maxPayload"] == MAX_MESSAGE


async def test_ping_pong_over_polling_keeps_the_session(polling: Polling, make_token) -> None:
    await polling.connect(make_token())
    assert decode_event(await polling.next())[0] == "connected"
    # The server pings every pingInterval; a client that answers stays past the ping timeout.
    started = time.monotonic()
    status, packets = await polling.get()
    assert (status, packets) == (200, ["2"])
    assert time.monotonic() - started >= PING_INTERVAL * 0.5
    for _ in range(int(PING_TIMEOUT / PING_INTERVAL) + 1):
        assert await polling.post("3") == 200
        assert await polling.get() == (200, ["2"])
    assert await polling.post('42["ping"]', "3") == 200
    assert decode_event(await polling.next())[0] == "pong"


async def test_polling_session_that_stops_answering_pings_is_closed(polling, make_token):
    await polling.connect(make_token())
    await polling.next()  # `connected`
    assert await polling.get() == (200, ["2"])
    await asyncio.sleep(PING_INTERVAL + PING_TIMEOUT + 1)  # no pong
    status, body = await polling.get()
    assert status == 400 or body == ["1"], (status, body)


async def test_polling_payload_carries_several_packets(polling: Polling, make_token) -> None:
    await polling.connect(make_token())
    await polling.next()  # `connected`
    assert await polling.post('42["ping"]', '42["status"]') == 200
    names = [decode_event(await polling.next())[0] for _ in range(2)]
    assert names == ["pong", "status_response"]


async def test_oversize_polling_post_gets_413(polling: Polling) -> None:
    async with polling.http.post(polling.url, data=b"4" + b"x" * MAX_MESSAGE) as response:
        assert response.status == 413


async def test_upgrade_to_websocket_with_probe(polling: Polling, gateway: Gateway, make_token):
    await polling.connect(make_token())
    assert decode_event(await polling.next())[0] == "connected"
    ws = await RawConnection.upgraded(
        gateway.port, f"/socket.io/?EIO=4&transport=websocket&sid={polling.sid}"
    )
    try:
        await ws.send(frame(OP_TEXT, b"2probe"))
        assert await ws.read_frame() == (OP_TEXT, b"3probe")
        # The pending GET is released with a noop so the client can pause polling.
        await ws.send(frame(OP_TEXT, b"5"))
        await ws.send(frame(OP_TEXT, b'42["ping"]'))
        _, payload = await ws.read_frame()
        while payload in (b"2", b"6"):  # a ping (answered) or a noop, over the websocket now
            if payload == b"2":
                await ws.send(frame(OP_TEXT, b"3"))
            _, payload = await ws.read_frame()
        assert decode_event(payload.decode())[0] == "pong"
        # Polling is over for this session: the server answers on the websocket only.
        status, _ = await polling.get()
        assert status == 400
    finally:
        await ws.close()


async def test_ping_pong_over_websocket(gateway: Gateway, make_token) -> None:
    ws = await RawConnection.upgraded(gateway.port, "/socket.io/?EIO=4&transport=websocket")
    try:
        _, payload = await ws.read_frame()
        handshake = orjson.loads(payload[1:])
        assert handshake["upgrades"] == []  # already on the best transport
        started = time.monotonic()
        await ws.send(frame(OP_TEXT, b'40{"token":"%s"}' % make_token().encode()))
        assert (await ws.read_frame())[1].startswith(b'40{"sid"')
        assert (await ws.read_frame())[1].startswith(b'42["connected"')
        for _ in range(int(PING_TIMEOUT / PING_INTERVAL) + 1):  # answered pings keep it open
            assert await ws.read_frame(timeout=PING_INTERVAL + 2) == (OP_TEXT, b"2")
            await ws.send(frame(OP_TEXT, b"3"))
        assert time.monotonic() - started >= PING_TIMEOUT
        await ws.send(frame(OP_TEXT, b'42["ping"]'))
        _, payload = await ws.read_frame()
        assert payload.startswith(b'42["pong"')
    finally:
        await ws.close()


async def test_each_websocket_is_pinged_ping_interval_after_its_own_pong(
    gateway: Gateway, make_token
) -> None:
    # Pings of all sessions share one timer (yektaws.transports.engineio_pings): each session's
    # still falls pingInterval after its own pong, whenever the others answered theirs.
    async def cycles(stagger: float) -> list[float]:
        await asyncio.sleep(stagger)
        ws = await RawConnection.upgraded(gateway.port, "/socket.io/?EIO=4&transport=websocket")
        try:
            await ws.read_frame()  # the handshake
            await ws.send(frame(OP_TEXT, b'40{"token":"%s"}' % make_token().encode()))
            assert (await ws.read_frame())[1].startswith(b'40{"sid"')
            assert (await ws.read_frame())[1].startswith(b'42["connected"')
            assert await ws.read_frame(timeout=PING_INTERVAL + 2) == (OP_TEXT, b"2")
            gaps = []
            for _ in range(3):
                answered = time.monotonic()
                await ws.send(frame(OP_TEXT, b"3"))
                assert await ws.read_frame(timeout=PING_INTERVAL + 2) == (OP_TEXT, b"2")
                gaps.append(time.monotonic() - answered)
            return gaps
        finally:
            await ws.close()

    sessions = await asyncio.gather(*(cycles(n * 0.3) for n in range(3)))
    for gaps in sessions:
        assert all(PING_INTERVAL - 0.05 <= gap <= PING_INTERVAL + 0.4 for gap in gaps), sessions


async def test_session_without_connect_is_closed_after_connect_timeout(polling: Polling):
    started = time.monotonic()
    while True:
        status, packets = await polling.get()
        if status != 200 or "1" in packets:
            break
        if "2" in packets:
            await polling.post("3")
        assert time.monotonic() - started < CONNECT_TIMEOUT + 3
    assert time.monotonic() - started >= CONNECT_TIMEOUT * 0.8
    status, _ = await polling.get()
    assert status == 400  # the session is gone


# -- Socket.IO -----------------------------------------------------------------------------------


async def test_event_with_ack_id_gets_ack_and_event(polling: Polling, make_token) -> None:
    await polling.connect(make_token())
    await polling.next()  # `connected`
    assert await polling.post('4217["echo","hi"]') == 200
    replies = [await polling.next(), await polling.next()]
    event = next(p for p in replies if p.startswith("42"))
    ack = next(p for p in replies if p.startswith("43"))
    assert decode_event(event)[0] == "echo_response"
    (acked,) = decode_event(ack, "4317")
    assert acked["received"] == "hi"


async def test_connect_to_any_namespace_with_auth(polling: Polling, make_token) -> None:
    reply = await polling.connect(make_token(), namespace="/whatever")
    assert decode_event(reply, "40/whatever,")["sid"]
    name, data = decode_event(await polling.next(), "42/whatever,")
    assert (name, data["protocol"]) == ("connected", "socket.io")
    assert await polling.post('42/whatever,["ping"]') == 200
    assert decode_event(await polling.next(), "42/whatever,")[0] == "pong"


@pytest.mark.parametrize(
    ("token", "message"),
    [
        ("", "Authentication token required"),
        ("not-a-session", "Invalid or expired session token"),
    ],
)
async def test_connect_error_shape_then_session_closed(polling: Polling, token, message) -> None:
    reply = await polling.connect(token)
    assert decode_event(reply, "44") == {"message": message}
    started = time.monotonic()
    while True:  # the Engine.IO session ends within about a second
        status, packets = await polling.get()
        if status != 200 or "1" in packets:
            break
        assert time.monotonic() - started < 2.5, packets
    assert time.monotonic() - started < 2.5


# -- the corners python-engineio answers against the spec (yektaws/transports/engineio_guards.py) --
# Each follows a case of the specification's own suite (socketio/engine.io-protocol, test-suite).


def polling_get(sid: str) -> bytes:
    return f"GET /socket.io/?EIO=4&transport=polling&sid={sid} HTTP/1.1\r\nHost: x\r\n\r\n".encode()


async def upgrading(gateway: Gateway, polling: Polling) -> RawConnection:
    """A websocket opened for ``polling``'s session, the upgrade not yet probed."""
    return await RawConnection.upgraded(
        gateway.port, f"/socket.io/?EIO=4&transport=websocket&sid={polling.sid}"
    )


async def assert_session_served_over(ws: RawConnection, token: str) -> None:
    """The Engine.IO session behind ``ws`` is alive there: a Socket.IO CONNECT is answered."""
    await ws.send(frame(OP_TEXT, b'40{"token":"%s"}' % token.encode()))
    while True:
        _, payload = await ws.read_frame()
        if payload not in (b"2", b"6"):  # a ping or the NOOP that ended the poll
            break
    assert payload.startswith(b'40{"sid"'), payload


@pytest.mark.parametrize("method", ["PUT", "DELETE", "PATCH", "HEAD"])
async def test_invalid_request_method_gets_400(polling: Polling, method: str) -> None:
    # "fails with an invalid request method": the handshake is GET only, data is POST.
    base = f"{polling.base}/socket.io/?EIO=4&transport=polling"
    for url in (base, polling.url):
        async with polling.http.request(method, url) as response:
            assert response.status == 400, (method, url, response.status)
    assert await polling.post("3") == 200  # the session itself is untouched


async def test_post_is_acknowledged_with_ok(polling: Polling) -> None:
    async with polling.http.post(polling.url, data=b"3") as response:
        assert (response.status, await response.text()) == (200, "ok")


async def test_poll_while_the_upgrade_is_pending_gets_a_noop(polling, gateway, make_token):
    # "successfully upgrades": after the probe, a poll is ended with NOOP so the client can pause.
    ws = await upgrading(gateway, polling)
    try:
        await ws.send(frame(OP_TEXT, b"2probe"))
        assert await ws.read_frame() == (OP_TEXT, b"3probe")
        assert await polling.get() == (200, ["6"])
        await ws.send(frame(OP_TEXT, b"5"))
        await assert_session_served_over(ws, make_token())
    finally:
        await ws.close()


async def test_poll_that_crosses_the_upgrade_packet_gets_400(polling, gateway, make_token):
    # "ignores HTTP requests with same sid after upgrade": the client sends 2probe and 5 without
    # waiting, then polls. The poll is written first here, so it reaches the server while the
    # upgrade is still in flight: it must not be served over polling any more.
    for _ in range(10):
        await polling.open()
        ws = await upgrading(gateway, polling)
        http = await RawConnection.open(gateway.port)
        try:
            await http.send(polling_get(polling.sid))
            await ws.send(frame(OP_TEXT, b"2probe") + frame(OP_TEXT, b"5"))
            response = await http.response()
            assert response.status == 400, (response.status, response.text)
            assert await ws.read_frame() == (OP_TEXT, b"3probe")
            await assert_session_served_over(ws, make_token())
        finally:
            await ws.close()
            await http.close()


@pytest.mark.parametrize("stage", ["mid-upgrade", "after the upgrade"])
async def test_second_websocket_for_the_session_is_closed_cleanly(
    polling, gateway, make_token, stage
):
    # "ignores WebSocket connection with same sid after upgrade": the second socket is closed
    # (a close frame after its handshake, as Node's server does), the first one carries on.
    first = await upgrading(gateway, polling)
    second = None
    try:
        await first.send(frame(OP_TEXT, b"2probe"))
        assert await first.read_frame() == (OP_TEXT, b"3probe")
        if stage == "after the upgrade":
            await first.send(frame(OP_TEXT, b"5"))
            status, _ = await polling.get()  # answered once the upgrade is through
            assert status == 400
        second = await upgrading(gateway, polling)
        opcode, payload = await second.read_frame()
        assert opcode == OP_CLOSE and payload[:2] == (1008).to_bytes(2, "big"), payload
        await second.send(close_frame(1008))
        assert await second.closed_by_server(timeout=5)
        if stage == "mid-upgrade":
            await first.send(frame(OP_TEXT, b"5"))
        await assert_session_served_over(first, make_token())
    finally:
        await first.close()
        if second is not None:
            await second.close()


async def test_client_close_ends_the_waiting_poll_with_a_noop(polling: Polling) -> None:
    # "forcefully closes the session": a CLOSE posted while a GET waits.
    waiting = asyncio.ensure_future(polling.get())
    await asyncio.sleep(0)
    assert await polling.post("1") == 200
    assert await waiting == (200, ["6"])
    status, _ = await polling.get()
    assert status == 400


# The spec suite's own heartbeat figures: both below a second.
FAST_PING_INTERVAL = 0.3
FAST_PING_TIMEOUT = 0.2


@pytest.fixture(scope="module")
def fast_ping_gateway(database_url: str) -> Iterator[Gateway]:
    process = start_gateway(
        {
            "DATABASE_URL": database_url,
            "SOCKETIO_PING_INTERVAL": str(FAST_PING_INTERVAL),
            "SOCKETIO_PING_TIMEOUT": str(FAST_PING_TIMEOUT),
        }
    )
    yield process
    process.stop()


@pytest.fixture
async def fast_polling(fast_ping_gateway: Gateway, http: aiohttp.ClientSession) -> Polling:
    session = Polling(http, fast_ping_gateway.http_url)
    await session.open()
    return session


async def test_sub_second_heartbeat_in_the_handshake(fast_polling: Polling) -> None:
    # python-engineio wrote int(seconds) * 1000: 0 for 0.3 s.
    assert fast_polling.handshake["pingInterval"] == 300
    assert fast_polling.handshake["pingTimeout"] == 200


async def test_sub_second_heartbeat_over_polling(fast_polling: Polling) -> None:
    # "sends ping/pong packets", then "closes the session upon ping timeout".
    started = time.monotonic()
    for _ in range(3):
        assert await fast_polling.get() == (200, ["2"])
        assert await fast_polling.post("3") == 200
    assert time.monotonic() - started >= 3 * FAST_PING_INTERVAL * 0.9
    # The next ping goes unanswered. Asked exactly at pingInterval + pingTimeout, the answer was
    # a race with the ping's own lateness (the ping timer's slack, a loop turn): it left a few
    # ms after pingInterval, so its timeout had not yet passed and the GET got the ping (1 run
    # in 4). The session must be gone once the timeout has surely passed.
    await asyncio.sleep(FAST_PING_INTERVAL + FAST_PING_TIMEOUT + 0.1)
    status, packets = await fast_polling.get()
    assert status == 400 or packets == ["1"], (status, packets)


async def test_sub_second_ping_timeout_closes_the_websocket(fast_ping_gateway: Gateway) -> None:
    # "closes the session upon ping timeout" over WebSocket. python-engineio's ping-timeout close
    # drops its own CLOSE packet, so the websocket of a silent peer used to stay open for good.
    ws = await RawConnection.upgraded(
        fast_ping_gateway.port, "/socket.io/?EIO=4&transport=websocket"
    )
    try:
        opened = time.monotonic()
        assert (await ws.read_frame())[1].startswith(b"0{")
        assert await ws.read_frame() == (OP_TEXT, b"2")  # not answered
        assert await ws.close_code(timeout=5) == 1000
        # Found by the service task's sweep: within one more pingTimeout of the deadline.
        deadline = FAST_PING_INTERVAL + FAST_PING_TIMEOUT
        assert time.monotonic() - opened < deadline + FAST_PING_TIMEOUT + 1.0
    finally:
        await ws.close()
