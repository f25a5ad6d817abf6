"""extract(): what a request holds (site IDs, URLs, phones, the signature name, an error
message, several requests), read from mails built with EmailMessage and parsed by parse()."""

from __future__ import annotations

import dataclasses
import struct
import time
import zlib
from collections import Counter
from email.message import EmailMessage
from email.utils import make_msgid

import pytest

from mailgate.mail.extract import MAX_URLS, Extracted, extract
from mailgate.mail.parse import ParsedMail, parse
from tests.corpus.corpus import CORPUS, mail_files, outcome, report, source_of

KNOWN = frozenset({"1234", "5678", "4321", "1000", "2026", "0470"})


def _png(width: int, height: int, size: int = 200) -> bytes:
    ihdr = struct.pack(">II", width, height) + b"\x08\x02\x00\x00\x00"
    chunk = b"IHDR" + ihdr
    head = b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + chunk
    head += struct.pack(">I", zlib.crc32(chunk))
    return head + b"\x00" * max(0, size - len(head))


def _mail(body: str = "", *, subject: str = "Probleem met de nieuwspagina",
          html: str | None = None, images: tuple[tuple[str, bytes, str], ...] = (),
          sender: str = "Eva Claes <eva.claes@gent.be>") -> ParsedMail:
    """A mail as an editor's program sends it, parsed. ``images``: (filename, data, cid);
    with a cid the image is inline (multipart/related), without it an attachment."""
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = "Service Desk <servicedesk@example.org>"
    msg["Subject"] = subject
    msg["Date"] = "Mon, 30 Nov 2026 10:00:00 +0100"
    msg["Message-ID"] = make_msgid(domain="gent.be")
    if html is not None:
        msg.set_content(html, subtype="html")
    else:
        msg.set_content(body)
    for filename, data, cid in images:
        if cid:
            msg.add_related(data, maintype="image", subtype="png", filename=filename,
                            cid=f"<{cid}>", disposition="inline")
        else:
            msg.add_attachment(data, maintype="image", subtype="png", filename=filename)
    return parse(msg.as_bytes())


def _body(text: str, known: frozenset[str] = KNOWN, **kw: str) -> Extracted:
    return extract(_mail(text, **kw), known)


# --- whole mails ----------------------------------------------------------------------------

def test_dutch_mail_with_signature_phone_and_name() -> None:
    mail = _mail(
        "Beste,\n\n"
        "Op onze website (site-ID 1234) verschijnt het nieuwsbericht van 01-12-2026 niet op\n"
        "https://www.gent.be/nieuws/overzicht. Kunnen jullie eens kijken?\n\n"
        "Met vriendelijke groeten,\n\n"
        "Eva Claes\n"
        "Webredacteur\n"
        "Stad Gent – Dienst Communicatie\n"
        "Botermarkt 1, 9000 Gent\n"
        "T 09 266 52 11 | GSM 0470/12.34.56\n"
        "www.gent.be\n")
    got = extract(mail, frozenset({"1234", "9000"}))
    assert got.site_ids == ("1234",)                     # not 2026 (date), not 9000 (postcode)
    assert got.urls == ("https://www.gent.be/nieuws/overzicht", "https://www.gent.be")
    assert got.phones == ("+3292665211", "+32470123456")
    assert got.contact_name == "Eva Claes"
    assert not got.has_error_message and got.error_evidence == ""
    assert not got.several_requests


def test_french_mail_with_site_number_and_http_error() -> None:
    got = extract(_mail(
        "Bonjour,\n\n"
        "Depuis ce matin, le site n° 4321 affiche une erreur 500 quand on ouvre\n"
        "la page https://www.wallonie.be/fr/demarches?id=7.\n\n"
        "Bien cordialement,\n"
        "Marie-Claire Dupont\n"
        "Tél. : +32 (0)81 33 44 55\n",
        subject="Erreur sur le site", sender="Marie-Claire Dupont <mc.dupont@spw.be>"))
    assert got.site_ids == ("4321",)
    assert got.urls == ("https://www.wallonie.be/fr/demarches?id=7",)
    assert got.phones == ("+3281334455",)
    assert got.contact_name == "Marie-Claire Dupont"
    assert got.has_error_message and got.error_evidence == "erreur 500"


