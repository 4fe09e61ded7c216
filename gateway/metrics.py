"""The gateway's Prometheus metrics.

The counters live in :class:`~gateway.pump.GatewayStats` (plain integers the
hot path bumps without locks); :class:`GatewayCollector` exports them at
scrape time, together with the number of open connections. Delivery lag — from
an event's creation in the execution service to its write on the socket, on
the same host clock — is a histogram observed per event.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from gateway.pump import GatewayStats

LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def delivery_lag_histogram(registry: CollectorRegistry | None = None) -> Histogram:
    return Histogram(
        "runwire_gateway_delivery_lag_seconds",
        "From an event's creation at its source to its write on a WebSocket",
        buckets=LAG_BUCKETS,
        registry=registry if registry is not None else CollectorRegistry(),
    )


class GatewayCollector(Collector):
    """Exports one gateway's counters when Prometheus scrapes."""

    def __init__(self, stats: GatewayStats, open_connections: Callable[[], int]) -> None:
        self._stats = stats
        self._open_connections = open_connections

    def collect(self) -> Iterator[Metric]:
        stats = self._stats
        yield GaugeMetricFamily(
            "runwire_gateway_connections", "Open WebSocket connections", value=self._open_connections()
        )
        for name, doc, value in (
            (
                "runwire_gateway_connections_opened",
                "WebSocket connections accepted",
                stats.connections_opened,
            ),
            ("runwire_gateway_events_delivered", "Events written to WebSockets", stats.events_sent),
            (
                "runwire_gateway_events_blocked_owner_mismatch",
                "Events dropped because their owner was not the connection's user (must stay 0)",
                stats.events_blocked_owner_mismatch,
            ),
            ("runwire_gateway_resubscribes", "Event streams re-opened from their cursor", stats.resubscribes),
        ):
            yield CounterMetricFamily(name, doc, value=value)
        refused = CounterMetricFamily(
            "runwire_gateway_handshakes_refused",
            "Refused WebSocket handshakes by HTTP status",
            labels=["status"],
        )
        for status, count in sorted(stats.handshakes_refused.items()):
            refused.add_metric([str(status)], count)
        yield refused
