"""Cluster routing of the Pub/Sub fan-out, against scripted nodes: slots, MOVED, pushed ``sunsubscribe``.

A real cluster (``test_redis_cluster.py``) shows the whole path works; these
cases pin the replies a cluster gives only in a race (a stale ``MOVED`` after
the server already ended the channel) and count commands exactly.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any, cast

import pytest
from redis import exceptions as redis_errors
from redis.asyncio.connection import AbstractConnection
from redis.crc import key_slot

from bridge_service.redis_cluster_fanout import ClusterFanout
from bridge_service.redis_fanout import SlotRange

WAIT_S = 5.0
A, B = ("10.0.0.1", 7001), ("10.0.0.2", 7002)


class Cluster:
    """Which node owns which slot; every node answers as a Redis 7 primary would."""

    def __init__(self) -> None:
        self.owner: dict[int, tuple[str, int]] = {}
        self.map_loads = 0
        self.connections: list[ScriptedNode] = []
        self.down: set[tuple[str, int]] = set()

    def owns(self, node: tuple[str, int], slot: int) -> bool:
        return self.owner.get(slot, A if slot < 8192 else B) == node

    async def slots(self) -> Sequence[SlotRange]:
        self.map_loads += 1
        ranges: list[SlotRange] = []
        for slot in range(16384):
            host, port = self.owner.get(slot, A if slot < 8192 else B)
            if ranges and ranges[-1][2:] == (host, port) and ranges[-1][1] == slot - 1:
                ranges[-1] = (ranges[-1][0], slot, host, port)
            else:
                ranges.append((slot, slot, host, port))
        return ranges

    async def connect(self, host: str, port: int) -> AbstractConnection:
        if (host, port) in self.down:
            raise redis_errors.ConnectionError(f"{host}:{port} is down")
        connection = ScriptedNode(self, (host, port))
        self.connections.append(connection)
        return cast(AbstractConnection, connection)


class ScriptedNode:
    """Answers SSUBSCRIBE/SUNSUBSCRIBE at once: a confirmation, or -MOVED when it does not own the slot."""

    def __init__(self, cluster: Cluster, node: tuple[str, int]) -> None:
        self.cluster = cluster
        self.node = node
        self.sent: list[tuple[Any, ...]] = []
        self.replies: asyncio.Queue[Any] = asyncio.Queue()
        self.hold = False  # keep answers back until release()
        self.held: list[Any] = []

    async def send_command(self, *args: Any, check_health: bool = True) -> None:
        self.sent.append(args)
        if args[0] == "PING":
            return
        name = bytes(args[1])
        slot = key_slot(name)
        reply: Any
        if self.cluster.owns(self.node, slot):
            reply = [bytes(args[0]).lower(), name, 1]
        else:
            host, port = self.cluster.owner.get(slot, B)
            reply = redis_errors.MovedError(f"{slot} {host}:{port}")
        if self.hold:
            self.held.append(reply)
        else:
            self.replies.put_nowait(reply)

    def release(self) -> None:
        for reply in self.held:
            self.replies.put_nowait(reply)
        self.held.clear()
        self.hold = False

    def push(self, reply: Any) -> None:
        self.replies.put_nowait(reply)

    async def read_response(self, **options: Any) -> Any:
        try:
            async with asyncio.timeout(options["timeout"]):
                reply = await self.replies.get()
        except TimeoutError:
            return None
        if isinstance(reply, Exception):
            raise reply
        return reply

    async def disconnect(self, nowait: bool = False) -> None:
        pass


class Recorder:
    def __init__(self) -> None:
        self.lost_reason = ""

    def lost(self, reason: str) -> None:
        self.lost_reason = reason


def channel_on(node: tuple[str, int], index: int) -> bytes:
    """The ``index``-th channel name (in a fixed sequence) whose slot is ``node``'s by default."""
    found = 0
    for n in range(100_000):
        name = f"rw:{{u{n}}}:live".encode()
        if (key_slot(name) < 8192) == (node == A):
            if found == index:
                return name
            found += 1
    raise AssertionError("unreachable")


def make(cluster: Cluster, shards: int = 2) -> ClusterFanout:
    def dispatch(listeners: tuple[Any, ...], data: bytes) -> None:
        pass

    return ClusterFanout(connect=cluster.connect, slots=cluster.slots, dispatch=dispatch, shards=shards)


