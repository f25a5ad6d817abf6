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
turns between processes (see `Turnstile`); the CLI's commands pass it too. `deliver`'s plain
connection meets SQLite's own busy timeout alone.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import threading
import time
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

log = logging.getLogger(__name__)

INTAKE, NORMAL = 0, 1


class Turnstile:
    """Turns between processes: a waiter holds the gate while it waits for the door, so the
    holder, coming back for its next transaction, waits at the gate behind it.

    POSIX record locks are the process's: only the holder of the in-process `WriteLock`
    touches them, so one descriptor per process serves all its threads. The kernel drops
    them with a process that dies. Waits poll (every POLL seconds) rather than block, so
    they end: the door is waited for at most as long as SQLite's busy timeout, and the gate
    only GATE_SECONDS — a process stopped while it held the gate (SIGSTOP, a debugger) must
    not stop the others. Past either, the writer goes on to SQLite's own busy handling.
    """

    GATE, DOOR = 0, 1
    POLL = 0.001
    GATE_SECONDS = 0.5

    def __init__(self, path: str, wait_seconds: float) -> None:
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        weakref.finalize(self, os.close, self._fd)  # with its engine (tests make many)
        self._wait = wait_seconds

    def _take(self, offset: int, seconds: float) -> bool:
        deadline = time.monotonic() + seconds
        while True:
            try:
                fcntl.lockf(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, offset)
                return True
            except OSError as exc:
                if exc.errno not in (errno.EACCES, errno.EAGAIN):
                    raise
            if time.monotonic() >= deadline:
                return False
            time.sleep(self.POLL)

    def enter(self) -> bool:
        """Waits for its turn; False if the wait ran out (the door is not held then)."""
        gate = self._take(self.GATE, self.GATE_SECONDS)
        try:
            return self._take(self.DOOR, self._wait)
        finally:
            if gate:
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
            if self._turnstile is None or not self._turnstile.enter():
                yield
            else:
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


def attach(engine: Any, database_path: str | None = None, wait_seconds: float = 5.0) -> None:
    """A lock for the engine; with the database file's path, shared with the daemon's other
    processes through ``<path>-writers`` (``wait_seconds``: SQLite's busy timeout)."""
    turnstile = None
    if database_path:
        try:
            turnstile = Turnstile(f"{database_path}-writers", wait_seconds)
        except OSError as exc:
            # Another user's daemon (a CLI run as someone else): turns are a courtesy
            # between the daemon's processes, not a condition of writing.
            log.debug("no turnstile beside %s: %s", database_path, exc)
    _LOCKS[engine] = WriteLock(turnstile)


def for_engine(engine: Any) -> WriteLock | None:
    """The engine's lock, or None where the database serialises writers itself (PostgreSQL)."""
    return _LOCKS.get(engine)
