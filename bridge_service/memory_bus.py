"""The in-memory :class:`~bridge_service.bus.EventBus`: one process, zero setup.

State is per bus instance, keyed by user id: a bounded list of retained
events, the id of the last event trimmed from it (the *floor*), the last id
assigned, the fencing state of the user's runs, and the set of live
subscribers. Every operation on that state is synchronous (no ``await``
inside), so on one event loop a publish is atomic: concurrent publishers of
one run are fenced one after the other, and a publish and the start of a
subscription never interleave.

Memory: a retained event is one ``bytes`` object, the serialized event whose
last field is its ``event_id`` (:func:`~bridge_service.wire.stored_event_id`
reads it back): about 300 bytes for a typical event, against some 1.4 KB for
a upb ``RunEvent`` message, and no object for the garbage collector to
traverse. At most ``log_capacity`` of them and at most
``log_max_bytes`` of serialized events per user (the newest event is always
kept); the fencing state of a user's runs, kept for ``run_state_hold_s``
after each run finished however many there are (a publisher may retry within
that window) and trimmed back to ``run_state_capacity`` runs after it, with
``run_state_max`` as the hard per-user bound (see :class:`_RunStates`; some
250 bytes a run with ``run_`` + 32 hex digit ids, so at most about 5 MB for a
user who finishes 20,000 runs within the hold), plus at most
``subscriber_queue`` queued references per live subscriber. Events older than
``retention_s`` are trimmed, and a user whose newest event is that old and who
has no subscriber is forgotten altogether (a sweep over all users at most
every :data:`SWEEP_INTERVAL_MS`, riding on publishes and subscribes), as Redis
expires such a user's keys. A user who never published keeps no state once
their last subscriber leaves.
"""

from __future__ import annotations

import bisect
import itertools
import logging
from collections import OrderedDict
from collections.abc import AsyncGenerator, Callable, Iterator, Sequence

from bridge_service import wire
from bridge_service.bus import (
    REPLAY_PAGE,
    BusDraining,
    BusItem,
    Events,
    Gap,
    LogReads,
    PublishResult,
    ReplayComplete,
    RunEvent,
    SubscriberOverflow,
    Verdict,
    fence,
)
from bridge_service.event_ids import EventId, next_event_id, parse_event_id, wall_clock_ms
from bridge_service.subscriber import SubscriberQueue
from runwire_common.errors import InvalidArgument
from runwire_common.names import TERMINAL_EVENT_TYPES
from runwire_common.owners import key_of

_log = logging.getLogger("runwire.bridge.memory")

SWEEP_INTERVAL_MS = 60_000  # at most this long between sweeps for users idle past the retention
COMPACT_AT = 1024  # trimmed entries a user's list may hold before it is compacted


class _RunStates:
    """Fencing state of one user's runs: (last seq, finished), held for the publishers' retry window.

    Bound by time, as on Redis: beyond ``capacity`` runs, only runs that
    finished more than ``hold_ms`` ago are forgotten (the one that finished
    longest ago first) — a publisher may still retry a younger one, and a
    forgotten run behaves as never seen (a late retry of its terminal event
    would be stored again). Live runs are never forgotten for the capacity.
    Beyond ``max_runs``, the hard bound, the oldest state goes whatever its
    age: finished runs first, then the least recently active live run.
    """

    __slots__ = ("_capacity", "_finished", "_hold_ms", "_live", "_max_runs")

    def __init__(self, capacity: int, hold_ms: int, max_runs: int) -> None:
        self._capacity = capacity
        self._hold_ms = hold_ms
        self._max_runs = max_runs
        self._live: OrderedDict[str, int] = OrderedDict()  # run → last seq, least recently active first
        # run → (last seq, when it finished in ms), finished longest ago first
        self._finished: OrderedDict[str, tuple[int, int]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._live) + len(self._finished)

    def state(self, run_id: str) -> tuple[int, bool]:
        finished = self._finished.get(run_id)
        if finished is not None:
            return finished[0], True
        return self._live.get(run_id, 0), False

    def record(self, run_id: str, seq: int, *, terminal: bool, now_ms: int) -> None:
        """Note the run's newest stored seq at ``now_ms`` (never earlier than a previous call's)."""
        if terminal:
            self._live.pop(run_id, None)
            self._finished[run_id] = (seq, now_ms)
        else:
            self._live[run_id] = seq
            self._live.move_to_end(run_id)
        finished = self._finished
        if len(self) > self._capacity and finished:
            cutoff = now_ms - self._hold_ms
            while len(self) > self._capacity and finished and next(iter(finished.values()))[1] <= cutoff:
                finished.popitem(last=False)
        while len(self) > self._max_runs:
            (finished if finished else self._live).popitem(last=False)


