"""Publish is idempotent per (run_id, seq), assigns seq 0, and ends a run at its terminal event.

Runs over a real server on both backends (``bridge`` is parametrized).
"""

from __future__ import annotations

import asyncio

from tests.bridge_service.harness import (
    Bridge,
    ContextFactory,
    event,
    read_events,
    read_until_replay_complete,
)

RUN = "run_fence0123456789abcdef"
OTHER_RUN = "run_other0123456789abcde"


async def test_a_retried_batch_stores_nothing_twice(bridge: Bridge, make_context: ContextFactory) -> None:
    ctx = make_context()
    batch = [event(ctx, run_id=RUN, seq=s) for s in (1, 2, 3)]
    first = await bridge.publish_response(ctx, *batch)
    again = await bridge.publish_response(ctx, *batch)
    assert list(first.seqs) == [1, 2, 3]
    assert (list(again.event_ids), list(again.seqs)) == (["", "", ""], [0, 0, 0])
    assert await bridge.retained(ctx.user_id) == list(first.event_ids)


async def test_an_overlapping_retry_stores_only_the_new_events(
    bridge: Bridge, make_context: ContextFactory
) -> None:
    ctx = make_context()
    first = await bridge.publish(ctx, *(event(ctx, run_id=RUN, seq=s) for s in (1, 2, 3)))
    again = await bridge.publish_response(ctx, *(event(ctx, run_id=RUN, seq=s) for s in (2, 3, 4)))
    assert list(again.seqs) == [0, 0, 4]
    assert again.event_ids[:2] == ["", ""]
    assert await bridge.retained(ctx.user_id) == [*first, again.event_ids[2]]


async def test_seq_zero_takes_the_runs_next_seq(bridge: Bridge, make_context: ContextFactory) -> None:
    ctx = make_context()
    call = bridge.subscribe(ctx)
    await read_until_replay_complete(call)
    await bridge.publish(ctx, *(event(ctx, run_id=RUN, seq=s) for s in range(1, 6)))
    response = await bridge.publish_response(ctx, event(ctx, run_id=RUN, seq=0, type="agent_death"))
    fresh = await bridge.publish_response(ctx, event(ctx, run_id=OTHER_RUN, seq=0))
    assert list(response.seqs) == [6]
    assert list(fresh.seqs) == [1]  # a run never seen starts at 1
    received = await read_events(call, 7)
    assert [(e.run_id, e.seq) for e in received[5:]] == [(RUN, 6), (OTHER_RUN, 1)]
    assert received[5].event_id == response.event_ids[0]
    call.cancel()


async def test_only_the_first_terminal_event_is_stored(bridge: Bridge, make_context: ContextFactory) -> None:
    ctx = make_context()
    await bridge.publish(ctx, event(ctx, run_id=RUN, seq=1, type="agent_started"))
    done = await bridge.publish_response(
        ctx,
        event(ctx, run_id=RUN, seq=2, type="agent_completed"),
        event(ctx, run_id=RUN, seq=0, type="agent_cancelled"),
    )
    late = await bridge.publish_response(ctx, event(ctx, run_id=RUN, seq=0, type="agent_death"))
    assert list(done.seqs) == [2, 0]
    assert (list(late.event_ids), list(late.seqs)) == ([""], [0])
    assert len(await bridge.retained(ctx.user_id)) == 2


async def test_events_after_the_terminal_one_are_ignored(
    bridge: Bridge, make_context: ContextFactory
) -> None:
    ctx = make_context()
    stored = await bridge.publish(
        ctx, event(ctx, run_id=RUN, seq=1), event(ctx, run_id=RUN, seq=2, type="agent_error")
    )
    after = await bridge.publish_response(
        ctx, event(ctx, run_id=RUN, seq=3), event(ctx, run_id=RUN, seq=0), event(ctx, run_id=OTHER_RUN, seq=1)
    )
    assert list(after.seqs) == [0, 0, 1]  # another run of the same user is unaffected
    assert await bridge.retained(ctx.user_id) == [*stored, after.event_ids[2]]


async def test_a_seq_beyond_the_next_one_is_accepted(bridge: Bridge, make_context: ContextFactory) -> None:
    ctx = make_context()
    response = await bridge.publish_response(
        ctx, event(ctx, run_id=RUN, seq=1), event(ctx, run_id=RUN, seq=5), event(ctx, run_id=RUN, seq=3)
    )
    assert list(response.seqs) == [1, 5, 0]  # 3 is below the newest seq: a late duplicate
    nxt = await bridge.publish_response(ctx, event(ctx, run_id=RUN, seq=0))
    assert list(nxt.seqs) == [6]


async def test_twenty_concurrent_terminal_publishers_of_one_run_store_exactly_one(
    bridge: Bridge, make_context: ContextFactory
) -> None:
    ctx = make_context()
    call = bridge.subscribe(ctx)
    await read_until_replay_complete(call)
    await bridge.publish(ctx, event(ctx, run_id=RUN, seq=1, type="agent_started"))
    kinds = ("agent_completed", "agent_error", "agent_cancelled", "agent_death")
    responses = await asyncio.gather(
        *(bridge.publish_response(ctx, event(ctx, run_id=RUN, seq=0, type=kinds[i % 4])) for i in range(20))
    )
    winners = [r for r in responses if r.event_ids[0]]
    assert len(winners) == 1
    assert list(winners[0].seqs) == [2]
    assert all(list(r.seqs) == [0] for r in responses if r is not winners[0])
    assert len(await bridge.retained(ctx.user_id)) == 2
    received = await read_events(call, 2)
    assert [e.seq for e in received] == [1, 2]
    assert received[1].event_id == winners[0].event_ids[0]
    call.cancel()


async def test_runs_of_different_users_are_fenced_apart(bridge: Bridge, make_context: ContextFactory) -> None:
    alice, bob = make_context(), make_context()
    await bridge.publish(alice, event(alice, run_id=RUN, seq=1, type="agent_completed"))
    response = await bridge.publish_response(bob, event(bob, run_id=RUN, seq=1))
    assert list(response.seqs) == [1]


async def test_a_run_is_still_fenced_after_1500_later_runs_of_the_same_user(
    bridge: Bridge, make_context: ContextFactory
) -> None:
    # More finished runs than RUN_STATE_CAPACITY (1000), all within RUN_STATE_HOLD_S (600 s):
    # a publisher may still retry any of them, so none may lose its fencing state.
    ctx = make_context()
    end = event(ctx, run_id=RUN, seq=2, type="agent_completed")
    first = await bridge.publish(ctx, event(ctx, run_id=RUN, seq=1), end)
    assert all(first)
    for start in range(0, 1500, 500):
        later = [
            event(ctx, run_id=f"run_later{index:016d}", seq=1, type="agent_cancelled")
            for index in range(start, start + 500)
        ]
        assert all(await bridge.publish(ctx, *later))
    retried = await bridge.publish_response(ctx, end, event(ctx, run_id=RUN, seq=3))
    assert (list(retried.event_ids), list(retried.seqs)) == (["", ""], [0, 0])
