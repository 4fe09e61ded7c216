"""The ``scripted`` agent: follows the script in its input.

For demos, client development and load tests. Input::

    {"steps": [{"think": "..."}, {"tool": "calculator", "args": {"expression": "1+1"}},
               {"partial": "..."}, {"sleep_ms": 500}, {"fail": "message"},
               {"ask": "question"}, {"tool": "echo", "args": {}, "require_approval": true}],
     "result": "final text"}

A failed tool call is reported by its ``tool_completed`` event and the script
goes on (a call refused by the user too: ``status: denied``); ``fail`` ends
the run with ``agent_error`` (``agent_failed``); ``ask`` waits for the user's
answer (``input_required``, the run is ``waiting``) and emits its ``text`` as a
``partial_result``.

A script is not a conversation: a scripted run adds no messages to its
thread (which also keeps load tests free of the extra registry write).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any, ClassVar

from execution_service.builtins.basic_tools import BUILTIN_TOOLS
from execution_service.sdk import Agent, AgentFailure, AgentResult, RunContext, ToolError

MAX_STEPS = 1000
MAX_SLEEP_MS = 600_000

# Each step is an object with exactly one of the kind keys ``think``, ``tool``, ``partial``,
# ``sleep_ms`` and ``fail``, plus that kind's optional keys. This could be a ``oneOf`` of one
# schema per kind, but every step would then be checked against all five (and jsonschema's
# cost is per subschema visited); instead the kind key picks the one schema that applies
# (``dependentSchemas``), and the step-level keywords below, which visit no subschema,
# refuse what has no kind key: unknown keys, optional keys without their kind key, ``{}``.
# tests/execution_service/test_scripted_schema.py checks it against the ``oneOf`` form.
STEP_KINDS: Mapping[str, Mapping[str, Any]] = MappingProxyType(
    {
        "think": {
            "properties": {
                "think": {"type": "string"},
                "step": {"type": "string"},
                "progress": {"type": "number", "minimum": 0, "maximum": 1},
            },
            "additionalProperties": False,
        },
        "tool": {
            "properties": {
                "tool": {"type": "string"},
                "args": {"type": "object"},
                "require_approval": {"type": "boolean"},
            },
            "additionalProperties": False,
        },
        "ask": {
            "properties": {"ask": {"type": "string"}},
            "additionalProperties": False,
        },
        "partial": {
            "properties": {"partial": {"type": "string"}},
            "additionalProperties": False,
        },
        "sleep_ms": {
            "properties": {"sleep_ms": {"type": "integer", "minimum": 0, "maximum": MAX_SLEEP_MS}},
            "additionalProperties": False,
        },
        "fail": {
            "properties": {"fail": {"type": "string"}, "code": {"type": "string"}},
            "additionalProperties": False,
        },
    }
)

STEP_SCHEMA: Mapping[str, Any] = MappingProxyType(
    {
        "type": "object",
        "minProperties": 1,
        # Every key some kind allows; ``true`` schemas cost nothing to check.
        "properties": {key: True for kind in STEP_KINDS.values() for key in kind["properties"]},
        "additionalProperties": False,
        # An optional key needs its kind key, so a step without a kind key is refused here.
        "dependentRequired": {
            "step": ["think"],
            "progress": ["think"],
            "args": ["tool"],
            "require_approval": ["tool"],
            "code": ["fail"],
        },
        # The kind's own schema: types, and no keys of another kind (so exactly one kind key).
        "dependentSchemas": dict(STEP_KINDS),
    }
)

INPUT_SCHEMA: Mapping[str, Any] = MappingProxyType(
    {
        "type": "object",
        "properties": {
            "steps": {"type": "array", "maxItems": MAX_STEPS, "items": STEP_SCHEMA},
            "result": {"type": "string"},
        },
        "required": ["steps"],
        "additionalProperties": False,
    }
)


def _text(value: Any) -> bool:
    return type(value) is str


def _fraction(value: Any) -> bool:
    return type(value) in (int, float) and 0 <= value <= 1  # NaN fails both comparisons


def _sleep(value: Any) -> bool:
    return type(value) is int and 0 <= value <= MAX_SLEEP_MS


def _object(value: Any) -> bool:
    return type(value) is dict


def _flag(value: Any) -> bool:
    return type(value) is bool


# What each key of a step may hold, by step kind; mirrors STEP_KINDS for plain JSON values.
# The checks are deliberately narrower than the schema (5.0 is a valid sleep_ms, but not
# here): whatever they do not accept goes to the schema, so they never widen it.
_FAST_CHECKS: Mapping[str, Mapping[str, Callable[[Any], bool]]] = MappingProxyType(
    {
        "think": {"think": _text, "step": _text, "progress": _fraction},
        "tool": {"tool": _text, "args": _object, "require_approval": _flag},
        "ask": {"ask": _text},
        "partial": {"partial": _text},
        "sleep_ms": {"sleep_ms": _sleep},
        "fail": {"fail": _text, "code": _text},
    }
)


def _plain_step(step: Any) -> bool:
    """Whether ``step`` is certainly a valid step (``False``: not sure)."""
    if type(step) is not dict:
        return False
    kinds = [key for key in step if key in _FAST_CHECKS]
    if len(kinds) != 1:
        return False
    checks = _FAST_CHECKS[kinds[0]]
    for key, value in step.items():
        check = checks.get(key)
        if check is None or not check(value):
            return False
    return True


class ScriptedAgent(Agent):
    name = "scripted"
    description = "Follows the script in its input: think, tool, partial, sleep_ms, fail and ask steps."
    input_schema = INPUT_SCHEMA
    tools: ClassVar[tuple[str, ...]] = tuple(t.name for t in BUILTIN_TOOLS)

    @classmethod
    def accepts_input(cls, value: Mapping[str, Any]) -> bool:
        """Plain scripts pass in a few microseconds per step instead of jsonschema's tens.

        Anything unusual is left to the schema, which has the final word and the
        error message; ``tests/execution_service/test_scripted_schema.py`` checks
        that this never accepts what the schema refuses.
        """
        if not value.keys() <= {"steps", "result"} or not _text(value.get("result", "")):
            return False
        steps = value.get("steps")
        return type(steps) is list and len(steps) <= MAX_STEPS and all(map(_plain_step, steps))

    async def run(self, ctx: RunContext) -> AgentResult:
        steps: list[Mapping[str, Any]] = list(ctx.input.get("steps", ()))
        tool_calls = 0
        tool_errors = 0
        for number, step in enumerate(steps, start=1):
            ctx.raise_if_cancelled()
            if "think" in step:
                await ctx.emitter.thinking(
                    step["think"], step=step.get("step"), progress=step.get("progress")
                )
            elif "tool" in step:
                tool_calls += 1
                try:
                    await ctx.tools.call(
                        step["tool"],
                        step.get("args", {}),
                        require_approval=step.get("require_approval", False),
                    )
                except ToolError:
                    tool_errors += 1  # already reported by its tool_completed event
            elif "partial" in step:
                await ctx.emitter.partial(step["partial"])
            elif "sleep_ms" in step:
                await ctx.sleep(step["sleep_ms"] / 1000)
            elif "ask" in step:
                answer = await ctx.ask(step["ask"])
                await ctx.emitter.partial(answer["text"])
            elif "fail" in step:
                raise AgentFailure(step["fail"], code=step.get("code", "agent_failed"))
            else:  # pragma: no cover - excluded by the input schema
                raise AgentFailure(f"step {number} is not a known step")
        return AgentResult(
            final_response=str(ctx.input.get("result", "")),
            result={"steps": len(steps), "tool_calls": tool_calls, "tool_errors": tool_errors},
            messages=(),
        )
