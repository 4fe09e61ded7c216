"""The ``llm`` agent's thread memory and approvals: the real engine and dispatcher over the
in-memory registry and bridge, the real ``openai`` client against the loopback server."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from openai import AsyncOpenAI

from execution_service.catalog import AgentCatalog
from execution_service.engine import EngineConfig
from execution_service.llm.settings import LlmSettings
from execution_service.llm.wiring import bind_llm, open_client
from runwire.common.v1 import context_pb2, run_pb2
from tests.execution_service.fakes import Harness
from tests.support.openai_server import MODEL, Call, OpenAIServer, split, text_stream, tool_call_stream

THREAD = "thread_llm_memory_0001"


@pytest.fixture
async def server() -> AsyncIterator[OpenAIServer]:
    async with OpenAIServer() as running:
        yield running


@pytest.fixture
async def clients() -> AsyncIterator[list[AsyncOpenAI]]:
    opened: list[AsyncOpenAI] = []
    yield opened
    for client in opened:
        await client.close()


def harness(server: OpenAIServer, clients: list[AsyncOpenAI], **overrides: Any) -> Harness:
    options: dict[str, Any] = {"base_url": server.base_url, "api_key": "sk-memory", "model": MODEL}
    settings = LlmSettings(**(options | overrides))
    client = open_client(settings)
    assert client is not None
    clients.append(client)
    catalog = bind_llm(AgentCatalog.discover(entry_points=False), settings, client)
    config = EngineConfig(
        executor_id="exec_llm_tests_0000000",
        heartbeat_interval_s=0.05,
        cancel_grace_s=0.5,
        tool_timeout_s=1.0,
        input_poll_s=0.05,
    )
    return Harness(catalog=catalog, config=config)


async def test_the_second_run_on_a_thread_sends_the_first_turn_to_the_model(
    server: OpenAIServer, clients: list[AsyncOpenAI]
) -> None:
    h = harness(server, clients)
    server.script(
        tool_call_stream(Call("call_1", "calculator", split('{"expression": "2+3"}'))),
        text_stream("2+3 is 5."),
        text_stream("You asked about 2+3."),
    )
    first = await h.run("llm", {"message": "what is 2+3?"}, thread=THREAD)
    assert h.state(first) == "completed"
    second = await h.run("llm", {"message": "what did I ask?", "system": "Remember."}, thread=THREAD)
    assert h.state(second) == "completed"
    sent = server.bodies()[2]["messages"]
    assert [m["role"] for m in sent] == ["system", "user", "assistant", "tool", "assistant", "user"]
    assert sent[1] == {"role": "user", "content": "what is 2+3?"}
    assert sent[2]["tool_calls"][0]["id"] == "call_1"
    assert sent[3]["tool_call_id"] == "call_1" and json.loads(sent[3]["content"])["result"] == 5
    assert sent[4] == {"role": "assistant", "content": "2+3 is 5."}
    assert sent[5] == {"role": "user", "content": "what did I ask?"}


async def test_another_thread_starts_without_that_history(
    server: OpenAIServer, clients: list[AsyncOpenAI]
) -> None:
    h = harness(server, clients)
    server.script(text_stream("first"), text_stream("fresh"))
    await h.run("llm", {"message": "remember 7"}, thread=THREAD)
    await h.run("llm", {"message": "what number?"}, thread="thread_llm_memory_0002")
    assert server.bodies()[1]["messages"] == [{"role": "user", "content": "what number?"}]


async def test_the_history_sent_keeps_to_the_budget_dropping_the_oldest_turns(
    server: OpenAIServer, clients: list[AsyncOpenAI]
) -> None:
    h = harness(server, clients, history_max_chars=60)
    server.script(*(text_stream(f"answer {i} " + "x" * 10) for i in range(4)))
    for i in range(4):
        await h.run("llm", {"message": f"question {i} " + "y" * 10}, thread=THREAD)
    last = server.bodies()[3]["messages"]
    # Each earlier turn costs 2 * 21 characters: only the newest one fits in 60.
    assert [m["content"] for m in last] == [
        "question 2 yyyyyyyyyy",
        "answer 2 xxxxxxxxxx",
        "question 3 yyyyyyyyyy",
    ]


async def test_the_run_adds_its_turn_with_tool_calls_redacted(
    server: OpenAIServer, clients: list[AsyncOpenAI]
) -> None:
    h = harness(server, clients)
    server.script(
        tool_call_stream(Call("call_k", "echo", split('{"api_key": "k-123", "say": "hi"}'))),
        text_stream("said hi"),
    )
    run_id = await h.run("llm", {"message": "echo"}, thread=THREAD)
    stored = [m.message for m in h.registry.messages if m.message.run_id == run_id]
    assert [m.role for m in stored] == [
        run_pb2.MESSAGE_ROLE_USER,
        run_pb2.MESSAGE_ROLE_ASSISTANT,
        run_pb2.MESSAGE_ROLE_TOOL,
        run_pb2.MESSAGE_ROLE_ASSISTANT,
    ]
    assert "k-123" not in stored[1].tool_calls_json and "k-123" not in stored[2].content
    assert stored[3].content == "said hi"


async def wait_for_question(h: Harness, run_id: str) -> dict[str, Any]:
    for _ in range(400):
        asked = h.bridge.payloads(run_id, "input_required")
        if asked and h.registry.runs[run_id].state == run_pb2.RUN_STATE_WAITING:
            return asked[0]
        await asyncio.sleep(0.01)
    raise AssertionError("the run never asked for approval")


@pytest.mark.parametrize("approved", [True, False], ids=["approved", "denied"])
async def test_a_tool_configured_for_approval_runs_only_when_the_owner_approves(
    server: OpenAIServer, clients: list[AsyncOpenAI], approved: bool
) -> None:
    h = harness(server, clients, approval_tools=("calculator",))
    server.script(
        tool_call_stream(Call("call_p", "calculator", ['{"expression": "1+1"}'])),
        text_stream("done"),
    )
    engine = await h.engine("llm", {"message": "add"})
    task = asyncio.create_task(engine.execute())
    asked = await wait_for_question(h, engine.run_id)
    assert asked["kind"] == "approval" and asked["tool_name"] == "calculator"
    response = {"approved": True} if approved else {"approved": False, "reason": "no maths today"}
    run = h.registry.runs[engine.run_id]
    ctx = context_pb2.UserContext(user_id=run.user_id, run_id=run.run_id, thread_id=run.thread_id)
    await h.registry.answer_input(ctx, asked["request_id"], json.dumps(response))
    assert engine.inputs.deliver(asked["request_id"], json.dumps(response))
    await asyncio.wait_for(task, 5)
    [completed] = h.bridge.payloads(engine.run_id, "tool_completed")
    assert completed["status"] == ("success" if approved else "denied")
    fed_back = json.loads(server.bodies()[1]["messages"][-1]["content"])
    if approved:
        assert fed_back["result"] == 2
    else:
        assert fed_back["status"] == "denied" and "no maths today" in fed_back["error"]
    assert h.state(engine.run_id) == "completed"
