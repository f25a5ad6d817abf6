"""The write lock (mailgate/db/writelock.py): one writer at a time, handed over to the oldest
waiter of the highest class, intake first; between processes, in turns. Real threads, real
processes, real SQLite."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, select

from mailgate.clock import SystemClock
from mailgate.config import DatabaseSettings
from mailgate.db import writelock
from mailgate.db.engine import make_engine, make_sessionmaker, transaction
from mailgate.db.migrate import upgrade
from mailgate.db.models import Inbound
from mailgate.db.writelock import INTAKE, NORMAL, WriteLock
from mailgate.inbound.store import store_raw
from tests.support.mails import make_mail, wire
from tests.support.wait import until

pytestmark = pytest.mark.timeout(30)


def _queued(lock: WriteLock) -> int:
    """Threads waiting for the lock. The lock has no public view of its queue, and a test
    that starts waiters must know each one is queued before it starts the next."""
    with lock._cond:
        return len(lock._waiting)


class Waiters:
    """Threads that each wait for the lock, note when they got it, and let go at once."""

    def __init__(self, lock: WriteLock) -> None:
        self.lock = lock
        self.order: list[str] = []
        self.threads: list[threading.Thread] = []

    def add(self, name: str, priority: int, body: Callable[[], None] = lambda: None) -> None:
        def run() -> None:
            with self.lock.held(priority):
                self.order.append(name)
                body()
        before = _queued(self.lock)
        t = threading.Thread(target=run, name=name, daemon=True)
        t.start()
        self.threads.append(t)
        until(lambda: _queued(self.lock) == before + 1 or name in self.order, timeout=5,
              what=f"{name} queued or through")

    def join(self) -> None:
        for t in self.threads:
            t.join(5)
            assert not t.is_alive(), f"{t.name} never got the lock"


@pytest.fixture
def lock() -> WriteLock:
    return WriteLock()


def _hold(lock: WriteLock, priority: int = NORMAL) -> tuple[threading.Event, threading.Thread]:
    """A thread holding the lock until the returned event is set."""
    got, release = threading.Event(), threading.Event()

    def run() -> None:
        with lock.held(priority):
            got.set()
            release.wait(10)
    t = threading.Thread(target=run, name="holder", daemon=True)
    t.start()
    assert got.wait(5)
    return release, t


def test_waiters_get_the_lock_intake_first_then_in_arrival_order(lock: WriteLock) -> None:
    release, holder = _hold(lock)
    waiters = Waiters(lock)
    for name, priority in [("normal-1", NORMAL), ("normal-2", NORMAL), ("intake-1", INTAKE),
                           ("normal-3", NORMAL), ("intake-2", INTAKE)]:
        waiters.add(name, priority)
    assert waiters.order == [], "nobody may enter while the lock is held"
    release.set()
    holder.join(5)
    waiters.join()
    assert waiters.order == ["intake-1", "intake-2", "normal-1", "normal-2", "normal-3"]


def test_intake_waits_for_at_most_the_one_transaction_in_progress(lock: WriteLock) -> None:
    """A worker that takes the lock again the instant it lets go must not starve intake
    (the busy-handler starvation the lock was written against)."""
    done = threading.Event()
    worker_rounds = 0

    def worker() -> None:
        nonlocal worker_rounds
        # Bounded, so that a starving lock fails the assertion below instead of hanging.
        while not done.is_set() and worker_rounds < 1000:
            with lock.held(NORMAL):
                worker_rounds += 1
                time.sleep(0.002)
    t = threading.Thread(target=worker, daemon=True)
    t.start()
    until(lambda: worker_rounds > 3, what="worker running")
    try:
        for _ in range(20):
            asked = worker_rounds
            with lock.held(INTAKE):
                granted = worker_rounds
            # The round in progress when intake asked may finish; no further one may start.
            assert granted - asked <= 1, f"intake waited for {granted - asked} worker rounds"
    finally:
        done.set()
        t.join(5)


def test_one_holder_at_a_time_under_contention(lock: WriteLock) -> None:
    inside = 0
    most = 0
    total = 0
    guard = threading.Lock()

    def work(priority: int) -> None:
        nonlocal inside, most, total
        for _ in range(50):
            with lock.held(priority):
                with guard:
                    inside += 1
                    most = max(most, inside)
                value = total
                time.sleep(0)  # invite a switch between read and write
                total = value + 1
                with guard:
                    inside -= 1
    threads = [threading.Thread(target=work, args=(INTAKE if i % 2 else NORMAL,))
               for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert most == 1
    assert total == 8 * 50, "an update was lost: two holders overlapped"


def test_nested_use_in_one_thread_is_an_error_not_a_hang(lock: WriteLock) -> None:
    with lock.held(), pytest.raises(RuntimeError, match="nested"), lock.held(INTAKE):
        pass
    # The refused inner request left no trace: another thread gets the lock at once.
    waiters = Waiters(lock)
    waiters.add("after", NORMAL)
    waiters.join()
    assert waiters.order == ["after"]


def test_an_error_inside_releases_the_lock(lock: WriteLock) -> None:
    with pytest.raises(ValueError), lock.held(INTAKE):
        raise ValueError("boom")
    waiters = Waiters(lock)
    waiters.add("next", NORMAL)
    waiters.join()
    assert waiters.order == ["next"]


# -- on a real engine --------------------------------------------------------------------------

@pytest.fixture
def sqlite_engine(tmp_path: Path) -> Iterator[Engine]:
    engine = make_engine(DatabaseSettings(url=f"sqlite:///{tmp_path / 'lock.db'}",
                                          busy_timeout_ms=5000))
    upgrade(engine)
    yield engine
    engine.dispose()


def test_every_sqlite_engine_has_its_own_lock_and_postgresql_none(
        sqlite_engine: Engine, database_url: str) -> None:
    assert isinstance(writelock.for_engine(sqlite_engine), WriteLock)
    other = make_engine(DatabaseSettings(url=database_url))
    try:
        if database_url.startswith("sqlite"):
            assert isinstance(writelock.for_engine(other), WriteLock)
            assert writelock.for_engine(other) is not writelock.for_engine(sqlite_engine)
        else:
            assert writelock.for_engine(other) is None, "PostgreSQL serialises writers itself"
    finally:
        other.dispose()


def test_stored_mail_overtakes_queued_work_on_sqlite(sqlite_engine: Engine) -> None:
    """store_raw (intake) queued behind a transaction in progress commits before a worker
    transaction that queued earlier: the row ids record the commit order."""
    factory = make_sessionmaker(sqlite_engine)
    lock = writelock.for_engine(sqlite_engine)
    assert lock is not None
    clock = SystemClock()
    release = threading.Event()
    in_progress = threading.Event()

    def long_transaction() -> None:
        with transaction(factory):
            in_progress.set()
            release.wait(10)

    def worker_write() -> None:
        # A NORMAL writer storing a row too, so that its place in the order is visible.
        with transaction(factory) as session:
            session.add(_inbound_row(clock, "worker"))

    first = threading.Thread(target=long_transaction, daemon=True)
    first.start()
    assert in_progress.wait(5)
    worker = threading.Thread(target=worker_write, daemon=True)
    worker.start()
    until(lambda: _queued(lock) == 1, what="worker queued")
    intake = threading.Thread(target=store_raw, daemon=True, args=(
        factory, clock, wire(make_mail("eva@site1234.example.be", "Spoed")), "intake"))
    intake.start()
    until(lambda: _queued(lock) == 2, what="intake queued")
    release.set()
    for t in (first, worker, intake):
        t.join(10)
    with factory() as s:
        channels = s.execute(select(Inbound.channel).order_by(Inbound.id)).scalars().all()
    assert channels == ["intake", "worker"]


def test_nested_transaction_on_sqlite_fails_at_once(sqlite_engine: Engine) -> None:
    factory = make_sessionmaker(sqlite_engine)
    started = time.monotonic()
    with transaction(factory), pytest.raises(RuntimeError, match="nested"):
        store_raw(factory, SystemClock(), b"Subject: x\r\n\r\nx\r\n", "test")
    assert time.monotonic() - started < 1, "must not sit out SQLite's busy timeout"


def _inbound_row(clock: SystemClock, channel: str) -> Inbound:
    return Inbound(raw=b"x", size=1, digest="0" * 64, message_id="", dedup_key=channel.ljust(64),
                   channel=channel, received_at=clock.now())


_BUSY_WRITER = """
import sys, time
from mailgate.config import DatabaseSettings
from mailgate.db.engine import make_engine, make_sessionmaker, transaction
factory = make_sessionmaker(make_engine(DatabaseSettings(url=sys.argv[1])))
print("go", flush=True)
for n in range(int(sys.argv[2])):
    with transaction(factory) as session:  # back to back, as a worker process's groups
        session.connection().exec_driver_sql("UPDATE counter SET value = value + 1")
        time.sleep(0.05)
