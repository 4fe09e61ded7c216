"""The ``llm`` agent's parts without I/O: chunk assembly, history budget, redaction, settings."""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any

import pytest

from execution_service.catalog import AgentCatalog, CatalogError
from execution_service.llm.errors import safe_endpoint
from execution_service.llm.messages import history_chat, to_chat, within_budget
from execution_service.llm.settings import LlmSettings
from execution_service.llm.stream import Turn
from execution_service.llm.wiring import bind_llm, open_client
from execution_service.sdk import Message


def delta_chunk(delta: dict[str, Any], *, finish: str | None = None, usage: Any = None) -> Any:
    """A chunk as the SDK builds it: attributes, with unknown fields in ``model_extra``."""
    known = {"content", "tool_calls"}
    tool_calls = [
        SimpleNamespace(
            index=call.get("index"),
            id=call.get("id"),
            function=SimpleNamespace(**call["function"]) if "function" in call else None,
        )
        for call in delta.get("tool_calls", [])
    ]
    fields = {key: value for key, value in delta.items() if key in known} | {"tool_calls": tool_calls}
    extra = {key: value for key, value in delta.items() if key not in known}
    choice = SimpleNamespace(
        index=0, delta=SimpleNamespace(**fields, model_extra=extra), finish_reason=finish
    )
    return SimpleNamespace(model="m-1", choices=[choice], usage=usage)


def test_interleaved_tool_call_fragments_are_assembled_by_index() -> None:
    turn = Turn()
    turn.feed(
        delta_chunk({"tool_calls": [{"index": 1, "id": "b", "function": {"name": "echo", "arguments": ""}}]})
    )
    turn.feed(
        delta_chunk(
            {"tool_calls": [{"index": 0, "id": "a", "function": {"name": "clock", "arguments": "{"}}]}
        )
    )
    turn.feed(delta_chunk({"tool_calls": [{"index": 1, "function": {"arguments": '{"x": '}}]}))
    turn.feed(delta_chunk({"tool_calls": [{"index": 0, "function": {"arguments": "}"}}]}))
    turn.feed(
        delta_chunk({"tool_calls": [{"index": 1, "function": {"arguments": "1}"}}]}, finish="tool_calls")
    )
    calls = turn.tool_calls()
    assert [(c.id, c.name, c.arguments) for c in calls] == [("a", "clock", "{}"), ("b", "echo", '{"x": 1}')]
    assert turn.finish_reason == "tool_calls" and turn.model == "m-1"


def test_whole_calls_without_index_or_id_get_both() -> None:
    turn = Turn()
    turn.feed(delta_chunk({"tool_calls": [{"function": {"name": "clock", "arguments": "{}"}}]}))
    turn.feed(delta_chunk({"tool_calls": [{"function": {"name": "echo", "arguments": "{}"}}]}))
    assert [(c.id, c.name) for c in turn.tool_calls()] == [("call_0", "clock"), ("call_1", "echo")]


@pytest.mark.parametrize("field", ["reasoning_content", "reasoning"])
def test_reasoning_deltas_are_read_from_either_field(field: str) -> None:
    shown = Turn().feed(delta_chunk({field: "hmm", "content": "hi"}))
    assert (shown.reasoning, shown.content) == ("hmm", "hi")


def test_the_usage_chunk_has_no_choices() -> None:
    turn = Turn()
    usage = SimpleNamespace(prompt_tokens=3, completion_tokens=4)
    turn.feed(SimpleNamespace(model="m-1", choices=[], usage=usage))
    assert turn.usage.as_dict() == {"prompt": 3, "completion": 4}


def conversation(turns: int, size: int = 10) -> list[Message]:
    out: list[Message] = []
    for i in range(turns):
        out.append(Message(role="user", content=f"q{i}".ljust(size, ".")))
        call = {"id": f"c{i}", "type": "function", "function": {"name": "echo", "arguments": "{}"}}
        out.append(Message(role="assistant", tool_calls=(call,)))
        out.append(Message(role="tool", content="{}", tool_call_id=f"c{i}", name="echo"))
        out.append(Message(role="assistant", content=f"a{i}".ljust(size, ".")))
    return out


