"""The official JavaScript clients (socket.io-client 4, ws, wscat) against the real gateway."""

from __future__ import annotations

import pytest

from support.gateway import Gateway
from support.node import run_js_client, wscat


@pytest.mark.parametrize("transports", [["websocket"], ["polling"], ["polling", "websocket"]])
@pytest.mark.parametrize(("path", "namespace"), [("/socket.io", ""), ("/ws", "/api")])
def test_socketio_client_connects_and_echoes(
    gateway: Gateway, make_token, transports, path, namespace
) -> None:
    result = run_js_client(
        {
            "protocol": "socket.io",
            "url": gateway.http_url,
            "token": make_token(user_id=2),
            "path": path,
            "namespace": namespace,
            "transports": transports,
            "send": [["echo", {"from": "node"}]],
            "count": 2,
        }
    )
    names = [name for name, _ in result["events"]]
    assert names == ["connected", "echo_response"], result
    assert result["events"][1][1]["received"] == {"from": "node"}
    assert result["acks"] == [result["events"][1][1]]


@pytest.mark.parametrize("via", ["query", "header", "subprotocol"])
def test_ws_client_connects_and_echoes(gateway: Gateway, make_token, via: str) -> None:
    result = run_js_client(
        {
            "protocol": "ws",
            "url": f"{gateway.ws_url}/ws",
            "token": make_token(),
            "tokenVia": via,
            "send": [["echo", {"from": "ws"}]],
            "count": 2,
        }
    )
    assert [name for name, _ in result["events"]] == ["connected", "echo_response"], result
    assert result["events"][1][1]["received"] == {"from": "ws"}


def test_same_echo_payload_from_wscat_and_socketio_client(gateway: Gateway, make_token) -> None:
    token = make_token(user_id=77, logged_in=True)
    native = wscat(f"{gateway.ws_url}/ws?token={token}", '{"event":"echo","data":{"same":true}}')
    sio = run_js_client(
        {
            "protocol": "socket.io",
            "url": gateway.http_url,
            "token": token,
            "send": [["echo", {"same": True}]],
            "count": 2,
        }
    )
    native_echo = next(frame["data"] for frame in native if frame["event"] == "echo_response")
    sio_echo = sio["events"][1][1]
    assert set(native_echo) == set(sio_echo) == {"received", "timestamp", "socketId"}
    assert native_echo["received"] == sio_echo["received"] == {"same": True}


def test_js_clients_see_refusals(gateway: Gateway) -> None:
    sio = run_js_client({"protocol": "socket.io", "url": gateway.http_url, "token": "bad" * 15})
    assert sio["error"] == {"message": "Invalid or expired session token", "data": None}
    ws = run_js_client(
        {"protocol": "ws", "url": f"{gateway.ws_url}/ws", "tokenVia": "query", "token": ""}
    )
    assert ws["error"] == {"status": 401, "message": "Authentication token required"}
