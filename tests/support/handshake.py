"""A native WebSocket handshake made with plain HTTP, to see exactly how the server refuses it."""

from __future__ import annotations

from dataclasses import dataclass

import aiohttp
from multidict import CIMultiDictProxy

__all__ = ["UPGRADE_HEADERS", "Answer", "handshake"]

UPGRADE_HEADERS = {
    "Upgrade": "websocket",
    "Connection": "Upgrade",
    "Sec-WebSocket-Version": "13",
    "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
}


@dataclass(frozen=True)
class Answer:
    status: int
    text: str
    headers: CIMultiDictProxy[str]


async def handshake(url: str, headers: dict[str, str] | None = None) -> Answer:
    """Send an upgrade request to ``url`` (http:// or ws://) and return the server's answer."""
    url = url.replace("ws://", "http://", 1)
    async with (
        aiohttp.ClientSession() as http,
        http.get(url, headers={**UPGRADE_HEADERS, **(headers or {})}) as response,
    ):
        # A 101 leaves the connection upgraded; nothing more is read from it.
        text = "" if response.status == 101 else await response.text()
        return Answer(response.status, text, response.headers)
