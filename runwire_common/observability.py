"""Tracing and metrics of one service process, opened and closed together.

``open_observability`` is entered by a composition root before anything else
and left last: it builds the :class:`~runwire_common.telemetry.Telemetry` (from
``OTEL_*`` unless one is passed in, as tests do), a fresh Prometheus registry
for the service's own metrics, and serves that registry on
``settings.metrics_port`` when it is set.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from prometheus_client import CollectorRegistry

from runwire_common.metrics import MetricsServer
from runwire_common.telemetry import Telemetry


@dataclass(frozen=True)
class Observability:
    telemetry: Telemetry
    metrics: CollectorRegistry
    metrics_port: int = 0


@asynccontextmanager
async def open_observability(
    service_name: str,
    *,
    host: str,
    metrics_port: int | None,
    telemetry: Telemetry | None = None,
) -> AsyncIterator[Observability]:
    tracing = telemetry if telemetry is not None else Telemetry.from_env(service_name)
    registry = CollectorRegistry()
    server = MetricsServer(registry, host=host, port=metrics_port) if metrics_port is not None else None
    try:
        port = server.start() if server is not None else 0
        yield Observability(telemetry=tracing, metrics=registry, metrics_port=port)
    finally:
        if server is not None:
            server.stop()
        if telemetry is None:
            tracing.shutdown()  # an injected one belongs to the caller
