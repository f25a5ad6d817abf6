"""Log lines fit for journald (mailgate/logs.py): one line per event with its fields, as text
or JSON (top-level ``log_format``); under journald (``$JOURNAL_STREAM``) the syslog priority
instead of a time.

The formatters are checked on records; the event lines of the way in, the worker and the
sender through the desk harness with a handler on the root logger (both databases), and the
whole chain in real `mailgate deliver` and `mailgate tick` subprocesses."""

from __future__ import annotations

import io
import json
import logging
import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mailgate import logs
from mailgate.app import App
from mailgate.clock import FixedClock
from mailgate.outbound import sender
from tests.support.desk import EDITOR
from tests.support.harness import DeskHarness
from tests.support.mails import make_mail, wire
from tests.support.sink import SmtpSink
from tests.test_cli import Cli, _toml


def record(text: str = "inbound processed", level: int = logging.INFO, /,
           **fields: Any) -> logging.LogRecord:
    rec = logging.LogRecord("mailgate.worker", level, __file__, 1, text, None, None)
    rec.fields = fields
    return rec


# --- the formatters ---------------------------------------------------------------------------

def test_text_line_with_fields_quoted_where_needed() -> None:
    line = logs.TextFormatter().format(record(
        inbound=12, message_id="<a@b>", channel="imap:desk", kind="new-request",
        outcome="ticket", ticket=None, reason='no site "1234"', empty="", ok=True))
    assert re.fullmatch(
        r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z INFO mailgate\.worker: inbound processed "
        r'inbound=12 message_id=<a@b> channel=imap:desk kind=new-request outcome=ticket '
        r'ticket=- reason="no site \\"1234\\"" empty="" ok=true', line), line


def test_text_under_journald_has_the_priority_and_no_time() -> None:
    fmt = logs.TextFormatter(journald=True)
    assert fmt.format(record(inbound=1)) == "<6>INFO mailgate.worker: inbound processed inbound=1"
    assert fmt.format(record("x", logging.WARNING)).startswith("<4>WARNING ")
    assert fmt.format(record("x", logging.ERROR)).startswith("<3>ERROR ")


def test_json_is_one_object_per_line_with_the_fields() -> None:
    try:
        raise RuntimeError("boom\nsecond line")
    except RuntimeError:
        rec = record("outbox failed for good", logging.ERROR, outbox=3, ticket="SD-2",
                     message="clash", to=["a@x", "b@y"])
        rec.exc_info = sys.exc_info()
    line = logs.JsonFormatter().format(rec)
    assert "\n" not in line
    data = json.loads(line)
    assert data["level"] == "ERROR" and data["logger"] == "mailgate.worker"
    assert data["message"] == "outbox failed for good" and data["field_message"] == "clash"
    assert (data["outbox"], data["ticket"], data["to"]) == (3, "SD-2", "a@x,b@y")
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", data["time"])
    assert "RuntimeError: boom" in data["exception"]
    assert logs.JsonFormatter(journald=True).format(record()).startswith('<6>{"time": ')


