"""Plain DB-API connections, for the paths that must be lean: `mailgate deliver` and the SMTP
intake's group commit.

Importing SQLAlchemy costs more than the whole of storing a mail (bench/deliver.py measures
it), so the MTA pipe talks to sqlite3 or psycopg directly. What the engine
(:mod:`mailgate.db.engine`) and this path must agree on lives here: the SQLite connection
settings, how a URL names the database, and which errors mean "try again later".
Only the standard library at import time; psycopg is imported when a PostgreSQL URL is used.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from mailgate.config import DatabaseSettings


def sqlite_pragmas(busy_timeout_ms: int) -> list[str]:
    """Run on every new SQLite connection. WAL lets readers go on while the worker writes;
    NORMAL sync is durable in WAL mode against a process crash (kill -9), which is the
    failure we promise to survive."""
    return ["PRAGMA journal_mode=WAL", "PRAGMA synchronous=NORMAL", "PRAGMA foreign_keys=ON",
            f"PRAGMA busy_timeout={int(busy_timeout_ms)}"]


def sqlite_path(url: str) -> str:
    """The file of a ``sqlite:///`` URL as SQLAlchemy reads it ("" or ":memory:" for none)."""
    path = url.split("///", 1)[1] if "///" in url else ""
    return path.split("?", 1)[0]


def make_sqlite_dir(url: str) -> None:
    path = sqlite_path(url)
    if path and path != ":memory:":
        Path(path).parent.mkdir(parents=True, exist_ok=True)


def postgres_conninfo(url: str) -> str:
    """libpq reads SQLAlchemy's URL once the driver name is gone from the scheme
    (``postgresql+psycopg://u:p@h:5432/db?sslmode=require``, percent-encoding included)."""
    scheme, sep, rest = url.partition("://")
    return f"{scheme.split('+', 1)[0]}{sep}{rest}"


@dataclass
class Plain:
    """One DB-API connection, with what differs between the two databases."""

    conn: Any
    dialect: str  # "sqlite" or "postgresql"

    @property
    def mark(self) -> str:
        """The parameter placeholder."""
        return "?" if self.dialect == "sqlite" else "%s"

    def timestamp(self, at: datetime) -> Any:
        """A UTC time as the models' UTCDateTime stores it: naive UTC; on SQLite the text
        SQLAlchemy writes, so that both paths' rows sort and compare alike."""
        naive = at.astimezone(UTC).replace(tzinfo=None)
        return naive.strftime("%Y-%m-%d %H:%M:%S.%f") if self.dialect == "sqlite" else naive


@contextmanager
def connect(db: DatabaseSettings) -> Iterator[Plain]:
    """A connection, closed on leaving."""
    if db.url.startswith("sqlite"):
        make_sqlite_dir(db.url)
        path = sqlite_path(db.url) or ":memory:"
        lite = sqlite3.connect(path, timeout=db.busy_timeout_ms / 1000, isolation_level=None)
        try:
            for pragma in sqlite_pragmas(db.busy_timeout_ms):
                lite.execute(pragma)
            yield Plain(lite, "sqlite")
        finally:
            lite.close()
        return
    import psycopg  # only here: its import alone costs as much as the rest of `deliver`

    with psycopg.connect(postgres_conninfo(db.url), connect_timeout=5, autocommit=True) as pg:
        yield Plain(pg, "postgresql")


@contextmanager
def write(plain: Plain) -> Iterator[Any]:
    """One write transaction; a cursor. On SQLite the write lock is taken up front
    (IMMEDIATE), as the engine does: no lock upgrade that could deadlock."""
    conn = plain.conn
    if plain.dialect == "sqlite":
        cur = conn.cursor()
        cur.execute("BEGIN IMMEDIATE")
        try:
            yield cur
            cur.execute("COMMIT")  # a failed COMMIT leaves no transaction open either
        except BaseException:
            conn.rollback()
            raise
        return
    with conn.transaction(), conn.cursor() as cur:
        yield cur


# A big value is inserted into SQLite as zeroblob(n) and then written through the incremental
# blob API in pieces: bound as a parameter, Python's sqlite3 copies it into the prepared
# statement, which keeps that copy in its cache until the statement runs again (a 20 MB mail
# held for as long as no other mail came).
STREAM_ABOVE = 256 * 1024
_PIECE = 1 << 20


