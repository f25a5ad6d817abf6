"""ticket numbers from a sequence on PostgreSQL

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-27

The counter row made every worker wait for the transaction of the one that took the last
number: with several worker processes (``[worker] processes``) they took turns. A sequence
hands out numbers without a lock; a rolled-back transaction leaves a gap in the numbers.
SQLite, with one writer at a time, keeps the counter row.
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

SEQUENCE = "ticket_number_seq"


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(sa.text(f"CREATE SEQUENCE {SEQUENCE} AS bigint"))
    # Past every number given so far, by the counter or already on a ticket.
    op.execute(sa.text(
        f"SELECT setval('{SEQUENCE}', greatest(last, 1), last > 0) FROM"
        " (SELECT greatest((SELECT coalesce(max(value), 0) FROM counter WHERE name = 'ticket'),"
        "                  (SELECT coalesce(max(number), 0) FROM ticket)) AS last) AS given"))


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(sa.text(
        "UPDATE counter SET value = greatest(value, (SELECT coalesce(max(number), 0) FROM ticket))"
        " WHERE name = 'ticket'"))
    op.execute(sa.text(f"DROP SEQUENCE {SEQUENCE}"))
