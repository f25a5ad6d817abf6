"""`[worker] processes`: the real `serve` with `mailgate work` processes beside it.

They process mail (shown with the daemon itself frozen: only they can), share a blast with
the daemon's own worker without doubling anything, are started again when one dies, end
when the daemon stops — and when it is killed, through the end of their stdin. On
PostgreSQL, where they claim rows without waiting on each other; on SQLite, where they
take turns at the write lock, the same must hold.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import time
from collections import Counter
from pathlib import Path

import pytest
from sqlalchemy import create_engine, func, select
from sqlalchemy.engine import Engine

from mailgate import config
from mailgate.app import App
from mailgate.clock import SystemClock
from mailgate.db.models import Inbound, Outbox, Ticket
from mailgate.db.status import InboundStatus, OutboxStatus
from mailgate.inbound.store import store_raw
from mailgate.worker_processes import WorkerProcesses
from tests.support.desk import DESK, EDITOR
from tests.support.serve import Blast, ServeProcess, request
from tests.support.sink import SmtpSink
from tests.support.wait import until


def children(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        with contextlib.suppress(OSError):
            found += [int(c) for c in task.read_text().split()]
    return found


def workers_of(serve: ServeProcess) -> list[int]:
    """The daemon's `mailgate work` processes."""
    assert serve.proc is not None
    out = []
    for pid in children(serve.proc.pid):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"work" in cmdline:
            out.append(pid)
    return out


def two_workers(serve: ServeProcess) -> list[int]:
    found: list[int] = until(lambda: w if len(w := workers_of(serve)) == 2 else None,
                             timeout=20, what="two worker processes")
    return found


