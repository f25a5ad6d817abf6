"""The `mailgate` commands (click). Thin: parse arguments, call services, print results.

Queries and their text and JSON views live in :mod:`mailgate.views`; exit codes follow
sysexits (:mod:`mailgate.exitcodes`, docs/design.md §3). The entry point, and the fast way
of `mailgate deliver`, is :mod:`mailgate.cli`.

Imports are lazy: each command imports what it needs (the ORM, Alembic, the ticket
services, the mail parser, templates) and no more, so that `--help` and the light commands
start fast (tests/test_startup.py holds that line).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, NoReturn

import click

from mailgate.cli import Fail, deliver_mail, load_settings, with_logging
from mailgate.exitcodes import (
    EX_CONFIG,
    EX_DATAERR,
    EX_NOINPUT,
    EX_OK,
    EX_TEMPFAIL,
    EX_USAGE,
)

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from mailgate.app import App
    from mailgate.config import Settings
    from mailgate.db.models import Agent, Ticket
    from mailgate.tickets.desk import Desk


def _load_settings(ctx: click.Context) -> Settings:
    return load_settings(ctx.obj["config_path"])


def _settings(ctx: click.Context) -> Settings:
    """The validated settings, with logging set up from them."""
    return with_logging(_load_settings(ctx))


def _app(ctx: click.Context, clock_at: str | None = None) -> App:
    from mailgate.app import App
    from mailgate.clock import FixedClock, parse_iso

    app = App(_settings(ctx))
    if clock_at:
        try:
            app.clock = FixedClock(parse_iso(clock_at))
        except ValueError as exc:
            raise Fail(f"--now: {exc}", EX_USAGE) from exc
    ctx.call_on_close(app.close)
    return app


def _raised(module: str, name: str, exc: BaseException) -> bool:
    """True if ``exc`` is ``module.name``. A module never imported cannot have raised it, so
    one is not imported (Alembic, the ticket services) only to look at an error."""
    loaded = sys.modules.get(module)
    kind = getattr(loaded, name, None) if loaded is not None else None
    return isinstance(kind, type) and isinstance(exc, kind)


@contextmanager
def _storage(what: str = "storage unavailable") -> Iterator[None]:
    """One translation of storage trouble into exit codes, for every command."""
    try:
        yield
    except Fail:
        raise
    except Exception as exc:
        if _raised("mailgate.tickets.registry", "RegistryError", exc):
            raise Fail(str(exc), EX_DATAERR) from exc
        if _raised("mailgate.db.migrate", "SchemaOutdated", exc):
            raise Fail(str(exc), EX_CONFIG) from exc
        from mailgate.db.engine import is_unavailable

        if is_unavailable(exc):
            raise Fail(f"{what}: {str(exc).splitlines()[0]}", EX_TEMPFAIL) from exc
        raise


@contextmanager
def _tx(app: App, write: bool = True) -> Iterator[Session]:
    from mailgate.db.engine import reading, transaction

    with _storage(), (transaction if write else reading)(app.sessions) as session:
        yield session


def _emit(data: Any, as_json: bool, text: Callable[[Any], str]) -> None:
    click.echo(json.dumps(data, indent=2, ensure_ascii=False) if as_json else text(data))


def _table(cols: list[str]) -> Callable[[list[dict[str, Any]]], str]:
    from mailgate import views

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
    from mailgate import config as config_mod

    click.echo(json.dumps(config_mod.masked(_settings(ctx)), indent=2))


@cli.group()
def db() -> None:
    """Database schema."""


@db.command("upgrade")
@click.pass_context
def db_upgrade(ctx: click.Context) -> None:
    """Migrate the database to the schema this mailgate needs."""
    from mailgate.db.migrate import upgrade

    app = _app(ctx)
    with _storage():
        before, after = upgrade(app.engine)
    click.echo(f"database at {after}" + ("" if before == after else f" (was {before or 'empty'})"))


@db.command("status")
@click.pass_context
def db_status(ctx: click.Context) -> None:
    """Show the schema revision of the database and the one the code needs."""
    from mailgate.db.migrate import current_revision, head_revision

    app = _app(ctx)
    with _storage():
        current = current_revision(app.engine)
    click.echo(f"database: {current or 'empty'}; code: {head_revision()}")


@cli.command()
@click.pass_context
def serve(ctx: click.Context) -> None:
    """Run the daemon: SMTP listener, IMAP pollers, worker, sender, sweeps."""
    import asyncio

    from mailgate.daemon import Daemon
    from mailgate.db.engine import is_unavailable

    app = _app(ctx)
    unmap_big_buffers()
    with _storage("storage unavailable at start"):
        try:
            asyncio.run(Daemon(app).run())
        except OSError as exc:
            if is_unavailable(exc):
                raise
            raise Fail(f"cannot start: {exc}", EX_CONFIG if exc.errno else EX_TEMPFAIL) from exc


@cli.command(hidden=True)
@click.pass_context
def work(ctx: click.Context) -> None:
    """One worker process of `serve` (``[worker] processes``): processes pending mail until
    its standard input ends. The daemon starts it; it is not meant to be run by hand."""
    from mailgate.worker_processes import run_child

    app = _app(ctx)
    unmap_big_buffers()
    with _storage("storage unavailable at start"):
        run_child(app)


# glibc's M_MMAP_THRESHOLD (malloc.h).
_M_MMAP_THRESHOLD = -3
BIG_BUFFER = 1 << 20


def unmap_big_buffers() -> bool:
    """Allocations of BIG_BUFFER and more get pages of their own, given back when freed.

    glibc does so from 128 KiB at first, but raises the threshold to the size of each such
    block freed (up to 32 MiB): after one big mail, the next one's buffers (SMTP data,
    store, load, parse, attachments) come from the heap, which keeps what it got, so each
    step of a mail's way adds to the daemon's peak instead of reusing the last one's memory
    (bench/memory.py). Fixed, the peak is that of the largest step. False where the C
    library is not glibc (nothing changed)."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, BIG_BUFFER))
    except (OSError, AttributeError):
        return False


