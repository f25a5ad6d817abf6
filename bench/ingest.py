"""Ingest benchmark: the real `mailgate serve` against a bare aiosmtpd server, in one run on
one machine. Prints the figures README.md reports; asserts nothing.

Usage, from the repository root::

    .venv/bin/python -m bench.ingest --messages 1000 --connections 8 --rate 50 \\
        --paced-messages 500
    .venv/bin/python -m bench.ingest ... \\
        --database-url postgresql+psycopg://postgres@127.0.0.1:5432/test
    .venv/bin/python -m bench.ingest --accept-only --rounds 5   # acceptance only, quicker

What one run does (each mailgate part in its own temporary directory and fresh database: a
SQLite file, or a private PostgreSQL schema from ``tests/support/pgschema.py``):

1. **bare**: ``bench/bare_smtp.py`` (aiosmtpd, answers 250 only) takes ``--messages`` mails
   over ``--connections`` smtplib connections (one thread each), unpaced.
2. **mailgate burst**: ``mailgate db upgrade``, ``sites add``, ``editors add``, then
   ``python -m mailgate --config FILE serve`` as a subprocess whose relay is an SMTP sink in
   this process. The same load; every mail is from the registered editor, so each makes one
   ticket and one acknowledgement. ``--rounds`` rounds (default 3), each on a fresh daemon
   and database, alternating with bare rounds (bare, mailgate, bare, …, bare: other load on
   the machine moves both alike); only the last round waits for the drain. Each burst
   starts once the server idles: the daemon builds its language detector after READY=1
   (1–2 s of one core, much of it holding the GIL), which is start-up, not acceptance.
3. **mailgate paced**: ``--paced-messages`` mails at ``--rate`` mails/s overall (mail i is
   sent at start + i/rate).

Figures:

- ``accept``: accepted mails / (last DATA ``250`` − start), as the client sees it. The
  median of the bare rounds and the median of the mailgate rounds; ``ratio`` = mailgate
  median / bare median (target ≥ 0.7 on SQLite), and its spread: each mailgate round against
  the mean of the two bare rounds beside it, lowest to highest.
- ``drain`` (burst, last round): from the start until every accepted mail is a ticket
  (``SELECT count(*) FROM ticket``, polled every 0.05 s) and until every acknowledgement
  reached the sink.
- ``ack latency`` p50/p99 (paced): from the client reading a mail's DATA ``250`` to the sink
  receiving the acknowledgement whose In-Reply-To is that mail's Message-ID (target p99 < 2 s
  at 50 mails/s).
- ``peak RSS``: VmHWM of the daemon; ``CPU``: its user + system CPU from the start of sending
  until drained, per accepted mail (steadier than mails/s on a shared machine).
- ``load``: ``os.getloadavg()`` before and after; other jobs move every figure.

The daemon runs with the shipped defaults except its ports and
``access.auto_replies_per_hour`` and ``access.acks_per_hour``, lifted above the number of
mails (they all come from one editor; the loop brake would suppress the acknowledgements
past its ceiling: 60 an hour for an editor).
"""

from __future__ import annotations

import argparse
import contextlib
import email.parser
import json
import math
import os
import re
import signal
import smtplib
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from email import policy
from email.message import EmailMessage
from email.utils import formatdate
from pathlib import Path
from types import FrameType

from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import SQLAlchemyError

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # `python bench/ingest.py` as well as `python -m bench.ingest`
    sys.path.insert(0, str(ROOT))

from tests.support.pgschema import private_schema  # noqa: E402
from tests.support.sink import SmtpSink, free_port  # noqa: E402

PYTHON = sys.executable
DESK = "servicedesk@desk.example"
EDITOR = "eva@site1234.example.be"
SITE = "1234"
ROUNDS = 3               # mailgate burst rounds; one more bare round than these
PHASE_TIMEOUT = 300.0    # bound on each phase's sending and on its drain
STALL = 30.0             # a drain without progress for this long is given up
POLL = 0.05
INDENT = " " * 17

