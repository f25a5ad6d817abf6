"""What `mailgate deliver` and `mailgate --help` import (issue 11, item 1).

Postfix starts `mailgate deliver` once per mail and ops type `--help` at a prompt: neither may
pay for the ORM, Alembic, the mail parser, DKIM, HTML-to-text, language detection,
templates or the scheduler. Timing would be flaky on a shared machine; the set of imported
modules is not, so these tests read it from ``python -X importtime`` (every module a
process imports, one line each) of the real command in a subprocess. bench/deliver.py
measures the time. On PostgreSQL even the driver's import is over the goal: `deliver` hands the
mail to the running daemon's listener first (mailgate/inbound/handoff.py) and imports no
database driver at all unless that fails.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from mailgate import cli as entry
from mailgate.cli_commands import cli
from tests.support.desk import DESK, EDITOR, RunningDaemon
from tests.support.mails import make_mail, wire
from tests.support.sink import free_port

# Heavy, and none of them needed to store a mail or print help.
HEAVY = ("sqlalchemy.orm", "alembic", "jinja2", "mailparser", "dkim", "inscriptis", "lingua",
         "apscheduler", "aiosmtpd", "charset_normalizer", "mailgate.db.models",
         "mailgate.tickets", "mailgate.app", "mailgate.worker", "mailgate.mail.parse")


Run = subprocess.CompletedProcess[bytes]


def imported(args: list[str], stdin: bytes = b"",
             env: dict[str, str] | None = None) -> tuple[set[str], Run]:
    """The modules `python -m mailgate ARGS` imports, and how it ended."""
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "mailgate", *args],
                          input=stdin, capture_output=True, timeout=60,
                          env={**os.environ, **(env or {})})
    names = set(re.findall(rb"^import time:\s+\d+ \|\s+\d+ \|\s*(\S+)$",
                           proc.stderr, re.MULTILINE))
    return {n.decode() for n in names}, proc


def heavy_in(modules: set[str]) -> list[str]:
    return sorted(m for m in modules if any(m == h or m.startswith(h + ".") for h in HEAVY))


def _config(tmp_path: Path, url: str, handoff: str = "never", smtp_port: int = 2525) -> Path:
    path = tmp_path / "mailgate.toml"
    path.write_text(f'state_dir = "{tmp_path / "var"}"\n[desk]\naddress = "{DESK}"\n'
                    f'complaints_address = "complaints@desk.example"\n'
                    f'[database]\nurl = "{url}"\n[smtp]\nport = {smtp_port}\n'
                    f'[deliver]\nhandoff = "{handoff}"\n')
    return path


def test_the_check_sees_what_a_command_imports() -> None:
    """Else an empty set would pass every test below."""
    modules, proc = imported(["--version"])
    assert proc.returncode == 0 and {"mailgate.cli", "click"} <= modules


def test_help_imports_nothing_heavy() -> None:
    modules, proc = imported(["--help"])
    assert proc.returncode == 0 and b"deliver" in proc.stdout
    assert heavy_in(modules) == []
    assert "sqlalchemy" not in modules and "mailgate.config" not in modules


@pytest.mark.parametrize("command", [["tickets", "list"], ["deliver"], ["db", "upgrade"],
                                     ["serve"]], ids=" ".join)
def test_a_commands_help_imports_nothing_heavy(command: list[str]) -> None:
    modules, proc = imported([*command, "--help"])
    assert proc.returncode == 0, proc.stderr[-500:]
    assert heavy_in(modules) == [] and "sqlalchemy" not in modules


@pytest.mark.parametrize("shape", [
    ["deliver"],
    ["deliver", "-f", EDITOR, "-r", DESK],
    ["deliver", "--sender=" + EDITOR, "--recipient", DESK],
], ids=["bare", "short-options", "long-options"])
def test_deliver_imports_only_what_storing_needs(
        database_url: str, tmp_path: Path, shape: list[str]) -> None:
    from mailgate.app import App
    from mailgate.config import load
    from mailgate.db.migrate import upgrade

    config = _config(tmp_path, database_url)
    app = App(load(config))
    upgrade(app.engine)
    app.close()
    modules, proc = imported(["--config", str(config), *shape],
                             wire(make_mail(EDITOR, "Pipe")), {"SENDER": EDITOR})
    assert proc.returncode == 0, proc.stderr[-800:]
    assert b"stored as inbound 1" in proc.stdout
    assert heavy_in(modules) == []
    # Not SQLAlchemy at all (its import alone is slower than the goal), nor the click tree:
    # the plain `deliver` line is read without it.
    assert "sqlalchemy" not in modules and "click" not in modules
    assert "mailgate.cli_commands" not in modules
    # The direct store ("never"): no SMTP client either.
    assert "smtplib" not in modules and "mailgate.inbound.pipe" in modules


def test_the_hand_off_imports_no_database_driver(
        daemon: RunningDaemon, tmp_path: Path) -> None:
    """Handed to the running daemon's listener, `deliver` imports neither psycopg nor sqlite3
    nor the direct store: the driver's import is what the hand-off saves."""
    url = daemon.app.settings.database.url
    config = _config(tmp_path, url, "auto" if url.startswith("postgresql") else "always",
                     daemon.port)
    modules, proc = imported(["--config", str(config), "deliver", "-r", DESK],
                             wire(make_mail(EDITOR, "Via de listener")), {"SENDER": EDITOR})
    assert proc.returncode == 0, proc.stderr[-800:]
    assert b"stored as inbound 1" in proc.stdout and b"handed to the listener" in proc.stderr
    assert "smtplib" in modules, "the check must see the hand-off's own import"
    assert heavy_in(modules) == []
    for module in ("psycopg", "sqlite3", "sqlalchemy", "click", "mailgate.inbound.pipe",
                   "mailgate.db.dbapi"):
        assert module not in modules, module


