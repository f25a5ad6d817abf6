"""Ingest benchmark: SMTP throughput, acknowledgement latency, drain time and memory of the
real `mailgate serve`, against a bare aiosmtpd server on the same machine. Prints figures;
asserts nothing.

Usage, from the repository root (the venv's python runs every part)::

    .venv/bin/python -m bench.ingest                           # SQLite temp file, 1000 mails
    .venv/bin/python -m bench.ingest --rate 50                 # + paced latency run, 500 mails
    .venv/bin/python -m bench.ingest --messages 1000 --connections 8 --rate 50 \\
        --paced-messages 500 \\
        --database-url postgresql+psycopg://postgres@127.0.0.1:5432/test
    .venv/bin/python -m bench.ingest --py-spy /tmp/daemon.txt  # profile the unpaced daemon
    .venv/bin/python -m bench.ingest --py-spy /tmp/gil.svg --py-spy-option=--gil

(``python bench/ingest.py ...`` works as well.)

What one invocation does, each part in its own temporary directory and database:

1. **bare**: starts ``bench/bare_smtp.py`` (subprocess; aiosmtpd, handler answers 250 only)
   and sends ``--messages`` mails over ``--connections`` concurrent smtplib connections (one
   thread each, many mails per connection), unpaced; ``--bare-repeats`` rounds, half before
   and half after step 2 (other load on the machine moves these figures), the median counts.
2. **mailgate unpaced** (throughput): a fresh database (SQLite file in the temp dir, or a
   private schema ``bench_<hex>`` on PostgreSQL, dropped afterwards), ``mailgate db upgrade``,
   ``sites add 1234 Demo``, ``editors add 1234 eva@site1234.example.be``, then
   ``python -m mailgate --config FILE serve`` as a subprocess whose outbound relay is an
   aiosmtpd sink in this process. The same load as for bare, every mail from the registered
   editor, so each makes one ticket and one acknowledgement.
3. **mailgate paced** (only with ``--rate R``): the same with ``--paced-messages`` mails sent at
   R mails/s overall (mail i is sent at start + i/R).

Figures:

- ``accept``: mails/s as the client sees them, accepted mails / (last ``250`` after DATA −
  start). ``ratio`` = mailgate accept / bare accept (issue target: ≥ 0.5 on SQLite).
- ``drain``: seconds from the start until all accepted mails are tickets (``SELECT count(*)
  FROM ticket``, polled every 0.05 s) and until all acknowledgements reached the sink;
  ``end-to-end`` = tickets / drain.
- ``ack latency`` p50/p99/max: from the client's reading of the DATA ``250`` of a mail to the
  sink receiving the acknowledgement whose In-Reply-To is that mail's Message-ID (both clocks
  are this process's monotonic clock). Issue target: p99 < 2 s at 50 mails/s.
- ``peak RSS``: VmHWM of the server process from /proc/<pid>/status, read before it stops.
- ``CPU ms/mail``: user + system CPU of the server process (/proc/<pid>/stat) per accepted
  mail; for mailgate from the start of sending until drained, so intake and processing.
  Steadier than mails/s when other jobs share the machine (the load average is printed).

The daemon's config is the shipped defaults except: SMTP on a free loopback port, the relay
is the sink, and ``access.auto_replies_per_hour`` is lifted above the number of mails (all
mails come from one editor; the loop brake would otherwise suppress all acknowledgements but
the first five).

Every wait has a timeout (``--timeout`` per phase; ``--stall`` s without progress ends a
drain); subprocesses, the sink, the temporary directory and the PostgreSQL schema are removed
on exit, Ctrl-C and SIGTERM included.

Other options: ``--skip-unpaced`` (only the paced run), ``--bare-repeats``,
``--daemon-log-level`` (default INFO, as shipped), ``--serve-module M`` (run
``python -m M --config FILE serve`` instead of mailgate, to A/B a patched daemon).
With ``--py-spy FILE`` the unpaced daemon (``--profile-paced``: the paced one) runs under
``py-spy record`` (``pip install py-spy`` into the venv; py-spy starts the daemon, attaching by
pid does not work here); ``.svg`` gives a flame graph, ``.json`` speedscope, anything else
collapsed stacks; ``--py-spy-option=--gil`` / ``--py-spy-option=--idle`` pass options on.
Figures of a profiled run are slower than real.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import re
import shutil
import signal
import smtplib
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.policy import SMTP as SMTP_POLICY
from email.utils import formatdate
from pathlib import Path
from types import FrameType
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session
from sqlalchemy import create_engine, text

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
DESK = "servicedesk@desk.example"
EDITOR = "eva@site1234.example.be"
SITE = "1234"
TEXT_BODY = """Beste,

