"""Prometheus metrics, served at ``GET /metrics``.

One :class:`Metrics` object per application owns a private registry (several apps in one test
process never share counters). Labels never carry a token, a user id or message text: event names
are labelled only when a handler exists for them (anything else counts as ``unknown``), so a client
cannot grow the label set.

Open connections are not counted up and down: they are read from the :class:`~yektaws.hub.Hub`
at scrape time, so the figure cannot drift from the truth.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

__all__ = ["CONTENT_TYPE", "Metrics"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_FAST_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
_SLOW_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0)


class _OpenConnections(Collector):
    def __init__(self, count_by_protocol: Callable[[], dict[str, int]]) -> None:
        self._count = count_by_protocol

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "yektaws_connections_open", "Connections open right now", labels=["protocol"]
        )
        counts = self._count()
        for protocol in ("native-websocket", "socket.io"):
            family.add_metric([protocol], counts.get(protocol, 0))
        yield family


class Metrics:
    """Every metric of one gateway."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        registry = self.registry
        self.connects = Counter(
            "yektaws_connects", "Connections accepted", ["protocol"], registry=registry
        )
        self.rejects = Counter(
            "yektaws_rejects", "Handshakes refused", ["protocol", "reason"], registry=registry
        )
        self.disconnects = Counter(
            "yektaws_disconnects",
            "Connections ended, by native close code (Socket.IO: none)",
            ["protocol", "code"],
            registry=registry,
        )
        self.events_in = Counter(
            "yektaws_events_in", "Events received", ["event"], registry=registry
        )
        self.events_out = Counter("yektaws_events_out", "Events sent", ["event"], registry=registry)
        self.handler_seconds = Histogram(
            "yektaws_handler_seconds",
            "Time in an event's handler",
            ["event"],
            buckets=_FAST_BUCKETS,
            registry=registry,
        )
        self.ai_streams_active = Gauge(
            "yektaws_ai_streams_active", "AI answers streaming right now", registry=registry
        )
        self.ai_streams = Counter(
            "yektaws_ai_streams", "AI answers ended, by outcome", ["outcome"], registry=registry
        )
        self.ai_first_chunk_seconds = Histogram(
            "yektaws_ai_first_chunk_seconds",
            "Time from request to the first chunk",
            buckets=_SLOW_BUCKETS,
            registry=registry,
        )
        self.store_seconds = Histogram(
            "yektaws_session_store_seconds",
            "Session store lookup time",
            buckets=_FAST_BUCKETS,
            registry=registry,
        )
        self.store_errors = Counter(
            "yektaws_session_store_errors", "Session store lookups that failed", registry=registry
        )
        self.loop_lag_seconds = Gauge(
            "yektaws_event_loop_lag_seconds",
            "How late the event loop ran a 1 s timer, lately",
            registry=registry,
        )
        self.bus_published = Counter(
            "yektaws_bus_published",
            "Messages published to the broker, by kind",
            ["kind"],
            registry=registry,
        )
        self.bus_publish_errors = Counter(
            "yektaws_bus_publish_errors",
            "Publishes that failed (delivered in this process only)",
            registry=registry,
        )
        self.bus_received = Counter(
            "yektaws_bus_received",
            "Broker messages applied here, by kind",
            ["kind"],
            registry=registry,
        )
        self.bus_resubscribes = Counter(
            "yektaws_bus_resubscribes",
            "Broker subscriptions re-established, by cause",
            ["cause"],
            registry=registry,
        )
        # Children cached per label value: labels() costs a lock and a dict build each call.
        self._in: dict[str, Any] = {}
        self._out: dict[str, Any] = {}
        self._timers: dict[str, Any] = {}

    def count_open_connections(self, count_by_protocol: Callable[[], dict[str, int]]) -> None:
        """Report open connections from ``count_by_protocol`` at each scrape."""
        self.registry.register(_OpenConnections(count_by_protocol))

    # -- the per-event path: cached children, nothing else --------------------------------------

    def event_in(self, event: str) -> None:
        child = self._in.get(event)
        if child is None:
            child = self._in[event] = self.events_in.labels(event)
        child.inc()

    def event_out(self, event: str) -> None:
        child = self._out.get(event)
        if child is None:
            child = self._out[event] = self.events_out.labels(event)
        child.inc()

    def handler_time(self, event: str, seconds: float) -> None:
        child = self._timers.get(event)
        if child is None:
            child = self._timers[event] = self.handler_seconds.labels(event)
        child.observe(seconds)

    # -- exposition and background measurement -------------------------------------------------

    def render(self) -> bytes:
        return generate_latest(self.registry)

    async def watch_loop_lag(self, interval: float = 1.0) -> None:
        """Measure event-loop lag forever (started by the application, cancelled at shutdown)."""
        while True:
            started = time.monotonic()
            await asyncio.sleep(interval)
            self.loop_lag_seconds.set(max(0.0, time.monotonic() - started - interval))
