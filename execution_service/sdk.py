"""The agent SDK: how to write an agent (and its tools) for Runwire.

An agent is a subclass of :class:`Agent` with a unique ``name``, a
``description``, a JSON Schema for its input, the names of the tools it may
call and, optionally, its own execution timeout. Runwire makes one instance
per run and awaits :meth:`Agent.run` with a request-scoped :class:`RunContext`;
the agent returns an :class:`AgentResult`. Nothing else is shared with it: no
globals, no service objects.

Agents and tools from other packages are discovered through entry points::

    # pyproject.toml of your package
    [project.entry-points."runwire.agents"]
    weather = "my_pkg.agents:WeatherAgent"        # an Agent subclass

    [project.entry-points."runwire.tools"]
    weather = "my_pkg.tools:weather"              # a Tool value

Example::

    class WeatherAgent(Agent):
        name = "weather"
        description = "Tells the weather"
        input_schema = {"type": "object", "properties": {"city": {"type": "string"}}}
        tools = ("weather",)

        async def run(self, ctx: RunContext) -> AgentResult:
            await ctx.emitter.thinking("looking up the forecast", progress=0.5)
            try:
                report = await ctx.tools.call("weather", {"city": ctx.input.get("city", "Paris")})
            except ToolError as exc:
                return AgentResult(final_response=f"No forecast: {exc.message}")
            await ctx.emitter.partial(f"It is {report['forecast']}.")
            return AgentResult(final_response=f"It is {report['forecast']}.", result=report)

Asking the user: ``answer = await ctx.ask("Which city?")`` emits
``input_required``, moves the run to ``waiting`` and returns the owner's
answer (``{"text": ...}``, or an object matching ``schema=`` when given). Time
spent waiting does not count against the execution timeout; an answer that
does not come within the input timeout ends the run in ``timeout``. A tool
declared with ``requires_approval=True`` (or called with
``ctx.tools.call(..., require_approval=True)``) asks the owner first and
raises :class:`ToolDenied` when refused.

Memory: ``await ctx.history()`` returns the messages earlier runs of this
thread added (oldest first). When a run completes, the messages it adds to
its thread are ``AgentResult.messages`` if the agent set them, otherwise the
user's input and the final response.

Ending a run: return an :class:`AgentResult` (``agent_completed``), raise
:class:`AgentFailure` (``agent_error`` with your code and user-safe message),
or let :class:`RunCancelled` propagate when the run is cancelled. Any other
exception ends the run with ``agent_error`` / ``internal_error`` and is logged,
never shown to the user.
"""

from __future__ import annotations

import abc
import asyncio
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, ClassVar, NoReturn, Protocol

from execution_service.tools import Tool, ToolCall, ToolDenied, ToolError, ToolTimeout, tool
from runwire.common.v1 import context_pb2

__all__ = (
    "Agent",
    "AgentFailure",
    "AgentResult",
    "Cancellation",
    "EventEmitter",
    "InputPort",
    "Message",
    "RunCancelled",
    "RunContext",
    "ThreadMemory",
    "Tool",
    "ToolCall",
    "ToolCaller",
    "ToolDenied",
    "ToolError",
    "ToolTimeout",
    "tool",
)

ANY_OBJECT_SCHEMA: Mapping[str, Any] = MappingProxyType({"type": "object"})


class RunCancelled(Exception):
    """The run was cancelled; raised by :class:`RunContext` helpers and tool calls.

    Agents should let it propagate (clean up in ``finally`` if needed).
    """


class AgentFailure(Exception):
    """End the run with ``agent_error``; ``message`` is shown to the user."""

    def __init__(self, message: str, *, code: str = "agent_failed") -> None:
        super().__init__(message)
        self.message = message
        self.code = code


@dataclass(frozen=True)
class Message:
    """One message of a thread's conversation, shaped like a chat-completions message.

    ``role`` is ``"user"``, ``"assistant"`` or ``"tool"``. An assistant message
    that calls tools has ``tool_calls`` (``{"id", "type": "function",
    "function": {"name", "arguments"}}`` objects); a tool message answers
    ``tool_call_id`` of tool ``name`` with ``content`` (the result as JSON).
    """

    role: str
    content: str = ""
    tool_calls: tuple[Mapping[str, Any], ...] = ()
    tool_call_id: str = ""
    name: str = ""
    run_id: str = ""  # the run that added it (set by Runwire when stored)


@dataclass(frozen=True)
class AgentResult:
    """What a finished agent answers: the text shown to the user and a JSON result.

    ``messages``: what this run adds to its thread's conversation (``None``:
    the user's input and ``final_response``).
    """

    final_response: str
    result: Any = None
    messages: tuple[Message, ...] | None = None


class Cancellation:
    """The cancellation signal of one run. Agents read it; the engine sets it."""

    def __init__(self) -> None:
        self._event = asyncio.Event()
        self._reason = ""

    @property
    def requested(self) -> bool:
        return self._event.is_set()

    @property
    def reason(self) -> str:
        return self._reason

    async def wait(self) -> None:
        await self._event.wait()

    def request(self, reason: str) -> bool:
        """Set the signal; ``False`` when it was set already (the first reason wins)."""
        if self._event.is_set():
            return False
        self._reason = reason
        self._event.set()
        return True


