"""The whole path on a mix like the desk's (issue 11, items 2 and 4). Prints figures; asserts
nothing.

Usage, from the repository root::

    .venv/bin/python -m bench.mix                       # 2,000 mails over 8 connections
    .venv/bin/python -m bench.mix --floor               # ... and the same to bench/floor.py
    .venv/bin/python -m bench.mix --drain 1000          # 1,000 stored mails → tickets/s
    .venv/bin/python -m bench.mix --rate 50 --messages 1500   # steady 50 mails/s, ack p99
    .venv/bin/python -m bench.mix --profile 300         # the worker in-process, cProfile
    ... --database-url postgresql+psycopg://postgres@127.0.0.1:5432/test

**mix** (default): the real daemon (``python -m mailgate --config F serve``) whose relay is an
SMTP sink in this process. ``--messages`` mails over ``--connections`` SMTP connections: 70% new
requests from registered editors, 30% replies — each sent only after its request's
acknowledgement reached the sink, with the ack's subject (``Re: [SD-n] …``), In-Reply-To the
ack's Message-ID and References the request and the ack, as a mail client does. Half of all
mails are multipart/alternative (text + HTML), the rest plain text; 10% of the new requests
carry a 200 KB PNG screenshot. Editors: three per site over as many sites as it takes for
each editor to stay under ``[access] acks_per_hour`` (the shipped 60; not lifted), and two
registered agents, so every new ticket and every reply also makes the agents' notification.

Figures: mails/s from the first send until the last acknowledgement arrived and no inbound
row is pending; ack latency (request's DATA 250 → its ack at the sink) p50/p99; peak RSS
(VmHWM) and CPU per mail of the daemon; whether every reply sits on its request's ticket
(read from the database); and, in the same run, the rate at which Python's own ``email``
parses the same mails (``message_from_bytes`` with ``policy.default``, every part walked,
``get_content()`` of every leaf: bodies and attachments) — the goal is ≥ 0.5× that rate.
With ``--floor``, the same mails also go to ``bench/floor.py``, a gateway that only parses
them that same way, answers 250 and relays one acknowledgement per request: the rate any
Python gateway reaches on this machine with the bench's clients and sink beside it.

**drain** (``--drain N``): the daemon runs idle; N new requests of the same mix are committed
in one transaction (as a backlog after an outage); from that commit until every
acknowledgement reached the sink and nothing is pending: tickets/s (goal ≥ 150).

**profile** (``--profile N``): no daemon; N stored requests processed by
``worker.process_pending`` and the outbox flushed to the sink, in this process under cProfile;
prints the top functions by own time and by cumulative time.

``load`` (``os.getloadavg()``) is printed before and after: other jobs move every figure.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import email
import io
import math
import os
import pstats
import queue
import random
import re
import signal
import smtplib
import struct
import subprocess
import sys
import tempfile
import threading
import time
import uuid
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from email import policy
from email.message import EmailMessage
from email.parser import BytesHeaderParser
from email.utils import formatdate
from pathlib import Path
from types import FrameType

from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import SQLAlchemyError

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.ingest import (  # noqa: E402
    PYTHON,
    cpu_seconds,
    daemon_env,
    fmt,
    fresh_database,
    load_average,
    log,
    mailgate_cli,
    percentile,
    server_process,
    tail,
    tree_peak_rss_mib,
    wait_quiet,
    wait_smtp,
    write_config,
)
from tests.support.sink import SmtpSink, free_port  # noqa: E402

DESK = "servicedesk@desk.example"
AGENTS = ("agent.one@desk.example", "agent.two@desk.example")
PREFIX = "SD"  # the shipped ticket_prefix
# The worker looks for pending mail more often than the shipped 2 s: the drain's clock.
WORKER = """
[worker]
poll_seconds = 0.2
"""
EDITORS_PER_SITE = 3
ACKS_PER_EDITOR = 40        # below the shipped [access] acks_per_hour = 60
PHASE_TIMEOUT = 600.0
STALL = 60.0
POLL = 0.05

TEXT = """Beste,

