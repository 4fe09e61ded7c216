"""One live subscription's bounded queue, shared by the backends.

The producer side (a publish on the memory bus, a shared Pub/Sub shard's
reader or the subscription's own catch-up read on the Redis bus) offers
entries without ever waiting; the consumer side (the
subscription generator) awaits them, and takes everything already queued at
once (up to its batch size). When the queue is full the subscription is
marked overflowed instead of blocking the producer; draining and a lost
backend end it the same way. The consumer then raises the matching
:mod:`bridge_service.bus` error carrying the last cursor it delivered.

Memory: an idle subscription is one small object (an empty list, no event
and no future until its consumer actually waits), because a bridge holds one
per connected WebSocket.
"""

from __future__ import annotations

import asyncio

from bridge_service.bus import BackendUnavailable, BusDraining, SubscriberOverflow
from bridge_service.event_ids import EventId

# An event id and the serialized event (see :class:`bridge_service.bus.Events`).
Entry = tuple[EventId, bytes]


class SubscriberQueue:
    """Bounded hand-off from a producer that never waits to one consumer."""

    __slots__ = ("_capacity", "_failure", "_head", "_items", "_poked", "_waiter", "draining", "overflowed")

    def __init__(self, capacity: int) -> None:
        self._capacity = capacity
        # Queued entries are _items[_head:]; taking moves _head instead of
        # shifting the list, and the list is emptied whenever it drains.
        self._items: list[Entry] = []
        self._head = 0
        self._waiter: asyncio.Future[None] | None = None
        self._failure = ""
        self._poked = False
        self.overflowed = False
        self.draining = False

    @property
    def ended(self) -> bool:
        return self.overflowed or self.draining or bool(self._failure)

    def __len__(self) -> int:
        return len(self._items) - self._head

    def room(self) -> int:
        """How many more entries fit before the queue overflows."""
        return self._capacity - len(self)

    def offer(self, entry: Entry) -> bool:
        """Queue ``entry``; on a full queue mark the subscriber overflowed and return False."""
        if len(self._items) - self._head >= self._capacity:
            self.overflow()
            return False
        self._items.append(entry)
        self._wake()
        return True

    def overflow(self) -> None:
        """Mark the subscriber overflowed (it fell behind the retained log)."""
        self.overflowed = True
        self._clear()  # the events stay in the log; the subscriber resumes from it
        self._wake()

    def poke(self) -> None:
        """Make the consumer's pending (or next) :meth:`take` return, empty if nothing is queued.

        The Redis bus pokes a consumer when events wait in Redis that it must
        fetch itself; the memory bus never does, so its takes never come back empty.
        """
        self._poked = True
        self._wake()

    def end_draining(self) -> None:
        self.draining = True
        self._wake()

    def fail(self, reason: str) -> None:
        """End the subscription because the backend is gone (``BackendUnavailable``)."""
        self._failure = reason
        self._wake()

    async def take(self, cursor: EventId | str, limit: int = 1) -> list[Entry]:
        """The oldest 1 to ``limit`` queued entries, waiting for one; raises with ``cursor`` once ended.

        Returns an empty list only after :meth:`poke`, when nothing is queued.
        """
        while True:
            if self.overflowed:
                raise SubscriberOverflow(str(cursor))
            if self.draining:
                raise BusDraining(str(cursor))
            if self._failure:
                raise BackendUnavailable(str(cursor), self._failure)
            items, head = self._items, self._head
            queued = len(items) - head
            if queued:
                if queued <= limit:
                    taken = items[head:] if head else items
                    self._items, self._head = [], 0
                    return taken
                taken = items[head : head + limit]
                head += limit
                if head >= self._capacity:  # compact, so the list stays within two queues' worth
                    del items[:head]
                    head = 0
                self._head = head
                return taken
            if self._poked:
                self._poked = False
                return []
            waiter = self._waiter = asyncio.get_running_loop().create_future()
            try:
                await waiter
            finally:
                self._waiter = None

    async def next(self, cursor: EventId | str) -> Entry:
        """The next queued entry; raises with ``cursor`` once ended."""
        [entry] = await self.take(cursor, 1)
        return entry

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _clear(self) -> None:
        self._items, self._head = [], 0
