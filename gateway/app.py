"""The gateway's composition root.

settings → channels (execution, registry; opened once) → the bridge's
replicas (a channel and, once needed, a ``Fabric`` stream each) → backends →
the per-user limits (a Redis client when ``redis_url`` is set) → WebSocket
server. On exit the server drains first (connections close with
1012 so clients reconnect elsewhere), then the fabric streams and the
channels close, in reverse order of opening.
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

import grpc

from gateway.calls import EXECUTION_SERVICE, REGISTRY_SERVICE, Backends
from gateway.fabric import BridgeReplicas
from gateway.server import GatewayServer
from gateway.settings import GatewaySettings
from gateway.starts import RunStarts
from gateway.stats import GatewayStats
from gateway.user_limits import UserLimits, connect_redis
from runwire_common.channels import open_channel
from runwire_common.observability import open_observability
from runwire_common.telemetry import Telemetry

# A bridge replica whose stream keeps breaking is left alone this long at most
# before new subscriptions try it again.
REPLICA_MAX_COOLDOWN_S = 30.0


@asynccontextmanager
async def running_gateway(
    settings: GatewaySettings, *, telemetry: Telemetry | None = None
) -> AsyncIterator[GatewayServer]:
    """Run a gateway until the block exits; the yielded server exposes ``.port``.

    ``telemetry`` replaces the tracing configured by ``OTEL_*`` (tests pass one).
    """
    attestor = settings.attestor()
    async with AsyncExitStack() as stack:
        observability = await stack.enter_async_context(
            open_observability(
                "runwire-gateway",
                host=settings.ws_host,
                metrics_port=settings.metrics_port,
                telemetry=telemetry,
            )
        )
        interceptors = observability.telemetry.client_interceptors()
        tls = settings.tls()
        channels: list[grpc.aio.Channel] = []
        for target, service in (
            (settings.execution_target, EXECUTION_SERVICE),
            (settings.registry_target, REGISTRY_SERVICE),
        ):
            channel = open_channel(target, service_names=(service,), interceptors=interceptors, tls=tls)
            stack.push_async_callback(channel.close)
            channels.append(channel)
        execution, registry = channels
        stats = GatewayStats()
        replicas = BridgeReplicas(
            settings.bridge_target,
            stats=stats,
            interceptors=interceptors,
            tls=tls,
            # Longer than a subscription's retry delays, so a re-add goes elsewhere.
            cooldown_s=settings.resubscribe_max_backoff_s,
            max_cooldown_s=REPLICA_MAX_COOLDOWN_S,
            open_timeout_s=settings.call_timeout_s,
        )
        stack.push_async_callback(replicas.close)
        await replicas.resolve()
        starts = None
        if settings.start_stream:
            starts = RunStarts(
                settings.execution_target,
                # No gRPC retries: RunStarts sends a start again itself when that is safe.
                open_channel=lambda replica: open_channel(
                    replica,
                    service_names=(EXECUTION_SERVICE,),
                    interceptors=interceptors,
                    retries=False,
                    tls=tls,
                ),
                timeout_s=settings.call_timeout_s,
                stats=stats,
                telemetry=observability.telemetry,
            )
            stack.push_async_callback(starts.aclose)
        backends = Backends(
            execution=execution, registry=registry, call_timeout_s=settings.call_timeout_s, starts=starts
        )
        redis = None
        if settings.redis_url is not None:
            # Not contacted here: an unreachable Redis degrades the limits, it does not stop the gateway.
            redis = connect_redis(settings)
            stack.push_async_callback(redis.aclose)
        limits = await stack.enter_async_context(UserLimits(settings, stats=stats, redis=redis).running())
        server = GatewayServer(
            settings,
            backends=backends,
            replicas=replicas,
            stats=stats,
            attestor=attestor,
            telemetry=observability.telemetry,
            metrics=observability.metrics,
            limits=limits,
        )
        await server.start()
        stack.push_async_callback(server.drain)
        if settings.ready_file:
            write_ready_file(Path(settings.ready_file), port=server.port)
        yield server


def write_ready_file(path: Path, *, port: int) -> None:
    """Write ``{"port": N, "pid": P}`` atomically, so a reader never sees half of it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"port": port, "pid": os.getpid()}))
    tmp.replace(path)
