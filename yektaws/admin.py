"""The server API for other services: push to users, end sessions, ask who is connected.

A second, small aiohttp application on its own listener (``ADMIN_HOST:ADMIN_PORT``), started only
when ``ADMIN_API_KEY`` is set; every request must carry ``Authorization: Bearer <ADMIN_API_KEY>``
(compared in constant time) or gets 401. Everything goes through the bus
(:mod:`yektaws.bus`), so it reaches every gateway process, whichever one answers.

Routes (JSON in and out; a bad body gets 400 naming the field):

- ``POST /emit`` ``{"to": "user:42" | "<socketId>" | "<room>", "event": "...", "data": ...}``
- ``POST /disconnect`` ``{"user": "42"} | {"socketId": "..."} | {"token": "..."}``, optional
  ``"reason"``: native clients are closed with 4001 and the reason, Socket.IO clients get
  ``session:expired`` ``{"reason"}`` and are disconnected. A token also leaves the session cache.
- ``GET /users/<id>/connections``: the user's connections on every node.

The operator console (:mod:`yektaws.console`) is a sub-application on the same listener; its
routes are guarded by its own cookie check, so the bearer key is asked here only for this
application's own routes.
"""

from __future__ import annotations

import hmac
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler

from yektaws.bus import BUS_KEY, Bus, Delivery, Target, TargetKind
from yektaws.logging import get_logger

__all__ = [
    "MAX_BODY",
    "MAX_REASON_BYTES",
    "BadRequest",
    "bearer_key_valid",
    "create_admin_app",
    "json_object",
    "optional_reason",
]

log = get_logger(__name__)

#: Largest request body: an emit's data is meant for a client's screen, not a file transfer.
MAX_BODY = 1024 * 1024
#: A WebSocket close frame's reason holds at most 123 bytes of UTF-8 (RFC 6455 section 5.5).
MAX_REASON_BYTES = 123
#: Longest event name accepted.
MAX_EVENT_NAME = 200

_API_KEY = web.AppKey("api_key", str)


class BadRequest(Exception):
    """The body is not what the route expects; the message names the field."""


def create_admin_app(bus: Bus, api_key: str) -> web.Application:
    """The server API over ``bus``, guarded by ``api_key`` (which must not be empty)."""
    if not api_key:
        raise ValueError("the server API needs a non-empty ADMIN_API_KEY")
    app = web.Application(middlewares=[_errors, _authenticate], client_max_size=MAX_BODY)
    app[BUS_KEY] = bus
    app[_API_KEY] = api_key
    app.router.add_post("/emit", emit)
    app.router.add_post("/disconnect", disconnect)
    app.router.add_get("/users/{user_id}/connections", connections)
    return app


# -- middlewares ----------------------------------------------------------------------------------


def _error(status: int, message: str, **headers: str) -> web.Response:
    return web.json_response({"error": message}, status=status, headers=headers or None)


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except BadRequest as exc:
        return _error(400, str(exc))
    except web.HTTPException as exc:
        # Routing and body-size errors (404, 405, 413) in the same JSON shape as ours.
        if exc.status < 400:
            raise
        return _error(
            exc.status, exc.reason, **{k: v for k, v in exc.headers.items() if k == "Allow"}
        )


def bearer_key_valid(request: web.Request, api_key: str) -> bool:
    """Whether ``request`` carries ``Authorization: Bearer <api_key>`` (constant-time compare)."""
    scheme, _, presented = request.headers.get("Authorization", "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(
        presented.strip().encode(), api_key.encode()
    )


@web.middleware
async def _authenticate(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.match_info.apps[-1] is not request.app:
        return await handler(request)  # a sub-application's route: it checks its own way
    if not bearer_key_valid(request, request.app[_API_KEY]):
        log.warning("admin_unauthorized", path=request.path, peer=request.remote)
        return _error(401, "A valid API key is required", **{"WWW-Authenticate": "Bearer"})
    return await handler(request)


# -- routes ---------------------------------------------------------------------------------------


async def emit(request: web.Request) -> web.Response:
    body = await json_object(request)
    room = _string(body, "to")
    event = _string(body, "event")
    if len(event) > MAX_EVENT_NAME:
        raise BadRequest(f"'event' must be at most {MAX_EVENT_NAME} characters")
    delivery = await request.app[BUS_KEY].emit(room, event, body.get("data"))
    log.info("admin_emit", to=room, name=event, local=delivery.local, broker=delivery.broker)
    return web.json_response({"to": room, "event": event, **_delivered(delivery)})


async def disconnect(request: web.Request) -> web.Response:
    body = await json_object(request)
    named = [kind for kind in TargetKind if kind.value in body]
    if len(named) != 1:
        fields = ", ".join(f"'{kind.value}'" for kind in TargetKind)
        raise BadRequest(f"exactly one of {fields} is required")
    (kind,) = named
    value = body[kind.value]
    if kind is TargetKind.USER and isinstance(value, int) and not isinstance(value, bool):
        value = str(value)  # {"user": 42} means what {"user": "42"} means
    value = _string(body | {kind.value: value}, kind.value)
    reason = optional_reason(body)
    target = Target.of_token(value) if kind is TargetKind.TOKEN else Target(kind, value)
    delivery = await request.app[BUS_KEY].disconnect(target, reason)
    # A token is never logged, not even masked: the caller knows which one it sent.
    shown = "(token)" if kind is TargetKind.TOKEN else value
    log.info("admin_disconnect", by=kind.value, target=shown, local=delivery.local)
    return web.json_response({kind.value: shown, **_delivered(delivery)})


async def connections(request: web.Request) -> web.Response:
    user_id = request.match_info["user_id"]
    presence = await request.app[BUS_KEY].presence(user_id)
    return web.json_response(
        {
            "userId": user_id,
            "connections": sorted(presence.connections, key=lambda c: c["connectedAt"]),
            "nodes": presence.nodes,
            "complete": presence.complete,
        }
    )


# -- helpers --------------------------------------------------------------------------------------


async def json_object(request: web.Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except ValueError:
        raise BadRequest("the body must be JSON") from None
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object")
    return body


def optional_reason(body: dict[str, Any]) -> str | None:
    """The body's ``reason`` for a disconnect (None when absent or empty), or BadRequest."""
    reason = body.get("reason")
    if reason is not None and (
        not isinstance(reason, str) or len(reason.encode()) > MAX_REASON_BYTES
    ):
        raise BadRequest(f"'reason' must be a string of at most {MAX_REASON_BYTES} UTF-8 bytes")
    return reason or None


def _string(body: dict[str, Any], name: str) -> str:
    value = body.get(name)
    if not isinstance(value, str) or not value:
        raise BadRequest(f"'{name}' must be a non-empty string")
    return value


def _delivered(delivery: Delivery) -> dict[str, Any]:
    """The response fields every push shares: what happened here and across the broker."""
    return {
        "localConnections": delivery.local,
        "broker": delivery.broker,
        "receivingNodes": delivery.receivers,
    }
