"""``CreateRun``: admitting a new run under the per-user limits.

Two rules must hold cluster-wide, however many registry replicas race:

* a user has at most ``max_live_runs`` live runs;
* a thread runs one run at a time: a new run on a busy thread follows its
  multitask strategy (``reject`` refuses it, ``enqueue`` queues it as a
  ``pending`` run, ``interrupt`` cancels the thread's live runs first).

Both are "count, then insert", so admissions of one user are serialised by
the database: the transaction first upserts the user's row in
``run_owners`` and locks it with ``SELECT … FOR UPDATE``. On PostgreSQL (read
committed) the next admission of that user waits on the row lock and, once
it has it, counts with a fresh snapshot that includes the run just
inserted. SQLite ignores ``FOR UPDATE`` but the session begins ``IMMEDIATE``
(see :mod:`registry_service.database`), which holds the database's write
lock for the whole transaction. Other users are not blocked on PostgreSQL.
A queued run's ``pending → starting`` move takes the same lock (see
:mod:`registry_service.runs`), so starting and admitting on one thread never
interleave. Lock order is always owner row, then run rows; the death sweeper
takes run rows only and skips locked ones, so none of these can deadlock.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from registry_service.models import RunOwner, RunRecord
from registry_service.states import (
    CANCELLED,
    ENQUEUE,
    INTERRUPT,
    INTERRUPTED,
    INTERRUPTED_MESSAGE,
    LIVE_STATES,
    PENDING,
    REJECT,
)
from runwire_common.errors import FailedPrecondition, ResourceExhausted
from runwire_common.ids import new_id


@dataclass(frozen=True)
class NewRun:
    """A validated ``CreateRun`` request."""

    user_id: str
    tenant_id: str
    thread_id: str
    agent: str
    input_json: str
    multitask_strategy: str = REJECT
    executor_id: str = ""
    timeout_seconds: int = 0


@dataclass(frozen=True)
class LiveRun:
    run_id: str
    thread_id: str


async def lock_owner(session: AsyncSession, user_id: str, *, now: datetime) -> None:
    """Create the user's lock row if needed, then hold it until the transaction ends."""
    if session.get_bind().dialect.name == "postgresql":
        pg_upsert = postgresql.insert(RunOwner).values(user_id=user_id, created_at=now)
        await session.execute(pg_upsert.on_conflict_do_nothing(index_elements=[RunOwner.user_id]))
    else:
        lite_upsert = sqlite.insert(RunOwner).values(user_id=user_id, created_at=now)
        await session.execute(lite_upsert.on_conflict_do_nothing(index_elements=[RunOwner.user_id]))
    await session.execute(select(RunOwner.user_id).where(RunOwner.user_id == user_id).with_for_update())


async def live_runs(session: AsyncSession, user_id: str) -> list[LiveRun]:
    """The user's live runs, oldest first (at most the quota, so few)."""
    rows = await session.execute(
        select(RunRecord.run_id, RunRecord.thread_id)
        .where(RunRecord.user_id == user_id, RunRecord.state.in_(LIVE_STATES))
        .order_by(RunRecord.created_at, RunRecord.run_id)
    )
    return [LiveRun(run_id=row.run_id, thread_id=row.thread_id) for row in rows]


@dataclass(frozen=True)
class Admission:
    """The admitted run and, with ``interrupt``, the runs it cancelled to make room."""

    run: RunRecord
    interrupted: list[RunRecord] = field(default_factory=list)


def _refuse_busy_thread(request: NewRun, busy: LiveRun) -> FailedPrecondition:
    return FailedPrecondition(
        f"thread {request.thread_id!r} already has a live run {busy.run_id!r}; "
        "wait for it to finish or cancel it"
    )


async def interrupt_thread(
    session: AsyncSession, *, user_id: str, thread_id: str, now: datetime
) -> list[RunRecord]:
    """Cancel every live run of the thread (queued ones too); return them oldest first.

    One conditional ``UPDATE`` under the owner lock: a run that reached a
    terminal state meanwhile is left alone, exactly as a ``TransitionRun``
    to ``cancelled`` would.
    """
    statement = (
        update(RunRecord)
        .where(
            RunRecord.user_id == user_id,
            RunRecord.thread_id == thread_id,
            RunRecord.state.in_(LIVE_STATES),
        )
        .values(
            state=CANCELLED,
            error_code=INTERRUPTED,
            error_message=INTERRUPTED_MESSAGE,
            finished_at=now,
            updated_at=now,
            version=RunRecord.version + 1,
            cancel_requested=False,
        )
        .returning(RunRecord)
        .execution_options(synchronize_session=False)
    )
    cancelled = list((await session.scalars(statement)).all())
    return sorted(cancelled, key=lambda run: (run.created_at, run.run_id))


async def create_run(
    session: AsyncSession,
    request: NewRun,
    *,
    max_live_runs: int,
    now: datetime,
) -> Admission:
    """Admit ``request`` as a new ``pending`` run, or raise why not.

    On a busy thread: ``reject`` refuses, ``enqueue`` admits the run as a
    queued ``pending`` run (it may start once the runs before it have ended,
    see :func:`registry_service.runs.transition_run`), ``interrupt`` cancels
    the thread's live runs and admits the new one. Queued runs count against
    the quota like any live run; interrupted ones free their place first. A
    refusal is raised before anything is written, so it never leaves a
    thread half-interrupted.
    """
    await lock_owner(session, request.user_id, now=now)
    live = await live_runs(session, request.user_id)
    on_thread = [run for run in live if run.thread_id == request.thread_id]
    if on_thread and request.multitask_strategy not in (ENQUEUE, INTERRUPT):
        raise _refuse_busy_thread(request, on_thread[0])
    interrupting = request.multitask_strategy == INTERRUPT and bool(on_thread)
    remaining = len(live) - len(on_thread) if interrupting else len(live)
    if remaining >= max_live_runs:
        raise ResourceExhausted(
            f"user has {remaining} live runs, the limit is {max_live_runs} "
            "concurrent live runs per user; wait for one to finish or cancel one"
        )
    interrupted: list[RunRecord] = []
    if interrupting:
        interrupted = await interrupt_thread(
            session, user_id=request.user_id, thread_id=request.thread_id, now=now
        )
    record = RunRecord(
        run_id=new_id("run"),
        user_id=request.user_id,
        tenant_id=request.tenant_id,
        thread_id=request.thread_id,
        agent=request.agent,
        state=PENDING,
        created_at=now,
        updated_at=now,
        input_json=request.input_json,
        version=1,
        executor_id=request.executor_id,
        cancel_requested=False,
        multitask_strategy=request.multitask_strategy,
        timeout_seconds=request.timeout_seconds,
    )
    session.add(record)
    await session.flush()
    return Admission(run=record, interrupted=interrupted)
