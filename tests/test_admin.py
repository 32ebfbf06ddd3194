"""The server API as another service meets it: its key, its errors, one process without Redis."""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator

import aiohttp
import pytest

from support.clients import NativeClient, connect
from support.cluster import API_KEY, call_api
from support.gateway import Gateway, free_port, start_gateway

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def lone(database_url: str) -> Iterator[Gateway]:
    """One gateway with the server API and no REDIS_URL: the whole cluster in one process."""
    process = start_gateway(
        {"DATABASE_URL": database_url, "ADMIN_API_KEY": API_KEY, "ADMIN_PORT": str(free_port())}
    )
    yield process
    process.stop()


@pytest.mark.parametrize("key", [None, "", "wrong-key", API_KEY + "x", API_KEY[:-1]])
async def test_requests_without_the_key_get_401(lone: Gateway, key: str | None) -> None:
    status, body = await call_api(lone, "GET", "/users/1/connections", key=key)

    assert status == 401
    assert body == {"error": "A valid API key is required"}


async def test_unknown_route_is_json_404_and_wrong_method_405(lone: Gateway) -> None:
    assert (await call_api(lone, "GET", "/nope"))[0] == 404
    status, body = await call_api(lone, "GET", "/emit")
    assert status == 405
    assert body["error"] == "Method Not Allowed"


@pytest.mark.parametrize(
    ("path", "raw", "message"),
    [
        ("/emit", b"{not json", "the body must be JSON"),
        ("/emit", b"[1, 2]", "the body must be a JSON object"),
        ("/emit", b'{"event": "x"}', "'to' must be a non-empty string"),
        ("/emit", b'{"to": "user:1", "event": ""}', "'event' must be a non-empty string"),
        ("/emit", b'{"to": 5, "event": "x"}', "'to' must be a non-empty string"),
        ("/disconnect", b"{}", "exactly one of 'user', 'socketId', 'token' is required"),
        (
            "/disconnect",
            b'{"user": "1", "socketId": "abc"}',
            "exactly one of 'user', 'socketId', 'token' is required",
        ),
        ("/disconnect", b'{"token": ["x"]}', "'token' must be a non-empty string"),
        (
            "/disconnect",
            b'{"user": "1", "reason": "' + b"x" * 124 + b'"}',
            "'reason' must be a string of at most 123 UTF-8 bytes",
        ),
    ],
)
async def test_bad_bodies_get_400_naming_the_field(
    lone: Gateway, path: str, raw: bytes, message: str
) -> None:
    status, body = await call_api(lone, "POST", path, raw=raw)

    assert status == 400
    assert body == {"error": message}


async def test_oversize_body_gets_413(lone: Gateway) -> None:
    status, body = await call_api(
        lone, "POST", "/emit", {"to": "x", "event": "x", "data": "x" * (2 * 1024 * 1024)}
    )
    assert status == 413
    assert "error" in body


async def test_one_process_without_redis_emits_disconnects_and_lists(
    lone: Gateway, make_token: Callable[..., str]
) -> None:
    token = make_token(user_id=77, logged_in=True)
    async with (
        await connect("native-websocket", lone.http_url, token) as native,
        await connect("socket.io", lone.http_url, token) as sio,
    ):
        await native.expect("connected")
        await sio.expect("connected")

        status, emitted = await call_api(
            lone, "POST", "/emit", {"to": "user:77", "event": "hello", "data": None}
        )
        assert status == 200
        assert emitted["localConnections"] == 2
        assert emitted["broker"] == "none"
        assert await native.expect("hello") is None
        assert await sio.expect("hello") is None

        _, listed = await call_api(lone, "GET", "/users/77/connections")
        assert listed["complete"] is True
        assert sorted(c["protocol"] for c in listed["connections"]) == [
            "native-websocket",
            "socket.io",
        ]

        _, closed = await call_api(lone, "POST", "/disconnect", {"user": 77})
        assert closed["localConnections"] == 2
        assert isinstance(native, NativeClient)
        assert await native.wait_closed() == 4001
        assert await sio.expect("session:expired") == {"reason": "session expired"}


async def test_ready_reports_the_broker_as_local(lone: Gateway) -> None:
    _, body = await call_api(lone, "GET", "/users/1/connections")
    assert body["nodes"] and body["complete"] is True
    async with aiohttp.ClientSession() as http, http.get(f"{lone.http_url}/ready") as response:
        assert response.status == 200
        assert (await response.json())["checks"]["broker"] == "local"


def test_no_key_no_listener(database_url: str) -> None:
    port = free_port()
    process = start_gateway({"DATABASE_URL": database_url, "ADMIN_PORT": str(port)})
    try:
        with pytest.raises(ConnectionRefusedError), socket.create_connection(("127.0.0.1", port)):
            pass
        assert process.wait_for_log("listening")["serverApi"] is None
    finally:
        process.stop()
