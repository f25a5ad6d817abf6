"""Is the From address really the sender's? From is trivially forged, and a forged From
of a registered editor would otherwise open tickets (and get answers) in their name.

Trust the receiving MTA's verdict (RFC 8601 Authentication-Results from *our* authserv-id
only: anyone can write such a header, but only our border MTA writes ours and strips
forged copies); without one, verify the DKIM signature ourselves (dkimpy) and require the
signing domain to be the From domain (DMARC-style alignment)."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from email.parser import BytesHeaderParser
from email.policy import compat32

DnsFunc = Callable[..., bytes | None]


@dataclass(frozen=True)
class Verdict:
    verified: bool
    evidence: str


def _results_from(raw: bytes, authserv_id: str) -> list[str]:
    headers = BytesHeaderParser(policy=compat32).parsebytes(raw)
    out = []
    for value in headers.get_all("Authentication-Results", []) or []:
        text = re.sub(r"\s+", " ", str(value)).strip()
        server = text.split(";", 1)[0].strip().split(" ")[0].lower()
        if server == authserv_id.lower():
            out.append(text)
    return out


def _aligned_pass(result: str, from_domain: str) -> str | None:
    for method in ("dmarc", "dkim"):
        for m in re.finditer(rf"\b{method}=(\w+)([^;]*)", result, re.IGNORECASE):
            if m.group(1).lower() != "pass":
                continue
            if method == "dmarc":
                return "dmarc=pass"
            d = re.search(r"header\.d=([\w.-]+)", m.group(2), re.IGNORECASE)
            if d and (from_domain == d.group(1).lower()
                      or from_domain.endswith("." + d.group(1).lower())):
                return f"dkim=pass header.d={d.group(1).lower()}"
    return None


def verify(raw: bytes, from_addr: str, authserv_id: str,
           dnsfunc: DnsFunc | None = None) -> Verdict:
    from_domain = from_addr.rpartition("@")[2].lower()
    results = _results_from(raw, authserv_id)
    if results:
        for result in results:
            why = _aligned_pass(result, from_domain)
            if why:
                return Verdict(True, f"Authentication-Results from {authserv_id}: {why}")
        return Verdict(False, f"Authentication-Results from {authserv_id} shows no aligned "
                              "dkim or dmarc pass")
    return _verify_dkim(raw, from_domain, dnsfunc)


def _verify_dkim(raw: bytes, from_domain: str, dnsfunc: DnsFunc | None) -> Verdict:
    import dkim

    if b"dkim-signature:" not in raw.lower():
        return Verdict(False, "no Authentication-Results from our server and no DKIM signature")
    kwargs = {"dnsfunc": dnsfunc} if dnsfunc else {}
    try:
        verifier = dkim.DKIM(raw)
        ok = verifier.verify(**kwargs)
    except Exception as exc:  # dkimpy raises many kinds on malformed signatures
        return Verdict(False, f"DKIM signature could not be verified: {exc}")
    domain = (verifier.domain or b"").decode("ascii", "replace").lower()
    if not ok:
        return Verdict(False, f"DKIM signature of {domain or '?'} does not verify")
    if not (from_domain == domain or from_domain.endswith("." + domain)):
        return Verdict(False, f"DKIM signed by {domain}, not aligned with From {from_domain}")
    return Verdict(True, f"DKIM signature of {domain} verified")
