"""The live runs of this process, owned by the composition root.

The supervisor starts each run's engine in a background task (the run outlives
the ``StartRun`` call), finds a run by id for ``CancelRun`` (checking its
owner), forgets a run as soon as its engine ends, tracks the background
announcements of run ends, and drains on shutdown in two phases: runs may
finish until shortly before the grace period ends; then every run still
going is stopped and ended ``dead`` (``executor_lost``) by its own engine,
which knows the run's seq, and everything is flushed before the process exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass

from execution_service.engine import RunEngine
from runwire_common.errors import Unavailable
from runwire_common.owners import Owner


@dataclass(frozen=True)
class _LiveRun:
    engine: RunEngine
    task: asyncio.Task[None]


class RunSupervisor:
    """Tracks the engines (and announcements) running in this process."""

    def __init__(self, *, log: logging.Logger | logging.LoggerAdapter) -> None:  # type: ignore[type-arg]
        self._runs: dict[str, _LiveRun] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        # StartRun calls between their admission check and their run's start (see admitting).
        self._admissions: set[asyncio.Future[None]] = set()
        self._closed = False
        self._log = log
        self.runs_started = 0  # counters for metrics
        self.runs_finished = 0

    @property
    def closed(self) -> bool:
        return self._closed

    def __len__(self) -> int:
        return len(self._runs)

    def check_open(self) -> None:
        if self._closed:
            raise Unavailable("this executor is shutting down; retry on another replica")

    @contextlib.asynccontextmanager
    async def admitting(self) -> AsyncIterator[None]:
        """A ``StartRun`` from its admission check to its run's start: a drain waits for it.

        Refused at once (``Unavailable``) once the drain has closed the
        supervisor; otherwise the drain's first phase does not end while the
        call creates its run, so the run it starts is waited for as well.
        """
        self.check_open()
        admission: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._admissions.add(admission)
        try:
            yield
        finally:
            self._admissions.discard(admission)
            admission.set_result(None)

    def start(self, engine: RunEngine) -> None:
        """Run ``engine`` in the background until its run ends."""
        self.check_open()
        run_id = engine.run_id
        task = asyncio.create_task(engine.execute(), name=f"run:{run_id}")
        self._runs[run_id] = _LiveRun(engine, task)
        self.runs_started += 1
        task.add_done_callback(lambda done: self._forget(run_id, done))

    def track(self, task: asyncio.Task[None]) -> None:
        """Keep ``task`` (an announcement) until it ends; drains wait for it."""
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _forget(self, run_id: str, task: asyncio.Task[None]) -> None:
        live = self._runs.get(run_id)
        if live is not None and live.task is task:
            del self._runs[run_id]
            self.runs_finished += 1

    def find(self, run_id: str, *, owner: Owner) -> RunEngine | None:
        """The live engine of ``run_id`` if it runs here and belongs to ``owner``."""
        live = self._runs.get(run_id)
        if live is None or live.engine.owner != owner:
            return None
        return live.engine

    def _pending(self) -> list[asyncio.Future[None]]:
        return [live.task for live in self._runs.values()] + [*self._tasks, *self._admissions]

    async def drain(self, *, finish_within_s: float, stop_within_s: float) -> None:
        """Let live runs finish for ``finish_within_s``, then end the rest dead within ``stop_within_s``.

        ``StartRun`` calls already in flight when the drain began (see
        :meth:`admitting`) still start their runs, and those runs get the rest
        of that phase too: the wait takes in what was admitted meanwhile until
        nothing is left or the phase is over. The server refuses new calls.
        """
        loop = asyncio.get_running_loop()
        finish_by = loop.time() + finish_within_s
        pending = self._pending()
        if pending:
            self._log.info("draining runs", extra={"live_runs": len(self._runs)})
        while pending and (left := finish_by - loop.time()) > 0:
            await asyncio.wait(pending, timeout=left)
            pending = self._pending()
        self._closed = True
        remaining = list(self._runs.values())
        for live in remaining:
            live.engine.request_shutdown(stop_within_s)
        if remaining:
            self._log.warning("ending runs still going: executor lost", extra={"runs": len(remaining)})
        pending = self._pending()
        if not pending:
            return
        _, late = await asyncio.wait(pending, timeout=stop_within_s)
        if late:
            self._log.error("runs did not end within the grace period", extra={"runs": len(late)})

    async def abort(self) -> None:
        """Stop every remaining engine at once (after draining, or on a failed start)."""
        self._closed = True
        tasks = self._pending()
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
            self._log.warning("runs aborted", extra={"count": len(tasks)})
