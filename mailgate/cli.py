"""The `mailgate` command. Thin: parses arguments, calls services, prints results.

Queries and their text and JSON views live in :mod:`mailgate.views`; exit codes follow
sysexits (:mod:`mailgate.exitcodes`, docs/design.md §3).
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, NoReturn

import click
from sqlalchemy.orm import Session

from mailgate import config as config_mod
from mailgate import views
from mailgate.app import App
from mailgate.clock import FixedClock, parse_iso
from mailgate.db.engine import is_unavailable, reading, transaction
from mailgate.db.migrate import SchemaOutdated, current_revision, head_revision, upgrade
from mailgate.db.models import Inbound
from mailgate.exitcodes import (
    EX_CONFIG,
    EX_DATAERR,
    EX_NOINPUT,
    EX_OK,
    EX_TEMPFAIL,
    EX_USAGE,
)
from mailgate.mail.references import parse_ref
from mailgate.tickets import registry


class Fail(click.ClickException):
    """An error with its sysexits code, printed without a traceback."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def _app(ctx: click.Context, clock_at: str | None = None) -> App:
    path = ctx.obj["config_path"]
    try:
        settings = config_mod.load(path)
    except config_mod.ConfigError as exc:
        raise Fail(f"configuration error: {exc}", EX_CONFIG) from exc
    logging.basicConfig(level=settings.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # aiosmtpd's "mail.log" writes five INFO lines per mail: noise at a desk's volume.
    for noisy in ("alembic", "apscheduler", "mail.log"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLogger().level))
    # mail-parser warns about every MIME part type it does not render; the raw mail is
    # kept whole, so those warnings say nothing ops can act on.
    logging.getLogger("mailparser").setLevel(logging.ERROR)
    app = App(settings)
    if clock_at:
        app.clock = FixedClock(parse_iso(clock_at))
    ctx.call_on_close(app.close)
    return app


@contextmanager
def _storage(what: str = "storage unavailable") -> Iterator[None]:
    """One translation of storage trouble into exit codes, for every command."""
    try:
        yield
    except Fail:
        raise
    except registry.RegistryError as exc:
        raise Fail(str(exc), EX_DATAERR) from exc
    except SchemaOutdated as exc:
        raise Fail(str(exc), EX_CONFIG) from exc
    except Exception as exc:
        if is_unavailable(exc):
            raise Fail(f"{what}: {str(exc).splitlines()[0]}", EX_TEMPFAIL) from exc
        raise


@contextmanager
def _tx(app: App, write: bool = True) -> Iterator[Session]:
    with _storage(), (transaction if write else reading)(app.sessions) as session:
        yield session


def _emit(data: Any, as_json: bool, text: Callable[[Any], str]) -> None:
    click.echo(json.dumps(data, indent=2, ensure_ascii=False) if as_json else text(data))


def _table(cols: list[str]) -> Callable[[list[dict[str, Any]]], str]:
    return lambda rows: views.table(rows, cols)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="mailgate", prog_name="mailgate")
@click.option("--config", "config_path", envvar="MAILGATE_CONFIG", type=click.Path(),
              help="TOML config file (default: $MAILGATE_CONFIG, else built-in defaults).")
@click.pass_context
def cli(ctx: click.Context, config_path: str | None) -> None:
    """mailgate: e-mail in, Service Desk tickets out."""
    ctx.ensure_object(dict)
    ctx.obj["config_path"] = config_path


@cli.command("check-config")
@click.pass_context
def check_config(ctx: click.Context) -> None:
    """Validate the config and print the effective settings (secrets masked)."""
    app = _app(ctx)
    click.echo(json.dumps(config_mod.masked(app.settings), indent=2))


@cli.group()
def db() -> None:
    """Database schema."""


@db.command("upgrade")
@click.pass_context
def db_upgrade(ctx: click.Context) -> None:
    """Migrate the database to the schema this mailgate needs."""
    app = _app(ctx)
    with _storage():
        before, after = upgrade(app.engine)
    click.echo(f"database at {after}" + ("" if before == after else f" (was {before or 'empty'})"))


