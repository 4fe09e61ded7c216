"""Translation between the contract's messages and the registry's records.

State, strategy, input kind and message role enums are stored by name;
unknown or unspecified enum values coming from a caller are rejected here
with ``INVALID_ARGUMENT``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Protocol

from google.protobuf.timestamp_pb2 import Timestamp
from sqlalchemy import Row

from runwire.common.v1 import run_pb2
from runwire_common.errors import InvalidArgument
from runwire_common.names import (
    INPUT_KIND_NAMES,
    INPUT_KINDS_BY_NAME,
    MESSAGE_ROLE_NAMES,
    MESSAGE_ROLES_BY_NAME,
    MULTITASK_STRATEGIES,
    STATE_NAMES,
    STATES_BY_NAME,
    STRATEGY_NAMES,
)

# InputKind and MessageRole by name (the one map is in runwire_common.names).
KIND_NAMES = INPUT_KIND_NAMES
KINDS_BY_NAME = INPUT_KINDS_BY_NAME
ROLE_NAMES = MESSAGE_ROLE_NAMES
ROLES_BY_NAME = MESSAGE_ROLES_BY_NAME


def kind_from_message(value: int, *, field: str) -> str:
    name = KIND_NAMES.get(int(value))
    if name is None:
        choices = ", ".join(name for name, number in run_pb2.InputKind.items() if number)
        raise InvalidArgument(f"{field} must be one of {choices}, not {value}")
    return name


def role_from_message(value: int, *, field: str) -> str:
    name = ROLE_NAMES.get(int(value))
    if name is None:
        choices = ", ".join(name for name, number in run_pb2.MessageRole.items() if number)
        raise InvalidArgument(f"{field} must be one of {choices}, not {value}")
    return name


def state_from_message(value: int, *, field: str) -> str:
    """``RUN_STATE_RUNNING`` → ``"running"``; unspecified or unknown → ``INVALID_ARGUMENT``."""
    name = STATE_NAMES.get(int(value))
    if name is None:
        raise InvalidArgument(f"{field} must be a run state, not {value}")
    return name


def strategy_from_message(value: int) -> str:
    name = STRATEGY_NAMES.get(int(value))
    if name is None:
        raise InvalidArgument(f"multitask_strategy {value} is not a known strategy")
    return name


class RunFields(Protocol):
    """A stored run: a Core row of ``runs`` or a ``RunRecord``."""

    @property
    def run_id(self) -> str: ...
    @property
    def user_id(self) -> str: ...
    @property
    def tenant_id(self) -> str: ...
    @property
    def thread_id(self) -> str: ...
    @property
    def agent(self) -> str: ...
    @property
    def state(self) -> str: ...
    @property
    def result_json(self) -> str | None: ...
    @property
    def input_json(self) -> str: ...
    @property
    def version(self) -> int: ...
    @property
    def executor_id(self) -> str: ...
    @property
    def cancel_requested(self) -> bool: ...
    @property
    def multitask_strategy(self) -> str: ...
    @property
    def timeout_seconds(self) -> int: ...
    @property
    def created_at(self) -> datetime: ...
    @property
    def updated_at(self) -> datetime: ...
    @property
    def started_at(self) -> datetime | None: ...
    @property
    def finished_at(self) -> datetime | None: ...
    @property
    def last_heartbeat_at(self) -> datetime | None: ...
    @property
    def error_code(self) -> str | None: ...
    @property
    def error_message(self) -> str | None: ...


def run_message(record: RunFields, *, pending: Row[Any] | None = None) -> run_pb2.Run:
    """The run as a message; ``pending`` is its unanswered input request while it waits."""
    run = run_pb2.Run(
        run_id=record.run_id,
        user_id=record.user_id,
        tenant_id=record.tenant_id,
        thread_id=record.thread_id,
        agent=record.agent,
        state=run_pb2.RunState.ValueType(STATES_BY_NAME[record.state]),
        result_json=record.result_json or "",
        input_json=record.input_json,
        version=record.version,
        executor_id=record.executor_id,
        cancel_requested=record.cancel_requested,
        multitask_strategy=MULTITASK_STRATEGIES[record.multitask_strategy],
        timeout_seconds=record.timeout_seconds,
    )
    # Stored times are aware UTC datetimes (models.UTCDateTime): straight into the fields.
    run.created_at.FromDatetime(record.created_at)
    run.updated_at.FromDatetime(record.updated_at)
    if record.started_at is not None:
        run.started_at.FromDatetime(record.started_at)
    if record.finished_at is not None:
        run.finished_at.FromDatetime(record.finished_at)
    if record.last_heartbeat_at is not None:
        run.last_heartbeat_at.FromDatetime(record.last_heartbeat_at)
    if record.error_code is not None:
        run.error.code = record.error_code
        run.error.message = record.error_message or ""
    if pending is not None:
        run.pending_input.CopyFrom(input_message(pending))
    return run


def _set_time(field: Timestamp, value: datetime | None) -> None:
    if value is not None:
        field.FromDatetime(value)


def input_message(row: Row[Any]) -> run_pb2.InputRequest:
    """A row of ``input_requests`` as the contract's ``InputRequest``."""
    request = run_pb2.InputRequest(
        request_id=row.request_id,
        kind=run_pb2.InputKind.ValueType(KINDS_BY_NAME[row.kind]),
        prompt=row.prompt,
        schema_json=row.schema_json,
        tool_name=row.tool_name,
        call_id=row.call_id,
        parameters_json=row.parameters_json,
        response_json=row.response_json or "",
    )
    _set_time(request.created_at, row.created_at)
    _set_time(request.expires_at, row.expires_at)
    _set_time(request.answered_at, row.answered_at)
    return request


def thread_message(row: Row[Any]) -> run_pb2.ThreadMessage:
    """A row of ``thread_messages`` as the contract's ``ThreadMessage``."""
    message = run_pb2.ThreadMessage(
        run_id=row.run_id,
        role=run_pb2.MessageRole.ValueType(ROLES_BY_NAME[row.role]),
        content=row.content,
        tool_calls_json=row.tool_calls_json,
        tool_call_id=row.tool_call_id,
        name=row.name,
    )
    message.created_at.FromDatetime(row.created_at)
    return message


class ThreadFields(Protocol):
    """A thread's summary (``registry_service.threads.ThreadSummary``)."""

    @property
    def thread_id(self) -> str: ...
    @property
    def user_id(self) -> str: ...
    @property
    def tenant_id(self) -> str: ...
    @property
    def created_at(self) -> datetime: ...
    @property
    def updated_at(self) -> datetime: ...
    @property
    def last_run_state(self) -> str: ...
    @property
    def title(self) -> str: ...


def thread_summary(summary: ThreadFields) -> run_pb2.Thread:
    """A thread's summary as the contract's ``Thread``."""
    thread = run_pb2.Thread(
        thread_id=summary.thread_id,
        user_id=summary.user_id,
        tenant_id=summary.tenant_id,
        last_run_state=run_pb2.RunState.ValueType(STATES_BY_NAME[summary.last_run_state]),
        title=summary.title,
    )
    thread.created_at.FromDatetime(summary.created_at)
    thread.updated_at.FromDatetime(summary.updated_at)
    return thread
