"""Sender authenticity: our MTA's Authentication-Results, else a real DKIM verification
(dkimpy, with a key we generate and a DNS answer we hand it)."""

from __future__ import annotations

import base64

import dkim
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from mailgate.mail.authenticity import verify

MAIL = (b"From: Eva <eva@site1234.example.be>\r\nTo: desk@desk.example\r\n"
        b"Subject: Menu weg\r\nMessage-ID: <m1@site1234.example.be>\r\n\r\nHallo\r\n")


def _ar(value: str) -> bytes:
    return f"Authentication-Results: {value}\r\n".encode() + MAIL


def test_our_servers_pass_is_trusted() -> None:
    v = verify(_ar("mx.desk.example; dkim=pass header.d=site1234.example.be; spf=pass"),
               "eva@site1234.example.be", "mx.desk.example")
    assert v.verified and "dkim=pass" in v.evidence
    v = verify(_ar("mx.desk.example; dmarc=pass header.from=site1234.example.be"),
               "eva@site1234.example.be", "mx.desk.example")
    assert v.verified


def test_results_from_another_server_or_unaligned_are_not_trusted() -> None:
    forged = _ar("mx.attacker.example; dkim=pass header.d=site1234.example.be")
    assert not verify(forged, "eva@site1234.example.be", "mx.desk.example").verified
    unaligned = _ar("mx.desk.example; dkim=pass header.d=attacker.example; dmarc=fail")
    assert not verify(unaligned, "eva@site1234.example.be", "mx.desk.example").verified
    failed = _ar("mx.desk.example; dkim=fail header.d=site1234.example.be")
    assert not verify(failed, "eva@site1234.example.be", "mx.desk.example").verified


def _keypair() -> tuple[bytes, bytes]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    private = key.private_bytes(serialization.Encoding.PEM,
                                serialization.PrivateFormat.TraditionalOpenSSL,
                                serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.DER,
                                           serialization.PublicFormat.SubjectPublicKeyInfo)
    return private, public


def test_dkim_is_verified_when_no_results_header() -> None:
    private, public = _keypair()
    signed = dkim.sign(MAIL, b"mg", b"site1234.example.be", private,
                       include_headers=[b"From", b"Subject", b"Message-ID"]) + MAIL

    def dns(name: bytes, timeout: int = 5) -> bytes:
        assert name == b"mg._domainkey.site1234.example.be."
        return b"v=DKIM1; k=rsa; p=" + base64.b64encode(public)

    assert verify(signed, "eva@site1234.example.be", "mx.desk.example", dns).verified
    tampered = signed.replace(b"Subject: Menu weg", b"Subject: Menu wag")
    v = verify(tampered, "eva@site1234.example.be", "mx.desk.example", dns)
    assert not v.verified and "does not verify" in v.evidence
    # Signed by a domain that is not the From domain: not aligned.
    other = dkim.sign(MAIL, b"mg", b"attacker.example", private,
                      include_headers=[b"From"]) + MAIL
    v = verify(other, "eva@site1234.example.be", "mx.desk.example",
               lambda name, timeout=5: b"v=DKIM1; k=rsa; p=" + base64.b64encode(public))
    assert not v.verified and "not aligned" in v.evidence


def test_unsigned_mail_without_results_is_unverified() -> None:
    v = verify(MAIL, "eva@site1234.example.be", "mx.desk.example")
    assert not v.verified and "no DKIM signature" in v.evidence
