"""``CreateRun``: admitting a new run under the per-user limits.

Two rules must hold cluster-wide, however many registry replicas race:

* a user has at most ``max_live_runs`` live runs;
* a thread has at most one live run (a new run on a busy thread follows its
  multitask strategy).

Both are "count, then insert", so admissions of one user are serialised by
the database: the transaction first upserts the user's row in
``run_owners`` and locks it with ``SELECT … FOR UPDATE``. On PostgreSQL (read
committed) the next admission of that user waits on the row lock and, once
it has it, counts with a fresh snapshot that includes the run just
inserted. SQLite ignores ``FOR UPDATE`` but the session begins ``IMMEDIATE``
(see :mod:`registry_service.database`), which holds the database's write
lock for the whole transaction. Other users are not blocked on PostgreSQL.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from registry_service.models import RunOwner, RunRecord
from registry_service.states import ENQUEUE, INTERRUPT, LIVE_STATES, PENDING, REJECT
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


def _on_busy_thread(request: NewRun, busy: LiveRun) -> None:
    """Apply the multitask strategy to a thread that already has a live run.

    Returning means the new run may be admitted (after the quota check).
    ``enqueue`` and ``interrupt`` plug in here.
    """
    if request.multitask_strategy in (ENQUEUE, INTERRUPT):
        raise FailedPrecondition(
            f"multitask_strategy {request.multitask_strategy!r} is not supported yet; "
            f"thread {request.thread_id!r} is busy with run {busy.run_id!r}"
        )
    raise FailedPrecondition(
        f"thread {request.thread_id!r} already has a live run {busy.run_id!r}; "
        "wait for it to finish or cancel it"
    )


async def create_run(
    session: AsyncSession,
    request: NewRun,
    *,
    max_live_runs: int,
    now: datetime,
) -> RunRecord:
    """Admit ``request`` as a new ``pending`` run, or raise why not."""
    await lock_owner(session, request.user_id, now=now)
    live = await live_runs(session, request.user_id)
    busy = next((run for run in live if run.thread_id == request.thread_id), None)
    if busy is not None:
        _on_busy_thread(request, busy)
    if len(live) >= max_live_runs:
        raise ResourceExhausted(
            f"user has {len(live)} live runs, the limit is {max_live_runs} "
            "concurrent live runs per user; wait for one to finish or cancel one"
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
    return record