@cli.command()
@click.option("--sender", "-f", default=None, help="Envelope sender (else $SENDER).")
@click.option("--recipient", "-r", multiple=True, help="Envelope recipient (else $RECIPIENT).")
@click.pass_context
def deliver(ctx: click.Context, sender: str | None, recipient: tuple[str, ...]) -> None:
    """Store one message from standard input (MTA pipe transport)."""
    click.echo(deliver_mail(ctx.obj["config_path"], sender,
                            list(recipient) if recipient else None))


@cli.command()
@click.option("--now", "now", default=None, help="Run as of this ISO 8601 time (default: now).")
@click.pass_context
def tick(ctx: click.Context, now: str | None) -> None:
    """Process pending mail, run due sweeps once, flush the outbox, exit."""
    from mailgate.db.migrate import require_current
    from mailgate.outbound import sender
    from mailgate.tickets import lifecycle
    from mailgate.worker import process_pending

    app = _app(ctx, now)
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
        swept = lifecycle.sweep(app.sessions, app.desk, app.clock.now())
        flushed = sender.flush(app.sessions, app.clock, app.settings.outbound, app.transport)
    click.echo(f"processed {processed} inbound; swept: {swept.reminded} reminded, "
               f"{swept.closed} closed, {swept.warned} SLA warnings, {swept.breached} "
               f"SLA breaches; sent {flushed.sent}, retrying {flushed.retrying}, "
               f"failed {flushed.failed}")


@cli.command()
@click.option("--dry-run", is_flag=True, help="Only show what would go; change nothing.")
@click.option("--now", "now", default=None, help="As of this ISO 8601 time (default: now).")
@click.option("--json", "as_json", is_flag=True, help="JSON output (stable).")
@click.pass_context
def purge(ctx: click.Context, dry_run: bool, now: str | None, as_json: bool) -> None:
    """Retention ([retention]): empty the raw mails and remove the attachment bytes of
    tickets closed longer ago than raw_days / attachments_days; tickets, their text and
    their events stay. The daemon's sweep does the same by itself."""
    from mailgate.db.migrate import require_current
    from mailgate.tickets import retention

    app = _app(ctx, now)
    with _storage():
        require_current(app.engine)
        result = retention.purge(app.sessions, app.settings, app.clock.now(), dry_run=dry_run)
    _emit(result.as_dict(), as_json, _purge_text)