class _Retained:
    """A user's retained events, serialized, oldest first: a list read by index from ``head``.

    Not a ``deque``: a replay reads the log a page at a time, each page found
    by binary search for the last id delivered, so it needs cheap random access
    (a deque's index or ``islice`` walks from one end). Trimming moves
    ``head``; the list is compacted once the dropped part outweighs the rest.
    """

    __slots__ = ("head", "items")

    def __init__(self) -> None:
        self.items: list[bytes] = []
        self.head = 0

    def __len__(self) -> int:
        return len(self.items) - self.head

    def __iter__(self) -> Iterator[bytes]:
        return itertools.islice(self.items, self.head, None)

    def first(self) -> bytes:
        return self.items[self.head]

    def append(self, body: bytes) -> None:
        self.items.append(body)

    def popleft(self) -> bytes:
        items = self.items
        body = items[self.head]
        self.head += 1
        if self.head == len(items):
            self.items, self.head = [], 0
        elif self.head >= COMPACT_AT and 2 * self.head >= len(items):
            del items[: self.head]
            self.head = 0
        return body

    def page(self, after: EventId, *, upto: EventId, count: int) -> list[bytes]:
        """At most ``count`` events with ids above ``after`` and not above ``upto``, oldest first."""
        items = self.items
        # Ids increase along the log: binary search, reading only ~log2(n) ids.
        start = bisect.bisect_right(items, after, lo=self.head, key=wire.stored_event_id)
        stop = min(len(items), start + count)
        if stop > start and wire.stored_event_id(items[stop - 1]) > upto:
            stop = bisect.bisect_right(items, upto, lo=start, hi=stop, key=wire.stored_event_id)
        return items[start:stop]


