"""Memory with one big mail (issue 11, item 5): the peak RSS a mail of S bytes adds to the
process that takes it, over SMTP, IMAP and `mailgate deliver`, as a multiple of S. Goal:
under 4x; nothing may hold several copies of the raw bytes. Prints the figures README.md
reports; asserts nothing (tests/test_memory.py asserts the bound on a smaller mail).

Usage, from the repository root::

    .venv/bin/python -m bench.memory                       # 21.5 MB mail, 15 MiB attachment
    .venv/bin/python -m bench.memory --attachment-mib 6 --legs smtp,deliver
    .venv/bin/python -m bench.memory --database-url postgresql+psycopg://postgres@127.0.0.1:5432/test

What one run does (a temporary directory; a fresh SQLite file, or a private PostgreSQL
schema):

- The real daemon, ``python -m mailgate --config F serve`` as a subprocess, its relay an SMTP
  sink in this process, an ``[[imap]]`` account on a private Dovecot
  (tests/support/dovecot.py; needs root and dovecot, else the IMAP leg is left out).
- Warm-up: a small mail over SMTP and one over IMAP, each to a ticket and its
  acknowledgement, so that what is loaded once (the parser, language detection, templates)
  is in the idle figure, not in the big mail's.
- **smtp**: idle = the daemon's VmRSS; its VmHWM is reset (``/proc/PID/clear_refs``); the big
  mail is sent over SMTP and waited for until it is a ticket and its acknowledgement reached
  the sink; the figure is (VmHWM - idle) / S.
- **imap**: the same with the mail APPENDed to the account's INBOX: fetched, stored,
  processed, moved.
- **deliver**: ``mailgate deliver`` of the big mail, a fresh process as Postfix runs it; its
  own peak (``ru_maxrss`` from ``os.wait4``) minus the peak of a `deliver` of a small mail.

The big mail: from the registered demo editor, a short text and one attachment of
``--attachment-mib`` MiB of random bytes (incompressible), base64 as every client sends it.
``os.getloadavg()`` is printed too (memory does not depend on load; the times do).
"""

from __future__ import annotations

import argparse
import os
import re
import smtplib
import subprocess
import sys
import tempfile
import time
import uuid
from contextlib import ExitStack
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import formatdate
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # `python bench/memory.py` as well as `python -m bench.memory`
    sys.path.insert(0, str(ROOT))

from sqlalchemy import create_engine, text  # noqa: E402

from tests.support.desk import DESK, EDITOR  # noqa: E402
from tests.support.pgschema import private_schema  # noqa: E402
from tests.support.serve import ServeProcess  # noqa: E402
from tests.support.sink import SmtpSink  # noqa: E402

MAILGATE = str(Path(sys.executable).with_name("mailgate"))
IMAP_USER, IMAP_PASSWORD = "desk", "secret"


def big_mail(attachment: int, tag: str) -> tuple[str, bytes]:
    """(Message-ID, bytes) of a request with one attachment of `attachment` random bytes."""
    mid = f"<{tag}-{uuid.uuid4().hex[:8]}@site1234.example.be>"
    msg = EmailMessage()
    msg["From"] = f"Eva Editor <{EDITOR}>"
    msg["To"] = DESK
    msg["Subject"] = f"Site 1234: de plannen ({tag})"
    msg["Date"] = formatdate(localtime=True)
    msg["Message-ID"] = mid
    msg.set_content("Beste,\n\nIn bijlage de plannen voor de nieuwe pagina.\n\nEva\n")
    msg.add_attachment(os.urandom(attachment), maintype="application", subtype="pdf",
                       filename="plannen.pdf")
    return mid, msg.as_bytes(policy=SMTP)  # CRLF, as on the wire


def status(pid: int) -> dict[str, int]:
    """VmRSS, VmHWM, ... of a process, in bytes."""
    text_ = Path(f"/proc/{pid}/status").read_text()
    return {k: int(v) * 1024 for k, v in re.findall(r"^(Vm\w+):\s+(\d+) kB", text_, re.M)}