Het contactformulier op https://www.site{site}.example.be/contact geeft sinds vanochtend een
fout 500 bij het verzenden (melding {n}). Bezoekers krijgen een witte pagina en het bericht
komt niet aan. Kunnen jullie dit bekijken? Het gaat om site {site}.

Met vriendelijke groeten,
{name}
0470 12 34 56
"""
HTML = """<html><body><p>Beste,</p>
<p>Het contactformulier op <a href="https://www.site{site}.example.be/contact">
https://www.site{site}.example.be/contact</a> geeft sinds vanochtend een <b>fout 500</b> bij
het verzenden (melding {n}). Bezoekers krijgen een witte pagina en het bericht komt niet aan.
Kunnen jullie dit bekijken? Het gaat om site {site}.</p>
<p>Met vriendelijke groeten,<br>{name}<br>0470 12 34 56</p></body></html>
"""
REPLY = """Dank u, de fout komt nog steeds voor. Bijkomende info: het gebeurt ook op
https://www.site{site}.example.be/contact?lang=fr, sinds ongeveer 9 uur.

{name}

> {quoted}
"""


# --- the mails --------------------------------------------------------------------------------

def png(size: int = 200 * 1024, seed: int = 1) -> bytes:
    """A valid PNG of about `size` bytes: random RGB noise (incompressible), like a
    screenshot's worth of bytes."""
    side = int(math.sqrt(size / 3))
    rng = random.Random(seed)
    rows = b"".join(b"\x00" + rng.randbytes(side * 3) for _ in range(side))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    header = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(rows, 1)) + chunk(b"IEND", b""))


@dataclass(frozen=True)
class Editor:
    email: str
    name: str
    site: str


def editors_for(requests: int) -> list[Editor]:
    sites = max(10, math.ceil(requests / ACKS_PER_EDITOR / EDITORS_PER_SITE))
    names = ("Eva", "Jan", "Marie")
    return [Editor(f"{names[e].lower()}{e}@site{1000 + s}.example.be",
                   f"{names[e]} Editor {s}", str(1000 + s))
            for s in range(sites) for e in range(EDITORS_PER_SITE)]


@dataclass
class Request:
    index: int
    editor: Editor
    message_id: str
    subject: str
    raw: bytes
    wants_reply: bool
    alternative: bool


class MailMaker:
    def __init__(self, requests: int, seed: int = 11) -> None:
        self.tag = uuid.uuid4().hex[:8]
        self.editors = editors_for(requests)
        self.screenshot = png()
        self.rng = random.Random(seed)
        self.count = 0

    def _base(self, editor: Editor, subject: str, mid: str, body: str, html: str | None
              ) -> EmailMessage:
        msg = EmailMessage()
        msg["From"] = f"{editor.name} <{editor.email}>"
        msg["To"] = DESK
        msg["Subject"] = subject
        msg["Date"] = formatdate(localtime=True)
        msg["Message-ID"] = mid
        msg["User-Agent"] = "Mozilla Thunderbird"
        msg.set_content(body)
        if html is not None:
            msg.add_alternative(html, subtype="html")
        return msg

    def request(self, i: int, wants_reply: bool) -> Request:
        editor = self.editors[i % len(self.editors)]
        alternative = self.rng.random() < 0.5
        mid = f"<mix-{self.tag}-{i:06d}@client.example>"
        subject = f"Contactformulier site {editor.site} geeft fout 500 (melding {i})"
        fields = {"site": editor.site, "n": i, "name": editor.name}
        msg = self._base(editor, subject, mid, TEXT.format(**fields),
                         HTML.format(**fields) if alternative else None)
        if i % 10 == 3:  # 10% of the requests: a screenshot, each its own bytes
            msg.add_attachment(self.screenshot + f"request {i}".encode(), maintype="image",
                               subtype="png", filename=f"screenshot-{i}.png")
        return Request(i, editor, mid, subject, msg.as_bytes(policy=policy.SMTP), wants_reply,
                       alternative)

    def reply(self, req: Request, ack_subject: str, ack_id: str, alternative: bool) -> bytes:
        mid = f"<mix-{self.tag}-{req.index:06d}-re@client.example>"
        fields = {"site": req.editor.site, "name": req.editor.name,
                  "quoted": f"Uw melding {ack_subject} is goed ontvangen."}
        body = REPLY.format(**fields)
        html = (f"<html><body><p>{body}</p></body></html>" if alternative else None)
        msg = self._base(req.editor, f"Re: {ack_subject}", mid, body, html)
        msg["In-Reply-To"] = ack_id
        msg["References"] = f"{req.message_id} {ack_id}"
        return msg.as_bytes(policy=policy.SMTP)


