"""The live runs of this process, owned by the composition root.

The supervisor starts each run's engine in a background task (the run outlives
the ``StartRun`` call), finds a run by id for ``CancelRun`` (checking its
owner), forgets a run as soon as its engine ends, and drains on shutdown: new
runs are refused, running ones get a grace period to finish, the rest are
cancelled (and so still end with a terminal event).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from execution_service.engine import RunEngine
from runwire_common.errors import Unavailable

SHUTDOWN_REASON = "the executor is shutting down"


@dataclass(frozen=True)
class _LiveRun:
    engine: RunEngine
    task: asyncio.Task[None]


class RunSupervisor:
    """Tracks the engines running in this process, by run id."""

    def __init__(self, *, log: logging.Logger | logging.LoggerAdapter) -> None:  # type: ignore[type-arg]
        self._runs: dict[str, _LiveRun] = {}
        self._closed = False
        self._log = log

    @property
    def closed(self) -> bool:
        return self._closed

    def __len__(self) -> int:
        return len(self._runs)

    def check_open(self) -> None:
        if self._closed:
            raise Unavailable("this executor is shutting down; retry on another replica")

    def start(self, engine: RunEngine) -> None:
        """Run ``engine`` in the background until its run ends."""
        self.check_open()
        run_id = engine.run_id
        task = asyncio.create_task(engine.execute(), name=f"run:{run_id}")
        self._runs[run_id] = _LiveRun(engine, task)
        task.add_done_callback(lambda done: self._forget(run_id, done))

    def _forget(self, run_id: str, task: asyncio.Task[None]) -> None:
        live = self._runs.get(run_id)
        if live is not None and live.task is task:
            del self._runs[run_id]

    def find(self, run_id: str, *, user_id: str) -> RunEngine | None:
        """The live engine of ``run_id`` if it runs here and belongs to ``user_id``."""
        live = self._runs.get(run_id)
        if live is None or live.engine.user_id != user_id:
            return None
        return live.engine

    async def drain(self, *, finish_within_s: float, cancel_grace_s: float) -> None:
        """Refuse new runs, let live ones finish, then cancel the rest."""
        self._closed = True
        tasks = [live.task for live in self._runs.values()]
        if not tasks:
            return
        self._log.info("draining runs", extra={"live_runs": len(tasks)})
        _, pending = (
            await asyncio.wait(tasks, timeout=finish_within_s) if finish_within_s > 0 else ((), tasks)
        )
        if not pending:
            return
        for live in list(self._runs.values()):
            live.engine.request_cancel(SHUTDOWN_REASON)
        await asyncio.wait(list(pending), timeout=cancel_grace_s + 1.0)

    async def abort(self) -> None:
        """Stop every remaining engine at once (after draining, or on a failed start)."""
        self._closed = True
        tasks = [live.task for live in self._runs.values()]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
            self._log.warning("runs aborted", extra={"count": len(tasks)})
