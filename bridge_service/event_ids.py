"""Event ids: ``"<ms>-<n>"`` cursors, like Redis stream ids.

An id is a millisecond timestamp and a sequence number within that
millisecond. Ids are compared numerically as ``(ms, n)`` tuples, never as
strings (``"10-0" > "9-0"``). :func:`next_event_id` never lets the
millisecond part go backwards, so ids stay strictly increasing per user even
when the wall clock steps back.
"""

from __future__ import annotations

import re
import time
from typing import NamedTuple

from runwire_common.errors import InvalidArgument

# Redis stream ids are two unsigned 64-bit numbers; 20 digits is enough and
# keeps a hostile cursor from becoming a huge integer.
_ID_PATTERN = re.compile(r"(0|[1-9][0-9]{0,19})-(0|[1-9][0-9]{0,19})")
_MAX_PART = 2**64 - 1


class EventId(NamedTuple):
    """A parsed event id; tuple order is the id order."""

    ms: int
    n: int

    def __str__(self) -> str:
        return f"{self.ms}-{self.n}"


def parse_event_id(text: str, *, field: str = "after") -> EventId:
    """Parse ``"<ms>-<n>"`` or raise :class:`InvalidArgument` naming ``field``."""
    match = _ID_PATTERN.fullmatch(text)
    if match is None:
        raise InvalidArgument(f"{field} must be an event_id like '1700000000000-0', got {text[:64]!r}")
    ms, n = int(match.group(1)), int(match.group(2))
    if ms > _MAX_PART or n > _MAX_PART:
        raise InvalidArgument(f"{field} is out of range")
    return EventId(ms, n)


def next_event_id(last: EventId, now_ms: int) -> EventId:
    """The id after ``last`` at wall-clock time ``now_ms``.

    A new millisecond starts at ``n = 0``; within the same millisecond, or when
    the clock went back, keep ``last.ms`` and bump ``n``.
    """
    if now_ms > last.ms:
        return EventId(now_ms, 0)
    return EventId(last.ms, last.n + 1)


def wall_clock_ms() -> int:
    """Milliseconds since the epoch; the default clock of the buses."""
    return time.time_ns() // 1_000_000
