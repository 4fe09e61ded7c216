"""The agent catalog: every agent and tool this process can run.

Built once per process by the composition root from the built-ins plus the
entry points of the ``runwire.agents`` and ``runwire.tools`` groups, then
passed down. It is immutable after construction; there is no global registry.
Configuration problems (a duplicate name, an entry point that does not load,
an agent naming an unknown tool, an invalid schema) fail at start-up.
"""

from __future__ import annotations

import copy
import importlib.metadata
import inspect
import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from types import MappingProxyType
from typing import Any

from jsonschema.protocols import Validator

from execution_service.schemas import compile_schema, schema_problem, thaw
from execution_service.sdk import Agent
from execution_service.tools import NAME_PATTERN, Tool
from runwire_common.errors import InvalidArgument, NotFound

AGENTS_GROUP = "runwire.agents"
TOOLS_GROUP = "runwire.tools"
DEFAULT_AGENT = "assistant"

# An unknown name is quoted back, but never at length (it may be huge).
MAX_NAME_IN_MESSAGE = 64


class CatalogError(ValueError):
    """The catalog cannot be built from the configured agents and tools."""


@dataclass(frozen=True)
class ToolSpec:
    """A tool with its compiled argument validator."""

    tool: Tool
    validator: Validator
    parameters_json: str


@dataclass(frozen=True)
class AgentSpec:
    """An agent class with its compiled input validator and resolved settings.

    ``factory`` builds the agent when it needs resources of the process (a
    model client); ``unavailable_reason`` is set for an agent that is listed
    but cannot run here, and says what to configure.
    """

    name: str
    description: str
    agent_class: type[Agent]
    validator: Validator
    tools: tuple[str, ...]
    timeout_s: float | None
    factory: Callable[[], Agent] | None = None
    unavailable_reason: str = ""

    def new_agent(self) -> Agent:
        return self.factory() if self.factory is not None else self.agent_class()

    def check_input(self, value: Any) -> None:
        """Raise :class:`InvalidArgument` unless ``value`` matches the input schema."""
        if isinstance(value, Mapping) and self.agent_class.accepts_input(value):
            return
        problem = schema_problem(self.validator, value)
        if problem is not None:
            raise InvalidArgument(f"input does not match the schema of agent {self.name!r}: {problem}")


def _agent_spec(agent_class: Any, *, origin: str) -> AgentSpec:
    if not (inspect.isclass(agent_class) and issubclass(agent_class, Agent)):
        raise CatalogError(f"{origin}: {agent_class!r} is not an Agent subclass")
    if inspect.isabstract(agent_class):
        raise CatalogError(f"{origin}: {agent_class.__name__} is abstract")
    name = getattr(agent_class, "name", "")
    if not isinstance(name, str) or not NAME_PATTERN.match(name):
        raise CatalogError(f"{origin}: agent name {name!r} must match {NAME_PATTERN.pattern}")
    timeout_s = agent_class.timeout_s
    if timeout_s is not None and timeout_s <= 0:
        raise CatalogError(f"{origin}: agent {name!r} timeout_s must be positive")
    try:
        validator = compile_schema(agent_class.input_schema, owner=f"agent {name!r}")
    except ValueError as exc:
        raise CatalogError(f"{origin}: {exc}") from exc
    return AgentSpec(
        name=name,
        description=agent_class.description,
        agent_class=agent_class,
        validator=validator,
        tools=tuple(agent_class.tools),
        timeout_s=timeout_s,
    )


def _tool_spec(value: Any, *, origin: str) -> ToolSpec:
    if not isinstance(value, Tool):
        raise CatalogError(f"{origin}: {value!r} is not a Tool")
    try:
        validator = compile_schema(value.parameters, owner=f"tool {value.name!r}")
    except ValueError as exc:
        raise CatalogError(f"{origin}: {exc}") from exc
    return ToolSpec(tool=value, validator=validator, parameters_json=json.dumps(thaw(value.parameters)))