TEXT_BODY = """Beste,

Het contactformulier op https://www.site1234.example.be/contact geeft sinds vanochtend een
fout 500 bij het verzenden. Bezoekers krijgen een witte pagina en het bericht komt niet aan.
Kunnen jullie dit bekijken? Het gaat om site 1234.

Met vriendelijke groeten,
Eva Editor
0470 12 34 56
"""
HTML_BODY = """<html><body><p>Beste,</p>
<p>Het contactformulier op <a href="https://www.site1234.example.be/contact">
https://www.site1234.example.be/contact</a> geeft sinds vanochtend een <b>fout 500</b> bij het
verzenden. Bezoekers krijgen een witte pagina en het bericht komt niet aan.
Kunnen jullie dit bekijken? Het gaat om site 1234.</p>
<p>Met vriendelijke groeten,<br>Eva Editor<br>0470 12 34 56</p></body></html>
"""


def log(line: str) -> None:
    print(line, flush=True)


def fmt(value: float | None, unit: str = " s", digits: int = 2) -> str:
    if value is None or math.isnan(value):
        return "n/a"
    return f"{value:.{digits}f}{unit}"


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an ascending list (q in 0..1)."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(q * len(sorted_values)))
    return sorted_values[rank - 1]


# --- the server process, seen from /proc ------------------------------------------------------

