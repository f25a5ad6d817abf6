"""The registry as one transaction sees it: editors, agents and sites, each looked up once per
session instead of once per mail (a worker's group of mails shares a session).

Every mail used to read the agents twice, its sender's editor row, every site ID and the
ticket's site: five statements, and five autoflushes of what the mail had written so far.
A session that changes the registry itself (an agent's command, the CLI) or rolls back (a
mail's savepoint) drops what it remembered, so it never reads a stale copy; another
process's change is seen by the next transaction, as before.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy import bindparam, event, select
from sqlalchemy.orm import ORMExecuteState, Session

from mailgate.db.models import Agent, Editor, Site

_KEY = "mailgate.known"
_REGISTRY = (Editor, Agent, Site)


@dataclass(frozen=True)
class EditorRow:
    """A registered editor as the mail path reads one: plain values, no ORM object."""

    email: str
    site_id: str
    name: str
    phone: str
    language: str


# Built once: a statement object keeps its cache key.
_EDITOR = select(Editor.email, Editor.site_id, Editor.name, Editor.phone,
                 Editor.language).where(Editor.email == bindparam("address"))


@dataclass
class _Memo:
    editors: dict[str, EditorRow | None] = field(default_factory=dict)
    agents: dict[str, Agent] | None = None
    sites: dict[str, str] | None = None  # site ID → name


def _forget(session: Session) -> None:
    session.info.pop(_KEY, None)


def _changing(session: Session) -> bool:
    """Registry rows added, changed or deleted and not yet flushed (or being flushed)."""
    return any(isinstance(obj, _REGISTRY)
               for obj in (*session.new, *session.dirty, *session.deleted))


def _after_flush(session: Session, _context: object) -> None:
    if _changing(session):
        _forget(session)


def _rolled_back(session: Session, _previous: object) -> None:
    # Also a mail's savepoint: what it wrote, and read back, is gone.
    _forget(session)


def _on_execute(state: ORMExecuteState) -> None:
    if state.is_insert or state.is_update or state.is_delete:
        mapper = state.bind_mapper
        if mapper is None or mapper.class_ in _REGISTRY:
            _forget(state.session)


def _memo(session: Session) -> _Memo:
    changing = _changing(session)
    if changing:  # written first: the reads below go to the connection, without autoflush
        session.flush()
    memo = session.info.get(_KEY)
    if memo is None or changing:
        if not session.info.get(_KEY + ".listening"):
            session.info[_KEY + ".listening"] = True
            event.listen(session, "after_flush", _after_flush)
            event.listen(session, "do_orm_execute", _on_execute)
            event.listen(session, "after_soft_rollback", _rolled_back)
        memo = session.info[_KEY] = _Memo()
    assert isinstance(memo, _Memo)
    return memo


def editor(session: Session, address: str) -> EditorRow | None:
    memo = _memo(session)
    if address not in memo.editors:
        # Its columns on the session's connection: an ORM object cost more than the read.
        row = session.connection().execute(_EDITOR, {"address": address}).one_or_none()
        memo.editors[address] = EditorRow(*row) if row is not None else None
    return memo.editors[address]


def _agents(session: Session) -> dict[str, Agent]:
    memo = _memo(session)
    if memo.agents is None:
        memo.agents = {a.email: a for a in session.execute(select(Agent)).scalars()}
    return memo.agents


def agent(session: Session, address: str) -> Agent | None:
    return _agents(session).get(address)


def agent_addresses(session: Session) -> set[str]:
    return {a.lower() for a in _agents(session)}


def _sites(session: Session) -> dict[str, str]:
    memo = _memo(session)
    if memo.sites is None:
        memo.sites = {sid: name for sid, name in session.execute(select(Site.site_id, Site.name))}
    return memo.sites


def site_ids(session: Session) -> frozenset[str]:
    return frozenset(_sites(session))


def site_name(session: Session, site_id: str) -> str:
    return _sites(session).get(site_id, "")
