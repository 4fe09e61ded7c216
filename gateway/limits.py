"""Edge limits kept in one process: a sliding window, and a bound on calls in flight.

Plain instance state owned by one gateway server (or one connection), never
module state, so two gateways in one process do not share counts. The
per-user limits that hold across replicas are in :mod:`gateway.user_limits`.
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

    def refund(self) -> None:
        """Take back the last accepted event (a later check refused what it stood for)."""
        if self._accepted:
            self._accepted.pop()

    def wait_s(self) -> float:
        """Seconds until the oldest accepted event leaves the window (0 when there is room)."""
        if len(self._accepted) < self._limit:
            return 0.0
        return max(0.0, self._accepted[0] + self._window_s - self._clock())

    def idle(self) -> bool:
        """Whether nothing accepted is left in the window (the limiter may be dropped)."""
        return not self._accepted or self._accepted[-1] <= self._clock() - self._window_s


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