def test_english_html_only_mail() -> None:
    mail = _mail(html=(
        "<html><head><style>p{color:red}</style></head><body>"
        "<p>Hello,</p><p>The contact form on site 5678 returns "
        "<b>404 Not Found</b> when I follow "
        "<a href='https://www.belgium.be/en/contact'>this link</a>.</p>"
        "<p>Kind regards,<br>John Smith<br>Phone: +32 2 123 45 67</p>"
        "</body></html>"), subject="Contact form broken")
    assert "this link <https://www.belgium.be/en/contact>" in mail.text   # parse made it text
    got = extract(mail, KNOWN)
    assert got.site_ids == ("5678",)
    assert got.urls == ("https://www.belgium.be/en/contact",)
    assert got.phones == ("+3221234567",)
    assert got.contact_name == "John Smith"
    assert got.error_evidence == "404 Not Found"


def test_forward_reads_the_forwarded_part() -> None:
    mail = _mail(
        "Ter info, dit kreeg ik van een burger.\n\n"
        "Groeten,\nPieter De Smet\n\n"
        "---------- Forwarded message ---------\n"
        "From: Burger <burger@gmail.com>\n"
        "Date: Mon, 30 Nov 2026 at 09:12\n"
        "Subject: kapotte link\n"
        "To: Pieter De Smet <pieter.desmet@leuven.be>\n\n"
        "De link op https://www.leuven.be/afval/kalender werkt niet.\n"
        "Vriendelijke groeten,\nAnna Peeters\n",
        subject="Fwd: kapotte link")
    assert mail.quoted_text == ""           # a forward is not split: it is the request
    got = extract(mail, KNOWN)
    assert got.urls == ("https://www.leuven.be/afval/kalender",)
    assert got.contact_name == "Pieter De Smet"   # the forwarder's own signature


def test_forward_without_own_words_has_no_contact_name() -> None:
    got = _body("-------- Doorgestuurd bericht --------\nVan: Jan <jan@x.be>\n"
                "Onderwerp: site\n\nSite 1234 is traag.\n\nGroeten,\nJan Janssens\n",
                subject="Doorst: site")
    assert got.site_ids == ("1234",) and got.contact_name == ""


def test_quoted_earlier_mail_is_not_read() -> None:
    mail = _mail(
        "Het gaat over site 1234, niet over de andere.\n\n"
        "Groeten,\nEva Claes\n\n"
        "Op ma 30 nov. 2026 om 10:00 schreef Service Desk <servicedesk@example.org>:\n"
        "> Over welke site gaat het? Site 5678 of https://www.example.be/oud ?\n"
        "> Bel ons op 02 555 66 77.\n"
        "> Met vriendelijke groeten,\n> Koen Maes\n",
        subject="Re: [SD-42] nieuwspagina")
    assert "5678" in mail.quoted_text
    got = extract(mail, KNOWN)
    assert got.site_ids == ("1234",)
    assert got.urls == () and got.phones == ()
    assert got.contact_name == "Eva Claes"
    assert not got.several_requests


# --- error messages ---------------------------------------------------------------------------

def test_attached_screenshot_is_an_error_message() -> None:
    got = extract(_mail("Zie bijlage.", images=(("fout-homepage.png", _png(1280, 720), ""),)))
    assert got.has_error_message and got.error_evidence == "screenshot fout-homepage.png"


def test_inline_logo_is_not_but_inline_screenshot_is() -> None:
    logo = _mail("Kan u de pagina aanpassen?", images=(("image001.png", _png(180, 60), "l1"),))
    assert logo.attachments and logo.attachments[0].content_id
    assert not extract(logo).has_error_message
    shot = _mail("Dit zie ik:", images=(("image002.png", _png(1366, 768), "s1"),))
    assert extract(shot).error_evidence == "screenshot image002.png"
    unreadable = _mail("Dit zie ik:", images=(("image003.png", b"\x00" * 40_000, "s2"),))
    assert extract(unreadable).error_evidence == "screenshot image003.png"


