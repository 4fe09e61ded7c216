"""Asking the user, approvals and conversation memory, driven against the in-memory fakes."""

from __future__ import annotations

import asyncio
import json
from typing import Any, ClassVar

import pytest

from execution_service.builtins import BUILTIN_AGENTS, BUILTIN_TOOLS
from execution_service.catalog import AgentCatalog
from execution_service.engine import EngineConfig, RunEngine
from execution_service.sdk import Agent, AgentResult, Message, RunContext
from execution_service.waiting import answer_problem
from runwire.common.v1 import context_pb2, run_pb2
from tests.execution_service.fakes import Harness


class Historian(Agent):
    """Answers with what it remembers of its thread."""

    name = "historian"

    async def run(self, ctx: RunContext) -> AgentResult:
        history = await ctx.history()
        said = [f"{m.role}:{m.content}" for m in history]
        return AgentResult(final_response=" | ".join(said) or "nothing yet")


class Chatty(Agent):
    """Adds its own messages to the thread, a secret among the tool arguments."""

    name = "chatty"

    async def run(self, ctx: RunContext) -> AgentResult:
        call = {
            "id": "c1",
            "type": "function",
            "function": {"name": "echo", "arguments": '{"api_key": "k-1"}'},
        }
        return AgentResult(
            final_response="done",
            messages=(
                Message(role="user", content="hi"),
                Message(role="assistant", tool_calls=(call,)),
                Message(role="tool", content='{"password": "hunter2"}', tool_call_id="c1", name="echo"),
                Message(role="assistant", content="done"),
            ),
        )


class Asker(Agent):
    """Asks with its own schema."""

    name = "asker"
    schema: ClassVar[dict[str, Any]] = {
        "type": "object",
        "properties": {"count": {"type": "integer"}},
        "required": ["count"],
    }

    async def run(self, ctx: RunContext) -> AgentResult:
        answer = await ctx.ask("How many?", schema=self.schema)
        return AgentResult(final_response=str(answer["count"] * 2))


def harness(**config: Any) -> Harness:
    options: dict[str, Any] = {
        "executor_id": "exec_unit_tests_000000",
        "heartbeat_interval_s": 0.05,
        "cancel_grace_s": 0.5,
        "tool_timeout_s": 1.0,
        "input_poll_s": 0.05,
    }
    options.update(config)
    return Harness(
        catalog=AgentCatalog((*BUILTIN_AGENTS, Historian, Chatty, Asker), BUILTIN_TOOLS),
        config=EngineConfig(**options),
    )


def context_of(engine: RunEngine, h: Harness) -> context_pb2.UserContext:
    run = h.registry.runs[engine.run_id]
    return context_pb2.UserContext(user_id=run.user_id, run_id=run.run_id, thread_id=run.thread_id)


async def question(h: Harness, run_id: str, *, index: int = 0) -> dict[str, Any]:
    """The ``input_required`` payload number ``index`` of the run, once the run waits for it."""
    for _ in range(400):
        asked = h.bridge.payloads(run_id, "input_required")
        if len(asked) > index and h.registry.runs[run_id].state == run_pb2.RUN_STATE_WAITING:
            return asked[index]
        await asyncio.sleep(0.01)
    raise AssertionError(f"run {run_id} never asked question {index}")


async def answer(
    h: Harness, engine: RunEngine, request_id: str, response: dict[str, Any], *, local: bool
) -> None:
    """Answer as RespondRun does: record in the registry, hand over when the run is local."""
    await h.registry.answer_input(context_of(engine, h), request_id, json.dumps(response))
    if local:
        assert engine.inputs.deliver(request_id, json.dumps(response))


