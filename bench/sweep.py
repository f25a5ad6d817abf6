"""Sweep benchmark: the ticket clock's :func:`mailgate.tickets.lifecycle.sweep` over a large
ticket table, to show that a sweep costs in proportion to the tickets that are due, not to
the table. Prints figures; asserts nothing.

Usage, from the repository root::

    .venv/bin/python -m bench.sweep                       # SQLite temp file per size
    .venv/bin/python -m bench.sweep \\
        --database-url postgresql+psycopg://postgres@127.0.0.1:5432/test

For each size (``--small``, ``--tickets``, ``--large``) a fresh database (a SQLite
file, or a private schema ``bench_<hex>`` on PostgreSQL, dropped afterwards) is migrated, the
site 1234 with its editor and one agent registered, and the table filled with SQLAlchemy Core
bulk inserts (executemany, 5,000 rows a chunk):

- ``--due-share`` of the tickets (default 1%, spread evenly over the ids) are *waiting* on the
  editor: ``waiting_since`` three days ago, ``close_at`` 60 days ahead, ``remind_at`` 30 days
  ahead (not due yet), no reminder sent; each has the editor's request (message ``in``/
  ``request``) and the agent's question (``out``/``agent-reply``), which the reminder quotes.
- every other ticket is ``closed`` (80%, with ``closed_at``) or ``open`` (20%) with all due
  columns NULL; every ticket was answered in time (``first_response_at`` set, no SLA alert).
  The requester is the registered editor, language ``nl``. The ``ticket`` counter is set to
  the highest number.

PostgreSQL's tables are ``ANALYZE``d after filling (what autovacuum does soon after a bulk
load); SQLite's are not (mailgate never runs ``ANALYZE``), so each runs the plans it would
run in service. The plans of the three due queries (``EXPLAIN QUERY PLAN`` / ``EXPLAIN``) on
the ``--tickets`` table are printed first.

Then:

1. **0 due**: ``sweep(app.sessions, app.desk, now, batch=500)`` with nothing due, ``--zero-reps``
   times (default 5); the median counts. Then each step's due select alone (the query of
   ``lifecycle._due``), median of 20.
2. **1% due**: one ``UPDATE`` re-arms ``remind_at`` (1 minute before the sweep's ``now``,
   ``reminders_sent`` 0) on every waiting ticket, then one sweep sends each a reminder: the
   template rendered, the mail built into the outbox, a message and two events written, the
   next reminder computed. ``--due-reps`` times (default 3), each sweep's ``now`` two hours
   after the last, so the loop brake's one-hour window starts empty each time (it is lifted to
   a million mails an hour: all reminders go to the one editor). The median counts. Before
   the first, an untimed sweep of 10 due tickets warms the templates and statement caches.

``--small`` (the baseline) runs half its rounds before ``--tickets`` and half after, against
drift from other load on the machine. ``--large`` runs the 0-due rounds only (a 1%-due sweep
there would send 10,000 reminders, minutes per sweep), and only when filling it extrapolates
from ``--tickets`` to under ``--large-budget`` seconds.

Figures: sweep ms (median, min-max), ms per due ticket, the CPU time of this process (steadier
than wall time on a shared machine; on SQLite all of the work, on PostgreSQL the client's
part), and each size's ratios to ``--small`` measured in the same run: with 0 due the ratio
should stay near 1, not follow the table (x10); with 1% due it should follow the due tickets
(x10), i.e. ms per due ticket flat. ``load``: ``os.getloadavg()`` at the start and the end;
other jobs move every figure.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import func, select, text, update
from sqlalchemy.engine import make_url

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # `python bench/sweep.py` as well as `python -m bench.sweep`
    sys.path.insert(0, str(ROOT))

from mailgate import config  # noqa: E402
from mailgate.app import App  # noqa: E402
from mailgate.db.engine import core_transaction, transaction  # noqa: E402
from mailgate.db.migrate import upgrade  # noqa: E402
from mailgate.db.models import Counter, Message, Ticket  # noqa: E402
from mailgate.tickets import registry  # noqa: E402
from mailgate.tickets.lifecycle import (  # noqa: E402
    DUE_COLUMNS,
    SweepResult,
    due_query,
    sweep,
)
from mailgate.tickets.states import State  # noqa: E402
from tests.support.pgschema import private_schema  # noqa: E402

EDITOR = "eva@site1234.example.be"
EDITOR_NAME = "Eva Editor"
AGENT = "agent@desk.example"
DESK = "servicedesk@desk.example"
SITE = "1234"
CHUNK = 5_000
BATCH = 500
WARM_UP = 10
REP_GAP = timedelta(hours=2)     # > the loop brake's one-hour window

REQUEST = """Beste,

