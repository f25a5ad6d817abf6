"""Attachment names: sanitised for display; never used as a path (blobs are keyed by hash)."""

from __future__ import annotations

import mimetypes
import re
import unicodedata

_FORBIDDEN = re.compile(r'[\x00-\x1f\x7f<>:"/\\|?*]')


def display_name(original: str, content_type: str) -> str:
    name = unicodedata.normalize("NFC", original or "")
    name = name.replace("\\", "/").rsplit("/", 1)[-1]  # no directories, whatever the OS
    name = _FORBIDDEN.sub("_", name).strip(" .")
    if not name:
        ext = mimetypes.guess_extension(content_type or "") or ".bin"
        name = f"attachment{ext}"
    if len(name) > 120:
        stem, dot, ext = name.rpartition(".")
        name = f"{stem[:110]}.{ext[:8]}" if dot and len(ext) <= 8 else name[:120]
    return name
