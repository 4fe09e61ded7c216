"""``CreateRun.start`` and ``TransitionRun.through_completing``: two calls' worth of moves in one."""

from __future__ import annotations

import asyncio
import json
import socket
import urllib.request
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Any

import grpc
import pytest

from registry_service.admission import NewRun, create_run
from registry_service.database import Database, open_database
from registry_service.migrator import upgrade_schema
from registry_service.runs import Transition, complete_through, get_run, transition_run
from registry_service.settings import DatabaseSettings, RegistrySettings
from registry_service.states import COMPLETED, COMPLETING, ENQUEUE, INTERRUPT, RUNNING, STARTING
from runwire.common.v1 import context_pb2, run_pb2
from runwire_common.ids import new_id
from runwire_common.names import STATE_NAMES, TERMINAL_STATES
from tests.registry_service.support import Registry, open_registry, rpc_error, status_of

S = run_pb2
RESULT = '{"answer": 42}'
# Columns that differ between two runs created alike: their identity.
IDENTITY = frozenset({"run_id", "thread_id"})


def _row(record: Any) -> dict[str, Any]:
    return {key: value for key, value in record._asdict().items() if key not in IDENTITY}


@pytest.fixture
async def database(database_url: str) -> AsyncIterator[Database]:
    async with open_database(DatabaseSettings(database_url=database_url)) as opened:
        await upgrade_schema(opened.write_engine())
        yield opened


def _new_run(user: str, *, start: bool, strategy: str = "reject", thread_id: str = "") -> NewRun:
    return NewRun(
        user_id=user,
        tenant_id="tenant-a",
        thread_id=thread_id or new_id("thread"),
        agent="scripted",
        input_json='{"steps": []}',
        multitask_strategy=strategy,
        executor_id="executor-a",
        timeout_seconds=30,
        start=start,
    )


# --- CreateRun.start -----------------------------------------------------------------------------


async def test_a_run_created_with_start_is_stored_as_create_then_start_in_one_transaction(
    database: Database,
) -> None:
    user, now = new_id("user"), datetime(2026, 11, 21, 12, 0, 0, 123456, tzinfo=UTC)

    def two_steps(connection: Any) -> Any:
        run = create_run(connection, _new_run(user, start=False), max_live_runs=3, now=now).run
        return transition_run(
            connection, Transition(to_state=STARTING), user_id=user, run_id=run.run_id, now=now
        )

    expected = await database.write(two_steps)
    created = await database.write(
        lambda connection: create_run(connection, _new_run(user, start=True), max_live_runs=3, now=now).run
    )
    stored = await database.read(lambda connection: get_run(connection, user_id=user, run_id=created.run_id))

    assert _row(created) == _row(expected)
    assert _row(stored) == _row(expected)
    assert (created.state, created.version, created.started_at) == (STARTING, 2, now)


async def test_a_run_created_with_start_answers_starting_at_version_two(registry: Registry) -> None:
    run = await registry.create(new_id("user"), start=True, executor_id="executor-b")

    assert (run.state, run.version) == (S.RUN_STATE_STARTING, 2)
    assert run.started_at == run.created_at == run.updated_at
    assert run.executor_id == "executor-b"
    assert not run.HasField("finished_at") and not run.HasField("error")
    assert await registry.get(run) == run


async def test_a_started_run_goes_on_like_one_started_by_a_transition(registry: Registry) -> None:
    run = await registry.create(new_id("user"), start=True)

    running = await registry.transition(run, S.RUN_STATE_RUNNING, expected_version=2)

    assert (running.state, running.version) == (S.RUN_STATE_RUNNING, 3)
    assert running.started_at == run.started_at


async def test_a_run_started_by_create_cannot_be_started_again(registry: Registry) -> None:
    run = await registry.create(new_id("user"), start=True)

    error = await rpc_error(registry.transition(run, S.RUN_STATE_STARTING))

    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error.details() == "a starting run cannot move to starting"


async def test_without_start_a_run_is_still_created_pending(registry: Registry) -> None:
    run = await registry.create(new_id("user"))

    assert (run.state, run.version) == (S.RUN_STATE_PENDING, 1)
    assert not run.HasField("started_at")


