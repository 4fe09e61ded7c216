"""The in-memory :class:`~bridge_service.bus.EventBus`: one process, zero setup.

State is per bus instance, keyed by user id: a bounded deque of retained
events, the id of the last event trimmed from it (the *floor*), the last id
assigned, and the set of live subscribers. Every operation on that state is
synchronous (no ``await`` inside), so on one event loop a publish and the
start of a subscription never interleave.

Memory: at most ``log_capacity`` events per user that ever published, plus at
most ``subscriber_queue`` queued references per live subscriber. A user who
never published keeps no state once their last subscriber leaves. Logs of
users who did publish are kept for resume for the life of the process; the
per-user bound is the only cap for now (the Redis backend trims by age too).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncGenerator, Callable, Sequence

from bridge_service.bus import BusDraining, BusItem, Gap, ReplayComplete, RunEvent, SubscriberOverflow
from bridge_service.event_ids import EventId, next_event_id, parse_event_id, wall_clock_ms
from runwire_common.errors import InvalidArgument

_Entry = tuple[EventId, RunEvent]


class _Subscriber:
    """One live subscription's bounded queue; filled without ever waiting."""

    __slots__ = ("_capacity", "_queue", "_ready", "draining", "overflowed")

    def __init__(self, capacity: int) -> None:
        self._capacity = capacity
        self._queue: deque[_Entry] = deque()
        self._ready = asyncio.Event()
        self.overflowed = False
        self.draining = False

    def offer(self, entry: _Entry) -> bool:
        """Queue ``entry``; on a full queue mark the subscriber overflowed and return False."""
        if len(self._queue) >= self._capacity:
            self.overflowed = True
            self._queue.clear()  # the events stay in the log; the subscriber resumes from it
            self._ready.set()
            return False
        self._queue.append(entry)
        self._ready.set()
        return True

    def end_draining(self) -> None:
        self.draining = True
        self._ready.set()

    async def next(self, cursor: EventId) -> _Entry:
        """The next queued event; raises with ``cursor`` once overflowed or draining."""
        while True:
            if self.overflowed:
                raise SubscriberOverflow(str(cursor))
            if self.draining:
                raise BusDraining(str(cursor))
            if self._queue:
                return self._queue.popleft()
            self._ready.clear()
            await self._ready.wait()


class _UserLog:
    __slots__ = ("entries", "floor", "last", "subscribers")

    def __init__(self, floor: EventId) -> None:
        self.entries: deque[_Entry] = deque()
        # Id of the newest event no longer retained; every retained id is above it.
        self.floor = floor
        # Id of the newest event ever assigned (== floor before the first publish).
        self.last = floor
        self.subscribers: set[_Subscriber] = set()

    def idle(self) -> bool:
        return not self.subscribers and not self.entries and self.last == self.floor


class MemoryEventBus:
    """Per-user bounded logs and live fan-out inside one process.

    ``clock`` returns wall-clock milliseconds; tests pass a frozen or
    backwards-running one. The bus's start time is every user's initial
    floor, so a cursor from before this process started is reported as a gap.
    """

    def __init__(
        self,
        *,
        log_capacity: int = 10_000,
        subscriber_queue: int = 1_000,
        clock: Callable[[], int] = wall_clock_ms,
    ) -> None:
        if log_capacity < 1 or subscriber_queue < 1:
            raise ValueError("log_capacity and subscriber_queue must be at least 1")
        self._log_capacity = log_capacity
        self._subscriber_queue = subscriber_queue
        self._clock = clock
        self._boot = EventId(clock(), 0)
        self._users: dict[str, _UserLog] = {}
        self._draining = False

    async def publish(self, user_id: str, events: Sequence[RunEvent]) -> list[str]:
        for index, event in enumerate(events):
            if event.user_id != user_id:
                raise InvalidArgument(f"events[{index}].user_id is not the publisher's user_id")
        log = self._log(user_id)
        ids: list[str] = []
        for event in events:
            event_id = next_event_id(log.last, self._clock())
            stored = RunEvent()
            stored.CopyFrom(event)
            stored.event_id = str(event_id)
            log.last = event_id
            if len(log.entries) >= self._log_capacity:
                log.floor = log.entries.popleft()[0]
            entry = (event_id, stored)
            log.entries.append(entry)
            for subscriber in tuple(log.subscribers):
                if not subscriber.offer(entry):
                    log.subscribers.discard(subscriber)
            ids.append(str(event_id))
        return ids

    async def subscribe(self, user_id: str, *, after: str = "") -> AsyncGenerator[BusItem, None]:
        cursor = parse_event_id(after) if after else None
        log = self._log(user_id)
        subscriber = _Subscriber(self._subscriber_queue)
        # Register before taking the replay snapshot, with no await in between:
        # every event published from now on is either in the snapshot or queued.
        log.subscribers.add(subscriber)
        try:
            if self._draining:
                raise BusDraining(after or str(log.last))
            gap, replay, last = self._plan(log, after, cursor)
            if gap is not None:
                yield gap
            for event_id, event in replay:
                yield event
                last = event_id
            yield ReplayComplete(replayed=len(replay), resume_after=str(last))
            while True:
                event_id, event = await subscriber.next(last)
                if event_id <= last:  # already replayed
                    continue
                yield event
                last = event_id
        finally:
            log.subscribers.discard(subscriber)
            if log.idle() and self._users.get(user_id) is log:
                del self._users[user_id]

    def subscriber_count(self, user_id: str) -> int:
        log = self._users.get(user_id)
        return len(log.subscribers) if log is not None else 0

    def retained(self, user_id: str) -> list[str]:
        """The event ids retained for ``user_id``, oldest first (introspection)."""
        log = self._users.get(user_id)
        return [str(event_id) for event_id, _ in log.entries] if log is not None else []

    async def drain(self) -> None:
        self._draining = True
        for log in self._users.values():
            for subscriber in log.subscribers:
                subscriber.end_draining()

    async def close(self) -> None:
        await self.drain()
        self._users.clear()

    def _log(self, user_id: str) -> _UserLog:
        log = self._users.get(user_id)
        if log is None:
            log = self._users[user_id] = _UserLog(self._boot)
        return log

    @staticmethod
    def _plan(log: _UserLog, after: str, cursor: EventId | None) -> tuple[Gap | None, list[_Entry], EventId]:
        """What to replay for ``cursor``: (gap or None, entries, position before them).

        * no cursor: nothing; live events follow the newest id assigned so far;
        * cursor at or above the floor and not beyond the newest id: the
          retained entries after it;
        * cursor below the floor (trimmed, or from before this process) or
          beyond the newest id ever assigned (another process's or another
          user's cursor): a gap, then every retained entry. Replaying from the
          floor can repeat nothing the caller legitimately saw from *this* log,
          while trusting an unknown cursor could silently skip events.
        """
        if cursor is None:
            return None, [], log.last
        if cursor < log.floor or cursor > log.last:
            oldest = str(log.entries[0][0]) if log.entries else ""
            return Gap(requested_after=after, oldest_event_id=oldest), list(log.entries), log.floor
        replay: list[_Entry] = []
        for entry in reversed(log.entries):
            if entry[0] <= cursor:
                break
            replay.append(entry)
        replay.reverse()
        return None, replay, cursor
