"""rollout safety: rollback on automatic abort, model replacement, version signatures

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-30 19:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Server defaults fill the rows of rollouts created before these settings existed.
    with op.batch_alter_table("rollouts", schema=None) as batch_op:
        batch_op.add_column(sa.Column("rollback_on_abort", sa.Boolean(), nullable=False,
                                      server_default=sa.true()))
        batch_op.add_column(sa.Column("replace_model", sa.Boolean(), nullable=False,
                                      server_default=sa.false()))
    with op.batch_alter_table("model_versions", schema=None) as batch_op:
        batch_op.add_column(sa.Column("signature", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("model_versions", schema=None) as batch_op:
        batch_op.drop_column("signature")
    with op.batch_alter_table("rollouts", schema=None) as batch_op:
        batch_op.drop_column("replace_model")
        batch_op.drop_column("rollback_on_abort")