Het contactformulier op https://www.site1234.example.be/contact geeft sinds vanochtend een
fout 500 bij het verzenden. Kunnen jullie dit bekijken? Het gaat om site 1234.

Met vriendelijke groeten,
Eva Editor
0470 12 34 56
"""
QUESTION = """Beste Eva,

Op welke pagina gebeurt het precies, en kunt u een schermafdruk van de foutmelding sturen?

Met vriendelijke groeten,
Bench Desk
"""


def log(line: str = "") -> None:
    print(line, flush=True)


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


# --- the database -----------------------------------------------------------------------------

@contextlib.contextmanager
def fresh_database(base_url: str | None, tmp: Path, name: str) -> Iterator[str]:
    if not base_url:
        yield f"sqlite:///{tmp / f'{name}.db'}"
        return
    with private_schema(base_url, "bench") as url:
        yield url


@contextlib.contextmanager
def bench_app(url: str, tmp: Path) -> Iterator[App]:
    settings = config.from_dict({
        "state_dir": str(tmp / "var"), "log_level": "WARNING",
        "desk": {"name": "Bench Desk", "address": DESK, "complaints_address": f"c-{DESK}",
                 "phone": "+32 2 123 45 67", "secret": "bench-secret-0123456789"},
        "database": {"url": url},
        "smtp": {"host": "127.0.0.1", "port": 0},
        "outbound": {"maildir": str(tmp / "outbox")},
        "access": {"auto_replies_per_hour": 1_000_000},
    })
    app = App(settings)
    try:
        upgrade(app.engine)
        with transaction(app.sessions) as session:
            now = app.clock.now()
            registry.add_site(session, SITE, "Demo site", now)
            registry.add_editor(session, SITE, EDITOR, now, name=EDITOR_NAME,
                                phone="+32 470 12 34 56")
            registry.add_agent(session, AGENT, now, name="Bench Agent")
        _ = app.desk  # the renderer and calendar, made once as the daemon does
        yield app
    finally:
        app.close()


def due_positions(n: int, share: float) -> set[int]:
    """Ticket positions 0..n-1 that wait on the editor: round(n*share), spread evenly."""
    due = round(n * share)
    return {i * n // due for i in range(due)} if due else set()


def ticket_rows(n: int, due: set[int], base: datetime, prefix: str) -> Iterator[dict[str, object]]:
    oldest = base - timedelta(days=1, minutes=n)
    for i in range(n):
        number = i + 1
        created = oldest + timedelta(minutes=i)
        waiting = i in due
        closed = not waiting and i % 5 != 0
        yield {
            "number": number, "ref": f"{prefix}-{number}",
            "state": State.WAITING if waiting else State.CLOSED if closed else State.OPEN,
            "priority": "normal", "kind": "request", "site_id": SITE,
            "requester": EDITOR, "requester_name": EDITOR_NAME,
            "subject": f"Contactformulier geeft fout 500 (melding {number})",
            "language": "nl", "created_at": created, "updated_at": created + timedelta(hours=2),
            "first_response_due": created + timedelta(hours=8),
            "first_response_at": created + timedelta(hours=1),
            "remind_at": base + timedelta(days=30) if waiting else None,
            "close_at": base + timedelta(days=60) if waiting else None,
            "waiting_since": base - timedelta(days=3) if waiting else None,
            "reminders_sent": 0, "sla_alert_at": None,
            "closed_at": created + timedelta(hours=3) if closed else None,
            "assignee": AGENT, "linked_to_id": None,
        }


def message_rows(waiting: list[tuple[int, int]], base: datetime,
                 prefix: str) -> Iterator[dict[str, object]]:
    for ticket_id, number in waiting:
        yield {"ticket_id": ticket_id, "inbound_id": None, "direction": "in",
               "kind": "request", "from_addr": EDITOR, "to_addrs": DESK, "cc_addrs": "",
               "subject": f"Contactformulier geeft fout 500 (melding {number})",
               "message_id": f"<req-{number}@site1234.example.be>", "body_text": REQUEST,
               "created_at": base - timedelta(days=4)}
        yield {"ticket_id": ticket_id, "inbound_id": None, "direction": "out",
               "kind": "agent-reply", "from_addr": DESK, "to_addrs": EDITOR, "cc_addrs": "",
               "subject": f"[{prefix}-{number}] Contactformulier geeft fout 500",
               "message_id": f"<{prefix}-{number}.q@desk.example>", "body_text": QUESTION,
               "created_at": base - timedelta(days=3)}


def insert_chunked(app: App, table: object, rows: Iterator[dict[str, object]]) -> None:
    chunk: list[dict[str, object]] = []
    for row in rows:
        chunk.append(row)
        if len(chunk) == CHUNK:
            with core_transaction(app.sessions) as conn:
                conn.execute(table.insert(), chunk)  # type: ignore[attr-defined]
            chunk = []
    if chunk:
        with core_transaction(app.sessions) as conn:
            conn.execute(table.insert(), chunk)  # type: ignore[attr-defined]


def populate(app: App, n: int, share: float, base: datetime) -> int:
    """Fills the ticket table; returns the number of waiting (due-able) tickets."""
    prefix = app.settings.desk.ticket_prefix
    insert_chunked(app, Ticket.__table__, ticket_rows(n, due_positions(n, share), base, prefix))
    with app.sessions() as session:
        waiting = [(int(i), int(num)) for i, num in session.execute(
            select(Ticket.id, Ticket.number).where(Ticket.state == State.WAITING)
            .order_by(Ticket.id)).all()]
    insert_chunked(app, Message.__table__, message_rows(waiting, base, prefix))
    with core_transaction(app.sessions) as conn:
        conn.execute(update(Counter).where(Counter.name == "ticket").values(value=n))
    if app.engine.dialect.name == "postgresql":
        with app.engine.connect() as conn:
            conn.execute(text("ANALYZE"))
            conn.commit()
    return len(waiting)


def arm(app: App, at: datetime, limit: int | None = None) -> None:
    """Makes a reminder due at ``at`` on the waiting tickets (the first ``limit`` of them)."""
    where = [Ticket.state == State.WAITING]
    if limit is not None:
        where.append(Ticket.id.in_(select(Ticket.id).where(Ticket.state == State.WAITING)
                                   .order_by(Ticket.id).limit(limit)))
    with core_transaction(app.sessions) as conn:
        conn.execute(update(Ticket).where(*where).values(remind_at=at, reminders_sent=0))


# --- the plans --------------------------------------------------------------------------------

def explain(app: App, now: datetime) -> list[str]:
    """The plans of the sweep's three due queries (the select of lifecycle._due)."""
    dialect = app.engine.dialect
    pg = dialect.name == "postgresql"
    lines = []
    with app.engine.connect() as conn:
        for name, column in DUE_COLUMNS.items():
            stmt = due_query(column, now, BATCH)
            compiled = stmt.compile(dialect=dialect,
                                    compile_kwargs={"render_postcompile": True})
            params = {k: (column.type.process_bind_param(v, dialect)
                          if isinstance(v, datetime) else v)
                      for k, v in compiled.params.items()}
            sql = ("EXPLAIN " if pg else "EXPLAIN QUERY PLAN ") + str(compiled)
            rows = conn.exec_driver_sql(sql, params if pg else tuple(
                params[k] for k in compiled.positiontup or ())).all()
            plan = [r[0] for r in rows] if pg else [str(r[-1]) for r in rows]
            lines.append(f"  {name}:")
            lines.extend(f"    {p}" for p in plan)
    return lines


