"""quotes.split_reply alone: the reply headers our editors' mail programs write (nl, fr, de,
en), Outlook blocks, bare ">" quotes, and the cases where nothing may be split off."""

from __future__ import annotations

import pytest

from mailgate.mail.quotes import is_forward_subject, split_reply

QUESTION = "> Kan u de pagina aanpassen?\n> Groeten, Desk"


@pytest.mark.parametrize("header", [
    # Dutch: Gmail, Gmail wrapped, Apple Mail, Thunderbird, Outlook
    "Op ma 3 apr. 2023 om 10:00 schreef Jan Peeters <jan@site.be>:",
    "Op ma 3 apr. 2023 om 10:00 schreef Jan Peeters <\njan@site.be>:",
    "Op 3 apr. 2023, om 10:00 heeft Jan Peeters <jan@site.be> het volgende geschreven:",
    "Op 03-04-2023 om 10:00 schreef Jan Peeters:",
    # French: Gmail, Thunderbird, Apple Mail
    "Le lun. 3 avr. 2023 à 10:00, Jean Dupont <jean@site.be> a écrit :",
    "Le 03/04/2023 à 10:00, Jean Dupont a écrit :",
    "Le 3 avr. 2023 à 10:00, Jean Dupont <jean@site.be> a écrit :",
    # German: Gmail, Thunderbird/Apple Mail
    "Am Mo., 3. Apr. 2023 um 10:00 Uhr schrieb Hans Müller <hans@site.de>:",
    "Am 03.04.2023 um 10:00 schrieb Hans Müller:",
    # English: Gmail, Apple Mail, wrapped Gmail
    "On Mon, Apr 3, 2023 at 10:00 AM Jane Doe <jane@site.example> wrote:",
    "On 3 Apr 2023, at 10:00, Jane Doe <jane@site.example> wrote:",
    "On Mon, Apr 3, 2023 at 10:00 AM Jane Doe <\njane@site.example> wrote:",
])
def test_attribution_lines(header: str) -> None:
    text = f"Dank u, het is in orde.\n\nGroeten,\nEva\n\n{header}\n\n{QUESTION}"
    new, quoted = split_reply(text)
    assert new == "Dank u, het is in orde.\n\nGroeten,\nEva"
    assert quoted.startswith(header.split("\n")[0]) and quoted.endswith("Groeten, Desk")


@pytest.mark.parametrize("block", [
    "-----Original Message-----\nFrom: Desk <desk@x>\nSent: Monday, April 3, 2023 10:00\n"
    "To: Eva\nSubject: RE: pagina",
    "-----Oorspronkelijk bericht-----\nVan: Desk <desk@x>\nVerzonden: maandag 3 april 2023\n"
    "Aan: Eva\nOnderwerp: pagina",
    "Van: Desk <desk@x>\nVerzonden: maandag 3 april 2023 10:00\nAan: Eva\nOnderwerp: pagina",
    "De : Desk <desk@x>\nEnvoyé : lundi 3 avril 2023 10:00\nÀ : Eva\nObjet : page",
    "De\xa0: Desk <desk@x>\nEnvoyé\xa0: lundi 3 avril 2023 10:00\nÀ\xa0: Eva\nObjet\xa0: page",
    "De: Desk <desk@x>\nEnvoyé: lundi 3 avril 2023 10:00\nÀ: Eva\nObjet: page",
    "-----Message d'origine-----\nDe : Desk\nEnvoyé : lundi",
    "Von: Desk <desk@x>\nGesendet: Montag, 3. April 2023 10:00\nAn: Eva\nBetreff: Seite",
    "-----Ursprüngliche Nachricht-----\nVon: Desk\nGesendet: Montag",
    "________________________________\nFrom: Desk <desk@x>\nSent: Monday\nTo: Eva",
    "*From:* Desk <desk@x>\n*Sent:* Monday\n*To:* Eva\n*Subject:* page",
])
def test_outlook_blocks(block: str) -> None:
    text = f"Dank u, het is in orde.\n\n{block}\n\nKan u de pagina aanpassen?\nDesk"
    new, quoted = split_reply(text)
    assert new == "Dank u, het is in orde."
    assert quoted.endswith("Kan u de pagina aanpassen?\nDesk")
    assert not quoted.startswith("_") or block.startswith("_")


