"""sd_notify without a dependency: READY, RELOADING, STOPPING, STATUS and the watchdog ping."""

from __future__ import annotations

import os
import socket
import time


def notify(message: str) -> bool:
    path = os.environ.get("NOTIFY_SOCKET")
    if not path:
        return False
    if path.startswith("@"):  # abstract namespace socket
        path = "\0" + path[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        try:
            sock.connect(path)
            sock.sendall(message.encode())
        except OSError:
            return False
    return True


def watchdog_interval() -> float | None:
    """Half the watchdog timeout systemd gave us, in seconds; None without a watchdog."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    return int(usec) / 2_000_000


def monotonic_usec() -> int:
    """CLOCK_MONOTONIC in µs: what RELOADING=1 carries as MONOTONIC_USEC (systemd >= 253
    matches it against the reload it asked for, Type=notify-reload)."""
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