# --- measuring --------------------------------------------------------------------------------

@dataclass
class Size:
    tickets: int
    waiting: int = 0
    populate_s: float = 0.0
    zero: list[float] = field(default_factory=list)     # wall seconds
    due: list[float] = field(default_factory=list)
    zero_cpu: list[float] = field(default_factory=list)  # CPU seconds of this process
    due_cpu: list[float] = field(default_factory=list)
    selects: dict[str, float] = field(default_factory=dict)  # seconds, 0 due
    notes: list[str] = field(default_factory=list)


def timed_sweep(app: App, now: datetime) -> tuple[float, float, SweepResult]:
    """(wall seconds, this process's CPU seconds, result) of one sweep."""
    started, cpu = time.perf_counter(), time.process_time()
    result = sweep(app.sessions, app.desk, now, batch=BATCH)
    return time.perf_counter() - started, time.process_time() - cpu, result


def count(app: App, table: object) -> int:
    with app.sessions() as session:
        return int(session.execute(select(func.count()).select_from(table)).scalar_one())  # type: ignore[arg-type]


def due_selects(app: App, now: datetime, reps: int = 20) -> dict[str, float]:
    """Median seconds of each step's due select alone (lifecycle._due, rolled back)."""
    medians = {}
    for name, column in DUE_COLUMNS.items():
        times = []
        for _ in range(reps):
            with app.sessions() as session:
                started = time.perf_counter()
                session.execute(due_query(column, now, BATCH)).all()
                times.append(time.perf_counter() - started)
        medians[name] = statistics.median(times)
    return medians


