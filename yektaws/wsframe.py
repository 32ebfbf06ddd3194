"""Server-to-client WebSocket data frames (RFC 6455 section 5.2), built without aiohttp's writer.

The transports write replies straight to the TCP transport with these, for two reasons measured
under load: aiohttp's writer costs a few microseconds of Python per frame, and frames written in
the same event-loop turn can leave in one ``send()`` when joined first (a Socket.IO reply is two
packets: the event and its acknowledgement). Server frames are never masked; these are used only
when permessage-deflate is off for the connection (with it, aiohttp's writer compresses).
"""

from __future__ import annotations

import struct

__all__ = ["binary_frame", "text_frame"]

_FIN_TEXT = 0x81
_FIN_BINARY = 0x82
_SHORT = struct.Struct("!BBH")
_LONG = struct.Struct("!BBQ")


def _frame(first: int, payload: bytes) -> bytes:
    size = len(payload)
    if size < 126:
        return bytes((first, size)) + payload
    if size < 65536:
        return _SHORT.pack(first, 126, size) + payload
    return _LONG.pack(first, 127, size) + payload


def text_frame(payload: bytes) -> bytes:
    """One final text frame carrying ``payload`` (UTF-8)."""
    return _frame(_FIN_TEXT, payload)


def binary_frame(payload: bytes) -> bytes:
    """One final binary frame carrying ``payload``."""
    return _frame(_FIN_BINARY, payload)
