"""Thread messages to chat-completions messages, within a budget, with secrets masked.

Whatever the model is sent about tools — the arguments of earlier calls and
their results — is redacted first (``execution_service.redaction``), so a
secret a tool saw or returned never reaches the endpoint, nor its logs, in
clear. The same redacted form is what the run stores in its thread.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from execution_service.redaction import redact, redact_text
from execution_service.sdk import Message

ROLES = frozenset({"user", "assistant", "tool"})


def redacted_arguments(raw: str) -> str:
    """A tool call's arguments text with secrets masked (JSON kept JSON when it parses)."""
    try:
        parsed = json.loads(raw) if raw.strip() else {}
    except ValueError:
        return redact_text(raw)
    return json.dumps(redact(parsed), ensure_ascii=False)


def tool_content(value: Any) -> str:
    """What a tool message carries: the redacted value as JSON."""
    return json.dumps(redact(value), ensure_ascii=False)


def _redacted_content(text: str) -> str:
    try:
        parsed = json.loads(text)
    except ValueError:
        return redact_text(text)
    return json.dumps(redact(parsed), ensure_ascii=False)


def tool_call_entry(call_id: str, name: str, arguments: str) -> dict[str, Any]:
    """One ``tool_calls`` item of an assistant message (arguments already redacted)."""
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


def _call_of(item: Mapping[str, Any]) -> dict[str, Any]:
    function = item.get("function")
    function = function if isinstance(function, Mapping) else {}
    arguments = function.get("arguments", "")
    if not isinstance(arguments, str):
        arguments = json.dumps(arguments)
    return tool_call_entry(
        str(item.get("id", "")), str(function.get("name", "")), redacted_arguments(arguments)
    )


def to_chat(message: Message) -> dict[str, Any] | None:
    """The chat-completions form of ``message`` (``None`` for a role the API has no place for)."""
    if message.role == "user":
        return {"role": "user", "content": message.content}
    if message.role == "assistant":
        out: dict[str, Any] = {"role": "assistant", "content": message.content}
        if message.tool_calls:
            out["tool_calls"] = [_call_of(item) for item in message.tool_calls]
            out["content"] = message.content or None
        return out
    if message.role == "tool":
        return {
            "role": "tool",
            "tool_call_id": message.tool_call_id,
            "content": _redacted_content(message.content),
        }
    return None


def size(message: Message) -> int:
    """The characters a message costs against the history budget."""
    total = len(message.content)
    for item in message.tool_calls:
        function = item.get("function")
        if isinstance(function, Mapping):
            total += len(str(function.get("name", ""))) + len(str(function.get("arguments", "")))
    return total


def turns(messages: Sequence[Message]) -> list[list[Message]]:
    """``messages`` cut into turns, each starting with a user message (a leading remainder apart)."""
    groups: list[list[Message]] = []
    for message in messages:
        if message.role not in ROLES:
            continue
        if message.role == "user" or not groups:
            groups.append([])
        groups[-1].append(message)
    return groups


def within_budget(history: Sequence[Message], max_chars: int) -> list[Message]:
    """The newest whole turns of ``history`` whose characters add up to ``max_chars`` at most.

    Whole turns only: an assistant's tool calls never lose their results, and a
    turn never starts in its middle. A turn that alone exceeds the budget is left out.
    """
    kept: list[list[Message]] = []
    used = 0
    for turn in reversed(turns(history)):
        cost = sum(size(message) for message in turn)
        if used + cost > max_chars:
            break
        kept.append(turn)
        used += cost
    if kept and kept[-1][0].role != "user":
        kept.pop()  # a leading remainder that starts with an answer to nothing
    return [message for turn in reversed(kept) for message in turn]


def history_chat(history: Sequence[Message], max_chars: int) -> list[dict[str, Any]]:
    """Earlier turns to send to the model, oldest first, within ``max_chars``."""
    out = []
    for message in within_budget(history, max_chars):
        chat = to_chat(message)
        if chat is not None:
            out.append(chat)
    return out
