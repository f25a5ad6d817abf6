"""what a request holds on the ticket; text digests for the loop brake

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-27
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("ticket", schema=None) as batch_op:
        batch_op.add_column(sa.Column("urls", sa.JSON(), nullable=False, server_default="[]"))
        batch_op.add_column(sa.Column("phone", sa.String(length=50), nullable=False,
                                      server_default=""))
        batch_op.add_column(sa.Column("contact_name", sa.String(length=200), nullable=False,
                                      server_default=""))
        batch_op.add_column(sa.Column("has_error_message", sa.Boolean(), nullable=False,
                                      server_default=sa.false()))
        batch_op.add_column(sa.Column("missing", sa.JSON(), nullable=False,
                                      server_default="[]"))
        batch_op.create_index("ix_ticket_priority", ["priority"], unique=False)
    with op.batch_alter_table("auto_answer", schema=None) as batch_op:
        batch_op.add_column(sa.Column("digest", sa.String(length=64), nullable=False,
                                      server_default=""))


def downgrade() -> None:
    with op.batch_alter_table("auto_answer", schema=None) as batch_op:
        batch_op.drop_column("digest")
    with op.batch_alter_table("ticket", schema=None) as batch_op:
        batch_op.drop_index("ix_ticket_priority")
        for column in ("missing", "has_error_message", "contact_name", "phone", "urls"):
            batch_op.drop_column(column)
