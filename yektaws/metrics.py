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
from bisect import bisect_left
from collections.abc import Callable, Iterator
from itertools import accumulate

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

__all__ = ["CONTENT_TYPE", "Metrics"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_FAST_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
_SLOW_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0)


class _EventCounter(Collector):
    """A counter labelled by event name, cheap enough for the per-message path.

    prometheus-client's own children take a lock on every increment; the event loop is one
    thread, so a plain dict of floats does, and is turned into a metric family at scrape time.
    """

    def __init__(self, name: str, documentation: str) -> None:
        self._name = name
        self._documentation = documentation
        self.counts: dict[str, float] = {}

    def inc(self, event: str) -> None:
        counts = self.counts
        counts[event] = counts.get(event, 0.0) + 1.0

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily(self._name, self._documentation, labels=["event"])
        for event, count in sorted(self.counts.items()):
            family.add_metric([event], count)
        yield family


class _EventHistogram(Collector):
    """A histogram labelled by event name; lock-free, like :class:`_EventCounter`."""

    def __init__(self, name: str, documentation: str, buckets: tuple[float, ...]) -> None:
        self._name = name
        self._documentation = documentation
        self._bounds = buckets
        #: event -> [count per bucket (the last is +Inf), sum]
        self._series: dict[str, tuple[list[int], list[float]]] = {}

    def observe(self, event: str, value: float) -> None:
        series = self._series.get(event)
        if series is None:
            series = self._series[event] = ([0] * (len(self._bounds) + 1), [0.0])
        series[0][bisect_left(self._bounds, value)] += 1
        series[1][0] += value

    def collect(self) -> Iterator[HistogramMetricFamily]:
        family = HistogramMetricFamily(self._name, self._documentation, labels=["event"])
        for event, (counts, total) in sorted(self._series.items()):
            cumulative = list(accumulate(counts))
            edges = [str(bound) for bound in self._bounds] + ["+Inf"]
            family.add_metric([event], list(zip(edges, cumulative, strict=True)), total[0])
        yield family


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


class _BrokerUp(Collector):
    """``yektaws_broker_up``: 1 while the broker carries messages, 0 while degraded.

    Read from the bus at scrape time; absent without a broker (``REDIS_URL`` empty), where there
    is nothing to be up or down.
    """

    def __init__(self, state: Callable[[], str]) -> None:
        self._state = state

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "yektaws_broker_up", "1 while the broker (Redis) carries bus messages, 0 while degraded"
        )
        state = self._state()
        if state != "local":
            family.add_metric([], 1.0 if state == "ok" else 0.0)
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
        self.events_in = _EventCounter("yektaws_events_in", "Events received")
        self.events_out = _EventCounter("yektaws_events_out", "Events sent")
        self.handler_seconds = _EventHistogram(
            "yektaws_handler_seconds", "Time in an event's handler", _FAST_BUCKETS
        )
        for collector in (self.events_in, self.events_out, self.handler_seconds):
            registry.register(collector)
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
        self.store_up = Gauge(
            "yektaws_session_store_up",
            "1 when the session store answered the last periodic ping, 0 when it did not",
            registry=registry,
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

        # -- recovery (yektaws.recovery) ---------------------------------------------------------
        self.recoveries = Counter(
            "yektaws_recoveries",
            "Resume attempts, by protocol and outcome: recovered, or why not",
            ["protocol", "outcome"],
            registry=registry,
        )
        self.recovery_replayed = Counter(
            "yektaws_recovery_replayed_events",
            "Missed events delivered to resumed connections",
            ["protocol"],
            registry=registry,
        )
        self.recovery_saved = Counter(
            "yektaws_recovery_states_saved",
            "Connection states saved for a resume, by why the connection ended",
            ["cause"],
            registry=registry,
        )
        self.recovery_log_entries = Gauge(
            "yektaws_recovery_log_entries",
            "Recoverable events held in the recovery log",
            registry=registry,
        )
        self.recovery_log_age_seconds = Gauge(
            "yektaws_recovery_log_age_seconds",
            "Age of the oldest event held in the recovery log (0 when it is empty)",
            registry=registry,
        )

    def count_open_connections(self, count_by_protocol: Callable[[], dict[str, int]]) -> None:
        """Report open connections from ``count_by_protocol`` at each scrape."""
        self.registry.register(_OpenConnections(count_by_protocol))

    def report_broker(self, state: Callable[[], str]) -> None:
        """Report the bus's ``state`` (``local``, ``ok``, ``degraded``) at each scrape."""
        self.registry.register(_BrokerUp(state))

    # -- the per-event path -------------------------------------------------------------------

    def event_in(self, event: str) -> None:
        self.events_in.inc(event)

    def event_out(self, event: str) -> None:
        self.events_out.inc(event)

    def handler_time(self, event: str, seconds: float) -> None:
        self.handler_seconds.observe(event, seconds)

    # -- exposition and background measurement -------------------------------------------------

    def render(self) -> bytes:
        return generate_latest(self.registry)

    async def watch_loop_lag(self, interval: float = 1.0) -> None:
        """Measure event-loop lag forever (started by the application, cancelled at shutdown)."""
        while True:
            started = time.monotonic()
            await asyncio.sleep(interval)
            self.loop_lag_seconds.set(max(0.0, time.monotonic() - started - interval))
