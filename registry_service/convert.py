"""Translation between the contract's messages and the registry's records.

State and strategy enums are stored by name; unknown or unspecified enum
values coming from a caller are rejected here with ``INVALID_ARGUMENT``.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from registry_service.models import RunRecord
from registry_service.states import ENQUEUE, INTERRUPT, REJECT
from runwire.common.v1 import run_pb2
from runwire_common.errors import InvalidArgument
from runwire_common.names import STATE_NAMES, STATES_BY_NAME
from runwire_common.timeutil import to_timestamp

STRATEGY_NAMES: Mapping[int, str] = MappingProxyType(
    {
        run_pb2.MULTITASK_STRATEGY_UNSPECIFIED: REJECT,
        run_pb2.MULTITASK_STRATEGY_REJECT: REJECT,
        run_pb2.MULTITASK_STRATEGY_ENQUEUE: ENQUEUE,
        run_pb2.MULTITASK_STRATEGY_INTERRUPT: INTERRUPT,
    }
)
STRATEGIES_BY_NAME: Mapping[str, run_pb2.MultitaskStrategy.ValueType] = MappingProxyType(
    {
        REJECT: run_pb2.MULTITASK_STRATEGY_REJECT,
        ENQUEUE: run_pb2.MULTITASK_STRATEGY_ENQUEUE,
        INTERRUPT: run_pb2.MULTITASK_STRATEGY_INTERRUPT,
    }
)


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


def run_message(record: RunRecord) -> run_pb2.Run:
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
        multitask_strategy=STRATEGIES_BY_NAME[record.multitask_strategy],
        timeout_seconds=record.timeout_seconds,
    )
    stamps = (
        ("created_at", record.created_at),
        ("updated_at", record.updated_at),
        ("started_at", record.started_at),
        ("finished_at", record.finished_at),
        ("last_heartbeat_at", record.last_heartbeat_at),
    )
    for field, value in stamps:
        stamp = to_timestamp(value)
        if stamp is not None:
            getattr(run, field).CopyFrom(stamp)
    if record.error_code is not None:
        run.error.code = record.error_code
        run.error.message = record.error_message or ""
    return run
