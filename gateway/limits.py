"""Edge limits: per-connection message rate and per-user connection count.

Both are plain instance state owned by one gateway server (or one connection),
never module state, so two gateways in one process do not share counts.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable


class SlidingWindowLimiter:
    """At most ``limit`` accepted events in any ``window_s`` seconds.

    Refused events do not consume the budget, so a client that was told
    ``rate_limited`` recovers as soon as its oldest accepted message leaves the
    window.
    """

    def __init__(
        self,
        limit: int,
        window_s: float,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._limit = limit
        self._window_s = window_s
        self._clock = clock
        self._accepted: deque[float] = deque()

    def allow(self) -> bool:
        now = self._clock()
        horizon = now - self._window_s
        while self._accepted and self._accepted[0] <= horizon:
            self._accepted.popleft()
        if len(self._accepted) >= self._limit:
            return False
        self._accepted.append(now)
        return True


class ConnectionSlots:
    """Counts open (and opening) connections per user against a fixed limit."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._counts: dict[str, int] = {}

    @property
    def limit(self) -> int:
        return self._limit

    def acquire(self, user_id: str) -> bool:
        """Reserve a slot for ``user_id``; ``False`` when the user is at the limit."""
        count = self._counts.get(user_id, 0)
        if count >= self._limit:
            return False
        self._counts[user_id] = count + 1
        return True

    def release(self, user_id: str) -> None:
        count = self._counts.get(user_id, 0) - 1
        if count > 0:
            self._counts[user_id] = count
        else:
            self._counts.pop(user_id, None)

    def count(self, user_id: str) -> int:
        return self._counts.get(user_id, 0)

    def total(self) -> int:
        return sum(self._counts.values())
