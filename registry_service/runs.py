"""Reading runs and moving them through the state machine.

Every query is scoped by the owner, ``(tenant_id, user_id)`` (see
:mod:`registry_service.ownership`): another owner's run is indistinguishable
from a run that does not exist (``NOT_FOUND``).

A transition is one conditional ``UPDATE … WHERE run_id AND owner AND
state IN (legal sources) [AND version = expected] RETURNING …``; whether it
happened is decided by the row it affected, never by reading first. Only
when no row matched is the run read, and then only to say *why* (missing,
terminal, illegal move, stale version) — the decision was already made by
the database, so two replicas racing on one run get exactly one winner.

``pending → starting`` of a run that ``CreateRun`` did not queue is that one
``UPDATE`` too (``AND queued = false``): the run was admitted on a thread
without live runs, later runs of its thread are queued behind it or
interrupted it, so no thread rule can refuse it. A queued run (or one whose
``queued`` is unknown) first checks its thread under the owner lock (queued
runs start one at a time, oldest first, after any unqueued pending run of
the thread); the move itself is still the conditional ``UPDATE``.

``completed`` with ``through_completing`` (:func:`complete_through`) moves a
``running`` run through ``completing`` to ``completed`` in one conditional
``UPDATE`` (``version + 2``), or a ``completing`` run to ``completed``; each
of the two is one atomic statement of its own, so neither needs a
transaction around it.

:func:`try_transition` is the first ``UPDATE`` of either on its own: the
servicer runs it without a transaction around it (one round trip on
PostgreSQL) and falls back to the full function only when it changed
nothing.

Everything here is SQLAlchemy Core on one synchronous ``Connection`` (see
:meth:`registry_service.database.Database.write`); results are Core rows.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from types import MappingProxyType
from typing import Any

from sqlalchemy import Row, Select, Update, and_, bindparam, false, or_, select, update
from sqlalchemy.engine import Connection

from registry_service.admission import lock_owner
from registry_service.models import RUNS
from registry_service.ownership import owned_by, owner_parameters, run_of_owner
from registry_service.paging import PageCursor
from registry_service.states import (
    ACTIVE_STATES,
    COMPLETED,
    COMPLETING,
    DEFAULT_ERRORS,
    FAILURE_STATES,
    INPUT_MOVES,
    LIVE_STATES,
    PENDING,
    RESULT_STATES,
    RUNNING,
    STARTING,
    TRANSITION_SOURCES,
    is_terminal,
)
from runwire_common.errors import Aborted, FailedPrecondition, InvalidArgument, NotFound, RunwireError
from runwire_common.owners import Owner


@dataclass(frozen=True)
class RunError:
    code: str
    message: str


@dataclass(frozen=True)
class EndEvent:
    """The terminal event the caller of a terminal transition publishes: kept as the run's end notice."""

    type: str
    payload_json: str


@dataclass(frozen=True)
class Transition:
    """A requested move of one run to ``to_state``."""

    to_state: str
    expected_version: int = 0
    error: RunError | None = None
    result_json: str | None = None
    # Only with ``completed``: a ``running`` run passes through ``completing`` (see complete_through).
    through_completing: bool = False
    # Only with a terminal state: stored as the run's end notice (see registry_service.death).
    end_event: EndEvent | None = None

    def __post_init__(self) -> None:
        if self.through_completing and self.to_state != COMPLETED:
            raise InvalidArgument(
                f"through_completing can only be set when moving to {COMPLETED}, not {self.to_state}"
            )
        if self.error is not None and self.to_state not in FAILURE_STATES:
            raise InvalidArgument(f"error can only be set when moving to {', '.join(FAILURE_STATES)}")
        if self.result_json is not None and self.to_state not in RESULT_STATES:
            raise InvalidArgument(f"result_json can only be set when moving to {', '.join(RESULT_STATES)}")
        if self.end_event is not None and not is_terminal(self.to_state):
            raise InvalidArgument("an end event can only be given with a terminal state")
        if self.expected_version < 0:
            raise InvalidArgument("expected_version must not be negative")


