"""The ticket service: creates tickets, appends mail to them, and writes the mails that
follow (acknowledgement) into the outbox, all inside the caller's transaction."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import insert, select, update
from sqlalchemy.orm import Session

from mailgate.calendar import BusinessCalendar
from mailgate.config import Settings
from mailgate.db.models import Attachment, Blob, Counter, Event, Inbound, Message, Site, Ticket
from mailgate.mail.attachments import display_name
from mailgate.mail.parse import ParsedMail
from mailgate.mail.references import MessageIds, TicketRef, strip_prefixes
from mailgate.outbound.compose import Outgoing
from mailgate.outbound.outbox import enqueue
from mailgate.outbound.render import Renderer
from mailgate.tickets.access import Sender
from mailgate.tickets.completeness import find_site_id, missing_items
from mailgate.tickets.states import State, after_requester_mail


@dataclass(frozen=True)
class Desk:
    """What the service needs from outside: settings, clock reading, ids, texts, calendar."""

    settings: Settings
    ids: MessageIds
    renderer: Renderer
    calendar: BusinessCalendar


def next_number(session: Session) -> int:
    return int(session.execute(
        update(Counter).where(Counter.name == "ticket").values(value=Counter.value + 1)
        .returning(Counter.value)).scalar_one())


def _store_blob(session: Session, data: bytes) -> str:
    digest = hashlib.sha256(data).hexdigest()
    if session.get(Blob, digest) is None:
        session.add(Blob(sha256=digest, size=len(data), data=data))
        session.flush()
    return digest


def add_message(session: Session, ticket: Ticket, mail: ParsedMail, inbound: Inbound,
                kind: str, now: datetime) -> Message:
    msg = Message(
        ticket_id=ticket.id, inbound_id=inbound.id, direction="in", kind=kind,
        from_addr=mail.from_addr, to_addrs=",".join(mail.to), cc_addrs=",".join(mail.cc),
        subject=mail.subject, message_id=mail.message_id or inbound.message_id,
        body_text=mail.text, created_at=now)
    session.add(msg)
    session.flush()
    for att in mail.attachments:
        session.add(Attachment(
            message_id=msg.id, filename=display_name(att.filename, att.content_type),
            content_type=att.content_type[:255], content_id=att.content_id[:998],
            size=len(att.payload), sha256=_store_blob(session, att.payload)))
    return msg


def create_ticket(session: Session, desk: Desk, mail: ParsedMail, inbound: Inbound,
                  sender: Sender, now: datetime, *, linked_to: Ticket | None = None,
                  kind: str = "request") -> Ticket:
    s = desk.settings
    editor = sender.editor
    known_sites = set(session.execute(select(Site.site_id)).scalars())
    site_id = editor.site_id if editor else find_site_id(mail, known_sites)
    language = (editor.language if editor and editor.language else s.desk.default_language)
    number = next_number(session)
    ref = TicketRef(s.desk.ticket_prefix, number)
    subject = strip_prefixes(mail.subject, s.desk.ticket_prefix) or "(no subject)"
    ticket = Ticket(
        number=number, ref=str(ref), state=State.NEW, priority="normal", kind=kind,
        site_id=site_id, requester=mail.from_addr,
        requester_name=(editor.name if editor and editor.name else mail.from_name)[:200],
        subject=subject[:998], language=language, created_at=now, updated_at=now,
        first_response_due=desk.calendar.add_business_hours(now, s.sla.first_response_hours),
        remind_at=None, close_at=None, linked_to_id=linked_to.id if linked_to else None)
    session.add(ticket)
    session.flush()
    add_message(session, ticket, mail, inbound, "request", now)
    session.add(Event(at=now, kind="ticket.created", ticket_id=ticket.id, inbound_id=inbound.id,
                      detail={"ref": ticket.ref, "requester": ticket.requester,
                              "linked_to": linked_to.ref if linked_to else None}))
    missing = missing_items(mail, site_id=site_id,
                            name=editor.name if editor else "",
                            phone=editor.phone if editor else "")
    _acknowledge(session, desk, ticket, mail, inbound, now, missing, linked_to)
    return ticket


def _acknowledge(session: Session, desk: Desk, ticket: Ticket, mail: ParsedMail,
                 inbound: Inbound, now: datetime, missing: list[str],
                 linked_to: Ticket | None) -> None:
    s = desk.settings
    ref = TicketRef(s.desk.ticket_prefix, ticket.number)
    due_local = ticket.first_response_due.astimezone(s.tz) if ticket.first_response_due else None
    language, body = desk.renderer.render(
        "ack", ticket.language, ticket=ticket, ref=str(ref), desk=s.desk,
        name=ticket.requester_name, missing=missing, due=due_local, linked_to=linked_to,
        hours=s.sla.first_response_hours)
    to = mail.reply_to or mail.from_addr
    out = Outgoing(
        from_name=s.desk.name, from_addr=s.desk.address, to=(to,),
        subject=f"{ref.tag} {ticket.subject}", body=body, message_id=desk.ids.make(ref),
        in_reply_to=mail.message_id, references=(*mail.references, mail.message_id)
        if mail.message_id else mail.references, auto_submitted="auto-replied",
        language=language, loop_marker=s.desk.address, date=now)
    row = enqueue(session, out, "ack", ticket_id=ticket.id, inbound_id=inbound.id)
    session.add(Message(
        ticket_id=ticket.id, inbound_id=None, direction="out", kind="ack",
        from_addr=s.desk.address, to_addrs=to, cc_addrs="", subject=out.subject,
        message_id=row.message_id, body_text=body, created_at=now))


def append_follow_up(session: Session, ticket: Ticket, mail: ParsedMail, inbound: Inbound,
                     now: datetime) -> Message:
    msg = add_message(session, ticket, mail, inbound, "follow-up", now)
    before = State(ticket.state)
    after = after_requester_mail(before) if mail.from_addr == ticket.requester else before
    ticket.updated_at = now
    if after != before:
        ticket.state = after
        session.add(Event(at=now, kind="ticket.state", ticket_id=ticket.id,
                          inbound_id=inbound.id, detail={"from": before, "to": after}))
    session.add(Event(at=now, kind="ticket.follow_up", ticket_id=ticket.id,
                      inbound_id=inbound.id, detail={"from": mail.from_addr}))
    return msg


def seed_counter(session: Session) -> None:
    """Used by the migration and tests: the ticket counter row must exist."""
    if session.get(Counter, "ticket") is None:
        session.execute(insert(Counter).values(name="ticket", value=0))