class _UserLog:
    __slots__ = ("entries", "floor", "last", "runs", "size", "subscribers")

    def __init__(self, floor: EventId, runs: _RunStates) -> None:
        # Retained events, serialized, oldest first (ids read back with wire.stored_event_id).
        self.entries = _Retained()
        self.size = 0  # their total length
        # Id of the newest event no longer retained; every retained id is above it.
        self.floor = floor
        # Id of the newest event ever assigned (== floor before the first publish).
        self.last = floor
        self.subscribers: set[SubscriberQueue] = set()
        self.runs = runs

    def idle(self) -> bool:
        return not self.subscribers and not self.entries and not self.runs and self.last == self.floor

    def trim(self, *, capacity: int, max_bytes: int, older_than_ms: int) -> None:
        """Drop the oldest events beyond the bounds (keeping the newest) or older than the cutoff."""
        entries = self.entries
        dropped = b""
        while entries and (
            len(entries) > capacity
            or (self.size > max_bytes and len(entries) > 1)
            or wire.stored_event_id(entries.first()).ms < older_than_ms
        ):
            dropped = entries.popleft()
            self.size -= len(dropped)
        if dropped:
            self.floor = wire.stored_event_id(dropped)


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
        log_max_bytes: int = 4 * 1024 * 1024,
        subscriber_queue: int = 1_000,
        run_state_capacity: int = 1_000,
        retention_s: float = 86_400.0,
        max_batch: int = 256,
        run_state_hold_s: float = 600.0,
        run_state_max: int = 20_000,
        clock: Callable[[], int] = wall_clock_ms,
        replay_page: int = REPLAY_PAGE,
    ) -> None:
        if min(log_capacity, log_max_bytes, subscriber_queue, run_state_capacity, max_batch, replay_page) < 1:
            raise ValueError(
                "log_capacity, log_max_bytes, subscriber_queue, run_state_capacity, max_batch"
                " and replay_page must be at least 1"
            )
        if retention_s <= 0:
            raise ValueError("retention_s must be positive")
        if run_state_hold_s < 0 or run_state_max < run_state_capacity:
            raise ValueError(
                "run_state_hold_s must not be negative, run_state_max at least run_state_capacity"
            )
        self._log_capacity = log_capacity
        self._log_max_bytes = log_max_bytes
        self._subscriber_queue = subscriber_queue
        self._run_state_capacity = run_state_capacity
        self._run_state_hold_ms = int(run_state_hold_s * 1000)
        self._run_state_max = run_state_max
        self._retention_ms = max(1, int(retention_s * 1000))
        self._max_batch = max_batch
        self._replay_page = replay_page
        self.log_reads = LogReads()
        self._clock = clock
        self._boot = EventId(clock(), 0)
        self._users: dict[str, _UserLog] = {}
        self._next_sweep_ms = self._boot.ms + self._sweep_interval_ms()
        self._draining = False

    async def publish(self, user_id: str, events: Sequence[RunEvent]) -> PublishResult:
        for index, event in enumerate(events):
            if key_of(event) != user_id:
                raise InvalidArgument(f"events[{index}] is not owned by the publisher's owner")
        log = self._log(user_id)
        ids: list[str] = []
        seqs: list[int] = []
        for event in events:
            last_seq, finished = log.runs.state(event.run_id)
            verdict, seq = fence(event.seq, last_seq=last_seq, finished=finished)
            if not seq:
                ids.append("")
                seqs.append(0)
                continue
            if verdict is Verdict.STORE_AFTER_GAP:
                _log.warning(
                    "seq gap in published events",
                    extra={
                        "user_id": user_id,
                        "run_id": event.run_id,
                        "seq": seq,
                        "expected_seq": last_seq + 1,
                    },
                )
            event_id = next_event_id(log.last, self._clock())
            log.runs.record(
                event.run_id, seq, terminal=event.type in TERMINAL_EVENT_TYPES, now_ms=event_id.ms
            )
            body = wire.stored_event(event, event_id, seq)
            log.last = event_id
            log.entries.append(body)
            log.size += len(body)
            if log.subscribers:
                entry = (event_id, body)
                for subscriber in tuple(log.subscribers):
                    if not subscriber.offer(entry):
                        log.subscribers.discard(subscriber)
            ids.append(str(event_id))
            seqs.append(seq)
        now = log.last.ms  # the clock as of the newest id, which never goes back
        log.trim(
            capacity=self._log_capacity,
            max_bytes=self._log_max_bytes,
            older_than_ms=now - self._retention_ms,
        )
        self._sweep(now)
        return PublishResult(tuple(ids), tuple(seqs))

    async def subscribe(
        self, user_id: str, *, after: str = "", max_batch: int = 1
    ) -> AsyncGenerator[BusItem, None]:
        cursor = parse_event_id(after) if after else None
        limit = max(1, min(max_batch, self._max_batch))
        now = self._clock()
        self._sweep(now)
        log = self._log(user_id)
        log.trim(
            capacity=self._log_capacity,
            max_bytes=self._log_max_bytes,
            older_than_ms=now - self._retention_ms,
        )
        subscriber = SubscriberQueue(self._subscriber_queue)
        # Register and note where the replay ends with no await in between: every
        # event up to ``end`` is replayed from the log, every later one is queued.
        log.subscribers.add(subscriber)
        end = log.last
        try:
            if self._draining:
                raise BusDraining(after or str(log.last))
            gap, last = self._plan(log, after, cursor)
            if gap is not None:
                yield gap
            replayed = 0
            while last < end:
                if last < log.floor:
                    # Trimmed between two pages: the resumed subscription reports the gap.
                    raise SubscriberOverflow(str(last))
                page = log.entries.page(last, upto=end, count=self._replay_page)
                self.log_reads.count(len(page))
                if not page:
                    break
                for start in range(0, len(page), limit):
                    chunk = page[start : start + limit]
                    last = wire.stored_event_id(chunk[-1])
                    yield Events(chunk, last)
                replayed += len(page)
            yield ReplayComplete(replayed=replayed, resume_after=str(last))
            while True:
                batch = await subscriber.take(last, limit)
                if batch[0][0] <= last:  # already replayed (defensive: the queue starts after ``end``)
                    batch = [entry for entry in batch if entry[0] > last]
                    if not batch:
                        continue
                last = batch[-1][0]
                yield Events([body for _, body in batch], last)
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
        return [str(wire.stored_event_id(body)) for body in log.entries] if log is not None else []

    async def drain(self) -> None:
        self._draining = True
        for log in self._users.values():
            for subscriber in log.subscribers:
                subscriber.end_draining()

    async def close(self) -> None:
        await self.drain()
        self._users.clear()

    def _sweep_interval_ms(self) -> int:
        return max(1, min(SWEEP_INTERVAL_MS, self._retention_ms // 4))

    def _sweep(self, now: int) -> None:
        """Forget users whose newest event is older than the retention and who have no subscriber."""
        if now < self._next_sweep_ms:
            return
        self._next_sweep_ms = now + self._sweep_interval_ms()
        cutoff = now - self._retention_ms
        for user_id, log in list(self._users.items()):
            if log.last.ms >= cutoff:
                continue
            if log.subscribers:
                log.trim(capacity=self._log_capacity, max_bytes=self._log_max_bytes, older_than_ms=cutoff)
            else:
                del self._users[user_id]

    def _log(self, user_id: str) -> _UserLog:
        log = self._users.get(user_id)
        if log is None:
            runs = _RunStates(self._run_state_capacity, self._run_state_hold_ms, self._run_state_max)
            log = self._users[user_id] = _UserLog(self._boot, runs)
        return log

    @staticmethod
    def _plan(log: _UserLog, after: str, cursor: EventId | None) -> tuple[Gap | None, EventId]:
        """Where to replay from for ``cursor``: (gap or None, the position the replay reads after).

        * no cursor: nothing; live events follow the newest id assigned so far;
        * cursor at or above the floor and not beyond the newest id: the
          retained events after it;
        * cursor below the floor (trimmed, or from before this process) or
          beyond the newest id ever assigned (another process's or another
          user's cursor): a gap, then every retained event. Replaying from the
          floor can repeat nothing the caller legitimately saw from *this* log,
          while trusting an unknown cursor could silently skip events.
        """
        if cursor is None:
            return None, log.last
        if cursor < log.floor or cursor > log.last:
            oldest = str(wire.stored_event_id(log.entries.first())) if log.entries else ""
            return Gap(requested_after=after, oldest_event_id=oldest), log.floor
        return None, cursor