def peak_rss_mib(pid: int) -> float:
    """Peak RSS (VmHWM) of one process; see tree_peak_rss_mib for its worker processes."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return math.nan
    m = re.search(r"^VmHWM:\s+(\d+)\s+kB", status, re.MULTILINE)
    return int(m.group(1)) / 1024 if m else math.nan


def process_tree(pid: int) -> list[int]:
    """`pid` and its living descendants (the daemon's worker processes)."""
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        found.append(p)
        for task in Path(f"/proc/{p}/task").glob("*/children"):
            with contextlib.suppress(OSError):
                todo += [int(c) for c in task.read_text().split()]
    return found


def _cpu_of(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return math.nan
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process and its living descendants (the daemon's
    worker processes, started at its start: none ends during a measurement)."""
    return sum(_cpu_of(p) for p in process_tree(pid))


def tree_peak_rss_mib(pid: int) -> float:
    """The sum of the peaks of a process and its living descendants (an upper bound of
    what they held at once)."""
    return sum(peak_rss_mib(p) for p in process_tree(pid))


def tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


@contextlib.contextmanager
def server_process(args: list[str], log_path: Path, env: dict[str, str] | None = None
                   ) -> Iterator[subprocess.Popen[bytes]]:
    """A child in its own session (Ctrl-C reaches only us), stopped with SIGTERM on exit."""
    with open(log_path, "wb") as out:
        proc = subprocess.Popen(args, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def wait_smtp(port: int, proc: subprocess.Popen[bytes], log_path: Path,
              timeout: float = 30.0) -> None:
    """Until the server answers NOOP (or dies, or the timeout passes)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}:\n{tail(log_path)}")
        try:
            with smtplib.SMTP("127.0.0.1", port, timeout=2) as smtp:
                smtp.noop()
            return
        except (OSError, smtplib.SMTPException):
            time.sleep(0.1)
    raise RuntimeError(f"server not ready on port {port} after {timeout:.0f} s:\n"
                       + tail(log_path))


def wait_quiet(pid: int, timeout: float = 30.0) -> None:
    """Until the process idles (under 10% of a CPU over half a second): its start-up work
    done (the language detector is built after READY=1, and would run into the burst)."""
    deadline = time.monotonic() + timeout
    before = cpu_seconds(pid)
    while time.monotonic() < deadline:
        time.sleep(0.5)
        now = cpu_seconds(pid)
        if now - before < 0.05:
            return
        before = now


# --- the load ---------------------------------------------------------------------------------

def build_mails(count: int) -> list[tuple[str, bytes]]:
    """(Message-ID, wire bytes) of a typical editor's request, text + HTML alternative."""
    tag = uuid.uuid4().hex[:8]
    mails = []
    for i in range(count):
        mid = f"<bench-{tag}-{i:06d}@client.example>"
        msg = EmailMessage()
        msg["From"] = f"Eva Editor <{EDITOR}>"
        msg["To"] = DESK
        msg["Subject"] = f"Contactformulier geeft fout 500 (melding {i})"
        msg["Date"] = formatdate()
        msg["Message-ID"] = mid
        msg.set_content(TEXT_BODY)
        msg.add_alternative(HTML_BODY, subtype="html")
        mails.append((mid, msg.as_bytes(policy=policy.SMTP)))
    return mails


@dataclass
class Sent:
    start: float                     # monotonic; every connection was open by then
    at: dict[str, float]             # Message-ID → DATA 250 read (monotonic)
    errors: list[str]

    @property
    def accepted(self) -> int:
        return len(self.at)

    @property
    def rate(self) -> float:
        """Accepted mails per second until the last 250."""
        return self.accepted / (max(self.at.values()) - self.start) if self.at else 0.0


class Load:
    """One smtplib connection per thread, taking mails off a shared index; with a rate,
    mail i waits for its slot start + i/rate."""

    def __init__(self, port: int, mails: list[tuple[str, bytes]], connections: int,
                 rate: float | None) -> None:
        self.port = port
        self.mails = mails
        self.connections = connections
        self.rate = rate
        self.lock = threading.Lock()
        self.next = 0
        self.sent_at: dict[str, float] = {}
        self.errors: list[str] = []
        self.start = 0.0
        self.barrier = threading.Barrier(connections + 1, action=self._start_clock)

    def _start_clock(self) -> None:
        self.start = time.monotonic()

    def _take(self) -> int | None:
        with self.lock:
            i, self.next = self.next, self.next + 1
        if i >= len(self.mails):
            return None
        if time.monotonic() > self.start + PHASE_TIMEOUT:
            self._error(f"phase timeout ({PHASE_TIMEOUT:.0f} s)")
            return None
        return i

    def _error(self, what: str) -> None:
        with self.lock:
            self.errors.append(what)

    def _send(self, smtp: smtplib.SMTP, i: int) -> None:
        mid, raw = self.mails[i]
        if self.rate:
            time.sleep(max(0.0, self.start + i / self.rate - time.monotonic()))
        try:
            smtp.sendmail(EDITOR, [DESK], raw)  # a refusal raises, after RSET
        except smtplib.SMTPResponseException as exc:
            self._error(f"{exc.smtp_code} {exc.smtp_error!r}")
        except smtplib.SMTPRecipientsRefused as exc:
            self._error(f"RCPT refused: {exc.recipients}")
        else:
            self.sent_at[mid] = time.monotonic()

    def _worker(self) -> None:
        try:
            smtp = smtplib.SMTP("127.0.0.1", self.port, timeout=30)
        except OSError as exc:
            self._error(f"connect: {exc}")
            self.barrier.abort()
            return
        try:
            with smtp:
                smtp.ehlo("loadgen.client.example")
                self.barrier.wait(30)
                while (i := self._take()) is not None:
                    self._send(smtp, i)
        except threading.BrokenBarrierError:
            pass
        except (OSError, smtplib.SMTPException) as exc:
            self._error(f"{type(exc).__name__}: {exc}")

    def run(self) -> Sent:
        threads = [threading.Thread(target=self._worker, daemon=True)
                   for _ in range(self.connections)]
        for thread in threads:
            thread.start()
        with contextlib.suppress(threading.BrokenBarrierError):
            self.barrier.wait(30)
        for thread in threads:
            thread.join(PHASE_TIMEOUT + 60)
        if not self.start:
            self._error("not every connection opened")
        return Sent(self.start, dict(self.sent_at), list(self.errors))


# --- bare aiosmtpd ----------------------------------------------------------------------------

def run_bare(messages: int, connections: int, rounds: int) -> list[Sent]:
    """Rounds against one fresh bare server process."""
    with tempfile.TemporaryDirectory(prefix="mailgate-bench-") as tmp:
        port, log_path = free_port(), Path(tmp) / "bare.log"
        args = [PYTHON, str(ROOT / "bench" / "bare_smtp.py"), "--port", str(port)]
        with server_process(args, log_path) as proc:
            wait_smtp(port, proc, log_path)
            wait_quiet(proc.pid)
            return [Load(port, build_mails(messages), connections, None).run()
                    for _ in range(rounds)]


# --- mailgate ---------------------------------------------------------------------------------

@dataclass
class MailgateRun:
    sent: Sent
    tickets: int
    ticket_drain: float | None       # seconds from the start
    ack_drain: float | None
    latencies: list[float]           # ascending, seconds
    missing_acks: int
    rss_mib: float
    cpu_per_mail: float              # seconds
    notes: list[str] = field(default_factory=list)


@contextlib.contextmanager
def fresh_database(base_url: str | None, tmp: Path) -> Iterator[str]:
    if not base_url:
        yield f"sqlite:///{tmp / 'mailgate.db'}"
        return
    with private_schema(base_url, "bench") as url:
        yield url


def write_config(path: Path, tmp: Path, db_url: str, smtp_port: int, relay_port: int,
                 sections: str = "") -> None:
    """The daemon's config: its ports, the database, the sink as relay, and `sections`
    (more TOML tables) after them."""
    def s(value: str) -> str:
        return json.dumps(value)  # a JSON string is a valid TOML basic string

    path.write_text(f"""\
state_dir = {s(str(tmp / "var"))}

[desk]
name = "Bench Desk"
address = {s(DESK)}
complaints_address = "complaints@desk.example"
phone = "+32 2 123 45 67"

[database]
url = {s(db_url)}

[smtp]
host = "127.0.0.1"
port = {smtp_port}

[outbound]
relay_host = "127.0.0.1"
relay_port = {relay_port}
{sections}""", encoding="utf-8")


def mailgate_cli(config: Path, *args: str) -> None:
    result = subprocess.run([PYTHON, "-m", "mailgate", "--config", str(config), *args],
                            cwd=ROOT, capture_output=True, text=True, timeout=120,
                            stdin=subprocess.DEVNULL, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"mailgate {' '.join(args)} exited {result.returncode}:\n"
                           f"{result.stdout}{result.stderr}")


def ticket_count(engine: Engine) -> int | None:
    try:
        with engine.connect() as conn:
            return int(conn.execute(text("SELECT count(*) FROM ticket")).scalar_one())
    except SQLAlchemyError:  # e.g. a busy SQLite: try again at the next poll
        return None


def ack_times(sink: SmtpSink) -> dict[str, float]:
    """In-Reply-To → when the sink received that acknowledgement."""
    parser = email.parser.BytesHeaderParser(policy=policy.default)
    with sink.handler.cond:
        received = list(sink.handler.received)
    acks: dict[str, float] = {}
    for mail in received:
        irt = re.sub(r"\s+", "", str(parser.parsebytes(mail.raw)["In-Reply-To"] or ""))
        acks.setdefault(irt, mail.at)
    return acks


def wait_drained(proc: subprocess.Popen[bytes], engine: Engine, sink: SmtpSink,
                 expected: int) -> tuple[float | None, int, str]:
    """Polls until `expected` tickets and acknowledgements exist: (monotonic time the
    tickets were first all there, last ticket count, why it stopped early or "")."""
    deadline = time.monotonic() + PHASE_TIMEOUT
    tickets, tickets_done = 0, None
    progress, last_change = (-1, -1), time.monotonic()
    while True:
        tickets = ticket_count(engine) or tickets
        if tickets >= expected and tickets_done is None:
            tickets_done = time.monotonic()
        now = (tickets, len(sink.handler.received))
        if min(now) >= expected:
            return tickets_done, tickets, ""
        if proc.poll() is not None:
            return tickets_done, tickets, f"daemon exited with {proc.returncode}"
        if now != progress:
            progress, last_change = now, time.monotonic()
        if time.monotonic() - last_change > STALL or time.monotonic() > deadline:
            return tickets_done, tickets, f"drain given up at {now[0]} tickets, {now[1]} acks"
        time.sleep(POLL)


def daemon_env() -> dict[str, str]:
    """This environment without what would make the daemon talk to systemd or read
    another config."""
    hidden = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "MAILGATE_CONFIG")
    return {k: v for k, v in os.environ.items() if k not in hidden}