async def test_channels_go_to_the_node_owning_their_slot_over_a_fixed_number_of_connections() -> None:
    cluster = Cluster()
    fanout = make(cluster, shards=2)
    names = [channel_on(A, i) for i in range(50)] + [channel_on(B, i) for i in range(50)]
    await asyncio.gather(*(fanout.add(name, Recorder(), timeout_s=WAIT_S) for name in names))
    assert cluster.map_loads == 1
    assert len(cluster.connections) <= 4
    assert fanout.connections_by_node() == {"10.0.0.1:7001": 2, "10.0.0.2:7002": 2}
    for connection in cluster.connections:
        for command, name in connection.sent:
            assert command == b"SSUBSCRIBE" and cluster.owns(connection.node, key_slot(name))
    assert sorted(fanout.channels()) == sorted(names)
    await fanout.close()


async def test_a_moved_answer_fails_that_channel_only_and_the_next_add_uses_a_fresh_map() -> None:
    cluster = Cluster()
    fanout = make(cluster, shards=1)
    staying, moving = channel_on(A, 0), channel_on(A, 1)
    keeper = Recorder()
    await fanout.add(staying, keeper, timeout_s=WAIT_S)
    cluster.owner[key_slot(moving)] = B  # resharded since the map was read
    with pytest.raises(redis_errors.ConnectionError, match="refused"):
        await fanout.add(moving, Recorder(), timeout_s=WAIT_S)
    assert fanout.channels() == [staying] and keeper.lost_reason == ""
    await fanout.add(moving, Recorder(), timeout_s=WAIT_S)  # reloads the map, goes to B
    assert cluster.map_loads == 2
    assert fanout.node_of(moving) == B
    assert sorted(fanout.channels()) == sorted([staying, moving])
    await fanout.close()


async def test_a_pushed_sunsubscribe_ends_that_channels_listeners_and_a_stale_moved_after_it_is_ignored() -> (
    None
):
    cluster = Cluster()
    fanout = make(cluster, shards=1)
    migrated, other, later = channel_on(A, 0), channel_on(A, 1), channel_on(A, 2)
    first, second, bystander = Recorder(), Recorder(), Recorder()
    await fanout.add(migrated, first, timeout_s=WAIT_S)
    await fanout.add(migrated, second, timeout_s=WAIT_S)
    await fanout.add(other, bystander, timeout_s=WAIT_S)
    [connection] = cluster.connections

    connection.push([b"sunsubscribe", migrated, 0])  # the slot moved away: the server ends it
    async with asyncio.timeout(WAIT_S):
        while not first.lost_reason:
            await asyncio.sleep(0)
    assert "moved" in first.lost_reason and "moved" in second.lost_reason
    assert bystander.lost_reason == "" and fanout.channels() == [other]

    # A stray -MOVED (the answer to a command a pushed sunsubscribe already stood in for) arrives
    # while our SSUBSCRIBE of another slot is pending: it is not that command's answer.
    fanout.remove(other, bystander)
    async with asyncio.timeout(WAIT_S):
        while connection.sent[-1] != (b"SUNSUBSCRIBE", other) or not connection.replies.empty():
            await asyncio.sleep(0)
    connection.hold = True
    joining = asyncio.create_task(fanout.add(later, Recorder(), timeout_s=WAIT_S))
    async with asyncio.timeout(WAIT_S):
        while connection.sent[-1] != (b"SSUBSCRIBE", later):
            await asyncio.sleep(0)
    connection.push(redis_errors.MovedError(f"{key_slot(migrated)} 10.0.0.2:7002"))
    for _ in range(50):
        await asyncio.sleep(0)
    assert not joining.done()
    connection.release()
    await asyncio.wait_for(joining, WAIT_S)
    assert fanout.channels() == [later]
    assert connection.sent[-2:] == [(b"SUNSUBSCRIBE", other), (b"SSUBSCRIBE", later)]
    await fanout.close()


async def test_a_node_that_cannot_be_reached_makes_the_next_add_reload_the_map_and_follow_the_failover() -> (
    None
):
    cluster = Cluster()
    fanout = make(cluster, shards=1)
    name = channel_on(A, 0)
    await fanout.add(channel_on(B, 0), Recorder(), timeout_s=WAIT_S)  # the map is loaded
    cluster.down.add(A)
    with pytest.raises(redis_errors.ConnectionError):
        await fanout.add(name, Recorder(), timeout_s=WAIT_S)
    cluster.owner[key_slot(name)] = B  # a replica of A took over; B stands in for it here
    await fanout.add(name, Recorder(), timeout_s=WAIT_S)
    assert cluster.map_loads == 2 and fanout.node_of(name) == B
    await fanout.close()
