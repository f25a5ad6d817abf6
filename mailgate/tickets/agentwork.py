"""What agents do to a ticket, by mail or by CLI: answers, notes, and commands.

Commands are checked all together against the database before any is applied, so the
commands of one mail apply together or not at all; a wrong one changes nothing and is
answered (:func:`mailgate.tickets.notify.refuse_commands`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from mailgate.db.models import Agent, Editor, Inbound, Site, Ticket
from mailgate.tickets import lifecycle, notify, service
from mailgate.tickets.commands import AgentCommand, BadLine, Command
from mailgate.tickets.desk import Desk
from mailgate.tickets.states import State, refuse_move


@dataclass(frozen=True)
class Actor:
    """Who acts: an agent (by mail or CLI), or ops at the terminal."""

    email: str
    name: str = ""


def check(session: Session, desk: Desk, ticket: Ticket | None, cmd: AgentCommand,
          actor: Actor) -> list[BadLine]:
    """Every reason the commands cannot be applied (empty: apply them)."""
    errors = list(cmd.errors)
    for c in cmd.commands:
        reason = _refusal(session, desk, ticket, c, actor)
        if reason:
            errors.append(BadLine(c.line, reason))
    return errors


def _refusal(session: Session, desk: Desk, ticket: Ticket | None, c: Command,
             actor: Actor) -> str | None:
    if c.word == "status" and ticket is not None:
        return refuse_move(State(ticket.state), State(c.arg))
    if c.word == "assign":
        email = actor.email if c.arg == "me" else c.arg
        if session.execute(select(Agent.id).where(Agent.email == email)).first() is None:
            return f"{email} is not a registered agent (see `mailgate agents list`)"
    if c.word == "site" and session.get(Site, c.arg) is None:
        return f"site {c.arg} does not exist (see `mailgate sites list`)"
    if c.word == "link":
        ref = c.arg.strip("[]")
        if ticket is not None and ref == ticket.ref:
            return "a ticket cannot be linked to itself"
        if session.execute(select(Ticket.id).where(Ticket.ref == ref)).first() is None:
            return f"there is no ticket {ref}"
    if c.word == "requester":
        known = session.execute(select(Editor.id).where(Editor.email == c.arg)).first()
        if known is None and desk.settings.access.unknown_senders != "accept":
            return f"{c.arg} is not a registered editor (see `mailgate editors list`)"
    return None


def apply(session: Session, desk: Desk, ticket: Ticket, cmd: AgentCommand, actor: Actor,
          now: datetime, inbound: Inbound | None = None, *, answered: bool = False) -> None:
    """Applies checked commands (call :func:`check` first); each change is an event.
    ``answered``: the agent's text already went to the editor as the "handled" mail."""
    for c in cmd.commands:
        if c.word == "status":
            resolving = c.arg == State.RESOLVED and ticket.state != State.RESOLVED
            service.set_state(session, desk, ticket, State(c.arg), inbound, now, by=actor.email)
            if resolving and not answered:
                lifecycle.send_handled(session, desk, ticket, now)
                # The editor has had the desk's answer: the first-response clock stops.
                if ticket.first_response_at is None:
                    ticket.first_response_at, ticket.sla_alert_at = now, None
        elif c.word == "priority" and ticket.priority != c.arg:
            service.event(session, now, "ticket.priority", ticket, inbound,
                   **{"from": ticket.priority, "to": c.arg, "by": actor.email})
            ticket.priority = c.arg
        elif c.word == "assign":
            assignee = actor.email if c.arg == "me" else c.arg
            if ticket.assignee != assignee:
                service.event(session, now, "ticket.assigned", ticket, inbound,
                       **{"from": ticket.assignee, "to": assignee, "by": actor.email})
                ticket.assignee = assignee
                if assignee != actor.email:
                    notify.notify(session, desk, ticket, "assigned", now, inbound=inbound,
                                  to=(assignee,), assigned_by=actor.name or actor.email)
        elif c.word == "site" and ticket.site_id != c.arg:
            service.event(session, now, "ticket.site", ticket, inbound,
                   **{"from": ticket.site_id, "to": c.arg, "by": actor.email})
            ticket.site_id = c.arg
        elif c.word == "link":
            other = session.execute(
                select(Ticket).where(Ticket.ref == c.arg.strip("[]"))).scalar_one()
            service.event(session, now, "ticket.linked", ticket, inbound,
                   **{"to": other.ref, "by": actor.email})
            ticket.linked_to_id = other.id
        elif c.word == "requester" and ticket.requester != c.arg:
            editor = session.execute(
                select(Editor).where(Editor.email == c.arg)).scalar_one_or_none()
            service.event(session, now, "ticket.requester", ticket, inbound,
                   **{"from": ticket.requester, "to": c.arg, "by": actor.email})
            ticket.requester = c.arg
            if editor is not None:
                ticket.requester_name = editor.name
                ticket.site_id = ticket.site_id or editor.site_id
        ticket.updated_at = now


_QUOTE_HEADER = re.compile(r"^\s*>*\s*(from|van|de|von|sent|verzonden|envoyé|to|aan|à)\s*:",
                           re.IGNORECASE)


def editor_text(text: str, agent_addresses: set[str], desk_address: str) -> str:
    """An agent's answer as the editor may read it: cut at our notification's marker, no
    quoted header lines, and no agent address anywhere."""
    kept: list[str] = []
    for line in text.splitlines():
        if notify.MARKER in line or line.strip().lstrip("> ").startswith("##- reply above"):
            break
        lowered = line.lower()
        if any(a in lowered for a in agent_addresses):
            if _QUOTE_HEADER.match(line):
                continue
            for a in agent_addresses:
                line = re.sub(re.escape(a), desk_address, line, flags=re.IGNORECASE)
        kept.append(line)
    return "\n".join(kept).strip()
