"""The plain-HTTP routes: server info, liveness, readiness, and JSON errors for everything else."""

from __future__ import annotations

import asyncio

from aiohttp import web
from aiohttp.typedefs import Handler

from yektaws import __version__
from yektaws.bus import BUS_KEY
from yektaws.forwarded import client_view
from yektaws.gateway import Gateway
from yektaws.handlers.system import SERVER_NAME
from yektaws.metrics import CONTENT_TYPE
from yektaws.sessions import StoreUnavailable

__all__ = ["GATEWAY_KEY", "add_routes", "json_errors"]

GATEWAY_KEY = web.AppKey("gateway", Gateway)

# What the usage examples show where a token goes: never a real one.
_TOKEN = "YOUR_TOKEN"


def server_info(gateway: Gateway, request: web.Request) -> dict[str, object]:
    """The server-info JSON (CONTRACT section 5), with URLs as the client reached us."""
    path = gateway.settings.websocket_path
    client = client_view(request, gateway.settings.trusted_proxies)
    http_origin = f"{client.scheme}://{client.host}"
    ws_origin = f"{client.ws_scheme}://{client.host}"
    return {
        "message": SERVER_NAME,
        "version": __version__,
        "status": "running",
        "protocols": {
            "socketio": {
                "path": "/socket.io/",
                "description": f"Socket.IO v4 (Engine.IO 4); also served at {path} "
                f"(path: '{path}') and on any namespace",
                "transports": ["websocket", "polling"],
            },
            "websocket": {
                "path": path,
                "description": "Native RFC 6455 WebSocket at any path, JSON frames "
                '{"event": "...", "data": {...}, "id"?: ...}',
                "authentication": "token query parameter, Authorization: Bearer header, or "
                "Sec-WebSocket-Protocol 'bearer.<token>' next to 'yektaws.v1'",
            },
        },
        "usage": {
            "socketio": f"io('{http_origin}', {{ path: '{path}', auth: {{ token: '{_TOKEN}' }} }})",
            "websocket": f"new WebSocket('{ws_origin}{path}?token={_TOKEN}')",
        },
    }


async def info(request: web.Request) -> web.Response:
    return web.json_response(server_info(request.app[GATEWAY_KEY], request))


async def health(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def ready(request: web.Request) -> web.Response:
    gateway = request.app[GATEWAY_KEY]
    checks: dict[str, str] = {"draining": "no" if not gateway.draining else "yes"}
    healthy = not gateway.draining
    try:
        async with asyncio.timeout(gateway.settings.session_store_timeout):
            await gateway.store.ping()
        checks["sessionStore"] = "ok"
    except (StoreUnavailable, TimeoutError) as exc:
        checks["sessionStore"] = f"unavailable: {type(exc).__name__}"
        healthy = False
    # Reported, never failing: without the broker this process still serves its own clients.
    checks["broker"] = request.app[BUS_KEY].state
    return web.json_response(
        {"status": "ready" if healthy else "not ready", "checks": checks},
        status=200 if healthy else 503,
    )


async def metrics(request: web.Request) -> web.Response:
    body = request.app[GATEWAY_KEY].metrics.render()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})


def add_routes(app: web.Application, websocket_path: str) -> None:
    app.router.add_get("/", info)
    if websocket_path != "/":
        app.router.add_get(websocket_path, info)
    app.router.add_get("/health", health)
    app.router.add_get("/ready", ready)
    app.router.add_get("/metrics", metrics)


@web.middleware
async def json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Unknown paths answer 404 with a JSON body (the old server answered 200 to everything)."""
    try:
        return await handler(request)
    except web.HTTPMethodNotAllowed as exc:
        return web.json_response(
            {"error": "Method not allowed", "allowed": sorted(exc.allowed_methods)},
            status=405,
            headers={"Allow": ",".join(sorted(exc.allowed_methods))},
        )
    except web.HTTPNotFound:
        return web.json_response({"error": "Not found", "path": request.path}, status=404)
