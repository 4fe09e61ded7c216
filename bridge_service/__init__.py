"""bridge_service: routes run events to their owner's subscribers.

``runwire.bridge.v1.BridgeService`` over a per-user, ordered, bounded and
resumable event log. Layout:

- ``settings`` — :class:`BridgeSettings` (``RUNWIRE_BRIDGE_*``);
- ``event_ids`` — ``"<ms>-<n>"`` cursors, compared numerically;
- ``bus`` — the backend interface (:class:`EventBus`), its items/errors and
  the fencing rules (:func:`~bridge_service.bus.fence`);
- ``subscriber`` — the bounded per-subscription queue both backends use;
- ``memory_bus`` — the in-process backend (``backend=memory``, the default);
- ``redis_bus`` / ``redis_scripts`` — Redis Streams + Pub/Sub
  (``backend=redis``): any replica serves any user; its live fan-out over a
  few shared connections is ``redis_fanout`` (``redis_cluster_fanout`` on
  Redis Cluster), opened by ``redis_connections``;
- ``validation`` — checks on published events;
- ``servicer`` — the thin gRPC adapter; ``app`` — the composition root.

Behaviour worth knowing:

- ``Publish`` is idempotent per ``(run_id, seq)``: a seq the run already has
  is ignored, ``seq = 0`` gets the run's next seq, and nothing after a run's
  terminal event is stored (``event_ids`` "" and ``seqs`` 0 for ignored
  events). Decided atomically per user, so concurrent publishers of one run
  cannot store two terminal events.
- A cursor older than the retained log, from before this process started (or
  before Redis lost the log), or newer than any id the bus assigned to the
  caller gets a ``gap`` and then the whole retained log — never a silent skip.
- A subscriber whose queue overflows ends with ``RESOURCE_EXHAUSTED`` naming
  the last event it was sent; others are unaffected. With Redis, a live
  stream whose Redis connection breaks ends with ``UNAVAILABLE`` and its
  cursor; ``Publish`` maps an unreachable Redis to ``UNAVAILABLE``.
- On drain every live stream ends with ``UNAVAILABLE`` naming its resume
  cursor (a retryable code, so the gateway resubscribes, elsewhere if need
  be) and new subscriptions are refused the same way; ``Publish`` keeps
  working until the server stops.
"""