@pytest.mark.parametrize("local", [True, False], ids=["same-replica", "other-replica"])
async def test_ask_waits_for_the_answer_and_goes_on_with_it(local: bool) -> None:
    h = harness()
    engine = await h.engine("scripted", {"steps": [{"ask": "Your name?"}], "result": "ok"})
    task = asyncio.create_task(engine.execute())
    asked = await question(h, engine.run_id)
    assert asked["kind"] == "input"
    assert asked["prompt"] == "Your name?"
    assert asked["schema"]["required"] == ["text"]
    await answer(h, engine, asked["request_id"], {"text": "Ada"}, local=local)
    await asyncio.wait_for(task, 5)
    assert h.state(engine.run_id) == "completed"
    assert h.bridge.payloads(engine.run_id, "partial_result")[0]["content"] == "Ada"
    moves = [state for run_id, state in h.registry.transitions if run_id == engine.run_id]
    assert "waiting" in moves and moves[moves.index("waiting") + 1] == "running"


async def test_an_agents_own_schema_is_asked_and_its_answer_returned() -> None:
    h = harness()
    engine = await h.engine("asker", {})
    task = asyncio.create_task(engine.execute())
    asked = await question(h, engine.run_id)
    assert asked["schema"]["required"] == ["count"]
    await answer(h, engine, asked["request_id"], {"count": 21}, local=True)
    await asyncio.wait_for(task, 5)
    assert h.bridge.payloads(engine.run_id, "agent_completed")[0]["final_response"] == "42"


def test_answers_are_checked_against_the_question() -> None:
    text = run_pb2.InputRequest(kind=run_pb2.INPUT_KIND_INPUT)
    approval = run_pb2.InputRequest(kind=run_pb2.INPUT_KIND_APPROVAL)
    own = run_pb2.InputRequest(kind=run_pb2.INPUT_KIND_INPUT, schema_json=json.dumps(Asker.schema))
    assert answer_problem(text, {"text": "x"}) is None
    assert answer_problem(text, {"txt": "x"}) is not None
    assert answer_problem(text, ["x"]) is not None
    assert answer_problem(approval, {"approved": False, "reason": "no"}) is None
    assert answer_problem(approval, {"approved": "yes"}) is not None
    assert answer_problem(own, {"count": 3}) is None
    assert answer_problem(own, {"count": "3"}) is not None


@pytest.mark.parametrize("approved", [True, False])
async def test_a_tool_that_needs_approval_runs_only_when_approved(approved: bool) -> None:
    h = harness()
    script = {
        "steps": [{"tool": "echo", "args": {"word": "hi", "token": "t-1"}, "require_approval": True}],
        "result": "ok",
    }
    engine = await h.engine("scripted", script)
    task = asyncio.create_task(engine.execute())
    asked = await question(h, engine.run_id)
    executing = h.bridge.payloads(engine.run_id, "tool_executing")[0]
    assert asked["kind"] == "approval"
    assert asked["tool_name"] == "echo"
    assert asked["call_id"] == executing["call_id"]
    assert asked["parameters"] == {"word": "hi", "token": "[REDACTED]"}
    response: dict[str, Any] = (
        {"approved": approved} if approved else {"approved": False, "reason": "not now"}
    )
    await answer(h, engine, asked["request_id"], response, local=True)
    await asyncio.wait_for(task, 5)
    completed = h.bridge.payloads(engine.run_id, "tool_completed")
    assert len(completed) == 1 and completed[0]["call_id"] == executing["call_id"]
    if approved:
        assert completed[0]["status"] == "success"
    else:
        assert completed[0]["status"] == "denied"
        assert "not now" in completed[0]["error"]
    assert h.state(engine.run_id) == "completed"  # a denied call does not end the run


async def test_no_answer_within_the_input_timeout_ends_the_run_in_timeout() -> None:
    h = harness(input_timeout_s=0.3)
    engine = await h.engine("scripted", {"steps": [{"ask": "Anyone?"}], "result": "ok"})
    await asyncio.wait_for(engine.execute(), 5)
    assert h.state(engine.run_id) == "timeout"
    error = h.bridge.payloads(engine.run_id, "agent_error")[0]
    assert error["status"] == "timeout" and error["error_code"] == "input_timeout"


