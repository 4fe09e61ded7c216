"""Sharded Pub/Sub on Redis Cluster: each channel on the shards of the node that owns its slot.

:class:`ClusterFanout` routes each channel by its slot (``CRC16`` of its hash
tag) to the primary that owns the slot, after the slot map of ``CLUSTER
SLOTS``, and keeps ``shards`` connections per node there
(:class:`~bridge_service.redis_fanout.Shard`, as the single-server
:class:`~bridge_service.redis_fanout.Fanout` does): a fixed number per node,
whatever the subscriber count. A refused or pushed-out channel, or a lost node
connection (failover), marks the map stale; the next :meth:`ClusterFanout.add`
loads it again (one load at a time), and the listeners that were ended resume
from their cursor on the slot's new node.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import functools
import math
import zlib
from typing import Any

from redis import exceptions as redis_errors
from redis.crc import key_slot

from bridge_service.redis_fanout import Dispatch, NodeConnect, Shard, SlotMap


class ClusterFanout:
    """Sharded Pub/Sub on Redis Cluster: ``shards`` connections per primary, channels routed by slot.

    The slot map comes from ``slots`` (``CLUSTER SLOTS``), loaded before the
    first subscription and again after a node refused a channel or pushed it
    out (the slot moved). A node's shards are created when a channel first
    routes there and closed when the node leaves the map. Connections: at most
    ``shards`` per primary, whatever the number of channels or listeners.
    """

    def __init__(
        self,
        *,
        connect: NodeConnect,
        slots: SlotMap,
        dispatch: Dispatch,
        shards: int = 4,
        health_check_s: float = 10.0,
    ) -> None:
        if shards < 1 or health_check_s <= 0 or math.isinf(health_check_s):
            raise ValueError("shards must be at least 1 and health_check_s positive")
        self._connect = connect
        self._slots = slots
        self._dispatch = dispatch
        self._shards_per_node = shards
        self._health_check_s = health_check_s
        self._nodes: dict[tuple[str, int], list[Shard]] = {}
        # Sorted, non-overlapping slot ranges: first slots (for bisect), then (last slot, node).
        self._starts: list[int] = []
        self._ranges: list[tuple[int, tuple[str, int]]] = []
        self._stale = True
        self._loading: asyncio.Task[None] | None = None
        self._closed = False

    def node_of(self, name: bytes) -> tuple[str, int] | None:
        """The primary that owns ``name``'s slot after the current map (``None``: not covered)."""
        slot = key_slot(name)
        at = bisect.bisect_right(self._starts, slot) - 1
        if at < 0:
            return None
        last, node = self._ranges[at]
        return node if slot <= last else None

    async def add(self, name: bytes, listener: Any, *, timeout_s: float) -> None:
        """Listen on channel ``name`` on the node owning its slot (see :meth:`Fanout.add`)."""
        if self._closed:
            raise redis_errors.ConnectionError("the fan-out is closed")
        if self._stale:
            async with asyncio.timeout(timeout_s):
                await self._load_map()
        node = self.node_of(name)
        if node is None:
            self._stale = True
            raise redis_errors.ConnectionError(f"no cluster node serves slot {key_slot(name)}")
        await self._shard(node, name).add(name, listener, timeout_s=timeout_s)

    def remove(self, name: bytes, listener: Any) -> None:
        """Stop listening (idempotent), on whichever shard holds the listener."""
        for shards in self._nodes.values():
            for shard in shards:
                if name in shard.channels:
                    shard.remove(name, listener)

    def channels(self) -> list[bytes]:
        return [name for shards in self._nodes.values() for shard in shards for name in shard.channels]

    def connections(self) -> int:
        return sum(1 for shards in self._nodes.values() for shard in shards if shard.connected)

    def connections_by_node(self) -> dict[str, int]:
        """Open (or opening) Pub/Sub connections per node ``host:port`` (introspection)."""
        return {
            f"{host}:{port}": sum(1 for shard in shards if shard.connected)
            for (host, port), shards in self._nodes.items()
        }

    async def close(self) -> None:
        self._closed = True
        loading = self._loading
        if loading is not None and not loading.done():
            loading.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await loading
        nodes = list(self._nodes.values())
        self._nodes = {}
        for shards in nodes:
            for shard in shards:
                await shard.close()

    def _shard(self, node: tuple[str, int], name: bytes) -> Shard:
        shards = self._nodes.get(node)
        if shards is None:
            host, port = node
            shards = self._nodes[node] = [
                Shard(
                    index,
                    connect=functools.partial(self._connect, host, port),
                    dispatch=self._dispatch,
                    sharded=True,
                    health_check_s=self._health_check_s,
                    label=f"{host}:{port}/{index}",
                    on_stale=self._mark_stale,
                )
                for index in range(self._shards_per_node)
            ]
        return shards[zlib.crc32(name) % len(shards)]

    def _mark_stale(self) -> None:
        self._stale = True

    async def _load_map(self) -> None:
        """Load the slot map, one load at a time (later callers wait for the running one)."""
        loading = self._loading
        if loading is None or loading.done():
            loading = self._loading = asyncio.create_task(self._read_map(), name="redis-cluster-slots")
            loading.add_done_callback(_retrieve)
        await asyncio.shield(loading)

    async def _read_map(self) -> None:
        self._stale = False  # a refusal while loading asks for the next load
        try:
            ranges = sorted(await self._slots())
        except BaseException:
            self._stale = True
            raise
        self._starts = [first for first, _, _, _ in ranges]
        self._ranges = [(last, (host, port)) for _, last, host, port in ranges]
        current = {node for _, node in self._ranges}
        for node in [node for node in self._nodes if node not in current]:
            for shard in self._nodes.pop(node):  # a node that left: its listeners resume
                await shard.close()


def _retrieve(task: asyncio.Task[None]) -> None:
    """Mark a map load's failure as seen (its waiters, if any, got it already)."""
    if not task.cancelled():
        task.exception()
