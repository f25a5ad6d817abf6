"""`mailgate serve`: starts the ways in, the worker and the sender; stops gracefully.

Signals (systemd/mailgate.service):

- SIGTERM/SIGINT: STOPPING=1; the SMTP listener drains (new sessions and new transactions
  hear ``421 4.3.2``, transactions under way finish and commit), then it closes; the intake
  commits what it holds, the worker and sender end their current pass, the outbox is
  flushed once, exit 0. Mail still pending is processed after the restart.
- SIGHUP: RELOADING=1 (with MONOTONIC_USEC, as Type=notify-reload wants), the config file is
  read again and its templates, [access], [sla], [lifecycle] and log level applied
  (App.reload); connections stay open. A broken config is logged and the running one kept.
  READY=1 either way.
"""

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

from mailgate import config as config_mod
from mailgate import metrics, scheduler, systemd, worker
from mailgate.app import App
from mailgate.db.migrate import require_current
from mailgate.inbound.imap import ImapPollers, Settle, Store, Tuning
from mailgate.inbound.intake import IntakeWriter
from mailgate.inbound.leader import leads_for
from mailgate.inbound.smtp import DeskHandler, Listener, smtp_factory
from mailgate.inbound.store import Arrival, Stored, store_raw
from mailgate.mail import language
from mailgate.outbound import sender
from mailgate.parse_ahead import ParseAhead
from mailgate.tickets import lifecycle
from mailgate.worker_processes import WorkerProcesses

log = logging.getLogger(__name__)

ExtraTask = Callable[["Daemon"], Coroutine[Any, Any, None]]

# How long an IMAP poller waits for a row another worker is processing before it leaves the
# mail in the folder for its next pass.
SETTLE_SECONDS = 10.0

# At a stop: how long SMTP sessions may take to finish their transactions before the rest
# are cut with an unsolicited 421, and how long the last outbox flush may take. Both fit
# well inside the unit's TimeoutStopSec=30 (tests/test_daemon.py measures the stop).
DRAIN_SECONDS = 10.0
FINAL_FLUSH_SECONDS = 5.0


def imap_callables(app: App) -> tuple[Store, Settle]:
    """What an IMAP poller may do: store raw bytes, and settle a stored row."""
    def store(raw: bytes, channel: str) -> Stored:
        return store_raw(app.sessions, app.clock, raw, channel)

    def settle(inbound_id: int, give_up: Callable[[], bool]) -> str:
        return worker.settle(app, inbound_id, SETTLE_SECONDS, give_up)

    return store, settle


def imap_pollers(app: App, on_processed: Callable[[], None] = lambda: None,
                 tuning: Tuning | None = None) -> ImapPollers:
    # On PostgreSQL each account is polled by one instance at a time (inbound/leader.py).
    return ImapPollers(app.settings.imap, *imap_callables(app), on_processed=on_processed,
                       tuning=tuning, leads=leads_for(app.engine))


def apply_log_level(level: str) -> None:
    """A reloaded log_level, as `mailgate` set it at start (cli._app): the root logger, and
    the chatty libraries never below WARNING."""
    root = logging.getLogger()
    root.setLevel(level.upper())
    for noisy in ("alembic", "apscheduler", "mail.log"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))


