"""`mailgate stats`: how the desk did over the last days, from the rows it keeps.

Everything counts what happened inside the window ``[now - days, now]`` of the app clock:
mails received in it, tickets created in it, closings in it. First-response times are
wall-clock minutes from the ticket's creation to its first relayed answer — not business
time, so an answer on Monday to a Friday-evening mail counts the weekend (the SLA share,
which compares with the business-time due, does not).
"""

from __future__ import annotations

import statistics
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from mailgate.db.models import Event, Inbound, Ticket
from mailgate.views import iso, table

SWEEP = "sweep"  # the `by` of a state change made by the lifecycle sweep


def _share(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


def inbound(session: Session, since: datetime) -> list[dict[str, Any]]:
    """Mails received since ``since`` per channel, kind (what the worker made of it) and
    status."""
    stmt = (select(Inbound.channel, Inbound.kind, Inbound.status, func.count())
            .where(Inbound.received_at >= since)
            .group_by(Inbound.channel, Inbound.kind, Inbound.status)
            .order_by(Inbound.channel, Inbound.kind, Inbound.status))
    return [{"channel": channel, "kind": kind or None, "status": status, "count": count}
            for channel, kind, status, count in session.execute(stmt)]


def tickets(session: Session, since: datetime, now: datetime) -> dict[str, Any]:
    """Tickets created since ``since``: per state now, and their first responses."""
    rows = session.execute(
        select(Ticket.state, Ticket.created_at, Ticket.first_response_due,
               Ticket.first_response_at).where(Ticket.created_at >= since)).all()
    by_state: dict[str, int] = {}
    for state, *_ in rows:
        by_state[state] = by_state.get(state, 0) + 1
    in_time = late = unanswered = running = 0
    minutes: list[float] = []
    for state, created, due, answered in rows:
        if answered is not None:
            minutes.append((answered - created).total_seconds() / 60)
        if due is None:
            continue
        if answered is not None:
            if answered <= due:
                in_time += 1
            else:
                late += 1
        elif state != "closed" and now <= due:
            running += 1  # not due yet: counts neither way
        else:
            unanswered += 1
    decided = in_time + late + unanswered
    return {
        "created": len(rows),
        "by_state": dict(sorted(by_state.items())),
        "first_response": {
            "with_due": decided + running, "answered_in_time": in_time,
            "answered_late": late, "unanswered": unanswered, "running": running,
            "share_in_time": _share(in_time, decided),
            "answered": len(minutes),
            "median_minutes": round(statistics.median(minutes), 1) if minutes else None,
        },
    }


def closings(session: Session, since: datetime) -> dict[str, Any]:
    """Tickets closed since ``since`` (each counted once, by its last closing) and how many
    of those the sweep closed (no reply from the editor in time)."""
    events = session.execute(
        select(Event.ticket_id, Event.detail).where(Event.kind == "ticket.state",
                                                    Event.at >= since)
        .order_by(Event.id)).all()
    last: dict[int, str] = {}
    for ticket_id, detail in events:
        if ticket_id is not None and (detail or {}).get("to") == "closed":
            last[ticket_id] = str(detail.get("by", ""))
    by_sweep = sum(by == SWEEP for by in last.values())
    return {"closed": len(last), "by_sweep": by_sweep,
            "share_by_sweep": _share(by_sweep, len(last))}


def stats(session: Session, now: datetime, days: int) -> dict[str, Any]:
    since = now - timedelta(days=days)
    return {"days": days, "since": iso(since), "until": iso(now),
            "inbound": inbound(session, since),
            "tickets": tickets(session, since, now),
            "closed": closings(session, since)}


def _percent(share: float | None) -> str:
    return "-" if share is None else f"{share * 100:.1f}%"


def text(data: dict[str, Any]) -> str:
    t, fr, closed = data["tickets"], data["tickets"]["first_response"], data["closed"]
    median = fr["median_minutes"]
    since, until = (data[k][:16].replace("T", " ") for k in ("since", "until"))
    window = f"{since} to {until} UTC"
    lines = [f"last {data['days']} days: {window}", "",
             "mails received",
             table([{**r, "kind": r["kind"] or "-"} for r in data["inbound"]],
                   ["channel", "kind", "status", "count"]),
             "", f"tickets created: {t['created']}",
             table([{"state": s, "count": n} for s, n in t["by_state"].items()],
                   ["state", "count"]),
             "", "first response",
             table([
                 {"measure": "answered within the SLA",
                  "value": f"{_percent(fr['share_in_time'])} ({fr['answered_in_time']} of "
                           f"{fr['answered_in_time'] + fr['answered_late'] + fr['unanswered']}"
                           f"; {fr['answered_late']} late, {fr['unanswered']} unanswered, "
                           f"{fr['running']} not due yet)"},
                 {"measure": "median first-response time",
                  "value": "-" if median is None else
                           f"{_duration(median)} (wall clock, {fr['answered']} answered)"},
                 {"measure": "closed by the sweep",
                  "value": f"{_percent(closed['share_by_sweep'])} ({closed['by_sweep']} of "
                           f"{closed['closed']} closed)"},
             ], ["measure", "value"], width=100)]
    return "\n".join(lines)


def _duration(minutes: float) -> str:
    if minutes < 60:
        return f"{minutes:.0f} min"
    hours, rest = divmod(round(minutes), 60)
    return f"{hours} h {rest:02d} min" if hours < 48 else f"{minutes / 1440:.1f} days"
