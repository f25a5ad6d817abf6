"""Working days and business hours: Europe/Brussels, Belgian public holidays."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import holidays


class BusinessCalendar:
    def __init__(self, tz: ZoneInfo, business_hours: str = "08:00-17:00",
                 country: str = "BE", closed_days: tuple[date, ...] = ()) -> None:
        self.tz = tz
        start, end = business_hours.split("-")
        self.start = time.fromisoformat(start)
        self.end = time(23, 59, 59) if end == "24:00" else time.fromisoformat(end)
        self._holidays = holidays.country_holidays(country)
        # The desk's own closing days (bridge days, a move), on top of the public holidays.
        self._closed = frozenset(closed_days)

    def is_working_day(self, day: date) -> bool:
        return day.weekday() < 5 and day not in self._holidays and day not in self._closed

    def end_of_working_day(self, moment: datetime, days: int) -> datetime:
        """Closing time of the ``days``-th working day after the local day of ``moment``."""
        day = moment.astimezone(self.tz).date()
        added = 0
        while added < days:
            day += timedelta(days=1)
            if self.is_working_day(day):
                added += 1
        return datetime.combine(day, self.end, self.tz).astimezone(UTC)

    def add_working_days(self, moment: datetime, days: int) -> datetime:
        """Same local time of day, ``days`` working days later."""
        local = moment.astimezone(self.tz)
        day = local.date()
        added = 0
        while added < days:
            day += timedelta(days=1)
            if self.is_working_day(day):
                added += 1
        return datetime.combine(day, local.timetz().replace(tzinfo=None),
                                self.tz).astimezone(UTC)

    def add_business_hours(self, moment: datetime, hours: float) -> datetime:
        """The moment ``hours`` of business time after ``moment`` (which may be off-hours)."""
        remaining = timedelta(hours=hours)
        local = moment.astimezone(self.tz)
        while True:
            day = local.date()
            if self.is_working_day(day):
                opens = datetime.combine(day, self.start, self.tz)
                closes = datetime.combine(day, self.end, self.tz)
                begin = max(local, opens)
                if begin < closes:
                    if begin + remaining <= closes:
                        return (begin + remaining).astimezone(UTC)
                    remaining -= closes - begin
            local = datetime.combine(day + timedelta(days=1), time(0), self.tz)