@pytest.mark.parametrize(("body", "evidence"), [
    ("Ik krijg dit:\n\nTraceback (most recent call last):\n  File \"x.py\", line 3, in <module>\n"
     "KeyError: 'id'", "Traceback (most recent call last)"),
    ("Bij het opslaan:\nException in thread \"main\" java.lang.NullPointerException\n"
     "    at com.example.cms.PageService.save(PageService.java:42)",
     "Exception in thread \"main"),
    ("Foutmelding bij upload:\n    at com.example.cms.Upload.run(Upload.java:12)",
     "at com.example.cms.Upload.run(Upload.java:12)"),
    ("Fatal error: Allowed memory size of 134217728 bytes exhausted",
     "Fatal error: Allowed memory size of 134217728 bytes exhausted"),
    ("Warning: Undefined array key \"title\" in /var/www/node.php on line 12",
     "Warning: Undefined array key \"title\" in /var/www/node.php on line 12"),
    ("In de console: Uncaught TypeError: x is undefined", "Uncaught TypeError: x is undefined"),
    ("SQLSTATE[42S02]: Base table or view not found",
     "SQLSTATE[42S02]: Base table or view not found"),
    ("De pagina geeft error 500 sinds gisteren.", "error 500"),
    ("Op de homepage staat 500 Internal Server Error.", "500 Internal Server Error"),
    ("Ik krijg 403 Forbidden bij het inloggen.", "403 Forbidden"),
    ("Soms 502 Bad Gateway, soms niet.", "502 Bad Gateway"),
    ("De server antwoordt HTTP 500.", "HTTP 500"),
    ("Ik krijg fout 404 op de contactpagina.", "fout 404"),
    ("Une erreur 503 s'affiche.", "erreur 503"),
    ("Er staat een 404-pagina waar vroeger de kalender stond.", "404-pagina"),
    ("Error: Access denied for user 'web'", "Error: Access denied for user 'web'"),
    ("Als ik opsla krijg ik Fout: het bestand is te groot.", "Fout: het bestand is te groot."),
    ("Erreur : le formulaire n'a pas été envoyé", "Erreur: le formulaire n'a pas été envoyé"),
    ("Ik krijg de volgende foutmelding:\n\nU heeft geen toegang tot deze pagina.",
     "foutmelding: U heeft geen toegang tot deze pagina."),
    ("J'ai le message d'erreur suivant : « Session expirée »",
     "message d'erreur: Session expirée"),
    ("The error message \"Invalid token\" appears after login.", "error message: Invalid token"),
])
def test_pasted_error_text(body: str, evidence: str) -> None:
    got = _body(f"Dag,\n\n{body}\n\nGroeten,\nEva")
    assert got.has_error_message
    assert got.error_evidence == evidence


@pytest.mark.parametrize("body", [
    "Ik krijg een foutmelding als ik inlog.",             # says so, pastes nothing
    "Foutmelding: zie bijlage.",                          # the error is elsewhere
    "Er is iets fout met de pagina, de titel klopt niet.",
    "Kan u de openingsuren aanpassen naar 9u00 - 17u00?",
    "Ons kantoor is bereikbaar op 02 500 40 40.",          # 500 inside a phone number
    "Het budget is 500 euro.",
    "> Error: this is in the quote\n",
])
def test_no_error_message(body: str) -> None:
    got = _body(f"Dag,\n\n{body}\n\nGroeten,\nEva")
    assert not got.has_error_message and got.error_evidence == ""


def test_evidence_is_short() -> None:
    got = _body("Error: " + "x" * 300)
    assert got.has_error_message and len(got.error_evidence) <= 80


# --- site IDs -------------------------------------------------------------------------------

@pytest.mark.parametrize(("subject", "body", "ids"), [
    ("vraag", "Het gaat om site 9876.", ("9876",)),
    ("vraag", "site-id: 9876", ("9876",)),
    ("vraag", "Site ID 9876 is traag", ("9876",)),
    ("vraag", "siteID: 9876", ("9876",)),
    ("vraag", "Mijn site-ID 9876", ("9876",)),
    ("vraag", "ID 9876", ("9876",)),
    ("vraag", "website 9876 is offline", ("9876",)),
    ("vraag", "webstek 9876", ("9876",)),
    ("question", "Le site n° 9876 ne fonctionne plus", ("9876",)),
    ("question", "le site nº9876", ("9876",)),
    ("question", "notre site 9876", ("9876",)),
    ("question", "identifiant 9876", ("9876",)),
    ("question", "l'ID du site : 9876", ("9876",)),
    ("question", "numéro de site 9876", ("9876",)),
    ("question", "site web 9876", ("9876",)),
    ("vraag", "site nr. 9876", ("9876",)),
    ("[9876] Nieuwsbericht", "Zie onderwerp.", ("9876",)),
    ("Re: [9876] Nieuwsbericht", "Ook site 8765 trouwens.", ("9876", "8765")),
    ("vraag", "De sites 9876, 8765 en 7654 hebben hetzelfde probleem.", ("9876", "8765", "7654")),
    ("vraag", "site 9876 en site 9876 nog eens", ("9876",)),
    # order of appearance: subject first
    ("site 8765", "site 9876", ("8765", "9876")),
    # bare numbers only when known
    ("vraag", "Het gaat over 1234.", ("1234",)),
    ("vraag", "Het gaat over 9876.", ()),
    ("vraag", "Site 9876 en ook 5678.", ("9876", "5678")),
])
def test_site_id_forms(subject: str, body: str, ids: tuple[str, ...]) -> None:
    assert _body(body, subject=subject).site_ids == ids


