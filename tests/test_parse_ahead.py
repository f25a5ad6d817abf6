"""parse_ahead.py: a helper process parses the batch while the worker writes; whatever goes
wrong there leaves the mail to the worker's own parse, with the same outcome."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator

import pytest
from sqlalchemy import select

from mailgate import parse_ahead, worker
from mailgate.app import App
from mailgate.config import WorkerSettings
from mailgate.db.models import Inbound, Ticket
from mailgate.inbound.store import store_raw
from mailgate.mail.extract import extract
from mailgate.mail.parse import parse
from mailgate.parse_ahead import ParseAhead
from mailgate.tickets import known
from tests.support.desk import EDITOR
from tests.support.mails import make_mail, wire
from tests.support.wait import until

UNPARSEABLE = b"\r\n".join([b"no header block at all", b"", b"just text"]) + b"\r\n"


@pytest.fixture
def ahead(app: App) -> Iterator[ParseAhead]:
    helper = ParseAhead(app.settings.database)
    helper.start()
    yield helper
    helper.close()


@pytest.fixture
def grouped(monkeypatch: pytest.MonkeyPatch) -> None:
    """This process counts as warmed up: groups (and the helper) from the first mail on."""
    monkeypatch.setattr(worker, "_committed_in_process", worker._WARM_AFTER)


@pytest.fixture
def taken(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, bool]]:
    """(inbound id, whether the helper had its parse) for each mail the worker asked for."""
    asked: list[tuple[int, bool]] = []
    take = ParseAhead.take
    monkeypatch.setattr(ParseAhead, "take", lambda self, i: asked.append(
        (i, (mail := take(self, i)) is not None)) or mail)
    return asked


def _store(app: App, raw: bytes, envelope_from: str = "") -> int:
    return store_raw(app.sessions, app.clock, raw, "smtp", envelope_from).inbound_id


def _raw(i: int) -> bytes:
    mail = make_mail(EDITOR, f"Site 1234: melding {i}",
                     f"De pagina https://site1234.example.be/p{i} geeft een fout {i}.")
    if i % 2:
        mail.add_alternative(f"<p>De pagina geeft een <b>fout</b> {i}.</p>", subtype="html")
    return wire(mail)


def test_the_helper_parses_as_the_worker_would(app: App, ahead: ParseAhead) -> None:
    raws = [_raw(i) for i in range(20)]
    ids = [_store(app, raw, "bounce@site1234.example.be") for raw in raws]
    bad = _store(app, UNPARSEABLE)
    big = _store(app, _raw(99).replace(b"melding 99", b"melding 99 " + b"x" * 70 * 16000))
    ahead.submit([*ids, bad, big])
    for inbound_id, raw in zip(ids, raws, strict=True):
        mail = ahead.take(inbound_id)
        assert mail == parse(raw, "bounce@site1234.example.be")
        # ... and read as a request, against the registered sites (the worker's read)
        with app.sessions() as session:
            assert mail.derived["extract"].found == extract(
                parse(raw), known.site_ids(session))
    # Unparseable there: the worker parses it itself and says why; too big to be sent
    # across: parsed in the worker, held once.
    assert ahead.take(bad) is None and ahead.take(big) is None
    assert ahead.take(ids[0]) is None  # taken once


@pytest.mark.usefixtures("grouped")
def test_the_worker_uses_the_helper_and_the_outcome_is_the_same(
        app: App, ahead: ParseAhead, taken: list[tuple[int, bool]]) -> None:
    ids = [_store(app, _raw(i)) for i in range(40)]
    bad = _store(app, UNPARSEABLE)
    result = worker.process_pending(app, ahead=ahead)
    assert (result.processed, result.quarantined) == (41, 1)
    # Each good mail was parsed by the helper once (the group the bad one fails runs again,
    # and a mail its first run took is parsed by the worker then: it is not counted here).
    assert sorted(i for i, got in taken if got) == ids
    assert (bad, True) not in taken and (bad, False) in taken
    with app.sessions() as s:
        rows = {r.id: r for r in s.execute(select(Inbound)).scalars()}
        subjects = set(s.execute(select(Ticket.subject)).scalars())
    assert all(rows[i].status == "ticket" for i in ids)
    assert rows[bad].status == "quarantined" and rows[bad].reason.startswith("unparseable:")
    assert subjects == {f"Site 1234: melding {i}" for i in range(40)}


@pytest.mark.usefixtures("grouped")
def test_the_next_pass_is_parsed_ahead_and_no_more(
        app: App, ahead: ParseAhead, taken: list[tuple[int, bool]]) -> None:
    ids = [_store(app, _raw(i)) for i in range(25)]
    assert worker.process_pending(app, limit=10, ahead=ahead).processed == 10
    # The second pass's ten wait in the helper's results; the five after them do not.
    assert sorted(ahead._chunks) == ids[10:20]
    assert worker.process_pending(app, limit=10, ahead=ahead).processed == 10
    assert sorted(ahead._chunks) == ids[20:]
    assert worker.process_pending(app, limit=10, ahead=ahead).processed == 5
    assert not ahead._chunks
    assert taken == [(i, True) for i in ids]  # every one parsed by the helper, once


@pytest.mark.usefixtures("grouped")
def test_a_helper_that_dies_costs_no_mail_and_is_not_restarted_at_once(
        app: App, ahead: ParseAhead, caplog: pytest.LogCaptureFixture) -> None:
    assert ahead._pool is not None
    ahead._pool.submit(int).result(timeout=60)  # running
    for pid in list(ahead._pool._processes):
        os.kill(pid, signal.SIGKILL)
    ids = [_store(app, _raw(i)) for i in range(5)]
    result = worker.process_pending(app, ahead=ahead)
    assert (result.processed, result.quarantined) == (5, 0)
    assert "parse-ahead helper failed" in caplog.text
    with app.sessions() as s:
        assert {r.status for r in s.execute(select(Inbound).where(
            Inbound.id.in_(ids))).scalars()} == {"ticket"}
    assert ahead._pool is None
    ahead.submit([_store(app, _raw(9))])  # within RETRY_SECONDS: no new helper yet
    assert ahead._pool is None


def test_by_default_only_sqlite_parses_ahead(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    assert WorkerSettings().parses_ahead("sqlite:///var/mailgate.db")
    assert not WorkerSettings().parses_ahead("postgresql+psycopg://h/db")
    assert WorkerSettings(parse_ahead="on").parses_ahead("postgresql+psycopg://h/db")
    assert not WorkerSettings(parse_ahead="off").parses_ahead("sqlite:///var/mailgate.db")
    monkeypatch.setattr(os, "cpu_count", lambda: 1)
    assert not WorkerSettings().parses_ahead("sqlite:///var/mailgate.db")
    assert parse_ahead.MAX_BYTES >= 1 << 20


_DAEMON = """
import sys, time
from mailgate.config import DatabaseSettings
from mailgate.parse_ahead import ParseAhead
from mailgate.tickets import known
helper = ParseAhead(DatabaseSettings(url=sys.argv[1]))
helper.start()
assert helper._pool is not None
helper._pool.submit(int).result(timeout=60)
print(*helper._pool._processes, flush=True)
time.sleep(60)
"""


def test_the_helper_ends_when_the_daemon_is_killed(app: App) -> None:
    """SIGKILL to the daemon: its helper does not stay behind with the database open."""
    daemon = subprocess.Popen([sys.executable, "-c", _DAEMON, app.settings.database.url],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert daemon.stdout is not None
        helper = int(daemon.stdout.readline())
        os.kill(daemon.pid, signal.SIGKILL)
    finally:
        daemon.kill()
        daemon.wait()
    until(lambda: not _alive(helper), timeout=3 * parse_ahead.PARENT_CHECK_SECONDS + 5,
          what="the helper ended")


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as stat:  # a zombie is gone too
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