def _purge_text(d: dict[str, Any]) -> str:
    verb = "would go" if d["dry_run"] else "went"
    lines = []
    for name, what in (("raw mails", ("inbound", "outbox")),
                       ("attachments", ("blobs", "kept_shared"))):
        p = d["raw" if name == "raw mails" else "attachments"]
        if not p["enabled"]:
            key = "raw_days" if name == "raw mails" else "attachments_days"
            lines.append(f"{name}: kept ([retention] {key} = 0)")
            continue
        counts = ", ".join(f"{p[k]} {k.replace('_', ' ')}" for k in what)
        refs = p["tickets"]
        shown = " ".join(refs[:20]) + (f" and {len(refs) - 20} more" if len(refs) > 20 else "")
        lines.append(f"{name} of tickets closed before {p['before']} ({p['days']} days): "
                     f"{verb}: {len(refs)} tickets, {counts}, {p['bytes']} bytes"
                     + (f"\n  {shown}" if refs else ""))
    return "\n".join(lines)


# --- tickets -------------------------------------------------------------------------------

@cli.group()
def tickets() -> None:
    """Look at tickets."""


@tickets.command("list")
@click.option("--state", default=None, help="Only tickets in this state.")
@click.option("--assigned", default=None, metavar="EMAIL",
              help="Only tickets assigned to this agent.")
@click.option("--overdue", is_flag=True,
              help="Only tickets unanswered past their first-response due time.")
@click.option("--priority", type=click.Choice(["normal", "urgent"]), default=None,
              help="Only tickets of this priority.")
@click.option("--json", "as_json", is_flag=True, help="JSON output (stable).")
@click.pass_context
def tickets_list(ctx: click.Context, state: str | None, assigned: str | None, overdue: bool,
                 priority: str | None, as_json: bool) -> None:
    from mailgate import views
    from mailgate.mail.addresses import normalize

    app = _app(ctx)
    with _tx(app, write=False) as session:
        rows = views.tickets(session, app.clock.now(), state,
                             normalize(assigned) if assigned else None, overdue, priority)
    _emit(rows, as_json, _table(views.TICKET_COLUMNS))


@tickets.command("show")
@click.argument("ref")
@click.option("--json", "as_json", is_flag=True, help="JSON output (stable).")
@click.pass_context
def tickets_show(ctx: click.Context, ref: str, as_json: bool) -> None:
    from mailgate import views
    from mailgate.mail.references import parse_ref

    app = _app(ctx)
    parsed = parse_ref(app.settings.desk.ticket_prefix, ref)
    with _tx(app, write=False) as session:
        ticket = views.ticket_by_ref(session, str(parsed)) if parsed else None
        if ticket is None:
            raise Fail(f"no ticket {ref}", EX_NOINPUT)
        data = views.ticket_detail(session, ticket, app.clock.now())
    _emit(data, as_json, views.ticket_text)


@tickets.command("search")
@click.argument("text")
@click.option("--json", "as_json", is_flag=True, help="JSON output (stable).")
@click.pass_context
def tickets_search(ctx: click.Context, text: str, as_json: bool) -> None:
    """Tickets whose subject, requester, ref or any mail's text contains TEXT (any case);
    newest first, at most 50."""
    from mailgate import views

    if not text.strip():
        raise Fail("give some text to search for", EX_USAGE)
    app = _app(ctx)
    with _tx(app, write=False) as session:
        rows = views.search_tickets(session, app.clock.now(), text.strip())
    _emit(rows, as_json, _table(views.TICKET_COLUMNS))


def _ticket(session: Session, app: App, ref: str) -> Ticket:
    from mailgate import views
    from mailgate.mail.references import parse_ref

    parsed = parse_ref(app.settings.desk.ticket_prefix, ref)
    ticket = views.ticket_by_ref(session, str(parsed)) if parsed else None
    if ticket is None:
        raise Fail(f"no ticket {ref}", EX_NOINPUT)
    return ticket


