"""Wires settings into the long-lived parts: engine, sessions, clock, desk services."""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
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
from mailgate.outbound.render import Renderer
from mailgate.outbound.sender import Transport, make_transport
from mailgate.tickets.desk import Desk


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
        return Desk(
            settings=s,
            ids=MessageIds(self.secret(), s.desk.domain, s.desk.ticket_prefix),
            renderer=Renderer(s.templates_dir, s.desk.default_language),
            calendar=BusinessCalendar(s.tz, s.sla.business_hours, s.sla.country,
                                      s.lifecycle.closed_dates),
        )

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
