"""The load driver: several processes of WebSocket clients, started together.

One Python process cannot keep up with a few thousand busy WebSocket clients
on its own, so the users are split over ``processes`` driver processes (spawned,
each with its own uvloop loop; see :mod:`bench.clients`). The coordinator waits
until every process has connected all of its clients, lets the caller take a
reading (CPU, RSS), releases them together, and merges their results.

The driver's own CPU time is reported too: if a driver process is near 100 %
of a core during a measurement, the driver — not the system under test — may
be the bottleneck.
"""

from __future__ import annotations

import multiprocessing as mp
import queue
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from multiprocessing.process import BaseProcess
from typing import Any

from bench.clients import ClientResult, ClientSpec, drive
from bench.stats import latency_summary_ms


def _process_main(spec: ClientSpec, ready: Any, go: Any, results: Any, index: int) -> None:
    import uvloop

    def report_ready(connected: int, failed: int) -> None:
        ready.put((index, connected, failed))

    result = uvloop.run(drive(spec, go.wait, report_ready))
    results.put((index, result))


@dataclass
class FleetResult(ClientResult):
    """The merged results of every driver process of one measurement (same counters, summed)."""

    users: int = 0
    duration_s: float = 0.0
    driver_cpu_s: list[float] = field(default_factory=list)

    @property
    def events_per_s(self) -> float:
        return self.events / self.duration_s if self.duration_s > 0 else 0.0

    def summary(self) -> dict[str, Any]:
        """The JSON-ready figures of a load measurement."""
        busiest = max(self.driver_cpu_s, default=0.0)
        return {
            "users": self.users,
            "connected": self.connected,
            "connect_failed": self.connect_failed,
            "connect_errors": self.connect_errors[:3],
            "runs_ok": self.runs_ok,
            "runs_failed": self.runs_failed,
            "run_errors": self.run_errors,
            "events": self.events,
            "missing_events": self.missing_events,
            "duplicate_events": self.duplicate_events,
            "stray_events": self.stray_events,
            "coalesced_events": self.coalesced_events,
            "mean_event_frame_bytes": round(self.event_bytes / self.events, 1) if self.events else 0,
            "duration_s": round(self.duration_s, 3),
            "events_per_s": round(self.events_per_s, 1),
            "accepted_latency": latency_summary_ms(self.accepted_s),
            "delivery_latency": latency_summary_ms(self.delivery_s),
            "driver_processes": len(self.driver_cpu_s),
            "driver_cpu_s": [round(c, 3) for c in self.driver_cpu_s],
            "driver_busiest_core_util": round(busiest / self.duration_s, 3) if self.duration_s else 0.0,
        }

    def merge(self, part: ClientResult) -> None:
        self.connected += part.connected
        self.connect_failed += part.connect_failed
        self.connect_errors.extend(part.connect_errors)
        self.runs_ok += part.runs_ok
        self.runs_failed += part.runs_failed
        self.run_errors = dict(Counter(self.run_errors) + Counter(part.run_errors))
        self.events += part.events
        self.event_bytes += part.event_bytes
        self.missing_events += part.missing_events
        self.duplicate_events += part.duplicate_events
        self.stray_events += part.stray_events
        self.coalesced_events += part.coalesced_events
        self.accepted_s.extend(part.accepted_s)
        self.delivery_s.extend(part.delivery_s)
        self.driver_cpu_s.append(part.cpu_s)
        self.pinged += part.pinged
        self.alive += part.alive


class Fleet:
    """``processes`` driver processes sharing ``users``; connect, then go together.

    Use as: ``fleet.start()`` (returns once every client connected or failed),
    read whatever should be read before the load, ``fleet.go()``, then
    ``fleet.finish()`` for the merged result. ``close()`` always cleans up.
    """

    def __init__(self, spec: ClientSpec, processes: int, *, timeout_s: float = 600.0) -> None:
        self._ctx = mp.get_context("spawn")
        self._spec = spec
        self._n = max(1, min(processes, len(spec.users)))
        self._timeout_s = timeout_s
        self._ready: Any = self._ctx.Queue()
        self._results: Any = self._ctx.Queue()
        self._go: Any = self._ctx.Event()
        self._procs: list[BaseProcess] = []
        self.connected = 0
        self.connect_failed = 0

    def start(self) -> None:
        users = self._spec.users
        for index in range(self._n):
            part = replace(
                self._spec,
                users=tuple(users[index :: self._n]),
                sources=tuple(self._spec.sources[index :: self._n]),
            )
            proc = self._ctx.Process(
                target=_process_main,
                args=(part, self._ready, self._go, self._results, index),
                daemon=True,
            )
            proc.start()
            self._procs.append(proc)
        for _ in range(self._n):
            _, connected, failed = self._get(self._ready)
            self.connected += connected
            self.connect_failed += failed

    def _get(self, q: Any) -> Any:
        deadline = time.monotonic() + self._timeout_s
        while time.monotonic() < deadline:
            try:
                return q.get(timeout=1.0)
            except queue.Empty:
                if not any(p.is_alive() for p in self._procs):
                    raise RuntimeError("every driver process exited early") from None
        raise TimeoutError(f"driver processes did not answer within {self._timeout_s:.0f}s")

    def go(self) -> None:
        self._go.set()

    def finish(self) -> FleetResult:
        merged = FleetResult(users=len(self._spec.users))
        parts: list[ClientResult] = []
        for _ in range(self._n):
            _, part = self._get(self._results)
            parts.append(part)
            merged.merge(part)
        starts = [p.t_first_send for p in parts if p.t_first_send]
        ends = [p.t_last_event for p in parts if p.t_last_event]
        if starts and ends:
            merged.duration_s = max(ends) - min(starts)
        self.close()
        return merged

    def close(self) -> None:
        for proc in self._procs:
            proc.join(timeout=30)
            if proc.is_alive():
                proc.terminate()
                proc.join(timeout=5)
        self._procs.clear()


def run_load(spec: ClientSpec, processes: int, *, on_ready: Sequence[Any] = ()) -> FleetResult:
    """Connect every client, call each ``on_ready`` hook, run the load, merge the results."""
    fleet = Fleet(spec, processes)
    try:
        fleet.start()
        for hook in on_ready:
            hook()
        fleet.go()
        return fleet.finish()
    finally:
        fleet.close()
