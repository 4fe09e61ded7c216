"""The run lifecycle, driven against in-memory registry and bridge fakes."""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import weakref
from typing import Any, ClassVar

import pytest

from execution_service.builtins import BUILTIN_AGENTS, BUILTIN_TOOLS
from execution_service.catalog import AgentCatalog
from execution_service.emitter import EmitterClosed
from execution_service.engine import EngineConfig
from execution_service.outcomes import EXECUTOR_LOST_MESSAGE
from execution_service.sdk import Agent, AgentResult, RunContext, ToolCall, tool
from execution_service.supervisor import RunSupervisor
from runwire.common.v1 import context_pb2, run_pb2
from runwire_common.errors import Unavailable
from runwire_common.owners import Owner
from tests.execution_service.fakes import Harness

TERMINAL = {"agent_completed", "agent_error", "agent_cancelled", "agent_death"}


class Crashy(Agent):
    name = "crashy"
    description = "raises"

    async def run(self, ctx: RunContext) -> AgentResult:
        raise RuntimeError("secret internals")


class Stubborn(Agent):
    """Ignores the cancellation signal and only stops when cancelled hard."""

    name = "stubborn"
    tools: ClassVar[tuple[str, ...]] = ("echo",)

    async def run(self, ctx: RunContext) -> AgentResult:
        await ctx.emitter.thinking("not listening")
        await asyncio.sleep(30)
        return AgentResult(final_response="never")


@tool(name="nap", description="sleeps a long time", parameters={"type": "object"}, timeout_s=60)
async def nap(args: dict[str, Any], call: ToolCall) -> None:
    await asyncio.sleep(30)


class Napper(Agent):
    name = "napper"
    tools: ClassVar[tuple[str, ...]] = ("nap",)

    async def run(self, ctx: RunContext) -> AgentResult:
        await ctx.tools.call("nap", {})
        return AgentResult(final_response="rested")


def catalog_with(*extra: type[Agent]) -> AgentCatalog:
    return AgentCatalog((*BUILTIN_AGENTS, *extra), BUILTIN_TOOLS)


def assert_well_formed(h: Harness, run_id: str) -> None:
    events = h.bridge.of(run_id)
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert events[0].type == "agent_started"
    assert [e.type in TERMINAL for e in events].count(True) == 1
    assert events[-1].type in TERMINAL
    assert all(e.event_id == "" and e.user_id == h.user and e.run_id == run_id for e in events)


async def test_a_scripted_run_follows_its_script_and_completes() -> None:
    h = Harness()
    script = {
        "steps": [
            {"think": "planning", "step": "plan", "progress": 0.1},
            {"tool": "calculator", "args": {"expression": "6*7"}},
            {"partial": "The answer "},
            {"partial": "is 42"},
            {"tool": "echo", "args": {"password": "hunter2", "text": "hi"}},
            {"sleep_ms": 10},
        ],
        "result": "The answer is 42",
    }
    run_id = await h.run("scripted", script)
    assert_well_formed(h, run_id)
    assert h.bridge.types(run_id) == [
        "agent_started",
        "agent_thinking",
        "tool_executing",
        "tool_completed",
        "partial_result",
        "partial_result",
        "tool_executing",
        "tool_completed",
        "agent_completed",
    ]
    started, thinking, calc_exec, calc_done, p0, p1, echo_exec, echo_done, done = h.bridge.payloads(run_id)
    assert started["input"]["steps"][4]["args"]["password"] == "[REDACTED]"
    assert thinking == {"reasoning": "planning", "step": "plan", "progress": 0.1}
    assert calc_exec["parameters"] == {"expression": "6*7"}
    assert calc_done["status"] == "success" and calc_done["result"]["result"] == 42
    assert (p0, p1) == ({"content": "The answer ", "index": 0}, {"content": "is 42", "index": 1})
    assert echo_exec["parameters"] == {"password": "[REDACTED]", "text": "hi"}
    assert echo_done["result"] == {"password": "[REDACTED]", "text": "hi"}
    assert done["status"] == "completed" and done["final_response"] == "The answer is 42"
    assert done["result"] == {"steps": 6, "tool_calls": 2, "tool_errors": 0}
    assert isinstance(done["duration_ms"], int)
    assert h.state(run_id) == "completed"
    assert json.loads(h.registry.runs[run_id].result_json) == done["result"]
    assert [s for r, s in h.registry.transitions if r == run_id] == [
        "starting",
        "running",
        "completing",
        "completed",
    ]