def plan(messages: int, seed: int = 11) -> tuple[MailMaker, list[Request]]:
    """70% requests; 3 of every 7 get a reply (30% of all mails); half of all mails
    multipart/alternative."""
    replies = round(messages * 0.3)
    count = messages - replies
    maker = MailMaker(count, seed)
    chosen = set(random.Random(seed).sample(range(count), min(replies, count)))
    return maker, [maker.request(i, i in chosen) for i in range(count)]


# --- python's own email: the parse limit ------------------------------------------------------

def email_parse_rate(raws: list[bytes], rounds: int = 3) -> float:
    """Mails/s of email.message_from_bytes (policy.default) with every leaf's content."""
    best = math.inf
    for _ in range(rounds):
        start = time.perf_counter()
        for raw in raws:
            msg = email.message_from_bytes(raw, policy=policy.default)
            for part in msg.walk():
                if not part.is_multipart():
                    part.get_content()  # type: ignore[attr-defined]
        best = min(best, time.perf_counter() - start)
    return len(raws) / best


# --- the daemon -------------------------------------------------------------------------------

def register(config: Path, editors: list[Editor]) -> None:
    """Sites, editors and agents, in one transaction of this process (fast)."""
    from mailgate import config as config_mod
    from mailgate.app import App
    from mailgate.db.engine import transaction
    from mailgate.tickets import registry

    app = App(config_mod.load(config))
    try:
        with transaction(app.sessions) as session:
            now = app.clock.now()
            for site in dict.fromkeys(e.site for e in editors):
                registry.add_site(session, site, f"Site {site}", now)
            for e in editors:
                registry.add_editor(session, e.site, e.email, now, name=e.name,
                                    phone="+32 470 12 34 56")
            for a in AGENTS:
                registry.add_agent(session, a, now, name=a.split("@")[0])
    finally:
        app.close()


def store_backlog(config: Path, raws: list[bytes]) -> float:
    """Commits the mails as pending rows in one transaction; returns when (monotonic)."""
    from mailgate import config as config_mod
    from mailgate.app import App
    from mailgate.inbound.store import Arrival, store_many

    app = App(config_mod.load(config))
    try:
        store_many(app.sessions, app.clock,
                   [Arrival(raw, "smtp", "", (DESK,)) for raw in raws])
        return time.monotonic()
    finally:
        app.close()


@dataclass
class Setup:
    tmp: Path
    config: Path
    db_url: str
    sink: SmtpSink
    smtp_port: int
    log_path: Path


@contextlib.contextmanager
def desk(base_url: str | None, editors: list[Editor], processes: int = 0,
         pipelining: bool = True) -> Iterator[Setup]:
    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="mailgate-mix-")))
        db_url = stack.enter_context(fresh_database(base_url, tmp))
        sink = SmtpSink(pipelining).start()
        stack.callback(sink.stop)
        config, smtp_port = tmp / "mailgate.toml", free_port()
        write_config(config, tmp, db_url, smtp_port, sink.port,
                     WORKER + (f"processes = {processes}\n" if processes else ""))
        mailgate_cli(config, "db", "upgrade")
        register(config, editors)
        yield Setup(tmp, config, db_url, sink, smtp_port, tmp / "daemon.log")


def pending(engine: Engine) -> int | None:
    try:
        with engine.connect() as conn:
            return int(conn.execute(text(
                "SELECT count(*) FROM inbound WHERE status = 'pending'")).scalar_one())
    except SQLAlchemyError:
        return None


# --- acks seen at the sink --------------------------------------------------------------------

@dataclass
class Ack:
    at: float
    message_id: str
    subject: str


