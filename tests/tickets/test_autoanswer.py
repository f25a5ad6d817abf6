"""tickets/autoanswer.py reads on the session's connection: what the transaction recorded
and has not written yet (db/deferred.py writes it at the commit) still counts."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy.orm import Session

from mailgate.app import App
from mailgate.db import deferred
from mailgate.db.engine import transaction
from mailgate.db.models import AutoAnswer, BouncingAddress
from mailgate.tickets import autoanswer

EVA = "eva@site1234.example.be"


def test_answers_not_yet_flushed_count_against_the_limit(app: App) -> None:
    now = app.clock.now()
    with transaction(app.sessions) as session:
        assert autoanswer.allow(session, EVA, "ack", now, 2, None, digest="a")
        assert autoanswer.allow(session, EVA, "ack", now, 2, None, digest="b")
        session.flush()
        assert len(list(deferred.pending(session, AutoAnswer))) == 2  # not written yet
        assert not autoanswer.allow(session, EVA, "ack", now, 2, None, digest="c")
        assert autoanswer.allow(session, "jan@site1234.example.be", "ack", now, 2, None)
    with transaction(app.sessions) as session:  # and once flushed and committed, as well
        assert not autoanswer.allow(session, EVA, "ack", now, 2, None, digest="d")


def test_the_same_text_not_yet_flushed_counts_as_a_loop(app: App) -> None:
    now = app.clock.now()
    with transaction(app.sessions) as session:
        for _ in range(autoanswer.SAME_TEXT_PER_HOUR):
            assert autoanswer.allow(session, EVA, "ack", now, 60, None, digest="same")
        assert not autoanswer.allow(session, EVA, "ack", now, 60, None, digest="same")
        assert autoanswer.allow(session, EVA, "ack", now, 60, None, digest="other")


def _bounces(session: Session, at: datetime) -> bool:
    """Whether the brake treats EVA's address as bouncing (its limit is then 0 here)."""
    return not autoanswer.allow(session, EVA, "ack", at, 60, None, digest=str(at),
                                bouncing_per_hour=0)


def test_a_bounce_of_this_transaction_is_seen_before_it_is_flushed(app: App) -> None:
    now = app.clock.now()
    with transaction(app.sessions) as session:
        assert not _bounces(session, now)
        session.add(BouncingAddress(address=EVA, first_at=now, last_at=now, count=1))
        assert _bounces(session, now)
    with transaction(app.sessions) as session:
        assert _bounces(session, now)  # read with the brake's counts, in one statement
        assert not _bounces(session, now + autoanswer.BOUNCE_MEMORY + timedelta(seconds=1))
        flag = session.get(BouncingAddress, EVA)
        assert flag is not None
        flag.last_at = now - autoanswer.BOUNCE_MEMORY - timedelta(seconds=1)
        assert not _bounces(session, now)  # the session's own copy