PARTIALS = {"steps": [{"partial": "a"}, {"partial": "b"}]}
FULL_LIFECYCLE = ["starting", "running", "completing", "completed"]


def lifecycle_of(h: Harness, run_id: str) -> list[str]:
    return [s for r, s in h.registry.transitions if r == run_id]


@pytest.mark.parametrize(
    ("initial_state", "calls"),
    [
        (run_pb2.RUN_STATE_RUNNING, 1),  # completed through completing
        (run_pb2.RUN_STATE_STARTING, 2),  # running; completed through completing
        (run_pb2.RUN_STATE_PENDING, 3),  # starting; running; completed through completing
    ],
)
async def test_the_engine_takes_only_the_steps_the_registry_has_not_taken(
    initial_state: int, calls: int
) -> None:
    h = Harness()
    run_id = await h.run("scripted", PARTIALS, initial_state=initial_state)
    assert lifecycle_of(h, run_id) == FULL_LIFECYCLE
    assert h.registry.transition_calls == calls
    assert h.state(run_id) == "completed"
    assert h.bridge.types(run_id) == ["agent_started", "partial_result", "partial_result", "agent_completed"]


async def test_a_registry_without_through_completing_still_sees_every_step() -> None:
    h = Harness()
    h.registry.knows_through_completing = False
    run_id = await h.run("scripted", PARTIALS)
    assert lifecycle_of(h, run_id) == FULL_LIFECYCLE
    assert h.state(run_id) == "completed"
    assert h.bridge.types(run_id)[-1] == "agent_completed"
    assert_well_formed(h, run_id)


async def test_a_lost_reply_while_completing_step_by_step_is_not_a_failure() -> None:
    h = Harness()
    h.registry.knows_through_completing = False
    engine = await h.engine("scripted", PARTIALS)
    # running, then the refused combined call, then COMPLETING applies but its reply is lost.
    original = h.registry.transition

    async def losing(*args: Any, **kwargs: Any) -> run_pb2.Run:
        if args[1] == run_pb2.RUN_STATE_COMPLETING and not kwargs.get("through_completing"):
            h.registry.lost_replies = 1
        return await original(*args, **kwargs)

    h.registry.transition = losing  # type: ignore[method-assign]
    await engine.execute()
    assert lifecycle_of(h, engine.run_id) == FULL_LIFECYCLE
    assert h.bridge.types(engine.run_id)[-1] == "agent_completed"


async def test_a_failing_tool_step_is_reported_and_the_script_goes_on() -> None:
    h = Harness()
    run_id = await h.run("scripted", {"steps": [{"tool": "calculator", "args": {"expression": "1/0"}}]})
    completed = h.bridge.payloads(run_id, "tool_completed")[0]
    assert completed["status"] == "error" and completed["error"] == "division by zero"
    assert h.bridge.payloads(run_id, "agent_completed")[0]["result"]["tool_errors"] == 1


async def test_a_fail_step_ends_the_run_with_agent_error_and_failed() -> None:
    h = Harness()
    run_id = await h.run("scripted", {"steps": [{"think": "hmm"}, {"fail": "boom"}, {"think": "never"}]})
    assert_well_formed(h, run_id)
    assert h.bridge.types(run_id) == ["agent_started", "agent_thinking", "agent_error"]
    assert h.bridge.payloads(run_id)[-1] == {
        "status": "failed",
        "error_code": "agent_failed",
        "error_message": "boom",
    }
    run = h.registry.runs[run_id]
    assert h.state(run_id) == "failed" and run.error.code == "agent_failed" and run.error.message == "boom"


async def test_an_unexpected_agent_exception_is_a_user_safe_failure() -> None:
    h = Harness(catalog=catalog_with(Crashy))
    run_id = await h.run("crashy", {})
    error = h.bridge.payloads(run_id)[-1]
    assert error["status"] == "failed" and error["error_code"] == "internal_error"
    assert "secret" not in error["error_message"]


