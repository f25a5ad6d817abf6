"""The desk's calendar on the dates the lifecycle depends on: first-response due times over a
weekend, Christmas and the end of summer time, working days for reminders and closing, and
the desk's own closed days. Pure calculations; the same dates through real tickets are in
tests/tickets/test_lifecycle.py."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from mailgate.calendar import BusinessCalendar
from mailgate.config import LifecycleSettings

BXL = ZoneInfo("Europe/Brussels")
cal = BusinessCalendar(BXL, "08:00-17:00")


def local(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=BXL)


# --- first response: 4 business hours, 08:00-17:00 -----------------------------------------


@pytest.mark.parametrize(("asked", "due"), [
    # Friday 15:00: 2 h on Friday (15-17), 2 h on Monday (08-10).
    (local(2026, 12, 18, 15, 0), local(2026, 12, 21, 10, 0)),
    # Thursday 24 Dec 15:00: 2 h on Thursday, Christmas (Friday 25) and the weekend skipped.
    (local(2026, 12, 24, 15, 0), local(2026, 12, 28, 10, 0)),
    # Thursday 24 Dec 16:00: 1 h, then 3 h on Monday 28.
    (local(2026, 12, 24, 16, 0), local(2026, 12, 28, 11, 0)),
    # Friday 23 Oct 16:00 (summer time): 1 h, then 3 h on Monday 26 (winter time).
    (local(2026, 10, 23, 16, 0), local(2026, 10, 26, 11, 0)),
    # Before opening: the clock starts at 08:00.
    (local(2026, 12, 21, 6, 30), local(2026, 12, 21, 12, 0)),
    # After closing on Friday: Monday 08:00 + 4 h.
    (local(2026, 12, 18, 19, 0), local(2026, 12, 21, 12, 0)),
    # Exactly at closing time: nothing left that day.
    (local(2026, 12, 18, 17, 0), local(2026, 12, 21, 12, 0)),
    # New Year's Day (Friday 1 Jan 2027) is a holiday.
    (local(2026, 12, 31, 16, 0), local(2027, 1, 4, 11, 0)),
])
def test_first_response_due(asked: datetime, due: datetime) -> None:
    got = cal.add_business_hours(asked, 4)
    assert got == due
    assert got.tzinfo == UTC  # the database's zone; Brussels only at the edges


def test_first_response_due_across_the_end_of_summer_time() -> None:
    got = cal.add_business_hours(local(2026, 10, 23, 16, 0), 4)
    assert local(2026, 10, 23, 16, 0).utcoffset() == timedelta(hours=2)
    assert got.astimezone(BXL).utcoffset() == timedelta(hours=1)
    assert got.astimezone(BXL).replace(tzinfo=None) == datetime(2026, 10, 26, 11, 0)
    # 14:00 UTC Friday → 10:00 UTC Monday: the local hour is right, not merely the UTC one.
    assert got == datetime(2026, 10, 26, 10, 0, tzinfo=UTC)


def test_first_response_due_across_the_start_of_summer_time() -> None:
    # Summer time starts on Sunday 28 March 2027, which is also Easter: Friday 26 (+01:00),
    # Easter Monday 29 skipped, Tuesday 30 (+02:00).
    got = cal.add_business_hours(local(2027, 3, 26, 16, 0), 4)
    assert got.astimezone(BXL).replace(tzinfo=None) == datetime(2027, 3, 30, 11, 0)
    assert got.astimezone(BXL).utcoffset() == timedelta(hours=2)


def test_warning_threshold_is_three_business_hours() -> None:
    # 75 % of 4 h: a Monday 09:00 ticket is warned about at 12:00 and due at 13:00.
    assert cal.add_business_hours(local(2026, 12, 14, 9, 0), 3.0) == local(2026, 12, 14, 12, 0)
    # ... and one opened at 16:00 on Friday is warned about on Monday at 10:00.
    assert cal.add_business_hours(local(2026, 12, 18, 16, 0), 3.0) == local(2026, 12, 21, 10, 0)


# --- working days: reminders on days 2 and 4, closing on day 5 ------------------------------


def test_waiting_from_thursday_17_december() -> None:
    start = local(2026, 12, 17, 10, 0)
    assert cal.end_of_working_day(start, 2) == local(2026, 12, 21, 17, 0)  # Monday
    assert cal.end_of_working_day(start, 4) == local(2026, 12, 23, 17, 0)  # Wednesday
    assert cal.end_of_working_day(start, 5) == local(2026, 12, 24, 17, 0)  # Thursday


def test_waiting_from_tuesday_22_december_skips_christmas_and_the_weekend() -> None:
    start = local(2026, 12, 22, 10, 0)
    assert cal.end_of_working_day(start, 2) == local(2026, 12, 24, 17, 0)
    assert cal.end_of_working_day(start, 4) == local(2026, 12, 29, 17, 0)
    assert cal.end_of_working_day(start, 5) == local(2026, 12, 30, 17, 0)


def test_end_of_working_day_counts_from_the_local_date() -> None:
    # 23:30 UTC on Thursday is already Friday 00:30 in Brussels: Friday is day 0.
    late = datetime(2026, 12, 17, 23, 30, tzinfo=UTC)
    assert cal.end_of_working_day(late, 1) == local(2026, 12, 21, 17, 0)
    # Waiting set on a Saturday: Monday is day 1.
    assert cal.end_of_working_day(local(2026, 12, 19, 11, 0), 1) == local(2026, 12, 21, 17, 0)


def test_end_of_working_day_across_the_end_of_summer_time() -> None:
    got = cal.end_of_working_day(local(2026, 10, 22, 10, 0), 2)  # Thursday → Monday 26
    assert got.astimezone(BXL).replace(tzinfo=None) == datetime(2026, 10, 26, 17, 0)
    assert got == datetime(2026, 10, 26, 16, 0, tzinfo=UTC)


@pytest.mark.parametrize("day", [
    date(2026, 1, 1), date(2026, 4, 6), date(2026, 5, 1), date(2026, 5, 14),
    date(2026, 5, 25), date(2026, 7, 21), date(2026, 11, 11), date(2026, 12, 25),
])
def test_belgian_public_holidays_on_weekdays_are_not_working_days(day: date) -> None:
    assert day.weekday() < 5
    assert not cal.is_working_day(day)


def test_christmas_eve_and_new_years_eve_are_working_days() -> None:
    assert cal.is_working_day(date(2026, 12, 24))
    assert cal.is_working_day(date(2026, 12, 31))


# --- the desk's own closed days -------------------------------------------------------------


def test_closed_days_from_the_config_push_everything_by_a_day() -> None:
    lc = LifecycleSettings(closed_days=("2026-12-21",))
    closed = BusinessCalendar(BXL, "08:00-17:00", closed_days=lc.closed_dates)
    assert not closed.is_working_day(date(2026, 12, 21))
    assert cal.is_working_day(date(2026, 12, 21))
    # First response: Friday 15:00 → Tuesday 10:00 instead of Monday.
    assert closed.add_business_hours(local(2026, 12, 18, 15, 0), 4) == local(2026, 12, 22, 10, 0)
    # Waiting from Thursday 17: day 2 is Tuesday 22, day 4 Thursday 24, day 5 Monday 28.
    start = local(2026, 12, 17, 10, 0)
    assert closed.end_of_working_day(start, 2) == local(2026, 12, 22, 17, 0)
    assert closed.end_of_working_day(start, 4) == local(2026, 12, 24, 17, 0)
    assert closed.end_of_working_day(start, 5) == local(2026, 12, 28, 17, 0)
