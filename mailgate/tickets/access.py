"""Who may use the desk, and who may write into which ticket."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from mailgate.db.models import Message, Ticket
from mailgate.tickets import known


@dataclass(frozen=True)
class EditorInfo:
    email: str
    site_id: str
    name: str = ""
    phone: str = ""
    language: str = ""


@dataclass(frozen=True)
class AgentInfo:
    email: str
    name: str = ""


@dataclass(frozen=True)
class Sender:
    """Who wrote a mail, as plain values: the policy rules never touch ORM rows."""

    address: str
    editor: EditorInfo | None
    agent: AgentInfo | None

    @property
    def known(self) -> bool:
        return self.editor is not None or self.agent is not None


def identify(session: Session, address: str) -> Sender:
    editor = known.editor(session, address)
    agent = known.agent(session, address)
    return Sender(
        address,
        EditorInfo(editor.email, editor.site_id, editor.name, editor.phone, editor.language)
        if editor is not None else None,
        AgentInfo(agent.email, agent.name) if agent is not None else None)


def may_write(session: Session, ticket: Ticket, sender: Sender) -> bool:
    """Requester, participants already on the ticket, editors of its site, and agents."""
    if sender.agent is not None or sender.address == ticket.requester:
        return True
    if sender.editor is not None and ticket.site_id and sender.editor.site_id == ticket.site_id:
        return True
    rows = session.execute(
        select(Message.from_addr, Message.to_addrs, Message.cc_addrs)
        .where(Message.ticket_id == ticket.id, Message.direction == "in")).all()
    for from_addr, to_addrs, cc_addrs in rows:
        if sender.address == from_addr or sender.address in f"{to_addrs},{cc_addrs}".split(","):
            return True
    return False
