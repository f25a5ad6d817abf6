"""Bounces of our own mail: the outbox row is marked failed with the DSN's status and the
address is flagged, so agents see why an editor never got an answer."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from mailgate.db import eventlog
from mailgate.db.models import BouncingAddress, Inbound, Outbox
from mailgate.db.status import OutboxStatus
from mailgate.mail.addresses import is_valid_address


def record_bounce(session: Session, inbound: Inbound, *, original_ids: tuple[str, ...],
                  recipients: tuple[str, ...], status: str, now: datetime) -> list[Outbox]:
    rows = list(session.execute(
        select(Outbox).where(Outbox.message_id.in_(original_ids)))
        .scalars()) if original_ids else []
    addresses = {a.lower() for a in recipients if is_valid_address(a)}
    for row in rows:
        row.status = OutboxStatus.FAILED
        row.dsn_status = status[:20]
        row.last_error = f"bounced ({status or 'no status'}), inbound {inbound.id}"
        if not addresses:
            addresses.update(row.recipients.split(","))
        eventlog.record(session, now, "outbox.bounced", ticket_id=row.ticket_id,
                        inbound_id=inbound.id, outbox_id=row.id,
                        detail={"status": status, "to": row.recipients})
    if rows:
        for address in sorted(addresses):
            flag = session.get(BouncingAddress, address)
            if flag is None:
                session.add(BouncingAddress(address=address, first_at=now, last_at=now, count=1,
                                            last_status=status[:20], last_inbound_id=inbound.id))
            else:
                flag.last_at, flag.count = now, flag.count + 1
                flag.last_status, flag.last_inbound_id = status[:20], inbound.id
    return rows