Het contactformulier op https://www.site1234.example.be/contact geeft sinds vanochtend een
fout 500 bij het verzenden. Bezoekers krijgen een witte pagina en het bericht komt niet aan.
Kunnen jullie dit bekijken? Het gaat om site {site}.

Met vriendelijke groeten,
Eva Editor
0470 12 34 56
"""
HTML_BODY = """<html><body><p>Beste,</p>
<p>Het contactformulier op <a href="https://www.site1234.example.be/contact">
https://www.site1234.example.be/contact</a> geeft sinds vanochtend een <b>fout 500</b> bij het
verzenden. Bezoekers krijgen een witte pagina en het bericht komt niet aan.
Kunnen jullie dit bekijken? Het gaat om site {site}.</p>
<p>Met vriendelijke groeten,<br>Eva Editor<br>0470 12 34 56</p></body></html>
"""


def log(line: str) -> None:
    print(line, flush=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an ascending list (q in 0..1)."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(q * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def peak_rss_mib(pid: int) -> float:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return math.nan
    m = re.search(r"^VmHWM:\s+(\d+)\s+kB", status, re.MULTILINE)
    return int(m.group(1)) / 1024 if m else math.nan


# --- the mails ------------------------------------------------------------------------------

def build_mails(count: int, tag: str) -> list[tuple[str, bytes]]:
    """(Message-ID, wire bytes): a typical editor's request, text + HTML alternative."""
    mails = []
    for i in range(count):
        mid = f"<bench-{tag}-{i:06d}@client.example>"
        msg = EmailMessage()
        msg["From"] = f"Eva Editor <{EDITOR}>"
        msg["To"] = DESK
        msg["Subject"] = f"Contactformulier geeft fout 500 (melding {i})"
        msg["Date"] = formatdate(localtime=False)
        msg["Message-ID"] = mid
        msg.set_content(TEXT_BODY.format(site=SITE))
        msg.add_alternative(HTML_BODY.format(site=SITE), subtype="html")
        mails.append((mid, msg.as_bytes(policy=SMTP_POLICY)))
    return mails


# --- the relay sink (in this process) -------------------------------------------------------

_IN_REPLY_TO = re.compile(rb"^in-reply-to:[ \t]*(.*(?:\r?\n[ \t].*)*)",
                          re.IGNORECASE | re.MULTILINE)


