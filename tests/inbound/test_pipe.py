"""`mailgate deliver`'s lean store (mailgate/inbound/pipe.py): plain DB-API, no SQLAlchemy,
yet the same row and the same idempotency key as the daemon's store (inbound/store.py), the
same exit codes (0 stored, 65 empty, 75 storage unavailable), exactly once under a race. And
its hand-off to the running daemon's listener first (mailgate/inbound/handoff.py), with the
direct store whenever that fails. On SQLite and PostgreSQL."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import smtplib
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from select import select as readable

import pytest
from sqlalchemy import select

from mailgate import config
from mailgate.app import App
from mailgate.clock import FixedClock
from mailgate.db import dbapi
from mailgate.db.models import Inbound
from mailgate.exitcodes import EX_DATAERR, EX_OK, EX_TEMPFAIL
from mailgate.inbound.arrival import Arrival, Stored, inbound_row
from mailgate.inbound.handoff import NotHanded, hand_off, listener_for, wire_pieces, wire_size
from mailgate.inbound.pipe import deliver, deliver_raw, store
from mailgate.inbound.store import store_raw
from mailgate.worker import process_pending
from tests.support.desk import DESK, EDITOR, RunningDaemon, SettingsFactory
from tests.support.mails import make_mail, wire
from tests.support.proxy import TcpProxy
from tests.support.sink import free_port
from tests.support.tls import self_signed
from tests.support.wait import until

AT = datetime(2026, 11, 30, 9, 15, 42, 123456, tzinfo=UTC)


def _deliver(app: App, raw: bytes, at: datetime = AT, **kw: str) -> tuple[int, Stored | None, str]:
    return deliver(app.settings.database, FixedClock(at), io.BytesIO(raw),
                   kw.get("sender", EDITOR), [kw.get("rcpt", DESK)])


def _row(app: App, inbound_id: int) -> Inbound:
    with app.sessions() as s:
        row = s.get(Inbound, inbound_id)
        assert row is not None
        return row


def test_the_pipe_writes_the_row_the_daemon_writes(app: App) -> None:
    raw = wire(make_mail(EDITOR, "Contactformulier kapot"))
    code, stored, error = _deliver(app, raw)
    assert (code, error) == (EX_OK, "") and stored is not None and not stored.duplicate
    row = _row(app, stored.inbound_id)
    # Every column as the ORM reads it back: the types round-trip (JSON trail, aware UTC
    # time to the microsecond, the raw bytes exactly).
    assert row.raw == raw and row.size == len(raw)
    assert row.received_at == AT
    assert (row.channel, row.envelope_from, row.envelope_to) == ("pipe", EDITOR, DESK)
    assert (row.status, row.reason, row.kind, row.trail, row.attempts) == (
        "pending", "", "", [], 0)
    assert (row.processed_at, row.ticket_id, row.authenticity) == (None, None, "")
    expected = inbound_row(Arrival(raw, "pipe", EDITOR, (DESK,)), AT)
    assert (row.digest, row.message_id, row.dedup_key) == (
        expected["digest"], expected["message_id"], expected["dedup_key"])
    # The worker takes it as it takes a mail from SMTP: a ticket with its acknowledgement.
    assert process_pending(app).processed == 1
    assert _row(app, stored.inbound_id).status == "ticket"


def test_one_key_for_both_ways_of_storing(app: App) -> None:
    """A mail stored by the daemon is a duplicate for `deliver`, and the other way round."""
    by_daemon = wire(make_mail(EDITOR, "Eerst via SMTP"))
    first = store_raw(app.sessions, app.clock, by_daemon, "smtp")
    code, again, _ = _deliver(app, by_daemon.replace(b"\r\n", b"\n"))  # LF, as a pipe may
    assert code == EX_OK and again == Stored(first.inbound_id, duplicate=True)

    by_pipe = wire(make_mail(EDITOR, "Eerst via de pipe"))
    code, piped, _ = _deliver(app, by_pipe)
    assert code == EX_OK and piped is not None and not piped.duplicate
    assert store_raw(app.sessions, app.clock, by_pipe, "imap") == Stored(piped.inbound_id, True)
    code, twice, _ = _deliver(app, by_pipe)
    assert twice == Stored(piped.inbound_id, duplicate=True)
    with app.sessions() as s:
        assert s.execute(select(Inbound.id)).scalars().all() == [first.inbound_id,
                                                                  piped.inbound_id]


def test_times_compare_with_the_daemons_rows(app: App) -> None:
    """On SQLite a time is text: the pipe must write SQLAlchemy's format, or ranges and
    ordering over received_at (retention, stats) would be wrong for piped mail."""
    store_raw(app.sessions, FixedClock(AT - timedelta(microseconds=1)),
              wire(make_mail(EDITOR, "net ervoor")), "smtp")
    _deliver(app, wire(make_mail(EDITOR, "via de pipe")))
    store_raw(app.sessions, FixedClock(AT + timedelta(microseconds=1)),
              wire(make_mail(EDITOR, "net erna")), "smtp")
    with app.sessions() as s:
        ordered = s.execute(select(Inbound.channel).order_by(Inbound.received_at)).scalars()
        assert list(ordered) == ["smtp", "pipe", "smtp"]
        assert s.execute(select(Inbound.channel).where(Inbound.received_at >= AT,
                                                       Inbound.received_at < AT + timedelta(
                                                           microseconds=1))).scalars().all() \
            == ["pipe"]


@pytest.mark.parametrize("raw", [b"", b" \r\n\t\r\n"], ids=["empty", "whitespace"])
def test_an_empty_mail_is_refused_with_65(app: App, raw: bytes) -> None:
    code, stored, error = _deliver(app, raw)
    assert (code, stored) == (EX_DATAERR, None) and "empty" in error


def test_without_a_schema_the_mta_is_told_to_retry(make_settings: config.Settings) -> None:
    """`db upgrade` not run yet: 75, so the MTA keeps the mail until it is."""
    settings = make_settings()  # type: ignore[operator]
    code, stored, error = deliver(settings.database, FixedClock(AT),
                                  io.BytesIO(wire(make_mail(EDITOR, "x"))))
    assert (code, stored) == (EX_TEMPFAIL, None) and error.startswith("storage unavailable")


def test_an_unreachable_database_answers_75(tmp_path: Path) -> None:
    db = config.DatabaseSettings(url="postgresql+psycopg://postgres@127.0.0.1:1/test")
    code, _stored, error = deliver(db, FixedClock(AT), io.BytesIO(b"Subject: x\r\n\r\nx\r\n"))
    assert code == EX_TEMPFAIL and "storage unavailable" in error


def test_a_locked_sqlite_database_answers_75_and_stores_nothing(
        app: App, make_settings: config.Settings) -> None:
    if not app.settings.database.url.startswith("sqlite"):
        pytest.skip("the write lock of one file is SQLite's")
    holder = sqlite3.connect(dbapi.sqlite_path(app.settings.database.url),
                             isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # another writer holds the database
    try:
        quick = config.DatabaseSettings(url=app.settings.database.url, busy_timeout_ms=100)
        code, _stored, error = deliver(quick, FixedClock(AT),
                                       io.BytesIO(wire(make_mail(EDITOR, "x"))))
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert code == EX_TEMPFAIL and "locked" in error
    with app.sessions() as s:
        assert s.execute(select(Inbound.id)).first() is None


def test_a_mail_stored_meanwhile_by_another_process_is_a_duplicate(app: App) -> None:
    """The race the key is for: another process has inserted the same mail and not yet
    committed. The pipe's insert waits for it (PostgreSQL) or for the write lock (SQLite),
    then answers with the other's id: one row, never an error."""
    raw = wire(make_mail(EDITOR, "Twee keer tegelijk"))
    values = inbound_row(Arrival(raw, "smtp"), AT)
    results: list[tuple[int, Stored | None, str]] = []
    with dbapi.connect(app.settings.database) as other:
        with dbapi.write(other) as cur:
            # The other process's uncommitted insert, through the same statement.
            other_id = dbapi.insert_inbound(other, cur, [values])[1][values["dedup_key"]]
            racer = threading.Thread(target=lambda: results.append(_deliver(app, raw)))
            racer.start()
            racer.join(0.5)
            assert racer.is_alive(), "the pipe must wait for the other's transaction"
        racer.join(10)
    assert results == [(EX_OK, Stored(other_id, duplicate=True), "")]
    with app.sessions() as s:
        assert s.execute(select(Inbound.id)).scalars().all() == [other_id]