async def test_a_run_over_its_timeout_ends_in_timeout() -> None:
    h = Harness()
    run_id = await h.run("scripted", {"steps": [{"sleep_ms": 3000}]}, timeout_s=0.2)
    assert_well_formed(h, run_id)
    error = h.bridge.payloads(run_id)[-1]
    assert h.bridge.types(run_id)[-1] == "agent_error"
    assert error["status"] == "timeout" and error["error_code"] == "timeout"
    assert h.state(run_id) == "timeout"


async def test_a_timeout_during_a_tool_call_still_pairs_the_tool_events() -> None:
    h = Harness(catalog=AgentCatalog((*BUILTIN_AGENTS, Napper), (*BUILTIN_TOOLS, nap)))
    engine = await h.engine("napper", {}, timeout_s=0.2)
    await engine.execute()
    assert_well_formed(h, engine.run_id)
    assert h.bridge.types(engine.run_id) == [
        "agent_started",
        "tool_executing",
        "tool_completed",
        "agent_error",
    ]
    completed, error = h.bridge.payloads(engine.run_id)[2:]
    assert completed["status"] == "error" and completed["error"] == "cancelled"
    assert error["status"] == "timeout"


async def test_cancelling_a_run_ends_it_with_agent_cancelled() -> None:
    h = Harness()
    engine = await h.engine("scripted", {"steps": [{"think": "a"}, {"sleep_ms": 5000}, {"think": "b"}]})
    task = asyncio.create_task(engine.execute())
    await asyncio.sleep(0.1)
    engine.request_cancel("changed my mind")
    await asyncio.wait_for(task, 2)
    assert_well_formed(h, engine.run_id)
    assert h.bridge.types(engine.run_id) == ["agent_started", "agent_thinking", "agent_cancelled"]
    assert h.bridge.payloads(engine.run_id)[-1] == {"reason": "changed my mind"}
    assert h.state(engine.run_id) == "cancelled"


async def test_an_agent_that_ignores_cancellation_is_stopped_after_the_grace_period() -> None:
    h = Harness(catalog=catalog_with(Stubborn))
    engine = await h.engine("stubborn", {})
    task = asyncio.create_task(engine.execute())
    await asyncio.sleep(0.1)
    engine.request_cancel("stop now")
    await asyncio.wait_for(task, 3)
    assert h.bridge.types(engine.run_id)[-1] == "agent_cancelled"
    assert h.state(engine.run_id) == "cancelled"


async def test_a_run_ended_elsewhere_stops_silently_on_its_next_heartbeat() -> None:
    h = Harness()
    engine = await h.engine("scripted", {"steps": [{"think": "working"}, {"sleep_ms": 5000}]})
    task = asyncio.create_task(engine.execute())
    await asyncio.sleep(0.1)
    ctx = context_pb2.UserContext(user_id=h.user, run_id=engine.run_id)
    await h.registry.transition(
        ctx, run_pb2.RUN_STATE_CANCELLED, error=run_pb2.RunError(code="cancelled", message="from elsewhere")
    )
    await asyncio.wait_for(task, 2)
    # Whoever won the terminal transition announces it; the engine publishes nothing more.
    assert h.bridge.types(engine.run_id) == ["agent_started", "agent_thinking"]
    assert h.state(engine.run_id) == "cancelled"
    assert h.registry.runs[engine.run_id].error.message == "from elsewhere"


async def test_live_runs_are_heartbeated() -> None:
    h = Harness()
    run_id = await h.run("scripted", {"steps": [{"sleep_ms": 300}]})
    assert h.registry.heartbeats.count(run_id) >= 3


async def test_agent_events_after_the_end_of_the_run_are_refused() -> None:
    h = Harness()
    engine = await h.engine("scripted", {"steps": []})
    await engine.execute()
    assert engine.emitter.closed
    count = len(h.bridge.of(engine.run_id))
    with pytest.raises(EmitterClosed):
        await engine.emitter.thinking("late")
    assert len(h.bridge.of(engine.run_id)) == count