async def test_a_run_enqueued_behind_a_live_run_stays_pending_despite_start(registry: Registry) -> None:
    user, thread = new_id("user"), new_id("thread")
    first = await registry.create(user, thread_id=thread, start=True)

    queued = await registry.create(user, thread_id=thread, strategy=S.MULTITASK_STRATEGY_ENQUEUE, start=True)

    assert (queued.state, queued.version) == (S.RUN_STATE_PENDING, 1)
    assert not queued.HasField("started_at")
    assert await status_of(registry.transition(queued, S.RUN_STATE_STARTING)) == grpc.StatusCode.ABORTED
    await registry.transition(first, S.RUN_STATE_CANCELLED)
    started = await registry.transition(queued, S.RUN_STATE_STARTING)
    assert (started.state, started.version) == (S.RUN_STATE_STARTING, 2)


async def test_an_enqueue_run_on_a_free_thread_is_started(registry: Registry) -> None:
    run = await registry.create(new_id("user"), strategy=S.MULTITASK_STRATEGY_ENQUEUE, start=True)

    assert (run.state, run.version) == (S.RUN_STATE_STARTING, 2)


async def test_a_queued_run_is_stored_as_a_plain_queued_run(database: Database) -> None:
    user, thread, now = new_id("user"), new_id("thread"), datetime.now(UTC)
    await database.write(
        lambda c: create_run(c, _new_run(user, start=True, thread_id=thread), max_live_runs=3, now=now)
    )

    def admit(start: bool) -> Any:
        request = _new_run(user, start=start, strategy=ENQUEUE, thread_id=thread)
        return lambda c: create_run(c, request, max_live_runs=3, now=now).run

    plain = await database.write(admit(False))
    started = await database.write(admit(True))

    assert _row(started) == _row(plain)
    assert (started.state, started.version, started.queued) == ("pending", 1, True)


async def test_an_interrupting_run_with_start_is_started_and_the_old_one_cancelled(
    registry: Registry,
) -> None:
    user, thread = new_id("user"), new_id("thread")
    old = await registry.create(user, thread_id=thread, start=True)

    new = await registry.create(user, thread_id=thread, strategy=S.MULTITASK_STRATEGY_INTERRUPT, start=True)

    assert (new.state, new.version) == (S.RUN_STATE_STARTING, 2)
    cancelled = await registry.get(old)
    assert (cancelled.state, cancelled.version, cancelled.error.code) == (
        S.RUN_STATE_CANCELLED,
        3,
        "interrupted",
    )


async def test_an_interrupting_run_with_start_equals_interrupt_then_start(database: Database) -> None:
    now = datetime.now(UTC)

    def interrupt(user: str, *, start: bool) -> Any:
        def work(connection: Any) -> Any:
            thread = new_id("thread")
            create_run(connection, _new_run(user, start=True, thread_id=thread), max_live_runs=3, now=now)
            request = _new_run(user, start=start, strategy=INTERRUPT, thread_id=thread)
            run = create_run(connection, request, max_live_runs=3, now=now).run
            if start:
                return run
            change = Transition(to_state=STARTING)
            return transition_run(connection, change, user_id=user, run_id=run.run_id, now=now)

        return work

    user = new_id("user")
    expected = await database.write(interrupt(user, start=False))
    started = await database.write(interrupt(user, start=True))

    assert _row(started) == _row(expected)


async def test_a_start_on_a_busy_thread_with_reject_is_refused_and_creates_nothing(
    registry: Registry,
) -> None:
    user, thread = new_id("user"), new_id("thread")
    await registry.create(user, thread_id=thread, start=True)

    error = await rpc_error(registry.create(user, thread_id=thread, start=True))

    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "already has a live run" in (error.details() or "")


async def test_started_runs_count_against_the_quota(registry: Registry) -> None:
    user = new_id("user")
    for _ in range(registry.settings.max_live_runs_per_user):
        await registry.create(user, start=True)

    error = await rpc_error(registry.create(user, start=True))

    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


# --- TransitionRun.through_completing ----------------------------------------------------------


