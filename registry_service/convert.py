"""Translation between the contract's messages and the registry's records.

State and strategy enums are stored by name; unknown or unspecified enum
values coming from a caller are rejected here with ``INVALID_ARGUMENT``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Protocol

from runwire.common.v1 import run_pb2
from runwire_common.errors import InvalidArgument
from runwire_common.names import MULTITASK_STRATEGIES, STATE_NAMES, STATES_BY_NAME, STRATEGY_NAMES


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


def run_message(record: RunFields) -> run_pb2.Run:
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
    return run
