"""Threads: an owner's conversations, derived from runs and their messages.

A thread has no row of its own, so ``CreateRun`` (the hot path) writes
nothing for it: the thread exists while its owner has a run with its
``thread_id``. Its summary is computed from those runs and the messages they
appended: created with the first run, updated at the latest run change or
message, whichever is later, ``last_run_state`` from the newest run, the
title from the first user message.

Messages are appended once per run (:func:`append_messages` is idempotent
per run: the run's row is locked, and a run that already has messages
stores nothing more), ordered by their autoincrement ``id``.

:func:`delete_thread` takes the owner lock of :mod:`registry_service.admission`
first, so no run of the thread can be admitted while it checks that none is
live and deletes the thread's input requests, runs and messages, in that
order and in one transaction. An append racing the delete either finished
first (its messages are deleted with the rest) or finds its run gone.

Everything is scoped by the owner, ``(tenant_id, user_id)``: another owner's thread is ``NOT_FOUND``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, Row, Select, and_, case, delete, func, or_, select, type_coerce
from sqlalchemy.engine import Connection

from registry_service.admission import lock_owner
from registry_service.models import INPUT_REQUESTS, RUNS, THREAD_MESSAGES, UTCDateTime
from registry_service.ownership import owned_by
from registry_service.paging import ThreadCursor
from registry_service.runs import Transition, move_run, not_found
from registry_service.states import LIVE_STATES, TERMINAL_STATES
from runwire_common.errors import FailedPrecondition, NotFound
from runwire_common.owners import Owner

TITLE_LENGTH = 80
# Read a little more than the title, so collapsing white space still leaves a full one.
TITLE_SOURCE_LENGTH = 4 * TITLE_LENGTH
USER_ROLE = "user"


@dataclass(frozen=True)
class NewMessage:
    """A validated message of ``AppendMessages``."""

    role: str
    content: str = ""
    tool_calls_json: str = ""
    tool_call_id: str = ""
    name: str = ""


@dataclass(frozen=True)
class ThreadSummary:
    thread_id: str
    user_id: str
    tenant_id: str
    created_at: datetime
    updated_at: datetime
    last_run_state: str
    title: str


@dataclass(frozen=True)
class ThreadPage:
    threads: list[ThreadSummary]
    next_cursor: ThreadCursor | None


def thread_not_found(thread_id: str) -> NotFound:
    return NotFound(f"thread {thread_id!r} not found")


def append_messages(
    connection: Connection,
    messages: Sequence[NewMessage],
    *,
    owner: Owner,
    thread_id: str,
    run_id: str,
    now: datetime,
) -> int:
    """Store what run ``run_id`` of ``thread_id`` adds to the thread; how many were stored.

    ``NOT_FOUND`` unless the caller owns the run and it belongs to
    ``thread_id``. A run's second call stores nothing (``0``).
    """
    run = connection.execute(
        select(RUNS.c.thread_id, RUNS.c.tenant_id)
        .where(RUNS.c.run_id == run_id, owned_by(RUNS, owner))
        .with_for_update()
    ).one_or_none()
    if run is None:
        raise not_found(run_id)
    if run.thread_id != thread_id:
        raise NotFound(f"run {run_id!r} not found in thread {thread_id!r}")
    return store_messages(
        connection,
        messages,
        user_id=owner.user_id,
        tenant_id=run.tenant_id,
        thread_id=thread_id,
        run_id=run_id,
        now=now,
    )


def complete_with_messages(
    connection: Connection,
    change: Transition,
    messages: Sequence[NewMessage],
    *,
    owner: Owner,
    run_id: str,
    now: datetime,
) -> tuple[Row[Any], tuple[str, ...]]:
    """Move the run as ``change`` asks and store its ``messages`` in the same transaction.

    The run and the states it entered; a refused move stores nothing.
    """
    record, entered = move_run(connection, change, owner=owner, run_id=run_id, now=now)
    store_messages(
        connection,
        messages,
        user_id=owner.user_id,
        tenant_id=record.tenant_id,
        thread_id=record.thread_id,
        run_id=run_id,
        now=now,
    )
    return record, entered


def store_messages(
    connection: Connection,
    messages: Sequence[NewMessage],
    *,
    user_id: str,
    tenant_id: str,
    thread_id: str,
    run_id: str,
    now: datetime,
) -> int:
    """Store run ``run_id``'s messages unless it has some already; how many were stored.

    The caller has checked that the run exists, is the owner's and belongs to
    ``thread_id`` (``append_messages`` by reading it, ``TransitionRun`` by
    updating it in the same transaction).
    """
    if not messages:
        return 0
    stored = connection.execute(
        select(THREAD_MESSAGES.c.id).where(THREAD_MESSAGES.c.run_id == run_id).limit(1)
    ).first()
    if stored is not None:
        return 0
    connection.execute(
        THREAD_MESSAGES.insert(),
        [
            {
                "user_id": user_id,
                "tenant_id": tenant_id,
                "thread_id": thread_id,
                "run_id": run_id,
                "role": message.role,
                "content": message.content,
                "tool_calls_json": message.tool_calls_json,
                "tool_call_id": message.tool_call_id,
                "name": message.name,
                "created_at": now,
            }
            for message in messages
        ],
    )
    return len(messages)


def _summaries(owner: Owner, *, thread_id: str | None = None) -> tuple[Select[Any], ColumnElement[Any]]:
    """Each thread of ``owner`` (or only ``thread_id``) with its times, and the ``updated_at`` column."""
    runs_filter = [owned_by(RUNS, owner)]
    messages_filter = [owned_by(THREAD_MESSAGES, owner)]
    if thread_id is not None:
        runs_filter.append(RUNS.c.thread_id == thread_id)
        messages_filter.append(THREAD_MESSAGES.c.thread_id == thread_id)
    runs = (
        select(
            RUNS.c.thread_id,
            func.min(RUNS.c.created_at).label("created_at"),
            func.max(RUNS.c.updated_at).label("runs_updated_at"),
        )
        .where(*runs_filter)
        .group_by(RUNS.c.thread_id)
        .subquery("thread_runs")
    )
    messages = (
        select(
            THREAD_MESSAGES.c.thread_id, func.max(THREAD_MESSAGES.c.created_at).label("messages_updated_at")
        )
        .where(*messages_filter)
        .group_by(THREAD_MESSAGES.c.thread_id)
        .subquery("thread_messages_times")
    )
    updated_at = type_coerce(
        case(
            (messages.c.messages_updated_at > runs.c.runs_updated_at, messages.c.messages_updated_at),
            else_=runs.c.runs_updated_at,
        ),
        UTCDateTime(),
    )
    statement = select(
        runs.c.thread_id,
        type_coerce(runs.c.created_at, UTCDateTime()).label("created_at"),
        updated_at.label("updated_at"),
    ).select_from(runs.outerjoin(messages, messages.c.thread_id == runs.c.thread_id))
    return statement, updated_at


def _details(connection: Connection, owner: Owner, rows: Sequence[Row[Any]]) -> list[ThreadSummary]:
    """``rows`` of :func:`_summaries` completed with the newest run's state and the title."""
    thread_ids = [row.thread_id for row in rows]
    if not thread_ids:
        return []
    ranked = (
        select(
            RUNS.c.thread_id,
            RUNS.c.state,
            func.row_number()
            .over(partition_by=RUNS.c.thread_id, order_by=(RUNS.c.created_at.desc(), RUNS.c.run_id.desc()))
            .label("rank"),
        )
        .where(owned_by(RUNS, owner), RUNS.c.thread_id.in_(thread_ids))
        .subquery("ranked_runs")
    )
    newest = {
        row.thread_id: row
        for row in connection.execute(select(ranked.c.thread_id, ranked.c.state).where(ranked.c.rank == 1))
    }
    first_user = (
        select(THREAD_MESSAGES.c.thread_id, func.min(THREAD_MESSAGES.c.id).label("first_id"))
        .where(
            owned_by(THREAD_MESSAGES, owner),
            THREAD_MESSAGES.c.thread_id.in_(thread_ids),
            THREAD_MESSAGES.c.role == USER_ROLE,
        )
        .group_by(THREAD_MESSAGES.c.thread_id)
        .subquery("first_user_messages")
    )
    titles = {
        row.thread_id: title_of(row.start)
        for row in connection.execute(
            select(
                THREAD_MESSAGES.c.thread_id,
                func.substr(THREAD_MESSAGES.c.content, 1, TITLE_SOURCE_LENGTH).label("start"),
            ).join(first_user, THREAD_MESSAGES.c.id == first_user.c.first_id)
        )
    }
    return [
        ThreadSummary(
            thread_id=row.thread_id,
            user_id=owner.user_id,
            tenant_id=owner.tenant_id,
            created_at=row.created_at,
            updated_at=row.updated_at,
            last_run_state=newest[row.thread_id].state,
            title=titles.get(row.thread_id, ""),
        )
        for row in rows
    ]


