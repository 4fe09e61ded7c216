"""The built-in tools: ``calculator``, ``clock``, ``text_stats`` and ``echo``."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone
from types import MappingProxyType
from typing import Any

from execution_service.builtins.calculator import MAX_EXPRESSION_CHARS, CalculatorError, evaluate
from execution_service.tools import Tool, ToolCall, ToolError, tool

MAX_TEXT_CHARS = 100_000
_WORD = re.compile(r"\b[\w'-]+\b", re.UNICODE)
_SENTENCE_END = re.compile(r"[.!?]+(?=\s|$)")


@tool(
    name="calculator",
    description="Evaluates an arithmetic expression: numbers, + - * / // % **, parentheses, "
    "pi, e and sqrt/abs/round/floor/ceil/log/log10/exp/sin/cos/tan.",
    parameters=MappingProxyType(
        {
            "type": "object",
            "properties": {
                "expression": {"type": "string", "minLength": 1, "maxLength": MAX_EXPRESSION_CHARS}
            },
            "required": ["expression"],
            "additionalProperties": False,
        }
    ),
)
async def calculator(args: dict[str, Any], call: ToolCall) -> dict[str, Any]:
    try:
        value = evaluate(args["expression"])
    except CalculatorError as exc:
        raise ToolError(str(exc)) from None
    return {"expression": args["expression"], "result": value}


@tool(
    name="clock",
    description="The current date and time in UTC, or at a fixed offset from UTC.",
    parameters=MappingProxyType(
        {
            "type": "object",
            "properties": {"utc_offset_hours": {"type": "number", "minimum": -14, "maximum": 14}},
            "additionalProperties": False,
        }
    ),
)
async def clock(args: dict[str, Any], call: ToolCall) -> dict[str, Any]:
    now = datetime.now(UTC)
    offset_hours = float(args.get("utc_offset_hours", 0))
    local = now.astimezone(timezone(timedelta(hours=offset_hours)))
    return {
        "utc": now.isoformat(timespec="seconds").replace("+00:00", "Z"),
        "local": local.isoformat(timespec="seconds"),
        "utc_offset_hours": offset_hours,
        "date": local.date().isoformat(),
        "time": local.strftime("%H:%M:%S"),
        "weekday": local.strftime("%A"),
        "unix": int(now.timestamp()),
    }


def text_statistics(text: str) -> dict[str, Any]:
    words = _WORD.findall(text)
    stripped = text.strip()
    sentences = len(_SENTENCE_END.findall(stripped))
    if stripped and not _SENTENCE_END.search(stripped[-1:] + " "):
        sentences += 1  # a trailing sentence without its full stop
    return {
        "characters": len(text),
        "characters_without_spaces": sum(1 for ch in text if not ch.isspace()),
        "words": len(words),
        "lines": len(text.splitlines()) if text else 0,
        "sentences": sentences,
        "paragraphs": len([p for p in re.split(r"\n\s*\n", stripped) if p.strip()]) if stripped else 0,
        "average_word_length": round(sum(len(w) for w in words) / len(words), 2) if words else 0,
        "longest_word": max(words, key=len) if words else "",
    }


@tool(
    name="text_stats",
    description="Counts characters, words, lines, sentences and paragraphs of a text.",
    parameters=MappingProxyType(
        {
            "type": "object",
            "properties": {"text": {"type": "string", "maxLength": MAX_TEXT_CHARS}},
            "required": ["text"],
            "additionalProperties": False,
        }
    ),
)
async def text_stats(args: dict[str, Any], call: ToolCall) -> dict[str, Any]:
    return text_statistics(args["text"])


@tool(
    name="echo",
    description="Returns its arguments unchanged.",
    parameters=MappingProxyType({"type": "object"}),
)
async def echo(args: dict[str, Any], call: ToolCall) -> dict[str, Any]:
    return dict(args)


BUILTIN_TOOLS: tuple[Tool, ...] = (calculator, clock, text_stats, echo)
