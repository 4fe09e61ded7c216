"""Composition root of the bridge: settings → (Redis client →) bus → servicer → gRPC server.

The Redis backend gets the process's one ``redis.asyncio`` client here (a
bounded command pool; the bus adds its fixed set of Pub/Sub connections); it
is closed (``aclose``) after the bus, in reverse order of opening.
"""

from __future__ import annotations

import functools
import os
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

from bridge_service.bus import EventBus
from bridge_service.canary import DeliveryCanary
from bridge_service.memory_bus import MemoryEventBus
from bridge_service.metrics import BridgeMetrics
from bridge_service.redis_bus import RedisEventBus
from bridge_service.redis_policy import check_eviction_policy
from bridge_service.servicer import SERVICE_NAME, BridgeServicer, register
from bridge_service.settings import BridgeSettings
from bridge_service.validation import PublishLimits
from runwire_common.observability import open_observability
from runwire_common.redis_clients import connect, connect_cluster
from runwire_common.server import GrpcServer, ServiceBinding
from runwire_common.telemetry import Telemetry


def redis_client_name(settings: BridgeSettings) -> str:
    """``CLIENT SETNAME`` of this process's Redis connections (``CLIENT LIST`` shows it)."""
    return f"runwire-bridge.{settings.redis_key_prefix}.{os.getpid()}"


@asynccontextmanager
async def open_bus(settings: BridgeSettings) -> AsyncIterator[EventBus]:
    """The configured backend, with the resources it needs; they are released on exit."""
    if settings.backend == "memory":
        yield MemoryEventBus(
            log_capacity=settings.log_capacity,
            log_max_bytes=settings.log_max_bytes,
            subscriber_queue=settings.subscriber_queue,
            run_state_capacity=settings.run_state_capacity,
            run_state_hold_s=settings.run_state_hold_s,
            run_state_max=settings.run_state_max,
            retention_s=settings.retention_s,
            max_batch=settings.max_subscribe_batch,
        )
        return
    client = (connect_cluster if settings.redis_cluster else connect)(
        settings.redis_url.get_secret_value(),
        client_name=redis_client_name(settings),
        timeout_s=settings.call_timeout_s,
        max_connections=settings.redis_max_connections,
    )
    try:
        await check_eviction_policy(client, allow_eviction=settings.redis_allow_eviction)
        bus = RedisEventBus(
            client,
            key_prefix=settings.redis_key_prefix,
            log_capacity=settings.log_capacity,
            subscriber_queue=settings.subscriber_queue,
            run_state_capacity=settings.run_state_capacity,
            retention_s=settings.retention_s,
            max_batch=settings.max_subscribe_batch,
            log_max_bytes=settings.log_max_bytes,
            run_state_hold_s=settings.run_state_hold_s,
            run_state_max=settings.run_state_max,
            pubsub_shards=settings.redis_pubsub_shards,
            sharded_pubsub=settings.redis_sharded_pubsub,
            live_body_max_bytes=settings.redis_live_body_max_bytes,
        )
        try:
            yield bus
        finally:
            await bus.close()  # its Pub/Sub connections and their tasks (idempotent)
    finally:
        await client.aclose()


@asynccontextmanager
async def running_service(
    settings: BridgeSettings,
    *,
    bus: EventBus | None = None,
    telemetry: Telemetry | None = None,
) -> AsyncIterator[GrpcServer]:
    """Serve the bridge until the block exits, then drain and close.

    ``bus`` overrides the configured backend (tests pass one to inspect it);
    the caller then still owns it, but it is drained and closed here too.
    With the Redis backend, a :class:`~bridge_service.canary.DeliveryCanary`
    keeps the bridge service's health in step with delivery through this
    replica's own subscriptions (``canary_interval_s``; 0 turns it off).
    On exit the canary stops and the server drains: health turns NOT_SERVING, every live
    ``Subscribe`` ends with ``UNAVAILABLE`` and its resume cursor (so the
    drain does not wait the whole grace period for streams that never end),
    in-flight ``Publish`` calls finish, then the bus is closed.
    """
    async with AsyncExitStack() as stack:
        observability = await stack.enter_async_context(
            open_observability(
                "runwire-bridge", host=settings.host, metrics_port=settings.metrics_port, telemetry=telemetry
            )
        )
        event_bus = bus if bus is not None else await stack.enter_async_context(open_bus(settings))
        stack.push_async_callback(event_bus.close)
        metrics = BridgeMetrics(observability.metrics)
        servicer = BridgeServicer(
            event_bus,
            attestor=settings.attestor(),
            limits=PublishLimits(
                max_events=settings.max_events_per_publish, max_payload_bytes=settings.max_payload_bytes
            ),
            metrics=metrics,
            max_batch=settings.max_subscribe_batch,
            telemetry=observability.telemetry,
        )
        binding = ServiceBinding(SERVICE_NAME, functools.partial(register, servicer))
        server = GrpcServer(
            settings,
            [binding],
            interceptors=observability.telemetry.server_interceptors(),
            tls=settings.tls(),
        )
        await server.start()
        stack.push_async_callback(server.drain, functools.partial(_drain, servicer, event_bus))
        if isinstance(event_bus, RedisEventBus) and settings.canary_interval_s > 0:
            # Readiness follows delivery through this replica's own Redis subscriptions.
            canary = DeliveryCanary(
                event_bus,
                health_servicer=server.health,
                service=SERVICE_NAME,
                metrics=metrics,
                interval_s=settings.canary_interval_s,
                timeout_s=settings.canary_timeout_s,
            )
            canary.start()
            stack.push_async_callback(canary.stop)  # first thing on the way out, before the drain
        yield server


async def _drain(servicer: BridgeServicer, bus: EventBus) -> None:
    """End the streams first (each subscription with its cursor), then the bus's own subscriptions."""
    await servicer.drain()
    await bus.drain()