def state(pid: int) -> str:
    """The process's state letter (R, S, T for stopped, Z), "" when it is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return ""


def alive(pid: int) -> bool:
    return state(pid) not in ("", "Z")


def counts(engine: Engine) -> tuple[int, int, int]:
    """(pending inbound, tickets, unsent outbox)."""
    with engine.connect() as conn:
        pending = conn.execute(select(func.count()).select_from(Inbound).where(
            Inbound.status == InboundStatus.PENDING)).scalar_one()
        tickets = conn.execute(select(func.count()).select_from(Ticket)).scalar_one()
        unsent = conn.execute(select(func.count()).select_from(Outbox).where(
            Outbox.status != OutboxStatus.SENT)).scalar_one()
    return pending, tickets, unsent


def freeze(pid: int, url: str) -> None:
    """SIGSTOP, at a moment the process holds no SQLite write lock (a frozen writer would
    hold everyone up; on PostgreSQL it holds only its own rows)."""
    for _ in range(200):
        os.kill(pid, signal.SIGSTOP)
        # kill() returns before the process stops: until then it may still take the lock.
        until(lambda: state(pid) == "T", timeout=5, interval=0.005, what="the daemon stopped")
        if not url.startswith("sqlite"):
            return
        conn = sqlite3.connect(url.removeprefix("sqlite:///"), timeout=0.2)
        try:
            conn.execute("BEGIN IMMEDIATE")
            conn.rollback()
            return
        except sqlite3.OperationalError:
            os.kill(pid, signal.SIGCONT)
            time.sleep(0.05)
        finally:
            conn.close()
    raise AssertionError("the daemon never let go of the write lock")


def serve_with(tmp_path: Path, url: str, sink: SmtpSink, processes: int) -> ServeProcess:
    return ServeProcess(tmp_path, url, sink.port,
                        sections={"worker": f"processes = {processes}"}
                        ).prepare().start()


@pytest.mark.timeout(120)
def test_worker_processes_process_mail_while_the_daemon_is_frozen(
        tmp_path: Path, database_url: str, sink: SmtpSink) -> None:
    serve = serve_with(tmp_path, database_url, sink, processes=3)
    engine = create_engine(database_url)
    try:
        two_workers(serve)
        assert serve.proc is not None
        freeze(serve.proc.pid, database_url)  # its thread, listener and sender stop
        try:
            app = App(config.load(serve.config))
            try:
                for n in range(12):
                    store_raw(app.sessions, SystemClock(), request(n, "frozen")[1], "pipe",
                              EDITOR, [DESK])
            finally:
                app.close()
            until(lambda: counts(engine)[:2] == (0, 12), timeout=30,
                  what="the worker processes made the tickets")
            assert counts(engine)[2] >= 12  # acks written, not sent: the sender is frozen
        finally:
            os.kill(serve.proc.pid, signal.SIGCONT)
        until(lambda: counts(engine) == (0, 12, 0), timeout=30, what="the acks sent")
    finally:
        serve.stop()
        engine.dispose()
    assert sum("[SD-" in str(m["Subject"]) for m in sink.messages) >= 12


@pytest.mark.timeout(150)
def test_a_blast_shared_with_worker_processes_doubles_nothing(
        tmp_path: Path, database_url: str, sink: SmtpSink) -> None:
    serve = serve_with(tmp_path, database_url, sink, processes=3)
    engine = create_engine(database_url)
    try:
        two_workers(serve)
        mails = [request(n, "shared") for n in range(150)]
        blast = Blast([serve.port], mails)
        for t in blast.run(6):
            t.join(90)
        assert not blast.refused, blast.refused[:3]
        until(lambda: counts(engine) == (0, len(mails), 0), timeout=90,
              what="every mail a ticket, every ack sent")
        with engine.connect() as conn:
            statuses = Counter(conn.execute(select(Inbound.status)).scalars())
            acks = Counter(conn.execute(select(Outbox.ticket_id).where(
                Outbox.kind == "ack")).scalars())
            numbers = conn.execute(select(Ticket.number)).scalars().all()
    finally:
        serve.stop()
        engine.dispose()
    assert statuses == {InboundStatus.TICKET: len(mails)}
    assert len(acks) == len(mails) and set(acks.values()) == {1}
    assert len(set(numbers)) == len(numbers)  # no ticket number given twice
    assert serve.text().count("inbound processed") == len(mails)


@pytest.mark.timeout(120)
def test_a_dead_worker_process_is_replaced_and_all_end_with_the_daemon(
        tmp_path: Path, database_url: str, sink: SmtpSink) -> None:
    serve = serve_with(tmp_path, database_url, sink, processes=2)
    try:
        first = until(lambda: workers_of(serve), timeout=20, what="a worker process")
        assert len(first) == 1
        os.kill(first[0], signal.SIGKILL)
        again = until(lambda: [p for p in workers_of(serve) if p != first[0]], timeout=20,
                      what="a new worker process")
        assert "worker process 0" in serve.text() and "started again" in serve.text()
        serve.stop()  # SIGTERM: the daemon ends them
        assert not alive(again[0])
    finally:
        serve.stop()


@pytest.mark.timeout(120)
def test_sighup_reaches_the_worker_processes(
        tmp_path: Path, database_url: str, sink: SmtpSink) -> None:
    serve = serve_with(tmp_path, database_url, sink, processes=3)
    try:
        workers = two_workers(serve)
        assert serve.proc is not None
        serve.proc.send_signal(signal.SIGHUP)
        until(lambda: serve.text().count("worker process: configuration reloaded") == 2,
              timeout=20, what="both worker processes reloaded")
        assert sorted(workers_of(serve)) == sorted(workers)  # reloaded, not restarted
    finally:
        serve.stop()


@pytest.mark.timeout(60)
def test_a_reload_passed_on_while_a_worker_process_starts_waits_for_it(
        tmp_path: Path, database_url: str, sink: SmtpSink,
        capfd: pytest.CaptureFixture[str]) -> None:
    """SIGHUP right after the spawn, long before the child's interpreter has its handler:
    by default the signal would end it (and a restart would miss the reload)."""
    serve = ServeProcess(tmp_path, database_url, sink.port).prepare()
    procs = WorkerProcesses(1, str(serve.config), lambda: None)
    procs.start()
    try:
        first = procs.pids()
        procs.reload()
        err: list[str] = []
        until(lambda: err.append(capfd.readouterr().err)
              or "worker process: configuration reloaded" in "".join(err),
              timeout=30, what="the new worker process reloaded")
        assert procs.pids() == first and alive(first[0])
        assert "ended with" not in "".join(err)
    finally:
        procs.stop()


@pytest.mark.timeout(120)
def test_worker_processes_end_when_the_daemon_is_killed(
        tmp_path: Path, database_url: str, sink: SmtpSink) -> None:
    serve = serve_with(tmp_path, database_url, sink, processes=3)
    try:
        workers = two_workers(serve)
        serve.kill9()  # no goodbye: their stdin ends with it
        until(lambda: not any(alive(p) for p in workers), timeout=15,
              what="the orphaned worker processes gone")
    finally:
        serve.stop()
