"""Worker processes beside the daemon's own worker thread (``[worker] processes``).

Processing a mail is CPU work in Python (parse, decide, write the ticket, compose the
answers); in one process it shares one interpreter lock with the SMTP listener, the IMAP
pollers and the sender. On PostgreSQL, where workers claim rows with ``SKIP LOCKED`` and
never wait on each other, more processes use more cores (bench/mix.py).

Each is ``python -m mailgate work``: the same worker pass over pending rows as the
daemon's thread, nothing else (no listener, no sender, no sweeps). The daemon talks to it
over its standard streams: a byte on its stdin wakes it (mail was stored), a line on its
stdout tells the daemon it committed mail (the sender wakes), and the end of its stdin —
the daemon stopping, or dying — ends it after the pass under way. A process that ends on
its own is started again.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from mailgate import worker
from mailgate.app import App

log = logging.getLogger(__name__)

# A process that ends on its own is started again after this long, doubling up to the
# maximum while it keeps ending within RESTART_RESET seconds (a broken install would
# otherwise spin).
RESTART_FIRST = 1.0
RESTART_MAX = 60.0
RESTART_RESET = 60.0
STOP_SECONDS = 10.0  # inside the unit's TimeoutStopSec with the SMTP drain


def command(config_path: str | None) -> list[str]:
    config = ["--config", config_path] if config_path else []
    return [sys.executable, "-m", "mailgate", *config, "work"]


@dataclass
class _Child:
    slot: int
    proc: subprocess.Popen[bytes]
    started: float
    reader: threading.Thread | None = None


@dataclass
class WorkerProcesses:
    """``count`` worker processes for the daemon; ``on_processed`` is called (from a reader
    thread) each time one of them committed mail."""

    count: int
    config_path: str | None
    on_processed: Callable[[], None]
    _children: dict[int, _Child] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _stopping: bool = False
    _backoff: dict[int, float] = field(default_factory=dict)

    def start(self) -> None:
        for slot in range(self.count):
            self._spawn(slot)

    def _spawn(self, slot: int) -> None:
        env = {k: v for k, v in os.environ.items()
               # The daemon alone speaks to systemd.
               if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_FDS",
                            "LISTEN_PID", "LISTEN_FDNAMES")}
        # The child starts with SIGHUP blocked (a mask survives exec): a reload passed on
        # before its handler is in place waits for it instead of killing it.
        old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGHUP})
        try:
            proc = subprocess.Popen(command(self.config_path), stdin=subprocess.PIPE,
                                    stdout=subprocess.PIPE, env=env, close_fds=True)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)
        assert proc.stdin is not None
        os.set_blocking(proc.stdin.fileno(), False)
        child = _Child(slot, proc, time.monotonic())
        child.reader = threading.Thread(target=self._read, args=(child,),
                                        name=f"worker-process-{slot}", daemon=True)
        with self._lock:
            if self._stopping:  # stop() came while this one was starting: not taken on
                _close_stdin(child)
                return
            self._children[slot] = child
        child.reader.start()
        log.info("worker process %d started (pid %d)", slot, proc.pid)

    def _read(self, child: _Child) -> None:
        """Relays the child's "committed" lines until it ends; then starts it again,
        unless the daemon is stopping."""
        assert child.proc.stdout is not None
        for _line in child.proc.stdout:
            self.on_processed()
        code = child.proc.wait()
        with self._lock:
            stopping = self._stopping
            if self._children.get(child.slot) is child:
                del self._children[child.slot]
        if stopping:
            return
        ran = time.monotonic() - child.started
        delay = RESTART_FIRST if ran >= RESTART_RESET else min(
            RESTART_MAX, self._backoff.get(child.slot, RESTART_FIRST / 2) * 2)
        self._backoff[child.slot] = delay
        log.warning("worker process %d (pid %d) ended with %s; started again in %.0f s",
                    child.slot, child.proc.pid, code, delay)
        time.sleep(delay)
        self._spawn(child.slot)

    def wake(self) -> None:
        """Called from any thread: mail is waiting."""
        with self._lock:
            children = list(self._children.values())
        for child in children:
            assert child.proc.stdin is not None
            # A full pipe already holds wake-ups enough; a closed one is a child ending.
            with contextlib.suppress(BlockingIOError, BrokenPipeError, ValueError, OSError):
                os.write(child.proc.stdin.fileno(), b"w")

    def reload(self) -> None:
        """SIGHUP passed on: each child takes the reloadable parts of the file afresh
        between two passes, as the daemon does (the rest waits for a restart of all)."""
        with self._lock:
            children = list(self._children.values())
        for child in children:
            with contextlib.suppress(OSError):
                child.proc.send_signal(signal.SIGHUP)

    def pids(self) -> list[int]:
        with self._lock:
            return [c.proc.pid for c in self._children.values()]

    def stop(self, timeout: float = STOP_SECONDS) -> None:
        """Each child ends the pass under way (its transaction commits or rolls back whole);
        one that takes longer than ``timeout`` is killed (its group rolls back: the mail
        stays pending)."""
        with self._lock:
            self._stopping = True
            children = list(self._children.values())
        for child in children:
            _close_stdin(child)
        deadline = time.monotonic() + timeout
        for child in children:
            try:
                child.proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("worker process %d (pid %d) still busy after %.0f s: killed",
                            child.slot, child.proc.pid, timeout)
                child.proc.kill()
                child.proc.wait()
            if child.reader is not None:
                child.reader.join(5)


def _close_stdin(child: _Child) -> None:
    with contextlib.suppress(OSError):
        assert child.proc.stdin is not None
        child.proc.stdin.close()


# --- the child's side ---------------------------------------------------------------------

def run_child(app: App) -> None:
    """`mailgate work`: worker passes until stdin ends (or SIGTERM); one byte on stdin
    wakes a pass, one line on stdout tells the daemon a pass committed mail."""
    from mailgate.mail import language

    wake, stop, hup = threading.Event(), threading.Event(), threading.Event()
    stdin, stdout = sys.stdin.buffer.fileno(), sys.stdout.buffer.fileno()

    def listen() -> None:
        while True:
            try:
                data = os.read(stdin, 4096)
            except OSError:
                data = b""
            if not data:
                stop.set()
                wake.set()
                return
            wake.set()

    def end(_signum: int, _frame: object) -> None:
        stop.set()
        wake.set()

    def committed() -> None:
        with contextlib.suppress(OSError):
            os.write(stdout, b"\n")

    def reload(_signum: int, _frame: object) -> None:
        hup.set()
        wake.set()

    signal.signal(signal.SIGTERM, end)
    signal.signal(signal.SIGHUP, reload)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGHUP})  # blocked by _spawn
    # Ctrl-C in a terminal reaches the whole process group: the daemon decides, and ends
    # us by closing our stdin once its own pass is over.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    threading.Thread(target=listen, name="wake", daemon=True).start()
    threading.Thread(target=language.warm_up, name="warm-up", daemon=True).start()
    _ = app.desk  # the signing secret, before the first transaction
    poll = app.settings.worker.poll_seconds
    wake.set()  # whatever is pending now
    try:
        while not stop.is_set():
            wake.wait(poll)
            if stop.is_set():
                break
            wake.clear()
            if hup.is_set():
                hup.clear()
                _reload(app)
            try:
                result = worker.process_pending(app, on_processed=committed)
            except Exception:
                log.exception("worker pass failed; retrying on the next pass")
                continue
            if result.processed >= app.settings.worker.batch_size:
                wake.set()
    finally:
        app.close()


def _reload(app: App) -> None:
    from mailgate import config as config_mod

    try:
        app.reload(config_mod.load(app.settings.source or None))
    except Exception as exc:
        log.error("worker process: reload failed, the running configuration stays: %s", exc)
    else:
        log.info("worker process: configuration reloaded")
