"""Turning request messages into validated domain requests.

Everything a caller can get wrong in the message itself (as opposed to the
state of the run) is rejected here with ``INVALID_ARGUMENT`` naming the
field, before any database work.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from types import MappingProxyType

from registry_service.admission import NewRun
from registry_service.convert import state_from_message, strategy_from_message
from registry_service.models import AGENT_LENGTH, ERROR_CODE_LENGTH, ID_LENGTH
from registry_service.runs import RunError, Transition
from registry_service.states import PENDING, RUNNING, STARTING
from runwire.common.v1 import context_pb2, run_pb2
from runwire.registry.v1 import registry_pb2
from runwire_common.context import id_problem
from runwire_common.errors import InvalidArgument

MAX_ERROR_MESSAGE_LENGTH = 4096

# CreateRunRequest.initial_state → the state a run admitted without waiting is created in.
INITIAL_STATES: Mapping[int, str] = MappingProxyType(
    {
        run_pb2.RUN_STATE_UNSPECIFIED: PENDING,
        run_pb2.RUN_STATE_PENDING: PENDING,
        run_pb2.RUN_STATE_STARTING: STARTING,
        run_pb2.RUN_STATE_RUNNING: RUNNING,
    }
)


def _json(text: str, *, field: str) -> object:
    try:
        return json.loads(text)
    except ValueError as exc:
        raise InvalidArgument(f"{field} is not valid JSON: {exc}") from exc


def _bounded(value: str, *, field: str, limit: int) -> str:
    if len(value) > limit:
        raise InvalidArgument(f"{field} must be at most {limit} characters")
    return value


def initial_state(value: int) -> str:
    """``CreateRunRequest.initial_state`` → ``pending``, ``starting`` or ``running``; else ``INVALID_ARGUMENT``."""
    state = INITIAL_STATES.get(int(value))
    if state is None:
        names = [run_pb2.RunState.Name(run_pb2.RunState.ValueType(v)) for v in INITIAL_STATES]
        known = int(value) in run_pb2.RunState.values()
        given = run_pb2.RunState.Name(run_pb2.RunState.ValueType(value)) if known else str(value)
        raise InvalidArgument(f"initial_state must be {', '.join(names[:-1])} or {names[-1]}, not {given}")
    return state


def new_run(request: registry_pb2.CreateRunRequest, ctx: context_pb2.UserContext) -> NewRun:
    agent = request.agent
    if not agent.strip():
        raise InvalidArgument("agent is required")
    _bounded(agent, field="agent", limit=AGENT_LENGTH)
    input_json = request.input_json or "{}"
    if not isinstance(_json(input_json, field="input_json"), dict):
        raise InvalidArgument("input_json must be a JSON object")
    if request.timeout_seconds < 0:
        raise InvalidArgument("timeout_seconds must not be negative")
    return NewRun(
        user_id=ctx.user_id,
        tenant_id=ctx.tenant_id,
        thread_id=ctx.thread_id,
        agent=agent,
        input_json=input_json,
        multitask_strategy=strategy_from_message(request.multitask_strategy),
        executor_id=_bounded(request.executor_id, field="executor_id", limit=ID_LENGTH),
        timeout_seconds=request.timeout_seconds,
        initial_state=initial_state(request.initial_state),
    )


def transition(request: registry_pb2.TransitionRunRequest) -> Transition:
    to_state = state_from_message(request.to_state, field="to_state")
    error = None
    if request.HasField("error") and (request.error.code or request.error.message):
        error = RunError(
            code=_bounded(request.error.code, field="error.code", limit=ERROR_CODE_LENGTH),
            message=_bounded(request.error.message, field="error.message", limit=MAX_ERROR_MESSAGE_LENGTH),
        )
    result_json = None
    if request.result_json:
        _json(request.result_json, field="result_json")
        result_json = request.result_json
    return Transition(
        to_state=to_state,
        expected_version=request.expected_version,
        error=error,
        result_json=result_json,
        through_completing=request.through_completing,
    )


def executor_id(value: str) -> str:
    return _bounded(value, field="executor_id", limit=ID_LENGTH)


def list_filters(request: registry_pb2.ListRunsRequest) -> tuple[str, str]:
    """``(thread_id, state)`` filters; empty strings mean "any"."""
    thread_id = request.thread_id
    if thread_id:
        problem = id_problem(thread_id)
        if problem is not None:
            raise InvalidArgument(f"thread_id {problem}")
    state = state_from_message(request.state, field="state") if request.state else ""
    return thread_id, state