async def test_concurrent_runs_of_different_users_never_mix_events() -> None:
    h = Harness()
    engines = [
        await h.engine(
            "scripted",
            {"steps": [{"think": f"run {i}"}, {"sleep_ms": 20}, {"partial": str(i)}]},
            user=f"user_{i:02d}_concurrency_test",
        )
        for i in range(20)
    ]
    await asyncio.gather(*(e.execute() for e in engines))
    for i, engine in enumerate(engines):
        events = h.bridge.of(engine.run_id)
        assert [e.seq for e in events] == [1, 2, 3, 4]
        assert {e.user_id for e in events} == {f"user_{i:02d}_concurrency_test"}
        assert json.loads(events[1].payload_json)["reasoning"] == f"run {i}"


async def test_per_run_objects_are_distinct_and_released_after_the_run() -> None:
    h = Harness()
    supervisor = RunSupervisor(log=logging.getLogger("test"))
    engines = [
        await h.engine("scripted", {"steps": [{"tool": "echo", "args": {}}, {"sleep_ms": 50}]})
        for _ in range(2)
    ]
    assert engines[0] is not engines[1]
    assert engines[0].emitter is not engines[1].emitter
    assert engines[0].dispatcher is not engines[1].dispatcher
    assert engines[0].cancellation is not engines[1].cancellation
    refs = [weakref.ref(obj) for e in engines for obj in (e, e.emitter, e.dispatcher, e.cancellation)]
    run_ids = [e.run_id for e in engines]
    for engine in engines:
        supervisor.start(engine)
    assert supervisor.find(run_ids[0], owner=Owner("", h.user)) is engines[0]
    assert supervisor.find(run_ids[0], owner=Owner("", "someone_else_entirely")) is None
    assert supervisor.find(run_ids[0], owner=Owner("tenant_other", h.user)) is None
    del engines, engine
    for _ in range(100):
        if not len(supervisor):
            break
        await asyncio.sleep(0.02)
    assert len(supervisor) == 0
    await asyncio.sleep(0)
    gc.collect()
    assert [r() for r in refs] == [None] * len(refs)
    assert all(h.bridge.types(run_id)[-1] == "agent_completed" for run_id in run_ids)


async def test_a_finished_run_is_freed_by_reference_counting_without_the_cyclic_collector() -> None:
    # A reference cycle per run leaves its objects for the cyclic collector, whose pauses under
    # load held up every other run's events by tens of milliseconds (the paced p99).
    h = Harness()
    supervisor = RunSupervisor(log=logging.getLogger("test"))
    gc.collect()
    gc.disable()
    try:
        engine = await h.engine("scripted", {"steps": [{"tool": "echo", "args": {}}, {"partial": "done"}]})
        refs = [
            weakref.ref(obj)
            for obj in (engine, engine.emitter, engine.dispatcher, engine.inputs, engine.cancellation)
        ]
        run_id = engine.run_id
        supervisor.start(engine)
        del engine
        for _ in range(100):
            if not len(supervisor):
                break
            await asyncio.sleep(0.02)
        await asyncio.sleep(0)
        assert [r() for r in refs] == [None] * len(refs)
    finally:
        gc.enable()
    assert h.bridge.types(run_id)[-1] == "agent_completed"


async def test_draining_lets_runs_finish_then_ends_the_rest_dead() -> None:
    h = Harness(catalog=catalog_with(Stubborn))
    supervisor = RunSupervisor(log=logging.getLogger("test"))
    quick = await h.engine("scripted", {"steps": [{"sleep_ms": 50}]})
    slow = await h.engine("scripted", {"steps": [{"sleep_ms": 10_000}]})
    stubborn = await h.engine("stubborn", {})
    for engine in (quick, slow, stubborn):
        supervisor.start(engine)
    loop = asyncio.get_running_loop()
    began = loop.time()
    await supervisor.drain(finish_within_s=0.3, stop_within_s=0.8)
    assert loop.time() - began < 1.1
    assert supervisor.closed and len(supervisor) == 0
    assert h.bridge.types(quick.run_id)[-1] == "agent_completed"
    for engine in (slow, stubborn):
        assert_well_formed(h, engine.run_id)
        assert h.bridge.payloads(engine.run_id)[-1] == {
            "status": "dead",
            "death_cause": "executor_lost",
            "message": EXECUTOR_LOST_MESSAGE,
            "recovery_action": "retry",
            "recovery_hint": "Start the run again; the thread is free.",
        }
        assert h.state(engine.run_id) == "dead"
        assert h.registry.runs[engine.run_id].error.code == "executor_lost"


