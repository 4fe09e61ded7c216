"""The ``assistant`` agent: a deterministic helper and the default agent.

It reads ``{"message": "..."}`` and routes it to one real tool: ``echo`` for
"echo …", ``calculator`` when the message contains an arithmetic expression,
``clock`` for time and date questions, and ``text_stats`` for anything else.
It thinks out loud (``agent_thinking``), calls the tool (``tool_executing`` /
``tool_completed``), streams its answer (``partial_result``) and completes.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from execution_service.builtins.calculator import FUNCTIONS
from execution_service.sdk import Agent, AgentResult, RunContext, ToolError

MAX_MESSAGE_CHARS = 10_000
WORDS_PER_PARTIAL = 4

INPUT_SCHEMA: Mapping[str, Any] = MappingProxyType(
    {
        "type": "object",
        "properties": {"message": {"type": "string", "minLength": 1, "maxLength": MAX_MESSAGE_CHARS}},
        "required": ["message"],
    }
)

_ECHO = re.compile(r"^\s*echo\b[\s:,]*(?P<text>.*)$", re.IGNORECASE | re.DOTALL)
_TIME_WORDS = re.compile(
    r"\b(time|date|day|today|tonight|clock|now|weekday|year|month|hour)\b", re.IGNORECASE
)
_WORD_OPERATORS = (
    (re.compile(r"\bplus\b", re.IGNORECASE), "+"),
    (re.compile(r"\bminus\b", re.IGNORECASE), "-"),
    (re.compile(r"\b(times|multiplied by)\b", re.IGNORECASE), "*"),
    (re.compile(r"\bdivided by\b", re.IGNORECASE), "/"),
    (re.compile(r"\b(to the power of|power)\b", re.IGNORECASE), "**"),
    (re.compile(r"(?<=\d)\s*[x\u00d7]\s*(?=\d)"), "*"),
    (re.compile(r"\u00f7"), "/"),
)
_EXPRESSION = re.compile(
    r"(?:\b(?:" + "|".join(sorted(FUNCTIONS, key=len, reverse=True)) + r"|pi)\b"
    r"|\d+(?:\.\d+)?|\*\*|//|[-+*/%^().]|\s)+"
)
_HAS_OPERATION = re.compile(r"\d\s*(?:\*\*|//|[-+*/%^])\s*[-(\d]|\b(?:" + "|".join(FUNCTIONS) + r")\s*\(")


@dataclass(frozen=True)
class Route:
    """Which tool answers a message, with which arguments, and why."""

    tool: str
    args: Mapping[str, Any]
    reasoning: str


def find_expression(message: str) -> str | None:
    """The arithmetic expression inside ``message``, if there is one."""
    text = message
    for pattern, symbol in _WORD_OPERATORS:
        text = pattern.sub(f" {symbol} ", text)
    candidates = [m.group(0).strip() for m in _EXPRESSION.finditer(text)]
    expressions = [c.rstrip(".") for c in candidates if _HAS_OPERATION.search(c)]
    if not expressions:
        return None
    return " ".join(max(expressions, key=len).split())


def route(message: str) -> Route:
    """Choose the tool for ``message`` (pure, deterministic)."""
    echo = _ECHO.match(message)
    if echo:
        return Route("echo", {"text": echo.group("text")}, "The message asks me to echo some text.")
    expression = find_expression(message)
    if expression is not None:
        return Route(
            "calculator",
            {"expression": expression},
            f"The message contains the arithmetic expression {expression}; I will compute it.",
        )
    if _TIME_WORDS.search(message):
        return Route("clock", {}, "The message asks about the time or date; I will check the clock.")
    return Route("text_stats", {"text": message}, "I will describe the message with text statistics.")


def answer(chosen: Route, result: Any) -> str:
    if chosen.tool == "calculator":
        return f"{result['expression']} = {result['result']}"
    if chosen.tool == "clock":
        return f"It is {result['time']} UTC on {result['weekday']}, {result['date']}."
    if chosen.tool == "echo":
        return str(result.get("text", ""))
    counts = [_count(result[key], noun) for key, noun in TEXT_COUNTS]
    return f"Your message has {', '.join(counts[:-1])} and {counts[-1]}."


TEXT_COUNTS = (("words", "word"), ("characters", "character"), ("sentences", "sentence"), ("lines", "line"))


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def chunks(text: str, size: int = WORDS_PER_PARTIAL) -> list[str]:
    """``text`` split into deltas of ``size`` words whose concatenation is ``text``."""
    pieces = re.findall(r"\S+\s*", text)
    leading = text[: len(text) - len(text.lstrip())]
    out = ["".join(pieces[i : i + size]) for i in range(0, len(pieces), size)]
    if out and leading:
        out[0] = leading + out[0]
    return out or ([text] if text else [])


class AssistantAgent(Agent):
    name = "assistant"
    description = "Answers arithmetic, time and text questions with real tools (the default agent)."
    input_schema = INPUT_SCHEMA
    tools = ("calculator", "clock", "text_stats", "echo")

    async def run(self, ctx: RunContext) -> AgentResult:
        message = str(ctx.input["message"])
        chosen = route(message)
        await ctx.emitter.thinking(chosen.reasoning, step="route", progress=0.25)
        try:
            result = await ctx.tools.call(chosen.tool, dict(chosen.args))
        except ToolError as exc:
            final = f"I could not use {chosen.tool}: {exc.message}"
            tool_result: Any = None
        else:
            final = answer(chosen, result)
            tool_result = result
        for delta in chunks(final):
            await ctx.emitter.partial(delta)
        return AgentResult(
            final_response=final,
            result={"tool": chosen.tool, "tool_result": tool_result, "answer": final},
        )