class EventEmitter(Protocol):
    """Publishes events of one run, in order. Lifecycle and tool events are Runwire's."""

    async def thinking(
        self, reasoning: str, *, step: str | None = None, progress: float | None = None
    ) -> None:
        """An ``agent_thinking`` event; ``progress`` is between 0 and 1."""

    async def partial(self, content: str) -> None:
        """A ``partial_result`` event carrying a text delta; the index counts up from 0."""

    async def emit(self, event_type: str, payload: Mapping[str, Any]) -> None:
        """Any non-reserved event type with a JSON-object payload."""


class ToolCaller(Protocol):
    """Calls tools on behalf of one run (see ``execution_service.dispatcher``)."""

    async def call(
        self, name: str, args: Mapping[str, Any] | None = None, *, require_approval: bool = False
    ) -> Any:
        """Run tool ``name``; return its result or raise :class:`ToolError`.

        With ``require_approval`` (or a tool declared ``requires_approval``) the
        owner is asked first; a refusal raises :class:`ToolDenied`.
        """

    async def reject(self, name: str, parameters: Mapping[str, Any], reason: str) -> NoReturn:
        """Report a call that will not be made as a failed pair of tool events; raises :class:`ToolError`.

        For calls an agent was asked to make but cannot (a model's arguments
        that are not JSON, a tool not offered in this run): the user sees them
        fail like any other call.
        """


class InputPort(Protocol):
    """Asks the run's owner and waits for the answer (see ``RunContext.ask``)."""

    async def ask(self, prompt: str, *, schema: Mapping[str, Any] | None = None) -> Any:
        """Emit ``input_required`` (kind ``input``), wait in ``waiting``, return the answer."""


class ThreadMemory(Protocol):
    """The thread's conversation before this run."""

    async def history(self) -> tuple[Message, ...]:
        """Earlier messages of the run's thread, oldest first (loaded once, on first use)."""


class NoInput:
    """An :class:`InputPort` for contexts that cannot ask anyone (tests, tools run alone)."""

    async def ask(self, prompt: str, *, schema: Mapping[str, Any] | None = None) -> Any:
        raise AgentFailure("this run cannot ask its user for input", code="input_unavailable")


class NoMemory:
    """A :class:`ThreadMemory` of a thread without history."""

    async def history(self) -> tuple[Message, ...]:
        return ()


@dataclass(frozen=True)
class RunContext:
    """Everything an agent gets for one run, and nothing more.

    ``deadline`` is in the event loop's clock (``asyncio.get_running_loop().time()``),
    as set when the agent started; time spent waiting for the user moves the
    run's real deadline later.
    """

    user: context_pb2.UserContext
    run_id: str
    thread_id: str
    input: Mapping[str, Any]
    emitter: EventEmitter
    tools: ToolCaller
    cancellation: Cancellation
    deadline: float
    inputs: InputPort = field(default_factory=lambda: NoInput())
    memory: ThreadMemory = field(default_factory=lambda: NoMemory())

    async def ask(self, prompt: str, *, schema: Mapping[str, Any] | None = None) -> Any:
        """Ask the run's owner and wait for the answer: ``{"text": ...}`` without ``schema``.

        Raises :class:`RunCancelled` if the run is cancelled while waiting.
        """
        return await self.inputs.ask(prompt, schema=schema)

    async def history(self) -> tuple[Message, ...]:
        """The messages earlier runs of this thread added, oldest first."""
        return await self.memory.history()

    def time_left(self) -> float:
        """Seconds until the run's execution timeout (never negative)."""
        return max(0.0, self.deadline - asyncio.get_running_loop().time())

    def raise_if_cancelled(self) -> None:
        if self.cancellation.requested:
            raise RunCancelled(self.cancellation.reason)

    async def sleep(self, seconds: float) -> None:
        """Sleep, waking up early (with :class:`RunCancelled`) if the run is cancelled."""
        self.raise_if_cancelled()
        try:
            await asyncio.wait_for(self.cancellation.wait(), timeout=max(0.0, seconds))
        except TimeoutError:
            return
        raise RunCancelled(self.cancellation.reason)


class Agent(abc.ABC):
    """Base class of every agent. One instance serves exactly one run."""

    name: ClassVar[str]
    description: ClassVar[str] = ""
    input_schema: ClassVar[Mapping[str, Any]] = ANY_OBJECT_SCHEMA
    tools: ClassVar[tuple[str, ...]] = ()
    timeout_s: ClassVar[float | None] = None

    @classmethod
    def accepts_input(cls, value: Mapping[str, Any]) -> bool:
        """An optional fast path of input validation, for agents whose schema is costly to check.

        Return ``True`` only for inputs ``input_schema`` certainly accepts;
        ``False`` means "not sure", and the input is then checked against the
        schema (which also explains what is wrong). The default is never sure.
        """
        return False

    @abc.abstractmethod
    async def run(self, ctx: RunContext) -> AgentResult:
        """Do the work of one run and return its result."""