class AckWatch:
    """Reads what reaches the sink as it comes: acknowledgements (to an editor, In-Reply-To
    one of our requests) by request Message-ID; calls `on_ack` for each first one."""

    def __init__(self, sink: SmtpSink, requests: dict[str, Request],
                 on_ack: Callable[[Request, Ack], None] | None = None) -> None:
        self.sink, self.requests, self.on_ack = sink, requests, on_ack
        self.acks: dict[str, Ack] = {}
        self.other = 0
        self.seen = 0
        self.stopped = False
        self.changed = threading.Condition()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.parser = BytesHeaderParser(policy=policy.default)

    def start(self) -> AckWatch:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.stopped = True
        with self.sink.handler.cond:
            self.sink.handler.cond.notify_all()
        self.thread.join(5)

    def _run(self) -> None:
        cond = self.sink.handler.cond
        while not self.stopped:
            with cond:
                while len(self.sink.handler.received) <= self.seen and not self.stopped:
                    cond.wait(0.5)
                new = self.sink.handler.received[self.seen:]
                self.seen += len(new)
            for mail in new:
                head = self.parser.parsebytes(mail.raw)
                irt = re.sub(r"\s+", "", str(head["In-Reply-To"] or ""))
                req = self.requests.get(irt)
                if req is None or req.editor.email not in mail.rcpt_tos or irt in self.acks:
                    self.other += 1
                    continue
                ack = Ack(mail.at, re.sub(r"\s+", "", str(head["Message-ID"])),
                          str(head["Subject"]))
                self.acks[irt] = ack
                if self.on_ack is not None:
                    self.on_ack(req, ack)
            with self.changed:
                self.changed.notify_all()


# --- the load ---------------------------------------------------------------------------------

@dataclass
class Sent:
    start: float = 0.0
    at: dict[str, float] = field(default_factory=dict)     # Message-ID → DATA 250
    raws: list[bytes] = field(default_factory=list)        # every accepted mail, for parsing
    replies: dict[str, str] = field(default_factory=dict)  # reply Message-ID → request's
    errors: list[str] = field(default_factory=list)


class MixLoad:
    """`connections` smtplib connections (a thread each). Each takes a ready reply first (its
    ack has arrived), else the next new request (paced at `rate` if given), else waits for a
    reply to become ready."""

    def __init__(self, port: int, maker: MailMaker, requests: list[Request], connections: int,
                 rate: float | None) -> None:
        self.port, self.maker, self.requests = port, maker, requests
        self.connections, self.rate = connections, rate
        self.replies_due = sum(r.wants_reply for r in requests)
        self.ready: queue.Queue[tuple[str, str, bytes]] = queue.Queue()
        self.lock = threading.Lock()
        self.next = 0
        self.replies_taken = 0
        self.sent = Sent()
        self.barrier = threading.Barrier(connections + 1, action=self._start_clock)
        self.rng = random.Random(5)

    def _start_clock(self) -> None:
        self.sent.start = time.monotonic()

    def on_ack(self, req: Request, ack: Ack) -> None:
        if req.wants_reply:
            with self.lock:
                alternative = self.rng.random() < 0.5
            raw = self.maker.reply(req, ack.subject, ack.message_id, alternative)
            mid = f"<mix-{self.maker.tag}-{req.index:06d}-re@client.example>"
            self.ready.put((mid, req.message_id, raw))

    def _take(self) -> tuple[str, str, bytes, Editor] | None:
        deadline = self.sent.start + PHASE_TIMEOUT
        while time.monotonic() < deadline:
            try:
                mid, request_mid, raw = self.ready.get_nowait()
            except queue.Empty:
                pass
            else:
                with self.lock:
                    self.replies_taken += 1
                return mid, request_mid, raw, self.by_mid[request_mid].editor
            with self.lock:
                i = self.next
                if i < len(self.requests):
                    self.next += 1
                elif self.replies_taken >= self.replies_due:
                    return None
            if i < len(self.requests):
                req = self.requests[i]
                if self.rate:
                    time.sleep(max(0.0, self.sent.start + i / self.rate - time.monotonic()))
                return req.message_id, "", req.raw, req.editor
            with contextlib.suppress(queue.Empty):
                item = self.ready.get(timeout=0.2)
                self.ready.put(item)
        self._error(f"phase timeout ({PHASE_TIMEOUT:.0f} s)")
        return None

    def _error(self, what: str) -> None:
        with self.lock:
            self.sent.errors.append(what)

    def _worker(self) -> None:
        try:
            smtp = smtplib.SMTP("127.0.0.1", self.port, timeout=60)
        except OSError as exc:
            self._error(f"connect: {exc}")
            self.barrier.abort()
            return
        try:
            with smtp:
                smtp.ehlo("loadgen.client.example")
                self.barrier.wait(30)
                while (item := self._take()) is not None:
                    mid, request_mid, raw, editor = item
                    try:
                        smtp.sendmail(editor.email, [DESK], raw)
                    except smtplib.SMTPResponseException as exc:
                        self._error(f"{exc.smtp_code} {exc.smtp_error!r}")
                        continue
                    except smtplib.SMTPRecipientsRefused as exc:
                        self._error(f"RCPT refused: {exc.recipients}")
                        continue
                    with self.lock:
                        self.sent.at[mid] = time.monotonic()
                        self.sent.raws.append(raw)
                        if request_mid:
                            self.sent.replies[mid] = request_mid
        except threading.BrokenBarrierError:
            pass
        except (OSError, smtplib.SMTPException) as exc:
            self._error(f"{type(exc).__name__}: {exc}")

    def run(self) -> Sent:
        self.by_mid = {r.message_id: r for r in self.requests}
        threads = [threading.Thread(target=self._worker, daemon=True)
                   for _ in range(self.connections)]
        for thread in threads:
            thread.start()
        with contextlib.suppress(threading.BrokenBarrierError):
            self.barrier.wait(30)
        for thread in threads:
            thread.join(PHASE_TIMEOUT + 60)
        return self.sent


