"""What each decision does: a table from :class:`Action` to one handler.

A handler gets the mail, its facts and the decision in a :class:`Context`, changes tickets
and writes the outbox inside the caller's transaction, and returns the :class:`Outcome` for
the inbound row. A new action is one handler and one row of :data:`HANDLERS`.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from mailgate.db import eventlog
from mailgate.db.models import Inbound, Ticket
from mailgate.db.status import InboundStatus
from mailgate.mail.parse import ParsedMail
from mailgate.tickets import access, agentwork, autoanswer, bounces, notify, service
from mailgate.tickets.agentwork import Actor
from mailgate.tickets.commands import AgentCommand, BadLine
from mailgate.tickets.desk import Desk
from mailgate.tickets.policy import Action, Decision, Facts, Kind
from mailgate.tickets.states import State
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
    # Replace the decision's reason and kind on the inbound row, where the handler learnt more.
    reason: str | None = None
    kind: str | None = None


Handler = Callable[[Context], Outcome]


def _refuse(c: Context, errors: list[BadLine] | tuple[BadLine, ...]) -> Outcome:
    ticket = c.ticket() if c.decision.ticket is not None else None
    notify.refuse_commands(c.session, c.desk, ticket, c.mail.from_addr, list(errors),
                           c.mail.subject, c.now, c.inbound)
    first = errors[0]
    return Outcome(InboundStatus.REFUSED, ticket.id if ticket else None,
                   reason=f"agent command refused: {first.line}: {first.reason}",
                   kind=Kind.COMMAND_REFUSED)


def create(c: Context) -> Outcome:
    linked_to = c.ticket() if c.decision.ticket is not None else None
    sender, body = c.facts.sender, None
    cmd = c.facts.command
    if sender.agent is not None:
        # An agent's forward: the whole forwarded text is the request, and #requester
        # names the editor it belongs to (who then gets the acknowledgement).
        actor = Actor(sender.agent.email, sender.agent.name)
        if cmd is not None:
            errors = agentwork.check(c.session, c.desk, None, cmd, actor)
            if errors:
                return _refuse(c, errors)
            requester = cmd.get("requester")
            if requester:
                sender = access.identify(c.session, requester)
        body = cmd.text if cmd is not None else c.mail.text
    ticket = service.create_ticket(c.session, c.desk, c.mail, c.inbound, sender,
                                   c.now, linked_to=linked_to, body=body,
                                   urgent=c.facts.urgency)
    if cmd is not None and c.facts.sender.agent is not None:
        if sender.address != c.mail.from_addr:
            service.event(c.session, c.now, "ticket.requester", ticket, c.inbound,
                          **{"from": c.mail.from_addr, "to": sender.address,
                             "by": c.facts.sender.agent.email})
        rest = AgentCommand(tuple(x for x in cmd.commands if x.word not in ("requester", "note")),
                            (), cmd.text)
        agentwork.apply(c.session, c.desk, ticket, rest,
                        Actor(c.facts.sender.agent.email, c.facts.sender.agent.name), c.now,
                        c.inbound)
    _announce(c, ticket, "new", body if body is not None else display_text(c.mail))
    return Outcome(InboundStatus.TICKET, ticket.id)


def _announce(c: Context, ticket: Ticket, event: str, text: str,
              became_urgent: bool = True) -> None:
    """The agents (for a complaint: the Service Manager) hear of it; a ticket that becomes
    urgent with this mail also alerts the on-duty address, once."""
    evidence = c.facts.urgency
    if (became_urgent and ticket.priority == "urgent" and evidence is not None
            and ticket.kind != "complaint"):
        notify.alert_on_duty(c.session, c.desk, ticket, c.now, evidence.evidence, c.inbound,
                             c.mail)
    notify.notify(c.session, c.desk, ticket, event, c.now, inbound=c.inbound, mail=c.mail,
                  text=text, exclude={c.mail.from_addr.lower()},
                  urgent=evidence.evidence if evidence and ticket.priority == "urgent" else "")


def _looping(c: Context, ticket: Ticket, sender: str, text: str, passed_to: str) -> str:
    """A reason when this is the same text from `sender` on the ticket again (a machine
    answering the desk's mails): kept, recorded as suppressed, not passed on. A mail with
    no text or with attachments is a person's (screenshots sent one by one), never a loop."""
    if not text.strip() or c.mail.attachments:
        return ""
    repeats = autoanswer.same_text_on_ticket(c.session, ticket.id, sender, c.mail.subject,
                                             text, c.now)
    if repeats < autoanswer.SAME_TEXT_PER_HOUR:
        return ""
    reason = f"the same text from {sender} {repeats + 1} times this hour on {ticket.ref} " \
             "(a loop)"
    # The shape of the loop brake's other answer.suppressed events (tickets/autoanswer.py).
    eventlog.record(c.session, c.now, "answer.suppressed", ticket_id=ticket.id,
                    inbound_id=c.inbound.id,
                    detail={"to": passed_to, "kind": "relay", "reason": reason})
    return reason


def append(c: Context) -> Outcome:
    ticket = c.ticket()
    looping = _looping(c, ticket, c.mail.from_addr, display_text(c.mail), "agents")
    escalated = service.append_follow_up(c.session, c.desk, ticket, c.mail, c.inbound, c.now,
                                         c.facts.urgency)
    if looping:
        return Outcome(InboundStatus.TICKET, ticket.id,
                       reason=f"{c.decision.reason}; agents not told: {looping}")
    _announce(c, ticket, "follow-up", display_text(c.mail), became_urgent=escalated)
    return Outcome(InboundStatus.TICKET, ticket.id)


def complaint(c: Context) -> Outcome:
    """A complaint: its own ticket (kind complaint, linked to the ticket it is about), its
    own acknowledgement from the complaints address, and the Service Manager told."""
    about = c.ticket() if c.decision.ticket is not None else _mentioned(c)
    ticket = service.create_ticket(c.session, c.desk, c.mail, c.inbound, c.facts.sender,
                                   c.now, linked_to=about, kind="complaint",
                                   urgent=c.facts.urgency)
    _announce(c, ticket, "complaint", display_text(c.mail))
    return Outcome(InboundStatus.TICKET, ticket.id)


def _mentioned(c: Context) -> Ticket | None:
    """A ticket the complaint names in its text (``SD-12``, with or without brackets)."""
    prefix = c.desk.settings.desk.ticket_prefix
    for m in re.finditer(rf"\b{re.escape(prefix)}-(\d{{1,12}})\b", display_text(c.mail), re.I):
        found = c.session.execute(
            select(Ticket).where(Ticket.ref == f"{prefix}-{m.group(1)}")).scalar_one_or_none()
        if found is not None:
            return found
    return None


def record(c: Context) -> Outcome:
    ticket = c.ticket()
    service.record_automatic(c.session, c.desk, ticket, c.mail, c.inbound,
                             str(c.decision.kind), c.now)
    return Outcome(InboundStatus.TICKET, ticket.id)


def agent(c: Context) -> Outcome:
    """An agent's answer (relayed to the editor), note (agents only) and commands."""
    ticket = c.ticket()
    who = c.facts.sender.agent
    assert who is not None
    actor = Actor(who.email, who.name)
    cmd = c.facts.command
    if cmd is not None:
        errors = agentwork.check(c.session, c.desk, ticket, cmd, actor)
        if errors:
            return _refuse(c, errors)
    agents = notify.agent_addresses(c.session)
    s = c.desk.settings.desk
    text = agentwork.editor_text(cmd.text if cmd else display_text(c.mail), agents, s.address)
    # Whoever the agent wrote to directly already has the mail: no second copy.
    direct = {a.lower() for a in (*c.mail.to, *c.mail.cc)}
    is_note = c.facts.to_comment or (cmd is not None and cmd.note)
    looping = "" if is_note or not text else _looping(c, ticket, who.email, text, "editor")
    if is_note or not text or looping:
        service.agent_note(c.session, c.desk, ticket, c.mail, c.inbound, text, c.now)
    if looping:
        pass  # kept on the ticket for the agents; neither relayed nor copied
    elif text and is_note:
        notify.copy_to_agents(c.session, c.desk, ticket, "note", text, who.name, who.email,
                              c.now, inbound=c.inbound, mail=c.mail, exclude=direct)
    elif text:
        # Resolving with an answer: that answer is the "handled" mail (one mail, not two).
        resolving = cmd is not None and cmd.state == State.RESOLVED
        service.agent_reply(c.session, c.desk, ticket, c.mail, c.inbound, who, text, c.now,
                            exclude=agents | set(s.own_addresses),
                            template="handled" if resolving else "reply")
        notify.copy_to_agents(c.session, c.desk, ticket, "answer", text, who.name, who.email,
                              c.now, inbound=c.inbound, mail=c.mail, exclude=direct)
    if cmd is not None:
        agentwork.apply(c.session, c.desk, ticket, cmd, actor, c.now, c.inbound,
                        answered=bool(text) and not is_note and not looping)
    if looping:
        return Outcome(InboundStatus.TICKET, ticket.id,
                       reason=f"{c.decision.reason}; not relayed: {looping}")
    return Outcome(InboundStatus.TICKET, ticket.id)


def refuse_command(c: Context) -> Outcome:
    return _refuse(c, c.decision.errors)


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
    # The editor never got an agent's answer: the agents must know. (A bounce of a mail
    # to the agents themselves is only recorded: telling them by mail could loop.)
    for row in failed:
        if row.kind in ("reply", "handled"):
            notify.notify(c.session, c.desk, bounced, "bounce", c.now, inbound=c.inbound,
                          bounce=notify.BounceSeen(row.recipients, a.dsn_status))
            break
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
    Action.REFUSE_COMMAND: refuse_command,
    Action.COMPLAINT: complaint,
}


def apply(c: Context) -> Outcome:
    return HANDLERS[c.decision.action](c)
