"""ticket clock: waiting since, reminders sent, next SLA alert, closed at

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-27
"""

import sqlalchemy as sa
from alembic import op

import mailgate.db.models

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("ticket", schema=None) as batch_op:
        batch_op.add_column(sa.Column("waiting_since", mailgate.db.models.UTCDateTime(),
                                      nullable=True))
        batch_op.add_column(sa.Column("reminders_sent", sa.Integer(), nullable=False,
                                      server_default="0"))
        batch_op.add_column(sa.Column("sla_alert_at", mailgate.db.models.UTCDateTime(),
                                      nullable=True))
        batch_op.add_column(sa.Column("closed_at", mailgate.db.models.UTCDateTime(),
                                      nullable=True))
        batch_op.create_index("ix_ticket_sla_alert_at", ["sla_alert_at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("ticket", schema=None) as batch_op:
        batch_op.drop_index("ix_ticket_sla_alert_at")
        for column in ("closed_at", "sla_alert_at", "reminders_sent", "waiting_since"):
            batch_op.drop_column(column)