def reset_peak(pid: int) -> bool:
    """VmHWM back to the current RSS (Linux >= 4.0); False where not allowed."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
        return True
    except OSError:
        return False


class Desk:
    """The daemon and its surroundings; the wait for a mail's ticket and acknowledgement."""

    def __init__(self, serve: ServeProcess, sink: SmtpSink, url: str) -> None:
        self.serve, self.sink = serve, sink
        self.engine = create_engine(url)

    @property
    def pid(self) -> int:
        assert self.serve.proc is not None
        return self.serve.proc.pid

    def wait_done(self, mid: str, timeout: float = 300.0) -> float:
        """Seconds until the mail is a ticket and its acknowledgement reached the sink."""
        start = time.monotonic()
        deadline = start + timeout
        while time.monotonic() < deadline:
            if not self.serve.alive:
                raise RuntimeError(f"serve died:\n{self.serve.tail()}")
            with self.engine.connect() as conn:
                row = conn.execute(text("SELECT status FROM inbound WHERE message_id = :m"),
                                   {"m": mid}).first()
            acked = any(m["In-Reply-To"] == mid for m in self.sink.messages)
            if row is not None and row[0] not in ("pending", "ticket"):
                raise RuntimeError(f"{mid} ended {row[0]}")
            if row is not None and row[0] == "ticket" and acked:
                return time.monotonic() - start
            time.sleep(0.2)
        raise RuntimeError(f"{mid} not done after {timeout:.0f} s:\n{self.serve.tail()}")

    def leg(self, name: str, size: int, send: object) -> tuple[str, int, int, float]:
        """(name, idle RSS, peak RSS, seconds) of one big mail, sent by `send()`."""
        time.sleep(1.0)  # what the warm-up or the last leg left settles
        idle = status(self.pid)["VmRSS"]
        if not reset_peak(self.pid):
            print("  (cannot reset VmHWM: the peak may be an earlier one)", file=sys.stderr)
        start = time.monotonic()
        mid = send()  # type: ignore[operator]
        seconds = self.wait_done(mid)
        time.sleep(0.5)
        peak = status(self.pid)["VmHWM"]
        return name, idle, peak, max(seconds, time.monotonic() - start)


def send_smtp(port: int, raw: bytes) -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=120) as smtp:
        smtp.sendmail(EDITOR, [DESK], raw)


# Measures a child's peak from a small parent: a child's ru_maxrss starts at its parent's
# RSS at fork (Linux keeps the larger), and this benchmark's own process is big.
_SPAWN = ("import os, subprocess, sys\n"
          "proc = subprocess.Popen(sys.argv[2:])\n"
          "_pid, status, usage = os.wait4(proc.pid, 0)\n"
          "open(sys.argv[1], 'w').write(f'{usage.ru_maxrss} {os.waitstatus_to_exitcode(status)}')")


def child_peak(argv: list[str], stdin: bytes, env: dict[str, str]) -> int:
    """Peak RSS of the process `argv` runs, in bytes; raises if it exits non-zero."""
    with tempfile.NamedTemporaryFile("r", suffix=".peak") as out:
        proc = subprocess.run([sys.executable, "-c", _SPAWN, out.name, *argv], input=stdin,
                              capture_output=True, env=env, timeout=300)
        text_ = out.read().split()
    if proc.returncode != 0 or len(text_) != 2 or text_[1] != "0":
        raise RuntimeError(f"{argv[-1]} failed: {proc.stderr.decode()[-500:]}")
    return int(text_[0]) * 1024


def deliver_peak(config: Path, raw: bytes) -> int:
    """Peak RSS of one `mailgate deliver` of `raw` (the installed entry point), in bytes."""
    env = {**os.environ, "SENDER": EDITOR, "RECIPIENT": DESK}
    return child_peak([MAILGATE, "--config", str(config), "deliver"], raw, env)


