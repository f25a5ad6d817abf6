"""Fixtures that start real parts: SQLite and PostgreSQL databases, an SMTP sink playing the
relay, a private Dovecot, and the daemon itself (in a thread, or as a subprocess where a test
kills it).

Plain helpers (the desk's addresses, RunningDaemon, SettingsFactory) are in tests/support/desk.py;
test modules import them from there, not from this file."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mailgate import config
from mailgate.app import App
from mailgate.db.migrate import upgrade
from tests.support.desk import DESK, EDITOR, RunningDaemon, SettingsFactory, register_demo
from tests.support.dovecot import DEFAULT_PASSWORD, DEFAULT_USER, DovecotServer, require_dovecot
from tests.support.pgschema import private_schema
from tests.support.sink import SmtpSink

# Re-exported for the test modules that still import them from here (test_cli, test_policy).
__all__ = ["DESK", "EDITOR", "RunningDaemon", "SettingsFactory", "register_demo"]

PG_ENV = "MAILGATE_TEST_DATABASE_URL"


def _pg_base_url() -> str | None:
    url = os.environ.get(PG_ENV)
    if not url:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{PG_ENV} is not set under CI: storage tests must run on PostgreSQL")
        pytest.skip(f"PostgreSQL tests need {PG_ENV} (e.g. "
                    "postgresql+psycopg://postgres@127.0.0.1:5432/test)")
    return url


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, empty database: a SQLite file, or a private schema on PostgreSQL."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'mailgate.db'}"
        return
    base = _pg_base_url()
    assert base is not None
    with private_schema(base) as url:
        yield url


@pytest.fixture
def sink() -> Iterator[SmtpSink]:
    s = SmtpSink().start()
    yield s
    s.stop()


@pytest.fixture
def dovecot_server(tmp_path: Path) -> Iterator[DovecotServer]:
    """A started private Dovecot with user ``desk``/``secret``; stopped afterwards. Skips
    where Dovecot cannot run (fails instead under CI)."""
    require_dovecot()
    server = DovecotServer(tmp_path / "dovecot")
    server.add_user(DEFAULT_USER, DEFAULT_PASSWORD)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def make_settings(database_url: str, tmp_path: Path, sink: SmtpSink) -> SettingsFactory:
    def make(**sections: dict[str, Any]) -> config.Settings:
        data: dict[str, Any] = {
            "state_dir": str(tmp_path / "var"),
            "desk": {"name": "Test Desk", "address": DESK,
                     "complaints_address": "complaints@desk.example",
                     "phone": "+32 2 123 45 67", "secret": "test-secret-0123456789"},
            "database": {"url": database_url, "busy_timeout_ms": 2000},
            "smtp": {"host": "127.0.0.1", "port": 0, "max_message_size": 200_000},
            "outbound": {"relay_host": "127.0.0.1", "relay_port": sink.port,
                         "retry_base_seconds": 0.2, "retry_max_seconds": 1},
            "worker": {"poll_seconds": 0.3},
        }
        for name, values in sections.items():
            data.setdefault(name, {})
            if isinstance(values, dict):
                data[name].update(values)
            else:
                data[name] = values
        return config.from_dict(data)
    return make


@pytest.fixture
def app(make_settings: SettingsFactory) -> Iterator[App]:
    """A migrated database with site 1234 and its editor registered."""
    a = App(make_settings())
    upgrade(a.engine)
    register_demo(a)
    yield a
    a.close()


@pytest.fixture
def daemon(app: App) -> Iterator[RunningDaemon]:
    d = RunningDaemon(app).start()
    yield d
    d.stop()