class Daemon:
    def __init__(self, app: App, extra_tasks: tuple[ExtraTask, ...] = (),
                 config_path: str | None = None) -> None:
        self.app = app
        self.extra_tasks = extra_tasks
        # What SIGHUP reads again: the file the settings came from.
        self.config_path = config_path if config_path is not None else app.settings.source
        self.listener: Listener | None = None
        self.drain_seconds = DRAIN_SECONDS
        self._sched: Any = None
        self._reload_lock: asyncio.Lock | None = None
        self._background: set[asyncio.Task[None]] = set()
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
        self.processes: WorkerProcesses | None = None
        self.ahead: ParseAhead | None = None

    # Called from any thread (SMTP handler, IMAP poller threads, scheduler).
    def wake_worker(self) -> None:
        if self._loop and self._work:
            self._loop.call_soon_threadsafe(self._work.set)
        if self.processes is not None:
            self.processes.wake()

    def wake_sender(self) -> None:
        if self._loop and self._send:
            self._loop.call_soon_threadsafe(self._send.set)

    @staticmethod
    def _watchdog_ping() -> None:
        systemd.notify("WATCHDOG=1")

    def stop(self) -> None:
        if self._loop and self._stop:
            self._loop.call_soon_threadsafe(self._stop.set)

    def reload(self) -> None:
        """What SIGHUP does; callable from any thread."""
        if self._loop:
            self._loop.call_soon_threadsafe(self._start_reload)

    def _start_reload(self) -> None:
        if self._stop is None or self._stop.is_set():
            return
        task = asyncio.get_running_loop().create_task(self._reload(), name="reload")
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _reload(self) -> None:
        assert self._reload_lock is not None and self._stop is not None
        async with self._reload_lock:  # one at a time, each reading the file afresh
            systemd.notify(f"RELOADING=1\nMONOTONIC_USEC={systemd.monotonic_usec()}\n"
                           "STATUS=reloading the configuration")
            log.info("SIGHUP: reloading %s", self.config_path or "the built-in defaults")
            try:
                await self._apply_config()
            finally:  # systemd waits in "reloading" until it hears READY=1
                if not self._stop.is_set():
                    systemd.notify("READY=1\nSTATUS=accepting mail")

    async def _apply_config(self) -> None:
        try:
            settings = await asyncio.to_thread(config_mod.load, self.config_path or None)
            restart_only = await asyncio.to_thread(self.app.reload, settings)
        except Exception as exc:
            log.error("reload failed, the running configuration stays: %s", exc)
            return
        apply_log_level(self.app.settings.log_level)
        if self._sched is not None:
            self._sched.reschedule_job("lifecycle-sweep", trigger="interval",
                                       seconds=self.app.settings.lifecycle.sweep_seconds)
        if self.processes is not None:
            self.processes.reload()
        log.info("configuration reloaded: templates, [access], [sla], [lifecycle], log_level")
        if restart_only:
            log.warning("changed in %s but applied only at a restart: %s",
                        self.config_path, ", ".join(restart_only))

    async def _idle(self, event: asyncio.Event, timeout: float | None) -> None:
        """Until `event` is set, the daemon stops, or `timeout` passes."""
        assert self._stop
        waits = [asyncio.ensure_future(event.wait()), asyncio.ensure_future(self._stop.wait())]
        try:
            await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()

    def _submit(self, raw: bytes, mail_from: str, rcpt_tos: list[str]) -> Future[Stored]:
        return self.intake.submit(Arrival(raw, "smtp", mail_from, tuple(rcpt_tos)))

    async def _worker_loop(self) -> None:
        assert self._work and self._stop
        poll = self.app.settings.worker.poll_seconds
        while not self._stop.is_set():
            await self._idle(self._work, poll)
            if self._stop.is_set():
                break  # a stop ends the pass under way, it starts none
            self._work.clear()
            try:
                result = await asyncio.to_thread(
                    worker.process_pending, self.app, None, self.intake.busy, self.wake_sender,
                    self.ahead)
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
            await self._idle(self._send, s.worker.poll_seconds)
            if self._stop.is_set():
                break  # the stop flushes once itself, after the worker's last pass
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
            await self._idle(self._sweep, None)
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
        self._reload_lock = asyncio.Lock()
        await asyncio.to_thread(require_current, self.app.engine)
        await asyncio.to_thread(lambda: self.app.desk)  # loads the signing secret once
        # /metrics and /healthz on [metrics] listen, first: a taken port starts nothing else.
        self.metrics.start()
        server = None
        self.intake.start()
        if s.smtp.enabled:
            handler = DeskHandler(s.desk.own_addresses, self._submit, s.smtp.max_recipients,
                                  on_stored=self.wake_worker)
            self.listener = smtp_factory(handler, socket.getfqdn(), s.smtp)
            server = await self._loop.create_server(
                self.metrics.smtp_sessions.wrap(self.listener),
                host=s.smtp.host, port=s.smtp.port, reuse_address=True)
            self.smtp_port = server.sockets[0].getsockname()[1]
            log.info("SMTP listening on %s:%s", s.smtp.host, self.smtp_port)
        # After the listener: a port already taken stops the start before any is spawned.
        extra = s.worker.process_count(s.database.url) - 1
        if extra > 0 and not self.config_path:
            # A worker process reads the settings from the file; these came from elsewhere.
            say = log.warning if s.worker.processes else log.info
            say("[worker] processes: the settings were not read from a file, so mail is "
                "processed by this process alone")
        elif extra > 0:
            self.processes = WorkerProcesses(extra, self.config_path, self.wake_sender)
            self.processes.start()
        if s.worker.parses_ahead(s.database.url):
            self.ahead = ParseAhead(s.database)
            self.ahead.start()
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
        self._sched = sched
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._loop.add_signal_handler(sig, self._stop.set)
            self._loop.add_signal_handler(signal.SIGHUP, self._start_reload)
        self._work.set()  # whatever was left pending before a restart
        self._send.set()
        self._sweep.set()  # and whatever fell due while we were down
        systemd.notify("READY=1\nSTATUS=accepting mail")
        # The language detector takes a second or two to build: not on the first mail's time.
        # After READY=1: the build (Rust) can hold the GIL for a while.
        warm = self._loop.run_in_executor(None, language.warm_up)
        self.ready.set()
        log.info("mailgate ready")
        try:
            await self._stop.wait()
        finally:
            self._stop.set()  # also when run() is left by an error: the loops end
            if self.listener is not None:
                self.listener.drain()  # first: no transaction starts after STOPPING=1
            systemd.notify("STOPPING=1\nSTATUS=stopping: finishing the mail in flight")
            await asyncio.to_thread(self.metrics.stop)
            log.info("stopping: new SMTP sessions hear 421, the transactions under way finish")
            # Before the loop ends: the pollers call wake_sender() into it.
            imap_stopped = asyncio.ensure_future(asyncio.to_thread(imap.stop))
            if server is not None and self.listener is not None:
                await self._drain_smtp(server, self.listener)
            await imap_stopped
            sched.shutdown(wait=False)
            # Whatever the intake holds is committed (every 250 already was).
            await asyncio.to_thread(self.intake.stop)
            # The worker and the sender end the pass under way and start none.
            await asyncio.gather(*tasks, warm, return_exceptions=True)
            if self.processes is not None:
                await asyncio.to_thread(self.processes.stop)
            if self.ahead is not None:
                await asyncio.to_thread(self.ahead.close)
            await self._final_flush()
            self.app.close()
            log.info("stopped")

    async def _drain_smtp(self, server: asyncio.Server, listener: Listener) -> None:
        """Newcomers hear 421 while the sessions open finish their transactions; then the
        listening socket closes. Sessions still open after drain_seconds (a client that
        idles, or one sending very slowly) are cut with an unsolicited 421: their mail has
        not been answered 250, so their queue keeps it."""
        listener.drain()
        if not await listener.wait_idle(self.drain_seconds):
            log.warning("%d SMTP sessions still open after %.0f s: closed with 421",
                        listener.shut_all(), self.drain_seconds)
        server.close()
        # Python >= 3.12 waits here for the connections to be gone; they are, or closing.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(server.wait_closed(), timeout=2)

    async def _final_flush(self) -> None:
        """One outbox flush after the worker's last pass, so that what it just decided
        (acknowledgements, notifications) leaves now rather than after the restart. In a
        daemon thread with a deadline: a hanging relay must not hold the exit past
        TimeoutStopSec (its rows stay leased, then pending, and go after the restart)."""
        done: Future[sender.FlushResult] = Future()
        done.set_running_or_notify_cancel()  # so a timeout below cannot cancel it

        def flush() -> None:
            try:
                done.set_result(sender.flush(self.app.sessions, self.app.clock,
                                             self.app.settings.outbound, self.app.transport))
            except BaseException as exc:
                done.set_exception(exc)

        threading.Thread(target=flush, name="final-flush", daemon=True).start()
        try:
            result = await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(done)),
                                            FINAL_FLUSH_SECONDS)
        except TimeoutError:
            log.warning("last outbox flush still running after %.0f s; left for the restart",
                        FINAL_FLUSH_SECONDS)
        except Exception:
            log.exception("last outbox flush failed; the outbox keeps its mail")
        else:
            if result.sent or result.retrying or result.failed:
                log.info("last outbox flush: %s sent, %s to retry, %s failed",
                         result.sent, result.retrying, result.failed)
