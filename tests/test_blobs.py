"""Attachments stored content-addressed, in the database or in a directory; names never
reach the filesystem."""

from __future__ import annotations

import hashlib
from pathlib import Path

from mailgate import blobs
from mailgate.app import App
from mailgate.config import AttachmentSettings
from mailgate.db.engine import transaction


def test_database_store_dedups_by_content(app: App) -> None:
    s = AttachmentSettings()
    with transaction(app.sessions) as session:
        a = blobs.put(session, s, b"screenshot")
        b = blobs.put(session, s, b"screenshot")
        assert a == b == hashlib.sha256(b"screenshot").hexdigest()
        assert blobs.get(session, s, a) == b"screenshot"


def test_directory_store_names_files_by_hash_only(app: App, tmp_path: Path) -> None:
    s = AttachmentSettings(store="directory", directory=str(tmp_path / "blobs"))
    with transaction(app.sessions) as session:
        digest = blobs.put(session, s, b"\x89PNG...")
        assert blobs.get(session, s, digest) == b"\x89PNG..."
    files = [p for p in (tmp_path / "blobs").rglob("*") if p.is_file()]
    assert [p.name for p in files] == [digest]


def test_over_the_cap_stays_only_in_the_raw_mail(app: App) -> None:
    s = AttachmentSettings(max_size=4)
    with transaction(app.sessions) as session:
        digest = blobs.put(session, s, b"too large")
        assert blobs.get(session, s, digest) is None
