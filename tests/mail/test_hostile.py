"""Hostile mail through the real store → worker path (issue 11, item 9, the mail-level part):
attachment names that are paths or device names, a zip bomb, MIME nested 1,000 deep, and
8-bit bytes in every header. Each is kept and becomes a ticket; nothing reaches the file
system under a name the mail chose, nothing is unpacked, nothing crashes."""

from __future__ import annotations

import io
import os
import resource
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from mailgate import blobs
from mailgate.app import App
from mailgate.db.migrate import upgrade
from mailgate.db.models import Attachment
from tests.support.desk import EDITOR, SettingsFactory, register_demo
from tests.support.harness import DeskHarness
from tests.support.mails import make_mail


@pytest.fixture
def desk(make_settings: SettingsFactory, tmp_path: Path) -> Iterator[DeskHarness]:
    """The desk with its attachments in a directory: where a name could reach the disk."""
    app = App(make_settings(attachments={"store": "directory",
                                         "directory": str(tmp_path / "blobs")}))
    upgrade(app.engine)
    register_demo(app)
    yield DeskHarness(app)
    app.close()


def _attachments(desk: DeskHarness) -> list[Attachment]:
    with desk.app.sessions() as s:
        rows = list(s.execute(select(Attachment).order_by(Attachment.id)).scalars())
        s.expunge_all()
        return rows


def _files_under(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file()]


LONG = ("Rapport " + "très long " * 29)[:296] + ".pdf"   # 300 characters


@pytest.mark.parametrize(("name", "shown"), [
    ("../../etc/passwd", "passwd"),
    ("..\\..\\Windows\\system32\\drivers\\etc\\hosts", "hosts"),
    ("/etc/cron.d/evil", "evil"),
    ("con.txt", "_con.txt"),
    ("NUL", "_NUL"),
    ("LPT1.log", "_LPT1.log"),
    ("facture\u202efdp.exe", "facture_fdp.exe"),
    (LONG, None),
])
def test_attachment_names_are_sanitised_and_never_reach_the_file_system(
        desk: DeskHarness, tmp_path: Path, name: str, shown: str | None) -> None:
    assert len(LONG) == 300
    msg = make_mail(EDITOR, "Zie bijlage", "Zie bijlage.")
    msg.add_attachment(b"%PDF-1.4 hostile", maintype="application", subtype="octet-stream",
                       filename=name)
    row = desk.receive(msg)
    assert row.status == "ticket", row.reason
    [att] = _attachments(desk)
    if shown is not None:
        assert att.filename == shown
    else:
        assert len(att.filename) <= 120 and att.filename.endswith(".pdf")
        assert att.filename.startswith("Rapport très long")
    # The bytes are on disk under their SHA-256 only; nothing was written outside the store.
    files = _files_under(tmp_path / "blobs")
    assert [f.name for f in files] == [att.sha256]
    assert not (tmp_path / "etc").exists() and not Path("/etc/cron.d/evil").exists()
    with desk.app.sessions() as s:
        assert blobs.get(s, desk.app.settings.attachments, att.sha256) == b"%PDF-1.4 hostile"


def _zip_bomb(inflated: int) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as z:
        z.writestr("zeros.bin", b"\0" * inflated)
    return out.getvalue()


def test_zip_bomb_is_stored_as_sent_and_never_opened(desk: DeskHarness) -> None:
    bomb = _zip_bomb(200 * 1024 * 1024)      # 200 MB inflated, about 200 KB on the wire
    assert len(bomb) < 300_000
    msg = make_mail(EDITOR, "Logbestanden", "De logs zitten in de zip.")
    msg.add_attachment(bomb, maintype="application", subtype="zip", filename="logs.zip")
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    row = desk.receive(msg)
    elapsed = time.perf_counter() - started
    grown_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before
    assert row.status == "ticket", row.reason
    [att] = _attachments(desk)
    assert (att.filename, att.content_type, att.size) == ("logs.zip", "application/zip",
                                                          len(bomb))
    with desk.app.sessions() as s:
        assert blobs.get(s, desk.app.settings.attachments, att.sha256) == bomb
    # Never inflated: 200 MB of zeros would show in the peak RSS and the time.
    assert grown_kb < 100 * 1024, f"peak RSS grew {grown_kb} KB"
    assert elapsed < 60   # (generous: a loaded CI machine; inflating would take far more memory)
    print(f"\nzip bomb ({len(bomb)} bytes, 200 MB inflated): processed in {elapsed:.2f} s, "
          f"peak RSS +{grown_kb} KB, load {os.getloadavg()[0]:.1f}")


def test_mime_nested_1000_deep_becomes_a_ticket(desk: DeskHarness) -> None:
    raw = (f"From: Eva <{EDITOR}>\r\nTo: servicedesk@desk.example\r\n"
           "Subject: Diep genest\r\nMessage-ID: <deep@client.example>\r\n").encode()
    for i in range(1000):
        raw += f"Content-Type: multipart/mixed; boundary=b{i}\r\n\r\n--b{i}\r\n".encode()
    raw += b"Content-Type: text/plain\r\n\r\nhelemaal onderaan\r\n"
    started = time.perf_counter()
    row = desk.receive(raw)
    assert time.perf_counter() - started < 10
    assert (row.status, row.kind) == ("ticket", "new-request"), row.reason
    [request] = [m for m in desk.ticket("SD-1").messages if m.direction == "in"]
    assert "nested deeper than 60 levels were not read" in request.body_text
    with desk.app.sessions() as s:   # the mail itself is kept whole
        from mailgate.db.models import Inbound
        stored = s.get(Inbound, row.id)
        assert stored is not None and stored.raw == raw


def test_8bit_bytes_in_every_header_are_read_and_kept(desk: DeskHarness) -> None:
    fields = [("From", f"Renée Dupré <{EDITOR}>"), ("To", "Accueil <servicedesk@desk.example>"),
              ("Cc", "Gérard <gerard@site1234.example.be>"), ("Subject", "Problème à l'accueil"),
              ("Message-ID", "<é1@client.example>"), ("Organization", "Société Générale"),
              ("X-Mailer", "Messagerie – 5"), ("Thread-Topic", "Problème")]
    raw = "".join(f"{k}: {v}\r\n" for k, v in fields).encode("cp1252") + \
        b"Content-Type: text/plain\r\n\r\nL'accueil est ferm\xe9.\r\n"
    row = desk.receive(raw)
    assert row.status == "ticket", row.reason
    ticket = desk.ticket("SD-1")
    assert ticket.subject == "Problème à l'accueil" and ticket.requester == EDITOR
    [request] = [m for m in ticket.messages if m.direction == "in"]
    assert request.body_text == "L'accueil est fermé."
    assert "gerard@site1234.example.be" in request.cc_addrs
    [ack] = desk.outbox()
    assert "Problème à l'accueil" in str(ack["Subject"])
