"""Stable JSON shapes for `--json` output (documented in README; extend, never rename)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from mailgate.db.models import (
    Agent,
    BouncingAddress,
    Editor,
    Event,
    Inbound,
    Outbox,
    Site,
    Ticket,
)


def iso(value: datetime | None) -> str | None:
    return value.isoformat().replace("+00:00", "Z") if value else None


def ticket_summary(t: Ticket) -> dict[str, Any]:
    return {
        "ref": t.ref, "state": t.state, "priority": t.priority, "kind": t.kind,
        "site_id": t.site_id, "requester": t.requester, "subject": t.subject,
        "created_at": iso(t.created_at), "updated_at": iso(t.updated_at),
        "first_response_due": iso(t.first_response_due), "close_at": iso(t.close_at),
        "linked_to": t.linked_to.ref if t.linked_to else None,
    }


def ticket_detail(session: Session, t: Ticket) -> dict[str, Any]:
    out = ticket_summary(t)
    out["requester_name"] = t.requester_name
    flag = session.get(BouncingAddress, t.requester)
    out["requester_bouncing"] = ({"since": iso(flag.first_at), "count": flag.count,
                                  "status": flag.last_status} if flag else None)
    out["first_response_at"] = iso(t.first_response_at)
    out["language"] = t.language
    out["messages"] = [{
        "direction": m.direction, "kind": m.kind, "from": m.from_addr,
        "to": [a for a in m.to_addrs.split(",") if a],
        "cc": [a for a in m.cc_addrs.split(",") if a],
        "subject": m.subject, "message_id": m.message_id, "created_at": iso(m.created_at),
        "inbound_id": m.inbound_id, "body": m.body_text,
        "attachments": [{"filename": a.filename, "content_type": a.content_type,
                         "size": a.size, "sha256": a.sha256, "content_id": a.content_id}
                        for a in m.attachments],
    } for m in t.messages]
    out["events"] = [{"at": iso(e.at), "kind": e.kind, "detail": e.detail}
                     for e in session.execute(select(Event).where(Event.ticket_id == t.id)
                                              .order_by(Event.id)).scalars()]
    return out


def inbound_summary(r: Inbound) -> dict[str, Any]:
    return {
        "id": r.id, "message_id": r.message_id, "channel": r.channel,
        "received_at": iso(r.received_at), "status": r.status, "kind": r.kind,
        "ticket": r.ticket.ref if r.ticket else None, "reason": r.reason, "size": r.size,
    }


def inbound_detail(r: Inbound) -> dict[str, Any]:
    out = inbound_summary(r)
    out.update(envelope_from=r.envelope_from,
               envelope_to=[a for a in r.envelope_to.split(",") if a],
               digest=r.digest, attempts=r.attempts, processed_at=iso(r.processed_at),
               trail=r.trail or [], authenticity=r.authenticity or None)
    return out


def outbox_row(o: Outbox) -> dict[str, Any]:
    return {
        "id": o.id, "kind": o.kind, "status": o.status, "to": o.recipients.split(","),
        "subject": o.subject, "message_id": o.message_id, "attempts": o.attempts,
        "next_attempt_at": iso(o.next_attempt_at), "sent_at": iso(o.sent_at),
        "last_error": o.last_error, "created_at": iso(o.created_at),
        "dsn_status": o.dsn_status or None,
    }


def site_row(s: Site) -> dict[str, Any]:
    return {"site_id": s.site_id, "name": s.name, "editors": [e.email for e in s.editors]}


def editor_row(e: Editor) -> dict[str, Any]:
    return {"site_id": e.site_id, "email": e.email, "name": e.name, "phone": e.phone,
            "language": e.language or None}


def agent_row(a: Agent) -> dict[str, Any]:
    return {"email": a.email, "name": a.name}