@dataclass(frozen=True)
class RunPage:
    runs: list[Row[Any]]
    next_cursor: PageCursor | None


def not_found(run_id: str) -> NotFound:
    return NotFound(f"run {run_id!r} not found")


# The hot statements are built once: executing a prebuilt statement skips building it per call.
# run_id, owner → the run (a mapping only because the module-state scan trusts immutable containers).
FIND_RUN: Mapping[str, Select[Any]] = MappingProxyType(
    {"by_owner": select(RUNS).where(RUNS.c.run_id == bindparam("match_run_id"), *run_of_owner())}
)


def find_run(connection: Connection, *, owner: Owner, run_id: str) -> Row[Any] | None:
    return connection.execute(
        FIND_RUN["by_owner"], {"match_run_id": run_id, **owner_parameters(owner)}
    ).one_or_none()


def get_run(connection: Connection, *, owner: Owner, run_id: str) -> Row[Any]:
    record = find_run(connection, owner=owner, run_id=run_id)
    if record is None:
        raise not_found(run_id)
    return record


def _update_for(
    to_state: str,
    *,
    with_result: bool,
    with_version: bool,
    sources: frozenset[str] | None = None,
    steps: int = 1,
) -> Update:
    """The conditional ``UPDATE`` of a move to ``to_state``; what varies per call is a bound parameter.

    ``sources`` (default: the legal sources of ``to_state``) and ``steps`` (how many
    transitions the move counts as, hence how far ``version`` advances) serve
    :data:`THROUGH_COMPLETING`.
    """
    values: dict[str, Any] = {
        "state": to_state,
        "version": RUNS.c.version + steps,
        "updated_at": bindparam("now"),
    }
    if to_state == STARTING:
        values["started_at"] = bindparam("started_at")
    if is_terminal(to_state):
        values["finished_at"] = bindparam("finished_at")
        values["cancel_requested"] = False
        # The run-end outbox, in the same UPDATE as the transition (see registry_service.death).
        values["death_notice_pending"] = bindparam("notice_pending")
        values["death_notice_claimed_at"] = None
        values["end_event_type"] = bindparam("end_event_type")
        values["end_payload_json"] = bindparam("end_payload_json")
    if to_state in FAILURE_STATES:
        values["error_code"] = bindparam("error_code")
        values["error_message"] = bindparam("error_message")
    if with_result:
        values["result_json"] = bindparam("result_json")
    statement = (
        update(RUNS)
        .where(
            RUNS.c.run_id == bindparam("match_run_id"),
            *run_of_owner(),
            RUNS.c.state.in_(sorted(sources if sources is not None else TRANSITION_SOURCES[to_state])),
        )
        .values(values)
        .returning(*RUNS.c)
    )
    if with_version:
        statement = statement.where(RUNS.c.version == bindparam("expected_version"))
    return statement


# Every transition statement, built once (so SQLAlchemy's cache key is computed once per shape):
# (to_state, with result_json, with expected_version) → UPDATE.
UPDATES: Mapping[tuple[str, bool, bool], Update] = MappingProxyType(
    {
        (to_state, with_result, with_version): _update_for(
            to_state, with_result=with_result, with_version=with_version
        )
        for to_state, sources in TRANSITION_SOURCES.items()
        if sources
        for with_result in ((False, True) if to_state in RESULT_STATES else (False,))
        for with_version in (False, True)
    }
)
# pending → starting of an unqueued run: the same UPDATE, also requiring queued = false.
UNQUEUED_STARTS: Mapping[bool, Update] = MappingProxyType(
    {
        with_version: UPDATES[(STARTING, False, with_version)].where(RUNS.c.queued == false())
        for with_version in (False, True)
    }
)


