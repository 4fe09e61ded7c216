"""Waiting runs, the questions they ask, and threads' messages.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01

Written by hand and frozen: it must not import the models, which will move on.
The runs' state check now allows ``waiting``; ``input_requests`` keeps what
runs ask their owners (and the answers), ``thread_messages`` the conversation
of each thread. Existing runs are untouched. A downgrade ends the runs that
are still waiting as ``failed``: the older schema has no state for them.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

OLD_STATES = (
    "pending",
    "starting",
    "running",
    "completing",
    "completed",
    "failed",
    "timeout",
    "cancelled",
    "dead",
)
# The live states first, as the models list them; the check's text is the same either way.
NEW_STATES = (
    "pending",
    "starting",
    "running",
    "completing",
    "waiting",
    "completed",
    "failed",
    "timeout",
    "cancelled",
    "dead",
)
KINDS = ("input", "approval")
ROLES = ("user", "assistant", "tool")


def _in_list(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


def _state_check(states: tuple[str, ...]) -> None:
    with op.batch_alter_table("runs") as batch:
        batch.drop_constraint(op.f("ck_runs_state"), type_="check")
        batch.create_check_constraint(op.f("ck_runs_state"), _in_list("state", states))


def upgrade() -> None:
    _state_check(NEW_STATES)
    op.create_table(
        "input_requests",
        sa.Column("run_id", sa.String(256), nullable=False),
        sa.Column("request_id", sa.String(256), nullable=False),
        sa.Column("user_id", sa.String(256), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("prompt", sa.Text(), nullable=False),
        sa.Column("schema_json", sa.Text(), nullable=False),
        sa.Column("tool_name", sa.String(128), nullable=False),
        sa.Column("call_id", sa.String(256), nullable=False),
        sa.Column("parameters_json", sa.Text(), nullable=False),
        sa.Column("run_version", sa.BigInteger(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("response_json", sa.Text(), nullable=True),
        sa.Column("answered_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("run_id", "request_id", name=op.f("pk_input_requests")),
        sa.CheckConstraint(_in_list("kind", KINDS), name=op.f("ck_input_requests_kind")),
    )
    op.create_table(
        "thread_messages",
        sa.Column(
            "id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False, autoincrement=True
        ),
        sa.Column("user_id", sa.String(256), nullable=False),
        sa.Column("tenant_id", sa.String(256), nullable=False),
        sa.Column("thread_id", sa.String(256), nullable=False),
        sa.Column("run_id", sa.String(256), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("content", sa.Text(), nullable=False),
        sa.Column("tool_calls_json", sa.Text(), nullable=False),
        sa.Column("tool_call_id", sa.String(256), nullable=False),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_thread_messages")),
        sa.CheckConstraint(_in_list("role", ROLES), name=op.f("ck_thread_messages_role")),
    )
    op.create_index(
        "ix_thread_messages_user_id_thread_id_id", "thread_messages", ["user_id", "thread_id", "id"]
    )
    op.create_index("ix_thread_messages_run_id", "thread_messages", ["run_id"])


def downgrade() -> None:
    op.drop_index("ix_thread_messages_run_id", table_name="thread_messages")
    op.drop_index("ix_thread_messages_user_id_thread_id_id", table_name="thread_messages")
    op.drop_table("thread_messages")
    op.drop_table("input_requests")
    now = datetime.now(UTC)
    op.get_bind().execute(
        sa.text(
            "UPDATE runs SET state = 'failed', error_code = 'input_unavailable',"
            " error_message = 'the registry was downgraded while the run waited for input',"
            " finished_at = :now, updated_at = :now, version = version + 1, cancel_requested = false"
            " WHERE state = 'waiting'"
        ).bindparams(sa.bindparam("now", now, type_=sa.DateTime(timezone=True)))
    )
    _state_check(OLD_STATES)
