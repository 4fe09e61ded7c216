"""The shared Pub/Sub shard's protocol, against a scripted connection: ordering, dispatch, dead peers.

Redis cannot be told to hold back one confirmation or to stop answering
PING for a single connection, so these cases drive :class:`Fanout` through a
fake connection whose replies the test releases one by one.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, cast

import pytest
from redis import exceptions as redis_errors
from redis.asyncio.connection import AbstractConnection

from bridge_service.redis_fanout import Fanout

WAIT_S = 5.0


class ScriptedConnection:
    """Records commands; answers (un)subscribe confirmations only when the test releases them."""

    def __init__(self) -> None:
        self.sent: list[tuple[Any, ...]] = []
        self.held: list[list[Any]] = []
        self.replies: asyncio.Queue[list[Any]] = asyncio.Queue()
        self.disconnected = False

    async def send_command(self, *args: Any, check_health: bool = True) -> None:
        self.sent.append(args)
        if args[0] != "PING":  # a dead peer: PING is never answered
            kind = bytes(args[0]).lower()
            self.held += [[kind, name, 1] for name in args[1:]]

    def release(self, count: int) -> None:
        for reply in self.held[:count]:
            self.replies.put_nowait(reply)
        del self.held[:count]

    def push(self, reply: list[Any]) -> None:
        self.replies.put_nowait(reply)

    async def read_response(self, **options: Any) -> Any:
        try:
            async with asyncio.timeout(options["timeout"]):
                return await self.replies.get()
        except TimeoutError:
            return None

    async def disconnect(self, nowait: bool = False) -> None:
        self.disconnected = True


class Recorder:
    """A listener that remembers why it lost its channel."""

    def __init__(self) -> None:
        self.lost_reason = ""
        self.lost_event = asyncio.Event()

    def lost(self, reason: str) -> None:
        self.lost_reason = reason
        self.lost_event.set()


async def until(condition: Callable[[], bool]) -> None:
    async with asyncio.timeout(WAIT_S):
        while not condition():
            await asyncio.sleep(0)


async def settle() -> None:
    """Run the event loop until every ready callback chain has run (no wall-clock wait)."""
    for _ in range(50):
        await asyncio.sleep(0)


def make_fanout(
    connections: list[ScriptedConnection],
    dispatched: list[tuple[tuple[Any, ...], bytes]] | None = None,
    *,
    health_check_s: float = 60.0,
    sharded: bool = False,
) -> Fanout:
    async def connect() -> AbstractConnection:
        connection = ScriptedConnection()
        connections.append(connection)
        return cast(AbstractConnection, connection)

    def dispatch(listeners: tuple[Any, ...], data: bytes) -> None:
        if dispatched is not None:
            dispatched.append((listeners, data))

    connect_fn: Callable[[], Awaitable[AbstractConnection]] = connect
    return Fanout(
        connect=connect_fn, dispatch=dispatch, shards=1, sharded_pubsub=sharded, health_check_s=health_check_s
    )


async def test_a_subscriber_waits_for_its_own_subscribe_not_one_an_earlier_unsubscribe_undoes() -> None:
    connections: list[ScriptedConnection] = []
    fanout = make_fanout(connections)
    first, second = Recorder(), Recorder()
    leaving = asyncio.create_task(fanout.add(b"ch", first, timeout_s=WAIT_S))
    await until(lambda: bool(connections) and len(connections[0].sent) == 1)
    leaving.cancel()  # the first subscriber leaves before Redis confirmed: UNSUBSCRIBE is queued
    with pytest.raises(asyncio.CancelledError):
        await leaving
    joining = asyncio.create_task(fanout.add(b"ch", second, timeout_s=WAIT_S))
    connection = connections[0]
    await until(lambda: len(connection.sent) == 3)
    assert connection.sent == [(b"SUBSCRIBE", b"ch"), (b"UNSUBSCRIBE", b"ch"), (b"SUBSCRIBE", b"ch")]

    connection.release(2)  # the first SUBSCRIBE and the UNSUBSCRIBE are confirmed
    await until(connection.replies.empty)
    await settle()  # whatever those replies set off has run by now
    assert not joining.done()  # Redis is not subscribed for it yet
    connection.release(1)
    await asyncio.wait_for(joining, WAIT_S)
    assert fanout.channels() == [b"ch"]
    await fanout.close()


async def test_a_message_is_handed_to_every_listener_of_its_channel_only() -> None:
    connections: list[ScriptedConnection] = []
    dispatched: list[tuple[tuple[Any, ...], bytes]] = []
    fanout = make_fanout(connections, dispatched)
    a1, a2, b1 = Recorder(), Recorder(), Recorder()
    adds = [
        asyncio.create_task(fanout.add(name, listener, timeout_s=WAIT_S))
        for name, listener in ((b"a", a1), (b"a", a2), (b"b", b1))
    ]
    await until(lambda: bool(connections) and len(connections[0].held) == 2)
    connection = connections[0]
    assert connection.sent == [(b"SUBSCRIBE", b"a", b"b")]  # one command, one SUBSCRIBE per channel
    connection.release(2)
    await asyncio.wait_for(asyncio.gather(*adds), WAIT_S)
    connection.push([b"message", b"a", b"payload-a"])
    connection.push([b"message", b"unknown", b"ignored"])
    connection.push([b"message", b"b", b"payload-b"])
    await until(lambda: len(dispatched) == 2)
    assert [(set(listeners), data) for listeners, data in dispatched] == [
        ({a1, a2}, b"payload-a"),
        ({b1}, b"payload-b"),
    ]
    await fanout.close()


async def test_sharded_mode_sends_one_ssubscribe_per_channel() -> None:
    connections: list[ScriptedConnection] = []
    fanout = make_fanout(connections, sharded=True)
    adds = [asyncio.create_task(fanout.add(name, Recorder(), timeout_s=WAIT_S)) for name in (b"a", b"b")]
    await until(lambda: bool(connections) and len(connections[0].held) == 2)
    connections[0].release(2)
    await asyncio.wait_for(asyncio.gather(*adds), WAIT_S)
    assert connections[0].sent == [(b"SSUBSCRIBE", b"a"), (b"SSUBSCRIBE", b"b")]
    await fanout.close()


async def test_an_unanswered_ping_ends_the_shards_listeners_and_the_next_add_connects_again() -> None:
    connections: list[ScriptedConnection] = []
    fanout = make_fanout(connections, health_check_s=0.05)
    listener = Recorder()
    adding = asyncio.create_task(fanout.add(b"ch", listener, timeout_s=WAIT_S))
    await until(lambda: bool(connections) and bool(connections[0].held))
    connections[0].release(1)
    await asyncio.wait_for(adding, WAIT_S)

    await asyncio.wait_for(listener.lost_event.wait(), WAIT_S)  # quiet → PING → still quiet → lost
    assert listener.lost_reason == "lost the connection to the event store"
    assert ("PING",) in connections[0].sent and connections[0].disconnected
    assert fanout.channels() == []

    again = asyncio.create_task(fanout.add(b"ch", Recorder(), timeout_s=WAIT_S))
    await until(lambda: len(connections) == 2 and bool(connections[1].held))
    connections[1].release(1)
    await asyncio.wait_for(again, WAIT_S)
    await fanout.close()


async def test_an_unconfirmed_subscribe_times_out_and_leaves_nothing_registered() -> None:
    connections: list[ScriptedConnection] = []
    fanout = make_fanout(connections)
    with pytest.raises(TimeoutError):
        await fanout.add(b"ch", Recorder(), timeout_s=0.05)
    assert fanout.channels() == []
    await until(lambda: connections[0].sent[-1:] == [(b"UNSUBSCRIBE", b"ch")])
    await fanout.close()


async def test_closing_tells_remaining_listeners_and_refuses_new_ones() -> None:
    connections: list[ScriptedConnection] = []
    fanout = make_fanout(connections)
    listener = Recorder()
    adding = asyncio.create_task(fanout.add(b"ch", listener, timeout_s=WAIT_S))
    await until(lambda: bool(connections) and bool(connections[0].held))
    connections[0].release(1)
    await asyncio.wait_for(adding, WAIT_S)
    await fanout.close()
    assert listener.lost_reason == "the fan-out is closed" and connections[0].disconnected
    with pytest.raises(redis_errors.ConnectionError):
        await fanout.add(b"other", Recorder(), timeout_s=WAIT_S)
