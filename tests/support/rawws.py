"""Raw HTTP and WebSocket over asyncio streams, for what well-behaved clients refuse to send.

Unmasked frames, reserved opcodes and bits, broken fragmentation, bad close frames, partial or
malformed handshakes: :func:`frame` builds any frame byte by byte and :class:`RawConnection` sends
bytes as they are and reads the server's answer (an HTTP response, frames, a close code, EOF).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import struct
from dataclasses import dataclass

import orjson

__all__ = [
    "OP_BINARY",
    "OP_CLOSE",
    "OP_CONTINUATION",
    "OP_PING",
    "OP_PONG",
    "OP_TEXT",
    "RawConnection",
    "Response",
    "close_frame",
    "frame",
    "upgrade_request",
]

OP_CONTINUATION, OP_TEXT, OP_BINARY = 0x0, 0x1, 0x2
OP_CLOSE, OP_PING, OP_PONG = 0x8, 0x9, 0xA

#: A valid ``Sec-WebSocket-Key`` (16 bytes, base64).
KEY = "dGhlIHNhbXBsZSBub25jZQ=="


def frame(
    opcode: int,
    payload: bytes = b"",
    *,
    fin: bool = True,
    rsv: int = 0,
    mask: bool = True,
    length: int | None = None,
) -> bytes:
    """One frame. ``rsv`` is the three RSV bits (0-7); ``length`` overrides the declared size."""
    declared = len(payload) if length is None else length
    head = bytearray([(0x80 if fin else 0) | (rsv & 7) << 4 | opcode & 0xF])
    mask_bit = 0x80 if mask else 0
    if declared < 126:
        head.append(mask_bit | declared)
    elif declared < 1 << 16:
        head += bytes([mask_bit | 126]) + struct.pack("!H", declared)
    else:
        head += bytes([mask_bit | 127]) + struct.pack("!Q", declared)
    if not mask:
        return bytes(head) + payload
    key = os.urandom(4)
    return bytes(head) + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


def close_frame(code: int | None, reason: bytes = b"") -> bytes:
    payload = b"" if code is None else struct.pack("!H", code) + reason
    return frame(OP_CLOSE, payload)


def upgrade_request(
    path: str = "/ws", headers: dict[str, str] | None = None, *, version: str = "HTTP/1.1"
) -> bytes:
    """A WebSocket upgrade request; ``headers`` are added to (or, set to "", removed from) the
    standard ones."""
    fields = {
        "Host": "127.0.0.1",
        "Upgrade": "websocket",
        "Connection": "Upgrade",
        "Sec-WebSocket-Key": KEY,
        "Sec-WebSocket-Version": "13",
        **(headers or {}),
    }
    lines = [f"GET {path} {version}", *(f"{k}: {v}" for k, v in fields.items() if v != "")]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    headers: dict[str, str]  # names lower-cased
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode(errors="replace")


class RawConnection:
    """A TCP connection to the server, spoken to in bytes."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        #: Answer the server's pings (a live peer); off, the peer looks dead (half-open).
        self.answer_pings = True

    @classmethod
    async def open(cls, port: int, host: str = "127.0.0.1") -> RawConnection:
        reader, writer = await asyncio.open_connection(host, port, limit=1 << 24)
        return cls(reader, writer)

    @classmethod
    async def upgraded(cls, port: int, path: str, headers: dict[str, str] | None = None):
        """A connection whose upgrade succeeded (asserts the 101)."""
        conn = await cls.open(port)
        response = await conn.request(upgrade_request(path, headers))
        assert response.status == 101, (response.status, response.text)
        return conn

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def request(self, data: bytes, timeout: float = 5.0) -> Response:
        await self.send(data)
        return await self.response(timeout)

    async def response(self, timeout: float = 5.0) -> Response:
        """Read one HTTP response head (and its body, when it has a ``Content-Length``)."""
        async with asyncio.timeout(timeout):
            head = await self.reader.readuntil(b"\r\n\r\n")
            status_line, *lines = head.decode("latin-1").split("\r\n")
            headers = {}
            for line in filter(None, lines):
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            length = int(headers.get("content-length", 0))
            body = await self.reader.readexactly(length) if length else b""
        return Response(int(status_line.split()[1]), headers, body)

    async def read_frame(self, timeout: float = 5.0) -> tuple[int, bytes]:
        """The next frame from the server other than a ping: ``(opcode, payload)``."""
        async with asyncio.timeout(timeout):
            while True:
                first, second = await self.reader.readexactly(2)
                length = second & 0x7F
                if length == 126:
                    (length,) = struct.unpack("!H", await self.reader.readexactly(2))
                elif length == 127:
                    (length,) = struct.unpack("!Q", await self.reader.readexactly(8))
                payload = await self.reader.readexactly(length)
                opcode = first & 0xF
                if opcode != OP_PING:
                    return opcode, payload
                if self.answer_pings:
                    await self.send(frame(OP_PONG, payload))

    async def read_control(self, timeout: float = 5.0) -> tuple[int, bytes]:
        """The next frame from the server, pings included: ``(opcode, payload)``."""
        async with asyncio.timeout(timeout):
            first, second = await self.reader.readexactly(2)
            length = second & 0x7F  # control frames carry at most 125 bytes
            return first & 0xF, await self.reader.readexactly(length)

    async def read_event(self, timeout: float = 5.0) -> dict:
        """The next JSON text frame, parsed."""
        opcode, payload = await self.read_frame(timeout)
        assert opcode == OP_TEXT, (opcode, payload)
        return orjson.loads(payload)

    async def close_code(self, timeout: float = 5.0) -> int | None:
        """Read until the server's close frame and return its code (``None``: it dropped the
        connection without one); frames before it are skipped."""
        try:
            while True:
                opcode, payload = await self.read_frame(timeout)
                if opcode == OP_CLOSE:
                    return struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else None
        except asyncio.IncompleteReadError:
            return None

    async def closed_by_server(self, timeout: float) -> bool:
        """Whether the server ends the connection (close frame or EOF) within ``timeout``."""
        try:
            async with asyncio.timeout(timeout):
                while await self.reader.read(65536):
                    pass
        except TimeoutError:
            return False
        except ConnectionError:
            pass
        return True

    def abort(self) -> None:
        """Drop the connection without a close handshake (RST)."""
        self.writer.transport.abort()

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await self.writer.wait_closed()
