"""`mailgate deliver` as Postfix's pipe(8) runs it: a fresh process per mail, through the
installed entry point (``.venv/bin/mailgate``), the mail on stdin, the envelope in
``$SENDER`` / ``$RECIPIENT``. Prints the figures README.md reports; asserts nothing.

Usage, from the repository root::

    .venv/bin/python -m bench.deliver --rounds 20
    .venv/bin/python -m bench.deliver --rounds 20 \\
        --database-url postgresql+psycopg://postgres@127.0.0.1:5432/test

Each round runs, one after the other (interleaved, so that other load on the machine hits
them alike), every command of the run once:

- the baselines: ``python -c pass`` (the interpreter and its site packages), ``python -c
  "import sqlalchemy"`` (the floor of any storing through SQLAlchemy), ``mailgate --help``;
  and with a PostgreSQL URL ``python -c "import psycopg"`` (the driver's own import, a floor
  `deliver` on PostgreSQL cannot go under);
- ``mailgate deliver`` of two realistic mails, each with its own Message-ID every round
  (so each is stored, never a duplicate): an HTML newsletter-like mail
  (multipart/alternative, ~4 KB) and a reply with a 200 KB PNG screenshot (~275 KB base64),
  on SQLite (a fresh file, ``db upgrade`` first) and on each ``--database-url`` (a private
  schema, dropped afterwards), stored directly (``[deliver] handoff = "never"``);
- with a PostgreSQL URL, the same two mails handed to a running daemon (``python -m mailgate
  --config F serve`` on that schema, started and idle before the first round, up for the
  whole run; ``handoff = "auto"``): `deliver` then imports no database driver and stores
  through the daemon's SMTP listener (mailgate/inbound/handoff.py).

Figures per command: wall time median and p90, CPU (user + system of the child, from
``os.wait4``) median, both as ratios to ``python -c pass`` and to ``import sqlalchemy``
(and wall to ``import psycopg``) measured in the same run, and ``os.getloadavg()`` before
and after. The CPU of a hand-off is `deliver`'s own; the daemon's share of storing it is
not in it. Goals (issue 11):
deliver < 0.25 s per mail, ``mailgate --help`` < 0.3 s.
"""

from __future__ import annotations

import argparse
import os
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import tomllib
import uuid
import zlib
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.utils import formatdate
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # `python bench/deliver.py` as well as `python -m bench.deliver`
    sys.path.insert(0, str(ROOT))

from bench.ingest import daemon_env, server_process, wait_quiet, wait_smtp  # noqa: E402
from tests.support.pgschema import private_schema  # noqa: E402
from tests.support.sink import free_port  # noqa: E402

PYTHON = sys.executable
MAILGATE = str(Path(sys.executable).with_name("mailgate"))  # the installed entry point
EDITOR = "eva@site1234.example.be"
DESK = "servicedesk@desk.example"


def png(size: int = 200 * 1024, seed: int = 7) -> bytes:
    """A valid PNG of about `size` bytes of incompressible noise, like a screenshot's."""
    side = int((size / 3) ** 0.5)
    rows = bytearray()
    state = seed
    for _y in range(side):
        rows.append(0)
        for _x in range(side * 3 // 4):
            state = (state * 1103515245 + 12345) & 0xFFFFFFFF
            rows += state.to_bytes(4, "little")
        rows += bytes(side * 3 - side * 3 // 4 * 4)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))
    header = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(bytes(rows), 1)) + chunk(b"IEND", b""))


def html_mail(n: int) -> bytes:
    msg = EmailMessage()
    msg["From"] = f"Eva Editor <{EDITOR}>"
    msg["To"] = DESK
    msg["Subject"] = f"Nieuwsbrief-formulier werkt niet ({n})"
    msg["Date"] = formatdate(localtime=True)
    msg["Message-ID"] = f"<{uuid.uuid4().hex}@site1234.example.be>"
    text = ("Beste,\n\nHet inschrijvingsformulier op /nieuwsbrief geeft een fout 500 sinds "
            "vanochtend. Kunnen jullie kijken?\n\nMet vriendelijke groet,\nEva\n") * 8
    msg.set_content(text)
    html = "".join(f"<p style='font-family:Arial;color:#333'>{line}</p>\n"
                   for line in text.splitlines() if line)
    msg.add_alternative(f"<html><body><div class='WordSection1'>{html}</div></body></html>",
                        subtype="html")
    return msg.as_bytes()