def wait_done(proc: subprocess.Popen[bytes], engine: Engine, watch: AckWatch,
              expected_acks: int, marks: dict[str, float] | None = None
              ) -> tuple[float | None, str]:
    """Until every expected ack arrived and nothing is pending: (monotonic end, why not).
    ``marks["processed"]``: when no inbound row was pending any more (the worker done; the
    rest of the time is the sender's)."""
    progress, last_change = (-1, -1), time.monotonic()
    deadline = time.monotonic() + PHASE_TIMEOUT
    while True:
        left = pending(engine)
        if left == 0 and marks is not None:
            marks.setdefault("processed", time.monotonic())
        acks = len(watch.acks)
        if acks >= expected_acks and left == 0:
            last_ack = max((a.at for a in watch.acks.values()), default=time.monotonic())
            return max(last_ack, time.monotonic() - POLL / 2), ""
        if proc.poll() is not None:
            return None, f"daemon exited with {proc.returncode}"
        now = (acks, left if left is not None else -1)
        if now != progress:
            progress, last_change = now, time.monotonic()
        if time.monotonic() - last_change > STALL or time.monotonic() > deadline:
            return None, f"given up at {acks}/{expected_acks} acks, {left} pending"
        time.sleep(POLL)


def threading_check(engine: Engine, sent: Sent) -> tuple[int, int, dict[str, int]]:
    """(replies on their request's ticket, replies, inbound rows by status)."""
    with engine.connect() as conn:
        tickets = dict(conn.execute(text("SELECT message_id, ticket_id FROM inbound")).all())
        statuses = dict(conn.execute(text(
            "SELECT status, count(*) FROM inbound GROUP BY status")).all())
    right = sum(1 for reply, request in sent.replies.items()
                if tickets.get(reply) is not None and tickets.get(reply) == tickets.get(request))
    return right, len(sent.replies), {str(k): int(v) for k, v in statuses.items()}


# --- the three modes --------------------------------------------------------------------------

