"""Registering sites, editors and agents, with the desk's rules checked up front
(the database enforces the same limits, for any other writer)."""

from __future__ import annotations

import re
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from mailgate.config import LANGUAGES
from mailgate.db.models import MAX_EDITORS_PER_SITE, Agent, Editor, Site
from mailgate.mail.addresses import is_valid_address, normalize


class RegistryError(Exception):
    """A registration the desk's rules do not allow; the text says which rule."""


def _address(email: str) -> str:
    if not is_valid_address(email.strip()):
        raise RegistryError(f"{email!r} is not an e-mail address")
    return normalize(email)


def add_site(session: Session, site_id: str, name: str, now: datetime) -> Site:
    if not re.fullmatch(r"\d{4}", site_id):
        raise RegistryError(f"site ID {site_id!r} must be exactly 4 digits")
    if not name.strip():
        raise RegistryError("a site needs a name")
    if session.get(Site, site_id) is not None:
        raise RegistryError(f"site {site_id} already exists")
    site = Site(site_id=site_id, name=name.strip(), created_at=now)
    session.add(site)
    session.flush()
    return site


def remove_site(session: Session, site_id: str) -> None:
    site = session.get(Site, site_id)
    if site is None:
        raise RegistryError(f"no site {site_id}")
    for editor in list(site.editors):
        session.delete(editor)
    session.delete(site)


def add_editor(session: Session, site_id: str, email: str, now: datetime, *, name: str = "",
               phone: str = "", language: str = "") -> Editor:
    address = _address(email)
    site = session.get(Site, site_id)
    if site is None:
        raise RegistryError(f"no site {site_id}: add it first with `mailgate sites add`")
    if language and language not in LANGUAGES:
        raise RegistryError(f"language must be one of {', '.join(LANGUAGES)}")
    existing = session.execute(select(Editor).where(Editor.email == address)).scalar_one_or_none()
    if existing is not None:
        raise RegistryError(f"{address} is already an editor of site {existing.site_id}")
    taken = set(session.execute(select(Editor.slot).where(Editor.site_id == site_id)).scalars())
    free = [s for s in range(1, MAX_EDITORS_PER_SITE + 1) if s not in taken]
    if not free:
        names = ", ".join(e.email for e in site.editors)
        raise RegistryError(
            f"site {site_id} already has {MAX_EDITORS_PER_SITE} editors ({names}); "
            "remove one first")
    editor = Editor(site_id=site_id, slot=free[0], email=address, name=name.strip(),
                    phone=phone.strip(), language=language, created_at=now)
    session.add(editor)
    try:
        session.flush()
    except IntegrityError as exc:  # a concurrent add took the slot
        raise RegistryError(f"site {site_id} changed while adding {address}; try again") from exc
    return editor


def remove_editor(session: Session, email: str) -> None:
    editor = session.execute(
        select(Editor).where(Editor.email == normalize(email))).scalar_one_or_none()
    if editor is None:
        raise RegistryError(f"{email} is not a registered editor")
    session.delete(editor)


def add_agent(session: Session, email: str, now: datetime, name: str = "") -> Agent:
    address = _address(email)
    if session.execute(select(func.count()).select_from(Agent)
                       .where(Agent.email == address)).scalar_one():
        raise RegistryError(f"{address} is already an agent")
    agent = Agent(email=address, name=name.strip(), created_at=now)
    session.add(agent)
    session.flush()
    return agent


def remove_agent(session: Session, email: str) -> None:
    agent = session.execute(
        select(Agent).where(Agent.email == normalize(email))).scalar_one_or_none()
    if agent is None:
        raise RegistryError(f"{email} is not a registered agent")
    session.delete(agent)