def _agent(session: Session, email: str) -> Agent:
    from mailgate import views
    from mailgate.mail.addresses import normalize

    agent = views.agent_by_email(session, normalize(email))
    if agent is None:
        raise Fail(f"{email} is not a registered agent (see `mailgate agents list`)",
                   EX_DATAERR)
    return agent


def _desk(app: App) -> Desk:
    """The desk services, before any transaction: the first use may store the signing
    secret in a transaction of its own."""
    from mailgate.db.migrate import require_current

    with _storage():
        require_current(app.engine)
        return app.desk


# What `tickets set` shows, and the agent command each option becomes.
_SET_OPTIONS = (("state", "status"), ("priority", "priority"), ("assign", "assign"),
                ("site", "site"), ("link", "link"), ("requester", "requester"))


def _shown(session: Session, t: Ticket) -> dict[str, str | None]:
    from mailgate.db.models import Ticket

    linked = session.get(Ticket, t.linked_to_id) if t.linked_to_id else None
    return {"state": t.state, "priority": t.priority, "assignee": t.assignee,
            "site": t.site_id, "linked to": linked.ref if linked else None,
            "requester": t.requester}


@tickets.command("set")
@click.argument("ref")
@click.option("--state", metavar="open|waiting|resolved|closed")
@click.option("--priority", metavar="normal|urgent")
@click.option("--assign", metavar="EMAIL|me", help="Assign to this agent (me: --by).")
@click.option("--site", metavar="ID", help="The ticket's 4-digit site ID.")
@click.option("--link", metavar="REF", help="Link to this ticket.")
@click.option("--requester", metavar="EMAIL", help="The ticket belongs to this editor.")
@click.option("--by", metavar="EMAIL", help="The acting agent (default: cli).")
@click.pass_context
def tickets_set(ctx: click.Context, ref: str, state: str | None, priority: str | None,
                assign: str | None, site: str | None, link: str | None,
                requester: str | None, by: str | None) -> None:
    """Change a ticket as an agent's #commands by mail do: same checks, events and mails."""
    from mailgate.tickets import agentwork
    from mailgate.tickets.agentwork import Actor
    from mailgate.tickets.commands import parse_command

    values = {"state": state, "priority": priority, "assign": assign, "site": site,
              "link": link, "requester": requester}
    given = [(opt, word, value) for opt, word in _SET_OPTIONS
             if (value := values[opt]) is not None]
    if not given:
        raise Fail("give at least one of " + ", ".join(f"--{o}" for o, _w in _SET_OPTIONS),
                   EX_USAGE)
    if assign is not None and assign.strip().lower() == "me" and not by:
        raise Fail("--assign me needs --by EMAIL (the agent who is me)", EX_USAGE)
    for opt, _w, value in given:
        if "\n" in value or "\r" in value:
            raise Fail(f"--{opt}: one line only", EX_DATAERR)
    cmd = parse_command("\n".join(f"#{word} {value}" for _o, word, value in given))
    assert cmd is not None and not cmd.text
    app = _app(ctx)
    desk = _desk(app)
    with _tx(app) as session:
        ticket = _ticket(session, app, ref)
        if by:
            agent = _agent(session, by)
            actor = Actor(agent.email, agent.name)
        else:
            actor = Actor("cli", "cli")
        errors = agentwork.check(session, desk, ticket, cmd, actor)
        if errors:
            for e in errors:
                click.echo(f"{e.line}: {e.reason}", err=True)
            raise Fail(f"{ticket.ref} not changed", EX_DATAERR)
        before = _shown(session, ticket)
        agentwork.apply(session, desk, ticket, cmd, actor, app.clock.now(), None)
        session.flush()
        after = _shown(session, ticket)
        name = ticket.ref
    changes = [f"{k} {before[k] or '-'} -> {after[k] or '-'}" for k in before
               if before[k] != after[k]]
    click.echo(f"{name}: " + ("; ".join(changes) if changes else "nothing to change"))


@tickets.command("note")
@click.argument("ref")
@click.option("--from", "from_addr", required=True, metavar="EMAIL",
              help="The agent who writes the note.")
