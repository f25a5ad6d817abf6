"""One writer at a time inside the process, handed over in order, intake first (SQLite).

SQLite allows one writer. Left to its busy handler, waiting threads sleep and poll while
the worker, finishing one transaction and beginning the next within microseconds, wins
the lock again and again: intake then starves and SMTP clients wait (bench/ingest.py
measured it). This lock hands the database to the oldest waiter of the highest class, so a
mail being accepted never waits behind more than the one transaction in progress.

Between the daemon's processes (``[worker] processes``) the same starvation happened one
level up: while a worker process began its next transaction the instant it committed, the
daemon's own writers — the sender's claims among them — slept in SQLite's busy handler and
sent nothing for seconds (bench/mix.py --drain, --processes 2). So the holder of this lock
also passes a turnstile of two record locks in a file beside the database, which takes
turns between processes (see `Turnstile`). Other processes (the CLI, `deliver`) still meet
SQLite's own busy timeout.
"""

from __future__ import annotations

import fcntl
import os
import threading
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

INTAKE, NORMAL = 0, 1


class Turnstile:
    """Turns between processes: a waiter queues on the gate while it waits for the door, so
    the holder, coming back for its next transaction, waits at the gate behind it.

    POSIX record locks are the process's: only the holder of the in-process `WriteLock`
    touches them, so one descriptor per process serves all its threads. The kernel drops
    them with a process that dies.
    """

    GATE, DOOR = 0, 1

    def __init__(self, path: str) -> None:
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        weakref.finalize(self, os.close, self._fd)  # with its engine (tests make many)

    def enter(self) -> None:
        fcntl.lockf(self._fd, fcntl.LOCK_EX, 1, self.GATE)
        try:
            fcntl.lockf(self._fd, fcntl.LOCK_EX, 1, self.DOOR)
        finally:
            fcntl.lockf(self._fd, fcntl.LOCK_UN, 1, self.GATE)

    def leave(self) -> None:
        fcntl.lockf(self._fd, fcntl.LOCK_UN, 1, self.DOOR)


class WriteLock:
    def __init__(self, turnstile: Turnstile | None = None) -> None:
        self._turnstile = turnstile
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
            if self._turnstile is None:
                yield
            else:
                self._turnstile.enter()
                try:
                    yield
                finally:
                    self._turnstile.leave()
        finally:
            with self._cond:
                self._busy = False
                self._owner = None
                self._cond.notify_all()


_LOCKS: weakref.WeakKeyDictionary[Any, WriteLock] = weakref.WeakKeyDictionary()


def attach(engine: Any, database_path: str | None = None) -> None:
    """A lock for the engine; with the database file's path, shared with the daemon's other
    processes through ``<path>-writers``."""
    turnstile = Turnstile(f"{database_path}-writers") if database_path else None
    _LOCKS[engine] = WriteLock(turnstile)


def for_engine(engine: Any) -> WriteLock | None:
    """The engine's lock, or None where the database serialises writers itself (PostgreSQL)."""
    return _LOCKS.get(engine)
