"""/metrics and /healthz of the real daemon, scraped over real HTTP, on both databases: the
figures move with a mail, a stopped relay turns /healthz to 503 (outbox) and back, a failing
IMAP account is named, and an unreachable database is reported, not raised."""

from __future__ import annotations

import json
import socket
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from prometheus_client.parser import text_string_to_metric_families

from mailgate import config
from mailgate.app import App
from mailgate.metrics import DeskCollector, Exporter, health
from tests.support.desk import EDITOR, RunningDaemon, SettingsFactory
from tests.support.dovecot import DEFAULT_PASSWORD, DEFAULT_USER, DovecotServer
from tests.support.mails import make_mail, send
from tests.support.sink import SmtpSink, free_port
from tests.support.wait import until

pytestmark = pytest.mark.timeout(60)

AppFactory = Callable[..., App]
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@pytest.fixture
def metrics_app(app: App, make_settings: SettingsFactory) -> Iterator[AppFactory]:
    """Apps on the migrated database of `app` (editor registered) with metrics on a free
    port; `metrics` overrides the [metrics] section."""
    made: list[App] = []

    def make(metrics: dict[str, Any] | None = None, **sections: Any) -> App:
        a = App(make_settings(metrics={"listen": "127.0.0.1:0", **(metrics or {})},
                              **sections))
        made.append(a)
        return a

    yield make
    for a in made:
        a.close()


@pytest.fixture
def running() -> Iterator[Callable[[App], RunningDaemon]]:
    started: list[RunningDaemon] = []

    def start(a: App) -> RunningDaemon:
        d = RunningDaemon(a).start()
        started.append(d)
        return d

    yield start
    for d in started:
        d.stop()


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def base(d: RunningDaemon) -> str:
    port = d.daemon.metrics.port
    assert port, "metrics server not started"
    return f"http://127.0.0.1:{port}"


def healthz(d: RunningDaemon) -> tuple[int, dict[str, Any]]:
    status, body = get(base(d) + "/healthz")
    return status, json.loads(body)


def scrape(d: RunningDaemon) -> Samples:
    status, body = get(base(d) + "/metrics")
    assert status == 200
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(body) for s in family.samples}


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def restart_on_same_port(sink: SmtpSink) -> None:
    """The relay comes back where it was (the fixture's teardown stops the new one)."""
    sink.controller = Controller(sink.handler, hostname="127.0.0.1", port=sink.port)
    sink.start()


# -- configuration ---------------------------------------------------------------------------

def settings(**metrics: Any) -> config.Settings:
    return config.from_dict({"state_dir": "/tmp/mailgate-unused", "metrics": metrics})


def test_metrics_are_off_by_default_and_the_keys_are_checked() -> None:
    assert settings().metrics.listen == ""
    assert settings(listen="0.0.0.0:9325").metrics.address == ("0.0.0.0", 9325)
    assert settings(listen="[::1]:9325").metrics.address == ("::1", 9325)
    for bad in ("9325", "localhost", "host:99999", "a b:1", "::1:9325"):
        with pytest.raises(config.ConfigError) as err:
            settings(listen=bad)
        assert err.value.key == "metrics.listen"
    for key in ("outbox_alarm_seconds", "imap_alarm_seconds"):
        with pytest.raises(config.ConfigError) as err:
            settings(**{key: 0})
        assert err.value.key == f"metrics.{key}"
    with pytest.raises(config.ConfigError) as err:
        settings(listen=9325)
    assert err.value.key == "metrics.listen"


# -- the daemon, scraped ---------------------------------------------------------------------

def test_a_mail_moves_the_figures(metrics_app: AppFactory, sink: SmtpSink,
                                  running: Callable[[App], RunningDaemon]) -> None:
    d = running(metrics_app())
    status, body = healthz(d)
    assert (status, body["status"], body["reason"]) == (200, "ok", "")
    assert set(body["checks"]) == {"database", "listener", "outbox", "imap"}
    before = scrape(d)
    assert value(before, "mailgate_database_up") == 1
    assert value(before, "mailgate_tickets", state="new", priority="normal") == 0
    assert value(before, "mailgate_smtp_sessions_total") == 0  # /healthz's probe is not one

    send(d.port, make_mail(EDITOR, "Contact form gives error 500"))
    sink.wait_for(1)
    after = until(lambda: (s := scrape(d)) and value(s, "mailgate_outbox_mails",
                                                     status="sent") == 1 and s,
                  what="the acknowledgement marked sent")
    assert value(after, "mailgate_inbound_mails", channel="smtp", kind="new-request",
                 status="ticket") == 1
    assert value(after, "mailgate_tickets", state="new", priority="normal") == 1
    assert value(after, "mailgate_tickets", state="open", priority="urgent") == 0
    assert value(after, "mailgate_outbox_mails", status="pending") == 0
    assert value(after, "mailgate_outbox_oldest_pending_age_seconds") == 0
    assert value(after, "mailgate_quarantine_mails") == 0
    assert value(after, "mailgate_sla_alerts", kind="breach") == 0
    assert value(after, "mailgate_smtp_sessions_total") == 1
    assert value(after, "mailgate_smtp_sessions_active") == 0
    # One acknowledgement, handed to the relay within seconds of its mail being stored.
    assert value(after, "mailgate_ack_latency_seconds_bucket", le="+Inf") == 1
    assert value(after, "mailgate_ack_latency_seconds_bucket", le="10.0") == 1
    assert value(after, "mailgate_ack_latency_seconds_gcount") == 1
    assert 0 < value(after, "mailgate_ack_latency_seconds_gsum") < 10
    assert value(after, "process_cpu_seconds_total") > 0

    status, _ = healthz(d)
    assert status == 200
    assert value(scrape(d), "mailgate_smtp_sessions_total") == 1
    assert get(base(d) + "/nothing")[0] == 404


