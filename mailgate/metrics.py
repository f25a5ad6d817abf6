"""Metrics and health: ``/metrics`` (Prometheus) and ``/healthz`` on ``[metrics] listen``.

Most figures are read from the database at scrape time (one ``GROUP BY`` per table), not
counted in the process: every instance on the same database shows the same numbers, and a
restart loses none. They are gauges — rows in a table, which retention may lower — except
what only this process can know: its SMTP sessions and its IMAP connections.

The acknowledgement latency (stored → handed to the relay) is a gauge histogram over the
last :data:`ACK_WINDOW` acknowledgements sent, from the outbox and inbound rows: no hook in
the sender, and the same figure on every instance. ``histogram_quantile(0.9,
mailgate_ack_latency_seconds_bucket)`` reads its 90th percentile.

``/healthz`` answers 200 or 503 with a JSON body naming each check: the database answers,
the SMTP listener greets (a real connection to its port, not counted as a session), the
oldest pending outbox row is younger than ``outbox_alarm_seconds``, and no IMAP account has
failed for longer than ``imap_alarm_seconds``.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import datetime
from socketserver import ThreadingMixIn
from typing import Any, Protocol
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    Counter,
    Gauge,
    make_wsgi_app,
)
from prometheus_client.core import GaugeHistogramMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry
from sqlalchemy import func, select, text
from sqlalchemy.orm import Session, sessionmaker

from mailgate.app import App
from mailgate.config import ImapAccount, Settings
from mailgate.db.engine import reading
from mailgate.db.models import Event, Inbound, Outbox, Ticket
from mailgate.db.status import InboundStatus, OutboxStatus
from mailgate.tickets.commands import PRIORITIES
from mailgate.tickets.states import State

log = logging.getLogger(__name__)

# The acknowledgement latency is taken over this many of the latest acknowledgements sent.
ACK_WINDOW = 1000
ACK_KINDS = ("ack", "complaint_ack")
ACK_BUCKETS = (1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 900.0, 3600.0)
SLA_EVENTS = {"ticket.sla_warned": "warning", "ticket.sla_breached": "breach"}
# How long the listener check waits for the SMTP greeting.
PROBE_SECONDS = 3.0


# -- what the exporter reads from the daemon (structurally: no import of the daemon) --------

class PollerView(Protocol):
    @property
    def account(self) -> ImapAccount: ...
    @property
    def connected(self) -> bool: ...
    @property
    def last_ok_at(self) -> float | None: ...
    @property
    def failing_since(self) -> float | None: ...


class PollersView(Protocol):
    @property
    def pollers(self) -> Sequence[PollerView]: ...


class DaemonView(Protocol):
    @property
    def app(self) -> App: ...
    @property
    def smtp_port(self) -> int | None: ...
    @property
    def imap(self) -> PollersView | None: ...


# -- SMTP sessions ---------------------------------------------------------------------------

class SmtpSessions:
    """Counts the SMTP listener's connections; the health probe's own are left out."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.total = Counter("mailgate_smtp_sessions", "SMTP sessions opened since start",
                             registry=registry)
        self.active = Gauge("mailgate_smtp_sessions_active", "SMTP sessions open now",
                            registry=registry)
        self._probes: set[tuple[str, int]] = set()
        self._lock = threading.Lock()

    def wrap(self, factory: Callable[[], Any]) -> Callable[[], Any]:
        """An SMTP protocol factory whose connections are counted."""
        def make() -> Any:
            protocol = factory()
            made, lost = protocol.connection_made, protocol.connection_lost
            counted = False

            def connection_made(transport: Any) -> None:
                nonlocal counted
                peer = transport.get_extra_info("peername")
                counted = not self._is_probe(peer)
                if counted:
                    self.total.inc()
                    self.active.inc()
                made(transport)

            def connection_lost(exc: BaseException | None) -> None:
                if counted:
                    self.active.dec()
                lost(exc)

            protocol.connection_made = connection_made
            protocol.connection_lost = connection_lost
            return protocol
        return make

    def _is_probe(self, peer: Any) -> bool:
        if not isinstance(peer, tuple) or len(peer) < 2:
            return False
        with self._lock:
            return (str(peer[0]), int(peer[1])) in self._probes

    def probe(self, host: str, port: int) -> str:
        """Connects to the listener as a client and reads its greeting; '' when it greets
        with 220, else what went wrong."""
        family, _, _, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.settimeout(PROBE_SECONDS)
            # Bound before connecting, so the listener knows this peer before it counts it.
            sock.bind((address[0], 0))
            me = sock.getsockname()
            key = (str(me[0]), int(me[1]))
            with self._lock:
                self._probes.add(key)
            try:
                sock.connect(address)
                reader = sock.makefile("rb")
                greeting = reader.readline(512)
                if not greeting.startswith(b"220"):
                    return f"greeted with {greeting[:80]!r} instead of 220"
                sock.sendall(b"QUIT\r\n")
                reader.readline(512)  # 221: the server closes first, cleanly
                return ""
            except OSError as exc:
                return f"{type(exc).__name__}: {exc}"
            finally:
                with self._lock:
                    self._probes.discard(key)


