from __future__ import annotations

import email
from email import policy

import pytest

from mailgate.outbound.compose import Outgoing, build


def _out(**kw: object) -> Outgoing:
    base: dict[str, object] = dict(from_name="Desk", from_addr="desk@x.example",
                                   to=("eva@y.example",), subject="s", body="b",
                                   message_id="<m1@x.example>")
    base.update(kw)
    return Outgoing(**base)  # type: ignore[arg-type]


def test_subject_and_name_cannot_inject_headers() -> None:
    raw = build(_out(subject="Hallo\r\nBcc: victim@z.example", from_name="Desk\nX-Evil: 1"))
    msg = email.message_from_bytes(raw, policy=policy.default)
    assert msg["Bcc"] is None and msg["X-Evil"] is None
    assert "Bcc: victim" in msg["Subject"]


def test_unchecked_addresses_are_refused() -> None:
    with pytest.raises(ValueError):
        build(_out(to=("eva@y.example>\r\nBcc: v@z.example",)))


def test_references_keep_only_well_formed_ids() -> None:
    raw = build(_out(references=("<a@x>", "bad id", "<b@x>")))
    msg = email.message_from_bytes(raw, policy=policy.default)
    assert msg["References"] == "<a@x> <b@x>"


# --- format=flowed (RFC 3676) -----------------------------------------------------------------

from mailgate.outbound.compose import OutAttachment, flow, html_from_text, unflow  # noqa: E402

_LONG = ("We have received your request. It is registered as ticket SD-12. Please keep this "
         "number in the subject.")
_URL = "https://www.example.org/" + "a/" * 40 + "end?x=1&y=2"

FLOW_CASES = [
    # (text, expected), "·" for a soft-break space at the end of a line
    ("short line\n", "short line\n"),
    ("", ""),
    (_LONG, "We have received your request. It is registered as ticket SD-12. Please·\n"
            "keep this number in the subject."),
    # hard breaks stay; trailing spaces of hard lines go
    ("one   \ntwo\t\n\nthree", "one\ntwo\t\n\nthree"),
    # the signature separator keeps its space; a bare "--" stays bare
    ("Regards\n-- \nDesk\n--\nx", "Regards\n--·\nDesk\n--\nx"),
    # space-stuffing: a leading space, "From " (also on a continuation line), ">" mid-text
    ("  - indented item", "   - indented item"),
    ("From here on", " From here on"),
    ("x" * 64 + " and From now on", "x" * 64 + " and·\n From now on"),
    ("y" * 68 + " a > b", "y" * 68 + " a·\n > b"),
    ("Fromage", "Fromage"),
    # an unbreakable word (a URL) stays whole, on its own line
    ("See " + _URL + " for more.", "See·\n" + _URL + "·\nfor more."),
    (_URL, _URL),
    # quotes keep their prefix on every wrapped line, with one stuffing space
    ("> " + _LONG, "> We have received your request. It is registered as ticket SD-12.·\n"
                   "> Please keep this number in the subject."),
    (">>deep", ">> deep"),
    ("> ", ">"),
    ("> -- ", "> -- "),
    # several spaces: the break comes after the run, the next line starts with a word
    ("w" * 70 + "    next", "w" * 70 + "   ·\nnext"),
    # CRLF and CR in, "\n" out
    ("a\r\nb\rc", "a\nb\nc"),
]


@pytest.mark.parametrize(("text", "expected"), FLOW_CASES)
def test_flow(text: str, expected: str) -> None:
    assert flow(text) == expected.replace("·", " ")


@pytest.mark.parametrize(("text", "expected"), FLOW_CASES)
def test_flow_lines_fit_unless_unbreakable(text: str, expected: str) -> None:
    for line in flow(text).split("\n"):
        assert len(line) <= 72 or " " not in line.strip(), line


