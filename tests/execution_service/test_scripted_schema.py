"""The scripted agent's input schema accepts and refuses exactly what its ``oneOf`` form did.

The schema picks each step's kind by its kind key instead of trying a ``oneOf``
of five step schemas (see ``execution_service/builtins/scripted.py``); the
``oneOf`` form below is the reference it must stay equivalent to.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bench.config import scripted_input
from execution_service.builtins.scripted import INPUT_SCHEMA, MAX_SLEEP_MS, MAX_STEPS, ScriptedAgent
from execution_service.catalog import AgentCatalog
from execution_service.schemas import compile_schema, schema_problem
from runwire_common.errors import InvalidArgument

ONE_OF_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "steps": {
            "type": "array",
            "maxItems": MAX_STEPS,
            "items": {
                "oneOf": [
                    {
                        "type": "object",
                        "properties": {
                            "think": {"type": "string"},
                            "step": {"type": "string"},
                            "progress": {"type": "number", "minimum": 0, "maximum": 1},
                        },
                        "required": ["think"],
                        "additionalProperties": False,
                    },
                    {
                        "type": "object",
                        "properties": {"tool": {"type": "string"}, "args": {"type": "object"}},
                        "required": ["tool"],
                        "additionalProperties": False,
                    },
                    {
                        "type": "object",
                        "properties": {"partial": {"type": "string"}},
                        "required": ["partial"],
                        "additionalProperties": False,
                    },
                    {
                        "type": "object",
                        "properties": {
                            "sleep_ms": {"type": "integer", "minimum": 0, "maximum": MAX_SLEEP_MS}
                        },
                        "required": ["sleep_ms"],
                        "additionalProperties": False,
                    },
                    {
                        "type": "object",
                        "properties": {"fail": {"type": "string"}, "code": {"type": "string"}},
                        "required": ["fail"],
                        "additionalProperties": False,
                    },
                ]
            },
        },
        "result": {"type": "string"},
    },
    "required": ["steps"],
    "additionalProperties": False,
}

REFERENCE = compile_schema(ONE_OF_SCHEMA, owner="reference")
CURRENT = compile_schema(INPUT_SCHEMA, owner="scripted")

STEP_KEYS = ("think", "step", "progress", "tool", "args", "partial", "sleep_ms", "fail", "code")
# Values on and around every boundary the step schemas draw (types, minimum, maximum).
VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.sampled_from([-1, 0, 1, 2, MAX_SLEEP_MS, MAX_SLEEP_MS + 1, 0.0, 0.5, 1.0, 1.5, -0.5, 2.0]),
    st.integers(),
    st.floats(allow_nan=False),
    st.text(max_size=5),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)
# Values each key accepts, mixed with arbitrary ones so both verdicts come up often.
GOOD: dict[str, st.SearchStrategy[Any]] = {
    "think": st.text(max_size=3),
    "step": st.text(max_size=3),
    "progress": st.one_of(st.sampled_from([0, 1, 0.5, 1.0]), st.floats(0, 1)),
    "tool": st.text(max_size=3),
    "args": st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
    "partial": st.text(max_size=3),
    "sleep_ms": st.one_of(st.sampled_from([0, MAX_SLEEP_MS, 5.0]), st.integers(0, MAX_SLEEP_MS)),
    "fail": st.text(max_size=3),
    "code": st.text(max_size=3),
}
KINDS = {"think": ("step", "progress"), "tool": ("args",), "partial": (), "sleep_ms": (), "fail": ("code",)}


@st.composite
def kind_steps(draw: st.DrawFn) -> dict[str, Any]:
    """A step of one kind, sometimes with a wrong value, a key of another kind or an unknown key."""
    kind = draw(st.sampled_from(sorted(KINDS)))
    keys = [kind, *draw(st.lists(st.sampled_from(KINDS[kind]), unique=True))] if KINDS[kind] else [kind]
    if draw(st.integers(0, 3)) == 0:
        keys.append(draw(st.sampled_from((*STEP_KEYS, "extra"))))
    if draw(st.integers(0, 5)) == 0:
        keys.remove(kind)
    return {key: draw(VALUES if draw(st.integers(0, 5)) == 0 else GOOD.get(key, VALUES)) for key in keys}


STEPS = st.one_of(
    kind_steps(),
    kind_steps(),
    st.dictionaries(st.sampled_from((*STEP_KEYS, "extra", "Think", "")), VALUES, max_size=4),
    VALUES,
)
INPUTS = st.one_of(
    st.fixed_dictionaries(
        {"steps": st.lists(kind_steps(), max_size=3)}, optional={"result": st.text(max_size=3)}
    ),
    st.fixed_dictionaries(
        {"steps": st.lists(STEPS, max_size=4)},
        optional={"result": st.one_of(st.text(max_size=3), VALUES), "extra": VALUES},
    ),
    st.dictionaries(st.sampled_from(("steps", "result", "other")), VALUES, max_size=3),
)

VALID_STEPS: list[Any] = [
    {"think": ""},
    {"think": "a", "step": "s"},
    {"think": "a", "progress": 0},
    {"think": "a", "step": "s", "progress": 1},
    {"think": "a", "progress": 0.5},
    {"tool": "calculator"},
    {"tool": "calculator", "args": {}},
    {"tool": "calculator", "args": {"expression": "1+1"}},
    {"partial": "x"},
    {"sleep_ms": 0},
    {"sleep_ms": MAX_SLEEP_MS},
    {"sleep_ms": 5.0},
    {"fail": "boom"},
    {"fail": "boom", "code": "c"},
]
INVALID_STEPS: list[Any] = [
    {},
    None,
    "think",
    [],
    [{"think": "a"}],
    1,
    {"dance": True},
    {"Think": "a"},
    {"step": "s"},
    {"progress": 0.5},
    {"args": {}},
    {"code": "c"},
    {"step": "s", "code": "c"},
    {"think": 1},
    {"think": None},
    {"think": "a", "progress": 1.5},
    {"think": "a", "progress": -0.1},
    {"think": "a", "progress": True},
    {"think": "a", "step": 3},
    {"think": "a", "args": {}},
    {"think": "a", "code": "c"},
    {"think": "a", "tool": "b"},
    {"think": "a", "partial": "b"},
    {"tool": "b", "args": []},
    {"tool": "b", "args": None},
    {"tool": 1},
    {"tool": "b", "step": "s"},
    {"tool": "b", "fail": "f"},
    {"partial": 1},
    {"partial": "a", "extra": 1},
    {"partial": "a", "sleep_ms": 1},
    {"sleep_ms": -1},
    {"sleep_ms": MAX_SLEEP_MS + 1},
    {"sleep_ms": 1.5},
    {"sleep_ms": True},
    {"sleep_ms": "1"},
    {"fail": 1},
    {"fail": "f", "code": 1},
    {"fail": "f", "progress": 0.5},
    {"think": "a", "tool": "b", "partial": "c", "sleep_ms": 1, "fail": "d"},
]


def same_verdict(instance: Any) -> None:
    """The schema agrees with the reference, and the fast path never accepts what it refuses."""
    assert CURRENT.is_valid(instance) is REFERENCE.is_valid(instance), instance
    assert (schema_problem(CURRENT, instance) is None) is REFERENCE.is_valid(instance), instance
    if isinstance(instance, dict) and ScriptedAgent.accepts_input(instance):
        assert REFERENCE.is_valid(instance), instance


@pytest.mark.parametrize("step", VALID_STEPS)
def test_accepts_every_kind_of_step_the_one_of_form_accepts(step: Any) -> None:
    assert REFERENCE.is_valid({"steps": [step]})
    same_verdict({"steps": [step]})


@pytest.mark.parametrize("step", INVALID_STEPS)
def test_refuses_every_step_the_one_of_form_refuses(step: Any) -> None:
    assert not REFERENCE.is_valid({"steps": [step]})
    same_verdict({"steps": [step]})
    same_verdict({"steps": [{"partial": "ok"}, step]})


@settings(max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(STEPS)
def test_any_step_gets_the_same_verdict_as_in_the_one_of_form(step: Any) -> None:
    same_verdict({"steps": [step]})


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(INPUTS)
def test_any_input_gets_the_same_verdict_as_in_the_one_of_form(agent_input: Any) -> None:
    same_verdict(agent_input)


def test_too_many_steps_are_refused_as_before() -> None:
    same_verdict({"steps": [{"partial": "x"}] * MAX_STEPS})
    same_verdict({"steps": [{"partial": "x"}] * (MAX_STEPS + 1)})


@pytest.mark.parametrize(
    ("step", "message"),
    [
        ({"dance": True}, "$.steps[0]: Additional properties are not allowed ('dance' was unexpected)"),
        (
            {"think": "a", "tool": "b"},
            "$.steps[0]: Additional properties are not allowed ('tool' was unexpected)",
        ),
        (
            {"partial": "a", "extra": 1},
            "$.steps[0]: Additional properties are not allowed ('extra' was unexpected)",
        ),
        ({"step": "s"}, "$.steps[0]: 'think' is a dependency of 'step'"),
        ({}, "$.steps[0]: {} should be non-empty"),
        ("x", "$.steps[0]: 'x' is not of type 'object'"),
        ({"think": 1}, "$.steps[0].think: 1 is not of type 'string'"),
        ({"sleep_ms": -1}, "$.steps[0].sleep_ms: -1 is less than the minimum of 0"),
        ({"tool": "calculator", "args": 3}, "$.steps[0].args: 3 is not of type 'object'"),
    ],
)
def test_a_refused_step_is_explained_by_what_is_wrong_with_it(step: Any, message: str) -> None:
    spec = AgentCatalog.discover(entry_points=False).agent("scripted")
    with pytest.raises(InvalidArgument) as raised:
        spec.check_input({"steps": [step]})
    assert raised.value.message == f"input does not match the schema of agent 'scripted': {message}"


PLAIN_SCRIPTS: list[dict[str, Any]] = [
    json.loads(scripted_input(20, 64)),  # what the benchmark sends
    json.loads(scripted_input(20, 64, sleep_ms=100)),
    {"steps": []},
    {"steps": [], "result": "done"},
    {
        "steps": [
            {"think": "plan", "step": "one", "progress": 0.5},
            {"think": "again", "progress": 1},
            {"tool": "calculator", "args": {"expression": "1+1"}},
            {"tool": "clock"},
            {"partial": "p"},
            {"sleep_ms": 0},
            {"sleep_ms": MAX_SLEEP_MS},
            {"fail": "boom", "code": "agent_failed"},
        ],
        "result": "r",
    },
]


@pytest.mark.parametrize("script", PLAIN_SCRIPTS)
def test_plain_valid_scripts_take_the_fast_path(script: dict[str, Any]) -> None:
    assert REFERENCE.is_valid(script)
    assert ScriptedAgent.accepts_input(script)


@pytest.mark.parametrize(
    "script",
    [
        {"steps": [{"sleep_ms": 5.0}]},  # valid, but left to the schema
        {"steps": [{"sleep_ms": True}]},
        {"steps": [{"progress": 0.5, "think": "x"}, {"think": "y", "progress": float("nan")}]},
        {"steps": [{"partial": "x"}] * (MAX_STEPS + 1)},
        {"steps": [{"partial": "x"}], "other": 1},
        {"steps": "nope"},
        {"result": "no steps"},
    ],
)
def test_unusual_scripts_are_left_to_the_schema(script: dict[str, Any]) -> None:
    assert not ScriptedAgent.accepts_input(script)
    same_verdict(script)


def test_check_input_still_explains_a_refused_script() -> None:
    spec = AgentCatalog.discover(entry_points=False).agent("scripted")
    with pytest.raises(InvalidArgument, match="sleep_ms"):
        spec.check_input({"steps": [{"sleep_ms": -1}]})
