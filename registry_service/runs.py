"""Reading runs and moving them through the state machine.

Every query is scoped by ``user_id``: another user's run is indistinguishable
from a run that does not exist (``NOT_FOUND``).

A transition is one conditional ``UPDATE … WHERE run_id AND user_id AND
state IN (legal sources) [AND version = expected] RETURNING …``; whether it
happened is decided by the row it affected, never by reading first. Only
when no row matched is the run read, and then only to say *why* (missing,
terminal, illegal move, stale version) — the decision was already made by
the database, so two replicas racing on one run get exactly one winner.
``pending → starting`` first checks the thread under the owner lock (queued
runs start one at a time, oldest first); the move itself is still the
conditional ``UPDATE``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import and_, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from registry_service.admission import lock_owner
from registry_service.models import RunRecord
from registry_service.paging import PageCursor
from registry_service.states import (
    ACTIVE_STATES,
    ALLOWED_SOURCES,
    DEFAULT_ERRORS,
    FAILURE_STATES,
    LIVE_STATES,
    PENDING,
    RESULT_STATES,
    STARTING,
    is_terminal,
)
from runwire_common.errors import Aborted, FailedPrecondition, InvalidArgument, NotFound, RunwireError


@dataclass(frozen=True)
class RunError:
    code: str
    message: str


@dataclass(frozen=True)
class Transition:
    """A requested move of one run to ``to_state``."""

    to_state: str
    expected_version: int = 0
    error: RunError | None = None
    result_json: str | None = None

    def __post_init__(self) -> None:
        if self.error is not None and self.to_state not in FAILURE_STATES:
            raise InvalidArgument(f"error can only be set when moving to {', '.join(FAILURE_STATES)}")
        if self.result_json is not None and self.to_state not in RESULT_STATES:
            raise InvalidArgument(f"result_json can only be set when moving to {', '.join(RESULT_STATES)}")
        if self.expected_version < 0:
            raise InvalidArgument("expected_version must not be negative")


@dataclass(frozen=True)
class RunPage:
    runs: list[RunRecord]
    next_cursor: PageCursor | None


def not_found(run_id: str) -> NotFound:
    return NotFound(f"run {run_id!r} not found")


async def find_run(session: AsyncSession, *, user_id: str, run_id: str) -> RunRecord | None:
    return await session.scalar(
        select(RunRecord).where(RunRecord.run_id == run_id, RunRecord.user_id == user_id)
    )


async def get_run(session: AsyncSession, *, user_id: str, run_id: str) -> RunRecord:
    record = await find_run(session, user_id=user_id, run_id=run_id)
    if record is None:
        raise not_found(run_id)
    return record


def _transition_values(change: Transition, now: datetime) -> dict[str, Any]:
    values: dict[str, Any] = {
        "state": change.to_state,
        "version": RunRecord.version + 1,
        "updated_at": now,
    }
    if change.to_state == STARTING:
        values["started_at"] = now
    if is_terminal(change.to_state):
        values["finished_at"] = now
        values["cancel_requested"] = False
    if change.to_state in FAILURE_STATES:
        default_code, default_message = DEFAULT_ERRORS[change.to_state]
        error = change.error or RunError(default_code, default_message)
        values["error_code"] = error.code or default_code
        values["error_message"] = error.message
    if change.result_json is not None:
        values["result_json"] = change.result_json
    return values


async def transition_run(
    session: AsyncSession,
    change: Transition,
    *,
    user_id: str,
    run_id: str,
    now: datetime,
) -> RunRecord:
    """Apply ``change`` atomically and return the updated run.

    Raises ``NOT_FOUND`` for a missing (or foreign) run,
    ``FAILED_PRECONDITION`` when the run is terminal, the move is illegal or
    ``expected_version`` is stale, and ``ABORTED`` when a queued run may not
    start yet.
    """
    sources = ALLOWED_SOURCES[change.to_state]
    if change.to_state == STARTING:
        await _wait_for_the_thread(session, user_id=user_id, run_id=run_id, now=now)
    if sources:
        statement = (
            update(RunRecord)
            .where(
                RunRecord.run_id == run_id,
                RunRecord.user_id == user_id,
                RunRecord.state.in_(sources),
            )
            .values(_transition_values(change, now))
            .returning(RunRecord)
            .execution_options(synchronize_session=False)
        )
        if change.expected_version:
            statement = statement.where(RunRecord.version == change.expected_version)
        updated = (await session.scalars(statement)).one_or_none()
        if updated is not None:
            return updated
    raise await _why_not(session, change, user_id=user_id, run_id=run_id)


async def _wait_for_the_thread(session: AsyncSession, *, user_id: str, run_id: str, now: datetime) -> None:
    """Refuse with ``ABORTED`` to start a pending run while its thread is busy or an older run is queued.

    Runs under the owner lock that ``CreateRun`` takes (PostgreSQL row lock,
    SQLite write lock), so two replicas starting two queued runs of one
    thread, or starting one while admitting another, are serialised: the
    second sees the first's ``starting`` and waits. Only the columns are
    read, never the ORM object, so the ``UPDATE … RETURNING`` that follows
    is not shadowed by a stale copy in the session.
    """
    await lock_owner(session, user_id, now=now)
    run = (
        await session.execute(
            select(RunRecord.thread_id, RunRecord.created_at, RunRecord.state).where(
                RunRecord.run_id == run_id, RunRecord.user_id == user_id
            )
        )
    ).one_or_none()
    if run is None or run.state != PENDING:
        return  # the conditional UPDATE decides, and _why_not says why
    older = or_(
        RunRecord.created_at < run.created_at,
        and_(RunRecord.created_at == run.created_at, RunRecord.run_id < run_id),
    )
    blocking = await session.scalar(
        select(RunRecord.run_id)
        .where(
            RunRecord.user_id == user_id,
            RunRecord.thread_id == run.thread_id,
            RunRecord.run_id != run_id,
            or_(RunRecord.state.in_(ACTIVE_STATES), and_(RunRecord.state == PENDING, older)),
        )
        .order_by(RunRecord.created_at, RunRecord.run_id)
        .limit(1)
    )
    if blocking is not None:
        raise Aborted(f"thread busy: run {blocking!r} is still live; try again once it has ended")


async def _why_not(session: AsyncSession, change: Transition, *, user_id: str, run_id: str) -> RunwireError:
    current = await find_run(session, user_id=user_id, run_id=run_id)
    if current is None:
        return not_found(run_id)
    if is_terminal(current.state):
        return FailedPrecondition(f"run is already {current.state}")
    if current.state not in ALLOWED_SOURCES[change.to_state]:
        return FailedPrecondition(f"a {current.state} run cannot move to {change.to_state}")
    if change.expected_version and current.version != change.expected_version:
        return FailedPrecondition(
            f"run is at version {current.version}, not the expected {change.expected_version}"
        )
    # The run changed between our UPDATE and this read; the caller should look again.
    return FailedPrecondition("run changed concurrently; read it and retry")


async def heartbeat(
    session: AsyncSession,
    *,
    user_id: str,
    run_id: str,
    executor_id: str,
    now: datetime,
) -> RunRecord:
    """Record that ``executor_id`` still runs a live run, and return the run.

    A terminal run is returned unchanged (not an error): the executor reads
    ``state`` and ``cancel_requested`` from the answer to learn that it should
    stop. Heartbeats do not count as transitions, so ``version`` is untouched.
    """
    values: dict[str, Any] = {"last_heartbeat_at": now}
    if executor_id:
        values["executor_id"] = executor_id
    statement = (
        update(RunRecord)
        .where(RunRecord.run_id == run_id, RunRecord.user_id == user_id, RunRecord.state.in_(LIVE_STATES))
        .values(values)
        .returning(RunRecord)
        .execution_options(synchronize_session=False)
    )
    updated = (await session.scalars(statement)).one_or_none()
    if updated is not None:
        return updated
    return await get_run(session, user_id=user_id, run_id=run_id)


async def list_runs(
    session: AsyncSession,
    *,
    user_id: str,
    limit: int,
    thread_id: str = "",
    state: str = "",
    after: PageCursor | None = None,
) -> RunPage:
    """The caller's runs, newest first, at most ``limit`` of them after ``after``."""
    statement = select(RunRecord).where(RunRecord.user_id == user_id)
    if thread_id:
        statement = statement.where(RunRecord.thread_id == thread_id)
    if state:
        statement = statement.where(RunRecord.state == state)
    if after is not None:
        statement = statement.where(
            or_(
                RunRecord.created_at < after.created_at,
                and_(RunRecord.created_at == after.created_at, RunRecord.run_id < after.run_id),
            )
        )
    statement = statement.order_by(RunRecord.created_at.desc(), RunRecord.run_id.desc()).limit(limit + 1)
    rows = list((await session.scalars(statement)).all())
    if len(rows) <= limit:
        return RunPage(runs=rows, next_cursor=None)
    last = rows[limit - 1]
    return RunPage(runs=rows[:limit], next_cursor=PageCursor(created_at=last.created_at, run_id=last.run_id))