@db.command("status")
@click.pass_context
def db_status(ctx: click.Context) -> None:
    """Show the schema revision of the database and the one the code needs."""
    app = _app(ctx)
    with _storage():
        current = current_revision(app.engine)
    click.echo(f"database: {current or 'empty'}; code: {head_revision()}")


@cli.command()
@click.pass_context
def serve(ctx: click.Context) -> None:
    """Run the daemon: SMTP listener, IMAP pollers, worker, sender, sweeps."""
    from mailgate.daemon import Daemon

    app = _app(ctx)
    with _storage("storage unavailable at start"):
        try:
            asyncio.run(Daemon(app).run())
        except OSError as exc:
            if is_unavailable(exc):
                raise
            raise Fail(f"cannot start: {exc}", EX_CONFIG if exc.errno else EX_TEMPFAIL) from exc


@cli.command()
@click.option("--sender", "-f", default=None, help="Envelope sender (else $SENDER).")
@click.option("--recipient", "-r", multiple=True, help="Envelope recipient (else $RECIPIENT).")
@click.pass_context
def deliver(ctx: click.Context, sender: str | None, recipient: tuple[str, ...]) -> None:
    """Store one message from standard input (MTA pipe transport)."""
    from mailgate.inbound.pipe import deliver as do_deliver

    app = _app(ctx)
    try:
        code, stored, error = do_deliver(app.sessions, app.clock, sys.stdin.buffer, sender,
                                         list(recipient) if recipient else None)
    except OSError as exc:
        code, stored, error = EX_TEMPFAIL, None, f"storage unavailable: {exc}"
    if code != EX_OK:
        raise Fail(error, code)
    assert stored is not None
    click.echo(f"stored as inbound {stored.inbound_id}"
               + (" (duplicate, already stored)" if stored.duplicate else ""))


@cli.command()
@click.option("--now", "now", default=None, help="Run as of this ISO 8601 time (default: now).")
@click.pass_context
def tick(ctx: click.Context, now: str | None) -> None:
    """Process pending mail, run due sweeps once, flush the outbox, exit."""
    from mailgate.db.migrate import require_current
    from mailgate.outbound import sender
    from mailgate.worker import process_pending

    try:
        app = _app(ctx, now)
    except ValueError as exc:
        raise Fail(f"--now: {exc}", EX_USAGE) from exc
    with _storage():
        require_current(app.engine)
        processed = 0
        while True:
            result = process_pending(app)
            processed += result.processed
            if result.stopped_by_outage:
                raise Fail("storage unavailable while processing", EX_TEMPFAIL)
            if result.processed < app.settings.worker.batch_size:
                break
        flushed = sender.flush(app.sessions, app.clock, app.settings.outbound, app.transport)
    click.echo(f"processed {processed} inbound; sent {flushed.sent}, "
               f"retrying {flushed.retrying}, failed {flushed.failed}")


# --- tickets -------------------------------------------------------------------------------

@cli.group()
def tickets() -> None:
    """Look at tickets."""


@tickets.command("list")
@click.option("--state", default=None, help="Only tickets in this state.")
@click.option("--json", "as_json", is_flag=True, help="JSON output (stable).")
@click.pass_context
def tickets_list(ctx: click.Context, state: str | None, as_json: bool) -> None:
    app = _app(ctx)
    with _tx(app, write=False) as session:
        rows = views.tickets(session, state)
    _emit(rows, as_json, _table(views.TICKET_COLUMNS))


@tickets.command("show")
@click.argument("ref")
@click.option("--json", "as_json", is_flag=True, help="JSON output (stable).")
@click.pass_context
def tickets_show(ctx: click.Context, ref: str, as_json: bool) -> None:
    app = _app(ctx)
    parsed = parse_ref(app.settings.desk.ticket_prefix, ref)
    with _tx(app, write=False) as session:
        ticket = views.ticket_by_ref(session, str(parsed)) if parsed else None
        if ticket is None:
            raise Fail(f"no ticket {ref}", EX_NOINPUT)
        data = views.ticket_detail(session, ticket)
    _emit(data, as_json, views.ticket_text)


# --- inbound, quarantine, outbox -----------------------------------------------------------

