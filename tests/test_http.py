"""CONTRACT sections 1 and 5: the plain-HTTP side of the port."""

from __future__ import annotations

import aiohttp
import pytest

from support.gateway import Gateway


async def get(url: str, **kwargs) -> tuple[int, dict, dict]:
    async with aiohttp.ClientSession() as http, http.get(url, **kwargs) as response:
        return response.status, dict(response.headers), await response.json()


@pytest.mark.parametrize("path", ["/", "/ws"])
async def test_info_json_keeps_the_old_fields(gateway: Gateway, path: str) -> None:
    status, _, info = await get(gateway.http_url + path)
    assert status == 200
    assert info["message"] == "YektaYar WebSocket Server"
    assert info["status"] == "running"
    assert info["version"] == "0.1.0"
    assert info["protocols"]["socketio"]["path"] == "/socket.io/"
    assert info["protocols"]["socketio"]["transports"] == ["websocket", "polling"]
    assert info["protocols"]["websocket"]["path"] == "/ws"
    assert "authentication" in info["protocols"]["websocket"]
    assert info["usage"]["websocket"].startswith(f"new WebSocket('ws://127.0.0.1:{gateway.port}/ws")
    assert f"http://127.0.0.1:{gateway.port}" in info["usage"]["socketio"]


async def test_info_behind_trusted_proxy_shows_wss(gateway: Gateway) -> None:
    headers = {
        "X-Forwarded-Proto": "https",
        "X-Forwarded-Host": "ws.yektayar.ir",
        "X-Forwarded-For": "203.0.113.9",
    }
    _, _, info = await get(gateway.http_url + "/", headers=headers)
    assert info["usage"]["websocket"] == "new WebSocket('wss://ws.yektayar.ir/ws?token=YOUR_TOKEN')"
    assert "https://ws.yektayar.ir" in info["usage"]["socketio"]


async def test_forwarded_headers_ignored_from_untrusted_peer(database_url: str) -> None:
    from support.gateway import start_gateway

    gateway = start_gateway({"DATABASE_URL": database_url, "TRUSTED_PROXIES": "10.9.9.9/32"})
    try:
        _, _, info = await get(
            gateway.http_url + "/",
            headers={"X-Forwarded-Proto": "https", "X-Forwarded-Host": "evil.example"},
        )
    finally:
        gateway.stop()
    assert "evil.example" not in str(info)
    assert info["usage"]["websocket"].startswith("new WebSocket('ws://127.0.0.1")


async def test_health_and_ready(gateway: Gateway) -> None:
    assert (await get(gateway.http_url + "/health"))[0] == 200
    status, _, body = await get(gateway.http_url + "/ready")
    assert status == 200
    assert body["checks"]["sessionStore"] == "ok"


@pytest.mark.parametrize("path", ["/nope", "/socket", "/api/v1/users", "/.env"])
async def test_unknown_paths_are_json_404(gateway: Gateway, path: str) -> None:
    status, headers, body = await get(gateway.http_url + path)
    assert status == 404
    assert headers["Content-Type"].startswith("application/json")
    assert body["error"] == "Not found"


async def test_wrong_method_is_not_a_200(gateway: Gateway) -> None:
    async with aiohttp.ClientSession() as http, http.post(gateway.http_url + "/health") as resp:
        assert resp.status == 405
        assert (await resp.json())["error"] == "Method not allowed"