async def test_a_running_run_completes_through_completing_in_one_call(registry: Registry) -> None:
    run = await registry.run_in(new_id("user"), S.RUN_STATE_RUNNING)

    completed = await registry.transition(
        run, S.RUN_STATE_COMPLETED, result_json=RESULT, through_completing=True
    )

    assert (completed.state, completed.version) == (S.RUN_STATE_COMPLETED, run.version + 2)
    assert json.loads(completed.result_json) == {"answer": 42}
    assert completed.HasField("finished_at") and completed.started_at == run.started_at
    assert completed.updated_at == completed.finished_at
    assert not completed.HasField("error") and not completed.cancel_requested
    assert await registry.get(run) == completed


async def test_completing_through_equals_completing_then_completed_in_one_transaction(
    database: Database,
) -> None:
    user, now = new_id("user"), datetime(2026, 11, 21, 12, 0, 1, tzinfo=UTC)

    async def running_run() -> Any:
        run = await database.write(
            lambda c: create_run(c, _new_run(user, start=True), max_live_runs=3, now=now).run
        )
        return await database.write(
            lambda c: transition_run(
                c, Transition(to_state=RUNNING), user_id=user, run_id=run.run_id, now=now
            )
        )

    first, second = await running_run(), await running_run()

    def two_steps(connection: Any) -> Any:
        kwargs = {"user_id": user, "run_id": first.run_id, "now": now}
        transition_run(connection, Transition(to_state=COMPLETING, result_json=RESULT), **kwargs)
        return transition_run(connection, Transition(to_state=COMPLETED, result_json=RESULT), **kwargs)

    expected = await database.write(two_steps)
    change = Transition(to_state=COMPLETED, result_json=RESULT, through_completing=True)
    through, entered = await database.write(
        lambda c: complete_through(c, change, user_id=user, run_id=second.run_id, now=now)
    )

    assert entered == (COMPLETING, COMPLETED)
    assert _row(through) == _row(expected)


async def test_a_completing_run_just_completes(registry: Registry) -> None:
    run = await registry.run_in(new_id("user"), S.RUN_STATE_RUNNING)
    completing = await registry.transition(run, S.RUN_STATE_COMPLETING, result_json=RESULT)

    completed = await registry.transition(completing, S.RUN_STATE_COMPLETED, through_completing=True)

    assert (completed.state, completed.version) == (S.RUN_STATE_COMPLETED, completing.version + 1)
    assert json.loads(completed.result_json) == {"answer": 42}


@pytest.mark.parametrize("source", (S.RUN_STATE_PENDING, S.RUN_STATE_STARTING), ids=lambda s: STATE_NAMES[s])
async def test_through_completing_from_an_early_state_is_refused_like_a_plain_completion(
    registry: Registry, source: int
) -> None:
    run = await registry.run_in(new_id("user"), source)
    plain = await rpc_error(registry.transition(run, S.RUN_STATE_COMPLETED))

    error = await rpc_error(registry.transition(run, S.RUN_STATE_COMPLETED, through_completing=True))

    assert error.code() == plain.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error.details() == plain.details() == f"a {STATE_NAMES[source]} run cannot move to completed"
    assert await registry.get(run) == run


@pytest.mark.parametrize("terminal", sorted(TERMINAL_STATES), ids=lambda s: STATE_NAMES[s])
async def test_through_completing_from_a_terminal_state_is_refused(registry: Registry, terminal: int) -> None:
    run = await registry.run_in(new_id("user"), terminal)

    error = await rpc_error(registry.transition(run, S.RUN_STATE_COMPLETED, through_completing=True))

    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error.details() == f"run is already {STATE_NAMES[terminal]}"
    assert await registry.get(run) == run


async def test_through_completing_of_an_unknown_run_is_not_found(registry: Registry) -> None:
    run = run_pb2.Run(run_id=new_id("run"), user_id=new_id("user"), thread_id=new_id("thread"))

    status = await status_of(registry.transition(run, S.RUN_STATE_COMPLETED, through_completing=True))

    assert status == grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize(
    "target",
    (S.RUN_STATE_COMPLETING, S.RUN_STATE_RUNNING, S.RUN_STATE_FAILED, S.RUN_STATE_CANCELLED),
    ids=lambda s: STATE_NAMES[s],
)
async def test_through_completing_to_another_state_is_an_invalid_argument(
    registry: Registry, target: int
) -> None:
    run = await registry.run_in(new_id("user"), S.RUN_STATE_RUNNING)

    error = await rpc_error(registry.transition(run, target, through_completing=True))

    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "through_completing" in (error.details() or "")
    assert await registry.get(run) == run


