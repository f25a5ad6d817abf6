"""detect(): the language of short editor mails, mixed mails, too little text; the detector is
imported lazily and built once."""

from __future__ import annotations

import subprocess
import sys
import threading

import pytest

from mailgate.mail import language

SIG_NL = "\n\nMet vriendelijke groeten,\nAn Peeters\nWebredacteur\nFOD Financiën\nTel. 02 572 57 57"
SIG_FR = "\n\nBien à vous,\nMarie Dubois\nRédactrice web\nSPF Finances\nTél. 02 572 57 57"
SIG_EN = "\n\nKind regards,\nJohn Smith\nWeb editor\nFPS Finance"
SIG_DE = "\n\nMit freundlichen Grüßen\nJonas Schmitz\nRedaktion\nMinisterium der DG"

MAILS = [
    ("nl", "Beste, de contactpagina van onze site geeft een fout. Kunnen jullie dit bekijken? "
           "Met vriendelijke groeten"),
    ("nl", "Hallo, ik kan niet meer inloggen op het CMS sinds vanmorgen." + SIG_NL),
    ("nl", "Dag collega's, de nieuwe versie van de pagina over de belastingaangifte staat nog "
           "niet online. Wanneer wordt die gepubliceerd?" + SIG_NL),
    ("nl", "Goeiemiddag, kunnen jullie een nieuwe gebruiker aanmaken voor mijn collega Jan? "
           "Alvast bedankt!" + SIG_NL),
    ("nl", "Dag, mag de pdf van het jaarverslag 2023 vervangen worden door de bijgevoegde "
           "versie? Bedankt."),
    ("nl", "Het menu rechtsboven verdwijnt op mobiel. Wie kan dit nakijken?"),
    ("nl", "Hallo, de link op de startpagina werkt niet."),
    ("fr", "Bonjour, la page de contact de notre site affiche une erreur. Pourriez-vous "
           "vérifier ? Cordialement"),
    ("fr", "Bonjour,\n\nJe n'arrive plus à me connecter au CMS depuis ce matin." + SIG_FR),
    ("fr", "Bonjour, pourriez-vous publier la nouvelle version du communiqué de presse ? "
           "Merci d'avance."),
    ("fr", "L'image de la page d'accueil ne s'affiche pas sous Chrome." + SIG_FR),
    ("fr", "Le lien sur la page d'accueil ne marche pas."),
    ("fr", "Quel est le statut de ma demande ?"),
    ("en", "Hello, the contact page of our site shows an error. Could you have a look? "
           "Best regards"),
    ("en", "Hi,\n\nI can no longer log in to the CMS since this morning." + SIG_EN),
    ("en", "Dear Service Desk, could you please publish the updated English version of the "
           "annual report page? Thanks in advance." + SIG_EN),
    ("en", "The search box on the homepage returns no results at all." + SIG_EN),
    ("en", "Please replace the banner, see attachment."),
    ("de", "Guten Tag, die Kontaktseite unserer Website zeigt einen Fehler an. Könnten Sie "
           "sich das bitte ansehen? Mit freundlichen Grüßen"),
    ("de", "Hallo,\n\nich kann mich seit heute Morgen nicht mehr im CMS anmelden." + SIG_DE),
    ("de", "Sehr geehrte Damen und Herren, bitte veröffentlichen Sie die neue Fassung der "
           "Seite zur Steuererklärung. Vielen Dank." + SIG_DE),
    ("de", "Der Link zum Formular funktioniert nicht mehr. Können Sie das prüfen?"),
]

MIXED = [
    # An English error message pasted into a French mail, in quotes or not.
    ("fr", 'Bonjour, j\'ai ce message: "Access denied. You are not authorized to access this '
           'page." Que faire ?'),
    ("fr", "Madame, Monsieur,\nLe formulaire de demande renvoie l'erreur suivante : \"Internal "
           "Server Error - The server encountered an unexpected condition that prevented it "
           "from fulfilling the request.\" Merci de regarder." + SIG_FR),
    ("fr", "Bonjour,\n\nLe formulaire affiche:\nAn error occurred while processing your "
           "request. Please try again later or contact the administrator.\n\nMerci,\nMarie"),
    ("fr", "Bonjour, quand je clique sur Envoyer j'obtiens Access denied. You are not "
           "authorized to access this page. Merci de vérifier."),
    # Dutch mails with English URLs, server messages and stack traces.
    ("nl", "Beste helpdesk,\n\nDe afbeelding op de homepage wordt niet getoond in Firefox. "
           "Error: 404 Not Found https://www.example.be/img/banner.jpg\n\nGroetjes,\nLies"),
    ("nl", "Hoi, de link naar het formulier werkt niet meer: "
           "https://www.belgium.be/en/about_belgium/government/federal_authorities. "
           "Graag een oplossing.\nMvg, Tom"),
    ("nl", "Beste,\n\nIk krijg deze foutmelding bij het opslaan:\nTraceback (most recent call "
           "last):\n  File \"/srv/cms/save.py\", line 12, in <module>\n    raise ValueError(x)"
           "\nValueError: invalid literal for int() with base 10: 'abc'\n\nKunnen jullie "
           "helpen?\nDank bij voorbaat," + SIG_NL),
    ("nl", "Beste,\nDe site toont: \"The requested URL was not found on this server. "
           "Apache/2.4.41 Server at www.example.be Port 443\"\nWat moet ik doen?\nGroeten, Jef"),
    ("nl", "Hallo,\nbij het opslaan krijg ik: Warning: Cannot modify header information - "
           "headers already sent by (output started at /var/www/index.php:12)\nWat loopt er "
           "mis?\nGroeten"),
    ("nl", "Beste, zie de fout hieronder.\n\njava.lang.NullPointerException: Cannot invoke "
           "\"String.length()\" because \"s\" is null\n    at be.fgov.cms.PageController.save"
           "(PageController.java:42)\n    at be.fgov.cms.Servlet.doPost(Servlet.java:10)\n\n"
           "Mvg,\nPieter"),
    # English mails quoting a Dutch title, or signed in Dutch and French: still English.
    ("en", "Hi, the page https://www.belgium.be/nl/over_belgie shows the Dutch title "
           "\"Over België\" in the English version. Can you fix it?\n\nThanks,\nSarah"),
    ("en", "Hello,\nCould you please update the contact page?\n\nKind regards,\nJan Janssens\n"
           "FOD Beleid en Ondersteuning - SPF Stratégie et Appui\n"
           "Dienst Communicatie - Service Communication"),
    # A Dutch reply to a French mail: the quoted lines do not count.
    ("nl", "Dag Marie, dat is in orde, de pagina is aangepast.\n\n"
           "> Bonjour, pourriez-vous modifier le texte de la page d'accueil ?\n"
           "> Le paragraphe sur les horaires n'est plus à jour.\n> Merci d'avance, Marie"),
]