class Bed:
    """One size: a fresh database filled with ``n`` tickets and an app on it, kept open so
    that the baseline's rounds can come before and after the bigger sizes'."""

    def __init__(self, args: argparse.Namespace, tmp: Path, n: int) -> None:
        self.size = Size(n)
        self.stack = contextlib.ExitStack()
        url = self.stack.enter_context(fresh_database(args.database_url, tmp, f"sweep-{n}"))
        self.app = self.stack.enter_context(bench_app(url, tmp / f"app-{n}"))
        self.base = self.now = datetime.now(UTC).replace(microsecond=0)
        started = time.perf_counter()
        self.size.waiting = populate(self.app, n, args.due_share, self.base)
        self.size.populate_s = time.perf_counter() - started
        self.warm = False

    def close(self) -> None:
        self.stack.close()

    def zero_round(self, reps: int) -> None:
        """Sweeps with nothing due (at the start time: every waiting ticket's reminder is
        30 days ahead, or was re-armed by the last due round and sent)."""
        for _ in range(reps):
            wall, cpu, result = timed_sweep(self.app, self.now)
            self.size.zero.append(wall)
            self.size.zero_cpu.append(cpu)
            if result.total:
                self.size.notes.append(f"0-due sweep did {result}")
        if not self.size.selects:
            self.size.selects = due_selects(self.app, self.now)

    def due_round(self, reps: int) -> None:
        """Sweeps with a reminder due on every waiting ticket, each re-armed by one UPDATE."""
        if not self.warm:
            self.now += REP_GAP
            arm(self.app, self.now - timedelta(minutes=1), limit=WARM_UP)
            timed_sweep(self.app, self.now)
            self.warm = True
        before = count(self.app, Message.__table__)
        for _ in range(reps):
            self.now += REP_GAP
            arm(self.app, self.now - timedelta(minutes=1))
            wall, cpu, result = timed_sweep(self.app, self.now)
            self.size.due.append(wall)
            self.size.due_cpu.append(cpu)
            if result.reminded != self.size.waiting or result.total != result.reminded:
                self.size.notes.append(f"due sweep did {result}, expected "
                                       f"{self.size.waiting} reminders")
        written = count(self.app, Message.__table__) - before
        if written != self.size.waiting * reps:
            self.size.notes.append(f"{written} reminder messages written, expected "
                                   f"{self.size.waiting * reps}")


# --- report -----------------------------------------------------------------------------------

def ms(values: list[float]) -> float:
    return statistics.median(values) * 1000


def versus(values: list[float], cpu: list[float], base: list[float], base_cpu: list[float],
           expect: str) -> str:
    return f"x{ms(values) / ms(base):.2f}, x{ms(cpu) / ms(base_cpu):.2f} ({expect})"


def report(sizes: list[Size], args: argparse.Namespace) -> None:
    small = sizes[0]
    log(f"{'tickets':>9} {'due':>6} {'sweep ms':>9} {'min-max':>15} {'ms/due':>7} "
        f"{'CPU ms':>8} {'CPU/due':>7}  vs {small.tickets:,} tickets (wall, CPU)")
    for s in sizes:
        span = f"{min(s.zero) * 1000:.1f}-{max(s.zero) * 1000:.1f}"
        vs = ("baseline" if s is small else versus(
            s.zero, s.zero_cpu, small.zero, small.zero_cpu,
            f"table x{s.tickets / small.tickets:g}"))
        log(f"{s.tickets:>9,} {0:>6} {ms(s.zero):>9.1f} {span:>15} {'-':>7} "
            f"{ms(s.zero_cpu):>8.1f} {'-':>7}  {vs}")
        if not s.due:
            log(f"{s.tickets:>9,} {s.waiting:>6,} {'not measured at this size':>42}")
            continue
        span = f"{min(s.due) * 1000:.0f}-{max(s.due) * 1000:.0f}"
        vs = ("baseline" if s is small else versus(
            s.due, s.due_cpu, small.due, small.due_cpu,
            f"due x{s.waiting / small.waiting:g}"))
        log(f"{s.tickets:>9,} {s.waiting:>6,} {ms(s.due):>9.0f} {span:>15} "
            f"{ms(s.due) / s.waiting:>7.2f} {ms(s.due_cpu):>8.0f} "
            f"{ms(s.due_cpu) / s.waiting:>7.2f}  {vs}")
    log(f"0 due: median of {args.zero_reps} sweeps; {args.due_share:.0%} due: median of "
        f"{args.due_reps} sweeps, a reminder per due ticket (batch {BATCH}); CPU: this "
        "process only (PostgreSQL's own work shows in wall time only)")
    log("each due select alone, 0 due (median of 20, ms):")
    for s in sizes:
        log(f"{s.tickets:>9,} tickets, {s.waiting:,} waiting: " + ", ".join(
            f"{name} {seconds * 1000:.2f}" for name, seconds in s.selects.items()))
    for s in sizes:
        log(f"populate {s.tickets:,} tickets ({s.waiting:,} waiting, {2 * s.waiting:,} "
            f"messages): {s.populate_s:.1f} s ({s.tickets / s.populate_s:,.0f} tickets/s)")
        for note in s.notes:
            log(f"  note ({s.tickets:,}): {note}")


