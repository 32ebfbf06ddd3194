"""Two protocol rules aiohttp does not enforce, enforced in front of it.

- :class:`MaskGuard`: RFC 6455 section 5.1 says a server MUST close the connection when a client
  frame is not masked; aiohttp's reader accepts such frames. The guard reads only the frame
  headers of the incoming byte stream (never the payloads) and fails the connection with 1002 at
  the first unmasked frame, before the reader sees it.
- :func:`header_deadline_factory`: aiohttp has no timeout for receiving a request's headers, so a
  client sending them a byte at a time (slowloris) holds a connection forever. Each new connection
  gets ``HANDSHAKE_TIMEOUT`` seconds to complete its first request's headers.

Both reach into aiohttp internals (``RequestHandler._payload_parser``, ``_request_count``); the
tests in ``tests/test_hardening.py`` fail loudly if an aiohttp upgrade moves them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from aiohttp import WSCloseCode, web
from aiohttp.http_websocket import WebSocketError

__all__ = ["GuardedWebSocketResponse", "MaskGuard", "header_deadline_factory"]

_MASK_BIT = 0x80
_LENGTH_MASK = 0x7F


class MaskGuard:
    """Wraps aiohttp's ``WebSocketReader``; passes bytes through until a frame is unmasked."""

    __slots__ = ("_header", "_on_violation", "_parser", "_skip", "violated")

    def __init__(self, parser: Any, on_violation: Callable[[], None]) -> None:
        self._parser = parser
        self._on_violation = on_violation
        self._header = bytearray()  # bytes of a frame header not yet complete
        self._skip = 0  # payload bytes of the current frame still to pass by
        self.violated = False

    def feed_data(self, data: bytes) -> tuple[bool, bytes]:
        if not self.violated and not self._all_masked(data):
            self.violated = True
            self._on_violation()
        if self.violated:
            return True, b""
        return self._parser.feed_data(data)

    def feed_eof(self) -> None:
        self._parser.feed_eof()

    def _all_masked(self, data: bytes) -> bool:
        """Advance through ``data``'s frame headers; False at the first unmasked frame.

        Headers are read in place; only a header split across two reads is copied (rare, and
        at most 14 bytes).
        """
        if self._header:
            data = bytes(self._header) + data
            self._header.clear()
        position, size = self._skip, len(data)
        while position + 2 <= size:
            second = data[position + 1]
            if not second & _MASK_BIT:
                return False
            length = second & _LENGTH_MASK
            extra = 2 if length == 126 else 8 if length == 127 else 0
            payload_at = position + 2 + extra + 4  # extended length, then the masking key
            if payload_at > size:
                break
            if extra:
                length = int.from_bytes(data[position + 2 : position + 2 + extra], "big")
            position = payload_at + length
        if position >= size:
            self._skip = position - size
        else:
            self._skip = 0
            self._header += data[position:]
        return True


class GuardedWebSocketResponse(web.WebSocketResponse):
    """A ``WebSocketResponse`` whose incoming frames pass a :class:`MaskGuard` first."""

    def _post_start(self, request: web.BaseRequest, protocol: str | None, writer: Any) -> None:
        super()._post_start(request, protocol, writer)
        handler = request.protocol
        reader = self._reader

        def fail() -> None:
            reader.set_exception(
                WebSocketError(WSCloseCode.PROTOCOL_ERROR, "Received an unmasked frame")
            )

        handler._payload_parser = MaskGuard(handler._payload_parser, fail)


def header_deadline_factory(
    protocol_factory: Callable[[], asyncio.Protocol], timeout: float
) -> Callable[[], asyncio.Protocol]:
    """Wrap aiohttp's protocol factory so that a connection must send full headers in time."""

    def factory() -> asyncio.Protocol:
        protocol = protocol_factory()
        asyncio.get_running_loop().call_later(timeout, _close_if_no_request, protocol)
        return protocol

    return factory


def _close_if_no_request(protocol: Any) -> None:
    transport = protocol.transport
    if transport is not None and protocol._request_count == 0 and not transport.is_closing():
        transport.close()
