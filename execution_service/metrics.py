"""The execution service's Prometheus metrics, read from its live objects at scrape time."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from execution_service.publisher import StreamPublisher
from execution_service.start_stream import StartStreamStats
from execution_service.supervisor import RunSupervisor


class ExecutionCollector(Collector):
    def __init__(
        self, supervisor: RunSupervisor, bridge: StreamPublisher, starts: StartStreamStats | None = None
    ) -> None:
        self._supervisor = supervisor
        self._bridge = bridge
        self._starts = starts if starts is not None else StartStreamStats()

    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily(
            "runwire_execution_live_runs", "Runs executing in this process", value=len(self._supervisor)
        )
        yield CounterMetricFamily(
            "runwire_execution_runs_started",
            "Runs started by this process",
            value=self._supervisor.runs_started,
        )
        yield CounterMetricFamily(
            "runwire_execution_runs_finished",
            "Runs of this process that ended",
            value=self._supervisor.runs_finished,
        )
        yield CounterMetricFamily(
            "runwire_execution_events_published",
            "Events accepted by the bridge from this process",
            value=self._bridge.events_published,
        )
        yield GaugeMetricFamily(
            "runwire_execution_publish_batches_in_flight",
            "Batches of events sent to the bridge and not acknowledged yet",
            value=self._bridge.batches_in_flight,
        )
        yield CounterMetricFamily(
            "runwire_execution_publish_stream_reconnects",
            "Publish streams to a bridge replica opened again after one ended",
            value=self._bridge.stream_reconnects,
        )
        yield CounterMetricFamily(
            "runwire_execution_start_stream_messages",
            "StartRuns messages read (each carries one start or a bundle of them)",
            value=self._starts.messages,
        )
        yield CounterMetricFamily(
            "runwire_execution_start_stream_starts",
            "Starts read from StartRuns streams",
            value=self._starts.starts,
        )