# -- figures from the database ---------------------------------------------------------------

def _age(now: datetime, then: datetime | None) -> float:
    return max(0.0, (now - then).total_seconds()) if then else 0.0


def oldest_pending(session: Session) -> tuple[int, datetime | None]:
    """Pending outbox rows and the creation time of the oldest of them."""
    count, oldest = session.execute(
        select(func.count(), func.min(Outbox.created_at))
        .where(Outbox.status == OutboxStatus.PENDING)).one()
    # min() keeps the column's type (UTCDateTime): aware UTC on both engines.
    return int(count), oldest


def _desk_metrics(session: Session, now: datetime) -> Iterator[Metric]:
    inbound = GaugeMetricFamily(
        "mailgate_inbound_mails", "Stored mails by channel, kind and status (rows in inbound)",
        labels=["channel", "kind", "status"])
    quarantined = 0
    for channel, kind, status, n in session.execute(
            select(Inbound.channel, Inbound.kind, Inbound.status, func.count())
            .group_by(Inbound.channel, Inbound.kind, Inbound.status)):
        inbound.add_metric([channel, kind, status], n)
        quarantined += n if status == InboundStatus.QUARANTINED else 0
    yield inbound
    yield GaugeMetricFamily("mailgate_quarantine_mails",
                            "Mails in quarantine, waiting for `quarantine replay`",
                            value=quarantined)

    tickets = GaugeMetricFamily("mailgate_tickets", "Tickets by state and priority",
                                labels=["state", "priority"])
    counts = {(str(s), p): 0 for s in State for p in PRIORITIES}
    for state, priority, n in session.execute(
            select(Ticket.state, Ticket.priority, func.count())
            .group_by(Ticket.state, Ticket.priority)):
        counts[(state, priority)] = n
    for (state, priority), n in sorted(counts.items()):
        tickets.add_metric([state, priority], n)
    yield tickets
    overdue = session.execute(
        select(func.count()).select_from(Ticket)
        .where(Ticket.first_response_at.is_(None), Ticket.first_response_due < now,
               Ticket.state.not_in((State.RESOLVED, State.CLOSED)))).scalar_one()
    yield GaugeMetricFamily("mailgate_tickets_first_response_overdue",
                            "Unanswered tickets past their first-response due time",
                            value=overdue)

    sla = GaugeMetricFamily("mailgate_sla_alerts",
                            "First-response SLA warnings and breaches alerted (event rows)",
                            labels=["kind"])
    alerts = dict.fromkeys(SLA_EVENTS.values(), 0)
    for kind, n in session.execute(
            select(Event.kind, func.count()).where(Event.kind.in_(SLA_EVENTS))
            .group_by(Event.kind)):
        alerts[SLA_EVENTS[kind]] = n
    for kind, n in alerts.items():
        sla.add_metric([kind], n)
    yield sla

    outbox = GaugeMetricFamily("mailgate_outbox_mails", "Outbox rows by status",
                               labels=["status"])
    by_status = {str(s): 0 for s in OutboxStatus}
    for status, n in session.execute(
            select(Outbox.status, func.count()).group_by(Outbox.status)):
        by_status[status] = n
    for status, n in by_status.items():
        outbox.add_metric([status], n)
    yield outbox
    _, oldest = oldest_pending(session)
    yield GaugeMetricFamily("mailgate_outbox_oldest_pending_age_seconds",
                            "Age of the oldest pending outbox row (0: none pending)",
                            value=_age(now, oldest))

    rows = session.execute(
        select(Outbox.sent_at, Inbound.received_at)
        .join(Inbound, Outbox.inbound_id == Inbound.id)
        .where(Outbox.kind.in_(ACK_KINDS), Outbox.status == OutboxStatus.SENT,
               Outbox.sent_at.is_not(None))
        .order_by(Outbox.id.desc()).limit(ACK_WINDOW)).all()
    latencies = [_age(sent, received) for sent, received in rows if sent is not None]
    buckets = [(str(b), float(sum(1 for x in latencies if x <= b))) for b in ACK_BUCKETS]
    buckets.append(("+Inf", float(len(latencies))))
    yield GaugeHistogramMetricFamily(
        "mailgate_ack_latency_seconds",
        f"From stored to handed to the relay, over the last {ACK_WINDOW} acknowledgements sent",
        buckets=buckets, gsum_value=sum(latencies))


