"""Parsing ahead of the worker, in a process of its own (``[worker] parse_ahead``).

On SQLite the daemon's worker thread is the one writer, and it shares one interpreter lock
with the listener and the sender: the daemon used one core of two while the worker thread
was the bottleneck (bench/mix.py --drain). Parsing is a pure function of a mail's stored
bytes and was a fifth of the worker's time; here a helper process reads the next pending
mails on a connection of its own and parses them while the worker writes the ones before —
this pass's and the next one's, so that a pass never starts by waiting. It also reads each
as a request (:func:`mailgate.mail.extract.extract`, against the registered sites), which
the worker takes when the sites are still the same.

Whatever goes wrong there leaves the mail to be parsed by the worker as before — the same
function on the same bytes, so the same result or the same quarantine reason: a mail the
helper cannot parse, one over :data:`MAX_BYTES` (kept out so that no big mail is held twice,
issue 11's memory goal), a result not there within :data:`WAIT_SECONDS`, a helper that died
(it is started again at the next pass).
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import threading
import time
from collections.abc import Iterable
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

from mailgate.config import DatabaseSettings
from mailgate.mail.extract import extract
from mailgate.mail.parse import ParsedMail, parse

log = logging.getLogger(__name__)

MAX_BYTES = 1 << 20
WAIT_SECONDS = 5.0
RETRY_SECONDS = 60.0  # after the helper failed: a broken one would otherwise spin
CHUNK = 16  # mails per request to the helper: the worker's group (worker.GROUP_MAX)


class ParseAhead:
    def __init__(self, db: DatabaseSettings) -> None:
        self._db = db
        self._pool: ProcessPoolExecutor | None = None
        self._chunks: dict[int, Future[dict[int, ParsedMail]]] = {}
        self._retry_at = 0.0

    def start(self) -> None:
        """Starts the helper now (its imports take a second), not with the first batch."""
        self._started()

    def _started(self) -> ProcessPoolExecutor | None:
        if self._pool is None and time.monotonic() >= self._retry_at:
            # Spawned, not forked: the daemon has threads, and a fork copies their locks.
            self._pool = ProcessPoolExecutor(
                1, mp_context=multiprocessing.get_context("spawn"),
                initializer=_open, initargs=(self._db, os.getpid()))
            self._pool.submit(int)  # spawns the process
        return self._pool

    def submit(self, ids: list[int]) -> None:
        """Starts parsing the pending mails ``ids``, in chunks, in the helper."""
        pool = self._started()
        if pool is None:
            return
        for at in range(0, len(ids), CHUNK):
            chunk = [i for i in ids[at:at + CHUNK] if i not in self._chunks]
            if not chunk:
                continue
            try:
                future = pool.submit(_parse_rows, chunk)
            except Exception as exc:  # the helper died (BrokenProcessPool): a new one later
                self._broken(exc)
                return
            for i in chunk:
                self._chunks[i] = future

    def take(self, inbound_id: int) -> ParsedMail | None:
        """The helper's parse of the mail, or None: parse it here."""
        future = self._chunks.pop(inbound_id, None)
        if future is None:
            return None
        try:
            return future.result(timeout=WAIT_SECONDS).get(inbound_id)
        except FutureTimeout as exc:  # stuck or starved: not another wait per mail
            self._broken(exc)
            return None
        except Exception as exc:
            self._broken(exc)
            return None

    def forget(self, keep: Iterable[int] = ()) -> None:
        """Drops what was not taken (rows another worker had, a pass that ended early),
        except the parses of ``keep``, the next pass's mails: at most one pass is held."""
        kept = {i: self._chunks[i] for i in keep if i in self._chunks}
        self._chunks = kept

    def close(self) -> None:
        self.forget()
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)  # the process ends on its own
            self._pool = None

    def _broken(self, exc: BaseException) -> None:
        log.warning("parse-ahead helper failed, parsing in the worker for %.0f s: %r",
                    RETRY_SECONDS, exc)
        self._retry_at = time.monotonic() + RETRY_SECONDS
        self._chunks.clear()
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None


# --- in the helper process ---------------------------------------------------------------

_open_for_life = contextlib.ExitStack()  # the helper's connection, closed with the process
_conn: Any = None
_mark = "?"


def _open(db: DatabaseSettings, daemon: int) -> None:
    global _conn, _mark
    from mailgate.db import dbapi

    plain = _open_for_life.enter_context(dbapi.connect(db))
    _conn, _mark = plain.conn, plain.mark
    threading.Thread(target=_follow, args=(daemon,), name="follow-daemon", daemon=True).start()


PARENT_CHECK_SECONDS = 1.0


def _follow(daemon: int) -> None:
    """Ends the helper once the daemon is gone. A daemon killed with SIGKILL closes nothing,
    and the pool's queue, both ends of which the helper holds, never tells it: helpers
    were left behind for good, the database open (seen after tests/test_crash.py)."""
    while os.getppid() == daemon:
        time.sleep(PARENT_CHECK_SECONDS)
    os._exit(0)


def _parse_rows(ids: list[int]) -> dict[int, ParsedMail]:
    marks = ",".join([_mark] * len(ids))
    cur = _conn.cursor()
    try:
        # Autocommit: no read transaction stays open between chunks (it would keep SQLite
        # from checkpointing its log).
        cur.execute(f"SELECT id, envelope_from, raw FROM inbound WHERE id IN ({marks}) "
                    f"AND status = 'pending' AND size <= {MAX_BYTES}", ids)
        rows = cur.fetchall()
        cur.execute("SELECT site_id FROM site")
        # The registered sites as the worker will read them; a site registered meanwhile
        # makes the worker read the mail again (extract() compares them).
        known_sites = frozenset(sid for (sid,) in cur.fetchall())
    finally:
        cur.close()
    out: dict[int, ParsedMail] = {}
    for inbound_id, envelope_from, raw in rows:
        try:
            mail = parse(bytes(raw), envelope_from)
        except Exception:  # the worker parses it again, and says why
            continue
        # What the desk reads in a request (tickets/completeness.py), a tenth of the
        # worker's time, worked out here with the parse.
        with contextlib.suppress(Exception):
            extract(mail, known_sites)
        out[inbound_id] = mail
    return out
