"""Tool definitions: what a tool declares and the errors a tool call raises.

A tool is a :class:`Tool` value: a name, a description, a JSON Schema for its
arguments and an async handler. Handlers receive the validated arguments and a
:class:`ToolCall` describing the call (the caller's identity, run and call ids).
They return any JSON-serialisable value, or raise :class:`ToolError` with a
message that is safe to show to the user. Any other exception is reported to
the user as a generic failure and logged.

The :func:`tool` decorator turns an async function into a :class:`Tool`::

    @tool(
        name="weather",
        description="Today's weather for a city",
        parameters={"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    )
    async def weather(args: dict[str, Any], call: ToolCall) -> dict[str, Any]:
        return {"city": args["city"], "forecast": "sunny"}
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from runwire.common.v1 import context_pb2

NAME_PATTERN = re.compile(r"^[a-z][a-z0-9_.-]{0,63}$")

ToolHandler = Callable[[dict[str, Any], "ToolCall"], Awaitable[Any]]


class ToolError(Exception):
    """A tool call failed; ``message`` is safe to show to the user.

    Raised by handlers to report a failure, and raised by
    ``RunContext.tools.call`` to the agent for every failed call (the
    ``tool_completed`` event has already been emitted by then). ``status`` is
    ``"error"`` or ``"timeout"``, as in the event.
    """

    status = "error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ToolTimeout(ToolError):
    """The tool did not finish within its timeout."""

    status = "timeout"


class ToolDenied(ToolError):
    """The run's owner refused the call when asked to approve it."""

    status = "denied"


@dataclass(frozen=True)
class ToolCall:
    """What a handler knows about the call it serves. Request-scoped."""

    user: context_pb2.UserContext
    run_id: str
    thread_id: str
    call_id: str
    tool_name: str


@dataclass(frozen=True)
class Tool:
    """A tool an agent can call through its run's dispatcher.

    ``parameters`` is the JSON Schema the arguments must match (an object
    schema). ``timeout_s`` overrides the service's default tool timeout;
    ``required_roles`` lists roles the user must all hold (``UserContext.roles``).
    ``requires_approval``: every call first asks the run's owner (an
    ``input_required`` event of kind ``approval``) and runs only if approved.
    """

    name: str
    description: str
    parameters: Mapping[str, Any]
    handler: ToolHandler
    timeout_s: float | None = None
    required_roles: frozenset[str] = field(default_factory=frozenset)
    requires_approval: bool = False

    def __post_init__(self) -> None:
        if not NAME_PATTERN.match(self.name):
            raise ValueError(f"tool name {self.name!r} must match {NAME_PATTERN.pattern}")
        if self.timeout_s is not None and self.timeout_s <= 0:
            raise ValueError(f"tool {self.name!r}: timeout_s must be positive")


def tool(
    *,
    name: str,
    description: str,
    parameters: Mapping[str, Any],
    timeout_s: float | None = None,
    required_roles: Iterable[str] = (),
    requires_approval: bool = False,
) -> Callable[[ToolHandler], Tool]:
    """Decorate an async ``handler(args, call)`` to make it a :class:`Tool`."""

    def wrap(handler: ToolHandler) -> Tool:
        return Tool(
            name=name,
            description=description,
            parameters=parameters,
            handler=handler,
            timeout_s=timeout_s,
            required_roles=frozenset(required_roles),
            requires_approval=requires_approval,
        )

    return wrap