@cli.group()
def inbound() -> None:
    """Every stored mail and what became of it."""


def _inbound_rows(app: App, status: str | None) -> list[dict[str, Any]]:
    with _tx(app, write=False) as session:
        return views.inbound_rows(session, status)


@inbound.command("list")
@click.option("--status", default=None,
              help="pending, ticket, ignored, refused or quarantined.")
@click.option("--json", "as_json", is_flag=True, help="JSON output (stable).")
@click.pass_context
def inbound_list(ctx: click.Context, status: str | None, as_json: bool) -> None:
    _emit(_inbound_rows(_app(ctx), status), as_json, _table(views.INBOUND_COLUMNS))


def _show_inbound(app: App, inbound_id: int, as_json: bool, raw: bool) -> None:
    with _tx(app, write=False) as session:
        row = session.get(Inbound, inbound_id)
        if row is None:
            raise Fail(f"no inbound {inbound_id}", EX_NOINPUT)
        if raw:
            sys.stdout.buffer.write(row.raw)
            return
        data = views.inbound_detail(row)
    _emit(data, as_json, views.inbound_text)


@inbound.command("show")
@click.argument("inbound_id", type=int)
@click.option("--json", "as_json", is_flag=True, help="JSON output (stable).")
@click.option("--raw", is_flag=True, help="Print the raw message as stored.")
@click.pass_context
def inbound_show(ctx: click.Context, inbound_id: int, as_json: bool, raw: bool) -> None:
    _show_inbound(_app(ctx), inbound_id, as_json, raw)


@cli.group()
def quarantine() -> None:
    """Mail that could not be processed, with the reason."""


@quarantine.command("list")
@click.option("--json", "as_json", is_flag=True, help="JSON output (stable).")
@click.pass_context
def quarantine_list(ctx: click.Context, as_json: bool) -> None:
    _emit(_inbound_rows(_app(ctx), "quarantined"), as_json, _table(views.INBOUND_COLUMNS))


@quarantine.command("show")
@click.argument("inbound_id", type=int)
@click.option("--json", "as_json", is_flag=True, help="JSON output (stable).")
@click.option("--raw", is_flag=True, help="Print the raw message as stored.")
@click.pass_context
def quarantine_show(ctx: click.Context, inbound_id: int, as_json: bool, raw: bool) -> None:
    _show_inbound(_app(ctx), inbound_id, as_json, raw)


@quarantine.command("replay")
@click.argument("inbound_id", type=int, required=False)
@click.option("--all", "replay_all", is_flag=True, help="Replay every quarantined mail.")
@click.pass_context
def quarantine_replay(ctx: click.Context, inbound_id: int | None, replay_all: bool) -> None:
    """Feed quarantined mail back to the worker (after a fix)."""
    from mailgate.worker import replay

    if (inbound_id is None) == (not replay_all):
        raise Fail("give one ID or --all", EX_USAGE)
    app = _app(ctx)
    with _tx(app) as session:
        count = replay(session, app.clock, inbound_id)
    if inbound_id is not None and not count:
        raise Fail(f"inbound {inbound_id} is not quarantined", EX_NOINPUT)
    click.echo(f"{count} mail(s) back to pending; `mailgate tick` or the daemon processes them")


@cli.group()
def outbox() -> None:
    """Outgoing mail and its delivery state."""


@outbox.command("list")
@click.option("--status", default=None, help="pending, sent or failed.")
@click.option("--json", "as_json", is_flag=True, help="JSON output (stable).")
@click.pass_context
def outbox_list(ctx: click.Context, status: str | None, as_json: bool) -> None:
    app = _app(ctx)
    with _tx(app, write=False) as session:
        rows = views.outbox_rows(session, status)
    _emit(rows, as_json, _table(views.OUTBOX_COLUMNS))


@outbox.command("retry")
@click.argument("outbox_id", type=int, required=False)
@click.pass_context
def outbox_retry(ctx: click.Context, outbox_id: int | None) -> None:
    """Make failed or waiting outgoing mail due now."""
    from mailgate.outbound.sender import retry

    app = _app(ctx)
    with _tx(app) as session:
        count = retry(session, app.clock, outbox_id)
    click.echo(f"{count} outgoing mail(s) due now")