class DeskCollector(Collector):
    """The desk's figures, read at each scrape; the IMAP accounts from the pollers."""

    def __init__(self, daemon: DaemonView) -> None:
        self.daemon = daemon

    def describe(self) -> Iterable[Metric]:
        return ()  # no query when the collector is registered

    def collect(self) -> Iterable[Metric]:
        app = self.daemon.app
        up = 1
        metrics: list[Metric] = []
        try:
            with reading(app.sessions) as session:
                metrics = list(_desk_metrics(session, app.clock.now()))
        except Exception as exc:
            up = 0
            log.warning("metrics: cannot read the database: %s", exc)
        yield GaugeMetricFamily("mailgate_database_up",
                                "1 when the last scrape could read the database", value=up)
        yield from metrics
        yield from self._imap()

    def _imap(self) -> Iterator[Metric]:
        connected = GaugeMetricFamily("mailgate_imap_connected",
                                      "1 while the account is logged in, folder selected",
                                      labels=["account"])
        last_ok = GaugeMetricFamily("mailgate_imap_last_poll_success_timestamp_seconds",
                                    "When the account's folder was last searched (0: never)",
                                    labels=["account"])
        failing = GaugeMetricFamily("mailgate_imap_failing_seconds",
                                    "How long the account has failed without a good poll",
                                    labels=["account"])
        now = time.time()
        for p in self.daemon.imap.pollers if self.daemon.imap else ():
            name = p.account.name
            connected.add_metric([name], 1 if p.connected else 0)
            last_ok.add_metric([name], p.last_ok_at or 0)
            failing.add_metric([name], now - p.failing_since if p.failing_since else 0)
        yield from (connected, last_ok, failing)


# -- health ----------------------------------------------------------------------------------

def _check(ok: bool, detail: str, **extra: Any) -> dict[str, Any]:
    return {"ok": ok, "detail": detail, **extra}


def _database(sessions: sessionmaker[Session]) -> dict[str, Any]:
    try:
        with reading(sessions) as session:
            session.execute(text("SELECT 1"))
        return _check(True, "reachable")
    except Exception as exc:
        return _check(False, f"unreachable: {str(exc).splitlines()[0]}")


def _outbox(sessions: sessionmaker[Session], now: datetime, alarm: float) -> dict[str, Any]:
    try:
        with reading(sessions) as session:
            pending, oldest = oldest_pending(session)
    except Exception as exc:
        return _check(False, f"cannot read the outbox: {str(exc).splitlines()[0]}")
    age = _age(now, oldest)
    if age > alarm:
        return _check(False, f"{pending} pending, the oldest waiting {age:.0f}s "
                             f"(alarm at {alarm:g}s): is the relay down?",
                      pending=pending, oldest_pending_seconds=round(age, 3))
    return _check(True, f"{pending} pending", pending=pending,
                  oldest_pending_seconds=round(age, 3))


