"""The test desk: its addresses, its demo site and editor, the type of the `make_settings`
fixture, and the real daemon run in a thread. Test modules import these from here; the
fixtures that use them are in tests/conftest.py."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable

from mailgate import config
from mailgate.app import App
from mailgate.daemon import Daemon
from mailgate.db.engine import transaction
from mailgate.tickets import registry

EDITOR = "eva@site1234.example.be"
DESK = "servicedesk@desk.example"

# What the `make_settings` fixture gives: settings for the test database, sections overridable.
SettingsFactory = Callable[..., config.Settings]


def register_demo(app: App) -> None:
    """Site 1234 with EDITOR as its editor."""
    with transaction(app.sessions) as session:
        now = app.clock.now()
        registry.add_site(session, "1234", "Demo site", now)
        registry.add_editor(session, "1234", EDITOR, now, name="Eva Editor",
                            phone="+32 470 12 34 56")


class RunningDaemon:
    """The real daemon in a background thread with its own event loop."""

    def __init__(self, app: App) -> None:
        self.app = app
        self.daemon = Daemon(app)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            asyncio.run(self.daemon.run())
        except BaseException as exc:  # surfaced by start()/stop()
            self.error = exc
            self.daemon.ready.set()

    def start(self) -> RunningDaemon:
        self.thread.start()
        assert self.daemon.ready.wait(15), "daemon did not get ready"
        if self.error:
            raise self.error
        return self

    def stop(self) -> None:
        self.daemon.stop()
        self.thread.join(15)
        assert not self.thread.is_alive(), "daemon did not stop"

    @property
    def port(self) -> int:
        assert self.daemon.smtp_port
        return self.daemon.smtp_port