@pytest.mark.parametrize("body", [
    "Het bericht van 2026 staat er niet.",               # a year, even when known
    "Gepubliceerd op 12/2026.",
    "Gepubliceerd op 01-12-2026.",
    "Gepubliceerd op 2026-12-01.",
    "Vergadering op 1 december 2026.",
    "Bel me op 0470 12 34 56.",                          # 0470 is known: part of a phone
    "Bel me op 0470/12.34.56.",
    "Wetstraat 16\n1000 Brussel",                        # postcode in an address line
    "Wetstraat 16, 1000 Brussel",
    "Adres: B-1000 Brussel",
    "Zie https://www.example.be/nieuws/1234/artikel.",     # URL path
    "Zie www.example.be/?site=1234",
    "Schrijf naar info1234@example.be",
    "Ik krijg error 1234 op de pagina.",
    "Het kost 1234 euro.",
    "Het kost € 1234.",
    "Rekening BE68 5390 1234 7034.",
    "Het ticket 1234 is nog open.",
    "Ticket ID 1234 is nog open.",
    "Node ID 1234 is kapot.",
    "Om 12:34 viel de site uit.",
    "Pagina 1234 van het verslag.",
    "Het getal 1.234,56 klopt niet.",
    "Referentie 1234-5678.",
    "Onze klant nr 1234.",
    "Zie [9876] in de tekst",                            # brackets count in the subject only
])
def test_numbers_that_are_not_site_ids(body: str) -> None:
    assert _body(body, subject="vraag").site_ids == ()


# --- URLs -----------------------------------------------------------------------------------

@pytest.mark.parametrize(("body", "urls"), [
    ("Zie https://www.gent.be/a.", ("https://www.gent.be/a",)),
    ("Zie (https://www.gent.be/a).", ("https://www.gent.be/a",)),
    ("Zie https://nl.wikipedia.org/wiki/Gent_(stad).", ("https://nl.wikipedia.org/wiki/Gent_(stad)",)),
    ("Link: <https://www.gent.be/a>", ("https://www.gent.be/a",)),
    ("\"https://www.gent.be/a\"", ("https://www.gent.be/a",)),
    ("Kijk eens: https://www.gent.be/a?x=1&y=2!", ("https://www.gent.be/a?x=1&y=2",)),
    ("Vraag over www.gent.be/contact;", ("https://www.gent.be/contact",)),
    ("Vraag over WWW.Gent.be", ("https://WWW.Gent.be",)),
    ("http://oud.gent.be/x en http://oud.gent.be/x/ opnieuw", ("http://oud.gent.be/x",)),
    ("Mail naar eva@www.gent.be of eva@gent.be", ()),
    ("Zie ftp://files.gent.be/x of mailto:eva@gent.be", ()),
    ("https://eur01.safelinks.protection.outlook.com/?url=https%3A%2F%2Fwww.gent.be%2Fnieuws"
     "&data=05%7C01&reserved=0", ("https://www.gent.be/nieuws",)),
    ("Versie 2.5 van de site, www.gent staat er niet.", ()),
])
def test_urls(body: str, urls: tuple[str, ...]) -> None:
    assert _body(body).urls == urls


def test_urls_naming_our_own_address_are_left_out() -> None:
    mail = _mail("Zie https://www.gent.be/a en "
                 "https://news.example.org/unsubscribe?email=servicedesk%40example.org")
    assert extract(mail, own_addresses=["servicedesk@example.org"]).urls == (
        "https://www.gent.be/a",)
    assert len(extract(mail).urls) == 2


