"""The IMAP way in, end to end: a real Dovecot holds the mailbox, the real daemon (in a
thread, or as a subprocess where a test kills it) fetches from it, acknowledgements reach a
real SMTP sink; storage on SQLite and on PostgreSQL."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, select, text, update

from mailgate.app import App
from mailgate.config import ImapAccount
from mailgate.daemon import imap_callables
from mailgate.db.models import Inbound, Outbox, Ticket
from mailgate.inbound.imap import (
    Backoff,
    ImapPoller,
    Tuning,
    describe,
    destination,
    ends_session,
    has_new_mail,
)
from mailgate.inbound.store import store_raw
from mailgate.outbound.sender import LEASE
from mailgate.worker import process_one
from tests.support.desk import EDITOR, RunningDaemon, SettingsFactory
from tests.support.dovecot import DEFAULT_PASSWORD as PASSWORD
from tests.support.dovecot import DEFAULT_USER as USER
from tests.support.dovecot import DovecotServer
from tests.support.mails import make_mail, send, wire
from tests.support.proxy import TcpProxy
from tests.support.sink import SmtpSink
from tests.support.wait import until

pytestmark = pytest.mark.timeout(120)

REPO = Path(__file__).resolve().parents[2]
AppFactory = Callable[..., App]


# -- helpers ---------------------------------------------------------------------------------

def account(server: DovecotServer, **over: Any) -> dict[str, Any]:
    """An [[imap]] table for the test server; poll_interval is long so that a quick pickup
    can only come from IDLE."""
    return {"name": "desk", "host": server.host, "port": server.port, "ssl": False,
            "username": USER, "password": PASSWORD, "poll_interval": 60,
            "timeout_seconds": 5, **over}


def requests(n: int, prefix: str = "Melding") -> list[EmailMessage]:
    return [make_mail(EDITOR, f"{prefix} {i}") for i in range(n)]


def append(server: DovecotServer, mails: list[EmailMessage], folder: str = "INBOX",
           user: str = USER, password: str = PASSWORD) -> None:
    with server.imap_client(user, password) as client:
        for msg in mails:
            client.append(folder, wire(msg))


def count(server: DovecotServer, folder: str, user: str = USER,
          password: str = PASSWORD) -> int:
    """Mails in the folder; 0 while the poller has not made it yet."""
    with server.imap_client(user, password) as client:
        if not client.folder_exists(folder):
            return 0
        client.select_folder(folder, readonly=True)
        return len(client.search("ALL"))


def restart_dropping_clients(server: DovecotServer, *users: str) -> None:
    """Restart Dovecot the way a real restart looks to a client: the session is cut.
    The helper's restart() leaves running imap processes (and their sessions) alive, so the
    sessions are kicked first, as Dovecot's shutdown_clients does on a system restart."""
    doveadm = shutil.which("doveadm") or "/usr/bin/doveadm"
    for user in users or (USER,):
        subprocess.run([doveadm, "-c", str(server.conf_path), "kick", user],
                       check=True, capture_output=True, timeout=10)
    server.restart()


def tickets(app: App) -> list[Ticket]:
    with app.sessions() as s:
        return list(s.execute(select(Ticket).order_by(Ticket.number)).scalars())


def inbound(app: App) -> list[Inbound]:
    with app.sessions() as s:
        return list(s.execute(select(Inbound).order_by(Inbound.id)).scalars())


def replied_to(sink: SmtpSink) -> list[str]:
    """The request each acknowledgement in the sink answers."""
    return [m["In-Reply-To"] for m in sink.messages]


def poller(daemon: RunningDaemon, index: int = 0) -> ImapPoller:
    assert daemon.daemon.imap is not None
    return daemon.daemon.imap.pollers[index]


def logged_once(record: logging.LogRecord, *parts: str) -> bool:
    return all(p in record.getMessage() for p in parts)


def logged(caplog: pytest.LogCaptureFixture, *parts: str) -> bool:
    return any(logged_once(r, *parts) for r in caplog.records)


