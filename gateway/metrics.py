"""The gateway's Prometheus metrics.

The counters live in :class:`~gateway.stats.GatewayStats` (plain integers the
hot path bumps without locks); :class:`GatewayCollector` exports them at
scrape time, together with the number of open connections. Delivery lag — from
an event's creation in the execution service to its write on the socket, on
the same host clock — is a histogram observed per event
(:class:`~gateway.stats.LagHistogram`), exported here as
``runwire_gateway_delivery_lag_seconds``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from gateway.stats import GatewayStats


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
        yield GaugeMetricFamily(
            "runwire_gateway_users_subscribed",
            "Users with an event subscription on this gateway (one per user, shared by their sockets)",
            value=stats.users_subscribed,
        )
        yield GaugeMetricFamily(
            "runwire_gateway_fabric_streams",
            "Open Fabric streams (one per bridge replica)",
            value=stats.fabric_streams,
        )
        yield GaugeMetricFamily(
            "runwire_gateway_limits_degraded",
            "1 while Redis does not answer and per-user limits are counted per process",
            value=stats.limits_degraded,
        )
        for name, doc, value in (
            (
                "runwire_gateway_fabric_credits_granted",
                "Events of credit granted to the bridge",
                stats.credits_granted,
            ),
            (
                "runwire_gateway_partials_coalesced",
                "partial_result events merged into the one before them in a backlogged socket's queue",
                stats.partials_coalesced,
            ),
            (
                "runwire_gateway_backlog_resumes",
                "Sockets whose queue overflowed and that were resumed from their cursor",
                stats.backlog_resumes,
            ),
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
            ("runwire_gateway_resubscribes", "Subscriptions re-added from their cursor", stats.resubscribes),
            (
                "runwire_gateway_start_runs_refused_overload",
                "run.start answered resource_exhausted because the gateway had too many in flight",
                stats.start_runs_refused_overload,
            ),
            (
                "runwire_gateway_start_streams_opened",
                "StartRuns streams opened to execution replicas (one per replica, replaced every 20 s)",
                stats.start_streams_opened,
            ),
            (
                "runwire_gateway_starts_sent_again",
                "Run starts sent again to another execution replica (draining, shutting down or unreachable)",
                stats.starts_sent_again,
            ),
            (
                "runwire_gateway_frames_rate_limited",
                "Client frames refused by a rate limit before being parsed",
                stats.frames_rate_limited,
            ),
            (
                "runwire_gateway_connections_closed_flooding",
                "Connections closed (1008) for sending on past their rate limit",
                stats.connections_closed_flooding,
            ),
            (
                "runwire_gateway_slow_consumers_closed",
                "Connections closed (1013) because the client did not read what was sent",
                stats.slow_consumers_closed,
            ),
            (
                "runwire_gateway_run_starts_rate_limited",
                "run.start refused because the user started too many runs in the window",
                stats.run_starts_rate_limited,
            ),
            (
                "runwire_gateway_limits_redis_failures",
                "Per-user limit checks that fell back to per-process counts (Redis unreachable)",
                stats.limits_redis_failures,
            ),
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
        lag = stats.delivery_lag
        yield HistogramMetricFamily(
            "runwire_gateway_delivery_lag_seconds",
            "From an event's creation at its source to its write on a WebSocket",
            buckets=lag.cumulative(),
            sum_value=lag.sum,
        )
