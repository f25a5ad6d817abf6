"""`mailgate serve` as systemd runs it: sd_notify, the watchdog, SIGHUP reloads, and a SIGTERM
that loses no mail.

The protocol tests run the real command in a subprocess with a real NOTIFY_SOCKET (an AF_UNIX
datagram socket bound here) and WATCHDOG_USEC, and send it real signals; the drain and reload
details are also checked on the daemon in a thread, where its state can be looked at.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import signal
import smtplib
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path

import pytest
from aiosmtpd.smtp import Envelope
from sqlalchemy import create_engine, select

from mailgate import config, systemd, worker
from mailgate.app import App, ReloadError
from mailgate.db.migrate import upgrade
from mailgate.db.models import Inbound
from mailgate.db.status import InboundStatus
from mailgate.inbound.smtp import DeskHandler
from mailgate.inbound.store import Stored
from mailgate.outbound import samples
from tests.support.desk import DESK, EDITOR, RunningDaemon, register_demo
from tests.support.sink import free_port
from tests.support.wait import until

REPO = Path(__file__).resolve().parent.parent
UNIT = REPO / "systemd" / "mailgate.service"


def _timeout_stop_sec() -> float:
    match = re.search(r"^TimeoutStopSec=(\d+)$", UNIT.read_text(), re.M)
    assert match, "TimeoutStopSec missing from the unit"
    return float(match.group(1))


def _mail(n: int, tag: str = "blast") -> tuple[str, bytes]:
    mid = f"<{tag}-{n}@site1234.example.be>"
    msg = EmailMessage()
    msg["From"] = f"Eva Editor <{EDITOR}>"
    msg["To"] = DESK
    msg["Subject"] = f"Site 1234: {tag} number {n}"
    msg["Message-ID"] = mid
    msg.set_content(f"Mail {n} of the {tag} test.\n")
    return mid, msg.as_bytes()


# --- sd_notify ---------------------------------------------------------------------------


@dataclass
class Note:
    at: float  # time.monotonic() on arrival
    fields: dict[str, str]


class NotifySocket:
    """What systemd listens on: an AF_UNIX datagram socket, its messages kept in order."""

    def __init__(self) -> None:
        # sun_path is ~108 bytes: a short directory, not pytest's deep tmp_path.
        self.dir = tempfile.mkdtemp(prefix="sdn")
        self.path = os.path.join(self.dir, "notify")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.settimeout(0.2)
        self.notes: list[Note] = []
        self.cond = threading.Condition()
        self._closed = False
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        while not self._closed:
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            note = Note(time.monotonic(), dict(
                line.split("=", 1) for line in data.decode().splitlines() if "=" in line))
            with self.cond:
                self.notes.append(note)
                self.cond.notify_all()

    def wait_for(self, key: str, value: str = "1", after: int = 0,
                 timeout: float = 30) -> tuple[int, Note]:
        """The first message from index `after` on carrying key=value: (index, message)."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                for i, note in enumerate(self.notes[after:], start=after):
                    if note.fields.get(key) == value:
                        return i, note
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"no {key}={value} within {timeout}s: "
                                         f"{[n.fields for n in self.notes]}")
                self.cond.wait(left)

    def count(self, key: str, start: float, end: float) -> int:
        with self.cond:
            return sum(1 for n in self.notes if n.fields.get(key) == "1" and start <= n.at <= end)

    def close(self) -> None:
        self._closed = True
        self.thread.join(2)
        self.sock.close()
        os.unlink(self.path)
        os.rmdir(self.dir)


@pytest.fixture
def notify_socket() -> Iterator[NotifySocket]:
    ns = NotifySocket()
    yield ns
    ns.close()


# --- the daemon as a subprocess ------------------------------------------------------------


def _toml(url: str, state: Path, port: int, extra: str = "") -> str:
    return f"""
state_dir = "{state}"
{extra}
[desk]
name = "Test Desk"
address = "{DESK}"
complaints_address = "complaints@desk.example"
secret = "test-secret-0123456789"
[database]
url = "{url}"
busy_timeout_ms = 5000
[smtp]
host = "127.0.0.1"
port = {port}
[outbound]
maildir = "{state / 'maildir'}"
[worker]
poll_seconds = 0.5
"""