def test_at_most_twenty_urls() -> None:
    body = "\n".join(f"https://www.gent.be/p{i}" for i in range(30))
    urls = _body(body).urls
    assert len(urls) == MAX_URLS and urls[0] == "https://www.gent.be/p0"


# --- phones ---------------------------------------------------------------------------------

@pytest.mark.parametrize(("written", "e164"), [
    ("0470 12 34 56", "+32470123456"),
    ("0470/12.34.56", "+32470123456"),
    ("0470/12 34 56", "+32470123456"),
    ("0470.12.34.56", "+32470123456"),
    ("0470-12-34-56", "+32470123456"),
    ("0470123456", "+32470123456"),
    ("0470 123 456", "+32470123456"),
    ("0499 99 88 77", "+32499998877"),
    ("0456/78 90 12", "+32456789012"),
    ("02 123 45 67", "+3221234567"),
    ("02/123.45.67", "+3221234567"),
    ("02/123 45 67", "+3221234567"),
    ("02-123-45-67", "+3221234567"),
    ("(02) 123 45 67", "+3221234567"),
    ("09 266 52 11", "+3292665211"),
    ("09/266.52.11", "+3292665211"),
    ("04 123 45 67", "+3241234567"),           # Liège, a landline starting with 04
    ("011 23 45 67", "+3211234567"),
    ("050/44 80 00", "+3250448000"),
    ("0800 12 345", "+3280012345"),
    ("+32 470 12 34 56", "+32470123456"),
    ("+32470123456", "+32470123456"),
    ("+32 (0)470 12 34 56", "+32470123456"),
    ("+32 (0)2 123 45 67", "+3221234567"),
    ("+32 (0) 2 123 45 67", "+3221234567"),
    ("+32 2 123 45 67", "+3221234567"),
    ("+32 02 123 45 67", "+3221234567"),
    ("+32-2-123-45-67", "+3221234567"),
    ("+32.2.123.45.67", "+3221234567"),
    ("(+32) 2 123 45 67", "+3221234567"),
    ("0032 2 123 45 67", "+3221234567"),
    ("0032 470 12 34 56", "+32470123456"),
    ("0032 (0)9 266 52 11", "+3292665211"),
    ("+33 1 23 45 67 89", "+33123456789"),
    ("+33 (0)1 23 45 67 89", "+33123456789"),
    ("0033 1 23 45 67 89", "+33123456789"),
    ("+31 20 123 4567", "+31201234567"),
    ("+352 26 12 34 56", "+35226123456"),
    ("+49 30 1234567", "+49301234567"),
    ("+44 20 7946 0958", "+442079460958"),
])
@pytest.mark.parametrize("frame", ["Tel: {}", "Bel me op {}.", "GSM {} (na 14u)", "{}"])
def test_phone_forms(written: str, e164: str, frame: str) -> None:
    assert _body(f"Dag,\n\n{frame.format(written)}\n\nGroeten").phones == (e164,)


@pytest.mark.parametrize("body", [
    "Gepubliceerd op 01-12-2026 om 14:30.",
    "Gepubliceerd op 04.12.2026 14:30.",
    "Van 01/12/2026 tot 31/12/2026.",
    "Ticket SD-12 en SD-12345678.",
    "Site-ID 1234.",
    "Het kost € 1.234,56 of 0,50 EUR.",
    "Bedrag: 1234567,89",
    "Rekening BE68 5390 0754 7034.",
    "IBAN BE68 0012 3456 7890",
    "BTW BE 0456.789.123",
    "Ondernemingsnummer: 0456.789.123",
    "Rijksregisternummer 85.07.30-033.61",
    "Referentie 12345678901234567890",
    "Code 0123456789012345678",
    "Fax 02 123 45 68",
    "Versie 1.2.3.4 van het thema.",
    "Zie https://www.gent.be/0470123456",
    "Postcode 9000, huisnummer 12.",
    "Vergadering 9.00-17.00",
])
def test_numbers_that_are_not_phones(body: str) -> None:
    assert _body(body).phones == ()


def test_several_phones_in_order_and_deduplicated() -> None:
    got = _body("T 02 123 45 67 / 0470 12 34 56\nGSM: +32 470 12 34 56\nAlgemeen 09 266 52 11")
    assert got.phones == ("+3221234567", "+32470123456", "+3292665211")


