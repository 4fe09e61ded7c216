"""The execution service's metrics read its live objects."""

from __future__ import annotations

import logging

import grpc
from prometheus_client import CollectorRegistry, generate_latest

from execution_service.metrics import ExecutionCollector
from execution_service.publisher import StreamPublisher
from execution_service.start_stream import StartStreamStats
from execution_service.supervisor import RunSupervisor


async def test_the_collector_reports_live_runs_and_the_publish_streams() -> None:
    supervisor = RunSupervisor(log=logging.getLogger("test"))
    bridge = StreamPublisher("127.0.0.1:9", open_channel=grpc.aio.insecure_channel, ack_timeout_s=1)
    try:
        bridge.events_published = 7
        bridge.stream_reconnects = 3
        supervisor.runs_started = 2
        starts = StartStreamStats()
        starts.count(5)
        starts.count(1)
        registry = CollectorRegistry()
        registry.register(ExecutionCollector(supervisor, bridge, starts))
        text = generate_latest(registry).decode()
    finally:
        await bridge.aclose()
    assert "runwire_execution_live_runs 0.0" in text
    assert "runwire_execution_runs_started_total 2.0" in text
    assert "runwire_execution_events_published_total 7.0" in text
    assert "runwire_execution_publish_batches_in_flight 0.0" in text
    assert "runwire_execution_publish_stream_reconnects_total 3.0" in text
    assert "runwire_execution_start_stream_messages_total 2.0" in text
    assert "runwire_execution_start_stream_starts_total 6.0" in text