class AckSink:
    """aiosmtpd handler playing the relay: notes when each acknowledgement arrived."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.acks: dict[str, float] = {}   # In-Reply-To → monotonic arrival time
        self.others = 0                    # mails without In-Reply-To
        self.duplicates = 0

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        at = time.monotonic()
        raw = envelope.original_content or b""
        head = raw.split(b"\r\n\r\n", 1)[0]
        m = _IN_REPLY_TO.search(head)
        irt = re.sub(rb"\s+", b"", m.group(1)).decode("ascii", "replace") if m else ""
        with self.lock:
            if not irt:
                self.others += 1
            elif irt in self.acks:
                self.duplicates += 1
            else:
                self.acks[irt] = at
        return "250 2.0.0 OK"

    def count(self) -> int:
        with self.lock:
            return len(self.acks)


@contextlib.contextmanager
def running_sink() -> Iterator[tuple[AckSink, int]]:
    handler = AckSink()
    port = free_port()
    controller = Controller(handler, hostname="127.0.0.1", port=port, ready_timeout=10)
    controller.start()
    try:
        yield handler, port
    finally:
        controller.stop()


# --- subprocesses ---------------------------------------------------------------------------

def stop_process(proc: subprocess.Popen[Any], timeout: float = 20.0) -> None:
    """SIGTERM to the child's process group (it leads its own session: that group is the
    child and whatever it started, e.g. the daemon under py-spy), SIGKILL after timeout."""
    def signal_group(sig: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)

    if proc.poll() is not None:
        signal_group(signal.SIGTERM)  # a grandchild may outlive it
        return
    signal_group(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        log(f"  (pid {proc.pid} ignored SIGTERM for {timeout:.0f} s: killed)")
        signal_group(signal.SIGKILL)
        proc.wait(5)


@contextlib.contextmanager
def process(args: list[str], log_path: Path, env: dict[str, str] | None = None
            ) -> Iterator[subprocess.Popen[bytes]]:
    """A child in its own session (Ctrl-C reaches only us; we stop it in order)."""
    with open(log_path, "wb") as out:
        proc = subprocess.Popen(args, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        yield proc
    finally:
        stop_process(proc)


def wait_smtp(port: int, proc: subprocess.Popen[bytes], log_path: Path,
              timeout: float = 30.0) -> None:
    """Until the server greets with 220 (or dies, or the timeout passes)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}:\n"
                               + tail(log_path))
        try:
            with smtplib.SMTP("127.0.0.1", port, timeout=2) as smtp:
                smtp.noop()
            return
        except (OSError, smtplib.SMTPException):
            time.sleep(0.1)
    raise RuntimeError(f"server not ready on port {port} after {timeout:.0f} s:\n"
                       + tail(log_path))


def tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def mailgate_cli(config: Path, *args: str, timeout: float = 120.0) -> str:
    result = subprocess.run([PYTHON, "-m", "mailgate", "--config", str(config), *args],
                            cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                            stdin=subprocess.DEVNULL, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"mailgate {' '.join(args)} exited {result.returncode}:\n"
                           f"{result.stdout}{result.stderr}")
    return result.stdout.strip()


# --- databases ------------------------------------------------------------------------------

