"""Building the aiohttp application: wiring, startup and shutdown. No event knowledge here.

The request path, top to bottom::

    aiohttp ─> upgrade_middleware ─┬─ Socket.IO ─> SocketIOTransport.handle
                                   ├─ native ───> NativeTransport.handle
                                   └─ HTTP ─────> json_errors ─> router (info, health, ready,
                                                                 metrics) or JSON 404

The bus (:mod:`yektaws.bus`) is started after the gateway and stopped before it; the server API
(:mod:`yektaws.admin`), with the operator console mounted on it, is a separate application on its
own listener, built by the server. The console's sampler (:mod:`yektaws.console.samples`) runs in
every process, so that every node can answer the console's questions.
"""

from __future__ import annotations

from aiohttp import web

from yektaws.bus import BUS_KEY, Bus, RedisBus, open_bus
from yektaws.connection import CloseReason
from yektaws.console.samples import Sampler
from yektaws.console.views import register as register_console_questions
from yektaws.gateway import Gateway
from yektaws.handlers import AIChat, build_dispatcher
from yektaws.handlers.ai import CANCEL_SIGNAL
from yektaws.http import GATEWAY_KEY, add_routes, json_errors
from yektaws.metrics import Metrics
from yektaws.middleware import route_socketio_paths, upgrade_middleware
from yektaws.recheck import SessionRechecker
from yektaws.recovery import (
    MemoryStates,
    MemoryStreams,
    Recovery,
    RedisStates,
    RedisStreams,
    StateStore,
    StreamRegistry,
)
from yektaws.sessions import SessionStore, open_store
from yektaws.settings import Settings
from yektaws.transports.native import NativeTransport
from yektaws.transports.socketio import SocketIOTransport

__all__ = ["BUS_KEY", "GATEWAY_KEY", "create_app"]

SOCKETIO_KEY = web.AppKey("socketio", SocketIOTransport)
NATIVE_KEY = web.AppKey("native", NativeTransport)
AI_CHAT_KEY = web.AppKey("ai_chat", AIChat)
RECHECK_KEY = web.AppKey("recheck", SessionRechecker)
RECOVERY_KEY = web.AppKey("recovery", Recovery)
SAMPLER_KEY = web.AppKey("sampler", Sampler)
# At shutdown, how long the closing handshakes of the last connections are waited for (aiohttp's
# own shutdown_timeout in yektaws.server is the same).
_SHUTDOWN_SETTLE = 5.0


def create_app(
    settings: Settings, store: SessionStore | None = None, *, worker: int | None = None
) -> web.Application:
    """The whole gateway as one aiohttp application (the store is opened at startup).

    ``worker`` is this process's index under ``yektaws serve --workers N``: its Engine.IO
    session ids then start with ``w<index>.`` so that the reverse proxy can route a polling
    client's requests back to it.
    """
    metrics = Metrics()
    ai_chat = AIChat(settings, metrics)
    dispatcher = build_dispatcher(settings, ai_chat, metrics)
    gateway = Gateway(settings, store or open_store(settings), dispatcher, metrics)
    native = NativeTransport(gateway)
    socketio = SocketIOTransport(gateway, sid_prefix=f"w{worker}." if worker is not None else "")
    app = web.Application(
        # The upgrade middleware first: long-lived connections then carry one frame less each.
        middlewares=[upgrade_middleware(socketio.handle, native.handle), json_errors],
        client_max_size=settings.max_message_size,
    )
    bus = open_bus(gateway, settings)
    recovery = open_recovery(settings, gateway, bus)
    if recovery is not None:
        gateway.recovery = bus.recovery = recovery
        ai_chat.bus, ai_chat.streams = bus, recovery.streams
        recovery.on_resumed(ai_chat.resumed)
        bus.on_signal(CANCEL_SIGNAL, ai_chat.cancelled_elsewhere)
        app[RECOVERY_KEY] = recovery
    app[GATEWAY_KEY] = gateway
    app[BUS_KEY] = bus
    metrics.report_broker(lambda: bus.state)
    # Every process samples and answers the console's questions, whichever one serves the page.
    app[SAMPLER_KEY] = Sampler(gateway, lambda: bus.state)
    register_console_questions(bus.local, app[SAMPLER_KEY])
    app[SOCKETIO_KEY] = socketio
    app[NATIVE_KEY] = native
    app[AI_CHAT_KEY] = ai_chat
    app[RECHECK_KEY] = SessionRechecker(
        gateway,
        interval=settings.session_recheck_interval,
        batch=settings.session_recheck_batch,
    )
    add_routes(app, settings.websocket_path)
    route_socketio_paths(app.router, socketio.handle)
    app.on_startup.append(_start)
    app.on_shutdown.append(_close_connections)
    app.on_cleanup.append(_stop)
    return app


def open_recovery(settings: Settings, gateway: Gateway, bus: Bus) -> Recovery | None:
    """Connection-state recovery over the bus's log: states in Redis beside a Redis bus, in
    memory beside a local one; ``None`` with ``RECOVERY_WINDOW=0``."""
    if settings.recovery_window <= 0 or bus.log is None:
        return None
    window = settings.recovery_window
    states: StateStore
    streams: StreamRegistry
    if isinstance(bus, RedisBus):
        states = RedisStates(bus.redis, settings.redis_prefix, window)
        streams = RedisStreams(bus.redis, settings.redis_prefix, bus.node_id, bus.nodes_alive)
    else:
        states, streams = MemoryStates(window), MemoryStreams()
    recovery = Recovery(
        log=bus.log,
        states=states,
        streams=streams,
        hub=gateway.hub,
        metrics=gateway.metrics,
        node=bus.node_id,
        position=lambda: bus.position,
        window=window,
    )
    if isinstance(bus, RedisBus):
        recovery.announce = bus.announce_resumed
    return recovery


async def _start(app: web.Application) -> None:
    await app[GATEWAY_KEY].start()
    await app[BUS_KEY].start()
    if RECOVERY_KEY in app:
        app[RECOVERY_KEY].start()
    await app[AI_CHAT_KEY].start()  # the upstream HTTP session, one for the process
    app[RECHECK_KEY].start()
    app[SAMPLER_KEY].start()


async def _close_connections(app: web.Application) -> None:
    # Normally the drain (yektaws.drain) has closed everything already; this is the backstop
    # for an application stopped without one (tests, embedding).
    gateway = app[GATEWAY_KEY]
    gateway.draining = True
    await gateway.close_all(CloseReason.GOING_AWAY)
    # Native sockets are detached from aiohttp (yektaws.wsdetach): its shutdown does not wait
    # for their closing handshakes, so this does.
    await gateway.wait_released(_SHUTDOWN_SETTLE)


async def _stop(app: web.Application) -> None:
    await app[SAMPLER_KEY].stop()
    await app[RECHECK_KEY].stop()
    await app[SOCKETIO_KEY].shutdown()
    await app[NATIVE_KEY].heartbeat.stop()
    await app[AI_CHAT_KEY].stop()
    if RECOVERY_KEY in app:
        await app[RECOVERY_KEY].stop()  # the last saved states are written before the bus goes
    await app[BUS_KEY].stop()
    await app[GATEWAY_KEY].stop()
