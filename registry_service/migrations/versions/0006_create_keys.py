"""Create keys: CreateRun's optional idempotency key, one run per owner and key.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-07

Written by hand and frozen: it must not import the models, which will move on.
Runs created before this revision have no key (NULL), and NULL keys never collide.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | Sequence[str] | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.add_column(sa.Column("create_key", sa.String(64), nullable=True))
        batch.create_index("ux_runs_owner_create_key", ["tenant_id", "user_id", "create_key"], unique=True)


def downgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.drop_index("ux_runs_owner_create_key")
        batch.drop_column("create_key")
