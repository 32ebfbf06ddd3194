"""Running the gateway as a process: listen, tell systemd, wait for a signal, drain, exit.

``yektaws serve`` ends here. The listener is created by hand rather than with aiohttp's
``TCPSite`` so that every connection passes the header deadline of :mod:`yektaws.guards`.

Exit codes: 0 after a drain, 1 when the port cannot be bound or the store is unusable,
:data:`EXIT_FORCED` when a second signal cut the drain short.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys

from aiohttp import web

from yektaws import __version__, systemd
from yektaws.app import GATEWAY_KEY, create_app
from yektaws.drain import drain
from yektaws.guards import header_deadline_factory
from yektaws.logging import get_logger
from yektaws.sessions import SessionStore, StoreUnavailable
from yektaws.settings import Settings

__all__ = ["EXIT_FORCED", "serve"]

log = get_logger("yektaws")

#: The exit code when a second SIGTERM/SIGINT ends the process during its drain.
EXIT_FORCED = 130

# How often a start-up that found the session store down asks it again.
_STORE_RETRY_INTERVAL = 1.0


async def serve(settings: Settings) -> int:
    """Serve until SIGTERM or SIGINT, then drain; return the process exit code."""
    app = create_app(settings)
    # access_log=None: aiohttp's access log would record `?token=`; connections are logged by
    # the gateway itself, with tokens masked.
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=5.0)
    try:
        await runner.setup()
    except StoreUnavailable as exc:
        print(f"yektaws: session store unusable: {exc}", file=sys.stderr)
        return 1
    loop = asyncio.get_running_loop()
    try:
        server = await loop.create_server(
            header_deadline_factory(runner.server, settings.handshake_timeout),
            settings.host,
            settings.port,
            backlog=1024,
            reuse_address=True,
        )
    except OSError as exc:
        await runner.cleanup()
        print(
            f"yektaws: cannot listen on {settings.host}:{settings.port}: {exc.strerror}",
            file=sys.stderr,
        )
        return 1
    gateway = app[GATEWAY_KEY]
    log.info(
        "listening",
        address=f"http://{settings.host}:{settings.port}",
        sessionStore=gateway.store.description,
        version=__version__,
    )

    stop = asyncio.Event()

    def on_signal(signum: int) -> None:
        if stop.is_set():
            log.warning("forced_exit", signal=signal.Signals(signum).name)
            os._exit(EXIT_FORCED)
        log.info("stopping", signal=signal.Signals(signum).name)
        stop.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)
    # After the signal handlers: a stop right after READY=1 drains instead of killing.
    background = [asyncio.create_task(_ready_when_store_answers(gateway.store))]
    interval = systemd.watchdog_interval()
    if interval:
        background.append(asyncio.create_task(systemd.run_watchdog(interval)))
    await stop.wait()

    systemd.stopping()
    await drain(gateway, timeout=settings.drain_timeout, spread=settings.drain_spread)
    server.close()
    try:
        with contextlib.suppress(asyncio.CancelledError):
            await runner.cleanup()
            await server.wait_closed()
    finally:
        # Stopped last: watchdog pings must not cease while systemd may still count them.
        for task in background:
            task.cancel()
    return 0


async def _ready_when_store_answers(store: SessionStore) -> None:
    """Tell systemd READY=1 once the session store answers (the listener is already bound).

    A database that is down at start does not stop the gateway (it answers 503 meanwhile), but
    the service is not ready until the store answers.
    """
    while True:
        try:
            await store.ping()
        except StoreUnavailable as exc:
            log.warning("waiting_for_session_store", error=str(exc))
            await asyncio.sleep(_STORE_RETRY_INTERVAL)
        else:
            systemd.ready()
            return