def test_journal_stream_names_our_stderr(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with open(tmp_path / "err", "w") as stream, open(tmp_path / "other", "w") as other:
        st = os.fstat(stream.fileno())
        monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")
        assert logs.under_journald(stream)
        assert not logs.under_journald(other)
        monkeypatch.delenv("JOURNAL_STREAM")
        assert not logs.under_journald(stream)


def test_setup_replaces_its_own_handler_only() -> None:
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        root.handlers = []
        first, second = io.StringIO(), io.StringIO()
        logs.setup("INFO", "text", first)
        logs.setup("DEBUG", "json", second)
        assert len(root.handlers) == 1 and root.level == logging.DEBUG
        logs.event(logging.getLogger("mailgate.test"), "hello", n=1)
        assert first.getvalue() == ""
        assert json.loads(second.getvalue())["n"] == 1
        with pytest.raises(ValueError, match="log_format"):
            logs.formatter("xml")
    finally:
        root.handlers, root.level = saved  # type: ignore[assignment]
        root.setLevel(saved[1])


# --- the event lines of a mail's way through ---------------------------------------------------

@pytest.fixture
def captured() -> Iterator[dict[str, io.StringIO]]:
    """Every mailgate log line, as text and as JSON."""
    streams = {"text": io.StringIO(), "json": io.StringIO()}
    handlers = []
    for name, stream in streams.items():
        h = logging.StreamHandler(stream)
        h.setFormatter(logs.formatter(name))
        handlers.append(h)
    logger = logging.getLogger("mailgate")
    level = logger.level
    logger.setLevel(logging.INFO)
    for h in handlers:
        logger.addHandler(h)
    yield streams
    for h in handlers:
        logger.removeHandler(h)
    logger.setLevel(level)


def json_lines(stream: io.StringIO, message: str) -> list[dict[str, Any]]:
    found = [json.loads(line) for line in stream.getvalue().splitlines()]
    return [d for d in found if d["message"] == message]


def test_one_line_per_mail_stored_processed_and_sent(app: App,
                                                     captured: dict[str, io.StringIO]) -> None:
    desk = DeskHarness(app)
    first = make_mail(EDITOR, "Contactformulier stuk", sender_name="Eva Editor")
    desk.receive(first)
    desk.receive(first)  # the same mail again: stored once, processed once
    desk.receive(make_mail("someone@elsewhere.example", "Hallo"))
    sender.flush(app.sessions, FixedClock(app.clock.now()), app.settings.outbound, app.transport)

    stored = json_lines(captured["json"], "inbound stored")
    # Row ids as the database gives them (on PostgreSQL the duplicate's INSERT … ON
    # CONFLICT DO NOTHING uses up a sequence value, so the second row need not be 2).
    a, b = stored[0]["inbound"], stored[2]["inbound"]
    assert [(d["inbound"], d["duplicate"]) for d in stored] == [(a, False), (a, True),
                                                                (b, False)]
    assert b > a
    assert stored[0]["channel"] == "smtp" and stored[0]["message_id"] == first["Message-ID"]

    processed = json_lines(captured["json"], "inbound processed")
    assert len(processed) == 2
    one, two = processed
    assert {k: one[k] for k in ("inbound", "message_id", "channel", "kind", "outcome",
                                "ticket", "rule")} == {
        "inbound": a, "message_id": first["Message-ID"], "channel": "smtp",
        "kind": "new-request", "outcome": "ticket", "ticket": "SD-1", "rule": "new-request"}
    assert (two["inbound"], two["outcome"], two["ticket"]) == (b, "refused", None)
    assert {"time", "level", "logger"} <= set(one) and one["logger"] == "mailgate.worker"

    sent = json_lines(captured["json"], "outbox sent")
    assert {(d["ticket"], d["kind"], d["outcome"]) for d in sent} >= {
        ("SD-1", "ack", "sent"), (None, "refusal", "sent")}

    text = captured["text"].getvalue()
    assert re.search(rf"INFO mailgate\.worker: inbound processed inbound={a} message_id=\S+ "
                     r"channel=smtp kind=new-request outcome=ticket ticket=SD-1 "
                     r"rule=new-request$", text, re.MULTILINE), text
    assert re.search(rf"inbound processed inbound={b} .*outcome=refused ticket=- ", text)
    assert re.search(r"outbox sent outbox=\d+ ticket=SD-1 kind=ack outcome=sent ", text)


def test_quarantine_is_a_warning_line(app: App, captured: dict[str, io.StringIO],
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from mailgate import worker

    def broken(*_a: Any, **_k: Any) -> Any:
        raise RuntimeError("rule table on fire")

    monkeypatch.setattr(worker, "classify", broken)
    DeskHarness(app).receive(make_mail(EDITOR, "Vraag"))
    [line] = json_lines(captured["json"], "inbound quarantined")
    assert line["level"] == "WARNING" and line["outcome"] == "quarantined"
    assert line["inbound"] == 1 and line["reason"] == "RuntimeError: rule table on fire"


# --- the real command ------------------------------------------------------------------------

def test_deliver_and_tick_write_json_lines_and_journald_priorities(
        database_url: str, tmp_path: Path, sink: SmtpSink) -> None:
    config = tmp_path / "mailgate.toml"
    config.write_text('log_format = "json"\n' + _toml(database_url, tmp_path / "var", sink.port))
    cli = Cli(config)
    cli.ok("db", "upgrade")
    cli.ok("sites", "add", "1234", "Demo site")
    cli.ok("editors", "add", "1234", EDITOR)
    mail = make_mail(EDITOR, "Formulier geeft fout 500")
    stored = cli("deliver", "-f", EDITOR, "-r", "servicedesk@desk.example", stdin=wire(mail))
    assert stored.returncode == 0, stored.stderr
    [line] = [json.loads(x) for x in stored.stderr.splitlines()
              if '"inbound stored"' in x]
    assert (line["inbound"], line["channel"], line["duplicate"]) == (1, "pipe", False)

    ticked = cli("tick")
    assert ticked.returncode == 0, ticked.stderr
    lines = [json.loads(x) for x in ticked.stderr.splitlines()]  # every line is JSON
    [processed] = [d for d in lines if d["message"] == "inbound processed"]
    assert (processed["inbound"], processed["outcome"], processed["ticket"],
            processed["message_id"]) == (1, "ticket", "SD-1", mail["Message-ID"])
    assert any(d["message"] == "outbox sent" and d["ticket"] == "SD-1" for d in lines)

    # Under journald, as text: the priority, no time; journald stamps the entry itself.
    config.write_text('log_format = "text"\n' + _toml(database_url, tmp_path / "var",
                                                      sink.port))
    err_path = tmp_path / "stderr"
    with open(err_path, "wb") as err:
        st = os.fstat(err.fileno())
        import subprocess
        proc = subprocess.run(
            [sys.executable, "-m", "mailgate", "--config", str(config), "deliver"],
            input=wire(make_mail(EDITOR, "Nog een vraag")), stdout=subprocess.PIPE,
            stderr=err, timeout=60,
            env={**os.environ, "JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"})
    assert proc.returncode == 0
    [text] = [x for x in err_path.read_text().splitlines() if "inbound stored" in x]
    assert re.fullmatch(r"<6>INFO mailgate\.inbound\.store: inbound stored inbound=2 "
                        r"channel=pipe message_id=<\S+> size=\d+ duplicate=false", text), text


def test_log_format_is_checked(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text('log_format = "xml"\n')
    result = Cli(path)("check-config")
    assert result.returncode == 78
    assert 'log_format: must be "text" or "json"' in result.stderr