print("done", flush=True)
"""


def test_processes_take_turns_at_the_sqlite_writer(tmp_path: Path) -> None:
    """A daemon's other process writing back to back (a worker process's groups) lets this
    one in after at most its transaction under way: the turnstile beside the database. Left
    to SQLite's busy handler, this one slept and polled while the other began again at
    once, and waited for seconds (the sender's claims, bench/mix.py --drain)."""
    url = f"sqlite:///{tmp_path / 'desk.db'}"
    engine = make_engine(DatabaseSettings(url=url))
    upgrade(engine)
    factory = make_sessionmaker(engine)
    rounds = 60  # 3 s of back-to-back transactions
    child = subprocess.Popen([sys.executable, "-c", _BUSY_WRITER, url, str(rounds)],
                             stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "go"
        time.sleep(0.2)  # its loop under way
        waits = []
        for _ in range(5):
            started = time.monotonic()
            with transaction(factory) as session:
                session.connection().exec_driver_sql("UPDATE counter SET value = value + 1")
                waits.append(time.monotonic() - started)  # BEGIN IMMEDIATE went through
        assert child.poll() is None, "the other process finished first: nothing was shown"
        assert max(waits) < 0.5, f"waited {max(waits):.2f} s for a 0.05 s transaction"
    finally:
        child.wait(30)
        engine.dispose()
    assert child.returncode == 0


def test_the_turnstile_is_a_file_beside_the_database(tmp_path: Path) -> None:
    engine = make_engine(DatabaseSettings(url=f"sqlite:///{tmp_path / 'desk.db'}"))
    try:
        assert (tmp_path / "desk.db-writers").exists()
        memory = make_engine(DatabaseSettings(url="sqlite://"))
        assert isinstance(writelock.for_engine(memory), WriteLock)  # no file: no turnstile
        memory.dispose()
    finally:
        engine.dispose()


_HOLDS_A_LOCK = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o600)
fcntl.lockf(fd, fcntl.LOCK_EX, 1, int(sys.argv[2]))
print("held", flush=True)
time.sleep(30)
"""


@pytest.mark.parametrize(("byte", "what"), [(0, "gate"), (1, "door")])
def test_a_stuck_process_at_the_turnstile_holds_no_one_up_for_ever(
        tmp_path: Path, byte: int, what: str) -> None:
    """A process stopped while it held the gate (waiting, SIGSTOP) or the door outside any
    SQLite transaction: the others wait a bounded time, then go to SQLite itself."""
    engine = make_engine(DatabaseSettings(url=f"sqlite:///{tmp_path / 'desk.db'}",
                                          busy_timeout_ms=800))
    upgrade(engine)
    child = subprocess.Popen([sys.executable, "-c", _HOLDS_A_LOCK,
                              str(tmp_path / "desk.db-writers"), str(byte)],
                             stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "held"
        started = time.monotonic()
        with transaction(make_sessionmaker(engine)) as session:
            session.connection().exec_driver_sql("UPDATE counter SET value = value + 1")
        waited = time.monotonic() - started
    finally:
        child.kill()
        child.wait()
        engine.dispose()
    bound = writelock.Turnstile.GATE_SECONDS if what == "gate" else 0.8
    assert bound * 0.9 <= waited < bound + 1.0, f"{what}: waited {waited:.2f} s"


def test_a_turnstile_file_that_cannot_be_opened_costs_only_the_turns(tmp_path: Path) -> None:
    (tmp_path / "desk.db-writers").mkdir()  # cannot be opened as a file: as another's 0600
    engine = make_engine(DatabaseSettings(url=f"sqlite:///{tmp_path / 'desk.db'}"))
    try:
        upgrade(engine)
        lock = writelock.for_engine(engine)
        assert isinstance(lock, WriteLock) and lock._turnstile is None
        with transaction(make_sessionmaker(engine)) as session:
            session.connection().exec_driver_sql("UPDATE counter SET value = value + 1")
    finally:
        engine.dispose()