@click.pass_context
def tickets_note(ctx: click.Context, ref: str, from_addr: str) -> None:
    """Add an internal note (text on stdin); the other agents get a copy, editors never."""
    from mailgate.db.models import Message
    from mailgate.tickets import notify, service

    text = sys.stdin.buffer.read().decode("utf-8", "replace").strip()
    if not text:
        raise Fail("empty note on standard input", EX_DATAERR)
    app = _app(ctx)
    desk = _desk(app)
    now = app.clock.now()
    with _tx(app) as session:
        ticket = _ticket(session, app, ref)
        agent = _agent(session, from_addr)
        session.add(Message(ticket_id=ticket.id, inbound_id=None, direction="in", kind="note",
                            from_addr=agent.email, body_text=text, created_at=now))
        service.event(session, now, "ticket.note", ticket, None, by=agent.email, via="cli")
        ticket.updated_at = now
        copied = notify.copy_to_agents(session, desk, ticket, "note", text, agent.name,
                                       agent.email, now)
        name = ticket.ref
    click.echo(f"note added to {name}" + ("; a copy goes to the other agents" if copied else ""))


# --- inbound, quarantine, outbox -----------------------------------------------------------

@cli.group()
def inbound() -> None:
    """Every stored mail and what became of it."""


def _inbound_rows(app: App, status: str | None) -> list[dict[str, Any]]:
    from mailgate import views

    with _tx(app, write=False) as session:
        return views.inbound_rows(session, status)


@inbound.command("list")
@click.option("--status", default=None,
              help="pending, ticket, ignored, refused or quarantined.")
@click.option("--json", "as_json", is_flag=True, help="JSON output (stable).")
@click.pass_context
def inbound_list(ctx: click.Context, status: str | None, as_json: bool) -> None:
    from mailgate import views

    _emit(_inbound_rows(_app(ctx), status), as_json, _table(views.INBOUND_COLUMNS))


def _show_inbound(app: App, inbound_id: int, as_json: bool, raw: bool) -> None:
    from mailgate import views
    from mailgate.db.models import Inbound

    with _tx(app, write=False) as session:
        row = session.get(Inbound, inbound_id)
        if row is None:
            raise Fail(f"no inbound {inbound_id}", EX_NOINPUT)
        if raw:
            if not row.raw:  # emptied by retention: say so, never print nothing with 0
                why = next((s.get("reason", "") for s in reversed(row.trail or [])
                            if s.get("rule") == "retention"), "")
                raise Fail(f"inbound {inbound_id}: the raw mail was purged by retention"
                           + (f" ({why})" if why else "")
                           + "; `inbound show` still gives its trail", EX_NOINPUT)
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
    from mailgate import views
    from mailgate.db.status import InboundStatus

    _emit(_inbound_rows(_app(ctx), InboundStatus.QUARANTINED), as_json,
          _table(views.INBOUND_COLUMNS))


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
    from mailgate import views

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
    from mailgate.tickets import registry

    app = _app(ctx)
    with _tx(app) as session:
        registry.add_site(session, site_id, name, app.clock.now())
    click.echo(f"site {site_id} added")


@sites.command("list")
@click.option("--json", "as_json", is_flag=True, help="JSON output (stable).")
@click.pass_context
def sites_list(ctx: click.Context, as_json: bool) -> None:
    from mailgate import views

    app = _app(ctx)
    with _tx(app, write=False) as session:
        rows = views.sites(session)
    _emit(rows, as_json, views.site_table)


@sites.command("remove")
@click.argument("site_id")
@click.pass_context
def sites_remove(ctx: click.Context, site_id: str) -> None:
    from mailgate.tickets import registry

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
    from mailgate.tickets import registry

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
    from mailgate import views

    app = _app(ctx)
    with _tx(app, write=False) as session:
        rows = views.editors(session, site_id)
    _emit(rows, as_json, _table(views.EDITOR_COLUMNS))


@editors.command("remove")
@click.argument("email")
@click.pass_context
def editors_remove(ctx: click.Context, email: str) -> None:
    from mailgate.tickets import registry

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
    from mailgate.tickets import registry

    app = _app(ctx)
    with _tx(app) as session:
        registry.add_agent(session, email, app.clock.now(), name)
    click.echo(f"agent {email} added")


