"""The event-bus interface every backend implements (memory now, Redis later).

A bus keeps one ordered, bounded log per user and fans new events out to that
user's live subscribers. The servicer only talks to this interface, so the
backend is a configuration choice.

Subscription protocol — :meth:`EventBus.subscribe` yields, in this order:

1. at most one :class:`Gap`, when events after the cursor can no longer be
   replayed (trimmed, lost in a restart, or the cursor is unknown to the bus);
2. the retained events after the cursor (:class:`RunEvent`, ``event_id`` set);
3. exactly one :class:`ReplayComplete` with the number of replayed events;
4. live events, in ``event_id`` order, until the caller stops iterating or the
   subscription ends with :class:`SubscriberOverflow` (it fell behind) or
   :class:`BusDraining` (the process is shutting down). Both carry the cursor
   to resume from, which is the last event the subscription delivered.

The subscription is an async generator: callers close it when they stop
early (``contextlib.aclosing``) so it is unregistered at once.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass
from typing import Protocol

from runwire.common.v1 import event_pb2
from runwire_common.errors import ResourceExhausted, Unavailable

RunEvent = event_pb2.RunEvent


@dataclass(frozen=True, slots=True)
class Gap:
    """Events after ``requested_after`` are no longer retained."""

    requested_after: str
    oldest_event_id: str  # empty when nothing is retained


@dataclass(frozen=True, slots=True)
class ReplayComplete:
    """The replay is over; live events follow."""

    replayed: int
    resume_after: str  # a cursor that resumes exactly after this point


BusItem = RunEvent | Gap | ReplayComplete


class SubscriberOverflow(ResourceExhausted):
    """The subscriber's queue filled up; it must resume from ``cursor``."""

    def __init__(self, cursor: str) -> None:
        super().__init__(f"subscriber fell behind; resume after {cursor}")
        self.cursor = cursor


class BusDraining(Unavailable):
    """The bridge is shutting down; resume from ``cursor`` on another replica."""

    def __init__(self, cursor: str) -> None:
        super().__init__(f"bridge is draining; resume after {cursor}")
        self.cursor = cursor


class EventBus(Protocol):
    """Per-user, ordered, bounded, resumable event log with live fan-out."""

    async def publish(self, user_id: str, events: Sequence[RunEvent]) -> list[str]:
        """Append ``events`` (all owned by ``user_id``) in order; return their new event ids.

        The stored events are copies with ``event_id`` set; ``events`` is not
        modified. Either every event is appended or none is.
        """
        ...

    def subscribe(self, user_id: str, *, after: str = "") -> AsyncGenerator[BusItem, None]:
        """Replay ``user_id``'s events after ``after`` then follow live ones (see module doc).

        ``after`` is validated when iteration starts (``InvalidArgument``).
        """
        ...

    def subscriber_count(self, user_id: str) -> int:
        """Live subscriptions of ``user_id`` held by this bus instance."""
        ...

    async def drain(self) -> None:
        """End every live subscription with :class:`BusDraining`; refuse new ones.

        Publishing keeps working, so in-flight runs can still record events.
        """
        ...

    async def close(self) -> None:
        """Release the backend's resources (after :meth:`drain`)."""
        ...
