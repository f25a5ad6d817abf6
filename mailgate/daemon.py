"""`mailgate serve`: starts the ways in, the worker and the sender; stops gracefully."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import sys
import threading
from collections.abc import Callable, Coroutine
from concurrent.futures import Future
from typing import Any

from mailgate import metrics, scheduler, systemd, worker
from mailgate.app import App
from mailgate.db.migrate import require_current
from mailgate.inbound.imap import ImapPollers, Settle, Store, Tuning
from mailgate.inbound.intake import IntakeWriter
from mailgate.inbound.smtp import DeskHandler, smtp_factory
from mailgate.inbound.store import Arrival, Stored, store_raw
from mailgate.mail import language
from mailgate.outbound import sender
from mailgate.tickets import lifecycle

log = logging.getLogger(__name__)

ExtraTask = Callable[["Daemon"], Coroutine[Any, Any, None]]

# How long an IMAP poller waits for a row another worker is processing before it leaves the
# mail in the folder for its next pass.
SETTLE_SECONDS = 10.0


def imap_callables(app: App) -> tuple[Store, Settle]:
    """What an IMAP poller may do: store raw bytes, and settle a stored row."""
    def store(raw: bytes, channel: str) -> Stored:
        return store_raw(app.sessions, app.clock, raw, channel)

    def settle(inbound_id: int, give_up: Callable[[], bool]) -> str:
        return worker.settle(app, inbound_id, SETTLE_SECONDS, give_up)

    return store, settle


def imap_pollers(app: App, on_processed: Callable[[], None] = lambda: None,
                 tuning: Tuning | None = None) -> ImapPollers:
    return ImapPollers(app.settings.imap, *imap_callables(app), on_processed=on_processed,
                       tuning=tuning)


class Daemon:
    def __init__(self, app: App, extra_tasks: tuple[ExtraTask, ...] = ()) -> None:
        self.app = app
        self.extra_tasks = extra_tasks
        self.smtp_port: int | None = None
        self.intake = IntakeWriter(app.sessions, app.clock)
        self.imap: ImapPollers | None = None
        self.metrics = metrics.Exporter(self)
        self.ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._work: asyncio.Event | None = None
        self._send: asyncio.Event | None = None
        self._sweep: asyncio.Event | None = None

    # Called from any thread (SMTP handler, IMAP poller threads, scheduler).
    def wake_worker(self) -> None:
        if self._loop and self._work:
            self._loop.call_soon_threadsafe(self._work.set)

    def wake_sender(self) -> None:
        if self._loop and self._send:
            self._loop.call_soon_threadsafe(self._send.set)

    @staticmethod
    def _watchdog_ping() -> None:
        systemd.notify("WATCHDOG=1")

    def stop(self) -> None:
        if self._loop and self._stop:
            self._loop.call_soon_threadsafe(self._stop.set)

    def _submit(self, raw: bytes, mail_from: str, rcpt_tos: list[str]) -> Future[Stored]:
        return self.intake.submit(Arrival(raw, "smtp", mail_from, tuple(rcpt_tos)))

    async def _worker_loop(self) -> None:
        assert self._work and self._stop
        poll = self.app.settings.worker.poll_seconds
        while not self._stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._work.wait(), timeout=poll)
            self._work.clear()
            try:
                result = await asyncio.to_thread(
                    worker.process_pending, self.app, None, self.intake.busy, self.wake_sender)
            except Exception:
                log.exception("worker pass failed; retrying on the next pass")
                continue
            if result.processed:
                self.wake_sender()
            if result.processed >= self.app.settings.worker.batch_size:
                self._work.set()

    async def _sender_loop(self) -> None:
        assert self._send and self._stop
        s = self.app.settings
        while not self._stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._send.wait(), timeout=s.worker.poll_seconds)
            self._send.clear()
            try:
                result = await asyncio.to_thread(
                    sender.flush, self.app.sessions, self.app.clock, s.outbound,
                    self.app.transport)
            except Exception:
                log.exception("outbox flush failed; retrying on the next pass")
                continue
            if result.sent + result.retrying + result.failed >= 100:
                self._send.set()

    def wake_sweeper(self) -> None:
        if self._loop and self._sweep:
            self._loop.call_soon_threadsafe(self._sweep.set)

    async def _sweep_loop(self) -> None:
        """The ticket clock: reminders, closings, SLA alerts (woken by the scheduler)."""
        assert self._sweep and self._stop
        while not self._stop.is_set():
            await self._sweep.wait()
            self._sweep.clear()
            if self._stop.is_set():
                break
            try:
                result = await asyncio.to_thread(
                    lifecycle.sweep, self.app.sessions, self.app.desk, self.app.clock.now())
            except Exception:
                log.exception("lifecycle sweep failed; retrying on the next pass")
                continue
            if result.total:
                log.info("sweep: %s reminded, %s closed, %s SLA warnings, %s SLA breaches",
                         result.reminded, result.closed, result.warned, result.breached)
                self.wake_sender()

    async def run(self) -> None:
        s = self.app.settings
        # The SMTP loop hands each mail to the intake thread and waits for its commit; with
        # the default 5 ms GIL switch interval that hand-over alone would dominate latency.
        sys.setswitchinterval(0.0005)
        self._loop = asyncio.get_running_loop()
        self._stop, self._work, self._send = asyncio.Event(), asyncio.Event(), asyncio.Event()
        self._sweep = asyncio.Event()
        await asyncio.to_thread(require_current, self.app.engine)
        await asyncio.to_thread(lambda: self.app.desk)  # loads the signing secret once
        # /metrics and /healthz on [metrics] listen, first: a taken port starts nothing else.
        self.metrics.start()
        server = None
        self.intake.start()
        if s.smtp.enabled:
            handler = DeskHandler(s.desk.own_addresses, self._submit, s.smtp.max_recipients,
                                  on_stored=self.wake_worker)
            server = await self._loop.create_server(
                self.metrics.smtp_sessions.wrap(
                    smtp_factory(handler, socket.getfqdn(), s.smtp.max_message_size)),
                host=s.smtp.host, port=s.smtp.port, reuse_address=True)
            self.smtp_port = server.sockets[0].getsockname()[1]
            log.info("SMTP listening on %s:%s", s.smtp.host, self.smtp_port)
        tasks = [asyncio.create_task(self._worker_loop(), name="worker"),
                 asyncio.create_task(self._sender_loop(), name="sender"),
                 asyncio.create_task(self._sweep_loop(), name="sweep")]
        tasks += [asyncio.create_task(t(self), name=getattr(t, "__name__", "extra"))
                  for t in self.extra_tasks]
        # One thread per [[imap]] account: imapclient blocks, the event loop must not.
        self.imap = imap = imap_pollers(self.app, on_processed=self.wake_sender)
        imap.start()
        interval = systemd.watchdog_interval()
        sched = scheduler.build(s.worker.poll_seconds, self.wake_worker, self.wake_sender,
                                (s.lifecycle.sweep_seconds, self.wake_sweeper),
                                (interval, self._watchdog_ping)
                                if interval else None)
        sched.start()
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._loop.add_signal_handler(sig, self._stop.set)
        self._work.set()  # whatever was left pending before a restart
        self._send.set()
        self._sweep.set()  # and whatever fell due while we were down
        # The language detector takes a second or two to build: not on the first mail's time.
        warm = self._loop.run_in_executor(None, language.warm_up)
        systemd.notify("READY=1\nSTATUS=accepting mail")
        self.ready.set()
        log.info("mailgate ready")
        try:
            await self._stop.wait()
        finally:
            systemd.notify("STOPPING=1")
            await asyncio.to_thread(self.metrics.stop)
            log.info("stopping: no new connections, finishing the current passes")
            if server is not None:
                server.close()
                # A client that keeps its connection open must not hold up the stop.
                try:
                    await asyncio.wait_for(server.wait_closed(), timeout=5)
                except TimeoutError:
                    log.warning("SMTP clients still connected at stop")
            # Before the loop ends: the pollers call wake_sender() into it.
            await asyncio.to_thread(imap.stop)
            sched.shutdown(wait=False)
            await asyncio.to_thread(self.intake.stop)
            self._work.set()
            self._send.set()
            self._sweep.set()
            await asyncio.gather(*tasks, warm, return_exceptions=True)
            self.app.close()
            log.info("stopped")