@agents.command("list")
@click.option("--json", "as_json", is_flag=True, help="JSON output (stable).")
@click.pass_context
def agents_list(ctx: click.Context, as_json: bool) -> None:
    from mailgate import views

    app = _app(ctx)
    with _tx(app, write=False) as session:
        rows = views.agents(session)
    _emit(rows, as_json, _table(views.AGENT_COLUMNS))


@agents.command("remove")
@click.argument("email")
@click.pass_context
def agents_remove(ctx: click.Context, email: str) -> None:
    from mailgate.tickets import registry

    app = _app(ctx)
    with _tx(app) as session:
        registry.remove_agent(session, email)
    click.echo(f"agent {email} removed")


# --- templates -----------------------------------------------------------------------------

@cli.group()
def templates() -> None:
    """Mail templates: the packaged ones and the overrides in templates_dir."""


@templates.command("check")
@click.option("--templates-dir", "templates_dir", default=None,
              type=click.Path(exists=True, file_okay=False),
              help="Check this override directory instead of the configured templates_dir.")
@click.option("--json", "as_json", is_flag=True, help="JSON output (stable).")
@click.pass_context
def templates_check(ctx: click.Context, templates_dir: str | None, as_json: bool) -> None:
    """Render every template in nl, fr and en with sample data; exit 65 on any error."""
    from mailgate.outbound import render, samples

    settings = _load_settings(ctx)
    renderer = render.Renderer(templates_dir if templates_dir is not None
                               else settings.templates_dir, settings.desk.default_language)
    results = render.check(renderer, samples.SAMPLES)
    rows = [{"template": r.template, "language": r.language, "source": r.source,
             "ok": r.ok, "error": r.error} for r in results]
    _emit(rows, as_json, lambda rows: "\n".join(
        f"{r['template']:<16} {r['language']}  "
        + (f"OK ({r['source']})" if r["ok"] else f"ERROR {r['source'] or '-'}: {r['error']}")
        for r in rows))
    failed = sum(not r.ok for r in results)
    if failed:
        raise Fail(f"{failed} of {len(results)} template checks failed", EX_DATAERR)


# --- doctor, stats -------------------------------------------------------------------------

@cli.command()
@click.option("--json", "as_json", is_flag=True, help="JSON output (stable).")
@click.pass_context
def doctor(ctx: click.Context, as_json: bool) -> None:
    """Check config, database, relay, IMAP accounts, templates and clock: one line each, OK
    or the fix. Exit 1 when a check fails, 78 when the config itself is broken."""
    from mailgate import config as config_mod
    from mailgate import doctor as checks
    from mailgate.db.engine import make_engine

    try:
        settings = config_mod.load(ctx.obj["config_path"])
    except config_mod.ConfigError as exc:
        _emit(checks.rows([checks.config_failed(exc)]), as_json, checks.text_lines)
        raise Fail(f"configuration error: {exc}", EX_CONFIG) from exc
    engine = make_engine(settings.database)
    try:
        results = list(checks.checks(settings, engine))
    finally:
        engine.dispose()
    _emit(checks.rows(results), as_json, checks.text_lines)
    failed = [r.check for r in results if not r.ok]
    if failed:
        raise Fail(f"{len(failed)} of {len(results)} checks failed: {', '.join(failed)}",
                   checks.EX_CHECK_FAILED)


@cli.command()
@click.option("--days", type=click.IntRange(min=1), default=30, show_default=True,
              help="The window: this many days up to now.")
@click.option("--json", "as_json", is_flag=True, help="JSON output (stable).")
@click.pass_context
def stats(ctx: click.Context, days: int, as_json: bool) -> None:
    """Mails per channel and kind, tickets per state, first responses within the SLA, median
    first-response time, share closed by the sweep."""
    from mailgate import stats as desk_stats

    app = _app(ctx)
    with _tx(app, write=False) as session:
        data = desk_stats.stats(session, app.clock.now(), days)
    _emit(data, as_json, desk_stats.text)


def run(argv: list[str]) -> NoReturn:
    """The click way: every command line but the plain `deliver` (mailgate.cli.main)."""
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
