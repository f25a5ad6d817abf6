"""The daemon runs the ticket clock by itself: its scheduler wakes the sweep."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import select

from mailgate.app import App
from mailgate.db.engine import transaction
from mailgate.db.migrate import upgrade
from mailgate.db.models import Ticket
from tests.support.desk import EDITOR, RunningDaemon, SettingsFactory, register_demo
from tests.support.mails import make_mail, send
from tests.support.sink import SmtpSink


def test_serve_sends_a_due_reminder_without_being_asked(make_settings: SettingsFactory,
                                                        sink: SmtpSink) -> None:
    app = App(make_settings(lifecycle={"sweep_seconds": 0.5}))
    upgrade(app.engine)
    register_demo(app)
    d = RunningDaemon(app).start()
    try:
        send(d.port, make_mail(EDITOR, "Menu weg"))
        [ack] = sink.wait_for(1)
        now = app.clock.now()
        with transaction(app.sessions) as s:
            t = s.execute(select(Ticket).where(Ticket.ref == "SD-1")).scalar_one()
            # Waiting since last week; its first reminder fell due a minute ago.
            t.state, t.waiting_since = "waiting", now - timedelta(days=7)
            t.remind_at, t.close_at = now - timedelta(minutes=1), now + timedelta(days=2)
        reminder = sink.wait_for(2, timeout=15)[1]
        assert reminder["To"] == EDITOR and reminder["Subject"] == ack["Subject"]
        assert reminder["Auto-Submitted"] == "auto-generated"
        with app.sessions() as s:
            t = s.execute(select(Ticket).where(Ticket.ref == "SD-1")).scalar_one()
            assert t.reminders_sent == 1 and t.state == "waiting"
    finally:
        d.stop()
        app.close()