def test_store_on_an_open_connection(app: App) -> None:
    raw = wire(make_mail(EDITOR, "Rechtstreeks"))
    with dbapi.connect(app.settings.database) as plain:
        first = store(plain, inbound_row(Arrival(raw, "pipe"), AT))
        again = store(plain, inbound_row(Arrival(raw, "pipe"), AT))
    assert again == Stored(first.inbound_id, duplicate=True)


@pytest.mark.parametrize(("url", "conninfo"), [
    ("postgresql+psycopg://u:p%40ss@db.example:5433/desk?sslmode=require",
     "postgresql://u:p%40ss@db.example:5433/desk?sslmode=require"),
    ("postgresql://postgres@127.0.0.1/test", "postgresql://postgres@127.0.0.1/test"),
])
def test_postgres_urls_become_libpq_uris(url: str, conninfo: str) -> None:
    assert dbapi.postgres_conninfo(url) == conninfo


@pytest.mark.parametrize(("url", "path"), [
    ("sqlite:////var/lib/mailgate/mailgate.db", "/var/lib/mailgate/mailgate.db"),
    ("sqlite:///var/mailgate.db", "var/mailgate.db"),
    ("sqlite:///var/mailgate.db?timeout=3", "var/mailgate.db"),
    ("sqlite://", ""),
])
def test_sqlite_urls_name_the_file_sqlalchemy_opens(url: str, path: str) -> None:
    assert dbapi.sqlite_path(url) == path


