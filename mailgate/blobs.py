"""Content-addressed attachment store: in the database (shared by every instance) or in a
directory. Files are named by their SHA-256 only; an attachment's own name never reaches
the filesystem."""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

from sqlalchemy.orm import Session

from mailgate.config import AttachmentSettings
from mailgate.db.models import Blob


def _path(settings: AttachmentSettings, digest: str) -> Path:
    return Path(settings.directory) / digest[:2] / digest


def put(session: Session, settings: AttachmentSettings, data: bytes) -> str:
    digest = hashlib.sha256(data).hexdigest()
    if session.get(Blob, digest) is not None:
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
    session.add(blob)
    session.flush()
    return digest


def get(session: Session, settings: AttachmentSettings, digest: str) -> bytes | None:
    """The bytes, or None when they were over the size cap (then only in the raw mail)."""
    blob = session.get(Blob, digest)
    if blob is None:
        raise KeyError(digest)
    if blob.location == "database":
        return blob.data
    if blob.location == "directory":
        return _path(settings, digest).read_bytes()
    return None
