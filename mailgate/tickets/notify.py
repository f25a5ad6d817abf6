"""The agents' thread of a ticket: notifications, copies of notes and answers, refusals of
wrong commands (docs/design.md §1.7).

Every mail here goes to agents only, from the desk address with ``Reply-To`` the desk, so
that an agent's reply comes back signed with our Message-ID and finds the ticket. Nothing
of this thread ever reaches an editor.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import event, select
from sqlalchemy.orm import Session

from mailgate.db.models import Inbound, Message, Outbox, Ticket
from mailgate.mail.parse import ParsedMail
from mailgate.mail.references import TicketRef
from mailgate.outbound.compose import OutAttachment, Outgoing, attach
from mailgate.outbound.outbox import enqueue
from mailgate.tickets import known
from mailgate.tickets.commands import ACCEPTED, BadLine
from mailgate.tickets.desk import Desk
from mailgate.tickets.text import display_text

# Agents reply above this line; everything from it on is cut from what reaches the editor.
MARKER = "##- reply above / antwoord hierboven / répondez au-dessus -##"  # < 72 columns
AGENT_KINDS = ("notify", "note-copy", "answer-copy", "command-refused", "sla-warning",
               "sla-breach")


@dataclass(frozen=True)
class AutoReplySeen:
    sender: str
    at: datetime
    text: str


@dataclass(frozen=True)
class BounceSeen:
    to: str
    status: str


def agent_addresses(session: Session) -> set[str]:
    return known.agent_addresses(session)


def recipients(session: Session, desk: Desk, exclude: set[str],
               ticket: Ticket | None = None) -> tuple[str, ...]:
    """Who hears of a ticket: for a complaint the Service Manager (not the agents' queue);
    else the notify list of the config, or every registered agent; minus ``exclude``."""
    manager = desk.settings.desk.service_manager
    if ticket is not None and ticket.kind == "complaint" and manager:
        return tuple(a for a in (manager,) if a.lower() not in exclude)
    configured = desk.settings.agents.notify
    addrs = configured or tuple(sorted(agent_addresses(session)))
    return tuple(a for a in addrs if a.lower() not in exclude)


# The agents' mails of the tickets this session created, kept as they are written: such a
# ticket has no others, and no out-of-office reply to them yet, so looking for either (two
# statements, two autoflushes, per new ticket) finds nothing the session does not know.
_NEW = "mailgate.notify.new_tickets"


def created(session: Session, ticket: Ticket) -> None:
    """`ticket` was created in this session (its id known)."""
    if not session.info.get(_NEW + ".listening"):
        session.info[_NEW + ".listening"] = True
        # A rolled-back savepoint took its tickets with it: forget them all (the others
        # are looked up in the database again, which is only slower).
        event.listen(session, "after_soft_rollback",
                     lambda s, _previous: s.info.pop(_NEW, None))
    session.info.setdefault(_NEW, {})[ticket.id] = []


def heard_from(session: Session, ticket: Ticket) -> None:
    """An automatic reply was recorded on `ticket`: from now on, look in the database."""
    session.info.get(_NEW, {}).pop(ticket.id, None)


def _new_mails(session: Session, ticket: Ticket) -> list[tuple[str, datetime]] | None:
    mails: list[tuple[str, datetime]] | None = session.info.get(_NEW, {}).get(ticket.id)
    return mails


def _agent_mails(session: Session, ticket: Ticket) -> list[tuple[str, datetime]]:
    """(Message-ID, written at) of the agents' mails of a ticket, in order: one look serves
    the thread and the out-of-office replies since the last notice."""
    mails = _new_mails(session, ticket)
    if mails is not None:
        return list(mails)
    return [(mid, at) for mid, at in session.execute(
        select(Outbox.message_id, Outbox.created_at)
        .where(Outbox.ticket_id == ticket.id, Outbox.kind.in_(AGENT_KINDS))
        .order_by(Outbox.id)).all()]


def _thread(mails: list[tuple[str, datetime]]) -> tuple[str, tuple[str, ...]]:
    """In-Reply-To and References that keep the agents' mails of a ticket one thread."""
    ids = [mid for mid, _at in mails]
    if not ids:
        return "", ()
    return ids[-1], tuple(dict.fromkeys((ids[0], *ids[-9:])))


def _since_last_notice(session: Session, ticket: Ticket,
                       mails: list[tuple[str, datetime]]) -> list[AutoReplySeen]:
    """Out-of-office replies that came in after the agents last heard of this ticket."""
    if _new_mails(session, ticket) is not None:
        return []
    last = mails[-1][1] if mails else None
    stmt = select(Message).where(Message.ticket_id == ticket.id, Message.kind == "auto-reply")
    if last is not None:
        stmt = stmt.where(Message.created_at >= last)
    return [AutoReplySeen(m.from_addr, m.created_at,
                          (m.body_text.strip().splitlines() or [""])[0][:200])
            for m in session.execute(stmt.order_by(Message.id)).scalars()]


def send_to_agents(session: Session, desk: Desk, ticket: Ticket, kind: str, to: tuple[str, ...],
          body: str, now: datetime, inbound: Inbound | None,
          attachments: tuple[OutAttachment, ...] = (), subject: str = "",
          mails: list[tuple[str, datetime]] | None = None) -> None:
    """``mails``: the ticket's agent mails so far, when the caller has just read them."""
    s = desk.settings
    ref = TicketRef(s.desk.ticket_prefix, ticket.number)
    in_reply_to, refs = _thread(mails if mails is not None else _agent_mails(session, ticket))
    out = Outgoing(
        from_name=s.desk.name, from_addr=s.desk.address, to=to,
        subject=subject or f"{ref.tag} {ticket.subject}", body=body,
        message_id=desk.ids.make(ref), in_reply_to=in_reply_to, references=refs,
        auto_submitted="auto-generated", language=s.desk.default_language,
        loop_marker=s.desk.address, date=now, reply_to=s.desk.address,
        attachments=attachments)
    enqueue(session, out, kind, ticket_id=ticket.id, inbound_id=inbound.id if inbound else None)
    new = _new_mails(session, ticket)
    if new is not None:
        new.append((out.message_id, now))


def notify(session: Session, desk: Desk, ticket: Ticket, event: str, now: datetime, *,
           inbound: Inbound | None = None, mail: ParsedMail | None = None, text: str = "",
           exclude: set[str] | None = None, to: tuple[str, ...] | None = None,
           bounce: BounceSeen | None = None, assigned_by: str = "",
           urgent: str = "") -> bool:
    """Tells the agents of ``event`` (new, follow-up, bounce, assigned, urgent, complaint);
    True if sent."""
    to = to if to is not None else recipients(session, desk, exclude or set(), ticket)
    if not to:
        return False
    s = desk.settings
    # The phone the request gave, else the one registered for its editor.
    registered = known.editor(session, ticket.requester) if not ticket.phone else None
    phone = ticket.phone or (registered.phone if registered else "") or ""
    missing = list(ticket.missing or [])
    due = ticket.first_response_due.astimezone(s.tz) if ticket.first_response_due else None
    files = attach(mail.attachments if mail else (), s.attachments.max_size)
    mails = _agent_mails(session, ticket)
    seen = [AutoReplySeen(a.sender, a.at.astimezone(s.tz), a.text)
            for a in _since_last_notice(session, ticket, mails)]
    _lang, body = desk.renderer.render(
        "notify", s.desk.default_language, event=event, ref=ticket.ref, desk=s.desk,
        ticket=ticket, site_name=known.site_name(session, ticket.site_id) if ticket.site_id else "",
        phone=phone, due=due, missing=missing,
        text=text.strip(),
        attachments=[f.filename for f in files], auto_replies=seen, bounce=bounce,
        assigned_by=assigned_by, marker=MARKER, urgent=urgent)
    send_to_agents(session, desk, ticket, "notify", to, body, now, inbound, files, mails=mails)
    return True


def alert_on_duty(session: Session, desk: Desk, ticket: Ticket, now: datetime, evidence: str,
                  inbound: Inbound | None = None, mail: ParsedMail | None = None) -> bool:
    """An urgent incident: the on-duty address hears at once, with the editor's phone."""
    duty = desk.settings.desk.urgent_notify
    if not duty:
        return False
    return notify(session, desk, ticket, "urgent", now, inbound=inbound, mail=mail,
                  text=display_text(mail) if mail else "", to=(duty,), urgent=evidence)


def copy_to_agents(session: Session, desk: Desk, ticket: Ticket, kind: str, text: str,
                   agent_name: str, agent_email: str, now: datetime, *,
                   inbound: Inbound | None = None, mail: ParsedMail | None = None,
                   exclude: set[str] | None = None) -> bool:
    """An agent's note (``kind`` "note") or answer ("answer") for the other agents."""
    to = recipients(session, desk, {agent_email.lower(), *(exclude or set())}, ticket)
    if not to:
        return False
    s = desk.settings
    _lang, body = desk.renderer.render(
        "note_copy", s.desk.default_language, kind=kind, ref=ticket.ref, ticket=ticket,
        agent_name=agent_name or agent_email, agent_email=agent_email, text=text.strip(),
        desk=s.desk, marker=MARKER)
    send_to_agents(session, desk, ticket, f"{kind}-copy", to, body, now, inbound,
          attach(mail.attachments if mail else (), s.attachments.max_size))
    return True


def refuse_commands(session: Session, desk: Desk, ticket: Ticket | None, agent_email: str,
                    errors: list[BadLine], subject: str, now: datetime,
                    inbound: Inbound | None) -> None:
    """A short answer to the agent: which line, why, and what is accepted."""
    s = desk.settings
    _lang, body = desk.renderer.render(
        "command_refused", s.desk.default_language, ref=ticket.ref if ticket else "",
        errors=errors, accepted=list(ACCEPTED), desk=s.desk)
    reply_subject = f"Re: {subject}"[:250]
    if ticket is not None:
        send_to_agents(session, desk, ticket, "command-refused", (agent_email,), body, now, inbound,
              subject=reply_subject)
        return
    out = Outgoing(
        from_name=s.desk.name, from_addr=s.desk.address, to=(agent_email,),
        subject=reply_subject, body=body, message_id=desk.ids.make(None),
        auto_submitted="auto-replied", language=s.desk.default_language,
        loop_marker=s.desk.address, date=now)
    enqueue(session, out, "command-refused", ticket_id=None,
            inbound_id=inbound.id if inbound else None)
