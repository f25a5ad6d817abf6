"""Group commit for the SMTP way in: one writer thread stores whatever arrived while the
previous commit ran, in one transaction, and only then releases each waiting `250`.

Store-first is unchanged (no client hears 250 before its mail is committed); the gain is one
transaction and one fsync for a burst instead of one per mail. A batch that fails for any
reason other than an outage is retried mail by mail, so one bad mail cannot turn the others
into 451s.
"""

from __future__ import annotations

import collections
import logging
import queue
import threading
import time
from concurrent.futures import Future

from sqlalchemy.orm import Session, sessionmaker

from mailgate.clock import Clock
from mailgate.db.engine import StorageUnavailable
from mailgate.inbound.store import Arrival, Stored, store_many

log = logging.getLogger(__name__)

MAX_BATCH = 200
_STOP = object()


class IntakeWriter:
    def __init__(self, factory: sessionmaker[Session], clock: Clock) -> None:
        self.factory = factory
        self.clock = clock
        self._queue: queue.Queue[object] = queue.Queue()
        self._arrivals: collections.deque[float] = collections.deque(maxlen=64)
        self._thread = threading.Thread(target=self._run, name="intake-writer", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._queue.put(_STOP)
        self._thread.join(10)

    def submit(self, arrival: Arrival) -> Future[Stored]:
        self._arrivals.append(time.monotonic())
        future: Future[Stored] = Future()
        self._queue.put((arrival, future))
        return future

    def busy(self, window: float = 0.1, threshold: int = 8) -> bool:
        """True while mail arrives faster than ~80/s: the worker then steps aside so that
        senders are not kept waiting for their 250 (bench/ingest.py measured the gain)."""
        now = time.monotonic()
        return sum(1 for t in list(self._arrivals) if now - t < window) > threshold

    def _run(self) -> None:
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

    def _commit(self, batch: list[tuple[Arrival, Future[Stored]]]) -> None:
        try:
            results = store_many(self.factory, self.clock, [a for a, _f in batch])
        except StorageUnavailable as exc:
            for _a, future in batch:
                future.set_exception(exc)
            return
        except Exception:
            if len(batch) > 1:
                log.exception("group commit of %d mails failed; storing one by one", len(batch))
                for item in batch:
                    self._commit([item])
                return
            log.exception("could not store a message")
            batch[0][1].set_exception(RuntimeError("could not store the message"))
            return
        for (_a, future), stored in zip(batch, results, strict=True):
            future.set_result(stored)
