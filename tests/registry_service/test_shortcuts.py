"""``CreateRun.initial_state`` and ``TransitionRun.through_completing``: several calls' worth of moves in one."""

from __future__ import annotations

import asyncio
import json
import socket
import urllib.request
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any

import grpc
import pytest

from registry_service.admission import NewRun, create_run
from registry_service.database import Database, open_database
from registry_service.migrator import upgrade_schema
from registry_service.runs import Transition, complete_through, get_run, transition_run
from registry_service.settings import DatabaseSettings, RegistrySettings
from registry_service.states import (
    CANCELLED,
    COMPLETED,
    COMPLETING,
    ENQUEUE,
    INTERRUPT,
    PENDING,
    RUNNING,
    STARTING,
)
from runwire.common.v1 import context_pb2, run_pb2
from runwire_common.errors import InvalidArgument
from runwire_common.ids import new_id
from runwire_common.names import STATE_NAMES, TERMINAL_STATES
from runwire_common.owners import Owner, owner_of
from tests.registry_service.support import Registry, open_registry, rpc_error, status_of

S = run_pb2
RESULT = '{"answer": 42}'
# Columns that differ between two runs created alike: their identity.
IDENTITY = frozenset({"run_id", "thread_id"})


def _state_id(value: int) -> str:
    return STATE_NAMES.get(value, "unspecified" if value == S.RUN_STATE_UNSPECIFIED else str(value))


def _row(record: Any) -> dict[str, Any]:
    return {key: value for key, value in record._asdict().items() if key not in IDENTITY}


@pytest.fixture
async def database(database_url: str) -> AsyncIterator[Database]:
    async with open_database(DatabaseSettings(database_url=database_url)) as opened:
        await upgrade_schema(opened.write_engine())
        yield opened


# --- CreateRun.initial_state ---------------------------------------------------------------------

# The states a run can be created in besides pending, their messages, the moves that reach them
# and the version they leave a run at (written out, not derived, so a wrong version fails).
STEPS = MappingProxyType({STARTING: (STARTING,), RUNNING: (STARTING, RUNNING)})
MESSAGES = MappingProxyType({STARTING: S.RUN_STATE_STARTING, RUNNING: S.RUN_STATE_RUNNING})
VERSIONS = MappingProxyType({STARTING: 2, RUNNING: 3})
TENANT = "tenant-a"
initial_states = pytest.mark.parametrize("initial", (STARTING, RUNNING))


def _new_run(
    user: str, *, initial_state: str = PENDING, strategy: str = "reject", thread_id: str = ""
) -> NewRun:
    return NewRun(
        user_id=user,
        tenant_id=TENANT,
        thread_id=thread_id or new_id("thread"),
        agent="scripted",
        input_json='{"steps": []}',
        multitask_strategy=strategy,
        executor_id="executor-a",
        timeout_seconds=30,
        initial_state=initial_state,
    )


def _steps_to(connection: Any, run: Any, state: str, *, now: datetime) -> Any:
    """``run`` (pending) moved to ``state`` one ``transition_run`` at a time, as an executor would."""
    for step in STEPS[state]:
        change = Transition(to_state=step)
        run = transition_run(connection, change, owner=owner_of(run), run_id=run.run_id, now=now)
    return run


@initial_states
async def test_a_run_created_in_an_initial_state_is_stored_as_create_then_each_step_in_one_transaction(
    database: Database, initial: str
) -> None:
    user, now = new_id("user"), datetime(2026, 11, 21, 12, 0, 0, 123456, tzinfo=UTC)

    def step_by_step(connection: Any) -> Any:
        run = create_run(connection, _new_run(user), max_live_runs=3, now=now).run
        return _steps_to(connection, run, initial, now=now)

    expected = await database.write(step_by_step)
    admitted = await database.write(
        lambda c: create_run(c, _new_run(user, initial_state=initial), max_live_runs=3, now=now)
    )
    created = admitted.run
    stored = await database.read(
        lambda connection: get_run(connection, owner=Owner(TENANT, user), run_id=created.run_id)
    )

    assert _row(created) == _row(expected)
    assert _row(stored) == _row(expected)
    assert (created.state, created.version, created.started_at) == (initial, VERSIONS[initial], now)
    assert (created.updated_at, created.finished_at, created.queued) == (now, None, False)
    assert admitted.entered == STEPS[initial]


@pytest.mark.parametrize("pending", (PENDING, None), ids=("pending", "default"))
async def test_a_run_created_pending_or_by_default_enters_no_state(
    database: Database, pending: str | None
) -> None:
    user, now = new_id("user"), datetime.now(UTC)
    request = _new_run(user) if pending is None else _new_run(user, initial_state=pending)

    admitted = await database.write(lambda c: create_run(c, request, max_live_runs=3, now=now))

    assert (admitted.run.state, admitted.run.version, admitted.run.started_at) == (PENDING, 1, None)
    assert admitted.entered == ()


