"""One client interface over both protocols, so a contract test is written once.

``NativeClient`` speaks JSON frames over aiohttp's WebSocket client; ``SocketIOClient`` uses
python-socketio's ``AsyncClient``. Both collect every event the server sends into one queue, and
:meth:`next` / :meth:`expect` read from it, so a test asserts on what a user's app would receive.
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import orjson
import socketio

__all__ = ["NativeClient", "ProtocolClient", "SocketIOClient", "connect"]

Event = tuple[str, Any]


class ProtocolClient:
    """What the contract tests need from a client of either protocol."""

    protocol: str

    def __init__(self) -> None:
        self.events: asyncio.Queue[Event] = asyncio.Queue()

    async def send(self, event: str, data: Any = None) -> None:
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError

    async def next(self, timeout: float = 5.0) -> Event:
        """The next event the server sent."""
        return await asyncio.wait_for(self.events.get(), timeout)

    async def expect(self, name: str, timeout: float = 5.0) -> Any:
        """Skip events until ``name`` arrives; return its data."""
        async with asyncio.timeout(timeout):
            while True:
                event, data = await self.events.get()
                if event == name:
                    return data

    async def request(self, event: str, data: Any = None, reply: str | None = None) -> Any:
        """Send ``event`` and return the data of the reply event ``reply``."""
        await self.send(event, data)
        return await self.expect(reply or f"{event}_response")

    async def __aenter__(self) -> ProtocolClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class NativeClient(ProtocolClient):
    protocol = "native-websocket"

    def __init__(self, http: aiohttp.ClientSession, ws: aiohttp.ClientWebSocketResponse) -> None:
        super().__init__()
        self.http = http
        self.ws = ws
        self.frames: list[dict[str, Any]] = []
        #: The reason text of the server's close frame, once it came.
        self.close_reason: str | None = None
        self._reader = asyncio.get_running_loop().create_task(self._read())

    @classmethod
    async def open(cls, url: str, **kwargs: Any) -> NativeClient:
        http = aiohttp.ClientSession()
        try:
            ws = await http.ws_connect(url, **kwargs)
        except BaseException:
            await http.close()
            raise
        return cls(http, ws)

    async def _read(self) -> None:
        while True:
            message = await self.ws.receive()
            if message.type is aiohttp.WSMsgType.TEXT:
                frame = orjson.loads(message.data)
                self.frames.append(frame)
                self.events.put_nowait((frame["event"], frame.get("data")))
            elif message.type is aiohttp.WSMsgType.CLOSE:
                self.close_reason = message.extra
            elif message.type in {aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR}:
                return

    async def send(self, event: str, data: Any = None) -> None:
        await self.ws.send_str(orjson.dumps({"event": event, "data": data}).decode())

    async def send_frame(self, frame: Any) -> None:
        await self.ws.send_str(frame if isinstance(frame, str) else orjson.dumps(frame).decode())

    async def wait_closed(self, timeout: float = 5.0) -> int | None:
        """Wait for the server to close; return its close code."""
        await asyncio.wait_for(asyncio.shield(self._reader), timeout)
        return self.ws.close_code

    async def close(self) -> None:
        await self.ws.close()
        self._reader.cancel()
        await self.http.close()


class SocketIOClient(ProtocolClient):
    protocol = "socket.io"

    def __init__(self, client: socketio.AsyncClient, namespace: str) -> None:
        super().__init__()
        self.client = client
        self.namespace = namespace
        self.disconnected = asyncio.Event()

    @classmethod
    async def open(
        cls,
        url: str,
        *,
        token: str | None = None,
        transports: list[str] | None = None,
        path: str = "socket.io",
        namespace: str = "/",
        **kwargs: Any,
    ) -> SocketIOClient:
        client = socketio.AsyncClient(reconnection=False)
        wrapper = cls(client, namespace)
        client.on("*", wrapper._on_event, namespace=namespace)
        client.on("disconnect", wrapper._on_disconnect, namespace=namespace)
        await client.connect(
            url,
            auth={"token": token} if token is not None else None,
            transports=transports,
            socketio_path=path,
            namespaces=[namespace],
            wait_timeout=5,
            **kwargs,
        )
        return wrapper

    async def _on_event(self, event: str, *args: Any) -> None:
        self.events.put_nowait((event, args[0] if args else None))

    async def _on_disconnect(self, *args: Any) -> None:
        self.disconnected.set()

    async def send(self, event: str, data: Any = None) -> None:
        await self.client.emit(event, data, namespace=self.namespace)

    async def call(self, event: str, data: Any = None, timeout: float = 5.0) -> Any:
        """Emit with an acknowledgement callback and return what the server acknowledged."""
        return await self.client.call(event, data, namespace=self.namespace, timeout=timeout)

    async def close(self) -> None:
        await self.client.disconnect()


async def connect(protocol: str, base_url: str, token: str, **options: Any) -> ProtocolClient:
    """Connect with ``protocol`` (``native-websocket`` or ``socket.io``) to a gateway."""
    if protocol == NativeClient.protocol:
        ws_base = base_url.replace("http", "ws", 1)
        return await NativeClient.open(f"{ws_base}/ws?token={token}", **options)
    return await SocketIOClient.open(base_url, token=token, **options)
