"""The catalog: built-ins plus agents and tools from real entry points."""

from __future__ import annotations

import textwrap
import uuid
from pathlib import Path
from typing import Any, ClassVar

import pytest

from execution_service.builtins import BUILTIN_AGENTS, BUILTIN_TOOLS
from execution_service.catalog import AgentCatalog, CatalogError
from execution_service.sdk import Agent, AgentResult, RunContext
from runwire_common.errors import InvalidArgument, NotFound
from tests.execution_service.fakes import Harness

PLUGIN_SOURCE = """
from typing import Any
from execution_service.sdk import Agent, AgentResult, RunContext, ToolCall, tool

@tool(
    name="{prefix}_shout",
    description="Upper-cases a text",
    parameters={{"type": "object", "properties": {{"text": {{"type": "string"}}}}, "required": ["text"]}},
)
async def shout(args: dict[str, Any], call: ToolCall) -> dict[str, Any]:
    return {{"text": args["text"].upper()}}

class ShoutAgent(Agent):
    name = "{prefix}_shouter"
    description = "Shouts its input"
    input_schema = {{"type": "object", "properties": {{"text": {{"type": "string"}}}}, "required": ["text"]}}
    tools = ("{prefix}_shout",)

    async def run(self, ctx: RunContext) -> AgentResult:
        result = await ctx.tools.call("{prefix}_shout", {{"text": ctx.input["text"]}})
        await ctx.emitter.partial(result["text"])
        return AgentResult(final_response=result["text"], result=result)

NOT_AN_AGENT = 42
"""


def install_plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, entry_points: str) -> str:
    """Put a module and its ``*.dist-info`` on ``sys.path``: a real installed distribution."""
    prefix = f"p{uuid.uuid4().hex[:8]}"
    module = f"{prefix}_plugin"
    (tmp_path / f"{module}.py").write_text(PLUGIN_SOURCE.format(prefix=prefix))
    dist_info = tmp_path / f"{module}-1.0.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {module}\nVersion: 1.0\n")
    (dist_info / "entry_points.txt").write_text(
        textwrap.dedent(entry_points).format(module=module, prefix=prefix)
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    return prefix


GOOD_ENTRY_POINTS = """
    [runwire.agents]
    shouter = {module}:ShoutAgent

    [runwire.tools]
    shout = {module}:shout
"""


def test_discovers_agents_and_tools_from_entry_points(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    prefix = install_plugin(tmp_path, monkeypatch, GOOD_ENTRY_POINTS)
    catalog = AgentCatalog.discover()
    names = [agent.name for agent in catalog.agents]
    assert {"assistant", "scripted", f"{prefix}_shouter"} <= set(names)
    assert f"{prefix}_shout" in catalog.tools
    assert catalog.agent(f"{prefix}_shouter").tools == (f"{prefix}_shout",)


async def test_a_plugin_agent_runs_with_its_plugin_tool(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    prefix = install_plugin(tmp_path, monkeypatch, GOOD_ENTRY_POINTS)
    h = Harness(catalog=AgentCatalog.discover())
    run_id = await h.run(f"{prefix}_shouter", {"text": "hi there"})
    assert h.bridge.types(run_id) == [
        "agent_started",
        "tool_executing",
        "tool_completed",
        "partial_result",
        "agent_completed",
    ]
    assert h.bridge.payloads(run_id)[-1]["final_response"] == "HI THERE"


def test_without_entry_points_only_the_builtins_are_listed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    install_plugin(tmp_path, monkeypatch, GOOD_ENTRY_POINTS)
    catalog = AgentCatalog.discover(entry_points=False)
    assert [a.name for a in catalog.agents] == ["assistant", "llm", "scripted"]
    assert set(catalog.tools) == {"calculator", "clock", "text_stats", "echo"}


def test_an_entry_point_that_is_not_an_agent_fails_at_start_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    install_plugin(tmp_path, monkeypatch, "[runwire.agents]\nbad = {module}:NOT_AN_AGENT\n")
    with pytest.raises(CatalogError, match="not an Agent"):
        AgentCatalog.discover()


def test_an_entry_point_that_does_not_import_fails_at_start_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    install_plugin(tmp_path, monkeypatch, "[runwire.tools]\nbad = {module}_missing:thing\n")
    with pytest.raises(CatalogError, match="failed to load"):
        AgentCatalog.discover()


class Impostor(Agent):
    name = "assistant"

    async def run(self, ctx: RunContext) -> AgentResult:
        return AgentResult(final_response="")


class Greedy(Agent):
    name = "greedy"
    tools: ClassVar[tuple[str, ...]] = ("shell",)

    async def run(self, ctx: RunContext) -> AgentResult:
        return AgentResult(final_response="")


class BadSchema(Agent):
    name = "bad-schema"
    input_schema: ClassVar[dict[str, Any]] = {"type": "no-such-type"}

    async def run(self, ctx: RunContext) -> AgentResult:
        return AgentResult(final_response="")


@pytest.mark.parametrize(
    ("agents", "message"),
    [
        ((*BUILTIN_AGENTS, Impostor), "defined twice"),
        ((*BUILTIN_AGENTS, Greedy), "unknown tool"),
        ((*BUILTIN_AGENTS, BadSchema), "invalid JSON Schema"),
        ((BUILTIN_AGENTS[1],), "default agent"),
    ],
)
def test_configuration_mistakes_fail_at_construction(agents: tuple[type[Agent], ...], message: str) -> None:
    with pytest.raises(CatalogError, match=message):
        AgentCatalog(agents, BUILTIN_TOOLS)


def test_the_catalog_is_read_only() -> None:
    catalog = AgentCatalog.discover(entry_points=False)
    with pytest.raises(TypeError):
        catalog.tools["evil"] = catalog.tools["echo"]  # type: ignore[index]
    assert isinstance(catalog.agents, tuple)


def test_looks_agents_up_by_name_with_the_default_for_an_empty_name() -> None:
    catalog = AgentCatalog.discover(entry_points=False)
    assert catalog.agent("").name == "assistant"
    assert catalog.agent("scripted").name == "scripted"
    with pytest.raises(NotFound):
        catalog.agent("nope")


@pytest.mark.parametrize(
    "agent_input",
    [
        {},
        {"steps": "no"},
        {"steps": [{"think": 1}]},
        {"steps": [{"dance": True}]},
        {"steps": [{"sleep_ms": -1}]},
        {"steps": [], "extra": 1},
    ],
)
def test_scripted_input_is_validated_by_its_schema(agent_input: dict[str, Any]) -> None:
    with pytest.raises(InvalidArgument, match="scripted"):
        AgentCatalog.discover(entry_points=False).agent("scripted").check_input(agent_input)