@pytest.mark.parametrize("state", (COMPLETING, COMPLETED, CANCELLED, "paused"))
def test_a_new_run_in_another_initial_state_is_an_invalid_argument(state: str) -> None:
    with pytest.raises(InvalidArgument, match=f"initial_state must be one of .*, not {state}"):
        _new_run(new_id("user"), initial_state=state)


@initial_states
async def test_a_run_created_in_an_initial_state_answers_it_at_its_version(
    registry: Registry, initial: str
) -> None:
    run = await registry.create(new_id("user"), initial_state=MESSAGES[initial], executor_id="executor-b")

    assert (run.state, run.version) == (MESSAGES[initial], VERSIONS[initial])
    assert run.started_at == run.created_at == run.updated_at
    assert run.executor_id == "executor-b"
    assert not run.HasField("finished_at") and not run.HasField("error")
    assert not run.cancel_requested
    assert await registry.get(run) == run


@initial_states
async def test_a_run_created_in_an_initial_state_answers_like_one_moved_there_step_by_step(
    registry: Registry, initial: str
) -> None:
    user = new_id("user")
    stepped = await registry.run_in(user, MESSAGES[initial])

    created = await registry.create(user, initial_state=MESSAGES[initial])

    assert created.started_at == created.created_at == created.updated_at
    for message in (stepped, created):  # what differs between two runs: identity and clock
        for name in ("run_id", "thread_id", "created_at", "updated_at", "started_at"):
            message.ClearField(name)
    assert created == stepped


@initial_states
async def test_a_run_created_in_an_initial_state_goes_on_like_one_moved_by_transitions(
    registry: Registry, initial: str
) -> None:
    run = await registry.create(new_id("user"), initial_state=MESSAGES[initial])
    next_state = {STARTING: S.RUN_STATE_RUNNING, RUNNING: S.RUN_STATE_COMPLETING}[initial]

    moved = await registry.transition(run, next_state, expected_version=VERSIONS[initial])

    assert (moved.state, moved.version) == (next_state, VERSIONS[initial] + 1)
    assert moved.started_at == run.started_at


async def test_a_run_created_running_completes_through_completing(registry: Registry) -> None:
    run = await registry.create(new_id("user"), initial_state=S.RUN_STATE_RUNNING)

    completed = await registry.transition(
        run, S.RUN_STATE_COMPLETED, expected_version=3, result_json=RESULT, through_completing=True
    )

    assert (completed.state, completed.version) == (S.RUN_STATE_COMPLETED, 5)


@pytest.mark.parametrize(
    ("initial", "target"),
    ((STARTING, STARTING), (RUNNING, STARTING), (RUNNING, RUNNING)),
    ids=("starting-to-starting", "running-to-starting", "running-to-running"),
)
async def test_a_run_created_in_an_initial_state_cannot_take_a_step_it_already_took(
    registry: Registry, initial: str, target: str
) -> None:
    run = await registry.create(new_id("user"), initial_state=MESSAGES[initial])

    error = await rpc_error(registry.transition(run, MESSAGES[target]))

    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error.details() == f"a {initial} run cannot move to {target}"
    assert await registry.get(run) == run


@pytest.mark.parametrize("pending", (S.RUN_STATE_UNSPECIFIED, S.RUN_STATE_PENDING), ids=_state_id)
async def test_an_unspecified_or_pending_initial_state_creates_a_pending_run(
    registry: Registry, pending: int
) -> None:
    run = await registry.create(new_id("user"), initial_state=pending)

    assert (run.state, run.version) == (S.RUN_STATE_PENDING, 1)
    assert not run.HasField("started_at")


@pytest.mark.parametrize(
    "state",
    (
        S.RUN_STATE_COMPLETING,
        S.RUN_STATE_COMPLETED,
        S.RUN_STATE_FAILED,
        S.RUN_STATE_TIMEOUT,
        S.RUN_STATE_CANCELLED,
        S.RUN_STATE_DEAD,
        99,
    ),
    ids=_state_id,
)
async def test_any_other_initial_state_is_an_invalid_argument_and_creates_nothing(
    registry: Registry, state: int
) -> None:
    user, thread = new_id("user"), new_id("thread")

    error = await rpc_error(registry.create(user, thread_id=thread, initial_state=state))

    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    given = S.RunState.Name(S.RunState.ValueType(state)) if state in S.RunState.values() else str(state)
    assert error.details() == (
        "initial_state must be RUN_STATE_UNSPECIFIED, RUN_STATE_PENDING, RUN_STATE_STARTING "
        f"or RUN_STATE_RUNNING, not {given}"
    )
    assert await registry.list_thread(user, thread) == []


