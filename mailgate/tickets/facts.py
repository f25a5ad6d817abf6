"""Gathers the facts the policy rules decide on, once per mail (all look-ups here)."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from mailgate.db.models import Ticket
from mailgate.mail import authenticity, automatic
from mailgate.mail.parse import ParsedMail
from mailgate.mail.references import find_tag
from mailgate.mail.urgency import urgency
from mailgate.tickets import access
from mailgate.tickets.commands import parse_command
from mailgate.tickets.desk import Desk
from mailgate.tickets.policy import Facts, TicketInfo
from mailgate.tickets.text import display_text


def find_ticket(session: Session, desk: Desk, mail: ParsedMail) -> tuple[Ticket | None, str]:
    """The ticket a mail refers to, and how it was found: our signed Message-IDs in
    In-Reply-To/References first (proof), else a tag in the subject (a claim)."""
    ref = desk.ids.find(mail.thread_ids)
    found_by = "references"
    if ref is None:
        ref = find_tag(desk.settings.desk.ticket_prefix, mail.subject)
        found_by = "subject tag"
    if ref is None:
        return None, ""
    ticket = session.execute(select(Ticket).where(Ticket.ref == str(ref))).scalar_one_or_none()
    return (ticket, found_by) if ticket is not None else (None, "")


def info(ticket: Ticket) -> TicketInfo:
    return TicketInfo(id=ticket.id, ref=ticket.ref, state=ticket.state,
                      requester=ticket.requester, site_id=ticket.site_id, kind=ticket.kind)


def gather(session: Session, desk: Desk, mail: ParsedMail, raw: bytes,
           envelope_to: tuple[str, ...] = ()) -> Facts:
    s = desk.settings
    sender = access.identify(session, mail.from_addr)
    ticket, found_by = find_ticket(session, desk, mail)
    own = s.desk.own_addresses
    loop_marker = mail.header("x-loop").lower()
    from_us = (mail.from_addr in own or any(a in loop_marker for a in own)
               or desk.ids.is_ours(mail.message_id))
    verdict = None
    if s.access.require_authentication and mail.from_addr:  # no sender: ignored anyway
        verdict = authenticity.verify(raw, mail.from_addr, s.access.authserv_id)
    command = None
    if sender.agent is not None:
        command = parse_command(display_text(mail) if ticket is not None else mail.text)
    recipients = {a.lower() for a in (*mail.to, *mail.cc, *envelope_to)}
    comment = s.desk.comment_address.lower()
    to_comment = bool(comment) and comment in recipients
    return Facts(
        mail=mail, sender=sender, from_us=from_us,
        ticket=info(ticket) if ticket is not None else None, found_by=found_by,
        may_write=ticket is not None and access.may_write(session, ticket, sender),
        accept_unknown=s.access.unknown_senders == "accept",
        automatic=automatic.detect(mail), authenticity=verdict, command=command,
        to_comment=to_comment, to_complaints=s.desk.complaints_address.lower() in recipients,
        accept_stranger_complaints=s.access.complaints_from_strangers, urgency=urgency(mail))
