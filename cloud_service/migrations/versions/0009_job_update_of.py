"""jobs that recompress within a deployed version's plan

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-01 04:20:00.000000

``jobs.update_of_id``: the version whose plan (kept channels, INT8 layers, quantization
parameters) the job keeps, so that devices running it download a small delta; null for a
job that chooses afresh (every job from before); a plain column, as ``jobs.version_id``
(``model_versions.job_id`` refers to jobs already; a foreign key back would make a cycle).
``jobs.allow_restructure``: whether the job may choose afresh when that plan cannot meet
the constraints (false before).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("update_of_id", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("allow_restructure", sa.Boolean(), nullable=False,
                                   server_default=sa.false()))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("allow_restructure")
        batch.drop_column("update_of_id")
