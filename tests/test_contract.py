"""CONTRACT section 4 on both protocols: every event answers the same payload, whatever carries it.

One suite, parametrized over the two protocols; the only field allowed to differ is ``protocol``.
"""

from __future__ import annotations

import re
from typing import Any

import pytest

from support.clients import NativeClient, SocketIOClient, connect
from support.gateway import Gateway

PROTOCOLS = ["native-websocket", "socket.io"]
ISO_MS_Z = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


@pytest.fixture(params=PROTOCOLS)
def protocol(request: pytest.FixtureRequest) -> str:
    return request.param


def shape(value: Any) -> Any:
    """The structure of a payload: keys and types, not values."""
    if isinstance(value, dict):
        return {key: shape(item) for key, item in value.items()}
    if isinstance(value, list):
        return [shape(item) for item in value]
    return type(value).__name__


async def test_connected_greets_with_identity(gateway: Gateway, make_token, protocol: str) -> None:
    token = make_token(user_id=11, logged_in=True)
    async with await connect(protocol, gateway.http_url, token) as client:
        data = await client.expect("connected")
    assert data == {
        "message": "Connected to YektaYar server",
        "socketId": data["socketId"],
        "isLoggedIn": True,
        "protocol": protocol,
    }
    assert data["socketId"]


async def test_ping_answers_pong_with_timestamp(gateway: Gateway, make_token, protocol) -> None:
    async with await connect(protocol, gateway.http_url, make_token()) as client:
        await client.expect("connected")
        pong = await client.request("ping", None, reply="pong")
    assert set(pong) == {"timestamp"}
    assert ISO_MS_Z.match(pong["timestamp"])


async def test_status_shows_connection_with_masked_token(gateway, make_token, protocol) -> None:
    token = make_token(user_id=12, logged_in=True)
    async with await connect(protocol, gateway.http_url, token) as client:
        connected = await client.expect("connected")
        status = await client.request("status")
    assert status["server"]["name"] == "YektaYar WebSocket Server"
    assert status["server"]["status"] == "running"
    assert ISO_MS_Z.match(status["server"]["timestamp"])
    assert status["connection"] == {
        "socketId": connected["socketId"],
        "userId": "12",
        "isLoggedIn": True,
        "protocol": protocol,
        "sessionToken": "***" + token[-4:],
        "rooms": sorted([connected["socketId"], "user:12"]),
    }
    assert token not in str(status)


async def test_anonymous_session_has_only_its_own_room(gateway, make_token, protocol) -> None:
    async with await connect(protocol, gateway.http_url, make_token()) as client:
        connected = await client.expect("connected")
        status = await client.request("status")
    assert status["connection"]["userId"] is None
    assert status["connection"]["isLoggedIn"] is False
    assert status["connection"]["rooms"] == [connected["socketId"]]


async def test_echo_returns_data_as_sent(gateway, make_token, protocol) -> None:
    sent = {"text": "سلام", "n": [1, 2.5, None, True], "nested": {"a": {"b": "c"}}}
    async with await connect(protocol, gateway.http_url, make_token()) as client:
        connected = await client.expect("connected")
        echo = await client.request("echo", sent)
    assert echo["received"] == sent
    assert echo["socketId"] == connected["socketId"]
    assert ISO_MS_Z.match(echo["timestamp"])


async def test_info_describes_server_and_session(gateway, make_token, protocol) -> None:
    token = make_token(user_id=None, logged_in=False)
    async with await connect(protocol, gateway.http_url, token) as client:
        await client.expect("connected")
        info = await client.request("info")
    assert info["server"]["name"] == "YektaYar WebSocket Server"
    assert info["server"]["features"]["nativeWebSocket"] is True
    assert info["websocket"] == {"connected": True, "protocol": protocol, "transport": "websocket"}
    assert info["session"] == {
        "authenticated": False,
        "userId": "anonymous",
        "sessionToken": "***" + token[-4:],
    }


async def test_message_is_acknowledged(gateway, make_token, protocol) -> None:
    async with await connect(protocol, gateway.http_url, make_token()) as client:
        await client.expect("connected")
        reply = await client.request("message", {"body": "hello"}, reply="message_received")
    assert reply["success"] is True
    assert reply["message"] == "Message received successfully"
    assert reply["data"] == {"body": "hello"}


async def test_payload_shapes_identical_on_both_protocols(gateway: Gateway, make_token) -> None:
    token = make_token(user_id=5, logged_in=True)
    shapes: dict[str, dict[str, Any]] = {}
    for protocol in PROTOCOLS:
        async with await connect(protocol, gateway.http_url, token) as client:
            replies = {"connected": await client.expect("connected")}
            for event, reply in [
                ("ping", "pong"),
                ("status", None),
                ("echo", None),
                ("info", None),
                ("message", "message_received"),
            ]:
                replies[event] = await client.request(event, {"k": 1}, reply=reply)
        shapes[protocol] = {event: shape(data) for event, data in replies.items()}
    assert shapes["native-websocket"] == shapes["socket.io"]


async def test_native_reply_carries_request_id(gateway: Gateway, make_token) -> None:
    client = await connect("native-websocket", gateway.http_url, make_token())
    assert isinstance(client, NativeClient)
    async with client:
        await client.expect("connected")
        await client.send_frame({"event": "echo", "data": 1, "id": "req-1"})
        await client.send_frame({"event": "ping", "id": 42})
        await client.send_frame({"event": "echo", "data": 2})
        await client.expect("pong")
        await client.expect("echo_response")
    ids = [frame.get("id", "absent") for frame in client.frames[1:]]
    assert ids == ["req-1", 42, "absent"]


async def test_socketio_ack_receives_direct_reply(gateway: Gateway, make_token) -> None:
    client = await connect("socket.io", gateway.http_url, make_token())
    assert isinstance(client, SocketIOClient)
    async with client:
        await client.expect("connected")
        ack = await client.call("echo", {"via": "ack"})
        event = await client.expect("echo_response")
    assert ack == event
    assert ack["received"] == {"via": "ack"}


async def test_socketio_ignores_unknown_events(gateway: Gateway, make_token) -> None:
    client = await connect("socket.io", gateway.http_url, make_token())
    assert isinstance(client, SocketIOClient)
    async with client:
        await client.expect("connected")
        await client.send("no-such-event", {"x": 1})
        pong = await client.request("ping", reply="pong")
        assert "timestamp" in pong
        assert client.events.empty()