def test_with_the_daemon_down_psycopg_comes_in_after_all(
        database_url: str, tmp_path: Path) -> None:
    """The hand-off failing (nothing listens), the direct store imports the driver: the
    import check above is no accident of the configuration."""
    if not database_url.startswith("postgresql"):
        pytest.skip("the hand-off is tried by default on PostgreSQL only")
    from mailgate.app import App
    from mailgate.config import load
    from mailgate.db.migrate import upgrade

    config = _config(tmp_path, database_url, "auto", free_port())
    app = App(load(config))
    upgrade(app.engine)
    app.close()
    modules, proc = imported(["--config", str(config), "deliver", "-r", DESK],
                             wire(make_mail(EDITOR, "Daemon weg")), {"SENDER": EDITOR})
    assert proc.returncode == 0, proc.stderr[-800:]
    assert b"stored as inbound 1" in proc.stdout and b"storing directly" in proc.stderr
    assert {"smtplib", "psycopg", "mailgate.inbound.pipe"} <= modules
    assert heavy_in(modules) == [] and "sqlalchemy" not in modules


def test_deliver_in_a_shape_only_click_reads_is_lean_too(tmp_path: Path) -> None:
    """`-fSENDER` (an option glued to its value) goes to click: slower, still no ORM."""
    config = _config(tmp_path, f"sqlite:///{tmp_path / 'm.db'}")
    modules, proc = imported(["--config", str(config), "deliver", f"-f{EDITOR}"],
                             wire(make_mail(EDITOR, "x")))
    assert proc.returncode == 75, "no schema yet: the MTA retries"
    assert "mailgate.cli_commands" in modules and heavy_in(modules) == []
    assert "sqlalchemy" not in modules


def test_a_broken_config_still_names_key_and_reason(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text('[database]\nbusy_timeout_ms = "soon"\n')
    _modules, proc = imported(["--config", str(config), "deliver"], b"Subject: x\r\n\r\nx\r\n")
    assert proc.returncode == 78
    assert b"database.busy_timeout_ms: must be a whole number" in proc.stderr


@pytest.mark.parametrize("args", [
    ["deliver"],
    ["--config", "c.toml", "deliver"],
    ["--config=c.toml", "deliver", "-f", "a@x.example"],
    ["deliver", "-r", "a@x.example", "--recipient", "b@x.example", "--sender=s@x.example"],
    ["deliver", "--sender", "-r"],  # an option's value may look like an option
])
def test_the_plain_deliver_line_reads_as_click_reads_it(args: list[str]) -> None:
    """The fast way and click must agree on every line the fast way takes."""
    plain = entry.plain_deliver(args)
    assert plain is not None
    at = args.index("deliver")
    group = cli.make_context("mailgate", [*args[:at], "deliver"])
    command = cli.commands["deliver"].make_context("deliver", args[at + 1:], parent=group)
    recipients = list(command.params["recipient"]) or None
    assert plain == (group.params["config_path"], command.params["sender"], recipients)


@pytest.mark.parametrize("args", [
    [], ["--help"], ["tickets", "list"], ["deliver", "--help"], ["deliver", "-h"],
    ["deliver", f"-f{EDITOR}"], ["deliver", "-f"], ["deliver", "--sender"],
    ["deliver", "--bogus"], ["deliver", "extra"], ["--confi", "x", "deliver"],
    ["deliver", "--config", "x"], ["--version", "deliver"], ["deliver", "--", "-f"],
])
def test_other_lines_go_to_click(args: list[str]) -> None:
    assert entry.plain_deliver(args) is None
