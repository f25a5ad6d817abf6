"""Each automatic-mail check alone, then detect() on whole hand-made mails."""

from __future__ import annotations

import pytest

from mailgate.mail import automatic as a
from mailgate.mail.parse import ParsedMail, parse


def mail(*headers: str, body: str = "Hello", sender: str = "Eva <eva@site.example>") -> ParsedMail:
    head = "".join(f"{h}\r\n" for h in headers)
    if not any(h.lower().startswith("from:") for h in headers):
        head = f"From: {sender}\r\n" + head
    if not any(h.lower().startswith("subject:") for h in headers):
        head += "Subject: Vraag over de website\r\n"
    return parse(f"{head}To: desk@desk.example\r\n\r\n{body}\r\n".encode())


PERSON = mail()


def kind(found: a.Finding | a.Automatic) -> str | None:
    if found is None:
        return None
    return found.kind if isinstance(found, a.Automatic) else found[0]

DSN = (b"From: Mail Delivery System <MAILER-DAEMON@mx.example>\r\n"
       b"To: desk@desk.example\r\nSubject: Undelivered Mail Returned to Sender\r\n"
       b"Auto-Submitted: auto-replied\r\nMessage-ID: <dsn1@mx.example>\r\n"
       b"Content-Type: multipart/report; report-type=delivery-status; boundary=B\r\n\r\n"
       b"--B\r\nContent-Type: text/plain\r\n\r\nI'm sorry to have to inform you...\r\n"
       b"--B\r\nContent-Type: message/delivery-status\r\n\r\n"
       b"Reporting-MTA: dns; mx.example\r\nArrival-Date: Mon, 3 Apr 2023 10:00:00 +0200\r\n\r\n"
       b"Final-Recipient: rfc822; Jan@Site.Example\r\n"
       b"Original-Recipient: rfc822;jan@site.example\r\n"
       b"Action: failed\r\nStatus: 5.1.1\r\n"
       b"Diagnostic-Code: smtp; 550 5.1.1 <jan@site.example>: user unknown\r\n\r\n"
       b"Final-Recipient: rfc822; piet@site.example\r\nAction: delayed\r\nStatus: 4.4.1\r\n\r\n"
       b"--B\r\nContent-Type: text/rfc822-headers\r\n\r\n"
       b"From: desk@desk.example\r\nTo: jan@site.example\r\nSubject: [SD-12] Uw vraag\r\n"
       b"Message-ID: <sd-12.1@desk.example>\r\n\r\n--B--\r\n")


# --- each check alone -------------------------------------------------------------------

def test_delivery_report() -> None:
    assert a.delivery_report(parse(DSN)) == ("bounce",
                                             "multipart/report; report-type=delivery-status")
    assert a.delivery_report(PERSON) is None


def test_failed_recipients_header() -> None:
    found = a.failed_recipients_header(mail("X-Failed-Recipients: jan@site.example"))
    assert found == ("bounce", "X-Failed-Recipients: jan@site.example")
    assert a.failed_recipients_header(PERSON) is None


def test_exchange_ndr() -> None:
    assert a.exchange_ndr(mail("X-MS-Exchange-Message-Is-Ndr: ")) is None  # empty: no claim
    assert kind(a.exchange_ndr(mail("X-MS-Exchange-Message-Is-Ndr: true"))) == "bounce"


def test_feedback_report() -> None:
    arf = mail("Content-Type: multipart/report; report-type=feedback-report; boundary=B",
               body="--B\r\nContent-Type: text/plain\r\n\r\nabuse\r\n--B--")
    assert a.feedback_report(arf) == ("bounce", "multipart/report; report-type=feedback-report")
    hotmail = mail("Subject: complaint about message from 192.0.2.1")
    assert a.feedback_report(hotmail) is not None
    assert a.feedback_report(PERSON) is None


@pytest.mark.parametrize("sender", ["MAILER-DAEMON@mx.example", "Mail Delivery Subsystem <x@y.z>",
                                    "mailer-daemon@googlemail.com"])
def test_delivery_system_sender(sender: str) -> None:
    assert kind(a.delivery_system_sender(mail(sender=sender))) == "bounce"


