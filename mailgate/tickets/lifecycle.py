"""The ticket's clock: reminders, closing, "handled" mail and first-response alerts.

Each sweep reads the rows that are due through the index of their due column, in batches,
claims them (``FOR UPDATE SKIP LOCKED`` on PostgreSQL; SQLite's single writer), writes the mail
into the outbox and moves the due time in the same transaction: a mail is sent exactly once
however often the sweep runs, on however many instances, and after a crash between sweeps
(docs/design.md §1.5). ``mailgate tick --now`` and the daemon's scheduler run the same
:func:`sweep`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Select, select
from sqlalchemy.orm import InstrumentedAttribute, Session, sessionmaker

from mailgate.db.engine import transaction
from mailgate.db.models import Message, Site, Ticket
from mailgate.mail.references import TicketRef
from mailgate.outbound.compose import Outgoing
from mailgate.tickets import autoanswer, duetimes, notify, retention, service
from mailgate.tickets.desk import Desk
from mailgate.tickets.states import State

SWEEPER = "sweep"


@dataclass
class SweepResult:
    closed: int = 0
    reminded: int = 0
    warned: int = 0
    breached: int = 0
    # Retention ([retention]): tickets whose raw mails / attachments were purged. Not in
    # total, which counts the mails a sweep wrote.
    raw_purged: int = 0
    attachments_purged: int = 0

    @property
    def total(self) -> int:
        return self.closed + self.reminded + self.warned + self.breached


DUE_COLUMNS: dict[str, InstrumentedAttribute[datetime | None]] = {
    "close_at": Ticket.close_at, "remind_at": Ticket.remind_at,
    "sla_alert_at": Ticket.sla_alert_at}


def due_query(column: InstrumentedAttribute[datetime | None], now: datetime,
              batch: int) -> Select[Ticket]:
    """The rows due in ``column``, claimed. Only the due column in the WHERE: it is set only
    in the states it belongs to (duetimes.entered), and a state filter here made SQLite's
    planner walk the state index — every waiting ticket — instead of the due rows."""
    return (select(Ticket).where(column.is_not(None), column <= now)
            .order_by(column, Ticket.id).limit(batch).with_for_update(skip_locked=True))


def _due(session: Session, column: InstrumentedAttribute[datetime | None], now: datetime,
         batch: int) -> list[Ticket]:
    return list(session.execute(due_query(column, now, batch)).scalars())


def _last_question(session: Session, ticket: Ticket) -> str:
    return session.execute(
        select(Message.body_text).where(Message.ticket_id == ticket.id,
                                        Message.kind == "agent-reply")
        .order_by(Message.id.desc()).limit(1)).scalar_one_or_none() or ""


def to_editor(session: Session, desk: Desk, ticket: Ticket, kind: str, now: datetime,
              **context: object) -> bool:
    """An automatic mail of the ticket's clock to its requester, in the editor's thread and
    language, under the loop brake that guards acknowledgements. True if sent."""
    s = desk.settings
    if not autoanswer.allow(session, ticket.requester, kind, now,
                            s.access.auto_replies_per_hour, None, ticket.id):
        return False
    ref = TicketRef(s.desk.ticket_prefix, ticket.number)
    language, body = desk.renderer.render(
        kind, ticket.language, ref=str(ref), desk=s.desk, ticket=ticket,
        name=ticket.requester_name, **context)
    in_reply_to, refs = service.editor_thread(session, ticket)
    out = Outgoing(
        from_name=s.desk.name, from_addr=s.desk.address, to=(ticket.requester,),
        subject=f"{ref.tag} {ticket.subject}", body=body, message_id=desk.ids.make(ref),
        in_reply_to=in_reply_to, references=refs, auto_submitted="auto-generated",
        language=language, loop_marker=s.desk.address, date=now)
    service.send(session, out, kind, ticket, None, body)
    return True


def send_handled(session: Session, desk: Desk, ticket: Ticket, now: datetime) -> bool:
    """The "handled" mail when a ticket is resolved with no answer text to carry it."""
    days = desk.settings.lifecycle.auto_close_working_days
    return to_editor(session, desk, ticket, "handled", now, body="", agent_name="",
                     days=days, close_on=_local(desk, ticket.close_at or now))


def _local(desk: Desk, moment: datetime) -> datetime:
    return moment.astimezone(desk.settings.tz)


def _close(session: Session, desk: Desk, now: datetime, batch: int, r: SweepResult) -> int:
    rows = _due(session, Ticket.close_at, now, batch)
    for t in rows:
        was = State(t.state)
        if was not in (State.WAITING, State.RESOLVED):
            t.close_at = None  # left over from a state that has no closing: nothing is due
            continue
        service.set_state(session, desk, t, State.CLOSED, None, now, by=SWEEPER)
        if was == State.WAITING:
            to_editor(session, desk, t, "closing", now)
        elif desk.settings.lifecycle.notify_on_close:
            to_editor(session, desk, t, "closed", now)
        r.closed += 1
    return len(rows)


def _remind(session: Session, desk: Desk, now: datetime, batch: int, r: SweepResult) -> int:
    rows = _due(session, Ticket.remind_at, now, batch)
    lc = desk.settings.lifecycle
    for t in rows:
        if t.state != State.WAITING:
            t.remind_at = None
            continue
        sent = to_editor(session, desk, t, "reminder", now,
                         question=_last_question(session, t),
                         missing=list(t.missing or []), number=t.reminders_sent + 1,
                         close_on=_local(desk, t.close_at or now))
        if not sent:
            # The loop brake held it back (many tickets of one editor due at once): try
            # again when the hour has passed, unless the closing comes first.
            later = now + autoanswer.WINDOW
            t.remind_at = later if t.close_at and later < t.close_at else None
            continue
        t.reminders_sent += 1
        t.remind_at = duetimes.next_reminder(desk.calendar, lc, t, now)
        service.event(session, now, "ticket.reminder", t, None, number=t.reminders_sent,
                      by=SWEEPER)
        r.reminded += 1
    return len(rows)


def _sla(session: Session, desk: Desk, now: datetime, batch: int, r: SweepResult) -> int:
    rows = _due(session, Ticket.sla_alert_at, now, batch)
    s = desk.settings
    for t in rows:
        if t.first_response_at is not None or t.state in (State.RESOLVED, State.CLOSED):
            t.sla_alert_at = None
            continue
        site = session.get(Site, t.site_id) if t.site_id else None
        due = t.first_response_due or now
        breached = now >= due
        to = notify.recipients(session, desk, set(), t)
        if to:
            _lang, body = desk.renderer.render(
                "sla_breach" if breached else "sla_warning", s.desk.default_language,
                marker=notify.MARKER, ref=t.ref, ticket=t, site_name=site.name if site else "",
                due=_local(desk, due), used_percent=round(s.sla.warn_at * 100), desk=s.desk)
            notify.send_to_agents(session, desk, t, "sla-breach" if breached else "sla-warning",
                                  to, body, now, None)
        service.event(session, now, "ticket.sla_breached" if breached else "ticket.sla_warned",
                      t, None, due=due.isoformat(), to=list(to))
        t.sla_alert_at = None if breached else due
        if breached:
            r.breached += 1
        else:
            r.warned += 1
    return len(rows)


def _purge_raw(session: Session, desk: Desk, now: datetime, batch: int,
               r: SweepResult) -> int:
    out = retention.Part()
    seen = retention.purge_batch(session, desk.settings, retention.RAW, now, batch, out)
    r.raw_purged += len(out.tickets)
    return seen


def _purge_attachments(session: Session, desk: Desk, now: datetime, batch: int,
                       r: SweepResult) -> int:
    out = retention.Part()
    seen = retention.purge_batch(session, desk.settings, retention.ATTACHMENTS, now, batch, out)
    r.attachments_purged += len(out.tickets)
    return seen


# Closing first: a ticket whose closing is due is just closed. Retention last (a no-op while
# [retention] is off); it walks the closed_at index from its own cursor (tickets/retention.py).
STEPS = (_close, _remind, _sla, _purge_raw, _purge_attachments)


def sweep(sessions: sessionmaker[Session], desk: Desk, now: datetime,
          batch: int = 500) -> SweepResult:
    """Everything due at ``now``, each batch in its own transaction."""
    result = SweepResult()
    for step in STEPS:
        while True:
            with transaction(sessions) as session:
                handled = step(session, desk, now, batch, result)
            if handled < batch:
                break
    return result
