"""html_to_text: inscriptis' rendering with our link style; it never raises."""

from __future__ import annotations

import pytest

from mailgate.mail.htmltext import html_to_text


def test_links_tables_lists_and_invisible_parts() -> None:
    text = html_to_text(
        "<html><head><title>t</title><style>p{color:red}</style></head><body>"
        "<p>Zie <a href='https://site.example/p'>de pagina</a> of "
        "<a href='mailto:desk@desk.example'>desk@desk.example</a> of "
        "<a href='https://site.example/'>https://site.example/</a></p>"
        "<table><tr><th>Pagina</th><th>Status</th></tr>"
        "<tr><td>Home</td><td>kapot</td></tr></table>"
        "<ul><li>een</li><li>twee</li></ul><script>alert(1)</script>&euro;&nbsp;5</body></html>")
    assert "de pagina <https://site.example/p>" in text
    assert "desk@desk.example" in text and "mailto:" not in text
    assert text.count("https://site.example/") == 1 + text.count("/p>")
    assert "Pagina  Status" in text and "Home    kapot" in text   # columns kept
    assert "* een" in text and "* twee" in text
    assert "color" not in text and "alert" not in text and "€ 5" in text


@pytest.mark.parametrize("html", ["", "   ", "<p></p>", "\x00<p>a\x00b</p>",
                                  "<?xml version='1.0' encoding='utf-8'?><html>hi</html>",
                                  "<div>" * 3000 + "deep", "<p>unclosed <b>tags <i>everywhere",
                                  "not html at all", "<![CDATA[x]]><!-- c -->"])
def test_never_raises_and_keeps_the_words(html: str) -> None:
    text = html_to_text(html)
    for word in ("hi", "deep", "tags", "everywhere", "not html"):
        if word in html:
            assert word in text
    assert "\x00" not in text