@initial_states
async def test_a_run_enqueued_behind_a_live_run_stays_pending_whatever_its_initial_state(
    registry: Registry, initial: str
) -> None:
    user, thread = new_id("user"), new_id("thread")
    first = await registry.create(user, thread_id=thread, initial_state=MESSAGES[initial])

    queued = await registry.create(
        user, thread_id=thread, strategy=S.MULTITASK_STRATEGY_ENQUEUE, initial_state=MESSAGES[initial]
    )

    assert (queued.state, queued.version) == (S.RUN_STATE_PENDING, 1)
    assert not queued.HasField("started_at")
    assert await status_of(registry.transition(queued, S.RUN_STATE_STARTING)) == grpc.StatusCode.ABORTED
    await registry.transition(first, S.RUN_STATE_CANCELLED)
    started = await registry.transition(queued, S.RUN_STATE_STARTING)
    assert (started.state, started.version) == (S.RUN_STATE_STARTING, 2)


@initial_states
async def test_an_enqueue_run_on_a_free_thread_is_created_in_its_initial_state(
    registry: Registry, initial: str
) -> None:
    run = await registry.create(
        new_id("user"), strategy=S.MULTITASK_STRATEGY_ENQUEUE, initial_state=MESSAGES[initial]
    )

    assert (run.state, run.version) == (MESSAGES[initial], VERSIONS[initial])


@initial_states
async def test_a_queued_run_is_stored_as_a_plain_queued_run(database: Database, initial: str) -> None:
    user, thread, now = new_id("user"), new_id("thread"), datetime.now(UTC)
    first = _new_run(user, initial_state=initial, thread_id=thread)
    await database.write(lambda c: create_run(c, first, max_live_runs=3, now=now))

    def admit(state: str) -> Any:
        request = _new_run(user, initial_state=state, strategy=ENQUEUE, thread_id=thread)
        return lambda c: create_run(c, request, max_live_runs=3, now=now)

    plain = (await database.write(admit(PENDING))).run
    admitted = await database.write(admit(initial))

    assert _row(admitted.run) == _row(plain)
    assert (admitted.run.state, admitted.run.version, admitted.run.queued) == (PENDING, 1, True)
    assert admitted.entered == ()


@initial_states
async def test_an_interrupting_run_is_created_in_its_initial_state_and_the_old_one_cancelled(
    registry: Registry, initial: str
) -> None:
    user, thread = new_id("user"), new_id("thread")
    old = await registry.create(user, thread_id=thread, initial_state=MESSAGES[initial])

    new = await registry.create(
        user, thread_id=thread, strategy=S.MULTITASK_STRATEGY_INTERRUPT, initial_state=MESSAGES[initial]
    )

    assert (new.state, new.version) == (MESSAGES[initial], VERSIONS[initial])
    cancelled = await registry.get(old)
    assert (cancelled.state, cancelled.version, cancelled.error.code) == (
        S.RUN_STATE_CANCELLED,
        VERSIONS[initial] + 1,
        "interrupted",
    )


@initial_states
async def test_an_interrupting_run_in_an_initial_state_equals_interrupt_then_each_step(
    database: Database, initial: str
) -> None:
    now = datetime.now(UTC)

    def interrupt(user: str, *, state: str) -> Any:
        def work(connection: Any) -> Any:
            thread = new_id("thread")
            busy = _new_run(user, initial_state=initial, thread_id=thread)
            create_run(connection, busy, max_live_runs=3, now=now)
            request = _new_run(user, initial_state=state, strategy=INTERRUPT, thread_id=thread)
            admitted = create_run(connection, request, max_live_runs=3, now=now)
            assert [run.state for run in admitted.interrupted] == [CANCELLED]
            return admitted.run if state != PENDING else _steps_to(connection, admitted.run, initial, now=now)

        return work

    user = new_id("user")
    expected = await database.write(interrupt(user, state=PENDING))
    created = await database.write(interrupt(user, state=initial))

    assert _row(created) == _row(expected)
    assert (created.state, created.version) == (initial, VERSIONS[initial])


@initial_states
async def test_an_initial_state_on_a_busy_thread_with_reject_is_refused_and_creates_nothing(
    registry: Registry, initial: str
) -> None:
    user, thread = new_id("user"), new_id("thread")
    first = await registry.create(user, thread_id=thread, initial_state=MESSAGES[initial])

    error = await rpc_error(registry.create(user, thread_id=thread, initial_state=MESSAGES[initial]))

    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "already has a live run" in (error.details() or "")
    assert await registry.list_thread(user, thread) == [first]


@initial_states
async def test_runs_created_in_an_initial_state_count_against_the_quota(
    registry: Registry, initial: str
) -> None:
    user = new_id("user")
    for _ in range(registry.settings.max_live_runs_per_user):
        await registry.create(user, initial_state=MESSAGES[initial])
    thread = new_id("thread")

    error = await rpc_error(registry.create(user, thread_id=thread, initial_state=MESSAGES[initial]))

    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert await registry.list_thread(user, thread) == []