@pytest.fixture
def imap_app(app: App, make_settings: SettingsFactory,
             dovecot_server: DovecotServer) -> Iterator[AppFactory]:
    """Apps on the migrated database of `app` (editor registered) with [[imap]] accounts."""
    made: list[App] = []

    def make(*accounts: dict[str, Any], **sections: dict[str, Any]) -> App:
        # A burst of requests from one editor must all be acknowledged here, whatever the
        # per-sender limit on automatic answers says.
        sections.setdefault("access", {"auto_replies_per_hour": 1000})
        a = App(make_settings(imap=list(accounts) or [account(dovecot_server)], **sections))
        made.append(a)
        return a

    yield make
    for a in made:
        a.close()


# -- pure parts ------------------------------------------------------------------------------

def test_backoff_doubles_up_to_the_cap() -> None:
    b = Backoff(initial=1, cap=60)
    assert [b.delay(n) for n in range(1, 9)] == [1, 2, 4, 8, 16, 32, 60, 60]
    assert Backoff(initial=0.1, cap=0.3).delay(5) == 0.3


@pytest.mark.parametrize(("responses", "bye", "news"), [
    ([], False, False),
    ([(b"OK", b"Still here")], False, False),
    ([(3, b"EXISTS"), (1, b"RECENT")], False, True),
    ([(2, b"FETCH", (b"FLAGS", (b"\\Seen",)))], False, False),
    ([(b"BYE", b"Server shutting down.")], True, False),
    ([(b"NO", b"Internal error occurred.")], True, False),
])
def test_idle_responses(responses: list[tuple[object, ...]], bye: bool, news: bool) -> None:
    assert ends_session(responses) is bye
    assert has_new_mail(responses) is news


def test_describe_responses_for_the_log() -> None:
    assert describe([(b"BYE", b"Server", b"shutting", b"down.")]) == "BYE Server shutting down."
    assert describe([(b"NO", b"Internal error"), (3, b"EXISTS")]) == "NO Internal error; 3 EXISTS"


def test_destination_by_status() -> None:
    acct = ImapAccount(name="d", host="h", username="u", password="p")
    assert destination(acct, "ticket") == "Processed"
    assert destination(acct, "refused") == "Processed"
    assert destination(acct, "ignored") == "Processed"
    assert destination(acct, "quarantined") == "Failed"
    assert destination(acct, "pending") is None


# -- the "done when" -----------------------------------------------------------------

def test_thirty_mails_before_during_and_after_a_dovecot_restart(
        imap_app: AppFactory, dovecot_server: DovecotServer, sink: SmtpSink,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="mailgate")
    server = dovecot_server
    mails = requests(30)
    append(server, mails[:20])
    d = RunningDaemon(imap_app()).start()
    try:
        until(lambda: len(tickets(d.app)) == 20, timeout=30, what="the backlog of 20")
        until(poller(d).idling.is_set, what="IDLE after the backlog")
        append(server, mails[20:25])
        until(lambda: len(tickets(d.app)) == 25, timeout=5, what="5 live mails by IDLE")
        until(lambda: count(server, "INBOX") == 0, what="the live mails moved")
        restart_dropping_clients(server)
        append(server, mails[25:])
        until(lambda: len(tickets(d.app)) == 30, timeout=30, what="5 mails after the restart")
        assert logged(caplog, "'desk'", "failed or lost"), "the restart must cut the session"
        sink.wait_for(30, timeout=15)
        until(lambda: count(server, "INBOX") == 0, what="INBOX emptied")
    finally:
        d.stop()
    assert len(tickets(d.app)) == 30
    assert sorted(replied_to(sink)) == sorted(m["Message-ID"] for m in mails)
    assert len({a["Subject"] for a in sink.messages}) == 30
    assert count(server, "INBOX") == 0
    assert count(server, "Processed") == 30
    assert count(server, "Failed") == 0
    rows = inbound(d.app)
    assert len(rows) == 30 and {r.channel for r in rows} == {"imap:desk"}
    assert {r.status for r in rows} == {"ticket"}


# -- push, poll, move ------------------------------------------------------------------------

