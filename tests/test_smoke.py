"""The first thing a user does: start the gateway, connect with each protocol, get an echo."""

from __future__ import annotations

import aiohttp
import orjson
import socketio

from support.gateway import Gateway


async def test_native_and_socketio_echo_on_one_port(gateway: Gateway, make_token) -> None:
    token = make_token(user_id=7, logged_in=True)
    url = f"{gateway.ws_url}/ws?token={token}"
    async with aiohttp.ClientSession() as http, http.ws_connect(url) as ws:
        assert (await ws.receive_json())["event"] == "connected"
        await ws.send_str(orjson.dumps({"event": "echo", "data": {"x": 1}}).decode())
        native = await ws.receive_json()
    client = socketio.AsyncClient()
    try:
        await client.connect(gateway.http_url, auth={"token": token}, transports=["websocket"])
        ack = await client.call("echo", {"x": 1}, timeout=5)
    finally:
        await client.disconnect()
    assert native["event"] == "echo_response"
    assert native["data"]["received"] == ack["received"] == {"x": 1}
