"""Conversation memory: what a run reads of its thread, and what it adds to it.

:class:`ThreadHistory` implements :class:`~execution_service.sdk.ThreadMemory`:
the thread's earlier messages are read from the registry on the first
``await ctx.history()`` and kept for the rest of the run, so an agent that
never asks (the scripted agent, the load tests) costs no extra call.

:func:`messages_of_run` decides what a completed run adds: the agent's own
``AgentResult.messages`` when it set them, otherwise the user's input and
the final answer. Every message (its text, tool arguments and results) is redacted before it is
stored, like everything else that leaves the execution service.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

from execution_service.peers import RegistryPort
from execution_service.redaction import redact, redact_text
from execution_service.sdk import AgentResult, Message
from runwire.common.v1 import context_pb2, run_pb2
from runwire_common.errors import NotFound
from runwire_common.names import MESSAGE_ROLE_NAMES, MESSAGE_ROLES_BY_NAME


def message_of(record: run_pb2.ThreadMessage) -> Message:
    """The SDK's view of a stored message."""
    tool_calls: tuple[Mapping[str, Any], ...] = ()
    if record.tool_calls_json:
        decoded = json.loads(record.tool_calls_json)
        if isinstance(decoded, list):
            tool_calls = tuple(call for call in decoded if isinstance(call, dict))
    return Message(
        role=MESSAGE_ROLE_NAMES.get(int(record.role), "user"),
        content=record.content,
        tool_calls=tool_calls,
        tool_call_id=record.tool_call_id,
        name=record.name,
        run_id=record.run_id,
    )


def record_of(message: Message, *, run_id: str) -> run_pb2.ThreadMessage:
    """The stored form of ``message``, with secrets redacted."""
    role = MESSAGE_ROLES_BY_NAME.get(message.role)
    if role is None:
        raise ValueError(f"message role {message.role!r} is not one of {', '.join(MESSAGE_ROLES_BY_NAME)}")
    calls = [_redacted_call(call) for call in message.tool_calls]
    # Every message's words are redacted, not only tool results: a user or the model may quote a secret.
    content = (
        redact_text(message.content)
        if role != run_pb2.MESSAGE_ROLE_TOOL
        else _redacted_json_text(message.content)
    )
    return run_pb2.ThreadMessage(
        run_id=run_id,
        role=run_pb2.MessageRole.ValueType(role),
        content=content,
        tool_calls_json=json.dumps(calls) if calls else "",
        tool_call_id=message.tool_call_id,
        name=message.name,
    )


def _redacted_call(call: Mapping[str, Any]) -> dict[str, Any]:
    copied = {str(key): value for key, value in call.items()}
    function = copied.get("function")
    if isinstance(function, Mapping):
        function = dict(function)
        arguments = function.get("arguments")
        if isinstance(arguments, str):
            function["arguments"] = _redacted_json_text(arguments)
        copied["function"] = function
    return redact(copied)  # type: ignore[no-any-return]


def _redacted_json_text(text: str) -> str:
    """``text`` with secrets masked: as a JSON document when it is one, as free text otherwise."""
    try:
        decoded = json.loads(text)
    except ValueError:
        return redact_text(text)
    return json.dumps(redact(decoded))


def user_text(value: Mapping[str, Any]) -> str:
    """The user's words in a run's input: its ``message`` (or ``text``), else the input as JSON."""
    for key in ("message", "text", "content"):
        text = value.get(key)
        if isinstance(text, str):
            return text
    return json.dumps(redact(dict(value)))


def messages_of_run(
    result: AgentResult, *, run_input: Mapping[str, Any], run_id: str
) -> list[run_pb2.ThreadMessage]:
    """What a completed run adds to its thread."""
    messages = result.messages
    if messages is None:
        messages = (Message(role="user", content=user_text(run_input)),)
        if result.final_response:
            messages += (Message(role="assistant", content=result.final_response),)
    return [record_of(message, run_id=run_id) for message in messages]


class ThreadHistory:
    """The run's thread before this run, read once on first use."""

    def __init__(
        self, *, registry: RegistryPort, context: Callable[[], context_pb2.UserContext], run_id: str
    ) -> None:
        self._registry = registry
        self._context = context
        self._run_id = run_id
        self._loaded: tuple[Message, ...] | None = None

    async def history(self) -> tuple[Message, ...]:
        if self._loaded is None:
            try:
                _, records = await self._registry.get_thread(self._context())
            except NotFound:  # the thread's first run: nothing said yet
                records = []
            self._loaded = tuple(message_of(r) for r in records if r.run_id != self._run_id)
        return self._loaded
