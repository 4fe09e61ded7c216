"""The Redis :class:`~bridge_service.bus.EventBus`: a Stream per user, Pub/Sub for live fan-out.

Any replica serves any user: every replica publishes into and reads from the
same Redis, so a publish on replica A reaches subscribers on replica B. Key
layout, id assignment and the Lua scripts are in
:mod:`bridge_service.redis_scripts`.

Publish is one Lua script per batch (``EVALSHA``, loaded again when Redis
lost it): fencing against the user's runs hash, ``XADD``, trimming to
``log_capacity`` events, ``log_max_bytes`` and the retention, run-state bound
(never a run that finished within ``run_state_hold_s``), expiry, then one
``PUBLISH`` (``SPUBLISH`` in sharded mode) on the user's live channel,
carrying the stored events themselves when they fit ``live_body_max_bytes``
(else just the newest id). It runs atomically, so concurrent publishers of
one run (on any replicas) are fenced one after the other.

Connections: a bus holds a fixed number of them whatever its subscriber
count — the client's bounded command pool plus ``pubsub_shards`` shared
Pub/Sub connections (:mod:`bridge_service.redis_fanout`, opened by
:mod:`bridge_service.redis_connections`). A user's channel
is subscribed on its shard while the user has local subscribers.

Subscribe: register on the live channel and wait for Redis's confirmation
*first*, then read the log's ``born``/``last`` ids (starting a new
incarnation when they are gone), then replay with ``XRANGE`` pages after the
cursor, then follow. While following, the shard's reader hands each live
message to the channel's subscribers (:meth:`RedisEventBus._dispatch`, no
task per subscriber): a subscriber whose fetched events end right before the
message's first event appends the carried events to its bounded
:class:`~bridge_service.subscriber.SubscriberQueue` (what fits); otherwise
(it was replaying, its queue was full, the message carried only an id) it
notes the newest id and its consumer fetches the rest with ``XRANGE``,
fetching only what fits. Ids at or below the last delivered one are skipped.
A subscriber with more than two queues' worth of undelivered events (its
full queue plus more than ``subscriber_queue`` waiting in Redis, as before)
is ended with ``RESOURCE_EXHAUSTED`` and its cursor, as on the memory bus
(which cuts off at one full queue: Redis holds the second queue's worth, so
the extra hop's latency does not cut off a fast reader).

Gap rules (all exact, thanks to consecutive ``n`` in the ids): a cursor gets
a gap, then every retained event, when the log's keys were gone (expired,
flushed, Redis restarted without persistence), when it is below ``born``
(from an earlier incarnation) or above ``last`` (never assigned here), or
when the first retained event after it is not its immediate successor (the
events in between were trimmed). A subscription that finds such a hole
*while* following (it fell behind the trimming, or the log was reset) ends
with ``RESOURCE_EXHAUSTED`` resp. ``UNAVAILABLE`` and its cursor, so the
resumed subscription reports the gap.

Redis Cluster: pass a :func:`~runwire_common.redis_clients.connect_cluster` client (``sharded_pubsub``
required). Commands go to the node owning their keys' slot (one user's keys
and channel share a hash tag, so each script touches one slot); the live
channels are routed by slot too (:class:`~bridge_service.redis_cluster_fanout.ClusterFanout`,
``pubsub_shards`` connections per primary). A channel whose slot moved ends
its subscriptions with ``UNAVAILABLE`` and their cursors; they resume on the
new node.

Redis unreachable, or answering an error (out of memory under ``noeviction``,
a busy script): ``Publish`` fails with ``UNAVAILABLE`` for that batch only (the
caller retries; fencing makes that safe), and a subscription that cannot open
or read the log ends with ``UNAVAILABLE`` and its cursor; nothing else ends. When a shared Pub/Sub connection breaks, every
subscription on that shard ends with ``UNAVAILABLE`` naming its cursor, and
the shard connects again for the next subscription. No command is retried here.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import secrets
from collections.abc import AsyncGenerator, Sequence
from typing import Any

import redis.asyncio as aioredis
from redis import exceptions as redis_errors
from redis.asyncio.cluster import RedisCluster

from bridge_service import wire
from bridge_service.bus import (
    REPLAY_PAGE,
    BackendUnavailable,
    BusDraining,
    BusItem,
    Events,
    Gap,
    LogReads,
    PublishResult,
    ReplayComplete,
    RunEvent,
    SubscriberOverflow,
)
from bridge_service.canary import (
    CANARY_EVENT_TYPE,
    CANARY_RUN_ID,
    CanaryFailed,
    CanaryListener,
    canary_users,
)
from bridge_service.event_ids import EventId, parse_event_id
from bridge_service.redis_cluster_fanout import ClusterFanout
from bridge_service.redis_connections import node_connection, server_connection, slot_ranges, text
from bridge_service.redis_fanout import Fanout
from bridge_service.redis_policy import refused_batch
from bridge_service.redis_scripts import (
    OPEN_SCRIPT,
    PUBLISH_SCRIPT,
    UserKeys,
    parse_live_message,
    user_keys,
)
from bridge_service.subscriber import Entry, SubscriberQueue
from runwire_common.errors import InvalidArgument, Unavailable
from runwire_common.names import TERMINAL_EVENT_TYPES
from runwire_common.owners import key_of
from runwire_common.redis_clients import HEALTH_CHECK_S

log = logging.getLogger("runwire.bridge.redis")

# Errors that mean "Redis is not there right now" (TimeoutError also covers asyncio.timeout);
# the cluster ones: down or failing over, slot moving (TRYAGAIN, redirections exhausted), no node.
UNAVAILABLE_ERRORS = (
    redis_errors.ConnectionError,
    redis_errors.TimeoutError,
    redis_errors.ReadOnlyError,
    redis_errors.ClusterError,
    redis_errors.TryAgainError,
    redis_errors.RedisClusterException,
    TimeoutError,
    OSError,
)
CONFIRM_TIMEOUT_S = 5.0  # for the SUBSCRIBE confirmation
CANARY_RETENTION_MS = 600_000  # a canary user's keys expire this long after its last canary
CANARY_MAX_BYTES = 4096  # the byte bound of a canary user's log (it keeps one small event)


class _LogHole(Exception):
    """The events right after ``position`` are no longer in the stream."""

    def __init__(self, position: EventId) -> None:
        super().__init__(str(position))
        self.position = position


class _Follower:
    """One subscription as its channel's listener: the queue and how far it got.

    ``fetched`` is the newest event put in the queue (``None`` while the
    subscription still replays), ``newest`` the newest id announced on the
    channel. Small and task-free: a bridge keeps one per idle WebSocket.
    """

    __slots__ = ("channel", "fetched", "newest", "queue", "user_id")

    def __init__(self, user_id: str, channel: bytes, queue: SubscriberQueue) -> None:
        self.user_id = user_id
        self.channel = channel
        self.queue = queue
        self.fetched: EventId | None = None
        self.newest = EventId(0, 0)

    def lost(self, reason: str) -> None:
        self.queue.fail(reason)

    def backlogged(self) -> bool:
        """Whether announced events wait in Redis that the queue has room for."""
        fetched = self.fetched
        return fetched is not None and self.newest > fetched and self.queue.room() > 0


class RedisEventBus:
    """Per-user Redis Stream logs with sharded Pub/Sub fan-out; the client is owned by the caller."""

    def __init__(
        self,
        client: aioredis.Redis | RedisCluster,
        *,
        key_prefix: str = "runwire",
        log_capacity: int = 10_000,
        subscriber_queue: int = 1_000,
        run_state_capacity: int = 1_000,
        retention_s: float = 86_400.0,
        max_batch: int = 256,
        log_max_bytes: int = 4 * 1024 * 1024,
        run_state_hold_s: float = 600.0,
        run_state_max: int = 20_000,
        pubsub_shards: int = 4,
        sharded_pubsub: bool = False,
        live_body_max_bytes: int = 64 * 1024,
        replay_page: int = REPLAY_PAGE,
    ) -> None:
        if min(log_capacity, log_max_bytes, subscriber_queue, run_state_capacity, max_batch, replay_page) < 1:
            raise ValueError("capacities must be at least 1")
        if retention_s <= 0 or run_state_hold_s < 0 or run_state_max < run_state_capacity:
            raise ValueError("retention_s must be positive and run_state_max at least run_state_capacity")
        if live_body_max_bytes < 0:
            raise ValueError("live_body_max_bytes must not be negative")
        self._max_batch = max_batch
        self._replay_page = replay_page
        self.log_reads = LogReads()
        self._client = client
        self._prefix = key_prefix
        self._log_capacity = log_capacity
        self._subscriber_queue = subscriber_queue
        self._run_state_capacity = run_state_capacity
        self._retention_ms = max(1, int(retention_s * 1000))
        self._bounds = (log_max_bytes, int(run_state_hold_s * 1000), run_state_max)
        self._live_body_max_bytes = live_body_max_bytes
        self._publish_command = "SPUBLISH" if sharded_pubsub else "PUBLISH"
        self._publish_script = client.register_script(PUBLISH_SCRIPT)
        self._open_script = client.register_script(OPEN_SCRIPT)
        self._fanout: Fanout | ClusterFanout
        if isinstance(client, RedisCluster):
            if not sharded_pubsub:
                raise ValueError("a Redis Cluster needs sharded_pubsub (SSUBSCRIBE/SPUBLISH by slot)")
            self._fanout = ClusterFanout(
                connect=functools.partial(node_connection, client),
                slots=functools.partial(slot_ranges, client),
                dispatch=self._dispatch,
                shards=pubsub_shards,
                health_check_s=HEALTH_CHECK_S,
            )
        else:
            self._fanout = Fanout(
                connect=functools.partial(server_connection, client),
                dispatch=self._dispatch,
                shards=pubsub_shards,
                sharded_pubsub=sharded_pubsub,
                health_check_s=HEALTH_CHECK_S,
            )
        self._subscribers: dict[str, set[_Follower]] = {}
        self._draining = False
        # Delivery canaries (bridge_service.canary): one reserved user per shared Pub/Sub
        # connection, under a token of this bus's own, so replicas never hear each other's.
        token = secrets.token_hex(6)
        self._canaries = [
            CanaryListener(user, self.keys(user).live.encode())
            for user in canary_users(token, pubsub_shards, lambda user: self.keys(user).live.encode())
        ]

    def keys(self, user_id: str) -> UserKeys:
        return user_keys(self._prefix, user_id)

    async def publish(self, user_id: str, events: Sequence[RunEvent]) -> PublishResult:
        for index, event in enumerate(events):
            if key_of(event) != user_id:
                raise InvalidArgument(f"events[{index}] is not owned by the publisher's owner")
        keys = self.keys(user_id)
        args: list[str | int | bytes] = [
            keys.live,
            self._log_capacity,
            self._retention_ms,
            self._run_state_capacity,
            self._live_body_max_bytes,
            self._publish_command,
            *self._bounds,
        ]
        for event in events:
            # Serialized as it is, without a copy: the id a reader appends to the
            # stored bytes wins over any event_id the caller left in it.
            terminal = 1 if event.type in TERMINAL_EVENT_TYPES else 0
            if terminal and not event.seq:  # a notice: its end time, for the before_log rule
                terminal = max(1, event.timestamp.ToMilliseconds())
            args += [event.run_id, event.seq, terminal, event.SerializeToString()]
        try:
            reply = await self._publish_script(keys=keys.script_keys(), args=args)
        except UNAVAILABLE_ERRORS as exc:
            raise Unavailable("event store is unavailable; retry") from exc
        except redis_errors.ResponseError as exc:
            raise refused_batch(exc, user_id=user_id) from exc
        ids: list[str] = []
        seqs: list[int] = []
        for index, event in enumerate(events):
            raw_id, seq, verdict = reply[3 * index : 3 * index + 3]
            ids.append(text(raw_id))
            seqs.append(int(seq))
            if text(verdict) == "gap":
                log.warning(
                    "seq gap in published events",
                    extra={"user_id": user_id, "run_id": event.run_id, "seq": int(seq)},
                )
            elif text(verdict) == "before_log":
                log.warning(
                    "terminal event of a run that ended before the event log was lost: not stored",
                    extra={"user_id": user_id, "run_id": event.run_id},
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
        follower = _Follower(user_id, keys.live.encode(), queue)
        self._subscribers.setdefault(user_id, set()).add(follower)
        resume = after  # the cursor a failure reports
        try:
            try:
                await self._fanout.add(follower.channel, follower, timeout_s=CONFIRM_TIMEOUT_S)
                born, last, created = await self._open(keys)
            except (*UNAVAILABLE_ERRORS, redis_errors.ResponseError) as exc:
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
                except (*UNAVAILABLE_ERRORS, redis_errors.ResponseError) as exc:
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
                if len(page) < self._replay_page:
                    break
            if position is None:  # gap, nothing retained: follow from the newest assigned id
                position = last
            # Follow before handing out ReplayComplete: a consumer that stops
            # right there still overflows like on the memory bus.
            follower.fetched = position
            follower.newest = max(follower.newest, position)
            yield ReplayComplete(replayed=replayed, resume_after=str(position))
            delivered = position
            while True:
                if follower.backlogged() and not queue.ended:
                    await self._catch_up(keys, follower, str(delivered))
                batch = await queue.take(delivered, limit)
                if not batch:  # poked: events wait in Redis
                    continue
                if batch[0][0] <= delivered:  # already replayed
                    batch = [entry for entry in batch if entry[0] > delivered]
                    if not batch:
                        continue
                delivered = batch[-1][0]
                yield Events([body for _, body in batch], delivered)
        finally:
            self._unregister(follower)

    def subscriber_count(self, user_id: str) -> int:
        return len(self._subscribers.get(user_id, ()))

    def live_channels(self) -> list[str]:
        """The channels this bus is subscribed to (introspection)."""
        return [name.decode() for name in self._fanout.channels()]

    def pubsub_connections(self) -> int:
        """Shared Pub/Sub connections open (or opening) right now (introspection)."""
        return self._fanout.connections()

    def pubsub_connections_by_node(self) -> dict[str, int]:
        """On a cluster, the open Pub/Sub connections per node ``host:port`` (else empty)."""
        fanout = self._fanout
        return fanout.connections_by_node() if isinstance(fanout, ClusterFanout) else {}

    async def probe_delivery(self, timeout_s: float) -> float:
        """One canary round: an event per Pub/Sub connection, back through this bus's own subscription.

        Returns the slowest canary's publish-to-delivery time in seconds;
        raises :class:`~bridge_service.canary.CanaryFailed` when any did not
        arrive within ``timeout_s`` (its subscription could not be confirmed,
        the publish failed, or the message never came).
        """
        results = await asyncio.gather(
            *(self._probe_canary(canary, timeout_s) for canary in self._canaries), return_exceptions=True
        )
        failures = [result for result in results if isinstance(result, BaseException)]
        for failure in failures:
            if not isinstance(failure, Exception):
                raise failure  # cancellation
        if failures:
            raise CanaryFailed(f"{len(failures)} of {len(results)} canaries failed: {failures[0]}")
        return max(result for result in results if isinstance(result, float))

    async def _probe_canary(self, canary: CanaryListener, timeout_s: float) -> float:
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            async with asyncio.timeout(timeout_s):
                if not canary.registered:
                    await self._fanout.add(canary.channel, canary, timeout_s=timeout_s)
                    canary.registered = True
                await canary.wait_for(await self._publish_canary(canary.user_id))
        except TimeoutError as exc:
            raise CanaryFailed(f"no canary through its subscription within {timeout_s} s") from exc
        except (redis_errors.RedisError, OSError) as exc:
            raise CanaryFailed(f"canary failed: {exc!r}") from exc
        return loop.time() - started

    async def _publish_canary(self, user_id: str) -> EventId:
        """Store one canary event for the reserved ``user_id``: a log of one, the state of one run."""
        keys = self.keys(user_id)
        body = RunEvent(user_id=user_id, run_id=CANARY_RUN_ID, type=CANARY_EVENT_TYPE, payload_json="{}")
        reply = await self._publish_script(
            keys=keys.script_keys(),
            args=[
                keys.live,
                1,  # log capacity
                CANARY_RETENTION_MS,
                1,  # run state capacity
                self._live_body_max_bytes,
                self._publish_command,
                CANARY_MAX_BYTES,
                0,  # run state hold
                1,  # run state max
                CANARY_RUN_ID,
                0,  # seq: the run's next
                0,  # never terminal
                body.SerializeToString(),
            ],
        )
        raw_id = text(reply[0])
        if not raw_id:
            raise CanaryFailed(f"the canary was not stored ({text(reply[2])})")
        return parse_event_id(raw_id)

    async def retained(self, user_id: str) -> list[str]:
        """The event ids retained for ``user_id``, oldest first (introspection)."""
        rows = await self._client.xrange(self.keys(user_id).stream, "-", "+")
        return [text(raw_id) for raw_id, _ in rows or ()]

    async def drain(self) -> None:
        self._draining = True
        for followers in self._subscribers.values():
            for follower in followers:
                follower.queue.end_draining()

    async def close(self) -> None:
        await self.drain()
        await self._fanout.close()

    def _dispatch(self, followers: tuple[Any, ...], data: bytes) -> None:
        """A shard reader's hand-off of one live message to the channel's followers."""
        try:
            newest, entries = parse_live_message(data)
        except ValueError:
            log.exception("unreadable live message")
            return
        if followers and type(followers[0]) is CanaryListener:
            followers[0].heard(newest)  # a canary channel has its canary as its one listener
            return
        overflow_at = 2 * self._subscriber_queue
        for follower in followers:
            queue: SubscriberQueue = follower.queue
            if queue.ended:
                continue
            if newest > follower.newest:
                follower.newest = newest
            fetched: EventId | None = follower.fetched
            if fetched is None or newest <= fetched:
                continue  # replaying (it catches up afterwards), or already fetched
            if entries is not None:
                room = queue.room()
                for entry in entries:
                    if entry[0] <= fetched:
                        continue
                    if room <= 0 or entry[0].n != fetched.n + 1:
                        break
                    queue.offer(entry)
                    fetched = entry[0]
                    room -= 1
                follower.fetched = fetched
            if newest > fetched:
                # Same incarnation: n counts events. (After a reset n restarts; the fetch finds it.)
                if len(queue) + newest.n - fetched.n > overflow_at:
                    queue.overflow()
                    self._unregister(follower)
                else:
                    queue.poke()

    async def _catch_up(self, keys: UserKeys, follower: _Follower, resume: str) -> None:
        """Fetch announced events from the stream into the queue, as many as fit (one page)."""
        queue = follower.queue
        start = follower.fetched
        assert start is not None
        try:
            page = await self._range(keys.stream, start, min(self._replay_page, queue.room()))
            if not page or page[0][0].n != start.n + 1:
                raise await self._ended_by_hole(keys, start, resume)
        except UNAVAILABLE_ERRORS as exc:
            raise BackendUnavailable(resume, "lost the connection to the event store") from exc
        except redis_errors.RedisError as exc:
            log.exception("catching up with the event log failed", extra={"user_id": follower.user_id})
            raise BackendUnavailable(resume, "event store error") from exc
        fetched = follower.fetched  # live messages may have moved it on meanwhile
        assert fetched is not None
        room = queue.room()
        for entry in page:
            if entry[0] > fetched and room > 0:
                queue.offer(entry)
                fetched = entry[0]
                room -= 1
        follower.fetched = fetched

    async def _open(self, keys: UserKeys) -> tuple[EventId, EventId, bool]:
        born, last, created = await self._open_script(
            keys=[keys.stream, keys.meta], args=[self._retention_ms]
        )
        return parse_event_id(text(born)), parse_event_id(text(last)), bool(int(created))

    async def _range(self, stream: str, after: EventId | None, count: int = 0) -> list[Entry]:
        """At most ``count`` (default: a replay page) events after ``after`` (None: the oldest)."""
        start = "-" if after is None else f"({after}"
        rows = await self._client.xrange(stream, start, "+", count=count or self._replay_page)
        entries: list[Entry] = []
        for raw_id, fields in rows or ():
            body = (fields or {}).get(b"e", b"")
            text = raw_id if isinstance(raw_id, bytes) else str(raw_id).encode()
            # The stored event has no event_id; appending the field sets it (see bridge_service.wire).
            stored = body if isinstance(body, bytes) else body.encode()
            entries.append((parse_event_id(text.decode()), stored + wire.event_id_field(text)))
        self.log_reads.count(len(entries))
        return entries

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
        return born is None or parse_event_id(text(born)) > position

    def _unregister(self, follower: _Follower) -> None:
        followers = self._subscribers.get(follower.user_id)
        if followers is not None:
            followers.discard(follower)
            if not followers:
                del self._subscribers[follower.user_id]
        self._fanout.remove(follower.channel, follower)


def _hole_after(position: EventId, page: list[Entry], last: EventId) -> bool:
    """Whether events right after ``position`` are missing from ``page`` (its first XRANGE page)."""
    if page:
        return page[0][0].n != position.n + 1
    return position < last
