"""The owner filter of every registry query: ``(tenant_id, user_id)``.

A run, an input request and a thread message belong to the user *of a
tenant* (:class:`runwire_common.owners.Owner`): equal ``user_id`` values in
two tenants are two owners, and one never finds the other's rows. An empty
``tenant_id`` is the tenant of tokens without one (and of every row written
before tenants counted).

Input requests have no tenant column: a request belongs to its run, so a
query for one also requires its run to be the caller's (``run_id`` is the
runs' primary key).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import ColumnElement, Table, and_, bindparam, exists

from registry_service.models import INPUT_REQUESTS, RUNS
from runwire_common.owners import Owner


def run_of_owner() -> tuple[ColumnElement[bool], ...]:
    """Runs of the owner given as the bound parameters of :func:`owner_parameters`."""
    return (RUNS.c.user_id == bindparam("match_user_id"), RUNS.c.tenant_id == bindparam("match_tenant_id"))


def input_of_owner() -> tuple[ColumnElement[bool], ...]:
    """Input requests of the owner given as the bound parameters of :func:`owner_parameters`."""
    return (
        INPUT_REQUESTS.c.user_id == bindparam("match_user_id"),
        exists().where(
            RUNS.c.run_id == INPUT_REQUESTS.c.run_id, RUNS.c.tenant_id == bindparam("match_tenant_id")
        ),
    )


def owner_parameters(owner: Owner) -> dict[str, Any]:
    """The values of ``match_user_id`` and ``match_tenant_id``."""
    return {"match_user_id": owner.user_id, "match_tenant_id": owner.tenant_id}


def owned_by(table: Table, owner: Owner) -> ColumnElement[bool]:
    """Rows of ``table`` (which has both columns) that belong to ``owner``."""
    return and_(table.c.user_id == owner.user_id, table.c.tenant_id == owner.tenant_id)
