"""auto answers, bounces, authenticity, blob store

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27
"""

import sqlalchemy as sa
from alembic import op

import mailgate.db.models

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "auto_answer",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("address", sa.String(length=254), nullable=False),
        sa.Column("at", mailgate.db.models.UTCDateTime(), nullable=False),
        sa.Column("kind", sa.String(length=30), nullable=False),
        sa.Column("suppressed", sa.Boolean(), nullable=False),
        sa.Column("inbound_id", sa.Integer(), nullable=True),
        sa.ForeignKeyConstraint(
            ["inbound_id"], ["inbound.id"], name=op.f("fk_auto_answer_inbound_id_inbound")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_auto_answer")),
    )
    with op.batch_alter_table("auto_answer", schema=None) as batch_op:
        batch_op.create_index("ix_auto_answer_address_at", ["address", "at"], unique=False)

    op.create_table(
        "bouncing_address",
        sa.Column("address", sa.String(length=254), nullable=False),
        sa.Column("first_at", mailgate.db.models.UTCDateTime(), nullable=False),
        sa.Column("last_at", mailgate.db.models.UTCDateTime(), nullable=False),
        sa.Column("count", sa.Integer(), nullable=False),
        sa.Column("last_status", sa.String(length=20), nullable=False),
        sa.Column("last_inbound_id", sa.Integer(), nullable=True),
        sa.ForeignKeyConstraint(
            ["last_inbound_id"],
            ["inbound.id"],
            name=op.f("fk_bouncing_address_last_inbound_id_inbound"),
        ),
        sa.PrimaryKeyConstraint("address", name=op.f("pk_bouncing_address")),
    )
    with op.batch_alter_table("blob", schema=None) as batch_op:
        batch_op.alter_column("data", existing_type=sa.LargeBinary(), nullable=True)
        batch_op.add_column(
            sa.Column("location", sa.String(length=10), nullable=False, server_default="database")
        )

    with op.batch_alter_table("inbound", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("authenticity", sa.String(length=200), nullable=False, server_default="")
        )

    with op.batch_alter_table("outbox", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("dsn_status", sa.String(length=20), nullable=False, server_default="")
        )

    with op.batch_alter_table("ticket", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("first_response_at", mailgate.db.models.UTCDateTime(), nullable=True)
        )



def downgrade() -> None:
    with op.batch_alter_table("ticket", schema=None) as batch_op:
        batch_op.drop_column("first_response_at")

    with op.batch_alter_table("outbox", schema=None) as batch_op:
        batch_op.drop_column("dsn_status")

    with op.batch_alter_table("inbound", schema=None) as batch_op:
        batch_op.drop_column("authenticity")

    with op.batch_alter_table("blob", schema=None) as batch_op:
        batch_op.drop_column("location")
        batch_op.alter_column("data", existing_type=sa.LargeBinary(), nullable=False)

    op.drop_table("bouncing_address")
    with op.batch_alter_table("auto_answer", schema=None) as batch_op:
        batch_op.drop_index("ix_auto_answer_address_at")

    op.drop_table("auto_answer")