@initial_states
async def test_at_the_quota_an_interrupting_run_takes_the_place_it_frees(
    registry: Registry, initial: str
) -> None:
    user, thread = new_id("user"), new_id("thread")
    old = await registry.create(user, thread_id=thread, initial_state=MESSAGES[initial])
    for _ in range(registry.settings.max_live_runs_per_user - 1):
        await registry.create(user, initial_state=MESSAGES[initial])
    refused = await rpc_error(registry.create(user, initial_state=MESSAGES[initial]))

    new = await registry.create(
        user, thread_id=thread, strategy=S.MULTITASK_STRATEGY_INTERRUPT, initial_state=MESSAGES[initial]
    )

    assert refused.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert (new.state, new.version) == (MESSAGES[initial], VERSIONS[initial])
    assert (await registry.get(old)).state == S.RUN_STATE_CANCELLED


@initial_states
async def test_a_queued_run_over_the_quota_is_refused_whatever_its_initial_state(
    registry: Registry, initial: str
) -> None:
    user, thread = new_id("user"), new_id("thread")
    first = await registry.create(user, thread_id=thread, initial_state=MESSAGES[initial])
    for _ in range(registry.settings.max_live_runs_per_user - 1):
        await registry.create(user)

    error = await rpc_error(
        registry.create(
            user, thread_id=thread, strategy=S.MULTITASK_STRATEGY_ENQUEUE, initial_state=MESSAGES[initial]
        )
    )

    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert await registry.list_thread(user, thread) == [first]


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
            lambda c: create_run(c, _new_run(user, initial_state=STARTING), max_live_runs=3, now=now).run
        )
        return await database.write(
            lambda c: transition_run(
                c, Transition(to_state=RUNNING), owner=Owner(TENANT, user), run_id=run.run_id, now=now
            )
        )

    first, second = await running_run(), await running_run()

    def two_steps(connection: Any) -> Any:
        kwargs = {"owner": Owner(TENANT, user), "run_id": first.run_id, "now": now}
        transition_run(connection, Transition(to_state=COMPLETING, result_json=RESULT), **kwargs)
        return transition_run(connection, Transition(to_state=COMPLETED, result_json=RESULT), **kwargs)

    expected = await database.write(two_steps)
    change = Transition(to_state=COMPLETED, result_json=RESULT, through_completing=True)
    through, entered = await database.write(
        lambda c: complete_through(c, change, owner=Owner(TENANT, user), run_id=second.run_id, now=now)
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


async def test_every_shortcut_counts_every_transition_it_makes(
    registry_settings: RegistrySettings, make_context: Callable[..., context_pb2.UserContext]
) -> None:
    port = _free_port()
    settings = registry_settings.model_copy(update={"metrics_port": port})
    async with open_registry(settings, make_context) as registry:
        user = new_id("user")
        run = await registry.create(user, initial_state=S.RUN_STATE_STARTING)
        assert _transitions(port) == {"starting": 1}
        run = await registry.transition(run, S.RUN_STATE_RUNNING)
        await registry.transition(run, S.RUN_STATE_COMPLETED, through_completing=True)
        other = await registry.run_in(user, S.RUN_STATE_COMPLETING)
        await registry.transition(other, S.RUN_STATE_COMPLETED, through_completing=True)
        assert _transitions(port) == {"starting": 2, "running": 2, "completing": 2, "completed": 2}

        running = await registry.create(user, initial_state=S.RUN_STATE_RUNNING)
        assert _transitions(port) == {"starting": 3, "running": 3, "completing": 2, "completed": 2}

        # Created pending (queued, by default), refused or invalid: no transition counted.
        thread = running.thread_id
        await registry.create(
            user, thread_id=thread, strategy=S.MULTITASK_STRATEGY_ENQUEUE, initial_state=S.RUN_STATE_RUNNING
        )
        await registry.create(user, initial_state=S.RUN_STATE_PENDING)
        await rpc_error(registry.create(user, thread_id=thread, initial_state=S.RUN_STATE_RUNNING))
        await rpc_error(registry.create(user, initial_state=S.RUN_STATE_RUNNING))  # over the quota
        await rpc_error(registry.create(user, initial_state=S.RUN_STATE_COMPLETED))
        assert _transitions(port) == {"starting": 3, "running": 3, "completing": 2, "completed": 2}

        await registry.create(
            user, thread_id=thread, strategy=S.MULTITASK_STRATEGY_INTERRUPT, initial_state=S.RUN_STATE_RUNNING
        )
        counts = _transitions(port)
        assert (counts["starting"], counts["running"]) == (4, 4)