def test_live_mail_by_idle_within_seconds_is_not_marked_read(
        imap_app: AppFactory, dovecot_server: DovecotServer, sink: SmtpSink) -> None:
    d = RunningDaemon(imap_app()).start()
    try:
        until(poller(d).idling.is_set, what="IDLE")
        start = time.monotonic()
        append(dovecot_server, [make_mail(EDITOR, "Live")])
        [ack] = sink.wait_for(1, timeout=5)
        latency = time.monotonic() - start
        until(lambda: count(dovecot_server, "Processed") == 1, what="move")
        stop_started = time.monotonic()
    finally:
        d.stop()
    assert latency < 3, f"picked up after {latency:.1f}s (poll_interval is 60s: IDLE failed)"
    assert time.monotonic() - stop_started < 3, "stopping an idling poller must be quick"
    assert ack["Subject"] == "[SD-1] Live"
    with dovecot_server.imap_client(USER, PASSWORD) as client:
        client.select_folder("Processed", readonly=True)
        flags = client.get_flags(client.search("ALL"))
    assert all(b"\\Seen" not in f for f in flags.values()), flags


def test_polls_when_idle_is_off(imap_app: AppFactory, dovecot_server: DovecotServer,
                                sink: SmtpSink) -> None:
    d = RunningDaemon(imap_app(account(dovecot_server, idle=False, poll_interval=0.3))).start()
    try:
        until(lambda: poller(d).uidvalidity is not None, what="the folder selected")
        append(dovecot_server, requests(2))
        sink.wait_for(2, timeout=5)
        until(lambda: count(dovecot_server, "Processed") == 2, what="move")
        assert not poller(d).idling.is_set()
    finally:
        d.stop()
    assert count(dovecot_server, "INBOX") == 0


def test_copy_and_expunge_where_move_is_not_used(
        imap_app: AppFactory, dovecot_server: DovecotServer) -> None:
    app = imap_app()
    append(dovecot_server, requests(3))
    p = ImapPoller(app.settings.imap[0], *imap_callables(app), tuning=Tuning(use_move=False))
    p.start()
    try:
        until(lambda: count(dovecot_server, "Processed") == 3, what="copy + expunge")
        until(lambda: count(dovecot_server, "INBOX") == 0, what="expunged from INBOX")
    finally:
        p.stop()
        assert p.join(5)
    assert len(tickets(app)) == 3


def test_quarantined_mail_goes_to_the_failed_folder(
        imap_app: AppFactory, dovecot_server: DovecotServer, sink: SmtpSink) -> None:
    # No header field at all: nothing to read, so quarantine (a mail with a broken sender
    # only is read and ignored, docs/design.md §1.4).
    bad = b"this is no mail at all\r\njust two lines of text\r\n"
    with dovecot_server.imap_client(USER, PASSWORD) as client:
        client.append("INBOX", bad)
    append(dovecot_server, [make_mail(EDITOR, "Gewoon")])
    d = RunningDaemon(imap_app()).start()
    try:
        until(lambda: count(dovecot_server, "INBOX") == 0, what="both moved")
        sink.wait_for(1)
    finally:
        d.stop()
    assert dovecot_server.fetch_all(USER, PASSWORD, "Failed") == [bad]
    assert count(dovecot_server, "Processed") == 1
    assert [r.status for r in inbound(d.app)] == ["quarantined", "ticket"]


# -- faults ----------------------------------------------------------------------------------

def test_missing_folder_is_named_and_the_others_keep_working(
        imap_app: AppFactory, dovecot_server: DovecotServer, sink: SmtpSink,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="mailgate")
    dovecot_server.add_user("other", "pw2")
    broken = account(dovecot_server, name="broken", username="other", password="pw2",
                     folder="Nope")
    d = RunningDaemon(imap_app(broken, account(dovecot_server))).start()
    try:
        until(lambda: logged(caplog, "'broken'", "'Nope'", "does not exist"),
              what="the error naming account and folder")
        append(dovecot_server, [make_mail(EDITOR, "Via IMAP")])
        send(d.port, make_mail(EDITOR, "Via SMTP"))
        sink.wait_for(2)
    finally:
        d.stop()
    assert sorted(t.subject for t in tickets(d.app)) == ["Via IMAP", "Via SMTP"]
    # Our folders are made for the working account; nothing is made for the broken one.
    assert dovecot_server.folder_exists(USER, PASSWORD, "Processed")
    assert not dovecot_server.folder_exists("other", "pw2", "Processed")