def test_the_budget_keeps_the_newest_whole_turns() -> None:
    history = conversation(3)  # each turn: 10 + 6 + 2 + 10 = 28 characters
    kept = within_budget(history, 60)
    assert [m.content for m in kept if m.role == "user"] == ["q1........", "q2........"]
    assert kept[0].role == "user" and len(kept) == 8


def test_a_budget_smaller_than_the_newest_turn_sends_no_history() -> None:
    assert within_budget(conversation(2), 27) == []
    assert within_budget(conversation(2), 0) == []


def test_a_leading_answer_without_its_question_is_not_sent() -> None:
    history = [Message(role="tool", content="{}", tool_call_id="x"), *conversation(1)]
    assert within_budget(history, 10_000)[0].role == "user"


def test_history_sent_to_the_model_has_tool_secrets_masked() -> None:
    call = {
        "id": "c1",
        "type": "function",
        "function": {"name": "echo", "arguments": json.dumps({"password": "pw-1", "x": 1})},
    }
    history = [
        Message(role="user", content="hi"),
        Message(role="assistant", tool_calls=(call,)),
        Message(role="tool", content=json.dumps({"token": "t-1"}), tool_call_id="c1", name="echo"),
        Message(role="assistant", content="ok"),
    ]
    sent = json.dumps(history_chat(history, 10_000))
    assert "pw-1" not in sent and "t-1" not in sent and sent.count("[REDACTED]") == 2


def test_an_assistant_message_that_only_calls_tools_has_null_content() -> None:
    call = {"id": "c1", "type": "function", "function": {"name": "echo", "arguments": "{}"}}
    chat = to_chat(Message(role="assistant", tool_calls=(call,)))
    assert chat is not None and chat["content"] is None and chat["tool_calls"][0]["id"] == "c1"


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("http://user:pw@localhost:11434/v1?key=1#x", "http://localhost:11434/v1"),
        ("https://api.example.test/v1", "https://api.example.test/v1"),
        ("http://[::1]:8000/v1", "http://[::1]:8000/v1"),
        ("not a url", "the configured endpoint"),
    ],
)
def test_endpoints_are_shown_without_credentials(url: str, shown: str) -> None:
    assert safe_endpoint(url) == shown


def test_settings_are_read_from_the_sdks_variables_and_runwires(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_BASE_URL", "http://localhost:11434/v1")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-env")
    monkeypatch.setenv("RUNWIRE_LLM_MODEL", "llama3.2")
    monkeypatch.setenv("RUNWIRE_LLM_TOOLS", "calculator, clock")
    monkeypatch.setenv("RUNWIRE_LLM_APPROVAL_TOOLS", "clock")
    monkeypatch.setenv("RUNWIRE_LLM_MAX_STEPS", "3")
    settings = LlmSettings()
    assert settings.base_url == "http://localhost:11434/v1" and settings.model == "llama3.2"
    assert settings.api_key.get_secret_value() == "sk-env" and "sk-env" not in repr(settings)
    assert settings.tools == ("calculator", "clock") and settings.approval_tools == ("clock",)
    assert (settings.max_steps, settings.timeout_s, settings.max_retries) == (3, 60.0, 2)
    assert settings.missing() == ()


def test_without_an_endpoint_there_is_no_client_and_the_agent_is_unavailable() -> None:
    settings = LlmSettings(base_url="", api_key="")
    assert settings.missing() == ("OPENAI_BASE_URL", "OPENAI_API_KEY")
    assert open_client(settings) is None
    catalog = bind_llm(AgentCatalog.discover(entry_points=False), settings, None)
    reason = catalog.agent("llm").unavailable_reason
    assert "OPENAI_BASE_URL" in reason and "OPENAI_API_KEY" in reason
    assert catalog.agent("assistant").unavailable_reason == ""


def test_unknown_tool_names_in_the_settings_fail_at_start_up() -> None:
    settings = LlmSettings(base_url="http://x/v1", api_key="k", approval_tools=("rm_rf",))
    with pytest.raises(CatalogError, match="rm_rf"):
        bind_llm(AgentCatalog.discover(entry_points=False), settings, None)
