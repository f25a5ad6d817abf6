"""What a good request holds, and what the acknowledgement must ask for when it is missing."""

from __future__ import annotations

import re

from mailgate.mail.parse import ParsedMail

_URL = re.compile(r"https?://[^\s<>\"']+", re.IGNORECASE)
_SITE_ID = re.compile(r"(?<!\d)\d{4}(?!\d)")
_PHONE = re.compile(r"(?:\+|00)?\d[\d ./()-]{7,}\d")
_GENERIC_TITLES = {"", "help", "hulp", "aide", "vraag", "question", "probleem", "problème",
                   "probleme", "problem", "issue", "fout", "erreur", "error", "urgent", "dringend",
                   "request", "demande", "aanvraag", "bug", "website", "site"}

MISSING_ITEMS = ("site_id", "title", "name", "phone", "error", "url")


def missing_items(mail: ParsedMail, *, site_id: str | None, name: str, phone: str) -> list[str]:
    """Keys of MISSING_ITEMS the request lacks (templates turn them into sentences)."""
    text = f"{mail.subject}\n{mail.text}"
    missing = []
    if not site_id and not _SITE_ID.search(text):
        missing.append("site_id")
    title = re.sub(r"[^\w\s]", "", mail.subject).strip().lower()
    if title in _GENERIC_TITLES or len(title) < 4:
        missing.append("title")
    if not (name or mail.from_name):
        missing.append("name")
    if not phone and not _PHONE.search(mail.text):
        missing.append("phone")
    has_image = any(a.content_type.startswith("image/") for a in mail.attachments)
    if not has_image and len(mail.text.strip()) < 40:
        missing.append("error")
    if not _URL.search(text):
        missing.append("url")
    return missing


def find_site_id(mail: ParsedMail, known: set[str]) -> str | None:
    """A 4-digit number in subject or body that is a registered site."""
    for m in _SITE_ID.finditer(f"{mail.subject}\n{mail.text}"):
        if m.group(0) in known:
            return m.group(0)
    return None