def run_mix(args: argparse.Namespace) -> None:
    maker, requests = plan(args.messages)
    by_mid = {r.message_id: r for r in requests}
    log(f"mix: {args.messages} mails ({len(requests)} requests, "
        f"{sum(r.wants_reply for r in requests)} replies after the ack, "
        f"{sum(r.index % 10 == 3 for r in requests)} with a 200 KB PNG), "
        f"{args.connections} connections, rate {args.rate or 'unpaced'}, "
        f"{len(maker.editors)} editors on {len(maker.editors) // EDITORS_PER_SITE} sites, "
        f"{len(AGENTS)} agents")
    with (desk(args.database_url, maker.editors, args.processes, not args.no_pipelining) as setup,
          contextlib.ExitStack() as stack):
        serve = [PYTHON, "-m", "mailgate", "--config", str(setup.config), "serve"]
        proc = stack.enter_context(server_process(serve, setup.log_path, daemon_env()))
        wait_smtp(setup.smtp_port, proc, setup.log_path)
        wait_quiet(proc.pid)  # the language detectors' warm-up after READY
        engine = create_engine(setup.db_url, pool_size=1, max_overflow=0)
        stack.callback(engine.dispose)
        load = MixLoad(setup.smtp_port, maker, requests, args.connections, args.rate)
        watch = AckWatch(setup.sink, by_mid, load.on_ack).start()
        stack.callback(watch.stop)
        cpu0 = cpu_seconds(proc.pid)
        sent = load.run()
        accepted_requests = sum(1 for mid in sent.at if mid in by_mid)
        end, stopped = wait_done(proc, engine, watch, accepted_requests)
        cpu = cpu_seconds(proc.pid) - cpu0
        rss = tree_peak_rss_mib(proc.pid)
        right, replies, statuses = threading_check(engine, sent)
        received = len(setup.sink.handler.received)
        daemon_log = tail(setup.log_path)
    accepted = len(sent.at)
    floor = run_floor(maker, requests, args.connections) if args.floor else None
    parse_rate = email_parse_rate(sent.raws)
    rate = accepted / (end - sent.start) if end else math.nan
    latencies = sorted(a.at - sent.at[mid] for mid, a in watch.acks.items() if mid in sent.at)
    log(f"sent             {accepted}/{args.messages} accepted"
        + (f"; {len(sent.errors)} error(s), first: {sent.errors[0]}" if sent.errors else ""))
    log(f"end to end       {fmt(rate, ' mails/s', 1)} (first send → last ack, none pending: "
        f"{fmt(end - sent.start if end else None)})")
    log(f"python email     {parse_rate:.0f} mails/s (same mails, bodies and attachments); "
        f"ratio {rate / parse_rate:.2f} (goal >= 0.5: "
        f"{'met' if rate / parse_rate >= 0.5 else 'missed'})")
    if floor is not None:
        floor_rate, floor_cpu, floor_acks = floor
        log(f"floor gateway    {fmt(floor_rate, ' mails/s', 1)}, ratio "
            f"{floor_rate / parse_rate:.2f} to the parse rate ({floor_acks} acks; CPU "
            f"{floor_cpu:.1f} ms/mail): parse, 250, one ack relayed, nothing else "
            f"(bench/floor.py); the desk reached {rate / floor_rate:.2f} of it")
    log(f"acks             {len(watch.acks)}/{accepted_requests}; latency p50 "
        f"{fmt(percentile(latencies, 0.5))}, p99 {fmt(percentile(latencies, 0.99))}; "
        f"{received} mails at the sink in all")
    log(f"threading        {right}/{replies} replies on their request's ticket "
        f"({'all right' if right == replies else 'WRONG'}); inbound {statuses}")
    log(f"daemon           peak RSS {fmt(rss, ' MiB', 0)}, CPU "
        f"{fmt(cpu / accepted * 1000 if accepted else None, ' ms/mail', 1)}")
    if stopped:
        log(f"STOPPED: {stopped}\n{daemon_log}")


