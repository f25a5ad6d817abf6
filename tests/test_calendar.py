from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from mailgate.calendar import BusinessCalendar

BXL = ZoneInfo("Europe/Brussels")
cal = BusinessCalendar(BXL, "08:00-17:00")


def local(*args: int) -> datetime:
    return datetime(*args, tzinfo=BXL)


def test_business_hours_within_a_day() -> None:
    assert cal.add_business_hours(local(2026, 11, 30, 9, 0), 4) == local(2026, 11, 30, 13, 0)


def test_business_hours_roll_over_night_and_weekend() -> None:
    # Friday 15:00 + 4h: 2h on Friday, 2h on Monday.
    assert cal.add_business_hours(local(2026, 11, 27, 15, 0), 4) == local(2026, 11, 30, 10, 0)
    # Saturday mail: clock starts Monday 08:00.
    assert cal.add_business_hours(local(2026, 11, 28, 11, 0), 4) == local(2026, 11, 30, 12, 0)


def test_belgian_holidays_are_skipped() -> None:
    # 24 Dec 2026 is a Thursday; 25 Dec (Christmas) is a public holiday.
    assert cal.add_business_hours(local(2026, 12, 24, 16, 0), 4) == local(2026, 12, 28, 11, 0)
    assert not cal.is_working_day(datetime(2026, 7, 21).date())  # national day


def test_working_days() -> None:
    start = local(2026, 12, 23, 10, 0)  # Wednesday
    # Thu 24, (Fri 25 holiday), Mon 28, Tue 29, Wed 30, Thu 31 -> five working days.
    assert cal.add_working_days(start, 5) == local(2026, 12, 31, 10, 0).astimezone(UTC)
