"""The ticket's clock (docs/design.md §1.5): first-response due times, reminders while waiting
on the editor, closing, the "handled" mail, first-response warnings and breaches, each sent
exactly once however often the sweep runs.

Mails are received through the harness (store + one real worker pass) with the app's clock
fixed at a chosen Brussels time; :func:`mailgate.tickets.lifecycle.sweep` is called directly
with chosen ``now``s. Both databases; the concurrency test runs four sweeps at once.

The editor's mails are in Dutch (the desk's default language): the tests check headers,
values and quoted text, not the wording of the templates."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import select

from mailgate.app import App
from mailgate.clock import FixedClock
from mailgate.db.engine import transaction
from mailgate.db.migrate import upgrade
from mailgate.db.models import Event, Outbox, Ticket
from mailgate.tickets import lifecycle
from mailgate.tickets.lifecycle import SweepResult
from mailgate.tickets.notify import AGENT_KINDS
from tests.support.desk import DESK, EDITOR, SettingsFactory, register_demo
from tests.support.harness import DeskHarness
from tests.support.mails import body, make_mail
from tests.tickets.conftest import AGENT, register_more

BXL = ZoneInfo("Europe/Brussels")
QUESTION = "Welke pagina?"
ANSWER = "Het menu staat terug online."


# --- helpers ------------------------------------------------------------------------------


def at(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    """A Brussels wall-clock time, as the UTC moment the database keeps."""
    return datetime(year, month, day, hour, minute, tzinfo=BXL).astimezone(UTC)


def _receive(desk: DeskHarness, msg: EmailMessage, when: datetime) -> Any:
    desk.app.clock = FixedClock(when)
    return desk.receive(msg)


def _new_ticket(desk: DeskHarness, when: datetime) -> tuple[EmailMessage, EmailMessage,
                                                            EmailMessage]:
    """A request from the editor at ``when``: (the request, its ack, the agents' notice)."""
    request = make_mail(EDITOR, "Menu weg", sender_name="Eva Editor")
    row = _receive(desk, request, when)
    assert row.status == "ticket", row.reason
    return request, desk.outbox()[-1], desk.outbox(agents=True)[-1]


def _agent(desk: DeskHarness, notice: EmailMessage, body: str, when: datetime) -> Any:
    """The agent's reply to one of our mails in the agents' thread, received at ``when``."""
    mail = make_mail(AGENT, f"Re: {notice['Subject']}", body, sender_name="Alex Agent",
                     headers={"In-Reply-To": notice["Message-ID"],
                              "References": notice["Message-ID"]})
    return _receive(desk, mail, when)


def _editor_reply(desk: DeskHarness, to: EmailMessage, body: str, when: datetime,
                  **headers: str) -> Any:
    subject = headers.pop("Subject", f"Re: {to['Subject']}")
    mail = make_mail(EDITOR, subject, body, sender_name="Eva Editor",
                     headers={"In-Reply-To": to["Message-ID"], "References": to["Message-ID"],
                              **headers})
    return _receive(desk, mail, when)


def sweep(desk: DeskHarness, now: datetime, batch: int = 500) -> SweepResult:
    return lifecycle.sweep(desk.app.sessions, desk.app.desk, now, batch)


def _rows(desk: DeskHarness, kind: str) -> list[Outbox]:
    return [r for r in desk.outbox_rows() if r.kind == kind]


def _mails(desk: DeskHarness, kind: str) -> list[EmailMessage]:
    """The mails of one kind, parsed (the outbox in order, filtered by the row's kind)."""
    kinds = [r.kind for r in desk.outbox_rows()]
    editor = iter(desk.outbox())
    agents = iter(desk.outbox(agents=True))
    out = []
    for k in kinds:
        msg = next(agents) if k in AGENT_KINDS else next(editor)
        if k == kind:
            out.append(msg)
    return out


def _body(msg: EmailMessage) -> str:
    return body(msg)


def _refs(msg: EmailMessage) -> list[str]:
    return str(msg["References"] or "").split()


def _waiting_from_thursday(desk: DeskHarness) -> tuple[EmailMessage, EmailMessage]:
    """SD-1 asked on Thursday 17 Dec 2026 09:00; at 10:00 the agent asks the editor a
    question and sets it waiting. Returns (the request, its ack)."""
    request, ack, notice = _new_ticket(desk, at(2026, 12, 17, 9, 0))
    row = _agent(desk, notice, f"#wait\n{QUESTION}", at(2026, 12, 17, 10, 0))
    assert (row.status, row.kind) == ("ticket", "agent-command"), row.reason
    return request, ack


@pytest.fixture
def quiet_desk(make_settings: SettingsFactory) -> Iterator[DeskHarness]:
    """A desk with ``[lifecycle] notify_on_close = false``."""
    app = App(make_settings(lifecycle={"notify_on_close": False}))
    upgrade(app.engine)
    register_demo(app)
    register_more(app)
    yield DeskHarness(app)
    app.close()


# --- 1. first response due, through real tickets --------------------------------------------


@pytest.mark.parametrize(("asked", "due"), [
    # Friday 15:00 + 4 business hours (08:00-17:00): 2 h Friday, 2 h Monday.
    (at(2026, 12, 18, 15, 0), at(2026, 12, 21, 10, 0)),
    # Thursday 24 Dec 15:00: Christmas (Friday) and the weekend skipped.
    (at(2026, 12, 24, 15, 0), at(2026, 12, 28, 10, 0)),
    # Friday 23 Oct 16:00 (summer time): 1 h, then 3 h on Monday 26 (winter time).
    (at(2026, 10, 23, 16, 0), at(2026, 10, 26, 11, 0)),
])
def test_first_response_due_on_the_ticket_and_in_the_ack(desk: DeskHarness, asked: datetime,
                                                         due: datetime) -> None:
    _request, ack, _notice = _new_ticket(desk, asked)
    t = desk.ticket("SD-1")
    assert t.created_at == asked
    assert t.first_response_due == due
    assert t.sla_alert_at == desk.app.desk.calendar.add_business_hours(asked, 3)
    local = due.astimezone(BXL)
    assert local.strftime("%d/%m/%Y om %H:%M") in _body(ack)


def test_first_response_due_keeps_the_local_hour_across_the_end_of_summer_time(
        desk: DeskHarness) -> None:
    _new_ticket(desk, at(2026, 10, 23, 16, 0))
    t = desk.ticket("SD-1")
    assert t.created_at.astimezone(BXL).utcoffset() == timedelta(hours=2)
    assert t.first_response_due is not None
    due = t.first_response_due.astimezone(BXL)
    assert due.utcoffset() == timedelta(hours=1)
    assert (due.date().isoformat(), due.hour, due.minute) == ("2026-10-26", 11, 0)


def test_closed_days_in_the_config_push_the_due_times(make_settings: SettingsFactory) -> None:
    app = App(make_settings(lifecycle={"closed_days": ["2026-12-21"]}))
    try:
        upgrade(app.engine)
        register_demo(app)
        register_more(app)
        desk = DeskHarness(app)
        _request, _ack, notice = _new_ticket(desk, at(2026, 12, 18, 15, 0))
        assert desk.ticket("SD-1").first_response_due == at(2026, 12, 22, 10, 0)
        _agent(desk, notice, f"#wait\n{QUESTION}", at(2026, 12, 18, 15, 30))
        t = desk.ticket("SD-1")
        # Working days after Friday 18: Tue 22, Wed 23, Thu 24, Mon 28, Tue 29.
        assert t.remind_at == at(2026, 12, 23, 17, 0)
        assert t.close_at == at(2026, 12, 29, 17, 0)
        assert sweep(desk, at(2026, 12, 22, 17, 0)).total == 0
        assert sweep(desk, at(2026, 12, 23, 17, 0)).reminded == 1
    finally:
        app.close()


# --- 2. waiting: reminders on working days 2 and 4, closing on day 5 ------------------------


def test_waiting_sets_the_clock_from_the_calendar(desk: DeskHarness) -> None:
    _waiting_from_thursday(desk)
    t = desk.ticket("SD-1")
    assert t.state == "waiting"
    assert t.waiting_since == at(2026, 12, 17, 10, 0)
    assert t.remind_at == at(2026, 12, 21, 17, 0)  # Monday: working day 2
    assert t.close_at == at(2026, 12, 24, 17, 0)   # Thursday: working day 5
    assert t.reminders_sent == 0
    # The question itself reached the editor as a relayed answer.
    [reply] = _mails(desk, "reply")
    assert reply["To"] == EDITOR and QUESTION in _body(reply)


def test_reminders_then_closing_each_sent_exactly_once(desk: DeskHarness) -> None:
    request, ack = _waiting_from_thursday(desk)
    start = len(desk.outbox_rows())

    assert sweep(desk, at(2026, 12, 18, 17, 0)).total == 0
    assert sweep(desk, at(2026, 12, 21, 16, 59)).total == 0
    assert len(desk.outbox_rows()) == start

    # Day 2, Monday 21 at 17:00: the first reminder.
    r = sweep(desk, at(2026, 12, 21, 17, 0))
    assert (r.reminded, r.total) == (1, 1)
    [row] = _rows(desk, "reminder")
    assert row.recipients == EDITOR
    [first] = _mails(desk, "reminder")
    assert first["To"] == EDITOR
    assert first["From"].addresses[0].addr_spec == DESK
    assert first["Auto-Submitted"] == "auto-generated"
    assert "[SD-1]" in first["Subject"]
    # In the editor's thread: answers the editor's request, references the ack.
    assert first["In-Reply-To"] == request["Message-ID"]
    assert ack["Message-ID"] in _refs(first)
    assert request["Message-ID"] in _refs(first)
    body = _body(first)
    assert f"> {QUESTION}" in body
    assert "24/12/2026" in body  # the closing date
    assert AGENT not in row.raw.decode("utf-8", "replace").lower()
    t = desk.ticket("SD-1")
    assert (t.state, t.reminders_sent) == ("waiting", 1)
    assert t.remind_at == at(2026, 12, 23, 17, 0)
    assert t.close_at == at(2026, 12, 24, 17, 0)

    # The same sweep again, and the days in between: nothing more.
    assert sweep(desk, at(2026, 12, 21, 17, 0)).total == 0
    assert sweep(desk, at(2026, 12, 21, 17, 30)).total == 0
    assert sweep(desk, at(2026, 12, 22, 17, 0)).total == 0
    assert len(_rows(desk, "reminder")) == 1

    # Day 4, Wednesday 23 at 17:00: the second reminder, in the same thread.
    assert sweep(desk, at(2026, 12, 23, 17, 0)).reminded == 1
    assert sweep(desk, at(2026, 12, 23, 17, 0)).total == 0
    again, second = _mails(desk, "reminder")
    assert again["Message-ID"] == first["Message-ID"]
    assert second["In-Reply-To"] == request["Message-ID"]
    assert {ack["Message-ID"], first["Message-ID"]} <= set(_refs(second))
    assert f"> {QUESTION}" in _body(second)
    assert _body(second) != _body(first)  # "we already reminded you"
    t = desk.ticket("SD-1")
    assert (t.reminders_sent, t.remind_at) == (2, None)
    assert [e["number"] for e in desk.events("SD-1", "ticket.reminder")] == [1, 2]

    # Day 5 before closing time: nothing; after it: closed, with one "closing" mail.
    assert sweep(desk, at(2026, 12, 24, 16, 59)).total == 0
    r = sweep(desk, at(2026, 12, 24, 17, 1))
    assert (r.closed, r.reminded, r.total) == (1, 0, 1)
    [closing] = _mails(desk, "closing")
    assert closing["To"] == EDITOR and closing["Auto-Submitted"] == "auto-generated"
    assert "[SD-1]" in closing["Subject"]
    assert closing["In-Reply-To"] == request["Message-ID"]
    assert ack["Message-ID"] in _refs(closing)
    t = desk.ticket("SD-1")
    assert t.state == "closed"
    assert t.closed_at == at(2026, 12, 24, 17, 1)
    assert (t.remind_at, t.close_at) == (None, None)
    [event] = [e for e in desk.events("SD-1", "ticket.state") if e["to"] == "closed"]
    assert (event["from"], event["by"]) == ("waiting", "sweep")

    # Later sweeps: nothing at all.
    assert sweep(desk, at(2026, 12, 24, 17, 1)).total == 0
    assert sweep(desk, at(2027, 1, 15, 12, 0)).total == 0
    assert _rows(desk, "closed") == [], "a waiting ticket gets the closing mail, not both"
    assert [r.kind for r in desk.outbox_rows()][start:] == ["reminder", "reminder", "closing"]


def test_waiting_over_christmas_skips_the_holiday_and_the_weekend(desk: DeskHarness) -> None:
    _request, _ack, notice = _new_ticket(desk, at(2026, 12, 22, 9, 0))
    _agent(desk, notice, f"#wait\n{QUESTION}", at(2026, 12, 22, 10, 0))  # Tuesday
    t = desk.ticket("SD-1")
    assert t.remind_at == at(2026, 12, 24, 17, 0)  # Thursday: day 2
    assert t.close_at == at(2026, 12, 30, 17, 0)   # Wednesday: day 5
    assert sweep(desk, at(2026, 12, 24, 17, 0)).reminded == 1
    # Day 4: Friday 25 is Christmas, then the weekend: Tuesday 29.
    assert desk.ticket("SD-1").remind_at == at(2026, 12, 29, 17, 0)
    for day in (25, 26, 27, 28):
        assert sweep(desk, at(2026, 12, day, 17, 30)).total == 0, day
    assert sweep(desk, at(2026, 12, 29, 17, 0)).reminded == 1
    assert sweep(desk, at(2026, 12, 30, 16, 59)).total == 0
    assert sweep(desk, at(2026, 12, 30, 17, 0)).closed == 1
    assert desk.ticket("SD-1").state == "closed"
    assert [r.kind for r in desk.outbox_rows() if r.kind in ("reminder", "closing")] == \
        ["reminder", "reminder", "closing"]


# --- 3. the editor answers, or is away ------------------------------------------------------


def test_editors_reply_on_day_3_stops_the_clock(desk: DeskHarness) -> None:
    _waiting_from_thursday(desk)
    sweep(desk, at(2026, 12, 21, 17, 0))
    [reminder] = _mails(desk, "reminder")
    row = _editor_reply(desk, reminder, "De pagina /contact.", at(2026, 12, 22, 10, 0))
    assert (row.status, row.kind) == ("ticket", "follow-up"), row.reason
    t = desk.ticket("SD-1")
    assert t.state == "open"
    assert (t.remind_at, t.close_at, t.waiting_since) == (None, None, None)
    assert t.messages[-1].kind == "follow-up"
    before = len(desk.outbox_rows())
    for when in (at(2026, 12, 23, 17, 0), at(2026, 12, 24, 17, 1), at(2027, 1, 20, 9, 0)):
        assert sweep(desk, when).total == 0
    assert len(desk.outbox_rows()) == before
    assert desk.ticket("SD-1").state == "open"


def test_out_of_office_on_day_3_changes_nothing(desk: DeskHarness) -> None:
    _waiting_from_thursday(desk)
    sweep(desk, at(2026, 12, 21, 17, 0))
    [reminder] = _mails(desk, "reminder")
    before = desk.ticket("SD-1")
    row = _editor_reply(desk, reminder, "Ik ben afwezig tot 4 januari.", at(2026, 12, 22, 8, 0),
                        Subject=f"Afwezig: {reminder['Subject']}",
                        **{"Auto-Submitted": "auto-replied"})
    assert (row.status, row.kind) == ("ticket", "auto-reply"), row.reason
    t = desk.ticket("SD-1")
    assert t.state == "waiting"
    for field in ("remind_at", "close_at", "waiting_since", "reminders_sent", "updated_at"):
        assert getattr(t, field) == getattr(before, field), field
    assert t.messages[-1].kind == "auto-reply"
    # The next reminder still goes, and the closing after it.
    assert sweep(desk, at(2026, 12, 23, 17, 0)).reminded == 1
    assert len(_rows(desk, "reminder")) == 2
    assert sweep(desk, at(2026, 12, 24, 17, 1)).closed == 1
    assert desk.ticket("SD-1").state == "closed"


def _mdn(original: EmailMessage) -> bytes:
    """The editor's mail client sends a read receipt (RFC 8098) for ``original``."""
    return (
        f"From: Eva Editor <{EDITOR}>\r\nTo: {DESK}\r\n"
        f"Subject: Gelezen: {original['Subject']}\r\n"
        "Message-ID: <mdn-1@site1234.example.be>\r\n"
        f"In-Reply-To: {original['Message-ID']}\r\nReferences: {original['Message-ID']}\r\n"
        "MIME-Version: 1.0\r\n"
        "Content-Type: multipart/report; report-type=disposition-notification; boundary=B\r\n"
        "\r\n--B\r\nContent-Type: text/plain\r\n\r\nUw bericht is gelezen.\r\n"
        "--B\r\nContent-Type: message/disposition-notification\r\n\r\n"
        f"Final-Recipient: rfc822; {EDITOR}\r\n"
        f"Original-Message-ID: {original['Message-ID']}\r\n"
        "Disposition: manual-action/MDN-sent-manually; displayed\r\n\r\n--B--\r\n"
    ).encode()


def _dsn(failed: str, original: EmailMessage) -> bytes:
    return (
        "From: MAILER-DAEMON@mx.site1234.example.be\r\n"
        f"To: {DESK}\r\nSubject: Undelivered Mail Returned to Sender\r\n"
        "Message-ID: <dsn-1@mx.site1234.example.be>\r\nAuto-Submitted: auto-replied\r\n"
        "MIME-Version: 1.0\r\n"
        "Content-Type: multipart/report; report-type=delivery-status; boundary=B\r\n\r\n"
        "--B\r\nContent-Type: text/plain\r\n\r\nMailbox full.\r\n"
        "--B\r\nContent-Type: message/delivery-status\r\n\r\n"
        "Reporting-MTA: dns; mx.site1234.example.be\r\n\r\n"
        f"Final-Recipient: rfc822; {failed}\r\nAction: failed\r\nStatus: 5.2.2\r\n\r\n"
        "--B\r\nContent-Type: text/rfc822-headers\r\n\r\n"
        f"From: Test Desk <{DESK}>\r\nTo: {failed}\r\nSubject: {original['Subject']}\r\n"
        f"Message-ID: {original['Message-ID']}\r\n\r\n--B--\r\n").encode()


CLOCK = ("state", "remind_at", "close_at", "waiting_since", "reminders_sent")


@pytest.mark.parametrize("what", ["read-receipt", "bounce", "note"])
def test_receipts_bounces_and_notes_do_not_move_the_clock(desk: DeskHarness,
                                                          what: str) -> None:
    _waiting_from_thursday(desk)
    sweep(desk, at(2026, 12, 21, 17, 0))
    [reminder] = _mails(desk, "reminder")
    before = desk.ticket("SD-1")
    desk.app.clock = FixedClock(at(2026, 12, 22, 9, 0))
    if what == "read-receipt":
        row = desk.receive(_mdn(reminder))
        assert row.kind == "auto-reply", row.reason
    elif what == "bounce":
        row = desk.receive(_dsn(EDITOR, reminder))
        assert row.kind == "bounce", row.reason
    else:
        [notice] = _mails(desk, "notify")
        row = _agent(desk, notice, "#note\nZe is met verlof.", at(2026, 12, 22, 9, 0))
        assert row.status == "ticket", row.reason
    t = desk.ticket("SD-1")
    for field in CLOCK:
        assert getattr(t, field) == getattr(before, field), field
    assert sweep(desk, at(2026, 12, 23, 17, 0)).reminded == 1
    assert sweep(desk, at(2026, 12, 24, 17, 1)).closed == 1


def test_editors_reply_to_the_handled_mail_reopens_and_cancels_the_closing(
        desk: DeskHarness) -> None:
    _request, _ack, notice = _new_ticket(desk, at(2026, 11, 30, 9, 0))
    _agent(desk, notice, f"#resolve\n{ANSWER}", at(2026, 11, 30, 10, 0))
    [handled] = _mails(desk, "handled")
    row = _editor_reply(desk, handled, "Nee, nog altijd weg.", at(2026, 12, 2, 9, 0))
    assert (row.status, row.kind) == ("ticket", "follow-up"), row.reason
    t = desk.ticket("SD-1")
    assert (t.state, t.close_at, t.remind_at) == ("open", None, None)
    before = len(desk.outbox_rows())
    assert sweep(desk, at(2026, 12, 7, 17, 1)).total == 0
    assert sweep(desk, at(2027, 1, 15, 12, 0)).total == 0
    assert len(desk.outbox_rows()) == before
    assert desk.ticket("SD-1").state == "open"


# --- 4. resolved: the "handled" mail, then closing after the quiet period -------------------


def test_resolve_with_text_sends_one_handled_mail_and_closes_after_five_days(
        desk: DeskHarness) -> None:
    request, _ack, notice = _new_ticket(desk, at(2026, 11, 30, 9, 0))  # Monday
    row = _agent(desk, notice, f"#resolve\n{ANSWER}", at(2026, 11, 30, 10, 0))
    assert row.status == "ticket", row.reason
    # The editor gets one mail after the ack: the answer is the "handled" mail.
    assert [r.kind for r in desk.outbox_rows() if r.kind not in AGENT_KINDS] == \
        ["ack", "handled"]
    [handled] = _mails(desk, "handled")
    assert handled["To"] == EDITOR and "[SD-1]" in handled["Subject"]
    body = _body(handled)
    assert ANSWER in body and "#resolve" not in body
    assert "07/12/2026" in body  # the closing date it announces
    t = desk.ticket("SD-1")
    assert t.state == "resolved"
    assert t.close_at == at(2026, 12, 7, 17, 0)  # Monday: working day 5
    assert t.remind_at is None
    assert t.first_response_at == at(2026, 11, 30, 10, 0)

    assert sweep(desk, at(2026, 12, 4, 17, 0)).total == 0
    assert sweep(desk, at(2026, 12, 7, 16, 59)).total == 0
    r = sweep(desk, at(2026, 12, 7, 17, 1))
    assert (r.closed, r.total) == (1, 1)
    assert sweep(desk, at(2026, 12, 7, 17, 1)).total == 0
    [closed] = _mails(desk, "closed")
    assert closed["To"] == EDITOR and closed["Auto-Submitted"] == "auto-generated"
    assert closed["In-Reply-To"] == request["Message-ID"]
    assert handled["Message-ID"] in _refs(closed)
    assert _rows(desk, "closing") == [] and _rows(desk, "reminder") == []
    t = desk.ticket("SD-1")
    assert (t.state, t.closed_at, t.close_at) == ("closed", at(2026, 12, 7, 17, 1), None)

    # A reply after closing opens a new ticket, linked to the closed one.
    row = _editor_reply(desk, closed, "Het menu is weer weg.", at(2026, 12, 8, 9, 0))
    assert row.status == "ticket", row.reason
    assert desk.tickets() == ["SD-1", "SD-2"]
    assert desk.ticket("SD-2").linked_to_id == t.id
    assert desk.ticket("SD-1").state == "closed"


def test_resolve_without_text_sends_the_handled_mail(desk: DeskHarness) -> None:
    _request, _ack, notice = _new_ticket(desk, at(2026, 11, 30, 9, 0))
    _agent(desk, notice, "#resolve", at(2026, 11, 30, 10, 0))
    assert [r.kind for r in desk.outbox_rows() if r.kind not in AGENT_KINDS] == \
        ["ack", "handled"]
    [handled] = _mails(desk, "handled")
    assert handled["To"] == EDITOR
    assert "07/12/2026" in _body(handled)
    assert desk.ticket("SD-1").close_at == at(2026, 12, 7, 17, 0)


def test_no_closed_notice_when_notify_on_close_is_off(quiet_desk: DeskHarness) -> None:
    desk = quiet_desk
    _request, _ack, notice = _new_ticket(desk, at(2026, 11, 30, 9, 0))
    _agent(desk, notice, f"#resolve\n{ANSWER}", at(2026, 11, 30, 10, 0))
    before = len(desk.outbox_rows())
    assert sweep(desk, at(2026, 12, 7, 17, 1)).closed == 1
    assert desk.ticket("SD-1").state == "closed"
    assert len(desk.outbox_rows()) == before
    assert _rows(desk, "closed") == []


def test_notify_on_close_off_still_sends_the_closing_mail_of_a_waiting_ticket(
        quiet_desk: DeskHarness) -> None:
    # notify_on_close is about the quiet closing of resolved tickets; a waiting ticket is
    # closed for want of an answer and the editor is told why.
    _waiting_from_thursday(quiet_desk)
    assert sweep(quiet_desk, at(2026, 12, 24, 17, 1)).closed == 1
    assert len(_rows(quiet_desk, "closing")) == 1


# --- 5. a sweep after an outage -------------------------------------------------------------


def test_sweep_after_a_ten_day_outage_only_closes(desk: DeskHarness) -> None:
    _waiting_from_thursday(desk)
    start = len(desk.outbox_rows())
    r = sweep(desk, at(2027, 1, 3, 17, 0))  # ten days after the closing was due
    assert (r.closed, r.reminded, r.total) == (1, 0, 1)
    assert [row.kind for row in desk.outbox_rows()][start:] == ["closing"]
    assert desk.ticket("SD-1").state == "closed"
    assert sweep(desk, at(2027, 1, 3, 17, 0)).total == 0


def test_late_sweep_sends_one_reminder_not_the_missed_ones(desk: DeskHarness) -> None:
    _waiting_from_thursday(desk)
    # Down from Monday to Wednesday evening: both reminders are due, one is sent.
    r = sweep(desk, at(2026, 12, 23, 17, 30))
    assert (r.reminded, r.total) == (1, 1)
    assert sweep(desk, at(2026, 12, 24, 16, 0)).total == 0
    assert len(_rows(desk, "reminder")) == 1
    assert sweep(desk, at(2026, 12, 24, 17, 1)).closed == 1


# --- 6. first-response time: warning at 75 %, then breach -----------------------------------


def _sla_rows(desk: DeskHarness) -> list[str]:
    return [r.kind for r in desk.outbox_rows() if r.kind in ("sla-warning", "sla-breach")]


def test_first_response_warning_then_breach_each_once(desk: DeskHarness) -> None:
    _request, _ack, notice = _new_ticket(desk, at(2026, 12, 14, 9, 0))  # Monday
    t = desk.ticket("SD-1")
    assert t.sla_alert_at == at(2026, 12, 14, 12, 0)
    assert t.first_response_due == at(2026, 12, 14, 13, 0)

    assert sweep(desk, at(2026, 12, 14, 11, 59)).total == 0
    r = sweep(desk, at(2026, 12, 14, 12, 1))
    assert (r.warned, r.breached, r.total) == (1, 0, 1)
    [warning] = _mails(desk, "sla-warning")
    assert warning["To"] == AGENT
    assert warning["Reply-To"] == DESK
    assert warning["From"].addresses[0].addr_spec == DESK
    assert warning["Auto-Submitted"] == "auto-generated"
    assert "[SD-1]" in warning["Subject"]
    assert warning["In-Reply-To"] == notice["Message-ID"]  # the agents' thread
    body = _body(warning)
    assert "14/12/2026 13:00" in body and "75%" in body
    assert desk.ticket("SD-1").sla_alert_at == at(2026, 12, 14, 13, 0)

    assert sweep(desk, at(2026, 12, 14, 12, 1)).total == 0
    assert sweep(desk, at(2026, 12, 14, 12, 30)).total == 0
    assert _sla_rows(desk) == ["sla-warning"]

    r = sweep(desk, at(2026, 12, 14, 13, 1))
    assert (r.warned, r.breached, r.total) == (0, 1, 1)
    [breach] = _mails(desk, "sla-breach")
    assert breach["To"] == AGENT and breach["Reply-To"] == DESK
    assert "14/12/2026 13:00" in _body(breach)
    assert warning["Message-ID"] in _refs(breach)
    assert desk.ticket("SD-1").sla_alert_at is None

    assert sweep(desk, at(2026, 12, 14, 13, 1)).total == 0
    assert sweep(desk, at(2026, 12, 15, 9, 0)).total == 0
    assert _sla_rows(desk) == ["sla-warning", "sla-breach"]
    assert [r.kind for r in desk.outbox_rows() if r.kind not in AGENT_KINDS] == ["ack"], \
        "the editor hears nothing of it"
    assert len(desk.events("SD-1", "ticket.sla_warned")) == 1
    assert len(desk.events("SD-1", "ticket.sla_breached")) == 1


def test_an_answer_before_the_warning_means_no_alert_ever(desk: DeskHarness) -> None:
    _request, _ack, notice = _new_ticket(desk, at(2026, 12, 14, 9, 0))
    _agent(desk, notice, "We kijken ernaar.", at(2026, 12, 14, 11, 0))
    t = desk.ticket("SD-1")
    assert t.first_response_at == at(2026, 12, 14, 11, 0)
    assert t.sla_alert_at is None
    for when in (at(2026, 12, 14, 12, 1), at(2026, 12, 14, 13, 1), at(2026, 12, 14, 15, 0)):
        assert sweep(desk, when).total == 0
    assert _sla_rows(desk) == []


def test_an_answer_between_warning_and_breach_stops_the_breach(desk: DeskHarness) -> None:
    _request, _ack, notice = _new_ticket(desk, at(2026, 12, 14, 9, 0))
    assert sweep(desk, at(2026, 12, 14, 12, 1)).warned == 1
    _agent(desk, notice, "We kijken ernaar.", at(2026, 12, 14, 12, 40))
    assert sweep(desk, at(2026, 12, 14, 13, 1)).total == 0
    assert _sla_rows(desk) == ["sla-warning"]


def test_a_resolved_ticket_gets_no_first_response_alerts(desk: DeskHarness) -> None:
    # "#resolve" alone: the editor gets the "handled" mail, the ticket is resolved. Telling
    # the agents "nobody has answered the editor yet" an hour later is wrong.
    _request, _ack, notice = _new_ticket(desk, at(2026, 12, 14, 9, 0))
    _agent(desk, notice, "#resolve", at(2026, 12, 14, 10, 0))
    assert desk.ticket("SD-1").state == "resolved"
    assert len(_rows(desk, "handled")) == 1
    for when in (at(2026, 12, 14, 12, 1), at(2026, 12, 14, 13, 1)):
        assert sweep(desk, when).total == 0
    assert _sla_rows(desk) == []


def test_a_waiting_ticket_without_an_answer_is_still_alerted(desk: DeskHarness) -> None:
    # "#wait" alone tells the editor nothing: the first response is still owed.
    _request, _ack, notice = _new_ticket(desk, at(2026, 12, 14, 9, 0))
    _agent(desk, notice, "#wait", at(2026, 12, 14, 10, 0))
    assert len(desk.outbox()) == 1
    assert sweep(desk, at(2026, 12, 14, 12, 1)).warned == 1


def test_late_first_sweep_sends_only_the_breach(desk: DeskHarness) -> None:
    _new_ticket(desk, at(2026, 12, 14, 9, 0))
    r = sweep(desk, at(2026, 12, 14, 15, 0))
    assert (r.warned, r.breached, r.total) == (0, 1, 1)
    assert sweep(desk, at(2026, 12, 14, 15, 30)).total == 0
    assert _sla_rows(desk) == ["sla-breach"]


# --- 7. exactly once under concurrency ------------------------------------------------------


def _make_waiting(app: App, n: int, since: datetime, remind: datetime,
                  close: datetime) -> None:
    """``n`` waiting tickets whose first reminder is due, each for its own editor (the loop
    brake counts per address), written in one transaction."""
    with transaction(app.sessions) as s:
        for i in range(n):
            number = 1000 + i
            s.add(Ticket(
                number=number, ref=f"SD-{number}", state="waiting", priority="normal",
                kind="request", site_id="1234", requester=f"editor{i}@site1234.example.be",
                requester_name=f"Editor {i}", subject=f"Vraag {i}", language="nl",
                created_at=since, updated_at=since, first_response_due=None,
                first_response_at=since, remind_at=remind, close_at=close,
                waiting_since=since, reminders_sent=0, sla_alert_at=None))


def test_concurrent_sweeps_send_each_reminder_exactly_once(desk: DeskHarness) -> None:
    app = desk.app
    n, threads = 200, 4
    since = at(2026, 12, 17, 10, 0)
    _make_waiting(app, n, since, at(2026, 12, 21, 17, 0), at(2026, 12, 24, 17, 0))
    now = at(2026, 12, 21, 17, 5)
    barrier = threading.Barrier(threads)
    results: list[SweepResult] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def run() -> None:
        try:
            barrier.wait(10)
            r = lifecycle.sweep(app.sessions, app.desk, now, batch=20)
            with lock:
                results.append(r)
        except BaseException as exc:  # surfaced below
            with lock:
                errors.append(exc)

    workers = [threading.Thread(target=run) for _ in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(120)
    assert not any(w.is_alive() for w in workers), "a sweep hung"
    assert errors == []
    assert sum(r.reminded for r in results) == n
    assert sum(r.total for r in results) == n

    rows = _rows(desk, "reminder")
    assert len(rows) == n
    per_ticket = Counter(r.ticket_id for r in rows)
    assert len(per_ticket) == n and set(per_ticket.values()) == {1}
    assert len({r.recipients for r in rows}) == n
    with app.sessions() as s:
        tickets = list(s.execute(select(Ticket).where(Ticket.number >= 1000)).scalars())
        events = s.execute(select(Event.ticket_id).where(Event.kind == "ticket.reminder")
                           ).scalars().all()
    assert len(tickets) == n
    assert {(t.reminders_sent, t.remind_at) for t in tickets} == \
        {(1, at(2026, 12, 23, 17, 0))}
    assert sorted(Counter(events).values()) == [1] * n

    # Everything handled: the same sweep again sends nothing.
    again = [lifecycle.sweep(app.sessions, app.desk, now, batch=20) for _ in range(2)]
    assert sum(r.total for r in again) == 0
    assert len(_rows(desk, "reminder")) == n


def test_a_reminder_held_by_the_loop_brake_goes_an_hour_later(desk: DeskHarness) -> None:
    """Seven waiting tickets of one editor fall due at once: the brake (5 an hour) lets five
    reminders through; the other two are not lost but sent when the hour has passed."""
    app = desk.app
    limit = app.settings.access.auto_replies_per_hour
    _make_waiting(app, limit + 2, at(2026, 12, 17, 10, 0), at(2026, 12, 21, 17, 0),
                  at(2026, 12, 24, 17, 0))
    with transaction(app.sessions) as s:
        for t in s.execute(select(Ticket).where(Ticket.number >= 1000)).scalars():
            t.requester = EDITOR
    first = sweep(desk, at(2026, 12, 21, 17, 5))
    assert first.reminded == limit and len(_rows(desk, "reminder")) == limit
    assert sweep(desk, at(2026, 12, 21, 17, 30)).reminded == 0
    later = sweep(desk, at(2026, 12, 21, 18, 6))
    assert later.reminded == 2 and len(_rows(desk, "reminder")) == limit + 2
    with app.sessions() as s:
        sent = s.execute(select(Ticket.reminders_sent).where(Ticket.number >= 1000)).all()
    assert {n for (n,) in sent} == {1}


# --- 8. an impossible move is refused, with the reason, by mail ----------------------------


def test_closed_ticket_cannot_be_set_waiting(desk: DeskHarness) -> None:
    _request, _ack, notice = _new_ticket(desk, at(2026, 12, 14, 9, 0))
    row = _agent(desk, notice, "#close", at(2026, 12, 14, 9, 30))
    assert row.status == "ticket", row.reason
    before = desk.ticket("SD-1")
    assert before.state == "closed" and before.closed_at == at(2026, 12, 14, 9, 30)
    editor_before = len(desk.outbox())
    states_before = len(desk.events("SD-1", "ticket.state"))

    row = _agent(desk, notice, "#status waiting\nWelke pagina?", at(2026, 12, 14, 10, 0))
    assert row.status == "refused", row.reason
    assert "cannot become waiting" in (row.reason or "")
    [refusal_row] = _rows(desk, "command-refused")
    assert refusal_row.recipients == AGENT
    [refusal] = _mails(desk, "command-refused")
    assert refusal["To"] == AGENT and "[SD-1]" in refusal["Subject"]
    body = _body(refusal)
    assert "> #status waiting" in body
    assert "a closed ticket cannot become waiting (from closed: open)" in body
    after = desk.ticket("SD-1")
    for field in ("state", "closed_at", "remind_at", "close_at", "waiting_since",
                  "updated_at", "first_response_at"):
        assert getattr(after, field) == getattr(before, field), field
    assert len(desk.events("SD-1", "ticket.state")) == states_before
    assert len(desk.outbox()) == editor_before, "nothing reaches the editor"
    # And the clock has nothing to do for it.
    assert sweep(desk, at(2027, 1, 15, 12, 0)).total == 0