def dovecot_or_none(stack: ExitStack, tmp: Path) -> object | None:
    from tests.support.dovecot import DovecotServer, find_dovecot

    if find_dovecot() is None or os.geteuid() != 0:
        print("  (no Dovecot, or not root: the IMAP leg is left out)", file=sys.stderr)
        return None
    server = DovecotServer(tmp / "dovecot")
    server.add_user(IMAP_USER, IMAP_PASSWORD)
    server.start()
    stack.callback(server.stop)
    return server


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--attachment-mib", type=float, default=15.0)
    parser.add_argument("--legs", default="smtp,imap,deliver")
    parser.add_argument("--database-url", default=None,
                        help="PostgreSQL base URL (a private schema is made); default SQLite")
    args = parser.parse_args()
    legs = args.legs.split(",")
    attachment = int(args.attachment_mib * 1024 * 1024)
    load_before = os.getloadavg()
    results: list[tuple[str, int, int, float]] = []
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as tmpdir, ExitStack() as stack:
        tmp = Path(tmpdir)
        url = (stack.enter_context(private_schema(args.database_url, "bench_memory"))
               if args.database_url else f"sqlite:///{tmp / 'mailgate.db'}")
        sink = SmtpSink().start()
        stack.callback(sink.stop)
        dovecot = dovecot_or_none(stack, tmp) if "imap" in legs else None
        # One process takes each mail and processes it ([worker] processes = 1).
        sections = {"smtp": "max_message_size = 67108864",
                    "attachments": "max_size = 67108864", "worker": "processes = 1"}
        if dovecot is not None:
            sections["[[imap]]"] = (
                f'name = "desk"\nhost = "127.0.0.1"\nport = {dovecot.port}\n'  # type: ignore[attr-defined]
                f'ssl = false\nusername = "{IMAP_USER}"\npassword = "{IMAP_PASSWORD}"\n'
                "poll_interval = 0.5\nidle = false")
        serve = ServeProcess(tmp, url, sink.port, sections=sections).prepare().start(60)
        stack.callback(serve.stop)
        desk = Desk(serve, sink, url)
        stack.callback(desk.engine.dispose)

        # Warm-up: everything loaded once is loaded now.
        mid, raw = big_mail(64 * 1024, "warm-smtp")
        send_smtp(serve.port, raw)
        desk.wait_done(mid)
        if dovecot is not None:
            mid, raw = big_mail(64 * 1024, "warm-imap")
            dovecot.append(IMAP_USER, IMAP_PASSWORD, "INBOX", raw)  # type: ignore[attr-defined]
            desk.wait_done(mid)
        print(f"daemon warmed up: VmRSS {status(desk.pid)['VmRSS'] / 2**20:.0f} MiB")

        size = len(big_mail(attachment, "size")[1])
        if "smtp" in legs:
            def by_smtp() -> str:
                mid, raw = big_mail(attachment, "smtp")
                send_smtp(serve.port, raw)
                return mid
            results.append(desk.leg("smtp (store + ticket + ack)", size, by_smtp))
        if "imap" in legs and dovecot is not None:
            def by_imap() -> str:
                mid, raw = big_mail(attachment, "imap")
                dovecot.append(IMAP_USER, IMAP_PASSWORD, "INBOX", raw)  # type: ignore[attr-defined]
                return mid
            results.append(desk.leg("imap (fetch + store + ticket + ack)", size, by_imap))
        if "deliver" in legs:
            small = deliver_peak(serve.config, big_mail(1024, "deliver-small")[1])
            start = time.monotonic()
            peak = deliver_peak(serve.config, big_mail(attachment, "deliver")[1])
            results.append(("deliver (its own process)", small, peak,
                            time.monotonic() - start))
    database = "PostgreSQL" if args.database_url else "SQLite"
    print(f"big mail: {size / 1e6:.1f} MB ({size} bytes), attachment "
          f"{attachment / 2**20:.1f} MiB; database {database}")
    print(f"{'leg':<38} {'idle':>9} {'peak':>9} {'added':>9} {'x size':>7} {'time':>7}")
    for name, idle, peak, seconds in results:
        added = peak - idle
        print(f"{name:<38} {idle / 2**20:7.0f}Mi {peak / 2**20:7.0f}Mi "
              f"{added / 2**20:7.0f}Mi {added / size:7.2f} {seconds:6.1f}s"
              + ("" if added / size < 4 else "  (goal < 4x MISSED)"))
    print(f"load (1, 5, 15 min): before {tuple(round(x, 2) for x in load_before)}, "
          f"after {tuple(round(x, 2) for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
