"""A native client that asks for recovery and can resume, for the tests of recovery."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import aiohttp
import pytest

__all__ = ["RecoveringClient"]


class RecoveringClient:
    """A native client that asked for recovery; it remembers the last offset it saw."""

    def __init__(self) -> None:
        self.frames: list[dict[str, Any]] = []
        self.pid: str | None = None
        self.offset: str | None = None
        self._queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._session: Any = None
        self._ws: Any = None
        self._reader: asyncio.Task[None] | None = None

    async def connect(self, port: int, token: str, *, resume: bool = False) -> dict[str, Any]:
        await self.close()
        query = f"token={token}&recover=1"
        if resume:
            query = f"token={token}&resume={self.pid}&offset={self.offset}"
        self._session = aiohttp.ClientSession()
        self._ws = await self._session.ws_connect(f"ws://127.0.0.1:{port}/ws?{query}")
        self._queue = asyncio.Queue()
        self._reader = asyncio.get_running_loop().create_task(self._read())
        hello = await self.next()
        assert hello["event"] == "connected", hello
        self.pid = hello["data"]["recovery"]["pid"]
        return hello["data"]

    async def _read(self) -> None:
        async for message in self._ws:
            frame = json.loads(message.data)
            self.frames.append(frame)
            if "offset" in frame:
                self.offset = frame["offset"]
            self._queue.put_nowait(frame)

    async def next(self, timeout: float = 5.0) -> dict[str, Any]:
        return await asyncio.wait_for(self._queue.get(), timeout)

    async def ask_ai(self, directive: str) -> str:
        """Send an ``ai:chat`` whose fake answer follows ``directive``; wait for its first
        chunk; return its messageId."""
        tag = uuid.uuid4().hex[:8]
        data = {"message": f"{tag} {directive}", "messageId": tag}
        await self._ws.send_json({"event": "ai:chat", "data": data})
        while (await self.next())["event"] != "ai:response:chunk":
            pass
        return tag

    async def notices(self, count: int) -> list[int]:
        return [(await self.next())["data"]["n"] for _ in range(count)]

    async def quiet(self, seconds: float = 0.5) -> None:
        with pytest.raises(TimeoutError):
            frame = await self.next(seconds)
            raise AssertionError(f"unexpected frame {frame}")

    async def close(self) -> None:
        if self._ws is not None:
            await self._ws.close()
            await self._session.close()
            self._ws = None