ROUND_TRIP = [
    _LONG,
    "Dear Eva,\n\n" + _LONG + "\n" + _LONG + "\n\n-- \nDesk\n",
    "> " + _LONG + "\n>> " + _LONG + "\nafter the quote " + _LONG,
    "  - indented " + _LONG,
    "See " + _URL + " for more, From here",
    ("Één, twee — drie « quatre » " * 8).strip(),
]


@pytest.mark.parametrize("text", ROUND_TRIP)
def test_unflow_gives_the_text_back(text: str) -> None:
    assert unflow(flow(text)) == text
    assert unflow(flow(text, width=20)) == text


def test_narrow_width() -> None:
    assert flow("aa bb cc dd", width=5) == "aa \nbb \ncc dd"


def test_flow_is_what_goes_out() -> None:
    raw = build(_out(body=_LONG + "\n-- \nDesk\n", html=False))
    assert b"Please \r\nkeep this number" in raw, "a soft break is space + CRLF"
    assert b"\r\n-- \r\nDesk\r\n" in raw
    msg = email.message_from_bytes(raw, policy=policy.default)
    assert msg.get_content_type() == "text/plain"
    assert msg.get_param("format") == "flowed" and msg.get_content_charset() == "utf-8"
    assert msg.get_param("delsp") is None
    assert unflow(msg.get_content()) == _LONG + "\n-- \nDesk\n"


# --- the HTML alternative ---------------------------------------------------------------------


def test_mail_is_multipart_alternative_plain_first() -> None:
    raw = build(_out(body="Beste Eva,\n\nZie https://www.example.be/contact.\n", language="nl"))
    msg = email.message_from_bytes(raw, policy=policy.default)
    assert msg.get_content_type() == "multipart/alternative"
    plain, rich = list(msg.iter_parts())
    assert plain.get_content_type() == "text/plain" and plain.get_param("format") == "flowed"
    assert rich.get_content_type() == "text/html"
    assert msg.get_body(("plain",)) is plain and msg.get_body(("html", "plain")) is rich
    text = rich.get_content()
    assert '<html lang="nl">' in text and "<p>Beste Eva,</p>" in text
    assert '<a href="https://www.example.be/contact">https://www.example.be/contact</a>.' in text


def test_attachments_wrap_the_alternative_in_mixed() -> None:
    att = OutAttachment("shot.png", "image/png", b"\x89PNG fake")
    raw = build(_out(body="Zie bijlage.", attachments=(att,)))
    msg = email.message_from_bytes(raw, policy=policy.default)
    assert msg.get_content_type() == "multipart/mixed"
    first, second = list(msg.iter_parts())
    assert first.get_content_type() == "multipart/alternative"
    assert [p.get_content_type() for p in first.iter_parts()] == ["text/plain", "text/html"]
    assert second.get_content_type() == "image/png" and second.get_filename() == "shot.png"
    assert msg.get_body(("plain",)).get_content().strip() == "Zie bijlage."  # type: ignore[union-attr]
    assert [p.get_filename() for p in msg.iter_attachments()] == ["shot.png"]


def test_without_html_the_mail_is_one_text_part() -> None:
    msg = email.message_from_bytes(build(_out(html=False)), policy=policy.default)
    assert msg.get_content_type() == "text/plain" and not msg.is_multipart()


HOSTILE = ('<script>alert(1)</script> <img src="https://evil.example/x.png"> '
           'javascript:alert(1) <a href="javascript:x">y</a> '
           'https://ok.example/a?b=1&c="2"<script> '
           "<style>body{}</style> & ' \"")


def test_html_escapes_everything() -> None:
    page = html_from_text(HOSTILE, lang='nl" onload="x', title="<b>t</b>")
    body = page.split("<body", 1)[1]
    for bad in ("<script", "<img", "<style", 'href="javascript', "onload"):
        assert bad not in page.lower(), bad
    assert "&lt;script&gt;" in body and "&lt;img src=&quot;<a href=" in body
    # the URL stops before the quote; its & is escaped in href and text
    assert '<a href="https://ok.example/a?b=1&amp;c=">https://ok.example/a?b=1&amp;c=</a>' in body
    assert "<html>" in page and "<title>&lt;b&gt;t&lt;/b&gt;</title>" in page
    assert page.count("<a ") == 2  # the two https URLs, as text links


