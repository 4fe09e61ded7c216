"""``CreateRun``: admitting a new run under the per-user limits.

Two rules must hold cluster-wide, however many registry replicas race:

* a user has at most ``max_live_runs`` live runs;
* a thread runs one run at a time: a new run on a busy thread follows its
  multitask strategy (``reject`` refuses it, ``enqueue`` queues it as a
  ``pending`` run, ``interrupt`` cancels the thread's live runs first).

Both count per owner, ``(tenant_id, user_id)``: equal user ids in two
tenants are two users with a quota each. Both are "count, then insert", so
admissions of one user are serialised by the database: the transaction
first locks the user's row in ``run_owners``. That row is keyed by
``user_id`` alone, so equal user ids of two tenants share it: their
admissions wait for each other, which costs a little concurrency and keeps
every count exact (a coarser lock serialises a superset).
On PostgreSQL that is one statement, ``INSERT … ON CONFLICT DO UPDATE``,
which creates the row or takes its row lock; the next admission of that user
waits on the lock and, once it has it (read committed), counts with a fresh
snapshot that includes the run just inserted. On SQLite the transaction
begins ``IMMEDIATE`` (see :mod:`registry_service.database`), which holds the
database's write lock for the whole transaction, so inserting the row is
enough. Other users are not blocked on PostgreSQL. A queued run's
``pending → starting`` move takes the same lock (see
:mod:`registry_service.runs`), so starting and admitting on one thread never
interleave. Lock order is always owner row, then run rows; the death sweeper
takes run rows only and skips locked ones, so none of these can deadlock.

A run admitted on a busy thread with ``enqueue`` is stored with ``queued``
set; every other run is admitted on a thread without live runs (or with them
just interrupted), so nothing can be ahead of it and its start needs no
thread check. Such a run may be created further along (``initial_state``):
``starting`` is inserted as ``pending`` followed by ``pending → starting``
would leave it (``version`` 2, ``started_at`` set), ``running`` as those
followed by ``starting → running`` would (``version`` 3), every step at the
same ``now``. A queued run is always inserted ``pending``; with ``interrupt``
the thread's live runs are cancelled first, then the new run is inserted in
its initial state.

The common case — the thread has no live run and the user is under the
quota — is one statement after the lock: ``INSERT … SELECT … WHERE`` both
hold, ``RETURNING`` the run. Only when it inserts nothing (under the same
lock, so nothing changed meanwhile) are the live runs read to decide between
refusing, queueing and interrupting, exactly as before.

Everything here is SQLAlchemy Core on one synchronous ``Connection`` (see
:meth:`registry_service.database.Database.write`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from types import MappingProxyType
from typing import Any

from sqlalchemy import Executable, Insert, Row, bindparam, exists, func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection

from registry_service.models import OWNERS, RUNS
from registry_service.states import (
    CANCELLED,
    ENQUEUE,
    INTERRUPT,
    INTERRUPTED,
    INTERRUPTED_MESSAGE,
    LIVE_STATES,
    PENDING,
    REJECT,
    RUNNING,
    STARTING,
)
from runwire_common.errors import FailedPrecondition, InvalidArgument, ResourceExhausted
from runwire_common.ids import new_id
from runwire_common.owners import Owner

# initial state → the transitions that take a new pending run there, in order (each one counted).
INITIAL_STEPS: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {PENDING: (), STARTING: (STARTING,), RUNNING: (STARTING, RUNNING)}
)


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
    # ``pending``, ``starting`` or ``running``: the state the run is created in (see INITIAL_STEPS),
    # unless it is queued behind a live run of its thread, which is always created ``pending``.
    initial_state: str = PENDING
    # The caller's key for this run, if it gave one: a second CreateRun with it answers this run.
    create_key: str | None = None

    def __post_init__(self) -> None:
        if self.initial_state not in INITIAL_STEPS:
            raise InvalidArgument(
                f"initial_state must be one of {', '.join(INITIAL_STEPS)}, not {self.initial_state}"
            )


@dataclass(frozen=True)
class LiveRun:
    run_id: str
    thread_id: str


# Statements built once (per dialect where they differ); what varies per call is a bound parameter.
LOCK_OWNER: Mapping[str, Insert] = MappingProxyType(
    {
        # DO UPDATE (unlike DO NOTHING) row-locks an existing row; the no-op SET keeps it a HOT update.
        "postgresql": postgresql.insert(OWNERS)
        .values(user_id=bindparam("user_id"), created_at=bindparam("now"))
        .on_conflict_do_update(index_elements=[OWNERS.c.user_id], set_={"created_at": OWNERS.c.created_at}),
        # SQLite: BEGIN IMMEDIATE already holds the database's write lock.
        "sqlite": sqlite.insert(OWNERS)
        .values(user_id=bindparam("user_id"), created_at=bindparam("now"))
        .on_conflict_do_nothing(index_elements=[OWNERS.c.user_id]),
    }
)
# Every column of a new run, in table order, each a bound parameter named after it.
NEW_RUN_COLUMNS = tuple(
    column.name
    for column in RUNS.c
    if column.name
    not in (
        "death_notice_claimed_at",
        "death_notified_at",
        "last_heartbeat_at",
        "end_event_type",
        "end_payload_json",
    )
)
# (The scan for module-level state only trusts immutable containers, hence the mapping.)
STATEMENTS: Mapping[str, Executable] = MappingProxyType(
    {
        "live_runs": select(RUNS.c.run_id, RUNS.c.thread_id)
        .where(
            RUNS.c.user_id == bindparam("user_id"),
            RUNS.c.tenant_id == bindparam("tenant_id"),
            RUNS.c.state.in_(LIVE_STATES),
        )
        .order_by(RUNS.c.created_at, RUNS.c.run_id),
        # The run, if its thread has no live run and its user fewer than max_live_runs: one statement.
        "admit_on_free_thread": RUNS.insert()
        .from_select(
            NEW_RUN_COLUMNS,
            select(*(bindparam(name, type_=RUNS.c[name].type) for name in NEW_RUN_COLUMNS)).where(
                select(func.count())
                .select_from(RUNS)
                .where(
                    RUNS.c.user_id == bindparam("user_id"),
                    RUNS.c.tenant_id == bindparam("tenant_id"),
                    RUNS.c.state.in_(LIVE_STATES),
                )
                .scalar_subquery()
                < bindparam("max_live_runs"),
                ~exists().where(
                    RUNS.c.user_id == bindparam("user_id"),
                    RUNS.c.tenant_id == bindparam("tenant_id"),
                    RUNS.c.thread_id == bindparam("thread_id"),
                    RUNS.c.state.in_(LIVE_STATES),
                ),
                # A key already used (never true for a NULL key): create_run answers that run instead.
                ~exists().where(
                    RUNS.c.user_id == bindparam("user_id"),
                    RUNS.c.tenant_id == bindparam("tenant_id"),
                    RUNS.c.create_key == bindparam("create_key"),
                ),
            ),
        )
        .returning(*RUNS.c),
        "run_of_create_key": select(*RUNS.c).where(
            RUNS.c.user_id == bindparam("user_id"),
            RUNS.c.tenant_id == bindparam("tenant_id"),
            RUNS.c.create_key == bindparam("create_key"),
        ),
        "insert_run": RUNS.insert().returning(*RUNS.c),
    }
)


def lock_owner(connection: Connection, user_id: str, *, now: datetime) -> None:
    """Create the user's lock row if needed and hold it until the transaction ends (one statement)."""
    dialect = "postgresql" if connection.dialect.name == "postgresql" else "sqlite"
    connection.execute(LOCK_OWNER[dialect], {"user_id": user_id, "now": now})