def test_both_ways_insert_the_same_columns() -> None:
    values = inbound_row(Arrival(b"Subject: x\r\n\r\nx\r\n", "pipe"), AT)
    assert set(values) == {*dbapi.INBOUND_COLUMNS, "trail"} and values["trail"] == []
    required = {c.name for c in Inbound.__table__.columns
                if not c.nullable and c.server_default is None and not c.primary_key}
    assert required <= set(values), "a NOT NULL column the pipe would leave out"


# --- the hand-off to the running daemon's listener (mailgate/inbound/handoff.py) -------------
#
# `deliver` run as Postfix runs it: the installed entry point in a subprocess, the real daemon
# (tests/support/desk.py RunningDaemon) listening, on SQLite and PostgreSQL.

MAILGATE = str(Path(sys.executable).with_name("mailgate"))
STRANGER = "someone@elsewhere.example"


def _config_file(app: App, tmp_path: Path, port: int, handoff: str = "always",
                 smtp: str = "", name: str = "deliver.toml") -> Path:
    """A config on the test database whose listener is `port`."""
    path = tmp_path / name
    path.write_text(f"""state_dir = {json.dumps(str(tmp_path / "var"))}
[desk]
address = "{DESK}"
complaints_address = "complaints@desk.example"
[database]
url = {json.dumps(app.settings.database.url)}
busy_timeout_ms = 2000
[smtp]
host = "127.0.0.1"
port = {port}
{smtp}
[deliver]
handoff = "{handoff}"
""")
    return path


