"""Where python-engineio answers against the Engine.IO v4 specification, the answer it should give.

Every Socket.IO request passes :meth:`EngineIOGuards.screen` before python-engineio sees it, and
the guards correct the handshake python-engineio writes into each session. The reference is the
specification's own test suite (socketio/engine.io-protocol, ``test-suite``) and the Node server
it is written against; ``tests/test_engineio_spec.py`` checks each point on the wire:

- **a request method other than GET, POST (and OPTIONS, CORS preflight)** gets 400, as the suite
  expects ("fails with an invalid request method"); python-engineio answers 405;
- **an oversize long-polling body** gets 413; python-engineio would read nothing and answer
  nothing; an accepted one is acknowledged with ``ok``, as the suite expects (python-engineio:
  ``OK``);
- **a polling request for a session that is upgrading** waits for the upgrade to settle, up to
  :data:`UPGRADE_SETTLE_TIMEOUT`: once the websocket has taken over, polling is over for the
  session and the request gets 400 ("ignores HTTP requests with same sid after upgrade").
  python-engineio answers a NOOP (200) to any poll while the upgrade packet is in flight, so a
  client whose ``5`` left before its GET was still served over polling. A poll while the upgrade
  is genuinely pending (the client waits for it before sending ``5``) still gets its NOOP, now
  after at most that wait, as Node's server answers it from its 100 ms upgrade check;
- **a polling request after the session's ping deadline** gets 400 and the session ends then,
  not at the next sweep of python-engineio's service task, which visits each session once per
  ``pingTimeout`` (a client polling just after the deadline was still handed the late ping);
- **a second WebSocket for a session that is upgrading or upgraded** completes its handshake and
  is closed at once (1008, with the reason), as Node's server closes it, and the session goes on
  over the first one; python-engineio answers a bare 400 after the upgrade and, during it,
  accepted the second socket as a rival upgrade that waited for a probe of its own. The driver
  (:mod:`yektaws.transports.engineio_ws`) claims an upgrade before its first ``await``, so two
  upgrades racing past this check still end with one winner;
- **the handshake's ``pingInterval``** is the setting in milliseconds: python-engineio computes
  ``int(seconds) * 1000``, so 0.3 s went out as 0 and 1.5 s as 1000 (``pingTimeout`` it gets right).
  With that fixed, sub-second ``SOCKETIO_PING_INTERVAL`` and ``SOCKETIO_PING_TIMEOUT`` work: the
  pings themselves are timers of the exact interval, and the service task's sweep divides
  ``pingTimeout`` by the number of sessions (no whole-second step anywhere).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import engineio
import orjson
from aiohttp import web
from engineio import packet as eio_packet

from yektaws.transports.engineio_ws import close_duplicate_websocket, upgrade_settled

__all__ = ["ALLOWED_METHODS", "UPGRADE_SETTLE_TIMEOUT", "EngineIOGuards"]

#: The methods Engine.IO uses: GET (handshake, poll, upgrade), POST (data), OPTIONS (CORS
#: preflight, answered by python-engineio with the CORS headers).
ALLOWED_METHODS = frozenset({"GET", "POST", "OPTIONS"})

#: Longest a polling request waits for an upgrade in progress to finish or fail (Node's server
#: answers such a poll from an upgrade check that runs every 100 ms).
UPGRADE_SETTLE_TIMEOUT = 0.1

# python-engineio acknowledges a POST with "OK"; the spec suite (and Node's server) with "ok".
_PYTHON_ENGINEIO_POST_OK = b"OK"
_POST_OK = b"ok"

# Engine.IO error codes, as Node's server writes them in its JSON error body.
_BAD_HANDSHAKE_METHOD = (2, "Bad handshake method")
_BAD_REQUEST = (3, "Bad request")
_UNKNOWN_SID = (1, "Session ID unknown")


class EngineIOGuards:
    """Screens the requests of one python-engineio server (see the module docstring)."""

    def __init__(self, eio: engineio.AsyncServer, *, max_body: int) -> None:
        self._eio = eio
        self._max_body = max_body
        _fix_handshake(eio)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """Answer ``request``: the spec's answer where python-engineio's differs, else its own."""
        refusal = await self.screen(request)
        if refusal is not None:
            return refusal
        response: web.StreamResponse = await self._eio.handle_request(request)
        if (
            request.method == "POST"
            and isinstance(response, web.Response)
            and response.body == _PYTHON_ENGINEIO_POST_OK
        ):
            response.body = _POST_OK
        return response

    async def screen(self, request: web.Request) -> web.StreamResponse | None:
        """The spec's answer to ``request`` where python-engineio's differs, else None."""
        sid = request.query.get("sid")
        if request.method not in ALLOWED_METHODS:
            return _error(_BAD_REQUEST if sid else _BAD_HANDSHAKE_METHOD)
        if request.method == "POST" and (request.content_length or 0) > self._max_body:
            return web.Response(status=413, text="Payload too large")
        if sid is None:
            return None
        socket = self._eio.sockets.get(sid)
        if socket is None or request.method == "OPTIONS":
            return None  # an unknown sid: python-engineio's 400 is the spec's
        if _is_websocket_upgrade(request):
            if socket.upgrading or socket.upgraded:
                return await close_duplicate_websocket(request, upgraded=socket.upgraded)
            return None
        if socket.upgrading and not socket.upgraded:
            await upgrade_settled(socket, UPGRADE_SETTLE_TIMEOUT)
        if socket.upgraded:
            return _error(_BAD_REQUEST)
        if socket.closed:
            return _error(_UNKNOWN_SID)
        if _ping_overdue(socket, self._eio.ping_timeout):
            await socket.close(wait=False, abort=True, reason=self._eio.reason.PING_TIMEOUT)
            return _error(_UNKNOWN_SID)
        return None


def _fix_handshake(eio: engineio.AsyncServer) -> None:
    """Make every session's OPEN packet carry ``pingInterval`` in exact milliseconds.

    python-engineio builds the OPEN packet and puts it in the session's queue first thing; the
    queue is the one point where it can be corrected before it is encoded, whichever transport
    carries it. Only polling sessions keep this queue (an upgraded one is replaced by the
    websocket driver's), so later packets cost one comparison each.
    """
    interval_ms = round((eio.ping_interval + eio.ping_interval_grace_period) * 1000)

    class HandshakeQueue(asyncio.Queue[Any]):
        def put_nowait(self, item: Any) -> None:
            if (
                item is not None
                and item.packet_type == eio_packet.OPEN
                and isinstance(item.data, dict)
            ):
                item.data["pingInterval"] = interval_ms
            super().put_nowait(item)

    eio.create_queue = lambda *args, **kwargs: HandshakeQueue(*args, **kwargs)


def _is_websocket_upgrade(request: web.Request) -> bool:
    # The test python-engineio applies to send a request to its websocket transport.
    tokens = request.headers.get("Connection", "").lower().split(",")
    connection = {token.strip() for token in tokens}
    return "upgrade" in connection and request.headers.get("Upgrade", "").lower() == "websocket"


def _ping_overdue(socket: Any, ping_timeout: float) -> bool:
    # python-engineio's own test (AsyncSocket.check_ping_timeout): a ping is out (last_ping is
    # its time; a pong clears it) and pingTimeout has passed since.
    last_ping = socket.last_ping
    return bool(last_ping) and time.time() - last_ping > ping_timeout


def _error(error: tuple[int, str]) -> web.Response:
    code, message = error
    return web.Response(
        status=400,
        body=orjson.dumps({"code": code, "message": message}),
        content_type="application/json",
    )
