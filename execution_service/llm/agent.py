"""The ``llm`` agent: a model behind any OpenAI-compatible chat-completions endpoint.

Each run sends the thread's earlier turns (within the history budget) and
the user's message, streams the answer — every content delta a
``partial_result`` at once, reasoning deltas ``agent_thinking`` — and runs
the tool calls the model makes through the run's dispatcher, feeding the
results back, until the model answers without calling a tool or
``max_steps`` model turns have been used.

Cancellation closes the HTTP stream at once: the turn runs in a task that
is cancelled when the run's cancellation signal fires, and leaving the
stream's ``async with`` closes the response (the server sees the
connection go).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, TypeVar, cast

import openai
from openai import AsyncOpenAI

from execution_service.catalog import ToolSpec
from execution_service.llm import errors
from execution_service.llm.messages import (
    history_chat,
    redacted_arguments,
    to_chat,
    tool_call_entry,
    tool_content,
)
from execution_service.llm.settings import LlmSettings
from execution_service.llm.stream import ToolCallDraft, Turn, Usage
from execution_service.redaction import redact, redact_text
from execution_service.schemas import thaw
from execution_service.sdk import (
    Agent,
    AgentFailure,
    AgentResult,
    Message,
    RunCancelled,
    RunContext,
    ToolDenied,
    ToolError,
)

T = TypeVar("T")
log = logging.getLogger("runwire.execution.llm")

LLM_TOOLS = ("calculator", "clock", "text_stats", "echo")
# Turns in a row in which the model's tool calls could not be read before the run gives up.
MAX_MALFORMED_TURNS = 3
# Raw text of unreadable arguments quoted back to the model and the events, at most.
MAX_QUOTED_ARGUMENTS = 500
MALFORMED_KEY = "unparsed_arguments"

INPUT_SCHEMA: Mapping[str, Any] = MappingProxyType(
    {
        "type": "object",
        "properties": {
            "message": {"type": "string", "minLength": 1, "description": "the user's message"},
            "system": {"type": "string", "description": "system prompt of this run"},
            "model": {"type": "string", "minLength": 1, "maxLength": 256},
            "tools": {
                "type": "array",
                "items": {"type": "string", "enum": list(LLM_TOOLS)},
                "uniqueItems": True,
                "description": "tools offered to the model (a subset of the allowed ones)",
            },
            "temperature": {"type": "number", "minimum": 0, "maximum": 2},
            "max_tokens": {"type": "integer", "minimum": 1},
        },
        "required": ["message"],
        "additionalProperties": False,
    }
)


@dataclass(frozen=True)
class CallOutcome:
    """One tool call as the model hears of it and as the run's result records it."""

    content: str
    record: dict[str, Any]
    malformed: bool = False


def function_schema(spec: ToolSpec) -> dict[str, Any]:
    """A tool offered to the model: ``{"type": "function", "function": {...}}``."""
    tool = spec.tool
    return {
        "type": "function",
        "function": {"name": tool.name, "description": tool.description, "parameters": thaw(tool.parameters)},
    }


async def until_cancelled(ctx: RunContext, work: Awaitable[T]) -> T:
    """Await ``work`` in a task; cancel it (closing what it holds) as soon as the run is cancelled."""
    task = asyncio.ensure_future(work)
    stop = asyncio.ensure_future(ctx.cancellation.wait())
    try:
        await asyncio.wait((task, stop), return_when=asyncio.FIRST_COMPLETED)
    finally:
        stop.cancel()
        if not task.done():
            task.cancel()
            await asyncio.wait((task,))
    if task.cancelled():
        raise RunCancelled(ctx.cancellation.reason)
    return task.result()