def test_postmaster_needs_more_than_its_name() -> None:
    """A person may write as postmaster@: only a null sender, a failure subject or failure
    text makes it a bounce."""
    assert a.delivery_system_sender(mail(sender="postmaster@site.example")) is None
    assert a.delivery_system_sender(mail("Return-Path: <>", sender="postmaster@site.example"))
    assert a.delivery_system_sender(mail(sender="postmaster@site.example",
                                         body="550 no such user here"))


@pytest.mark.parametrize("subject", [
    "Undelivered Mail Returned to Sender", "Delivery Status Notification (Failure)",
    "Mail delivery failed: returning message to sender", "failure notice",
    "Undeliverable: [SD-12] Uw vraag", "Non remis : [SD-12] Votre question",
    "Onbestelbaar: [SD-12] Uw vraag", "Unzustellbar: [SD-12] Ihre Frage",
    "Returned mail: see transcript for details", "Warning: could not send message for past 4 hours",
])
def test_delivery_failure_subject(subject: str) -> None:
    assert kind(a.delivery_failure_subject(mail(f"Subject: {subject}"))) == "bounce"


@pytest.mark.parametrize("subject", ["Re: Undeliverable: [SD-12]", "Mail delivery question",
                                     "Waarom is mijn mail onbestelbaar?"])
def test_delivery_failure_subject_anchored(subject: str) -> None:
    assert a.delivery_failure_subject(mail(f"Subject: {subject}")) is None


def test_null_sender_failure_text() -> None:
    m = mail("Return-Path: <>", body="You sent mail to a@b.c. That's not a valid user here.")
    assert kind(a.null_sender_failure_text(m)) == "bounce"
    assert a.null_sender_failure_text(mail("Return-Path: <>", body="I am away")) is None


def test_read_receipt() -> None:
    mdn = mail("Content-Type: multipart/report; report-type=disposition-notification; boundary=B",
               body="--B\r\nContent-Type: text/plain\r\n\r\nRead.\r\n--B--")
    assert a.read_receipt(mdn) == ("auto-reply",
                                   "multipart/report; report-type=disposition-notification")


def test_auto_submitted() -> None:
    assert a.auto_submitted(mail("Auto-Submitted: auto-replied")) == (
        "auto-reply", "Auto-Submitted: auto-replied")
    assert kind(a.auto_submitted(mail("Auto-Submitted: auto-generated"))) == "auto-reply"
    assert a.auto_submitted(mail("Auto-Submitted: no")) is None
    assert a.auto_submitted(mail("Auto-Submitted: No (written by a person)")) is None


@pytest.mark.parametrize("header", ["X-Autoreply: yes", "X-Autorespond: Vacation",
                                    "X-Mail-Autoreply: yes", "X-AutoReply-From: eva@site.example",
                                    "X-Autogenerated: Reply", "X-FC-MachineGenerated: true"])
def test_autoreply_headers(header: str) -> None:
    found = a.autoreply_headers(mail(header))
    assert found is not None and found[0] == "auto-reply"
    assert header.split(":")[0].lower() in found[1].lower()


def test_precedence() -> None:
    assert kind(a.precedence_auto_reply(mail("Precedence: auto_reply"))) == "auto-reply"
    for value in ("bulk", "junk", "list"):
        assert a.precedence_bulk(mail(f"Precedence: {value}")) == ("bulk", f"Precedence: {value}")
    assert a.precedence_bulk(PERSON) is None


@pytest.mark.parametrize("subject", [
    "Afwezig", "Afwezig: [SD-12] Uw vraag", "Automatisch antwoord: [SD-12] Uw vraag",
    "Out of Office: [SD-12] question", "Out of Office AutoReply: question",
    "Automatic reply: [SD-12] question", "Autoreply: question", "Auto reply: Nyaan",
    "Absence", "Absence : [SD-12] Votre question", "Réponse automatique : [SD-12] question",
    "Abwesenheit", "Abwesenheitsnotiz: [SD-12] Frage", "Automatische Antwort: [SD-12] Frage",
    "AUTO: Jan Peeters is out of the office (returning 05/01/2023)",
])
def test_out_of_office_subject(subject: str) -> None:
    assert kind(a.out_of_office_subject(mail(f"Subject: {subject}"))) == "auto-reply"


