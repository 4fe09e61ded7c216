"""Event payload bounds and tool-argument validation, through real runs of the ``scripted`` agent.

Runs are started on the execution service and watched on the bridge, as the
gateway would: whatever the script holds, every published payload stays within
the bridge's bound, every run ends with exactly one terminal event, and every
``tool_executing`` is paired with exactly one ``tool_completed`` whose status
follows from the tool's own JSON Schema.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
import pytest_asyncio
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator
from jsonschema.protocols import Validator

from runwire.common.v1 import context_pb2, event_pb2
from runwire.execution.v1 import execution_pb2
from runwire_common.attestation import ContextAttestor
from runwire_common.ids import new_id
from tests.hostile.harness import REPLY_TIMEOUT_S, TERMINAL_EVENT_TYPES, Stack, watching
from tests.hostile.strategies import JSON_VALUES, hostile_text
from tests.support.watcher import Watcher

pytestmark = [
    pytest.mark.asyncio(loop_scope="module"),
    pytest.mark.timeout(900),
    # Failing examples can be megabytes long; let Hypothesis print them instead of erroring.
    pytest.mark.filterwarnings("ignore::hypothesis.errors.HypothesisWarning"),
]

MAX_PAYLOAD_BYTES = 64 * 1024
MEGABYTE = 1024 * 1024
USER = "user_" + "b2" * 16
# Tools whose handler cannot fail on arguments its schema accepts.
TOTAL_TOOLS = frozenset({"clock", "text_stats", "echo"})

HOSTILE = settings(
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    deadline=None,
)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def watcher(stack: Stack, attestor: ContextAttestor) -> AsyncIterator[Watcher]:
    async with watching(stack, context(attestor)) as running:
        yield running


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def tool_schemas(stack: Stack, attestor: ContextAttestor) -> dict[str, Validator]:
    """Each built-in tool's validator, from the schema the service itself publishes."""
    reply = await stack.execution.ListAgents(
        execution_pb2.ListAgentsRequest(user_context=context(attestor)), timeout=REPLY_TIMEOUT_S
    )
    (scripted,) = [a for a in reply.agents if a.name == "scripted"]
    return {t.name: Draft202012Validator(json.loads(t.parameters_schema_json)) for t in scripted.tools}


def context(attestor: ContextAttestor, **fields: str) -> context_pb2.UserContext:
    ctx = context_pb2.UserContext(user_id=USER, request_id=new_id("req"), **fields)
    return attestor.mint(ctx, ttl_s=600)


async def run_script(
    stack: Stack, attestor: ContextAttestor, watcher: Watcher, script: dict[str, Any]
) -> list[event_pb2.RunEvent]:
    """Start ``script`` on a new thread; return the run's events once it has ended."""
    reply = await stack.execution.StartRun(
        execution_pb2.StartRunRequest(
            user_context=context(attestor, thread_id=new_id("thread")),
            agent="scripted",
            input_json=json.dumps(script),
        ),
        timeout=REPLY_TIMEOUT_S,
    )
    return await watcher.until_terminal(reply.run.run_id)


def assert_well_formed_run(events: list[event_pb2.RunEvent]) -> None:
    """Bounded payloads, seq 1..n, one terminal event at the end, paired tool events."""
    for e in events:
        assert len(e.payload_json.encode()) <= MAX_PAYLOAD_BYTES, (e.type, len(e.payload_json.encode()))
        assert isinstance(json.loads(e.payload_json), dict)
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert events[0].type == "agent_started"
    terminal = [e for e in events if e.type in TERMINAL_EVENT_TYPES]
    assert len(terminal) == 1 and terminal[0] is events[-1], [e.type for e in events]
    executing = [json.loads(e.payload_json)["call_id"] for e in events if e.type == "tool_executing"]
    completed = [json.loads(e.payload_json)["call_id"] for e in events if e.type == "tool_completed"]
    assert sorted(executing) == sorted(completed) and len(set(executing)) == len(executing)