# running → completing → completed as one UPDATE: (with result_json, with expected_version) → UPDATE.
THROUGH_COMPLETING: Mapping[tuple[bool, bool], Update] = MappingProxyType(
    {
        (with_result, with_version): _update_for(
            COMPLETED,
            with_result=with_result,
            with_version=with_version,
            sources=frozenset({RUNNING}),
            steps=2,
        )
        for with_result in (False, True)
        for with_version in (False, True)
    }
)


def _parameters(change: Transition, *, owner: Owner, run_id: str, now: datetime) -> dict[str, Any]:
    parameters: dict[str, Any] = {"match_run_id": run_id, **owner_parameters(owner), "now": now}
    if change.to_state == STARTING:
        parameters["started_at"] = now
    if is_terminal(change.to_state):
        parameters["finished_at"] = now
        end = change.end_event
        parameters["notice_pending"] = end is not None
        parameters["end_event_type"] = None if end is None else end.type
        parameters["end_payload_json"] = None if end is None else end.payload_json
    if change.to_state in FAILURE_STATES:
        default_code, default_message = DEFAULT_ERRORS[change.to_state]
        error = change.error or RunError(default_code, default_message)
        parameters["error_code"] = error.code or default_code
        parameters["error_message"] = error.message
    if change.result_json is not None:
        parameters["result_json"] = change.result_json
    if change.expected_version:
        parameters["expected_version"] = change.expected_version
    return parameters


def try_transition(
    connection: Connection, change: Transition, *, owner: Owner, run_id: str, now: datetime
) -> tuple[Row[Any], tuple[str, ...]] | None:
    """Apply ``change`` if its one conditional ``UPDATE`` can; return the run and the states it entered.

    ``None`` means nothing changed and :func:`transition_run` (or
    :func:`complete_through`) must decide, in a transaction: a queued run's
    start, a refusal, or a ``completing`` run completed ``through_completing``.
    Needs no transaction around it (see :meth:`Database.write_statement`).
    """
    if not TRANSITION_SOURCES[change.to_state]:
        return None
    with_result, with_version = change.result_json is not None, bool(change.expected_version)
    if change.through_completing:
        statement = THROUGH_COMPLETING[(with_result, with_version)]
        entered: tuple[str, ...] = (COMPLETING, COMPLETED)
    elif change.to_state == STARTING:
        statement, entered = UNQUEUED_STARTS[with_version], (STARTING,)
    else:
        statement, entered = UPDATES[(change.to_state, with_result, with_version)], (change.to_state,)
    parameters = _parameters(change, owner=owner, run_id=run_id, now=now)
    updated = connection.execute(statement, parameters).one_or_none()
    return None if updated is None else (updated, entered)


def transition_run(
    connection: Connection, change: Transition, *, owner: Owner, run_id: str, now: datetime
) -> Row[Any]:
    """Apply ``change`` atomically and return the updated run.

    Raises ``NOT_FOUND`` for a missing (or foreign) run,
    ``FAILED_PRECONDITION`` when the run is terminal, the move is illegal or
    ``expected_version`` is stale, and ``ABORTED`` when a queued run may not
    start yet.
    """
    if not TRANSITION_SOURCES[change.to_state]:
        raise _why_not(connection, change, owner=owner, run_id=run_id)
    with_version = bool(change.expected_version)
    statement = UPDATES[(change.to_state, change.result_json is not None, with_version)]
    parameters = _parameters(change, owner=owner, run_id=run_id, now=now)
    if change.to_state == STARTING:
        # Unqueued runs: the one UPDATE. Queued (or unknown) ones fall through to the thread check.
        updated = connection.execute(UNQUEUED_STARTS[with_version], parameters).one_or_none()
        if updated is not None:
            return updated
        _wait_for_the_thread(connection, owner=owner, run_id=run_id, now=now)
    updated = connection.execute(statement, parameters).one_or_none()
    if updated is not None:
        return updated
    raise _why_not(connection, change, owner=owner, run_id=run_id)