@pytest.mark.parametrize("subject", [
    "Re: Out of office", "RE: Afwezig", "AW: Abwesenheitsnotiz: Frage",   # a person answering
    "Absence de connexion au site", "Afwezigheid van de beheerder: wie neemt over?",
    "Abwesenheit des Administrators", "Vraag over de website",
])
def test_out_of_office_subject_anchored(subject: str) -> None:
    assert a.out_of_office_subject(mail(f"Subject: {subject}")) is None


def test_auto_submitted_no_vetoes_the_guesses() -> None:
    """A person's mail saying Auto-Submitted: no is never taken for a machine's on a guess."""
    m = mail("Auto-Submitted: no", "Subject: Absence")
    assert a.out_of_office_subject(m) is None
    assert a.detect(m) is None
    m = mail("Auto-Submitted: no", "Return-Path: <>", "Subject: Undeliverable: x")
    assert a.detect(m) is None


def test_list_headers() -> None:
    assert kind(a.list_headers(mail("List-Id: <desk.lists.example>"))) == "bulk"
    assert kind(a.list_headers(mail("List-Unsubscribe: <mailto:u@x>"))) == "bulk"
    assert a.list_headers(PERSON) is None


def test_null_return_path() -> None:
    assert a.null_return_path(mail("Return-Path: <>")) == ("auto-reply", "Return-Path: <>")
    assert a.null_return_path(mail("Return-Path: <eva@site.example>")) is None


@pytest.mark.parametrize("sender", ["noreply@shop.example", "no-reply@x.example",
                                    "do-not-reply@x.example", "donotreply@x.example",
                                    "gmail-noreply@google.com", "bounces+123@list.example"])
def test_noreply_sender(sender: str) -> None:
    assert kind(a.noreply_sender(mail(sender=sender))) == "auto-reply"


def test_noreply_sender_not_a_person_named_like_it() -> None:
    assert a.noreply_sender(mail(sender="noreen@site.example")) is None


def test_x_auto_response_suppress_alone_is_not_evidence() -> None:
    m = mail("X-Auto-Response-Suppress: All")
    assert a.detect(m) is None
    m = mail("X-Auto-Response-Suppress: All", "Auto-Submitted: auto-replied")
    found = a.detect(m)
    assert found is not None and "X-Auto-Response-Suppress: All" in found.evidence


# --- detect() on whole mails --------------------------------------------------------------

def test_person_is_not_automatic() -> None:
    assert a.detect(PERSON) is None


def test_dsn_fields() -> None:
    found = a.detect(parse(DSN))
    assert found == a.Automatic(
        kind="bounce", evidence="multipart/report; report-type=delivery-status",
        dsn_status="5.1.1", failed_recipients=("jan@site.example",),
        original_message_ids=("<sd-12.1@desk.example>",), check="delivery-report")


def test_delay_report_names_the_delayed_recipient() -> None:
    raw = DSN.replace(b"Action: failed\r\nStatus: 5.1.1", b"Action: delivered\r\nStatus: 2.0.0")
    found = a.detect(parse(raw))
    assert found is not None and found.kind == "bounce"
    assert found.failed_recipients == ("piet@site.example",) and found.dsn_status == "4.4.1"


def test_bounce_without_dsn_reads_the_text() -> None:
    """qmail: no DSN, the failed address and status in the text, the original pasted below."""
    m = parse(b"From: MAILER-DAEMON@mx.example\r\nTo: desk@desk.example\r\n"
              b"Subject: failure notice\r\n\r\n"
              b"Hi. This is the qmail-send program at mx.example.\r\n"
              b"I'm afraid I wasn't able to deliver your message to the following "
              b"addresses.\r\n\r\n"
              b"<Jan@site.example>:\r\nSorry, no mailbox here by that name. (#5.1.1)\r\n\r\n"
              b"--- Below this line is a copy of the message.\r\n\r\n"
              b"Message-ID: <sd-12.2@desk.example>\r\nSubject: [SD-12]\r\n\r\nbody\r\n")
    found = a.detect(m)
    assert found is not None and found.kind == "bounce" and found.check == "delivery-system-sender"
    assert found.dsn_status == "5.1.1"
    assert found.failed_recipients == ("jan@site.example",)
    assert found.original_message_ids == ("<sd-12.2@desk.example>",)


