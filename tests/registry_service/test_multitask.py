"""Multitask strategies: a new run on a busy thread is rejected, queued, or interrupts the live ones."""

from __future__ import annotations

import asyncio

import grpc

from runwire.common.v1 import run_pb2
from runwire.registry.v1 import registry_pb2
from runwire_common.ids import new_id
from tests.registry_service.support import CALL_TIMEOUT_S, Registry, rpc_error, status_of

S = run_pb2
ENQUEUE = S.MULTITASK_STRATEGY_ENQUEUE
INTERRUPT = S.MULTITASK_STRATEGY_INTERRUPT


async def finish(registry: Registry, run: run_pb2.Run) -> run_pb2.Run:
    """Take a pending run through to completed."""
    for step in (S.RUN_STATE_STARTING, S.RUN_STATE_RUNNING, S.RUN_STATE_COMPLETING, S.RUN_STATE_COMPLETED):
        run = await registry.transition(run, step)
    return run


async def create_full(
    registry: Registry, user: str, thread: str, strategy: int
) -> registry_pb2.CreateRunResponse:
    return await registry.create_run(
        user, thread_id=thread, input_json="{}", strategy=strategy, executor_id=""
    )


async def thread_runs(registry: Registry, user: str, thread: str) -> list[run_pb2.Run]:
    listed = await registry.stub.ListRuns(
        registry_pb2.ListRunsRequest(
            user_context=registry.make_context(user), thread_id=thread, page_size=200
        ),
        timeout=CALL_TIMEOUT_S,
    )
    return list(listed.runs)


# --- enqueue -----------------------------------------------------------------------------------


async def test_enqueue_on_a_busy_thread_queues_the_run_as_pending(registry: Registry) -> None:
    user, thread = new_id("user"), new_id("thread")
    first = await registry.create(user, thread_id=thread)
    first = await registry.transition(first, S.RUN_STATE_STARTING)

    queued = await registry.create(user, thread_id=thread, strategy=ENQUEUE)

    assert (queued.state, queued.multitask_strategy) == (S.RUN_STATE_PENDING, ENQUEUE)
    assert (await registry.get(first)).state == S.RUN_STATE_STARTING


async def test_a_queued_run_is_aborted_until_the_live_run_ends_then_starts(registry: Registry) -> None:
    user, thread = new_id("user"), new_id("thread")
    first = await registry.create(user, thread_id=thread)
    queued = await registry.create(user, thread_id=thread, strategy=ENQUEUE)

    while_pending = await rpc_error(registry.transition(queued, S.RUN_STATE_STARTING))
    first = await registry.transition(first, S.RUN_STATE_STARTING)
    first = await registry.transition(first, S.RUN_STATE_RUNNING)
    while_running = await rpc_error(registry.transition(queued, S.RUN_STATE_STARTING))
    first = await registry.transition(first, S.RUN_STATE_COMPLETING)
    while_completing = await rpc_error(registry.transition(queued, S.RUN_STATE_STARTING))
    unchanged = await registry.get(queued)
    await registry.transition(first, S.RUN_STATE_COMPLETED)

    started = await registry.transition(queued, S.RUN_STATE_STARTING)

    for refusal in (while_pending, while_running, while_completing):
        assert refusal.code() == grpc.StatusCode.ABORTED
        assert "thread busy" in (refusal.details() or "")
        assert first.run_id in (refusal.details() or "")
    assert unchanged == queued
    assert started.state == S.RUN_STATE_STARTING


async def test_queued_runs_start_in_the_order_they_were_queued(registry: Registry) -> None:
    user, thread = new_id("user"), new_id("thread")
    first = await registry.create(user, thread_id=thread)
    first = await registry.transition(first, S.RUN_STATE_STARTING)
    q1 = await registry.create(user, thread_id=thread, strategy=ENQUEUE)
    q2 = await registry.create(user, thread_id=thread, strategy=ENQUEUE)
    await registry.transition(first, S.RUN_STATE_FAILED)

    q2_early = await rpc_error(registry.transition(q2, S.RUN_STATE_STARTING))
    q1 = await registry.transition(q1, S.RUN_STATE_STARTING)
    q2_still = await rpc_error(registry.transition(q2, S.RUN_STATE_STARTING))
    await registry.transition(q1, S.RUN_STATE_CANCELLED)
    q2 = await registry.transition(q2, S.RUN_STATE_STARTING)

    assert q2_early.code() == grpc.StatusCode.ABORTED and q1.run_id in (q2_early.details() or "")
    assert q2_still.code() == grpc.StatusCode.ABORTED and q1.run_id in (q2_still.details() or "")
    assert q2.state == S.RUN_STATE_STARTING


async def test_a_cancelled_queued_run_no_longer_holds_the_queue(registry: Registry) -> None:
    user, thread = new_id("user"), new_id("thread")
    first = await registry.create(user, thread_id=thread)
    q1 = await registry.create(user, thread_id=thread, strategy=ENQUEUE)
    q2 = await registry.create(user, thread_id=thread, strategy=ENQUEUE)

    await registry.transition(first, S.RUN_STATE_CANCELLED)
    await registry.transition(q1, S.RUN_STATE_CANCELLED)

    assert (await registry.transition(q2, S.RUN_STATE_STARTING)).state == S.RUN_STATE_STARTING