def _listener(settings: Settings, port: int | None, sessions: SmtpSessions) -> dict[str, Any]:
    smtp = settings.smtp
    if not smtp.enabled:
        return _check(True, "SMTP listener disabled")
    if port is None:
        return _check(False, "SMTP listener not started")
    host = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}.get(smtp.host, smtp.host)
    try:
        problem = sessions.probe(host, port)
    except OSError as exc:
        problem = f"{type(exc).__name__}: {exc}"
    if problem:
        return _check(False, f"SMTP on {host}:{port}: {problem}")
    return _check(True, f"SMTP answers on {host}:{port}")


def _imap(pollers: PollersView | None, alarm: float) -> dict[str, Any]:
    accounts = list(pollers.pollers) if pollers else []
    now = time.time()
    failing = sorted(p.account.name for p in accounts
                     if p.failing_since is not None and now - p.failing_since > alarm)
    if failing:
        return _check(False, f"failing for over {alarm:g}s: {', '.join(failing)}",
                      failing=failing)
    return _check(True, f"{len(accounts)} account(s), none failing for over {alarm:g}s")


def health(daemon: DaemonView, sessions: SmtpSessions) -> dict[str, Any]:
    """The /healthz body: ``status`` "ok" or "fail", ``reason`` (the failed checks'
    details, "" when ok) and ``checks`` by name."""
    app = daemon.app
    m = app.settings.metrics
    checks = {
        "database": _database(app.sessions),
        "listener": _listener(app.settings, daemon.smtp_port, sessions),
        "outbox": _outbox(app.sessions, app.clock.now(), m.outbox_alarm_seconds),
        "imap": _imap(daemon.imap, m.imap_alarm_seconds),
    }
    failed = [f"{name}: {c['detail']}" for name, c in checks.items() if not c["ok"]]
    return {"status": "fail" if failed else "ok", "reason": "; ".join(failed),
            "checks": checks}


# -- the HTTP server -------------------------------------------------------------------------

class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _Server6(_Server):
    address_family = socket.AF_INET6


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


WsgiStart = Callable[[str, list[tuple[str, str]]], Any]


class Exporter:
    """/metrics and /healthz for one daemon; its SMTP sessions are counted even when no
    address is configured (the listener wraps its factory either way)."""

    def __init__(self, daemon: DaemonView) -> None:
        self.daemon = daemon
        self.registry = CollectorRegistry(auto_describe=False)
        self.smtp_sessions = SmtpSessions(self.registry)
        self.registry.register(DeskCollector(daemon))
        for collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
            self.registry.register(collector)
        self._metrics_app = make_wsgi_app(self.registry)
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    def wsgi(self, environ: dict[str, Any], start_response: WsgiStart) -> list[bytes]:
        if environ.get("PATH_INFO") == "/healthz":
            body = health(self.daemon, self.smtp_sessions)
            status = "200 OK" if body["status"] == "ok" else "503 Service Unavailable"
            start_response(status, [("Content-Type", "application/json"),
                                    ("Cache-Control", "no-store")])
            return [json.dumps(body, indent=2).encode() + b"\n"]
        if environ.get("PATH_INFO") in ("/metrics", "/"):
            return list(self._metrics_app(environ, start_response))
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"only /metrics and /healthz here\n"]

    @property
    def port(self) -> int | None:
        return self._server.server_address[1] if self._server else None

    def start(self) -> None:
        """Serves on [metrics] listen in a thread; nothing when it is ""."""
        m = self.daemon.app.settings.metrics
        if not m.listen:
            return
        host, port = m.address
        server_class = _Server6 if ":" in host else _Server
        try:
            self._server = make_server(host, port, self.wsgi, server_class=server_class,
                                       handler_class=_Quiet)
        except OSError as exc:
            raise OSError(exc.errno, f"metrics.listen = {m.listen!r}: "
                                     f"{exc.strerror or exc}") from exc
        self._thread = threading.Thread(target=self._server.serve_forever, name="metrics",
                                        daemon=True)
        self._thread.start()
        log.info("metrics on http://%s:%s/metrics and /healthz", m.listen.rpartition(":")[0],
                 self.port)

    def stop(self) -> None:
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(5)
        self._server = None
