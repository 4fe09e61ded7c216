"""The Redis :class:`~bridge_service.bus.EventBus`: a Stream per user, Pub/Sub for live fan-out.

Any replica serves any user: every replica publishes into and reads from the
same Redis, so a publish on replica A reaches subscribers on replica B. Key
layout, id assignment and the Lua scripts are in
:mod:`bridge_service.redis_scripts`.

Publish is one Lua script per batch (``EVALSHA``, loaded again when Redis
lost it): fencing against the user's runs hash, ``XADD … MAXLEN ~
log_capacity``, ``XTRIM MINID`` for age, run-state bound, expiry, then one
``PUBLISH`` of the newest id on the user's live channel. It runs atomically,
so concurrent publishers of one run (on any replicas) are fenced one after
the other.

Subscribe: ``SUBSCRIBE`` the live channel and wait for the confirmation
*first*, then read the log's ``born``/``last`` ids (starting a new
incarnation when they are gone), then replay with ``XRANGE`` pages after the
cursor. A reader task then turns each notification into ``XRANGE (fetched
newest`` and feeds a bounded :class:`~bridge_service.subscriber.SubscriberQueue`,
fetching only what fits; ids at or below the last replayed one are skipped.
A subscriber whose queue is full while more than ``subscriber_queue`` further
events wait in Redis is ended with ``RESOURCE_EXHAUSTED`` and its cursor, as on
the memory bus (which cuts off at one full queue: Redis holds the second
queue's worth, so the extra hop's latency does not cut off a fast reader).

Gap rules (all exact, thanks to consecutive ``n`` in the ids): a cursor gets
a gap, then every retained event, when the log's keys were gone (expired,
flushed, Redis restarted without persistence), when it is below ``born``
(from an earlier incarnation) or above ``last`` (never assigned here), or
when the first retained event after it is not its immediate successor (the
events in between were trimmed). A subscription that finds such a hole
*while* following (it fell behind the trimming, or the log was reset) ends
with ``RESOURCE_EXHAUSTED`` resp. ``UNAVAILABLE`` and its cursor, so the
resumed subscription reports the gap.

Redis unreachable: ``Publish`` fails with ``UNAVAILABLE`` (the caller retries;
fencing makes that safe) and a live subscription whose connection breaks
ends with ``UNAVAILABLE`` naming its cursor. No command is retried here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, Sequence
from typing import Any

import redis.asyncio as aioredis
from redis import exceptions as redis_errors
from redis.asyncio.client import PubSub
from redis.backoff import NoBackoff
from redis.retry import Retry

from bridge_service import wire
from bridge_service.bus import (
    BackendUnavailable,
    BusDraining,
    BusItem,
    Events,
    Gap,
    PublishResult,
    ReplayComplete,
    RunEvent,
    SubscriberOverflow,
)
from bridge_service.event_ids import EventId, parse_event_id
from bridge_service.redis_scripts import OPEN_SCRIPT, PUBLISH_SCRIPT, UserKeys, user_keys
from bridge_service.subscriber import Entry, SubscriberQueue
from runwire_common.errors import InvalidArgument, Unavailable
from runwire_common.names import TERMINAL_EVENT_TYPES

log = logging.getLogger("runwire.bridge.redis")

# Errors that mean "Redis is not there right now" (TimeoutError also covers asyncio.timeout).
UNAVAILABLE_ERRORS = (
    redis_errors.ConnectionError,
    redis_errors.TimeoutError,
    redis_errors.ReadOnlyError,
    TimeoutError,
    OSError,
)
PAGE = 256  # events per XRANGE
CONFIRM_TIMEOUT_S = 5.0  # for the SUBSCRIBE confirmation
LISTEN_POLL_S = 1.0  # the reader wakes this often (health-check pings, draining)
BACKLOG_POLL_S = 0.02  # … and this often while events wait in Redis for room in the queue
HEALTH_CHECK_S = 10  # PING an idle connection before use after this long


def connect(url: str, *, client_name: str, timeout_s: float) -> aioredis.Redis:
    """The process's Redis client: no hidden retries, bounded command time, named connections."""
    return aioredis.Redis.from_url(
        url,
        client_name=client_name,
        socket_timeout=timeout_s,
        socket_connect_timeout=timeout_s,
        socket_keepalive=True,
        health_check_interval=HEALTH_CHECK_S,
        retry=Retry(NoBackoff(), 0),
    )


class _LogHole(Exception):
    """The events right after ``position`` are no longer in the stream."""


