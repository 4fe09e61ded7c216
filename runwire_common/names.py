"""Run state and event type names, shared by every service and the gateway."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from runwire.common.v1 import run_pb2

AGENT_STARTED = "agent_started"
AGENT_THINKING = "agent_thinking"
TOOL_EXECUTING = "tool_executing"
TOOL_COMPLETED = "tool_completed"
INPUT_REQUIRED = "input_required"
PARTIAL_RESULT = "partial_result"
AGENT_COMPLETED = "agent_completed"
AGENT_ERROR = "agent_error"
AGENT_CANCELLED = "agent_cancelled"
AGENT_DEATH = "agent_death"

EVENT_TYPES = frozenset(
    {
        AGENT_STARTED,
        AGENT_THINKING,
        TOOL_EXECUTING,
        TOOL_COMPLETED,
        INPUT_REQUIRED,
        PARTIAL_RESULT,
        AGENT_COMPLETED,
        AGENT_ERROR,
        AGENT_CANCELLED,
        AGENT_DEATH,
    }
)
TERMINAL_EVENT_TYPES = frozenset({AGENT_COMPLETED, AGENT_ERROR, AGENT_CANCELLED, AGENT_DEATH})

RunState = run_pb2.RunState
# The one definition of which run states are live and which are terminal; the registry
# stores states by name (LIVE_STATE_NAMES / TERMINAL_STATE_NAMES), everyone else by value.
LIVE_STATES = frozenset(
    {
        run_pb2.RUN_STATE_PENDING,
        run_pb2.RUN_STATE_STARTING,
        run_pb2.RUN_STATE_RUNNING,
        run_pb2.RUN_STATE_COMPLETING,
        run_pb2.RUN_STATE_WAITING,
    }
)
TERMINAL_STATES = frozenset(
    {
        run_pb2.RUN_STATE_COMPLETED,
        run_pb2.RUN_STATE_FAILED,
        run_pb2.RUN_STATE_TIMEOUT,
        run_pb2.RUN_STATE_CANCELLED,
        run_pb2.RUN_STATE_DEAD,
    }
)

STATE_NAMES: Mapping[int, str] = MappingProxyType(
    {
        value: name.removeprefix("RUN_STATE_").lower()
        for name, value in run_pb2.RunState.items()
        if value != run_pb2.RUN_STATE_UNSPECIFIED
    }
)
STATES_BY_NAME: Mapping[str, int] = MappingProxyType({name: value for value, name in STATE_NAMES.items()})
# By name, in the contract's order (pending … completing, completed … dead).
LIVE_STATE_NAMES: tuple[str, ...] = tuple(STATE_NAMES[s] for s in sorted(LIVE_STATES))
TERMINAL_STATE_NAMES: tuple[str, ...] = tuple(STATE_NAMES[s] for s in sorted(TERMINAL_STATES))

# The one map of multitask strategies: the name a client or a record uses → the contract's
# value. MULTITASK_STRATEGY_UNSPECIFIED means "reject" (see STRATEGY_NAMES).
MULTITASK_STRATEGIES: Mapping[str, run_pb2.MultitaskStrategy.ValueType] = MappingProxyType(
    {
        "reject": run_pb2.MULTITASK_STRATEGY_REJECT,
        "enqueue": run_pb2.MULTITASK_STRATEGY_ENQUEUE,
        "interrupt": run_pb2.MULTITASK_STRATEGY_INTERRUPT,
    }
)
STRATEGY_NAMES: Mapping[int, str] = MappingProxyType(
    {int(run_pb2.MULTITASK_STRATEGY_UNSPECIFIED): "reject"}
    | {int(value): name for name, value in MULTITASK_STRATEGIES.items()}
)


# Input kinds and message roles by name, the one map for every service and the gateway:
# INPUT_KIND_APPROVAL → "approval", MESSAGE_ROLE_TOOL → "tool" (unspecified has no name).
INPUT_KIND_NAMES: Mapping[int, str] = MappingProxyType(
    {value: name.removeprefix("INPUT_KIND_").lower() for name, value in run_pb2.InputKind.items() if value}
)
INPUT_KINDS_BY_NAME: Mapping[str, int] = MappingProxyType(
    {name: value for value, name in INPUT_KIND_NAMES.items()}
)
MESSAGE_ROLE_NAMES: Mapping[int, str] = MappingProxyType(
    {
        value: name.removeprefix("MESSAGE_ROLE_").lower()
        for name, value in run_pb2.MessageRole.items()
        if value
    }
)
MESSAGE_ROLES_BY_NAME: Mapping[str, int] = MappingProxyType(
    {name: value for value, name in MESSAGE_ROLE_NAMES.items()}
)


def state_name(state: int) -> str:
    """``RUN_STATE_RUNNING`` → ``"running"``."""
    return STATE_NAMES.get(int(state), "unspecified")