def streams(dialect: str, value: bytes) -> bool:
    return dialect == "sqlite" and len(value) > STREAM_ABOVE


def write_blob(conn: sqlite3.Connection, table: str, column: str, rowid: int,
               value: bytes) -> None:
    """Writes `value` into that row's zeroblob, a piece at a time, in the open transaction."""
    with conn.blobopen(table, column, rowid) as blob, memoryview(value) as view:
        for at in range(0, len(value), _PIECE):
            blob.write(view[at:at + _PIECE])


# The inbound row's columns both ways of storing write (inbound/arrival.py inbound_row);
# trail is the JSON list [], a literal, so that neither database needs a JSON adapter.
INBOUND_COLUMNS = ("raw", "size", "digest", "message_id", "dedup_key", "channel",
                   "envelope_from", "envelope_to", "received_at", "status", "reason", "kind",
                   "attempts", "authenticity")


def insert_inbound(plain: Plain, cur: Any, rows: list[dict[str, Any]]
                   ) -> tuple[dict[str, int], dict[str, int]]:
    """Inserts `rows` (one `received_at`) in the caller's transaction; returns (dedup key →
    id stored before, dedup key → id stored now). A key twice in `rows` is inserted once.
    ON CONFLICT DO NOTHING: a mail stored before or meanwhile — by another instance, whose
    uncommitted insert this one waits for, or by `deliver` — is a duplicate, never an error."""
    fresh: dict[str, dict[str, Any]] = {}
    for values in rows:
        fresh.setdefault(values["dedup_key"], values)
    rows = list(fresh.values())
    mark = plain.mark
    # psycopg: the raw bytes as a binary parameter, sent as they are (text would hex them).
    raw_mark = "%b" if plain.dialect == "postgresql" else mark
    # A big mail on SQLite goes in as zeroblob(n) and is written in pieces below: bound, its
    # copy would stay in the statement cache until the statement ran again.
    big = [streams(plain.dialect, r["raw"]) for r in rows]
    one, one_big = ("(" + ", ".join((f"zeroblob({mark})" if streamed else raw_mark)
                                    if c == "raw" else mark for c in INBOUND_COLUMNS) + ", '[]')"
                    for streamed in (False, True))
    sql = (f"INSERT INTO inbound ({', '.join(INBOUND_COLUMNS)}, trail) VALUES "
           + ", ".join(one_big if streamed else one for streamed in big)
           + " ON CONFLICT (dedup_key) DO NOTHING RETURNING dedup_key, id")
    # One time for all rows: formatting it is the dearest part of a row's values on SQLite.
    stamp = plain.timestamp(rows[0]["received_at"])
    params = [stamp if c == "received_at" else len(values[c]) if c == "raw" and streamed
              else values[c] for values, streamed in zip(rows, big, strict=True)
              for c in INBOUND_COLUMNS]
    cur.execute(sql, params)
    new: dict[str, int] = {k: i for k, i in cur.fetchall()}
    for values, streamed in zip(rows, big, strict=True):
        if streamed and values["dedup_key"] in new:
            write_blob(plain.conn, "inbound", "raw", new[values["dedup_key"]], values["raw"])
    known: dict[str, int] = {}
    missing = [r["dedup_key"] for r in rows if r["dedup_key"] not in new]
    if missing:
        cur.execute("SELECT dedup_key, id FROM inbound WHERE dedup_key IN ("
                    + ", ".join([mark] * len(missing)) + ")", missing)
        known = {k: i for k, i in cur.fetchall()}
    return known, new


def is_unavailable(exc: BaseException) -> bool:
    """True for DB-API errors that mean "try again later" (database down, locked, not
    reachable, no schema yet) rather than "this mail is bad"."""
    if isinstance(exc, sqlite3.OperationalError):
        return True
    import sys

    psycopg = sys.modules.get("psycopg")  # never imported just to look at an error
    if psycopg is None:
        return False
    # No table yet (`mailgate db upgrade` not run): as on SQLite, the MTA keeps the mail.
    return isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError
                      | psycopg.errors.UndefinedTable)
