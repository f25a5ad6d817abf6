"""The `mailgate` command as ops and MTAs use it: a real subprocess, real exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import EDITOR
from tests.support.mails import body, make_mail, wire
from tests.support.sink import SmtpSink


def _toml(url: str, state: Path, relay_port: int | None = None, extra: str = "") -> str:
    outbound = (f'relay_host = "127.0.0.1"\nrelay_port = {relay_port}' if relay_port
                else f'maildir = "{state / "maildir"}"')
    return f"""
state_dir = "{state}"
[desk]
name = "Test Desk"
address = "servicedesk@desk.example"
complaints_address = "complaints@desk.example"
[database]
url = "{url}"
busy_timeout_ms = 1000
[outbound]
{outbound}
[deliver]
# Never a daemon that happens to listen on the default port (`make run`): the direct store.
handoff = "never"
{extra}
"""


class Cli:
    def __init__(self, config: Path) -> None:
        self.config = config

    def __call__(self, *args: str, stdin: bytes | None = None,
                 env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        import os
        full_env = {**os.environ, **(env or {})}
        proc = subprocess.run(
            [sys.executable, "-m", "mailgate", "--config", str(self.config), *args],
            input=stdin, capture_output=True, timeout=60, env=full_env)
        return subprocess.CompletedProcess(proc.args, proc.returncode,
                                           proc.stdout.decode(), proc.stderr.decode())

    def ok(self, *args: str, stdin: bytes | None = None) -> str:
        result = self(*args, stdin=stdin)
        assert result.returncode == 0, result.stderr
        return result.stdout


@pytest.fixture
def cli(database_url: str, tmp_path: Path, sink: SmtpSink) -> Cli:
    path = tmp_path / "mailgate.toml"
    path.write_text(_toml(database_url, tmp_path / "var", sink.port))
    return Cli(path)


def test_broken_config_fails_with_key_and_reason(tmp_path: Path) -> None:
    cases = {
        '[smtp]\nport = "twenty-five"\n': "smtp.port: must be a whole number",
        "[smtp]\nprot = 25\n": "smtp.prot: unknown key",
        '[desk]\naddress = "not-an-address"\n': "desk.address: must be an e-mail address",
        '[access]\nunknown_senders = "maybe"\n': "access.unknown_senders",
        '[desk]\ntimezone = "Mars/Olympus"\n': "desk.timezone: unknown time zone",
        "[smtp\n": "is not valid TOML",
    }
    for text, expected in cases.items():
        path = tmp_path / "bad.toml"
        path.write_text(text)
        result = Cli(path)("check-config")
        assert result.returncode == 78, (text, result.stderr)
        assert expected in result.stderr, (text, result.stderr)


def test_check_config_masks_secrets(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[desk]\nsecret = "very-secret-value-123"\n'
                    '[database]\nurl = "postgresql+psycopg://mg:hunter2@db/mg"\n')
    out = Cli(path).ok("check-config")
    assert "very-secret-value-123" not in out and "hunter2" not in out
    settings = json.loads(out)
    assert settings["desk"]["secret"] == "***"
    assert settings["smtp"]["port"] == 2525


def test_example_config_is_valid() -> None:
    example = Path(__file__).resolve().parent.parent / "config" / "mailgate.example.toml"
    assert Cli(example).ok("check-config")


def test_serve_refuses_old_schema_and_names_the_fix(cli: Cli) -> None:
    result = cli("serve")
    assert result.returncode == 78
    assert "mailgate db upgrade" in result.stderr


def test_registry_rules(cli: Cli) -> None:
    cli.ok("db", "upgrade")
    bad = cli("sites", "add", "12a4", "Bad")
    assert bad.returncode == 65 and "4 digits" in bad.stderr
    cli.ok("sites", "add", "1234", "Demo site")
    for i in range(3):
        cli.ok("editors", "add", "1234", f"editor{i}@example.be", "--name", f"E{i}")
    fourth = cli("editors", "add", "1234", "editor3@example.be")
    assert fourth.returncode == 65
    assert "already has 3 editors" in fourth.stderr
    dup = cli("editors", "add", "1234", "EDITOR0@example.be")
    assert dup.returncode == 65 and "already an editor" in dup.stderr
    cli.ok("editors", "remove", "editor1@example.be")
    cli.ok("editors", "add", "1234", "editor3@example.be", "--language", "fr")
    editors = json.loads(cli.ok("editors", "list", "--json"))
    assert [e["email"] for e in editors] == ["editor0@example.be", "editor3@example.be",
                                             "editor2@example.be"]
    cli.ok("agents", "add", "agent@desk.example", "--name", "Alex")
    assert json.loads(cli.ok("agents", "list", "--json")) == [
        {"email": "agent@desk.example", "name": "Alex"}]
    sites = json.loads(cli.ok("sites", "list", "--json"))
    assert sites[0]["site_id"] == "1234" and len(sites[0]["editors"]) == 3


def test_deliver_tick_and_json_contract(cli: Cli, sink: SmtpSink) -> None:
    cli.ok("db", "upgrade")
    cli.ok("sites", "add", "1234", "Demo site")
    cli.ok("editors", "add", "1234", EDITOR, "--name", "Eva")
    raw = wire(make_mail(EDITOR, "Pipe request"))
    assert "stored as inbound 1" in cli.ok("deliver", stdin=raw)
    assert "duplicate" in cli.ok("deliver", stdin=raw)
    pending = json.loads(cli.ok("inbound", "list", "--json"))
    assert [(r["id"], r["status"], r["channel"]) for r in pending] == [(1, "pending", "pipe")]
    out = cli.ok("tick", "--now", "2026-11-30T09:00:00Z")
    assert "processed 1 inbound;" in out and "sent 1," in out
    assert sink.wait_for(1)[0]["Subject"] == "[SD-1] Pipe request"
    ticket = json.loads(cli.ok("tickets", "show", "SD-1", "--json"))
    for key in ("ref", "state", "priority", "kind", "site_id", "requester", "subject",
                "created_at", "first_response_due", "close_at", "linked_to", "messages"):
        assert key in ticket
    assert ticket["created_at"] == "2026-11-30T09:00:00Z"
    # Monday 10:00 Brussels + 4 business hours.
    assert ticket["first_response_due"] == "2026-11-30T13:00:00Z"
    assert [(m["direction"], m["kind"]) for m in ticket["messages"]] == [
        ("in", "request"), ("out", "ack")]
    for m in ticket["messages"]:
        assert set(m) >= {"direction", "kind", "from", "to", "subject", "message_id",
                          "created_at"}
    listed = json.loads(cli.ok("inbound", "list", "--json"))
    assert listed[0]["status"] == "ticket" and listed[0]["ticket"] == "SD-1"
    trail = cli.ok("inbound", "show", "1")
    assert "known-sender: new-request/create" in trail
    assert json.loads(cli.ok("tickets", "list", "--json"))[0]["ref"] == "SD-1"
    outbox = json.loads(cli.ok("outbox", "list", "--json"))
    assert outbox[0]["status"] == "sent" and outbox[0]["kind"] == "ack"
    missing = cli("tickets", "show", "SD-99")
    assert missing.returncode == 66


def test_deliver_rejects_empty_input(cli: Cli) -> None:
    cli.ok("db", "upgrade")
    result = cli("deliver", stdin=b"")
    assert result.returncode == 65


def test_deliver_exits_75_when_storage_is_unavailable(tmp_path: Path) -> None:
    # Nothing listens on port 1: connection refused, as when PostgreSQL is down.
    for url in ("postgresql+psycopg://postgres@127.0.0.1:1/test",
                "sqlite:////proc/mailgate-cannot-write-here/mailgate.db"):
        path = tmp_path / "c.toml"
        path.write_text(_toml(url, tmp_path / "var"))
        result = Cli(path)("deliver", stdin=wire(make_mail(EDITOR, "x")))
        assert result.returncode == 75, (url, result.stderr)
        assert "storage unavailable" in result.stderr


def test_quarantine_replay(cli: Cli) -> None:
    cli.ok("db", "upgrade")
    cli.ok("sites", "add", "1234", "Demo site")
    # No header field at all: nothing to read (a mail with a broken sender is no longer
    # quarantined but ignored with that reason, issue 11).
    cli.ok("deliver", stdin=b"garbage without any header field\r\n\r\nbody\r\n")
    cli.ok("tick")
    [row] = json.loads(cli.ok("quarantine", "list", "--json"))
    assert row["status"] == "quarantined" and "header" in row["reason"]
    shown = cli.ok("quarantine", "show", str(row["id"]), "--raw")
    assert shown.startswith("garbage without any header field")
    assert "1 mail(s) back to pending" in cli.ok("quarantine", "replay", str(row["id"]))
    cli.ok("tick")
    detail = json.loads(cli.ok("inbound", "show", str(row["id"]), "--json"))
    assert [s["rule"] for s in detail["trail"]].count("replay") == 1
    assert detail["status"] == "quarantined"  # still broken: quarantined again, not lost
    usage = cli("quarantine", "replay")
    assert usage.returncode == 64


def test_version_names_the_installed_package() -> None:
    from importlib.metadata import version

    proc = subprocess.run([sys.executable, "-m", "mailgate", "--version"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"mailgate, version {version('mailgate')}"


AGENT_A, AGENT_B = "alex@desk.example", "bea@desk.example"


def _desk_with_ticket(cli: Cli, sink: SmtpSink) -> None:
    """SD-1 from a registered editor (acknowledged), then two agents."""
    cli.ok("db", "upgrade")
    cli.ok("sites", "add", "1234", "Demo site")
    cli.ok("editors", "add", "1234", EDITOR, "--name", "Eva")
    cli.ok("deliver", stdin=wire(make_mail(EDITOR, "Form broken")))
    cli.ok("tick")
    assert sink.wait_for(1)[0]["Subject"] == "[SD-1] Form broken"
    cli.ok("agents", "add", AGENT_A, "--name", "Alex")
    cli.ok("agents", "add", AGENT_B, "--name", "Bea")


def test_tickets_set_applies_agent_commands_all_or_nothing(cli: Cli, sink: SmtpSink) -> None:
    _desk_with_ticket(cli, sink)
    bad = cli("tickets", "set", "SD-1", "--state", "waiting", "--site", "9999", "--by", AGENT_A)
    assert bad.returncode == 65
    assert "#site 9999: site 9999 does not exist" in bad.stderr
    ticket = json.loads(cli.ok("tickets", "show", "SD-1", "--json"))
    assert ticket["state"] == "new" and ticket["site_id"] == "1234"
    assert [e["kind"] for e in ticket["events"] if e["kind"].startswith("ticket.")] == [
        "ticket.created"]
    assert cli("tickets", "set", "SD-1", "--assign", "me").returncode == 64
    assert cli("tickets", "set", "SD-1", "--priority", "urgent",
               "--by", "stranger@example.be").returncode == 65

    out = cli.ok("tickets", "set", "sd-1", "--state", "waiting", "--priority", "urgent",
                 "--assign", AGENT_B, "--by", AGENT_A)
    assert "state new -> waiting" in out and f"assignee - -> {AGENT_B}" in out
    cli.ok("tick")
    assigned = sink.wait_for(2)[1]
    assert assigned["To"] == AGENT_B and "[SD-1]" in assigned["Subject"]
    # Without --by the actor is "cli".
    assert f"assignee {AGENT_B} -> {AGENT_A}" in cli.ok("tickets", "set", "SD-1",
                                                        "--assign", AGENT_A)
    ticket = json.loads(cli.ok("tickets", "show", "SD-1", "--json"))
    assert (ticket["state"], ticket["priority"], ticket["assignee"]) == (
        "waiting", "urgent", AGENT_A)
    events = [(e["kind"], e["detail"]) for e in ticket["events"]
              if e["kind"] in ("ticket.state", "ticket.priority", "ticket.assigned")]
    assert events == [
        ("ticket.state", {"from": "new", "to": "waiting", "by": AGENT_A}),
        ("ticket.priority", {"from": "normal", "to": "urgent", "by": AGENT_A}),
        ("ticket.assigned", {"from": None, "to": AGENT_B, "by": AGENT_A}),
        ("ticket.assigned", {"from": AGENT_B, "to": AGENT_A, "by": "cli"})]

    listed = cli.ok("tickets", "list", "--assigned", AGENT_A.upper(), "--state", "waiting")
    assert "SD-1" in listed and "urgent" in listed and AGENT_A in listed
    assert json.loads(cli.ok("tickets", "list", "--assigned", AGENT_B, "--json")) == []


def test_tickets_note_from_an_agent_reaches_the_other_agents_only(cli: Cli,
                                                                  sink: SmtpSink) -> None:
    _desk_with_ticket(cli, sink)
    stranger = cli("tickets", "note", "SD-1", "--from", "stranger@example.be", stdin=b"hi")
    assert stranger.returncode == 65 and "not a registered agent" in stranger.stderr
    assert cli("tickets", "note", "SD-1", "--from", AGENT_A, stdin=b" \n").returncode == 65
    assert "note added to SD-1" in cli.ok("tickets", "note", "SD-1", "--from", AGENT_A,
                                          stdin=b"Belde Eva: formulier werkt weer.\n")
    cli.ok("tick")
    note_copy = sink.wait_for(2)[1]
    assert note_copy["To"] == AGENT_B and "[SD-1]" in note_copy["Subject"]
    assert "Belde Eva: formulier werkt weer." in body(note_copy)
    assert [r.rcpt_tos for r in sink.handler.received] == [[EDITOR], [AGENT_B]]
    ticket = json.loads(cli.ok("tickets", "show", "SD-1", "--json"))
    note = ticket["messages"][-1]
    assert (note["kind"], note["direction"], note["from"], note["inbound_id"]) == (
        "note", "in", AGENT_A, None)
    assert note["body"] == "Belde Eva: formulier werkt weer."
    assert [e["detail"] for e in ticket["events"] if e["kind"] == "ticket.note"] == [
        {"by": AGENT_A, "via": "cli"}]
    assert ticket["state"] == "new"


def test_tick_now_walks_a_waiting_ticket_to_its_closing(cli: Cli, sink: SmtpSink) -> None:
    """The clock as ops drive it: `tick --now` processes, sweeps and sends, as of that time."""
    agent = "alex@desk.example"
    cli.ok("db", "upgrade")
    cli.ok("sites", "add", "1234", "Demo site")
    cli.ok("editors", "add", "1234", EDITOR, "--name", "Eva")
    cli.ok("agents", "add", agent, "--name", "Alex")
    cli.ok("deliver", stdin=wire(make_mail(EDITOR, "Menu weg")))
    cli.ok("tick", "--now", "2026-12-17T09:00:00Z")  # Thursday
    _ack, notice = sink.wait_for(2)
    assert notice["To"] == agent
    question = make_mail(agent, f"Re: {notice['Subject']}", "#wait\nWelke pagina precies?",
                         headers={"In-Reply-To": notice["Message-ID"]})
    cli.ok("deliver", stdin=wire(question))
    cli.ok("tick", "--now", "2026-12-17T10:00:00Z")
    shown = json.loads(cli.ok("tickets", "show", "SD-1", "--json"))
    assert shown["state"] == "waiting" and shown["sla"] == "met"
    # End of working day 2 (Monday), of day 4 (Wednesday); closing at the end of day 5.
    assert shown["remind_at"] == "2026-12-21T16:00:00Z"
    assert shown["close_at"] == "2026-12-24T16:00:00Z"
    sent = len(sink.wait_for(3))
    for now, reminded, closed in [("2026-12-21T15:59:00Z", 0, 0), ("2026-12-21T16:01:00Z", 1, 0),
                                  ("2026-12-21T18:00:00Z", 0, 0), ("2026-12-23T16:01:00Z", 1, 0),
                                  ("2026-12-24T16:01:00Z", 0, 1)]:
        out = cli.ok("tick", "--now", now)
        assert f"swept: {reminded} reminded, {closed} closed" in out, (now, out)
        sent += reminded + closed
        assert len(sink.wait_for(sent)) == sent
    *_, first, second, closing = sink.wait_for(sent)
    assert {m["To"] for m in (first, second, closing)} == {EDITOR}
    assert "Welke pagina precies?" in body(first)
    assert json.loads(cli.ok("tickets", "show", "SD-1", "--json"))["state"] == "closed"
    # A late reply opens a new ticket linked to the closed one, both ways in the JSON.
    cli.ok("deliver", stdin=wire(make_mail(EDITOR, "Re: [SD-1] Menu weg", "Pagina /contact.",
                                           headers={"In-Reply-To": closing["Message-ID"]})))
    cli.ok("tick", "--now", "2026-12-28T09:00:00Z")
    assert json.loads(cli.ok("tickets", "show", "SD-2", "--json"))["linked_to"] == "SD-1"
    assert json.loads(cli.ok("tickets", "show", "SD-1", "--json"))["linked_from"] == ["SD-2"]


def test_overdue_lists_unanswered_tickets_past_their_due_time(cli: Cli) -> None:
    cli.ok("db", "upgrade")
    cli.ok("sites", "add", "1234", "Demo site")
    cli.ok("editors", "add", "1234", EDITOR, "--name", "Eva")
    cli.ok("deliver", stdin=wire(make_mail(EDITOR, "Oud en vergeten")))
    cli.ok("tick", "--now", "2020-01-06T09:00:00Z")  # long before today
    cli.ok("deliver", stdin=wire(make_mail(EDITOR, "Nog te vroeg")))
    cli.ok("tick", "--now", "2099-01-05T09:00:00Z")  # its due time is still to come
    overdue = json.loads(cli.ok("tickets", "list", "--overdue", "--json"))
    assert [(t["ref"], t["sla"], t["first_response_at"]) for t in overdue] == [
        ("SD-1", "breached", None)]
    everything = json.loads(cli.ok("tickets", "list", "--json"))
    assert [t["sla"] for t in everything] == ["breached", "running"]