async def test_the_expected_version_is_the_version_before_the_call(registry: Registry) -> None:
    run = await registry.run_in(new_id("user"), S.RUN_STATE_RUNNING)

    completed = await registry.transition(
        run, S.RUN_STATE_COMPLETED, expected_version=run.version, through_completing=True
    )

    assert completed.version == run.version + 2


@pytest.mark.parametrize("offset", (-1, 1, 2), ids=("older", "newer", "after-both"))
async def test_a_stale_expected_version_is_refused_and_changes_nothing(
    registry: Registry, offset: int
) -> None:
    run = await registry.run_in(new_id("user"), S.RUN_STATE_RUNNING)

    error = await rpc_error(
        registry.transition(
            run, S.RUN_STATE_COMPLETED, expected_version=run.version + offset, through_completing=True
        )
    )

    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error.details() == f"run is at version {run.version}, not the expected {run.version + offset}"
    assert await registry.get(run) == run


async def test_a_completing_run_completes_at_its_expected_version(registry: Registry) -> None:
    run = await registry.run_in(new_id("user"), S.RUN_STATE_COMPLETING)

    completed = await registry.transition(
        run, S.RUN_STATE_COMPLETED, expected_version=run.version, through_completing=True
    )

    assert (completed.state, completed.version) == (S.RUN_STATE_COMPLETED, run.version + 1)


async def test_cancel_racing_through_completing_has_exactly_one_winner(registry: Registry) -> None:
    for _ in range(15):
        run = await registry.run_in(new_id("user"), S.RUN_STATE_RUNNING)

        cancel, complete = await asyncio.gather(
            status_of(registry.transition(run, S.RUN_STATE_CANCELLED)),
            status_of(registry.transition(run, S.RUN_STATE_COMPLETED, through_completing=True)),
        )

        assert sorted((cancel.name, complete.name)) == ["FAILED_PRECONDITION", "OK"]
        final = await registry.get(run)
        if complete == grpc.StatusCode.OK:
            assert (final.state, final.version) == (S.RUN_STATE_COMPLETED, run.version + 2)
        else:
            assert (final.state, final.version) == (S.RUN_STATE_CANCELLED, run.version + 1)


async def test_twenty_concurrent_completions_through_completing_have_one_winner(registry: Registry) -> None:
    run = await registry.run_in(new_id("user"), S.RUN_STATE_RUNNING)

    statuses = await asyncio.gather(
        *(
            status_of(registry.transition(run, S.RUN_STATE_COMPLETED, through_completing=True))
            for _ in range(20)
        )
    )

    assert statuses.count(grpc.StatusCode.OK) == 1
    assert statuses.count(grpc.StatusCode.FAILED_PRECONDITION) == 19
    final = await registry.get(run)
    assert (final.state, final.version) == (S.RUN_STATE_COMPLETED, run.version + 2)


# --- metrics -------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _transitions(port: int) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    counts: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("runwire_registry_transitions_total{"):
            labels, value = line.rsplit(" ", 1)
            counts[labels.split('to_state="')[1].split('"')[0]] = float(value)
    return counts


async def test_both_shortcuts_count_every_transition_they_make(
    registry_settings: RegistrySettings, make_context: Callable[..., context_pb2.UserContext]
) -> None:
    port = _free_port()
    settings = registry_settings.model_copy(update={"metrics_port": port})
    async with open_registry(settings, make_context) as registry:
        user = new_id("user")
        run = await registry.create(user, start=True)
        assert _transitions(port).get("starting") == 1
        run = await registry.transition(run, S.RUN_STATE_RUNNING)
        await registry.transition(run, S.RUN_STATE_COMPLETED, through_completing=True)
        other = await registry.run_in(user, S.RUN_STATE_COMPLETING)
        await registry.transition(other, S.RUN_STATE_COMPLETED, through_completing=True)

        assert _transitions(port) == {
            "starting": 2,
            "running": 2,
            "completing": 2,
            "completed": 2,
        }
