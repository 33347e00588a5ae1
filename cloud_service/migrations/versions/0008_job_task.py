"""what a job's model does: classify or detect

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-01 04:10:00.000000

``jobs.task``: ``classify`` (every job from before: they compressed classifiers) or
``detect`` (object detection: a COCO, YOLO or built-in detection dataset, the drop
constraint in points of mAP@0.5).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("task", sa.String(20), nullable=False,
                                   server_default="classify"))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("task")
