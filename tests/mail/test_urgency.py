"""urgency(): priority headers, the phrase table word by word, negations and conditions, the
start of the text, ordinary subjects that must stay normal, and a sanity count on the corpus."""

from __future__ import annotations

import logging
import re
import unicodedata

import pytest

from mailgate.mail.parse import ParsedMail, parse
from mailgate.mail.urgency import PHRASES, STRONG, TAG, Urgency, urgency
from tests.corpus.corpus import CORPUS, mail_files, outcome


def mail(subject: str = "Vraag over de website", body: str = "Hallo,\nzie bijlage.\nJan",
         *headers: str) -> ParsedMail:
    head = "".join(f"{h}\r\n" for h in headers)
    raw = (f"From: Jan <jan@site.example>\r\nTo: desk@desk.example\r\nSubject: {subject}\r\n"
           f"{head}MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
           f"{body}\r\n")
    return parse(raw.encode("utf-8"))


def folded(text: str) -> str:
    text = "".join(c for c in unicodedata.normalize("NFKD", text) if not unicodedata.combining(c))
    return re.sub(r"[\s\-]+", " ", text.casefold())


# --- the table, word by word --------------------------------------------------------------
# One row per phrase of PHRASES: (phrase, a subject using it). Adding a word to the table
# means adding its row here (test_every_phrase_has_a_row). TAG phrases are shown as tags.

SUBJECTS = {
    # nl (de)
    "dringend": "Dringend: menu verdwenen",
    "dringende": "Dringende vraag?",
    "spoed": "Spoed - foto vervangen",
    "spoedeisend": "Spoedeisend: verkeerde openingsuren",
    "spoedeisende": "Spoedeisende aanpassing homepage",
    "noodgeval": "Noodgeval: persbericht moet offline",
    "ligt plat": "Onze website ligt plat",
    "ligt eruit": "De site ligt eruit",
    "onbereikbaar": "Website gemeente onbereikbaar",
    "niet bereikbaar": "Site niet bereikbaar sinds 9u",
    "zsm": "Graag zsm de banner weg",
    "kritieke": "Kritieke fout in formulier",
    "kritiek": "Kritiek: formulier stuurt niets door",
    # fr (en)
    "urgent": "Urgent : changement d'horaire",
    "urgente": "Demande urgente pour la page d'accueil",
    "urgence": "Urgence - formulaire bloqué",
    "hors service": "Le site est hors service",
    "en panne": "Formulaire en panne",
    "hors ligne": "Notre site est hors ligne",
    "site inaccessible": "Site inaccessible depuis ce matin",
    "erreur critique": "Erreur critique sur la page contact",
    "critique": "[Critique] serveur de la commune",
    # en
    "urgently": "Need help urgently with the menu",
    "emergency": "Emergency: wrong phone number published",
    "site down": "Site down?",
    "website down": "Website down since 8am",
    "asap": "Please fix the banner ASAP",
    "is down": "Our contact form is down",
    "outage": "Outage of the search page",
    "critical error": "Critical error on login",
    "critical issue": "Critical issue with the agenda",
    "critical": "Critical!",
    # de
    "eilig": "Sehr eilig: Öffnungszeiten ändern",
    "notfall": "Notfall - falsche Telefonnummer",
    "ausgefallen": "Webseite ausgefallen",
    "nicht erreichbar": "Webseite nicht erreichbar",
}

# A sentence at the start of the text for each phrase; only STRONG phrases count there.
SENTENCES = {p.text: f"Hallo,\n{SUBJECTS[p.text]} (zie ook de bijlage).\nGroeten, Jan"
             for p in PHRASES}
SENTENCES["kritiek"] = "Hallo,\nKritiek: formulier stuurt niets door\nJan"


def test_every_phrase_has_a_row() -> None:
    assert sorted(SUBJECTS) == sorted(p.text for p in PHRASES)


def _variants(subject: str) -> list[str]:
    return [subject, subject.upper(), subject.lower(), f"Re: {subject}", f"TR: {subject}",
            f"[SD-12] {subject}", f"RE: [SD-12] {subject.upper()}", f"Fwd: Re: {subject.lower()}"]


