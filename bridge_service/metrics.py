"""The bridge's Prometheus metrics (on the process's own registry)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge

from bridge_service.bus import PublishResult


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
        # PublishStream.
        self.publish_streams = Gauge(
            "runwire_bridge_publish_streams", "Open PublishStream streams", registry=target
        )
        self.publish_stream_batches = Counter(
            "runwire_bridge_publish_stream_batches",
            "PublishStream batches acknowledged, by code (ok, or the refusal's status code)",
            ["code"],
            registry=target,
        )
        self.publish_stream_messages = Counter(
            "runwire_bridge_publish_stream_messages",
            "PublishStream messages read (several batches travel in one bundled message under load)",
            registry=target,
        )
        # Fabric.
        self.fabric_streams = Gauge("runwire_bridge_fabric_streams", "Open Fabric streams", registry=target)
        self.fabric_subscriptions = Gauge(
            "runwire_bridge_fabric_subscriptions", "Live subscriptions on Fabric streams", registry=target
        )
        self.fabric_subscriptions_added = Counter(
            "runwire_bridge_fabric_subscriptions_added",
            "Fabric subscriptions accepted (an add that passed validation)",
            registry=target,
        )
        self.fabric_subscriptions_removed = Counter(
            "runwire_bridge_fabric_subscriptions_removed",
            "Fabric subscriptions removed by the gateway (FabricRemove)",
            registry=target,
        )
        self.fabric_subscriptions_ended = Counter(
            "runwire_bridge_fabric_subscriptions_ended",
            "Fabric subscriptions ended by the bridge (FabricEnded), by code: refused adds,"
            " fell behind, draining, store lost",
            ["code"],
            registry=target,
        )
        self.fabric_requests_ignored = Counter(
            "runwire_bridge_fabric_requests_ignored",
            "Fabric requests the bridge ignored, by reason (e.g. a remove by another user)",
            ["reason"],
            registry=target,
        )
        self.fabric_events_delivered = Counter(
            "runwire_bridge_fabric_events_delivered", "Events written to Fabric streams", registry=target
        )

        # Delivery canary (bridge_service.canary; Redis backend only).
        self.canary_failures = Counter(
            "runwire_bridge_canary_failures",
            "Canary rounds in which an event did not come back through this replica's own"
            " Redis subscription in time (readiness turned NOT_SERVING)",
            registry=target,
        )
        self.canary_latency = Gauge(
            "runwire_bridge_canary_latency_seconds",
            "Publish-to-delivery time of the slowest canary of the last complete round",
            registry=target,
        )
        self.canary_ready = Gauge(
            "runwire_bridge_canary_ready",
            "1 while the last canary round arrived in full (readiness SERVING), else 0",
            registry=target,
        )

    def count_published(self, result: PublishResult) -> None:
        """Count one stored batch's events by outcome (Publish and PublishStream)."""
        stored = sum(1 for event_id in result.event_ids if event_id)
        self.events_stored.inc(stored)
        if stored < len(result.event_ids):
            self.events_ignored.inc(len(result.event_ids) - stored)
