"""Processes stored mail: parse → classify → apply, one transaction per mail.

A mail that fails to parse or apply goes to quarantine with the reason and the worker
goes on; a storage outage stops the batch and leaves the mail pending for the next pass.
"""

from __future__ import annotations

import logging
import traceback
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from mailgate.app import App
from mailgate.db.engine import is_unavailable, transaction
from mailgate.db.models import Event, Inbound, Ticket
from mailgate.mail.classify import Action, Decision, Facts, classify
from mailgate.mail.parse import ParsedMail, UnparseableMail, parse
from mailgate.mail.references import find_tag
from mailgate.tickets import access, service

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BatchResult:
    processed: int = 0
    quarantined: int = 0
    stopped_by_outage: bool = False


def pending_ids(app: App, limit: int) -> list[int]:
    with app.sessions() as session:
        return list(session.execute(
            select(Inbound.id).where(Inbound.status == "pending")
            .order_by(Inbound.id).limit(limit)).scalars())


def _find_ticket(session: Session, app: App, mail: ParsedMail) -> tuple[Ticket | None, str]:
    prefix = app.settings.desk.ticket_prefix
    ref = app.desk.ids.find(mail.thread_ids)
    found_by = "references"
    if ref is None:
        ref = find_tag(prefix, mail.subject)
        found_by = "subject tag"
    if ref is None:
        return None, ""
    ticket = session.execute(select(Ticket).where(Ticket.ref == str(ref))).scalar_one_or_none()
    return (ticket, found_by) if ticket is not None else (None, "")


def gather_facts(session: Session, app: App, mail: ParsedMail) -> Facts:
    s = app.settings
    sender = access.identify(session, mail.from_addr)
    ticket, found_by = _find_ticket(session, app, mail)
    own = s.desk.own_addresses
    loop_marker = mail.header("x-loop").lower()
    from_us = mail.from_addr in own or any(a in loop_marker for a in own)
    return Facts(
        mail=mail, sender=sender, from_us=from_us, ticket=ticket, found_by=found_by,
        may_write=ticket is not None and access.may_write(session, ticket, sender),
        accept_unknown=s.access.unknown_senders == "accept")


def _apply(session: Session, app: App, row: Inbound, mail: ParsedMail,
           decision: Decision) -> None:
    now = app.clock.now()
    if decision.action == Action.CREATE:
        sender = access.identify(session, mail.from_addr)
        ticket = service.create_ticket(session, app.desk, mail, row, sender, now,
                                       linked_to=decision.ticket)
        row.ticket_id, row.status = ticket.id, "ticket"
    elif decision.action == Action.APPEND:
        assert decision.ticket is not None
        service.append_follow_up(session, decision.ticket, mail, row, now)
        row.ticket_id, row.status = decision.ticket.id, "ticket"
    elif decision.action == Action.REFUSE:
        row.status = "refused"
    else:
        row.status = "ignored"


def process_one(app: App, inbound_id: int) -> str | None:
    """Processes one pending row; returns its new status, or None if another worker has it."""
    try:
        with transaction(app.sessions) as session:
            row = session.execute(
                select(Inbound).where(Inbound.id == inbound_id, Inbound.status == "pending")
                .with_for_update(skip_locked=True)).scalar_one_or_none()
            if row is None:
                return None
            mail = parse(row.raw)
            decision, trail = classify(gather_facts(session, app, mail))
            _apply(session, app, row, mail, decision)
            row.kind, row.reason, row.trail = decision.kind, decision.reason, trail
            row.processed_at = app.clock.now()
            row.attempts += 1
            session.add(Event(at=row.processed_at, kind=f"inbound.{row.status}",
                              ticket_id=row.ticket_id, inbound_id=row.id,
                              detail={"rule": decision.rule}))
            return row.status
    except Exception as exc:
        if is_unavailable(exc):
            raise
        reason = (f"unparseable: {exc}" if isinstance(exc, UnparseableMail)
                  else f"{type(exc).__name__}: {exc}")
        log.warning("inbound %s quarantined: %s", inbound_id, reason)
        detail = "".join(traceback.format_exception_only(exc)).strip()
        quarantine(app, inbound_id, reason, detail)
        return "quarantined"


def quarantine(app: App, inbound_id: int, reason: str, detail: str = "") -> None:
    with transaction(app.sessions) as session:
        row = session.get(Inbound, inbound_id)
        assert row is not None
        now = app.clock.now()
        row.status, row.reason, row.processed_at = "quarantined", reason[:2000], now
        row.attempts += 1
        row.trail = [*(row.trail or []), {"rule": "quarantine", "result": "quarantined",
                                          "reason": reason[:2000]}]
        session.add(Event(at=now, kind="inbound.quarantined", inbound_id=inbound_id,
                          detail={"reason": reason[:2000], "detail": detail[:4000]}))


def process_pending(app: App, limit: int | None = None) -> BatchResult:
    processed = quarantined = 0
    try:
        # Load the signing secret outside the per-mail transaction: on SQLite a second
        # write transaction from the same thread would wait on the first.
        _ = app.desk
        for inbound_id in pending_ids(app, limit or app.settings.worker.batch_size):
            status = process_one(app, inbound_id)
            if status is None:
                continue
            processed += 1
            quarantined += status == "quarantined"
    except Exception as exc:
        if not is_unavailable(exc):
            raise
        log.warning("storage unavailable, processing paused: %s", str(exc).splitlines()[0])
        return BatchResult(processed, quarantined, stopped_by_outage=True)
    return BatchResult(processed, quarantined)


def replay(session: Session, clock: object, inbound_id: int | None = None) -> int:
    """Quarantined mail back to pending, keeping its trail; `mailgate quarantine replay`."""
    stmt = select(Inbound).where(Inbound.status == "quarantined")
    if inbound_id is not None:
        stmt = stmt.where(Inbound.id == inbound_id)
    rows = list(session.execute(stmt).scalars())
    now = clock.now()  # type: ignore[attr-defined]
    for row in rows:
        row.status, row.reason = "pending", ""
        row.trail = [*(row.trail or []), {"rule": "replay", "result": "pending",
                                          "reason": f"replayed at {now.isoformat()}"}]
        session.add(Event(at=now, kind="inbound.replayed", inbound_id=row.id, detail={}))
    return len(rows)
