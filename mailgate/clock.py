"""The one clock: UTC inside; Europe/Brussels only at the edges (templates, calendar)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol


class Clock(Protocol):
    def now(self) -> datetime: ...


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)


@dataclass
class FixedClock:
    """A clock that says what it is told; `tick --now` and tests use it."""

    at: datetime

    def now(self) -> datetime:
        return self.at if self.at.tzinfo else self.at.replace(tzinfo=UTC)


def parse_iso(value: str) -> datetime:
    """ISO 8601 with or without offset; without one it means UTC."""
    dt = datetime.fromisoformat(value)
    return dt if dt.tzinfo else dt.replace(tzinfo=UTC)
