"""bench/realmail.py reads a helpdesk's fixture directory (NAME.box + NAME.yml in Zammad's
format) and prints agreement rates; here on a few mails of our own in that format."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.realmail import main, read_expected

YML = """--- !ruby/hash:ActiveSupport::HashWithIndifferentAccess
from: '"Renée" <renee@site.example>'
from_email: renee@site.example
from_display_name: Renée
subject: 'Offerte voor ''t kantoor
  en de zaal'
body: |-
  <div>tekst</div>
attachments:
- !ruby/hash:ActiveSupport::HashWithIndifferentAccess
  data: "<html>"
  filename: message.html
  preferences: !ruby/hash:ActiveSupport::HashWithIndifferentAccess
    content-alternative: true
- !ruby/hash:ActiveSupport::HashWithIndifferentAccess
  data: !binary |-
    JVBERi0=
  filename: "Bestellbest\\xE4tigung.pdf"
  preferences: !ruby/hash:ActiveSupport::HashWithIndifferentAccess
    Mime-Type: application/pdf
- !ruby/hash:ActiveSupport::HashWithIndifferentAccess
  data: ''
  filename: file
"""

BOX = ("From: =?utf-8?Q?Ren=C3=A9e?= <renee@site.example>\r\n"
       "Subject: Offerte voor 't kantoor en de zaal\r\nMIME-Version: 1.0\r\n"
       "Content-Type: multipart/mixed; boundary=XX\r\n\r\n--XX\r\n"
       "Content-Type: text/plain\r\n\r\ntekst\r\n--XX\r\n"
       "Content-Type: application/pdf\r\nContent-Disposition: attachment; "
       "filename*=iso-8859-1''Bestellbest%E4tigung.pdf\r\n\r\n%PDF-\r\n--XX--\r\n")


def test_agreement_rates_are_printed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "mail001.yml").write_text(YML, encoding="utf-8")
    (tmp_path / "mail001.box").write_text(BOX, encoding="utf-8")
    want = read_expected(tmp_path / "mail001.yml")
    assert (want.from_email, want.subject) == ("renee@site.example",
                                               "Offerte voor 't kantoor en de zaal")
    assert want.attachments == ["Bestellbestätigung.pdf"]   # not the alternative, not empty
    # A second mail whose From names no usable address: we must find none either.
    (tmp_path / "mail002.yml").write_text(
        "from: '\"x\" <power quadrant system@example.com>'\n"
        "from_email: power quadrant system@example.com\nsubject: hi\n", encoding="utf-8")
    (tmp_path / "mail002.box").write_text(
        'From: "x" <power quadrant system@example.com>\nSubject: hi\n\nbody\n', encoding="utf-8")
    assert main([str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "From agrees:             100.0% (2/2)" in out
    assert "Subject agrees:          100.0% (2/2)" in out
    assert "attachment names agree:  100.0% (1/1)" in out
    assert "quarantined:             0.0% (0/2)" in out


def test_an_empty_directory_is_a_usage_error(tmp_path: Path) -> None:
    assert main([str(tmp_path)]) == 66


FAX = (b"To: desk@desk.example\r\nSubject: Failed Mail\r\nFrom: Fax fax@gw.example\r\n"
       b"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=F\r\n\r\n--F\r\n"
       b"Content-Disposition: attachment; filename=fax_1.pdf\r\n"
       b"Content-Type: application/pdf\r\n\r\n%PDF-\r\n--F\r\n\r\n"
       b"Neues Fax empfangen.\r\n--F--\r\n")


def test_what_zammad_keeps_elsewhere_is_counted_fairly(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Zammad keeps a From it cannot split whole (``Fax fax@gw.example``) and files the text
    after an attachment as a part named "file" with "no visible content" as the body; we read
    the address and take the text as the message. A fixture without any From states nothing."""
    (tmp_path / "fax.box").write_bytes(FAX)
    (tmp_path / "fax.yml").write_text(
        "from: Fax fax@gw.example\nfrom_email: Fax fax@gw.example\nsubject: Failed Mail\n"
        "body: no visible content\nattachments:\n- data: x\n  filename: fax_1.pdf\n"
        "- data: y\n  filename: file\n", encoding="utf-8")
    (tmp_path / "nofrom.box").write_bytes(b"From: a@site.example\r\nSubject: hi\r\n\r\nx\r\n")
    (tmp_path / "nofrom.yml").write_text("subject: hi\n", encoding="utf-8")
    assert main([str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "From agrees:             100.0% (1/1)" in out          # nofrom.yml not counted
    assert "attachment names agree:  100.0% (2/2)" in out


def test_a_lost_text_part_and_a_stranger_address_are_still_differences(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Our body holds text, but the fixture's body shows text too: "file" is a part we lack.
    (tmp_path / "fax.box").write_bytes(FAX)
    (tmp_path / "fax.yml").write_text(
        "from_email: fax@gw.example\nsubject: Failed Mail\nbody: Neues Fax\nattachments:\n"
        "- data: y\n  filename: file\n", encoding="utf-8")
    # A quoted name before a bare address: a word cut from it is no expectation to meet.
    (tmp_path / "pq.box").write_bytes(
        b'From: "PQ" power quadrant system@example.com\r\nSubject: s\r\n\r\nx\r\n')
    (tmp_path / "pq.yml").write_text(
        "from: '\"PQ\" power quadrant system@example.com'\nsubject: s\n", encoding="utf-8")
    assert main([str(tmp_path), "-v"]) == 0
    out = capsys.readouterr().out
    assert "attachment names agree:  0.0% (0/1)" in out
    assert "From agrees:             100.0% (2/2)" in out