def title_of(content: str) -> str:
    """The start of ``content`` on one line, at most :data:`TITLE_LENGTH` characters (``…`` when cut)."""
    line = " ".join(content.split())
    if len(line) <= TITLE_LENGTH:
        return line
    return line[: TITLE_LENGTH - 1].rstrip() + "…"


def list_threads(
    connection: Connection, *, owner: Owner, limit: int, after: ThreadCursor | None = None
) -> ThreadPage:
    """The caller's threads, most recently updated first, at most ``limit`` of them after ``after``."""
    statement, updated_at = _summaries(owner)
    thread_id = statement.selected_columns.thread_id
    if after is not None:
        statement = statement.where(
            or_(
                updated_at < after.updated_at,
                and_(updated_at == after.updated_at, thread_id < after.thread_id),
            )
        )
    statement = statement.order_by(updated_at.desc(), thread_id.desc()).limit(limit + 1)
    rows = list(connection.execute(statement).all())
    threads = _details(connection, owner, rows[:limit])
    if len(rows) <= limit:
        return ThreadPage(threads=threads, next_cursor=None)
    last = threads[-1]
    return ThreadPage(
        threads=threads, next_cursor=ThreadCursor(updated_at=last.updated_at, thread_id=last.thread_id)
    )


def get_thread(
    connection: Connection, *, owner: Owner, thread_id: str, max_messages: int = 0
) -> tuple[ThreadSummary, list[Row[Any]]]:
    """The thread and its messages, oldest first (only the newest ``max_messages`` when positive)."""
    statement, _ = _summaries(owner, thread_id=thread_id)
    rows = list(connection.execute(statement).all())
    if not rows:
        raise thread_not_found(thread_id)
    (summary,) = _details(connection, owner, rows)
    messages = select(THREAD_MESSAGES).where(
        owned_by(THREAD_MESSAGES, owner), THREAD_MESSAGES.c.thread_id == thread_id
    )
    if max_messages > 0:
        newest = connection.execute(messages.order_by(THREAD_MESSAGES.c.id.desc()).limit(max_messages)).all()
        return summary, list(reversed(newest))
    return summary, list(connection.execute(messages.order_by(THREAD_MESSAGES.c.id)).all())