# --- sites, editors, agents ----------------------------------------------------------------

@cli.group()
def sites() -> None:
    """Websites (4-digit site IDs)."""


@sites.command("add")
@click.argument("site_id")
@click.argument("name")
@click.pass_context
def sites_add(ctx: click.Context, site_id: str, name: str) -> None:
    app = _app(ctx)
    with _tx(app) as session:
        registry.add_site(session, site_id, name, app.clock.now())
    click.echo(f"site {site_id} added")


@sites.command("list")
@click.option("--json", "as_json", is_flag=True, help="JSON output (stable).")
@click.pass_context
def sites_list(ctx: click.Context, as_json: bool) -> None:
    app = _app(ctx)
    with _tx(app, write=False) as session:
        rows = views.sites(session)
    _emit(rows, as_json, views.site_table)


@sites.command("remove")
@click.argument("site_id")
@click.pass_context
def sites_remove(ctx: click.Context, site_id: str) -> None:
    app = _app(ctx)
    with _tx(app) as session:
        registry.remove_site(session, site_id)
    click.echo(f"site {site_id} removed")


@cli.group()
def editors() -> None:
    """Registered editors (at most three per site)."""


@editors.command("add")
@click.argument("site_id")
@click.argument("email")
@click.option("--name", default="")
@click.option("--phone", default="")
@click.option("--language", default="", help="nl, fr or en (default: the desk's).")
@click.pass_context
def editors_add(ctx: click.Context, site_id: str, email: str, name: str, phone: str,
                language: str) -> None:
    app = _app(ctx)
    with _tx(app) as session:
        editor = registry.add_editor(session, site_id, email, app.clock.now(), name=name,
                                     phone=phone, language=language)
        address = editor.email
    click.echo(f"editor {address} added to site {site_id}")


@editors.command("list")
@click.option("--site", "site_id", default=None)
@click.option("--json", "as_json", is_flag=True, help="JSON output (stable).")
@click.pass_context
def editors_list(ctx: click.Context, site_id: str | None, as_json: bool) -> None:
    app = _app(ctx)
    with _tx(app, write=False) as session:
        rows = views.editors(session, site_id)
    _emit(rows, as_json, _table(views.EDITOR_COLUMNS))


@editors.command("remove")
@click.argument("email")
@click.pass_context
def editors_remove(ctx: click.Context, email: str) -> None:
    app = _app(ctx)
    with _tx(app) as session:
        registry.remove_editor(session, email)
    click.echo(f"editor {email} removed")


@cli.group()
def agents() -> None:
    """Service Desk agents."""


@agents.command("add")
@click.argument("email")
@click.option("--name", default="")
@click.pass_context
def agents_add(ctx: click.Context, email: str, name: str) -> None:
    app = _app(ctx)
    with _tx(app) as session:
        registry.add_agent(session, email, app.clock.now(), name)
    click.echo(f"agent {email} added")


@agents.command("list")
@click.option("--json", "as_json", is_flag=True, help="JSON output (stable).")
@click.pass_context
def agents_list(ctx: click.Context, as_json: bool) -> None:
    app = _app(ctx)
    with _tx(app, write=False) as session:
        rows = views.agents(session)
    _emit(rows, as_json, _table(views.AGENT_COLUMNS))


@agents.command("remove")
@click.argument("email")
@click.pass_context
def agents_remove(ctx: click.Context, email: str) -> None:
    app = _app(ctx)
    with _tx(app) as session:
        registry.remove_agent(session, email)
    click.echo(f"agent {email} removed")


def main(argv: list[str] | None = None) -> NoReturn:
    try:
        cli.main(args=argv, prog_name="mailgate", standalone_mode=False)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except Fail as exc:
        click.echo(f"mailgate: {exc.message}", err=True)
        sys.exit(exc.code)
    except click.UsageError as exc:
        exc.show()
        sys.exit(EX_USAGE)
    except click.Abort:
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(EX_USAGE)
    sys.exit(EX_OK)
