"""Content-addressed attachment store: in the database (shared by every instance) or in a
directory. Files are named by their SHA-256 only; an attachment's own name never reaches
the filesystem."""

from __future__ import annotations

import hashlib
import os
import sqlite3
import tempfile
from pathlib import Path

from sqlalchemy import func, literal_column, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.orm import Session

from mailgate.config import AttachmentSettings
from mailgate.db import dbapi
from mailgate.db.models import Blob


def _path(settings: AttachmentSettings, digest: str) -> Path:
    return Path(settings.directory) / digest[:2] / digest


PURGED = "purged"  # the bytes were removed by the retention sweep (tickets/retention.py)


def put(session: Session, settings: AttachmentSettings, data: bytes) -> str:
    digest = hashlib.sha256(data).hexdigest()
    # FOR SHARE on PostgreSQL: the retention sweep locks a blob FOR UPDATE before it checks
    # who still uses it, so it never purges one a mail being stored now refers to.
    existing = session.get(Blob, digest, with_for_update={"read": True})
    if existing is not None and existing.location != PURGED and not (
            existing.location == "directory" and not _path(settings, digest).exists()):
        return digest
    if len(data) > settings.max_size:
        blob = Blob(sha256=digest, size=len(data), location="raw", data=None)
    elif settings.store == "directory":
        path = _path(settings, digest)
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            # Write then rename: a crash never leaves a half file under the final name.
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        blob = Blob(sha256=digest, size=len(data), location="directory", data=None)
    else:
        blob = Blob(sha256=digest, size=len(data), location="database", data=data)
    # A big attachment on SQLite goes in as zeroblob(n), then is written in pieces: a bound
    # copy would stay in the statement cache (db/dbapi.py).
    conn = session.connection().connection.driver_connection
    piecewise = (blob.data is not None and isinstance(conn, sqlite3.Connection)
                 and dbapi.streams("sqlite", data))
    if piecewise:
        blob.data = func.zeroblob(len(data))
    if existing is not None:  # purged (or its file lost): the same bytes arrived again
        existing.location, existing.data, existing.size = blob.location, blob.data, blob.size
    elif session.get_bind().dialect.name == "postgresql":
        # Another worker may be storing the same bytes now: its row, once committed, serves
        # (the insert waits for that transaction, then does nothing), instead of a unique
        # violation that would quarantine this mail.
        session.execute(pg_insert(Blob).values(
            sha256=digest, size=blob.size, location=blob.location, data=blob.data)
            .on_conflict_do_nothing(index_elements=[Blob.sha256]))
        return digest
    else:
        session.add(blob)
    session.flush()
    if piecewise:
        assert isinstance(conn, sqlite3.Connection)
        rowid: int = session.execute(select(literal_column("rowid")).select_from(Blob)
                                     .where(Blob.sha256 == digest)).scalar_one()
        dbapi.write_blob(conn, "blob", "data", rowid, data)
        session.expire(existing if existing is not None else blob, ["data"])
    return digest


def get(session: Session, settings: AttachmentSettings, digest: str) -> bytes | None:
    """The bytes, or None when they were over the size cap (then only in the raw mail) or
    purged by the retention sweep."""
    blob = session.get(Blob, digest)
    if blob is None:
        raise KeyError(digest)
    if blob.location == "database":
        return blob.data
    if blob.location == "directory":
        return _path(settings, digest).read_bytes()
    return None


def purge(session: Session, settings: AttachmentSettings, digests: list[str]) -> int:
    """Removes the bytes of these blobs, in the database or the directory; the rows stay,
    marked "purged" (attachments keep their name, size and SHA-256). The caller has locked
    the rows and checked that nothing still needs them. A file is deleted before the
    transaction commits: a failed commit leaves a row the next sweep purges again, never a
    file left behind under a row that says it is gone. Returns the bytes removed."""
    removed, gone = 0, []
    for digest, location, size in session.execute(
            select(Blob.sha256, Blob.location, Blob.size).where(Blob.sha256.in_(digests))):
        if location == "directory":
            _path(settings, digest).unlink(missing_ok=True)
        elif location != "database":
            continue
        removed += size
        gone.append(digest)
    if gone:
        session.execute(update(Blob).where(Blob.sha256.in_(gone))
                        .values(location=PURGED, data=None))
    return removed