def live_runs(connection: Connection, owner: Owner) -> list[LiveRun]:
    """The owner's live runs, oldest first (at most the quota, so few)."""
    rows = connection.execute(
        STATEMENTS["live_runs"], {"user_id": owner.user_id, "tenant_id": owner.tenant_id}
    )
    return [LiveRun(run_id=row.run_id, thread_id=row.thread_id) for row in rows]


@dataclass(frozen=True)
class Admission:
    """The admitted run, the states it entered after ``pending`` and, with ``interrupt``, the runs it cancelled.

    ``entered`` is empty for a run created ``pending`` (queued ones included),
    ``("starting",)`` or ``("starting", "running")`` for one created further
    along: the transitions ``TransitionRun`` would have made, to be counted alike.
    ``replayed``: nothing was created, ``run`` is the one an earlier call with
    the same ``create_key`` created (as it is now).
    """

    run: Row[Any]
    interrupted: list[Row[Any]] = field(default_factory=list)
    entered: tuple[str, ...] = ()
    replayed: bool = False


def _refuse_busy_thread(request: NewRun, busy: LiveRun) -> FailedPrecondition:
    return FailedPrecondition(
        f"thread {request.thread_id!r} already has a live run {busy.run_id!r}; "
        "wait for it to finish or cancel it"
    )


