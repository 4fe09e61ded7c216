"""Live fan-out over a fixed set of shared Redis Pub/Sub connections.

A bridge holds one subscription per connected WebSocket; a Pub/Sub
connection per subscription would cap a process at its connection limit.
Instead, as Centrifugo does (``centrifugal/centrifuge``, ``broker_redis.go``),
a :class:`Fanout` owns ``shards`` connections, each with one reader and one
writer task. A channel lives on the shard ``crc32(channel) % shards`` (stable
across processes and restarts) and is subscribed there while it has at least
one local listener: the first listener queues ``SUBSCRIBE``, the last one
leaving queues ``UNSUBSCRIBE``.

Ordering: each shard's writer sends the queued commands in order on its one
connection, and records, in the same order, which confirmation each channel
of a command will produce (Redis answers one ``subscribe``/``unsubscribe``
message per channel, in order, whether or not it changed anything). The
reader pops those records as confirmations arrive, so a listener added while
an earlier ``UNSUBSCRIBE`` of its channel is still in flight waits for the
confirmation of *its* ``SUBSCRIBE``, never for a stale one: from the moment
:meth:`Fanout.add` returns, no publish on the channel is missed. Commands are
only ever sent by the writer task, so a cancelled caller never leaves a half
sent command or an unmatched record behind.

A lost connection (reset, no answer to a ``PING`` within
``health_check_s``, an error reply) ends the shard's session: every listener
of the shard is told (:meth:`Listener.lost`) and forgotten, and the next
:meth:`Fanout.add` on that shard connects again. Nothing is resubscribed
silently: listeners resume from their cursor, which is exact.

Sharded Pub/Sub (Redis 7+, ``SSUBSCRIBE``/``SUNSUBSCRIBE``) is a
constructor flag; in that mode each channel is its own command, because a
cluster refuses one command whose channels lie in different slots, and a
refusal (``-MOVED`` after a slot moved, any error reply) ends only the
listeners of that one channel, as does a ``sunsubscribe`` the server pushes
on its own (the channel's slot migrated away); a connection stays up.

On Redis Cluster, :class:`~bridge_service.redis_cluster_fanout.ClusterFanout`
routes each channel to the shards of the node that owns its slot.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import zlib
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

from redis import exceptions as redis_errors
from redis.asyncio.connection import AbstractConnection
from redis.crc import key_slot

log = logging.getLogger("runwire.bridge.redis")

COMMAND_BATCH = 256  # channels per SUBSCRIBE/UNSUBSCRIBE command (classic Pub/Sub)

_SUBSCRIBE, _UNSUBSCRIBE, _PING = 0, 1, 2
_CONFIRMATIONS = frozenset((b"subscribe", b"unsubscribe", b"ssubscribe", b"sunsubscribe"))
_MESSAGES = frozenset((b"message", b"smessage"))


class Listener(Protocol):
    """A local consumer of one channel (the bus's per-subscription follower)."""

    def lost(self, reason: str) -> None:
        """The shard's connection is gone; the listener is no longer registered."""
        ...


# Called by a shard's reader with a channel's current listeners and one message body.
Dispatch = Callable[[tuple[Any, ...], bytes], None]
Connect = Callable[[], Awaitable[AbstractConnection]]
# A connection to one cluster node (host, port).
NodeConnect = Callable[[str, int], Awaitable[AbstractConnection]]
# The cluster's slot ranges: (first slot, last slot, primary host, primary port).
SlotRange = tuple[int, int, str, int]
SlotMap = Callable[[], Awaitable[Sequence[SlotRange]]]


class _Channel:
    """One subscribed channel of a shard: its listeners and its SUBSCRIBE confirmation."""

    __slots__ = ("listeners", "name", "ready")

    def __init__(self, name: bytes, ready: asyncio.Future[str]) -> None:
        self.name = name
        self.listeners: set[Any] = set()
        # Result "" once Redis confirmed the SUBSCRIBE, else the reason it never will.
        self.ready = ready


class _Session:
    """One connection's worth of shard state: what to send, what Redis will confirm."""

    __slots__ = ("expected", "ops", "over", "wakeup")

    def __init__(self) -> None:
        self.ops: deque[tuple[int, _Channel | None]] = deque()
        self.expected: deque[tuple[int, _Channel | None]] = deque()
        self.wakeup = asyncio.Event()
        # Set when the session ends. redis-py can swallow a cancellation that
        # lands mid-send, so the session's tasks also stop on their own.
        self.over = False


class Shard:
    """One shared Pub/Sub connection: its channels, command queue, reader and writer."""

    def __init__(
        self,
        index: int,
        *,
        connect: Connect,
        dispatch: Dispatch,
        sharded: bool,
        health_check_s: float,
        label: str = "",
        on_stale: Callable[[], None] | None = None,
    ) -> None:
        self.index = index
        self.label = label or str(index)
        # Told when this node may no longer own what it had: a refusal, a pushed unsubscribe, a lost
        # connection (a failed-over primary). The cluster fan-out then reloads its slot map.
        self._on_stale = on_stale
        self._connect = connect
        self._dispatch = dispatch
        self._sharded = sharded
        self._health_check_s = health_check_s
        self.channels: dict[bytes, _Channel] = {}
        self._session: _Session | None = None
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    @property
    def connected(self) -> bool:
        return self._session is not None

    async def add(self, name: bytes, listener: Any, *, timeout_s: float) -> None:
        """Register ``listener`` on ``name``; return once Redis confirmed the subscription."""
        if self._closed:
            raise redis_errors.ConnectionError("the fan-out is closed")
        channel = self.channels.get(name)
        if channel is None:
            channel = self.channels[name] = _Channel(name, asyncio.get_running_loop().create_future())
            self._queue(_SUBSCRIBE, channel)
        channel.listeners.add(listener)
        reason = channel.ready.result() if channel.ready.done() else None
        if reason is None:
            try:
                async with asyncio.timeout(timeout_s):
                    reason = await asyncio.shield(channel.ready)
            except BaseException:
                self.remove(name, listener)
                raise
        if reason:
            self.remove(name, listener)
            raise redis_errors.ConnectionError(reason)

    def remove(self, name: bytes, listener: Any) -> None:
        """Unregister ``listener`` (idempotent); the last one leaving unsubscribes the channel."""
        channel = self.channels.get(name)
        if channel is None or listener not in channel.listeners:
            return
        channel.listeners.discard(listener)
        if not channel.listeners:
            del self.channels[name]
            if self._session is not None:
                self._queue(_UNSUBSCRIBE, channel)

    async def close(self) -> None:
        self._closed = True
        task = self._task
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def _queue(self, op: int, channel: _Channel | None) -> None:
        session = self._session
        if session is None:
            session = self._session = _Session()
            self._task = asyncio.create_task(self._run(session), name=f"redis-pubsub-shard-{self.label}")
        session.ops.append((op, channel))
        session.wakeup.set()

    async def _run(self, session: _Session) -> None:
        """One connection's life: connect, then write commands while the reader reads."""
        connection: AbstractConnection | None = None
        reason = "lost the connection to the event store"
        try:
            connection = await self._connect()
            tasks = (
                asyncio.create_task(
                    self._read(session, connection), name=f"redis-pubsub-reader-{self.label}"
                ),
                asyncio.create_task(
                    self._write(session, connection), name=f"redis-pubsub-writer-{self.label}"
                ),
            )
            try:
                await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            except asyncio.CancelledError:
                reason = "the fan-out is closed"
                raise
            finally:
                # At once, before waiting for the tasks: new subscriptions get a
                # new connection, and a task that swallowed its cancellation stops.
                self._end_session(session, reason)
                for task in tasks:
                    task.cancel()
                outcomes = await asyncio.gather(*tasks, return_exceptions=True)
            for outcome in outcomes:
                if isinstance(outcome, Exception):
                    log.warning("redis pub/sub shard %s lost its connection: %r", self.label, outcome)
        except asyncio.CancelledError:
            reason = "the fan-out is closed"
            raise
        except (redis_errors.RedisError, OSError, TimeoutError) as exc:  # listeners are told below
            log.warning("redis pub/sub shard %s could not connect: %r", self.label, exc)
        finally:
            self._end_session(session, reason)
            if self._on_stale is not None and not self._closed:
                self._on_stale()
            if connection is not None:
                with contextlib.suppress(Exception):
                    await connection.disconnect(nowait=True)

    def _end_session(self, session: _Session, reason: str) -> None:
        """Tell every listener its channel is gone, and start afresh for the next ``add`` (idempotent)."""
        if session.over:
            return
        session.over = True
        session.wakeup.set()
        if self._session is not session:
            return
        self._session = None
        channels = self.channels
        self.channels = {}
        for channel in channels.values():
            if not channel.ready.done():
                channel.ready.set_result(reason)
            for listener in tuple(channel.listeners):
                listener.lost(reason)

    async def _write(self, session: _Session, connection: AbstractConnection) -> None:
        """Send queued commands in order, recording the confirmation each will produce."""
        ops, expected = session.ops, session.expected
        prefix = b"S" if self._sharded else b""
        limit = 1 if self._sharded else COMMAND_BATCH
        while not session.over:
            await session.wakeup.wait()
            session.wakeup.clear()
            while ops and not session.over:
                op = ops[0][0]
                if op == _PING:
                    ops.popleft()
                    await connection.send_command("PING", check_health=False)
                    continue
                names: list[bytes] = []
                while ops and ops[0][0] == op and len(names) < limit:
                    record = ops.popleft()
                    expected.append(record)
                    assert record[1] is not None
                    names.append(record[1].name)
                command = prefix + (b"SUBSCRIBE" if op == _SUBSCRIBE else b"UNSUBSCRIBE")
                await connection.send_command(command, *names, check_health=False)

    async def _read(self, session: _Session, connection: AbstractConnection) -> None:
        """Dispatch messages and match confirmations; PING when quiet, give up when PING goes unanswered."""
        expected = session.expected
        awaiting_pong = False
        while True:
            try:
                response = await connection.read_response(
                    timeout=self._health_check_s, disconnect_on_error=False, push_request=True
                )
            except redis_errors.ResponseError as exc:
                if not self._sharded or session.over:
                    raise
                awaiting_pong = False
                self._refused(expected, exc)
                continue
            if session.over:
                return
            if response is None:  # quiet for health_check_s
                if awaiting_pong:
                    raise redis_errors.TimeoutError("no answer to PING")
                awaiting_pong = True
                session.ops.append((_PING, None))
                session.wakeup.set()
                continue
            awaiting_pong = False
            if not isinstance(response, list) or not response:
                continue  # a PONG outside subscribed mode (RESP3 answers PING plainly)
            kind = response[0]
            if kind in _MESSAGES:
                channel = self.channels.get(response[1])
                if channel is not None:
                    self._dispatch(tuple(channel.listeners), response[2])
            elif kind in _CONFIRMATIONS:
                if kind == b"sunsubscribe" and not _expects(expected, _UNSUBSCRIBE, response[1]):
                    self._pushed_out(response[1])  # not ours: the slot migrated away
                    continue
                op, record = expected.popleft()
                if op == _SUBSCRIBE and record is not None and not record.ready.done():
                    record.ready.set_result("")

    def _refused(self, expected: deque[tuple[int, _Channel | None]], exc: redis_errors.ResponseError) -> None:
        """An error reply (sharded mode: one channel per command) ends that channel's listeners only."""
        if not expected:
            return
        op, record = expected[0]
        if record is None:
            return
        slot = getattr(exc, "slot_id", None)
        if isinstance(exc, redis_errors.AskError) and slot is not None and key_slot(record.name) != int(slot):
            # The answer to a command whose confirmation a pushed ``sunsubscribe`` already
            # stood in for (the slot moved meanwhile); it belongs to no pending record.
            return
        expected.popleft()
        command = "SSUBSCRIBE" if op == _SUBSCRIBE else "SUNSUBSCRIBE"
        log.warning("redis pub/sub shard %s: %s %r refused: %s", self.label, command, record.name, exc)
        if op == _SUBSCRIBE:
            self._drop(record, f"the event store refused the subscription ({exc}); resume")
        if self._on_stale is not None:
            self._on_stale()

    def _pushed_out(self, name: bytes) -> None:
        channel = self.channels.get(name)
        log.warning("redis pub/sub shard %s: the server ended the subscription of %r", self.label, name)
        if channel is not None:
            self._drop(channel, "the event store moved the channel to another node; resume")
        if self._on_stale is not None:
            self._on_stale()

    def _drop(self, channel: _Channel, reason: str) -> None:
        """Forget ``channel`` (the server no longer has it) and tell its listeners."""
        if self.channels.get(channel.name) is channel:
            del self.channels[channel.name]
        if not channel.ready.done():
            channel.ready.set_result(reason)
        listeners = tuple(channel.listeners)
        channel.listeners.clear()
        for listener in listeners:
            listener.lost(reason)


def _expects(expected: deque[tuple[int, _Channel | None]], op: int, name: bytes) -> bool:
    """Whether the next confirmation Redis owes is ``op`` of channel ``name``."""
    if not expected:
        return False
    head_op, record = expected[0]
    return head_op == op and record is not None and record.name == name


class Fanout:
    """``shards`` shared Pub/Sub connections; channels are spread over them by a stable hash."""

    def __init__(
        self,
        *,
        connect: Connect,
        dispatch: Dispatch,
        shards: int = 4,
        sharded_pubsub: bool = False,
        health_check_s: float = 10.0,
    ) -> None:
        if shards < 1 or health_check_s <= 0 or math.isinf(health_check_s):
            raise ValueError("shards must be at least 1 and health_check_s positive")
        self._shards = [
            Shard(
                index,
                connect=connect,
                dispatch=dispatch,
                sharded=sharded_pubsub,
                health_check_s=health_check_s,
            )
            for index in range(shards)
        ]

    def shard_of(self, name: bytes) -> int:
        return zlib.crc32(name) % len(self._shards)

    async def add(self, name: bytes, listener: Any, *, timeout_s: float) -> None:
        """Listen on channel ``name``; from the return on, no message published to it is missed.

        Raises ``redis.exceptions.ConnectionError`` (or ``TimeoutError``) when
        the subscription could not be confirmed; ``listener`` is then not registered.
        """
        await self._shards[self.shard_of(name)].add(name, listener, timeout_s=timeout_s)

    def remove(self, name: bytes, listener: Any) -> None:
        """Stop listening (idempotent)."""
        self._shards[self.shard_of(name)].remove(name, listener)

    def channels(self) -> list[bytes]:
        """The channels with local listeners (introspection)."""
        return [name for shard in self._shards for name in shard.channels]

    def connections(self) -> int:
        """Shards with an open (or opening) connection."""
        return sum(1 for shard in self._shards if shard.connected)

    async def close(self) -> None:
        """Close every connection; remaining listeners are told they lost their channel."""
        for shard in self._shards:
            await shard.close()