def test_unnormalisable_phone_kept_as_written_only_after_a_label() -> None:
    assert _body("Tel.: 06 12 34 56 78").phones == ("06 12 34 56 78",)
    assert _body("Nummer 06 12 34 56 78").phones == ()


# --- contact name ---------------------------------------------------------------------------

@pytest.mark.parametrize(("signature", "name"), [
    ("Met vriendelijke groeten,\nEva Claes", "Eva Claes"),
    ("Met vriendelijke groet\n\nJan Van den Bossche\nDienst Communicatie", "Jan Van den Bossche"),
    ("Vriendelijke groeten,\nPieter De Smet\nTel. 02 123 45 67", "Pieter De Smet"),
    ("Groeten,\nAn Peeters", "An Peeters"),
    ("Mvg,\nKoen Maes", "Koen Maes"),
    ("MVG\nKoen Maes", "Koen Maes"),
    ("Groeten, Lies Wouters", "Lies Wouters"),
    ("Alvast bedankt,\nLies Wouters", "Lies Wouters"),
    ("Kind regards,\nJohn Smith", "John Smith"),
    ("Best regards\n\nMary O'Neill", "Mary O'Neill"),
    ("Regards,\nJ. Smith", "J. Smith"),
    ("Cordialement,\nJean-Pierre de la Fontaine", "Jean-Pierre de la Fontaine"),
    ("Bien cordialement,\nMarie Dubois", "Marie Dubois"),
    ("Bien à vous,\nMme Sophie Lambert", "Sophie Lambert"),
    ("Salutations distinguées,\nAndré Lefèvre", "André Lefèvre"),
    ("Mit freundlichen Grüßen\nHans Müller", "Hans Müller"),
    ("Met vriendelijke groeten,\nDienst Communicatie\nEva Claes", "Eva Claes"),
    ("Met vriendelijke groeten,\nWebredactie Stad Gent", ""),
    ("Met vriendelijke groeten,\nEva", ""),                       # one word
    ("Met vriendelijke groeten,\nEva Claes 0470 12 34 56", ""),   # digits
    ("Met vriendelijke groeten,\neva claes", ""),                 # not capitalised
    ("Met vriendelijke groeten,\nEva Claes <eva@gent.be>", ""),
    ("Groeten uit Gent en tot morgen.", ""),
    ("Cordialement,\nService Communication", ""),
    ("Groeten,\nVerzonden vanaf mijn iPhone", ""),
    ("Eva Claes", ""),                                            # no closing
    ("Regards,\nGmail Account", ""),
    ("Regards,\nMrs.Cecil Edward", ""),
])
def test_contact_name(signature: str, name: str) -> None:
    assert _body(f"Dag,\n\nKan u de pagina aanpassen?\n\n{signature}\n").contact_name == name


# --- several requests -----------------------------------------------------------------------

@pytest.mark.parametrize(("body", "several"), [
    ("Ik heb enkele problemen:\n"
     "1. De kalender op de homepage toont geen activiteiten meer.\n"
     "2. Het contactformulier stuurt geen bevestigingsmail naar de burger.\n", True),
    ("J'ai deux questions :\n"
     "- Comment ajouter un PDF à une page existante ?\n"
     "- Pourquoi mon actualité n'apparaît-elle pas sur la page d'accueil ?\n", True),
    ("A few issues on our site:\n"
     "* The search results are empty for every query.\n"
     "* The English menu links to the Dutch pages.\n"
     "* Our logo is blurry on mobile phones.\n", True),
    ("Twee vragen:\na) Kan de footer een nieuw adres krijgen?\n"
     "b) Waarom is de zoekfunctie zo traag?\n", True),
    # steps to reproduce: one request
    ("Ik heb een probleem met de kalender. Stappen:\n1. Ga naar de homepage\n"
     "2. Klik op de kalender in het menu\n3. Kies een maand in de lijst\n", False),
    ("The form is broken, these issues happen when I:\n1. open the page with the form\n"
     "2. click on the submit button at the bottom\n3. go back to the overview\n", False),
    ("Problème avec le formulaire :\n1. Ouvrez la page du formulaire\n"
     "2. Cliquez sur le bouton envoyer en bas\n", False),
    ("Vragen over de kalender:\n1. Ik open de pagina met de kalender\n"
     "2. Dan klik ik op volgende maand in het menu\n", False),
    ("Two issues? Try again following these steps:\n"
     "* Send the message again to the same address later today.\n"
     "* Contact the recipient by phone to check the address.\n", False),
    # a list, but no word naming several requests
    ("Graag deze tekst op de pagina:\n- Openingsuren van het loket op maandag\n"
     "- Gesloten op feestdagen en tijdens de zomer\n", False),
    # the word, but one item
    ("Ik heb problemen met:\n1. De kalender op de homepage toont niets meer.\n", False),
    # short items
    ("Problemen:\n- kalender kapot\n- menu weg\n", False),
])
def test_several_requests_by_list(body: str, several: bool) -> None:
    assert _body(f"Dag,\n\n{body}\nGroeten,\nEva Claes").several_requests is several