def test_wrong_password_is_logged_and_retried(
        imap_app: AppFactory, dovecot_server: DovecotServer, sink: SmtpSink,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="mailgate")
    wrong = account(dovecot_server, name="wrongpw", password="not-the-password")
    d = RunningDaemon(imap_app(wrong, account(dovecot_server, name="desk"))).start()
    try:
        until(lambda: logged(caplog, "'wrongpw'", "login failed", f"'{USER}'"),
              what="the login error naming the account")
        append(dovecot_server, [make_mail(EDITOR, "Toch binnen")])
        sink.wait_for(1)
        # Retried with backoff, not given up on.
        until(lambda: sum(logged_once(r, "'wrongpw'", "login failed")
                          for r in caplog.records) >= 2, what="a retry", timeout=10)
        assert d.thread.is_alive()
    finally:
        d.stop()
    assert [t.subject for t in tickets(d.app)] == ["Toch binnen"]


def test_password_file_gone_after_start_is_named(
        imap_app: AppFactory, dovecot_server: DovecotServer, tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="mailgate")
    secret = tmp_path / "imap.secret"
    secret.write_text(PASSWORD + "\n")
    acct = account(dovecot_server, password="", password_file=str(secret))
    a = imap_app(acct)  # the config check reads the file ...
    secret.unlink()  # ... which an operator then moves away
    d = RunningDaemon(a).start()
    try:
        until(lambda: logged(caplog, "'desk'", f"cannot read password_file {secret}"),
              what="the unreadable password file named")
        secret.write_text(PASSWORD + "\n")
        until(poller(d).idling.is_set, timeout=10, what="the retry with the file back")
    finally:
        d.stop()


def test_silent_server_times_out_and_is_retried(
        imap_app: AppFactory, dovecot_server: DovecotServer, sink: SmtpSink,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="mailgate")
    # Takes the connection (the kernel's backlog accepts it) and never says a word.
    with socket.create_server(("127.0.0.1", 0)) as silent:
        port = silent.getsockname()[1]
        mute = account(dovecot_server, name="mute", port=port, timeout_seconds=0.3)
        d = RunningDaemon(imap_app(mute, account(dovecot_server))).start()
        try:
            until(lambda: logged(caplog, "'mute'", f"127.0.0.1:{port} timed out after 0.3s"),
                  what="the timeout logged")
            append(dovecot_server, [make_mail(EDITOR, "Ondanks de stille server")])
            sink.wait_for(1)
        finally:
            d.stop()
    assert [t.subject for t in tickets(d.app)] == ["Ondanks de stille server"]


def test_storage_down_leaves_the_mail_untouched(
        imap_app: AppFactory, app: App, dovecot_server: DovecotServer, sink: SmtpSink,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="mailgate")
    url = app.settings.database.url
    proxy = None
    if url.startswith("sqlite"):
        a = imap_app(database={"busy_timeout_ms": 200})
        d = RunningDaemon(a).start()
        # Another process holding the write lock past the busy timeout.
        blocker = sqlite3.connect(url.split("///", 1)[1], isolation_level=None)
        blocker.execute("BEGIN EXCLUSIVE")
        outage_over = blocker.close
    else:
        proxy = TcpProxy("127.0.0.1", 5432)
        a = imap_app(database={"url": url.replace("127.0.0.1:5432", f"127.0.0.1:{proxy.port}")})
        d = RunningDaemon(a).start()
        # On PostgreSQL the poller first takes the account's lock (inbound/leader.py): the
        # outage starts once it watches the folder.
        until(poller(d).idling.is_set, what="IDLE")
        proxy.cut()
        outage_over = proxy.restore
    try:
        until(poller(d).idling.is_set, what="IDLE")
        append(dovecot_server, [make_mail(EDITOR, "Tijdens de storing")])
        until(lambda: logged(caplog, "'desk'", "storage unavailable", "mail left in 'INBOX'"),
              what="the outage logged")
        assert count(dovecot_server, "INBOX") == 1
        with dovecot_server.imap_client(USER, PASSWORD) as client:
            client.select_folder("INBOX", readonly=True)
            assert all(b"\\Seen" not in f for f in client.get_flags(client.search()).values())
        outage_over()
        [ack] = sink.wait_for(1, timeout=15)
        until(lambda: count(dovecot_server, "INBOX") == 0, what="moved after the outage")
    finally:
        d.stop()
        if proxy:
            proxy.close()
    assert ack["Subject"] == "[SD-1] Tijdens de storing"
    assert count(dovecot_server, "Processed") == 1
    assert len(inbound(app)) == 1