def delete_thread(connection: Connection, *, owner: Owner, thread_id: str, now: datetime) -> tuple[int, int]:
    """Delete the thread's input requests, runs and messages; return how many runs and messages.

    ``NOT_FOUND`` for a thread without runs of the caller, ``FAILED_PRECONDITION``
    while one of its runs is live (nothing is deleted then).
    """
    of_thread = and_(owned_by(RUNS, owner), RUNS.c.thread_id == thread_id)
    if connection.execute(select(RUNS.c.run_id).where(of_thread).limit(1)).first() is None:
        raise thread_not_found(thread_id)
    # Admissions take this lock too: no run of the thread can start living until we commit.
    lock_owner(connection, owner.user_id, now=now)
    live = connection.execute(
        select(RUNS.c.run_id, RUNS.c.state).where(of_thread, RUNS.c.state.in_(LIVE_STATES)).limit(1)
    ).first()
    if live is not None:
        raise FailedPrecondition(
            f"thread {thread_id!r} has a {live.state} run {live.run_id!r}; cancel it or wait for it to end"
        )
    connection.execute(
        delete(INPUT_REQUESTS).where(
            INPUT_REQUESTS.c.user_id == owner.user_id,
            INPUT_REQUESTS.c.run_id.in_(select(RUNS.c.run_id).where(of_thread)),
        )
    )
    runs = connection.execute(delete(RUNS).where(of_thread, RUNS.c.state.in_(TERMINAL_STATES)))
    messages = connection.execute(
        delete(THREAD_MESSAGES).where(
            owned_by(THREAD_MESSAGES, owner), THREAD_MESSAGES.c.thread_id == thread_id
        )
    )
    return int(runs.rowcount or 0), int(messages.rowcount or 0)
