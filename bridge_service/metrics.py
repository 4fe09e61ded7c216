"""The bridge's Prometheus metrics (on the process's own registry)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge


class BridgeMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        target = registry if registry is not None else CollectorRegistry()
        self.events_published = Counter(
            "runwire_bridge_events_published",
            "Published events by outcome (stored, or ignored by the per-run fence)",
            ["outcome"],
            registry=target,
        )
        # The two outcomes, bound once: labels() is a locked dict lookup, paid per Publish.
        self.events_stored = self.events_published.labels(outcome="stored")
        self.events_ignored = self.events_published.labels(outcome="ignored")
        self.events_delivered = Counter(
            "runwire_bridge_events_delivered", "Events written to Subscribe streams", registry=target
        )
        self.subscribers = Gauge("runwire_bridge_subscribers", "Open Subscribe streams", registry=target)
        self.subscriptions_ended = Counter(
            "runwire_bridge_subscriptions_ended",
            "Subscribe streams ended by the bridge (fell behind, draining, log reset)",
            ["code"],
            registry=target,
        )