def interrupt_thread(
    connection: Connection, *, owner: Owner, thread_id: str, now: datetime
) -> list[Row[Any]]:
    """Cancel every live run of the thread (queued ones too); return them oldest first.

    One conditional ``UPDATE`` under the owner lock: a run that reached a
    terminal state meanwhile is left alone, exactly as a ``TransitionRun``
    to ``cancelled`` would.
    """
    statement = (
        update(RUNS)
        .where(
            RUNS.c.user_id == owner.user_id,
            RUNS.c.tenant_id == owner.tenant_id,
            RUNS.c.thread_id == thread_id,
            RUNS.c.state.in_(LIVE_STATES),
        )
        .values(
            state=CANCELLED,
            error_code=INTERRUPTED,
            error_message=INTERRUPTED_MESSAGE,
            finished_at=now,
            updated_at=now,
            version=RUNS.c.version + 1,
            cancel_requested=False,
        )
        .returning(*RUNS.c)
    )
    cancelled = list(connection.execute(statement).all())
    return sorted(cancelled, key=lambda run: (run.created_at, run.run_id))


def _steps(request: NewRun, *, queued: bool) -> tuple[str, ...]:
    """The transitions the new run is created through: none for a queued run (it waits ``pending``)."""
    return () if queued else INITIAL_STEPS[request.initial_state]


def _new_run_values(request: NewRun, *, run_id: str, queued: bool, now: datetime) -> dict[str, Any]:
    """The new run's columns: ``pending`` (version 1) moved through :func:`_steps` at ``now``.

    Each step counts one ``version``; ``starting`` sets ``started_at`` (as the
    transition does), ``running`` nothing more (see :mod:`registry_service.states`).
    """
    steps = _steps(request, queued=queued)
    return {
        "run_id": run_id,
        "user_id": request.user_id,
        "tenant_id": request.tenant_id,
        "thread_id": request.thread_id,
        "agent": request.agent,
        "state": steps[-1] if steps else PENDING,
        "created_at": now,
        "updated_at": now,
        "started_at": now if STARTING in steps else None,
        "finished_at": None,
        "error_code": None,
        "error_message": None,
        "result_json": None,
        "input_json": request.input_json,
        "version": 1 + len(steps),
        "executor_id": request.executor_id,
        "cancel_requested": False,
        "multitask_strategy": request.multitask_strategy,
        "timeout_seconds": request.timeout_seconds,
        "death_notice_pending": False,
        "queued": queued,
        "create_key": request.create_key,
    }


def create_run(connection: Connection, request: NewRun, *, max_live_runs: int, now: datetime) -> Admission:
    """Admit ``request`` as a new run in its ``initial_state`` (queued: ``pending``), or raise why not.

    A ``create_key`` the owner already used creates nothing: the answer is
    the run that key created (``replayed``). On a busy thread: ``reject``
    refuses, ``enqueue`` admits the run as a queued ``pending`` run (it may
    start once the runs before it have ended, see
    :func:`registry_service.runs.transition_run`), ``interrupt`` cancels the
    thread's live runs and admits the new one. Queued runs count against
    the quota like any live run; interrupted ones free their place first. A
    refusal is raised before anything is written, so it never leaves a
    thread half-interrupted.
    """
    lock_owner(connection, request.user_id, now=now)
    run_id = new_id("run")
    values = _new_run_values(request, run_id=run_id, queued=False, now=now)
    admitted = connection.execute(
        STATEMENTS["admit_on_free_thread"], {**values, "max_live_runs": max_live_runs}
    ).one_or_none()
    if admitted is not None:
        return Admission(run=admitted, entered=_steps(request, queued=False))
    if request.create_key is not None:
        earlier = connection.execute(
            STATEMENTS["run_of_create_key"],
            {"user_id": request.user_id, "tenant_id": request.tenant_id, "create_key": request.create_key},
        ).one_or_none()
        if earlier is not None:
            return Admission(run=earlier, replayed=True)
    # The thread is busy or the quota reached: decide from the live runs (still under the lock).
    live = live_runs(connection, Owner(request.tenant_id, request.user_id))
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
    interrupted: list[Row[Any]] = []
    if interrupting:
        interrupted = interrupt_thread(
            connection, owner=Owner(request.tenant_id, request.user_id), thread_id=request.thread_id, now=now
        )
    queued = bool(on_thread) and request.multitask_strategy == ENQUEUE
    if queued:
        values = _new_run_values(request, run_id=run_id, queued=True, now=now)
    return Admission(
        run=connection.execute(STATEMENTS["insert_run"], values).one(),
        interrupted=interrupted,
        entered=_steps(request, queued=queued),
    )
