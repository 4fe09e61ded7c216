"""Create the runs and run_owners tables.

Revision ID: 0001
Revises:
Create Date: 2025-11-21

Written by hand and frozen: it must not import the models, which will move on.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

STATES = (
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
STRATEGIES = ("reject", "enqueue", "interrupt")


def _in_list(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


def upgrade() -> None:
    op.create_table(
        "runs",
        sa.Column("run_id", sa.String(256), nullable=False),
        sa.Column("user_id", sa.String(256), nullable=False),
        sa.Column("tenant_id", sa.String(256), nullable=False),
        sa.Column("thread_id", sa.String(256), nullable=False),
        sa.Column("agent", sa.String(128), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_heartbeat_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("error_code", sa.String(64), nullable=True),
        sa.Column("error_message", sa.Text(), nullable=True),
        sa.Column("result_json", sa.Text(), nullable=True),
        sa.Column("input_json", sa.Text(), nullable=False),
        sa.Column("version", sa.BigInteger(), nullable=False),
        sa.Column("executor_id", sa.String(256), nullable=False),
        sa.Column("cancel_requested", sa.Boolean(), nullable=False),
        sa.Column("multitask_strategy", sa.String(16), nullable=False),
        sa.Column("timeout_seconds", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("run_id", name=op.f("pk_runs")),
        sa.CheckConstraint(_in_list("state", STATES), name=op.f("ck_runs_state")),
        sa.CheckConstraint(
            _in_list("multitask_strategy", STRATEGIES), name=op.f("ck_runs_multitask_strategy")
        ),
    )
    op.create_index("ix_runs_user_id_state", "runs", ["user_id", "state"])
    op.create_index("ix_runs_user_id_created_at_run_id", "runs", ["user_id", "created_at", "run_id"])
    op.create_index("ix_runs_user_id_thread_id_state", "runs", ["user_id", "thread_id", "state"])
    op.create_table(
        "run_owners",
        sa.Column("user_id", sa.String(256), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("user_id", name=op.f("pk_run_owners")),
    )


def downgrade() -> None:
    op.drop_table("run_owners")
    op.drop_index("ix_runs_user_id_thread_id_state", table_name="runs")
    op.drop_index("ix_runs_user_id_created_at_run_id", table_name="runs")
    op.drop_index("ix_runs_user_id_state", table_name="runs")
    op.drop_table("runs")
