"""One poller per IMAP account among several instances: a PostgreSQL advisory lock.

Two instances polling one mailbox would be safe (the store's dedup, docs/design.md §1.2) but
would fetch, parse and race for every mail twice. So before it logs in, a poller takes
``pg_try_advisory_lock(key)`` — ``key`` derived from the account's server, user and folder,
so every instance computes the same one — on a connection of its own, and holds it as long
as it polls. A session-level advisory lock lives exactly as long as that connection: when the
holder is killed its connection closes, PostgreSQL drops the lock at once, and a standby,
which tries every ``leader_retry_seconds``, takes over within that time. (A holder whose
machine vanishes without closing the connection is noticed when PostgreSQL's TCP keepalive
gives up on it: ``tcp_keepalives_idle`` and friends on the server.)

The poller checks the lock between passes (:meth:`Lead.check`): a lost connection means a
lost lock, and it stops polling before anyone else could have started.

SQLite runs one instance per database file: no lock is taken (:func:`leads_for` returns
None).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import threading
from collections.abc import Callable

from sqlalchemy import text
from sqlalchemy.engine import Connection, Engine

from mailgate.config import ImapAccount

log = logging.getLogger(__name__)


class LeadLost(Exception):
    """The lock's connection broke: another instance may poll the account now."""


def lock_key(account: ImapAccount) -> int:
    """A signed 64-bit key (what pg_advisory_lock takes) for the account as configured: the
    same on every instance that runs the same config. Two accounts of one config on the
    same mailbox (under different names) do not wait for each other."""
    ident = f"mailgate-imap\0{account.name}\0{account.host}\0{account.port}\0" \
            f"{account.login_user}\0{account.folder}"
    return int.from_bytes(hashlib.sha256(ident.encode()).digest()[:8], "big", signed=True)


class Lead:
    """The right to poll one account, held through one connection."""

    def __init__(self, engine: Engine, account: ImapAccount) -> None:
        self.engine = engine
        self.account = account
        self.key = lock_key(account)
        self.retry_seconds = account.leader_retry_seconds
        self._conn: Connection | None = None

    @property
    def held(self) -> bool:
        return self._conn is not None

    def acquire(self, stop: threading.Event) -> bool:
        """Waits until the lock is ours (True) or `stop` is set (False). Database errors are
        logged and retried like a refusal: a poller never polls without the lock."""
        waiting_logged = False
        errors = 0
        while not stop.is_set():
            delay = self.retry_seconds
            try:
                if self._try():
                    log.info("imap account %r: this instance polls it now (lock %d)",
                             self.account.name, self.key)
                    return True
            except Exception as exc:
                # The database is away: try again soon (1 s, doubling), as the poller
                # would; the mail waits in its folder meanwhile.
                errors += 1
                delay = min(self.retry_seconds, 2.0 ** (errors - 1))
                log.warning("imap account %r: storage unavailable, cannot take the polling "
                            "lock: %s; retrying in %gs", self.account.name, exc, delay)
            else:
                errors = 0
                if not waiting_logged:
                    log.info("imap account %r: polled by another instance; taking over "
                             "when it stops (checked every %gs)", self.account.name,
                             self.retry_seconds)
                    waiting_logged = True
            stop.wait(delay)
        return False

    def _try(self) -> bool:
        conn = self.engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        try:
            got = bool(conn.execute(text("SELECT pg_try_advisory_lock(:k)"),
                                    {"k": self.key}).scalar_one())
        except BaseException:
            self._discard(conn)
            raise
        if got:
            self._conn = conn
        else:
            conn.close()
        return got

    def check(self) -> None:
        """Raises :class:`LeadLost` when the lock's connection no longer answers."""
        conn = self._conn
        if conn is None:
            raise LeadLost("the polling lock is not held")
        try:
            conn.execute(text("SELECT 1")).scalar_one()
        except Exception as exc:
            self._conn = None
            self._discard(conn)
            raise LeadLost(f"the polling lock's connection broke: {exc}") from exc

    def release(self) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        try:
            conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": self.key})
            conn.close()
        except Exception:
            self._discard(conn)

    @staticmethod
    def _discard(conn: Connection) -> None:
        """Closes the connection for good rather than pooling it: whatever it held dies
        with it."""
        with contextlib.suppress(Exception):
            conn.invalidate()
        with contextlib.suppress(Exception):
            conn.close()


# What the daemon hands the IMAP pollers: a Lead per account, or None (no lock needed).
Leads = Callable[[ImapAccount], Lead]


def leads_for(engine: Engine) -> Leads | None:
    """A Lead factory on PostgreSQL; None on SQLite (one instance per file)."""
    if engine.dialect.name != "postgresql":
        return None
    return lambda account: Lead(engine, account)