# --- main -------------------------------------------------------------------------------------

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bench.sweep", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tickets", type=int, default=100_000,
                        help="tickets of the main figure (default 100000)")
    parser.add_argument("--small", type=int, default=10_000,
                        help="tickets of the baseline in the same run (default 10000)")
    parser.add_argument("--large", type=int, default=1_000_000,
                        help="tickets of the extra size, run only if filling it extrapolates "
                             "to under --large-budget seconds; 0: never (default 1000000)")
    parser.add_argument("--large-budget", type=float, default=180.0,
                        help="seconds the --large population may take (default 180)")
    parser.add_argument("--due-share", type=float, default=0.01,
                        help="share of tickets with a reminder due (default 0.01)")
    parser.add_argument("--zero-reps", type=int, default=5,
                        help="sweeps with nothing due per size (default 5)")
    parser.add_argument("--due-reps", type=int, default=3,
                        help="sweeps with reminders due per size (default 3)")
    parser.add_argument("--database-url", default=None,
                        help="postgresql+psycopg://... (a private schema per size, dropped "
                             "afterwards); default a temporary SQLite file per size")
    args = parser.parse_args(argv)
    if min(args.tickets, args.small, args.zero_reps, args.due_reps) < 1 or args.large < 0:
        parser.error("--tickets, --small, --zero-reps and --due-reps must be > 0")
    if not 0 < args.due_share <= 1 or round(args.small * args.due_share) < 1:
        parser.error("--due-share must be in (0, 1] and leave --small at least one due ticket")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    db = (make_url(args.database_url).render_as_string(hide_password=True)
          if args.database_url else "sqlite (temp file)")
    log(f"mailgate sweep bench: {args.small:,} / {args.tickets:,} tickets"
        f"{f' (/ {args.large:,} if it fits)' if args.large else ''}, "
        f"{args.due_share:.2%} due, database {db}, {os.cpu_count()} CPU(s), "
        f"python {sys.version.split()[0]}, load {load_average()}")
    started = time.perf_counter()
    zero_first, due_first = (args.zero_reps + 1) // 2, (args.due_reps + 1) // 2
    skipped = ""
    with tempfile.TemporaryDirectory(prefix="mailgate-bench-sweep-") as tmpdir:
        tmp = Path(tmpdir)
        small = Bed(args, tmp, args.small)
        try:
            small.zero_round(zero_first)
            small.due_round(due_first)
            main_bed = Bed(args, tmp, args.tickets)
            try:
                plans = explain(main_bed.app, main_bed.now)
                main_bed.zero_round(args.zero_reps)
                main_bed.due_round(args.due_reps)
            finally:
                main_bed.close()
            small.zero_round(args.zero_reps - zero_first)
            small.due_round(args.due_reps - due_first)
        finally:
            small.close()
        sizes = [small.size, main_bed.size]
        if args.large > args.tickets:
            guess = main_bed.size.populate_s * args.large / args.tickets
            if guess <= args.large_budget:
                large = Bed(args, tmp, args.large)
                try:
                    large.zero_round(args.zero_reps)
                finally:
                    large.close()
                sizes.append(large.size)
            else:
                skipped = (f"{args.large:,} tickets skipped: filling would take ~{guess:.0f} s "
                           f"(> --large-budget {args.large_budget:g} s)")
    log(f"plans of the due queries ({args.tickets:,} tickets):")
    for line in plans:
        log(line)
    report(sizes, args)
    if skipped:
        log(skipped)
    log(f"total {time.perf_counter() - started:.0f} s; load at the end (1/5/15 min): "
        f"{load_average()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