class Serve:
    """`python -m mailgate --config X serve`, started as systemd would start it."""

    def __init__(self, tmp_path: Path, url: str) -> None:
        self.url = url
        self.port = free_port()
        self.config = tmp_path / "mailgate.toml"
        self.state = tmp_path / "var"
        self.write_config()
        self.log = tmp_path / "serve.log"
        app = App(config.load(self.config))
        upgrade(app.engine)
        register_demo(app)
        app.close()
        self.proc: subprocess.Popen[bytes] | None = None

    def write_config(self, extra: str = "") -> None:
        self.config.write_text(_toml(self.url, self.state, self.port, extra))

    def start(self, notify: NotifySocket, watchdog_usec: int | None = None) -> Serve:
        env = {k: v for k, v in os.environ.items()
               if k not in ("MAILGATE_CONFIG", "WATCHDOG_USEC", "WATCHDOG_PID")}
        env["NOTIFY_SOCKET"] = notify.path
        if watchdog_usec:
            env["WATCHDOG_USEC"] = str(watchdog_usec)  # no WATCHDOG_PID: meant for us
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "mailgate", "--config", str(self.config), "serve"],
                env=env, stdout=out, stderr=out, stdin=subprocess.DEVNULL, cwd=self.state.parent)
        return self

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def wait(self, timeout: float) -> int:
        assert self.proc is not None
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"serve still running after {timeout}s:\n{self.text()}") \
                from None

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


@pytest.fixture
def serve_sqlite(tmp_path: Path) -> Iterator[Serve]:
    s = Serve(tmp_path, f"sqlite:///{tmp_path / 'mailgate.db'}")
    yield s
    s.kill()


@pytest.fixture
def serve(tmp_path: Path, database_url: str) -> Iterator[Serve]:
    s = Serve(tmp_path, database_url)
    yield s
    s.kill()


def _send(smtp: smtplib.SMTP, raw: bytes) -> int:
    code, _ = smtp.mail(EDITOR)
    if code == 250:
        code, _ = smtp.rcpt(DESK)
    if code == 250:
        code, _ = smtp.data(raw)
    return code


@pytest.mark.timeout(60)
def test_serve_speaks_sd_notify(serve_sqlite: Serve, notify_socket: NotifySocket) -> None:
    serve = serve_sqlite
    started = time.monotonic()
    serve.start(notify_socket, watchdog_usec=2_000_000)

    # READY=1 only once the listener accepts: a connection right after it is greeted.
    _, ready = notify_socket.wait_for("READY")
    with smtplib.SMTP("127.0.0.1", serve.port, timeout=5) as first:
        assert first.noop()[0] == 250
    assert ready.fields.get("STATUS") == "accepting mail"
    startup = ready.at - started
    held = smtplib.SMTP("127.0.0.1", serve.port, timeout=10)  # kept across the reloads
    held.ehlo()

    # WatchdogSec=2 s: pinged every second.
    time.sleep(max(0.0, ready.at + 3.0 - time.monotonic()))
    pings = notify_socket.count("WATCHDOG", ready.at, ready.at + 3.0)
    assert 2 <= pings <= 4, pings

    # SIGHUP: RELOADING=1 with the CLOCK_MONOTONIC time in µs, then READY=1; the session
    # open before it is still served after it.
    serve.write_config(extra='log_level = "DEBUG"\n[access]\nacks_per_hour = 7')
    before = systemd.monotonic_usec()
    mark = len(notify_socket.notes)
    serve.signal(signal.SIGHUP)
    i_reloading, reloading = notify_socket.wait_for("RELOADING", after=mark)
    after = systemd.monotonic_usec()
    assert before <= int(reloading.fields["MONOTONIC_USEC"]) <= after
    notify_socket.wait_for("READY", after=i_reloading + 1, timeout=15)
    assert _send(held, _mail(1, "reload")[1]) == 250
    until(lambda: "configuration reloaded" in serve.text(), what="the reload log line")
    assert "applied only at a restart" not in serve.text()  # only reloadable parts changed

    # A broken config: logged, the running one kept, connections too.
    serve.config.write_text("this is [not toml\n")
    mark = len(notify_socket.notes)
    serve.signal(signal.SIGHUP)
    i_reloading, _ = notify_socket.wait_for("RELOADING", after=mark)
    notify_socket.wait_for("READY", after=i_reloading + 1, timeout=15)
    until(lambda: "reload failed, the running configuration stays" in serve.text(),
          what="the failed reload in the log")
    assert _send(held, _mail(2, "reload")[1]) == 250

    # SIGTERM: STOPPING=1; the idle session hears 421 to its next MAIL; exit 0.
    mark = len(notify_socket.notes)
    serve.signal(signal.SIGTERM)
    notify_socket.wait_for("STOPPING", after=mark, timeout=10)
    code, reply = held.mail(EDITOR)
    assert (code, reply[:5]) == (421, b"4.3.2"), reply
    held.close()
    assert serve.wait(_timeout_stop_sec()) == 0, serve.text()
    print(f"startup to READY=1: {startup:.1f}s")