def test_several_requests_by_known_sites() -> None:
    assert _body("Site 1234 en site 5678 tonen een witte pagina.").several_requests
    assert not _body("Site 1234 toont een witte pagina, site 1234 ook.").several_requests
    assert not _body("Site 9876 en site 8765 tonen niets.").several_requests   # not known


# --- robustness -----------------------------------------------------------------------------

def test_empty_and_hostile_text() -> None:
    empty = ParsedMail(message_id="", subject="", from_addr="a@b.example", from_name="",
                       to=(), cc=(), reply_to="", in_reply_to=(), references=(), text="")
    assert extract(empty) == Extracted((), (), (), "", False, "", False)
    hostile = "0 " * 50_000 + "1.2.3.4." * 20_000 + "www." * 10_000 + "\n- a b c d" * 5_000
    mail = ParsedMail(message_id="", subject="x", from_addr="a@b.example", from_name="",
                      to=(), cc=(), reply_to="", in_reply_to=(), references=(), text=hostile)
    started = time.perf_counter()
    extract(mail, KNOWN)
    assert time.perf_counter() - started < 5


def test_corpus_mails_extract_without_exception() -> None:
    if not CORPUS.is_dir():
        pytest.skip(f"the shared mail corpus is not here ({CORPUS}); CI has it beside the repo")
    stats: dict[str, Counter[str]] = {}
    slowest = (0.0, "")
    for rel in mail_files():
        mail = outcome(rel).mail
        if mail is None:
            continue
        started = time.perf_counter()
        got = extract(mail)
        took = time.perf_counter() - started
        slowest = max(slowest, (took, rel))
        s = stats.setdefault(source_of(rel), Counter())
        s["mails"] += 1
        s["site ids"] += bool(got.site_ids)
        s["urls"] += bool(got.urls)
        s["phones"] += bool(got.phones)
        s["name"] += bool(got.contact_name)
        s["error"] += got.has_error_message
        s["several"] += got.several_requests
    assert slowest[0] < 3, slowest
    cols = ["mails", "site ids", "urls", "phones", "name", "error", "several"]
    rows = ["| source | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    total: Counter[str] = Counter()
    for src in sorted(stats):
        total.update(stats[src])
        rows.append(f"| {src} | " + " | ".join(str(stats[src][c]) for c in cols) + " |")
    rows.append("| **all** | " + " | ".join(str(total[c]) for c in cols) + " |")
    report("extract() over the corpus mails (mails with each item)", "\n".join(rows))
    assert total["mails"] > 0


def test_a_mail_is_read_once_per_set_of_known_sites(monkeypatch: pytest.MonkeyPatch) -> None:
    """The parse-ahead helper reads the request beside the parse; the worker takes that
    reading only when the registered sites are still the ones it was read with."""
    from mailgate.mail import extract as module

    calls: list[frozenset[str]] = []
    real = module._extract
    monkeypatch.setattr(module, "_extract",
                        lambda mail, known, own: calls.append(known) or real(mail, known, own))
    mail = _mail("Op de site van 5678 loopt het mis.")
    first = extract(mail)
    assert extract(mail, frozenset()) is first and first.site_ids == ()
    again = extract(mail, frozenset({"5678"}))  # registered since: read again
    assert again.site_ids == ("5678",) and calls == [frozenset(), frozenset({"5678"})]
    assert extract(mail, frozenset({"5678"}), own_addresses=["desk@example.org"]) == again
    assert len(calls) == 3
    # Not part of the mail's value, and not carried into a changed copy.
    assert mail == dataclasses.replace(mail)
    assert not dataclasses.replace(mail, subject="Iets anders").derived