async def test_concurrent_starts_of_queued_runs_let_only_the_oldest_through(registry: Registry) -> None:
    user, thread = new_id("user"), new_id("thread")
    first = await registry.create(user, thread_id=thread)
    queued = [await registry.create(user, thread_id=thread, strategy=ENQUEUE) for _ in range(2)]
    await registry.transition(first, S.RUN_STATE_CANCELLED)

    statuses = await asyncio.gather(
        *(status_of(registry.transition(run, S.RUN_STATE_STARTING)) for run in queued for _ in range(5))
    )

    assert statuses.count(grpc.StatusCode.OK) == 1
    assert statuses.count(grpc.StatusCode.ABORTED) + statuses.count(grpc.StatusCode.FAILED_PRECONDITION) == 9
    states = {run.run_id: run.state for run in await thread_runs(registry, user, thread)}
    assert states[queued[0].run_id] == S.RUN_STATE_STARTING
    assert states[queued[1].run_id] == S.RUN_STATE_PENDING


async def test_queued_runs_count_against_the_quota(registry: Registry) -> None:
    user, thread = new_id("user"), new_id("thread")
    await registry.create(user, thread_id=thread)
    await registry.create(user, thread_id=thread, strategy=ENQUEUE)
    await registry.create(user, thread_id=thread, strategy=ENQUEUE)

    on_thread = await rpc_error(registry.create(user, thread_id=thread, strategy=ENQUEUE))
    elsewhere = await rpc_error(registry.create(user))

    assert on_thread.code() == elsewhere.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


# --- interrupt ---------------------------------------------------------------------------------


async def test_interrupt_cancels_the_threads_live_runs_and_returns_them(registry: Registry) -> None:
    user, thread = new_id("user"), new_id("thread")
    running = await registry.create(user, thread_id=thread)
    running = await registry.transition(running, S.RUN_STATE_STARTING)
    running = await registry.transition(running, S.RUN_STATE_RUNNING)
    queued = await registry.create(user, thread_id=thread, strategy=ENQUEUE)
    elsewhere = await registry.create(user)

    response = await create_full(registry, user, thread, INTERRUPT)

    new = response.run
    assert (new.state, new.thread_id, new.multitask_strategy) == (S.RUN_STATE_PENDING, thread, INTERRUPT)
    assert [run.run_id for run in response.interrupted_runs] == [running.run_id, queued.run_id]
    for before, after in zip((running, queued), response.interrupted_runs, strict=True):
        assert after.state == S.RUN_STATE_CANCELLED
        assert after.error.code == "interrupted"
        assert "interrupted by a newer run" in after.error.message
        assert after.version == before.version + 1
        assert after.HasField("finished_at")
        assert await registry.get(after) == after
    assert (await registry.get(elsewhere)).state == S.RUN_STATE_PENDING
    assert (await registry.transition(new, S.RUN_STATE_STARTING)).state == S.RUN_STATE_STARTING


async def test_interrupt_on_a_free_thread_interrupts_nothing(registry: Registry) -> None:
    user, thread = new_id("user"), new_id("thread")
    done = await finish(registry, await registry.create(user, thread_id=thread))

    response = await create_full(registry, user, thread, INTERRUPT)

    assert response.run.state == S.RUN_STATE_PENDING
    assert list(response.interrupted_runs) == []
    assert await registry.get(done) == done


async def test_interrupt_frees_the_places_of_the_runs_it_cancels(registry: Registry) -> None:
    user, thread = new_id("user"), new_id("thread")
    on_thread = await registry.create(user, thread_id=thread)
    others = [await registry.create(user) for _ in range(2)]  # at the quota of 3

    response = await create_full(registry, user, thread, INTERRUPT)

    assert [run.run_id for run in response.interrupted_runs] == [on_thread.run_id]
    assert [(await registry.get(run)).state for run in others] == [S.RUN_STATE_PENDING] * 2


async def test_interrupt_over_the_quota_is_refused_and_cancels_nothing(registry: Registry) -> None:
    user, thread = new_id("user"), new_id("thread")
    busy = [await registry.create(user) for _ in range(3)]
    free_thread = new_id("thread")

    error = await rpc_error(create_full(registry, user, free_thread, INTERRUPT))

    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert [await registry.get(run) for run in busy] == busy
    assert await thread_runs(registry, user, thread) == []


async def test_racing_interrupts_leave_exactly_one_live_run_on_the_thread(registry: Registry) -> None:
    user, thread = new_id("user"), new_id("thread")
    original = await registry.create(user, thread_id=thread)

    responses = await asyncio.gather(*(create_full(registry, user, thread, INTERRUPT) for _ in range(8)))

    runs = await thread_runs(registry, user, thread)
    live = [run for run in runs if run.state == S.RUN_STATE_PENDING]
    assert len(runs) == 9 and len(live) == 1
    assert all(
        (run.state, run.error.code) == (S.RUN_STATE_CANCELLED, "interrupted")
        for run in runs
        if run not in live
    )
    # Every run but the survivor was interrupted exactly once, by exactly one admission.
    interrupted = [run.run_id for response in responses for run in response.interrupted_runs]
    assert sorted(interrupted) == sorted(run.run_id for run in runs if run not in live)
    assert original.run_id in interrupted


async def test_racing_rejects_on_one_thread_admit_exactly_one(registry: Registry) -> None:
    user, thread = new_id("user"), new_id("thread")

    statuses = await asyncio.gather(
        status_of(create_full(registry, user, thread, S.MULTITASK_STRATEGY_REJECT)),
        status_of(create_full(registry, user, thread, S.MULTITASK_STRATEGY_REJECT)),
    )

    assert sorted(statuses, key=str) == sorted(
        [grpc.StatusCode.OK, grpc.StatusCode.FAILED_PRECONDITION], key=str
    )
    assert len(await thread_runs(registry, user, thread)) == 1