def png_mail(n: int, image: bytes) -> bytes:
    msg = EmailMessage()
    msg["From"] = f"Eva Editor <{EDITOR}>"
    msg["To"] = DESK
    msg["Subject"] = f"Re: [SD-1] Menu verdwenen ({n})"
    msg["Date"] = formatdate(localtime=True)
    msg["Message-ID"] = f"<{uuid.uuid4().hex}@site1234.example.be>"
    msg.set_content("Zie de schermafdruk in bijlage.\n\nEva\n")
    msg.add_attachment(image, maintype="image", subtype="png", filename="schermafdruk.png")
    return msg.as_bytes()


@dataclass
class Series:
    name: str
    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)
    failures: int = 0

    def run(self, argv: list[str], stdin: bytes | None = None,
            env: dict[str, str] | None = None) -> None:
        start = time.perf_counter()
        proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, env=env)
        assert proc.stdin is not None and proc.stderr is not None
        if stdin:
            proc.stdin.write(stdin)
        proc.stdin.close()
        err = proc.stderr.read()
        _pid, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        self.wall.append(time.perf_counter() - start)
        self.cpu.append(usage.ru_utime + usage.ru_stime)
        if proc.returncode != 0:
            self.failures += 1
            print(f"  {self.name}: exit {proc.returncode}: {err.decode()[-300:]}",
                  file=sys.stderr)

    @property
    def wall_median(self) -> float:
        return statistics.median(self.wall)

    @property
    def cpu_median(self) -> float:
        return statistics.median(self.cpu)

    def wall_p90(self) -> float:
        ordered = sorted(self.wall)
        return ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))]


def config(path: Path, url: str, handoff: str = "never", smtp_port: int = 2525,
           name: str = "mailgate.toml") -> Path:
    path.mkdir(parents=True, exist_ok=True)
    file = path / name
    file.write_text(f"""
state_dir = "{path / 'var'}"
[desk]
address = "{DESK}"
complaints_address = "complaints@desk.example"
[database]
url = "{url}"
[smtp]
host = "127.0.0.1"
port = {smtp_port}
[deliver]
handoff = "{handoff}"
""")
    return file


@contextmanager
def running_daemon(direct_config: Path) -> Iterator[Path]:
    """`mailgate serve` on the database of `direct_config`, started and idle; yields the
    config whose `deliver` hands mail to its listener."""
    url = tomllib.loads(direct_config.read_text())["database"]["url"]
    port = free_port()
    cfg = config(direct_config.parent, url, "auto", port, name="handoff.toml")
    log_path = direct_config.parent / "daemon.log"
    with server_process([PYTHON, "-m", "mailgate", "--config", str(cfg), "serve"], log_path,
                        daemon_env()) as proc:
        wait_smtp(port, proc, log_path)
        wait_quiet(proc.pid)
        yield cfg