@pytest.mark.parametrize("phrase", [p.text for p in PHRASES])
def test_each_phrase_in_the_subject(phrase: str) -> None:
    for subject in _variants(SUBJECTS[phrase]):
        found = urgency(mail(subject))
        assert found is not None, subject
        said = re.fullmatch(r'subject: "(.*)"', found.evidence)
        assert said and folded(said.group(1)) == phrase, (subject, found)


@pytest.mark.parametrize("phrase", [p.text for p in PHRASES])
def test_each_phrase_at_the_start_of_the_text(phrase: str) -> None:
    """STRONG phrases count in the text too; the others only in the subject."""
    found = urgency(mail("Vraag", SENTENCES[phrase]))
    row = next(p for p in PHRASES if p.text == phrase)
    if row.where == STRONG:
        assert found is not None
        said = re.fullmatch(r'text: "(.*)"', found.evidence)
        assert said and folded(said.group(1)) == phrase, found
    else:
        assert found is None


@pytest.mark.parametrize("phrase", [p.text for p in PHRASES if p.where == TAG])
def test_tag_phrases_count_only_as_tags(phrase: str) -> None:
    word = phrase.capitalize()
    for subject in (f"[{word}] menu", f"({phrase}) menu", f"{word}: menu", f"Re: {word}!",
                    f"[SD-3] {word.upper()}"):
        assert urgency(mail(subject)) is not None, subject
    for subject in (f"{word} menu", f"Menu {phrase}", f"Over de {phrase}: menu"):
        assert urgency(mail(subject)) is None, subject


@pytest.mark.parametrize("subject", [
    "URGENCE", "Urgénce", "urgence", "ÜRGENT", "Dríngend", "SPOEDEISEND", "hors-service",
    "site-down", "HORS  SERVICE", "Website\u00a0down", "L'urgence du jour", "URGENT!!!",
    "#urgent", "*** DRINGEND ***", "Gelieve dit als dringend te behandelen",
    "Werkt niet, DRINGEND", "Not working - URGENT", "No access, site down",
])
def test_case_accents_spacing_and_clauses(subject: str) -> None:
    assert urgency(mail(subject)) is not None


# --- negations, conditions, requests ------------------------------------------------------

@pytest.mark.parametrize("subject", [
    # negation within two words
    "Niet dringend", "niet zo dringend: tekstwijziging", "Geen spoed", "Geen haast",
    "Zonder spoed: nieuwe foto", "Minder dringend verzoek", "Pas urgent", "pas d'urgence",
    "Ce n'est pas très urgent", "Sans urgence", "Rien d'urgent", "Not urgent",
    "Non urgent", "Non-urgent: typo", "No rush", "nothing urgent, just a question",
    "It isn't urgent", "Nicht eilig", "Kein Notfall", "Niet-dringende vraag",
    # conditions and announcements
    "Indien dringend: bel 02 123 45 67", "Bij dringende vragen", "Si urgent, appelez-moi",
    "En cas d'urgence", "In case of emergency", "If urgent, call me",
    "Als het dringend is, bel me", "Planned outage tonight", "Scheduled outage",
    # asking for the state, not reporting it
    "Mise hors ligne de la page contact", "Mettre l'ancien site hors service",
    "Take the site down tonight", "Please put the website down for maintenance",
])
def test_negated_conditional_or_asked_is_not_urgent(subject: str) -> None:
    assert urgency(mail(subject)) is None


def test_negation_reaches_only_its_own_phrase() -> None:
    assert urgency(mail("Niet dringend, maar de site ligt plat")) == \
        Urgency('subject: "ligt plat"')
    assert urgency(mail("Vraag", "Het is niet dringend, maar graag een antwoord.")) is None


# --- ordinary subjects --------------------------------------------------------------------

@pytest.mark.parametrize("subject", [
    "Vraag over de website", "Urgenties in het menu", "Urgentiebeleid: pagina aanpassen",
    "Pagina Urgenties van het ziekenhuis", "Service des urgences : nouveaux horaires",
    "Critical CSS", "Critical rendering path", "Critique du nouveau site",
    "Kritiek op de nieuwe huisstijl", "Plat tarief voor parkeren", "Spoedcursus EHBO",
    "Nieuwe foto's voor de homepage", "Downloads pagina", "Hors-d'oeuvre recept",
    "Panneau d'affichage", "Emergencyplan pagina", "Werkt niet meer", "Ne fonctionne plus",
    "Faire vite",
])
def test_ordinary_subjects_are_not_urgent(subject: str) -> None:
    assert urgency(mail(subject)) is None


