"""Turning request messages into validated domain requests.

Everything a caller can get wrong in the message itself (as opposed to the
state of the run) is rejected here with ``INVALID_ARGUMENT`` naming the
field, before any database work.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from types import MappingProxyType

from google.protobuf.timestamp_pb2 import Timestamp

from registry_service.admission import NewRun
from registry_service.convert import (
    kind_from_message,
    role_from_message,
    state_from_message,
    strategy_from_message,
)
from registry_service.inputs import NewInput
from registry_service.models import (
    AGENT_LENGTH,
    CREATE_KEY_LENGTH,
    ERROR_CODE_LENGTH,
    ID_LENGTH,
    TOOL_NAME_LENGTH,
)
from registry_service.runs import EndEvent, RunError, Transition
from registry_service.states import PENDING, RUNNING, STARTING
from registry_service.threads import NewMessage
from runwire.common.v1 import context_pb2, run_pb2
from runwire.registry.v1 import registry_pb2
from runwire_common.context import id_problem
from runwire_common.errors import InvalidArgument
from runwire_common.names import TERMINAL_EVENT_TYPES

MAX_ERROR_MESSAGE_LENGTH = 4096
# Input requests: what a run asks, and the answer (characters).
MAX_PROMPT_LENGTH = 16 * 1024
MAX_SCHEMA_LENGTH = 64 * 1024
MAX_PARAMETERS_LENGTH = 256 * 1024
MAX_RESPONSE_LENGTH = 64 * 1024
# The bridge refuses larger payloads; the executor shortens its events to fit well below this.
MAX_END_PAYLOAD_LENGTH = 1024 * 1024
# AppendMessages: per call, per message (content, tool calls) and in total (characters).
MAX_MESSAGES_PER_CALL = 500
MAX_MESSAGE_LENGTH = 256 * 1024
MAX_MESSAGES_LENGTH = 2 * 1024 * 1024
APPROVAL = "approval"
TOOL_ROLE, ASSISTANT_ROLE = "tool", "assistant"

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
        create_key=_bounded(request.create_key, field="create_key", limit=CREATE_KEY_LENGTH) or None,
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
        end_event=end_event(request),
    )


def end_event(request: registry_pb2.TransitionRunRequest) -> EndEvent | None:
    """The caller's terminal event, if it gave one: a terminal type and a JSON object, bounded.

    The payload is checked by its shape only (``{…}``), not parsed: the bridge
    validates it when it is delivered, and the registry never reads it.
    """
    if not request.end_event_type and not request.end_payload_json:
        return None
    if request.end_event_type not in TERMINAL_EVENT_TYPES:
        raise InvalidArgument(f"end_event_type must be one of {', '.join(sorted(TERMINAL_EVENT_TYPES))}")
    payload = _bounded(request.end_payload_json, field="end_payload_json", limit=MAX_END_PAYLOAD_LENGTH)
    if not (payload.startswith("{") and payload.endswith("}")):
        raise InvalidArgument("end_payload_json must be a JSON object")
    return EndEvent(type=request.end_event_type, payload_json=payload)


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


def _text(value: str, *, field: str, limit: int) -> str:
    """Free text to store: bounded, and without NUL characters (PostgreSQL text cannot hold them)."""
    _bounded(value, field=field, limit=limit)
    if "\x00" in value:
        raise InvalidArgument(f"{field} must not contain NUL characters")
    return value


def _id(value: str, *, field: str) -> str:
    if not value:
        raise InvalidArgument(f"{field} is required")
    problem = id_problem(value)
    if problem is not None:
        raise InvalidArgument(f"{field} {problem}")
    return value


def _json_text(text: str, *, field: str, limit: int, kind: type[object] | None = None) -> str:
    """``text`` (empty allowed) when it is JSON of ``kind`` within ``limit`` characters."""
    if not text:
        return ""
    _bounded(text, field=field, limit=limit)
    value = _json(text, field=field)
    if kind is not None and not isinstance(value, kind):
        raise InvalidArgument(f"{field} must be a JSON {'object' if kind is dict else 'array'}")
    return text


def request_id(value: str) -> str:
    return _id(value, field="request_id")


def _time(stamp: Timestamp, *, field: str) -> datetime | None:
    if stamp.seconds == 0 and stamp.nanos == 0:
        return None
    try:
        return stamp.ToDatetime(tzinfo=UTC)
    except (ValueError, OverflowError) as exc:
        raise InvalidArgument(f"{field} is not a valid time") from exc


def new_input(request: registry_pb2.RequestInputRequest) -> NewInput:
    asked = request.input
    kind = kind_from_message(asked.kind, field="input.kind")
    tool_name = _text(asked.tool_name, field="input.tool_name", limit=TOOL_NAME_LENGTH)
    if kind == APPROVAL and not tool_name.strip():
        raise InvalidArgument("input.tool_name is required for an approval")
    return NewInput(
        request_id=_id(asked.request_id, field="input.request_id"),
        kind=kind,
        prompt=_text(asked.prompt, field="input.prompt", limit=MAX_PROMPT_LENGTH),
        schema_json=_json_text(
            asked.schema_json, field="input.schema_json", limit=MAX_SCHEMA_LENGTH, kind=dict
        ),
        tool_name=tool_name,
        call_id=_text(asked.call_id, field="input.call_id", limit=ID_LENGTH),
        parameters_json=_json_text(
            asked.parameters_json, field="input.parameters_json", limit=MAX_PARAMETERS_LENGTH
        ),
        expires_at=_time(asked.expires_at, field="input.expires_at"),
    )


def answer(request: registry_pb2.AnswerInputRequest) -> tuple[str, str]:
    """``(request_id, response_json)``; the answer must be a JSON object."""
    if not request.response_json:
        raise InvalidArgument("response_json is required")
    response = _json_text(request.response_json, field="response_json", limit=MAX_RESPONSE_LENGTH, kind=dict)
    return request_id(request.request_id), response


def completed_messages(request: registry_pb2.TransitionRunRequest, *, run_id: str) -> list[NewMessage]:
    """The messages a completing transition stores with the run (checked as :func:`messages` checks them)."""
    if request.messages and request.to_state != run_pb2.RUN_STATE_COMPLETED:
        raise InvalidArgument("messages can only be given when moving to completed")
    return messages(request.messages, run_id=run_id)


def messages(given: Sequence[run_pb2.ThreadMessage], *, run_id: str) -> list[NewMessage]:
    """The messages to append, each checked, within the per-call bounds."""
    if len(given) > MAX_MESSAGES_PER_CALL:
        raise InvalidArgument(f"at most {MAX_MESSAGES_PER_CALL} messages per call, not {len(given)}")
    checked: list[NewMessage] = []
    total = 0
    for index, message in enumerate(given):
        field = f"messages[{index}]"
        role = role_from_message(message.role, field=f"{field}.role")
        if message.run_id and message.run_id != run_id:
            raise InvalidArgument(f"{field}.run_id must be empty or user_context.run_id")
        content = _text(message.content, field=f"{field}.content", limit=MAX_MESSAGE_LENGTH)
        tool_calls = _json_text(
            message.tool_calls_json, field=f"{field}.tool_calls_json", limit=MAX_MESSAGE_LENGTH, kind=list
        )
        if tool_calls and role != ASSISTANT_ROLE:
            raise InvalidArgument(f"{field}.tool_calls_json is only for {ASSISTANT_ROLE} messages")
        tool_call_id = _text(message.tool_call_id, field=f"{field}.tool_call_id", limit=ID_LENGTH)
        if role == TOOL_ROLE and not tool_call_id:
            raise InvalidArgument(f"{field}.tool_call_id is required for a {TOOL_ROLE} message")
        total += len(content) + len(tool_calls)
        if total > MAX_MESSAGES_LENGTH:
            raise InvalidArgument(
                f"the messages of one call must total at most {MAX_MESSAGES_LENGTH} characters"
            )
        checked.append(
            NewMessage(
                role=role,
                content=content,
                tool_calls_json=tool_calls,
                tool_call_id=tool_call_id,
                name=_text(message.name, field=f"{field}.name", limit=TOOL_NAME_LENGTH),
            )
        )
    return checked


def max_messages(value: int) -> int:
    if value < 0:
        raise InvalidArgument("max_messages must not be negative")
    return value