def _load_entry_points(group: str) -> list[tuple[str, Any]]:
    loaded: list[tuple[str, Any]] = []
    seen: set[tuple[str, str]] = set()
    for entry_point in importlib.metadata.entry_points(group=group):
        key = (entry_point.name, entry_point.value)
        if key in seen:  # the same distribution reachable twice on sys.path
            continue
        seen.add(key)
        origin = f"entry point {entry_point.name} = {entry_point.value} ({group})"
        try:
            loaded.append((origin, entry_point.load()))
        except Exception as exc:
            raise CatalogError(f"{origin} failed to load: {exc!r}") from exc
    return loaded


class AgentCatalog:
    """Immutable name → agent and name → tool maps."""

    def __init__(
        self,
        agents: Iterable[type[Agent]] = (),
        tools: Iterable[Tool] = (),
        *,
        default_agent: str = DEFAULT_AGENT,
    ) -> None:
        tool_specs: dict[str, ToolSpec] = {}
        for item in tools:
            spec = _tool_spec(item, origin="tools")
            if spec.tool.name in tool_specs:
                raise CatalogError(f"tool {spec.tool.name!r} is defined twice")
            tool_specs[spec.tool.name] = spec
        agent_specs: dict[str, AgentSpec] = {}
        for agent_class in agents:
            agent = _agent_spec(agent_class, origin="agents")
            if agent.name in agent_specs:
                raise CatalogError(f"agent {agent.name!r} is defined twice")
            unknown = [name for name in agent.tools if name not in tool_specs]
            if unknown:
                raise CatalogError(f"agent {agent.name!r} uses unknown tool(s): {', '.join(unknown)}")
            agent_specs[agent.name] = agent
        if agent_specs and default_agent not in agent_specs:
            raise CatalogError(f"default agent {default_agent!r} is not in the catalog")
        self._agents: Mapping[str, AgentSpec] = MappingProxyType(agent_specs)
        self._tools: Mapping[str, ToolSpec] = MappingProxyType(tool_specs)
        self._default_agent = default_agent

    @classmethod
    def discover(
        cls,
        *,
        builtins: bool = True,
        entry_points: bool = True,
        default_agent: str = DEFAULT_AGENT,
    ) -> AgentCatalog:
        """The built-ins plus everything registered under the ``runwire.*`` entry-point groups."""
        agents: list[type[Agent]] = []
        tools: list[Tool] = []
        if builtins:
            from execution_service.builtins import BUILTIN_AGENTS, BUILTIN_TOOLS

            agents.extend(BUILTIN_AGENTS)
            tools.extend(BUILTIN_TOOLS)
        if entry_points:
            for origin, value in _load_entry_points(AGENTS_GROUP):
                agents.append(_agent_spec(value, origin=origin).agent_class)
            for origin, value in _load_entry_points(TOOLS_GROUP):
                tools.append(_tool_spec(value, origin=origin).tool)
        return cls(agents, tools, default_agent=default_agent)

    @property
    def default_agent(self) -> str:
        return self._default_agent

    @property
    def agents(self) -> tuple[AgentSpec, ...]:
        return tuple(self._agents[name] for name in sorted(self._agents))

    @property
    def tools(self) -> Mapping[str, ToolSpec]:
        return self._tools

    def agent(self, name: str) -> AgentSpec:
        """The agent called ``name`` (the default agent for ``""``), or :class:`NotFound`."""
        spec = self._agents.get(name or self._default_agent)
        if spec is None:
            shown = name if len(name) <= MAX_NAME_IN_MESSAGE else name[:MAX_NAME_IN_MESSAGE] + "…"
            raise NotFound(f"agent {shown!r} not found")
        return spec

    def configured(
        self, name: str, *, factory: Callable[[], Agent] | None = None, unavailable_reason: str = ""
    ) -> AgentCatalog:
        """A copy in which agent ``name`` is built by ``factory``, or is listed but unavailable."""
        spec = replace(self.agent(name), factory=factory, unavailable_reason=unavailable_reason)
        other = copy.copy(self)
        other._agents = MappingProxyType({**self._agents, spec.name: spec})
        return other

    def tools_of(self, agent: AgentSpec) -> Mapping[str, ToolSpec]:
        """The tools ``agent`` may call."""
        return MappingProxyType({name: self._tools[name] for name in agent.tools})
