"""bridge_service: routes run events to their owner's subscribers.

``runwire.bridge.v1.BridgeService`` over a per-user, ordered, bounded and
resumable event log. Layout:

- ``settings`` — :class:`BridgeSettings` (``RUNWIRE_BRIDGE_*``);
- ``event_ids`` — ``"<ms>-<n>"`` cursors, compared numerically;
- ``bus`` — the backend interface (:class:`EventBus`) and its items/errors;
- ``memory_bus`` — the in-process backend (Redis Streams + Pub/Sub comes later);
- ``validation`` — checks on published events;
- ``servicer`` — the thin gRPC adapter; ``app`` — the composition root.

Behaviour worth knowing:

- A cursor older than the retained log, from before this process started, or
  newer than any id the bus assigned to the caller gets a ``gap`` and then the
  whole retained log — never a silent skip.
- A subscriber whose queue overflows ends with ``RESOURCE_EXHAUSTED`` naming
  the last event it was sent; others are unaffected.
- On drain every live stream ends with ``UNAVAILABLE`` naming its resume
  cursor (a retryable code, so the gateway resubscribes, elsewhere if need
  be) and new subscriptions are refused the same way; ``Publish`` keeps
  working until the server stops.
"""
