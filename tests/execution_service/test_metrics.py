"""The execution service's metrics read its live objects."""

from __future__ import annotations

import logging

import grpc
from prometheus_client import CollectorRegistry, generate_latest

from execution_service.metrics import ExecutionCollector
from execution_service.peers import GrpcBridge
from execution_service.supervisor import RunSupervisor
from runwire_common.attestation import ContextAttestor


async def test_the_collector_reports_live_runs_and_published_events(attestor: ContextAttestor) -> None:
    supervisor = RunSupervisor(log=logging.getLogger("test"))
    channel = grpc.aio.insecure_channel("127.0.0.1:9")
    try:
        bridge = GrpcBridge(channel, attestor=attestor, call_timeout_s=1, context_ttl_s=60)
        bridge.events_published = 7
        supervisor.runs_started = 2
        registry = CollectorRegistry()
        registry.register(ExecutionCollector(supervisor, bridge))
        text = generate_latest(registry).decode()
    finally:
        await channel.close()
    assert "runwire_execution_live_runs 0.0" in text
    assert "runwire_execution_runs_started_total 2.0" in text
    assert "runwire_execution_events_published_total 7.0" in text