def run_floor(maker: MailMaker, requests: list[Request], connections: int
              ) -> tuple[float, float, int]:
    """The same mails, over as many connections, to bench/floor.py (parse, 250, one ack,
    nothing else) in its own process: (mails/s from the first send to the last ack, its
    CPU ms per mail, acks)."""
    by_mid = {r.message_id: r for r in requests}
    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="mailgate-floor-")))
        sink = SmtpSink(True).start()
        stack.callback(sink.stop)
        port = free_port()
        proc = stack.enter_context(server_process(
            [PYTHON, "-m", "bench.floor", "--port", str(port), "--relay-port", str(sink.port)],
            tmp / "floor.log"))
        wait_smtp(port, proc, tmp / "floor.log")
        load = MixLoad(port, maker, requests, connections, None)
        watch = AckWatch(sink, by_mid, load.on_ack).start()
        stack.callback(watch.stop)
        cpu0 = cpu_seconds(proc.pid)
        sent = load.run()
        expected = sum(1 for mid in sent.at if mid in by_mid)
        deadline = time.monotonic() + STALL
        while len(watch.acks) < expected and time.monotonic() < deadline:
            time.sleep(POLL)
        cpu = cpu_seconds(proc.pid) - cpu0
        last = max((a.at for a in watch.acks.values()), default=math.nan)
    accepted = len(sent.at)
    return accepted / (last - sent.start), cpu / accepted * 1000, len(watch.acks)


def run_drain(args: argparse.Namespace) -> None:
    maker, requests = plan(round(args.drain / 0.7))
    requests = requests[:args.drain]
    by_mid = {r.message_id: r for r in requests}
    log(f"drain: {len(requests)} stored requests ({sum(r.alternative for r in requests)} "
        f"multipart/alternative, {sum(r.index % 10 == 3 for r in requests)} with a PNG), "
        f"{len(maker.editors)} editors, {len(AGENTS)} agents")
    with (desk(args.database_url, maker.editors, args.processes, not args.no_pipelining) as setup,
          contextlib.ExitStack() as stack):
        serve = [PYTHON, "-m", "mailgate", "--config", str(setup.config), "serve"]
        proc = stack.enter_context(server_process(serve, setup.log_path, daemon_env()))
        wait_smtp(setup.smtp_port, proc, setup.log_path)
        wait_quiet(proc.pid)
        engine = create_engine(setup.db_url, pool_size=1, max_overflow=0)
        stack.callback(engine.dispose)
        watch = AckWatch(setup.sink, by_mid).start()
        stack.callback(watch.stop)
        cpu0 = cpu_seconds(proc.pid)
        start = store_backlog(setup.config, [r.raw for r in requests])
        marks: dict[str, float] = {}
        end, stopped = wait_done(proc, engine, watch, len(requests), marks)
        cpu = cpu_seconds(proc.pid) - cpu0
        rss = tree_peak_rss_mib(proc.pid)
        daemon_log = tail(setup.log_path)
    per_s = len(requests) / (end - start) if end else math.nan
    log(f"drain            {len(watch.acks)}/{len(requests)} acks after "
        f"{fmt(end - start if end else None)}: {fmt(per_s, ' tickets/s', 1)} (goal >= 150: "
        f"{'met' if per_s >= 150 else 'missed'})")
    if "processed" in marks:
        log(f"worker           none pending after {marks['processed'] - start:.2f} s: "
            f"{len(requests) / (marks['processed'] - start):.1f} mails/s (the rest: sending)")
    log(f"daemon           peak RSS {fmt(rss, ' MiB', 0)}, CPU "
        f"{fmt(cpu / len(requests) * 1000, ' ms/mail', 1)}")
    if stopped:
        log(f"STOPPED: {stopped}\n{daemon_log}")


def _work_off(app: object) -> int:
    from mailgate import worker
    from mailgate.outbound import sender

    assert isinstance(app, __import__("mailgate.app", fromlist=["App"]).App)
    processed = 0
    while True:
        result = worker.process_pending(app)
        processed += result.processed
        while sender.flush(app.sessions, app.clock, app.settings.outbound, app.transport).sent:
            pass
        if not result.processed:
            return processed


