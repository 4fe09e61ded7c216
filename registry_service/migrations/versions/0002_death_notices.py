"""Death detection: the agent_death outbox columns and the sweep's indexes.

Revision ID: 0002
Revises: 0001
Create Date: 2025-12-02

Written by hand and frozen: it must not import the models, which will move on.
Runs that were already dead before this revision get ``death_notice_pending``
false: nobody is told about them after the fact.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.add_column(
            sa.Column("death_notice_pending", sa.Boolean(), nullable=False, server_default=sa.false())
        )
        batch.add_column(sa.Column("death_notice_claimed_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("death_notified_at", sa.DateTime(timezone=True), nullable=True))
    op.create_index("ix_runs_state_updated_at", "runs", ["state", "updated_at"])
    op.create_index(
        "ix_runs_death_notice_pending", "runs", ["death_notice_pending", "death_notice_claimed_at"]
    )


def downgrade() -> None:
    op.drop_index("ix_runs_death_notice_pending", table_name="runs")
    op.drop_index("ix_runs_state_updated_at", table_name="runs")
    with op.batch_alter_table("runs") as batch:
        batch.drop_column("death_notified_at")
        batch.drop_column("death_notice_claimed_at")
        batch.drop_column("death_notice_pending")
