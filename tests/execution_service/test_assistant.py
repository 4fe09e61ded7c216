from __future__ import annotations

import pytest

from execution_service.builtins.assistant import chunks, find_expression, route
from tests.execution_service.fakes import Harness


@pytest.mark.parametrize(
    ("message", "tool", "args"),
    [
        ("what is 2+2?", "calculator", {"expression": "2+2"}),
        ("Please compute (3 + 4) * 5.", "calculator", {"expression": "(3 + 4) * 5"}),
        ("sqrt(16) please", "calculator", {"expression": "sqrt(16)"}),
        ("what is 10 divided by 4", "calculator", {"expression": "10 / 4"}),
        ("7 times 6", "calculator", {"expression": "7 * 6"}),
        ("what time is it?", "clock", {}),
        ("What's the date today", "clock", {}),
        ("echo hello world", "echo", {"text": "hello world"}),
        ("I have 3 apples", "text_stats", {"text": "I have 3 apples"}),
        ("Hello there. How are you?", "text_stats", {"text": "Hello there. How are you?"}),
    ],
)
def test_routes_each_message_to_one_tool(message: str, tool: str, args: dict[str, str]) -> None:
    chosen = route(message)
    assert (chosen.tool, dict(chosen.args)) == (tool, args)
    assert chosen.reasoning


def test_version_numbers_are_not_arithmetic() -> None:
    assert find_expression("upgrade to version 1.2.3") is None


def test_partial_chunks_concatenate_to_the_answer() -> None:
    text = "  The quick brown fox jumps over the lazy dog.  "
    parts = chunks(text)
    assert "".join(parts) == text and len(parts) == 3


async def test_an_assistant_run_emits_the_documented_sequence() -> None:
    h = Harness()
    run_id = await h.run("assistant", {"message": "what is 6 * 7?"})
    types = h.bridge.types(run_id)
    assert types[:4] == ["agent_started", "agent_thinking", "tool_executing", "tool_completed"]
    assert types[-1] == "agent_completed"
    assert set(types[4:-1]) == {"partial_result"}
    payloads = h.bridge.payloads(run_id)
    assert payloads[0]["input"] == {"message": "what is 6 * 7?"} and payloads[0]["message"]
    assert payloads[1]["reasoning"] and 0 <= payloads[1]["progress"] <= 1
    assert payloads[2]["tool_name"] == "calculator" and payloads[2]["parameters"] == {"expression": "6 * 7"}
    assert payloads[3]["status"] == "success" and payloads[3]["call_id"] == payloads[2]["call_id"]
    partials = payloads[4:-1]
    assert [p["index"] for p in partials] == list(range(len(partials)))
    final = payloads[-1]
    assert final["final_response"] == "6 * 7 = 42" == "".join(p["content"] for p in partials)
    assert final["result"]["tool"] == "calculator"
    assert h.state(run_id) == "completed"


async def test_the_assistant_answers_time_questions_with_the_clock() -> None:
    h = Harness()
    run_id = await h.run("assistant", {"message": "what time is it?"})
    assert h.bridge.payloads(run_id, "tool_executing")[0]["tool_name"] == "clock"
    assert "UTC" in h.bridge.payloads(run_id, "agent_completed")[0]["final_response"]


async def test_the_assistant_describes_other_text_with_text_stats() -> None:
    h = Harness()
    run_id = await h.run("assistant", {"message": "Hello there. How are you?"})
    completed = h.bridge.payloads(run_id, "tool_completed")[0]
    assert completed["result"]["words"] == 5 and completed["result"]["sentences"] == 2
    assert "5 words" in h.bridge.payloads(run_id, "agent_completed")[0]["final_response"]


async def test_a_tool_error_becomes_a_polite_answer() -> None:
    h = Harness()
    run_id = await h.run("assistant", {"message": "what is 1/0"})
    assert h.bridge.payloads(run_id, "tool_completed")[0]["status"] == "error"
    final = h.bridge.payloads(run_id, "agent_completed")[0]["final_response"]
    assert "division by zero" in final


def test_text_answers_use_singular_and_plural_correctly() -> None:
    from execution_service.builtins.assistant import Route, answer

    route = Route(tool="text_stats", args={}, reasoning="")
    text = answer(route, {"words": 1, "characters": 5, "sentences": 1, "lines": 2})
    assert text == "Your message has 1 word, 5 characters, 1 sentence and 2 lines."
