"""CONTRACT section 3: bad native frames get an error frame and the connection keeps working."""

from __future__ import annotations

import pytest

from support.clients import NativeClient
from support.gateway import Gateway


@pytest.fixture
async def native(gateway: Gateway, make_token):
    client = await NativeClient.open(f"{gateway.ws_url}/ws?token={make_token()}")
    await client.expect("connected")
    yield client
    await client.close()


@pytest.mark.parametrize(
    ("frame", "error", "code"),
    [
        ("not json", "Failed to process message", "bad_frame"),
        ("{broken", "Failed to process message", "bad_frame"),
        ("[1, 2, 3]", "Failed to process message", "bad_frame"),
        ('"a string"', "Failed to process message", "bad_frame"),
        ("42", "Failed to process message", "bad_frame"),
        ("null", "Failed to process message", "bad_frame"),
        ('{"event": "ping", "id": {"nested": 1}}', "Failed to process message", "bad_frame"),
        ('{"event": "ping", "id": true}', "Failed to process message", "bad_frame"),
        ('{"data": {}}', "Unknown event type: undefined", "unknown_event"),
        ('{"event": 5}', "Unknown event type: undefined", "unknown_event"),
        ('{"event": ""}', "Unknown event type: undefined", "unknown_event"),
        ('{"event": "nope"}', "Unknown event type: nope", "unknown_event"),
        ('{"event": "__init__"}', "Unknown event type: __init__", "unknown_event"),
    ],
)
async def test_bad_frame_answered_and_connection_survives(native: NativeClient, frame, error, code):
    await native.send_frame(frame)
    assert await native.next() == ("error", {"error": error, "code": code})
    assert "timestamp" in await native.request("ping", reply="pong")


async def test_binary_frame_holding_utf8_json_is_an_event(native: NativeClient) -> None:
    await native.ws.send_bytes('{"event": "echo", "data": "سلام"}'.encode())
    echo = await native.expect("echo_response")
    assert echo["received"] == "سلام"


async def test_binary_garbage_is_a_bad_frame(native: NativeClient) -> None:
    await native.ws.send_bytes(b"\xff\xfe\x00garbage")
    assert await native.next() == (
        "error",
        {"error": "Failed to process message", "code": "bad_frame"},
    )
    assert "timestamp" in await native.request("ping", reply="pong")


async def test_deeply_nested_json_is_refused_not_crashing(native: NativeClient) -> None:
    await native.send_frame('{"event": "echo", "data": ' + "[" * 5000 + "]" * 5000 + "}")
    event, data = await native.next()
    assert (event, data["code"]) == ("error", "bad_frame")
    assert "timestamp" in await native.request("ping", reply="pong")


async def test_error_reply_carries_the_frame_id(native: NativeClient) -> None:
    await native.send_frame({"event": "nope", "id": "x1"})
    await native.expect("error")
    assert native.frames[-1]["id"] == "x1"
