"""The run state machine, table-driven, through the real service."""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import Mapping

import grpc
import pytest

from registry_service.states import ALLOWED_SOURCES, TRANSITION_SOURCES
from runwire.common.v1 import run_pb2
from runwire.registry.v1 import registry_pb2
from runwire_common.ids import new_id
from runwire_common.names import STATE_NAMES, STATES_BY_NAME, TERMINAL_STATES
from tests.registry_service.support import Registry, rpc_error, status_of

S = run_pb2
ALL_STATES = tuple(sorted(STATE_NAMES))
LEGAL = frozenset(
    {
        (S.RUN_STATE_PENDING, S.RUN_STATE_STARTING),
        (S.RUN_STATE_STARTING, S.RUN_STATE_RUNNING),
        (S.RUN_STATE_RUNNING, S.RUN_STATE_COMPLETING),
        (S.RUN_STATE_COMPLETING, S.RUN_STATE_COMPLETED),
        *(
            (live, end)
            for live in (
                S.RUN_STATE_PENDING,
                S.RUN_STATE_STARTING,
                S.RUN_STATE_RUNNING,
                S.RUN_STATE_COMPLETING,
                S.RUN_STATE_WAITING,
            )
            for end in (S.RUN_STATE_FAILED, S.RUN_STATE_TIMEOUT, S.RUN_STATE_CANCELLED, S.RUN_STATE_DEAD)
        ),
    }
)
# Made by RequestInput and AnswerInput, which TransitionRun refuses (tests/registry_service/test_inputs.py).
INPUT_MOVES = frozenset(
    {(S.RUN_STATE_RUNNING, S.RUN_STATE_WAITING), (S.RUN_STATE_WAITING, S.RUN_STATE_RUNNING)}
)
ILLEGAL = tuple(pair for pair in itertools.product(ALL_STATES, ALL_STATES) if pair not in LEGAL)


def _name(pair: tuple[int, int]) -> str:
    return f"{STATE_NAMES[pair[0]]}->{STATE_NAMES[pair[1]]}"


def _pairs(table: Mapping[str, frozenset[str]]) -> set[tuple[int, int]]:
    return {
        (STATES_BY_NAME[source], STATES_BY_NAME[target])
        for target, sources in table.items()
        for source in sources
    }


def test_the_documented_table_matches_the_implementation() -> None:
    assert _pairs(ALLOWED_SOURCES) == LEGAL | INPUT_MOVES
    assert _pairs(TRANSITION_SOURCES) == LEGAL


@pytest.mark.parametrize("pair", sorted(LEGAL), ids=_name)
async def test_a_legal_transition_moves_the_run_and_bumps_its_version(
    registry: Registry, pair: tuple[int, int]
) -> None:
    source, target = pair
    run = await registry.run_in(new_id("user"), source)

    moved = await registry.transition(run, target)

    assert moved.state == target
    assert moved.version == run.version + 1
    assert moved.updated_at.ToDatetime() >= run.updated_at.ToDatetime()
    assert (await registry.get(run)).state == target


@pytest.mark.parametrize("pair", ILLEGAL, ids=_name)
async def test_an_illegal_transition_is_refused_and_changes_nothing(
    registry: Registry, pair: tuple[int, int]
) -> None:
    source, target = pair
    run = await registry.run_in(new_id("user"), source)

    error = await rpc_error(registry.transition(run, target))

    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    after = await registry.get(run)
    assert (after.state, after.version) == (run.state, run.version)


@pytest.mark.parametrize("terminal", sorted(TERMINAL_STATES), ids=lambda s: STATE_NAMES[s])
async def test_a_terminal_run_refuses_every_target_saying_it_is_already_over(
    registry: Registry, terminal: int
) -> None:
    run = await registry.run_in(new_id("user"), terminal)

    for target in ALL_STATES:
        error = await rpc_error(registry.transition(run, target))
        assert error.code() == grpc.StatusCode.FAILED_PRECONDITION, STATE_NAMES[target]
        assert error.details() == f"run is already {STATE_NAMES[terminal]}"

    assert await registry.get(run) == run


async def test_the_happy_path_records_start_finish_and_result(registry: Registry) -> None:
    run = await registry.create(new_id("user"))
    assert (run.state, run.version) == (S.RUN_STATE_PENDING, 1)
    assert not run.HasField("started_at") and not run.HasField("finished_at")

    starting = await registry.transition(run, S.RUN_STATE_STARTING)
    assert starting.HasField("started_at") and not starting.HasField("finished_at")
    running = await registry.transition(starting, S.RUN_STATE_RUNNING)
    assert running.started_at == starting.started_at
    completing = await registry.transition(running, S.RUN_STATE_COMPLETING, result_json='{"answer": 42}')
    completed = await registry.transition(completing, S.RUN_STATE_COMPLETED)

    assert completed.version == 5
    assert json.loads(completed.result_json) == {"answer": 42}
    assert completed.HasField("finished_at")
    assert completed.finished_at.ToDatetime() >= completed.started_at.ToDatetime()
    assert not completed.HasField("error")


async def test_a_failure_stores_the_callers_error(registry: Registry) -> None:
    run = await registry.run_in(new_id("user"), S.RUN_STATE_RUNNING)

    failed = await registry.transition(
        run, S.RUN_STATE_FAILED, error=run_pb2.RunError(code="tool_error", message="the tool broke")
    )

    assert failed.error == run_pb2.RunError(code="tool_error", message="the tool broke")
    assert failed.HasField("finished_at")
    assert (await registry.get(run)).error.code == "tool_error"