def run_mailgate(base_url: str | None, messages: int, connections: int,
                 rate: float | None, drain: bool = True) -> MailgateRun:
    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="mailgate-bench-")))
        db_url = stack.enter_context(fresh_database(base_url, tmp))
        sink = SmtpSink().start()
        stack.callback(sink.stop)
        config, smtp_port, log_path = tmp / "mailgate.toml", free_port(), tmp / "daemon.log"
        # Every mail comes from one editor: lift the loop brake and the editors' ceiling
        # above the number of mails, else all acknowledgements but the first would wait.
        write_config(config, tmp, db_url, smtp_port, sink.port, f"""
[access]
auto_replies_per_hour = {messages + 100}
acks_per_hour = {messages + 100}
""")
        mailgate_cli(config, "db", "upgrade")
        mailgate_cli(config, "sites", "add", SITE, "Demo")
        mailgate_cli(config, "editors", "add", SITE, EDITOR)
        serve = [PYTHON, "-m", "mailgate", "--config", str(config), "serve"]
        proc = stack.enter_context(server_process(serve, log_path, daemon_env()))
        wait_smtp(smtp_port, proc, log_path)
        wait_quiet(proc.pid)
        engine = create_engine(db_url, pool_size=1, max_overflow=0)
        stack.callback(engine.dispose)

        mails = build_mails(messages)
        cpu_start = cpu_seconds(proc.pid)
        sent = Load(smtp_port, mails, connections, rate).run()
        if not drain:  # an acceptance round only: the daemon stops with its backlog
            return MailgateRun(sent=sent, tickets=0, ticket_drain=None, ack_drain=None,
                               latencies=[], missing_acks=0, rss_mib=peak_rss_mib(proc.pid),
                               cpu_per_mail=(cpu_seconds(proc.pid) - cpu_start)
                               / max(1, sent.accepted))
        tickets_done, tickets, stopped = wait_drained(proc, engine, sink, sent.accepted)
        cpu = cpu_seconds(proc.pid) - cpu_start
        rss = peak_rss_mib(proc.pid)

        acks = ack_times(sink)
        matched = {mid: acks[mid] for mid in sent.at if mid in acks}
        run = MailgateRun(
            sent=sent, tickets=tickets,
            ticket_drain=tickets_done - sent.start if tickets_done else None,
            ack_drain=(max(matched.values()) - sent.start
                       if matched and len(matched) == sent.accepted else None),
            latencies=sorted(at - sent.at[mid] for mid, at in matched.items()),
            missing_acks=sent.accepted - len(matched), rss_mib=rss,
            cpu_per_mail=cpu / sent.accepted if sent.accepted else math.nan)
        if stopped:
            run.notes.append(f"{stopped}; daemon log:\n{tail(log_path)}")
        return run


