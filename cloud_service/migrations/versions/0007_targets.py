"""jobs that target devices; what a version was built for

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01 04:00:00.000000

``jobs.target``: the target as submitted and resolved (``{"profile": NAME}``, or the
device ids a ``{"device": ID}`` or ``{"devices": {"tags": [...]}}`` target named at
submission). ``model_versions.built_for``: the hardware class, runtime, runtime version
range and memory a version was built for (``cloud_service.services.compat``). Both stay
null on existing rows: a job without a target used its profile, a version without
``built_for`` is matched by its profile as before.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("target", sa.JSON(), nullable=True))
    with op.batch_alter_table("model_versions") as batch:
        batch.add_column(sa.Column("built_for", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("model_versions") as batch:
        batch.drop_column("built_for")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("target")
