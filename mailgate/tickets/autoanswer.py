"""The loop brake: at most N automatic mails per address per hour (RFC 3834 §2 asks
responders to limit their answers; Zammad does the same per recipient).

Every automatic mail, sent or suppressed, leaves a row, so `inbound show` and agents can
see why an editor got no acknowledgement."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from mailgate.db.models import AutoAnswer, Event

WINDOW = timedelta(hours=1)


def allow(session: Session, address: str, kind: str, now: datetime, per_hour: int,
          inbound_id: int | None, ticket_id: int | None = None) -> bool:
    sent = session.execute(
        select(func.count()).select_from(AutoAnswer).where(
            AutoAnswer.address == address, AutoAnswer.at > now - WINDOW,
            AutoAnswer.suppressed.is_(False))).scalar_one()
    ok = sent < per_hour
    session.add(AutoAnswer(address=address, at=now, kind=kind, suppressed=not ok,
                           inbound_id=inbound_id))
    if not ok:
        session.add(Event(at=now, kind="answer.suppressed", ticket_id=ticket_id,
                          inbound_id=inbound_id,
                          detail={"to": address, "kind": kind,
                                  "reason": f"{per_hour} automatic mails an hour reached"}))
    return ok