# --- report -----------------------------------------------------------------------------------

def sending_line(label: str, sent: Sent, total: int) -> str:
    line = f"{label:<16} {sent.accepted}/{total} accepted, {sent.rate:.0f} msgs/s"
    if sent.errors:
        line += f"; {len(sent.errors)} error(s), first: {sent.errors[0]}"
    return line


def report_bare(rounds: list[Sent], messages: int) -> float:
    """Prints the bare rounds; returns the median rate."""
    median = statistics.median(r.rate for r in rounds)
    log(f"{'bare aiosmtpd':<16} {median:.0f} msgs/s, median of {len(rounds)} rounds ("
        + ", ".join(f"{r.rate:.0f}" for r in rounds) + f"; {messages} mails each)")
    for r in rounds:
        if r.errors:
            log(f"{INDENT}{len(r.errors)} error(s), first: {r.errors[0]}")
    return median


def report_resources(run: MailgateRun) -> None:
    log(f"{INDENT}peak RSS {fmt(run.rss_mib, ' MiB', 0)}, "
        f"CPU {fmt(run.cpu_per_mail * 1000, ' ms/mail', 1)}")
    for note in run.notes:
        log(f"{INDENT}{note}")


def round_ratios(bare: list[Sent], bursts: list[MailgateRun]) -> list[float]:
    """Each mailgate round against the mean of the bare rounds just before and after it."""
    return [run.sent.rate / ((bare[i].rate + bare[i + 1].rate) / 2)
            if bare[i].rate and bare[i + 1].rate else math.nan
            for i, run in enumerate(bursts)]


def report_burst(bursts: list[MailgateRun], bare: list[Sent], messages: int,
                 bare_rate: float, sqlite: bool) -> None:
    run = bursts[-1]  # the round that was drained
    rates = [b.sent.rate for b in bursts]
    median = statistics.median(rates)
    log(sending_line("mailgate burst", run.sent, messages))
    log(f"{INDENT}{median:.0f} msgs/s, median of {len(rates)} rounds ("
        + ", ".join(f"{r:.0f}" for r in rates) + ")")
    for b in bursts[:-1]:
        if b.sent.errors:
            log(f"{INDENT}{len(b.sent.errors)} error(s), first: {b.sent.errors[0]}")
    ratio = median / bare_rate if bare_rate else math.nan
    per_round = round_ratios(bare, bursts)
    target = f" (target >= 0.7: {'met' if ratio >= 0.7 else 'missed'})" if sqlite else ""
    log(f"{INDENT}ratio mailgate/bare {ratio:.2f}{target}; per round against its neighbours "
        + ", ".join(f"{r:.2f}" for r in per_round)
        + f" (spread {min(per_round):.2f}-{max(per_round):.2f})")
    cpu = statistics.median(b.cpu_per_mail for b in bursts)
    log(f"{INDENT}daemon CPU while accepting (median): {fmt(cpu * 1000, ' ms/mail', 2)}")
    if not run.tickets and run.ticket_drain is None:  # not drained (--accept-only)
        return
    per_s = run.tickets / run.ticket_drain if run.ticket_drain else math.nan
    log(f"{INDENT}drain: {run.tickets}/{run.sent.accepted} tickets after "
        f"{fmt(run.ticket_drain)} ({fmt(per_s, ' tickets/s', 0)}), "
        f"all acks after {fmt(run.ack_drain)}")
    report_resources(run)