# --- SIGTERM during a blast ------------------------------------------------------------------


@dataclass
class Blast:
    """Threads sending mails over reused SMTP connections, each outcome written down."""

    port: int
    mails: list[tuple[str, bytes]]
    accepted: list[str] = field(default_factory=list)
    refused: list[tuple[str, str]] = field(default_factory=list)  # 4xx, or no connection
    wrong: list[tuple[str, str]] = field(default_factory=list)  # anything else
    lock: threading.Lock = field(default_factory=threading.Lock)

    def run(self, threads: int) -> list[threading.Thread]:
        chunks = [self.mails[i::threads] for i in range(threads)]
        started = [threading.Thread(target=self._send_all, args=(c,), daemon=True)
                   for c in chunks]
        for t in started:
            t.start()
        return started

    def _send_all(self, chunk: list[tuple[str, bytes]]) -> None:
        smtp: smtplib.SMTP | None = None
        for mid, raw in chunk:
            phase = "connect"
            try:
                if smtp is None:
                    smtp = smtplib.SMTP("127.0.0.1", self.port, timeout=20)
                    phase = "ehlo"
                    code, _ = smtp.ehlo()
                    if code != 250:
                        raise smtplib.SMTPResponseException(code, b"EHLO")
                phase = "transaction"
                code = _send(smtp, raw)
            except smtplib.SMTPConnectError as exc:  # the 421 greeting
                self._note(mid, exc.smtp_code, "greeting")
                smtp = None
                continue
            except smtplib.SMTPResponseException as exc:  # DATA refused (not 354)
                self._note(mid, exc.smtp_code, phase)
                smtp = None
                continue
            except (OSError, smtplib.SMTPServerDisconnected) as exc:
                with self.lock:
                    (self.refused if phase == "connect" else self.wrong).append(
                        (mid, f"{phase}: {exc!r}"))
                smtp = None
                continue
            self._note(mid, code, phase)
            if code != 250:
                smtp.close()
                smtp = None
        if smtp is not None:
            try:
                smtp.quit()
            except (OSError, smtplib.SMTPException):
                smtp.close()

    def _note(self, mid: str, code: int, phase: str) -> None:
        with self.lock:
            if code == 250:
                self.accepted.append(mid)
            elif 400 <= code < 500:
                self.refused.append((mid, f"{phase}: {code}"))
            else:
                self.wrong.append((mid, f"{phase}: {code}"))


