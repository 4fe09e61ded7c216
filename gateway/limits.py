"""Edge limits: per-connection message rate and per-user connection count.

Both are plain instance state owned by one gateway server (or one connection),
never module state, so two gateways in one process do not share counts.
"""

from __future__ import annotations

import time
from bisect import bisect_right
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
        # Accepted times, oldest first. A list sized to what is in the window (a
        # deque reserves ~760 bytes up front, and most connections sit idle).
        self._accepted: list[float] = []

    def allow(self) -> bool:
        now = self._clock()
        accepted = self._accepted
        expired = bisect_right(accepted, now - self._window_s)
        if expired:
            del accepted[:expired]
        if len(accepted) >= self._limit:
            return False
        accepted.append(now)
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


class InFlightLimit:
    """At most ``limit`` calls of one kind in flight on one gateway; refuse, never queue.

    Used for ``StartRun``: under overload, queued calls would only run into
    their deadline (``unavailable`` after 5 s); refusing at once with
    ``resource_exhausted`` tells the client what happened while the gateway
    still has room for the calls it admitted.
    """

    __slots__ = ("_in_flight", "_limit")

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._in_flight = 0

    @property
    def limit(self) -> int:
        return self._limit

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def try_acquire(self) -> bool:
        if self._in_flight >= self._limit:
            return False
        self._in_flight += 1
        return True

    def release(self) -> None:
        self._in_flight -= 1
