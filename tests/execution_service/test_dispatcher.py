"""The dispatcher always pairs tool_executing with exactly one tool_completed."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Sequence
from typing import Any

import pytest

from execution_service.catalog import AgentCatalog
from execution_service.dispatcher import ToolDispatcher
from execution_service.emitter import RunEmitter
from execution_service.sdk import Cancellation, RunCancelled, Tool, ToolCall, ToolError, ToolTimeout, tool
from runwire.common.v1 import context_pb2, event_pb2

PARAMS = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}


@tool(name="double", description="doubles n", parameters=PARAMS)
async def double(args: dict[str, Any], call: ToolCall) -> dict[str, Any]:
    return {"n": args["n"] * 2, "session_token": "s3cr3t", "call_id": call.call_id}


@tool(name="refuse", description="fails politely", parameters={"type": "object"})
async def refuse(args: dict[str, Any], call: ToolCall) -> None:
    raise ToolError("no luck today, password=hunter2")


@tool(name="crash", description="fails badly", parameters={"type": "object"})
async def crash(args: dict[str, Any], call: ToolCall) -> None:
    raise RuntimeError("internal detail /etc/secret/path")


@tool(name="slow", description="sleeps", parameters={"type": "object"}, timeout_s=0.05)
async def slow(args: dict[str, Any], call: ToolCall) -> None:
    await asyncio.sleep(10)


@tool(name="admin", description="admins only", parameters={"type": "object"}, required_roles=("admin",))
async def admin(args: dict[str, Any], call: ToolCall) -> str:
    return "ok"


@tool(name="weird", description="returns a non-JSON value", parameters={"type": "object"})
async def weird(args: dict[str, Any], call: ToolCall) -> object:
    return object()


class Rig:
    def __init__(
        self, tools: Sequence[Tool], *, roles: Sequence[str] = (), allowed: Sequence[str] | None = None
    ):
        self.events: list[event_pb2.RunEvent] = []
        ctx = context_pb2.UserContext(user_id="user_dispatch_00000001", run_id="run_x", roles=roles)
        catalog = AgentCatalog((), tools)
        available = {name: spec for name, spec in catalog.tools.items() if allowed is None or name in allowed}
        self.cancellation = Cancellation()
        self.emitter = RunEmitter(
            user=ctx,
            run_id="run_x",
            thread_id="thread_x",
            agent="test",
            publish=self._publish,
            log=logging.LoggerAdapter(logging.getLogger("test"), {}),
        )
        self.dispatcher = ToolDispatcher(
            user=ctx,
            run_id="run_x",
            thread_id="thread_x",
            tools=available,
            emitter=self.emitter,
            cancellation=self.cancellation,
            default_timeout_s=1.0,
            log=logging.LoggerAdapter(logging.getLogger("test"), {}),
        )

    async def _publish(self, events: Sequence[event_pb2.RunEvent]) -> None:
        self.events.extend(events)

    async def flushed(self) -> list[tuple[str, dict[str, Any]]]:
        await self.emitter.aclose()
        assert [e.seq for e in self.events] == list(range(1, len(self.events) + 1))
        return [(e.type, json.loads(e.payload_json)) for e in self.events]


def assert_paired(events: list[tuple[str, dict[str, Any]]], *, status: str) -> dict[str, Any]:
    assert [t for t, _ in events] == ["tool_executing", "tool_completed"]
    executing, completed = events[0][1], events[1][1]
    assert set(executing) == {"tool_name", "parameters", "call_id"}
    assert completed["call_id"] == executing["call_id"]
    assert completed["tool_name"] == executing["tool_name"]
    assert completed["status"] == status
    assert isinstance(completed["duration_ms"], int)
    assert ("result" in completed) == (status == "success")
    assert ("error" in completed) == (status != "success")
    return completed


async def test_a_successful_call_returns_the_real_result_and_emits_a_redacted_pair() -> None:
    rig = Rig([double])
    result = await rig.dispatcher.call("double", {"n": 21, "api_key": "k"})
    assert result["n"] == 42 and result["session_token"] == "s3cr3t"
    events = await rig.flushed()
    completed = assert_paired(events, status="success")
    assert events[0][1]["parameters"] == {"n": 21, "api_key": "[REDACTED]"}
    assert completed["result"]["session_token"] == "[REDACTED]"
    assert completed["result"]["call_id"] == events[0][1]["call_id"]


async def test_a_tool_error_reaches_the_agent_and_is_paired_with_a_redacted_message() -> None:
    rig = Rig([refuse])
    with pytest.raises(ToolError) as caught:
        await rig.dispatcher.call("refuse", {})
    assert caught.value.status == "error"
    completed = assert_paired(await rig.flushed(), status="error")
    assert completed["error"].startswith("no luck today")
    assert "hunter2" not in completed["error"]


async def test_an_unexpected_exception_becomes_a_user_safe_error() -> None:
    rig = Rig([crash])
    with pytest.raises(ToolError, match="failed unexpectedly"):
        await rig.dispatcher.call("crash")
    completed = assert_paired(await rig.flushed(), status="error")
    assert "/etc" not in completed["error"] and "RuntimeError" not in completed["error"]


async def test_arguments_that_do_not_match_the_schema_are_an_error_pair() -> None:
    rig = Rig([double])
    with pytest.raises(ToolError, match="invalid arguments"):
        await rig.dispatcher.call("double", {"n": "twenty"})
    completed = assert_paired(await rig.flushed(), status="error")
    assert "twenty" in completed["error"] or "integer" in completed["error"]


async def test_a_slow_tool_times_out_with_a_timeout_pair() -> None:
    rig = Rig([slow])
    with pytest.raises(ToolTimeout):
        await rig.dispatcher.call("slow")
    assert_paired(await rig.flushed(), status="timeout")


async def test_a_tool_the_agent_may_not_use_is_an_error_pair() -> None:
    rig = Rig([double, refuse], allowed=["refuse"])
    with pytest.raises(ToolError, match="not available"):
        await rig.dispatcher.call("double", {"n": 1})
    assert_paired(await rig.flushed(), status="error")


async def test_an_unknown_tool_is_an_error_pair() -> None:
    rig = Rig([double])
    with pytest.raises(ToolError, match="not available"):
        await rig.dispatcher.call("nope", {})
    assert_paired(await rig.flushed(), status="error")


async def test_a_tool_needing_a_role_the_user_lacks_is_refused() -> None:
    rig = Rig([admin])
    with pytest.raises(ToolError, match="permission denied"):
        await rig.dispatcher.call("admin")
    assert_paired(await rig.flushed(), status="error")


async def test_a_user_with_the_role_may_call_the_tool() -> None:
    rig = Rig([admin], roles=["admin", "user"])
    assert await rig.dispatcher.call("admin") == "ok"
    assert_paired(await rig.flushed(), status="success")


async def test_a_non_json_result_is_an_error_pair() -> None:
    rig = Rig([weird])
    with pytest.raises(ToolError, match="invalid result"):
        await rig.dispatcher.call("weird")
    assert_paired(await rig.flushed(), status="error")


async def test_cancelling_the_run_during_a_call_still_pairs_the_event() -> None:
    rig = Rig([tool(name="wait", description="", parameters={"type": "object"})(_wait_long)])
    call = asyncio.create_task(rig.dispatcher.call("wait"))
    await asyncio.sleep(0.05)
    rig.cancellation.request("user asked")
    with pytest.raises(RunCancelled):
        await call
    completed = assert_paired(await rig.flushed(), status="error")
    assert completed["error"] == "cancelled"


async def test_hard_cancelling_the_calling_task_still_pairs_the_event() -> None:
    rig = Rig([tool(name="wait", description="", parameters={"type": "object"})(_wait_long)])
    call = asyncio.create_task(rig.dispatcher.call("wait"))
    await asyncio.sleep(0.05)
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    assert_paired(await rig.flushed(), status="error")


async def test_no_call_starts_once_the_run_is_cancelled() -> None:
    rig = Rig([double])
    rig.cancellation.request("stop")
    with pytest.raises(RunCancelled):
        await rig.dispatcher.call("double", {"n": 1})
    assert await rig.flushed() == []


async def test_every_call_gets_its_own_call_id() -> None:
    rig = Rig([double])
    for n in range(3):
        await rig.dispatcher.call("double", {"n": n})
    events = await rig.flushed()
    ids = [p["call_id"] for t, p in events if t == "tool_executing"]
    assert len(set(ids)) == 3


async def _wait_long(args: dict[str, Any], call: ToolCall) -> None:
    await asyncio.sleep(10)