@contextmanager
def database(kind: str, url: str | None, tmp: Path) -> Iterator[Path]:
    """A config whose database is fresh and migrated."""
    with ExitStack() as stack:
        if kind == "sqlite":
            cfg = config(tmp / "sqlite", f"sqlite:///{tmp / 'sqlite' / 'mailgate.db'}")
        else:
            assert url is not None
            cfg = config(tmp / "pg", stack.enter_context(private_schema(url, "bench_deliver")))
        subprocess.run([MAILGATE, "--config", str(cfg), "db", "upgrade"], check=True,
                       capture_output=True)
        yield cfg


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--database-url", default=os.environ.get("MAILGATE_TEST_DATABASE_URL"),
                        help="PostgreSQL too (default: $MAILGATE_TEST_DATABASE_URL)")
    args = parser.parse_args()
    pg_url: str | None = args.database_url
    image = png()
    load_before = os.getloadavg()
    env = {**os.environ, "SENDER": EDITOR, "RECIPIENT": DESK}
    env.pop("MAILGATE_CONFIG", None)
    kinds = ["sqlite"] + (["postgresql"] if pg_url else [])
    with tempfile.TemporaryDirectory(prefix="bench-deliver-") as tmpdir, ExitStack() as stack:
        tmp = Path(tmpdir)
        configs = {k: stack.enter_context(database(k, pg_url, tmp)) for k in kinds}
        if pg_url:  # the same schema, through the running daemon's listener
            kinds.append("postgresql hand-off")
            configs["postgresql hand-off"] = stack.enter_context(
                running_daemon(configs["postgresql"]))
        baselines = [("python -c pass", [PYTHON, "-c", "pass"]),
                     ("python -c 'import sqlalchemy'", [PYTHON, "-c", "import sqlalchemy"]),
                     ("mailgate --help", [MAILGATE, "--help"])]
        if pg_url:
            baselines.append(("python -c 'import psycopg'", [PYTHON, "-c", "import psycopg"]))
        series = {name: Series(name) for name, _argv in baselines}
        for kind in kinds:
            for mail in ("html", "png"):
                series[f"deliver {mail} {kind}"] = Series(f"deliver {mail} {kind}")
        sizes: dict[str, int] = {}
        for n in range(args.rounds):
            for name, argv in baselines:
                series[name].run(argv)
            for kind in kinds:
                for mail, raw in (("html", html_mail(n)), ("png", png_mail(n, image))):
                    sizes[mail] = len(raw)
                    series[f"deliver {mail} {kind}"].run(
                        [MAILGATE, "--config", str(configs[kind]), "deliver"], raw, env)
    load_after = os.getloadavg()
    base, sa = series["python -c pass"], series["python -c 'import sqlalchemy'"]
    print(f"mailgate deliver, {args.rounds} rounds, a fresh process each "
          f"(html mail {sizes['html'] / 1024:.0f} KB, png mail {sizes['png'] / 1024:.0f} KB)")
    pg = series.get("python -c 'import psycopg'")
    print(f"{'command':<34} {'wall med':>9} {'p90':>7} {'cpu med':>8} "
          f"{'wall/pass':>9} {'cpu/pass':>8} {'wall/sqla':>9} {'cpu/sqla':>8}"
          + (f" {'wall/psycopg':>12}" if pg else ""))
    for s in series.values():
        print(f"{s.name:<34} {s.wall_median * 1000:7.0f}ms {s.wall_p90() * 1000:5.0f}ms "
              f"{s.cpu_median * 1000:6.0f}ms {s.wall_median / base.wall_median:9.2f} "
              f"{s.cpu_median / max(base.cpu_median, 1e-3):8.2f} "
              f"{s.wall_median / sa.wall_median:9.2f} "
              f"{s.cpu_median / max(sa.cpu_median, 1e-3):8.2f}"
              + (f" {s.wall_median / pg.wall_median:12.2f}" if pg else "")
              + (f"  ({s.failures} failed)" if s.failures else ""))
    worst = max((s for s in series.values() if s.name.startswith("deliver")),
                key=lambda s: s.wall_median)
    helped = series["mailgate --help"]
    print(f"goals: deliver < 0.25 s per mail: slowest median {worst.wall_median:.3f} s "
          f"({worst.name}) {'met' if worst.wall_median < 0.25 else 'MISSED'}; "
          f"mailgate --help < 0.3 s: {helped.wall_median:.3f} s "
          f"{'met' if helped.wall_median < 0.3 else 'MISSED'}")
    for kind in kinds:
        s = max((series[f"deliver {m} {kind}"] for m in ("html", "png")),
                key=lambda s: s.wall_median)
        print(f"  {kind}: deliver {s.wall_median:.3f} s wall, {s.cpu_median:.3f} s CPU per mail"
              f" (< 0.25 s {'met' if s.wall_median < 0.25 else 'MISSED'})")
    if pg_url:
        floor = series["python -c 'import psycopg'"]
        print(f"  PostgreSQL floor: `import psycopg` alone {floor.wall_median:.3f} s wall, "
              f"{floor.cpu_median:.3f} s CPU")
    print(f"load (1, 5, 15 min): before {tuple(round(x, 2) for x in load_before)}, "
          f"after {tuple(round(x, 2) for x in load_after)}; {os.cpu_count()} CPUs")


if __name__ == "__main__":
    main()
