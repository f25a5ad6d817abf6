"""Retention, the privacy setting (``[retention]``, mailgate/tickets/retention.py): raw mails
and attachment bytes of tickets closed longer ago than ``raw_days`` / ``attachments_days``
go; the ticket, its text and its events stay; a blob another ticket not yet due uses stays.

Tickets are made through the desk harness (store + a real worker pass) with the app's clock
fixed, closed through the ticket service, their mail sent to the SMTP sink; the sweep is the
daemon's own (:func:`mailgate.tickets.lifecycle.sweep`), the commands run in-process through
:func:`mailgate.cli.main`. Both databases."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from pathlib import Path

import pytest
from sqlalchemy import Engine, func, insert, inspect, select, text, update

from mailgate import blobs
from mailgate.app import App
from mailgate.cli import main
from mailgate.clock import FixedClock
from mailgate.db.engine import make_engine, transaction
from mailgate.db.migrate import upgrade
from mailgate.db.models import Blob, Event, Inbound, Outbox, Setting, Ticket
from mailgate.db.status import OutboxStatus
from mailgate.outbound import sender
from mailgate.tickets import lifecycle, retention, service
from mailgate.tickets.states import State
from tests.support.desk import EDITOR, SettingsFactory, register_demo
from tests.support.harness import DeskHarness
from tests.support.mails import make_mail
from tests.support.migrations import migrate_to
from tests.tickets.conftest import OTHER_EDITOR, register_more

pytestmark = pytest.mark.timeout(180)

NOW = datetime(2027, 3, 1, 10, 0, tzinfo=UTC)
SHARED = b"%PDF-1.4 the site's logo, sent with both requests"
OLD_ONLY = b"\x89PNG screenshot of the old error"
YOUNG_ONLY = b"\x89PNG screenshot of the new error"


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def mail_with(sender: str, subject: str, *attachments: tuple[str, bytes]) -> EmailMessage:
    msg = make_mail(sender, subject)
    for name, data in attachments:
        msg.add_attachment(data, maintype="application", subtype="octet-stream",
                           filename=name)
    return msg


def receive(desk: DeskHarness, msg: EmailMessage, when: datetime) -> Inbound:
    desk.app.clock = FixedClock(when)
    row = desk.receive(msg)
    assert row.status == "ticket", row.reason
    return row


def close(app: App, ref: str, when: datetime, state: State = State.CLOSED) -> None:
    with transaction(app.sessions) as s:
        t = s.execute(select(Ticket).where(Ticket.ref == ref)).scalar_one()
        service.set_state(s, app.desk, t, state, None, when, by="cli")


def flush(app: App, when: datetime) -> None:
    app.clock = FixedClock(when)
    while sender.flush(app.sessions, app.clock, app.settings.outbound, app.transport).sent:
        pass


def inbound_raw(app: App, inbound_id: int) -> bytes:
    with app.sessions() as s:
        return s.execute(select(Inbound.raw).where(Inbound.id == inbound_id)).scalar_one()


def outbox_raws(app: App, ref: str) -> dict[int, tuple[str, int]]:
    """The ticket's outgoing mails: id → (status, length of raw)."""
    with app.sessions() as s:
        return {i: (st, n) for i, st, n in s.execute(
            select(Outbox.id, Outbox.status, func.length(Outbox.raw))
            .join(Ticket, Ticket.id == Outbox.ticket_id).where(Ticket.ref == ref))}


def blob(app: App, data: bytes) -> tuple[str, bytes | None]:
    with app.sessions() as s:
        b = s.get(Blob, sha(data))
        assert b is not None
        return b.location, b.data


def naive(value: object) -> datetime | None:
    """A timestamp as read with plain SQL: naive UTC (SQLite gives a string)."""
    if value is None:
        return None
    moment = value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
    return moment.replace(tzinfo=None)


