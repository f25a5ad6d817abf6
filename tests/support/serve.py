"""The real `python -m mailgate --config F serve` as a subprocess (for tests that kill it),
and a blast of mail over several SMTP connections with every answer written down.

The config is TOML written here: the desk of tests/support/desk.py, the relay an SmtpSink in
the test's process, the loop brake lifted above the number of mails a blast sends (every
mail comes from the one demo editor)."""

from __future__ import annotations

import os
import signal
import smtplib
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path

from sqlalchemy import create_engine

from mailgate import config
from mailgate.app import App
from mailgate.db.migrate import upgrade
from tests.support.desk import DESK, EDITOR, register_demo
from tests.support.sink import free_port

REPO = Path(__file__).resolve().parent.parent.parent


def toml(url: str, state: Path, port: int, relay_port: int, extra: str = "",
         sections: dict[str, str] | None = None) -> str:
    """A whole config file; `sections` adds lines to (or creates) a section by name."""
    add = sections or {}
    base = {
        "desk": f'name = "Test Desk"\naddress = "{DESK}"\n'
                'complaints_address = "complaints@desk.example"\n'
                'secret = "test-secret-0123456789"',
        "database": f'url = "{url}"\nbusy_timeout_ms = 5000',
        "smtp": f'host = "127.0.0.1"\nport = {port}',
        "outbound": f'relay_host = "127.0.0.1"\nrelay_port = {relay_port}\n'
                    "retry_base_seconds = 0.2\nretry_max_seconds = 1\nlease_seconds = 3",
        "worker": "poll_seconds = 0.5",
        "access": "acks_per_hour = 100000\nauto_replies_per_hour = 100000",
        "lifecycle": "sweep_seconds = 1",
    }
    for name, lines in add.items():
        base[name] = f"{base[name]}\n{lines}" if name in base else lines
    body = "\n".join(f"[{name}]\n{lines}" for name, lines in base.items()
                     if not name.startswith("[["))
    tables = "\n".join(f"{name}\n{lines}" for name, lines in base.items()
                       if name.startswith("[["))
    return f'state_dir = "{state}"\n{extra}\n{body}\n{tables}\n'


class ServeProcess:
    """One `serve` process on a given database; `prepare()` migrates and registers the
    demo editor once per database (a second instance on the same one skips it)."""

    def __init__(self, workdir: Path, url: str, relay_port: int, *, name: str = "serve",
                 sections: dict[str, str] | None = None, extra: str = "") -> None:
        self.url = url
        self.dir = workdir / name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.config = self.dir / "mailgate.toml"
        self.config.write_text(toml(url, self.dir / "var", self.port, relay_port, extra,
                                    sections))
        self.log = self.dir / "serve.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def prepare(self) -> ServeProcess:
        app = App(config.load(self.config))
        try:
            upgrade(app.engine)
            register_demo(app)
        finally:
            app.close()
        return self

    def start(self, timeout: float = 30.0) -> ServeProcess:
        env = {k: v for k, v in os.environ.items()
               if k not in ("MAILGATE_CONFIG", "NOTIFY_SOCKET", "WATCHDOG_USEC")}
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "mailgate", "--config", str(self.config), "serve"],
                env=env, stdout=out, stderr=out, stdin=subprocess.DEVNULL, cwd=REPO)
        self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float) -> None:
        """Until the listener answers NOOP (the daemon listens only once it is ready)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"serve exited with {self.proc.returncode}:\n"
                                     f"{self.tail()}")
            try:
                with smtplib.SMTP("127.0.0.1", self.port, timeout=2) as smtp:
                    smtp.noop()
                return
            except (OSError, smtplib.SMTPException):
                time.sleep(0.1)
        raise AssertionError(f"serve not ready after {timeout}s:\n{self.tail()}")

    def kill9(self) -> None:
        """SIGKILL: no drain, no last flush, nothing committed that was not already."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""


def request(n: int, tag: str) -> tuple[str, bytes]:
    """(Message-ID, bytes) of the demo editor's n-th request; every one a different text,
    so the same-text loop brake never holds an acknowledgement back."""
    mid = f"<{tag}-{n}@site1234.example.be>"
    msg = EmailMessage()
    msg["From"] = f"Eva Editor <{EDITOR}>"
    msg["To"] = DESK
    msg["Subject"] = f"Site 1234: {tag} request {n}"
    msg["Message-ID"] = mid
    msg.set_content(f"Request {n} of the {tag} test: the form gives error 500.\n")
    return mid, msg.as_bytes()


@dataclass
class Blast:
    """Threads sending mails over reused SMTP connections to one or more ports, each
    outcome written down. A connection that breaks is opened again for the next mail (the
    mail it was sending counts as not accepted: no 250 was read)."""

    ports: list[int]
    mails: list[tuple[str, bytes]]
    accepted: list[str] = field(default_factory=list)
    refused: list[tuple[str, str]] = field(default_factory=list)  # 4xx or no connection
    lock: threading.Lock = field(default_factory=threading.Lock)
    stop: threading.Event = field(default_factory=threading.Event)
    pace: float = 0.0  # seconds between two mails of one connection

    def run(self, threads: int) -> list[threading.Thread]:
        chunks = [self.mails[i::threads] for i in range(threads)]
        started = [threading.Thread(target=self._send_all, args=(c, self.ports[i % len(
            self.ports)]), daemon=True) for i, c in enumerate(chunks)]
        for t in started:
            t.start()
        return started

    def _send_all(self, chunk: list[tuple[str, bytes]], port: int) -> None:
        smtp: smtplib.SMTP | None = None
        for mid, raw in chunk:
            if self.stop.is_set():
                break
            try:
                if smtp is None:
                    smtp = smtplib.SMTP("127.0.0.1", port, timeout=20)
                    smtp.ehlo()
                code, _ = smtp.mail(EDITOR)
                if code == 250:
                    code, _ = smtp.rcpt(DESK)
                if code == 250:
                    code, _ = smtp.data(raw)
            except (OSError, smtplib.SMTPException) as exc:
                with self.lock:
                    self.refused.append((mid, repr(exc)))
                if smtp is not None:
                    smtp.close()
                smtp = None
                continue
            with self.lock:
                if code == 250:
                    self.accepted.append(mid)
                else:
                    self.refused.append((mid, str(code)))
            if self.pace:
                time.sleep(self.pace)
        if smtp is not None:
            try:
                smtp.quit()
            except (OSError, smtplib.SMTPException):
                smtp.close()


def count_rows(url: str, sql: str) -> int:
    from sqlalchemy import text

    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return int(conn.execute(text(sql)).scalar_one())
    finally:
        engine.dispose()