async def test_a_cancel_while_waiting_ends_the_run_cancelled() -> None:
    h = harness()
    engine = await h.engine("scripted", {"steps": [{"ask": "Anyone?"}], "result": "ok"})
    task = asyncio.create_task(engine.execute())
    await question(h, engine.run_id)
    engine.request_cancel("changed my mind")
    await asyncio.wait_for(task, 5)
    assert h.state(engine.run_id) == "cancelled"
    assert h.bridge.types(engine.run_id)[-1] == "agent_cancelled"


async def test_a_run_cancelled_elsewhere_while_waiting_stops_silently() -> None:
    h = harness(heartbeat_interval_s=10.0)  # only the answer poll can notice
    engine = await h.engine("scripted", {"steps": [{"ask": "Anyone?"}], "result": "ok"})
    task = asyncio.create_task(engine.execute())
    await question(h, engine.run_id)
    await h.registry.transition(
        context_of(engine, h),
        run_pb2.RUN_STATE_CANCELLED,
        error=run_pb2.RunError(code="cancelled", message="x"),
    )
    await asyncio.wait_for(task, 5)
    assert h.state(engine.run_id) == "cancelled"
    assert "agent_cancelled" not in h.bridge.types(engine.run_id)  # announced by whoever cancelled it


async def test_time_spent_waiting_does_not_count_against_the_execution_timeout() -> None:
    h = harness()
    engine = await h.engine("scripted", {"steps": [{"ask": "Slowly?"}], "result": "ok"}, timeout_s=0.3)
    task = asyncio.create_task(engine.execute())
    asked = await question(h, engine.run_id)
    await asyncio.sleep(0.6)
    await answer(h, engine, asked["request_id"], {"text": "yes"}, local=True)
    await asyncio.wait_for(task, 5)
    assert h.state(engine.run_id) == "completed"


async def test_a_completed_run_adds_its_turn_and_the_next_run_reads_it() -> None:
    h = harness()
    first = await h.run("assistant", {"message": "what is 2+3?"}, thread="thread_memory_test_01")
    assert h.state(first) == "completed"
    second = await h.run("historian", {"message": "what did I ask?"}, thread="thread_memory_test_01")
    said = h.bridge.payloads(second, "agent_completed")[0]["final_response"]
    assert said.startswith("user:what is 2+3? | assistant:")
    other = await h.run("historian", {"message": "and here?"}, thread="thread_memory_test_02")
    assert h.bridge.payloads(other, "agent_completed")[0]["final_response"] == "nothing yet"


async def test_an_agents_own_messages_are_stored_with_secrets_redacted() -> None:
    h = harness()
    run_id = await h.run("chatty", {})
    stored = [m.message for m in h.registry.messages if m.message.run_id == run_id]
    assert [m.role for m in stored] == [
        run_pb2.MESSAGE_ROLE_USER,
        run_pb2.MESSAGE_ROLE_ASSISTANT,
        run_pb2.MESSAGE_ROLE_TOOL,
        run_pb2.MESSAGE_ROLE_ASSISTANT,
    ]
    assert "k-1" not in stored[1].tool_calls_json and "[REDACTED]" in stored[1].tool_calls_json
    assert "hunter2" not in stored[2].content and stored[2].tool_call_id == "c1"


async def test_a_scripted_run_adds_nothing_to_its_thread() -> None:
    h = harness()
    run_id = await h.run("scripted", {"steps": [{"partial": "x"}], "result": "ok"})
    assert h.state(run_id) == "completed"
    assert not h.registry.messages and not h.registry.appended_runs  # not even an empty call


async def test_a_run_that_does_not_complete_adds_nothing_to_its_thread() -> None:
    h = harness(input_timeout_s=0.2)
    run_id = await h.run("historian", {"message": "first"}, thread="thread_memory_test_03")
    assert h.state(run_id) == "completed"
    run_id = await h.run("asker", {}, thread="thread_memory_test_03")  # nobody answers
    assert h.state(run_id) == "timeout"
    assert h.registry.messages and not [m for m in h.registry.messages if m.message.run_id == run_id]