@pytest.mark.timeout(90)
def test_sigterm_during_a_blast_loses_nothing(serve: Serve,
                                              notify_socket: NotifySocket) -> None:
    t0 = time.monotonic()
    serve.start(notify_socket)
    notify_socket.wait_for("READY")
    t_ready = time.monotonic()
    blast = Blast(serve.port, [_mail(n) for n in range(400)])
    threads = blast.run(8)
    until(lambda: len(blast.accepted) >= 100, timeout=30, interval=0.005,
          what="100 mails accepted")
    stop_at = time.monotonic()
    serve.signal(signal.SIGTERM)
    code = serve.wait(_timeout_stop_sec())
    stop_took = time.monotonic() - stop_at
    for t in threads:
        t.join(30)
    assert code == 0, serve.text()
    notify_socket.wait_for("STOPPING", timeout=1)

    assert not blast.wrong, blast.wrong[:10]
    assert len(blast.accepted) + len(blast.refused) == 400
    assert 100 <= len(blast.accepted) < 400
    refusals = [how for _mid, how in blast.refused]
    assert any(how.endswith(": 421") for how in refusals), refusals[:10]

    # Every 250 is a row, every refusal is none: nothing lost, nothing half taken.
    engine = create_engine(serve.url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(select(Inbound.message_id, Inbound.status)).all()
    finally:
        engine.dispose()
    stored = [mid for mid, _status in rows]
    assert len(stored) == len(set(stored))
    assert set(stored) == set(blast.accepted)
    statuses = {status for _mid, status in rows}
    assert statuses <= {InboundStatus.PENDING, InboundStatus.TICKET}, statuses
    pending = sum(status == InboundStatus.PENDING for _mid, status in rows)
    greeted = [how for how in refusals if how.startswith("greeting")]
    t1 = time.monotonic()

    # What was left pending becomes a ticket after the restart: the worker's pass, run here.
    app = App(config.load(serve.config))
    try:
        while worker.process_pending(app).processed:
            pass
        with app.sessions() as session:
            statuses = set(session.execute(select(Inbound.status)).scalars())
    finally:
        app.close()
    assert statuses == {InboundStatus.TICKET}
    print(f"accepted {len(blast.accepted)}, refused {len(blast.refused)} "
          f"({len(refusals) - len(greeted)} at MAIL or connect, {len(greeted)} by a 421 "
          f"greeting); {pending} left pending, processed after in {time.monotonic() - t1:.1f}s; "
          f"start {t_ready - t0:.1f}s, blast {stop_at - t_ready:.1f}s, stop {stop_took:.1f}s")


# --- the drain, in a thread ----------------------------------------------------------------


@pytest.fixture
def running(app: App) -> Iterator[Callable[..., RunningDaemon]]:
    """Starts the daemon in a thread; stops it after the test if the test did not."""
    started: list[RunningDaemon] = []

    def start(config_path: str | None = None) -> RunningDaemon:
        d = RunningDaemon(app)
        if config_path is not None:
            d.daemon.config_path = config_path
        started.append(d.start())
        return d

    yield start
    for d in started:
        if d.thread.is_alive():
            d.stop()


def test_stop_finishes_the_transaction_under_way_and_refuses_the_rest(
        app: App, running: Callable[..., RunningDaemon]) -> None:
    d = running()
    port = d.daemon.smtp_port
    assert port
    mid, raw = _mail(1, "drain")
    under_way = smtplib.SMTP("127.0.0.1", port, timeout=10)
    under_way.ehlo()
    assert under_way.mail(EDITOR)[0] == 250 and under_way.rcpt(DESK)[0] == 250
    idle = smtplib.SMTP("127.0.0.1", port, timeout=10)
    idle.ehlo()

    d.daemon.stop()
    listener = d.daemon.listener
    assert listener is not None
    until(lambda: listener.draining, what="the listener draining")

    with pytest.raises(smtplib.SMTPConnectError) as refused:  # a newcomer: 421 greeting
        smtplib.SMTP("127.0.0.1", port, timeout=10)
    assert refused.value.smtp_code == 421 and b"4.3.2" in refused.value.smtp_error
    assert idle.mail(EDITOR)[0] == 421  # an open session: no new transaction
    idle.close()
    assert under_way.data(raw)[0] == 250  # the transaction under way finishes
    assert under_way.mail(EDITOR)[0] == 421
    under_way.close()

    d.thread.join(15)
    assert not d.thread.is_alive() and d.error is None
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
    with app.sessions() as session:
        assert session.execute(select(Inbound.message_id)).scalars().all() == [mid]


def test_stop_cuts_an_idle_session_after_the_drain_time(
        running: Callable[..., RunningDaemon]) -> None:
    d = running()
    d.daemon.drain_seconds = 0.5
    idle = smtplib.SMTP("127.0.0.1", d.daemon.smtp_port or 0, timeout=10)
    idle.ehlo()
    started = time.monotonic()
    d.stop()
    assert time.monotonic() - started < 10
    code, reply = idle.getreply()  # RFC 5321 §3.8: the forced end says 421 unasked
    assert (code, reply[:5]) == (421, b"4.3.2")
    idle.close()


def test_a_client_gone_during_the_commit_does_not_stop_the_intake() -> None:
    """Cancelling handle_DATA (the client vanished) must leave the writer's future alone:
    setting the result of a cancelled future raises in the intake thread and ends it."""
    future: Future[Stored] = Future()
    handler = DeskHandler(frozenset({DESK}), lambda raw, sender, rcpts: future, 10)
    envelope = Envelope()
    envelope.mail_from, envelope.rcpt_tos = EDITOR, [DESK]
    envelope.original_content = _mail(1, "gone")[1]

    async def vanish() -> None:
        task = asyncio.ensure_future(handler.handle_DATA(None, None, envelope))  # type: ignore[arg-type]
        await asyncio.sleep(0.01)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    asyncio.run(vanish())
    assert not future.cancelled()
    future.set_result(Stored(1, False))  # what the intake thread does next: no error


# --- reload, in a thread -------------------------------------------------------------------


@pytest.fixture
def log_levels() -> Iterator[None]:
    """Reload sets the root log level: put it back for the tests that follow."""
    names = ("", "alembic", "apscheduler", "mail.log")
    saved = {n: logging.getLogger(n).level for n in names}
    yield
    for n, level in saved.items():
        logging.getLogger(n).setLevel(level)


def _override(tmp_path: Path, marker: str) -> Path:
    """A templates_dir whose English acknowledgement ends with `marker`."""
    templates = tmp_path / f"templates-{abs(hash(marker))}"
    (templates / "en").mkdir(parents=True)
    packaged = REPO / "mailgate" / "templates" / "en" / "ack.txt.j2"
    (templates / "en" / "ack.txt.j2").write_text(packaged.read_text() + f"\n{marker}\n")
    return templates


def _ack(app: App) -> str:
    _label, context = samples.SAMPLES["ack"][0]
    return app.desk.renderer.render("ack", "en", **context)[1]


def test_sighup_applies_templates_rules_and_log_level_and_keeps_the_rest(
        app: App, running: Callable[..., RunningDaemon], tmp_path: Path,
        caplog: pytest.LogCaptureFixture, log_levels: None) -> None:
    caplog.set_level(logging.INFO, logger="mailgate")
    templates = _override(tmp_path, "RELOADED-MARKER")
    path = tmp_path / "reload.toml"
    path.write_text(f"""
templates_dir = "{templates}"
log_level = "WARNING"
[database]
url = "sqlite:///{tmp_path / 'elsewhere.db'}"
[access]
acks_per_hour = 7
[sla]
first_response_hours = 3
[lifecycle]
sweep_seconds = 120
""")
    before = app.settings
    d = running(str(path))
    old_desk = app.desk
    d.daemon.reload()
    # The last line a reload logs; by then all is applied.
    restart_only = until(lambda: re.search(r"applied only at a restart: (.*)", caplog.text),
                         what="the restart-only warning")
    s = app.settings
    assert s.access.acks_per_hour == 7
    assert (s.sla.first_response_hours, s.lifecycle.sweep_seconds) == (3, 120)
    assert s.templates_dir == str(templates) and s.log_level == "WARNING"
    assert logging.getLogger().level == logging.WARNING
    # Not reloadable: the database stays; the log says it waits for a restart.
    assert s.database == before.database and s.desk == before.desk
    assert "database" in restart_only.group(1).split(", ")
    assert app.desk is not old_desk and app.desk.settings is s
    assert app.desk.ids is old_desk.ids
    assert "RELOADED-MARKER" in _ack(app)

    # A broken file: logged, everything stays as it was.
    caplog.clear()
    path.write_text("[access]\nacks_per_hour = -1\n")
    d.daemon.reload()
    until(lambda: "reload failed" in caplog.text, what="the failed reload")
    assert "access.acks_per_hour" in caplog.text
    assert app.settings is s and "RELOADED-MARKER" in _ack(app)


def test_reload_keeps_the_running_desk_when_a_template_is_broken(
        app: App, tmp_path: Path) -> None:
    desk, settings = app.desk, app.settings
    broken = tmp_path / "broken"
    (broken / "en").mkdir(parents=True)
    (broken / "en" / "ack.txt.j2").write_text("{% if %}\n")
    new = config.from_dict({"templates_dir": str(broken), "access": {"acks_per_hour": 9}})
    with pytest.raises(ReloadError, match="ack"):
        app.reload(new)
    assert app.desk is desk and app.settings is settings

    good = config.from_dict({"templates_dir": str(_override(tmp_path, "GOOD")),
                             "access": {"acks_per_hour": 9}})
    restart_only = app.reload(good)
    assert app.settings.access.acks_per_hour == 9 and "GOOD" in _ack(app)
    # from_dict's defaults differ from the test desk's in these: they wait for a restart.
    assert {"desk", "database", "smtp", "outbound"} <= set(restart_only)
    assert app.settings.desk == settings.desk
