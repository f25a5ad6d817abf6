"""APScheduler wiring: the periodic sweeps of the daemon.

Sweeps only wake the daemon's loops; per-ticket due times live in indexed rows
(docs/design.md §1.5), so the scheduler keeps no state of its own and needs no job store.
"""

from __future__ import annotations

from collections.abc import Callable

from apscheduler.schedulers.asyncio import AsyncIOScheduler


def build(poll_seconds: float, wake_worker: Callable[[], None],
          wake_sender: Callable[[], None],
          sweep: tuple[float, Callable[[], None]] | None = None,
          watchdog: tuple[float, Callable[[], None]] | None = None) -> AsyncIOScheduler:
    sched = AsyncIOScheduler(timezone="UTC", job_defaults={"coalesce": True,
                                                           "max_instances": 1,
                                                           "misfire_grace_time": 30})
    # Catches mail stored by another process (`deliver`, a peer instance) or left pending
    # by an outage, and outbox rows whose retry time has come.
    sched.add_job(wake_worker, "interval", seconds=poll_seconds, id="inbound-sweep")
    sched.add_job(wake_sender, "interval", seconds=poll_seconds, id="outbox-sweep")
    if sweep is not None:
        # Reminders, closings and SLA alerts; what is due lives in indexed ticket columns.
        every, wake = sweep
        sched.add_job(wake, "interval", seconds=every, id="lifecycle-sweep")
    if watchdog is not None:
        interval, ping = watchdog
        sched.add_job(ping, "interval", seconds=interval, id="watchdog")
    return sched
