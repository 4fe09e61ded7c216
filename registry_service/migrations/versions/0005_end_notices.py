"""Run-end notices: the terminal event a run's end owes its owner, in the death-notice outbox.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-07

Written by hand and frozen: it must not import the models, which will move on.
Runs that ended before this revision owe nothing: both columns start NULL.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.add_column(sa.Column("end_event_type", sa.String(32), nullable=True))
        batch.add_column(sa.Column("end_payload_json", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.drop_column("end_payload_json")
        batch.drop_column("end_event_type")
