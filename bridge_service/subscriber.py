"""One live subscription's bounded queue, shared by the backends.

The producer side (a publish on the memory bus, the pub/sub reader task on
the Redis bus) offers entries without ever waiting; the consumer side (the
subscription generator) awaits them. When the queue is full the subscription
is marked overflowed instead of blocking the producer; draining and a lost
backend end it the same way. The consumer then raises the matching
:mod:`bridge_service.bus` error carrying the last cursor it delivered.
"""

from __future__ import annotations

import asyncio
from collections import deque

from bridge_service.bus import BackendUnavailable, BusDraining, RunEvent, SubscriberOverflow
from bridge_service.event_ids import EventId

Entry = tuple[EventId, RunEvent]


class SubscriberQueue:
    """Bounded hand-off from a producer that never waits to one consumer."""

    __slots__ = ("_capacity", "_failure", "_queue", "_ready", "draining", "overflowed")

    def __init__(self, capacity: int) -> None:
        self._capacity = capacity
        self._queue: deque[Entry] = deque()
        self._ready = asyncio.Event()
        self._failure = ""
        self.overflowed = False
        self.draining = False

    @property
    def ended(self) -> bool:
        return self.overflowed or self.draining or bool(self._failure)

    def room(self) -> int:
        """How many more entries fit before the queue overflows."""
        return self._capacity - len(self._queue)

    def offer(self, entry: Entry) -> bool:
        """Queue ``entry``; on a full queue mark the subscriber overflowed and return False."""
        if len(self._queue) >= self._capacity:
            self.overflowed = True
            self._queue.clear()  # the events stay in the log; the subscriber resumes from it
            self._ready.set()
            return False
        self._queue.append(entry)
        self._ready.set()
        return True

    def overflow(self) -> None:
        """Mark the subscriber overflowed (it fell behind the retained log)."""
        self.overflowed = True
        self._queue.clear()
        self._ready.set()

    def end_draining(self) -> None:
        self.draining = True
        self._ready.set()

    def fail(self, reason: str) -> None:
        """End the subscription because the backend is gone (``BackendUnavailable``)."""
        self._failure = reason
        self._ready.set()

    async def next(self, cursor: EventId | str) -> Entry:
        """The next queued event; raises with ``cursor`` once ended."""
        while True:
            if self.overflowed:
                raise SubscriberOverflow(str(cursor))
            if self.draining:
                raise BusDraining(str(cursor))
            if self._failure:
                raise BackendUnavailable(str(cursor), self._failure)
            if self._queue:
                return self._queue.popleft()
            self._ready.clear()
            await self._ready.wait()
