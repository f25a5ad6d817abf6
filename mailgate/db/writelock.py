"""One writer at a time inside the process, handed over in order, intake first (SQLite).

SQLite allows one writer. Left to its busy handler, waiting threads sleep and poll while
the worker, finishing one transaction and beginning the next within microseconds, wins
the lock again and again: intake then starves and SMTP clients wait (bench/ingest.py
measured it). This lock hands the database to the oldest waiter of the highest class, so a
mail being accepted never waits behind more than the one transaction in progress. Other
processes (the CLI, `deliver`) still meet SQLite's own busy timeout.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

INTAKE, NORMAL = 0, 1


class WriteLock:
    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._busy = False
        self._waiting: list[tuple[int, int]] = []
        self._tickets = 0
        self._owner: int | None = None

    @contextmanager
    def held(self, priority: int = NORMAL) -> Iterator[None]:
        if self._owner == threading.get_ident():
            # SQLite would wait on itself until the busy timeout; say what is wrong instead.
            raise RuntimeError("nested write transaction in one thread")
        with self._cond:
            self._tickets += 1
            me = (priority, self._tickets)
            self._waiting.append(me)
            while self._busy or min(self._waiting) != me:
                self._cond.wait()
            self._waiting.remove(me)
            self._busy = True
            self._owner = threading.get_ident()
        try:
            yield
        finally:
            with self._cond:
                self._busy = False
                self._owner = None
                self._cond.notify_all()


_LOCKS: weakref.WeakKeyDictionary[Any, WriteLock] = weakref.WeakKeyDictionary()


def attach(engine: Any) -> None:
    _LOCKS[engine] = WriteLock()


def for_engine(engine: Any) -> WriteLock | None:
    """The engine's lock, or None where the database serialises writers itself (PostgreSQL)."""
    return _LOCKS.get(engine)
