"""Wires settings into the long-lived parts: engine, sessions, clock, desk services."""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field, fields, replace
from functools import cached_property

from sqlalchemy import Engine, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session, sessionmaker

from mailgate.calendar import BusinessCalendar
from mailgate.clock import Clock, SystemClock
from mailgate.config import Settings
from mailgate.db.engine import make_engine, make_sessionmaker, transaction
from mailgate.db.models import Setting
from mailgate.mail.references import MessageIds
from mailgate.outbound import render, samples
from mailgate.outbound.render import Renderer
from mailgate.outbound.sender import Transport, make_transport
from mailgate.tickets.desk import Desk

# What SIGHUP changes in a running daemon (App.reload). Everything else (database, listener,
# IMAP accounts, relay, the desk's addresses and secret, worker) is taken at a restart only.
RELOADABLE = ("access", "sla", "lifecycle", "templates_dir", "log_level",
              # read by each `mailgate deliver` run, not by the daemon
              "deliver")


class ReloadError(Exception):
    """The new configuration cannot be applied; the running one stays."""


@dataclass
class App:
    settings: Settings
    clock: Clock = field(default_factory=SystemClock)

    @cached_property
    def engine(self) -> Engine:
        return make_engine(self.settings.database)

    @cached_property
    def sessions(self) -> sessionmaker[Session]:
        return make_sessionmaker(self.engine)

    @cached_property
    def desk(self) -> Desk:
        s = self.settings
        return self._desk(s, MessageIds(self.secret(), s.desk.domain, s.desk.ticket_prefix))

    @staticmethod
    def _desk(s: Settings, ids: MessageIds) -> Desk:
        return Desk(
            settings=s,
            ids=ids,
            renderer=Renderer(s.templates_dir, s.desk.default_language),
            calendar=BusinessCalendar(s.tz, s.sla.business_hours, s.sla.country,
                                      s.lifecycle.closed_dates),
        )

    def reload(self, settings: Settings) -> list[str]:
        """Takes the RELOADABLE parts of `settings` (freshly loaded, hence validated) and
        rebuilds the desk with them: templates read anew, calendar, access and SLA rules.

        The new desk is built and every template rendered with its samples (as `mailgate
        templates check` does) before anything is replaced, so a broken template leaves
        the running settings and desk in place (ReloadError). A pass already under way
        finishes with the desk it started with. Returns the names of the other parts that
        differ in `settings`: those wait for a restart.
        """
        merged = replace(self.settings, **{name: getattr(settings, name) for name in RELOADABLE})
        desk = self._desk(merged, self.desk.ids)  # the IDs depend on [desk] only
        broken = [r for r in render.check(desk.renderer, samples.SAMPLES) if not r.ok]
        if broken:
            first = broken[0]
            raise ReloadError(f"{len(broken)} template checks failed, first {first.template} "
                              f"({first.language}, {first.source or '-'}): {first.error}")
        self.settings = merged
        self.__dict__["desk"] = desk  # the cached_property's slot: the old desk is dropped
        return [f.name for f in fields(settings)
                if f.name not in (*RELOADABLE, "source")
                and getattr(settings, f.name) != getattr(merged, f.name)]

    @cached_property
    def transport(self) -> Transport:
        return make_transport(self.settings.outbound)

    def secret(self) -> str:
        """The Message-ID signing key: from config, else made once and kept in the
        database so that every instance on it signs and verifies alike."""
        if self.settings.desk.secret:
            return self.settings.desk.secret
        with transaction(self.sessions) as session:
            dialect = session.get_bind().dialect.name
            insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
            session.execute(insert(Setting).values(
                name="message_id_secret", value=secrets.token_hex(32)).on_conflict_do_nothing())
            return session.execute(
                select(Setting.value).where(Setting.name == "message_id_secret")).scalar_one()

    def close(self) -> None:
        if "engine" in self.__dict__:
            self.engine.dispose()
