"""This process's figures, sampled every :data:`SAMPLE_INTERVAL`; the last 15 minutes are kept.

A :class:`Sampler` runs in every gateway process, whether or not it serves the console, so that any
node can answer the console's ``stats`` query from memory (:mod:`yektaws.console.views`), and a
page opened a minute ago or just now draws fifteen minutes of charts at once.

Each sample reads what already exists and counts nothing on the per-message path: open connections
and users from the :class:`~yektaws.hub.Hub`, rates (events in and out, rejects per second) as the
difference of the Prometheus counters between two samples over the time between them, AI streams
and event-loop lag from their gauges. Samples are taken on wall-clock multiples of the interval, so
the samples of every node fall on the same instants and add up into cluster totals.

The session store is pinged once per sample, in a task of its own so that a store that hangs
delays no sample; the outcome is the node's ``sessionStore`` health and the
``yektaws_session_store_up`` gauge (the alert on a store that is down reads it).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from prometheus_client.metrics import MetricWrapperBase

from yektaws import __version__
from yektaws.gateway import Gateway
from yektaws.sessions import StoreUnavailable

__all__ = [
    "HISTORY_SAMPLES",
    "HISTORY_SECONDS",
    "PROTOCOLS",
    "SAMPLE_FIELDS",
    "SAMPLE_INTERVAL",
    "Sampler",
]

#: Seconds between two samples; also how often the console page asks for a snapshot.
SAMPLE_INTERVAL = 2.0
#: Seconds of samples kept (the span of the console's charts).
HISTORY_SECONDS = 15 * 60
HISTORY_SAMPLES = int(HISTORY_SECONDS / SAMPLE_INTERVAL)
#: The columns of a sample row, in order (the wire shape of the console's series).
SAMPLE_FIELDS = (
    "t",  # wall-clock seconds, a multiple of SAMPLE_INTERVAL
    "native",  # open native WebSocket connections
    "socketio",  # open Socket.IO connections
    "users",  # distinct users with a connection on this node
    "eventsIn",  # events received per second since the previous sample
    "eventsOut",  # events sent per second
    "rejects",  # handshakes refused per second
    "aiStreams",  # AI answers streaming
    "loopLag",  # event-loop lag, seconds
)

#: The protocols a connection may speak, as ``Connection.protocol`` names them.
PROTOCOLS = ("native-websocket", "socket.io")

Row = tuple[float, ...]


def totals_by(metric: MetricWrapperBase, label: str) -> dict[str, float]:
    """A labelled counter's totals, summed over every other label, by ``label``'s value."""
    totals: dict[str, float] = {}
    for family in metric.collect():
        for sample in family.samples:
            if sample.name.endswith("_total"):
                key = sample.labels[label]
                totals[key] = totals.get(key, 0.0) + sample.value
    return totals


def total(metric: MetricWrapperBase) -> float:
    """A counter's total over all its labels, or a gauge's value."""
    return sum(
        sample.value
        for family in metric.collect()
        for sample in family.samples
        if not sample.name.endswith("_created")
    )


def iso(at: float, timespec: str = "seconds") -> str:
    """The contract's timestamp shape (ISO 8601 UTC, Z) for a moment in wall-clock seconds."""
    return datetime.fromtimestamp(at, UTC).isoformat(timespec=timespec).replace("+00:00", "Z")


