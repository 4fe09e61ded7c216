"""The event-bus interface every backend implements (``memory`` and ``redis``).

A bus keeps one ordered, bounded log per user and fans new events out to that
user's live subscribers. The servicer only talks to this interface, so the
backend is a configuration choice. A "user" here is an owner: the ``user_id``
argument of every method is :func:`runwire_common.owners.owner_key` of the
events' ``(tenant_id, user_id)`` (the plain user id for an owner without a tenant).

Publishing is fenced per run (see :func:`fence`): ``seq = 0`` takes the run's
next seq, an event whose seq the run already has is ignored (a retried
``Publish``), and so is anything after the run's terminal event. A seq beyond
the next one is accepted (a gap upstream) and reported to the caller's log.
Backends keep this per-run state atomically per user, for a bounded number of
runs per user.

Subscription protocol — :meth:`EventBus.subscribe` yields, in this order:

1. at most one :class:`Gap`, when events after the cursor can no longer be
   replayed (trimmed, lost in a restart, or the cursor is unknown to the bus);
2. the retained events after the cursor, as :class:`Events`;
3. exactly one :class:`ReplayComplete` with the number of replayed events;
4. live :class:`Events`, in ``event_id`` order, until the caller stops iterating or the
   subscription ends with :class:`SubscriberOverflow` (it fell behind),
   :class:`BusDraining` (the process is shutting down) or
   :class:`BackendUnavailable` (the backing store went away). All carry the
   cursor to resume from, which is the last event the subscription delivered
   (or the requested cursor when none was delivered yet).

Events come as :class:`Events`: up to ``max_batch`` consecutive events that
were already waiting (a replay page, the subscriber's queued live events),
never held back to fill a batch. Each is the serialized ``RunEvent`` (wire
format, ``event_id`` and ``seq`` set): it is serialized once when stored and
framed into ``SubscribeResponse`` bytes without being parsed again, and a
serialized event costs a fraction of the memory of a upb message object.

Replay reads the log in pages of at most :data:`REPLAY_PAGE` events, one page
when the caller asks for more than the previous one held: a resume from a very
old cursor never copies the whole log, and a caller that stops pulling (no
credit) stops the reads too. If the events after the last one delivered were
trimmed between two pages, the subscription ends with
:class:`SubscriberOverflow` and that cursor, and the resumed subscription
reports the :class:`Gap`. Each bus counts its reads in ``log_reads``
(:class:`LogReads`).

The subscription is an async generator: callers close it when they stop
early (``contextlib.aclosing``) so it is unregistered at once.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import NamedTuple, Protocol

from bridge_service.event_ids import EventId
from runwire.common.v1 import event_pb2
from runwire_common.errors import ResourceExhausted, Unavailable

RunEvent = event_pb2.RunEvent

REPLAY_PAGE = 256  # at most this many events per read of a user's log (replay, catching up)


class Verdict(Enum):
    """What fencing decided for one published event."""

    STORE = "store"  # the run's next seq
    STORE_AFTER_GAP = "gap"  # seq beyond the next one: stored, the hole is logged
    DUPLICATE = "duplicate"  # the run already has this seq: ignored
    AFTER_TERMINAL = "after_terminal"  # the run already ended: ignored


def fence(seq: int, *, last_seq: int, finished: bool) -> tuple[Verdict, int]:
    """Decide one event against its run's state: the verdict and the seq to store (0 if ignored).

    ``last_seq`` is the highest seq stored for the run (0 for a run never
    seen) and ``finished`` whether its terminal event is stored. The Redis
    backend applies the same rules in Lua.
    """
    if finished:
        return Verdict.AFTER_TERMINAL, 0
    if seq == 0:
        return Verdict.STORE, last_seq + 1
    if seq <= last_seq:
        return Verdict.DUPLICATE, 0
    return (Verdict.STORE if seq == last_seq + 1 else Verdict.STORE_AFTER_GAP), seq


@dataclass(frozen=True, slots=True)
class PublishResult:
    """Per published event, in order: its event id and stored seq ("" and 0 when ignored)."""

    event_ids: tuple[str, ...]
    seqs: tuple[int, ...]

    @property
    def stored(self) -> tuple[str, ...]:
        """The ids of the events actually stored."""
        return tuple(event_id for event_id in self.event_ids if event_id)


@dataclass(slots=True)
class LogReads:
    """What a bus read from its users' logs to replay or catch up: reads, events, the largest read."""

    reads: int = 0
    events: int = 0
    largest: int = 0

    def count(self, events: int) -> None:
        self.reads += 1
        self.events += events
        if events > self.largest:
            self.largest = events


class Events(NamedTuple):
    """Consecutive events of the user's log, oldest first, each a serialized ``RunEvent``.

    ``last`` is the id of the newest one (the cursor right after the batch).
    A NamedTuple: one is made per delivered batch, so it is kept cheap.
    """

    wire: Sequence[bytes]
    last: EventId

    def parse(self) -> list[RunEvent]:
        """The events as messages (tests and tools; the servicer forwards the bytes)."""
        return [RunEvent.FromString(body) for body in self.wire]


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


BusItem = Events | Gap | ReplayComplete


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


class BackendUnavailable(Unavailable):
    """The backing store is unreachable or lost its data; resume from ``cursor`` later."""

    def __init__(self, cursor: str, reason: str = "event store is unavailable") -> None:
        super().__init__(f"{reason}; resume after {cursor}" if cursor else f"{reason}; retry")
        self.cursor = cursor


# Every way a subscription ends with a resume cursor (each has ``.cursor``).
SUBSCRIPTION_ENDINGS = (SubscriberOverflow, BusDraining, BackendUnavailable)


class EventBus(Protocol):
    """Per-user, ordered, bounded, resumable event log with live fan-out."""

    async def publish(self, user_id: str, events: Sequence[RunEvent]) -> PublishResult:
        """Fence and append ``events`` (all owned by ``user_id``) in order, atomically.

        The stored events are copies with ``event_id`` and ``seq`` set;
        ``events`` is not modified. The whole batch is decided and stored in
        one step: a concurrent publish for the same user never interleaves
        with it. Raises ``Unavailable`` when the backing store is unreachable
        (then nothing, or — for a reply lost in transit — everything, was
        stored; retrying is safe because of the fencing).
        """
        ...

    def subscribe(
        self, user_id: str, *, after: str = "", max_batch: int = 1
    ) -> AsyncGenerator[BusItem, None]:
        """Replay ``user_id``'s events after ``after`` then follow live ones (see module doc).

        Every :class:`Events` item holds between 1 and ``max(1, max_batch)``
        events. ``after`` is validated when iteration starts (``InvalidArgument``).
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
