"""The upgrade middleware: every request is classified once and sent to the one place for it.

In this order (CONTRACT section 1):

1. **Socket.IO**: the path is under ``/socket.io/``, or the query string has an ``EIO`` parameter
   (the YektaYar apps connect with ``path: '/ws'``), for both Engine.IO transports;
2. **native WebSocket**: any other request with ``Upgrade: websocket``, at any path;
3. **plain HTTP**: everything else goes on to the router (info, health, ready, metrics, 404).
"""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable

from aiohttp import web
from aiohttp.typedefs import Handler

__all__ = ["RequestKind", "classify", "route_socketio_paths", "upgrade_middleware"]

SOCKETIO_PREFIX = "/socket.io/"


class RequestKind(enum.Enum):
    SOCKETIO = "socket.io"
    NATIVE = "native-websocket"
    HTTP = "http"


def classify(request: web.BaseRequest) -> RequestKind:
    """Which of the three kinds ``request`` is."""
    if request.path.startswith(SOCKETIO_PREFIX) or request.path == SOCKETIO_PREFIX[:-1]:
        return RequestKind.SOCKETIO
    if "EIO" in request.query:
        return RequestKind.SOCKETIO
    if request.headers.get("Upgrade", "").strip().lower() == "websocket":
        return RequestKind.NATIVE
    return RequestKind.HTTP


Endpoint = Callable[[web.Request], Awaitable[web.StreamResponse]]


def upgrade_middleware(
    socketio: Endpoint, native: Endpoint
) -> Callable[..., Awaitable[web.StreamResponse]]:
    """A middleware sending Socket.IO and native WebSocket requests past the router."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        kind = classify(request)
        if kind is RequestKind.SOCKETIO:
            return await socketio(request)
        if kind is RequestKind.NATIVE:
            return await native(request)
        return await handler(request)

    return middleware


def route_socketio_paths(router: web.UrlDispatcher, socketio: Endpoint) -> None:
    """Give the paths :func:`classify` reads as Socket.IO a route of their own.

    aiohttp resolves the route before any middleware runs, and a path without one costs an
    ``HTTPNotFound`` built per request (its text body and headers included): measured, that was
    the dearest single step of a Socket.IO handshake's routing. The middleware answers these
    requests before the route's handler is reached; the handler is the Socket.IO endpoint all
    the same, so that the router's table says where they go.
    """
    for path in (SOCKETIO_PREFIX[:-1], SOCKETIO_PREFIX + "{tail:.*}"):
        router.add_route("*", path, socketio)
