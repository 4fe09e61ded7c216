"""The execution service against the real registry and bridge, on loopback."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path

import grpc
import pytest

from runwire.common.v1 import context_pb2, event_pb2, run_pb2
from runwire.execution.v1 import execution_pb2
from runwire.registry.v1 import registry_pb2
from runwire_common.ids import new_id
from tests.conftest import ContextFactory
from tests.execution_service.system import CALL_TIMEOUT_S, System, running_system

PAYLOAD_KEYS = {
    "agent_started": {"message", "input"},
    "tool_executing": {"tool_name", "parameters", "call_id"},
    "partial_result": {"content", "index"},
    "agent_completed": {"status", "result", "final_response", "duration_ms"},
    "agent_error": {"status", "error_code", "error_message"},
    "agent_cancelled": {"reason"},
}


@pytest.fixture
async def system(
    tmp_path: Path, attestation_key_spec: str, make_context: ContextFactory
) -> AsyncIterator[System]:
    async with running_system(tmp_path, attestation_key_spec, make_context) as running:
        yield running


def user_ctx(system: System, user: str | None = None) -> context_pb2.UserContext:
    return system.make_context(user or new_id("user"), thread_id=new_id("thread"))


def payloads(events: list[event_pb2.RunEvent]) -> list[dict]:  # type: ignore[type-arg]
    return [json.loads(e.payload_json) for e in events]


def assert_envelopes(events: list[event_pb2.RunEvent], run: run_pb2.Run) -> None:
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert len({e.event_id for e in events}) == len(events) and all(e.event_id for e in events)
    for event in events:
        assert (event.run_id, event.user_id, event.thread_id, event.agent) == (
            run.run_id,
            run.user_id,
            run.thread_id,
            run.agent,
        )
        assert event.timestamp.seconds > 0
        keys = PAYLOAD_KEYS.get(event.type)
        if keys is not None:
            assert keys <= set(json.loads(event.payload_json)), event.type
    terminal = [
        e for e in events if e.type.startswith("agent_") and e.type not in ("agent_started", "agent_thinking")
    ]
    assert len(terminal) == 1 and terminal[0] is events[-1]


async def test_a_scripted_run_streams_its_events_to_its_owner_and_completes(system: System) -> None:
    ctx = user_ctx(system)
    script = {
        "steps": [
            {"think": "starting"},
            {"tool": "echo", "args": {"text": "hi", "credentials": {"api_token": "t0ps3cret"}}},
            {"tool": "calculator", "args": {"expression": "2 ** 8"}},
            {"partial": "two five "},
            {"partial": "six"},
        ],
        "result": "256",
    }
    async with system.watch(ctx.user_id) as watcher:
        run = await system.start(ctx, "scripted", script)
        assert run.state == run_pb2.RUN_STATE_RUNNING and run.run_id and run.thread_id == ctx.thread_id
        events = await watcher.until_terminal(run.run_id)
    assert_envelopes(events, run)
    assert [e.type for e in events] == [
        "agent_started",
        "agent_thinking",
        "tool_executing",
        "tool_completed",
        "tool_executing",
        "tool_completed",
        "partial_result",
        "partial_result",
        "agent_completed",
    ]
    body = payloads(events)
    assert body[2]["parameters"] == {"text": "hi", "credentials": "[REDACTED]"}
    assert "t0ps3cret" not in "".join(e.payload_json for e in events)
    assert body[3]["call_id"] == body[2]["call_id"] and body[3]["status"] == "success"
    assert body[5]["result"]["result"] == 256
    assert body[-1]["final_response"] == "256" and body[-1]["status"] == "completed"
    final = await system.get(ctx.user_id, run.run_id)
    assert final.state == run_pb2.RUN_STATE_COMPLETED
    assert json.loads(final.result_json) == body[-1]["result"]
    assert "t0ps3cret" not in final.input_json


async def test_an_assistant_run_produces_the_documented_sequence(system: System) -> None:
    ctx = user_ctx(system)
    async with system.watch(ctx.user_id) as watcher:
        run = await system.start(ctx, "assistant", {"message": "what is 12 * 12?"})
        events = await watcher.until_terminal(run.run_id)
    assert_envelopes(events, run)
    types = [e.type for e in events]
    assert types[:4] == ["agent_started", "agent_thinking", "tool_executing", "tool_completed"]
    assert set(types[4:-1]) == {"partial_result"} and types[-1] == "agent_completed"
    assert payloads(events)[-1]["final_response"] == "12 * 12 = 144"
    assert (await system.get(ctx.user_id, run.run_id)).state == run_pb2.RUN_STATE_COMPLETED


async def test_the_default_agent_is_the_assistant(system: System) -> None:
    ctx = user_ctx(system)
    async with system.watch(ctx.user_id) as watcher:
        run = await system.start(ctx, "", {"message": "echo hello"})
        events = await watcher.until_terminal(run.run_id)
    assert run.agent == "assistant"
    assert payloads(events)[-1]["final_response"] == "hello"


async def test_a_fail_step_ends_the_run_failed_with_agent_error(system: System) -> None:
    ctx = user_ctx(system)
    async with system.watch(ctx.user_id) as watcher:
        run = await system.start(ctx, "scripted", {"steps": [{"think": "x"}, {"fail": "it broke"}]})
        events = await watcher.until_terminal(run.run_id)
    assert_envelopes(events, run)
    assert payloads(events)[-1] == {
        "status": "failed",
        "error_code": "agent_failed",
        "error_message": "it broke",
    }
    final = await system.get(ctx.user_id, run.run_id)
    assert final.state == run_pb2.RUN_STATE_FAILED and final.error.message == "it broke"


async def test_cancelling_a_run_mid_way_ends_it_cancelled_and_repeating_is_harmless(system: System) -> None:
    ctx = user_ctx(system)
    async with system.watch(ctx.user_id) as watcher:
        run = await system.start(ctx, "scripted", {"steps": [{"think": "waiting"}, {"sleep_ms": 20_000}]})
        await watcher.until(run.run_id, "agent_thinking")
        cancelled = await system.cancel(ctx, run.run_id, reason="user pressed stop")
        events = await watcher.until_terminal(run.run_id)
    assert cancelled.state == run_pb2.RUN_STATE_CANCELLED
    assert_envelopes(events, run)
    assert events[-1].type == "agent_cancelled" and payloads(events)[-1] == {"reason": "user pressed stop"}
    again = await system.cancel(ctx, run.run_id)
    assert again.state == run_pb2.RUN_STATE_CANCELLED and again.version == cancelled.version
    assert len(watcher.of(run.run_id)) == len(events)


async def test_cancelling_a_run_this_replica_does_not_run_records_it_in_the_registry(system: System) -> None:
    ctx = user_ctx(system)
    created = await system.registry.CreateRun(
        registry_pb2.CreateRunRequest(
            user_context=ctx, agent="scripted", input_json="{}", executor_id="exec_elsewhere_000000000"
        ),
        timeout=CALL_TIMEOUT_S,
    )
    run = await system.cancel(ctx, created.run.run_id, reason="no longer needed")
    assert run.state == run_pb2.RUN_STATE_CANCELLED and run.error.message == "no longer needed"
    assert (await system.cancel(ctx, created.run.run_id)).version == run.version


async def test_a_run_over_its_requested_timeout_ends_in_timeout(system: System) -> None:
    ctx = user_ctx(system)
    async with system.watch(ctx.user_id) as watcher:
        run = await system.start(ctx, "scripted", {"steps": [{"sleep_ms": 3000}]}, timeout_seconds=1)
        events = await watcher.until_terminal(run.run_id)
    assert_envelopes(events, run)
    error = payloads(events)[-1]
    assert events[-1].type == "agent_error" and error["status"] == "timeout"
    assert (await system.get(ctx.user_id, run.run_id)).state == run_pb2.RUN_STATE_TIMEOUT


async def expect_code(call: asyncio.Future | object, code: grpc.StatusCode) -> grpc.aio.AioRpcError:  # type: ignore[type-arg]
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call  # type: ignore[misc]
    assert caught.value.code() == code, caught.value.details()
    return caught.value


async def test_an_unknown_agent_is_not_found(system: System) -> None:
    await expect_code(system.start(user_ctx(system), "no-such-agent", {}), grpc.StatusCode.NOT_FOUND)


@pytest.mark.parametrize(
    ("agent", "agent_input"),
    [
        ("scripted", {"steps": [{"dance": 1}]}),
        ("scripted", "[1, 2]"),
        ("scripted", "{not json"),
        ("assistant", {"text": "missing message"}),
    ],
)
async def test_bad_input_is_invalid_argument(system: System, agent: str, agent_input: object) -> None:
    await expect_code(system.start(user_ctx(system), agent, agent_input), grpc.StatusCode.INVALID_ARGUMENT)


async def test_start_run_without_a_thread_starts_a_new_thread_and_returns_its_id(system: System) -> None:
    user = new_id("user")
    no_thread = system.make_context(user)
    async with system.watch(user) as watcher:
        first = await system.start(no_thread, "scripted", {"steps": []})
        events = await watcher.until_terminal(first.run_id)
    second = await system.start(no_thread, "scripted", {"steps": []})
    assert first.thread_id.startswith("thread_") and second.thread_id.startswith("thread_")
    assert first.thread_id != second.thread_id
    assert {e.thread_id for e in events} == {first.thread_id}
    listed = await system.registry.ListRuns(
        registry_pb2.ListRunsRequest(user_context=no_thread, thread_id=first.thread_id),
        timeout=CALL_TIMEOUT_S,
    )
    assert [r.run_id for r in listed.runs] == [first.run_id]


async def test_start_run_refuses_a_placeholder_thread_and_needs_an_attested_context(system: System) -> None:
    placeholder = system.make_context(new_id("user"), thread_id="undefined")
    await expect_code(
        system.start(placeholder, "assistant", {"message": "hi"}), grpc.StatusCode.INVALID_ARGUMENT
    )
    forged = context_pb2.UserContext(user_id=new_id("user"), thread_id=new_id("thread"))
    await expect_code(system.start(forged, "assistant", {"message": "hi"}), grpc.StatusCode.UNAUTHENTICATED)


async def test_a_fourth_concurrent_run_of_one_user_is_resource_exhausted(system: System) -> None:
    user = new_id("user")
    sleepy = {"steps": [{"sleep_ms": 20_000}]}
    runs = [await system.start(user_ctx(system, user), "scripted", sleepy) for _ in range(3)]
    error = await expect_code(
        system.start(user_ctx(system, user), "scripted", sleepy), grpc.StatusCode.RESOURCE_EXHAUSTED
    )
    assert "limit" in (error.details() or "")
    other_user = await system.start(user_ctx(system), "scripted", {"steps": []})
    assert other_user.run_id
    for run in runs:
        assert (
            await system.cancel(system.make_context(user), run.run_id)
        ).state == run_pb2.RUN_STATE_CANCELLED


async def test_a_second_run_on_a_busy_thread_is_failed_precondition(system: System) -> None:
    ctx = user_ctx(system)
    first = await system.start(ctx, "scripted", {"steps": [{"sleep_ms": 20_000}]})
    await expect_code(system.start(ctx, "scripted", {"steps": []}), grpc.StatusCode.FAILED_PRECONDITION)
    await system.cancel(ctx, first.run_id)


async def test_another_users_run_cannot_be_cancelled(system: System) -> None:
    owner = user_ctx(system)
    run = await system.start(owner, "scripted", {"steps": [{"sleep_ms": 20_000}]})
    intruder = user_ctx(system)
    await expect_code(system.cancel(intruder, run.run_id), grpc.StatusCode.NOT_FOUND)
    assert (await system.get(owner.user_id, run.run_id)).state in (
        run_pb2.RUN_STATE_PENDING,
        run_pb2.RUN_STATE_STARTING,
        run_pb2.RUN_STATE_RUNNING,
    )
    await system.cancel(owner, run.run_id)


async def test_list_agents_describes_agents_and_their_tools(system: System) -> None:
    response = await system.execution.ListAgents(
        execution_pb2.ListAgentsRequest(user_context=system.make_context(new_id("user"))),
        timeout=CALL_TIMEOUT_S,
    )
    agents = {agent.name: agent for agent in response.agents}
    assert {"assistant", "scripted"} <= set(agents)
    tools = {tool.name: tool for tool in agents["assistant"].tools}
    assert set(tools) == {"calculator", "clock", "text_stats", "echo"}
    assert json.loads(tools["calculator"].parameters_schema_json)["required"] == ["expression"]


async def test_concurrent_users_each_see_only_their_own_runs(system: System) -> None:
    users = [new_id("user") for _ in range(6)]
    async with AsyncExitStack() as stack:
        watchers = [await stack.enter_async_context(system.watch(user)) for user in users]
        runs = await asyncio.gather(
            *(
                system.start(user_ctx(system, user), "assistant", {"message": f"what is {i} + {i}?"})
                for i, user in enumerate(users)
            )
        )
        for i, (run, watcher) in enumerate(zip(runs, watchers, strict=True)):
            events = await watcher.until_terminal(run.run_id)
            assert {e.user_id for e in watcher.events} == {users[i]}
            assert json.loads(events[-1].payload_json)["final_response"] == f"{i} + {i} = {2 * i}"


async def test_live_runs_are_heartbeated_by_this_executor(system: System) -> None:
    ctx = user_ctx(system)
    run = await system.start(ctx, "scripted", {"steps": [{"sleep_ms": 20_000}]})
    await asyncio.sleep(0.5)
    live = await system.get(ctx.user_id, run.run_id)
    assert live.state == run_pb2.RUN_STATE_RUNNING
    assert live.last_heartbeat_at.seconds > 0
    assert live.executor_id == system.execution_settings.executor_id
    await system.cancel(ctx, run.run_id)
