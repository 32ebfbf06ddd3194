"""Protocol rules aiohttp does not enforce, enforced in front of it.

- :class:`FrameGuard`: RFC 6455 section 5.1 says a server MUST close the connection when a client
  frame is not masked, and section 7.4.1 forbids the status codes 1005, 1006 and 1015 in a close
  frame; aiohttp's reader accepts unmasked frames and close code 1006. The guard reads the frame
  headers of the incoming byte stream (and the two status bytes of a close frame, never other
  payloads) and fails the connection with 1002 at the first violation, before the reader sees it.
- :func:`header_deadline_factory`: aiohttp has no timeout for receiving a request's headers, so a
  client sending them a byte at a time (slowloris) holds a connection forever. Each new connection
  gets ``HANDSHAKE_TIMEOUT`` seconds to complete its first request's headers.

Both reach into aiohttp internals (``RequestHandler._payload_parser``, ``_request_count``); the
tests in ``tests/test_attacks.py`` and ``tests/test_conformance.py`` fail loudly if an aiohttp
upgrade moves them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from aiohttp import WSCloseCode, web
from aiohttp.http_websocket import WebSocketError

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

    __slots__ = ("_code", "_header", "_key", "_on_violation", "_parser", "_skip", "violated")

    def __init__(self, parser: Any, on_violation: Callable[[str], None]) -> None:
        self._parser = parser
        self._on_violation = on_violation
        self._header = bytearray()  # bytes of a frame header not yet complete
        self._skip = 0  # payload bytes of the current frame still to pass by
        self._key = b""  # masking key of the current frame
        self._code: bytearray | None = None  # status bytes of the current close frame, so far
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
        """Advance through ``data``'s frames; what is wrong with the first bad one, if any."""
        position, size = 0, len(data)
        while position < size:
            if self._skip:
                step = min(self._skip, size - position)
                if self._code is not None:
                    violation = self._read_close_code(data[position : position + min(step, 2)])
                    if violation is not None:
                        return violation
                self._skip -= step
                position += step
                continue
            self._header.append(data[position])
            position += 1
            header = self._header
            if len(header) < 2:
                continue
            if not header[1] & _MASK_BIT:
                return "Received an unmasked frame"
            length_code = header[1] & _LENGTH_MASK
            extra = 2 if length_code == 126 else 8 if length_code == 127 else 0
            if len(header) < 2 + extra + 4:  # extended length, then the 4-byte masking key
                continue
            self._skip = int.from_bytes(header[2 : 2 + extra], "big") if extra else length_code
            if header[0] & _OPCODE_MASK == _OPCODE_CLOSE and self._skip >= 2:
                self._key = bytes(header[-4:])
                self._code = bytearray()
            header.clear()
        return None

    def _read_close_code(self, payload: bytes) -> str | None:
        """Unmask the next bytes of a close frame's status code; check it once it is complete."""
        code = self._code
        assert code is not None
        for byte in payload[: 2 - len(code)]:
            code.append(byte ^ self._key[len(code)])
        if len(code) < 2:
            return None
        self._code = None
        status = int.from_bytes(code, "big")
        return f"Invalid close code: {status}" if status in _RESERVED_CLOSE_CODES else None


class GuardedWebSocketResponse(web.WebSocketResponse):
    """A ``WebSocketResponse`` whose incoming frames pass a :class:`FrameGuard` first."""

    def _post_start(self, request: web.BaseRequest, protocol: str | None, writer: Any) -> None:
        super()._post_start(request, protocol, writer)
        handler = request.protocol
        reader = self._reader

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