def move_run(
    connection: Connection, change: Transition, *, owner: Owner, run_id: str, now: datetime
) -> tuple[Row[Any], tuple[str, ...]]:
    """Apply ``change`` in the caller's transaction; the run and the states it entered.

    :func:`try_transition`'s one statement first, then :func:`complete_through`
    or :func:`transition_run` to decide what it could not; raises as they do.
    """
    moved = try_transition(connection, change, owner=owner, run_id=run_id, now=now)
    return (
        moved if moved is not None else decide_move(connection, change, owner=owner, run_id=run_id, now=now)
    )


def decide_move(
    connection: Connection, change: Transition, *, owner: Owner, run_id: str, now: datetime
) -> tuple[Row[Any], tuple[str, ...]]:
    """What :func:`try_transition` left undecided, in the caller's transaction (see :func:`move_run`)."""
    if change.through_completing:
        return complete_through(connection, change, owner=owner, run_id=run_id, now=now)
    record = transition_run(connection, change, owner=owner, run_id=run_id, now=now)
    return record, (str(record.state),)


def _wait_for_the_thread(connection: Connection, *, owner: Owner, run_id: str, now: datetime) -> None:
    """Refuse with ``ABORTED`` to start a queued run while its thread is busy or a run before it waits.

    Runs under the owner lock that ``CreateRun`` takes (PostgreSQL row lock,
    SQLite write lock), so two replicas starting two queued runs of one
    thread, or starting one while admitting another, are serialised: the
    second sees the first's ``starting`` and waits. Ahead of a queued run
    are the thread's active runs, its unqueued pending run (admitted before
    any run was queued behind it) and older queued runs.
    """
    lock_owner(connection, owner.user_id, now=now)
    run = connection.execute(
        select(RUNS.c.thread_id, RUNS.c.created_at, RUNS.c.state).where(
            RUNS.c.run_id == run_id, owned_by(RUNS, owner)
        )
    ).one_or_none()
    if run is None or run.state != PENDING:
        return  # the conditional UPDATE decides, and _why_not says why
    older = or_(
        RUNS.c.created_at < run.created_at,
        and_(RUNS.c.created_at == run.created_at, RUNS.c.run_id < run_id),
    )
    ahead = or_(RUNS.c.queued == false(), older)
    blocking = connection.execute(
        select(RUNS.c.run_id)
        .where(
            owned_by(RUNS, owner),
            RUNS.c.thread_id == run.thread_id,
            RUNS.c.run_id != run_id,
            or_(RUNS.c.state.in_(ACTIVE_STATES), and_(RUNS.c.state == PENDING, ahead)),
        )
        .order_by(RUNS.c.created_at, RUNS.c.run_id)
        .limit(1)
    ).scalar()
    if blocking is not None:
        raise Aborted(f"thread busy: run {blocking!r} is still live; try again once it has ended")


def complete_through(
    connection: Connection, change: Transition, *, owner: Owner, run_id: str, now: datetime
) -> tuple[Row[Any], tuple[str, ...]]:
    """Complete a ``running`` run through ``completing`` (or a ``completing`` one); return it and the states it entered.

    A ``running`` run takes both transitions in one conditional ``UPDATE``
    (``version + 2``, ``result_json`` recorded), exactly as ``completing`` then
    ``completed`` would leave it; a ``completing`` run just completes. Any
    other run is refused as a plain move to ``completed`` would be, with
    ``expected_version`` compared to the version before the call.
    """
    with_result, with_version = change.result_json is not None, bool(change.expected_version)
    parameters = _parameters(change, owner=owner, run_id=run_id, now=now)
    updated = connection.execute(THROUGH_COMPLETING[(with_result, with_version)], parameters).one_or_none()
    if updated is not None:
        return updated, (COMPLETING, COMPLETED)
    # Not running (any more): maybe completing, possibly since a moment ago.
    updated = connection.execute(UPDATES[(COMPLETED, with_result, with_version)], parameters).one_or_none()
    if updated is not None:
        return updated, (COMPLETED,)
    raise _why_not(connection, change, owner=owner, run_id=run_id, sources=frozenset({RUNNING, COMPLETING}))


