"""Reconnect delays: exponential backoff with full jitter.

Full jitter (a uniformly random delay between 0 and the exponential cap)
spreads the reconnects of many clients that lost the same gateway at the same
moment, instead of bringing them back in synchronized waves.
"""

from __future__ import annotations

import random
from collections.abc import Callable


class Backoff:
    """The delay before each attempt of one reconnect: ``uniform(0, min(maximum, initial * 2**n))``.

    ``rand`` returns a float in [0, 1); tests pass a fake one.
    """

    def __init__(
        self, *, initial_s: float = 0.25, maximum_s: float = 10.0, rand: Callable[[], float] = random.random
    ) -> None:
        if initial_s <= 0 or maximum_s < initial_s:
            raise ValueError("the backoff needs 0 < initial_s <= maximum_s")
        self.initial_s = initial_s
        self.maximum_s = maximum_s
        self._rand = rand
        self.attempt = 0

    def cap(self, attempt: int) -> float:
        """The largest delay before attempt number ``attempt`` (0-based)."""
        # min() before the power would overflow a float after ~1000 attempts.
        return min(self.maximum_s, self.initial_s * 2.0 ** min(attempt, 64))

    def next_delay(self) -> float:
        """The delay before the next attempt; each call counts one attempt."""
        delay = self._rand() * self.cap(self.attempt)
        self.attempt += 1
        return delay

    def reset(self) -> None:
        """A connection succeeded: the next reconnect starts from the shortest delay again."""
        self.attempt = 0
