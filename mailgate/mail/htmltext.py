"""HTML-only mail → readable text, with link targets and table layout kept.

The rendering is inscriptis' (a CSS-aware HTML-to-text engine: tables keep their columns,
lists their bullets, ``<script>``/``<style>``/``<head>`` vanish). Only two things are ours:

- a link shows as ``text <https://target>`` (the way plain-text mail writes links), only for
  ``http(s)`` targets and not when the text already is the target;
- it never raises: HTML that lxml refuses (NUL bytes, broken encodings, absurd nesting) falls
  back to a crude tag strip, because a mail must not be quarantined for its markup.
"""

from __future__ import annotations

import html as htmllib
import re
from typing import Any

from inscriptis import get_text
from inscriptis.css_profiles import CSS_PROFILES
from inscriptis.html_properties import Display
from inscriptis.model.config import ParserConfig
from inscriptis.model.html_element import HtmlElement
from inscriptis.model.tag import CustomHtmlTagHandlerMapping

_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_LINK_TARGET = "_mailgate_href"


def _a_start(state: Any, attrs: dict[str, str]) -> None:
    href = (attrs.get("href") or "").strip()
    setattr(state, _LINK_TARGET, href if href.lower().startswith(("http://", "https://")) else "")


def _a_end(state: Any) -> None:
    href = getattr(state, _LINK_TARGET, "")
    if href:
        state.tags[-1].write(f" <{href}>")
        setattr(state, _LINK_TARGET, "")


# Firefox's defaults (inscriptis' "strict" profile), plus <hr> as a line of its own: mail
# programs separate the quoted mail with it.
_CSS = {**CSS_PROFILES["strict"], "hr": HtmlElement(display=Display.block)}

_CONFIG = ParserConfig(
    css=_CSS,
    display_links=False,
    custom_html_tag_handler_mapping=CustomHtmlTagHandlerMapping(
        start_tag_mapping={"a": _a_start}, end_tag_mapping={"a": _a_end}),
)

# "https://x.example <https://x.example>" → the link once.
_SELF_LINK = re.compile(r"(?<!\S)(\S+) <\1/?>")


def _tidy(text: str) -> str:
    lines = [ln.rstrip() for ln in text.splitlines()]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


def _crude(html: str) -> str:
    """Last resort: drop tags, scripts and styles, unescape entities."""
    html = re.sub(r"(?is)<(script|style|head)\b.*?</\1\s*>", " ", html)
    html = re.sub(r"(?i)<\s*(br|/p|/div|/tr|/li|/h\d)\b[^>]*>", "\n", html)
    return _tidy(htmllib.unescape(re.sub(r"<[^>]*>", " ", html)))


def html_to_text(html: str) -> str:
    """Readable text for an HTML body; never raises."""
    html = _CONTROL.sub("", html or "")
    if not html.strip():
        return ""
    try:
        text = get_text(html, _CONFIG)
    except Exception:  # lxml: ValueError, ParserError, RecursionError on hostile markup
        return _crude(html)
    text = _tidy(_SELF_LINK.sub(r"\1", text.replace("\xa0", " ")))
    # lxml gives up silently past its nesting limit: never lose the words for the markup.
    return text or _crude(html)
