"""What each decision does: a table from :class:`Action` to one handler.

A handler gets the mail, its facts and the decision in a :class:`Context`, changes tickets
and writes the outbox inside the caller's transaction, and returns the :class:`Outcome` for
the inbound row. A new action is one handler and one row of :data:`HANDLERS`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.orm import Session

from mailgate.db.models import Inbound, Ticket
from mailgate.db.status import InboundStatus
from mailgate.mail.parse import ParsedMail
from mailgate.tickets import bounces, service
from mailgate.tickets.desk import Desk
from mailgate.tickets.policy import Action, Decision, Facts
from mailgate.tickets.text import display_text


@dataclass(frozen=True)
class Context:
    session: Session
    desk: Desk
    inbound: Inbound
    mail: ParsedMail
    facts: Facts
    decision: Decision
    now: datetime

    def ticket(self) -> Ticket:
        """The ORM row of the decision's ticket (already in the session's identity map)."""
        assert self.decision.ticket is not None, f"{self.decision.action} needs a ticket"
        row = self.session.get(Ticket, self.decision.ticket.id)
        assert row is not None
        return row


@dataclass(frozen=True)
class Outcome:
    status: InboundStatus
    ticket_id: int | None = None
    # Replaces the decision's reason on the inbound row, where the handler learnt more.
    reason: str | None = None


Handler = Callable[[Context], Outcome]


def create(c: Context) -> Outcome:
    linked_to = c.ticket() if c.decision.ticket is not None else None
    ticket = service.create_ticket(c.session, c.desk, c.mail, c.inbound, c.facts.sender,
                                   c.now, linked_to=linked_to)
    return Outcome(InboundStatus.TICKET, ticket.id)


def append(c: Context) -> Outcome:
    ticket = c.ticket()
    service.append_follow_up(c.session, c.desk, ticket, c.mail, c.inbound, c.now)
    return Outcome(InboundStatus.TICKET, ticket.id)


def record(c: Context) -> Outcome:
    ticket = c.ticket()
    service.record_automatic(c.session, c.desk, ticket, c.mail, c.inbound,
                             str(c.decision.kind), c.now)
    return Outcome(InboundStatus.TICKET, ticket.id)


def agent(c: Context) -> Outcome:
    ticket = c.ticket()
    who = c.facts.sender.agent
    assert who is not None
    command = c.facts.command
    text = command.text if command else display_text(c.mail)
    if (command is not None and command.note) or not text.strip():
        service.agent_note(c.session, c.desk, ticket, c.mail, c.inbound, text, c.now)
    else:
        service.agent_reply(c.session, c.desk, ticket, c.mail, c.inbound, who, text, c.now)
    if command is not None and command.state is not None:
        service.agent_status(c.session, ticket, command.state, c.inbound, c.now, who)
    return Outcome(InboundStatus.TICKET, ticket.id)


def bounce(c: Context) -> Outcome:
    a = c.facts.automatic
    assert a is not None
    failed = bounces.record_bounce(
        c.session, c.inbound, original_ids=(*a.original_message_ids, *c.mail.thread_ids),
        recipients=a.failed_recipients, status=a.dsn_status, now=c.now)
    bounced = c.session.get(Ticket, failed[0].ticket_id) if failed and failed[0].ticket_id \
        else None
    if bounced is None:
        return Outcome(InboundStatus.IGNORED)
    service.record_automatic(c.session, c.desk, bounced, c.mail, c.inbound, "bounce", c.now)
    return Outcome(InboundStatus.TICKET, bounced.id)


def ignore(c: Context) -> Outcome:
    return Outcome(InboundStatus.IGNORED)


def refuse(c: Context) -> Outcome:
    if service.refuse_stranger(c.session, c.desk, c.mail, c.inbound, c.now):
        return Outcome(InboundStatus.REFUSED)
    return Outcome(InboundStatus.REFUSED,
                   reason=f"{c.decision.reason}; refusal suppressed (rate limit)")


HANDLERS: dict[Action, Handler] = {
    Action.CREATE: create,
    Action.APPEND: append,
    Action.RECORD: record,
    Action.AGENT: agent,
    Action.BOUNCE: bounce,
    Action.IGNORE: ignore,
    Action.REFUSE: refuse,
}


def apply(c: Context) -> Outcome:
    return HANDLERS[c.decision.action](c)