# Too little to tell. "Merci" is said in Flanders as well, "Dank u" could be German at a glance:
# None, and the caller falls back on what else it knows (the address, the mailbox).
UNCLEAR = [
    "",
    "   \n\n  ",
    "Dank u",
    "Merci",
    "OK",
    "Thanks!",
    "https://www.example.be/nl/contact 0475 12 34 56 jan@example.be",
    "> Bonjour, pourriez-vous modifier le texte de la page d'accueil ?\n> Merci",
    "12345 67890 !!! ???",
]


@pytest.mark.parametrize(("expected", "text"), MAILS, ids=[f"{e}-{t[:30]}" for e, t in MAILS])
def test_short_editor_mails(expected: str, text: str) -> None:
    assert language.detect(text) == expected


@pytest.mark.parametrize(("expected", "text"), MIXED, ids=[f"{e}-{t[:30]}" for e, t in MIXED])
def test_mixed_mails_are_in_the_writers_language(expected: str, text: str) -> None:
    assert language.detect(text) == expected


@pytest.mark.parametrize("text", UNCLEAR)
def test_too_little_text_is_none(text: str) -> None:
    assert language.detect(text) is None


def test_always_one_of_the_four() -> None:
    # Spanish and Italian are not among them: whatever comes back is one of LANGUAGES or None.
    for text in ("Hola, la página de contacto de nuestro sitio muestra un error. ¿Pueden verlo?",
                 "Buongiorno, la pagina dei contatti del nostro sito mostra un errore. Grazie"):
        assert language.detect(text) in (*language.LANGUAGES, None)
    assert language.LANGUAGES == ("nl", "fr", "en", "de")


def test_only_the_start_is_read() -> None:
    # A short Dutch mail, then (past MAX_SCAN characters) a long French text: not read.
    dutch = "Beste, kunnen jullie de tekst hieronder op de site zetten? Dank je wel, Els\n"
    french = "Ceci est le texte du communiqué de presse à publier sur le site fédéral.\n" * 200
    assert language.detect(dutch + "\n" * language.MAX_SCAN + french) == "nl"
    assert len(language._own_text(dutch + french)) <= language.MAX_CHARS


def test_own_text_drops_quotes_links_addresses_digits_and_signature() -> None:
    own = language._own_text(
        "Beste, zie https://www.example.be/nl/contact en mail naar jan@example.be.\n"
        "Het gaat om pagina 12 van 2024.\n"
        "> Bonjour, ceci est la question d'origine\n"
        "Met vriendelijke groeten,\n"
        "Jan Janssens\nFOD Financiën - SPF Finances\nTel. 02 572 57 57")
    assert "http" not in own and "@" not in own and ">" not in own
    assert not any(ch.isdigit() for ch in own)
    assert "Met vriendelijke groeten" in own
    assert "SPF Finances" not in own and "Janssens" not in own


def test_a_dash_dash_line_ends_the_text() -> None:
    own = language._own_text("Hallo, de zoekfunctie werkt niet.\n-- \nAn Peeters\nSPF Finances")
    assert "Peeters" not in own


def test_detector_is_not_imported_until_used() -> None:
    # `mailgate deliver` goes through the CLI and the mail package: neither may load lingua
    # (about a second and 140 MB); only the daemon pays, on its first detect().
    code = ("import sys, mailgate.mail.language, mailgate.cli; "
            "print('lingua' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=60)
    assert out.stdout.strip() == "False"


def test_detector_is_built_once_across_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    import lingua

    builds: list[int] = []
    real = lingua.LanguageDetectorBuilder

    class Counting:
        @staticmethod
        def from_languages(*languages: lingua.Language) -> lingua.LanguageDetectorBuilder:
            builds.append(1)
            return real.from_languages(*languages)

    monkeypatch.setattr(lingua, "LanguageDetectorBuilder", Counting)
    monkeypatch.setattr(language, "_detector", None)
    texts = ["Beste, de contactpagina van onze site geeft een fout. Kunnen jullie dit bekijken?",
             "Bonjour, la page de contact de notre site affiche une erreur. Merci de vérifier."]
    results: list[str | None] = []
    start = threading.Barrier(8)

    def work(i: int) -> None:
        start.wait()
        results.append(language.detect(texts[i % 2]))

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(builds) == 1
    assert sorted(results) == ["fr"] * 4 + ["nl"] * 4
