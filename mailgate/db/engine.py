"""Engine and sessions for SQLite (embedded default) and PostgreSQL (psycopg 3)."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.exc import InterfaceError as SAInterfaceError
from sqlalchemy.orm import Session, sessionmaker

from mailgate.config import DatabaseSettings
from mailgate.db import writelock
from mailgate.db.dbapi import make_sqlite_dir, sqlite_path, sqlite_pragmas

READ_ONLY = "mailgate_read_only"


class StorageUnavailable(Exception):
    """The database cannot take a write now; the caller must make the sender retry."""


def make_engine(db: DatabaseSettings) -> Engine:
    url = db.url
    kwargs: dict[str, Any] = {"echo": db.echo, "future": True}
    if url.startswith("sqlite"):
        make_sqlite_dir(url)
        # The busy timeout is ours to set, so a lock turns into a clear error, not a hang.
        kwargs["connect_args"] = {"timeout": db.busy_timeout_ms / 1000, "check_same_thread": False}
        engine = create_engine(url, **kwargs)

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: sqlite3.Connection, _record: Any) -> None:
            # The same settings as `deliver`'s plain connection (db/dbapi.py says why).
            dbapi_conn.isolation_level = None
            cur = dbapi_conn.cursor()
            for pragma in sqlite_pragmas(db.busy_timeout_ms):
                cur.execute(pragma)
            cur.close()

        @event.listens_for(engine, "begin")
        def _sqlite_begin(conn: Any) -> None:
            # Writers take the lock up front (IMMEDIATE): no deadlock-prone lock upgrades.
            # Readers (`reading`) take none, so a CLI listing never queues behind the daemon.
            if conn.get_execution_options().get(READ_ONLY):
                conn.exec_driver_sql("BEGIN")
            else:
                conn.exec_driver_sql("BEGIN IMMEDIATE")

        path = sqlite_path(url)
        writelock.attach(engine, path if path and path != ":memory:" else None,
                         db.busy_timeout_ms / 1000)
        return engine
    kwargs.update(pool_pre_ping=True, pool_size=5, max_overflow=5, pool_recycle=1800)
    kwargs["connect_args"] = {"connect_timeout": 5}
    return create_engine(url, **kwargs)


def make_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


def is_unavailable(exc: BaseException) -> bool:
    """True for errors that mean 'try again later' rather than 'this mail is bad'."""
    if isinstance(exc, StorageUnavailable | OperationalError | SAInterfaceError):
        return True
    return isinstance(exc, DBAPIError) and exc.connection_invalidated


def read_bytes(session: Session, table: str, column: str, row_id: int) -> bytes:
    """One BLOB / bytea value of row `row_id`, in the session's transaction, with one copy
    in memory: SQLite's incremental blob API (a plain SELECT holds the value twice: SQLite's
    buffer and the bytes), psycopg's binary results (bytea as text is hex: twice the size,
    then decoded)."""
    driver = session.connection().connection.driver_connection
    assert driver is not None
    if isinstance(driver, sqlite3.Connection):
        with driver.blobopen(table, column, row_id, readonly=True) as blob:
            return blob.read()
    with driver.cursor(binary=True) as cur:  # psycopg 3
        cur.execute(f'SELECT "{column}" FROM "{table}" WHERE id = %s', [row_id])
        found = cur.fetchone()
    if found is None:
        raise LookupError(f"{table} {row_id}")
    return bytes(found[0])


@contextmanager
def reading(factory: sessionmaker[Session]) -> Iterator[Session]:
    """A session for reads only: on SQLite it does not take the write lock."""
    with factory() as session:
        session.connection(execution_options={READ_ONLY: True})
        yield session
        session.rollback()


@contextmanager
def transaction(factory: sessionmaker[Session],
                priority: int = writelock.NORMAL) -> Iterator[Session]:
    """One unit of work: commit on success, roll back on any error."""
    lock = writelock.for_engine(factory.kw.get("bind"))
    with lock.held(priority) if lock else nullcontext(), factory() as session, session.begin():
        yield session


@contextmanager
def core_transaction(factory: sessionmaker[Session],
                     priority: int = writelock.NORMAL) -> Iterator[Connection]:
    """Like `transaction`, without the ORM: for the hot intake path."""
    engine = factory.kw["bind"]
    lock = writelock.for_engine(engine)
    with lock.held(priority) if lock else nullcontext(), engine.begin() as conn:
        yield conn
