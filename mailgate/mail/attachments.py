"""Attachment names: sanitised for display; never used as a path (blobs are keyed by hash).

A name is still shown to agents and sent along in mails they may save on Windows or Unix:
no directories (``../../etc/passwd`` → ``passwd``), no characters a file system or a header
reads as structure, no device names Windows opens instead of a file (``con.txt`` →
``_con.txt``), at most 120 characters with the extension kept. Letters of any script stay.
"""

from __future__ import annotations

import mimetypes
import re
import unicodedata

_FORBIDDEN = re.compile(r'[\x00-\x1f\x7f<>:"/\\|?*\u202a-\u202e\u2066-\u2069]')
# Windows device names, with or without an extension ("con", "con.txt", "LPT1.log").
_DEVICE = re.compile(r"^(?:con|prn|aux|nul|com[0-9¹²³]|lpt[0-9¹²³])(?:\.|$)", re.IGNORECASE)
MAX_LENGTH = 120


def display_name(original: str, content_type: str) -> str:
    name = unicodedata.normalize("NFC", original or "")
    name = name.replace("\\", "/").rsplit("/", 1)[-1]  # no directories, whatever the OS
    # (bidirectional overrides too: "invoice\u202efdp.exe" would show as "invoiceexe.pdf")
    name = _FORBIDDEN.sub("_", name).strip(" .")
    if not name:
        ext = mimetypes.guess_extension(content_type or "") or ".bin"
        name = f"attachment{ext}"
    if _DEVICE.match(name):
        name = f"_{name}"
    if len(name) > MAX_LENGTH:
        stem, dot, ext = name.rpartition(".")
        name = f"{stem[:110]}.{ext[:8]}" if dot and len(ext) <= 8 else name[:MAX_LENGTH]
    return name