def test_bare_quote_with_attribution_above() -> None:
    text = ("Hello\n02.04.2012 14:20 пользователь \"bob@x.example\" <\n"
            "bob@x.example> написал:\n\n> Hi\n>")
    assert split_reply(text) == ("Hello", text[len("Hello\n"):])


def test_bare_quote_keeps_an_introduction_without_date_or_address() -> None:
    text = "Here are my answers:\n> question"
    new, quoted = split_reply(text)
    assert (new, quoted) == ("Here are my answers:", "> question")


def test_quote_inside_quote_header() -> None:
    """Apple Mail writes the attribution inside the quote: "> On … wrote:"."""
    text = "Hello\n> On 22 Aug 2015, at 19:21, Adam <a@x.example> wrote:\n>\n> Hi there!"
    assert split_reply(text)[0] == "Hello"


def test_bottom_posting_keeps_the_text_below() -> None:
    text = "On Mon, Jan <j@x.be> wrote:\n> the question\n\nthe answer, below"
    assert split_reply(text) == ("the answer, below", "On Mon, Jan <j@x.be> wrote:\n> the question")


def test_mailing_list_footer_below_the_quote_goes_with_it() -> None:
    text = ("Thanks.\n\nOn Mon, Jan <j@x.be> wrote:\n> q\n\n"
            "_______________________________________________\nlist mailing list")
    assert split_reply(text)[0] == "Thanks."


@pytest.mark.parametrize("text", [
    # inline answers between the quoted lines: the answers are the new text
    "On Mon, Jan <j@x.be> wrote:\n> Is the page online?\nYes.\n> And the form?\nNot yet.",
    "See my answers.\n\nOp ma 3 apr. schreef Jan <j@x.be>:\n> Vraag 1\nAntwoord 1\n> Vraag 2",
    "> Vraag 1\nAntwoord 1\n> Vraag 2\nAntwoord 2",
    # the whole body is a quote
    "> only\n> a quote",
    "On Mon, Jan <j@x.be> wrote:\n> only a quote",
    "-----Original Message-----\nFrom: a\nSent: b\n\nonly the earlier mail",
    # a forward: what was forwarded is the request
    "Please handle this.\n\n---------- Forwarded message ---------\nFrom: Jan <j@x.be>\n"
    "Date: Mon\nSubject: pagina\nTo: Eva\n\nDe pagina is stuk.",
    "Zie hieronder.\n\nBegin doorgestuurd bericht:\n\nVan: Jan\nOnderwerp: x\n\nstuk",
    "Voir ci-dessous.\n\n-------- Message transféré --------\nDe : Jean\nObjet : x\n\ncassé",
    # no quote at all; a signature is not a quote
    "Just a question.\n\n-- \nEva\n+32 470 00 00 00",
    "",
])
def test_nothing_is_split_off(text: str) -> None:
    assert split_reply(text) == (text, "")


@pytest.mark.parametrize("text", [
    "On the server it wrote: error 42\nplease check",   # "On … wrote:" inside a sentence
    "Op de site schreef iemand een fout.\nKan u kijken?",
    "Le site a écrit : rien.\nMerci",
    "From: Brussels\nTo: Gent\nis the route",             # two labels, none from-like twice
])
def test_ordinary_sentences_are_not_headers(text: str) -> None:
    assert split_reply(text) == (text, "")


def test_crlf_and_no_break_space() -> None:
    text = "Merci\r\n\r\nLe 3 avr. 2023 à 10:00, Jean <j@x.be> a\xa0écrit\xa0:\r\n> q"
    assert split_reply(text)[0] == "Merci"


@pytest.mark.parametrize(("subject", "forward"), [
    ("Fwd: pagina", True), ("FW: page", True), ("TR: page", True), ("WG: Seite", True),
    ("Doorst: pagina", True), ("Re: Fwd: pagina", False), ("Re: page", False),
    ("Forward planning", False),
])
def test_forward_subject(subject: str, forward: bool) -> None:
    assert is_forward_subject(subject) is forward