class Sampler:
    """The sample ring and latest snapshot of one process."""

    def __init__(
        self,
        gateway: Gateway,
        broker: Callable[[], str],
        *,
        interval: float = SAMPLE_INTERVAL,
        history: int = HISTORY_SAMPLES,
    ) -> None:
        self._gateway = gateway
        self._broker = broker
        self.interval = interval
        self.rows: deque[Row] = deque(maxlen=history)
        #: The figures of the latest sample, as a node's ``stats`` answer carries them.
        self.current: dict[str, Any] = {}
        #: ``ok``, ``unavailable: <why>``, or ``unknown`` before the first ping came back.
        self.store_state = "unknown"
        self._started_at = time.time()
        #: (monotonic time, events in, events out, rejects) at the previous sample.
        self._previous: tuple[float, float, float, float] | None = None
        self._task: asyncio.Task[None] | None = None
        self._ping: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.sample()
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        tasks = [task for task in (self._task, self._ping) if task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._task = self._ping = None

    async def _run(self) -> None:
        while True:
            if self._ping is None or self._ping.done():
                self._ping = asyncio.get_running_loop().create_task(self._ping_store())
            # To the next wall-clock multiple of the interval: every node samples together.
            await asyncio.sleep(self.interval - time.time() % self.interval)
            self.sample()

    async def _ping_store(self) -> None:
        gateway = self._gateway
        try:
            async with asyncio.timeout(gateway.settings.session_store_timeout):
                await gateway.store.ping()
        except (StoreUnavailable, TimeoutError) as exc:
            self.store_state = f"unavailable: {type(exc).__name__}"
            gateway.metrics.store_up.set(0)
        else:
            self.store_state = "ok"
            gateway.metrics.store_up.set(1)

    # -- one sample --------------------------------------------------------------------------

    def sample(self) -> None:
        """Read every figure now; append a row and replace :attr:`current`."""
        gateway = self._gateway
        hub, metrics = gateway.hub, gateway.metrics
        connections: dict[str, dict[str, int]] = {protocol: {} for protocol in PROTOCOLS}
        for conn in hub:
            by_transport = connections.setdefault(conn.protocol, {})
            by_transport[conn.transport] = by_transport.get(conn.transport, 0) + 1
        users = sum(1 for _ in hub.users())
        rejects = totals_by(metrics.rejects, "reason")
        counted = (
            sum(metrics.events_in.counts.values()),
            sum(metrics.events_out.counts.values()),
            sum(rejects.values()),
        )
        now = time.monotonic()
        rates: tuple[float, ...] = (0.0, 0.0, 0.0)
        if self._previous is not None and now > self._previous[0]:
            elapsed = now - self._previous[0]
            rates = tuple(
                round((new - old) / elapsed, 2)
                for new, old in zip(counted, self._previous[1:], strict=True)
            )
        self._previous = (now, *counted)
        ai_streams = int(total(metrics.ai_streams_active))
        loop_lag = round(total(metrics.loop_lag_seconds), 4)
        at = round(time.time() / self.interval) * self.interval
        native = sum(connections["native-websocket"].values())
        socketio = sum(connections["socket.io"].values())
        if self.rows and self.rows[-1][0] >= at:
            self.rows.pop()  # the start-up sample, then the first on the clock: one slot
        self.rows.append((at, native, socketio, users, *rates, ai_streams, loop_lag))
        self.current = {
            "version": __version__,
            "startedAt": iso(self._started_at),
            "sampledAt": iso(at),
            "draining": gateway.draining,
            "connections": connections,
            "usersOnline": users,
            "eventsInPerSecond": rates[0],
            "eventsOutPerSecond": rates[1],
            "rejectsPerSecond": rates[2],
            "aiStreams": ai_streams,
            "loopLagSeconds": loop_lag,
            "rejects": rejects,
            "recoveries": {
                "outcomes": totals_by(metrics.recoveries, "outcome"),
                "replayedEvents": total(metrics.recovery_replayed),
                "statesSaved": total(metrics.recovery_saved),
                "logEntries": total(metrics.recovery_log_entries),
                "logAgeSeconds": total(metrics.recovery_log_age_seconds),
            },
        }

    def answer(self, since: float) -> dict[str, Any]:
        """This node's ``stats`` answer: latest figures, health, and the rows after ``since``."""
        return {
            **self.current,
            "sessionStore": self.store_state,
            "broker": self._broker(),
            "samples": [list(row) for row in self.rows if row[0] > since],
        }
