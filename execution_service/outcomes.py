"""How a run ends: the outcome, and the one terminal event that announces it.

Terminal-event ownership: whoever wins the registry's terminal transition
announces the end, exactly once. An outcome that is ``external`` ended
elsewhere (cancelled through another replica, interrupted by a newer run,
declared dead); the engine stops and announces nothing.

:func:`terminal_event` is the one builder of terminal events: the engine's end
of a run (through :meth:`RunEmitter.emit_terminal
<execution_service.emitter.RunEmitter.emit_terminal>`, the only way an
emitter takes a terminal event) and the announcer's ends of runs it does not
execute (cancel from another replica, interrupt, refused start) all describe
the end as an :class:`Outcome` and call it, and the payload is encoded by the
one payload encoder, so the same end always reads the same.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass
from typing import Any, TypeAlias

from execution_service.redaction import redact, redact_text
from execution_service.sdk import AgentFailure, AgentResult, RunCancelled
from runwire.common.v1 import run_pb2
from runwire_common import names
from runwire_common.deaths import death_payload

State: TypeAlias = run_pb2.RunState.ValueType

EXECUTOR_LOST = "executor_lost"
EXECUTOR_LOST_MESSAGE = "The service running this agent shut down before the run could finish."


@dataclass(frozen=True, slots=True)
class TerminalEvent:
    """A run's terminal event, encoded once: published by its emitter (or announcer) and kept by
    the registry with the terminal transition, which delivers it if that publication never arrives."""

    type: str
    payload_json: str


@dataclass(frozen=True)
class Outcome:
    """How a run ended, before it is recorded and announced."""

    state: State
    error_code: str = ""
    error_message: str = ""
    result: Any = None
    final_response: str = ""
    external: bool = False  # ended elsewhere: recorded and announced by whoever ended it
    # What a completed run adds to its thread (stored with the terminal transition).
    messages: tuple[run_pb2.ThreadMessage, ...] = ()

    @classmethod
    def from_run(cls, run: run_pb2.Run) -> Outcome:
        return cls(
            state=run.state,
            error_code=run.error.code,
            error_message=run.error.message,
            external=True,
        )

    @classmethod
    def cancelled(cls, reason: str) -> Outcome:
        return cls(
            state=run_pb2.RUN_STATE_CANCELLED, error_code="cancelled", error_message=reason or "cancelled"
        )

    def run_error(self) -> run_pb2.RunError | None:
        """The error to record with the terminal transition (``None`` for a completed run)."""
        if self.state == run_pb2.RUN_STATE_COMPLETED:
            return None
        return run_pb2.RunError(code=self.error_code, message=self.error_message)

    @classmethod
    def executor_lost(cls) -> Outcome:
        return cls(
            state=run_pb2.RUN_STATE_DEAD, error_code=EXECUTOR_LOST, error_message=EXECUTOR_LOST_MESSAGE
        )

    @classmethod
    def timed_out(cls, timeout_s: float) -> Outcome:
        return cls(
            state=run_pb2.RUN_STATE_TIMEOUT,
            error_code="timeout",
            error_message=f"the run exceeded its execution timeout of {timeout_s:g} s",
        )

    def matches(self, run: run_pb2.Run) -> bool:
        """Whether ``run`` holds exactly this end (a retried transition that had succeeded)."""
        if run.state != self.state:
            return False
        if self.state == run_pb2.RUN_STATE_COMPLETED:
            return run.result_json == json.dumps(self.result)
        return (run.error.code, run.error.message) == (self.error_code, self.error_message)


def failure(code: str, message: str) -> Outcome:
    return Outcome(state=run_pb2.RUN_STATE_FAILED, error_code=code, error_message=message)


def outcome_of_agent(task: asyncio.Task[AgentResult], log: logging.LoggerAdapter) -> Outcome:  # type: ignore[type-arg]
    """The outcome of a finished agent task that was not stopped."""
    if task.cancelled():
        return Outcome.cancelled("cancelled")
    exc = task.exception()
    if isinstance(exc, RunCancelled):
        return Outcome.cancelled(redact_text(str(exc)) or "cancelled")
    if isinstance(exc, AgentFailure):
        return failure(exc.code, redact_text(exc.message))
    if exc is not None:
        log.error("agent raised", exc_info=exc)
        return failure("internal_error", "the agent failed unexpectedly")
    result: object = task.result()
    if not isinstance(result, AgentResult) or not isinstance(result.final_response, str):
        return failure("invalid_result", "the agent returned an invalid result")
    try:
        json.dumps(result.result, allow_nan=False)
    except (TypeError, ValueError):
        return failure("invalid_result", "the agent returned a result that is not JSON")
    return Outcome(
        state=run_pb2.RUN_STATE_COMPLETED,
        result=redact(result.result),
        final_response=redact_text(result.final_response),
    )


def terminal_event(final: Outcome, *, duration_ms: int = 0) -> tuple[str, dict[str, Any]]:
    """The terminal event type and payload for a run that ended as ``final``.

    The one builder of terminal events (see the module docstring);
    ``duration_ms`` is reported by ``agent_completed`` only.
    """
    if final.state == run_pb2.RUN_STATE_COMPLETED:
        return names.AGENT_COMPLETED, {
            "status": "completed",
            "result": final.result,
            "final_response": final.final_response,
            "duration_ms": duration_ms,
        }
    if final.state == run_pb2.RUN_STATE_CANCELLED:
        return names.AGENT_CANCELLED, {"reason": final.error_message or "cancelled"}
    if final.state == run_pb2.RUN_STATE_DEAD:
        return names.AGENT_DEATH, death_payload(
            cause=final.error_code or "no_heartbeat",
            message=final.error_message or "the run stopped responding",
        )
    status = "timeout" if final.state == run_pb2.RUN_STATE_TIMEOUT else "failed"
    return names.AGENT_ERROR, {
        "status": status,
        "error_code": final.error_code or status,
        "error_message": final.error_message or f"the run {status}",
    }