def _run(config_file: Path, raw: bytes, *rcpts: str,
         env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    args = [MAILGATE, "--config", str(config_file), "deliver", "-f", EDITOR]
    for rcpt in rcpts:
        args += ["-r", rcpt]
    environ = {k: v for k, v in os.environ.items()
               if k not in ("SENDER", "RECIPIENT", "MAILGATE_CONFIG")}
    proc = subprocess.run(args, input=raw, capture_output=True, timeout=60,
                          env={**environ, **(env or {})})
    return subprocess.CompletedProcess(proc.args, proc.returncode, proc.stdout.decode(),
                                       proc.stderr.decode())


def _stored_id(run: subprocess.CompletedProcess[str]) -> int:
    assert run.returncode == EX_OK, run.stderr
    found = re.search(r"stored as inbound (\d+)", run.stdout)
    assert found, run.stdout
    return int(found.group(1))


def _rows(app: App) -> list[Inbound]:
    with app.sessions() as s:
        return list(s.execute(select(Inbound).order_by(Inbound.id)).scalars())


def _mode(app: App) -> str:
    """"auto" tries the listener on PostgreSQL only; "always" on SQLite too."""
    return "auto" if app.settings.database.url.startswith("postgresql") else "always"


def test_deliver_hands_the_mail_to_the_running_listener(
        daemon: RunningDaemon, tmp_path: Path) -> None:
    app = daemon.app
    cfg = _config_file(app, tmp_path, daemon.port, _mode(app))
    # As Postfix's pipe gives it: LF line ends; a line of dots (dot-stuffed on the wire, the
    # stuffing undone by the listener), and a line far over 998 bytes (under max_line_length).
    long_line = "x" * 5000
    lf = wire(make_mail(EDITOR, "Via de listener", f"Eerste regel\n.\n..punt\n{long_line}\n"
                        "Eva")).replace(b"\r\n", b"\n")
    assert b"\n.\n" in lf and b"\n..punt\n" in lf
    run = _run(cfg, lf, DESK)
    inbound_id = _stored_id(run)
    assert "inbound handed to the listener" in run.stderr
    [row] = _rows(app)
    assert row.id == inbound_id
    # Stored through the listener, as the listener records it; the bytes as they came, with
    # SMTP's CRLF line ends.
    assert (row.channel, row.envelope_from, row.envelope_to) == ("smtp", EDITOR, DESK)
    assert row.raw == lf.replace(b"\n", b"\r\n")
    # The same key as the direct store gives the mail as it came on stdin.
    assert row.dedup_key == inbound_row(Arrival(lf, "pipe"), AT)["dedup_key"]
    # The listener wakes the daemon's worker: processed at once, not at its next poll.
    until(lambda: _rows(app)[0].status != "pending", what="the handed-off mail processed")


def test_with_the_daemon_down_deliver_stores_directly(app: App, tmp_path: Path) -> None:
    cfg = _config_file(app, tmp_path, free_port(), _mode(app))  # nothing listens there
    raw = wire(make_mail(EDITOR, "Daemon ligt plat"))
    run = _run(cfg, raw, DESK)
    assert _stored_id(run) == 1 and "duplicate" not in run.stdout
    assert "storing directly" in run.stderr and "ConnectionRefusedError" in run.stderr
    [row] = _rows(app)
    assert (row.channel, row.raw, row.envelope_to) == ("pipe", raw, DESK)


def test_a_refused_recipient_goes_to_the_direct_store(
        daemon: RunningDaemon, tmp_path: Path) -> None:
    """The listener takes only the desk's addresses (550 to the others); the direct store
    records the whole envelope, as before."""
    app = daemon.app
    cfg = _config_file(app, tmp_path, daemon.port, _mode(app))
    run = _run(cfg, wire(make_mail(EDITOR, "Twee ontvangers")), DESK, STRANGER)
    assert _stored_id(run) == 1
    assert "storing directly" in run.stderr and "550" in run.stderr
    [row] = _rows(app)
    assert (row.channel, row.envelope_to) == ("pipe", f"{DESK},{STRANGER}")


def test_a_listener_answering_4xx_goes_to_the_direct_store(
        app: App, make_settings: SettingsFactory, tmp_path: Path) -> None:
    """A listener with all its sessions taken greets with 421: the mail is stored directly,
    exit 0, at once."""
    busy = RunningDaemon(App(make_settings(smtp={"max_connections": 1}))).start()
    try:
        with smtplib.SMTP("127.0.0.1", busy.port, timeout=10) as holder:
            holder.ehlo()  # the one session the listener allows
            cfg = _config_file(app, tmp_path, busy.port, _mode(app))
            run = _run(cfg, wire(make_mail(EDITOR, "Druk")), DESK)
        assert _stored_id(run) == 1
        assert "greeting: 421" in run.stderr
        assert [r.channel for r in _rows(app)] == ["pipe"]
    finally:
        busy.app.close()
        busy.stop()


def test_the_same_mail_by_both_ways_is_one_row(daemon: RunningDaemon, tmp_path: Path) -> None:
    app = daemon.app
    handing = _config_file(app, tmp_path, daemon.port, _mode(app), name="handoff.toml")
    direct = _config_file(app, tmp_path, daemon.port, "never", name="direct.toml")
    first = wire(make_mail(EDITOR, "Eerst via de listener"))
    n = _stored_id(_run(handing, first, DESK))
    again = _run(direct, first, DESK)
    assert _stored_id(again) == n and "(duplicate, already stored)" in again.stdout
    second = wire(make_mail(EDITOR, "Eerst rechtstreeks"))
    m = _stored_id(_run(direct, second, DESK))
    # The listener dedups by the same key and answers with the first row's id.
    assert _stored_id(_run(handing, second.replace(b"\r\n", b"\n"), DESK)) == m
    assert [(r.id, r.channel) for r in _rows(app)] == [(n, "smtp"), (m, "pipe")]


class _HoldingProxy(TcpProxy):
    """Passes everything on, except that the listener's 250 to DATA (sent after its commit)
    reaches the client only after `hold` seconds: a reply lost to a timeout."""

    def __init__(self, port: int, hold: float) -> None:
        self.hold = hold
        super().__init__("127.0.0.1", port)

    def _pipe(self, a: socket.socket, b: socket.socket) -> None:
        try:
            while True:
                ready, _, _ = readable([a, b], [], [], 0.5)
                for src in ready:
                    data = src.recv(65536)
                    if not data:
                        return
                    if src is b and data.startswith(b"250 2.0.0"):
                        time.sleep(self.hold)
                    (b if src is a else a).sendall(data)
        except OSError:
            return
        finally:
            for s in (a, b):
                with contextlib.suppress(OSError):
                    s.close()


def test_a_timeout_after_data_falls_back_to_a_duplicate(daemon: RunningDaemon) -> None:
    """The listener committed, its 250 did not come in time: the direct store finds the row
    by its key ("duplicate, already stored") and exit 0: one row."""
    app = daemon.app
    raw = wire(make_mail(EDITOR, "Antwoord te laat"))
    proxy = _HoldingProxy(daemon.port, hold=3.0)
    try:
        with pytest.raises(NotHanded, match="timed out"):
            hand_off(("127.0.0.1", proxy.port), raw, EDITOR, [DESK], timeout=1.0)
    finally:
        proxy.close()
    code, stored, _ = deliver_raw(app.settings.database, FixedClock(AT), raw, EDITOR, [DESK])
    [row] = until(lambda: _rows(app), what="the listener's row")
    assert (code, stored) == (EX_OK, Stored(row.id, duplicate=True)) and row.channel == "smtp"


@pytest.mark.parametrize("mode", ["never", "auto-on-sqlite", "always"])
def test_when_deliver_connects_to_the_listener(app: App, tmp_path: Path, mode: str) -> None:
    """"never" never connects, nor "auto" on SQLite; "always" does (the check's control)."""
    if mode == "auto-on-sqlite" and not app.settings.database.url.startswith("sqlite"):
        pytest.skip("auto on PostgreSQL connects: the tests above")
    # A listening socket that never answers: a connection would wait in its backlog.
    with socket.create_server(("127.0.0.1", 0)) as listener:
        cfg = _config_file(app, tmp_path, listener.getsockname()[1], mode.split("-")[0])
        run = _run(cfg, wire(make_mail(EDITOR, "Wie belt er")), DESK)
        assert _stored_id(run) == 1 and [r.channel for r in _rows(app)] == ["pipe"]
        listener.settimeout(0.2)
        if mode == "always":  # no greeting within the connect timeout: stored directly
            listener.accept()[0].close()
            assert "storing directly" in run.stderr and "timed out" in run.stderr
        else:
            with pytest.raises(TimeoutError):
                listener.accept()


def test_without_recipients_the_mail_is_stored_directly(
        daemon: RunningDaemon, tmp_path: Path) -> None:
    """No -r, no $RECIPIENT: as before, stored with an empty envelope_to (the listener
    takes no mail without RCPT)."""
    app = daemon.app
    run = _run(_config_file(app, tmp_path, daemon.port, "always"),
               wire(make_mail(EDITOR, "Zonder ontvanger")))
    assert _stored_id(run) == 1 and "handed" not in run.stderr
    [row] = _rows(app)
    assert (row.channel, row.envelope_to) == ("pipe", "")


def test_recipient_from_the_environment_is_handed_off(
        daemon: RunningDaemon, tmp_path: Path) -> None:
    app = daemon.app
    cfg = _config_file(app, tmp_path, daemon.port, "always")
    run = _run(cfg, wire(make_mail(EDITOR, "Envelop uit de omgeving")),
               env={"RECIPIENT": DESK, "SENDER": ""})
    assert _stored_id(run) == 1 and "inbound handed to the listener" in run.stderr
    [row] = _rows(app)
    # -f EDITOR on the command line wins over $SENDER, as in the direct store.
    assert (row.channel, row.envelope_from, row.envelope_to) == ("smtp", EDITOR, DESK)


def test_an_empty_mail_is_still_65_with_the_listener_up(
        daemon: RunningDaemon, tmp_path: Path) -> None:
    run = _run(_config_file(daemon.app, tmp_path, daemon.port, "always"), b"\r\n", DESK)
    assert run.returncode == EX_DATAERR and "empty" in run.stderr


@pytest.mark.parametrize(("smtp", "handoff", "url", "expected"), [
    ({}, "auto", "postgresql+psycopg://x@h/db", ("127.0.0.1", 2525)),
    ({}, "auto", "sqlite:///x.db", None),
    ({}, "always", "sqlite:///x.db", ("127.0.0.1", 2525)),
    ({}, "never", "postgresql+psycopg://x@h/db", None),
    ({"host": "0.0.0.0", "port": 25}, "always", "", ("127.0.0.1", 25)),
    ({"host": "::", "port": 25}, "always", "", ("::1", 25)),
    ({"host": "10.0.0.5"}, "always", "", ("10.0.0.5", 2525)),
    ({"enabled": False}, "always", "", None),
    ({"port": 0}, "always", "", None),
])
def test_which_listener_deliver_tries(smtp: dict[str, object], handoff: str, url: str,
                                      expected: tuple[str, int] | None) -> None:
    settings = config.from_dict({"smtp": smtp, "deliver": {"handoff": handoff},
                                 **({"database": {"url": url}} if url else {})})
    assert listener_for(settings, b"Subject: x\n\nx\n", EDITOR, [DESK]) == expected


def test_what_deliver_never_hands_off(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    tls = config.from_dict({"smtp": {"tls_cert": str(cert), "tls_key": str(key),
                                     "require_tls": True}, "deliver": {"handoff": "always"}})
    settings = config.from_dict({"deliver": {"handoff": "always"}})
    mail = b"Subject: x\n\nx\n"
    assert listener_for(tls, mail, EDITOR, [DESK]) is None  # it wants STARTTLS first
    assert listener_for(settings, mail, EDITOR, []) is None  # no RCPT possible
    assert listener_for(settings, b"Subject: x", EDITOR, [DESK]) is None  # no final line end
    assert listener_for(settings, b" \n", EDITOR, [DESK]) is None  # empty: 65, directly
    for sender, rcpt in ((f"{EDITOR}> SIZE=1", DESK), (EDITOR, f"{DESK}\r\nRSET"),
                         ("a b@x.example", DESK)):
        assert listener_for(settings, mail, sender, [rcpt]) is None
    assert listener_for(settings, mail, "", [DESK]) is not None  # MAIL FROM:<>


@pytest.mark.parametrize("raw", [
    b"a\nb\n", b"a\r\nb\r\n", b"a\r\nb\nc\r\r\n", b".\n..\n.a\nb.\n", b"x" * 50 + b"\n.y\n",
    b"\n\n.\n", b"a\rb\n.\r\n",
], ids=["lf", "crlf", "mixed", "dots", "long", "blank", "lone-cr"])
def test_the_wire_form_is_crlf_and_dot_stuffed(raw: bytes) -> None:
    expected = re.sub(rb"(?m)^\.", b"..", re.sub(rb"(?<!\r)\n", b"\r\n", raw))
    for piece in (4, 16, 1 << 20):
        assert b"".join(wire_pieces(raw, piece)) == expected
    assert wire_size(raw) == len(re.sub(rb"(?<!\r)\n", b"\r\n", raw))
