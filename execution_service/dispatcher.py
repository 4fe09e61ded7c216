"""The tool dispatcher of one run (implements ``sdk.ToolCaller``).

Every call emits ``tool_executing`` and then exactly one ``tool_completed``
with the same ``call_id``, whatever happens: unknown or forbidden tool, invalid
arguments, handler error, timeout, cancellation, a refused approval
(``denied``). Parameters, results and error messages are redacted in the
events; the agent gets the real result.

A call that needs approval (a tool declared ``requires_approval``, or a call
made with ``require_approval=True``) asks the run's owner after
``tool_executing`` and after the arguments were checked, so the owner is only
asked about calls that could run; the tool's timeout starts once approved.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Mapping
from typing import Any, NoReturn, Protocol

from execution_service.catalog import ToolSpec
from execution_service.emitter import RunEmitter
from execution_service.redaction import redact, redact_text
from execution_service.schemas import schema_problem
from execution_service.sdk import Cancellation, RunCancelled
from execution_service.tools import ToolCall, ToolDenied, ToolError, ToolTimeout
from runwire.common.v1 import context_pb2
from runwire_common import names
from runwire_common.ids import new_id

CANCELLED_MESSAGE = "cancelled"
DENIED_MESSAGE = "the user did not approve this call"


class Approver(Protocol):
    """Asks the run's owner to approve a tool call (``execution_service.waiting.InputWaiter``)."""

    async def approve(
        self, *, tool_name: str, call_id: str, parameters: Mapping[str, Any]
    ) -> tuple[bool, str]: ...


async def _invoke(spec: ToolSpec, arguments: dict[str, Any], call: ToolCall) -> Any:
    return await spec.tool.handler(arguments, call)


