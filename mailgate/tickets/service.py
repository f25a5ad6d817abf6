"""The ticket service: creates tickets, appends mail to them, and writes the mails that
follow (acknowledgement, relayed agent answers, refusals) into the outbox, all inside the
caller's transaction."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import Sequence, select, update
from sqlalchemy.orm import Session

from mailgate import blobs
from mailgate.db import deferred, eventlog
from mailgate.db.models import (
    Attachment,
    Counter,
    Editor,
    Inbound,
    Message,
    Ticket,
)
from mailgate.mail import language
from mailgate.mail.attachments import display_name
from mailgate.mail.parse import ParsedMail
from mailgate.mail.references import TicketRef, remove_tags, strip_prefixes
from mailgate.mail.urgency import Urgency
from mailgate.outbound.compose import Outgoing, attach
from mailgate.outbound.outbox import enqueue
from mailgate.tickets import autoanswer, completeness, duetimes, known, notify
from mailgate.tickets.access import AgentInfo, EditorInfo, Sender
from mailgate.tickets.desk import Desk
from mailgate.tickets.states import IllegalTransition, State, after_requester_mail, refuse_move
from mailgate.tickets.text import display_text

# PostgreSQL: a sequence, which no transaction holds (db/migrations 0007); SQLite, one
# writer at a time: the counter row.
_TICKET_NUMBERS = Sequence("ticket_number_seq")


# Built once: a statement object keeps its cache key, one built per call computes it anew.
_NEXT_FROM_SEQUENCE = select(_TICKET_NUMBERS.next_value())
_NEXT_FROM_COUNTER = (update(Counter).where(Counter.name == "ticket")
                      .values(value=Counter.value + 1).returning(Counter.value))


def next_number(session: Session) -> int:
    # On the session's connection, not through the ORM: no object is loaded or changed, and
    # the ORM's bulk-update machinery cost more than the statement (bench/mix.py --profile).
    conn = session.connection()
    postgresql = conn.dialect.name == "postgresql"
    return int(conn.execute(
        _NEXT_FROM_SEQUENCE if postgresql else _NEXT_FROM_COUNTER).scalar_one())


def _in_values(ticket: Ticket, mail: ParsedMail, inbound: Inbound, kind: str, now: datetime,
               body: str | None) -> dict[str, object]:
    return {"ticket_id": ticket.id, "inbound_id": inbound.id, "direction": "in", "kind": kind,
            "from_addr": mail.from_addr, "to_addrs": ",".join(mail.to),
            "cc_addrs": ",".join(mail.cc), "subject": mail.subject,
            "message_id": mail.message_id or inbound.message_id,
            "body_text": display_text(mail) if body is None else body, "created_at": now}


def record_mail(session: Session, desk: Desk, ticket: Ticket, mail: ParsedMail,
                inbound: Inbound, kind: str, now: datetime, body: str | None = None) -> None:
    """The mail on the ticket, where nothing needs its object: without attachments (which
    need its id) it is written at the commit with the group's other rows (db/deferred.py),
    one INSERT and no ORM object instead of one each."""
    if mail.attachments:
        add_message(session, desk, ticket, mail, inbound, kind, now, body)
    else:
        deferred.add(session, Message, _in_values(ticket, mail, inbound, kind, now, body))


def add_message(session: Session, desk: Desk, ticket: Ticket, mail: ParsedMail,
                inbound: Inbound, kind: str, now: datetime, body: str | None = None) -> Message:
    msg = Message(**_in_values(ticket, mail, inbound, kind, now, body))
    session.add(msg)
    if kind == "auto-reply":
        notify.heard_from(session, ticket)
    if mail.attachments:
        session.flush()  # the attachments need the message's id
    for att in mail.attachments:
        session.add(Attachment(
            message_id=msg.id, filename=display_name(att.filename, att.content_type),
            content_type=att.content_type[:255], content_id=att.content_id[:998],
            size=len(att.payload),
            sha256=blobs.put(session, desk.settings.attachments, att.payload)))
    return msg


def event(session: Session, now: datetime, kind: str, ticket: Ticket | None,
           inbound: Inbound | None, **detail: object) -> None:
    eventlog.record(session, now, kind, ticket_id=ticket.id if ticket else None,
                    inbound_id=inbound.id if inbound else None, detail=detail)


def set_state(session: Session, desk: Desk, ticket: Ticket, new: State,
              inbound: Inbound | None, now: datetime, by: str) -> None:
    """The one way a ticket changes state: checked against the transition table, recorded
    as an event naming who or what caused it, and the ticket's clock set for the new state.
    ``by``: an agent's or editor's address, "sweep" or "cli"."""
    old = State(ticket.state)
    if old == new:
        return
    refusal = refuse_move(old, new)
    if refusal:
        raise IllegalTransition(refusal)
    ticket.state = new
    ticket.updated_at = now
    duetimes.entered(ticket, new, now, desk.calendar, desk.settings.lifecycle)
    event(session, now, "ticket.state", ticket, inbound, **{"from": old, "to": new, "by": by})


def first_response(desk: Desk, now: datetime, urgent: bool) -> tuple[datetime, datetime]:
    """(first-response due time, moment of the agents' warning): 4 business hours, or for an
    urgent incident ``[sla] urgent_response_minutes``, in business time or round the clock."""
    sla = desk.settings.sla
    hours = sla.urgent_response_minutes / 60 if urgent else sla.first_response_hours
    if urgent and sla.urgent_24x7:
        return now + timedelta(hours=hours), now + timedelta(hours=hours * sla.warn_at)
    cal = desk.calendar
    return cal.add_business_hours(now, hours), cal.add_business_hours(now, hours * sla.warn_at)


def choose_language(desk: Desk, mail: ParsedMail, editor: EditorInfo | None,
                    recipients: tuple[str, ...]) -> tuple[str, bool]:
    """(language of every mail on the ticket, whether to add a line in German). In order:
    the editor's registered language, the desk address written to, the mail's own text,
    the desk default. German is answered in the default language with a German line."""
    d = desk.settings.desk
    if editor is not None and editor.language:
        return editor.language, False
    by_address = d.language_of(recipients)
    if by_address:
        return by_address, False
    detected = language.detect(f"{mail.subject}\n{display_text(mail)}")
    if detected == "de":
        return d.default_language, True
    return detected or d.default_language, False


def create_ticket(session: Session, desk: Desk, mail: ParsedMail, inbound: Inbound,
                  sender: Sender, now: datetime, *, linked_to: Ticket | None = None,
                  kind: str = "request", body: str | None = None,
                  urgent: Urgency | None = None) -> Ticket:
    """A new ticket for ``sender`` (the requester, who gets the acknowledgement); ``body``
    replaces the mail's new text as what agents read (an agent's forward keeps it whole);
    ``urgent``: what marked the mail urgent (the facts have it)."""
    s = desk.settings
    editor = sender.editor
    reading = completeness.read(mail, editor, known.site_ids(session))
    recipients = (*mail.to, *mail.cc, *(a for a in inbound.envelope_to.split(",") if a))
    lang, german = choose_language(desk, mail, editor, recipients)
    due, alert_at = first_response(desk, now, urgent is not None)
    number = next_number(session)
    ref = TicketRef(s.desk.ticket_prefix, number)
    subject = strip_prefixes(mail.subject, s.desk.ticket_prefix) or "(no subject)"
    ticket = Ticket(
        number=number, ref=str(ref), state=State.NEW,
        priority="urgent" if urgent else "normal", kind=kind, requester=sender.address,
        requester_name=(editor.name if editor and editor.name else
                        reading.contact_name or mail.from_name)[:200],
        subject=subject[:998], language=lang, created_at=now, updated_at=now,
        first_response_due=due, sla_alert_at=alert_at,
        first_response_at=None, remind_at=None, close_at=None,
        linked_to_id=linked_to.id if linked_to else None)
    completeness.apply_reading(ticket, reading)
    session.add(ticket)
    session.flush()
    notify.created(session, ticket)
    record_mail(session, desk, ticket, mail, inbound, "request", now, body)
    event(session, now, "ticket.created", ticket, inbound, ref=ticket.ref,
          requester=ticket.requester, linked_to=linked_to.ref if linked_to else None,
          language=lang, urgent=urgent.evidence if urgent else None)
    _acknowledge(session, desk, ticket, mail, inbound, now, linked_to,
                 to=None if sender.address == mail.from_addr else sender.address,
                 registered=sender.known,
                 other_site=reading.other_site, several=reading.several_requests,
                 german=german)
    return ticket


def _answer_to(mail: ParsedMail) -> str:
    return mail.reply_to or mail.from_addr


def _thread(mail: ParsedMail) -> tuple[str, tuple[str, ...]]:
    refs = (*mail.references, mail.message_id) if mail.message_id else mail.references
    return mail.message_id, refs


def _acknowledge(session: Session, desk: Desk, ticket: Ticket, mail: ParsedMail,
                 inbound: Inbound, now: datetime, linked_to: Ticket | None,
                 to: str | None = None, registered: bool = False,
                 other_site: str | None = None, several: bool = False,
                 german: bool = False) -> None:
    """The ticket number, the due time, what is missing — and, for an urgent incident, first
    of all the call to phone the desk quoting the number. A complaint gets its own text,
    from the complaints address."""
    s = desk.settings
    to = to or _answer_to(mail)
    # A registered person's acknowledgement is the desk's promise: only a loop may stop it
    # (or an address that bounces: then the limit of anyone's).
    limit = s.access.auto_replies_per_hour
    if not autoanswer.allow(session, to, "ack", now,
                            s.access.acks_per_hour if registered else limit,
                            inbound.id, ticket.id,
                            digest=autoanswer.text_digest(mail.subject, display_text(mail)),
                            bouncing_per_hour=limit if registered else None):
        return
    ref = TicketRef(s.desk.ticket_prefix, ticket.number)
    due_local = ticket.first_response_due.astimezone(s.tz) if ticket.first_response_due else None
    complaint = ticket.kind == "complaint"
    language, body = desk.renderer.render(
        "complaint_ack" if complaint else "ack", ticket.language, ticket=ticket, ref=str(ref),
        desk=s.desk, name=ticket.requester_name, missing=list(ticket.missing or []),
        due=due_local, linked_to=linked_to, hours=s.sla.first_response_hours,
        urgent=ticket.priority == "urgent", other_site=other_site, several=several,
        german=german)
    in_reply_to, refs = _thread(mail)
    out = Outgoing(
        from_name=s.desk.name,
        from_addr=s.desk.complaints_address if complaint else s.desk.address, to=(to,),
        subject=f"{ref.tag} {ticket.subject}", body=body, message_id=desk.ids.make(ref),
        in_reply_to=in_reply_to, references=refs, auto_submitted="auto-replied",
        language=language, loop_marker=s.desk.address, date=now)
    send(session, out, "ack", ticket, inbound, body)


def send(session: Session, out: Outgoing, kind: str, ticket: Ticket | None,
          inbound: Inbound | None, body: str) -> None:
    enqueue(session, out, kind, ticket_id=ticket.id if ticket else None,
            inbound_id=inbound.id if inbound else None)
    if ticket is not None:
        # Its copy on the ticket, written at the commit with the outbox row
        # (editor_thread reads the ones not written yet).
        deferred.add(session, Message, {
            "ticket_id": ticket.id, "inbound_id": None, "direction": "out", "kind": kind,
            "from_addr": out.from_addr, "to_addrs": ",".join(out.to),
            "cc_addrs": ",".join(out.cc), "subject": out.subject,
            "message_id": out.message_id, "body_text": body,
            "created_at": out.date or ticket.updated_at})


def append_follow_up(session: Session, desk: Desk, ticket: Ticket, mail: ParsedMail,
                     inbound: Inbound, now: datetime, evidence: Urgency | None = None) -> bool:
    """The editor's mail on the ticket: it fills what the request lacked, may make the
    ticket urgent, and puts a waiting or resolved ticket back to open. True if it made the
    ticket urgent."""
    record_mail(session, desk, ticket, mail, inbound, "follow-up", now)
    ticket.updated_at = now
    filled = completeness.fill_from_follow_up(ticket, mail, known.site_ids(session))
    if filled:
        event(session, now, "ticket.completed", ticket, inbound, items=filled,
              by=mail.from_addr)
    escalated = False
    if evidence is not None and ticket.priority != "urgent" and ticket.kind != "complaint":
        event(session, now, "ticket.priority", ticket, inbound,
              **{"from": ticket.priority, "to": "urgent", "by": mail.from_addr,
                 "evidence": evidence.evidence})
        ticket.priority, escalated = "urgent", True
        if ticket.first_response_at is None:
            ticket.first_response_due, ticket.sla_alert_at = first_response(desk, now, True)
    # An editor's real answer (the policy sends only people who may write here) stops the
    # reminders and the closing: the ticket is the agents' again.
    set_state(session, desk, ticket, after_requester_mail(State(ticket.state)), inbound, now,
              by=mail.from_addr)
    event(session, now, "ticket.follow_up", ticket, inbound, **{"from": mail.from_addr})
    return escalated


def record_automatic(session: Session, desk: Desk, ticket: Ticket, mail: ParsedMail,
                     inbound: Inbound, kind: str, now: datetime) -> Message:
    """An out-of-office or bounce on a ticket: visible to agents, and nothing else —
    no answer, no state change, no clock touched (not even updated_at)."""
    msg = add_message(session, desk, ticket, mail, inbound, kind, now)
    event(session, now, f"ticket.{kind}", ticket, inbound, **{"from": mail.from_addr})
    return msg


def agent_note(session: Session, desk: Desk, ticket: Ticket, mail: ParsedMail,
               inbound: Inbound, text: str, now: datetime) -> Message:
    msg = add_message(session, desk, ticket, mail, inbound, "note", now)
    msg.body_text = text
    ticket.updated_at = now
    event(session, now, "ticket.note", ticket, inbound, by=mail.from_addr)
    return msg


def participants(session: Session, ticket: Ticket, exclude: set[str]) -> list[str]:
    """Editors of the ticket's site who took part: wrote in, or were in To/Cc of a mail
    on it; never an agent or one of our own addresses (``exclude``)."""
    rows = session.execute(
        select(Message.from_addr, Message.to_addrs, Message.cc_addrs)
        .where(Message.ticket_id == ticket.id, Message.direction == "in")
        .order_by(Message.id)).all()
    seen = dict.fromkeys(a.lower() for f, t, c in rows for a in (f, *t.split(","),
                                                                 *c.split(",")) if a)
    if not ticket.site_id:
        return []
    editors = set(session.execute(
        select(Editor.email).where(Editor.site_id == ticket.site_id)).scalars())
    return [a for a in seen if a in editors and a != ticket.requester and a not in exclude]


# What we send on the editor's side of a ticket (docs/design.md §1.7).
EDITOR_KINDS = ("ack", "reply", "handled", "reminder", "closing", "closed")
PERSON_KINDS = ("request", "follow-up")


def editor_thread(session: Session, ticket: Ticket) -> tuple[str, tuple[str, ...]]:
    """In-Reply-To and References that put an answer into the editor's thread: the last
    mail from the requester, after the first request and what we sent the editor."""
    rows = [*session.execute(
        select(Message.message_id, Message.direction, Message.from_addr, Message.kind)
        .where(Message.ticket_id == ticket.id).order_by(Message.id)),
        *((m["message_id"], m["direction"], m["from_addr"], m["kind"])
          for m in deferred.pending(session, Message) if m["ticket_id"] == ticket.id)]
    # The editor's own mails only: never thread onto their out-of-office or a bounce.
    ids = [mid for mid, direction, sender, kind in rows if mid and (
        (direction == "in" and sender == ticket.requester and kind in PERSON_KINDS)
        or (direction == "out" and kind in EDITOR_KINDS))]
    last_in = next((mid for mid, direction, sender, kind in reversed(rows)
                    if direction == "in" and sender == ticket.requester and mid
                    and kind in PERSON_KINDS), "")
    return last_in, tuple(dict.fromkeys((*ids[:1], *ids[-9:])))


def agent_reply(session: Session, desk: Desk, ticket: Ticket, mail: ParsedMail,
                inbound: Inbound, agent: AgentInfo, text: str, now: datetime, *,
                exclude: set[str], template: str = "reply") -> tuple[str, ...]:
    """An agent's answer from their own mail client, relayed to the requester and the
    participating editors from the desk's address (agents' own addresses stay out of
    editors' address books). Whoever the agent already wrote to directly gets no second
    copy. ``exclude``: agents and our own addresses; ``template``: "handled" when the answer
    resolves the ticket. Returns who it was relayed to."""
    s = desk.settings
    msg = add_message(session, desk, ticket, mail, inbound, "agent-reply", now)
    msg.body_text = text
    direct = {a.lower() for a in (*mail.to, *mail.cc)}
    to = tuple(a for a in (ticket.requester,) if a.lower() not in direct)
    cc = tuple(a for a in participants(session, ticket, exclude) if a not in direct)
    if not to and cc:
        to, cc = cc[:1], cc[1:]
    if to:
        ref = TicketRef(s.desk.ticket_prefix, ticket.number)
        days = s.lifecycle.auto_close_working_days
        language, body = desk.renderer.render(
            template, ticket.language, body=text.strip(), ref=str(ref), desk=s.desk,
            agent_name=agent.name or s.desk.name, name=ticket.requester_name, ticket=ticket,
            days=days, close_on=desk.calendar.end_of_working_day(now, days).astimezone(s.tz))
        in_reply_to, refs = editor_thread(session, ticket)
        out = Outgoing(
            from_name=f"{agent.name} ({s.desk.name})" if agent.name else s.desk.name,
            from_addr=s.desk.address, to=to, cc=cc,
            subject=f"{ref.tag} {ticket.subject}", body=body, message_id=desk.ids.make(ref),
            in_reply_to=in_reply_to, references=refs, auto_submitted="", language=language,
            loop_marker=s.desk.address, date=now,
            attachments=attach(mail.attachments, s.attachments.max_size))
        send(session, out, template, ticket, inbound, body)
    if ticket.first_response_at is None:
        ticket.first_response_at = now
        ticket.sla_alert_at = None
    if ticket.state == State.NEW:
        set_state(session, desk, ticket, State.OPEN, inbound, now, by=agent.email)
    ticket.updated_at = now
    return (*to, *cc)


def refuse_stranger(session: Session, desk: Desk, mail: ParsedMail, inbound: Inbound,
                    now: datetime) -> bool:
    """A polite refusal that says who may use the desk; rate-limited. True if sent."""
    s = desk.settings
    to = _answer_to(mail)
    if not autoanswer.allow(session, to, "refusal", now, s.access.auto_replies_per_hour,
                            inbound.id):
        return False
    # Echo the stranger's subject without any ticket tag: they learn nothing of a ticket.
    subject = strip_prefixes(remove_tags(s.desk.ticket_prefix, mail.subject),
                             s.desk.ticket_prefix)
    language, body = desk.renderer.render(
        "refused", s.desk.default_language, subject=subject[:200], sender=mail.from_addr,
        desk=s.desk)
    in_reply_to, refs = _thread(mail)
    out = Outgoing(
        from_name=s.desk.name, from_addr=s.desk.address, to=(to,),
        subject=f"Re: {subject}" if subject else s.desk.name, body=body,
        message_id=desk.ids.make(None), in_reply_to=in_reply_to, references=refs,
        auto_submitted="auto-replied", language=language, loop_marker=s.desk.address,
        date=now)
    send(session, out, "refusal", None, inbound, body)
    return True
