"""Group commit for the SMTP way in: one writer thread stores whatever arrived while the
previous commit ran, in one transaction, and only then releases each waiting `250`.

Store-first is unchanged (no client hears 250 before its mail is committed); the gain is one
transaction for a burst instead of one per mail. A batch that fails for any reason other than
an outage is retried mail by mail, so one bad mail cannot turn the others into 451s.

The writer keeps one DB-API connection of the engine's pool for itself and stores a batch
with one statement (``INSERT … ON CONFLICT (dedup_key) DO NOTHING RETURNING``; a second
look-up only when the batch held a duplicate). Through SQLAlchemy the same batch cost about
1 ms of the GIL per transaction, which the SMTP event loop, in the same process, waited for
(bench/ingest.py). The row is the one `mailgate deliver` writes (:mod:`mailgate.inbound.arrival`
makes the values, both insert the same columns) and SQLite's in-process write lock
(:mod:`mailgate.db.writelock`) is taken as every other writer does.

On SQLite the SMTP event loop first tries a turn's mails itself (``_flush_inline``): if the
write lock is free that instant they are committed there, with no hand-over to the thread
and back (two thread wake-ups the OS must schedule: on a busy machine the most of what a
mail cost beyond the bare server); if not, the thread takes them. Either way a future is
resolved only after the commit that holds its mail.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import queue
import threading
import time
from concurrent.futures import Future
from contextlib import nullcontext
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from mailgate.clock import Clock
from mailgate.db import dbapi, writelock
from mailgate.db.engine import StorageUnavailable
from mailgate.db.engine import is_unavailable as engine_unavailable
from mailgate.inbound.arrival import Arrival, Stored, inbound_row, log_stored, resolve

log = logging.getLogger(__name__)

MAX_BATCH = 200
# Larger mails always go through the thread: writing megabytes would hold up the loop.
INLINE_MAX = 256 * 1024
_STOP = object()

# The columns of arrival.inbound_row that are inserted, in order (`trail` is the literal
# JSON list [] in the statement: no JSON adapter needed). The same as mailgate/inbound/pipe.py.
Item = tuple[Arrival, "Future[Stored]", "asyncio.AbstractEventLoop | None"]
Outcome = tuple["Future[Stored]", "Stored | BaseException"]


def _unavailable(exc: BaseException) -> bool:
    return engine_unavailable(exc) or dbapi.is_unavailable(exc)


class IntakeWriter:
    def __init__(self, factory: sessionmaker[Session], clock: Clock) -> None:
        self.engine = factory.kw["bind"]
        self.clock = clock
        self.lock = writelock.for_engine(self.engine)
        self.dialect = "sqlite" if self.engine.dialect.name == "sqlite" else "postgresql"
        # Transactions this writer committed / rolled back (tests count them).
        self.committed = 0
        self.rolled_back = 0
        self._fairy: Any = None  # the pool's connection, owned by the writer thread
        # SQLite: a batch is first tried in the event loop itself, without waiting for the
        # database (see _flush_inline); the thread takes what that could not store.
        self.inline = self.dialect == "sqlite"
        self._inline_fairy: Any = None  # the loop's own connection
        self._inline_items: list[Item] = []
        self._queue: queue.Queue[object] = queue.Queue()
        self._arrivals: collections.deque[float] = collections.deque(maxlen=64)
        self._thread = threading.Thread(target=self._run, name="intake-writer", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._queue.put(_STOP)
        if self._thread.ident is not None:  # started
            self._thread.join(10)
        self._release()
        inline, self._inline_fairy = self._inline_fairy, None
        if inline is not None:
            with contextlib.suppress(Exception):
                inline.invalidate()  # its pragmas are not for the pool's other users

    def submit(self, arrival: Arrival) -> Future[Stored]:
        """Queues the mail; the future resolves once it is committed. Called from an event
        loop (the SMTP handler), the future is resolved in that loop's thread, all of a
        batch with one wake-up of the loop (one per mail cost a GIL hand-over each)."""
        self._arrivals.append(time.monotonic())
        future: Future[Stored] = Future()
        try:
            loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        if loop is not None and self.inline and len(arrival.raw) <= INLINE_MAX:
            self._inline_items.append((arrival, future, loop))
            if len(self._inline_items) == 1:
                # After the other sessions' callbacks of this turn of the loop: one batch.
                loop.call_soon(self._flush_inline)
            return future
        self._queue.put((arrival, future, loop))
        return future

    def _flush_inline(self) -> None:
        """In the event loop: commit the mails of this turn at once if SQLite's write lock
        is free this instant, else hand them to the writer thread. Under load each trip
        through the thread costs two wake-ups of threads the OS must schedule (bench/ingest.py
        measured mailgate at half the bare server's rate on a busy machine); a commit of a
        few mails is ~0.3 ms. The loop never waits: busy_timeout is 0 on its connection, and
        the WAL checkpoints (an fsync) are left to the other connections."""
        batch, self._inline_items = self._inline_items, []
        try:
            rows, results = self._store([a for a, _f, _l in batch], inline=True)
        except Exception:  # locked by another writer, or any failure: the thread's way
            for item in batch:
                self._queue.put(item)
            return
        _resolve([(future, stored) for (_a, future, _l), stored in zip(batch, results,
                                                                      strict=True)])
        log_stored(rows, results)

    def busy(self, window: float = 0.1, threshold: int = 8) -> bool:
        """True while mail arrives faster than ~80/s: the worker then steps aside so that
        senders are not kept waiting for their 250 (bench/ingest.py measured the gain)."""
        now = time.monotonic()
        return sum(1 for t in list(self._arrivals) if now - t < window) > threshold

    def _run(self) -> None:
        try:
            while True:
                first = self._queue.get()
                if first is _STOP:
                    return
                batch = [first]
                while len(batch) < MAX_BATCH:
                    try:
                        item = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if item is _STOP:
                        self._queue.put(_STOP)
                        break
                    batch.append(item)
                self._commit(batch)  # type: ignore[arg-type]
                # Not kept while waiting for the next mail: the last batch's raw bytes.
                first = item = batch = None  # type: ignore[assignment]
        finally:
            self._release()

    # --- the connection -----------------------------------------------------------------

    def _plain(self) -> dbapi.Plain:
        if self._fairy is None:
            self._fairy = self.engine.raw_connection()
        return dbapi.Plain(self._fairy.driver_connection, self.dialect)

    def _loop_plain(self) -> dbapi.Plain:
        if self._inline_fairy is None:
            fairy = self.engine.raw_connection()
            conn = fairy.driver_connection
            conn.execute("PRAGMA busy_timeout=0")
            conn.execute("PRAGMA wal_autocheckpoint=0")
            self._inline_fairy = fairy
        return dbapi.Plain(self._inline_fairy.driver_connection, self.dialect)

    def _release(self, invalidate: bool = False) -> None:
        fairy, self._fairy = self._fairy, None
        if fairy is None:
            return
        try:
            if invalidate:
                fairy.invalidate()  # broken (server gone): the pool opens a new one
            else:
                fairy.close()
        except Exception:  # closing what is already broken: nothing left to do
            log.debug("closing the intake connection failed", exc_info=True)

    # --- one batch ----------------------------------------------------------------------

    def _commit(self, batch: list[Item]) -> None:
        try:
            rows, results = self._store([a for a, _f, _l in batch])
        except StorageUnavailable as exc:
            self._settle(batch, [exc] * len(batch))
            return
        except Exception:
            if len(batch) > 1:
                log.exception("group commit of %d mails failed; storing one by one", len(batch))
                for item in batch:
                    self._commit([item])
                return
            log.exception("could not store a message")
            self._settle(batch, [RuntimeError("could not store the message")])
            return
        self._settle(batch, list(results))
        log_stored(rows, results)  # after the 250s are released: not on a sender's time

    @staticmethod
    def _settle(batch: list[Item], outcomes: list[Stored | BaseException]) -> None:
        """Resolves the futures: those of an event loop in one call into that loop."""
        by_loop: dict[asyncio.AbstractEventLoop | None, list[Outcome]] = {}
        for (_a, future, loop), outcome in zip(batch, outcomes, strict=True):
            by_loop.setdefault(loop, []).append((future, outcome))
        for loop, pairs in by_loop.items():
            if loop is not None:
                try:
                    loop.call_soon_threadsafe(_resolve, pairs)
                    continue
                except RuntimeError:  # the loop is closed: nobody waits in it any more
                    pass
            _resolve(pairs)

    def _store(self, arrivals: list[Arrival],
               inline: bool = False) -> tuple[list[dict[str, Any]], list[Stored]]:
        """Commit the batch in one transaction; StorageUnavailable if the database cannot
        take it now (then nothing of it is stored). `inline`: in the event loop, on its own
        connection, without the in-process lock (it never waits, so it cannot starve one)."""
        now = self.clock.now()
        rows = [inbound_row(a, now) for a in arrivals]
        if inline:
            known, new = self._insert(self._loop_plain(), rows)
            self.committed += 1
            return rows, resolve(rows, known, new)
        try:
            plain = self._plain()
            with self.lock.held(writelock.INTAKE) if self.lock else nullcontext():
                known, new = self._insert(plain, rows)
        except Exception as exc:
            if _unavailable(exc):
                self.rolled_back += 1
                self._release(invalidate=True)
                first = (str(exc).splitlines() or [type(exc).__name__])[0]
                raise StorageUnavailable(first) from exc
            self.rolled_back += 1
            raise
        self.committed += 1
        if plain.dialect == "postgresql" and any(
                len(v["raw"]) > dbapi.STREAM_ABOVE for v in rows):
            # libpq keeps its send buffer at the size of the largest message it sent: a big
            # mail's copy would stay with this connection. A new one for the next batch.
            self._release(invalidate=True)
        return rows, resolve(rows, known, new)

    @staticmethod
    def _insert(plain: dbapi.Plain,
                rows: list[dict[str, Any]]) -> tuple[dict[str, int], dict[str, int]]:
        """(dedup key → id stored before, dedup key → id stored now), committed."""
        with dbapi.write(plain) as cur:
            return dbapi.insert_inbound(plain, cur, rows)


def _resolve(pairs: list[Outcome]) -> None:
    for future, outcome in pairs:
        if future.done():  # cancelled by its waiter
            continue
        if isinstance(outcome, BaseException):
            future.set_exception(outcome)
        else:
            future.set_result(outcome)