def test_urgence_inside_a_compound_counts() -> None:
    """"Plan d'urgence", "Numéro d'urgence": the word urgence is there; accepted."""
    assert urgency(mail("Plan d'urgence communal")) == Urgency('subject: "urgence"')


# --- headers ------------------------------------------------------------------------------

@pytest.mark.parametrize(("header", "evidence"), [
    ("Importance: high", "Importance: high"),
    ("Importance: High", "Importance: High"),
    ("Importance:  HIGH ", "Importance: HIGH"),
    ("X-Priority: 1", "X-Priority: 1"),
    ("X-Priority: 1 (Highest)", "X-Priority: 1 (Highest)"),
    ("X-Priority: 2 (High)", "X-Priority: 2 (High)"),
    ("X-Priority: 2", "X-Priority: 2"),
    ("Priority: urgent", "Priority: urgent"),
    ("Priority: Urgent", "Priority: Urgent"),
    ("X-MSMail-Priority: High", "X-MSMail-Priority: High"),
])
def test_priority_headers(header: str, evidence: str) -> None:
    assert urgency(mail("Vraag", "Hallo", header)) == Urgency(evidence)


@pytest.mark.parametrize("header", [
    "Importance: normal", "Importance: low", "Importance: highish", "X-Priority: 3",
    "X-Priority: 3 (Normal)", "X-Priority: 4 (Low)", "X-Priority: 5 (Lowest)",
    "X-Priority: 12", "X-Priority: ", "Priority: normal", "Priority: non-urgent",
    "X-MSMail-Priority: Normal", "X-MSMail-Priority: Low", "Precedence: bulk",
    "Precedence: urgent",
])
def test_other_header_values_say_nothing(header: str) -> None:
    assert urgency(mail("Vraag", "Hallo", header)) is None


def test_headers_come_first() -> None:
    found = urgency(mail("DRINGEND", "dringend", "X-Priority: 1"))
    assert found == Urgency("X-Priority: 1")


# --- the text -----------------------------------------------------------------------------

def test_only_the_first_300_characters_of_the_text() -> None:
    filler = "Beste, " + "de pagina moet aangepast worden. " * 9   # > 300 characters
    assert len(filler) > 300
    assert urgency(mail("Vraag", f"{filler}\nDringend!")) is None
    assert urgency(mail("Vraag", f"Dringend!\n{filler}")) == Urgency('text: "Dringend"')


def test_the_signature_and_the_quote_do_not_count() -> None:
    signed = "Hallo,\nzie bijlage.\nJan\n-- \nJan Peeters\nVoor dringende zaken: 02 123 45 67"
    assert urgency(mail("Vraag", signed)) is None
    quoted = ("Bedankt, het is opgelost.\n\nOp ma 3 apr. 2023 om 10:00 schreef Desk "
              "<desk@desk.example>:\n> DRINGEND: de site ligt plat\n> Jan\n")
    assert urgency(mail("Re: Vraag", quoted)) is None


def test_weak_words_do_not_count_in_the_text() -> None:
    body = "Hallo,\nik ben morgen niet bereikbaar; antwoord asap graag. Het formulier is down."
    assert urgency(mail("Vraag", body)) is None


# --- the corpus: a sanity check -----------------------------------------------------------

def test_corpus_few_mails_are_urgent() -> None:
    """Real mails of other projects (bounces, spam, MIME tests): few should look urgent. Not
    a measure of quality (none of them is ours), only a guard against a table gone wild."""
    if not CORPUS.is_dir():
        pytest.skip(f"the shared mail corpus is not here ({CORPUS}); CI has it beside the repo")
    logging.getLogger("mailparser").setLevel(logging.ERROR)
    parsed = flagged = 0
    for rel in mail_files():
        o = outcome(rel)
        if o.mail is None:
            continue
        parsed += 1
        found = urgency(o.mail)
        if found:
            flagged += 1
            kind = o.automatic.kind if o.automatic else "person"
            print(f"{rel}: {found.evidence} ({kind}; subject {o.mail.subject[:60]!r})")
    print(f"urgent: {flagged} of {parsed} parsed corpus mails")
    assert parsed > 1000
    assert flagged / parsed < 0.05