@pytest.mark.parametrize("crashed_after", ["store", "processing"])
def test_crash_between_commit_and_move_makes_no_second_ticket_or_ack(
        crashed_after: str, imap_app: AppFactory, dovecot_server: DovecotServer,
        sink: SmtpSink) -> None:
    """The state a crash leaves behind, built with the real steps: the mail is committed
    (and maybe processed, its ack in the outbox) but still in INBOX."""
    a = imap_app()
    first, second = make_mail(EDITOR, "Voor de crash"), make_mail(EDITOR, "Na de herstart")
    stored = store_raw(a.sessions, a.clock, wire(first), "imap:desk")
    if crashed_after == "processing":
        assert process_one(a, stored.inbound_id) == "ticket"
    append(dovecot_server, [first, second])
    d = RunningDaemon(a).start()
    try:
        # UID order: by the second ack the first mail has been dealt with.
        sink.wait_for(2)
        until(lambda: count(dovecot_server, "INBOX") == 0, what="both moved")
    finally:
        d.stop()
    assert [t.subject for t in tickets(a)] == ["Voor de crash", "Na de herstart"]
    assert sorted(replied_to(sink)) == sorted([first["Message-ID"], second["Message-ID"]])
    rows = inbound(a)
    assert len(rows) == 2 and rows[0].id == stored.inbound_id
    assert count(dovecot_server, "Processed") == 2


def test_uidvalidity_change_rescans_without_doubles(
        imap_app: AppFactory, dovecot_server: DovecotServer, sink: SmtpSink,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="mailgate")
    dovecot_server.create_folder(USER, PASSWORD, "Support")
    old = make_mail(EDITOR, "Oud")
    append(dovecot_server, [old], folder="Support")
    d = RunningDaemon(imap_app(account(dovecot_server, folder="Support"))).start()
    try:
        sink.wait_for(1)
        until(poller(d).idling.is_set, what="IDLE")
        before = poller(d).uidvalidity
        # An admin recreates the folder from a backup: new UIDVALIDITY, an old mail again.
        with dovecot_server.imap_client(USER, PASSWORD) as client:
            client.delete_folder("Support")
            client.create_folder("Support")
            client.append("Support", wire(old))
            client.append("Support", wire(make_mail(EDITOR, "Nieuw")))
        sink.wait_for(2, timeout=15)
        until(lambda: count(dovecot_server, "Support") == 0, timeout=15, what="rescan")
    finally:
        d.stop()
    assert poller(d).uidvalidity != before
    assert logged(caplog, "'desk'", "UIDVALIDITY", "changed")
    assert [t.subject for t in tickets(d.app)] == ["Oud", "Nieuw"]
    assert len(sink.messages) == 2
    assert count(dovecot_server, "Processed") == 3


# -- kill -9 ---------------------------------------------------------------------------------

def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(value)


