"""Running the gateway as a process: listen, tell systemd, wait for a signal, drain, exit.

``yektaws serve`` ends here. The listeners are created by hand rather than with aiohttp's
``TCPSite`` so that every connection passes the header deadline of :mod:`yektaws.guards`: the
gateway's, and the server API's (:mod:`yektaws.admin`) when ``ADMIN_API_KEY`` is set.

Exit codes: 0 after a drain, 1 when the port cannot be bound or the store is unusable,
:data:`EXIT_FORCED` when a second signal cut the drain short, or when a worker whose supervisor is
gone had not finished within ``DRAIN_TIMEOUT`` plus :data:`~yektaws.workers.STOP_MARGIN`.

A worker watches its supervisor from a thread of its own, not from the event loop: a loop that is
stuck (a log write blocked on a pipe nobody reads blocks the whole loop, and with the supervisor
dead nobody would ever kill the worker) must not stop the worker from noticing, nor from exiting.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import select
import signal
import socket
import sys
import threading
import time
from datetime import UTC, datetime

import orjson
from aiohttp import web

from yektaws import __version__, systemd
from yektaws.admin import create_admin_app
from yektaws.app import BUS_KEY, GATEWAY_KEY, create_app
from yektaws.console.routes import CONSOLE_PATH, create_console_app
from yektaws.drain import drain
from yektaws.guards import header_deadline_factory
from yektaws.logging import flush_logs, get_logger
from yektaws.sessions import SessionStore, StoreUnavailable
from yektaws.settings import Settings
from yektaws.workers import BACKLOG, STOP_MARGIN, WorkerSockets

__all__ = ["EXIT_FORCED", "serve"]

log = get_logger("yektaws")

#: The exit code when a second SIGTERM/SIGINT ends the process during its drain.
EXIT_FORCED = 130
#: Seconds between two looks, in a worker, at whether its supervisor is still there.
_ORPHAN_CHECK = 1.0
# How often a start-up that found the session store down asks it again.
_STORE_RETRY_INTERVAL = 1.0
# What aiohttp allows the requests still running when the listeners close (after the drain):
# to end, then again to end once cancelled.
_SHUTDOWN_TIMEOUT = 5.0


async def serve(settings: Settings, worker: WorkerSockets | None = None) -> int:
    """Serve until SIGTERM or SIGINT, then drain; return the process exit code.

    ``worker`` (under ``yektaws serve --workers N``) brings the listening sockets bound by the
    parent (:mod:`yektaws.workers`); otherwise this process binds its own.
    """
    app = create_app(settings, worker=worker.index if worker is not None else None)
    # access_log=None: aiohttp's access log would record `?token=`; connections are logged by
    # the gateway itself, with tokens masked.
    runner = web.AppRunner(
        app, access_log=None, handle_signals=False, shutdown_timeout=_SHUTDOWN_TIMEOUT
    )
    try:
        await runner.setup()
    except StoreUnavailable as exc:
        print(f"yektaws: session store unusable: {exc}", file=sys.stderr)
        return 1
    admin = None
    if settings.admin_api_key:
        admin_app = create_admin_app(app[BUS_KEY], settings.admin_api_key)
        admin_app.add_subapp(CONSOLE_PATH, create_console_app(app[BUS_KEY], settings.admin_api_key))
        # The same shutdown timeout as the gateway's (aiohttp's default is 60 s, twice over: a
        # server API request still running would hold the exit for two minutes).
        admin = web.AppRunner(
            admin_app, access_log=None, handle_signals=False, shutdown_timeout=_SHUTDOWN_TIMEOUT
        )
        await admin.setup()
    listeners: list[asyncio.AbstractServer] = []
    try:
        if worker is None:
            listeners.append(await _listen(runner, settings, (settings.host, settings.port)))
        else:
            listeners.append(await _listen(runner, settings, worker.public))
            listeners.append(await _listen(runner, settings, worker.private))
        if admin is not None:
            address = worker.admin if worker is not None else None
            listeners.append(
                await _listen(
                    admin, settings, address or (settings.admin_host, settings.admin_port)
                )
            )
    except OSError as exc:
        await _close(listeners, admin, runner)
        print(f"yektaws: {exc}", file=sys.stderr)
        return 1
    gateway = app[GATEWAY_KEY]
    # What start-up made (modules, settings, the application) lives as long as the process: out
    # of the collector's sight, a full collection walks only what connections made, instead of
    # pausing the loop for every object ever imported (a pause that grew with uptime).
    gc.freeze()
    log.info(
        "listening",
        address=f"http://{settings.host}:{settings.port}",
        worker=worker.index if worker is not None else None,
        serverApi=f"http://{settings.admin_host}:{settings.admin_port}" if admin else None,
        broker=app[BUS_KEY].state,
        node=app[BUS_KEY].node_id,
        sessionStore=gateway.store.description,
        version=__version__,
    )

    stop = asyncio.Event()

    def on_signal(signum: int) -> None:
        if stop.is_set():
            if worker is not None:
                # The same signal may come twice, from the supervisor and from a terminal's or
                # systemd's process group: cutting a drain short is the supervisor's decision.
                return
            log.warning("forced_exit", signal=signal.Signals(signum).name)
            flush_logs()
            os._exit(EXIT_FORCED)
        log.info("stopping", signal=signal.Signals(signum).name)
        stop.set()

    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)
    background: list[asyncio.Task[None]] = []
    if worker is None:
        # systemd's main process is this one. After the signal handlers: a stop right after
        # READY=1 drains instead of killing. (Under --workers, systemd hears from nobody: see
        # docs/deploy.md.)
        background.append(loop.create_task(_ready_when_store_answers(gateway.store)))
        interval = systemd.watchdog_interval()
        if interval:
            background.append(loop.create_task(systemd.run_watchdog(interval)))
    else:
        _watch_supervisor(loop, stop, settings.drain_timeout + STOP_MARGIN, settings.log_format)
    await stop.wait()

    try:
        if worker is None:
            systemd.stopping()
        await drain(gateway, timeout=settings.drain_timeout, spread=settings.drain_spread)
    finally:
        # Whatever the drain met, the store and listeners are closed: a store left open keeps
        # its thread (aiosqlite) and the process would never exit.
        try:
            await _close(listeners, admin, runner)
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


async def _listen(
    runner: web.AppRunner, settings: Settings, address: tuple[str, int] | socket.socket
) -> asyncio.AbstractServer:
    """Serve ``runner`` on ``address`` (bound here) or on an inherited listening socket."""
    loop = asyncio.get_running_loop()
    assert runner.server is not None  # made by runner.setup(), which comes first
    factory = header_deadline_factory(runner.server, settings.handshake_timeout)
    if isinstance(address, socket.socket):
        return await loop.create_server(factory, sock=address, backlog=BACKLOG)
    host, port = address
    try:
        return await loop.create_server(factory, host, port, backlog=BACKLOG, reuse_address=True)
    except OSError as exc:
        # One line for the operator; uvloop's own text repeats the address in Python syntax.
        reason = os.strerror(exc.errno) if exc.errno else str(exc)
        raise OSError(f"cannot listen on {host}:{port}: {reason}") from None


async def _close(
    listeners: list[asyncio.AbstractServer], admin: web.AppRunner | None, runner: web.AppRunner
) -> None:
    for listener in listeners:
        listener.close()
    with contextlib.suppress(asyncio.CancelledError):
        if admin is not None:
            await admin.cleanup()
        await runner.cleanup()
        for listener in listeners:
            await listener.wait_closed()


def _watch_supervisor(
    loop: asyncio.AbstractEventLoop, stop: asyncio.Event, grace: float, log_format: str
) -> threading.Thread:
    """Watch, from a daemon thread, whether this worker's supervisor is still its parent.

    A worker outliving its supervisor would hold the shared sockets with nobody to restart or
    stop it: once the parent is gone, ``stop`` is set (the worker drains and exits), and if the
    process is still there ``grace`` seconds later it ends itself with :data:`EXIT_FORCED`.
    Both happen in this thread, so that neither depends on the event loop: a loop blocked in a
    log write to a pipe that nobody reads any more (the supervisor's own reader gone) never
    returns, and no asyncio timer would fire.
    """
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(_ORPHAN_CHECK)
        gone_at = time.monotonic()
        # The loop may be closed already (the worker is exiting on its own): nothing to tell it.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(_orphaned, stop, parent)
        time.sleep(grace)
        _last_word(
            log_format,
            event="forced_exit",
            reason="supervisor_gone",
            parent=parent,
            seconds=round(time.monotonic() - gone_at, 3),
        )
        os._exit(EXIT_FORCED)

    thread = threading.Thread(target=watch, name="yektaws-supervisor-watch", daemon=True)
    thread.start()
    return thread


def _orphaned(stop: asyncio.Event, parent: int) -> None:
    log.warning("supervisor_gone", parent=parent)
    stop.set()


def _last_word(log_format: str, **fields: object) -> None:
    """Write one log line straight to stderr if that cannot block, else nothing.

    Not through the logger: its stream's lock may be held by the main thread, blocked in the very
    write that made this exit necessary.
    """
    timestamp = datetime.now(UTC).isoformat().replace("+00:00", "Z")
    if log_format == "json":
        entry = {"logger": "yektaws", **fields, "level": "error", "timestamp": timestamp}
        line = orjson.dumps(entry) + b"\n"
    else:
        event = fields.pop("event")
        pairs = " ".join(f"{key}={value}" for key, value in fields.items())
        line = f"{timestamp} [error    ] {event} {pairs}\n".encode()
    with contextlib.suppress(OSError, ValueError):
        _, writable, _ = select.select([], [sys.stderr.fileno()], [], 0)
        if writable:
            # One short write: a pipe with room takes it whole, at once.
            os.write(sys.stderr.fileno(), line)
