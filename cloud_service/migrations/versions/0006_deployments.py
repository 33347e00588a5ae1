"""several models per device: one deployment per (device, model)

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-05 10:00:00.000000

A device's current and previous version move from ``devices`` into ``deployments``, one
row per model the device runs. Each device that runs a version today gets one row for that
version's model (its previous version is kept when it is of the same model). Going down,
each device gets back the versions of its first deployment (its primary model); the others
are dropped.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import cloud_service.db

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

_devices = sa.table("devices", sa.column("id", sa.Integer),
                    sa.column("current_version_id", sa.Integer),
                    sa.column("previous_version_id", sa.Integer))
_versions = sa.table("model_versions", sa.column("id", sa.Integer),
                     sa.column("model_id", sa.Integer))
_deployments = sa.table("deployments", sa.column("id", sa.Integer),
                        sa.column("device_id", sa.Integer), sa.column("model_id", sa.Integer),
                        sa.column("current_version_id", sa.Integer),
                        sa.column("previous_version_id", sa.Integer),
                        sa.column("updated_at", cloud_service.db.UTCDateTime()))


def upgrade() -> None:
    op.create_table(
        "deployments",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("device_id", sa.Integer(), nullable=False),
        sa.Column("model_id", sa.Integer(), nullable=False),
        sa.Column("current_version_id", sa.Integer(), nullable=True),
        sa.Column("previous_version_id", sa.Integer(), nullable=True),
        sa.Column("phase", sa.String(length=20), nullable=True),
        sa.Column("updated_at", cloud_service.db.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["device_id"], ["devices.id"],
                                name=op.f("fk_deployments_device_id_devices"),
                                ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["model_id"], ["models.id"],
                                name=op.f("fk_deployments_model_id_models"),
                                ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["current_version_id"], ["model_versions.id"],
                                name=op.f("fk_deployments_current_version_id_model_versions"),
                                ondelete="SET NULL"),
        sa.ForeignKeyConstraint(["previous_version_id"], ["model_versions.id"],
                                name=op.f("fk_deployments_previous_version_id_model_versions"),
                                ondelete="SET NULL"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_deployments")),
        sa.UniqueConstraint("device_id", "model_id", name=op.f("uq_deployments_device_id")),
    )
    op.create_index(op.f("ix_deployments_device_id"), "deployments", ["device_id"])
    op.create_index(op.f("ix_deployments_model_id"), "deployments", ["model_id"])
    _backfill()
    with op.batch_alter_table("devices", schema=None) as batch_op:
        batch_op.add_column(sa.Column("multi_model", sa.Boolean(), nullable=False,
                                      server_default=sa.false()))
        batch_op.drop_constraint(batch_op.f("fk_devices_previous_version_id_model_versions"),
                                 type_="foreignkey")
        batch_op.drop_constraint(batch_op.f("fk_devices_current_version_id_model_versions"),
                                 type_="foreignkey")
        batch_op.drop_column("previous_version_id")
        batch_op.drop_column("current_version_id")


def _backfill() -> None:
    """One deployment per device that runs a version: that version's model."""
    prev = sa.alias(_versions, "prev")
    rows = op.get_bind().execute(
        sa.select(_devices.c.id, _versions.c.model_id, _devices.c.current_version_id,
                  _devices.c.previous_version_id, prev.c.model_id)
        .join(_versions, _versions.c.id == _devices.c.current_version_id)
        .outerjoin(prev, prev.c.id == _devices.c.previous_version_id)
        .order_by(_devices.c.id)).all()
    now = cloud_service.db.utcnow()
    if rows:
        op.get_bind().execute(_deployments.insert(), [
            {"device_id": dev, "model_id": model, "current_version_id": cur,
             "previous_version_id": previous if prev_model == model else None,
             "updated_at": now}
            for dev, model, cur, previous, prev_model in rows])


def downgrade() -> None:
    with op.batch_alter_table("devices", schema=None) as batch_op:
        batch_op.add_column(sa.Column("current_version_id", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("previous_version_id", sa.Integer(), nullable=True))
        batch_op.create_foreign_key(batch_op.f("fk_devices_current_version_id_model_versions"),
                                    "model_versions", ["current_version_id"], ["id"],
                                    ondelete="SET NULL")
        batch_op.create_foreign_key(batch_op.f("fk_devices_previous_version_id_model_versions"),
                                    "model_versions", ["previous_version_id"], ["id"],
                                    ondelete="SET NULL")
        batch_op.drop_column("multi_model")
    conn = op.get_bind()
    first = sa.select(sa.func.min(_deployments.c.id)).group_by(_deployments.c.device_id)
    rows = conn.execute(sa.select(_deployments.c.device_id, _deployments.c.current_version_id,
                                  _deployments.c.previous_version_id)
                        .where(_deployments.c.id.in_(first))).all()
    for dev, cur, previous in rows:
        conn.execute(_devices.update().where(_devices.c.id == dev)
                     .values(current_version_id=cur, previous_version_id=previous))
    op.drop_index(op.f("ix_deployments_model_id"), table_name="deployments")
    op.drop_index(op.f("ix_deployments_device_id"), table_name="deployments")
    op.drop_table("deployments")