HUGE = "\u00e9" * (MEGABYTE // 2)  # 1 MB of UTF-8
HUGE_SCRIPTS = {
    "think": {"steps": [{"think": HUGE}]},
    "partial": {"steps": [{"partial": HUGE}]},
    "result": {"steps": [], "result": HUGE},
    "fail": {"steps": [{"fail": HUGE}]},
    "tool arguments": {"steps": [{"tool": "echo", "args": {"text": HUGE}}]},
    "many large fields": {"steps": [{"tool": "echo", "args": {f"k{i}": "x" * 60_000 for i in range(8)}}]},
    "tool result": {"steps": [{"tool": "text_stats", "args": {"text": "word " * 19_000}}]},
}


@pytest.mark.parametrize("script", list(HUGE_SCRIPTS.values()), ids=list(HUGE_SCRIPTS))
async def test_a_run_with_megabytes_of_text_publishes_bounded_payloads_and_exactly_one_terminal_event(
    stack: Stack, attestor: ContextAttestor, watcher: Watcher, script: dict[str, Any]
) -> None:
    events = await run_script(stack, attestor, watcher, script)
    assert_well_formed_run(events)
    assert events[-1].type in ("agent_completed", "agent_error")


def _with_extra(args: st.SearchStrategy[dict[str, Any]]) -> st.SearchStrategy[dict[str, Any]]:
    extra = st.dictionaries(st.text(max_size=6), JSON_VALUES, max_size=2)
    return st.one_of(args, st.builds(lambda a, e: {**e, **a}, args, extra))


EXPRESSIONS = st.one_of(
    st.text("0123456789+-*/().% e,", max_size=30),
    st.sampled_from(
        ["1/0", "9**9**9", "2**10000", "sqrt(-1)", "__import__('os')", "()", "log(0)", "1e308*10"]
    ),
    hostile_text(surrogates=False),
)
TOOL_ARGUMENTS: dict[str, st.SearchStrategy[dict[str, Any]]] = {
    "calculator": _with_extra(st.fixed_dictionaries({"expression": st.one_of(EXPRESSIONS, JSON_VALUES)})),
    "clock": _with_extra(
        st.fixed_dictionaries(
            {},
            optional={
                "utc_offset_hours": st.one_of(
                    st.floats(-15, 15), st.integers(-20, 20), st.sampled_from([14, -14, 14.0001]), JSON_VALUES
                )
            },
        )
    ),
    "text_stats": _with_extra(
        st.fixed_dictionaries({"text": st.one_of(hostile_text(surrogates=True), JSON_VALUES)})
    ),
    "echo": st.dictionaries(st.text(max_size=8), JSON_VALUES, max_size=5),
}
TOOL_CALLS = st.one_of(
    *[st.tuples(st.just(name), args) for name, args in TOOL_ARGUMENTS.items()],
    st.tuples(
        st.sampled_from(list(TOOL_ARGUMENTS)), st.dictionaries(st.text(max_size=8), JSON_VALUES, max_size=3)
    ),
)


def _json_safe(value: Any) -> bool:
    """Finite numbers and no lone surrogates (StartRun refuses those; tested below)."""
    try:
        json.dumps(value, allow_nan=False, ensure_ascii=False).encode()
    except ValueError:  # UnicodeEncodeError is a ValueError
        return False
    return True


@HOSTILE
@given(calls=st.lists(TOOL_CALLS.filter(lambda call: _json_safe(call[1])), min_size=1, max_size=4))
async def test_every_tool_call_with_generated_arguments_is_paired_and_follows_the_tools_schema(
    stack: Stack,
    attestor: ContextAttestor,
    watcher: Watcher,
    tool_schemas: dict[str, Validator],
    calls: list[tuple[str, dict[str, Any]]],
) -> None:
    script = {"steps": [{"tool": name, "args": args} for name, args in calls], "result": "done"}
    events = await run_script(stack, attestor, watcher, script)
    assert_well_formed_run(events)
    assert events[-1].type == "agent_completed", events[-1].payload_json  # tool errors do not fail the run
    completed = [json.loads(e.payload_json) for e in events if e.type == "tool_completed"]
    assert [c["tool_name"] for c in completed] == [name for name, _ in calls]
    for (name, args), outcome in zip(calls, completed, strict=True):
        event(f"{name}: {outcome['status']}")
        assert outcome["status"] in ("success", "error"), outcome
        if outcome["status"] == "error":
            assert isinstance(outcome.get("error"), str) and outcome["error"].strip(), outcome
            assert "Traceback" not in outcome["error"], outcome
        if not tool_schemas[name].is_valid(args):
            assert outcome["status"] == "error", (name, args, outcome)
        elif name in TOTAL_TOOLS:
            assert outcome["status"] == "success", (name, args, outcome)


async def test_a_script_with_a_lone_surrogate_escape_is_refused_or_runs_to_its_terminal_event_at_once(
    stack: Stack, attestor: ContextAttestor, watcher: Watcher
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stack.execution.StartRun(
            execution_pb2.StartRunRequest(
                user_context=context(attestor, thread_id=new_id("thread")),
                agent="scripted",
                input_json='{"steps": [{"tool": "echo", "args": {"x": "\\ud800"}}], "result": "\\udfff"}',
            ),
            timeout=REPLY_TIMEOUT_S,
        )
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "surrogate" in (refused.value.details() or "")


async def test_no_run_published_anything_after_its_terminal_event(watcher: Watcher) -> None:
    assert watcher.events, "the runs above published nothing"
    assert watcher.after_terminal() == []