def run_profile(args: argparse.Namespace) -> None:
    """Two rounds of N stored requests in this process: the first timed (CPU of this thread:
    worker and sender, not the sink's thread), the second under cProfile."""
    from mailgate import config as config_mod
    from mailgate.app import App
    from mailgate.mail import language

    n = args.profile
    maker, requests = plan(round(2 * n / 0.7))
    requests = requests[:2 * n]
    with desk(args.database_url, maker.editors, args.processes, not args.no_pipelining) as setup:
        app = App(config_mod.load(setup.config))
        language.warm_up()
        _ = app.desk
        store_backlog(setup.config, [r.raw for r in requests[:n]])
        cpu0, wall0 = time.thread_time(), time.perf_counter()
        processed = _work_off(app)
        cpu, wall = time.thread_time() - cpu0, time.perf_counter() - wall0
        log(f"timed:    {processed} mails, {wall:.2f} s ({processed / wall:.1f} mails/s), "
            f"CPU of the worker thread {cpu / processed * 1000:.1f} ms/mail")
        store_backlog(setup.config, [r.raw for r in requests[n:]])
        profiler = cProfile.Profile()
        wall0 = time.perf_counter()
        profiler.enable()
        processed = _work_off(app)
        profiler.disable()
        took = time.perf_counter() - wall0
        app.close()
        acks = len(setup.sink.handler.received)
    if args.profile_out:
        profiler.dump_stats(args.profile_out)
    log(f"profiled: {processed} mails, {took:.2f} s under cProfile; {acks} mails to the sink "
        "in both rounds")
    for key in ("tottime", "cumulative"):
        out = io.StringIO()
        stats = pstats.Stats(profiler, stream=out)
        stats.sort_stats(key).print_stats(*([args.filter] if args.filter else []), args.top)
        lines = out.getvalue().splitlines()
        start_at = next((i for i, line in enumerate(lines) if "ncalls" in line), 0)
        log(f"--- top {args.top} by {key} ---")
        for line in lines[start_at:]:
            if line.strip():
                log(line.replace(str(ROOT) + "/", "").replace(sys.prefix + "/", "")
                    .replace(sys.base_prefix + "/", ""))


# --- main -------------------------------------------------------------------------------------

def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bench.mix", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--rate", type=float, default=None,
                        help="new requests per second overall (default: unpaced)")
    parser.add_argument("--drain", type=int, default=0, metavar="N",
                        help="drain mode: N stored requests → tickets/s")
    parser.add_argument("--profile", type=int, default=0, metavar="N",
                        help="profile mode: N stored requests through the worker in-process")
    parser.add_argument("--processes", type=int, default=0,
                        help="[worker] processes of the daemon (default 0: by the database)")
    parser.add_argument("--floor", action="store_true",
                        help="also send the same mails to bench/floor.py (parse, 250, one "
                             "ack) in the same run: what any Python gateway reaches here")
    parser.add_argument("--no-pipelining", action="store_true",
                        help="the relay (the sink) does not offer PIPELINING (default: it "
                             "does, as Postfix and Exim do)")
    parser.add_argument("--profile-out", default=None, metavar="FILE",
                        help="also write the profile's raw stats there (pstats)")
    parser.add_argument("--top", type=int, default=30, help="functions shown per profile list")
    parser.add_argument("--filter", default=None, metavar="REGEX",
                        help="profile lists show only functions whose path matches")
    parser.add_argument("--database-url", default=None,
                        help="postgresql+psycopg://... (a private schema per run)")
    args = parser.parse_args(argv)
    if args.messages < 2 or args.connections < 1 or (args.rate is not None and args.rate <= 0):
        parser.error("--messages >= 2, --connections >= 1, --rate > 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _raise_interrupt)
    signal.signal(signal.SIGHUP, _raise_interrupt)
    db = (make_url(args.database_url).render_as_string(hide_password=True)
          if args.database_url else "sqlite (temp file)")
    log(f"mailgate mix bench: database {db}, {os.cpu_count()} CPU(s), python "
        f"{sys.version.split()[0]}, load {load_average()}")
    try:
        if args.profile:
            run_profile(args)
        elif args.drain:
            run_drain(args)
        else:
            run_mix(args)
    except KeyboardInterrupt:
        log("interrupted: subprocesses stopped, temporary files removed")
        return 130
    log(f"load at the end (1/5/15 min): {load_average()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
