"""The ``queued`` flag: which pending runs wait behind another run of their thread.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-21

Written by hand and frozen: it must not import the models, which will move on.
Existing rows keep ``queued`` NULL, which the registry treats as queued: their
``pending → starting`` keeps the full thread check, exactly as before.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.add_column(sa.Column("queued", sa.Boolean(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.drop_column("queued")
