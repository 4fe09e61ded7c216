"""Human in the loop: RequestInput, AnswerInput and GetInput, and waiting runs as live runs."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable

import grpc
import pytest

from registry_service.settings import RegistrySettings
from runwire.common.v1 import context_pb2, run_pb2
from runwire.registry.v1 import registry_pb2
from runwire_common.ids import new_id
from runwire_common.names import STATE_NAMES, TERMINAL_STATES
from tests.registry_service.support import Registry, eventually, open_registry, rpc_error, status_of

S = run_pb2
ASK = "ask_0123456789abcdef"
NOT_RUNNING = (
    S.RUN_STATE_PENDING,
    S.RUN_STATE_STARTING,
    S.RUN_STATE_COMPLETING,
    S.RUN_STATE_WAITING,
    *sorted(TERMINAL_STATES),
)
ENDS_OF_A_WAIT = (S.RUN_STATE_CANCELLED, S.RUN_STATE_TIMEOUT, S.RUN_STATE_FAILED, S.RUN_STATE_DEAD)


async def test_a_running_run_that_asks_waits_with_its_question_pending(registry: Registry) -> None:
    run = await registry.run_in(new_id("user"), S.RUN_STATE_RUNNING)

    waiting = await registry.request_input(run, prompt="Which city?", schema_json='{"type": "object"}')

    assert (waiting.state, waiting.version) == (S.RUN_STATE_WAITING, run.version + 1)
    pending = waiting.pending_input
    assert (pending.request_id, pending.kind, pending.prompt) == (ASK, S.INPUT_KIND_INPUT, "Which city?")
    assert pending.schema_json == '{"type": "object"}'
    assert pending.HasField("created_at") and not pending.HasField("answered_at")
    assert pending.response_json == ""
    assert await registry.get(run) == waiting


async def test_list_runs_and_heartbeats_show_the_pending_question(registry: Registry) -> None:
    user = new_id("user")
    waiting = await registry.run_in(user, S.RUN_STATE_WAITING)
    running = await registry.run_in(user, S.RUN_STATE_RUNNING)

    page = await registry.stub.ListRuns(
        registry_pb2.ListRunsRequest(user_context=registry.make_context(user)), timeout=10
    )
    beat = await registry.heartbeat(waiting, executor_id="executor-b")

    listed = {run.run_id: run for run in page.runs}
    assert listed[waiting.run_id].pending_input.request_id == ASK
    assert not listed[running.run_id].HasField("pending_input")
    assert beat.state == S.RUN_STATE_WAITING and beat.pending_input.request_id == ASK
    assert beat.HasField("last_heartbeat_at") and beat.version == waiting.version


async def test_an_approval_request_keeps_the_tool_call_and_its_expiry(registry: Registry) -> None:
    run = await registry.run_in(new_id("user"), S.RUN_STATE_RUNNING)
    expires = run_pb2.InputRequest().expires_at
    expires.FromSeconds(4_102_444_800)  # 2100-01-01

    waiting = await registry.request_input(
        run,
        kind=S.INPUT_KIND_APPROVAL,
        prompt="",
        tool_name="calculator",
        call_id="call_1",
        parameters_json='{"expression": "[redacted]"}',
        expires_at=expires,
    )

    pending = waiting.pending_input
    assert pending.kind == S.INPUT_KIND_APPROVAL
    assert (pending.tool_name, pending.call_id) == ("calculator", "call_1")
    assert json.loads(pending.parameters_json) == {"expression": "[redacted]"}
    assert pending.expires_at == expires


async def test_an_answer_resumes_the_run_and_is_kept_with_the_request(registry: Registry) -> None:
    waiting = await registry.run_in(new_id("user"), S.RUN_STATE_WAITING)

    answered = await registry.answer_input(waiting, response_json='{"text": "Paris"}')

    assert (answered.run.state, answered.run.version) == (S.RUN_STATE_RUNNING, waiting.version + 1)
    assert not answered.run.HasField("pending_input")
    assert answered.input.request_id == ASK and json.loads(answered.input.response_json) == {"text": "Paris"}
    assert answered.input.HasField("answered_at")
    fetched = await registry.get_input(waiting)
    assert fetched.input == answered.input and fetched.run == answered.run
    assert (await registry.get(waiting)) == answered.run


async def test_get_input_shows_an_unanswered_request_and_the_waiting_run(registry: Registry) -> None:
    waiting = await registry.run_in(new_id("user"), S.RUN_STATE_WAITING)

    fetched = await registry.get_input(waiting)

    assert fetched.input == waiting.pending_input
    assert fetched.run == waiting


async def test_a_run_can_ask_again_after_an_answer_and_only_the_new_question_is_pending(
    registry: Registry,
) -> None:
    waiting = await registry.run_in(new_id("user"), S.RUN_STATE_WAITING)
    resumed = (await registry.answer_input(waiting)).run

    again = await registry.request_input(resumed, request_id="ask_second_question_01", prompt="And when?")

    assert again.state == S.RUN_STATE_WAITING and again.version == waiting.version + 2
    assert again.pending_input.request_id == "ask_second_question_01"
    first = await registry.get_input(again)
    assert first.input.response_json and first.run.pending_input.request_id == "ask_second_question_01"
    stale = await rpc_error(registry.answer_input(again))  # the first request, answered already
    assert stale.code() == grpc.StatusCode.FAILED_PRECONDITION


@pytest.mark.parametrize("state", NOT_RUNNING, ids=lambda s: STATE_NAMES[s])
async def test_only_a_running_run_may_ask_and_a_refusal_changes_nothing(
    registry: Registry, state: int
) -> None:
    run = await registry.run_in(new_id("user"), state)

    error = await rpc_error(registry.request_input(run, request_id="ask_another_one_0001"))

    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert await registry.get(run) == run


async def test_a_request_id_the_run_already_used_is_already_exists(registry: Registry) -> None:
    waiting = await registry.run_in(new_id("user"), S.RUN_STATE_WAITING)

    while_waiting = await rpc_error(registry.request_input(waiting))
    resumed = (await registry.answer_input(waiting)).run
    after_answer = await rpc_error(registry.request_input(resumed))

    assert while_waiting.code() == after_answer.code() == grpc.StatusCode.ALREADY_EXISTS
    assert await registry.get(resumed) == resumed  # still running, not waiting


async def test_two_runs_may_use_the_same_request_id(registry: Registry) -> None:
    user = new_id("user")
    first = await registry.run_in(user, S.RUN_STATE_WAITING)
    second = await registry.run_in(user, S.RUN_STATE_WAITING)

    assert first.pending_input.request_id == second.pending_input.request_id == ASK


async def test_transition_run_neither_makes_a_run_wait_nor_resumes_one(registry: Registry) -> None:
    user = new_id("user")
    running = await registry.run_in(user, S.RUN_STATE_RUNNING)
    waiting = await registry.run_in(user, S.RUN_STATE_WAITING)

    to_waiting = await rpc_error(registry.transition(running, S.RUN_STATE_WAITING))
    to_running = await rpc_error(registry.transition(waiting, S.RUN_STATE_RUNNING))

    assert to_waiting.code() == to_running.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "RequestInput" in (to_waiting.details() or "")
    assert "AnswerInput" in (to_running.details() or "")
    assert await registry.get(running) == running and await registry.get(waiting) == waiting


@pytest.mark.parametrize("end", ENDS_OF_A_WAIT, ids=lambda s: STATE_NAMES[s])
async def test_a_run_that_stopped_waiting_cannot_be_answered(registry: Registry, end: int) -> None:
    waiting = await registry.run_in(new_id("user"), S.RUN_STATE_WAITING)
    ended = await registry.transition(waiting, end)
    assert ended.state == end and not ended.HasField("pending_input")

    error = await rpc_error(registry.answer_input(waiting))

    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert STATE_NAMES[end] in (error.details() or "")
    fetched = await registry.get_input(waiting)
    assert fetched.input.response_json == "" and fetched.run == ended


async def test_an_unknown_request_id_is_not_found(registry: Registry) -> None:
    waiting = await registry.run_in(new_id("user"), S.RUN_STATE_WAITING)

    answer = await rpc_error(registry.answer_input(waiting, request_id="ask_never_asked_000001"))
    fetch = await rpc_error(registry.get_input(waiting, request_id="ask_never_asked_000001"))

    assert answer.code() == fetch.code() == grpc.StatusCode.NOT_FOUND
    assert await registry.get(waiting) == waiting


async def test_a_second_answer_is_a_failed_precondition_and_keeps_the_first(registry: Registry) -> None:
    waiting = await registry.run_in(new_id("user"), S.RUN_STATE_WAITING)
    first = await registry.answer_input(waiting, response_json='{"text": "first"}')

    error = await rpc_error(registry.answer_input(waiting, response_json='{"text": "second"}'))

    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "already answered" in (error.details() or "")
    assert (await registry.get_input(waiting)).input == first.input


async def test_twenty_concurrent_answers_have_exactly_one_winner(registry: Registry) -> None:
    waiting = await registry.run_in(new_id("user"), S.RUN_STATE_WAITING)

    async def answer(i: int) -> grpc.StatusCode:
        return await status_of(registry.answer_input(waiting, response_json=json.dumps({"text": str(i)})))

    statuses = await asyncio.gather(*(answer(i) for i in range(20)))

    assert statuses.count(grpc.StatusCode.OK) == 1
    assert statuses.count(grpc.StatusCode.FAILED_PRECONDITION) == 19
    winner = str(statuses.index(grpc.StatusCode.OK))
    fetched = await registry.get_input(waiting)
    assert json.loads(fetched.input.response_json) == {"text": winner}
    assert (fetched.run.state, fetched.run.version) == (S.RUN_STATE_RUNNING, waiting.version + 1)


async def test_an_answer_racing_a_cancel_never_resumes_a_cancelled_run(registry: Registry) -> None:
    for _ in range(5):
        waiting = await registry.run_in(new_id("user"), S.RUN_STATE_WAITING)

        answer, cancel = await asyncio.gather(
            status_of(registry.answer_input(waiting)),
            status_of(registry.transition(waiting, S.RUN_STATE_CANCELLED)),
        )

        assert cancel == grpc.StatusCode.OK  # from waiting, or from running after the answer
        assert answer in (grpc.StatusCode.OK, grpc.StatusCode.FAILED_PRECONDITION)
        fetched = await registry.get_input(waiting)
        assert fetched.run.state == S.RUN_STATE_CANCELLED
        assert bool(fetched.input.response_json) == (answer == grpc.StatusCode.OK)


async def test_concurrent_questions_of_one_run_have_exactly_one_winner(registry: Registry) -> None:
    run = await registry.run_in(new_id("user"), S.RUN_STATE_RUNNING)

    statuses = await asyncio.gather(
        *(status_of(registry.request_input(run, request_id=f"ask_concurrent_{i:06d}")) for i in range(10))
    )

    assert statuses.count(grpc.StatusCode.OK) == 1
    assert statuses.count(grpc.StatusCode.FAILED_PRECONDITION) == 9
    after = await registry.get(run)
    assert (after.state, after.version) == (S.RUN_STATE_WAITING, run.version + 1)
    assert after.pending_input.request_id == f"ask_concurrent_{statuses.index(grpc.StatusCode.OK):06d}"


async def test_another_users_run_is_not_found_by_every_input_call(registry: Registry) -> None:
    owner, intruder = new_id("user"), new_id("user")
    running = await registry.run_in(owner, S.RUN_STATE_RUNNING)
    waiting = await registry.run_in(owner, S.RUN_STATE_WAITING)

    calls = (
        registry.request_input(running, request_id="ask_intruder_0000001", user=intruder),
        registry.answer_input(waiting, user=intruder),
        registry.get_input(waiting, user=intruder),
    )

    assert [await status_of(call) for call in calls] == [grpc.StatusCode.NOT_FOUND] * 3
    assert await registry.get(running) == running and await registry.get(waiting) == waiting


@pytest.mark.parametrize(
    ("fields", "problem"),
    [
        ({"request_id": ""}, "input.request_id"),
        ({"request_id": " padded "}, "input.request_id"),
        ({"kind": S.INPUT_KIND_UNSPECIFIED}, "input.kind"),
        ({"kind": 42}, "input.kind"),
        ({"kind": S.INPUT_KIND_APPROVAL}, "input.tool_name"),
        ({"schema_json": "[1, 2]"}, "input.schema_json"),
        ({"schema_json": "{not json"}, "input.schema_json"),
        ({"parameters_json": "{nope"}, "input.parameters_json"),
        ({"prompt": "x" * 20_000}, "input.prompt"),
        ({"prompt": "nul \x00 byte"}, "input.prompt"),
    ],
    ids=lambda v: str(v)[:30],
)
async def test_a_malformed_question_is_an_invalid_argument_naming_the_field(
    registry: Registry, fields: dict[str, object], problem: str
) -> None:
    run = await registry.run_in(new_id("user"), S.RUN_STATE_RUNNING)
    asked = run_pb2.InputRequest(request_id=ASK, kind=S.INPUT_KIND_INPUT, prompt="?")
    for name, value in fields.items():
        setattr(asked, name, value)

    error = await rpc_error(
        registry.stub.RequestInput(
            registry_pb2.RequestInputRequest(user_context=registry.run_context(run), input=asked), timeout=10
        )
    )

    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert problem in (error.details() or "")
    assert await registry.get(run) == run


@pytest.mark.parametrize(
    "response_json", ["", "[1]", '"text"', "{broken", "{" + '"a": 1,' * 20_000 + '"b": 2}']
)
async def test_an_answer_that_is_not_a_json_object_is_an_invalid_argument(
    registry: Registry, response_json: str
) -> None:
    waiting = await registry.run_in(new_id("user"), S.RUN_STATE_WAITING)

    status = await status_of(registry.answer_input(waiting, response_json=response_json))

    assert status == grpc.StatusCode.INVALID_ARGUMENT
    assert await registry.get(waiting) == waiting


@pytest.mark.parametrize("method", ["RequestInput", "AnswerInput", "GetInput"])
async def test_input_calls_without_a_run_id_are_invalid_arguments(registry: Registry, method: str) -> None:
    ctx = registry.make_context(new_id("user"), thread_id=new_id("thread"))
    request = {
        "RequestInput": registry_pb2.RequestInputRequest(
            user_context=ctx, input=run_pb2.InputRequest(request_id=ASK, kind=S.INPUT_KIND_INPUT)
        ),
        "AnswerInput": registry_pb2.AnswerInputRequest(user_context=ctx, request_id=ASK, response_json="{}"),
        "GetInput": registry_pb2.GetInputRequest(user_context=ctx, request_id=ASK),
    }[method]

    error = await rpc_error(getattr(registry.stub, method)(request, timeout=10))

    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "run_id" in (error.details() or "")


# --- a waiting run is a live run ---------------------------------------------------------------


async def test_waiting_runs_count_against_the_live_run_quota(registry: Registry) -> None:
    user = new_id("user")
    for _ in range(registry.settings.max_live_runs_per_user):
        await registry.run_in(user, S.RUN_STATE_WAITING)

    error = await rpc_error(registry.create(user))

    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


async def test_a_waiting_run_keeps_its_thread_busy_and_interrupt_cancels_it(registry: Registry) -> None:
    user, thread_id = new_id("user"), new_id("thread")
    waiting = await registry.run_in(user, S.RUN_STATE_WAITING, thread_id=thread_id)

    refused = await rpc_error(registry.create(user, thread_id=thread_id))
    queued = await registry.create(user, thread_id=thread_id, strategy=S.MULTITASK_STRATEGY_ENQUEUE)
    start = await status_of(registry.transition(queued, S.RUN_STATE_STARTING))
    interrupting = await registry.create(user, thread_id=thread_id, strategy=S.MULTITASK_STRATEGY_INTERRUPT)

    assert refused.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert start == grpc.StatusCode.ABORTED
    assert interrupting.state == S.RUN_STATE_PENDING
    interrupted = await registry.get(waiting)
    assert (interrupted.state, interrupted.error.code) == (S.RUN_STATE_CANCELLED, "interrupted")
    assert not interrupted.HasField("pending_input")


async def test_a_waiting_run_without_heartbeats_dies_and_a_heartbeating_one_waits_on(
    registry_settings: RegistrySettings, make_context: Callable[..., context_pb2.UserContext]
) -> None:
    settings = registry_settings.model_copy(
        update={"heartbeat_timeout_s": 1.0, "death_sweep_interval_s": 0.1}
    )
    async with open_registry(settings, make_context) as registry:
        user = new_id("user")
        silent = await registry.run_in(user, S.RUN_STATE_WAITING)
        alive = await registry.run_in(user, S.RUN_STATE_WAITING)

        async def keep_alive() -> None:
            while True:
                await registry.heartbeat(alive)
                await asyncio.sleep(0.1)

        async def silent_died() -> bool:
            return (await registry.get(silent)).state == S.RUN_STATE_DEAD

        beating = asyncio.create_task(keep_alive())
        try:
            await eventually(silent_died)
            await asyncio.sleep(1.2)  # longer than the timeout: still beating, still waiting
            assert (await registry.get(alive)).state == S.RUN_STATE_WAITING
        finally:
            beating.cancel()

        died = await registry.get(silent)
        late = await rpc_error(registry.answer_input(silent))
    assert died.error.code == "no_heartbeat" and not died.HasField("pending_input")
    assert late.code() == grpc.StatusCode.FAILED_PRECONDITION