@contextlib.contextmanager
def fresh_database(base_url: str | None, tmp: Path) -> Iterator[tuple[str, str]]:
    """(url, description): a SQLite file in tmp, or a private PostgreSQL schema."""
    if not base_url or base_url.startswith("sqlite"):
        yield f"sqlite:///{tmp / 'mailgate.db'}", "sqlite (temp file)"
        return
    schema = f"bench_{uuid.uuid4().hex[:12]}"
    admin = create_engine(base_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE SCHEMA "{schema}"'))
        sep = "&" if "?" in base_url else "?"
        try:
            yield (f"{base_url}{sep}options=-csearch_path%3D{schema}",
                   f"postgresql (schema {schema})")
        finally:
            with admin.connect() as conn:
                conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
    finally:
        admin.dispose()


class TicketCounter:
    """Polls SELECT count(*) FROM ticket in a thread; notes when a count was first seen."""

    def __init__(self, url: str, interval: float = 0.05) -> None:
        self.engine = create_engine(url, pool_size=1, max_overflow=0)
        self.interval = interval
        self.samples: list[tuple[float, int]] = []
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.error = ""
        self.thread = threading.Thread(target=self._run, name="ticket-counter", daemon=True)

    def _run(self) -> None:
        while not self.stopping.is_set():
            try:
                with self.engine.connect() as conn:
                    n = int(conn.execute(text("SELECT count(*) FROM ticket")).scalar_one())
                with self.lock:
                    self.samples.append((time.monotonic(), n))
            except Exception as exc:  # a busy SQLite or a dropped connection: try again
                self.error = f"{type(exc).__name__}: {str(exc).splitlines()[0]}"
            self.stopping.wait(self.interval)

    def latest(self) -> int:
        with self.lock:
            return self.samples[-1][1] if self.samples else 0

    def first_reached(self, count: int) -> float | None:
        with self.lock:
            return next((t for t, n in self.samples if n >= count), None)

    def __enter__(self) -> TicketCounter:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        self.thread.join(10)
        self.engine.dispose()


# --- the load -------------------------------------------------------------------------------

@dataclass
class LoadResult:
    start: float
    sent_at: dict[str, float]            # Message-ID → DATA 250 read (monotonic)
    errors: list[str] = field(default_factory=list)

    @property
    def accepted(self) -> int:
        return len(self.sent_at)

    @property
    def duration(self) -> float:
        return (max(self.sent_at.values()) - self.start) if self.sent_at else math.nan

    @property
    def rate(self) -> float:
        return self.accepted / self.duration if self.sent_at else 0.0


class Load:
    """--connections threads, one smtplib connection each, taking mails off a shared counter;
    paced mails wait for their slot start + i/rate."""

    def __init__(self, port: int, mails: list[tuple[str, bytes]], connections: int,
                 rate: float | None, timeout: float) -> None:
        self.port = port
        self.mails = mails
        self.connections = connections
        self.rate = rate
        self.timeout = timeout
        self.next = 0
        self.lock = threading.Lock()
        self.sent_at: dict[str, float] = {}
        self.errors: list[str] = []
        # The clock starts when every connection is open, before any thread goes on.
        self.barrier = threading.Barrier(connections + 1, action=self._start_clock)
        self.stopping = threading.Event()
        self.start = 0.0
        self.deadline = math.inf

    def _start_clock(self) -> None:
        self.start = time.monotonic()
        self.deadline = self.start + self.timeout

    def _take(self) -> int | None:
        with self.lock:
            i = self.next
            self.next += 1
        return i if i < len(self.mails) else None

    def _error(self, what: str) -> None:
        with self.lock:
            self.errors.append(what)

    def _connect(self) -> smtplib.SMTP:
        smtp = smtplib.SMTP("127.0.0.1", self.port, timeout=30)
        smtp.ehlo("loadgen.client.example")
        return smtp

    def _send(self, smtp: smtplib.SMTP, raw: bytes) -> None:
        code, resp = smtp.mail(EDITOR)
        if code != 250:
            smtp.rset()
            raise smtplib.SMTPSenderRefused(code, resp, EDITOR)
        code, resp = smtp.rcpt(DESK)
        if code not in (250, 251):
            smtp.rset()
            raise smtplib.SMTPRecipientsRefused({DESK: (code, resp)})
        code, resp = smtp.data(raw)  # raises only if DATA itself is refused
        if code != 250:
            smtp.rset()
            raise smtplib.SMTPDataError(code, resp)

    def _worker(self) -> None:
        smtp: smtplib.SMTP | None = None
        try:
            smtp = self._connect()
        except (OSError, smtplib.SMTPException) as exc:
            self._error(f"connect: {exc}")
        with contextlib.suppress(threading.BrokenBarrierError):
            self.barrier.wait(30)
        try:
            while not self.stopping.is_set():
                i = self._take()
                if i is None:
                    break
                if self.rate:
                    delay = self.start + i / self.rate - time.monotonic()
                    if delay > 0 and self.stopping.wait(delay):
                        break
                if time.monotonic() > self.deadline:
                    self._error("phase timeout")
                    break
                mid, raw = self.mails[i]
                try:
                    if smtp is None:
                        smtp = self._connect()
                    self._send(smtp, raw)
                    self.sent_at[mid] = time.monotonic()
                except smtplib.SMTPResponseException as exc:
                    self._error(f"{exc.smtp_code} {exc.smtp_error!r}")
                except smtplib.SMTPRecipientsRefused as exc:
                    self._error(f"RCPT refused: {exc.recipients}")
                except (OSError, smtplib.SMTPException) as exc:
                    self._error(f"{type(exc).__name__}: {exc}")
                    with contextlib.suppress(Exception):
                        smtp.close()  # type: ignore[union-attr]
                    smtp = None
        finally:
            if smtp is not None:
                with contextlib.suppress(Exception):
                    smtp.quit()

    def run(self) -> LoadResult:
        threads = [threading.Thread(target=self._worker, name=f"smtp-{n}", daemon=True)
                   for n in range(self.connections)]
        for t in threads:
            t.start()
        try:
            self.barrier.wait(30)  # all connections open: the clock starts now
        except threading.BrokenBarrierError:
            self._error("not every connection got ready within 30 s")
            self._start_clock()
        try:
            for t in threads:
                t.join(max(0.0, self.deadline + 35 - time.monotonic()))
        finally:
            self.stopping.set()
        if any(t.is_alive() for t in threads):
            self._error("a connection thread did not finish in time")
        return LoadResult(self.start, dict(self.sent_at), list(self.errors))


# --- the runs -------------------------------------------------------------------------------

@dataclass
class RunFigures:
    label: str
    load: LoadResult
    rss_mib: float
    ticket_drain: float | None = None
    ack_drain: float | None = None
    tickets: int = 0
    latencies: list[float] = field(default_factory=list)
    missing_acks: int = 0
    log_problems: int = 0
    cpu_per_mail: float = math.nan       # server CPU seconds per accepted mail
    notes: list[str] = field(default_factory=list)


def fmt(value: float | None, unit: str = " s", digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:.{digits}f}{unit}"


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of one process (its children not included), from /proc."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return math.nan
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def load_average() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "n/a"


@dataclass
class BareRounds:
    rounds: list[LoadResult] = field(default_factory=list)
    cpu_per_mail: list[float] = field(default_factory=list)
    rss_mib: float = math.nan


def run_bare(messages: int, connections: int, timeout: float, repeats: int,
             into: BareRounds) -> None:
    """Rounds against a fresh bare server process (a round lasts well under a second,
    so the bench does several before and after mailgate and takes the median)."""
    with tempfile.TemporaryDirectory(prefix="mailgate-bench-") as tmpdir:
        tmp = Path(tmpdir)
        port = free_port()
        log_path = tmp / "bare.log"
        with process([PYTHON, str(ROOT / "bench" / "bare_smtp.py"), "--port", str(port)],
                     log_path) as proc:
            wait_smtp(port, proc, log_path)
            for _ in range(repeats):
                mails = build_mails(messages, uuid.uuid4().hex[:8])
                cpu = cpu_seconds(proc.pid)
                load = Load(port, mails, connections, None, timeout).run()
                into.rounds.append(load)
                if load.accepted:
                    into.cpu_per_mail.append((cpu_seconds(proc.pid) - cpu) / load.accepted)
            into.rss_mib = max(peak_rss_mib(proc.pid), into.rss_mib) \
                if not math.isnan(into.rss_mib) else peak_rss_mib(proc.pid)


def bare_figures(bare: BareRounds) -> RunFigures:
    ranked = sorted(bare.rounds, key=lambda r: r.rate)
    figures = RunFigures("bare aiosmtpd", ranked[(len(ranked) - 1) // 2], bare.rss_mib)
    cpu = sorted(bare.cpu_per_mail)
    figures.cpu_per_mail = cpu[(len(cpu) - 1) // 2] if cpu else math.nan
    if len(ranked) > 1:
        figures.notes.append(f"median of {len(ranked)} rounds (before and after mailgate): "
                             + ", ".join(f"{r.rate:.0f}" for r in bare.rounds) + " msgs/s")
    return figures


def write_config(path: Path, tmp: Path, db_url: str, smtp_port: int, relay_port: int,
                 messages: int, log_level: str) -> None:
    def s(value: str) -> str:
        return json.dumps(value)  # a JSON string is a valid TOML basic string

    # All mails come from one editor: the loop brake (access.auto_replies_per_hour, 5 by
    # default) would suppress all but the first acknowledgements, so it is lifted above N.
    path.write_text(f"""\
state_dir = {s(str(tmp / "var"))}
log_level = {s(log_level)}

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

[access]
auto_replies_per_hour = {messages + 100}
""", encoding="utf-8")


def run_mailgate(label: str, base_url: str | None, messages: int, connections: int,
                 rate: float | None, timeout: float, py_spy: str | None = None,
                 serve_module: str = "mailgate", log_level: str = "INFO",
                 stall: float = 30.0, py_spy_options: list[str] | None = None
                 ) -> RunFigures:
    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="mailgate-bench-")))
        db_url, _ = stack.enter_context(fresh_database(base_url, tmp))
        sink, sink_port = stack.enter_context(running_sink())
        config = tmp / "mailgate.toml"
        smtp_port = free_port()
        write_config(config, tmp, db_url, smtp_port, sink_port, messages, log_level)
        mailgate_cli(config, "db", "upgrade")
        mailgate_cli(config, "sites", "add", SITE, "Demo")
        mailgate_cli(config, "editors", "add", SITE, EDITOR)
        env = {k: v for k, v in os.environ.items()
               if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "MAILGATE_CONFIG")}
        log_path = tmp / "daemon.log"
        serve = [PYTHON, "-m", serve_module, "--config", str(config), "serve"]
        if py_spy:  # py-spy cannot attach here (--pid), so it starts the daemon itself
            serve = py_spy_command(py_spy, py_spy_options or []) + serve
        proc = stack.enter_context(process(serve, log_path, env))
        daemon_pid = child_pid(proc.pid) if py_spy else proc.pid
        wait_smtp(smtp_port, proc, log_path)
        mails = build_mails(messages, uuid.uuid4().hex[:8])
        counter = stack.enter_context(TicketCounter(db_url))
        cpu_start = cpu_seconds(daemon_pid)
        load = Load(smtp_port, mails, connections, rate, timeout).run()
        expected = load.accepted
        deadline = time.monotonic() + timeout
        progress, last_change, stalled = (-1, -1), time.monotonic(), ""
        while proc.poll() is None:
            now = (counter.latest(), sink.count())
            if min(now) >= expected:
                break
            if now != progress:
                progress, last_change = now, time.monotonic()
            elif time.monotonic() - last_change > stall:
                stalled = f"no progress for {stall:.0f} s"
            if time.monotonic() > deadline:
                stalled = f"--timeout {timeout:.0f} s reached"
            if stalled:
                stalled = f"drain stopped: {now[0]} tickets, {now[1]} acks; {stalled}"
                break
            time.sleep(0.05)
        time.sleep(0.15)  # one more poll of the ticket count
        figures = RunFigures(label, load, peak_rss_mib(daemon_pid))
        if load.accepted:  # intake and processing until drained (or given up)
            figures.cpu_per_mail = (cpu_seconds(daemon_pid) - cpu_start) / load.accepted
        if stalled:
            figures.notes.append(stalled)
        reached = counter.first_reached(expected)
        figures.ticket_drain = reached - load.start if reached is not None else None
        figures.tickets = counter.latest()
        with sink.lock:
            acks = dict(sink.acks)
            figures.notes += [f"sink: {sink.others} mail(s) without In-Reply-To"] \
                if sink.others else []
            figures.notes += [f"sink: {sink.duplicates} duplicate ack(s)"] \
                if sink.duplicates else []
        matched = [(acks[mid], acks[mid] - sent) for mid, sent in load.sent_at.items()
                   if mid in acks]
        figures.latencies = sorted(lat for _at, lat in matched)
        figures.missing_acks = expected - len(matched)
        if matched and not figures.missing_acks:
            figures.ack_drain = max(at for at, _lat in matched) - load.start
        if proc.poll() is not None:
            figures.notes.append(f"daemon exited early with {proc.returncode}:\n"
                                 + tail(log_path))
        if counter.error:
            figures.notes.append(f"ticket counter: last error {counter.error}")
        if daemon_pid != proc.pid:  # py-spy writes its profile once the daemon has stopped
            with contextlib.suppress(ProcessLookupError):
                os.kill(daemon_pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(60)
            figures.notes.append(f"py-spy: {tail(log_path, 3).splitlines()[-2:]}")
        stop_process(proc)
        problems = [line for line in tail(log_path, 100000).splitlines()
                    if " WARNING " in line or " ERROR " in line or "Traceback" in line]
        figures.log_problems = len(problems)
        if problems:
            figures.notes.append("daemon log warnings/errors, first: " + problems[0])
        return figures


def py_spy_command(out: str, extra: list[str]) -> list[str]:
    exe = shutil.which("py-spy") or str(Path(PYTHON).with_name("py-spy"))
    fmt_name = {".svg": "flamegraph", ".json": "speedscope"}.get(Path(out).suffix, "raw")
    return [exe, "record", "--rate", "100", "--format", fmt_name, "--nonblocking",
            *extra, "--output", str(Path(out).resolve()), "--"]


def child_pid(parent: int, timeout: float = 10.0) -> int:
    """The pid of parent's (only) child, found in /proc."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for stat in Path("/proc").glob("[0-9]*/stat"):
            with contextlib.suppress(OSError, ValueError, IndexError):
                fields = stat.read_text().rsplit(")", 1)[1].split()
                if int(fields[1]) == parent:
                    return int(stat.parent.name)
        time.sleep(0.05)
    raise RuntimeError(f"no child process of {parent} after {timeout:.0f} s")


def report(fig: RunFigures, bare: RunFigures | None, rate: float | None) -> None:
    load = fig.load
    n = load.accepted + len(load.errors)
    head = f"{fig.label:<22} {load.accepted}/{n} accepted in {fmt(load.duration)}"
    head += f" = {load.rate:7.1f} msgs/s"
    if rate:
        head += f" (paced at {rate:g}/s)"
    head += (f"; CPU {fmt(fig.cpu_per_mail * 1000, ' ms/mail')}"
             f"; peak RSS {fmt(fig.rss_mib, ' MiB', 1)}")
    if load.errors:
        head += f"; {len(load.errors)} error(s), first: {load.errors[0]}"
    log(head)
    if fig.label.startswith("bare"):
        for note in fig.notes:
            log(f"{'':<22} {note}")
        return
    if bare is not None and not rate and bare.load.rate:
        ratio = load.rate / bare.load.rate
        verdict = "met" if ratio >= 0.5 else "MISSED"
        log(f"{'':<22} ratio mailgate/bare = {ratio:.2f} (target >= 0.50: {verdict})")
    e2e = fig.tickets / fig.ticket_drain if fig.ticket_drain else math.nan
    log(f"{'':<22} drain: {fig.tickets}/{load.accepted} tickets after {fmt(fig.ticket_drain)}, "
        f"all acks after {fmt(fig.ack_drain)}; end-to-end {fmt(e2e, ' tickets/s', 1)}")
    lat = fig.latencies
    line = (f"{'':<22} ack latency p50 {fmt(percentile(lat, 0.50))} "
            f"p99 {fmt(percentile(lat, 0.99))} max {fmt(max(lat) if lat else None)} "
            f"({len(lat)} acks, {fig.missing_acks} missing)")
    if rate:
        p99 = percentile(lat, 0.99)
        ok = not fig.missing_acks and p99 < 2.0
        line += f"; target p99 < 2 s at {rate:g}/s: {'met' if ok else 'MISSED'}"
    log(line)
    log(f"{'':<22} daemon log: {fig.log_problems} warning/error line(s)")
    for note in fig.notes:
        log(f"{'':<22} {note}")


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="bench.ingest", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=1000,
                        help="mails in the unpaced (throughput) runs (default 1000)")
    parser.add_argument("--connections", type=int, default=8,
                        help="concurrent SMTP connections, one thread each (default 8)")
    parser.add_argument("--rate", type=float, default=None,
                        help="also do a paced latency run at this many mails/s (e.g. 50)")
    parser.add_argument("--paced-messages", type=int, default=500,
                        help="mails in the paced run (default 500)")
    parser.add_argument("--bare-repeats", type=int, default=4,
                        help="rounds against the bare server, half before and half after "
                             "the unpaced mailgate run; the median counts (default 4)")
    parser.add_argument("--database-url", default=None,
                        help="default (or any sqlite: URL): a temporary SQLite file per run; "
                             "postgresql+psycopg://... gets a private schema per run, "
                             "dropped afterwards")
    parser.add_argument("--timeout", type=float, default=300.0,
                        help="bound for each phase's sending and for its drain (default 300 s)")
    parser.add_argument("--py-spy", metavar="FILE", default=None,
                        help="record the daemon of the unpaced run with py-spy into FILE")
    parser.add_argument("--py-spy-option", action="append", default=[], metavar="OPT",
                        help="extra py-spy record option, repeatable: --py-spy-option=--gil "
                             "(only the GIL holder), --py-spy-option=--idle (wall clock)")
    parser.add_argument("--profile-paced", action="store_true",
                        help="with --py-spy: profile the paced run instead of the unpaced one")
    parser.add_argument("--serve-module", default="mailgate", metavar="MODULE",
                        help="run `python -m MODULE --config FILE serve` as the daemon "
                             "(default mailgate; to try a patched daemon, A/B)")
    parser.add_argument("--daemon-log-level", default="INFO",
                        choices=("DEBUG", "INFO", "WARNING", "ERROR"),
                        help="log_level in the daemon's config (default INFO, as shipped)")
    parser.add_argument("--stall", type=float, default=30.0,
                        help="stop waiting for the drain after this long without progress "
                             "(default 30 s)")
    parser.add_argument("--skip-unpaced", action="store_true",
                        help="only the paced run (needs --rate)")
    args = parser.parse_args(argv)
    if min(args.messages, args.connections, args.paced_messages, args.bare_repeats) < 1:
        parser.error("--messages, --connections, --paced-messages and --bare-repeats must be "
                     "at least 1")
    if args.rate is not None and args.rate <= 0:
        parser.error("--rate must be greater than 0")
    if args.skip_unpaced and not args.rate:
        parser.error("--skip-unpaced needs --rate")

    signal.signal(signal.SIGTERM, _raise_interrupt)
    signal.signal(signal.SIGHUP, _raise_interrupt)
    db = "sqlite (temp file)" if not args.database_url else re.sub(
        r"://([^:/@]+):[^@]*@", r"://\1:***@", args.database_url)
    runs = ([] if args.skip_unpaced else [f"{args.messages} mails unpaced"]) \
        + ([f"{args.paced_messages} at {args.rate:g}/s"] if args.rate else [])
    log(f"mailgate ingest bench: {', '.join(runs)}, {args.connections} connections, "
        f"database {db}, {os.cpu_count()} CPU(s), python {sys.version.split()[0]}, "
        f"load average {load_average()}")
    try:
        bare = None
        if not args.skip_unpaced:
            rounds = BareRounds()
            before = (args.bare_repeats + 1) // 2
            run_bare(args.messages, args.connections, args.timeout, before, rounds)
            unpaced = run_mailgate("mailgate unpaced", args.database_url, args.messages,
                                   args.connections, None, args.timeout,
                                   None if args.profile_paced else args.py_spy,
                                   args.serve_module, args.daemon_log_level, args.stall,
                                   args.py_spy_option)
            if args.bare_repeats > before:
                run_bare(args.messages, args.connections, args.timeout,
                         args.bare_repeats - before, rounds)
            bare = bare_figures(rounds)
            report(bare, None, None)
            report(unpaced, bare, None)
        if args.rate:
            paced = run_mailgate(f"mailgate paced {args.rate:g}/s", args.database_url,
                                 args.paced_messages, args.connections, args.rate,
                                 args.timeout,
                                 args.py_spy if args.profile_paced else None,
                                 args.serve_module, args.daemon_log_level, args.stall,
                                 args.py_spy_option)
            report(paced, bare, args.rate)
        log(f"load average (1/5/15 min) at the end: {load_average()}")
    except KeyboardInterrupt:
        log("interrupted: subprocesses stopped, temporary files removed")
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