def test_a_stopped_relay_turns_healthz_to_503_and_back(
        metrics_app: AppFactory, sink: SmtpSink,
        running: Callable[[App], RunningDaemon]) -> None:
    d = running(metrics_app({"outbox_alarm_seconds": 1}))
    assert healthz(d)[0] == 200
    sink.stop()
    send(d.port, make_mail(EDITOR, "Contact form gives error 500"))

    def failing() -> dict[str, Any] | None:
        status, body = healthz(d)
        return body if status == 503 else None

    body = until(failing, timeout=15, interval=0.2, what="/healthz 503")
    assert body["status"] == "fail"
    assert body["reason"].startswith("outbox: 1 pending")
    assert body["checks"]["outbox"]["ok"] is False
    assert body["checks"]["outbox"]["oldest_pending_seconds"] > 1
    assert all(body["checks"][c]["ok"] for c in ("database", "listener", "imap"))
    samples = scrape(d)
    assert value(samples, "mailgate_outbox_mails", status="pending") == 1
    assert value(samples, "mailgate_outbox_oldest_pending_age_seconds") > 1

    restart_on_same_port(sink)
    until(lambda: healthz(d)[0] == 200, timeout=15, interval=0.2, what="/healthz 200 again")
    assert "[SD-1]" in str(sink.wait_for(1)[0]["Subject"])
    assert healthz(d)[1]["checks"]["outbox"]["pending"] == 0


def test_imap_accounts_connected_and_failing(
        metrics_app: AppFactory, dovecot_server: DovecotServer, sink: SmtpSink,
        running: Callable[[App], RunningDaemon]) -> None:
    good = {"name": "desk", "host": dovecot_server.host, "port": dovecot_server.port,
            "ssl": False, "username": DEFAULT_USER, "password": DEFAULT_PASSWORD,
            "poll_interval": 60, "timeout_seconds": 5}
    down = {**good, "name": "down", "port": free_port()}  # nothing listens there
    d = running(metrics_app({"imap_alarm_seconds": 0.5}, imap=[good, down]))
    assert d.daemon.imap is not None
    until(lambda: d.daemon.imap and d.daemon.imap.pollers[0].idling.is_set(),
          what="the good account in IDLE")

    def failing() -> dict[str, Any] | None:
        status, body = healthz(d)
        return body if status == 503 else None

    body = until(failing, timeout=10, interval=0.1, what="/healthz 503")
    assert body["checks"]["imap"]["failing"] == ["down"]
    assert body["reason"].startswith("imap: failing for over 0.5s: down")
    samples = scrape(d)
    assert value(samples, "mailgate_imap_connected", account="desk") == 1
    assert value(samples, "mailgate_imap_connected", account="down") == 0
    assert value(samples, "mailgate_imap_last_poll_success_timestamp_seconds",
                 account="desk") > 0
    assert value(samples, "mailgate_imap_last_poll_success_timestamp_seconds",
                 account="down") == 0
    assert value(samples, "mailgate_imap_failing_seconds", account="down") > 0.5
    assert value(samples, "mailgate_imap_failing_seconds", account="desk") == 0


# -- without a daemon ------------------------------------------------------------------------

@dataclass
class Stub:
    """What the exporter reads from a daemon, for the parts that need none running."""

    app: App
    smtp_port: int | None = None
    imap: Any = None


def test_an_unreachable_database_is_reported_not_raised(tmp_path: Any) -> None:
    port = free_port()  # nothing listens: connection refused at once
    a = App(config.from_dict({
        "state_dir": str(tmp_path), "smtp": {"enabled": False},
        "database": {"url": f"postgresql+psycopg://postgres@127.0.0.1:{port}/none"}}))
    try:
        stub = Stub(a)
        body = health(stub, Exporter(stub).smtp_sessions)
        assert body["status"] == "fail"
        assert body["checks"]["database"]["ok"] is False
        assert body["checks"]["database"]["detail"].startswith("unreachable")
        assert body["checks"]["outbox"]["ok"] is False
        assert body["checks"]["listener"] == {"ok": True, "detail": "SMTP listener disabled"}
        families = {f.name: f for f in DeskCollector(stub).collect()}
        assert families["mailgate_database_up"].samples[0].value == 0
        assert "mailgate_tickets" not in families
    finally:
        a.close()


def test_a_taken_port_names_the_key(tmp_path: Any) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        a = App(config.from_dict({"state_dir": str(tmp_path),
                                  "metrics": {"listen": f"127.0.0.1:{port}"}}))
        with pytest.raises(OSError, match=r"metrics\.listen"):
            Exporter(Stub(a)).start()
