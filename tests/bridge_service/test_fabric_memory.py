"""What an idle Fabric subscription costs the bridge: measured with tracemalloc, bounded by a test.

The stream is driven in process (no gRPC), on the memory bus, so the figure
is the bridge's own per-subscription state: the pump task and its coroutine,
the bus generator and its queue, the user's (empty) log, the bookkeeping of
the stream. ``python -m tests.bridge_service.test_fabric_memory`` prints the
breakdown by source file.
"""

from __future__ import annotations

import asyncio
import gc
import tracemalloc
from collections.abc import AsyncIterator

from bridge_service.fabric import FabricStream
from bridge_service.memory_bus import MemoryEventBus
from bridge_service.metrics import BridgeMetrics
from runwire.bridge.v1 import bridge_pb2
from runwire.common.v1 import context_pb2
from runwire_common.attestation import ContextAttestor, generate_key_spec

SUBSCRIPTIONS = 10_000
# The budget is 20 KB per idle connection for the bridge and the gateway together.
MAX_BYTES_PER_SUBSCRIPTION = 6_144


async def _requests(
    queue: asyncio.Queue[bridge_pb2.FabricRequest | None],
) -> AsyncIterator[bridge_pb2.FabricRequest]:
    while (request := await queue.get()) is not None:
        yield request


async def measure(count: int) -> tuple[float, tracemalloc.Snapshot, tracemalloc.Snapshot]:
    """Bytes per idle subscription once ``count`` subscriptions have replayed, and the two snapshots."""
    attestor = ContextAttestor.from_spec(generate_key_spec("mem"))
    bus = MemoryEventBus()
    stream = FabricStream(bus, attestor=attestor, metrics=BridgeMetrics(), draining=asyncio.Event())
    queue: asyncio.Queue[bridge_pb2.FabricRequest | None] = asyncio.Queue()
    replayed = 0
    progress = asyncio.Event()

    async def consume() -> None:
        nonlocal replayed
        async for response in stream.serve(_requests(queue)):
            replayed += sum(
                item.HasField("replay_complete")
                for item in bridge_pb2.FabricResponse.FromString(response).items
            )
            progress.set()

    async def add(first: int, n: int) -> None:
        target = replayed + n
        for sid in range(first, first + n):
            ctx = attestor.mint(context_pb2.UserContext(user_id=f"user_memory_{sid:08d}"), ttl_s=600)
            queue.put_nowait(
                bridge_pb2.FabricRequest(user_context=ctx, add=bridge_pb2.FabricAdd(subscription_id=sid))
            )
        while replayed < target:
            progress.clear()
            await progress.wait()

    consumer = asyncio.create_task(consume())
    try:
        await add(1, 200)  # warm up: first-time allocations (code objects, caches, metric children)
        gc.collect()
        before = tracemalloc.take_snapshot()
        await add(1_000_000, count)
        gc.collect()
        after = tracemalloc.take_snapshot()
        assert bus.subscriber_count("user_memory_01000000") == 1
    finally:
        queue.put_nowait(None)
        await asyncio.wait_for(consumer, 30)
    grown = sum(stat.size_diff for stat in after.compare_to(before, "filename"))
    return grown / count, before, after


async def test_an_idle_fabric_subscription_costs_the_bridge_a_few_kilobytes() -> None:
    tracemalloc.start()
    try:
        per_subscription, _, _ = await measure(SUBSCRIPTIONS)
    finally:
        tracemalloc.stop()
    print(f"\n{per_subscription:.0f} bytes per idle Fabric subscription at {SUBSCRIPTIONS}")
    assert per_subscription <= MAX_BYTES_PER_SUBSCRIPTION


def main() -> None:
    tracemalloc.start(25)
    per_subscription, before, after = asyncio.run(measure(SUBSCRIPTIONS))
    print(f"{per_subscription:.0f} bytes per idle Fabric subscription at {SUBSCRIPTIONS}")
    for stat in after.compare_to(before, "lineno")[:25]:
        print(f"{stat.size_diff / SUBSCRIPTIONS:8.0f} B  {stat.traceback[0]}")


if __name__ == "__main__":
    main()