def write_config(tmp_path: Path, app: App, retention_toml: str) -> Path:
    path = tmp_path / "mailgate.toml"
    path.write_text("\n".join([
        f'state_dir = "{tmp_path / "var"}"',
        "[desk]", 'address = "servicedesk@desk.example"',
        'complaints_address = "complaints@desk.example"',
        'secret = "test-secret-0123456789"',
        "[database]", f'url = "{app.settings.database.url}"',
        "[outbound]", f'maildir = "{tmp_path / "maildir"}"',
        "[retention]", retention_toml]) + "\n")
    return path


def run(capsys: pytest.CaptureFixture[str], config: Path, *args: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exited:
        main(["--config", str(config), *args])
    out = capsys.readouterr()
    return int(exited.value.code or 0), out.out, out.err


@pytest.fixture
def kept(make_settings: SettingsFactory) -> Iterator[DeskHarness]:
    """A desk with raw_days = attachments_days = 30, and three tickets:

    SD-1 closed 40 days before NOW (due), with SHARED and OLD_ONLY attached;
    SD-2 closed 10 days before NOW (not due), with SHARED and YOUNG_ONLY attached;
    SD-3 closed 45 days before NOW and reopened since (not due: it is not closed)."""
    app = App(make_settings(retention={"raw_days": 30, "attachments_days": 30}))
    upgrade(app.engine)
    register_demo(app)
    register_more(app)
    desk = DeskHarness(app)
    receive(desk, mail_with(EDITOR, "Logo kapot", ("logo.pdf", SHARED),
                            ("fout.png", OLD_ONLY)), NOW - timedelta(days=41))
    receive(desk, mail_with(OTHER_EDITOR, "Logo nog steeds kapot", ("logo.pdf", SHARED),
                            ("fout2.png", YOUNG_ONLY)), NOW - timedelta(days=12))
    receive(desk, mail_with(EDITOR, "Menu weg"), NOW - timedelta(days=46))
    flush(app, NOW - timedelta(days=46))
    close(app, "SD-1", NOW - timedelta(days=40))
    close(app, "SD-2", NOW - timedelta(days=10))
    close(app, "SD-3", NOW - timedelta(days=45))
    close(app, "SD-3", NOW - timedelta(days=44), State.OPEN)
    flush(app, NOW - timedelta(days=9))
    yield desk
    app.close()


def ids_of(app: App, ref: str) -> list[int]:
    with app.sessions() as s:
        return list(s.execute(select(Inbound.id).join(Ticket, Ticket.id == Inbound.ticket_id)
                              .where(Ticket.ref == ref).order_by(Inbound.id)).scalars())


def test_old_ticket_loses_raw_and_attachments_young_and_shared_stay(
        kept: DeskHarness, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    app = kept.app
    old, young, reopened = ids_of(app, "SD-1"), ids_of(app, "SD-2"), ids_of(app, "SD-3")
    old_raw = inbound_raw(app, old[0])
    old_out = outbox_raws(app, "SD-1")
    assert old_out and all(st == OutboxStatus.SENT and n > 0 for st, n in old_out.values())
    before = kept.ticket("SD-1")
    before_text = [m.body_text for m in before.messages]
    config = write_config(tmp_path, app, "raw_days = 30\nattachments_days = 30")

    # Dry run: what would go, and nothing goes.
    code, out, err = run(capsys, config, "purge", "--dry-run", "--json", "--now",
                         NOW.isoformat())
    assert code == 0, err
    shown = json.loads(out)
    assert shown["dry_run"] is True
    assert shown["raw"]["tickets"] == ["SD-1"]
    assert (shown["raw"]["inbound"], shown["raw"]["outbox"]) == (1, len(old_out))
    assert shown["raw"]["before"] == "2027-01-30T10:00:00Z"
    assert shown["attachments"]["tickets"] == ["SD-1"]
    assert (shown["attachments"]["blobs"], shown["attachments"]["kept_shared"]) == (1, 1)
    assert shown["attachments"]["bytes"] == len(OLD_ONLY)
    code, out, _ = run(capsys, config, "purge", "--dry-run", "--now", NOW.isoformat())
    assert "raw mails of tickets closed before 2027-01-30T10:00:00Z (30 days): would go: " \
           "1 tickets, 1 inbound" in out and "SD-1" in out
    assert inbound_raw(app, old[0]) == old_raw
    assert blob(app, OLD_ONLY) == ("database", OLD_ONLY)
    assert outbox_raws(app, "SD-1") == old_out

    # The daemon's sweep does it.
    result = lifecycle.sweep(app.sessions, app.desk, NOW)
    assert (result.raw_purged, result.attachments_purged) == (1, 1)
    assert inbound_raw(app, old[0]) == b""
    assert all(n == 0 for _st, n in outbox_raws(app, "SD-1").values())
    assert blob(app, OLD_ONLY) == ("purged", None)
    assert blob(app, SHARED) == ("database", SHARED)  # SD-2 still needs it
    assert blob(app, YOUNG_ONLY) == ("database", YOUNG_ONLY)
    for i in young + reopened:
        assert inbound_raw(app, i) != b""
    for ref in ("SD-2", "SD-3"):
        assert all(n > 0 for _st, n in outbox_raws(app, ref).values())

    # The ticket, its text, its attachments' names and its events stay.
    after = kept.ticket("SD-1")
    assert [m.body_text for m in after.messages] == before_text
    assert sorted(a.filename for m in after.messages for a in m.attachments) == [
        "fout.png", "logo.pdf"]
    purged = kept.events("SD-1", "ticket.raw_purged")
    assert purged == [{"inbound": old, "outbox": sorted(old_out), "raw_days": 30,
                       "by": "retention",
                       "bytes": purged[0]["bytes"]}]
    assert purged[0]["bytes"] >= len(old_raw)
    assert kept.events("SD-1", "ticket.attachments_purged") == [
        {"blobs": [sha(OLD_ONLY)], "bytes": len(OLD_ONLY), "attachments_days": 30,
         "by": "retention"}]
    assert kept.events("SD-1", "ticket.state")  # the trail is whole
    code, out, err = run(capsys, config, "tickets", "show", "SD-1", "--json")
    assert code == 0, err
    shown_ticket = json.loads(out)
    assert [m["body"] for m in shown_ticket["messages"]] == before_text
    assert {e["kind"] for e in shown_ticket["events"]} >= {
        "ticket.raw_purged", "ticket.attachments_purged", "ticket.state"}

    # `inbound show` tells; `--raw` refuses with 66 rather than print nothing.
    code, out, err = run(capsys, config, "inbound", "show", str(old[0]), "--raw")
    assert code == 66 and out == ""
    assert "purged by retention (SD-1 closed more than 30 days ago)" in err
    code, out, _ = run(capsys, config, "inbound", "show", str(old[0]), "--json")
    detail = json.loads(out)
    assert detail["size"] == len(old_raw) and detail["status"] == "ticket"
    assert detail["trail"][-1] == {"rule": "retention", "result": "raw purged",
                                   "reason": "SD-1 closed more than 30 days ago"}
    code, out, _ = run(capsys, config, "inbound", "show", str(young[0]), "--raw")
    assert code == 0 and "Logo nog steeds kapot" in out

    # Again: nothing more to do (the cursor is past SD-1).
    again = lifecycle.sweep(app.sessions, app.desk, NOW + timedelta(hours=1))
    assert (again.raw_purged, again.attachments_purged) == (0, 0)
    assert len(kept.events("SD-1", "ticket.raw_purged")) == 1

    # 25 days on SD-2 is due too, and with it the shared blob; SD-3, still open, is not.
    code, out, err = run(capsys, config, "purge", "--json", "--now",
                         (NOW + timedelta(days=25)).isoformat())
    assert code == 0, err
    went = json.loads(out)
    assert went["dry_run"] is False
    assert went["raw"]["tickets"] == ["SD-2"] and went["attachments"]["tickets"] == ["SD-2"]
    assert (went["attachments"]["blobs"], went["attachments"]["kept_shared"]) == (2, 0)
    assert blob(app, SHARED) == ("purged", None)
    assert blob(app, YOUNG_ONLY) == ("purged", None)
    assert all(inbound_raw(app, i) == b"" for i in young)
    assert all(inbound_raw(app, i) != b"" for i in reopened)


def test_purged_bytes_arriving_again_are_stored_again(kept: DeskHarness) -> None:
    app = kept.app
    lifecycle.sweep(app.sessions, app.desk, NOW)
    assert blob(app, OLD_ONLY) == ("purged", None)
    receive(kept, mail_with(EDITOR, "Weer die fout", ("fout.png", OLD_ONLY)),
            NOW + timedelta(hours=1))
    assert blob(app, OLD_ONLY) == ("database", OLD_ONLY)
    with app.sessions() as s:
        assert blobs.get(s, app.settings.attachments, sha(OLD_ONLY)) == OLD_ONLY


def test_pending_mail_stays_and_an_emptied_mail_is_never_retried(kept: DeskHarness) -> None:
    app = kept.app
    rows = sorted(outbox_raws(app, "SD-1"))
    with transaction(app.sessions) as s:  # one still to send, one refused for good
        s.execute(update(Outbox).where(Outbox.id == rows[0]).values(
            status=OutboxStatus.PENDING))
        s.execute(update(Outbox).where(Outbox.id == rows[1]).values(
            status=OutboxStatus.FAILED))
    lifecycle.sweep(app.sessions, app.desk, NOW)
    after = outbox_raws(app, "SD-1")
    assert after[rows[0]][1] > 0
    assert after[rows[1]] == (OutboxStatus.FAILED, 0)
    with transaction(app.sessions) as s:
        assert sender.retry(s, FixedClock(NOW), rows[1]) == 0


def test_directory_store_deletes_the_file_and_keeps_a_shared_one(
        make_settings: SettingsFactory, tmp_path: Path) -> None:
    store = tmp_path / "blobs"
    app = App(make_settings(retention={"attachments_days": 7},
                            attachments={"store": "directory", "directory": str(store)}))
    upgrade(app.engine)
    register_demo(app)
    register_more(app)
    desk = DeskHarness(app)
    try:
        receive(desk, mail_with(EDITOR, "Oud", ("a.pdf", SHARED), ("b.png", OLD_ONLY)),
                NOW - timedelta(days=20))
        receive(desk, mail_with(OTHER_EDITOR, "Nieuw", ("a.pdf", SHARED)),
                NOW - timedelta(days=20))
        close(app, "SD-1", NOW - timedelta(days=8))
        close(app, "SD-2", NOW - timedelta(days=6))
        files = {p.name for p in store.rglob("*") if p.is_file()}
        assert files == {sha(SHARED), sha(OLD_ONLY)}
        result = retention.purge(app.sessions, app.settings, NOW)
        assert result.attachments.tickets == ["SD-1"] and result.raw.enabled is False
        assert {p.name for p in store.rglob("*") if p.is_file()} == {sha(SHARED)}
        assert blob(app, OLD_ONLY) == ("purged", None)
        assert blob(app, SHARED) == ("directory", None)
        assert all(inbound_raw(app, i) != b"" for i in ids_of(app, "SD-1"))  # raw: off
    finally:
        app.close()


def test_off_by_default(app: App) -> None:
    desk = DeskHarness(app)
    receive(desk, mail_with(EDITOR, "Oud", ("b.png", OLD_ONLY)), NOW - timedelta(days=4000))
    close(app, "SD-1", NOW - timedelta(days=3999))
    result = lifecycle.sweep(app.sessions, app.desk, NOW)
    assert (result.raw_purged, result.attachments_purged) == (0, 0)
    assert blob(app, OLD_ONLY) == ("database", OLD_ONLY)
    with app.sessions() as s:  # not even a cursor row: the steps return before any query
        assert s.execute(select(Setting).where(Setting.name.like("retention.%"))).first() \
            is None


def test_batches_walk_the_cursor(make_settings: SettingsFactory) -> None:
    """Five tickets closed the same second, batches of two: each is purged once."""
    app = App(make_settings(retention={"raw_days": 1}))
    upgrade(app.engine)
    register_demo(app)
    desk = DeskHarness(app)
    try:
        for i in range(5):
            receive(desk, make_mail(EDITOR, f"Vraag {i}"), NOW - timedelta(days=3))
        for i in range(5):
            close(app, f"SD-{i + 1}", NOW - timedelta(days=2))
        dry = retention.purge(app.sessions, app.settings, NOW, dry_run=True, batch=2)
        assert dry.raw.tickets == [f"SD-{i}" for i in range(1, 6)]
        done = retention.purge(app.sessions, app.settings, NOW, batch=2)
        assert done.raw.tickets == dry.raw.tickets and done.raw.inbound == 5
        with app.sessions() as s:
            assert s.execute(select(func.count()).select_from(Event).where(
                Event.kind == "ticket.raw_purged")).scalar_one() == 5
            assert not s.execute(select(Inbound.id).where(func.length(Inbound.raw) > 0)).all()
        assert retention.purge(app.sessions, app.settings, NOW).raw.tickets == []
    finally:
        app.close()


RETENTION_INDEXES = {"ix_ticket_closed_at", "ix_inbound_ticket_id", "ix_outbox_ticket_id",
                     "ix_attachment_sha256"}


def indexes(engine: Engine) -> set[str]:
    with engine.connect() as conn:
        found = inspect(conn)
        return {str(ix["name"]) for table in ("ticket", "inbound", "outbox", "attachment")
                for ix in found.get_indexes(table)}


def test_migration_0006_fills_closed_at_of_tickets_closed_before_0004(
        make_settings: SettingsFactory) -> None:
    settings = make_settings()
    engine = make_engine(settings.database)
    try:
        migrate_to(engine, "0005")
        closed_at_event = datetime(2025, 5, 2, 9, 0, tzinfo=UTC)
        with engine.begin() as conn:
            values = {"state": "closed", "priority": "normal", "kind": "request",
                      "requester": EDITOR, "requester_name": "", "subject": "s",
                      "language": "nl", "created_at": datetime(2025, 5, 1, tzinfo=UTC),
                      "updated_at": datetime(2025, 5, 3, tzinfo=UTC), "reminders_sent": 0}
            conn.execute(insert(Ticket.__table__), [
                {**values, "id": 1, "number": 1, "ref": "SD-1"},
                {**values, "id": 2, "number": 2, "ref": "SD-2"},
                {**values, "id": 3, "number": 3, "ref": "SD-3", "state": "open"}])
            conn.execute(insert(Event.__table__), [
                {"at": datetime(2025, 5, 1, 12, 0, tzinfo=UTC), "kind": "ticket.state",
                 "ticket_id": 1, "detail": {"to": "resolved"}},
                {"at": closed_at_event, "kind": "ticket.state", "ticket_id": 1,
                 "detail": {"to": "closed"}},
                {"at": datetime(2025, 5, 2, 10, 0, tzinfo=UTC), "kind": "ticket.note",
                 "ticket_id": 1, "detail": {}}])
        upgrade(engine)
        with engine.connect() as conn:
            rows = {r: c for r, c in conn.execute(text("SELECT ref, closed_at FROM ticket"))}
        assert naive(rows["SD-1"]) == datetime(2025, 5, 2, 9, 0)  # its last state change
        assert naive(rows["SD-2"]) == datetime(2025, 5, 3)  # no events: its last update
        assert rows["SD-3"] is None  # not closed
        assert indexes(engine) >= RETENTION_INDEXES
        migrate_to(engine, "0005", down=True)
        assert not RETENTION_INDEXES & indexes(engine)
        upgrade(engine)
        assert indexes(engine) >= RETENTION_INDEXES
    finally:
        engine.dispose()
