"""The ``llm`` agent through the real services, against a real OpenAI-compatible HTTP server.

The execution service's own ``openai`` client talks to
``tests.support.openai_server`` on loopback; events are read from the real
bridge as the run's owner sees them.
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import grpc
import pytest

from execution_service.llm.settings import LlmSettings
from runwire.common.v1 import context_pb2, event_pb2, run_pb2
from runwire.execution.v1 import execution_pb2
from runwire.registry.v1 import registry_pb2
from runwire_common.ids import new_id
from tests.conftest import ContextFactory
from tests.execution_service.system import CALL_TIMEOUT_S, System, running_system
from tests.support.openai_server import (
    MODEL,
    Call,
    Error,
    Hang,
    OpenAIServer,
    Stream,
    split,
    text_stream,
    tool_call_stream,
)

API_KEY = "sk-test-0123456789abcdef"
SystemFactory = Callable[..., AbstractAsyncContextManager[System]]


@pytest.fixture
async def server() -> AsyncIterator[OpenAIServer]:
    async with OpenAIServer() as running:
        yield running


@pytest.fixture
def llm_system(
    tmp_path: Path, attestation_key_spec: str, make_context: ContextFactory, server: OpenAIServer
) -> SystemFactory:
    """``async with llm_system(**llm_settings) as system``: the services, the llm agent on ``server``."""

    @asynccontextmanager
    async def start(**overrides: Any) -> AsyncIterator[System]:
        options: dict[str, Any] = {
            "base_url": server.base_url,
            "api_key": API_KEY,
            "model": MODEL,
            "timeout_s": 5.0,
            "max_retries": 2,
        }
        options.update(overrides)
        llm = LlmSettings(**options)
        async with running_system(tmp_path, attestation_key_spec, make_context, llm=llm) as system:
            yield system

    return start


def payloads(events: list[event_pb2.RunEvent], event_type: str) -> list[dict[str, Any]]:
    return [json.loads(e.payload_json) for e in events if e.type == event_type]


async def run_llm(system: System, agent_input: dict[str, Any]) -> list[event_pb2.RunEvent]:
    ctx = system.make_context(new_id("user"), thread_id=new_id("thread"))
    async with system.watch(ctx.user_id) as watcher:
        run = await system.start(ctx, "llm", agent_input)
        return await watcher.until_terminal(run.run_id)


def error_of(events: list[event_pb2.RunEvent]) -> dict[str, Any]:
    assert events[-1].type == "agent_error", [e.type for e in events]
    return json.loads(events[-1].payload_json)


async def test_tokens_arrive_as_partial_results_in_order_and_make_the_whole_answer(
    llm_system: SystemFactory, server: OpenAIServer
) -> None:
    pieces = ["The ", "answer ", "is ", "forty", "-two."]
    server.script(text_stream(*pieces, reasoning=["Thinking ", "it over."], usage=(21, 5)))
    async with llm_system() as system:
        events = await run_llm(system, {"message": "What is the answer?", "system": "Be brief."})
    types = [e.type for e in events]
    assert types[0] == "agent_started" and types[-1] == "agent_completed"
    assert [p["reasoning"] for p in payloads(events, "agent_thinking")] == ["Thinking ", "it over."]
    partials = payloads(events, "partial_result")
    assert [p["content"] for p in partials] == pieces
    assert [p["index"] for p in partials] == list(range(len(pieces)))
    assert types.index("agent_thinking") < types.index("partial_result")
    completed = payloads(events, "agent_completed")[0]
    assert completed["final_response"] == "The answer is forty-two."
    assert completed["result"]["model"] == MODEL
    assert completed["result"]["usage"] == {"prompt": 21, "completion": 5}
    assert completed["result"]["tool_calls"] == []
    [request] = server.requests
    assert request.headers["authorization"] == f"Bearer {API_KEY}"
    body = request.body
    assert body["model"] == MODEL and body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}
    assert body["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is the answer?"},
    ]
    offered = {tool["function"]["name"]: tool for tool in body["tools"]}
    assert set(offered) == {"calculator", "clock", "text_stats", "echo"}
    assert offered["calculator"]["type"] == "function"
    assert offered["calculator"]["function"]["parameters"]["required"] == ["expression"]


async def test_a_thread_is_remembered_in_the_registry_for_its_owner_only(
    llm_system: SystemFactory, server: OpenAIServer
) -> None:
    server.script(text_stream("Hi Ada."), text_stream("You are Ada."), text_stream("Who?"))
    owner, stranger, thread = new_id("user"), new_id("user"), new_id("thread")
    async with llm_system() as system:
        for user, message in ((owner, "I am Ada."), (owner, "Who am I?"), (stranger, "Who am I?")):
            ctx = system.make_context(user, thread_id=thread)
            async with system.watch(user) as watcher:
                run = await system.start(ctx, "llm", {"message": message})
                assert (await watcher.until_terminal(run.run_id))[-1].type == "agent_completed"
        stored = await system.registry.GetThread(
            registry_pb2.GetThreadRequest(user_context=system.make_context(owner, thread_id=thread)),
            timeout=CALL_TIMEOUT_S,
        )
    first, second, third = (body["messages"] for body in server.bodies())
    assert first == [{"role": "user", "content": "I am Ada."}]
    assert second == [
        {"role": "user", "content": "I am Ada."},
        {"role": "assistant", "content": "Hi Ada."},
        {"role": "user", "content": "Who am I?"},
    ]
    # The same thread id is another conversation for another user: nothing of the owner's is sent.
    assert third == [{"role": "user", "content": "Who am I?"}]
    assert [(m.role, m.content) for m in stored.messages] == [
        (run_pb2.MESSAGE_ROLE_USER, "I am Ada."),
        (run_pb2.MESSAGE_ROLE_ASSISTANT, "Hi Ada."),
        (run_pb2.MESSAGE_ROLE_USER, "Who am I?"),
        (run_pb2.MESSAGE_ROLE_ASSISTANT, "You are Ada."),
    ]


async def test_two_tool_calls_in_fragments_run_paired_and_their_results_go_back_to_the_model(
    llm_system: SystemFactory, server: OpenAIServer
) -> None:
    server.script(
        tool_call_stream(
            Call("call_a", "calculator", split('{"expression": "6 * 7"}', 4)),
            Call("call_b", "text_stats", split('{"text": "one two three"}', 3)),
            usage=(30, 12),
        ),
        text_stream("6 * 7 = 42; ", "the text has 3 words.", usage=(60, 9)),
    )
    async with llm_system() as system:
        events = await run_llm(system, {"message": "compute and count", "temperature": 0.2, "max_tokens": 50})
    executing = payloads(events, "tool_executing")
    completed = payloads(events, "tool_completed")
    assert [p["tool_name"] for p in executing] == ["calculator", "text_stats"]
    assert executing[0]["parameters"] == {"expression": "6 * 7"}
    assert [p["call_id"] for p in completed] == [p["call_id"] for p in executing]
    assert [p["status"] for p in completed] == ["success", "success"]
    types = [e.type for e in events]
    assert types.index("tool_completed") < types.index("partial_result")
    final = payloads(events, "agent_completed")[0]
    assert final["final_response"] == "6 * 7 = 42; the text has 3 words."
    assert final["result"]["usage"] == {"prompt": 90, "completion": 21}
    assert [(c["id"], c["name"], c["status"]) for c in final["result"]["tool_calls"]] == [
        ("call_a", "calculator", "success"),
        ("call_b", "text_stats", "success"),
    ]
    first, second = server.bodies()
    assert first["temperature"] == 0.2 and first["max_tokens"] == 50
    assistant, answer_a, answer_b = second["messages"][1:]
    assert assistant["role"] == "assistant"
    assert [(c["id"], c["function"]["name"]) for c in assistant["tool_calls"]] == [
        ("call_a", "calculator"),
        ("call_b", "text_stats"),
    ]
    assert json.loads(assistant["tool_calls"][0]["function"]["arguments"]) == {"expression": "6 * 7"}
    assert (answer_a["role"], answer_a["tool_call_id"]) == ("tool", "call_a")
    assert json.loads(answer_a["content"])["result"] == 42
    assert answer_b["tool_call_id"] == "call_b" and json.loads(answer_b["content"])["words"] == 3


@pytest.mark.parametrize(
    ("arguments", "expected"),
    [
        ('{"expr": "1 + 1"}', "invalid arguments"),  # valid JSON, not what the schema asks
        ('{"expression": "1 +', "not a JSON object"),  # cut-off JSON
    ],
    ids=["schema-invalid", "not-json"],
)
async def test_a_call_with_bad_arguments_is_a_tool_error_fed_back_to_the_model(
    llm_system: SystemFactory, server: OpenAIServer, arguments: str, expected: str
) -> None:
    server.script(
        tool_call_stream(Call("call_x", "calculator", split(arguments))),
        text_stream("Sorry, let me not do that."),
    )
    async with llm_system() as system:
        events = await run_llm(system, {"message": "add"})
    [executing] = payloads(events, "tool_executing")
    [completed] = payloads(events, "tool_completed")
    assert completed["call_id"] == executing["call_id"] and completed["status"] == "error"
    assert expected in completed["error"]
    if expected == "not a JSON object":  # the unreadable text is shown as it came
        assert executing["parameters"] == {"unparsed_arguments": arguments}
    assert events[-1].type == "agent_completed"
    tool_message = server.bodies()[1]["messages"][-1]
    assert tool_message["role"] == "tool" and tool_message["tool_call_id"] == "call_x"
    assert expected in json.loads(tool_message["content"])["error"]


async def test_a_rate_limited_request_is_retried_and_then_succeeds(
    llm_system: SystemFactory, server: OpenAIServer
) -> None:
    server.script(Error(429, "slow down", "rate_limit_exceeded"), text_stream("fine"))
    async with llm_system() as system:
        events = await run_llm(system, {"message": "hi"})
    assert payloads(events, "agent_completed")[0]["final_response"] == "fine"
    assert len(server.requests) == 2


@pytest.mark.parametrize(
    ("status", "code"),
    [(500, "llm_unavailable"), (503, "llm_unavailable"), (429, "llm_rate_limited")],
)
async def test_errors_that_outlast_the_retries_end_the_run_with_a_clear_code(
    llm_system: SystemFactory, server: OpenAIServer, status: int, code: str
) -> None:
    server.script(*[Error(status, "overloaded")] * 3)
    async with llm_system(max_retries=2) as system:
        events = await run_llm(system, {"message": "hi"})
    error = error_of(events)
    assert error["error_code"] == code and str(status) in error["error_message"]
    assert len(server.requests) == 3 and server.pending == 0


@pytest.mark.parametrize(
    ("status", "code", "hint"),
    [(401, "llm_auth_failed", "OPENAI_API_KEY"), (404, "llm_model_not_found", MODEL)],
)
async def test_refusals_are_not_retried_and_name_what_to_fix(
    llm_system: SystemFactory, server: OpenAIServer, status: int, code: str, hint: str
) -> None:
    server.script(Error(status, f"Incorrect API key provided: {API_KEY}", "invalid_request_error"))
    async with llm_system() as system:
        events = await run_llm(system, {"message": "hi"})
    error = error_of(events)
    assert error["error_code"] == code and hint in error["error_message"]
    assert API_KEY not in json.dumps([json.loads(e.payload_json) for e in events])
    assert len(server.requests) == 1


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def test_an_unreachable_endpoint_is_named_without_its_credentials(llm_system: SystemFactory) -> None:
    url = f"http://admin:hunter2@127.0.0.1:{free_port()}/v1?key=abc"
    async with llm_system(base_url=url, max_retries=0) as system:
        events = await run_llm(system, {"message": "hi"})
    error = error_of(events)
    assert error["error_code"] == "llm_unreachable"
    assert "127.0.0.1" in error["error_message"]
    assert "hunter2" not in error["error_message"] and "admin" not in error["error_message"]
    assert "key=abc" not in error["error_message"]


async def test_a_stream_cut_in_the_middle_of_the_answer_ends_the_run_interrupted(
    llm_system: SystemFactory, server: OpenAIServer
) -> None:
    server.script(text_stream("Once ", "upon ", "a ", "time", cut_after=3))
    async with llm_system() as system:
        events = await run_llm(system, {"message": "a story"})
    assert [p["content"] for p in payloads(events, "partial_result")] == ["Once ", "upon "]
    assert error_of(events)["error_code"] == "llm_stream_interrupted"
    assert len(server.requests) == 1  # a started answer is not retried


async def test_a_hanging_endpoint_ends_the_run_at_the_request_timeout(
    llm_system: SystemFactory, server: OpenAIServer
) -> None:
    server.script(Hang())
    async with llm_system(timeout_s=0.3, max_retries=0) as system:
        started = asyncio.get_running_loop().time()
        events = await run_llm(system, {"message": "hi"})
        elapsed = asyncio.get_running_loop().time() - started
    assert error_of(events)["error_code"] == "llm_timeout"
    assert elapsed < 3
    await asyncio.wait_for(server.requests[0].disconnected.wait(), 2)


async def test_a_stream_that_stalls_mid_answer_ends_the_run_at_the_request_timeout(
    llm_system: SystemFactory, server: OpenAIServer
) -> None:
    server.script(text_stream("partly ", "there", hang_after=2))
    async with llm_system(timeout_s=0.3, max_retries=0) as system:
        events = await run_llm(system, {"message": "hi"})
    assert error_of(events)["error_code"] == "llm_timeout"
    assert [p["content"] for p in payloads(events, "partial_result")] == ["partly "]


async def test_cancel_in_the_middle_of_the_stream_closes_the_http_stream_at_once(
    llm_system: SystemFactory, server: OpenAIServer
) -> None:
    server.script(text_stream("first ", "second", hang_after=2))
    async with llm_system() as system:
        ctx = system.make_context(new_id("user"), thread_id=new_id("thread"))
        async with system.watch(ctx.user_id) as watcher:
            run = await system.start(ctx, "llm", {"message": "talk"})
            await watcher.until(run.run_id, "partial_result")
            await system.cancel(ctx, run.run_id, "stop it")
            await asyncio.wait_for(server.requests[0].disconnected.wait(), 1.0)
            events = await watcher.until_terminal(run.run_id)
    assert events[-1].type == "agent_cancelled"
    assert json.loads(events[-1].payload_json)["reason"] == "stop it"


async def test_secrets_in_tool_arguments_and_results_never_reach_the_model_in_clear(
    llm_system: SystemFactory, server: OpenAIServer
) -> None:
    secret = "s3cr3t-value-987"
    arguments = json.dumps({"note": "keep", "api_key": secret, "nested": {"password": secret}})
    server.script(
        tool_call_stream(Call("call_s", "echo", split(arguments, 7))),
        text_stream("done"),
    )
    async with llm_system() as system:
        events = await run_llm(system, {"message": "echo my key"})
    assert events[-1].type == "agent_completed"
    assert payloads(events, "tool_completed")[0]["status"] == "success"
    assert secret not in server.log_text()
    sent = server.bodies()[1]["messages"]
    assert json.loads(sent[-2]["tool_calls"][0]["function"]["arguments"])["api_key"] == "[REDACTED]"
    echoed = json.loads(sent[-1]["content"])
    assert echoed == {"note": "keep", "api_key": "[REDACTED]", "nested": {"password": "[REDACTED]"}}
    assert secret not in json.dumps([json.loads(e.payload_json) for e in events])


async def test_a_model_that_never_stops_calling_tools_ends_at_max_steps(
    llm_system: SystemFactory, server: OpenAIServer
) -> None:
    server.script(*[tool_call_stream(Call(f"c{i}", "clock", ["{}"])) for i in range(2)])
    async with llm_system(max_steps=2) as system:
        events = await run_llm(system, {"message": "loop"})
    assert error_of(events)["error_code"] == "llm_max_steps"
    assert len(payloads(events, "tool_completed")) == 2


@pytest.mark.parametrize(
    ("name", "arguments", "expected"),
    [
        ("echo", '{"word": ', "not a JSON object"),  # echo's schema takes any object: nothing may run
        ("text_stats", '{"text": "x"}', "not offered"),  # a known tool this run did not offer
    ],
    ids=["unreadable-for-any-object-tool", "not-offered"],
)
async def test_a_call_that_is_not_made_still_shows_as_a_failed_pair(
    llm_system: SystemFactory, server: OpenAIServer, name: str, arguments: str, expected: str
) -> None:
    server.script(tool_call_stream(Call("call_r", name, [arguments])), text_stream("ok then"))
    async with llm_system() as system:
        events = await run_llm(system, {"message": "hi", "tools": ["echo", "clock"]})
    [executing] = payloads(events, "tool_executing")
    [completed] = payloads(events, "tool_completed")
    assert executing["tool_name"] == name and completed["call_id"] == executing["call_id"]
    assert completed["status"] == "error" and expected in completed["error"]
    assert "result" not in completed  # nothing ran
    tool_message = server.bodies()[1]["messages"][-1]
    assert tool_message["tool_call_id"] == "call_r" and expected in tool_message["content"]
    assert events[-1].type == "agent_completed"


async def test_only_the_tools_the_input_names_are_offered(
    llm_system: SystemFactory, server: OpenAIServer
) -> None:
    server.script(text_stream("ok"))
    async with llm_system(tools=("calculator", "clock")) as system:
        events = await run_llm(system, {"message": "hi", "tools": ["clock"]})
        refused = await run_llm(system, {"message": "hi", "tools": ["echo"]})
    assert events[-1].type == "agent_completed"
    assert [tool["function"]["name"] for tool in server.bodies()[0]["tools"]] == ["clock"]
    assert error_of(refused)["error_code"] == "llm_tool_not_allowed"


async def test_without_an_endpoint_the_agent_is_listed_but_a_start_names_the_settings_to_set(
    llm_system: SystemFactory, server: OpenAIServer
) -> None:
    async with llm_system(base_url="", api_key="") as system:
        ctx: context_pb2.UserContext = system.make_context(new_id("user"), thread_id=new_id("thread"))
        listed = await system.execution.ListAgents(
            execution_pb2.ListAgentsRequest(user_context=ctx), timeout=CALL_TIMEOUT_S
        )
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await system.start(ctx, "llm", {"message": "hi"})
    assert "llm" in [agent.name for agent in listed.agents]
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "OPENAI_BASE_URL" in (refused.value.details() or "")
    assert "OPENAI_API_KEY" in (refused.value.details() or "")
    assert server.requests == []


def test_the_scripted_replies_are_streams(server: OpenAIServer) -> None:
    # The helpers build what the tests above rely on: a usage-less stream stays usage-less.
    assert isinstance(text_stream("a", usage=None), Stream) and text_stream("a", usage=None).usage is None
