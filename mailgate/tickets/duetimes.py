"""When something is next due on a ticket, set as it enters a state (docs/design.md §1.5).

Waiting on the editor: reminders at the end of working days 2 and 4, closing at the end of
working day 5 (``[lifecycle]``), counted in the desk's time zone without weekends, Belgian
holidays or the desk's closed days. Resolved: closing after the same quiet period. Any other
state: nothing due.
"""

from __future__ import annotations

from datetime import datetime

from mailgate.calendar import BusinessCalendar
from mailgate.config import LifecycleSettings
from mailgate.db.models import Ticket
from mailgate.tickets.states import State


def next_reminder(calendar: BusinessCalendar, lifecycle: LifecycleSettings, ticket: Ticket,
                  after: datetime) -> datetime | None:
    """The first reminder not sent yet that falls after ``after`` and before closing: a sweep
    that comes late sends what is due once, never a pile of missed reminders."""
    if ticket.waiting_since is None or ticket.close_at is None:
        return None
    for day in lifecycle.reminder_working_days[ticket.reminders_sent:]:
        at = calendar.end_of_working_day(ticket.waiting_since, day)
        if after < at < ticket.close_at:
            return at
    return None


def entered(ticket: Ticket, state: State, now: datetime, calendar: BusinessCalendar,
            lifecycle: LifecycleSettings) -> None:
    ticket.remind_at = ticket.close_at = ticket.waiting_since = None
    ticket.reminders_sent = 0
    if state == State.WAITING:
        ticket.waiting_since = now
        ticket.close_at = calendar.end_of_working_day(now, lifecycle.auto_close_working_days)
        ticket.remind_at = next_reminder(calendar, lifecycle, ticket, now)
    elif state == State.RESOLVED:
        ticket.close_at = calendar.end_of_working_day(now, lifecycle.auto_close_working_days)
    elif state == State.CLOSED:
        ticket.closed_at = now
        ticket.sla_alert_at = None
