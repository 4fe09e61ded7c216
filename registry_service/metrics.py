"""The registry's Prometheus metrics (on the process's own registry)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter


class RegistryMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        target = registry if registry is not None else CollectorRegistry()
        self.runs_created = Counter(
            "runwire_registry_runs_created", "Runs admitted by CreateRun", ["strategy"], registry=target
        )
        self.runs_refused = Counter(
            "runwire_registry_runs_refused",
            "CreateRun calls refused (quota, busy thread)",
            ["code"],
            registry=target,
        )
        self.transitions = Counter(
            "runwire_registry_transitions", "Successful run state transitions", ["to_state"], registry=target
        )
        self.runs_marked_dead = Counter(
            "runwire_registry_runs_marked_dead", "Runs marked dead for lack of heartbeats", registry=target
        )
        self.death_notices = Counter(
            "runwire_registry_death_notices", "agent_death notices by outcome", ["outcome"], registry=target
        )
        self.retention_purged = Counter(
            "runwire_registry_retention_purged",
            "Rows deleted because their run ended longer ago than the retention, by kind",
            ["kind"],
            registry=target,
        )
        self.write_stream_messages = Counter(
            "runwire_registry_write_stream_messages",
            "WriteRuns messages read (several writes travel in one bundled message under load)",
            registry=target,
        )
        self.write_stream_writes = Counter(
            "runwire_registry_write_stream_writes", "Writes read on WriteRuns streams", registry=target
        )
        # Labelled children by label value: prometheus_client's labels() validates and locks on
        # every call, and the hot path counts three to five of them per run.
        self._children: dict[tuple[int, str], Counter] = {}

    def _child(self, counter: Counter, value: str) -> Counter:
        key = (id(counter), value)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = counter.labels(value)
        return child

    def count_write_message(self, writes: int) -> None:
        self.write_stream_messages.inc()
        self.write_stream_writes.inc(writes)

    def count_created(self, strategy: str) -> None:
        self._child(self.runs_created, strategy).inc()

    def count_transition(self, to_state: str) -> None:
        self._child(self.transitions, to_state).inc()

    def count_purged(self, runs: int, messages: int, inputs: int) -> None:
        for kind, rows in (("runs", runs), ("messages", messages), ("inputs", inputs)):
            if rows:
                self._child(self.retention_purged, kind).inc(rows)
