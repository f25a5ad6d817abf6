"""IMAP benchmark: how fast the real daemon drains a mailbox into tickets, and how soon a
live mail is picked up, against a bare imapclient loop on the same private Dovecot. Prints
figures; asserts nothing. Needs root and Dovecot 2.3 (as the tests do).

Usage, from the repository root::

    .venv/bin/python -m bench.imap                          # SQLite temp file, 200 mails
    .venv/bin/python -m bench.imap --messages 500 --samples 9 \\
        --database-url postgresql+psycopg://postgres@127.0.0.1:5432/test

What one invocation does, in one temporary directory with one private Dovecot
(``tests/support/dovecot.py``):

1. **bare**: ``--messages`` mails appended to user ``bare``'s INBOX; one imapclient connection
   does UID SEARCH, UID FETCH BODY.PEEK[] in chunks of 10 and UID MOVE to another folder,
   storing nothing. Then the IDLE wake-up floor: the connection idles, a mail is appended from
   a second connection, and the time until the ``EXISTS`` arrives is taken (``--samples``).
2. **mailgate**: the same mails appended to user ``desk``'s INBOX; a fresh database (SQLite
   file, or a private schema ``bench_<hex>`` on PostgreSQL, dropped afterwards) with the
   editor registered; the real :class:`~mailgate.daemon.Daemon` in a thread, outbound into a
   Maildir. ``drain`` runs from the daemon's start until every mail is a ticket and INBOX is
   empty. Then ``--samples`` live mails, one at a time once the poller is back in IDLE: the time
   from the end of APPEND until the ticket exists.

3. **store+process only**: the same number of mails through ``store_raw`` + ``process_one``
   in this thread on another fresh database, no IMAP: the floor the daemon's drain stands on.

Figures: ``msgs/s`` = messages / seconds; ``ratio mailgate/bare`` = mailgate msgs/s / bare
msgs/s (what storing, parsing, classifying and ticketing cost on top of the IMAP round trips);
``ratio mailgate/(store+process only)`` shows what the IMAP side and the daemon add to that
work; ``pickup`` p50/max in milliseconds.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from sqlalchemy import func, select

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # `python bench/imap.py` as well as `python -m bench.imap`
    sys.path.insert(0, str(ROOT))

from mailgate import config  # noqa: E402
from mailgate.app import App  # noqa: E402
from mailgate.daemon import Daemon  # noqa: E402
from mailgate.db.engine import transaction  # noqa: E402
from mailgate.db.migrate import upgrade  # noqa: E402
from mailgate.db.models import Ticket  # noqa: E402
from mailgate.inbound.store import store_raw  # noqa: E402
from mailgate.tickets import registry  # noqa: E402
from mailgate.worker import process_one  # noqa: E402
from tests.support.dovecot import DovecotServer, require_dovecot  # noqa: E402
from tests.support.mails import make_mail, wire  # noqa: E402
from tests.support.pgschema import private_schema  # noqa: E402

EDITOR = "eva@site1234.example.be"
DESK = "servicedesk@desk.example"
CHUNK = 10


def out(line: str) -> None:
    print(line, flush=True)


def wait(check: Callable[[], bool], timeout: float, what: str, interval: float = 0.005) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def mails(n: int, tag: str) -> list[bytes]:
    return [wire(make_mail(EDITOR, f"Bench {tag} {i}")) for i in range(n)]


def append_all(server: DovecotServer, user: str, password: str, raws: list[bytes]) -> None:
    with server.imap_client(user, password, timeout=30) as client:
        for raw in raws:
            client.append("INBOX", raw)


def inbox_size(server: DovecotServer, user: str, password: str) -> int:
    with server.imap_client(user, password) as client:
        return int(client.select_folder("INBOX", readonly=True)[b"EXISTS"])


# -- baseline ----------------------------------------------------------------------------------

def bare_drain(server: DovecotServer, user: str, password: str) -> float:
    """Seconds a bare loop takes to fetch and move the whole INBOX, storing nothing."""
    started = time.monotonic()
    with server.imap_client(user, password, timeout=30) as client:
        client.create_folder("Done")
        client.select_folder("INBOX")
        uids = sorted(client.search(["UNDELETED"]))
        for i in range(0, len(uids), CHUNK):
            chunk = uids[i:i + CHUNK]
            fetched = client.fetch(chunk, [b"BODY.PEEK[]"])
            assert all(b"BODY[]" in fetched[uid] for uid in chunk)
            client.move(chunk, "Done")
    return time.monotonic() - started


def bare_idle_wakeups(server: DovecotServer, user: str, password: str,
                      samples: int) -> list[float]:
    """The floor for pickup latency: APPEND on one connection → EXISTS on an idling one."""
    results = []
    with server.imap_client(user, password) as client, \
            server.imap_client(user, password) as appender:
        client.select_folder("INBOX")
        for raw in mails(samples, "idle"):
            client.idle()  # returns on the server's "+ idling": no race with the APPEND
            appender.append("INBOX", raw)
            appended = time.monotonic()
            while not any(r[1:2] == (b"EXISTS",) for r in client.idle_check(timeout=5)):
                pass
            results.append(time.monotonic() - appended)
            client.idle_done()
    return results


# -- mailgate ----------------------------------------------------------------------------------

@contextlib.contextmanager
def database(base_url: str | None, tmp: Path) -> Iterator[str]:
    if not base_url:
        yield f"sqlite:///{tmp / 'mailgate.db'}"
        return
    with private_schema(base_url, "bench") as url:
        yield url


def make_app(url: str, tmp: Path, server: DovecotServer, user: str, password: str) -> App:
    settings = config.from_dict({
        "state_dir": str(tmp / "var"), "log_level": "WARNING",
        "desk": {"name": "Bench Desk", "address": DESK, "complaints_address": f"c-{DESK}",
                 "secret": "bench-secret-0123456789"},
        "database": {"url": url},
        "smtp": {"host": "127.0.0.1", "port": 0},
        "outbound": {"maildir": str(tmp / "outbox")},
        "access": {"auto_replies_per_hour": 1_000_000},
        "imap": [{"name": "bench", "host": server.host, "port": server.port, "ssl": False,
                  "username": user, "password": password, "poll_interval": 60}],
    })
    app = App(settings)
    upgrade(app.engine)
    with transaction(app.sessions) as session:
        now = app.clock.now()
        registry.add_site(session, "1234", "Demo site", now)
        registry.add_editor(session, "1234", EDITOR, now, name="Eva Editor")
    return app


class DaemonThread:
    def __init__(self, app: App) -> None:
        self.daemon = Daemon(app)
        self.thread = threading.Thread(target=lambda: asyncio.run(self.daemon.run()),
                                       daemon=True)

    def start(self) -> DaemonThread:
        self.thread.start()
        if not self.daemon.ready.wait(30):
            raise SystemExit("daemon did not get ready")
        return self

    def stop(self) -> None:
        self.daemon.stop()
        self.thread.join(30)

    @property
    def idling(self) -> threading.Event:
        assert self.daemon.imap is not None
        return self.daemon.imap.pollers[0].idling


def process_only(url: str, tmp: Path, server: DovecotServer, n: int) -> float:
    """Seconds to store and process the same mails with no IMAP at all: the floor the
    daemon's drain stands on."""
    app = make_app(url, tmp / "floor", server, "none", "none")
    try:
        raws = mails(n, "floor")
        _ = app.desk  # the signing secret, loaded once as the daemon does
        started = time.monotonic()
        for raw in raws:
            process_one(app, store_raw(app.sessions, app.clock, raw, "bench").inbound_id)
        return time.monotonic() - started
    finally:
        app.close()