def test_html_structure() -> None:
    text = ("Dear Eva,\n\nLine one\nline two (see https://x.example/p).\n\n"
            "> quoted\n> more\n>> deeper\nafter\n\n"
            "Ticket:      SD-1\nAssigned to: nobody\n\n  - indented\n")
    page = html_from_text(text)
    assert "<p>Dear Eva,</p>" in page
    assert ('<p>Line one<br>\nline two (see <a href="https://x.example/p">https://x.example/p</a>).'
            "</p>") in page
    quote = page.split("<blockquote", 1)[1]
    assert quote.startswith(' style="') and "<p>quoted<br>\nmore</p>" in quote
    assert quote.count("<blockquote") == 1 and "<p>deeper</p>" in quote
    assert "</blockquote>\n<p>after</p>" in page
    assert '<td style="padding-right: 1em;">Assigned to:</td><td>nobody</td>' in page
    assert "<p>&nbsp;&nbsp;- indented</p>" in page
    assert "http://" not in page.replace("https://x.example/p", "")
    assert "<img" not in page and "<script" not in page


# --- headers written directly (no EmailMessage on the way out) ---------------------------------


@pytest.mark.parametrize("name, subject", [
    ("Agent Één (Bench Desk)", "[SD-12] Réponse: le formulaire ne marche pas " + "x" * 60),
    ('Desk "Support", Brussel', " ".join(["测试邮件"] * 20)),
    ("Ünïcödé " + "y" * 90, "Re: " + " ".join(["émoji😀"] * 30)),
    ("a\\b", "=?utf-8?q?not-an-encoded-word?= stays as written"),
])
def test_free_text_in_headers_reads_back_as_written(name: str, subject: str) -> None:
    att = OutAttachment("schermafdrukké 1.png", "image/png", b"\x89PNG" * 100)
    raw = build(_out(from_name=name, subject=subject, attachments=(att,),
                     references=tuple(f"<r{i}@x.example>" for i in range(30))))
    assert all(len(line) <= 998 for line in raw.split(b"\r\n"))
    assert b"\n" not in raw.replace(b"\r\n", b""), "every line ends in CRLF"
    head = raw.split(b"\r\n\r\n", 1)[0]
    # Folded at 78 columns, unless a single word is longer than a line.
    assert all(len(line) <= 78 or max(map(len, line.split())) > 60
               for line in head.split(b"\r\n"))
    msg = email.message_from_bytes(raw, policy=policy.default)
    assert msg["Subject"] == subject
    assert msg["From"].addresses[0].display_name == name
    assert msg["From"].addresses[0].addr_spec == "desk@x.example"
    assert msg["References"].split() == [f"<r{i}@x.example>" for i in range(10, 30)]
    assert [p.get_filename() for p in msg.iter_attachments()] == ["schermafdrukké 1.png"]
    part = next(msg.iter_attachments())
    assert part.get_content() == b"\x89PNG" * 100


def test_long_lines_go_quoted_printable_and_read_back() -> None:
    text = "Zie " + "https://www.example.be/" + "ä/" * 600 + " en verder.\n"
    msg = email.message_from_bytes(build(_out(body=text)), policy=policy.default)
    plain = msg.get_body(("plain",))
    assert plain is not None and plain["Content-Transfer-Encoding"] in ("quoted-printable",
                                                                      "base64")
    assert unflow(plain.get_content()) == text


def test_a_malformed_in_reply_to_is_left_out() -> None:
    msg = email.message_from_bytes(build(_out(in_reply_to="no brackets@x")),
                                   policy=policy.default)
    assert msg["In-Reply-To"] is None
