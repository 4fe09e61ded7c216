"""Human in the loop: a run asks its owner something, waits, and resumes with the answer.

:func:`request_input` moves a ``running`` run to ``waiting`` and records the
question; :func:`answer_input` records the answer and moves the run back to
``running``. Both are one transaction around one conditional ``UPDATE`` of
the run (``state`` and, for the answer, ``version``), so the database picks
exactly one winner among racing callers; the run is read only to say why
nothing moved.

A request stores ``run_version``, the run's version right after it started
waiting for it. Since only :func:`answer_input` takes a run out of
``waiting`` back to ``running`` (``TransitionRun`` refuses that move, see
:mod:`registry_service.states`), a waiting run has exactly one unanswered
request, the one with its current version: its *pending* request, shown as
``Run.pending_input``. Answering resumes the run only at that version, so an
answer can never resume a later wait it was not meant for.

Two answers racing: both find the request unanswered, the first ``UPDATE …
WHERE answered_at IS NULL`` takes the row (PostgreSQL row lock; SQLite's one
writer), the second re-checks once the first committed, matches nothing and
is told the request was already answered. A run cancelled, timed out or
declared dead while waiting keeps its request unanswered; answering it then
is ``FAILED_PRECONDITION`` (the run is no longer waiting).

Everything here is SQLAlchemy Core on one synchronous ``Connection``; every
query is scoped by the owner, ``(tenant_id, user_id)``: another owner's request is ``NOT_FOUND``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from types import MappingProxyType
from typing import Any

from sqlalchemy import Executable, Row, bindparam, select, update
from sqlalchemy.engine import Connection

from registry_service.models import INPUT_REQUESTS, RUNS
from registry_service.ownership import input_of_owner, owner_parameters, run_of_owner
from registry_service.runs import RunPage, find_run, get_run, not_found
from registry_service.states import RUNNING, WAITING, is_terminal
from runwire_common.errors import AlreadyExists, FailedPrecondition, NotFound
from runwire_common.owners import Owner


@dataclass(frozen=True)
class NewInput:
    """A validated ``RequestInput``: what the run asks its owner."""

    request_id: str
    kind: str
    prompt: str = ""
    schema_json: str = ""
    tool_name: str = ""
    call_id: str = ""
    parameters_json: str = ""
    expires_at: datetime | None = None


def _move(to_state: str, *, source: str, with_version: bool) -> Executable:
    statement = (
        update(RUNS)
        .where(
            RUNS.c.run_id == bindparam("match_run_id"),
            *run_of_owner(),
            RUNS.c.state == source,
        )
        .values(state=to_state, version=RUNS.c.version + 1, updated_at=bindparam("now"))
        .returning(*RUNS.c)
    )
    if with_version:
        statement = statement.where(RUNS.c.version == bindparam("expected_version"))
    return statement


# Built once (the module-state scan trusts immutable containers only, hence the mapping).
STATEMENTS: Mapping[str, Executable] = MappingProxyType(
    {
        "wait": _move(WAITING, source=RUNNING, with_version=False),
        "resume": _move(RUNNING, source=WAITING, with_version=True),
        "find": select(INPUT_REQUESTS).where(
            INPUT_REQUESTS.c.run_id == bindparam("match_run_id"),
            INPUT_REQUESTS.c.request_id == bindparam("match_request_id"),
            *input_of_owner(),
        ),
        "insert": INPUT_REQUESTS.insert().returning(*INPUT_REQUESTS.c),
        "answer": update(INPUT_REQUESTS)
        .where(
            INPUT_REQUESTS.c.run_id == bindparam("match_run_id"),
            INPUT_REQUESTS.c.request_id == bindparam("match_request_id"),
            *input_of_owner(),
            INPUT_REQUESTS.c.answered_at.is_(None),
        )
        .values(response_json=bindparam("response_json"), answered_at=bindparam("now"))
        .returning(*INPUT_REQUESTS.c),
    }
)


def input_not_found(request_id: str, run_id: str) -> NotFound:
    return NotFound(f"input request {request_id!r} of run {run_id!r} not found")


def find_input(connection: Connection, *, owner: Owner, run_id: str, request_id: str) -> Row[Any] | None:
    parameters = {"match_run_id": run_id, "match_request_id": request_id, **owner_parameters(owner)}
    return connection.execute(STATEMENTS["find"], parameters).one_or_none()


def request_input(
    connection: Connection, new: NewInput, *, owner: Owner, run_id: str, now: datetime
) -> tuple[Row[Any], Row[Any]]:
    """Move the running run to ``waiting`` and store ``new``; return the run and the stored request.

    ``NOT_FOUND`` for a missing (or foreign) run, ``ALREADY_EXISTS`` when the
    run already used ``new.request_id``, ``FAILED_PRECONDITION`` when the run
    is not ``running``. A refusal changes nothing (the transaction rolls back).
    """
    parameters = {"match_run_id": run_id, **owner_parameters(owner), "now": now}
    waiting = connection.execute(STATEMENTS["wait"], parameters).one_or_none()
    if waiting is None:
        raise _why_not_waiting(connection, new, owner=owner, run_id=run_id)
    # Under the run's row lock: no other request of this run can be inserted meanwhile.
    if find_input(connection, owner=owner, run_id=run_id, request_id=new.request_id) is not None:
        raise _duplicate(new, run_id)
    stored = connection.execute(
        STATEMENTS["insert"],
        {
            "run_id": run_id,
            "request_id": new.request_id,
            "user_id": owner.user_id,
            "kind": new.kind,
            "prompt": new.prompt,
            "schema_json": new.schema_json,
            "tool_name": new.tool_name,
            "call_id": new.call_id,
            "parameters_json": new.parameters_json,
            "run_version": waiting.version,
            "created_at": now,
            "expires_at": new.expires_at,
            "response_json": None,
            "answered_at": None,
        },
    ).one()
    return waiting, stored


def _duplicate(new: NewInput, run_id: str) -> AlreadyExists:
    return AlreadyExists(f"run {run_id!r} already asked input request {new.request_id!r}")


def _why_not_waiting(
    connection: Connection, new: NewInput, *, owner: Owner, run_id: str
) -> NotFound | AlreadyExists | FailedPrecondition:
    run = find_run(connection, owner=owner, run_id=run_id)
    if run is None:
        return not_found(run_id)
    if find_input(connection, owner=owner, run_id=run_id, request_id=new.request_id) is not None:
        return _duplicate(new, run_id)
    if is_terminal(run.state):
        return FailedPrecondition(f"run is already {run.state}")
    return FailedPrecondition(f"a {run.state} run cannot wait for input; only a {RUNNING} run can")


def answer_input(
    connection: Connection, *, owner: Owner, run_id: str, request_id: str, response_json: str, now: datetime
) -> tuple[Row[Any], Row[Any]]:
    """Record the answer to the run's pending request and resume the run; return both.

    ``NOT_FOUND`` for an unknown request (or another user's run),
    ``FAILED_PRECONDITION`` when the request was already answered or the run
    is no longer waiting for it. A refusal changes nothing.
    """
    request = find_input(connection, owner=owner, run_id=run_id, request_id=request_id)
    if request is None:
        raise input_not_found(request_id, run_id)
    already = FailedPrecondition(f"input request {request_id!r} was already answered")
    if request.answered_at is not None:
        raise already
    parameters = {
        "match_run_id": run_id,
        "match_request_id": request_id,
        **owner_parameters(owner),
        "response_json": response_json,
        "now": now,
    }
    answered = connection.execute(STATEMENTS["answer"], parameters).one_or_none()
    if answered is None:  # another answer won since we read the request
        raise already
    resumed = connection.execute(
        STATEMENTS["resume"],
        {
            "match_run_id": run_id,
            **owner_parameters(owner),
            "now": now,
            "expected_version": request.run_version,
        },
    ).one_or_none()
    if resumed is None:  # raising rolls the answer back
        run = get_run(connection, owner=owner, run_id=run_id)
        raise FailedPrecondition(f"run is {run.state}, no longer waiting for input request {request_id!r}")
    return resumed, answered


def get_input(
    connection: Connection, *, owner: Owner, run_id: str, request_id: str
) -> tuple[Row[Any], Row[Any], Row[Any] | None]:
    """The request (with its answer once given), the run now, and the run's pending request."""
    run = get_run(connection, owner=owner, run_id=run_id)
    request = find_input(connection, owner=owner, run_id=run_id, request_id=request_id)
    if request is None:
        raise input_not_found(request_id, run_id)
    if is_pending(request, run):
        return request, run, request
    return request, run, pending_input(connection, run)


def is_pending(request: Row[Any], run: Row[Any]) -> bool:
    return run.state == WAITING and request.answered_at is None and request.run_version == run.version


def pending_input(connection: Connection, run: Row[Any]) -> Row[Any] | None:
    """The request a waiting ``run`` waits for (``None`` for a run that is not waiting)."""
    if run.state != WAITING:
        return None
    return pending_inputs(connection, [run]).get(run.run_id)


def pending_inputs(connection: Connection, runs: Iterable[Row[Any]]) -> Mapping[str, Row[Any]]:
    """The pending requests of the waiting ones among ``runs``, by run_id (one query, or none)."""
    waiting = {run.run_id: run for run in runs if run.state == WAITING}
    if not waiting:
        return {}
    rows = connection.execute(
        select(INPUT_REQUESTS).where(
            INPUT_REQUESTS.c.run_id.in_(sorted(waiting)), INPUT_REQUESTS.c.answered_at.is_(None)
        )
    ).all()
    return {row.run_id: row for row in rows if is_pending(row, waiting[row.run_id])}


def with_pending(connection: Connection, run: Row[Any]) -> tuple[Row[Any], Row[Any] | None]:
    """``run`` and its pending request (for ``Run.pending_input``); a query only for a waiting run."""
    return run, pending_input(connection, run)


def with_pendings(connection: Connection, page: RunPage) -> tuple[RunPage, Mapping[str, Row[Any]]]:
    """``page`` and the pending requests of its waiting runs, by run_id."""
    return page, pending_inputs(connection, page.runs)
