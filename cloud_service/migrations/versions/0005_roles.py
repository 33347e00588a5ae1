"""roles on API tokens; who revoked a device and who set its tags

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02 10:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import cloud_service.db

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

#: Rollout events that a user asked for (the others are the scheduler's).
USER_ACTIONS = ("pause", "resume", "abort", "rollback")


def upgrade() -> None:
    # Tokens made before roles existed had every right: the server default keeps them admin.
    with op.batch_alter_table("api_tokens", schema=None) as batch_op:
        batch_op.add_column(sa.Column("role", sa.String(length=20), nullable=False,
                                      server_default="admin"))
    with op.batch_alter_table("devices", schema=None) as batch_op:
        batch_op.add_column(sa.Column("revoked_by", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("tags_updated_by", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("tags_updated_at",
                                      cloud_service.db.UTCDateTime(timezone=True),
                                      nullable=True))
        batch_op.create_foreign_key(batch_op.f("fk_devices_revoked_by_users"), "users",
                                    ["revoked_by"], ["id"], ondelete="SET NULL")
        batch_op.create_foreign_key(batch_op.f("fk_devices_tags_updated_by_users"), "users",
                                    ["tags_updated_by"], ["id"], ondelete="SET NULL")
    _name_users_in_events()


def _name_users_in_events() -> None:
    """Rollout actions stored the user's id only; add the name the API shows (``by``)."""
    conn = op.get_bind()
    users = sa.table("users", sa.column("id", sa.Integer), sa.column("name", sa.String))
    events = sa.table("rollout_events", sa.column("id", sa.Integer),
                      sa.column("kind", sa.String), sa.column("details", sa.JSON))
    names = dict(conn.execute(sa.select(users.c.id, users.c.name)).all())
    rows = conn.execute(sa.select(events.c.id, events.c.details)
                        .where(events.c.kind.in_(USER_ACTIONS))).all()
    for event_id, details in rows:
        user_id = (details or {}).get("user_id")
        if user_id in names and "user_name" not in details:
            conn.execute(events.update().where(events.c.id == event_id)
                         .values(details={**details, "user_name": names[user_id]}))


def downgrade() -> None:
    # Without roles every token has every right: revoke the viewer and operator tokens so
    # that none gains power. Event details keep ``user_name`` (unknown keys are ignored).
    tokens = sa.table("api_tokens", sa.column("role", sa.String),
                      sa.column("revoked_at", cloud_service.db.UTCDateTime()))
    op.get_bind().execute(tokens.update()
                          .where(tokens.c.role != "admin", tokens.c.revoked_at.is_(None))
                          .values(revoked_at=cloud_service.db.utcnow()))
    with op.batch_alter_table("devices", schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f("fk_devices_tags_updated_by_users"),
                                 type_="foreignkey")
        batch_op.drop_constraint(batch_op.f("fk_devices_revoked_by_users"), type_="foreignkey")
        batch_op.drop_column("tags_updated_at")
        batch_op.drop_column("tags_updated_by")
        batch_op.drop_column("revoked_by")
    with op.batch_alter_table("api_tokens", schema=None) as batch_op:
        batch_op.drop_column("role")