class ToolDispatcher:
    """Calls the tools an agent may use, for one run and one user."""

    def __init__(
        self,
        *,
        user: context_pb2.UserContext,
        run_id: str,
        thread_id: str,
        tools: Mapping[str, ToolSpec],
        emitter: RunEmitter,
        cancellation: Cancellation,
        default_timeout_s: float,
        log: logging.LoggerAdapter,  # type: ignore[type-arg]
        approver: Approver | None = None,
    ) -> None:
        self._user = user
        self._roles = frozenset(user.roles)
        self._run_id = run_id
        self._thread_id = thread_id
        self._tools = tools
        self._emitter = emitter
        self._cancellation = cancellation
        self._default_timeout_s = default_timeout_s
        self._log = log
        self._approver = approver

    async def call(
        self, name: str, args: Mapping[str, Any] | None = None, *, require_approval: bool = False
    ) -> Any:
        """Run tool ``name`` with ``args``; its result, or :class:`ToolError`.

        With ``require_approval`` (or a tool declared so) the owner is asked
        first; a refusal raises :class:`ToolDenied`.

        Raises :class:`RunCancelled` when the run is cancelled before or during the call.
        """
        if self._cancellation.requested:
            raise RunCancelled(self._cancellation.reason)
        arguments: dict[str, Any] = dict(args or {})
        call_id = new_id("call")
        await self._emitter.emit_reserved(
            names.TOOL_EXECUTING,
            {"tool_name": name, "parameters": redact(arguments), "call_id": call_id},
        )
        started = time.monotonic()
        try:
            result = await self._run(name, arguments, call_id, require_approval=require_approval)
        except ToolError as exc:
            await self._completed(name, call_id, started, status=exc.status, error=exc.message)
            raise
        except RunCancelled:
            await self._completed(name, call_id, started, status="error", error=CANCELLED_MESSAGE)
            raise
        except asyncio.CancelledError:
            # Hard cancel (timeout or shutdown): still pair the event, then propagate.
            await asyncio.shield(
                self._completed(name, call_id, started, status="error", error=CANCELLED_MESSAGE)
            )
            raise
        await self._completed(name, call_id, started, status="success", result=result)
        return result

    async def reject(self, name: str, parameters: Mapping[str, Any], reason: str) -> NoReturn:
        """Report a call the agent will not make (say, a model's unreadable arguments) as a failed pair.

        Emits ``tool_executing`` and ``tool_completed`` (``status: error``,
        ``error`` = ``reason``) without running anything, then raises
        :class:`ToolError` with ``reason``, as a failed call would.
        """
        if self._cancellation.requested:
            raise RunCancelled(self._cancellation.reason)
        call_id = new_id("call")
        await self._emitter.emit_reserved(
            names.TOOL_EXECUTING,
            {"tool_name": name, "parameters": redact(dict(parameters)), "call_id": call_id},
        )
        await self._completed(name, call_id, time.monotonic(), status="error", error=reason)
        raise ToolError(reason)

    async def _run(
        self, name: str, arguments: dict[str, Any], call_id: str, *, require_approval: bool
    ) -> Any:
        spec = self._tools.get(name)
        if spec is None:
            raise ToolError(f"tool {name!r} is not available to this agent")
        missing = sorted(spec.tool.required_roles - self._roles)
        if missing:
            raise ToolError(f"permission denied: tool {name!r} requires the role(s) {', '.join(missing)}")
        problem = schema_problem(spec.validator, arguments)
        if problem is not None:
            raise ToolError(f"invalid arguments for {name!r}: {problem}")
        if require_approval or spec.tool.requires_approval:
            await self._approval(name, call_id, arguments)
        call = ToolCall(
            user=self._user, run_id=self._run_id, thread_id=self._thread_id, call_id=call_id, tool_name=name
        )
        timeout_s = spec.tool.timeout_s or self._default_timeout_s
        handler: asyncio.Task[Any] = asyncio.create_task(
            _invoke(spec, arguments, call), name=f"tool:{name}:{call_id}"
        )
        stop = asyncio.create_task(self._cancellation.wait())
        try:
            done, _ = await asyncio.wait(
                (handler, stop), timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            stop.cancel()
            await asyncio.wait((stop,))
            if not handler.done():
                handler.cancel()
                await asyncio.wait((handler,), timeout=1.0)
        if handler not in done:
            if stop in done:
                raise RunCancelled(self._cancellation.reason)
            raise ToolTimeout(f"tool {name!r} did not finish within {timeout_s:g} s")
        exc = handler.exception()
        if exc is None:
            result = handler.result()
            try:
                json.dumps(result, allow_nan=False)
            except (TypeError, ValueError):
                self._log.error("tool returned a non-JSON result", extra={"tool": name})
                raise ToolError(f"tool {name!r} returned an invalid result") from None
            return result
        if isinstance(exc, ToolError):
            raise ToolError(exc.message)
        self._log.error("tool failed", extra={"tool": name, "call_id": call_id}, exc_info=exc)
        raise ToolError(f"tool {name!r} failed unexpectedly")

    async def _approval(self, name: str, call_id: str, arguments: Mapping[str, Any]) -> None:
        if self._approver is None:
            raise ToolError(f"tool {name!r} needs the user's approval, which this run cannot ask for")
        approved, reason = await self._approver.approve(tool_name=name, call_id=call_id, parameters=arguments)
        if not approved:
            raise ToolDenied(f"{DENIED_MESSAGE}: {reason}" if reason else DENIED_MESSAGE)

    async def _completed(
        self,
        name: str,
        call_id: str,
        started: float,
        *,
        status: str,
        result: Any = None,
        error: str | None = None,
    ) -> None:
        payload: dict[str, Any] = {"tool_name": name, "call_id": call_id, "status": status}
        if error is None:
            payload["result"] = redact(result)
        else:
            payload["error"] = redact_text(error)
        payload["duration_ms"] = int((time.monotonic() - started) * 1000)
        await self._emitter.emit_reserved(names.TOOL_COMPLETED, payload)
