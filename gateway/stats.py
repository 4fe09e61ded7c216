"""The counters of one gateway, bumped on the hot path without locks.

Everything here is state of one :class:`GatewayStats` instance (owned by one
gateway server), never of the module. The event loop is single-threaded, so
plain integers suffice; :mod:`gateway.metrics` exports them at scrape time.
"""

from __future__ import annotations

from bisect import bisect_left
from dataclasses import dataclass, field

LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class LagHistogram:
    """A Prometheus-style histogram (``le`` buckets) observed per delivered event.

    ``prometheus_client.Histogram.observe`` takes a lock and walks every bucket
    (about 1.5 µs); this costs a bisect and two additions, and the collector
    turns it into cumulative buckets only when scraped.
    """

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...] = LAG_BUCKETS) -> None:
        self.bounds = bounds
        # counts[i] = observations in (bounds[i-1], bounds[i]]; the last one is +Inf.
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    @property
    def count(self) -> int:
        return sum(self.counts)

    def cumulative(self) -> list[tuple[str, int]]:
        """``[(le, cumulative count), …, ("+Inf", total)]``."""
        out: list[tuple[str, int]] = []
        total = 0
        for bound, count in zip((*self.bounds, float("inf")), self.counts, strict=True):
            total += count
            out.append(("+Inf" if bound == float("inf") else repr(bound), total))
        return out


@dataclass
class GatewayStats:
    """Counters of one gateway; exposed for tests and metrics."""

    events_blocked_owner_mismatch: int = 0
    events_sent: int = 0
    resubscribes: int = 0
    connections_opened: int = 0
    start_runs_refused_overload: int = 0
    # Run starts over StartRuns streams (gateway.starts): streams opened, starts sent again.
    start_streams_opened: int = 0
    starts_sent_again: int = 0
    # Abuse at the edge: frames refused by a rate limit (never parsed), connections closed for
    # flooding (1008) or for not reading (1013), run.start refused by the user's creation rate.
    frames_rate_limited: int = 0
    connections_closed_flooding: int = 0
    slow_consumers_closed: int = 0
    run_starts_rate_limited: int = 0
    # Per-user limits in Redis: checks that fell back to per-process counts, and whether they do now.
    limits_redis_failures: int = 0
    limits_degraded: int = 0
    # The event fabric: users with a subscription, open streams (gauges), and counters.
    users_subscribed: int = 0
    fabric_streams: int = 0
    credits_granted: int = 0
    partials_coalesced: int = 0
    backlog_resumes: int = 0
    handshakes_refused: dict[int, int] = field(default_factory=dict)
    # From an event's creation at its source to its write on the socket, per event.
    delivery_lag: LagHistogram = field(default_factory=LagHistogram)
