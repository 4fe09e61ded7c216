"""Retrying calls to a peer that is briefly unavailable (a restart, a failover).

Only ``Unavailable`` (which includes deadline exceeded) is retried: the peers'
writes are idempotent where it matters (the bridge per ``(run_id, seq)``, the
registry's transitions refuse a second move out of a terminal state), so a
retried call never duplicates anything. Other errors are answers, not outages.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from runwire_common.errors import Unavailable

T = TypeVar("T")


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff from ``initial_s`` up to ``max_s``, for ``budget_s`` in total."""

    budget_s: float
    initial_s: float = 0.2
    max_s: float = 2.0


async def retry_unavailable(
    call: Callable[[], Awaitable[T]],
    backoff: Backoff,
    *,
    on_retry: Callable[[Unavailable, float], None] | None = None,
) -> T:
    """Await ``call()``; while it raises ``Unavailable`` retry it within the budget.

    The last ``Unavailable`` is raised once the budget is spent.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + backoff.budget_s
    delay = backoff.initial_s
    while True:
        try:
            return await call()
        except Unavailable as exc:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise
            pause = min(delay, remaining)
            if on_retry is not None:
                on_retry(exc, pause)
            await asyncio.sleep(pause)
            delay = min(delay * 2, backoff.max_s)
