"""Stable JSON shapes for `--json` output (documented in README; extend, never rename)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from mailgate.db.models import (
    Agent,
    BouncingAddress,
    Editor,
    Event,
    Inbound,
    Message,
    Outbox,
    Site,
    Ticket,
)


def iso(value: datetime | None) -> str | None:
    return value.isoformat().replace("+00:00", "Z") if value else None


def sla(t: Ticket, now: datetime) -> str:
    """The first-response promise: "met", "breached", or "running" (not answered, not due)."""
    due = t.first_response_due
    if due is None:
        return "met"
    if t.first_response_at is not None:
        return "met" if t.first_response_at <= due else "breached"
    if t.state == "closed":
        return "met" if (t.closed_at or now) <= due else "breached"
    return "breached" if now > due else "running"


def ticket_summary(t: Ticket, now: datetime) -> dict[str, Any]:
    return {
        "ref": t.ref, "state": t.state, "priority": t.priority, "kind": t.kind,
        "site_id": t.site_id, "requester": t.requester, "subject": t.subject,
        "created_at": iso(t.created_at), "updated_at": iso(t.updated_at),
        "first_response_due": iso(t.first_response_due), "close_at": iso(t.close_at),
        "linked_to": t.linked_to.ref if t.linked_to else None,
        "assignee": t.assignee,
        "first_response_at": iso(t.first_response_at), "sla": sla(t, now),
        "remind_at": iso(t.remind_at),
    }


def request_fields(t: Ticket) -> dict[str, Any]:
    """What the request holds, as kept on the ticket, and what it still lacks."""
    return {"urls": list(t.urls or []), "phone": t.phone or None,
            "contact_name": t.contact_name or None, "has_error_message": t.has_error_message,
            "missing": list(t.missing or [])}


def ticket_detail(session: Session, t: Ticket, now: datetime) -> dict[str, Any]:
    out = ticket_summary(t, now)
    out.update(request_fields(t))
    out["linked_from"] = list(session.execute(
        select(Ticket.ref).where(Ticket.linked_to_id == t.id).order_by(Ticket.number)).scalars())
    out["requester_name"] = t.requester_name
    flag = session.get(BouncingAddress, t.requester)
    out["requester_bouncing"] = ({"since": iso(flag.first_at), "count": flag.count,
                                  "status": flag.last_status} if flag else None)
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


# --- queries behind the listings ---------------------------------------------------------

def tickets(session: Session, now: datetime, state: str | None = None,
            assigned: str | None = None, overdue: bool = False,
            priority: str | None = None) -> list[dict[str, Any]]:
    stmt = select(Ticket).order_by(Ticket.number)
    if state:
        stmt = stmt.where(Ticket.state == state)
    if priority:
        stmt = stmt.where(Ticket.priority == priority)
    if assigned:
        stmt = stmt.where(Ticket.assignee == assigned)
    if overdue:
        # Unanswered past the first-response due time, and still open to an answer.
        stmt = stmt.where(Ticket.first_response_at.is_(None), Ticket.first_response_due < now,
                          Ticket.state.not_in(("resolved", "closed")))
    return [ticket_summary(t, now) for t in session.execute(stmt).scalars()]


def ticket_by_ref(session: Session, ref: str) -> Ticket | None:
    return session.execute(select(Ticket).where(Ticket.ref == ref)).scalar_one_or_none()


def agent_by_email(session: Session, email: str) -> Agent | None:
    return session.execute(select(Agent).where(Agent.email == email)).scalar_one_or_none()


def inbound_rows(session: Session, status: str | None = None) -> list[dict[str, Any]]:
    stmt = select(Inbound).order_by(Inbound.id)
    if status:
        stmt = stmt.where(Inbound.status == status)
    return [inbound_summary(r) for r in session.execute(stmt).scalars()]


def outbox_rows(session: Session, status: str | None = None) -> list[dict[str, Any]]:
    stmt = select(Outbox).order_by(Outbox.id)
    if status:
        stmt = stmt.where(Outbox.status == status)
    return [outbox_row(o) for o in session.execute(stmt).scalars()]


def sites(session: Session) -> list[dict[str, Any]]:
    return [site_row(s) for s in session.execute(select(Site).order_by(Site.site_id)).scalars()]


def editors(session: Session, site_id: str | None = None) -> list[dict[str, Any]]:
    stmt = select(Editor).order_by(Editor.site_id, Editor.slot)
    if site_id:
        stmt = stmt.where(Editor.site_id == site_id)
    return [editor_row(e) for e in session.execute(stmt).scalars()]


def agents(session: Session) -> list[dict[str, Any]]:
    return [agent_row(a) for a in session.execute(select(Agent).order_by(Agent.email)).scalars()]


# --- text views (the human side of the same data) ----------------------------------------

TICKET_COLUMNS = ["ref", "state", "priority", "site_id", "requester", "assignee", "created_at",
                  "subject"]
INBOUND_COLUMNS = ["id", "received_at", "channel", "status", "ticket", "message_id", "reason"]
OUTBOX_COLUMNS = ["id", "kind", "status", "dsn_status", "to", "attempts", "next_attempt_at",
                  "subject", "last_error"]
EDITOR_COLUMNS = ["site_id", "email", "name", "phone", "language"]
AGENT_COLUMNS = ["email", "name"]


def table(rows: list[dict[str, Any]], cols: list[str], width: int = 60) -> str:
    """Aligned columns, long cells cut at ``width``; lists joined with commas."""
    if not rows:
        return "(none)"

    def cell(value: Any) -> str:
        if value is None:
            return ""
        return ", ".join(map(str, value)) if isinstance(value, list) else str(value)

    cells = [[cell(r.get(c))[:width] for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    lines = ["  ".join(c.upper().ljust(w) for c, w in zip(cols, widths, strict=True))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip()
              for row in cells]
    return "\n".join(lines)


def site_table(rows: list[dict[str, Any]]) -> str:
    return table(rows, ["site_id", "name", "editors"])


def ticket_text(t: dict[str, Any]) -> str:
    lines = [f"{t['ref']}  {t['subject']}",
             f"  state {t['state']}  priority {t['priority']}  kind {t['kind']}  "
             f"site {t['site_id'] or '-'}",
             f"  requester {t['requester_name']} <{t['requester']}>"
             + (f"  phone {t['phone']}" if t["phone"] else ""),
             f"  created {t['created_at']}  first response due {t['first_response_due']}"]
    lines.append(f"  first response {t['first_response_at'] or '-'} (SLA {t['sla']})"
                 + (f"  assigned to {t['assignee']}" if t["assignee"] else ""))
    if t["close_at"]:
        lines.append(f"  closes {t['close_at']}"
                     + (f"  next reminder {t['remind_at']}" if t["remind_at"] else ""))
    if t["urls"]:
        lines.append(f"  urls {' '.join(t['urls'])}")
    if t["missing"]:
        lines.append(f"  still missing: {', '.join(t['missing'])}")
    if t["linked_to"]:
        lines.append(f"  linked to {t['linked_to']}")
    if t["linked_from"]:
        lines.append(f"  linked from {', '.join(t['linked_from'])}")
    if t["requester_bouncing"]:
        b = t["requester_bouncing"]
        lines.append(f"  WARNING: mail to {t['requester']} bounces (status {b['status']}, "
                     f"{b['count']}x since {b['since']})")
    for m in t["messages"]:
        arrow = "<-" if m["direction"] == "in" else "->"
        lines.append(f"\n{arrow} {m['created_at']} {m['kind']} from {m['from']} "
                     f"to {', '.join(m['to'])}")
        lines.append(f"   Subject: {m['subject']}")
        lines.extend(f"   | {ln}" for ln in (m["body"] or "").splitlines()[:40])
        lines.extend(f"   [attachment] {a['filename']} ({a['content_type']}, {a['size']} bytes)"
                     for a in m["attachments"])
    return "\n".join(lines)


def inbound_text(d: dict[str, Any]) -> str:
    lines = [f"inbound {d['id']}: {d['status']}" + (f" -> {d['ticket']}" if d["ticket"] else ""),
             f"  message-id {d['message_id']}", f"  channel {d['channel']}  received "
             f"{d['received_at']}  processed {d['processed_at']}  attempts {d['attempts']}",
             f"  envelope {d['envelope_from']} -> {', '.join(d['envelope_to'])}",
             f"  kind {d['kind'] or '-'}  reason {d['reason'] or '-'}", "  decision trail:"]
    lines += [f"    {i}. {s['rule']}: {s['result']}" + (f" — {s['reason']}" if s.get("reason")
                                                        else "")
              for i, s in enumerate(d["trail"], 1)] or ["    (not processed yet)"]
    return "\n".join(lines)


# --- search ----------------------------------------------------------------------------------

SEARCH_LIMIT = 50


def like_pattern(text: str) -> str:
    """``%text%`` for LIKE with ``\\`` as escape: ``%``, ``_`` and ``\\`` in the text are
    matched literally."""
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def search_tickets(session: Session, now: datetime, text: str,
                   limit: int = SEARCH_LIMIT) -> list[dict[str, Any]]:
    """Tickets whose subject, requester, ref or any message's body contains ``text``,
    ignoring case (ILIKE on PostgreSQL; lower() LIKE lower() on SQLite, which folds ASCII
    letters only); newest first."""
    pattern = like_pattern(text)

    def has(column: Any) -> Any:
        return column.ilike(pattern, escape="\\")

    in_bodies = select(Message.ticket_id).where(has(Message.body_text))
    stmt = (select(Ticket)
            .where(or_(has(Ticket.subject), has(Ticket.requester), has(Ticket.ref),
                       Ticket.id.in_(in_bodies)))
            .order_by(Ticket.number.desc()).limit(limit))
    return [ticket_summary(t, now) for t in session.execute(stmt).scalars()]
