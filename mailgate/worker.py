"""Processes stored mail: parse → classify → apply, one transaction per mail.

A mail that fails to parse or apply goes to quarantine with the reason and the worker
goes on; a storage outage stops the batch and leaves the mail pending for the next pass.
"""

from __future__ import annotations

import logging
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from mailgate.app import App
from mailgate.db.engine import is_unavailable, reading, transaction
from mailgate.db.models import Event, Inbound, Ticket
from mailgate.mail import authenticity, automatic
from mailgate.mail.classify import Action, Decision, Facts, classify
from mailgate.mail.commands import CommandError, parse_command
from mailgate.mail.parse import ParsedMail, UnparseableMail, parse
from mailgate.mail.references import find_tag
from mailgate.tickets import access, bounces, service

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BatchResult:
    processed: int = 0
    quarantined: int = 0
    stopped_by_outage: bool = False


def pending_ids(app: App, limit: int) -> list[int]:
    with reading(app.sessions) as session:
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


def gather_facts(session: Session, app: App, mail: ParsedMail, raw: bytes) -> Facts:
    s = app.settings
    sender = access.identify(session, mail.from_addr)
    ticket, found_by = _find_ticket(session, app, mail)
    own = s.desk.own_addresses
    loop_marker = mail.header("x-loop").lower()
    from_us = (mail.from_addr in own or any(a in loop_marker for a in own)
               or app.desk.ids.is_ours(mail.message_id))
    verdict = None
    if s.access.require_authentication:
        verdict = authenticity.verify(raw, mail.from_addr, s.access.authserv_id)
    command = None
    if sender.agent is not None and ticket is not None:
        command = parse_command(service.display_text(mail))
    return Facts(
        mail=mail, sender=sender, from_us=from_us, ticket=ticket, found_by=found_by,
        may_write=ticket is not None and access.may_write(session, ticket, sender),
        accept_unknown=s.access.unknown_senders == "accept",
        automatic=automatic.detect(mail), authenticity=verdict, command=command)


def _apply(session: Session, app: App, row: Inbound, mail: ParsedMail, facts: Facts,
           decision: Decision) -> None:
    now = app.clock.now()
    desk = app.desk
    ticket = decision.ticket
    row.status = "ticket" if ticket is not None else "ignored"
    row.ticket_id = ticket.id if ticket is not None else None
    if decision.action == Action.CREATE:
        ticket = service.create_ticket(session, desk, mail, row, facts.sender, now,
                                       linked_to=decision.ticket)
        row.ticket_id, row.status = ticket.id, "ticket"
    elif decision.action == Action.APPEND:
        assert ticket is not None
        service.append_follow_up(session, desk, ticket, mail, row, now)
    elif decision.action == Action.RECORD:
        assert ticket is not None
        service.record_automatic(session, desk, ticket, mail, row, str(decision.kind), now)
    elif decision.action == Action.AGENT:
        assert ticket is not None and facts.sender.agent is not None
        _agent(session, app, ticket, mail, row, facts, now)
    elif decision.action == Action.BOUNCE:
        a = facts.automatic
        assert a is not None
        failed = bounces.record_bounce(
            session, row, original_ids=(*a.original_message_ids, *mail.thread_ids),
            recipients=a.failed_recipients, status=a.dsn_status, now=now)
        if failed and failed[0].ticket_id is not None:
            bounced = session.get(Ticket, failed[0].ticket_id)
            assert bounced is not None
            service.record_automatic(session, desk, bounced, mail, row, "bounce", now)
            row.ticket_id, row.status = bounced.id, "ticket"
    elif decision.action == Action.REFUSE:
        row.status = "refused"
        if not service.refuse_stranger(session, desk, mail, row, now):
            row.reason = f"{decision.reason}; refusal suppressed (rate limit)"
    if facts.authenticity is not None:
        row.authenticity = ("pass: " if facts.authenticity.verified else "fail: ") + \
            facts.authenticity.evidence[:190]


def _agent(session: Session, app: App, ticket: Ticket, mail: ParsedMail, row: Inbound,
           facts: Facts, now: datetime) -> None:
    agent = facts.sender.agent
    assert agent is not None
    command = facts.command
    text = command.text if command else service.display_text(mail)
    if (command is not None and command.note) or not text.strip():
        service.agent_note(session, app.desk, ticket, mail, row, text, now)
    else:
        service.agent_reply(session, app.desk, ticket, mail, row, agent, text, now)
    if command is not None and command.state is not None:
        service.agent_status(session, ticket, command.state, row, now, agent)


def process_one(app: App, inbound_id: int) -> str | None:
    """Processes one pending row; returns its new status, or None if another worker has it."""
    try:
        # Load the signing secret before the per-mail transaction opens: reading it may
        # write it, and a second write transaction in this thread would wait on the first.
        _ = app.desk
        with transaction(app.sessions) as session:
            row = session.execute(
                select(Inbound).where(Inbound.id == inbound_id, Inbound.status == "pending")
                .with_for_update(skip_locked=True)).scalar_one_or_none()
            if row is None:
                return None
            mail = parse(row.raw)
            facts = gather_facts(session, app, mail, row.raw)
            decision, trail = classify(facts)
            row.kind, row.reason, row.trail = decision.kind, decision.reason, trail
            _apply(session, app, row, mail, facts, decision)
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
                  else f"agent command: {exc}" if isinstance(exc, CommandError)
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


def _step_aside(should_yield: Callable[[], bool], limit: float = 2.0) -> None:
    """While intake runs hot, let it have the database (bounded, so the worker never
    starves)."""
    deadline = time.monotonic() + limit
    while should_yield() and time.monotonic() < deadline:
        time.sleep(0.01)


def process_pending(app: App, limit: int | None = None,
                    should_yield: Callable[[], bool] | None = None,
                    on_processed: Callable[[], None] | None = None) -> BatchResult:
    processed = quarantined = 0
    try:
        for inbound_id in pending_ids(app, limit or app.settings.worker.batch_size):
            if should_yield is not None:
                _step_aside(should_yield)
            status = process_one(app, inbound_id)
            if status is None:
                continue
            processed += 1
            quarantined += status == "quarantined"
            if on_processed is not None:
                on_processed()  # the acknowledgement goes out now, not after the batch
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