class RedisEventBus:
    """Per-user Redis Stream logs with Pub/Sub fan-out; the client is owned by the caller."""

    def __init__(
        self,
        client: aioredis.Redis,
        *,
        key_prefix: str = "runwire",
        log_capacity: int = 10_000,
        subscriber_queue: int = 1_000,
        run_state_capacity: int = 1_000,
        retention_s: float = 86_400.0,
        max_batch: int = 256,
    ) -> None:
        if min(log_capacity, subscriber_queue, run_state_capacity, max_batch) < 1 or retention_s <= 0:
            raise ValueError("capacities must be at least 1 and retention_s positive")
        self._max_batch = max_batch
        self._client = client
        self._prefix = key_prefix
        self._log_capacity = log_capacity
        self._subscriber_queue = subscriber_queue
        self._run_state_capacity = run_state_capacity
        self._retention_ms = max(1, int(retention_s * 1000))
        self._publish_script = client.register_script(PUBLISH_SCRIPT)
        self._open_script = client.register_script(OPEN_SCRIPT)
        self._subscribers: dict[str, set[SubscriberQueue]] = {}
        self._draining = False

    def keys(self, user_id: str) -> UserKeys:
        return user_keys(self._prefix, user_id)

    async def publish(self, user_id: str, events: Sequence[RunEvent]) -> PublishResult:
        for index, event in enumerate(events):
            if event.user_id != user_id:
                raise InvalidArgument(f"events[{index}].user_id is not the publisher's user_id")
        keys = self.keys(user_id)
        args: list[str | int | bytes] = [
            keys.live,
            self._log_capacity,
            self._retention_ms,
            self._run_state_capacity,
        ]
        for event in events:
            body = RunEvent()
            body.CopyFrom(event)
            body.event_id = ""
            terminal = 1 if event.type in TERMINAL_EVENT_TYPES else 0
            args += [event.run_id, event.seq, terminal, body.SerializeToString()]
        try:
            reply = await self._publish_script(keys=keys.script_keys(), args=args)
        except UNAVAILABLE_ERRORS as exc:
            raise Unavailable("event store is unavailable; retry") from exc
        ids: list[str] = []
        seqs: list[int] = []
        for index, event in enumerate(events):
            raw_id, seq, verdict = reply[3 * index : 3 * index + 3]
            ids.append(_text(raw_id))
            seqs.append(int(seq))
            if _text(verdict) == "gap":
                log.warning(
                    "seq gap in published events",
                    extra={"user_id": user_id, "run_id": event.run_id, "seq": int(seq)},
                )
        return PublishResult(tuple(ids), tuple(seqs))

    async def subscribe(
        self, user_id: str, *, after: str = "", max_batch: int = 1
    ) -> AsyncGenerator[BusItem, None]:
        cursor = parse_event_id(after) if after else None
        limit = max(1, min(max_batch, self._max_batch))
        if self._draining:
            raise BusDraining(after)
        keys = self.keys(user_id)
        queue = SubscriberQueue(self._subscriber_queue)
        pubsub = self._client.pubsub()
        follower: asyncio.Task[None] | None = None
        self._subscribers.setdefault(user_id, set()).add(queue)
        resume = after  # the cursor a failure reports
        try:
            try:
                await self._listen(pubsub, keys.live)
                born, last, created = await self._open(keys)
            except UNAVAILABLE_ERRORS as exc:
                raise BackendUnavailable(after) from exc

            # Where the replay starts (None: from the oldest retained event, after a gap).
            # No cursor: nothing to replay; live events follow the newest id.
            position: EventId | None = last if cursor is None else cursor
            gap_known = cursor is not None and (created or cursor < born or cursor > last)
            if gap_known:
                position = None
            replayed = 0
            first_page = True
            while cursor is not None:
                try:
                    page = await self._range(keys.stream, position)
                except UNAVAILABLE_ERRORS as exc:
                    raise BackendUnavailable(resume) from exc
                if first_page and (gap_known or (position is not None and _hole_after(position, page, last))):
                    yield Gap(requested_after=after, oldest_event_id=str(page[0][0]) if page else "")
                    position = None  # the page is the oldest retained part: nothing to check it against
                if position is not None and page and page[0][0].n != position.n + 1:
                    raise await self._ended_by_hole(keys, position, resume)
                first_page = False
                for start in range(0, len(page), limit):
                    chunk = page[start : start + limit]
                    position = chunk[-1][0]
                    yield Events([body for _, body in chunk], position)
                    replayed += len(chunk)
                    resume = str(position)
                if len(page) < PAGE:
                    break
            if position is None:  # gap, nothing retained: follow from the newest assigned id
                position = last
            # Follow before handing out ReplayComplete: a consumer that stops
            # right there still overflows like on the memory bus.
            follower = asyncio.create_task(self._follow(user_id, keys, pubsub, queue, position))
            yield ReplayComplete(replayed=replayed, resume_after=str(position))
            delivered = position
            while True:
                batch = await queue.take(delivered, limit)
                if batch[0][0] <= delivered:  # already replayed
                    batch = [entry for entry in batch if entry[0] > delivered]
                    if not batch:
                        continue
                delivered = batch[-1][0]
                yield Events([body for _, body in batch], delivered)
        finally:
            self._unregister(user_id, queue)
            if follower is not None:
                follower.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await follower
            with contextlib.suppress(*UNAVAILABLE_ERRORS, redis_errors.RedisError):
                await pubsub.aclose()  # type: ignore[no-untyped-call]

    def subscriber_count(self, user_id: str) -> int:
        return len(self._subscribers.get(user_id, ()))

    async def retained(self, user_id: str) -> list[str]:
        """The event ids retained for ``user_id``, oldest first (introspection)."""
        rows = await self._client.xrange(self.keys(user_id).stream, "-", "+")
        return [_text(raw_id) for raw_id, _ in rows or ()]

    async def drain(self) -> None:
        self._draining = True
        for queues in self._subscribers.values():
            for queue in queues:
                queue.end_draining()

    async def close(self) -> None:
        await self.drain()

    async def _listen(self, pubsub: PubSub, channel: str) -> None:
        """SUBSCRIBE and wait until Redis confirms it: from then on no publish is missed."""
        await pubsub.subscribe(channel)
        async with asyncio.timeout(CONFIRM_TIMEOUT_S):
            while True:
                message = await pubsub.get_message(timeout=CONFIRM_TIMEOUT_S)
                if message is not None and _text(message.get("type", b"")) == "subscribe":
                    return

    async def _open(self, keys: UserKeys) -> tuple[EventId, EventId, bool]:
        born, last, created = await self._open_script(
            keys=[keys.stream, keys.meta], args=[self._retention_ms]
        )
        return parse_event_id(_text(born)), parse_event_id(_text(last)), bool(int(created))

    async def _range(self, stream: str, after: EventId | None, count: int = PAGE) -> list[Entry]:
        start = "-" if after is None else f"({after}"
        rows = await self._client.xrange(stream, start, "+", count=count)
        entries: list[Entry] = []
        for raw_id, fields in rows or ():
            body = (fields or {}).get(b"e", b"")
            text = raw_id if isinstance(raw_id, bytes) else str(raw_id).encode()
            # The stored event has no event_id; appending the field sets it (see bridge_service.wire).
            stored = body if isinstance(body, bytes) else body.encode()
            entries.append((parse_event_id(text.decode()), stored + wire.event_id_field(text)))
        return entries

    async def _follow(
        self, user_id: str, keys: UserKeys, pubsub: PubSub, queue: SubscriberQueue, fetched: EventId
    ) -> None:
        """Reader task: notifications → XRANGE → the subscriber's queue, until it ends.

        It fetches only what fits in the queue; the rest waits in Redis. The
        subscriber is cut off (overflow) once its queue is full *and* more
        than a queue's worth of further events waits in Redis behind it.
        """
        newest = fetched
        try:
            while not queue.ended:
                if newest > fetched and queue.room() > 0:
                    page = await self._range(keys.stream, fetched, min(PAGE, queue.room()))
                    if not page or page[0][0].n != fetched.n + 1:
                        raise _LogHole()
                    for entry in page:
                        queue.offer(entry)
                        fetched = entry[0]
                    continue
                if newest.n - fetched.n > self._subscriber_queue:  # same incarnation: n counts events
                    queue.overflow()
                    break
                backlogged = newest > fetched
                message = await pubsub.get_message(timeout=BACKLOG_POLL_S if backlogged else LISTEN_POLL_S)
                if message is not None and _text(message.get("type", b"")) == "message":
                    newest = max(newest, parse_event_id(_text(message["data"])))
            if queue.overflowed:
                self._unregister(user_id, queue)
        except _LogHole:
            if await self._reset_since(keys, fetched):
                queue.fail("the event log was reset")
            else:
                queue.overflow()
                self._unregister(user_id, queue)
        except UNAVAILABLE_ERRORS:
            queue.fail("lost the connection to the event store")
        except (redis_errors.RedisError, InvalidArgument):
            log.exception("subscription reader failed", extra={"user_id": user_id})
            queue.fail("event store error")

    async def _ended_by_hole(self, keys: UserKeys, position: EventId, resume: str) -> Exception:
        """The error that ends a subscription finding a hole right after ``position``."""
        try:
            reset = await self._reset_since(keys, position)
        except UNAVAILABLE_ERRORS:
            reset = True
        return BackendUnavailable(resume, "the event log was reset") if reset else SubscriberOverflow(resume)

    async def _reset_since(self, keys: UserKeys, position: EventId) -> bool:
        """Whether the log was started anew after ``position`` (rather than trimmed past it)."""
        born: Any = await self._client.hget(keys.meta, "born")
        return born is None or parse_event_id(_text(born)) > position

    def _unregister(self, user_id: str, queue: SubscriberQueue) -> None:
        queues = self._subscribers.get(user_id)
        if queues is not None:
            queues.discard(queue)
            if not queues:
                del self._subscribers[user_id]


def _hole_after(position: EventId, page: list[Entry], last: EventId) -> bool:
    """Whether events right after ``position`` are missing from ``page`` (its first XRANGE page)."""
    if page:
        return page[0][0].n != position.n + 1
    return position < last


def _text(value: bytes | str | Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