async def test_a_run_admitted_while_the_drain_waits_gets_the_rest_of_the_finish_phase() -> None:
    # A StartRun already in flight when the drain began is admitted during it; the drain must
    # wait for that run too, not end it dead as soon as the runs it saw at first are done.
    h = Harness()
    supervisor = RunSupervisor(log=logging.getLogger("test"))
    first = await h.engine("scripted", {"steps": [{"sleep_ms": 50}]})
    supervisor.start(first)
    late = await h.engine("scripted", {"steps": [{"sleep_ms": 200}]})

    async def admit_late() -> None:
        await asyncio.sleep(0.02)  # the drain has begun and waits for ``first``
        supervisor.start(late)

    admitting = asyncio.create_task(admit_late())
    await supervisor.drain(finish_within_s=2.0, stop_within_s=0.5)
    await admitting
    assert supervisor.closed and len(supervisor) == 0
    assert h.bridge.types(first.run_id)[-1] == "agent_completed"
    assert h.bridge.types(late.run_id)[-1] == "agent_completed"
    assert h.state(late.run_id) == "completed"


async def test_a_drain_waits_for_a_start_run_still_creating_its_run_and_then_for_that_run() -> None:
    # The drain begins with no live run while a StartRun is between its admission and its start
    # (creating the run in the registry): the drain must not close under it (which would end
    # the just-created run at once) but wait for the call and then for the run it starts.
    h = Harness()
    supervisor = RunSupervisor(log=logging.getLogger("test"))
    engine = await h.engine("scripted", {"steps": [{"sleep_ms": 100}]})
    admitted = asyncio.Event()

    async def start_run() -> None:
        async with supervisor.admitting():
            admitted.set()
            await asyncio.sleep(0.1)  # the registry round trip
            supervisor.start(engine)

    call = asyncio.create_task(start_run())
    await admitted.wait()
    await supervisor.drain(finish_within_s=2.0, stop_within_s=0.5)
    await call
    assert h.bridge.types(engine.run_id)[-1] == "agent_completed"
    with pytest.raises(Unavailable):
        async with supervisor.admitting():
            pass


async def test_publishing_batches_pending_events_in_one_call() -> None:
    h = Harness(config=EngineConfig(executor_id="exec_batch_test_0000000", heartbeat_interval_s=1.0))
    steps = [{"partial": str(i)} for i in range(50)]
    run_id = await h.run("scripted", {"steps": steps})
    assert len(h.bridge.of(run_id)) == 52
    assert h.bridge.calls < 52


async def test_agent_started_and_the_burst_emitted_right_behind_it_share_one_publish() -> None:
    h = Harness()
    run_id = await h.run("scripted", {"steps": [{"partial": str(i)} for i in range(18)]})
    assert len(h.bridge.of(run_id)) == 20
    # agent_started and the 18 partials the agent emits in the same turn of the loop together,
    # then the terminal event after the registry write.
    assert h.bridge.batch_sizes == [19, 1]


async def test_a_completed_runs_turn_is_stored_with_its_completion_in_one_registry_call() -> None:
    h = Harness()
    run_id = await h.run("assistant", {"message": "what is 6 * 7?"})
    assert h.state(run_id) == "completed"
    stored = [m.message for m in h.registry.messages if m.message.run_id == run_id]
    assert [(m.role, m.content) for m in stored] == [
        (run_pb2.MESSAGE_ROLE_USER, "what is 6 * 7?"),
        (run_pb2.MESSAGE_ROLE_ASSISTANT, stored[1].content),
    ]
    assert "42" in stored[1].content
    assert h.registry.append_calls == 0  # no AppendMessages: the terminal transition carried them
    assert h.bridge.types(run_id)[-1] == "agent_completed"


async def test_messages_the_registry_refuses_do_not_keep_the_run_from_completing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    h = Harness()
    h.registry.refuse_messages = True
    with caplog.at_level(logging.ERROR):
        run_id = await h.run("assistant", {"message": "what is 6 * 7?"})
    assert h.state(run_id) == "completed"
    assert h.bridge.types(run_id)[-1] == "agent_completed"
    assert [m for m in h.registry.messages if m.message.run_id == run_id] == []
    assert "refused the run's end with its messages" in caplog.text
