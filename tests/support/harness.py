"""The desk without a listener: store a mail, run one real worker pass on it, and read the
rows and the outbox it left. The ticket policy is tested this way (fast, on both databases);
the ways in have their own end-to-end tests over SMTP and IMAP."""

from __future__ import annotations

from email import message_from_bytes, policy
from email.message import EmailMessage
from typing import Any, cast

from sqlalchemy import select

from mailgate.app import App
from mailgate.db.engine import transaction
from mailgate.db.models import Event, Inbound, Outbox, Ticket
from mailgate.inbound.store import store_raw
from mailgate.tickets.notify import AGENT_KINDS
from mailgate.worker import process_one
from tests.support.mails import wire


class DeskHarness:
    def __init__(self, app: App) -> None:
        self.app = app

    def receive(self, msg: EmailMessage | bytes, *, channel: str = "smtp",
                envelope_from: str = "", rcpt: tuple[str, ...] = ()) -> Inbound:
        """Store-first and process, as the daemon does; returns the settled inbound row."""
        raw = msg if isinstance(msg, bytes) else wire(msg)
        stored = store_raw(self.app.sessions, self.app.clock, raw, channel, envelope_from,
                           list(rcpt))
        process_one(self.app, stored.inbound_id)
        with self.app.sessions() as s:
            row = s.get(Inbound, stored.inbound_id)
            assert row is not None
            s.expunge(row)
            return row

    def outbox(self, *, agents: bool = False) -> list[EmailMessage]:
        """The mails the desk decided to send, in order, as the relay would get them: those
        of the editors' side, or (``agents=True``) those of the agents' thread."""
        with self.app.sessions() as s:
            stmt = select(Outbox.raw).order_by(Outbox.id)
            stmt = stmt.where(Outbox.kind.in_(AGENT_KINDS) if agents
                              else Outbox.kind.not_in(AGENT_KINDS))
            raws = s.execute(stmt).scalars().all()
        return [cast(EmailMessage, message_from_bytes(r, policy=policy.default)) for r in raws]

    def outbox_rows(self) -> list[Outbox]:
        with self.app.sessions() as s:
            rows = list(s.execute(select(Outbox).order_by(Outbox.id)).scalars())
            s.expunge_all()
            return rows

    def to(self, address: str) -> list[EmailMessage]:
        """Every mail (either side) with ``address`` in To or Cc."""
        return [m for m in (*self.outbox(), *self.outbox(agents=True))
                if address in f"{m['To'] or ''},{m['Cc'] or ''}"]

    def ticket(self, ref: str) -> Ticket:
        with self.app.sessions() as s:
            t = s.execute(select(Ticket).where(Ticket.ref == ref)).scalar_one()
            for m in t.messages:
                _ = list(m.attachments)
            s.expunge_all()
            return t

    def events(self, ref: str, kind: str) -> list[dict[str, Any]]:
        """The details of the ticket's events of one kind, in order."""
        with self.app.sessions() as s:
            t = s.execute(select(Ticket).where(Ticket.ref == ref)).scalar_one()
            return [e.detail for e in s.execute(
                select(Event).where(Event.ticket_id == t.id, Event.kind == kind)
                .order_by(Event.id)).scalars()]

    def tickets(self) -> list[str]:
        with self.app.sessions() as s:
            return list(s.execute(select(Ticket.ref).order_by(Ticket.number)).scalars())

    def set_state(self, ref: str, state: str) -> None:
        with transaction(self.app.sessions) as s:
            s.execute(select(Ticket).where(Ticket.ref == ref)).scalar_one().state = state
