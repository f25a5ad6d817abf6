"""The ticket service: creates tickets, appends mail to them, and writes the mails that
follow (acknowledgement, relayed agent answers, refusals) into the outbox, all inside the
caller's transaction."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from mailgate import blobs
from mailgate.db.models import Attachment, Counter, Event, Inbound, Message, Site, Ticket
from mailgate.mail.attachments import display_name
from mailgate.mail.parse import ParsedMail
from mailgate.mail.references import TicketRef, remove_tags, strip_prefixes
from mailgate.outbound.compose import Outgoing
from mailgate.outbound.outbox import enqueue
from mailgate.tickets import autoanswer
from mailgate.tickets.access import AgentInfo, Sender
from mailgate.tickets.completeness import find_site_id, missing_items
from mailgate.tickets.desk import Desk
from mailgate.tickets.states import State, after_requester_mail
from mailgate.tickets.text import display_text


def next_number(session: Session) -> int:
    return int(session.execute(
        update(Counter).where(Counter.name == "ticket").values(value=Counter.value + 1)
        .returning(Counter.value)).scalar_one())


def add_message(session: Session, desk: Desk, ticket: Ticket, mail: ParsedMail,
                inbound: Inbound, kind: str, now: datetime) -> Message:
    msg = Message(
        ticket_id=ticket.id, inbound_id=inbound.id, direction="in", kind=kind,
        from_addr=mail.from_addr, to_addrs=",".join(mail.to), cc_addrs=",".join(mail.cc),
        subject=mail.subject, message_id=mail.message_id or inbound.message_id,
        body_text=display_text(mail), created_at=now)
    session.add(msg)
    if mail.attachments:
        session.flush()  # the attachments need the message's id
    for att in mail.attachments:
        session.add(Attachment(
            message_id=msg.id, filename=display_name(att.filename, att.content_type),
            content_type=att.content_type[:255], content_id=att.content_id[:998],
            size=len(att.payload),
            sha256=blobs.put(session, desk.settings.attachments, att.payload)))
    return msg


def _event(session: Session, now: datetime, kind: str, ticket: Ticket | None,
           inbound: Inbound | None, **detail: object) -> None:
    session.add(Event(at=now, kind=kind, ticket_id=ticket.id if ticket else None,
                      inbound_id=inbound.id if inbound else None, detail=detail))


def _set_state(session: Session, ticket: Ticket, new: State, inbound: Inbound | None,
               now: datetime, by: str) -> None:
    old = State(ticket.state)
    if old == new:
        return
    ticket.state = new
    ticket.updated_at = now
    _event(session, now, "ticket.state", ticket, inbound, **{"from": old, "to": new, "by": by})


def create_ticket(session: Session, desk: Desk, mail: ParsedMail, inbound: Inbound,
                  sender: Sender, now: datetime, *, linked_to: Ticket | None = None,
                  kind: str = "request") -> Ticket:
    s = desk.settings
    editor = sender.editor
    site_id = editor.site_id if editor else find_site_id(
        mail, set(session.execute(select(Site.site_id)).scalars()))
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
        first_response_at=None, remind_at=None, close_at=None,
        linked_to_id=linked_to.id if linked_to else None)
    session.add(ticket)
    session.flush()
    add_message(session, desk, ticket, mail, inbound, "request", now)
    _event(session, now, "ticket.created", ticket, inbound, ref=ticket.ref,
           requester=ticket.requester, linked_to=linked_to.ref if linked_to else None)
    missing = missing_items(mail, site_id=site_id, name=editor.name if editor else "",
                            phone=editor.phone if editor else "")
    _acknowledge(session, desk, ticket, mail, inbound, now, missing, linked_to)
    return ticket


def _answer_to(mail: ParsedMail) -> str:
    return mail.reply_to or mail.from_addr


def _thread(mail: ParsedMail) -> tuple[str, tuple[str, ...]]:
    refs = (*mail.references, mail.message_id) if mail.message_id else mail.references
    return mail.message_id, refs


def _acknowledge(session: Session, desk: Desk, ticket: Ticket, mail: ParsedMail,
                 inbound: Inbound, now: datetime, missing: list[str],
                 linked_to: Ticket | None) -> None:
    s = desk.settings
    to = _answer_to(mail)
    if not autoanswer.allow(session, to, "ack", now, s.access.auto_replies_per_hour,
                            inbound.id, ticket.id):
        return
    ref = TicketRef(s.desk.ticket_prefix, ticket.number)
    due_local = ticket.first_response_due.astimezone(s.tz) if ticket.first_response_due else None
    language, body = desk.renderer.render(
        "ack", ticket.language, ticket=ticket, ref=str(ref), desk=s.desk,
        name=ticket.requester_name, missing=missing, due=due_local, linked_to=linked_to,
        hours=s.sla.first_response_hours)
    in_reply_to, refs = _thread(mail)
    out = Outgoing(
        from_name=s.desk.name, from_addr=s.desk.address, to=(to,),
        subject=f"{ref.tag} {ticket.subject}", body=body, message_id=desk.ids.make(ref),
        in_reply_to=in_reply_to, references=refs, auto_submitted="auto-replied",
        language=language, loop_marker=s.desk.address, date=now)
    _send(session, out, "ack", ticket, inbound, body)


def _send(session: Session, out: Outgoing, kind: str, ticket: Ticket | None,
          inbound: Inbound | None, body: str) -> None:
    row = enqueue(session, out, kind, ticket_id=ticket.id if ticket else None,
                  inbound_id=inbound.id if inbound else None)
    if ticket is not None:
        session.add(Message(
            ticket_id=ticket.id, inbound_id=None, direction="out", kind=kind,
            from_addr=out.from_addr, to_addrs=",".join(out.to), cc_addrs="",
            subject=out.subject, message_id=row.message_id, body_text=body,
            created_at=out.date or ticket.updated_at))


def append_follow_up(session: Session, desk: Desk, ticket: Ticket, mail: ParsedMail,
                     inbound: Inbound, now: datetime) -> Message:
    msg = add_message(session, desk, ticket, mail, inbound, "follow-up", now)
    ticket.updated_at = now
    if mail.from_addr == ticket.requester:
        _set_state(session, ticket, after_requester_mail(State(ticket.state)), inbound, now,
                   by=mail.from_addr)
    _event(session, now, "ticket.follow_up", ticket, inbound, **{"from": mail.from_addr})
    return msg


def record_automatic(session: Session, desk: Desk, ticket: Ticket, mail: ParsedMail,
                     inbound: Inbound, kind: str, now: datetime) -> Message:
    """An out-of-office or bounce on a ticket: visible to agents, and nothing else —
    no answer, no state change, no clock touched (not even updated_at)."""
    msg = add_message(session, desk, ticket, mail, inbound, kind, now)
    _event(session, now, f"ticket.{kind}", ticket, inbound, **{"from": mail.from_addr})
    return msg


def agent_note(session: Session, desk: Desk, ticket: Ticket, mail: ParsedMail,
               inbound: Inbound, text: str, now: datetime) -> Message:
    msg = add_message(session, desk, ticket, mail, inbound, "note", now)
    msg.body_text = text
    ticket.updated_at = now
    _event(session, now, "ticket.note", ticket, inbound, by=mail.from_addr)
    return msg


def agent_status(session: Session, ticket: Ticket, state: State, inbound: Inbound,
                 now: datetime, agent: AgentInfo) -> None:
    _set_state(session, ticket, state, inbound, now, by=agent.email)


def agent_reply(session: Session, desk: Desk, ticket: Ticket, mail: ParsedMail,
                inbound: Inbound, agent: AgentInfo, text: str, now: datetime) -> None:
    """An agent's answer from their own mail client, relayed to the requester from the
    desk's address (agents' own addresses stay out of editors' address books)."""
    s = desk.settings
    msg = add_message(session, desk, ticket, mail, inbound, "agent-reply", now)
    msg.body_text = text
    ref = TicketRef(s.desk.ticket_prefix, ticket.number)
    language, body = desk.renderer.render(
        "reply", ticket.language, body=text.strip(), ref=str(ref), desk=s.desk,
        agent_name=agent.name or s.desk.name)
    last_in = session.execute(
        select(Message.message_id).where(Message.ticket_id == ticket.id,
                                         Message.direction == "in",
                                         Message.from_addr == ticket.requester)
        .order_by(Message.id.desc()).limit(1)).scalar_one_or_none() or ""
    out = Outgoing(
        from_name=f"{agent.name} ({s.desk.name})" if agent.name else s.desk.name,
        from_addr=s.desk.address, to=(ticket.requester,),
        subject=f"{ref.tag} {ticket.subject}", body=body, message_id=desk.ids.make(ref),
        in_reply_to=last_in, references=(last_in,) if last_in else (),
        auto_submitted="", language=language, loop_marker=s.desk.address, date=now)
    _send(session, out, "reply", ticket, inbound, body)
    if ticket.first_response_at is None:
        ticket.first_response_at = now
    if ticket.state == State.NEW:
        _set_state(session, ticket, State.OPEN, inbound, now, by=agent.email)
    ticket.updated_at = now


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
    _send(session, out, "refusal", None, inbound, body)
    return True
