"""Protocol rules aiohttp does not enforce, enforced in front of it.

- :class:`FrameGuard`: RFC 6455 section 5.1 says a server MUST close the connection when a client
  frame is not masked, and section 7.4.1 forbids the status codes 1005, 1006 and 1015 in a close
  frame; aiohttp's reader accepts unmasked frames and close code 1006. The guard reads the frame
  headers of the incoming byte stream (and the two status bytes of a close frame, never other
  payloads) and fails the connection with 1002 at the first violation, before the reader sees it.
- :func:`header_deadline_factory`: aiohttp has no timeout for receiving a request's headers, so a
  client sending them a byte at a time (slowloris) holds a connection forever. Each new connection
  gets ``HANDSHAKE_TIMEOUT`` seconds to complete its first request's headers.

Both reach into aiohttp internals (``RequestHandler._payload_parser``, ``_request_count``), listed
in :mod:`yektaws.compat`: ``tests/test_compat.py`` names any that an aiohttp upgrade removes, and
``tests/test_attacks.py`` and ``tests/test_conformance.py`` fail loudly if one changes meaning.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from aiohttp import WSCloseCode, web
from aiohttp.http_websocket import WebSocketError, WebSocketReader

__all__ = ["FrameGuard", "GuardedWebSocketResponse", "header_deadline_factory"]

_MASK_BIT = 0x80
_LENGTH_MASK = 0x7F
_OPCODE_MASK = 0x0F
_OPCODE_CLOSE = 0x8
# RFC 6455 7.4.1: codes an endpoint MUST NOT send. aiohttp refuses 1005 and 1015 but accepts 1006
# (a member of its WSCloseCode); aio-libs/aiohttp#13536 fixes that upstream, not yet released in
# 3.14.5. Autobahn case 7.9.5 checks it.
_RESERVED_CLOSE_CODES = frozenset({1005, 1006, 1015})


class FrameGuard:
    """Wraps aiohttp's ``WebSocketReader``; passes bytes through until a frame breaks a rule."""

    __slots__ = ("_header", "_on_violation", "_parser", "_skip", "violated")

    def __init__(self, parser: WebSocketReader, on_violation: Callable[[str], None]) -> None:
        self._parser = parser
        self._on_violation = on_violation
        self._header = bytearray()  # the start of a frame not yet complete enough to judge
        self._skip = 0  # payload bytes of the current frame still to pass by
        self.violated = False

    def feed_data(self, data: bytes) -> tuple[bool, bytes]:
        if not self.violated:
            violation = self._violation(data)
            if violation is not None:
                self.violated = True
                self._on_violation(violation)
        if self.violated:
            return True, b""
        return self._parser.feed_data(data)

    def feed_eof(self) -> None:
        self._parser.feed_eof()

    def _violation(self, data: bytes) -> str | None:
        """Advance through ``data``'s frames; what is wrong with the first bad one, if any.

        Headers are read in place (this runs for every read of every connection); only the
        start of a frame split across two reads is kept, a few bytes at most: a header, and
        for a close frame its two status bytes.
        """
        if self._header:
            data = bytes(self._header) + data
            self._header.clear()
        position, size = self._skip, len(data)
        while position + 2 <= size:
            first, second = data[position], data[position + 1]
            if not second & _MASK_BIT:
                return "Received an unmasked frame"
            length = second & _LENGTH_MASK
            extra = 2 if length == 126 else 8 if length == 127 else 0
            payload_at = position + 2 + extra + 4  # extended length, then the masking key
            is_close = first & _OPCODE_MASK == _OPCODE_CLOSE and length >= 2
            if payload_at + (2 if is_close else 0) > size:
                break
            if extra:
                length = int.from_bytes(data[position + 2 : position + 2 + extra], "big")
            if is_close:
                key = data[payload_at - 4 : payload_at]
                status = (data[payload_at] ^ key[0]) << 8 | (data[payload_at + 1] ^ key[1])
                if status in _RESERVED_CLOSE_CODES:
                    return f"Invalid close code: {status}"
            position = payload_at + length
        if position >= size:
            self._skip = position - size
        else:
            self._skip = 0
            self._header += data[position:]
        return None


class GuardedWebSocketResponse(web.WebSocketResponse):
    """A ``WebSocketResponse`` whose incoming frames pass a :class:`FrameGuard` first.

    ``max_message_size`` is the largest message accepted, inclusive: aiohttp's reader refuses an
    uncompressed message of exactly ``max_msg_size`` bytes (its test is ``>=``), so it is given
    one byte more.
    """

    def __init__(self, *, max_message_size: int, **kwargs: Any) -> None:
        super().__init__(max_msg_size=max_message_size + 1, **kwargs)

    async def close_within(
        self, timeout: float, transport: asyncio.Transport, code: int = 1000, text: str = ""
    ) -> None:
        """Close with ``code``; drop the TCP connection if the close handshake takes longer.

        A server closing a client that does not read (or is gone) must not wait for it.
        """
        try:
            async with asyncio.timeout(timeout):
                await self.close(code=code, message=text.encode())
        except (TimeoutError, ConnectionError):
            transport.abort()

    def _post_start(self, request: web.BaseRequest, protocol: str | None, writer: Any) -> None:
        super()._post_start(request, protocol, writer)
        handler = request.protocol
        reader = self._reader
        assert reader is not None  # super()._post_start has just made it

        def fail(violation: str) -> None:
            reader.set_exception(WebSocketError(WSCloseCode.PROTOCOL_ERROR, violation))

        handler._payload_parser = FrameGuard(handler._payload_parser, fail)


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
