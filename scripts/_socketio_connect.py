"""Connect and disconnect a python-socketio ``AsyncClient`` without waiting out a long-poll.

Shared by ``scripts/status`` and ``scripts/sio-client`` (both put this directory on ``sys.path``
by being run from it). The module name keeps its leading underscore: it is no command of its own.

Over long-polling, python-socketio's client ends a session only once its pending GET returns,
and a python-engineio server holds that GET after the client's CLOSE until the ping cycle ends
(about 30 s by default). Both helpers here cut that wait short once the outcome is known.

``AsyncClient.connect()`` reports a refused CONNECT only as "One or more namespaces failed to
connect", and over long-polling it returns only once the refused session's pending GET ends,
which a python-engineio server holds for ``pingInterval + pingTimeout`` (45 s by default). The
server's reason, however, arrives at once in the ``connect_error`` event:
:func:`connect_socketio` waits for whichever comes first and aborts the rest.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import socketio

__all__ = ["Refused", "connect_socketio", "disconnect_socketio"]

#: Seconds a clean disconnect may take before the session is dropped instead. The CLOSE packet
#: is sent at once; only the wait for the transport to wind down is cut.
DISCONNECT_GRACE = 1.0


class Refused(Exception):
    """The server refused the connection; ``data`` is its CONNECT_ERROR payload."""

    def __init__(self, data: dict[str, Any]) -> None:
        self.data = data
        super().__init__(str(data.get("message", data)))


async def connect_socketio(
    client: socketio.AsyncClient, url: str, *, namespace: str = "/", **kwargs: Any
) -> None:
    """``client.connect(url, namespaces=[namespace], **kwargs)``, raising :class:`Refused` early.

    Other failures (nothing listening, a transport error, ``wait_timeout``) raise
    ``socketio.exceptions.ConnectionError`` as ``connect()`` does.
    """
    refusal: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()

    async def refused(data: Any = None) -> None:
        # A server's refusal is an object ({"message": ...}); python-socketio reports a failure
        # to reach the server through this event too, as a bare string, and raises for it.
        if isinstance(data, dict) and not refusal.done():
            refusal.set_result(data)

    client.on("connect_error", refused, namespace=namespace)
    connecting = asyncio.ensure_future(client.connect(url, namespaces=[namespace], **kwargs))
    try:
        await asyncio.wait({connecting, refusal}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        if not connecting.done():
            # Refused, or our caller gave up. Closing the client's HTTP session ends a pending
            # long-poll, and with it connect(); cancelling alone does not.
            connecting.cancel()
            await client.eio.disconnect(abort=True)
        with contextlib.suppress(socketio.exceptions.ConnectionError, asyncio.CancelledError):
            await connecting
        if not connecting.cancelled() and connecting.exception() is not None:
            await client.eio.disconnect(abort=True)  # the HTTP session a failed connect() leaves
    if refusal.done():
        raise Refused(refusal.result())
    refusal.cancel()
    await connecting  # re-raises a failure other than a refusal


async def disconnect_socketio(client: socketio.AsyncClient) -> None:
    """``client.disconnect()``, dropping the session if it takes over :data:`DISCONNECT_GRACE`."""
    disconnecting = asyncio.ensure_future(client.disconnect())
    await asyncio.wait({disconnecting}, timeout=DISCONNECT_GRACE)
    if not disconnecting.done():
        # Cancelling would not end the long-poll it waits for; closing the HTTP session does.
        await client.eio.disconnect(abort=True)
    await disconnecting