class LlmAgent(Agent):
    """Answers with a model behind ``OPENAI_BASE_URL``; see the module docstring."""

    name = "llm"
    description = (
        "A model behind any OpenAI-compatible endpoint (OpenAI, vLLM, Ollama, llama.cpp, LiteLLM), "
        "with streamed tokens, tool calls and the thread's earlier turns."
    )
    input_schema = INPUT_SCHEMA
    tools = LLM_TOOLS

    def __init__(
        self,
        client: AsyncOpenAI | None = None,
        settings: LlmSettings | None = None,
        tools: Mapping[str, ToolSpec] | None = None,
    ) -> None:
        self._client = client
        self._settings = settings or LlmSettings()
        self._tools: Mapping[str, ToolSpec] = tools or {}

    def _offered(self, requested: Any) -> dict[str, ToolSpec]:
        allowed = [name for name in (self._settings.tools or LLM_TOOLS) if name in self._tools]
        if requested is None:
            return {name: self._tools[name] for name in allowed}
        refused = [name for name in requested if name not in allowed]
        if refused:
            raise AgentFailure(
                f"tool(s) not enabled for the llm agent: {', '.join(refused)} "
                f"(enabled: {', '.join(allowed) or 'none'})",
                code=errors.TOOL_NOT_ALLOWED,
            )
        return {name: self._tools[name] for name in requested}

    async def run(self, ctx: RunContext) -> AgentResult:
        settings = self._settings
        if self._client is None:
            missing = ", ".join(settings.missing()) or "OPENAI_BASE_URL, OPENAI_API_KEY"
            raise AgentFailure(f"the llm agent is not configured: set {missing}", code="llm_not_configured")
        model = str(ctx.input.get("model") or settings.model)
        if not model:
            raise AgentFailure(
                "no model to use: set RUNWIRE_LLM_MODEL or name one in the input's model",
                code=errors.NO_MODEL,
            )
        offered = self._offered(ctx.input.get("tools"))
        options: dict[str, Any] = {}
        if offered:
            options["tools"] = [function_schema(spec) for spec in offered.values()]
        for key in ("temperature", "max_tokens"):
            if ctx.input.get(key) is not None:
                options[key] = ctx.input[key]
        prefix: list[dict[str, Any]] = []
        if ctx.input.get("system"):
            prefix.append({"role": "system", "content": str(ctx.input["system"])})
        prefix.extend(history_chat(await ctx.history(), settings.history_max_chars))

        transcript: list[Message] = [Message(role="user", content=str(ctx.input["message"]))]
        answer: list[str] = []
        usage = Usage()
        records: list[dict[str, Any]] = []
        used_model = model
        malformed_turns = 0
        for _ in range(settings.max_steps):
            ctx.raise_if_cancelled()
            messages = prefix + [chat for chat in map(to_chat, transcript) if chat is not None]
            turn = await until_cancelled(ctx, self._stream_turn(ctx, model, messages, options))
            usage += turn.usage
            used_model = turn.model or used_model
            answer.append(turn.text)
            calls = turn.tool_calls()
            if not calls:
                transcript.append(Message(role="assistant", content=turn.text))
                return AgentResult(
                    final_response="".join(answer),
                    result={
                        "model": used_model,
                        "usage": usage.as_dict(),
                        "tool_calls": records,
                        "finish_reason": turn.finish_reason,
                    },
                    messages=tuple(transcript),
                )
            transcript.append(
                Message(
                    role="assistant",
                    content=turn.text,
                    tool_calls=tuple(
                        tool_call_entry(call.id, call.name, redacted_arguments(call.arguments))
                        for call in calls
                    ),
                )
            )
            outcomes = [await self._call_tool(ctx, call, offered) for call in calls]
            for call, outcome in zip(calls, outcomes, strict=True):
                transcript.append(
                    Message(role="tool", content=outcome.content, tool_call_id=call.id, name=call.name)
                )
                records.append(outcome.record)
            malformed_turns = malformed_turns + 1 if any(o.malformed for o in outcomes) else 0
            if malformed_turns >= MAX_MALFORMED_TURNS:
                raise AgentFailure(
                    f"the model sent tool calls that could not be read {malformed_turns} times in a row",
                    code=errors.MALFORMED_TOOL_CALLS,
                )
        raise AgentFailure(
            f"the model did not finish its answer within {settings.max_steps} steps (RUNWIRE_LLM_MAX_STEPS)",
            code=errors.TOO_MANY_STEPS,
        )

    async def _stream_turn(
        self, ctx: RunContext, model: str, messages: list[dict[str, Any]], options: dict[str, Any]
    ) -> Turn:
        assert self._client is not None
        endpoint = str(self._client.base_url)
        try:
            stream = await self._client.chat.completions.create(
                model=model,
                messages=cast(Any, messages),
                stream=True,
                stream_options={"include_usage": True},
                **options,
            )
        except openai.OpenAIError as exc:
            log.warning("model request failed", extra={"error": type(exc).__name__})
            raise errors.request_failure(
                exc, endpoint=endpoint, model=model, api_key=self._settings.api_key.get_secret_value()
            ) from None
        turn = Turn()
        async with stream:
            try:
                async for chunk in stream:
                    shown = turn.feed(chunk)
                    if shown.reasoning:
                        await ctx.emitter.thinking(shown.reasoning)
                    if shown.content:
                        await ctx.emitter.partial(shown.content)
            except (openai.OpenAIError, ValueError) as exc:
                log.warning("model stream failed", extra={"error": type(exc).__name__})
                raise errors.stream_failure(exc, endpoint=endpoint) from None
        if turn.finish_reason is None:
            raise errors.interrupted(endpoint)
        return turn

    async def _call_tool(
        self, ctx: RunContext, call: ToolCallDraft, offered: Mapping[str, ToolSpec]
    ) -> CallOutcome:
        record: dict[str, Any] = {"id": call.id, "name": call.name}
        try:
            parsed = json.loads(call.arguments) if call.arguments.strip() else {}
        except ValueError:
            parsed = None
        malformed = not isinstance(parsed, dict)
        if malformed:
            quoted = redact_text(call.arguments[:MAX_QUOTED_ARGUMENTS])
            arguments: dict[str, Any] = {MALFORMED_KEY: quoted}
            record["arguments"] = quoted
            problem = "the arguments are not a JSON object"
        else:
            arguments = cast(dict[str, Any], parsed)
            record["arguments"] = redact(arguments)
            problem = ""
        try:
            if malformed or call.name not in offered:
                # Nothing runs; the user still sees the call fail, and the model hears why.
                reason = problem or f"tool {call.name!r} is not offered in this run"
                await ctx.tools.reject(call.name, arguments, reason)
            approval = call.name in self._settings.approval_tools
            result = await ctx.tools.call(call.name, arguments, require_approval=approval)
        except ToolDenied as exc:  # the model hears why, and may go on without the tool
            record.update(status=exc.status, error=redact_text(exc.message))
            return CallOutcome(
                tool_content({"error": record["error"], "status": exc.status}), record, malformed
            )
        except ToolError as exc:
            message = redact_text(exc.message)
            record.update(status=exc.status, error=message)
            return CallOutcome(tool_content({"error": message, "status": exc.status}), record, malformed)
        record["status"] = "success"
        return CallOutcome(tool_content(result), record)