def report_paced(run: MailgateRun, messages: int, rate: float) -> None:
    log(sending_line(f"mailgate {rate:g}/s", run.sent, messages))
    p99 = percentile(run.latencies, 0.99)
    verdict = "met" if p99 < 2.0 and not run.missing_acks else "missed"
    log(f"{INDENT}ack latency p50 {fmt(percentile(run.latencies, 0.50))}, p99 {fmt(p99)} "
        f"({len(run.latencies)} acks, {run.missing_acks} missing; "
        f"target p99 < 2 s: {verdict})")
    report_resources(run)


# --- main -------------------------------------------------------------------------------------

def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bench.ingest", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=1000,
                        help="mails per burst, bare and mailgate (default 1000)")
    parser.add_argument("--connections", type=int, default=8,
                        help="concurrent SMTP connections (default 8)")
    parser.add_argument("--rate", type=float, default=50.0,
                        help="mails/s of the paced latency run (default 50)")
    parser.add_argument("--paced-messages", type=int, default=500,
                        help="mails in the paced run (default 500)")
    parser.add_argument("--rounds", type=int, default=ROUNDS,
                        help=f"mailgate burst rounds, each between two bare rounds "
                             f"(default {ROUNDS})")
    parser.add_argument("--accept-only", action="store_true",
                        help="only the acceptance rounds: no drain, no paced run")
    parser.add_argument("--database-url", default=None,
                        help="postgresql+psycopg://... (a private schema per run, dropped "
                             "afterwards); default a temporary SQLite file per run")
    args = parser.parse_args(argv)
    if min(args.messages, args.connections, args.paced_messages, args.rounds) < 1 \
            or args.rate <= 0:
        parser.error("--messages, --connections, --paced-messages, --rounds and --rate "
                     "must be > 0")
    return args


def bench(args: argparse.Namespace) -> None:
    db = (make_url(args.database_url).render_as_string(hide_password=True)
          if args.database_url else "sqlite (temp file)")
    log(f"mailgate ingest bench: {args.messages} mails burst, {args.paced_messages} at "
        f"{args.rate:g}/s, {args.connections} connections, database {db}, "
        f"{os.cpu_count()} CPU(s), python {sys.version.split()[0]}, "
        f"load {load_average()}")
    bare = run_bare(args.messages, args.connections, 1)
    bursts: list[MailgateRun] = []
    for i in range(args.rounds):
        last = i == args.rounds - 1
        bursts.append(run_mailgate(args.database_url, args.messages, args.connections, None,
                                   drain=last and not args.accept_only))
        bare += run_bare(args.messages, args.connections, 1)
        log(f"  round {i + 1}: bare {bare[-2].rate:.0f}, mailgate {bursts[-1].sent.rate:.0f}, "
            f"bare {bare[-1].rate:.0f} msgs/s (load {load_average()})")
    bare_rate = report_bare(bare, args.messages)
    report_burst(bursts, bare, args.messages, bare_rate, sqlite=not args.database_url)
    if not args.accept_only:
        paced = run_mailgate(args.database_url, args.paced_messages, args.connections,
                             args.rate)
        report_paced(paced, args.paced_messages, args.rate)
    log(f"load at the end (1/5/15 min): {load_average()}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _raise_interrupt)
    signal.signal(signal.SIGHUP, _raise_interrupt)
    try:
        bench(args)
    except KeyboardInterrupt:
        log("interrupted: subprocesses stopped, temporary files removed")
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
