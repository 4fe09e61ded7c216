"""How a run ends: the outcome, and the one terminal event that announces it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TypeAlias

from runwire.common.v1 import run_pb2
from runwire_common import names

State: TypeAlias = run_pb2.RunState.ValueType


@dataclass(frozen=True)
class Outcome:
    """How a run ended, before it is recorded and announced."""

    state: State
    error_code: str = ""
    error_message: str = ""
    result: Any = None
    final_response: str = ""
    recorded: bool = False  # the registry already holds this terminal state

    @classmethod
    def from_run(cls, run: run_pb2.Run) -> Outcome:
        return cls(
            state=run.state,
            error_code=run.error.code,
            error_message=run.error.message,
            recorded=True,
        )


def terminal_event(final: Outcome, *, duration_ms: int) -> tuple[str, dict[str, Any]]:
    """The terminal event type and payload for a run that ended as ``final``."""
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
        return names.AGENT_DEATH, {
            "status": "dead",
            "death_cause": final.error_code or "no_heartbeat",
            "message": final.error_message or "the run stopped responding",
            "recovery_action": "start the run again",
        }
    status = "timeout" if final.state == run_pb2.RUN_STATE_TIMEOUT else "failed"
    return names.AGENT_ERROR, {
        "status": status,
        "error_code": final.error_code or status,
        "error_message": final.error_message or f"the run {status}",
    }