def _why_not(
    connection: Connection,
    change: Transition,
    *,
    owner: Owner,
    run_id: str,
    sources: frozenset[str] | None = None,
) -> RunwireError:
    current = find_run(connection, owner=owner, run_id=run_id)
    if current is None:
        return not_found(run_id)
    if is_terminal(current.state):
        return FailedPrecondition(f"run is already {current.state}")
    through = INPUT_MOVES.get((current.state, change.to_state))
    if through is not None:
        return FailedPrecondition(f"a {current.state} run moves to {change.to_state} only through {through}")
    if current.state not in (sources if sources is not None else TRANSITION_SOURCES[change.to_state]):
        return FailedPrecondition(f"a {current.state} run cannot move to {change.to_state}")
    if change.expected_version and current.version != change.expected_version:
        return FailedPrecondition(
            f"run is at version {current.version}, not the expected {change.expected_version}"
        )
    # The run changed between our UPDATE and this read; the caller should look again.
    return FailedPrecondition("run changed concurrently; read it and retry")


def _heartbeat_update(*, with_executor: bool) -> Update:
    values: dict[str, Any] = {"last_heartbeat_at": bindparam("now")}
    if with_executor:
        values["executor_id"] = bindparam("executor_id")
    return (
        update(RUNS)
        .where(
            RUNS.c.run_id == bindparam("match_run_id"),
            *run_of_owner(),
            RUNS.c.state.in_(LIVE_STATES),
        )
        .values(values)
        .returning(*RUNS.c)
    )


# with executor_id → the heartbeat's UPDATE.
HEARTBEATS: Mapping[bool, Update] = MappingProxyType(
    {with_executor: _heartbeat_update(with_executor=with_executor) for with_executor in (False, True)}
)


def heartbeat(
    connection: Connection, *, owner: Owner, run_id: str, executor_id: str, now: datetime
) -> Row[Any]:
    """Record that ``executor_id`` still runs a live run, and return the run.

    A terminal run is returned unchanged (not an error): the executor reads
    ``state`` and ``cancel_requested`` from the answer to learn that it should
    stop. Heartbeats do not count as transitions, so ``version`` is untouched.
    One ``UPDATE … RETURNING``; only a run that is not live is read again.
    """
    parameters: dict[str, Any] = {"match_run_id": run_id, **owner_parameters(owner), "now": now}
    if executor_id:
        parameters["executor_id"] = executor_id
    updated = connection.execute(HEARTBEATS[bool(executor_id)], parameters).one_or_none()
    if updated is not None:
        return updated
    return get_run(connection, owner=owner, run_id=run_id)


def list_runs(
    connection: Connection,
    *,
    owner: Owner,
    limit: int,
    thread_id: str = "",
    state: str = "",
    after: PageCursor | None = None,
) -> RunPage:
    """The caller's runs, newest first, at most ``limit`` of them after ``after``."""
    statement = select(RUNS).where(owned_by(RUNS, owner))
    if thread_id:
        statement = statement.where(RUNS.c.thread_id == thread_id)
    if state:
        statement = statement.where(RUNS.c.state == state)
    if after is not None:
        statement = statement.where(
            or_(
                RUNS.c.created_at < after.created_at,
                and_(RUNS.c.created_at == after.created_at, RUNS.c.run_id < after.run_id),
            )
        )
    statement = statement.order_by(RUNS.c.created_at.desc(), RUNS.c.run_id.desc()).limit(limit + 1)
    rows = list(connection.execute(statement).all())
    if len(rows) <= limit:
        return RunPage(runs=rows, next_cursor=None)
    last = rows[limit - 1]
    return RunPage(runs=rows[:limit], next_cursor=PageCursor(created_at=last.created_at, run_id=last.run_id))