def test_auto_reply_points_at_the_mail_it_answers() -> None:
    m = mail("Auto-Submitted: auto-replied", "Subject: Afwezig: [SD-12] Uw vraag",
             "In-Reply-To: <sd-12.1@desk.example>", "References: <sd-12.0@desk.example> "
             "<sd-12.1@desk.example>")
    found = a.detect(m)
    assert found is not None and found.kind == "auto-reply"
    assert found.evidence == "Auto-Submitted: auto-replied"
    assert found.original_message_ids == ("<sd-12.1@desk.example>", "<sd-12.0@desk.example>")
    assert found.dsn_status == "" and found.failed_recipients == ()


def test_order_bounce_before_auto_reply_before_bulk() -> None:
    m = mail("Auto-Submitted: auto-replied", "X-Failed-Recipients: jan@site.example",
             "Precedence: bulk")
    assert kind(a.detect(m)) == "bounce"
    m = mail("Auto-Submitted: auto-replied", "List-Id: <l.example>")
    assert kind(a.detect(m)) == "auto-reply"
    # a vacation program: null sender and Precedence: junk → an auto-reply, not list mail
    m = mail("Return-Path: <>", "Precedence: junk", "Subject: Thank you for your e-mail")
    assert kind(a.detect(m)) == "auto-reply"


def test_mailer_daemon_without_domain_is_a_bounce() -> None:
    m = parse(b"From: Mail Delivery Subsystem <MAILER-DAEMON>\r\nTo: desk@desk.example\r\n"
              b"Subject: Returned mail: User unknown\r\n\r\n550 5.1.1 unknown\r\n")
    assert m.from_addr == ""
    found = a.detect(m)
    assert found is not None and found.kind == "bounce" and found.dsn_status == "5.1.1"


def test_checks_table_names_are_unique() -> None:
    names = [name for name, _check in a.CHECKS]
    assert len(names) == len(set(names))


# --- real bounces that named no usable sender or came from a mailbox (issue 11, item 10) ---

BILINGUAL = ("Votre message n'a pas pu être remis à jan@site.example.\n"
             "Your message could not be delivered to jan@site.example.\n")


def test_failure_report_from_an_ordinary_mailbox() -> None:
    m = mail("From: Accueil <accueil@partner.example>",
             "Subject: RE: Offerte 2023 : non remis (delivery failed)", body=BILINGUAL)
    found = a.detect(m)
    assert found is not None and (found.kind, found.check) == (
        "bounce", "failure-report-from-mailbox")


@pytest.mark.parametrize(("subject", "body"), [
    ("RE: Offerte 2023 : non remis (delivery failed)", "Merci, bien reçu."),  # no address
    ("Delivery failed bij de drukker", BILINGUAL),   # a person's subject about a failure
])
def test_failure_words_alone_are_not_a_report(subject: str, body: str) -> None:
    assert a.failure_report_from_mailbox(mail(f"Subject: {subject}", body=body)) is None


@pytest.mark.parametrize("sender", [
    "Mail Delivery System <>", '"Delivery" <"mail daemon"@mx.example>', "System Administrator",
])
def test_bounce_without_usable_sender_address(sender: str) -> None:
    m = mail(f"From: {sender}", "Subject: Returned mail: see transcript",
             body="The original message was received.\n\n550 5.1.1 user unknown\n")
    assert m.from_addr == "" and kind(a.detect(m)) == "bounce"


def test_person_without_usable_sender_is_not_called_a_machine() -> None:
    m = mail("From: Jan Peeters", body="De site is stuk.")
    assert m.from_addr == "" and a.detect(m) is None   # the policy ignores it (no-sender)


def test_challenge_response() -> None:
    m = mail("Subject: RE: Uw vraag", body="Please click on the following link to have your "
             "address added to the recipient's allowed list:\nhttps://cr.example/v/1234\n")
    assert kind(a.detect(m)) == "auto-reply"
    assert kind(a.challenge_response(mail("X-Bluebottle-Request: <1234>"))) == "auto-reply"
    assert a.challenge_response(mail(body="Kan je me op de whitelist zetten?")) is None
