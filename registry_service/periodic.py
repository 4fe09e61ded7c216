"""A background task of the registry that does one round of work every interval until stopped.

The death sweeper and the retention purger both run this way: a round that
fails is logged and tried again next interval (the task never dies of it), and
:meth:`Periodic.stop` lets the round in progress finish within a timeout
before it cancels the task, so a drain never waits longer than it allows.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable


class Periodic:
    """Calls ``work`` now and then every ``interval_s`` in one task, from :meth:`start` to :meth:`stop`."""

    def __init__(
        self,
        work: Callable[[], Awaitable[object]],
        *,
        interval_s: float,
        name: str,
        log: logging.Logger,
        failure: str,
    ) -> None:
        self._work = work
        self._log = log
        self._interval_s = interval_s
        self._name = name
        self._failure = failure
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def stopping(self) -> bool:
        """Whether :meth:`stop` was called: a long round checks it to end early."""
        return self._stopping.is_set()

    async def _loop(self) -> None:
        while not self._stopping.is_set():
            try:
                await self._work()
            except Exception:  # noqa: BLE001 - a failed round must not end the task
                self._log.exception(self._failure)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), timeout=self._interval_s)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._loop(), name=self._name)

    async def stop(self, *, timeout_s: float = 5.0) -> None:
        """Let the round in progress finish (up to ``timeout_s``), then end the task. Idempotent."""
        self._stopping.set()
        task = self._task
        if task is None:
            return
        done, _ = await asyncio.wait({task}, timeout=timeout_s)
        if not done:
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