@pytest.mark.parametrize(
    "target",
    (S.RUN_STATE_FAILED, S.RUN_STATE_TIMEOUT, S.RUN_STATE_CANCELLED, S.RUN_STATE_DEAD),
    ids=lambda s: STATE_NAMES[s],
)
async def test_a_failure_without_an_error_gets_one_named_after_the_state(
    registry: Registry, target: int
) -> None:
    run = await registry.run_in(new_id("user"), S.RUN_STATE_RUNNING)

    ended = await registry.transition(run, target)

    assert ended.error.code == STATE_NAMES[target]
    assert ended.error.message


async def test_a_transition_at_the_expected_version_succeeds(registry: Registry) -> None:
    run = await registry.run_in(new_id("user"), S.RUN_STATE_STARTING)

    moved = await registry.transition(run, S.RUN_STATE_RUNNING, expected_version=run.version)

    assert moved.version == run.version + 1


async def test_a_transition_at_a_stale_version_is_refused(registry: Registry) -> None:
    run = await registry.run_in(new_id("user"), S.RUN_STATE_STARTING)

    error = await rpc_error(registry.transition(run, S.RUN_STATE_RUNNING, expected_version=run.version - 1))

    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "version" in (error.details() or "")
    assert (await registry.get(run)).state == S.RUN_STATE_STARTING


async def test_an_unspecified_target_state_is_an_invalid_argument(registry: Registry) -> None:
    run = await registry.create(new_id("user"))

    assert (
        await status_of(registry.transition(run, S.RUN_STATE_UNSPECIFIED)) == grpc.StatusCode.INVALID_ARGUMENT
    )


async def test_an_unknown_target_state_is_an_invalid_argument(registry: Registry) -> None:
    run = await registry.create(new_id("user"))

    assert await status_of(registry.transition(run, 99)) == grpc.StatusCode.INVALID_ARGUMENT


async def test_a_negative_expected_version_is_an_invalid_argument(registry: Registry) -> None:
    run = await registry.create(new_id("user"))

    status = await status_of(registry.transition(run, S.RUN_STATE_STARTING, expected_version=-1))

    assert status == grpc.StatusCode.INVALID_ARGUMENT


async def test_a_result_that_is_not_json_is_an_invalid_argument(registry: Registry) -> None:
    run = await registry.run_in(new_id("user"), S.RUN_STATE_RUNNING)

    status = await status_of(registry.transition(run, S.RUN_STATE_COMPLETING, result_json="{not json"))

    assert status == grpc.StatusCode.INVALID_ARGUMENT
    assert (await registry.get(run)).state == S.RUN_STATE_RUNNING


async def test_an_error_on_a_non_failure_transition_is_an_invalid_argument(registry: Registry) -> None:
    run = await registry.create(new_id("user"))

    status = await status_of(
        registry.transition(run, S.RUN_STATE_STARTING, error=run_pb2.RunError(code="x", message="y"))
    )

    assert status == grpc.StatusCode.INVALID_ARGUMENT


async def test_a_result_on_a_failure_transition_is_an_invalid_argument(registry: Registry) -> None:
    run = await registry.run_in(new_id("user"), S.RUN_STATE_RUNNING)

    status = await status_of(registry.transition(run, S.RUN_STATE_FAILED, result_json='"partial"'))

    assert status == grpc.StatusCode.INVALID_ARGUMENT


async def test_a_transition_without_a_run_id_is_an_invalid_argument(registry: Registry) -> None:
    ctx = registry.make_context(new_id("user"), thread_id=new_id("thread"))

    error = await rpc_error(
        registry.stub.TransitionRun(
            registry_pb2.TransitionRunRequest(user_context=ctx, to_state=S.RUN_STATE_STARTING), timeout=10
        )
    )

    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "run_id" in (error.details() or "")


async def test_a_transition_of_an_unknown_run_is_not_found(registry: Registry) -> None:
    ctx = registry.make_context(new_id("user"), run_id=new_id("run"))

    status = await status_of(
        registry.stub.TransitionRun(
            registry_pb2.TransitionRunRequest(user_context=ctx, to_state=S.RUN_STATE_STARTING), timeout=10
        )
    )

    assert status == grpc.StatusCode.NOT_FOUND


async def test_fifty_concurrent_completions_of_one_run_have_exactly_one_winner(registry: Registry) -> None:
    run = await registry.run_in(new_id("user"), S.RUN_STATE_RUNNING)

    statuses = await asyncio.gather(
        *(status_of(registry.transition(run, S.RUN_STATE_COMPLETING)) for _ in range(50))
    )

    assert statuses.count(grpc.StatusCode.OK) == 1
    assert statuses.count(grpc.StatusCode.FAILED_PRECONDITION) == 49
    final = await registry.get(run)
    assert (final.state, final.version) == (S.RUN_STATE_COMPLETING, run.version + 1)


async def test_fifty_concurrent_different_terminal_moves_leave_one_winner_and_its_state(
    registry: Registry,
) -> None:
    run = await registry.run_in(new_id("user"), S.RUN_STATE_RUNNING)
    ends = (S.RUN_STATE_FAILED, S.RUN_STATE_TIMEOUT, S.RUN_STATE_CANCELLED, S.RUN_STATE_DEAD)

    async def attempt(target: int) -> tuple[int, grpc.StatusCode]:
        return target, await status_of(registry.transition(run, target))

    outcomes = await asyncio.gather(*(attempt(ends[i % len(ends)]) for i in range(50)))

    winners = [target for target, status in outcomes if status == grpc.StatusCode.OK]
    losers = [status for _, status in outcomes if status != grpc.StatusCode.OK]
    assert len(winners) == 1
    assert set(losers) == {grpc.StatusCode.FAILED_PRECONDITION}
    final = await registry.get(run)
    assert (final.state, final.version) == (winners[0], run.version + 1)
    assert final.error.code == STATE_NAMES[winners[0]]
