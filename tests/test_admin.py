"""Admin commands: `mailgate doctor` against the real parts (SMTP sink as relay, a closed
port, the private Dovecot, an empty database), `mailgate stats` over tickets made through the
desk harness with a fixed clock, and `mailgate tickets search`. Both databases.

The commands run in-process through :func:`mailgate.cli.main` (real exit codes, output
captured); one doctor run is a real subprocess, as ops would start it."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session

from mailgate import doctor, stats
from mailgate.app import App
from mailgate.cli import main
from mailgate.clock import FixedClock, SystemClock
from mailgate.db.engine import make_engine
from mailgate.tickets import lifecycle
from tests.support.desk import EDITOR
from tests.support.dovecot import DEFAULT_PASSWORD, DEFAULT_USER, DovecotServer
from tests.support.harness import DeskHarness
from tests.support.mails import make_mail
from tests.support.sink import SmtpSink, free_port
from tests.test_cli import Cli
from tests.tickets.conftest import AGENT, OTHER_EDITOR, STRANGER, register_more

pytestmark = pytest.mark.timeout(120)

BXL = ZoneInfo("Europe/Brussels")


def at(day: int, hour: int, minute: int = 0, month: int = 12) -> datetime:
    """A Brussels wall-clock time in 2026, as the UTC moment the database keeps."""
    return datetime(2026, month, day, hour, minute, tzinfo=BXL).astimezone(UTC)


def write_config(path: Path, app: App, relay_port: int,
                 imap: tuple[dict[str, Any], ...] = ()) -> Path:
    """A TOML file for the app's database, a relay on ``relay_port`` and IMAP accounts."""
    lines = [f'state_dir = "{path.parent / "var"}"',
             "[desk]", 'address = "servicedesk@desk.example"',
             'complaints_address = "complaints@desk.example"',
             "[database]", f'url = "{app.settings.database.url}"',
             "[outbound]", 'relay_host = "127.0.0.1"', f"relay_port = {relay_port}",
             "timeout_seconds = 5"]
    for account in imap:
        lines.append("[[imap]]")
        lines += [f"{k} = {json.dumps(v)}" for k, v in account.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def run(capsys: pytest.CaptureFixture[str], config: Path, *args: str) -> tuple[int, str, str]:
    """`mailgate --config CONFIG ARGS` in this process: (exit code, stdout, stderr)."""
    with pytest.raises(SystemExit) as exited:
        main(["--config", str(config), *args])
    out = capsys.readouterr()
    return int(exited.value.code or 0), out.out, out.err


def lines_by_check(out: str) -> dict[str, str]:
    """Doctor's text output: the line of each check, keyed by the check's name."""
    found = {}
    for line in out.splitlines():
        for name in ("config", "database", "relay", "maildir", "imap desk", "templates",
                     "clock"):
            if line.startswith(name + " "):
                found[name] = line
    return found


def account(server: DovecotServer, password: str = DEFAULT_PASSWORD) -> dict[str, Any]:
    return {"name": "desk", "host": server.host, "port": server.port, "ssl": False,
            "username": DEFAULT_USER, "password": password, "timeout_seconds": 5}


# --- doctor ---------------------------------------------------------------------------------


def test_doctor_all_ok_against_the_real_relay_and_dovecot(
        app: App, sink: SmtpSink, dovecot_server: DovecotServer, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    config = write_config(tmp_path / "ok.toml", app, sink.port, (account(dovecot_server),))
    code, out, err = run(capsys, config, "doctor")
    assert code == 0, out + err
    lines = lines_by_check(out)
    assert list(lines) == ["config", "database", "relay", "imap desk", "templates", "clock"]
    assert all("  OK    " in line for line in lines.values()), out
    assert f"127.0.0.1:{sink.port} accepts <servicedesk@desk.example>" in lines["relay"]
    assert "'INBOX' has 0 mail(s); created 'Processed', 'Failed'" in lines["imap desk"]
    assert "Europe/Brussels" in lines["clock"]
    # The checks talk, never send: the relay got no mail.
    assert sink.messages == []
    with dovecot_server.imap_client(DEFAULT_USER, DEFAULT_PASSWORD) as client:
        assert client.folder_exists("Processed") and client.folder_exists("Failed")

    code, out, _ = run(capsys, config, "doctor", "--json")
    assert code == 0
    assert [(r["check"], r["status"], r["ok"]) for r in json.loads(out)] == [
        (name, "OK", True) for name in lines]


def test_doctor_names_a_wrong_imap_password_and_an_unreachable_relay(
        app: App, dovecot_server: DovecotServer, tmp_path: Path) -> None:
    """As ops run it (a real process): each fault on one line, exit 1."""
    closed = free_port()
    config = write_config(tmp_path / "bad.toml", app, closed,
                          (account(dovecot_server, password="wrongpw"),))
    result = Cli(config)("doctor")
    assert result.returncode == doctor.EX_CHECK_FAILED, result.stderr
    lines = lines_by_check(result.stdout)
    assert lines["relay"].split()[1] == "FAIL"
    assert f"relay 127.0.0.1:{closed} unreachable" in lines["relay"]
    assert lines["imap desk"].split()[2] == "FAIL"
    assert f"login failed for user 'desk' on {dovecot_server.host}:{dovecot_server.port}" \
        in lines["imap desk"]
    for name in ("config", "database", "templates", "clock"):
        assert lines[name].split()[1] == "OK", result.stdout
    assert "2 of 6 checks failed: relay, imap desk" in result.stderr


def test_doctor_on_an_empty_database_names_the_fix(database_url: str, sink: SmtpSink,
                                                   tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "empty.toml"
    config.write_text(f'[database]\nurl = "{database_url}"\n[outbound]\n'
                      f'relay_host = "127.0.0.1"\nrelay_port = {sink.port}\n')
    code, out, _ = run(capsys, config, "doctor")
    assert code == doctor.EX_CHECK_FAILED
    line = lines_by_check(out)["database"]
    assert "FAIL" in line and "empty database" in line and "run `mailgate db upgrade`" in line


def test_doctor_on_a_broken_config_prints_the_line_and_exits_78(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "broken.toml"
    config.write_text('[smtp]\nport = "twenty-five"\n')
    code, out, err = run(capsys, config, "doctor")
    assert code == 78
    assert out.strip() == ("config  FAIL  smtp.port: must be a whole number, got "
                           "'twenty-five' (fix the key in the config file)")
    assert "configuration error: smtp.port" in err


class _RefusingSender:
    async def handle_MAIL(self, server: SMTP, session: Session, envelope: Envelope,
                          address: str, mail_options: list[str]) -> str:
        return "550 5.7.1 Sender address rejected: not owned by you"


@pytest.fixture
def refusing_relay() -> Iterator[int]:
    controller = Controller(_RefusingSender(), hostname="127.0.0.1", port=free_port())
    controller.start()
    yield int(controller.port)
    controller.stop()


def test_doctor_relay_that_refuses_our_sender(app: App, refusing_relay: int) -> None:
    from dataclasses import replace

    settings = replace(app.settings, outbound=replace(app.settings.outbound,
                                                      relay_port=refusing_relay))
    result = doctor.relay(settings)
    assert result.status == "FAIL"
    assert result.detail.startswith(f"relay 127.0.0.1:{refusing_relay} refuses our sender "
                                    "<servicedesk@desk.example>: 550 5.7.1 Sender address "
                                    "rejected")


def test_doctor_maildir(tmp_path: Path) -> None:
    assert doctor.maildir(str(tmp_path / "out" / "maildir")).detail.endswith(
        f"will be created (in {tmp_path})")
    (tmp_path / "box").mkdir()
    assert doctor.maildir(str(tmp_path / "box")).status == "OK"
    (tmp_path / "file").write_text("")
    bad = doctor.maildir(str(tmp_path / "file" / "maildir"))
    assert (bad.check, bad.status) == ("maildir", "FAIL")
    assert "is not a directory" in bad.detail


def test_doctor_clock_compares_with_the_database_server(app: App) -> None:
    if app.engine.dialect.name == "sqlite":  # one clock: this machine's
        result = doctor.clock(app.settings, app.engine,
                              now=lambda: datetime(2026, 7, 1, 10, tzinfo=UTC))
        assert result == doctor.Result(
            "clock", "OK", "desk time 2026-07-01 12:00:00 Europe/Brussels (CEST, UTC+02:00)")
        return
    good = doctor.clock(app.settings, app.engine)
    assert good.status == "OK" and "database server clock within" in good.detail
    skewed = doctor.clock(app.settings, app.engine,
                          now=lambda: datetime.now(UTC) - timedelta(seconds=60))
    assert skewed.status == "WARN"
    assert "behind the database server's: sync both with NTP" in skewed.detail


def test_doctor_database_unreachable() -> None:
    from mailgate.config import DatabaseSettings

    engine = make_engine(DatabaseSettings(
        url="postgresql+psycopg://mg:hunter2@127.0.0.1:1/mg"))
    try:
        result = doctor.database(engine)
    finally:
        engine.dispose()
    assert result.status == "FAIL"
    assert result.detail.startswith("cannot reach postgresql+psycopg://mg:***@127.0.0.1:1/mg")
    assert "hunter2" not in result.detail


# --- stats and search: tickets through the desk ---------------------------------------------


def _receive(desk: DeskHarness, msg: EmailMessage, when: datetime,
             channel: str = "smtp") -> Any:
    desk.app.clock = FixedClock(when)
    return desk.receive(msg, channel=channel)


def _request(desk: DeskHarness, subject: str, when: datetime, body: str = "",
             sender: str = EDITOR, channel: str = "smtp") -> tuple[str, EmailMessage]:
    """A new ticket from an editor: (its ref, the agents' notice)."""
    row = _receive(desk, make_mail(sender, subject, body), when, channel)
    assert row.status == "ticket", row.reason
    return desk.tickets()[-1], desk.outbox(agents=True)[-1]


def _agent(desk: DeskHarness, notice: EmailMessage, body: str, when: datetime) -> None:
    mail = make_mail(AGENT, f"Re: {notice['Subject']}", body,
                     headers={"In-Reply-To": notice["Message-ID"],
                              "References": notice["Message-ID"]})
    row = _receive(desk, mail, when)
    assert row.status == "ticket", row.reason


@pytest.fixture
def busy_desk(app: App) -> DeskHarness:
    """Monday 14 December 2026 and after (first response due 4 business hours after 09:xx):

    - SD-1, 1 Nov: outside a 30-day window seen from 22 Dec;
    - SD-2 09:00, answered 09:30 (in time); SD-3 09:05, answered Tuesday 09:00 (late);
    - SD-4 09:10 (by IMAP), asked a question and set waiting 10:00 (in time), closed by
      the sweep on 22 Dec; SD-5 09:15, closed by the agent unanswered;
    - SD-6 22 Dec 11:00, not due yet; a stranger's mail, refused.
    """
    register_more(app)
    desk = DeskHarness(app)
    _request(desk, "Oude vraag", at(1, 10, month=11))
    _, n2 = _request(desk, "Menu weg", at(14, 9, 0))
    _agent(desk, n2, "Het menu staat terug online.", at(14, 9, 30))
    _, n3 = _request(desk, "Contactformulier kapot", at(14, 9, 5),
                     "Na verzenden zie ik foutcode 50%_X op de pagina.")
    _agent(desk, n3, "Opgelost, de module is bijgewerkt.", at(15, 9, 0))
    _, n4 = _request(desk, "Nieuwsbrief", at(14, 9, 10),
                     "De nieuwsbrief vertrekt niet, de teller staat op 500 fox.",
                     channel="imap:desk")
    _agent(desk, n4, "#wait\nWelke lijst gebruikt u?", at(14, 10, 0))
    _, n5 = _request(desk, "Dubbele melding", at(14, 9, 15), sender=OTHER_EDITOR)
    _agent(desk, n5, "#close", at(14, 11, 0))
    assert lifecycle.sweep(app.sessions, app.desk, at(22, 9, 0)).closed == 1
    _request(desk, "Afbeelding ontbreekt", at(22, 11, 0))
    refused = _receive(desk, make_mail(STRANGER, "Hallo"), at(22, 11, 30))
    assert refused.status == "refused"
    app.clock = FixedClock(at(22, 12, 0))
    return desk


def test_stats_over_the_window(busy_desk: DeskHarness, tmp_path: Path,
                               monkeypatch: pytest.MonkeyPatch,
                               capsys: pytest.CaptureFixture[str]) -> None:
    app = busy_desk.app
    with app.sessions() as session:
        data = stats.stats(session, app.clock.now(), 30)
    assert data["since"] == "2026-11-22T11:00:00Z" and data["until"] == "2026-12-22T11:00:00Z"
    assert data["tickets"] == {
        "created": 5,  # SD-1 of 1 November is outside
        "by_state": {"closed": 2, "new": 1, "open": 2},
        "first_response": {
            "with_due": 5, "answered_in_time": 2, "answered_late": 1, "unanswered": 1,
            "running": 1, "share_in_time": 0.5, "answered": 3,
            # 30 min (SD-2), 50 min (SD-4), Monday 09:05 to Tuesday 09:00 (SD-3): wall clock.
            "median_minutes": 50.0}}
    assert data["closed"] == {"closed": 2, "by_sweep": 1, "share_by_sweep": 0.5}
    assert [(r["channel"], r["kind"], r["status"], r["count"]) for r in data["inbound"]] == [
        ("imap:desk", "new-request", "ticket", 1),
        ("smtp", "agent-command", "ticket", 2),
        ("smtp", "agent-reply", "ticket", 2),
        ("smtp", "new-request", "ticket", 4),  # not SD-1's, outside the window
        ("smtp", "stranger", "refused", 1)]

    with app.sessions() as session:
        recent = stats.stats(session, app.clock.now(), 1)
    assert recent["tickets"]["created"] == 1
    assert recent["closed"] == {"closed": 1, "by_sweep": 1, "share_by_sweep": 1.0}

    # The command, as of the same moment: the dict as JSON, aligned tables as text.
    monkeypatch.setattr(SystemClock, "now", lambda self: at(22, 12, 0))
    config = write_config(tmp_path / "c.toml", app, 25)
    code, out, _ = run(capsys, config, "stats", "--json")
    assert code == 0 and json.loads(out) == data
    code, out, _ = run(capsys, config, "stats", "--days", "30")
    assert code == 0
    assert out.startswith("last 30 days: 2026-11-22 11:00 to 2026-12-22 11:00 UTC\n")
    for line in ("imap:desk  new-request    ticket   1",
                 "smtp       stranger       refused  1",
                 "tickets created: 5",
                 "closed  2",
                 "answered within the SLA     50.0% (2 of 4; 1 late, 1 unanswered, "
                 "1 not due yet)",
                 "median first-response time  50 min (wall clock, 3 answered)",
                 "closed by the sweep         50.0% (1 of 2 closed)"):
        assert line in out, out
    code, _, err = run(capsys, config, "stats", "--days", "0")
    assert code == 64, err


def test_tickets_search(busy_desk: DeskHarness, tmp_path: Path,
                        capsys: pytest.CaptureFixture[str]) -> None:
    config = write_config(tmp_path / "c.toml", busy_desk.app, 25)

    def refs(text: str) -> list[str]:
        code, out, err = run(capsys, config, "tickets", "search", text, "--json")
        assert code == 0, err
        return [t["ref"] for t in json.loads(out)]

    subjects = ["Oude vraag", "Menu weg", "Contactformulier kapot", "Nieuwsbrief",
                "Dubbele melding", "Afbeelding ontbreekt"]
    ref = dict(zip(subjects, busy_desk.tickets(), strict=True))
    news, form = ref["Nieuwsbrief"], ref["Contactformulier kapot"]
    assert refs("NIEUWSBRIEF") == [news]                   # subject and body, any case
    assert refs("foutcode") == [form]                      # body only
    assert refs("50%_x") == [form]                         # % and _ literal: not "500 fox"
    assert refs("welke lijst") == [news]                   # the agent's question
    assert refs("olivier@") == [ref["Dubbele melding"]]    # requester
    assert refs(news.lower()) == [news]                    # ref
    assert refs("kapot module nergens") == []
    # Newest first.
    assert refs("eva@site1234") == [ref[s] for s in reversed(subjects)
                                    if s != "Dubbele melding"]

    code, out, _ = run(capsys, config, "tickets", "search", "Kapot")
    assert code == 0
    header, *rows = out.splitlines()
    assert header.split() == ["REF", "STATE", "PRIORITY", "SITE_ID", "REQUESTER", "ASSIGNEE",
                              "CREATED_AT", "SUBJECT"]
    assert [r.split()[0] for r in rows] == [form]
    assert rows[0].endswith("Contactformulier kapot")
    code, _, err = run(capsys, config, "tickets", "search", "  ")
    assert code == 64 and "give some text" in err