def write_toml(path: Path, data: dict[str, Any]) -> Path:
    lines: list[str] = []
    for key, value in data.items():
        if not isinstance(value, dict | list):
            lines.append(f"{key} = {_toml_value(value)}")
    for key, value in data.items():
        tables = [value] if isinstance(value, dict) else value if isinstance(value, list) \
            else []
        for table in tables:
            lines.append(f"\n[{key}]" if isinstance(value, dict) else f"\n[[{key}]]")
            lines += [f"{k} = {_toml_value(v)}" for k, v in table.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


class Serve:
    """`python -m mailgate --config FILE serve`, as ops run it."""

    def __init__(self, config: Path, log: Path) -> None:
        self.config, self.log = config, log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Serve:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "mailgate", "--config", str(self.config), "serve"],
                cwd=REPO, stdout=out, stderr=out, stdin=subprocess.DEVNULL)
        return self

    def kill(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()


def cli_json(config: Path, *args: str) -> Any:
    out = subprocess.run([sys.executable, "-m", "mailgate", "--config", str(config), *args],
                         cwd=REPO, capture_output=True, timeout=60, check=True)
    return json.loads(out.stdout)


def test_kill_9_mid_batch_then_restart_loses_and_doubles_nothing(
        imap_app: AppFactory, dovecot_server: DovecotServer, sink: SmtpSink,
        tmp_path: Path) -> None:
    n = 40
    a = imap_app()  # settings as the file below says, for looking at the database
    s = a.settings
    config = write_toml(tmp_path / "mailgate.toml", {
        "state_dir": str(tmp_path / "serve"), "log_level": "INFO",
        "desk": {"name": s.desk.name, "address": s.desk.address,
                 "complaints_address": s.desk.complaints_address, "phone": s.desk.phone,
                 "secret": s.desk.secret},
        "database": {"url": s.database.url, "busy_timeout_ms": 5000},
        "smtp": {"host": "127.0.0.1", "port": 0},
        "outbound": {"relay_host": "127.0.0.1", "relay_port": sink.port,
                     "retry_base_seconds": 0.2, "retry_max_seconds": 1},
        "worker": {"poll_seconds": 0.3},
        "access": {"auto_replies_per_hour": 1000},
        "imap": [account(dovecot_server)],
    })
    mails = requests(n)
    append(dovecot_server, mails)
    log = tmp_path / "serve.log"
    # A plain engine to watch with: the app's SQLite engine takes the write lock even to
    # read (BEGIN IMMEDIATE) and would queue behind the daemon until the batch is over.
    watcher = create_engine(s.database.url)

    def made() -> int:
        with watcher.connect() as conn:
            return int(conn.execute(text("SELECT count(*) FROM ticket")).scalar_one())

    first = Serve(config, log).start()
    try:
        # Past the first chunk of 10 moved, inside the next: some mails moved, some
        # committed and not moved yet, the rest not fetched.
        until(lambda: made() >= 13, timeout=30, interval=0.005,
              what=f"the batch under way\n{log.read_text()}")
        first.kill()
    finally:
        first.stop()
        watcher.dispose()
    killed_at = a.clock.now()
    at_kill, left = len(tickets(a)), count(dovecot_server, "INBOX")
    assert 0 < at_kill < n and left > 0, f"not mid-batch: {at_kill} tickets, {left} left"

    second = Serve(config, log).start()
    try:
        until(lambda: len(tickets(a)) == n and count(dovecot_server, "INBOX") == 0,
              timeout=60, what=f"all {n} after the restart\n{log.read_text()}")
        stale = _expire_leases_of_the_dead(a, killed_at)
        until(lambda: len(set(replied_to(sink))) == n, timeout=30,
              what=f"{n} acknowledgements\n{log.read_text()}")
    finally:
        second.stop()

    listed = cli_json(config, "tickets", "list", "--json")
    assert len(listed) == n
    assert sorted(t["subject"] for t in listed) == sorted(m["Subject"] for m in mails)
    assert sorted(set(replied_to(sink))) == sorted(m["Message-ID"] for m in mails)
    # The outbox is at-least-once by design (sender.py): only a row whose send was in
    # flight at the kill may have gone out twice, with the same Message-ID.
    assert len(sink.messages) - n <= stale
    assert count(dovecot_server, "Processed") == n
    assert len(inbound(a)) == n


def _expire_leases_of_the_dead(app: App, killed_at: Any) -> int:
    """Rows the killed process had claimed stay leased for LEASE (2 min); let that time pass
    for them only, rather than wait. Returns how many there were."""
    with app.sessions() as s, s.begin():
        return s.execute(
            update(Outbox).where(Outbox.status == "pending",
                                 Outbox.lease_until.is_not(None),
                                 Outbox.lease_until <= killed_at + LEASE)
            .values(lease_until=None)).rowcount  # type: ignore[attr-defined, no-any-return]
