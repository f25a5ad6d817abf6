"""retention: indexes on ticket.closed_at, inbound.ticket_id, outbox.ticket_id and
attachment.sha256; closed_at filled in for tickets closed before 0004

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-28
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Tickets closed before 0004 have no closed_at. Their last state change is the move to
    # closed (set_state is the one way a state changes), else the last update.
    op.execute(sa.text(
        "UPDATE ticket SET closed_at = (SELECT max(event.at) FROM event"
        " WHERE event.ticket_id = ticket.id AND event.kind = 'ticket.state')"
        " WHERE state = 'closed' AND closed_at IS NULL"))
    op.execute(sa.text(
        "UPDATE ticket SET closed_at = updated_at WHERE state = 'closed' AND closed_at IS NULL"))
    with op.batch_alter_table("ticket", schema=None) as batch_op:
        batch_op.create_index("ix_ticket_closed_at", ["closed_at"], unique=False)
    # A ticket's mails, in and out, without walking either table.
    with op.batch_alter_table("inbound", schema=None) as batch_op:
        batch_op.create_index("ix_inbound_ticket_id", ["ticket_id"], unique=False)
    with op.batch_alter_table("outbox", schema=None) as batch_op:
        batch_op.create_index("ix_outbox_ticket_id", ["ticket_id"], unique=False)
    # Who else uses a blob, without walking every attachment.
    with op.batch_alter_table("attachment", schema=None) as batch_op:
        batch_op.create_index("ix_attachment_sha256", ["sha256"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("attachment", schema=None) as batch_op:
        batch_op.drop_index("ix_attachment_sha256")
    with op.batch_alter_table("outbox", schema=None) as batch_op:
        batch_op.drop_index("ix_outbox_ticket_id")
    with op.batch_alter_table("inbound", schema=None) as batch_op:
        batch_op.drop_index("ix_inbound_ticket_id")
    with op.batch_alter_table("ticket", schema=None) as batch_op:
        batch_op.drop_index("ix_ticket_closed_at")