def ticket_count(app: App) -> int:
    with app.sessions() as session:
        return int(session.execute(select(func.count()).select_from(Ticket)).scalar_one())


def mailgate_run(server: DovecotServer, app: App, user: str, password: str, n: int,
                 samples: int) -> tuple[float, list[float]]:
    started = time.monotonic()
    d = DaemonThread(app).start()
    try:
        wait(lambda: ticket_count(app) == n and inbox_size(server, user, password) == 0,
             timeout=60 + n, what=f"{n} tickets", interval=0.02)
        drain = time.monotonic() - started
        pickups = []
        with server.imap_client(user, password) as appender:
            for i, raw in enumerate(mails(samples, "live")):
                wait(d.idling.is_set, timeout=30, what="IDLE")
                appender.append("INBOX", raw)
                appended = time.monotonic()
                wait(lambda i=i: ticket_count(app) == n + i + 1, timeout=30,
                     what="live ticket")
                pickups.append(time.monotonic() - appended)
    finally:
        d.stop()
    return drain, pickups


def ms(values: list[float]) -> str:
    return (f"p50 {statistics.median(values) * 1000:.0f} ms, "
            f"max {max(values) * 1000:.0f} ms (n={len(values)})")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=200)
    parser.add_argument("--samples", type=int, default=5, help="live mails for latency")
    parser.add_argument("--database-url", default=None,
                        help="PostgreSQL base URL (default: a SQLite temp file)")
    args = parser.parse_args(argv)
    require_dovecot()
    n = args.messages
    with tempfile.TemporaryDirectory(prefix="bench-imap-") as tmpdir:
        tmp = Path(tmpdir)
        server = DovecotServer(tmp / "dovecot")
        server.add_user("bare", "pw")
        server.add_user("desk", "pw")
        server.start()
        try:
            append_all(server, "bare", "pw", mails(n, "bare"))
            bare = bare_drain(server, "bare", "pw")
            floor = bare_idle_wakeups(server, "bare", "pw", args.samples)
            started = time.monotonic()
            append_all(server, "desk", "pw", mails(n, "desk"))
            appending = time.monotonic() - started
            with database(args.database_url, tmp / "floor") as url:
                floor_drain = process_only(url, tmp, server, n)
            with database(args.database_url, tmp) as url:
                app = make_app(url, tmp, server, "desk", "pw")
                try:
                    drain, pickups = mailgate_run(server, app, "desk", "pw", n, args.samples)
                finally:
                    app.close()
        finally:
            server.stop()
    db = "postgresql" if args.database_url else "sqlite"
    out(f"imap bench: {n} mails, Dovecot on loopback, database {db}")
    out(f"append (setup): {n / appending:.0f} msgs/s")
    out(f"bare fetch+move: {bare:.2f} s, {n / bare:.0f} msgs/s")
    out(f"store+process only, no IMAP: {floor_drain:.2f} s, {n / floor_drain:.0f} msgs/s")
    out(f"mailgate drain to tickets: {drain:.2f} s, {n / drain:.0f} msgs/s "
        "(daemon start included)")
    out(f"ratio mailgate/bare: {bare / drain:.3f}")
    out(f"ratio mailgate/(store+process only): {floor_drain / drain:.2f}")
    out(f"bare IDLE wake-up (Dovecot's own notify delay): {ms(floor)}")
    out(f"mailgate live pickup to ticket: {ms(pickups)}")


if __name__ == "__main__":
    main()
