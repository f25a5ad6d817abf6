"""The transactional outbox: outgoing mail is a row written with the change that caused it."""

from __future__ import annotations

from sqlalchemy.orm import Session

from mailgate.db import deferred, eventlog
from mailgate.db.models import Outbox
from mailgate.db.status import OutboxStatus
from mailgate.outbound.compose import Outgoing, build


def enqueue(session: Session, out: Outgoing, kind: str, *, ticket_id: int | None,
            inbound_id: int | None) -> deferred.Written:
    """Records the row and its event, both written at the commit (db/deferred.py); the
    returned handle has the row's id from then on."""
    assert out.date is not None, "outgoing mail is dated by the clock that enqueues it"
    recipients = ",".join(out.recipients)
    written = deferred.Written("message_id", out.message_id)
    deferred.add(session, Outbox, {
        "ticket_id": ticket_id, "inbound_id": inbound_id, "kind": kind,
        "sender": out.from_addr, "dsn_status": "", "recipients": recipients,
        "message_id": out.message_id, "subject": out.subject, "raw": build(out),
        "status": OutboxStatus.PENDING, "attempts": 0, "next_attempt_at": out.date,
        "lease_until": None, "last_error": "", "created_at": out.date, "sent_at": None},
        written)
    eventlog.record(session, out.date, f"outbox.{kind}", ticket_id=ticket_id,
                    inbound_id=inbound_id, outbox_id=written,
                    detail={"to": recipients, "message_id": out.message_id})
    return written
