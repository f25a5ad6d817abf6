"""The transactional outbox: outgoing mail is a row written with the change that caused it."""

from __future__ import annotations

from sqlalchemy.orm import Session

from mailgate.db import eventlog
from mailgate.db.models import Outbox
from mailgate.db.status import OutboxStatus
from mailgate.outbound.compose import Outgoing, build


def enqueue(session: Session, out: Outgoing, kind: str, *, ticket_id: int | None,
            inbound_id: int | None) -> Outbox:
    """Adds the row to the session (written at its next flush, its id known from then on)
    and records its event (written at the commit, db/eventlog.py)."""
    assert out.date is not None, "outgoing mail is dated by the clock that enqueues it"
    row = Outbox(
        ticket_id=ticket_id, inbound_id=inbound_id, kind=kind, sender=out.from_addr,
        recipients=",".join(out.recipients), message_id=out.message_id, subject=out.subject,
        raw=build(out), status=OutboxStatus.PENDING, attempts=0, next_attempt_at=out.date,
        lease_until=None, last_error="", created_at=out.date, sent_at=None)
    session.add(row)
    eventlog.record(session, out.date, f"outbox.{kind}", ticket_id=ticket_id,
                    inbound_id=inbound_id, outbox=row,
                    detail={"to": row.recipients, "message_id": row.message_id})
    return row
